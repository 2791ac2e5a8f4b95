// rotary.wgsl: the pieces of a Llama block that wgnn's other kernels lack.
//   rope         rotary position embeddings in place on the query and key heads of qkv rows
//                ([rows, heads · D + 2 · kv_heads · D]: queries, keys, values), each row at its
//                cursor's position. Adjacent pairs (x[2i], x[2i + 1]) of each head's first
//                `rope_dims` dimensions turn by position · base^(-2i / rope_dims): the pairing
//                of GGUF's llama tensors, whose converter permutes Q and K for it. INVERSE turns
//                them back (the backward: a rotation's transpose is its inverse). One thread per
//                (row, head, pair); values stay.
//   swiglu       out[r, j] = silu(gu[r, j]) · gu[r, hidden + j] from the gate and up products
//                side by side ([rows, 2 · hidden] -> [rows, hidden]). One thread per output.
//   swiglu_back  d gu from d out: [rows, 2 · hidden], gate then up. One thread per output of
//                swiglu.
// Grid: folded into y past groups_x; no loops. Elem is f32 or f16 (arithmetic in f32).
// Bindings: 0 params, 1 cursor (u32 [rows, 2]: slot, position), 2 x (read_write: qkv in place,
// or d out), 3 gu (read), 4 out.

alias Elem = f32;

struct Params {
    rows: u32,
    width: u32,        // rope: a qkv row's length; swiglu: hidden
    heads: u32,        // rope: query heads plus key heads
    head_dim: u32,
    rope_dims: u32,
    log2_base: f32,
    groups_x: u32,
    total: u32,
}

// 1: turn back (the backward).
override INVERSE: u32 = 0u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> cursor: array<u32>;
@group(0) @binding(2) var<storage, read_write> x: array<Elem>;
@group(0) @binding(3) var<storage, read> gu: array<Elem>;
@group(0) @binding(4) var<storage, read_write> out: array<Elem>;

fn thread_index(wid: vec3<u32>, l: u32) -> u32 {
    return (wid.y * params.groups_x + wid.x) * 64u + l;
}

@compute @workgroup_size(64, 1, 1)
fn rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = thread_index(wid, l);
    if (i >= params.total) { return; }
    let half = params.rope_dims / 2u;
    let pair = i % half;
    let head = (i / half) % params.heads;
    let row = i / (half * params.heads);
    let position = f32(cursor[2u * row + 1u]);
    let theta = position * exp2(-2.0 * f32(pair) / f32(params.rope_dims) * params.log2_base);
    let c = cos(theta);
    var s = sin(theta);
    if (INVERSE == 1u) { s = -s; }
    let at = row * params.width + head * params.head_dim + 2u * pair;
    let a = f32(x[at]);
    let b = f32(x[at + 1u]);
    x[at] = Elem(a * c - b * s);
    x[at + 1u] = Elem(a * s + b * c);
}

fn silu(g: f32) -> f32 {
    return g / (1.0 + exp(-g));
}

@compute @workgroup_size(64, 1, 1)
fn swiglu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = thread_index(wid, l);
    if (i >= params.total) { return; }
    let r = i / params.width;
    let j = i % params.width;
    let g = f32(gu[r * 2u * params.width + j]);
    let u = f32(gu[r * 2u * params.width + params.width + j]);
    out[i] = Elem(silu(g) * u);
}

@compute @workgroup_size(64, 1, 1)
fn swiglu_back(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = thread_index(wid, l);
    if (i >= params.total) { return; }
    let r = i / params.width;
    let j = i % params.width;
    let at = r * 2u * params.width + j;
    let g = f32(gu[at]);
    let u = f32(gu[at + params.width]);
    let d = f32(x[i]);
    let sig = 1.0 / (1.0 + exp(-g));
    out[at] = Elem(d * u * sig * (1.0 + g * (1.0 - sig)));
    out[at + params.width] = Elem(d * g * sig);
}

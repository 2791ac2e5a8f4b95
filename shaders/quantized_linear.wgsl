// quantized_linear.wgsl: y = act(x · dequant(W)ᵀ + bias) for compact weights stored [N, K] as
// packed u32 words, rows padded to whole words:
//   FORMAT 0: int8 with one f32 scale per output channel: dequant(W)[n, k] = scale[n] · q[n, k],
//             q in -127..127; byte e of word j holds k = 4j + e.
//   FORMAT 1: f16 pairs (half e of word j holds k = 2j + e), read with unpack2x16float, so f16
//             weights work on adapters without SHADER_F16; scales are not applied.
// One thread per output element, 64 per workgroup, grid folded into y past 65,535. Each thread
// walks its row of x and of W: ceil(K / 4) iterations (ops keep K <= 65,536).
// Bindings: 0 params, 1 x (read), 2 y (read_write), 3 packed weights (read u32), 4 scales (read
// f32), 5 bias (read; bound even without HAS_BIAS). Elem is f32 or f16 (wgnn rewrites the
// alias); accumulation is f32. Prelude: activation.wgsl.

alias Elem = f32;

struct Params {
    rows: u32,
    n: u32,
    k: u32,
    words: u32,         // packed words per weight row: ceil(k / 4) or ceil(k / 2)
    groups_x: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override HAS_BIAS: bool = false;
override FORMAT: u32 = 0u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<Elem>;
@group(0) @binding(2) var<storage, read_write> y: array<Elem>;
@group(0) @binding(3) var<storage, read> packed: array<u32>;
@group(0) @binding(4) var<storage, read> scales: array<f32>;
@group(0) @binding(5) var<storage, read> bias: array<Elem>;

// Byte e of w as a signed integer (shifts, not unpack4xI8, so every backend takes it).
fn byte_of(w: u32, e: u32) -> f32 {
    return f32(bitcast<i32>(w << (24u - 8u * e)) >> 24u);
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = (wid.y * params.groups_x + wid.x) * 64u + l;
    if (i >= params.rows * params.n) { return; }
    let row = i / params.n;
    let col = i % params.n;
    let k = params.k;
    let xb = row * k;
    let wb = col * params.words;
    var acc = 0.0;
    for (var j = 0u; j < params.words; j++) {
        let w = packed[wb + j];
        if (FORMAT == 0u) {
            let k0 = 4u * j;
            for (var e = 0u; e < 4u; e++) {
                if (k0 + e < k) { acc += f32(x[xb + k0 + e]) * byte_of(w, e); }
            }
        } else {
            let k0 = 2u * j;
            let h = unpack2x16float(w);
            for (var e = 0u; e < 2u; e++) {
                if (k0 + e < k) { acc += f32(x[xb + k0 + e]) * h[e]; }
            }
        }
    }
    var v = acc;
    if (FORMAT == 0u) { v *= scales[col]; }
    if (HAS_BIAS) { v += f32(bias[col]); }
    y[i] = Elem(activate1(v));
}

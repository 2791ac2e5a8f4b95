// quantized_linear.wgsl: y = act(x · dequant(W)ᵀ + bias) for compact weights stored [N, K] as
// packed u32 words, rows padded to whole words:
//   FORMAT 0: int8 with one f32 scale per output channel: dequant(W)[n, k] = scale[n] · q[n, k],
//             q in -127..127; byte e of word j holds k = 4j + e.
//   FORMAT 1: f16 pairs (half e of word j holds k = 2j + e), read with unpack2x16float, so f16
//             weights work on adapters without SHADER_F16; scales are not applied.
// One thread per output element, 64 per workgroup, grid folded into y past 65,535. Each thread
// walks its row of x and of W: one iteration per word (ops keep K <= 65,536).
//   main  x [rows, K] -> y [rows, N].
//   conv  the same weights as a convolution's filters ([out channels, C·R·S]) over im2col columns:
//         x = col [images, K, plane] -> y NCHW [images, N, plane] at y_offset (a chunk of images).
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
    plane: u32,         // conv: output pixels per image
    y_offset: u32,      // conv: first element of the chunk in y
    _pad: u32,
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

// Σ over the K inputs of x[base + c · stride] · dequant(W)[col, c], before the int8 scale.
fn dot_row(col: u32, base: u32, stride: u32) -> f32 {
    let k = params.k;
    let wb = col * params.words;
    var acc = 0.0;
    for (var j = 0u; j < params.words; j++) {
        let w = packed[wb + j];
        if (FORMAT == 0u) {
            let k0 = 4u * j;
            for (var e = 0u; e < 4u; e++) {
                if (k0 + e < k) { acc += f32(x[base + (k0 + e) * stride]) * byte_of(w, e); }
            }
        } else {
            let k0 = 2u * j;
            let h = unpack2x16float(w);
            for (var e = 0u; e < 2u; e++) {
                if (k0 + e < k) { acc += f32(x[base + (k0 + e) * stride]) * h[e]; }
            }
        }
    }
    return acc;
}

// Scale, bias and activation of output channel `col`.
fn finish(col: u32, acc: f32) -> Elem {
    var v = acc;
    if (FORMAT == 0u) { v *= scales[col]; }
    if (HAS_BIAS) { v += f32(bias[col]); }
    return Elem(activate1(v));
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = (wid.y * params.groups_x + wid.x) * 64u + l;
    if (i >= params.rows * params.n) { return; }
    let row = i / params.n;
    let col = i % params.n;
    y[i] = finish(col, dot_row(col, row * params.k, 1u));
}

@compute @workgroup_size(64, 1, 1)
fn conv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = (wid.y * params.groups_x + wid.x) * 64u + l;
    let per_image = params.n * params.plane;
    if (i >= params.rows * per_image) { return; }
    let image = i / per_image;
    let channel = (i % per_image) / params.plane;
    let p = i % params.plane;
    let acc = dot_row(channel, image * params.k * params.plane + p, params.plane);
    y[params.y_offset + i] = finish(channel, acc);
}

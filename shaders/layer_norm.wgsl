// layer_norm.wgsl: LayerNorm and RMSNorm over the last axis of a [rows, cols] tensor, fused (the
// statistics, the normalization, the scale and the shift in one pass over each row), and their
// backward passes.
//
// LayerNorm: y = (x - mean) · rstd · gamma + beta, rstd = 1 / sqrt(var + eps) (biased variance, as
// PyTorch). RMSNorm (RMS): y = x · rstd · gamma, rstd = 1 / sqrt(mean(x²) + eps). stats holds
// (mean, rstd) per row in f32 (mean 0 for RMSNorm) for the backward.
// Bindings: 0 params, 1 x, 2 y / dx, 3 gamma, 4 beta, 5 stats, 6 dy, 7 partial (f32), 8 grad_gamma,
// 9 grad_beta.
//   forward          one thread per row: stats, then y
//   backward_input   one thread per row: dx = rstd · (g - mean(g) - x̂ · mean(g · x̂)), g = dy · gamma
//                    (RMSNorm: without the mean(g) term)
//   param_partials   one thread per (column, chunk of up to CHUNK_ROWS rows): Σ dy · x̂ and Σ dy
//   param_sum        one thread per column: the chunks' sums in order, added into grad_gamma
//                    (and grad_beta with HAS_SHIFT): deterministic, no atomics
// Grid: 64-thread workgroups, folded into y past 65,535 along x. Every thread loops at most 3 ·
// cols (≤ 16,384, checked on the host) or CHUNK_ROWS times, under the software drivers' cap.
// Elem is f32 or f16 (wgnn rewrites the alias); arithmetic is f32.

alias Elem = f32;

struct Params {
    rows: u32,
    cols: u32,
    groups_x: u32,
    chunks: u32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override RMS: bool = false;
override HAS_SHIFT: bool = true;

const CHUNK_ROWS: u32 = 4096u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<Elem>;
@group(0) @binding(2) var<storage, read_write> y: array<Elem>;
@group(0) @binding(3) var<storage, read> gamma: array<Elem>;
@group(0) @binding(4) var<storage, read> beta: array<Elem>;
@group(0) @binding(5) var<storage, read_write> stats: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read> dy: array<Elem>;
@group(0) @binding(7) var<storage, read_write> partial: array<f32>;
@group(0) @binding(8) var<storage, read_write> grad_gamma: array<Elem>;
@group(0) @binding(9) var<storage, read_write> grad_beta: array<Elem>;

fn index(wid: vec3<u32>, l: u32) -> u32 {
    return (wid.y * params.groups_x + wid.x) * 64u + l;
}

@compute @workgroup_size(64, 1, 1)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let row = index(wid, l);
    if (row >= params.rows) { return; }
    let base = row * params.cols;
    let n = f32(params.cols);
    var mean = 0.0;
    if (!RMS) {
        var s = 0.0;
        for (var c = 0u; c < params.cols; c++) { s += f32(x[base + c]); }
        mean = s / n;
    }
    var ss = 0.0;
    for (var c = 0u; c < params.cols; c++) { let d = f32(x[base + c]) - mean; ss += d * d; }
    let rstd = inverseSqrt(ss / n + params.eps);
    stats[row] = vec2<f32>(mean, rstd);
    for (var c = 0u; c < params.cols; c++) {
        var v = (f32(x[base + c]) - mean) * rstd * f32(gamma[c]);
        if (HAS_SHIFT) { v += f32(beta[c]); }
        y[base + c] = Elem(v);
    }
}

@compute @workgroup_size(64, 1, 1)
fn backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let row = index(wid, l);
    if (row >= params.rows) { return; }
    let base = row * params.cols;
    let n = f32(params.cols);
    let st = stats[row];
    var sum_g = 0.0;
    var sum_gx = 0.0;
    for (var c = 0u; c < params.cols; c++) {
        let g = f32(dy[base + c]) * f32(gamma[c]);
        let xhat = (f32(x[base + c]) - st.x) * st.y;
        sum_g += g;
        sum_gx += g * xhat;
    }
    var a = sum_g / n;
    if (RMS) { a = 0.0; }
    let b = sum_gx / n;
    for (var c = 0u; c < params.cols; c++) {
        let g = f32(dy[base + c]) * f32(gamma[c]);
        let xhat = (f32(x[base + c]) - st.x) * st.y;
        y[base + c] = Elem(st.y * (g - a - xhat * b));
    }
}

@compute @workgroup_size(64, 1, 1)
fn param_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = index(wid, l);
    if (i >= params.cols * params.chunks) { return; }
    let c = i % params.cols;
    let chunk = i / params.cols;
    let lo = chunk * CHUNK_ROWS;
    let hi = min(params.rows, lo + CHUNK_ROWS);
    var sg = 0.0;
    var sb = 0.0;
    for (var r = lo; r < hi; r++) {
        let st = stats[r];
        let g = f32(dy[r * params.cols + c]);
        sg += g * (f32(x[r * params.cols + c]) - st.x) * st.y;
        sb += g;
    }
    partial[(chunk * 2u) * params.cols + c] = sg;
    partial[(chunk * 2u + 1u) * params.cols + c] = sb;
}

@compute @workgroup_size(64, 1, 1)
fn param_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let c = index(wid, l);
    if (c >= params.cols) { return; }
    var sg = 0.0;
    var sb = 0.0;
    for (var k = 0u; k < params.chunks; k++) {
        sg += partial[(k * 2u) * params.cols + c];
        sb += partial[(k * 2u + 1u) * params.cols + c];
    }
    grad_gamma[c] = Elem(f32(grad_gamma[c]) + sg);
    if (HAS_SHIFT) { grad_beta[c] = Elem(f32(grad_beta[c]) + sb); }
}

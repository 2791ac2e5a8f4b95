// reduce.wgsl: reductions, 256 threads per workgroup with a shared-memory tree.
//   sum_channels      x seen as [outer, channels, inner] -> out[c] = Σ_{o,i} x[o, c, i]
//                     (bias gradients: Linear [rows, cols] is outer=rows, inner=1; NCHW is inner=H·W).
//                     One workgroup per channel; grid (channels folded past 65,535).
//   sum_leading       x seen as [outer, channels] -> out[c] = Σ_o x[o, c]: one thread per channel,
//                     coalesced across threads (a Linear bias gradient; summing partial results).
//   partial_sums      sums[w] = scale · Σ over chunk w of x (or of x² when SQUARES), in f32; run
//                     twice (chunks, then one workgroup over the f32 partials) for a total, mean or norm.
//   row_max_argmax    x [rows, cols] -> max [rows], argmax [rows] (first index of the maximum; a NaN
//                     counts as the maximum, as in PyTorch). One workgroup per row.
// Bindings: 0 params, 1 x (read), 2 out (read_write; sum_channels, row_max_argmax), 3 argmax
// (read_write u32; row_max_argmax), 4 sums (read_write f32; partial_sums).
// Elem is f32 or f16 (wgnn rewrites the alias); sums are f32.

alias Elem = f32;

struct Params {
    outer: u32,
    channels: u32,
    inner: u32,
    groups_x: u32,
    n: u32,
    chunk: u32,
    scale: f32,
    offset: u32,         // partial_sums writes sums[offset + w]
}

override SQUARES: bool = false;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<Elem>;
@group(0) @binding(2) var<storage, read_write> out: array<Elem>;
@group(0) @binding(3) var<storage, read_write> argmax: array<u32>;
@group(0) @binding(4) var<storage, read_write> sums: array<f32>;

var<workgroup> red: array<f32, 256>;
var<workgroup> red_idx: array<u32, 256>;

fn tree_sum(l: u32, v: f32) -> f32 {
    red[l] = v;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride /= 2u) {
        if (l < stride) { red[l] += red[l + stride]; }
        workgroupBarrier();
    }
    return red[0];
}

fn group_index(wid: vec3<u32>) -> u32 {
    return wid.y * params.groups_x + wid.x;
}

@compute @workgroup_size(256, 1, 1)
fn sum_channels(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let c = group_index(wid);
    if (c >= params.channels) { return; }
    let count = params.outer * params.inner;
    var s = 0.0;
    for (var j = l; j < count; j += 256u) {
        let o = j / params.inner;
        let i = j - o * params.inner;
        s += f32(x[(o * params.channels + c) * params.inner + i]);
    }
    let total = tree_sum(l, s);
    if (l == 0u) { out[c] = Elem(total); }
}

@compute @workgroup_size(256, 1, 1)
fn sum_leading(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let c = group_index(wid) * 256u + l;
    if (c >= params.channels) { return; }
    var s = 0.0;
    for (var o = 0u; o < params.outer; o++) {
        s += f32(x[o * params.channels + c]);
    }
    out[c] = Elem(s);
}

@compute @workgroup_size(256, 1, 1)
fn partial_sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let w = group_index(wid);
    let start = w * params.chunk;
    if (start >= params.n) { return; }
    let end = min(start + params.chunk, params.n);
    var s = 0.0;
    for (var j = start + l; j < end; j += 256u) {
        let v = f32(x[j]);
        s += select(v, v * v, SQUARES);
    }
    let total = tree_sum(l, s);
    if (l == 0u) { sums[params.offset + w] = total * params.scale; }
}

fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// (a, ia) beats (b, ib): NaN first, then larger, then lower index.
fn beats(a: f32, ia: u32, b: f32, ib: u32) -> bool {
    if (is_nan(a) != is_nan(b)) { return is_nan(a); }
    if (is_nan(a) || a == b) { return ia < ib; }
    return a > b;
}

@compute @workgroup_size(256, 1, 1)
fn row_max_argmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let row = group_index(wid);
    if (row >= params.outer) { return; }
    let cols = params.inner;
    let base = row * cols;
    var best = bitcast<f32>(0xff800000u);
    var best_i = 0xffffffffu;
    for (var j = l; j < cols; j += 256u) {
        let v = f32(x[base + j]);
        if (best_i == 0xffffffffu || beats(v, j, best, best_i)) {
            best = v;
            best_i = j;
        }
    }
    red[l] = best;
    red_idx[l] = best_i;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride /= 2u) {
        if (l < stride) {
            let oi = red_idx[l + stride];
            if (oi != 0xffffffffu && (red_idx[l] == 0xffffffffu || beats(red[l + stride], oi, red[l], red_idx[l]))) {
                red[l] = red[l + stride];
                red_idx[l] = oi;
            }
        }
        workgroupBarrier();
    }
    if (l == 0u) {
        out[row] = Elem(red[0]);
        argmax[row] = red_idx[0];
    }
}

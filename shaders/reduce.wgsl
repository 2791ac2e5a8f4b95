// reduce.wgsl: reductions, 256 threads per workgroup with a shared-memory tree.
//   sum_channels      x seen as [outer, channels, inner] -> out[c] = Σ_{o,i} x[o, c, i]
//                     (bias gradients: NCHW is inner=H·W). One workgroup per (chunk of `chunk`
//                     elements of the channel, channel); sums[chunk · channels + c] when there are
//                     several chunks (then summed by leading_*), else out[c].
//   leading_*         [outer, channels] -> [channels]: Σ over rows, one thread per channel, coalesced
//                     across threads (a Linear bias gradient; summing partial results). One
//                     workgroup per (chunk of `chunk` rows, 256 channels). x_* read x, p_* read the
//                     f32 partials; *_out write out (one chunk), *_sums write f32 sums[chunk, channels].
//   Long loops are cut into chunks because Mesa's software drivers stop an invocation after 65,535
//   loop iterations, silently; ops::reduce keeps every thread under 4,096 iterations.
//   partial_sums      sums[w] = scale · Σ over chunk w of x (or of x² when SQUARES), in f32; run
//                     twice (chunks, then one workgroup over the f32 partials) for a total, mean or norm.
//   row_max_argmax    x [rows, cols] -> max [rows], argmax [rows] (first index of the maximum; a NaN
//                     counts as the maximum, as in PyTorch). One workgroup per row; rows longer
//                     than 65,536 run as row_max_argmax_chunks (one workgroup per chunk of `chunk`
//                     columns, writing (max bits, index) pairs) then row_max_argmax_merge.
//   top_k             x [rows, cols] -> out [rows, k] values, argmax [rows, k] indices, in the order
//                     of row_max_argmax (NaN first, then larger, then lower index). One thread per
//                     row, k passes over the row (k · cols is kept small by ops::top_k).
// Bindings: 0 params (TopKParams for top_k), 1 x (read), 2 out (read_write; sum_channels,
// leading_*_out, row_max_argmax),
// 3 argmax (read_write u32; row_max_argmax), 4 sums (read_write f32; partial_sums, *_sums),
// 5 partials (read f32; leading_p_*), 6 pairs (read_write (f32 bits, u32); row_max_argmax_*).
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

// top_k reads its own struct at binding 0.
struct TopKParams {
    rows: u32,
    cols: u32,
    groups_x: u32,
    k: u32,
}

override SQUARES: bool = false;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(0) var<uniform> top_k_params: TopKParams;
@group(0) @binding(1) var<storage, read> x: array<Elem>;
@group(0) @binding(2) var<storage, read_write> out: array<Elem>;
@group(0) @binding(3) var<storage, read_write> argmax: array<u32>;
@group(0) @binding(4) var<storage, read_write> sums: array<f32>;
@group(0) @binding(5) var<storage, read> partials: array<f32>;
@group(0) @binding(6) var<storage, read_write> pairs: array<vec2<u32>>;

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
    let flat = group_index(wid);
    let c = flat % params.channels;
    let chunk = flat / params.channels;
    let count = params.outer * params.inner;
    let lo = chunk * params.chunk;
    if (lo >= count) { return; }
    let hi = min(lo + params.chunk, count);
    var s = 0.0;
    for (var j = lo + l; j < hi; j += 256u) {
        let o = j / params.inner;
        let i = j - o * params.inner;
        s += f32(x[(o * params.channels + c) * params.inner + i]);
    }
    let total = tree_sum(l, s);
    if (l == 0u) {
        if (params.chunk >= count) { out[c] = Elem(total); } else { sums[flat] = total; }
    }
}

// This thread's channel and row range for the leading_* entry points; channel >= channels: idle.
fn leading_range(wid: vec3<u32>, l: u32) -> vec3<u32> {
    let flat = group_index(wid);
    let cgroups = (params.channels + 255u) / 256u;
    let c = (flat % cgroups) * 256u + l;
    let lo = (flat / cgroups) * params.chunk;
    return vec3<u32>(c, lo, min(lo + params.chunk, params.outer));
}

fn leading_x(r: vec3<u32>) -> f32 {
    var s = 0.0;
    for (var o = r.y; o < r.z; o++) { s += f32(x[o * params.channels + r.x]); }
    return s;
}

fn leading_p(r: vec3<u32>) -> f32 {
    var s = 0.0;
    for (var o = r.y; o < r.z; o++) { s += partials[o * params.channels + r.x]; }
    return s;
}

@compute @workgroup_size(256, 1, 1)
fn leading_x_out(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let r = leading_range(wid, l);
    if (r.x >= params.channels || r.y >= params.outer) { return; }
    out[r.x] = Elem(leading_x(r));
}

@compute @workgroup_size(256, 1, 1)
fn leading_x_sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let r = leading_range(wid, l);
    if (r.x >= params.channels || r.y >= params.outer) { return; }
    sums[(r.y / params.chunk) * params.channels + r.x] = leading_x(r);
}

@compute @workgroup_size(256, 1, 1)
fn leading_p_out(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let r = leading_range(wid, l);
    if (r.x >= params.channels || r.y >= params.outer) { return; }
    out[r.x] = Elem(leading_p(r));
}

@compute @workgroup_size(256, 1, 1)
fn leading_p_sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let r = leading_range(wid, l);
    if (r.x >= params.channels || r.y >= params.outer) { return; }
    sums[(r.y / params.chunk) * params.channels + r.x] = leading_p(r);
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

// The best (value, index) of x[base + lo .. base + hi) over the workgroup; index 0xFFFFFFFF: none.
fn best_of_range(l: u32, base: u32, lo: u32, hi: u32) -> vec2<u32> {
    var best = bitcast<f32>(0xff800000u);
    var best_i = 0xffffffffu;
    for (var j = lo + l; j < hi; j += 256u) {
        let v = f32(x[base + j]);
        if (best_i == 0xffffffffu || beats(v, j, best, best_i)) {
            best = v;
            best_i = j;
        }
    }
    return workgroup_best(l, best, best_i);
}

fn workgroup_best(l: u32, value: f32, index: u32) -> vec2<u32> {
    red[l] = value;
    red_idx[l] = index;
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
    let r = vec2<u32>(bitcast<u32>(red[0]), red_idx[0]);
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256, 1, 1)
fn row_max_argmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let row = group_index(wid);
    if (row >= params.outer) { return; }
    let best = best_of_range(l, row * params.inner, 0u, params.inner);
    if (l == 0u) {
        out[row] = Elem(bitcast<f32>(best.x));
        argmax[row] = best.y;
    }
}

// One workgroup per (row, chunk of `chunk` columns): flat index row · n + chunk (n: chunks per row).
@compute @workgroup_size(256, 1, 1)
fn row_max_argmax_chunks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let flat = group_index(wid);
    if (flat >= params.outer * params.n) { return; }
    let row = flat / params.n;
    let lo = (flat % params.n) * params.chunk;
    let best = best_of_range(l, row * params.inner, lo, min(lo + params.chunk, params.inner));
    if (l == 0u) { pairs[flat] = best; }
}

@compute @workgroup_size(256, 1, 1)
fn row_max_argmax_merge(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let row = group_index(wid);
    if (row >= params.outer) { return; }
    var best = bitcast<f32>(0xff800000u);
    var best_i = 0xffffffffu;
    for (var c = l; c < params.n; c += 256u) {
        let p = pairs[row * params.n + c];
        let v = bitcast<f32>(p.x);
        if (best_i == 0xffffffffu || beats(v, p.y, best, best_i)) {
            best = v;
            best_i = p.y;
        }
    }
    let r = workgroup_best(l, best, best_i);
    if (l == 0u) {
        out[row] = Elem(bitcast<f32>(r.x));
        argmax[row] = r.y;
    }
}

// Each pass takes the best element that comes after the previous pass's pick.
@compute @workgroup_size(256, 1, 1)
fn top_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let params = top_k_params;
    let row = (wid.y * params.groups_x + wid.x) * 256u + l;
    if (row >= params.rows) { return; }
    let cols = params.cols;
    let base = row * cols;
    var prev = 0.0;
    var prev_i = 0xffffffffu;
    for (var t = 0u; t < params.k; t++) {
        var best = 0.0;
        var best_i = 0xffffffffu;
        for (var j = 0u; j < cols; j++) {
            let v = f32(x[base + j]);
            let after = prev_i == 0xffffffffu || beats(prev, prev_i, v, j);
            if (after && (best_i == 0xffffffffu || beats(v, j, best, best_i))) {
                best = v;
                best_i = j;
            }
        }
        out[row * params.k + t] = Elem(best);
        argmax[row * params.k + t] = best_i;
        prev = best;
        prev_i = best_i;
    }
}

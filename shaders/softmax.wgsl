// softmax.wgsl: softmax and log-softmax over the last axis of a [rows, cols] tensor, and their
// backward passes.
//
// Bindings: 0 params (uniform), 1 x or y (read), 2 out (read_write), 3 dy (read; backward only),
// 4 stats (read_write f32 pairs; *_chunks only).
// One workgroup of 256 threads per row; rows past 65,535 fold into the grid's y axis. Rows longer
// than LONG_ROW columns (see ops::softmax) are cut into chunks of CHUNK columns, one workgroup each,
// so no invocation loops near the 65,535 iterations after which Mesa's software drivers stop it:
// *_chunk_stats write each chunk's (max, sum) (backward: its partial dot product), and *_chunks
// merge all of the row's chunk statistics before writing their own chunk.
// Forward makes one pass with an online max and sum (each thread keeps (max, Σ exp(x - max)) over
// its strided elements; pairs merge by rescaling, across the subgroup then the workgroup), then a
// pass that writes the output.
// Values: finite logits of any magnitude give finite results; -inf entries give exactly 0
// (log-softmax: -inf); a row that is all -inf gives all 0 (log-softmax: all -inf); a NaN or +inf in
// a row makes that row NaN, as in PyTorch.
// Elem is f32, or f16 (wgnn rewrites the alias); arithmetic is f32.
// Preludes: numerics.wgsl, then reduce_subgroup.wgsl where the adapter has subgroups, else
// reduce_shared.wgsl (`workgroup_max_sum`, `workgroup_sum`).

alias Elem = f32;

struct Params {
    rows: u32,
    cols: u32,
    groups_x: u32,
    chunks: u32,        // chunks per row (*_chunks entry points)
}

override LOG: bool = false;         // log-softmax instead of softmax

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<Elem>;
@group(0) @binding(2) var<storage, read_write> out: array<Elem>;
@group(0) @binding(3) var<storage, read> dy: array<Elem>;
@group(0) @binding(4) var<storage, read_write> stats: array<vec2<f32>>;

const WG: u32 = 256u;

fn row_index(wid: vec3<u32>) -> u32 {
    return wid.y * params.groups_x + wid.x;
}

// (max, Σ exp(x - max)) of x[base + lo .. base + hi), merged over the workgroup; NaN sum if a NaN
// or +inf is among them.
fn range_max_sum(l: u32, base: u32, lo: u32, hi: u32) -> vec2<f32> {
    var ms = vec2<f32>(neg_inf(), 0.0);
    for (var j = lo + l; j < hi; j += WG) {
        let v = f32(x[base + j]);
        ms = online_max_sum(ms, v);
        if (poisons_row(v)) { ms.y = nan(); }
    }
    return workgroup_max_sum(l, ms);
}

// Writes softmax (or log-softmax) of x[base + lo .. base + hi) given the row's (max, sum).
fn write_forward(l: u32, base: u32, lo: u32, hi: u32, ms: vec2<f32>) {
    let all_masked = ms.y == 0.0;
    let log_sum = log(ms.y);
    for (var j = lo + l; j < hi; j += WG) {
        let v = f32(x[base + j]);
        var y: f32;
        if (LOG) {
            y = select(v - ms.x - log_sum, neg_inf(), all_masked);
        } else {
            y = select(exp_diff(v, ms.x) / ms.y, 0.0, all_masked);
        }
        out[base + j] = Elem(y);
    }
}

// Σ dy (log-softmax) or Σ dy ⊙ y (softmax) over [lo, hi), summed over the workgroup.
fn range_dot(l: u32, base: u32, lo: u32, hi: u32) -> f32 {
    var partial = 0.0;
    for (var j = lo + l; j < hi; j += WG) {
        let g = f32(dy[base + j]);
        if (LOG) { partial += g; } else { partial += g * f32(x[base + j]); }
    }
    return workgroup_sum(l, partial);
}

fn write_backward(l: u32, base: u32, lo: u32, hi: u32, total: f32) {
    for (var j = lo + l; j < hi; j += WG) {
        let y = f32(x[base + j]);
        let g = f32(dy[base + j]);
        var dx: f32;
        if (LOG) { dx = g - exp(y) * total; } else { dx = y * (g - total); }
        out[base + j] = Elem(dx);
    }
}

@compute @workgroup_size(256, 1, 1)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let row = row_index(wid);
    if (row >= params.rows) { return; }   // uniform per workgroup
    let base = row * params.cols;
    write_forward(l, base, 0u, params.cols, range_max_sum(l, base, 0u, params.cols));
}

// dx = y ⊙ (dy - Σ dy ⊙ y) for softmax; dx = dy - exp(y) Σ dy for log-softmax (y = the forward output).
@compute @workgroup_size(256, 1, 1)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let row = row_index(wid);
    if (row >= params.rows) { return; }
    let base = row * params.cols;
    write_backward(l, base, 0u, params.cols, range_dot(l, base, 0u, params.cols));
}

// ---------------------------------------------------------------------------------------------
// *_chunk_stats / *_chunks: long rows, one workgroup per (row, chunk); flat workgroup index
// row · chunks + chunk.

const CHUNK: u32 = 16384u;

@compute @workgroup_size(256, 1, 1)
fn forward_chunk_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let flat = row_index(wid);
    if (flat >= params.rows * params.chunks) { return; }
    let lo = (flat % params.chunks) * CHUNK;
    let ms = range_max_sum(l, (flat / params.chunks) * params.cols, lo, min(lo + CHUNK, params.cols));
    if (l == 0u) { stats[flat] = ms; }
}

@compute @workgroup_size(256, 1, 1)
fn forward_chunks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let flat = row_index(wid);
    if (flat >= params.rows * params.chunks) { return; }
    let row = flat / params.chunks;
    var ms = vec2<f32>(neg_inf(), 0.0);
    for (var c = l; c < params.chunks; c += WG) { ms = merge_max_sum(ms, stats[row * params.chunks + c]); }
    ms = workgroup_max_sum(l, ms);
    let lo = (flat % params.chunks) * CHUNK;
    write_forward(l, row * params.cols, lo, min(lo + CHUNK, params.cols), ms);
}

@compute @workgroup_size(256, 1, 1)
fn backward_chunk_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let flat = row_index(wid);
    if (flat >= params.rows * params.chunks) { return; }
    let lo = (flat % params.chunks) * CHUNK;
    let s = range_dot(l, (flat / params.chunks) * params.cols, lo, min(lo + CHUNK, params.cols));
    if (l == 0u) { stats[flat] = vec2<f32>(s, 0.0); }
}

@compute @workgroup_size(256, 1, 1)
fn backward_chunks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let flat = row_index(wid);
    if (flat >= params.rows * params.chunks) { return; }
    let row = flat / params.chunks;
    var partial = 0.0;
    for (var c = l; c < params.chunks; c += WG) { partial += stats[row * params.chunks + c].x; }
    let total = workgroup_sum(l, partial);
    let lo = (flat % params.chunks) * CHUNK;
    write_backward(l, row * params.cols, lo, min(lo + CHUNK, params.cols), total);
}

// ---------------------------------------------------------------------------------------------
// *_rows: short rows (up to 512 columns). THREADS_PER_ROW threads (a power of two) share a row, so
// a workgroup covers 256 / THREADS_PER_ROW rows and short rows do not leave most threads idle.
// Reductions are segmented trees in shared memory; rows past the end skip their work but still
// take part in every barrier.

override THREADS_PER_ROW: u32 = 32u;

var<workgroup> seg_pair: array<vec2<f32>, WG>;

fn segment_max_sum(l: u32, lane: u32, ms: vec2<f32>) -> vec2<f32> {
    seg_pair[l] = ms;
    workgroupBarrier();
    for (var stride = THREADS_PER_ROW / 2u; stride > 0u; stride /= 2u) {
        if (lane < stride) { seg_pair[l] = merge_max_sum(seg_pair[l], seg_pair[l + stride]); }
        workgroupBarrier();
    }
    let r = seg_pair[l - lane];
    workgroupBarrier();
    return r;
}

fn segment_sum(l: u32, lane: u32, v: f32) -> f32 {
    seg_pair[l] = vec2<f32>(v, 0.0);
    workgroupBarrier();
    for (var stride = THREADS_PER_ROW / 2u; stride > 0u; stride /= 2u) {
        if (lane < stride) { seg_pair[l].x += seg_pair[l + stride].x; }
        workgroupBarrier();
    }
    let r = seg_pair[l - lane].x;
    workgroupBarrier();
    return r;
}

fn rows_row(wid: vec3<u32>, l: u32) -> u32 {
    return (wid.y * params.groups_x + wid.x) * (WG / THREADS_PER_ROW) + l / THREADS_PER_ROW;
}

@compute @workgroup_size(256, 1, 1)
fn forward_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let row = rows_row(wid, l);
    let lane = l % THREADS_PER_ROW;
    let valid = row < params.rows;
    let base = row * params.cols;
    var ms = vec2<f32>(neg_inf(), 0.0);
    if (valid) {
        for (var j = lane; j < params.cols; j += THREADS_PER_ROW) {
            let v = f32(x[base + j]);
            ms = online_max_sum(ms, v);
            if (poisons_row(v)) { ms.y = nan(); }
        }
    }
    ms = segment_max_sum(l, lane, ms);
    if (!valid) { return; }
    let all_masked = ms.y == 0.0;
    let log_sum = log(ms.y);
    for (var j = lane; j < params.cols; j += THREADS_PER_ROW) {
        let v = f32(x[base + j]);
        var y: f32;
        if (LOG) {
            y = select(v - ms.x - log_sum, neg_inf(), all_masked);
        } else {
            y = select(exp_diff(v, ms.x) / ms.y, 0.0, all_masked);
        }
        out[base + j] = Elem(y);
    }
}

@compute @workgroup_size(256, 1, 1)
fn backward_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let row = rows_row(wid, l);
    let lane = l % THREADS_PER_ROW;
    let valid = row < params.rows;
    let base = row * params.cols;
    var partial = 0.0;
    if (valid) {
        for (var j = lane; j < params.cols; j += THREADS_PER_ROW) {
            let g = f32(dy[base + j]);
            if (LOG) { partial += g; } else { partial += g * f32(x[base + j]); }
        }
    }
    let total = segment_sum(l, lane, partial);
    if (!valid) { return; }
    for (var j = lane; j < params.cols; j += THREADS_PER_ROW) {
        let y = f32(x[base + j]);
        let g = f32(dy[base + j]);
        var dx: f32;
        if (LOG) { dx = g - exp(y) * total; } else { dx = y * (g - total); }
        out[base + j] = Elem(dx);
    }
}

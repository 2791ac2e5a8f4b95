// loss.wgsl: cross-entropy fused with softmax, one workgroup of 256 threads per row of logits
// (cross_entropy_rows: one thread per narrow row).
//   cross_entropy       integer labels, label smoothing ε: with q = (1-ε)·onehot(label) + ε/C,
//                       row_loss = (logsumexp(x) - Σ q·x) / count, grad = (softmax(x) - q) / count,
//                       where count is the number of rows whose label is a class (as PyTorch's
//                       mean reduction). A label equal to 0xFFFFFFFF is ignored (row loss 0,
//                       gradient 0, not counted); so is any other label >= C, and count_targets
//                       counts those apart so that the caller can read how many there were.
//   count_targets       counts[w] = number of labels in chunk w of rows that are classes, and
//                       invalid[w] = number that are neither classes nor ignored (f32); wgnn adds
//                       each into count[0] and count[1] before cross_entropy reads count[0];
//                       count_targets_total (one chunk of labels) writes count[0] and count[1].
//   regression          prediction y and targets t of one shape, e = y - t, the mean over every
//                       element (PyTorch's reduction='mean'), scale = 1/n:
//                       KIND 0 MSE: l = e², g = 2e·scale; 1 L1: l = |e|, g = sign(e)·scale;
//                       2 Huber(δ): |e| ≤ δ: l = e²/2, g = e·scale, else l = δ(|e| - δ/2),
//                       g = δ·sign(e)·scale. Writes l·scale per element (summed afterwards).
//   soft_cross_entropy  student logits z, teacher logits t, temperature T (distillation):
//                       p = softmax(z/T), q = softmax(t/T), row_loss = T²·(-Σ q·log p) · grad_scale,
//                       grad = T·(p - q) · grad_scale (grad_scale = 1 / rows).
// One pass gathers the row's statistics with online max/sum rescaling, a second writes the
// gradient. The loss is then the sum of row_loss (a separate tiny reduction, see ops::loss).
// Rows longer than one workgroup should walk (Mesa's software drivers stop an invocation after
// 65,535 loop iterations) run as *_chunk_stats (one workgroup per (row, chunk of CHUNK columns),
// writing the chunk's statistics) then *_chunks (each merges its row's statistics and writes its
// chunk; chunk 0 writes the row loss).
// Bindings: 0 params, 1 logits (read), 2 grad (read_write), 3 row_loss (read_write f32),
// 4 labels (read u32; cross_entropy), 5 teacher logits (read; soft_cross_entropy), 6 stats
// (read_write f32; chunked rows), 7 count (read f32; cross_entropy), 8 counts and 9 invalid
// (read_write f32; count_targets), 10 targets (read; regression, which writes its per-element
// losses at 3).
// Elem is f32 or f16 (wgnn rewrites the alias); arithmetic is f32. Prelude: numerics.wgsl.

alias Elem = f32;

struct Params {
    rows: u32,
    cols: u32,
    groups_x: u32,
    chunks: u32,        // chunks per row (chunked entry points)
    smoothing: f32,
    temperature: f32,
    grad_scale: f32,
    _pad: u32,
}

const WG: u32 = 256u;
const CHUNK: u32 = 16384u;
const IGNORE: u32 = 0xffffffffu;

// count_targets reads its own struct at binding 0.
struct CountParams {
    rows: u32,
    cols: u32,
    groups_x: u32,
    rows_per_chunk: u32,
}

// regression reads its own struct at binding 0.
struct RegressionParams {
    n: u32,
    groups_x: u32,
    delta: f32,
    scale: f32,
}

override KIND: u32 = 0u;    // regression: 0 MSE, 1 L1, 2 Huber

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(0) var<uniform> count_params: CountParams;
@group(0) @binding(0) var<uniform> regression_params: RegressionParams;
@group(0) @binding(1) var<storage, read> logits: array<Elem>;
@group(0) @binding(2) var<storage, read_write> grad: array<Elem>;
@group(0) @binding(3) var<storage, read_write> row_loss: array<f32>;
@group(0) @binding(4) var<storage, read> labels: array<u32>;
@group(0) @binding(5) var<storage, read> teacher: array<Elem>;
@group(0) @binding(6) var<storage, read_write> stats: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> count: array<f32>;
@group(0) @binding(8) var<storage, read_write> counts: array<f32>;
@group(0) @binding(9) var<storage, read_write> invalid: array<f32>;
@group(0) @binding(10) var<storage, read> targets: array<Elem>;

fn group_index(wid: vec3<u32>) -> u32 {
    return wid.y * params.groups_x + wid.x;
}

// ---- cross-entropy: statistics (max, Σ exp(x - max), Σ x) ----------------------------------

var<workgroup> red_ce: array<vec3<f32>, WG>;

fn merge_ce(a: vec3<f32>, b: vec3<f32>) -> vec3<f32> {
    let ms = merge_max_sum(a.xy, b.xy);
    return vec3<f32>(ms, a.z + b.z);
}

fn workgroup_ce(l: u32, v: vec3<f32>) -> vec3<f32> {
    red_ce[l] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (l < stride) { red_ce[l] = merge_ce(red_ce[l], red_ce[l + stride]); }
        workgroupBarrier();
    }
    let r = red_ce[0];
    workgroupBarrier();
    return r;
}

fn ce_stats(l: u32, base: u32, lo: u32, hi: u32) -> vec3<f32> {
    var st = vec3<f32>(neg_inf(), 0.0, 0.0);
    for (var j = lo + l; j < hi; j += WG) {
        let v = f32(logits[base + j]);
        st = vec3<f32>(online_max_sum(st.xy, v), st.z + v);
    }
    return workgroup_ce(l, st);
}

// Writes the gradient of columns start, start + step, ... below hi of `row`, and the row's loss
// when `writes_loss`.
fn ce_write_columns(row: u32, start: u32, step: u32, hi: u32, st: vec3<f32>, writes_loss: bool) {
    let cols = params.cols;
    let base = row * cols;
    let row_max = st.x;
    let sum = st.y;
    let label = labels[row];
    let eps = params.smoothing;
    let uniform_q = eps / f32(cols);
    // Ignored: IGNORE, or a label that is no class (counted apart by count_targets).
    let ignored = label >= cols;
    let scale = 1.0 / count[0];
    if (writes_loss) {
        // An ignored row adds 0, unless every row is ignored: then the mean is 0/0 = NaN (PyTorch).
        var loss = select(0.0, nan(), count[0] == 0.0);
        if (!ignored) {
            // logsumexp - x as log(sum) + (max - x): no cancellation between large numbers.
            let log_sum = log(sum);
            loss = (1.0 - eps) * (log_sum + (row_max - f32(logits[base + label])));
            // Only with smoothing: 0 · Σx would be NaN for a row with a masked (-inf) class.
            if (eps > 0.0) { loss += eps * (log_sum + (row_max - st.z / f32(cols))); }
            loss *= scale;
        }
        row_loss[row] = loss;
    }
    for (var j = start; j < hi; j += step) {
        let p = exp_diff(f32(logits[base + j]), row_max) / sum;
        let q = select(0.0, 1.0 - eps, j == label) + uniform_q;
        var g = (p - q) * scale;
        if (ignored) { g = 0.0; }
        grad[base + j] = Elem(g);
    }
}

// Writes the gradient of columns [lo, hi) of `row` across the workgroup, and (when lo is 0) the
// row's loss.
fn ce_write(l: u32, row: u32, lo: u32, hi: u32, st: vec3<f32>) {
    ce_write_columns(row, lo + l, WG, hi, st, l == 0u && lo == 0u);
}

// One thread per row, for rows of at most NARROW_COLS columns (ops::loss): no shared memory and no
// barriers, which a CPU adapter runs as coroutine switches.
@compute @workgroup_size(64, 1, 1)
fn cross_entropy_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let row = group_index(wid) * 64u + l;
    if (row >= params.rows) { return; }
    let base = row * params.cols;
    var st = vec3<f32>(neg_inf(), 0.0, 0.0);
    for (var j = 0u; j < params.cols; j++) {
        let v = f32(logits[base + j]);
        st = vec3<f32>(online_max_sum(st.xy, v), st.z + v);
    }
    ce_write_columns(row, 0u, 1u, params.cols, st, true);
}

@compute @workgroup_size(256, 1, 1)
fn cross_entropy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let row = group_index(wid);
    if (row >= params.rows) { return; }
    ce_write(l, row, 0u, params.cols, ce_stats(l, row * params.cols, 0u, params.cols));
}

@compute @workgroup_size(256, 1, 1)
fn cross_entropy_chunk_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let flat = group_index(wid);
    if (flat >= params.rows * params.chunks) { return; }
    let lo = (flat % params.chunks) * CHUNK;
    let st = ce_stats(l, (flat / params.chunks) * params.cols, lo, min(lo + CHUNK, params.cols));
    if (l == 0u) { stats[flat] = vec4<f32>(st, 0.0); }
}

@compute @workgroup_size(256, 1, 1)
fn cross_entropy_chunks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let flat = group_index(wid);
    if (flat >= params.rows * params.chunks) { return; }
    let row = flat / params.chunks;
    var st = vec3<f32>(neg_inf(), 0.0, 0.0);
    for (var c = l; c < params.chunks; c += WG) { st = merge_ce(st, stats[row * params.chunks + c].xyz); }
    st = workgroup_ce(l, st);
    let lo = (flat % params.chunks) * CHUNK;
    ce_write(l, row, lo, min(lo + CHUNK, params.cols), st);
}

var<workgroup> red_count: array<vec2<f32>, WG>;

// (labels that are classes, labels that are neither classes nor ignored) in rows [lo, hi), over
// the workgroup.
fn count_range(l: u32, lo: u32, hi: u32) -> vec2<f32> {
    var n = vec2<f32>(0.0, 0.0);
    for (var r = lo + l; r < hi; r += WG) {
        let label = labels[r];
        if (label < count_params.cols) {
            n.x += 1.0;
        } else if (label != IGNORE) {
            n.y += 1.0;
        }
    }
    red_count[l] = n;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (l < stride) { red_count[l] += red_count[l + stride]; }
        workgroupBarrier();
    }
    return red_count[0];
}

@compute @workgroup_size(256, 1, 1)
fn count_targets(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let params = count_params;
    let w = wid.y * params.groups_x + wid.x;
    let lo = w * params.rows_per_chunk;
    if (lo >= params.rows) { return; }
    let n = count_range(l, lo, min(lo + params.rows_per_chunk, params.rows));
    if (l == 0u) {
        counts[w] = n.x;
        invalid[w] = n.y;
    }
}

// All the labels in one workgroup: counts[0] and counts[1] are what count_targets' two totals are.
@compute @workgroup_size(256, 1, 1)
fn count_targets_total(@builtin(local_invocation_index) l: u32) {
    let n = count_range(l, 0u, count_params.rows);
    if (l == 0u) {
        counts[0] = n.x;
        counts[1] = n.y;
    }
}

// ---- soft cross-entropy: statistics of the student (z/T) and the teacher (t/T) --------------

struct SoftStats {
    z: vec2<f32>,     // student (max, Σ exp)
    t: vec2<f32>,     // teacher (max, Σ exp)
    w: f32,           // Σ exp(t/T - t max) · z/T, rescaled with the teacher's max
}

var<workgroup> red_soft: array<SoftStats, WG>;

fn merge_soft(a: SoftStats, b: SoftStats) -> SoftStats {
    let t = max(a.t.x, b.t.x);
    let ra = exp_diff(a.t.x, t);
    let rb = exp_diff(b.t.x, t);
    return SoftStats(merge_max_sum(a.z, b.z), vec2<f32>(t, a.t.y * ra + b.t.y * rb), a.w * ra + b.w * rb);
}

fn workgroup_soft(l: u32, v: SoftStats) -> SoftStats {
    red_soft[l] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (l < stride) { red_soft[l] = merge_soft(red_soft[l], red_soft[l + stride]); }
        workgroupBarrier();
    }
    let r = red_soft[0];
    workgroupBarrier();
    return r;
}

fn empty_soft() -> SoftStats {
    return SoftStats(vec2<f32>(neg_inf(), 0.0), vec2<f32>(neg_inf(), 0.0), 0.0);
}

fn soft_stats(l: u32, base: u32, lo: u32, hi: u32) -> SoftStats {
    let inv_t = 1.0 / params.temperature;
    var st = empty_soft();
    for (var j = lo + l; j < hi; j += WG) {
        let z = f32(logits[base + j]) * inv_t;
        let t = f32(teacher[base + j]) * inv_t;
        st.z = online_max_sum(st.z, z);
        if (t > st.t.x) {
            let r = exp_diff(st.t.x, t);
            st.w = st.w * r + z;
            st.t = vec2<f32>(t, st.t.y * r + 1.0);
        } else {
            let e = exp_diff(t, st.t.x);
            st.t.y += e;
            if (e > 0.0) { st.w += e * z; }
        }
    }
    return workgroup_soft(l, st);
}

fn soft_write(l: u32, row: u32, lo: u32, hi: u32, st: SoftStats) {
    let base = row * params.cols;
    let inv_t = 1.0 / params.temperature;
    let temp = params.temperature;
    if (l == 0u && lo == 0u) {
        let lse = st.z.x + log(st.z.y);
        row_loss[row] = temp * temp * (lse - st.w / st.t.y) * params.grad_scale;
    }
    for (var j = lo + l; j < hi; j += WG) {
        let p = exp_diff(f32(logits[base + j]) * inv_t, st.z.x) / st.z.y;
        let q = exp_diff(f32(teacher[base + j]) * inv_t, st.t.x) / st.t.y;
        grad[base + j] = Elem(temp * (p - q) * params.grad_scale);
    }
}

@compute @workgroup_size(256, 1, 1)
fn soft_cross_entropy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let row = group_index(wid);
    if (row >= params.rows) { return; }
    soft_write(l, row, 0u, params.cols, soft_stats(l, row * params.cols, 0u, params.cols));
}

@compute @workgroup_size(256, 1, 1)
fn soft_cross_entropy_chunk_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let flat = group_index(wid);
    if (flat >= params.rows * params.chunks) { return; }
    let lo = (flat % params.chunks) * CHUNK;
    let st = soft_stats(l, (flat / params.chunks) * params.cols, lo, min(lo + CHUNK, params.cols));
    if (l == 0u) {
        stats[2u * flat] = vec4<f32>(st.z, st.t);
        stats[2u * flat + 1u] = vec4<f32>(st.w, 0.0, 0.0, 0.0);
    }
}

@compute @workgroup_size(256, 1, 1)
fn soft_cross_entropy_chunks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let flat = group_index(wid);
    if (flat >= params.rows * params.chunks) { return; }
    let row = flat / params.chunks;
    var st = empty_soft();
    for (var c = l; c < params.chunks; c += WG) {
        let i = 2u * (row * params.chunks + c);
        let a = stats[i];
        st = merge_soft(st, SoftStats(a.xy, a.zw, stats[i + 1u].x));
    }
    st = workgroup_soft(l, st);
    let lo = (flat % params.chunks) * CHUNK;
    soft_write(l, row, lo, min(lo + CHUNK, params.cols), st);
}

// ---- regression losses ---------------------------------------------------------------------

@compute @workgroup_size(256, 1, 1)
fn regression(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let params = regression_params;
    let i = (wid.y * params.groups_x + wid.x) * WG + l;
    if (i >= params.n) { return; }
    let e = f32(logits[i]) - f32(targets[i]);
    let a = abs(e);
    var loss = e * e;
    var g = 2.0 * e;
    if (KIND == 1u) {
        loss = a;
        g = sign(e);
    } else if (KIND == 2u) {
        let d = params.delta;
        if (a <= d) {
            loss = 0.5 * e * e;
            g = e;
        } else {
            loss = d * (a - 0.5 * d);
            g = d * sign(e);
        }
    }
    row_loss[i] = loss * params.scale;
    grad[i] = Elem(g * params.scale);
}

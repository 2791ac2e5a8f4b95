// loss.wgsl: cross-entropy fused with softmax, one workgroup of 256 threads per row of logits.
//   cross_entropy       integer labels, label smoothing ε: with q = (1-ε)·onehot(label) + ε/C,
//                       row_loss = logsumexp(x) - Σ q·x, grad = (softmax(x) - q) · grad_scale.
//                       A label equal to 0xFFFFFFFF is ignored (row loss 0, gradient 0); any other
//                       label >= C gives a NaN row (visible, never silent).
//   soft_cross_entropy  student logits z, teacher logits t, temperature T (distillation):
//                       p = softmax(z/T), q = softmax(t/T), row_loss = T²·(-Σ q·log p),
//                       grad = T·(p - q) · grad_scale.
// One pass gathers the row's statistics with online max/sum rescaling, a second writes the
// gradient. The mean over rows is a separate tiny reduction of row_loss (see ops::loss).
// Bindings: 0 params, 1 logits (read), 2 grad (read_write), 3 row_loss (read_write f32),
// 4 labels (read u32; cross_entropy), 5 teacher logits (read; soft_cross_entropy).
// Elem is f32 or f16 (wgnn rewrites the alias); arithmetic is f32. Prelude: numerics.wgsl.

alias Elem = f32;

struct Params {
    rows: u32,
    cols: u32,
    groups_x: u32,
    _pad: u32,
    smoothing: f32,
    temperature: f32,
    grad_scale: f32,
    _pad1: u32,
}

const WG: u32 = 256u;
const IGNORE: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<Elem>;
@group(0) @binding(2) var<storage, read_write> grad: array<Elem>;
@group(0) @binding(3) var<storage, read_write> row_loss: array<f32>;
@group(0) @binding(4) var<storage, read> labels: array<u32>;
@group(0) @binding(5) var<storage, read> teacher: array<Elem>;

var<workgroup> red_m: array<f32, WG>;
var<workgroup> red_s: array<f32, WG>;
var<workgroup> red_m2: array<f32, WG>;
var<workgroup> red_s2: array<f32, WG>;
var<workgroup> red_w: array<f32, WG>;

fn row_of(wid: vec3<u32>) -> u32 {
    return wid.y * params.groups_x + wid.x;
}

@compute @workgroup_size(256, 1, 1)
fn cross_entropy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let row = row_of(wid);
    if (row >= params.rows) { return; }
    let cols = params.cols;
    let base = row * cols;
    var ms = vec2<f32>(neg_inf(), 0.0);
    var total = 0.0;   // Σ x, for smoothing
    for (var j = l; j < cols; j += WG) {
        let v = f32(logits[base + j]);
        ms = online_max_sum(ms, v);
        total += v;
    }
    red_m[l] = ms.x;
    red_s[l] = ms.y;
    red_w[l] = total;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (l < stride) {
            let ms = merge_max_sum(vec2<f32>(red_m[l], red_s[l]), vec2<f32>(red_m[l + stride], red_s[l + stride]));
            red_m[l] = ms.x;
            red_s[l] = ms.y;
            red_w[l] += red_w[l + stride];
        }
        workgroupBarrier();
    }
    let row_max = red_m[0];
    let sum = red_s[0];
    let sum_x = red_w[0];
    let label = labels[row];
    let eps = params.smoothing;
    let uniform_q = eps / f32(cols);
    let ignored = label == IGNORE;
    let bad = !ignored && label >= cols;
    if (l == 0u) {
        var loss = 0.0;
        if (bad) {
            loss = nan();
        } else if (!ignored) {
            // logsumexp - x as log(sum) + (max - x): no cancellation between large numbers.
            let log_sum = log(sum);
            loss = (1.0 - eps) * (log_sum + (row_max - f32(logits[base + label])));
            // Only with smoothing: 0 · Σx would be NaN for a row with a masked (-inf) class.
            if (eps > 0.0) { loss += eps * (log_sum + (row_max - sum_x / f32(cols))); }
        }
        row_loss[row] = loss;
    }
    for (var j = l; j < cols; j += WG) {
        let p = exp_diff(f32(logits[base + j]), row_max) / sum;
        let q = select(0.0, 1.0 - eps, j == label) + uniform_q;
        var g = (p - q) * params.grad_scale;
        if (ignored) { g = 0.0; }
        if (bad) { g = nan(); }
        grad[base + j] = Elem(g);
    }
}

@compute @workgroup_size(256, 1, 1)
fn soft_cross_entropy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let row = row_of(wid);
    if (row >= params.rows) { return; }
    let cols = params.cols;
    let base = row * cols;
    let inv_t = 1.0 / params.temperature;
    var ps = vec2<f32>(neg_inf(), 0.0);   // student z/T: (max, sum)
    var qs = vec2<f32>(neg_inf(), 0.0);   // teacher t/T: (max, sum)
    var w = 0.0;                          // Σ exp(t/T - max_t) · z/T, rescaled with the teacher's max
    for (var j = l; j < cols; j += WG) {
        let z = f32(logits[base + j]) * inv_t;
        let t = f32(teacher[base + j]) * inv_t;
        ps = online_max_sum(ps, z);
        if (t > qs.x) {
            let r = exp_diff(qs.x, t);
            w *= r;
            qs = vec2<f32>(t, qs.y * r + 1.0);
            w += z;
        } else {
            let e = exp_diff(t, qs.x);
            qs.y += e;
            if (e > 0.0) { w += e * z; }
        }
    }
    red_m[l] = ps.x;
    red_s[l] = ps.y;
    red_m2[l] = qs.x;
    red_s2[l] = qs.y;
    red_w[l] = w;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (l < stride) {
            let ms = merge_max_sum(vec2<f32>(red_m[l], red_s[l]), vec2<f32>(red_m[l + stride], red_s[l + stride]));
            red_m[l] = ms.x;
            red_s[l] = ms.y;
            let t1 = red_m2[l];
            let t2 = red_m2[l + stride];
            let t = max(t1, t2);
            let r1 = exp_diff(t1, t);
            let r2 = exp_diff(t2, t);
            red_s2[l] = red_s2[l] * r1 + red_s2[l + stride] * r2;
            red_w[l] = red_w[l] * r1 + red_w[l + stride] * r2;
            red_m2[l] = t;
        }
        workgroupBarrier();
    }
    let z_max = red_m[0];
    let z_sum = red_s[0];
    let t_max = red_m2[0];
    let t_sum = red_s2[0];
    let temp = params.temperature;
    if (l == 0u) {
        let lse = z_max + log(z_sum);
        row_loss[row] = temp * temp * (lse - red_w[0] / t_sum);
    }
    for (var j = l; j < cols; j += WG) {
        let p = exp_diff(f32(logits[base + j]) * inv_t, z_max) / z_sum;
        let q = exp_diff(f32(teacher[base + j]) * inv_t, t_max) / t_sum;
        grad[base + j] = Elem(temp * (p - q) * params.grad_scale);
    }
}

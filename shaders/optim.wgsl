// optim.wgsl: optimizer updates, in place, one parameter element per thread (f32 only: parameters,
// gradients and optimizer state are f32 master copies).
//   sgd              PyTorch's SGD: d = g + wd·p; with momentum, buf = μ·buf + (1 - dampening)·d
//                    (buf = d on the first step); d = d + μ·buf (Nesterov) or buf; p -= lr·d.
//   adam             Adam, or AdamW when DECOUPLED: p -= lr·wd·p first (AdamW) or g += wd·p (Adam);
//                    m = β1·m + (1-β1)·g; v = β2·v + (1-β2)·g²; p -= lr·(m/bc1) / (sqrt(v/bc2) + eps),
//                    with bc = 1 - β^step computed on the host.
// With SKIP_ON_FLAG (mixed precision) the update leaves everything unchanged while skip[0] is set,
// and skip[1] counts the steps skipped before this one, so the step's number among the applied
// ones is step - skip[1]: Adam's bias corrections (1 - pow(β, t) on the GPU, as PyTorch's
// capturable Adam) and SGD's first momentum step follow it, as with PyTorch's GradScaler, which
// skips optimizer.step() altogether.
//   clip_coefficient one workgroup: norm = sqrt(Σ sq[i]) over the per-tensor sums of squares;
//                    coef[0] = norm, coef[1] = min(1, max_norm / (norm + 1e-6)).
//   scale_by_coefficient  g *= coef[1], in place.
// Bindings: 0 the entry point's params (SgdParams, AdamParams, ClipParams); sgd: 1 p, 2 g, 3 momentum buffer; adam: 1 p, 2 g, 3 m, 4 v; with
// SKIP_ON_FLAG also 7 skip (read u32: the loss-scale overflow flag and the count of skipped
// steps, see amp.wgsl); adam: 8 decay_mask (read f32, with DECAY_MASK: which elements decay, as
// AdamW on matrices only);
// clip_coefficient: 2 sq (read), 5 coef (read_write); scale_by_coefficient: 1 g, 6 coef (read).
// Grid: 256-thread workgroups, folded into y past 65,535 along x.

// Each entry point reads its own uniform struct at binding 0.
struct SgdParams {
    n: u32,
    groups_x: u32,
    flags: u32,          // bit 0 momentum, bit 1 nesterov, bit 2 first step
    step: u32,           // this step's number, from 1, skipped steps included (SKIP_ON_FLAG)
    lr: f32,
    weight_decay: f32,
    momentum: f32,
    dampening: f32,
}

struct AdamParams {
    n: u32,
    groups_x: u32,
    step: u32,           // this step's number, from 1, skipped steps included (SKIP_ON_FLAG)
    _pad: u32,
    lr: f32,
    weight_decay: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    bias_correction1: f32,
    bias_correction2: f32,
    _pad2: u32,
}

struct ClipParams {
    n: u32,              // clip_coefficient: tensors; scale_by_coefficient: elements
    groups_x: u32,
    max_norm: f32,
    _pad: u32,
}

override DECOUPLED: bool = false;
override DECAY_MASK: bool = false;   // adam: weight decay scaled per element by decay_mask (0 or 1)
override SKIP_ON_FLAG: bool = false;  // leave everything unchanged when skip[0] != 0 (loss-scale overflow)

@group(0) @binding(0) var<uniform> sgd_params: SgdParams;
@group(0) @binding(0) var<uniform> adam_params: AdamParams;
@group(0) @binding(0) var<uniform> clip_params: ClipParams;
@group(0) @binding(1) var<storage, read_write> p: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read_write> coef_out: array<f32>;
@group(0) @binding(6) var<storage, read> coef_in: array<f32>;
@group(0) @binding(7) var<storage, read> skip: array<u32>;
@group(0) @binding(8) var<storage, read> decay_mask: array<f32>;

var<workgroup> red: array<f32, 256>;

// The number of this step among the applied ones (SKIP_ON_FLAG only).
fn applied_step(step: u32) -> u32 {
    return step - skip[1];
}

fn index(wid: vec3<u32>, l: u32, groups_x: u32) -> u32 {
    return (wid.y * groups_x + wid.x) * 256u + l;
}

@compute @workgroup_size(256, 1, 1)
fn sgd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let params = sgd_params;
    let i = index(wid, l, params.groups_x);
    if (i >= params.n) { return; }
    if (SKIP_ON_FLAG) { if (skip[0] != 0u) { return; } }
    let w = p[i];
    var d = g[i] + params.weight_decay * w;
    if ((params.flags & 1u) != 0u) {
        var buf = d;
        var first = (params.flags & 4u) != 0u;
        if (SKIP_ON_FLAG) { first = applied_step(params.step) == 1u; }
        if (!first) {
            buf = params.momentum * m[i] + (1.0 - params.dampening) * d;
        }
        m[i] = buf;
        if ((params.flags & 2u) != 0u) { d = d + params.momentum * buf; } else { d = buf; }
    }
    p[i] = w - params.lr * d;
}

@compute @workgroup_size(256, 1, 1)
fn adam(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let params = adam_params;
    let i = index(wid, l, params.groups_x);
    if (i >= params.n) { return; }
    if (SKIP_ON_FLAG) { if (skip[0] != 0u) { return; } }
    var w = p[i];
    var grad = g[i];
    var wd = params.weight_decay;
    if (DECAY_MASK) { wd *= decay_mask[i]; }
    if (DECOUPLED) {
        w = w * (1.0 - params.lr * wd);
    } else {
        grad = grad + wd * w;
    }
    let b1 = params.beta1;
    let b2 = params.beta2;
    let m1 = b1 * m[i] + (1.0 - b1) * grad;
    let v1 = b2 * v[i] + (1.0 - b2) * grad * grad;
    m[i] = m1;
    v[i] = v1;
    var bc1 = params.bias_correction1;
    var bc2 = params.bias_correction2;
    if (SKIP_ON_FLAG) {
        let t = f32(applied_step(params.step));
        bc1 = 1.0 - pow(b1, t);
        bc2 = 1.0 - pow(b2, t);
    }
    let m_hat = m1 / bc1;
    let v_hat = v1 / bc2;
    p[i] = w - params.lr * m_hat / (sqrt(v_hat) + params.eps);
}

@compute @workgroup_size(256, 1, 1)
fn clip_coefficient(@builtin(local_invocation_index) l: u32) {
    let params = clip_params;
    var s = 0.0;
    for (var j = l; j < params.n; j += 256u) { s += g[j]; }
    red[l] = s;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride /= 2u) {
        if (l < stride) { red[l] += red[l + stride]; }
        workgroupBarrier();
    }
    if (l == 0u) {
        let norm = sqrt(red[0]);
        coef_out[0] = norm;
        coef_out[1] = min(1.0, params.max_norm / (norm + 1e-6));
    }
}

@compute @workgroup_size(256, 1, 1)
fn scale_by_coefficient(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let params = clip_params;
    let i = index(wid, l, params.groups_x);
    if (i >= params.n) { return; }
    p[i] = p[i] * coef_in[1];
}

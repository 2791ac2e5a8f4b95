// elementwise.wgsl: one output element per thread.
//   activation_forward   y = act(x)
//   activation_backward  dx = dy · act'(x)            (x: the activation's input)
//   bias_add             y[i] = x[i] + bias[(i / inner) % channels]   (Linear: inner 1; NCHW: inner H·W)
//   scale_add            y = alpha · x + beta · z
//   axpy                 y = y + alpha · x, in place (gradient accumulation)
//   scale_in_place       y = alpha · y
//   mul_in_place         y = y · x (a pruning mask)
// Bindings: 0 params, 1 x (read), 2 y (read_write), 3 z / dy / bias (read; not used by
// activation_forward). Grid: 256-thread workgroups, folded into y past 65,535 along x.
// Elem is f32 or f16 (wgnn rewrites the alias); arithmetic is f32. Prelude: activation.wgsl.

alias Elem = f32;

struct Params {
    n: u32,
    inner: u32,
    channels: u32,
    groups_x: u32,
    alpha: f32,
    beta: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<Elem>;
@group(0) @binding(2) var<storage, read_write> y: array<Elem>;
@group(0) @binding(3) var<storage, read> z: array<Elem>;

fn index(wid: vec3<u32>, l: u32) -> u32 {
    return (wid.y * params.groups_x + wid.x) * 256u + l;
}

@compute @workgroup_size(256, 1, 1)
fn activation_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = index(wid, l);
    if (i >= params.n) { return; }
    y[i] = Elem(activate1(f32(x[i])));
}

@compute @workgroup_size(256, 1, 1)
fn activation_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = index(wid, l);
    if (i >= params.n) { return; }
    y[i] = Elem(f32(z[i]) * activate_grad1(f32(x[i])));
}

@compute @workgroup_size(256, 1, 1)
fn bias_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = index(wid, l);
    if (i >= params.n) { return; }
    let c = (i / params.inner) % params.channels;
    y[i] = Elem(f32(x[i]) + f32(z[c]));
}

@compute @workgroup_size(256, 1, 1)
fn scale_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = index(wid, l);
    if (i >= params.n) { return; }
    y[i] = Elem(params.alpha * f32(x[i]) + params.beta * f32(z[i]));
}

@compute @workgroup_size(256, 1, 1)
fn axpy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = index(wid, l);
    if (i >= params.n) { return; }
    y[i] = Elem(f32(y[i]) + params.alpha * f32(x[i]));
}

@compute @workgroup_size(256, 1, 1)
fn scale_in_place(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = index(wid, l);
    if (i >= params.n) { return; }
    y[i] = Elem(params.alpha * f32(y[i]));
}

@compute @workgroup_size(256, 1, 1)
fn mul_in_place(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = index(wid, l);
    if (i >= params.n) { return; }
    y[i] = Elem(f32(y[i]) * f32(x[i]));
}

// amp.wgsl: mixed-precision training with dynamic loss scaling (as PyTorch's GradScaler), all on
// the GPU so that a step never waits for the host.
//   cast_from_f32   half[i] = Elem(master[i])           (f32 master weights -> f16 copies)
//   scale_by_state  y[i] = y[i] · state[0]               (the loss gradient times the loss scale)
//   unscale_check   grad32[i] = f32(grad[i]) / state[0]; any non-finite value sets found[0] = 1
//   update_scale    one thread: after an overflow halve the scale and restart the count of good
//                   steps, else count the step and double the scale every `growth_interval`
//                   good steps; count skipped steps; clear found[0] for the next step.
// state: [scale, good steps, skipped steps, unused] (f32). found: [overflow flag, skipped steps]
// (u32). The optimizer reads found[0] and skips its update when it is set, and numbers the
// applied steps with found[1] (optim.wgsl, SKIP_ON_FLAG).
// Bindings: 0 params, 1 master / grad (read), 2 half / y (read_write), 3 state (read; cast and
// scale), 4 grad32 (read_write f32), 5 found (read_write atomic u32), 6 state (read_write;
// update_scale). Grid: 256-thread workgroups, folded into y past 65,535.
// Elem is f16 (wgnn rewrites the alias) or f32.

alias Elem = f32;

struct Params {
    n: u32,
    groups_x: u32,
    growth_interval: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<Elem>;
@group(0) @binding(2) var<storage, read_write> dst: array<Elem>;
@group(0) @binding(3) var<storage, read> state_in: array<f32>;
@group(0) @binding(4) var<storage, read_write> grad32: array<f32>;
@group(0) @binding(5) var<storage, read_write> found: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read_write> state: array<f32>;
@group(0) @binding(7) var<storage, read> master: array<f32>;

fn index(wid: vec3<u32>, l: u32) -> u32 {
    return (wid.y * params.groups_x + wid.x) * 256u + l;
}

fn finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(256, 1, 1)
fn cast_from_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = index(wid, l);
    if (i >= params.n) { return; }
    dst[i] = Elem(master[i]);
}

@compute @workgroup_size(256, 1, 1)
fn scale_by_state(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = index(wid, l);
    if (i >= params.n) { return; }
    dst[i] = Elem(f32(dst[i]) * state_in[0]);
}

@compute @workgroup_size(256, 1, 1)
fn unscale_check(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = index(wid, l);
    if (i >= params.n) { return; }
    let g = f32(src[i]);
    grad32[i] = g / state_in[0];
    if (!finite(g)) { atomicMax(&found[0], 1u); }
}

@compute @workgroup_size(1, 1, 1)
fn update_scale() {
    let overflow = atomicLoad(&found[0]) != 0u;
    if (overflow) {
        state[0] = max(state[0] * 0.5, 1.0);
        state[1] = 0.0;
        state[2] = state[2] + 1.0;
        atomicStore(&found[1], atomicLoad(&found[1]) + 1u);
    } else {
        state[1] = state[1] + 1.0;
        if (state[1] >= f32(params.growth_interval)) {
            state[0] = min(state[0] * 2.0, 16777216.0);
            state[1] = 0.0;
        }
    }
    atomicStore(&found[0], 0u);
}

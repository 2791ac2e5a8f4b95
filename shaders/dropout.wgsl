// dropout.wgsl: inverted dropout with a counter-based generator: element i of a call with key
// (seed, counter) is kept when hash(seed, counter, i) ≥ p · 2³², and kept values are scaled by
// 1 / (1 - p). The mask is never stored: the backward recomputes it from the same key, so forward
// and backward drop the same elements, and a run is reproducible from its seed.
// The hash is a few rounds of hash.wgsl's 32-bit mixer over the element index, each round keyed by
// one word of (seed_lo, seed_hi, counter): the same bits on every backend.
// Bindings: 0 params, 1 x (forward: the input; backward: dL/dy), 2 out.
//   apply   one thread per element: out = x · mask / (1 - p) (forward and backward alike)
// Grid: 256-thread workgroups, folded into y past 65,535 along x. No loops.
// Elem is f32 or f16 (wgnn rewrites the alias); arithmetic is f32.

alias Elem = f32;

struct Params {
    n: u32,
    groups_x: u32,
    seed_lo: u32,
    seed_hi: u32,
    counter: u32,
    threshold: u32,   // p · 2³², saturated
    scale: f32,       // 1 / (1 - p)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<Elem>;
@group(0) @binding(2) var<storage, read_write> out: array<Elem>;

fn keep_hash(i: u32) -> u32 {
    var h = mix(i ^ params.seed_lo);
    h = mix(h ^ params.seed_hi);
    h = mix(h ^ params.counter);
    return mix(h + 0x9e3779b9u);
}

@compute @workgroup_size(256, 1, 1)
fn apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = (wid.y * params.groups_x + wid.x) * 256u + l;
    if (i >= params.n) { return; }
    var v = 0.0;
    if (keep_hash(i) >= params.threshold) { v = f32(x[i]) * params.scale; }
    out[i] = Elem(v);
}

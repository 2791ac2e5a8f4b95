// reduce_subgroup.wgsl (prelude): workgroup-wide reductions for 256-thread workgroups with subgroup
// operations, for any subgroup size (32 on NVIDIA, 8 on llvmpipe): each subgroup reduces in
// registers, its first active lane claims a slot with an atomic (no subgroup-id builtins needed), and
// thread 0 merges the per-subgroup results. Same functions as reduce_shared.wgsl. Needs
// numerics.wgsl and the SUBGROUP feature (naga 30 gates subgroup builtins by that capability and
// does not take an `enable subgroups;` directive yet). Call from uniform control flow.

var<workgroup> sg_pair: array<vec2<f32>, 256>;
var<workgroup> sg_count: atomic<u32>;

fn workgroup_max_sum(l: u32, ms: vec2<f32>) -> vec2<f32> {
    if (l == 0u) { atomicStore(&sg_count, 0u); }
    workgroupBarrier();
    let m = subgroupMax(ms.x);
    let s = subgroupAdd(ms.y * exp_diff(ms.x, m));
    if (subgroupBroadcastFirst(l) == l) { sg_pair[atomicAdd(&sg_count, 1u)] = vec2<f32>(m, s); }
    workgroupBarrier();
    if (l == 0u) {
        var acc = sg_pair[0];
        let count = atomicLoad(&sg_count);
        for (var i = 1u; i < count; i++) { acc = merge_max_sum(acc, sg_pair[i]); }
        sg_pair[0] = acc;
    }
    workgroupBarrier();
    let r = sg_pair[0];
    workgroupBarrier();
    return r;
}

fn workgroup_sum(l: u32, v: f32) -> f32 {
    if (l == 0u) { atomicStore(&sg_count, 0u); }
    workgroupBarrier();
    let s = subgroupAdd(v);
    if (subgroupBroadcastFirst(l) == l) { sg_pair[atomicAdd(&sg_count, 1u)] = vec2<f32>(s, 0.0); }
    workgroupBarrier();
    if (l == 0u) {
        var acc = 0.0;
        let count = atomicLoad(&sg_count);
        for (var i = 0u; i < count; i++) { acc += sg_pair[i].x; }
        sg_pair[0].x = acc;
    }
    workgroupBarrier();
    let r = sg_pair[0].x;
    workgroupBarrier();
    return r;
}

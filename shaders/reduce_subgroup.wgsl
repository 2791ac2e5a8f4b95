// reduce_subgroup.wgsl (prelude): workgroup-wide reductions for 256-thread workgroups with subgroup
// operations, for any subgroup size (32 on NVIDIA, 8 on llvmpipe) and any assignment of threads
// to subgroups. Deterministic: the same input gives the same bits on every run. Each subgroup
// reduces in registers and its first active lane writes the result into its own slot (the others
// write the identity); then the subgroup holding thread 0 merges the 256 slots, each lane a fixed
// strided set of them in order, and reduces across its lanes. No slot is taken by an atomic, whose
// order would vary from run to run. Same functions as reduce_shared.wgsl. Needs numerics.wgsl and
// the SUBGROUP feature (naga 30 gates subgroup builtins by that capability and does not take an
// `enable subgroups;` directive yet). Call from uniform control flow.

var<workgroup> sg_pair: array<vec2<f32>, 256>;

fn subgroup_max_sum(ms: vec2<f32>) -> vec2<f32> {
    let m = subgroupMax(ms.x);
    return vec2<f32>(m, subgroupAdd(ms.y * exp_diff(ms.x, m)));
}

fn workgroup_max_sum(l: u32, ms: vec2<f32>) -> vec2<f32> {
    let partial = subgroup_max_sum(ms);
    sg_pair[l] = select(vec2<f32>(neg_inf(), 0.0), partial, subgroupBroadcastFirst(l) == l);
    workgroupBarrier();
    if (subgroupBroadcastFirst(l) == 0u) {
        let lane = subgroupExclusiveAdd(1u);
        let size = subgroupAdd(1u);
        var acc = vec2<f32>(neg_inf(), 0.0);
        for (var j = lane; j < 256u; j += size) { acc = merge_max_sum(acc, sg_pair[j]); }
        let total = subgroup_max_sum(acc);
        if (l == 0u) { sg_pair[0] = total; }
    }
    workgroupBarrier();
    let r = sg_pair[0];
    workgroupBarrier();
    return r;
}

fn workgroup_sum(l: u32, v: f32) -> f32 {
    let partial = subgroupAdd(v);
    sg_pair[l] = vec2<f32>(select(0.0, partial, subgroupBroadcastFirst(l) == l), 0.0);
    workgroupBarrier();
    if (subgroupBroadcastFirst(l) == 0u) {
        let lane = subgroupExclusiveAdd(1u);
        let size = subgroupAdd(1u);
        var acc = 0.0;
        for (var j = lane; j < 256u; j += size) { acc += sg_pair[j].x; }
        let total = subgroupAdd(acc);
        if (l == 0u) { sg_pair[0].x = total; }
    }
    workgroupBarrier();
    let r = sg_pair[0].x;
    workgroupBarrier();
    return r;
}

// reduce_shared.wgsl (prelude): workgroup-wide reductions for 256-thread workgroups, portable:
// a shared-memory tree. Same functions as reduce_subgroup.wgsl. Needs numerics.wgsl.
// Call from uniform control flow; every thread gets the result.

var<workgroup> red_pair: array<vec2<f32>, 256>;

fn workgroup_max_sum(l: u32, ms: vec2<f32>) -> vec2<f32> {
    red_pair[l] = ms;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride /= 2u) {
        if (l < stride) { red_pair[l] = merge_max_sum(red_pair[l], red_pair[l + stride]); }
        workgroupBarrier();
    }
    let r = red_pair[0];
    workgroupBarrier();
    return r;
}

fn workgroup_sum(l: u32, v: f32) -> f32 {
    red_pair[l] = vec2<f32>(v, 0.0);
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride /= 2u) {
        if (l < stride) { red_pair[l].x += red_pair[l + stride].x; }
        workgroupBarrier();
    }
    let r = red_pair[0].x;
    workgroupBarrier();
    return r;
}

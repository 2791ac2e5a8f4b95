// matmul_shared_rows.wgsl (prelude, subgroup variant of matmul): the 8 A values of one k of a
// thread's rows, gathered from the 8 lanes of its subgroup (lane j loaded value j). On CPU adapters
// every lane-dependent load is a scalar load per lane, while a broadcast is one register move, so
// this turns 8 loads into 1. Correct only where subgroups are 8 consecutive threads along x (the
// tuner offers the SHARED_ROWS candidates only with subgroups of exactly 8, and keeps one only if
// its result matches the default kernel's). Needs the SUBGROUP feature.

fn rows_from_lanes(mine: f32) -> array<vec4<f32>, 2> {
    return array<vec4<f32>, 2>(
        vec4<f32>(subgroupBroadcast(mine, 0u), subgroupBroadcast(mine, 1u),
                  subgroupBroadcast(mine, 2u), subgroupBroadcast(mine, 3u)),
        vec4<f32>(subgroupBroadcast(mine, 4u), subgroupBroadcast(mine, 5u),
                  subgroupBroadcast(mine, 6u), subgroupBroadcast(mine, 7u)));
}

// matmul_lanes_portable.wgsl (prelude, portable variant of matmul): stands in for
// matmul_shared_rows.wgsl where there are no subgroups; the SHARED_ROWS candidates, the only
// callers, are never offered there.

fn rows_from_lanes(mine: f32) -> array<vec4<f32>, 2> {
    return array<vec4<f32>, 2>(vec4<f32>(mine), vec4<f32>(mine));
}

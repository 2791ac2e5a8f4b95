// numerics.wgsl (prelude): IEEE special values and the stable exp used by online softmax.

fn neg_inf() -> f32 { return bitcast<f32>(0xff800000u); }
fn nan() -> f32 { return bitcast<f32>(0x7fc00000u); }

// NaN or +inf: either makes a softmax row NaN. Bit tests, since float compares may assume no NaN.
fn poisons_row(v: f32) -> bool {
    let bits = bitcast<u32>(v);
    return (bits & 0x7fffffffu) > 0x7f800000u || bits == 0x7f800000u;
}

// exp(a - b), with exp(-inf - -inf) taken as 0 (an empty or fully masked partial sum).
fn exp_diff(a: f32, b: f32) -> f32 {
    return select(exp(a - b), 0.0, a == neg_inf() && b == neg_inf());
}

// Merges two (max, Σ exp(x - max)) pairs.
fn merge_max_sum(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let m = max(a.x, b.x);
    return vec2<f32>(m, a.y * exp_diff(a.x, m) + b.y * exp_diff(b.x, m));
}

// Adds one value to a running (max, Σ exp(x - max)) pair.
fn online_max_sum(ms: vec2<f32>, v: f32) -> vec2<f32> {
    if (v > ms.x) { return vec2<f32>(v, ms.y * exp_diff(ms.x, v) + 1.0); }
    return vec2<f32>(ms.x, ms.y + exp_diff(v, ms.x));
}

// activation.wgsl: the activation functions and their derivatives, shared by kernels with fused
// epilogues (a prelude: wgnn prepends it to the kernels that name it; WGSL has no includes).
// ACTIVATION: 0 none, 1 relu, 2 gelu (exact, erf), 3 sigmoid, 4 tanh, 5 gelu (tanh approximation).
// A NaN input gives a NaN output for every activation, and a NaN gradient for every derivative but
// ReLU's (0 there, as PyTorch). NaN is tested by its bit pattern: compilers may assume floats are
// never NaN and fold `x != x` or a select around max/clamp away (GL's did, turning relu(NaN) into 0).

override ACTIVATION: u32 = 0u;

fn erf_approx(x: f32) -> f32 {
    // Abramowitz & Stegun 7.1.26, |error| < 1.5e-7.
    let t = 1.0 / (1.0 + 0.3275911 * abs(x));
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
        + 0.254829592) * t * exp(-x * x);
    return select(-y, y, x >= 0.0);
}

fn is_nan1(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

fn sigmoid1(x: f32) -> f32 {
    // exp of a non-positive number only, so no overflow.
    let e = exp(-abs(x));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), x >= 0.0);
}

// GELU's tanh form: 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))); the inner argument is clamped
// where tanh is ±1 in f32 anyway.
fn gelu_tanh_inner(x: f32) -> f32 {
    return tanh(clamp(0.7978845608 * (x + 0.044715 * x * x * x), -15.0, 15.0));
}

fn activate1(x: f32) -> f32 {
    if (ACTIVATION != 0u && is_nan1(x)) { return x; }
    switch ACTIVATION {
        case 1u: { return select(x, 0.0, x < 0.0); }
        case 2u: { return 0.5 * x * (1.0 + erf_approx(x * 0.70710678)); }
        case 3u: { return sigmoid1(x); }
        case 4u: { return tanh(clamp(x, -15.0, 15.0)); }
        case 5u: { return 0.5 * x * (1.0 + gelu_tanh_inner(x)); }
        default: { return x; }
    }
}

fn activate(x: vec4<f32>) -> vec4<f32> {
    if (ACTIVATION == 0u) { return x; }
    return vec4<f32>(activate1(x.x), activate1(x.y), activate1(x.z), activate1(x.w));
}

// d act(x) / dx, from the activation's input x.
fn activate_grad1(x: f32) -> f32 {
    if (ACTIVATION != 0u && is_nan1(x)) { return select(x, 0.0, ACTIVATION == 1u); }
    switch ACTIVATION {
        case 1u: { return select(0.0, 1.0, x > 0.0); }
        case 2u: {
            let cdf = 0.5 * (1.0 + erf_approx(x * 0.70710678));
            let pdf = 0.39894228 * exp(-0.5 * x * x);
            return cdf + x * pdf;
        }
        case 3u: { let s = sigmoid1(x); return s * (1.0 - s); }
        case 4u: { let t = tanh(clamp(x, -15.0, 15.0)); return 1.0 - t * t; }
        case 5u: {
            let t = gelu_tanh_inner(x);
            return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608 * (1.0 + 0.134145 * x * x);
        }
        default: { return 1.0; }
    }
}

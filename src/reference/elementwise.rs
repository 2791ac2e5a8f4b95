//! Reference elementwise ops, mirroring [`crate::ops::elementwise`].

use super::{activate, Array};
use crate::ops::Activation;

/// d act(x) / dx, in f64.
pub fn activate_grad(activation: Activation, x: f64) -> f64 {
    match activation {
        Activation::None => 1.0,
        Activation::Relu => f64::from(u8::from(x > 0.0)),
        Activation::Gelu => {
            let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            cdf + x * pdf
        }
        Activation::Sigmoid => {
            let s = 1.0 / (1.0 + (-x).exp());
            s * (1.0 - s)
        }
        Activation::Tanh => 1.0 - x.tanh().powi(2),
        Activation::GeluTanh => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            let t = (k * (x + 0.044715 * x * x * x)).tanh();
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x)
        }
    }
}

/// y = act(x).
pub fn activation(x: &Array, act: Activation) -> Array {
    let data = x
        .data
        .iter()
        .map(|&v| activate(act, f64::from(v)) as f32)
        .collect();
    Array::new(&x.shape, data)
}

/// dx = dy · act'(x).
pub fn activation_backward(x: &Array, grad_y: &Array, act: Activation) -> Array {
    let data = x
        .data
        .iter()
        .zip(&grad_y.data)
        .map(|(&v, &g)| (f64::from(g) * activate_grad(act, f64::from(v))) as f32)
        .collect();
    Array::new(&x.shape, data)
}

/// y = x + bias along `axis`.
pub fn bias_add(x: &Array, bias: &[f32], axis: usize) -> Array {
    let inner: usize = x.shape[axis + 1..].iter().product();
    let channels = x.shape[axis];
    let data = x
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| v + bias[(i / inner) % channels])
        .collect();
    Array::new(&x.shape, data)
}

/// y = alpha · x + beta · z.
pub fn scale_add(alpha: f32, x: &Array, beta: f32, z: &Array) -> Array {
    let data = x
        .data
        .iter()
        .zip(&z.data)
        .map(|(&a, &b)| (f64::from(alpha) * f64::from(a) + f64::from(beta) * f64::from(b)) as f32)
        .collect();
    Array::new(&x.shape, data)
}

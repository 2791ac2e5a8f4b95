//! Reference optimizer updates, mirroring [`crate::ops::optim`], in f64.

use crate::ops::optim::{AdamConfig, SgdConfig};

/// One SGD step: updates `param` and `momentum` (used when `config.momentum > 0`) in place.
pub fn sgd_step(
    param: &mut [f32],
    grad: &[f32],
    momentum: &mut [f32],
    config: &SgdConfig,
    first: bool,
) {
    let (lr, mu) = (f64::from(config.lr), f64::from(config.momentum));
    for i in 0..param.len() {
        let w = f64::from(param[i]);
        let mut d = f64::from(grad[i]) + f64::from(config.weight_decay) * w;
        if mu > 0.0 {
            let buf = if first {
                d
            } else {
                mu * f64::from(momentum[i]) + (1.0 - f64::from(config.dampening)) * d
            };
            momentum[i] = buf as f32;
            d = if config.nesterov { d + mu * buf } else { buf };
        }
        param[i] = (w - lr * d) as f32;
    }
}

/// One Adam/AdamW step (`step` counts from 1): updates `param`, `m` and `v` in place.
pub fn adam_step(
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    config: &AdamConfig,
    step: u32,
) {
    let (lr, wd) = (f64::from(config.lr), f64::from(config.weight_decay));
    let (b1, b2) = (f64::from(config.beta1), f64::from(config.beta2));
    let bc1 = 1.0 - b1.powi(step as i32);
    let bc2 = 1.0 - b2.powi(step as i32);
    for i in 0..param.len() {
        let mut w = f64::from(param[i]);
        let mut g = f64::from(grad[i]);
        if config.decoupled {
            w *= 1.0 - lr * wd;
        } else {
            g += wd * w;
        }
        let m1 = b1 * f64::from(m[i]) + (1.0 - b1) * g;
        let v1 = b2 * f64::from(v[i]) + (1.0 - b2) * g * g;
        m[i] = m1 as f32;
        v[i] = v1 as f32;
        param[i] = (w - lr * (m1 / bc1) / ((v1 / bc2).sqrt() + f64::from(config.eps))) as f32;
    }
}

/// Scales `grads` so their global norm is at most `max_norm`; returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Vec<f32>], max_norm: f32) -> f32 {
    let norm = grads
        .iter()
        .flatten()
        .map(|&g| f64::from(g).powi(2))
        .sum::<f64>()
        .sqrt();
    let coef = (f64::from(max_norm) / (norm + 1e-6)).min(1.0);
    for g in grads.iter_mut().flatten() {
        *g = (f64::from(*g) * coef) as f32;
    }
    norm as f32
}

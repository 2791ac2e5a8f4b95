//! Reference LayerNorm and RMSNorm, mirroring [`crate::ops::layer_norm`](mod@crate::ops::layer_norm),
//! in f64.

use super::Array;
use crate::ops::NormKind;

fn row_stats(row: &[f32], kind: NormKind, eps: f32) -> (f64, f64) {
    let n = row.len() as f64;
    let mean = match kind {
        NormKind::LayerNorm => row.iter().map(|&v| f64::from(v)).sum::<f64>() / n,
        NormKind::RmsNorm => 0.0,
    };
    let var = row
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, 1.0 / (var + f64::from(eps)).sqrt())
}

/// y over the last axis of `x`, with scale `gamma` and shift `beta` (LayerNorm only).
pub fn layer_norm(
    x: &Array,
    gamma: &[f32],
    beta: Option<&[f32]>,
    kind: NormKind,
    eps: f32,
) -> Array {
    let cols = gamma.len();
    let mut out = Vec::with_capacity(x.data.len());
    for row in x.data.chunks(cols) {
        let (mean, rstd) = row_stats(row, kind, eps);
        for (c, &v) in row.iter().enumerate() {
            let shift = beta.map_or(0.0, |b| f64::from(b[c]));
            out.push(((f64::from(v) - mean) * rstd * f64::from(gamma[c]) + shift) as f32);
        }
    }
    Array::new(&x.shape, out)
}

/// (dL/dx, dL/dγ, dL/dβ) of [`layer_norm`] given dL/dy.
pub fn layer_norm_backward(
    x: &Array,
    gamma: &[f32],
    grad_y: &Array,
    kind: NormKind,
    eps: f32,
) -> (Array, Vec<f32>, Vec<f32>) {
    let cols = gamma.len();
    let n = cols as f64;
    let mut dx = Vec::with_capacity(x.data.len());
    let mut dgamma = vec![0.0f64; cols];
    let mut dbeta = vec![0.0f64; cols];
    for (row, dy) in x.data.chunks(cols).zip(grad_y.data.chunks(cols)) {
        let (mean, rstd) = row_stats(row, kind, eps);
        let xhat: Vec<f64> = row.iter().map(|&v| (f64::from(v) - mean) * rstd).collect();
        let g: Vec<f64> = dy
            .iter()
            .zip(gamma)
            .map(|(&d, &w)| f64::from(d) * f64::from(w))
            .collect();
        let a = match kind {
            NormKind::LayerNorm => g.iter().sum::<f64>() / n,
            NormKind::RmsNorm => 0.0,
        };
        let b = g.iter().zip(&xhat).map(|(g, x)| g * x).sum::<f64>() / n;
        for c in 0..cols {
            dx.push((rstd * (g[c] - a - xhat[c] * b)) as f32);
            dgamma[c] += f64::from(dy[c]) * xhat[c];
            dbeta[c] += f64::from(dy[c]);
        }
    }
    let to32 = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
    (Array::new(&x.shape, dx), to32(dgamma), to32(dbeta))
}

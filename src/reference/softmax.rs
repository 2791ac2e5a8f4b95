//! Reference softmax and log-softmax over the last axis, mirroring [`crate::ops::softmax`](mod@crate::ops::softmax), with
//! the same conventions for -inf, all -inf rows, NaN and +inf.

use super::Array;

fn rows(x: &Array) -> impl Iterator<Item = &[f32]> {
    let cols = *x.shape.last().expect("rank >= 1");
    x.data.chunks(cols)
}

fn forward(x: &Array, log: bool) -> Array {
    let mut out = Vec::with_capacity(x.data.len());
    for row in rows(x) {
        if row.iter().any(|v| v.is_nan() || *v == f32::INFINITY) {
            out.extend(std::iter::repeat_n(f32::NAN, row.len()));
            continue;
        }
        let max = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
        if max == f64::NEG_INFINITY {
            let fill = if log { f32::NEG_INFINITY } else { 0.0 };
            out.extend(std::iter::repeat_n(fill, row.len()));
            continue;
        }
        let sum: f64 = row.iter().map(|&v| (f64::from(v) - max).exp()).sum();
        for &v in row {
            let shifted = f64::from(v) - max;
            let y = if log {
                shifted - sum.ln()
            } else {
                shifted.exp() / sum
            };
            out.push(y as f32);
        }
    }
    Array::new(&x.shape, out)
}

/// softmax over the last axis.
pub fn softmax(x: &Array) -> Array {
    forward(x, false)
}

/// log-softmax over the last axis.
pub fn log_softmax(x: &Array) -> Array {
    forward(x, true)
}

/// dx = y ⊙ (dy − Σ dy ⊙ y), from softmax's output y.
pub fn softmax_backward(y: &Array, grad_y: &Array) -> Array {
    let cols = *y.shape.last().expect("rank >= 1");
    let mut out = Vec::with_capacity(y.data.len());
    for (yr, gr) in y.data.chunks(cols).zip(grad_y.data.chunks(cols)) {
        let dot: f64 = yr
            .iter()
            .zip(gr)
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum();
        out.extend(
            yr.iter()
                .zip(gr)
                .map(|(&a, &b)| (f64::from(a) * (f64::from(b) - dot)) as f32),
        );
    }
    Array::new(&y.shape, out)
}

/// dx = dy − exp(y) Σ dy, from log-softmax's output y.
pub fn log_softmax_backward(y: &Array, grad_y: &Array) -> Array {
    let cols = *y.shape.last().expect("rank >= 1");
    let mut out = Vec::with_capacity(y.data.len());
    for (yr, gr) in y.data.chunks(cols).zip(grad_y.data.chunks(cols)) {
        let total: f64 = gr.iter().map(|&b| f64::from(b)).sum();
        out.extend(
            yr.iter()
                .zip(gr)
                .map(|(&a, &b)| (f64::from(b) - f64::from(a).exp() * total) as f32),
        );
    }
    Array::new(&y.shape, out)
}

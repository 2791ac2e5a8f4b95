//! Reference losses, mirroring [`crate::ops::loss`]: (mean loss, gradient of it w.r.t. the logits).

use super::Array;

fn log_softmax_row(row: &[f64]) -> Vec<f64> {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    row.iter().map(|v| v - lse).collect()
}

/// Mean cross-entropy with label smoothing over the rows whose label is a class (rows labelled
/// [`IGNORE_INDEX`](crate::ops::IGNORE_INDEX) or past the classes are left out; NaN when no row counts, as PyTorch), and its
/// gradient.
pub fn cross_entropy(logits: &Array, labels: &[u32], smoothing: f32) -> (f32, Array) {
    let cols = *logits.shape.last().expect("rank >= 2");
    let counts = |l: u32| (l as usize) < cols;
    let rows = labels.iter().filter(|&&l| counts(l)).count();
    let eps = f64::from(smoothing);
    let mut total = 0.0f64;
    let mut grad = Vec::with_capacity(logits.data.len());
    for (r, row) in logits.data.chunks(cols).enumerate() {
        let label = labels[r];
        if !counts(label) {
            grad.extend(std::iter::repeat_n(0.0, cols));
            continue;
        }
        let x: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
        let logp = log_softmax_row(&x);
        for (j, lp) in logp.iter().enumerate() {
            let q = if j == label as usize { 1.0 - eps } else { 0.0 } + eps / cols as f64;
            if q > 0.0 {
                total -= q * lp;
            }
            grad.push(((lp.exp() - q) / rows as f64) as f32);
        }
    }
    (
        (total / rows as f64) as f32,
        Array::new(&logits.shape, grad),
    )
}

/// T² · mean cross-entropy between softmax(teacher/T) and softmax(student/T), and its gradient
/// w.r.t. the student's logits.
pub fn soft_cross_entropy(student: &Array, teacher: &Array, temperature: f32) -> (f32, Array) {
    let cols = *student.shape.last().expect("rank >= 2");
    let rows = student.data.len() / cols;
    let t = f64::from(temperature);
    let mut total = 0.0f64;
    let mut grad = Vec::with_capacity(student.data.len());
    for (zr, tr) in student.data.chunks(cols).zip(teacher.data.chunks(cols)) {
        let z: Vec<f64> = zr.iter().map(|&v| f64::from(v) / t).collect();
        let w: Vec<f64> = tr.iter().map(|&v| f64::from(v) / t).collect();
        let logp = log_softmax_row(&z);
        let q: Vec<f64> = log_softmax_row(&w).into_iter().map(f64::exp).collect();
        for j in 0..cols {
            if q[j] > 0.0 {
                total -= t * t * q[j] * logp[j];
            }
            grad.push((t * (logp[j].exp() - q[j]) / rows as f64) as f32);
        }
    }
    (
        (total / rows as f64) as f32,
        Array::new(&student.shape, grad),
    )
}

/// Mean regression loss of `prediction` against `targets` over every element, and its gradient,
/// mirroring [`crate::ops::regression`].
pub fn regression(
    prediction: &Array,
    targets: &[f32],
    loss: crate::ops::Regression,
) -> (f32, Array) {
    use crate::ops::Regression;
    let n = prediction.data.len() as f64;
    let mut total = 0.0f64;
    let mut grad = Vec::with_capacity(prediction.data.len());
    for (&y, &t) in prediction.data.iter().zip(targets) {
        let e = f64::from(y) - f64::from(t);
        let sign = if e > 0.0 {
            1.0
        } else if e < 0.0 {
            -1.0
        } else {
            0.0
        };
        let (l, g) = match loss {
            Regression::Mse => (e * e, 2.0 * e),
            Regression::L1 => (e.abs(), sign),
            Regression::Huber { delta } => {
                let d = f64::from(delta);
                if e.abs() <= d {
                    (0.5 * e * e, e)
                } else {
                    (d * (e.abs() - 0.5 * d), d * sign)
                }
            }
        };
        total += l;
        grad.push((g / n) as f32);
    }
    ((total / n) as f32, Array::new(&prediction.shape, grad))
}

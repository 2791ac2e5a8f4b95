//! Reference reductions, mirroring [`crate::ops::reduce`].

use super::Array;

/// Σ over every axis but `axis`.
pub fn channel_sum(x: &Array, axis: usize) -> Array {
    let inner: usize = x.shape[axis + 1..].iter().product();
    let channels = x.shape[axis];
    let mut sums = vec![0.0f64; channels];
    for (i, &v) in x.data.iter().enumerate() {
        sums[(i / inner) % channels] += f64::from(v);
    }
    Array::new(&[channels], sums.into_iter().map(|s| s as f32).collect())
}

/// Σ x.
pub fn sum(x: &Array) -> f32 {
    x.data.iter().map(|&v| f64::from(v)).sum::<f64>() as f32
}

/// The mean of x.
pub fn mean(x: &Array) -> f32 {
    (x.data.iter().map(|&v| f64::from(v)).sum::<f64>() / x.data.len() as f64) as f32
}

/// Σ x².
pub fn sum_squares(x: &Array) -> f32 {
    x.data.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() as f32
}

/// Per-row (last axis) maximum and first index of it; NaN counts as the maximum.
pub fn row_max_argmax(x: &Array) -> (Vec<f32>, Vec<u32>) {
    let cols = *x.shape.last().expect("rank >= 1");
    x.data
        .chunks(cols)
        .map(|row| {
            let mut best = 0usize;
            for (j, &v) in row.iter().enumerate() {
                let b = row[best];
                if !b.is_nan() && (v.is_nan() || v > b) {
                    best = j;
                }
            }
            (row[best], best as u32)
        })
        .unzip()
}

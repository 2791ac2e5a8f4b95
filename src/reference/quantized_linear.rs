//! Reference int8 Linear, mirroring [`mod@crate::ops::quantized_linear`]: the same quantized weights,
//! dequantized, then the reference matmul.

use super::Array;
use crate::ops::Activation;

/// y = act(x · (scales ⊙ q)ᵀ + bias) for `q` `[n, k]` int8 and per-row `scales`.
pub fn quantized_linear(
    x: &Array,
    q: &[i8],
    scales: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    activation: Activation,
) -> Array {
    let k = q.len() / n;
    let w: Vec<f32> = q
        .iter()
        .enumerate()
        .map(|(i, &v)| f32::from(v) * scales[i / k])
        .collect();
    super::matmul(x, &Array::new(&[n, k], w), false, true, bias, activation)
}

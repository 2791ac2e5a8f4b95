//! The ops on the CPU: plain loops with f64 accumulation. The oracle every GPU test compares with;
//! clarity beats speed here.

pub mod attention;
pub mod conv;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod layer_norm;
pub mod llama;
pub mod loss;
pub mod matmul;
pub mod nn;
pub mod optim;
pub mod quantized_linear;
pub mod reduce;
pub mod sampling;
pub mod softmax;
pub mod transformer;

pub use matmul::{matmul, matmul_backward};
pub use softmax::{log_softmax, log_softmax_backward, softmax, softmax_backward};

use crate::ops::Activation;

/// A host array: row-major data with a shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub data: Vec<f32>,
}

impl Array {
    /// An array of `shape` holding `data`.
    ///
    /// # Panics
    /// If `data` does not have as many elements as `shape` holds (a bug in the calling test).
    pub fn new(shape: &[usize], data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "shape {shape:?}"
        );
        Array {
            shape: shape.to_vec(),
            data,
        }
    }
}

/// The activation on one value, in f64.
pub fn activate(activation: Activation, x: f64) -> f64 {
    match activation {
        Activation::None => x,
        // f64::max would drop the NaN: PyTorch's relu(NaN) is NaN.
        Activation::Relu => {
            if x.is_nan() {
                x
            } else {
                x.max(0.0)
            }
        }
        Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::Tanh => x.tanh(),
        Activation::GeluTanh => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
        }
    }
}

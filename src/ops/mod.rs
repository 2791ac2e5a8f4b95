//! GPU ops. Each checks shapes, dtypes and limits on the host, then records into a [`crate::Batch`].

pub mod matmul;
pub mod softmax;

pub use matmul::{matmul, matmul_backward, matmul_into, matmul_with, MatmulGrads, MatmulOptions};
pub use softmax::{log_softmax, log_softmax_backward, softmax, softmax_backward, softmax_into};

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Elementwise function applied in an op's epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Activation {
    /// Identity.
    #[default]
    None,
    /// max(x, 0).
    Relu,
    /// x·Φ(x) with the exact (erf) Φ, as PyTorch's default GELU.
    Gelu,
    /// 1 / (1 + e^-x).
    Sigmoid,
    /// tanh(x).
    Tanh,
}

impl Activation {
    /// The value of the `ACTIVATION` override constant in the shaders.
    pub(crate) fn code(self) -> u32 {
        match self {
            Activation::None => 0,
            Activation::Relu => 1,
            Activation::Gelu => 2,
            Activation::Sigmoid => 3,
            Activation::Tanh => 4,
        }
    }
}

pub(crate) fn same_dtype(op: &'static str, tensors: &[&Tensor]) -> Result<DType> {
    let dtype = tensors[0].dtype();
    if let Some(t) = tensors.iter().find(|t| t.dtype() != dtype) {
        return Err(Error::DtypeMismatch {
            op,
            details: format!("{:?} beside {:?}", t.dtype(), dtype),
        });
    }
    Ok(dtype)
}

pub(crate) fn same_gpu(op: &'static str, batch: &crate::Batch, tensors: &[&Tensor]) -> Result<()> {
    if tensors
        .iter()
        .any(|t| !std::sync::Arc::ptr_eq(&t.gpu().0, &batch.gpu().0))
    {
        return Err(Error::ShapeMismatch {
            op,
            details: "tensors belong to another Gpu context than the batch".into(),
        });
    }
    Ok(())
}

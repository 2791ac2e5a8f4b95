//! Element types: what a tensor stores, and the host types that upload to and read from it.

use half::f16;

/// Element type of a tensor's storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 16-bit float storage; kernels accumulate in f32. Needs the adapter's `SHADER_F16`.
    F16,
    /// 32-bit unsigned integer: class labels, argmax indices.
    U32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 => 2,
        }
    }
}

/// A host element type that can be uploaded to and read from a tensor.
pub trait Element: bytemuck::Pod {
    /// The matching storage type.
    const DTYPE: DType;
    /// Converts from f32 (rounding to nearest for f16).
    fn from_f32(x: f32) -> Self;
    /// Converts to f32.
    fn to_f32(self) -> f32;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Element for u32 {
    const DTYPE: DType = DType::U32;
    /// Truncates toward zero, saturating.
    fn from_f32(x: f32) -> Self {
        x as u32
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

/// The one precision vocabulary: how weights are stored and computed with, wherever wgnn asks
/// (a saved file, [`crate::infer::SessionOptions::precision`], a layer's compact weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// f32.
    #[default]
    F32,
    /// f16 (half the bytes). Serving computes in f16 where the adapter has `SHADER_F16`, else
    /// reads f16 weights packed in pairs with f32 activations.
    F16,
    /// Linear and Conv2d weights as int8 with an f32 scale per output channel (biases and
    /// activations f32), dequantized inside the kernels.
    Int8,
}

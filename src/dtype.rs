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

/// A GGUF tensor's storage type (ggml's `ggml_type`): those wgnn reads and computes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// f32.
    F32,
    /// f16.
    F16,
    /// Blocks of 32: an f16 scale and 32 4-bit values (offset 8).
    Q4_0,
    /// Blocks of 32: f16 scale and minimum, 32 4-bit values.
    Q4_1,
    /// Blocks of 32: an f16 scale and 32 int8 values.
    Q8_0,
    /// Super-blocks of 256: f16 scale and minimum, 8 sub-blocks of 32 with 6-bit scales and
    /// minimums, 4-bit values.
    Q4K,
    /// As Q4_K with a fifth bit per value.
    Q5K,
    /// Super-blocks of 256: an f16 scale, 16 int8 sub-block scales, 6-bit values (offset 32).
    Q6K,
    /// bfloat16.
    BF16,
}

impl GgmlType {
    /// The type of ggml's id `id`, where this reader knows it.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// ggml's id of the type.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
        }
    }

    /// ggml's name of the type (`"Q4_K"`).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::BF16 => "BF16",
        }
    }

    /// Values per block.
    pub fn block_values(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
        }
    }
}

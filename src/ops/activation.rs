//! The elementwise functions ops apply in their epilogues.

/// Elementwise function applied in an op's epilogue.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
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
    /// GELU's tanh approximation, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), as PyTorch's
    /// `gelu(approximate="tanh")` and GPT-2.
    GeluTanh,
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
            Activation::GeluTanh => 5,
        }
    }
}

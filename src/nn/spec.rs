//! [`LayerSpec`]: the typed form of a chain's built-in layers (what [`crate::nn::Sequential`]
//! takes and earlier model files hold). It describes nothing itself: each spec is the serde form
//! of its layer's configuration, and is built, checked and shaped by that layer.

use serde::{Deserialize, Serialize};

use super::layer::{Layer, ParamSpec};
use crate::error::{Error, Result};
use crate::ops::Activation;

/// A layer's architecture: what a saved model records and what [`crate::nn::Sequential`] builds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum LayerSpec {
    /// y = x·Wᵀ + b; W is `[outputs, inputs]` (PyTorch's layout), b is `[outputs]`.
    Linear {
        /// Input features.
        inputs: usize,
        /// Output features.
        outputs: usize,
    },
    /// 2-D convolution over NCHW with a bias; W is `[out, in, kh, kw]`.
    Conv2d {
        /// Input channels.
        in_channels: usize,
        /// Output channels.
        out_channels: usize,
        /// Kernel (height, width).
        kernel: (usize, usize),
        /// Stride (height, width).
        stride: (usize, usize),
        /// Zero padding (height, width).
        padding: (usize, usize),
    },
    /// Max pooling.
    MaxPool2d {
        /// Window (height, width).
        kernel: (usize, usize),
        /// Stride (height, width).
        stride: (usize, usize),
    },
    /// Average pooling.
    AvgPool2d {
        /// Window (height, width).
        kernel: (usize, usize),
        /// Stride (height, width).
        stride: (usize, usize),
    },
    /// `[batch, ...]` to `[batch, features]`.
    Flatten,
    /// An elementwise activation.
    Activation {
        /// Which.
        function: Activation,
    },
    /// The sum of two inputs of one shape (a skip connection). Takes two inputs: a model built
    /// with [`crate::nn::ModelBuilder`], not a chain.
    Add,
}

impl LayerSpec {
    /// The layer's kind, as model files and messages name it.
    pub fn kind(&self) -> &'static str {
        match self {
            LayerSpec::Linear { .. } => "Linear",
            LayerSpec::Conv2d { .. } => "Conv2d",
            LayerSpec::MaxPool2d { .. } => "MaxPool2d",
            LayerSpec::AvgPool2d { .. } => "AvgPool2d",
            LayerSpec::Flatten => "Flatten",
            LayerSpec::Activation { .. } => "Activation",
            LayerSpec::Add => "Add",
        }
    }

    /// Checks the layer's own numbers (every size, window and stride at least 1): the checks of
    /// the layer it builds. (Whether the layer fits its input is [`Self::output_shape`]'s.)
    pub fn validate(&self) -> Result<()> {
        self.build().map(|_| ())
    }

    /// The output shape for an input of `input` (batch dimension first), as the layer computes
    /// it.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        self.build()?.output_shape(&[input])
    }

    /// The layer this spec describes, ready to be placed in a model: made by the same factory
    /// that model files use ([`crate::nn::register_layer`]), so the spec is only its typed form.
    pub fn build(&self) -> Result<Box<dyn Layer>> {
        let value = serde_json::to_value(self).map_err(|e| Error::InvalidArgument {
            op: "LayerSpec::build",
            details: e.to_string(),
        })?;
        let (kind, config) = super::registry::split_kind(value)?;
        super::registry::make_layer(&kind, &config)
    }

    /// The parameters' names and shapes, in the layer's order (empty for an invalid spec).
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.parameters()
            .into_iter()
            .map(|p| (p.name, p.shape))
            .collect()
    }

    /// The parameters the layer owns, with their roles, as [`Layer::parameters`] of the built
    /// layer gives them (empty for an invalid spec).
    pub fn parameters(&self) -> Vec<ParamSpec> {
        self.build().map(|l| l.parameters()).unwrap_or_default()
    }
}

/// The CNN `train_digits` trains on the 8×8 digits (`[1, 8, 8]` per sample): conv 1→16 and
/// 16→32 (3×3, padding 1, each with a ReLU), 2×2 max pooling, flatten, Linear 512→10. One
/// definition for the example, the tests and the distributed check.
pub fn digits_cnn() -> Vec<LayerSpec> {
    let conv = |in_channels, out_channels| LayerSpec::Conv2d {
        in_channels,
        out_channels,
        kernel: (3, 3),
        stride: (1, 1),
        padding: (1, 1),
    };
    let relu = || LayerSpec::Activation {
        function: Activation::Relu,
    };
    vec![
        conv(1, 16),
        relu(),
        conv(16, 32),
        relu(),
        LayerSpec::MaxPool2d {
            kernel: (2, 2),
            stride: (2, 2),
        },
        LayerSpec::Flatten,
        LayerSpec::Linear {
            inputs: 32 * 4 * 4,
            outputs: 10,
        },
    ]
}

//! Layers with an explicit backward: a training forward saves what the backward needs.

use serde::{Deserialize, Serialize};

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::ops::{self, Activation, Conv2dParams, Pool2dParams};
use crate::tensor::Tensor;

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
}

/// The largest padded side (size + 2 · padding) a layer accepts, as the convolution op does.
const MAX_PADDED_SIDE: usize = 1 << 31;

impl LayerSpec {
    /// The layer's kind, as a user names it in messages.
    pub fn kind(&self) -> &'static str {
        match self {
            LayerSpec::Linear { .. } => "Linear",
            LayerSpec::Conv2d { .. } => "Conv2d",
            LayerSpec::MaxPool2d { .. } => "MaxPool2d",
            LayerSpec::AvgPool2d { .. } => "AvgPool2d",
            LayerSpec::Flatten => "Flatten",
            LayerSpec::Activation { .. } => "Activation",
        }
    }

    /// Checks the layer's own numbers: every size, window and stride at least 1. (Whether the
    /// layer fits its input is [`Self::output_shape`]'s check.)
    pub fn validate(&self) -> Result<()> {
        let invalid = |details: String| {
            Err(Error::InvalidArgument {
                op: "LayerSpec",
                details,
            })
        };
        let at_least_one = |what: &str, pair: (usize, usize)| {
            if pair.0 == 0 || pair.1 == 0 {
                invalid(format!(
                    "{} {what} must be at least 1 in both directions, got {pair:?}",
                    self.kind()
                ))
            } else {
                Ok(())
            }
        };
        match *self {
            LayerSpec::Linear { inputs, outputs } => {
                if inputs == 0 || outputs == 0 {
                    return invalid(format!(
                        "Linear needs at least 1 input and 1 output feature, got {inputs} -> {outputs}"
                    ));
                }
            }
            LayerSpec::Conv2d {
                in_channels,
                out_channels,
                kernel,
                stride,
                ..
            } => {
                if in_channels == 0 || out_channels == 0 {
                    return invalid(format!(
                        "Conv2d needs at least 1 input and 1 output channel, got {in_channels} -> \
                         {out_channels}"
                    ));
                }
                at_least_one("kernel", kernel)?;
                at_least_one("stride", stride)?;
            }
            LayerSpec::MaxPool2d { kernel, stride } | LayerSpec::AvgPool2d { kernel, stride } => {
                at_least_one("window", kernel)?;
                at_least_one("stride", stride)?;
            }
            LayerSpec::Flatten | LayerSpec::Activation { .. } => {}
        }
        Ok(())
    }

    /// The output shape for an input of `input` (batch dimension first). Checks the layer
    /// ([`Self::validate`]) and that it fits `input`; sizes are checked arithmetic.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        const OP: &str = "LayerSpec::output_shape";
        self.validate()?;
        let mismatch = |details: String| Error::ShapeMismatch { op: OP, details };
        let too_large = |what: String| Error::LimitExceeded {
            what,
            requested: u64::MAX,
            limit: MAX_PADDED_SIDE as u64,
        };
        match *self {
            LayerSpec::Linear { inputs, outputs } => match input {
                [b, f] if *f == inputs => Ok(vec![*b, outputs]),
                _ => Err(mismatch(format!(
                    "Linear({inputs} -> {outputs}) takes [batch, {inputs}], got {input:?}"
                ))),
            },
            LayerSpec::Conv2d {
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
            } => match input {
                [b, c, h, w] if *c == in_channels => {
                    let axis = |name: &str, size: usize, k: usize, s: usize, p: usize| {
                        let padded = p
                            .checked_mul(2)
                            .and_then(|p2| size.checked_add(p2))
                            .filter(|&padded| padded <= MAX_PADDED_SIDE)
                            .ok_or_else(|| {
                                too_large(format!(
                                    "Conv2d: {name} {size} with padding {p} on each side"
                                ))
                            })?;
                        if padded < k {
                            return Err(mismatch(format!(
                                "Conv2d kernel {name} {k} is larger than the padded input {name} \
                                 {padded} ({size} + 2 x {p})"
                            )));
                        }
                        Ok((padded - k) / s + 1)
                    };
                    Ok(vec![
                        *b,
                        out_channels,
                        axis("height", *h, kernel.0, stride.0, padding.0)?,
                        axis("width", *w, kernel.1, stride.1, padding.1)?,
                    ])
                }
                _ => Err(mismatch(format!(
                    "Conv2d takes [batch, {in_channels}, height, width], got {input:?}"
                ))),
            },
            LayerSpec::MaxPool2d { kernel, stride } | LayerSpec::AvgPool2d { kernel, stride } => {
                match input {
                    [b, c, h, w] if *h >= kernel.0 && *w >= kernel.1 => Ok(vec![
                        *b,
                        *c,
                        (h - kernel.0) / stride.0 + 1,
                        (w - kernel.1) / stride.1 + 1,
                    ]),
                    _ => Err(mismatch(format!(
                        "{} window {kernel:?} does not fit the input {input:?} ([batch, channels, \
                         height, width] at least as large as the window)",
                        self.kind()
                    ))),
                }
            }
            LayerSpec::Flatten => match input {
                [b, rest @ ..] if !rest.is_empty() => {
                    let features = rest
                        .iter()
                        .try_fold(1usize, |n, &d| n.checked_mul(d))
                        .ok_or_else(|| Error::LimitExceeded {
                            what: format!("Flatten: features of {input:?}"),
                            requested: u64::MAX,
                            limit: u64::from(u32::MAX),
                        })?;
                    Ok(vec![*b, features])
                }
                _ => Err(mismatch(format!(
                    "Flatten takes [batch, ...] of rank >= 2, got {input:?}"
                ))),
            },
            LayerSpec::Activation { .. } => Ok(input.to_vec()),
        }
    }

    /// Parameter shapes (weight, then bias) and fans (in, out) for initialization.
    pub fn parameter_shapes(&self) -> Vec<(&'static str, Vec<usize>)> {
        match *self {
            LayerSpec::Linear { inputs, outputs } => {
                vec![("weight", vec![outputs, inputs]), ("bias", vec![outputs])]
            }
            LayerSpec::Conv2d {
                in_channels,
                out_channels,
                kernel,
                ..
            } => vec![
                (
                    "weight",
                    vec![out_channels, in_channels, kernel.0, kernel.1],
                ),
                ("bias", vec![out_channels]),
            ],
            _ => vec![],
        }
    }

    pub(crate) fn conv_params(&self) -> Conv2dParams {
        match *self {
            LayerSpec::Conv2d {
                stride, padding, ..
            } => Conv2dParams {
                stride,
                padding,
                ..Conv2dParams::default()
            },
            _ => Conv2dParams::default(),
        }
    }

    pub(crate) fn pool_params(&self) -> Pool2dParams {
        match *self {
            LayerSpec::MaxPool2d { kernel, stride } | LayerSpec::AvgPool2d { kernel, stride } => {
                Pool2dParams {
                    kernel,
                    stride,
                    padding: (0, 0),
                }
            }
            _ => Pool2dParams::square(1),
        }
    }
}

/// What a layer saved in a training forward for its backward.
#[derive(Debug, Default)]
enum Saved {
    #[default]
    Nothing,
    /// The input (and, for a fused activation, the output).
    Input(Tensor, Option<Tensor>),
    /// Max pooling's indices and input shape.
    Indices(Tensor, Vec<usize>),
    /// The input shape (average pooling, flatten).
    Shape(Vec<usize>),
}

/// One layer of a [`crate::nn::Sequential`] model, with its parameter views.
#[derive(Debug)]
pub struct Layer {
    spec: LayerSpec,
    /// Weight and bias values and gradients (views into the model's arenas).
    params: Vec<(Tensor, Tensor)>,
    /// An activation fused into this layer's epilogue (ReLU after Linear/Conv2d).
    fused: Activation,
    /// This activation layer's work was fused into the layer before it.
    absorbed: bool,
    /// Int8 weights that replace the f32 ones in the forward pass (inference only).
    quantized: Option<ops::QuantizedWeights>,
    saved: Saved,
}

impl Layer {
    pub(crate) fn new(spec: LayerSpec, params: Vec<(Tensor, Tensor)>) -> Self {
        Layer {
            spec,
            params,
            fused: Activation::None,
            absorbed: false,
            quantized: None,
            saved: Saved::Nothing,
        }
    }

    pub(crate) fn set_params(&mut self, params: Vec<(Tensor, Tensor)>) {
        self.params = params;
    }

    pub(crate) fn set_quantized(&mut self, weights: ops::QuantizedWeights) {
        self.quantized = Some(weights);
    }

    /// Int8 weights of this layer, if it was quantized.
    pub fn quantized(&self) -> Option<&ops::QuantizedWeights> {
        self.quantized.as_ref()
    }

    /// The layer's architecture.
    pub fn spec(&self) -> &LayerSpec {
        &self.spec
    }

    /// Fuses a following ReLU into this Linear or Conv2d; returns whether it did.
    pub(crate) fn fuse(&mut self, next: &LayerSpec) -> bool {
        let fusable = matches!(
            self.spec,
            LayerSpec::Linear { .. } | LayerSpec::Conv2d { .. }
        ) && *next
            == LayerSpec::Activation {
                function: Activation::Relu,
            };
        if fusable {
            self.fused = Activation::Relu;
        }
        fusable
    }

    pub(crate) fn absorb(&mut self) {
        self.absorbed = true;
    }

    /// Records the forward pass; with `train`, saves what [`Self::backward`] needs.
    pub fn forward(&mut self, batch: &mut Batch, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = match &self.spec {
            LayerSpec::Linear { .. } if self.quantized.is_some() => {
                if train {
                    return Err(Error::InvalidArgument {
                        op: "Layer::forward",
                        details: "a quantized layer serves inference only".into(),
                    });
                }
                let q = self.quantized.as_ref().expect("checked above");
                return ops::quantized_linear(batch, x, q, Some(&self.params[1].0), self.fused);
            }
            LayerSpec::Linear { .. } => {
                let options = ops::MatmulOptions {
                    transposes: ops::Transposes { a: false, b: true },
                    bias: Some(&self.params[1].0),
                    activation: self.fused,
                };
                ops::matmul(batch, x, &self.params[0].0, &options)?
            }
            LayerSpec::Conv2d {
                in_channels,
                out_channels,
                kernel,
                ..
            } if self.quantized.is_some() => {
                if train {
                    return Err(Error::InvalidArgument {
                        op: "Layer::forward",
                        details: "a quantized layer serves inference only".into(),
                    });
                }
                let q = self.quantized.as_ref().expect("checked above");
                return ops::conv2d_quantized(
                    batch,
                    x,
                    [*out_channels, *in_channels, kernel.0, kernel.1],
                    q,
                    Some(&self.params[1].0),
                    &self.spec.conv_params(),
                    self.fused,
                );
            }
            LayerSpec::Conv2d { .. } => ops::conv2d(
                batch,
                x,
                &self.params[0].0,
                Some(&self.params[1].0),
                &self.spec.conv_params(),
                self.fused,
            )?,
            LayerSpec::MaxPool2d { .. } => {
                let (y, indices) = ops::max_pool2d(batch, x, &self.spec.pool_params())?;
                if train {
                    self.saved = Saved::Indices(indices, x.shape().to_vec());
                }
                return Ok(y);
            }
            LayerSpec::AvgPool2d { .. } => {
                if train {
                    self.saved = Saved::Shape(x.shape().to_vec());
                }
                return ops::avg_pool2d(batch, x, &self.spec.pool_params());
            }
            LayerSpec::Flatten => {
                let shape = self.spec.output_shape(x.shape())?;
                if train {
                    self.saved = Saved::Shape(x.shape().to_vec());
                }
                return x.reshape(&shape);
            }
            LayerSpec::Activation { function } => {
                if self.absorbed {
                    return Ok(x.clone());
                }
                let y = ops::activation(batch, x, *function)?;
                if train {
                    self.saved = Saved::Input(x.clone(), None);
                }
                return Ok(y);
            }
        };
        if train {
            let out = (self.fused != Activation::None).then(|| y.clone());
            self.saved = Saved::Input(x.clone(), out);
        }
        Ok(y)
    }

    /// Records the backward pass from dL/dy: adds the parameter gradients into the gradient arena
    /// and returns dL/dx when `input_grad` (the first layer does not need it).
    pub fn backward(
        &mut self,
        batch: &mut Batch,
        grad_y: &Tensor,
        input_grad: bool,
    ) -> Result<Option<Tensor>> {
        let saved = std::mem::take(&mut self.saved);
        let missing = || Error::InvalidArgument {
            op: "Layer::backward",
            details: "backward needs a training forward first".into(),
        };
        match (&self.spec, saved) {
            (LayerSpec::Linear { .. }, Saved::Input(x, y)) => {
                let dz = match &y {
                    Some(y) => ops::activation_backward(batch, y, grad_y, self.fused)?,
                    None => grad_y.clone(),
                };
                let (w, gw) = &self.params[0];
                let gb = &self.params[1].1;
                // dW += dzᵀ·x; db += Σ_rows dz; dx = dz·W.
                let transpose_a = ops::MatmulOptions {
                    transposes: ops::Transposes { a: true, b: false },
                    ..Default::default()
                };
                ops::matmul_into(batch, &dz, &x, &transpose_a, gw, ops::Write::Accumulate)?;
                let db = ops::channel_sum(batch, &dz, 1)?;
                ops::axpy(batch, gb, 1.0, &db)?;
                if input_grad {
                    return Ok(Some(ops::matmul(batch, &dz, w, &Default::default())?));
                }
                Ok(None)
            }
            (LayerSpec::Conv2d { .. }, Saved::Input(x, y)) => {
                let dz = match &y {
                    Some(y) => ops::activation_backward(batch, y, grad_y, self.fused)?,
                    None => grad_y.clone(),
                };
                let grads = ops::conv2d_backward(
                    batch,
                    &x,
                    &self.params[0].0,
                    &dz,
                    &self.spec.conv_params(),
                    ops::BiasGradient::Compute,
                )?;
                ops::axpy(batch, &self.params[0].1, 1.0, &grads.weight)?;
                if let Some(db) = &grads.bias {
                    ops::axpy(batch, &self.params[1].1, 1.0, db)?;
                }
                Ok(input_grad.then_some(grads.input))
            }
            (LayerSpec::MaxPool2d { .. }, Saved::Indices(indices, shape)) => {
                ops::max_pool2d_backward(batch, grad_y, &indices, &shape, &self.spec.pool_params())
                    .map(Some)
            }
            (LayerSpec::AvgPool2d { .. }, Saved::Shape(shape)) => {
                ops::avg_pool2d_backward(batch, grad_y, &shape, &self.spec.pool_params()).map(Some)
            }
            (LayerSpec::Flatten, Saved::Shape(shape)) => grad_y.reshape(&shape).map(Some),
            (LayerSpec::Activation { .. }, _) if self.absorbed => Ok(Some(grad_y.clone())),
            (LayerSpec::Activation { function }, Saved::Input(x, _)) => {
                ops::activation_backward(batch, &x, grad_y, *function).map(Some)
            }
            _ => Err(missing()),
        }
    }
}

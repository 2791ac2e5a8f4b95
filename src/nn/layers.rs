//! The built-in layers, each a [`Layer`] with an explicit backward (a training forward saves what
//! the backward needs) and its configuration in its serde form.

use serde::{Deserialize, Serialize};

use super::layer::{expect_inputs, Context, Layer, ParamSpec};
use crate::dtype::Precision;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops::{self, Activation, Conv2dParams, Pool2dParams};
use crate::tensor::Tensor;

/// The largest padded side (size + 2 · padding) a layer accepts, as the convolution op does.
const MAX_PADDED_SIDE: usize = 1 << 31;

fn invalid_layer(details: String) -> Error {
    Error::InvalidArgument {
        op: "LayerSpec",
        details,
    }
}

fn at_least_one(kind: &str, what: &str, pair: (usize, usize)) -> Result<()> {
    if pair.0 == 0 || pair.1 == 0 {
        return Err(invalid_layer(format!(
            "{kind} {what} must be at least 1 in both directions, got {pair:?}"
        )));
    }
    Ok(())
}

fn shape_mismatch(details: String) -> Error {
    Error::ShapeMismatch {
        op: "LayerSpec::output_shape",
        details,
    }
}

/// The configuration of a built-in layer: its serde form.
fn serde_config<T: Serialize>(layer: &T) -> Option<serde_json::Value> {
    serde_json::to_value(layer).ok()
}

/// y = x·Wᵀ + b over `[batch, inputs]`; W is `[outputs, inputs]` (PyTorch's layout).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Linear {
    inputs: usize,
    outputs: usize,
    /// An activation fused into the matmul's epilogue.
    #[serde(skip)]
    fused: Activation,
    /// Compact weights that replace W in an inference forward.
    #[serde(skip)]
    compact: Option<ops::QuantizedWeights>,
    /// The input, and with a fused activation the output.
    #[serde(skip)]
    saved: Option<(Tensor, Option<Tensor>)>,
}

impl Linear {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.inputs == 0 || self.outputs == 0 {
            return Err(invalid_layer(format!(
                "Linear needs at least 1 input and 1 output feature, got {} -> {}",
                self.inputs, self.outputs
            )));
        }
        Ok(())
    }

    /// A Linear layer of `inputs` to `outputs` features.
    pub fn new(inputs: usize, outputs: usize) -> Self {
        Linear {
            inputs,
            outputs,
            fused: Activation::None,
            compact: None,
            saved: None,
        }
    }
}

fn pool_output_shape(
    kind: &str,
    kernel: (usize, usize),
    stride: (usize, usize),
    inputs: &[&[usize]],
) -> Result<Vec<usize>> {
    match one_input(kind, inputs)? {
        [b, c, h, w] if *h >= kernel.0 && *w >= kernel.1 => Ok(vec![
            *b,
            *c,
            (h - kernel.0) / stride.0 + 1,
            (w - kernel.1) / stride.1 + 1,
        ]),
        input => Err(shape_mismatch(format!(
            "{kind} window {kernel:?} does not fit the input {input:?} ([batch, channels, height, \
             width] at least as large as the window)"
        ))),
    }
}

fn flatten_shape(input: &[usize]) -> Result<Vec<usize>> {
    match input {
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
        _ => Err(shape_mismatch(format!(
            "Flatten takes [batch, ...] of rank >= 2, got {input:?}"
        ))),
    }
}

fn one_input<'t>(kind: &str, inputs: &[&'t [usize]]) -> Result<&'t [usize]> {
    expect_inputs(kind, inputs.len(), 1)?;
    Ok(inputs[0])
}

pub(super) fn not_trained(kind: &str) -> Error {
    Error::InvalidArgument {
        op: "Layer::backward",
        details: format!("{kind}: backward needs a training forward first"),
    }
}

fn inference_only(kind: &str) -> Error {
    Error::InvalidArgument {
        op: "Layer::forward",
        details: format!(
            "{kind}: a layer with compact (int8 or f16) weights, or an activation fused for \
             inference, serves inference only"
        ),
    }
}

/// Takes any activation into an epilogue that has none yet (inference only); whether it did.
fn fuse_any(fused: &mut Activation, activation: Activation) -> bool {
    let fusable = *fused == Activation::None && activation != Activation::None;
    if fusable {
        *fused = activation;
    }
    fusable
}

/// Whether a training forward can go through the epilogue's activation (its backward is
/// computed from the saved output: ReLU).
fn trainable(fused: Activation) -> bool {
    matches!(fused, Activation::None | Activation::Relu)
}

/// Takes a ReLU into an epilogue that has no activation yet; whether it did.
fn fuse_relu(fused: &mut Activation, activation: Activation) -> bool {
    let fusable = activation == Activation::Relu && *fused == Activation::None;
    if fusable {
        *fused = activation;
    }
    fusable
}

/// Records dL/dz from dL/dy for a layer whose epilogue applied `fused` to z (y saved).
fn through_fused(
    ctx: &mut Context,
    fused: Activation,
    y: &Option<Tensor>,
    grad_y: &Tensor,
) -> Result<Tensor> {
    match y {
        Some(y) => ops::activation_backward(ctx.batch, y, grad_y, fused),
        None => Ok(grad_y.clone()),
    }
}

impl Layer for Linear {
    fn kind(&self) -> &'static str {
        "Linear"
    }

    fn parameters(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::weight("weight", &[self.outputs, self.inputs]),
            ParamSpec::bias("bias", self.outputs),
        ]
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        self.validate()?;
        let (i, o) = (self.inputs, self.outputs);
        match one_input(self.kind(), inputs)? {
            [lead @ .., f] if *f == i && !lead.is_empty() => Ok([lead, &[o]].concat()),
            input => Err(shape_mismatch(format!(
                "Linear({i} -> {o}) takes [batch, ..., {i}], got {input:?}"
            ))),
        }
    }

    fn forward(&mut self, ctx: &mut Context, inputs: &[&Tensor]) -> Result<Tensor> {
        expect_inputs(self.kind(), inputs.len(), 1)?;
        // [batch, ..., inputs] multiplies as [rows, inputs].
        if inputs[0].shape().len() > 2 {
            let shape = self.output_shape(&[inputs[0].shape()])?;
            let flat = inputs[0].reshape(&[inputs[0].numel() / self.inputs, self.inputs])?;
            return self.forward(ctx, &[&flat])?.reshape(&shape);
        }
        let x = inputs[0];
        let bias = ctx.param("bias")?;
        if ctx.train && !trainable(self.fused) {
            return Err(inference_only(self.kind()));
        }
        if let Some(q) = &self.compact {
            if ctx.train {
                return Err(inference_only(self.kind()));
            }
            return ops::quantized_linear(ctx.batch, x, q, Some(bias), self.fused);
        }
        let options = ops::MatmulOptions {
            transposes: ops::Transposes { a: false, b: true },
            bias: Some(bias),
            activation: self.fused,
        };
        let w = ctx.param("weight")?;
        let y = ops::matmul(ctx.batch, x, w, &options)?;
        if ctx.train {
            let out = (self.fused != Activation::None).then(|| y.clone());
            self.saved = Some((x.clone(), out));
        }
        Ok(y)
    }

    fn backward(
        &mut self,
        ctx: &mut Context,
        grad_y: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let (x, y) = self.saved.take().ok_or_else(|| not_trained(self.kind()))?;
        // The saved input is the [rows, inputs] the forward multiplied.
        let lead = grad_y.shape()[..grad_y.shape().len() - 1].to_vec();
        let grad_y = &grad_y.reshape(&[grad_y.numel() / self.outputs, self.outputs])?;
        let dz = through_fused(ctx, self.fused, &y, grad_y)?;
        let (w, gw, gb) = (ctx.param("weight")?, ctx.grad("weight")?, ctx.grad("bias")?);
        // dW += dzᵀ·x; db += Σ_rows dz; dx = dz·W.
        let transpose_a = ops::MatmulOptions {
            transposes: ops::Transposes { a: true, b: false },
            ..Default::default()
        };
        ops::matmul_into(ctx.batch, &dz, &x, &transpose_a, gw, ops::Write::Accumulate)?;
        let db = ops::channel_sum(ctx.batch, &dz, 1)?;
        ops::axpy(ctx.batch, gb, 1.0, &db)?;
        let dx = if needs.first() == Some(&true) {
            let dx = ops::matmul(ctx.batch, &dz, w, &Default::default())?;
            Some(dx.reshape(&[&lead[..], &[self.inputs]].concat())?)
        } else {
            None
        };
        Ok(vec![dx])
    }

    fn fuse(&mut self, activation: Activation) -> bool {
        fuse_relu(&mut self.fused, activation)
    }

    fn fuse_for_inference(&mut self, activation: Activation) -> bool {
        fuse_any(&mut self.fused, activation)
    }

    fn compact(
        &mut self,
        gpu: &Gpu,
        precision: Precision,
        values: &[&[f32]],
    ) -> Result<Option<usize>> {
        let q =
            ops::QuantizedWeights::quantize(gpu, values[0], self.outputs, self.inputs, precision)?;
        let bytes = q.size_bytes() as usize + 4 * self.outputs; // the weights, and the f32 bias
        self.compact = Some(q);
        Ok(Some(bytes))
    }

    fn config(&self) -> Option<serde_json::Value> {
        serde_config(self)
    }
}

/// 2-D convolution over NCHW with a bias; W is `[out, in, kh, kw]`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv2d {
    in_channels: usize,
    out_channels: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
    #[serde(skip)]
    fused: Activation,
    #[serde(skip)]
    compact: Option<ops::QuantizedWeights>,
    #[serde(skip)]
    saved: Option<(Tensor, Option<Tensor>)>,
}

impl Conv2d {
    /// A convolution of `in_channels` to `out_channels` with a `kernel` window, `stride` and zero
    /// `padding` (height, width each).
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Self {
        Conv2d {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            fused: Activation::None,
            compact: None,
            saved: None,
        }
    }

    fn conv_params(&self) -> Conv2dParams {
        Conv2dParams {
            stride: self.stride,
            padding: self.padding,
            ..Conv2dParams::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.in_channels == 0 || self.out_channels == 0 {
            return Err(invalid_layer(format!(
                "Conv2d needs at least 1 input and 1 output channel, got {} -> {}",
                self.in_channels, self.out_channels
            )));
        }
        at_least_one("Conv2d", "kernel", self.kernel)?;
        at_least_one("Conv2d", "stride", self.stride)
    }

    /// One spatial side of the output: `size` padded by `p` on each side, a window of `k`, a
    /// stride of `s`.
    fn output_side(name: &str, size: usize, k: usize, s: usize, p: usize) -> Result<usize> {
        let padded = p
            .checked_mul(2)
            .and_then(|p2| size.checked_add(p2))
            .filter(|&padded| padded <= MAX_PADDED_SIDE)
            .ok_or_else(|| Error::LimitExceeded {
                what: format!("Conv2d: {name} {size} with padding {p} on each side"),
                requested: u64::MAX,
                limit: MAX_PADDED_SIDE as u64,
            })?;
        if padded < k {
            return Err(shape_mismatch(format!(
                "Conv2d kernel {name} {k} is larger than the padded input {name} {padded} ({size} \
                 + 2 x {p})"
            )));
        }
        Ok((padded - k) / s + 1)
    }
}

impl Layer for Conv2d {
    fn kind(&self) -> &'static str {
        "Conv2d"
    }

    fn parameters(&self) -> Vec<ParamSpec> {
        let (kh, kw) = self.kernel;
        vec![
            ParamSpec::weight("weight", &[self.out_channels, self.in_channels, kh, kw]),
            ParamSpec::bias("bias", self.out_channels),
        ]
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        self.validate()?;
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        match one_input(self.kind(), inputs)? {
            [b, c, h, w] if *c == self.in_channels => Ok(vec![
                *b,
                self.out_channels,
                Self::output_side("height", *h, k.0, s.0, p.0)?,
                Self::output_side("width", *w, k.1, s.1, p.1)?,
            ]),
            input => Err(shape_mismatch(format!(
                "Conv2d takes [batch, {}, height, width], got {input:?}",
                self.in_channels
            ))),
        }
    }

    fn forward(&mut self, ctx: &mut Context, inputs: &[&Tensor]) -> Result<Tensor> {
        expect_inputs(self.kind(), inputs.len(), 1)?;
        let x = inputs[0];
        let bias = ctx.param("bias")?;
        if ctx.train && !trainable(self.fused) {
            return Err(inference_only(self.kind()));
        }
        if let Some(q) = &self.compact {
            if ctx.train {
                return Err(inference_only(self.kind()));
            }
            let shape = [
                self.out_channels,
                self.in_channels,
                self.kernel.0,
                self.kernel.1,
            ];
            return ops::conv2d_quantized(
                ctx.batch,
                x,
                shape,
                q,
                Some(bias),
                &self.conv_params(),
                self.fused,
            );
        }
        let w = ctx.param("weight")?;
        let y = ops::conv2d(ctx.batch, x, w, Some(bias), &self.conv_params(), self.fused)?;
        if ctx.train {
            let out = (self.fused != Activation::None).then(|| y.clone());
            self.saved = Some((x.clone(), out));
        }
        Ok(y)
    }

    fn backward(
        &mut self,
        ctx: &mut Context,
        grad_y: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let (x, y) = self.saved.take().ok_or_else(|| not_trained(self.kind()))?;
        let dz = through_fused(ctx, self.fused, &y, grad_y)?;
        let (w, gw, gb) = (ctx.param("weight")?, ctx.grad("weight")?, ctx.grad("bias")?);
        let grads = ops::conv2d_backward(
            ctx.batch,
            &x,
            w,
            &dz,
            &self.conv_params(),
            ops::BiasGradient::Compute,
        )?;
        ops::axpy(ctx.batch, gw, 1.0, &grads.weight)?;
        if let Some(db) = &grads.bias {
            ops::axpy(ctx.batch, gb, 1.0, db)?;
        }
        Ok(vec![(needs.first() == Some(&true)).then_some(grads.input)])
    }

    fn fuse(&mut self, activation: Activation) -> bool {
        fuse_relu(&mut self.fused, activation)
    }

    fn fuse_for_inference(&mut self, activation: Activation) -> bool {
        fuse_any(&mut self.fused, activation)
    }

    fn compact(
        &mut self,
        gpu: &Gpu,
        precision: Precision,
        values: &[&[f32]],
    ) -> Result<Option<usize>> {
        // [out, in, kh, kw]: one row of K = in · kh · kw per output channel.
        let k = self.in_channels * self.kernel.0 * self.kernel.1;
        let q = ops::QuantizedWeights::quantize(gpu, values[0], self.out_channels, k, precision)?;
        let bytes = q.size_bytes() as usize + 4 * self.out_channels;
        self.compact = Some(q);
        Ok(Some(bytes))
    }

    fn config(&self) -> Option<serde_json::Value> {
        serde_config(self)
    }
}

/// Max pooling over NCHW (no padding).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxPool2d {
    kernel: (usize, usize),
    stride: (usize, usize),
    /// The indices of the maxima and the input shape.
    #[serde(skip)]
    saved: Option<(Tensor, Vec<usize>)>,
}

impl MaxPool2d {
    /// Max pooling with a `kernel` window and `stride` (height, width).
    pub fn new(kernel: (usize, usize), stride: (usize, usize)) -> Self {
        MaxPool2d {
            kernel,
            stride,
            saved: None,
        }
    }

    fn params(&self) -> Pool2dParams {
        Pool2dParams {
            kernel: self.kernel,
            stride: self.stride,
            padding: (0, 0),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        at_least_one("MaxPool2d", "window", self.kernel)?;
        at_least_one("MaxPool2d", "stride", self.stride)
    }
}

impl Layer for MaxPool2d {
    fn kind(&self) -> &'static str {
        "MaxPool2d"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        self.validate()?;
        pool_output_shape(self.kind(), self.kernel, self.stride, inputs)
    }

    fn forward(&mut self, ctx: &mut Context, inputs: &[&Tensor]) -> Result<Tensor> {
        expect_inputs(self.kind(), inputs.len(), 1)?;
        let (y, indices) = ops::max_pool2d(ctx.batch, inputs[0], &self.params())?;
        if ctx.train {
            self.saved = Some((indices, inputs[0].shape().to_vec()));
        }
        Ok(y)
    }

    fn backward(
        &mut self,
        ctx: &mut Context,
        grad_y: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let (indices, shape) = self.saved.take().ok_or_else(|| not_trained(self.kind()))?;
        let dx = ops::max_pool2d_backward(ctx.batch, grad_y, &indices, &shape, &self.params())?;
        Ok(vec![Some(dx)])
    }

    fn config(&self) -> Option<serde_json::Value> {
        serde_config(self)
    }
}

/// Average pooling over NCHW (no padding).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvgPool2d {
    kernel: (usize, usize),
    stride: (usize, usize),
    #[serde(skip)]
    saved: Option<Vec<usize>>,
}

impl AvgPool2d {
    /// Average pooling with a `kernel` window and `stride` (height, width).
    pub fn new(kernel: (usize, usize), stride: (usize, usize)) -> Self {
        AvgPool2d {
            kernel,
            stride,
            saved: None,
        }
    }

    fn params(&self) -> Pool2dParams {
        Pool2dParams {
            kernel: self.kernel,
            stride: self.stride,
            padding: (0, 0),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        at_least_one("AvgPool2d", "window", self.kernel)?;
        at_least_one("AvgPool2d", "stride", self.stride)
    }
}

impl Layer for AvgPool2d {
    fn kind(&self) -> &'static str {
        "AvgPool2d"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        self.validate()?;
        pool_output_shape(self.kind(), self.kernel, self.stride, inputs)
    }

    fn forward(&mut self, ctx: &mut Context, inputs: &[&Tensor]) -> Result<Tensor> {
        expect_inputs(self.kind(), inputs.len(), 1)?;
        if ctx.train {
            self.saved = Some(inputs[0].shape().to_vec());
        }
        ops::avg_pool2d(ctx.batch, inputs[0], &self.params())
    }

    fn backward(
        &mut self,
        ctx: &mut Context,
        grad_y: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let shape = self.saved.take().ok_or_else(|| not_trained(self.kind()))?;
        let dx = ops::avg_pool2d_backward(ctx.batch, grad_y, &shape, &self.params())?;
        Ok(vec![Some(dx)])
    }

    fn config(&self) -> Option<serde_json::Value> {
        serde_config(self)
    }
}

/// `[batch, ...]` to `[batch, features]`: a view, no dispatch.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flatten {
    #[serde(skip)]
    saved: Option<Vec<usize>>,
}

impl Layer for Flatten {
    fn kind(&self) -> &'static str {
        "Flatten"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        flatten_shape(one_input(self.kind(), inputs)?)
    }

    fn forward(&mut self, ctx: &mut Context, inputs: &[&Tensor]) -> Result<Tensor> {
        expect_inputs(self.kind(), inputs.len(), 1)?;
        let x = inputs[0];
        let shape = flatten_shape(x.shape())?;
        if ctx.train {
            self.saved = Some(x.shape().to_vec());
        }
        x.reshape(&shape)
    }

    fn backward(
        &mut self,
        _ctx: &mut Context,
        grad_y: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let shape = self.saved.take().ok_or_else(|| not_trained(self.kind()))?;
        Ok(vec![Some(grad_y.reshape(&shape)?)])
    }

    fn config(&self) -> Option<serde_json::Value> {
        serde_config(self)
    }
}

/// An elementwise activation as a layer of its own (a ReLU right after a Linear or Conv2d runs in
/// that layer's epilogue instead: see [`Layer::fuse`]).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivationLayer {
    function: Activation,
    #[serde(skip)]
    saved: Option<Tensor>,
}

impl ActivationLayer {
    /// The activation `function`.
    pub fn new(function: Activation) -> Self {
        ActivationLayer {
            function,
            saved: None,
        }
    }

    /// Which function it applies.
    pub fn function(&self) -> Activation {
        self.function
    }
}

impl Layer for ActivationLayer {
    fn kind(&self) -> &'static str {
        "Activation"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        Ok(one_input(self.kind(), inputs)?.to_vec())
    }

    fn forward(&mut self, ctx: &mut Context, inputs: &[&Tensor]) -> Result<Tensor> {
        expect_inputs(self.kind(), inputs.len(), 1)?;
        let y = ops::activation(ctx.batch, inputs[0], self.function)?;
        if ctx.train {
            self.saved = Some(inputs[0].clone());
        }
        Ok(y)
    }

    fn backward(
        &mut self,
        ctx: &mut Context,
        grad_y: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let x = self.saved.take().ok_or_else(|| not_trained(self.kind()))?;
        let dx = ops::activation_backward(ctx.batch, &x, grad_y, self.function)?;
        Ok(vec![Some(dx)])
    }

    fn config(&self) -> Option<serde_json::Value> {
        serde_config(self)
    }

    fn activation(&self) -> Option<Activation> {
        Some(self.function)
    }
}

/// y = a + b for two inputs of one shape and dtype: a skip (residual) connection.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Add;

impl Layer for Add {
    fn kind(&self) -> &'static str {
        "Add"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        expect_inputs(self.kind(), inputs.len(), 2)?;
        if inputs[0] != inputs[1] {
            return Err(Error::ShapeMismatch {
                op: "Add",
                details: format!("{:?} beside {:?}", inputs[0], inputs[1]),
            });
        }
        Ok(inputs[0].to_vec())
    }

    fn forward(&mut self, ctx: &mut Context, inputs: &[&Tensor]) -> Result<Tensor> {
        expect_inputs(self.kind(), inputs.len(), 2)?;
        ops::scale_add(ctx.batch, 1.0, inputs[0], 1.0, inputs[1])
    }

    fn backward(
        &mut self,
        _ctx: &mut Context,
        grad_y: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        Ok(needs.iter().map(|&n| n.then(|| grad_y.clone())).collect())
    }

    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({}))
    }
}

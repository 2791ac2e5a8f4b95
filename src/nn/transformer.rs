//! Transformer layers on the open model API: [`Embedding`] (tokens, with learned positions),
//! [`LayerNorm`] (and RMSNorm), [`MultiHeadAttention`] (fused, causal, with its decode step),
//! [`Dropout`], and the learning-rate schedule GPT training uses ([`WarmupCosine`]).

use serde::{Deserialize, Serialize};

use super::layer::{expect_inputs, Context, DecodeStep, Layer, ParamRole, ParamSpec};
use super::layers::not_trained;
use crate::error::{Error, Result};
use crate::ops::{self, Activation, AttentionOptions, NormGrads, NormKind};

use crate::tensor::Tensor;

fn mismatch(kind: &str, details: String) -> Error {
    Error::ShapeMismatch {
        op: "Layer::output_shape",
        details: format!("{kind}: {details}"),
    }
}

/// A weight initialised at GPT's scale (about N(0, 0.02)) whatever the model's [`crate::nn::Init`]:
/// the fans are chosen so that Kaiming's bound is 0.049 and Xavier's 0.035.
fn small_weight(name: &str, shape: &[usize]) -> ParamSpec {
    ParamSpec {
        name: name.into(),
        shape: shape.to_vec(),
        role: ParamRole::Weight {
            fan_in: 2500,
            fan_out: 2500,
        },
    }
}

/// Token embeddings `[vocab, dim]`, plus learned position embeddings `[context, dim]`: U32 token ids
/// `[batch, T]` (T ≤ context) to `[batch, T, dim]`. The backward sums the gradient rows of repeated
/// tokens in a fixed order (deterministic).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Embedding {
    vocab: usize,
    dim: usize,
    context: usize,
    #[serde(skip)]
    saved: Option<Tensor>,
}

fn at_least_one(kind: &str, sizes: &[(&str, usize)]) -> Result<()> {
    for (name, v) in sizes {
        if *v == 0 {
            return Err(Error::InvalidArgument {
                op: "Layer",
                details: format!("{kind}: {name} must be at least 1"),
            });
        }
    }
    Ok(())
}

impl Embedding {
    /// Token and position embeddings for sequences of up to `context` tokens.
    pub fn new(vocab: usize, dim: usize, context: usize) -> Self {
        Embedding {
            vocab,
            dim,
            context,
            saved: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        at_least_one(
            "Embedding",
            &[
                ("vocab", self.vocab),
                ("dim", self.dim),
                ("context", self.context),
            ],
        )
    }
}

impl Layer for Embedding {
    fn kind(&self) -> &'static str {
        "Embedding"
    }

    fn parameters(&self) -> Vec<ParamSpec> {
        vec![
            small_weight("token", &[self.vocab, self.dim]),
            small_weight("position", &[self.context, self.dim]),
        ]
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        expect_inputs(self.kind(), inputs.len(), 1)?;
        self.validate()?;
        match inputs[0] {
            [b, t] if *t <= self.context => Ok(vec![*b, *t, self.dim]),
            s => Err(mismatch(
                self.kind(),
                format!("takes token ids [batch, T ≤ {}], got {s:?}", self.context),
            )),
        }
    }

    fn forward(&mut self, ctx: &mut Context, inputs: &[&Tensor]) -> Result<Tensor> {
        expect_inputs(self.kind(), inputs.len(), 1)?;
        let ids = inputs[0];
        let y = ops::embedding(
            ctx.batch,
            ids,
            ctx.param("token")?,
            Some(ctx.param("position")?),
        )?;
        if ctx.train {
            self.saved = Some(ids.clone());
        }
        Ok(y)
    }

    fn backward(
        &mut self,
        ctx: &mut Context,
        grad_output: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let ids = self.saved.take().ok_or_else(|| not_trained(self.kind()))?;
        ops::embedding_backward(
            ctx.batch,
            &ids,
            grad_output,
            ctx.grad("token")?,
            Some(ctx.grad("position")?),
        )?;
        Ok(vec![None])
    }

    fn config(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self).ok()
    }

    fn decode(
        &mut self,
        ctx: &mut Context,
        inputs: &[&Tensor],
        step: &DecodeStep,
    ) -> Result<Tensor> {
        expect_inputs(self.kind(), inputs.len(), 1)?;
        // Each row's token at its own position.
        let (token, position) = (ctx.param("token")?, ctx.param("position")?);
        ops::embed_at(ctx.batch, inputs[0], step.cursor, token, position)
    }
}

/// LayerNorm (scale and shift) or RMSNorm (scale) over the last axis, fused.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerNorm {
    dim: usize,
    kind: NormKind,
    eps: f32,
    #[serde(skip)]
    saved: Option<(Tensor, Tensor)>,
}

impl LayerNorm {
    /// LayerNorm over `dim` features, ε = 1e-5 (PyTorch's default).
    pub fn new(dim: usize) -> Self {
        LayerNorm {
            dim,
            kind: NormKind::LayerNorm,
            eps: 1e-5,
            saved: None,
        }
    }

    /// RMSNorm over `dim` features, ε = 1e-6.
    pub fn rms(dim: usize) -> Self {
        LayerNorm {
            dim,
            kind: NormKind::RmsNorm,
            eps: 1e-6,
            saved: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        at_least_one(self.kind(), &[("dim", self.dim)])?;
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(Error::InvalidArgument {
                op: "Layer",
                details: format!(
                    "{}: eps must be finite and positive, got {}",
                    self.kind(),
                    self.eps
                ),
            });
        }
        Ok(())
    }
}

impl Layer for LayerNorm {
    fn kind(&self) -> &'static str {
        match self.kind {
            NormKind::LayerNorm => "LayerNorm",
            NormKind::RmsNorm => "RmsNorm",
        }
    }

    fn parameters(&self) -> Vec<ParamSpec> {
        let mut p = vec![ParamSpec::scale("weight", self.dim)];
        if self.kind == NormKind::LayerNorm {
            p.push(ParamSpec::bias("bias", self.dim));
        }
        p
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        expect_inputs(self.kind(), inputs.len(), 1)?;
        self.validate()?;
        match inputs[0] {
            [.., f] if *f == self.dim => Ok(inputs[0].to_vec()),
            s => Err(mismatch(
                self.kind(),
                format!("normalizes {} features, got {s:?}", self.dim),
            )),
        }
    }

    fn forward(&mut self, ctx: &mut Context, inputs: &[&Tensor]) -> Result<Tensor> {
        expect_inputs(self.kind(), inputs.len(), 1)?;
        let x = inputs[0];
        let beta = match self.kind {
            NormKind::LayerNorm => Some(ctx.param("bias")?),
            NormKind::RmsNorm => None,
        };
        let out = ops::layer_norm(
            ctx.batch,
            x,
            ctx.param("weight")?,
            beta,
            self.kind,
            self.eps,
        )?;
        if ctx.train {
            self.saved = Some((x.clone(), out.stats));
        }
        Ok(out.y)
    }

    fn backward(
        &mut self,
        ctx: &mut Context,
        grad_output: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let (x, stats) = self.saved.take().ok_or_else(|| not_trained(self.kind()))?;
        let grads = NormGrads {
            gamma: ctx.grad("weight")?,
            beta: match self.kind {
                NormKind::LayerNorm => Some(ctx.grad("bias")?),
                NormKind::RmsNorm => None,
            },
        };
        let dx = ops::layer_norm_backward(
            ctx.batch,
            &x,
            &stats,
            ctx.param("weight")?,
            grad_output,
            self.kind,
            grads,
        )?;
        Ok(vec![Some(dx)])
    }

    fn config(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self).ok()
    }
}

/// Multi-head self-attention over `[batch, T, dim]`: a fused q/k/v projection (`qkv.weight`
/// `[3·dim, dim]`, as nanoGPT's `c_attn`), the fused attention kernel (causal by default), and the
/// output projection (`proj.weight` `[dim, dim]`); both with biases.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiHeadAttention {
    dim: usize,
    heads: usize,
    causal: bool,
    /// Compact (int8 or f16) q/k/v and output projections for inference.
    #[serde(skip)]
    compact: Option<(ops::QuantizedWeights, ops::QuantizedWeights)>,
    #[serde(skip)]
    saved: Option<(Tensor, Tensor, ops::Attention)>,
}

impl MultiHeadAttention {
    /// Causal attention of `heads` heads over `dim` features (`dim` a multiple of `heads`, each
    /// head at most [`ops::attention::MAX_HEAD_DIM`] wide: checked when the model is built).
    pub fn new(dim: usize, heads: usize) -> Self {
        MultiHeadAttention {
            dim,
            heads,
            causal: true,
            compact: None,
            saved: None,
        }
    }

    /// The same attention without the causal mask (an encoder's).
    pub fn bidirectional(dim: usize, heads: usize) -> Self {
        MultiHeadAttention {
            causal: false,
            ..Self::new(dim, heads)
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.heads == 0 || !self.dim.is_multiple_of(self.heads) {
            return Err(mismatch(
                self.kind(),
                format!(
                    "{} features do not split into {} heads",
                    self.dim, self.heads
                ),
            ));
        }
        if self.dim / self.heads > ops::attention::MAX_HEAD_DIM {
            return Err(Error::LimitExceeded {
                what: "MultiHeadAttention: head dimension".into(),
                requested: (self.dim / self.heads) as u64,
                limit: ops::attention::MAX_HEAD_DIM as u64,
            });
        }
        Ok(())
    }

    /// `x·Wᵀ + b` for the projection `which` ("qkv" or "proj") of rows `x`, from the compact
    /// weights where the layer has them.
    fn project(&self, ctx: &mut Context, x: &Tensor, which: &str) -> Result<Tensor> {
        let bias = ctx.param(&format!("{which}.bias"))?;
        if let Some((qkv, proj)) = &self.compact {
            let q = if which == "qkv" { qkv } else { proj };
            return ops::quantized_linear(ctx.batch, x, q, Some(bias), Activation::None);
        }
        let options = ops::MatmulOptions {
            transposes: ops::Transposes { a: false, b: true },
            bias: Some(bias),
            activation: Activation::None,
        };
        ops::matmul(
            ctx.batch,
            x,
            ctx.param(&format!("{which}.weight"))?,
            &options,
        )
    }

    fn options(&self) -> AttentionOptions<'static> {
        AttentionOptions {
            heads: self.heads,
            causal: self.causal,
            lengths: None,
            scale: None,
        }
    }
}

impl Layer for MultiHeadAttention {
    fn kind(&self) -> &'static str {
        "MultiHeadAttention"
    }

    fn parameters(&self) -> Vec<ParamSpec> {
        let d = self.dim;
        vec![
            ParamSpec::weight("qkv.weight", &[3 * d, d]),
            ParamSpec::bias("qkv.bias", 3 * d),
            ParamSpec::weight("proj.weight", &[d, d]),
            ParamSpec::bias("proj.bias", d),
        ]
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        expect_inputs(self.kind(), inputs.len(), 1)?;
        self.validate()?;
        match inputs[0] {
            [_, _, f] if *f == self.dim => Ok(inputs[0].to_vec()),
            s => Err(mismatch(
                self.kind(),
                format!("takes [batch, T, {}], got {s:?}", self.dim),
            )),
        }
    }

    fn forward(&mut self, ctx: &mut Context, inputs: &[&Tensor]) -> Result<Tensor> {
        expect_inputs(self.kind(), inputs.len(), 1)?;
        let x = inputs[0];
        let &[b, t, d] = x.shape() else {
            return Err(mismatch(self.kind(), format!("got {:?}", x.shape())));
        };
        if ctx.train && self.compact.is_some() {
            return Err(Error::InvalidArgument {
                op: "Layer::forward",
                details: "MultiHeadAttention: compact (int8 or f16) weights serve inference only"
                    .into(),
            });
        }
        let rows = x.reshape(&[b * t, d])?;
        let qkv = self.project(ctx, &rows, "qkv")?.reshape(&[b, t, 3 * d])?;
        let att = ops::attention(ctx.batch, &qkv, &self.options())?;
        let y = self.project(ctx, &att.out.reshape(&[b * t, d])?, "proj")?;
        if ctx.train {
            self.saved = Some((rows, qkv, att));
        }
        y.reshape(&[b, t, d])
    }

    fn backward(
        &mut self,
        ctx: &mut Context,
        grad_output: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let (x, qkv, att) = self.saved.take().ok_or_else(|| not_trained(self.kind()))?;
        let &[b, t, d] = grad_output.shape() else {
            return Err(mismatch(
                self.kind(),
                format!("grad {:?}", grad_output.shape()),
            ));
        };
        let dy = grad_output.reshape(&[b * t, d])?;
        let transpose_a = ops::MatmulOptions {
            transposes: ops::Transposes { a: true, b: false },
            ..Default::default()
        };
        // The output projection: dWp += dyᵀ·att; dbp += Σ dy; d(att) = dy·Wp.
        let att_rows = att.out.reshape(&[b * t, d])?;
        ops::matmul_into(
            ctx.batch,
            &dy,
            &att_rows,
            &transpose_a,
            ctx.grad("proj.weight")?,
            ops::Write::Accumulate,
        )?;
        let db = ops::channel_sum(ctx.batch, &dy, 1)?;
        ops::axpy(ctx.batch, ctx.grad("proj.bias")?, 1.0, &db)?;
        let datt = ops::matmul(
            ctx.batch,
            &dy,
            ctx.param("proj.weight")?,
            &Default::default(),
        )?;
        let dqkv = ops::attention_backward(
            ctx.batch,
            &qkv,
            &att,
            &datt.reshape(&[b, t, d])?,
            &self.options(),
        )?
        .reshape(&[b * t, 3 * d])?;
        // The q/k/v projection.
        ops::matmul_into(
            ctx.batch,
            &dqkv,
            &x,
            &transpose_a,
            ctx.grad("qkv.weight")?,
            ops::Write::Accumulate,
        )?;
        let db = ops::channel_sum(ctx.batch, &dqkv, 1)?;
        ops::axpy(ctx.batch, ctx.grad("qkv.bias")?, 1.0, &db)?;
        let dx = if needs.first() == Some(&true) {
            let dx = ops::matmul(
                ctx.batch,
                &dqkv,
                ctx.param("qkv.weight")?,
                &Default::default(),
            )?;
            Some(dx.reshape(&[b, t, d])?)
        } else {
            None
        };
        Ok(vec![dx])
    }

    fn config(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self).ok()
    }

    fn compact(
        &mut self,
        gpu: &crate::gpu::Gpu,
        precision: crate::dtype::Precision,
        values: &[&[f32]],
    ) -> Result<Option<usize>> {
        let d = self.dim;
        let qkv = ops::QuantizedWeights::quantize(gpu, values[0], 3 * d, d, precision)?;
        let proj = ops::QuantizedWeights::quantize(gpu, values[2], d, d, precision)?;
        // The weights, and the f32 biases.
        let bytes = (qkv.size_bytes() + proj.size_bytes()) as usize + 4 * (3 * d + d);
        self.compact = Some((qkv, proj));
        Ok(Some(bytes))
    }

    fn decode_cache(&self, slots: usize, context: usize) -> Vec<Vec<usize>> {
        // Keys and values of every position of every slot.
        vec![vec![slots, context, self.dim]; 2]
    }

    fn decode(
        &mut self,
        ctx: &mut Context,
        inputs: &[&Tensor],
        step: &DecodeStep,
    ) -> Result<Tensor> {
        expect_inputs(self.kind(), inputs.len(), 1)?;
        if !self.causal {
            return Err(Error::InvalidArgument {
                op: "Layer::decode",
                details: "bidirectional attention cannot decode token by token".into(),
            });
        }
        let [keys, values] = step.cache else {
            return Err(Error::InvalidArgument {
                op: "Layer::decode",
                details: "MultiHeadAttention decodes with its keys and values cache".into(),
            });
        };
        let (x, d) = (inputs[0], self.dim);
        let n = x.shape()[0];
        let qkv = self.project(ctx, x, "qkv")?;
        ops::cache_append(ctx.batch, &qkv, step.cursor, keys, values)?;
        let att = if step.prompt {
            // One prompt's positions 0..n: the fused causal attention over them.
            let qkv = qkv.reshape(&[1, n, 3 * d])?;
            ops::attention(ctx.batch, &qkv, &self.options())?
                .out
                .reshape(&[n, d])?
        } else {
            ops::decode_attention(ctx.batch, &qkv, step.cursor, keys, values, self.heads)?
        };
        self.project(ctx, &att, "proj")
    }
}

/// Inverted dropout in training (elements zeroed with probability `p`, the rest scaled by
/// 1/(1 − p)), the identity in inference. The masks come from a counter-based generator keyed by
/// the layer's seed and its count of training forwards: the backward drops what the forward
/// dropped, and a run is reproducible from its seeds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dropout {
    p: f32,
    seed: u64,
    #[serde(skip)]
    counter: u32,
    #[serde(skip)]
    saved: Option<ops::dropout::DropoutKey>,
}

impl Dropout {
    /// Dropout with probability `p` (in [0, 1): checked at the first training forward) and its
    /// generator's `seed`.
    pub fn new(p: f32, seed: u64) -> Self {
        Dropout {
            p,
            seed,
            counter: 0,
            saved: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.p) {
            return Err(Error::InvalidArgument {
                op: "Layer",
                details: format!("Dropout: p must be in [0, 1), got {}", self.p),
            });
        }
        Ok(())
    }
}

impl Layer for Dropout {
    fn kind(&self) -> &'static str {
        "Dropout"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        expect_inputs(self.kind(), inputs.len(), 1)?;
        Ok(inputs[0].to_vec())
    }

    fn forward(&mut self, ctx: &mut Context, inputs: &[&Tensor]) -> Result<Tensor> {
        expect_inputs(self.kind(), inputs.len(), 1)?;
        if !ctx.train || self.p == 0.0 {
            self.saved = None;
            return Ok(inputs[0].clone());
        }
        let key = ops::dropout::DropoutKey {
            p: self.p,
            seed: self.seed,
            counter: self.counter,
        };
        let y = ops::dropout(ctx.batch, inputs[0], &key)?;
        self.counter = self.counter.wrapping_add(1);
        self.saved = Some(key);
        Ok(y)
    }

    fn backward(
        &mut self,
        ctx: &mut Context,
        grad_output: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        match self.saved.take() {
            Some(key) => Ok(vec![Some(ops::dropout_backward(
                ctx.batch,
                grad_output,
                &key,
            )?)]),
            None => Ok(vec![Some(grad_output.clone())]),
        }
    }

    fn config(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self).ok()
    }
}

/// A learning rate that rises linearly over `warmup_steps` to `peak`, then follows a half cosine
/// down to `min` at `total_steps` (and stays there), as GPT training schedules it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupCosine {
    peak: f32,
    min: f32,
    warmup_steps: u32,
    total_steps: u32,
}

impl WarmupCosine {
    /// The schedule; `peak` and `min` finite with 0 ≤ min ≤ peak, `warmup_steps` ≤ `total_steps`,
    /// `total_steps` at least 1.
    pub fn new(peak: f32, min: f32, warmup_steps: u32, total_steps: u32) -> Result<Self> {
        let ok = peak.is_finite()
            && min.is_finite()
            && (0.0..=peak).contains(&min)
            && total_steps >= 1
            && warmup_steps <= total_steps;
        if !ok {
            return Err(Error::InvalidArgument {
                op: "WarmupCosine::new",
                details: format!(
                    "need 0 <= min ({min}) <= peak ({peak}), both finite, and warm-up \
                     ({warmup_steps}) <= total ({total_steps}) >= 1"
                ),
            });
        }
        Ok(WarmupCosine {
            peak,
            min,
            warmup_steps,
            total_steps,
        })
    }

    /// The learning rate of step `step` (from 0).
    pub fn lr_at(&self, step: u32) -> f32 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f32 / self.warmup_steps as f32;
        }
        if step >= self.total_steps {
            return self.min;
        }
        let span = (self.total_steps - self.warmup_steps).max(1) as f32;
        let progress = (step - self.warmup_steps) as f32 / span;
        self.min + 0.5 * (self.peak - self.min) * (1.0 + (std::f32::consts::PI * progress).cos())
    }
}

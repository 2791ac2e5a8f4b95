//! A decoder-only language model (GPT-2's pre-norm architecture) built from the transformer layers
//! on the open model API, with its training step (forward, next-token cross-entropy, backward,
//! AdamW, all in one submission), evaluation, generation, and model files that carry the
//! vocabulary.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::io::{corrupt, read_capped, ReadOptions};
use super::layers::Linear;
use super::model::{Init, Model, ModelBuilder};
use super::optimizer::Optimizer;
use super::trainer::MixedPrecision;
use super::transformer::{transformer_block, BlockConfig, Embedding, LayerNorm};
use crate::batch::Batch;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops::{self, amp::LossScale, Activation};
use crate::tensor::Tensor;

/// The architecture of a [`LanguageModel`]. Every size is checked ([`Self::validate`]) before
/// anything is made, for configurations read from files too.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GptConfig {
    /// Token ids: 0..vocab.
    pub vocab: usize,
    /// The longest sequence (learned positions).
    pub context: usize,
    /// Width of the residual stream.
    pub dim: usize,
    /// Attention heads (dim / heads at most 128).
    pub heads: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// The MLP's activation (GPT-2: [`Activation::GeluTanh`]).
    pub activation: Activation,
    /// Dropout on each block's residual branches in training, in [0, 1) (0: none; files without
    /// it read as 0).
    #[serde(default)]
    pub dropout: f32,
}

/// Bounds on a configuration: generous for this library's kernels, and small enough that no
/// product of them overflows before the parameter count is checked against the adapter.
const MAX_VOCAB: usize = 1 << 20;
const MAX_CONTEXT: usize = 1 << 16;
const MAX_DIM: usize = 1 << 14;
const MAX_LAYERS: usize = 1 << 10;

impl GptConfig {
    /// Checks every size: at least 1, within the bounds above, `dim` a multiple of `heads` with
    /// heads at most [`ops::attention::MAX_HEAD_DIM`] wide.
    pub fn validate(&self) -> Result<()> {
        let invalid = |details: String| {
            Err(Error::InvalidArgument {
                op: "GptConfig",
                details,
            })
        };
        for (name, v, max) in [
            ("vocab", self.vocab, MAX_VOCAB),
            ("context", self.context, MAX_CONTEXT),
            ("dim", self.dim, MAX_DIM),
            ("heads", self.heads, MAX_DIM),
            ("layers", self.layers, MAX_LAYERS),
        ] {
            if v == 0 || v > max {
                return invalid(format!("{name} must be in 1..={max}, got {v}"));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return invalid(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if !self.dim.is_multiple_of(self.heads)
            || self.dim / self.heads > ops::attention::MAX_HEAD_DIM
        {
            return invalid(format!(
                "dim {} must split into {} heads of at most {} features",
                self.dim,
                self.heads,
                ops::attention::MAX_HEAD_DIM
            ));
        }
        Ok(())
    }

    /// The model graph: token and position embeddings, `layers` pre-norm blocks, a final
    /// LayerNorm and the output projection to `vocab` logits, for token ids `[batch, context]`.
    fn builder(&self, seed: u64) -> Result<(ModelBuilder, super::model::Value)> {
        self.validate()?;
        let mut b = ModelBuilder::new();
        let ids = b.input(&[self.context]);
        let mut x = b.add(Embedding::new(self.vocab, self.dim, self.context), &[ids]);
        for layer in 0..self.layers {
            let block = BlockConfig {
                dim: self.dim,
                heads: self.heads,
                activation: self.activation,
                dropout: self.dropout,
                seed: seed.wrapping_add(2 * layer as u64 + 1),
            };
            x = transformer_block(&mut b, x, &block);
        }
        let x = b.add(LayerNorm::new(self.dim), &[x]);
        let logits = b.add(Linear::new(self.dim, self.vocab), &[x]);
        Ok((b, logits))
    }
}

/// Tensors of one batch shape, made once.
#[derive(Debug)]
struct Staged {
    ids: Tensor,
    targets: Tensor,
}

/// A decoder-only transformer over token ids: [`GptConfig`]'s architecture as a [`Model`], trained
/// on next-token prediction.
#[derive(Debug)]
pub struct LanguageModel {
    model: Model,
    config: GptConfig,
    staged: HashMap<usize, Staged>,
    loss_sum: Option<Tensor>,
    loss_steps: u32,
    grad_clip: Option<f32>,
    loss_scale: Option<LossScale>,
}

/// How [`LanguageModel::generate`] picks each token (on the GPU: [`ops::sample_tokens`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token.
    Greedy,
    /// From softmax(logits / temperature) restricted to the `top_k` most likely tokens (0: all),
    /// with a counter-based generator: the same seed gives the same text.
    Sample {
        /// In [`ops::sampling::TEMPERATURE_RANGE`].
        temperature: f32,
        /// Tokens kept (0: all).
        top_k: usize,
        /// The generator's seed.
        seed: u64,
    },
}

const FORMAT: (&str, &str) = ("format", "wgnn-gpt");

impl LanguageModel {
    /// A model of `config` with weights drawn from `seed` (Xavier-uniform matrices, GPT-scale
    /// embeddings, zero biases, unit scales).
    pub fn new(gpu: &Gpu, config: GptConfig, seed: u64) -> Result<Self> {
        let (builder, output) = config.builder(seed)?;
        let model = builder.build(gpu, output, Init::XavierUniform { seed })?;
        Ok(Self::from_model(model, config))
    }

    /// A model of `config` with the given parameter values (named as [`Model::params`] lists
    /// them).
    pub fn with_parameters(
        gpu: &Gpu,
        config: GptConfig,
        values: super::params::HostParameters,
    ) -> Result<Self> {
        let (builder, output) = config.builder(0)?;
        let model = builder.build_with_parameters(gpu, output, values)?;
        Ok(Self::from_model(model, config))
    }

    fn from_model(model: Model, config: GptConfig) -> Self {
        LanguageModel {
            model,
            config,
            staged: HashMap::new(),
            loss_sum: None,
            loss_steps: 0,
            grad_clip: None,
            loss_scale: None,
        }
    }

    /// The architecture.
    pub fn config(&self) -> &GptConfig {
        &self.config
    }
    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }
    /// The model, mutably.
    pub fn model_mut(&mut self) -> &mut Model {
        &mut self.model
    }

    /// Switches training to mixed precision: f16 weight copies, activations and gradients (the
    /// forward, backward, attention and the other kernels in f16 storage with f32 arithmetic),
    /// f32 master weights that the optimizer updates, and a dynamic loss scale: a step whose f16
    /// gradients overflow is skipped on the GPU and the scale halves (as in PyTorch's
    /// GradScaler). Evaluation and generation then run in f16 too. Needs an adapter with
    /// SHADER_F16 ([`Error::UnsupportedFeature`] otherwise); does nothing the second time.
    pub fn enable_mixed_precision(&mut self, settings: MixedPrecision) -> Result<()> {
        if self.loss_scale.is_some() {
            return Ok(());
        }
        let scale = LossScale::new(
            self.model.gpu(),
            settings.initial_scale,
            settings.growth_interval,
        )?;
        self.model.enable_mixed_precision()?;
        self.loss_scale = Some(scale);
        Ok(())
    }

    /// In mixed precision, the current loss scale and the number of steps skipped for overflow
    /// (one readback); `None` in f32.
    pub fn loss_scale(&self) -> Result<Option<(f32, u32)>> {
        self.loss_scale.as_ref().map(LossScale::read).transpose()
    }

    /// Clips the gradients' global norm to `max_norm` before each update (`None`: no clipping).
    pub fn set_grad_clip(&mut self, max_norm: Option<f32>) -> Result<()> {
        if let Some(m) = max_norm {
            if !(m.is_finite() && m > 0.0) {
                return Err(Error::InvalidArgument {
                    op: "LanguageModel::set_grad_clip",
                    details: format!("max_norm must be finite and positive, got {m}"),
                });
            }
        }
        self.grad_clip = max_norm;
        Ok(())
    }

    /// Checks a batch of sequences: `inputs` and `targets` hold `n · seq_len` ids, `seq_len` within
    /// the context, ids within the vocabulary (targets may also be [`ops::IGNORE_INDEX`]). Returns
    /// the number of sequences.
    fn check(
        &self,
        op: &'static str,
        inputs: &[u32],
        targets: Option<&[u32]>,
        seq_len: usize,
    ) -> Result<usize> {
        if seq_len == 0 || seq_len > self.config.context {
            return Err(Error::InvalidArgument {
                op,
                details: format!(
                    "sequence length {seq_len} must be in 1..={}",
                    self.config.context
                ),
            });
        }
        if inputs.is_empty() || !inputs.len().is_multiple_of(seq_len) {
            return Err(Error::ShapeMismatch {
                op,
                details: format!(
                    "{} input ids are not whole sequences of {seq_len}",
                    inputs.len()
                ),
            });
        }
        ops::check_ids(op, inputs, self.config.vocab)?;
        if let Some(t) = targets {
            if t.len() != inputs.len() {
                return Err(Error::ShapeMismatch {
                    op,
                    details: format!("{} targets for {} inputs", t.len(), inputs.len()),
                });
            }
            let vocab = self.config.vocab;
            if let Some((i, &id)) = t
                .iter()
                .enumerate()
                .find(|(_, &id)| id as usize >= vocab && id != ops::IGNORE_INDEX)
            {
                return Err(Error::InvalidArgument {
                    op,
                    details: format!(
                        "target {i} is {id}, past the vocabulary of {vocab} (ops::IGNORE_INDEX \
                         skips a position)"
                    ),
                });
            }
        }
        let n = inputs.len() / seq_len;
        self.model.check_batch_size(n)?;
        Ok(n)
    }

    /// Sequences of `seq_len` ids widened to the model's context, `fill` after each (the model
    /// runs on whole contexts; causal attention keeps the padding from changing what precedes it).
    fn pad(&self, ids: &[u32], seq_len: usize, fill: u32) -> Vec<u32> {
        let context = self.config.context;
        if seq_len == context {
            return ids.to_vec();
        }
        let mut out = Vec::with_capacity(ids.len() / seq_len * context);
        for row in ids.chunks(seq_len) {
            out.extend_from_slice(row);
            out.resize(out.len() + context - seq_len, fill);
        }
        out
    }

    /// The id and target tensors for `n` padded sequences, made once per `n`.
    fn stage(&mut self, n: usize) -> Result<&Staged> {
        if !self.staged.contains_key(&n) {
            let gpu = self.model.gpu().clone();
            let shape = [n, self.config.context];
            let staged = Staged {
                ids: Tensor::uninit(&gpu, &shape, DType::U32)?,
                targets: Tensor::uninit(&gpu, &shape, DType::U32)?,
            };
            self.staged.insert(n, staged);
        }
        Ok(&self.staged[&n])
    }

    /// Records one training step into `batch`: the upload of `inputs` and `targets` (`n`
    /// sequences of `seq_len` ids each, row-major; a target is the next token, or
    /// [`ops::IGNORE_INDEX`]), the forward pass, the mean next-token cross-entropy, the backward
    /// pass and `optimizer`'s update. The loss is added on the GPU; [`Self::mean_loss`] reads it.
    pub fn record_train_step(
        &mut self,
        batch: &mut Batch,
        optimizer: &mut Optimizer,
        inputs: &[u32],
        targets: &[u32],
        seq_len: usize,
    ) -> Result<()> {
        self.record_gradients(batch, inputs, targets, seq_len)?;
        self.record_update(batch, optimizer)
    }

    /// The first half of [`Self::record_train_step`]: the upload, forward, loss and backward
    /// pass, which leave the step's f32 gradients in the model's gradient arena (in mixed
    /// precision unscaled, with [`Self::overflow_flag`] set on overflow). Between it and
    /// [`Self::record_update`] the gradients may be changed, as a data-parallel all-reduce does.
    pub fn record_gradients(
        &mut self,
        batch: &mut Batch,
        inputs: &[u32],
        targets: &[u32],
        seq_len: usize,
    ) -> Result<()> {
        const OP: &str = "LanguageModel::train_step";
        let n = self.check(OP, inputs, Some(targets), seq_len)?;
        let (ids, labels) = {
            let s = self.stage(n)?;
            (s.ids.clone(), s.targets.clone())
        };
        batch.write(&ids, &self.pad(inputs, seq_len, 0))?;
        batch.write(&labels, &self.pad(targets, seq_len, ops::IGNORE_INDEX))?;
        self.model.zero_grads(batch)?;
        let logits = self.model.forward(batch, &ids, true)?;
        let loss = ops::cross_entropy(batch, &logits, &labels, 0.0)?;
        if let Some(scale) = &self.loss_scale {
            ops::amp::scale_by_loss_scale(batch, &loss.grad_logits, scale)?;
        }
        self.model
            .backward(batch, &loss.grad_logits.reshape(logits.shape())?)?;
        let params = self.model.params();
        if let (Some(scale), Some((_, half_grads))) = (&self.loss_scale, params.half()) {
            // f16 gradients / scale -> f32 gradients, flagging overflow.
            ops::amp::unscale_gradients(batch, half_grads, params.grads(), scale)?;
        }
        if self.loss_sum.is_none() {
            self.loss_sum = Some(Tensor::zeros(self.model.gpu(), &[1], DType::F32)?);
        }
        if let Some(sum) = &self.loss_sum {
            ops::axpy(batch, sum, 1.0, &loss.loss)?;
        }
        self.loss_steps += 1;
        Ok(())
    }

    /// In mixed precision, the U32 `[2]` flag whose `[0]` is non-zero when this step's gradients
    /// overflowed (the update is then skipped): what data-parallel ranks agree on.
    pub fn overflow_flag(&self) -> Option<&Tensor> {
        self.loss_scale.as_ref().map(|s| &s.found_overflow)
    }

    /// The second half of [`Self::record_train_step`]: clipping, then `optimizer`'s update from
    /// the gradients [`Self::record_gradients`] left (skipped on overflow in mixed precision,
    /// with the loss scale's adjustment and fresh f16 copies of the weights).
    pub fn record_update(&mut self, batch: &mut Batch, optimizer: &mut Optimizer) -> Result<()> {
        let params = self.model.params();
        match (&self.loss_scale, params.half()) {
            (Some(scale), Some((half_values, _))) => {
                if let Some(max_norm) = self.grad_clip {
                    ops::clip_grad_norm(batch, &[params.grads()], max_norm)?;
                }
                optimizer.step_unless(batch, params, Some(&scale.found_overflow))?;
                ops::amp::update_loss_scale(batch, scale)?;
                ops::amp::cast_from_f32(batch, params.values(), half_values)?;
            }
            _ => {
                if let Some(max_norm) = self.grad_clip {
                    ops::clip_grad_norm(batch, &[params.grads()], max_norm)?;
                }
                optimizer.step(batch, params)?;
            }
        }
        Ok(())
    }

    /// One training step (see [`Self::record_train_step`]) in one submission.
    pub fn train_step(
        &mut self,
        optimizer: &mut Optimizer,
        inputs: &[u32],
        targets: &[u32],
        seq_len: usize,
    ) -> Result<()> {
        let mut batch = Batch::new(self.model.gpu());
        self.record_train_step(&mut batch, optimizer, inputs, targets, seq_len)?;
        batch.submit()
    }

    /// The mean training loss over the steps since the last call (NaN if none): one readback.
    pub fn mean_loss(&mut self) -> Result<f32> {
        let Some(sum) = &self.loss_sum else {
            return Ok(f32::NAN);
        };
        let total = sum.to_vec::<f32>()?[0];
        sum.write(&[0.0f32])?;
        let mean = total / self.loss_steps.max(1) as f32;
        self.loss_steps = 0;
        Ok(mean)
    }

    /// The mean next-token cross-entropy (nats per token) of `targets` given `inputs`, without
    /// training: one submission and one readback.
    pub fn loss(&mut self, inputs: &[u32], targets: &[u32], seq_len: usize) -> Result<f32> {
        let n = self.check("LanguageModel::loss", inputs, Some(targets), seq_len)?;
        let gpu = self.model.gpu().clone();
        let context = self.config.context;
        let ids = Tensor::from_slice(&gpu, &self.pad(inputs, seq_len, 0), &[n, context])?;
        let padded = self.pad(targets, seq_len, ops::IGNORE_INDEX);
        let labels = Tensor::from_slice(&gpu, &padded, &[n, context])?;
        let mut batch = Batch::new(&gpu);
        let logits = self.model.forward(&mut batch, &ids, false)?;
        let loss = ops::cross_entropy(&mut batch, &logits, &labels, 0.0)?;
        batch.submit()?;
        Ok(loss.loss.to_vec::<f32>()?[0])
    }

    /// The logits `[n, seq_len, vocab]` (row-major) for `n` sequences of `seq_len` ids.
    pub fn logits(&mut self, inputs: &[u32], seq_len: usize) -> Result<Vec<f32>> {
        let n = self.check("LanguageModel::logits", inputs, None, seq_len)?;
        let gpu = self.model.gpu().clone();
        let context = self.config.context;
        let ids = Tensor::from_slice(&gpu, &self.pad(inputs, seq_len, 0), &[n, context])?;
        let mut batch = Batch::new(&gpu);
        let logits = self.model.forward(&mut batch, &ids, false)?;
        batch.submit()?;
        let all = logits.to_vec_f32()?;
        if seq_len == context {
            return Ok(all);
        }
        let row = self.config.vocab * context;
        Ok(all
            .chunks(row)
            .flat_map(|r| r[..seq_len * self.config.vocab].iter().copied())
            .collect())
    }

    /// `prompt` followed by `new_tokens` generated ones, through a [`crate::generate::Decoder`]:
    /// the prompt fills a key/value cache, then each token is one decode step, sampled on the
    /// GPU. Past the context, each token runs the forward over the last `context` tokens.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        new_tokens: usize,
        sampling: Sampling,
    ) -> Result<Vec<u32>> {
        use crate::generate::{DecodeRow, Decoder, DecoderOptions};
        use crate::ops::SamplingSettings;
        const OP: &str = "LanguageModel::generate";
        if prompt.is_empty() {
            return Err(Error::InvalidArgument {
                op: OP,
                details: "the prompt needs at least one token".into(),
            });
        }
        ops::check_ids(OP, prompt, self.config.vocab)?;
        let vocab = self.config.vocab;
        let settings = |counter: usize| match sampling {
            Sampling::Greedy => SamplingSettings::greedy(),
            Sampling::Sample {
                temperature,
                top_k,
                seed,
            } => SamplingSettings {
                temperature,
                // 0, or the vocabulary or more: every token.
                top_k: if top_k >= vocab { 0 } else { top_k as u32 },
                top_p: 1.0,
                seed,
                counter: counter as u32,
            },
        };
        settings(0).validate(OP, 0, vocab)?;
        let options = DecoderOptions {
            max_sequences: 1,
            prefill_chunk: 0,
            ..Default::default()
        };
        let mut decoder = Decoder::new(self, options)?;
        let context = self.config.context;
        let mut tokens = prompt.to_vec();
        tokens.reserve(new_tokens);
        let mut cached = false;
        for i in 0..new_tokens {
            let s = [settings(i)];
            let next = if cached && tokens.len() <= context {
                let row = DecodeRow {
                    slot: 0,
                    position: tokens.len() - 1,
                    token: tokens[tokens.len() - 1],
                };
                decoder.step(&[row], &s)?[0]
            } else {
                let window = &tokens[tokens.len().saturating_sub(context)..];
                cached = tokens.len() <= context;
                decoder.prefill_and_sample(&[(0, window)], &s)?[0]
            };
            tokens.push(next);
        }
        Ok(tokens)
    }

    /// Saves the parameters (f32) in safetensors, with the configuration and `vocabulary` (the
    /// text of each token id, however the caller encodes it) in the metadata.
    pub fn save(&self, path: impl AsRef<Path>, vocabulary: &str) -> Result<()> {
        let host = self.model.params().to_host()?;
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = host
            .iter()
            .map(|(name, shape, values)| {
                (
                    name.clone(),
                    shape.clone(),
                    bytemuck::cast_slice(values).to_vec(),
                )
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(name, shape, data)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| corrupt(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata = HashMap::from([
            (FORMAT.0.to_string(), FORMAT.1.to_string()),
            (
                "config".to_string(),
                serde_json::to_string(&self.config).map_err(|e| corrupt(e.to_string()))?,
            ),
            ("vocabulary".to_string(), vocabulary.to_string()),
        ]);
        let out =
            safetensors::serialize(views, Some(metadata)).map_err(|e| corrupt(e.to_string()))?;
        super::io::write_whole(path.as_ref(), &out)
    }

    /// Loads a model saved by [`Self::save`] (read with a size cap, the configuration checked
    /// before anything is made, every tensor against the architecture, no NaN or infinity), and
    /// its vocabulary.
    pub fn load(gpu: &Gpu, path: impl AsRef<Path>) -> Result<(Self, String)> {
        Self::load_with(gpu, path, &ReadOptions::default())
    }

    /// [`Self::load`] with explicit limits.
    pub fn load_with(
        gpu: &Gpu,
        path: impl AsRef<Path>,
        options: &ReadOptions,
    ) -> Result<(Self, String)> {
        use safetensors::SafeTensors;
        let bytes = read_capped(path.as_ref(), options.max_file_bytes)?;
        let (_, header) =
            SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(format!("header: {e}")))?;
        let meta = header
            .metadata()
            .clone()
            .ok_or_else(|| corrupt("no metadata: not a wgnn language model"))?;
        if meta.get(FORMAT.0).map(String::as_str) != Some(FORMAT.1) {
            return Err(corrupt("metadata has no \"format\": \"wgnn-gpt\""));
        }
        let config: GptConfig = serde_json::from_str(
            meta.get("config")
                .ok_or_else(|| corrupt("metadata lacks \"config\""))?,
        )
        .map_err(|e| corrupt(format!("config: {e}")))?;
        config
            .validate()
            .map_err(|e| corrupt(format!("config: {e}")))?;
        let vocabulary = meta.get("vocabulary").cloned().unwrap_or_default();
        let tensors =
            SafeTensors::deserialize(&bytes).map_err(|e| corrupt(format!("tensors: {e}")))?;
        // The architecture's parameters, checked against the adapter before values are decoded.
        let (builder, output) = config.builder(0)?;
        let shapes = builder.parameter_shapes();
        super::params::ParamStore::check_fits(gpu, shapes.iter().map(|(_, s)| s.as_slice()))?;
        let mut values = Vec::with_capacity(shapes.len());
        for (name, shape) in shapes {
            let view = tensors
                .tensor(&name)
                .map_err(|_| corrupt(format!("missing tensor {name:?}")))?;
            if view.dtype() != safetensors::Dtype::F32 || view.shape() != shape.as_slice() {
                return Err(corrupt(format!(
                    "{name}: {:?} {:?}, the model needs F32 {shape:?}",
                    view.dtype(),
                    view.shape()
                )));
            }
            let data: Vec<f32> = bytemuck::pod_collect_to_vec(view.data());
            if !options.allow_non_finite {
                if let Some(j) = data.iter().position(|v| !v.is_finite()) {
                    return Err(corrupt(format!("{name}: element {j} is {}", data[j])));
                }
            }
            values.push((name, shape, data));
        }
        if tensors.len() != values.len() {
            return Err(corrupt(format!(
                "{} tensors in the file, the model needs {}",
                tensors.len(),
                values.len()
            )));
        }
        let model = builder.build_with_parameters(gpu, output, values)?;
        Ok((Self::from_model(model, config), vocabulary))
    }
}

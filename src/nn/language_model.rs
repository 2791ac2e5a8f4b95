//! A decoder-only language model (GPT-2's pre-norm architecture): [`GptConfig`] over a [`Model`]
//! built from the transformer layers, trained by the one [`Trainer`] (next-token cross-entropy on
//! token ids, [`Trainer::step_sequences`]), with evaluation, generation (a
//! [`crate::generate::Decoder`] lowered from the same graph), and model files that carry the
//! configuration and the vocabulary.

use std::collections::BTreeMap;
use std::path::Path;

use super::gpt::GptConfig;
use super::io::{corrupt, ModelFile, ReadOptions};
use super::model::{Init, Model};
use super::trainer::{Input, MicroBatch, Targets, Trainer};
use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops;
use crate::tensor::Tensor;

/// A decoder-only transformer over token ids: [`GptConfig`]'s architecture as a [`Model`] (whose
/// one input is token ids `[context]` and whose output is logits `[context, vocab]`), trained on
/// next-token prediction by a [`Trainer`]:
///
/// ```no_run
/// use wgnn::nn::{GptConfig, LanguageModel, Optimizer, Trainer};
/// use wgnn::{ops::AdamConfig, Activation, Gpu};
/// # fn main() -> wgnn::Result<()> {
/// let gpu = Gpu::new()?;
/// let config = GptConfig { vocab: 65, context: 32, dim: 64, heads: 4, layers: 2,
///     activation: Activation::GeluTanh, dropout: 0.0 };
/// let lm = LanguageModel::new(&gpu, config, 1)?;
/// let mut trainer = Trainer::new(lm, Optimizer::adam(AdamConfig::adamw(3e-3, 0.1)));
/// let (x, y) = (vec![1u32; 8 * 32], vec![2u32; 8 * 32]); // 8 sequences and their next tokens
/// trainer.step_sequences(&x, &y, 32)?;
/// let text = trainer.model_mut().generate(&[1, 2, 3], 10, wgnn::nn::Sampling::Greedy)?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LanguageModel {
    model: Model,
    config: GptConfig,
}

impl AsRef<Model> for LanguageModel {
    fn as_ref(&self) -> &Model {
        &self.model
    }
}

impl AsMut<Model> for LanguageModel {
    fn as_mut(&mut self) -> &mut Model {
        &mut self.model
    }
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
        LanguageModel { model, config }
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

    /// A batch of `n` sequences of `seq_len` ids and their next tokens, checked and widened to
    /// the model's context (inputs padded with 0, targets with [`ops::IGNORE_INDEX`]): the
    /// micro-batch a [`Trainer`] trains on ([`Trainer::step_sequences`] makes it; data-parallel
    /// training makes it per rank).
    pub fn sequences(
        &self,
        inputs: &[u32],
        targets: &[u32],
        seq_len: usize,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        self.check("LanguageModel::sequences", inputs, Some(targets), seq_len)?;
        Ok((
            self.pad(inputs, seq_len, 0),
            self.pad(targets, seq_len, ops::IGNORE_INDEX),
        ))
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

    /// Saves the model as a model file ([`ModelFile`]: its graph and f32 parameters), with the
    /// configuration and `vocabulary` (the text of each token id, however the caller encodes it)
    /// in the metadata.
    pub fn save(&self, path: impl AsRef<Path>, vocabulary: &str) -> Result<()> {
        let mut file = ModelFile::of(&self.model)?;
        file.metadata = BTreeMap::from([
            (
                "config".to_string(),
                serde_json::to_string(&self.config).map_err(|e| corrupt(e.to_string()))?,
            ),
            ("vocabulary".to_string(), vocabulary.to_string()),
        ]);
        file.write_as(path, crate::dtype::Precision::F32)
    }

    /// Loads a model saved by [`Self::save`] (or by wgnn before the graph format), read with a
    /// size cap, the configuration checked before anything is made and the graph against it,
    /// every tensor against the architecture, no NaN or infinity; and its vocabulary.
    pub fn load(gpu: &Gpu, path: impl AsRef<Path>) -> Result<(Self, String)> {
        Self::load_with(gpu, path, &ReadOptions::default())
    }

    /// [`Self::load`] with explicit limits.
    pub fn load_with(
        gpu: &Gpu,
        path: impl AsRef<Path>,
        options: &ReadOptions,
    ) -> Result<(Self, String)> {
        Self::from_file(gpu, ModelFile::read_with(path, options)?)
    }

    /// The language model of a model file already read (its metadata holds the configuration),
    /// and its vocabulary.
    pub fn from_file(gpu: &Gpu, file: ModelFile) -> Result<(Self, String)> {
        let config: GptConfig = serde_json::from_str(
            file.metadata
                .get("config")
                .ok_or_else(|| corrupt("metadata lacks \"config\": not a wgnn language model"))?,
        )
        .map_err(|e| corrupt(format!("config: {e}")))?;
        config
            .validate()
            .map_err(|e| corrupt(format!("config: {e}")))?;
        let (builder, output) = config.builder(0)?;
        let expected = builder.graph(output)?;
        let ids = |g: &super::model::GraphSpec| g.inputs.clone();
        if ids(&file.graph) != ids(&expected) || file.graph.nodes.len() != expected.nodes.len() {
            return Err(corrupt(format!(
                "the graph does not match the configuration {config:?}"
            )));
        }
        let vocabulary = file.metadata.get("vocabulary").cloned().unwrap_or_default();
        let model = file.into_model(gpu)?;
        if model.output_shape(1)? != [1, config.context, config.vocab] {
            return Err(corrupt(
                "the graph's output is not the configuration's logits",
            ));
        }
        Ok((Self::from_model(model, config), vocabulary))
    }
}

impl Trainer<LanguageModel> {
    /// One training step on `n` sequences of `seq_len` ids (row-major) and their next tokens
    /// (`targets`; a target may be [`ops::IGNORE_INDEX`]), in one submission.
    pub fn step_sequences(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        seq_len: usize,
    ) -> Result<()> {
        let mut batch = Batch::new(self.model().model().gpu());
        self.record_sequences(&mut batch, inputs, targets, seq_len)?;
        batch.submit()
    }

    /// Records one training step on sequences (see [`Self::step_sequences`]) into `batch`.
    pub fn record_sequences(
        &mut self,
        batch: &mut Batch,
        inputs: &[u32],
        targets: &[u32],
        seq_len: usize,
    ) -> Result<()> {
        let (ids, next) = self.model().sequences(inputs, targets, seq_len)?;
        let inputs = [Input::Ids(&ids)];
        let micro = MicroBatch {
            inputs: &inputs,
            targets: Targets::Classes(&next),
        };
        self.record_micro_batches(batch, &[micro])
    }
}

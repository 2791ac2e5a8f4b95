//! Generation at serving speed: a [`Decoder`] that keeps every running sequence's keys and values
//! in a GPU cache and makes one token per sequence per step, and an [`Engine`] that batches
//! sequences continuously (they join after their prefill and leave on their stop condition between
//! steps), samples on the GPU and streams tokens to its callers.
//!
//! The cache holds one preallocated slot of `context` positions per running sequence
//! (`[slots, context, dim]` per layer, keys and values): the language models here have short
//! contexts, so a slot wastes little, and a slot's rows are contiguous, which the decode kernel
//! reads with plain strides and no block table. A paged cache pays off when contexts are long and
//! lengths vary widely; the kernels take a cursor per row, so that change stays inside them.

mod engine;

pub use engine::{
    Batching, Engine, EngineOptions, EngineStats, Event, FinishReason, Generation,
    GenerationRequest, Latencies,
};

use crate::batch::{Batch, DispatchProfile, DispatchStamps, Plan};
use crate::dtype::{DType, Precision};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::{GptConfig, LanguageModel};
use crate::ops::{self, Activation, NormKind, QuantizedWeights, SamplingSettings};
use crate::tensor::Tensor;

/// How a [`Decoder`] is made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecoderOptions {
    /// Sequences the cache holds at once (its slots): 1 to [`DecoderOptions::MAX_SEQUENCES`].
    pub max_sequences: usize,
    /// The matrices' storage: f32, or f16 / int8 dequantized inside the kernels (embeddings,
    /// norms, biases and activations stay f32).
    pub precision: Precision,
    /// Prompt tokens one step may carry besides a token per sequence (chunked prefill: a
    /// sequence joining a running batch has its prompt processed in the decode steps, so the
    /// others' next tokens are not held up by a whole prefill): 0 to
    /// [`DecoderOptions::MAX_PREFILL_CHUNK`].
    pub prefill_chunk: usize,
}

impl DecoderOptions {
    /// The most slots: 1,024.
    pub const MAX_SEQUENCES: usize = 1024;
    /// The largest `prefill_chunk`: 1,024.
    pub const MAX_PREFILL_CHUNK: usize = 1024;
}

impl Default for DecoderOptions {
    fn default() -> Self {
        DecoderOptions {
            max_sequences: 16,
            precision: Precision::F32,
            prefill_chunk: 8,
        }
    }
}

/// One token to decode: the sequence's cache slot, the token's position, the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeRow {
    /// The sequence's slot (below [`Decoder::slots`]).
    pub slot: usize,
    /// The token's position: the sequence's length before it.
    pub position: usize,
    /// The token id.
    pub token: u32,
}

#[derive(Debug)]
enum Weight {
    Dense(Tensor),
    Compact(QuantizedWeights),
}

#[derive(Debug)]
struct Linear {
    weight: Weight,
    bias: Tensor,
}

#[derive(Debug)]
struct Norm {
    gamma: Tensor,
    beta: Tensor,
}

#[derive(Debug)]
struct Block {
    ln1: Norm,
    qkv: Linear,
    proj: Linear,
    ln2: Norm,
    fc1: Linear,
    fc2: Linear,
}

/// A decode step captured for a running batch of up to `size` rows: its inputs are written, the
/// plan replayed, the sampled tokens read.
#[derive(Debug)]
struct StepPlan {
    size: usize,
    ids: Tensor,
    cursor: Tensor,
    settings: Tensor,
    tokens: Tensor,
    plan: Plan,
    /// Where each replay copies its token ids, in the replay's own submission.
    readback: wgpu::Buffer,
}

/// A language model's weights laid out for generation, with a key/value cache of
/// [`DecoderOptions::max_sequences`] slots: [`Self::prefill`] runs the fused attention over a
/// prompt and fills its slot; [`Self::decode`] (or the engine's replayed steps) makes the next
/// token's logits for many sequences of different lengths at once.
#[derive(Debug)]
pub struct Decoder {
    gpu: Gpu,
    config: GptConfig,
    precision: Precision,
    token: Tensor,
    position: Tensor,
    blocks: Vec<Block>,
    ln_f: Norm,
    head: Linear,
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    slots: usize,
    /// Rows one step takes: a token per slot and the prefill chunk.
    max_rows: usize,
    weight_bytes: usize,
    plans: Vec<StepPlan>,
}

fn invalid(op: &'static str, details: String) -> Error {
    Error::InvalidArgument { op, details }
}

impl Decoder {
    /// The decoder of `model`'s current weights (f32 matrices share the model's memory; f16 and
    /// int8 ones are copies) with an empty cache. The cache's size is checked against the
    /// adapter before anything is made.
    pub fn new(model: &LanguageModel, options: DecoderOptions) -> Result<Self> {
        const OP: &str = "Decoder::new";
        let config = *model.config();
        if options.max_sequences == 0 || options.max_sequences > DecoderOptions::MAX_SEQUENCES {
            return Err(invalid(
                OP,
                format!(
                    "max_sequences must be in 1..={}, got {}",
                    DecoderOptions::MAX_SEQUENCES,
                    options.max_sequences
                ),
            ));
        }
        if options.prefill_chunk > DecoderOptions::MAX_PREFILL_CHUNK {
            return Err(invalid(
                OP,
                format!(
                    "prefill_chunk must be at most {}, got {}",
                    DecoderOptions::MAX_PREFILL_CHUNK,
                    options.prefill_chunk
                ),
            ));
        }
        if config.context > ops::kv_cache::MAX_CACHE_CONTEXT {
            return Err(Error::LimitExceeded {
                what: format!("{OP}: context"),
                requested: config.context as u64,
                limit: ops::kv_cache::MAX_CACHE_CONTEXT as u64,
            });
        }
        let gpu = model.model().gpu().clone();
        // One cache tensor: slots · context · dim elements of f32.
        let cache_elements = (options.max_sequences as u64)
            .saturating_mul(config.context as u64)
            .saturating_mul(config.dim as u64);
        gpu.check_limit(
            &format!("{OP}: elements of one layer's cache (u32 indexing)"),
            cache_elements,
            u64::from(u32::MAX),
        )?;
        gpu.check_limit(
            &format!("{OP}: bytes of one layer's cache (max_storage_buffer_binding_size)"),
            cache_elements.saturating_mul(4),
            gpu.limits().max_storage_buffer_binding_size,
        )?;
        let params = model.model().params().params();
        let expected = 2 + 12 * config.layers + 4;
        if params.len() != expected {
            return Err(invalid(
                OP,
                format!(
                    "{} parameters, a GPT of {config:?} has {expected}",
                    params.len()
                ),
            ));
        }
        let mut next = params.iter();
        let mut weight_bytes = 0usize;
        let mut take = |suffix: &str| -> Result<&crate::nn::Parameter> {
            let p = next
                .next()
                .ok_or_else(|| invalid(OP, "too few parameters".into()))?;
            if !p.name.ends_with(suffix) {
                return Err(invalid(
                    OP,
                    format!("parameter {:?} where a {suffix:?} belongs", p.name),
                ));
            }
            Ok(p)
        };
        let mut dense = |suffix: &str, bytes: &mut usize| -> Result<Tensor> {
            let p = take(suffix)?;
            *bytes += 4 * p.value.numel();
            Ok(p.value.clone())
        };
        let token = dense("token", &mut weight_bytes)?;
        let position = dense("position", &mut weight_bytes)?;
        let mut plain = Vec::new();
        for _ in 0..config.layers {
            for suffix in [
                "weight",
                "bias",
                "qkv.weight",
                "qkv.bias",
                "proj.weight",
                "proj.bias",
                "weight",
                "bias",
                "weight",
                "bias",
                "weight",
                "bias",
            ] {
                plain.push(dense(suffix, &mut weight_bytes)?);
            }
        }
        for suffix in ["weight", "bias", "weight", "bias"] {
            plain.push(dense(suffix, &mut weight_bytes)?);
        }
        // Matrices in the asked precision.
        let linear = |w: &Tensor, b: &Tensor, bytes: &mut usize| -> Result<Linear> {
            let weight = match options.precision {
                Precision::F32 => Weight::Dense(w.clone()),
                p => {
                    let &[n, k] = w.shape() else {
                        return Err(invalid(OP, format!("a matrix of {:?}", w.shape())));
                    };
                    let q = QuantizedWeights::quantize(&gpu, &w.to_vec::<f32>()?, n, k, p)?;
                    *bytes = *bytes - 4 * n * k + q.size_bytes() as usize;
                    Weight::Compact(q)
                }
            };
            Ok(Linear {
                weight,
                bias: b.clone(),
            })
        };
        let norm = |g: &Tensor, b: &Tensor| Norm {
            gamma: g.clone(),
            beta: b.clone(),
        };
        let mut blocks = Vec::with_capacity(config.layers);
        for p in plain.chunks(12).take(config.layers) {
            blocks.push(Block {
                ln1: norm(&p[0], &p[1]),
                qkv: linear(&p[2], &p[3], &mut weight_bytes)?,
                proj: linear(&p[4], &p[5], &mut weight_bytes)?,
                ln2: norm(&p[6], &p[7]),
                fc1: linear(&p[8], &p[9], &mut weight_bytes)?,
                fc2: linear(&p[10], &p[11], &mut weight_bytes)?,
            });
        }
        let tail = &plain[12 * config.layers..];
        let ln_f = norm(&tail[0], &tail[1]);
        let head = linear(&tail[2], &tail[3], &mut weight_bytes)?;
        let shape = [options.max_sequences, config.context, config.dim];
        let mut keys = Vec::with_capacity(config.layers);
        let mut values = Vec::with_capacity(config.layers);
        for _ in 0..config.layers {
            keys.push(Tensor::zeros(&gpu, &shape, DType::F32)?);
            values.push(Tensor::zeros(&gpu, &shape, DType::F32)?);
        }
        Ok(Decoder {
            gpu,
            config,
            precision: options.precision,
            token,
            position,
            blocks,
            ln_f,
            head,
            keys,
            values,
            slots: options.max_sequences,
            max_rows: options.max_sequences + options.prefill_chunk,
            weight_bytes,
            plans: Vec::new(),
        })
    }

    /// The model's architecture.
    pub fn config(&self) -> &GptConfig {
        &self.config
    }
    /// The cache's slots: sequences held at once.
    pub fn slots(&self) -> usize {
        self.slots
    }
    /// Rows one [`Self::step`] or [`Self::decode`] takes at most: a token per slot and
    /// [`DecoderOptions::prefill_chunk`] prompt tokens.
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }
    /// The matrices' storage.
    pub fn precision(&self) -> Precision {
        self.precision
    }
    /// Bytes the weights take on the GPU.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }
    /// The context the decoder runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    fn linear(
        &self,
        batch: &mut Batch,
        x: &Tensor,
        l: &Linear,
        activation: Activation,
    ) -> Result<Tensor> {
        match &l.weight {
            Weight::Dense(w) => ops::matmul(
                batch,
                x,
                w,
                &ops::MatmulOptions {
                    transposes: ops::Transposes { a: false, b: true },
                    bias: Some(&l.bias),
                    activation,
                },
            ),
            Weight::Compact(q) => ops::quantized_linear(batch, x, q, Some(&l.bias), activation),
        }
    }

    fn norm(batch: &mut Batch, x: &Tensor, n: &Norm) -> Result<Tensor> {
        Ok(ops::layer_norm(batch, x, &n.gamma, Some(&n.beta), NormKind::LayerNorm, 1e-5)?.y)
    }

    /// Records the blocks over `ids` at `cursor`, appending each layer's keys and values to the
    /// cache: `prompt` rows are one sequence's positions 0..n (the fused causal attention over
    /// them), other rows one token each of any sequences (the decode attention over the cache).
    /// Returns the last block's output, `[rows, dim]`.
    fn record_hidden(
        &self,
        batch: &mut Batch,
        ids: &Tensor,
        cursor: &Tensor,
        prompt: bool,
    ) -> Result<Tensor> {
        let (n, d) = (cursor.shape()[0], self.config.dim);
        let mut x = ops::embed_at(batch, ids, cursor, &self.token, &self.position)?;
        for (layer, b) in self.blocks.iter().enumerate() {
            let h = Self::norm(batch, &x, &b.ln1)?;
            let qkv = self.linear(batch, &h, &b.qkv, Activation::None)?;
            let (k, v) = (&self.keys[layer], &self.values[layer]);
            ops::cache_append(batch, &qkv, cursor, k, v)?;
            let att = if prompt {
                let options = ops::AttentionOptions {
                    heads: self.config.heads,
                    causal: true,
                    lengths: None,
                    scale: None,
                };
                ops::attention(batch, &qkv.reshape(&[1, n, 3 * d])?, &options)?
                    .out
                    .reshape(&[n, d])?
            } else {
                ops::decode_attention(batch, &qkv, cursor, k, v, self.config.heads)?
            };
            let y = self.linear(batch, &att, &b.proj, Activation::None)?;
            ops::axpy(batch, &y, 1.0, &x)?;
            x = y;
            let h = Self::norm(batch, &x, &b.ln2)?;
            let h = self.linear(batch, &h, &b.fc1, self.config.activation)?;
            let y = self.linear(batch, &h, &b.fc2, Activation::None)?;
            ops::axpy(batch, &y, 1.0, &x)?;
            x = y;
        }
        Ok(x)
    }

    fn record_logits(&self, batch: &mut Batch, hidden: &Tensor) -> Result<Tensor> {
        let h = Self::norm(batch, hidden, &self.ln_f)?;
        self.linear(batch, &h, &self.head, Activation::None)
    }

    fn check_slot(&self, op: &'static str, slot: usize) -> Result<()> {
        if slot >= self.slots {
            return Err(invalid(
                op,
                format!("slot {slot} is past the cache's {} slots", self.slots),
            ));
        }
        Ok(())
    }

    fn check_prompt(&self, op: &'static str, slot: usize, prompt: &[u32]) -> Result<()> {
        self.check_slot(op, slot)?;
        if prompt.is_empty() {
            return Err(invalid(op, "the prompt needs at least one token".into()));
        }
        if prompt.len() > self.config.context {
            return Err(Error::LimitExceeded {
                what: format!("{op}: prompt tokens (the model's context)"),
                requested: prompt.len() as u64,
                limit: self.config.context as u64,
            });
        }
        ops::check_ids(op, prompt, self.config.vocab)
    }

    /// Records the prefill of `prompt` into `slot` (positions 0..len, overwriting what the slot
    /// held) and returns the logits of its last position (`[1, vocab]`), or of every position
    /// with `every_position`.
    pub fn record_prefill(
        &self,
        batch: &mut Batch,
        slot: usize,
        prompt: &[u32],
        every_position: bool,
    ) -> Result<Tensor> {
        const OP: &str = "Decoder::prefill";
        self.check_prompt(OP, slot, prompt)?;
        let n = prompt.len();
        let cursor: Vec<u32> = (0..n).flat_map(|p| [slot as u32, p as u32]).collect();
        let ids = Tensor::from_slice(&self.gpu, prompt, &[n])?;
        let cursor = Tensor::from_slice(&self.gpu, &cursor, &[n, 2])?;
        let mut hidden = self.record_hidden(batch, &ids, &cursor, true)?;
        if !every_position && n > 1 {
            let last = Tensor::from_slice(&self.gpu, &[n as u32 - 1], &[1])?;
            hidden = ops::gather_rows(batch, &hidden, &last)?;
        }
        self.record_logits(batch, &hidden)
    }

    /// Fills `slot` with `prompt` and returns the logits of every position (`[len, vocab]`,
    /// row-major): one submission and one readback.
    pub fn prefill(&mut self, slot: usize, prompt: &[u32]) -> Result<Vec<f32>> {
        let mut batch = Batch::new(&self.gpu);
        let logits = self.record_prefill(&mut batch, slot, prompt, true)?;
        batch.submit()?;
        logits.to_vec::<f32>()
    }

    fn check_rows(&self, op: &'static str, rows: &[DecodeRow]) -> Result<()> {
        if rows.is_empty() {
            return Err(invalid(op, "no rows to decode".into()));
        }
        if rows.len() > self.max_rows {
            return Err(Error::LimitExceeded {
                what: format!("{op}: rows of one step (slots + prefill_chunk)"),
                requested: rows.len() as u64,
                limit: self.max_rows as u64,
            });
        }
        let mut seen = std::collections::HashSet::with_capacity(rows.len());
        for r in rows {
            self.check_slot(op, r.slot)?;
            if r.position >= self.config.context {
                return Err(Error::LimitExceeded {
                    what: format!("{op}: position (the model's context)"),
                    requested: r.position as u64,
                    limit: self.config.context as u64 - 1,
                });
            }
            if !seen.insert((r.slot, r.position)) {
                return Err(invalid(
                    op,
                    format!("slot {} position {} appears twice", r.slot, r.position),
                ));
            }
        }
        let tokens: Vec<u32> = rows.iter().map(|r| r.token).collect();
        ops::check_ids(op, &tokens, self.config.vocab)
    }

    /// One token for each row (the cache must hold its sequence's positions before
    /// `row.position`, or rows of this call must bring them: a sequence may have several rows at
    /// consecutive positions, a prompt's chunk): appends the tokens' keys and values and returns
    /// the logits after each (`[rows, vocab]`, row-major). One submission and one readback,
    /// nothing captured.
    pub fn decode(&mut self, rows: &[DecodeRow]) -> Result<Vec<f32>> {
        const OP: &str = "Decoder::decode";
        self.check_rows(OP, rows)?;
        let n = rows.len();
        let ids: Vec<u32> = rows.iter().map(|r| r.token).collect();
        let cursor: Vec<u32> = rows
            .iter()
            .flat_map(|r| [r.slot as u32, r.position as u32])
            .collect();
        let ids = Tensor::from_slice(&self.gpu, &ids, &[n])?;
        let cursor = Tensor::from_slice(&self.gpu, &cursor, &[n, 2])?;
        let mut batch = Batch::new(&self.gpu);
        let hidden = self.record_hidden(&mut batch, &ids, &cursor, false)?;
        let logits = self.record_logits(&mut batch, &hidden)?;
        batch.submit()?;
        logits.to_vec::<f32>()
    }

    /// The step sizes captured: powers of two and the midpoints between them (1, 2, 3, 4, 6, 8,
    /// 12, …) below [`Self::max_rows`], and it: a step pads at most a third of its rows.
    pub fn bucket_sizes(&self) -> Vec<usize> {
        let mut sizes: Vec<usize> = (0..usize::BITS - 1)
            .flat_map(|i| [1usize << i, 3usize << i >> 1])
            .filter(|&s| s >= 1)
            .take_while(|&s| s < self.max_rows)
            .collect();
        sizes.dedup();
        sizes.push(self.max_rows);
        sizes
    }

    /// The rows a step of `rows` rows computes: the smallest bucket that holds them (at most
    /// [`Self::max_rows`]).
    pub fn bucket_for(&self, rows: usize) -> usize {
        self.bucket_sizes()
            .into_iter()
            .find(|&s| s >= rows)
            .unwrap_or(self.max_rows)
    }

    /// The captured step for `rows` rows (captured on first use).
    fn plan_for(&mut self, rows: usize) -> Result<usize> {
        let size = self.bucket_for(rows);
        if let Some(i) = self.plans.iter().position(|p| p.size == size) {
            return Ok(i);
        }
        let gpu = self.gpu.clone();
        let ids = Tensor::zeros(&gpu, &[size], DType::U32)?;
        let cursor = Tensor::zeros(&gpu, &[size, 2], DType::U32)?;
        let settings = Tensor::zeros(&gpu, &[size, SamplingSettings::WORDS], DType::U32)?;
        let mut batch = Batch::capture(&gpu);
        let hidden = self.record_hidden(&mut batch, &ids, &cursor, false)?;
        let logits = self.record_logits(&mut batch, &hidden)?;
        let tokens = ops::sample_tokens_with_table(&mut batch, &logits, &settings)?;
        let plan = batch.into_plan()?;
        let readback = gpu.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgnn decode step tokens"),
            size: tokens.size_bytes().next_multiple_of(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.plans.push(StepPlan {
            size,
            ids,
            cursor,
            settings,
            tokens,
            plan,
            readback,
        });
        Ok(self.plans.len() - 1)
    }

    /// The captured step that serves `rows` rows (captured now if it was not): for measuring
    /// its host cost or its dispatches.
    pub fn captured_step(&mut self, rows: usize) -> Result<&Plan> {
        let index = self.plan_for(rows)?;
        Ok(&self.plans[index].plan)
    }

    /// Captures every bucket's step now, so the first steps of a running batch pay no capture.
    pub fn capture_all(&mut self) -> Result<()> {
        for size in self.bucket_sizes() {
            self.plan_for(size)?;
        }
        Ok(())
    }

    /// One decode step for `rows` (as [`Self::decode`] takes them) with each row's next token
    /// sampled on the GPU as `settings` says; only the token ids are read back. Replays the captured step of the smallest bucket that holds the rows; unused rows of
    /// the bucket point outside the cache and change nothing.
    pub fn step(&mut self, rows: &[DecodeRow], settings: &[SamplingSettings]) -> Result<Vec<u32>> {
        self.replay(rows, settings, None)
    }

    fn replay(
        &mut self,
        rows: &[DecodeRow],
        settings: &[SamplingSettings],
        stamps: Option<&mut DispatchStamps>,
    ) -> Result<Vec<u32>> {
        const OP: &str = "Decoder::step";
        self.check_rows(OP, rows)?;
        if settings.len() != rows.len() {
            return Err(Error::ShapeMismatch {
                op: OP,
                details: format!("{} settings for {} rows", settings.len(), rows.len()),
            });
        }
        for (i, s) in settings.iter().enumerate() {
            s.validate(OP, i, self.config.vocab)?;
        }
        let index = self.plan_for(rows.len())?;
        let p = &self.plans[index];
        let mut ids = vec![0u32; p.size];
        let mut cursor = vec![0u32; 2 * p.size];
        let mut table = vec![0u32; SamplingSettings::WORDS * p.size];
        let skip = SamplingSettings::skip().words();
        for i in 0..p.size {
            let (row, words) = match rows.get(i) {
                Some(r) => ((r.token, r.slot, r.position), settings[i].words()),
                // Outside the cache: no append, no attention.
                None => ((0, self.slots, 0), skip),
            };
            ids[i] = row.0;
            cursor[2 * i] = row.1 as u32;
            cursor[2 * i + 1] = row.2 as u32;
            table[SamplingSettings::WORDS * i..SamplingSettings::WORDS * (i + 1)]
                .copy_from_slice(&words);
        }
        p.ids.write(&ids)?;
        p.cursor.write(&cursor)?;
        p.settings.write(&table)?;
        let mut encoder =
            self.gpu
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("wgnn decode step"),
                });
        match stamps {
            Some(stamps) => {
                p.plan.encode_profiled(&mut encoder, stamps);
                stamps.resolve(&mut encoder);
            }
            None => p.plan.encode(&mut encoder),
        }
        // The token ids come back in the same submission: one submit and one wait per step.
        let len = p.readback.size();
        encoder.copy_buffer_to_buffer(
            p.tokens.buffer(),
            p.tokens.offset_bytes(),
            &p.readback,
            0,
            len,
        );
        self.gpu
            .scoped(|| self.gpu.queue().submit([encoder.finish()]))?;
        let slice = p.readback.slice(..);
        self.gpu.map_for_reading(&slice)?;
        let tokens = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::gpu_caused("readback failed", e))?;
            bytemuck::pod_collect_to_vec::<u8, u32>(&view[..4 * rows.len()])
        };
        p.readback.unmap();
        Ok(tokens)
    }

    /// [`Self::step`] with each dispatch of the replay timed on the GPU (needs timestamp
    /// queries): where a step's time goes.
    pub fn profile_step(
        &mut self,
        rows: &[DecodeRow],
        settings: &[SamplingSettings],
    ) -> Result<DispatchProfile> {
        let mut stamps = DispatchStamps::new(&self.gpu, "Decoder::profile_step")?;
        self.replay(rows, settings, Some(&mut stamps))?;
        stamps.read(&self.gpu)
    }

    /// Fills each `(slot, prompt)` in one submission and samples each prompt's next token on the
    /// GPU with its settings: the first generated tokens.
    pub fn prefill_and_sample(
        &mut self,
        prompts: &[(usize, &[u32])],
        settings: &[SamplingSettings],
    ) -> Result<Vec<u32>> {
        const OP: &str = "Decoder::prefill_and_sample";
        if prompts.len() != settings.len() {
            return Err(Error::ShapeMismatch {
                op: OP,
                details: format!("{} settings for {} prompts", settings.len(), prompts.len()),
            });
        }
        let mut batch = Batch::new(&self.gpu);
        let mut tokens = Vec::with_capacity(prompts.len());
        for (&(slot, prompt), s) in prompts.iter().zip(settings) {
            let logits = self.record_prefill(&mut batch, slot, prompt, false)?;
            tokens.push(ops::sample_tokens(&mut batch, &logits, &[*s])?);
        }
        batch.submit()?;
        // Every prompt's token in one copy and one wait.
        Tensor::read_all(&self.gpu, &tokens)
    }
}

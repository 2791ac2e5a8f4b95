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
use crate::nn::{LanguageModel, Model, Sampling};
use crate::ops::{self, SamplingSettings};
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

/// A model lowered for generation, with a key/value cache of [`DecoderOptions::max_sequences`]
/// slots: the model's own graph (made anew from its layers' configurations, reading the same f32
/// weights), each layer run through [`crate::nn::Layer::decode`] (attention appends to its cache
/// and attends over it; the rest replays its forward on the step's rows). [`Self::prefill`] runs
/// a prompt and fills its slot; [`Self::decode`] (or the engine's replayed steps) makes the next
/// token's logits for many sequences of different lengths at once.
///
/// The model must take one input of token ids `[context]` and give `[context, vocab]` logits
/// (a [`LanguageModel`], or any graph of that shape: `tests/generate.rs` decodes one with a block
/// defined outside the crate).
#[derive(Debug)]
pub struct Decoder {
    gpu: Gpu,
    model: Model,
    /// Token ids the model reads: below it.
    token_ids: usize,
    /// Logits per token.
    vocab: usize,
    context: usize,
    precision: Precision,
    /// Each layer's cache tensors ([`crate::nn::Layer::decode_cache`]).
    caches: Vec<Vec<Tensor>>,
    slots: usize,
    /// Rows one step takes: a token per slot and the prefill chunk.
    max_rows: usize,
    weight_bytes: usize,
    plans: Vec<StepPlan>,
}

fn invalid(op: &'static str, details: String) -> Error {
    Error::InvalidArgument { op, details }
}

impl DecoderOptions {
    fn check(&self) -> Result<()> {
        const OP: &str = "Decoder::new";
        if self.max_sequences == 0 || self.max_sequences > Self::MAX_SEQUENCES {
            return Err(invalid(
                OP,
                format!(
                    "max_sequences must be in 1..={}, got {}",
                    Self::MAX_SEQUENCES,
                    self.max_sequences
                ),
            ));
        }
        if self.prefill_chunk > Self::MAX_PREFILL_CHUNK {
            return Err(invalid(
                OP,
                format!(
                    "prefill_chunk must be at most {}, got {}",
                    Self::MAX_PREFILL_CHUNK,
                    self.prefill_chunk
                ),
            ));
        }
        Ok(())
    }
}

/// The (ids vocabulary, context, logits per token) of a model a decoder can lower: one input of
/// token ids `[context]`, output `[batch, context, vocab]`.
fn decodable(model: &Model) -> Result<(usize, usize, usize)> {
    const OP: &str = "Decoder::new";
    let input = match model.inputs() {
        [input] => input,
        inputs => {
            return Err(invalid(
                OP,
                format!(
                    "a decoded model has one input of token ids, not {}",
                    inputs.len()
                ),
            ))
        }
    };
    let (Some(token_ids), &[context]) = (input.vocab, &input.shape[..]) else {
        return Err(invalid(
            OP,
            format!(
                "a decoded model's input is token ids [context] (ModelBuilder::input_ids), got \
                 {:?}",
                input
            ),
        ));
    };
    let out = model.output_shape(1)?;
    let &[1, t, vocab] = &out[..] else {
        return Err(invalid(
            OP,
            format!("logits [batch, {context}, vocab], got {out:?}"),
        ));
    };
    if t != context {
        return Err(invalid(
            OP,
            format!("logits [batch, {context}, vocab], got {out:?}"),
        ));
    }
    if context > ops::kv_cache::MAX_CACHE_CONTEXT {
        return Err(Error::LimitExceeded {
            what: format!("{OP}: context"),
            requested: context as u64,
            limit: ops::kv_cache::MAX_CACHE_CONTEXT as u64,
        });
    }
    Ok((token_ids, context, vocab))
}

/// Makes each layer's cache tensors (zeros), each checked against the adapter first.
fn make_caches(gpu: &Gpu, shapes: Vec<Vec<Vec<usize>>>) -> Result<Vec<Vec<Tensor>>> {
    const OP: &str = "Decoder::new";
    for shape in shapes.iter().flatten() {
        let elements = shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .unwrap_or(u64::MAX);
        gpu.check_limit(
            &format!("{OP}: elements of a layer's cache {shape:?} (u32 indexing)"),
            elements,
            u64::from(u32::MAX),
        )?;
        gpu.check_limit(
            &format!("{OP}: bytes of a layer's cache {shape:?} (max_storage_buffer_binding_size)"),
            elements.saturating_mul(4),
            gpu.limits().max_storage_buffer_binding_size,
        )?;
    }
    shapes
        .into_iter()
        .map(|layer| {
            layer
                .iter()
                .map(|shape| Tensor::zeros(gpu, shape, DType::F32))
                .collect()
        })
        .collect()
}

impl Decoder {
    /// The decoder of `model`'s current weights (f32 ones shared with the model; f16 and int8
    /// ones are copies) with an empty cache. The caches' sizes are checked against the adapter
    /// before anything is made. Every layer must give its configuration
    /// ([`crate::nn::Layer::config`]) and its kind be registered: the decoder makes its own.
    pub fn new<M: AsRef<Model> + ?Sized>(model: &M, options: DecoderOptions) -> Result<Self> {
        options.check()?;
        let source = model.as_ref();
        let (token_ids, context, vocab) = decodable(source)?;
        let gpu = source.gpu().clone();
        let shapes = source.decode_caches(options.max_sequences, context);
        // The caches are checked before the copy of the graph or any weight is made.
        let caches = make_caches(&gpu, shapes)?;
        let mut model = source.duplicate()?;
        // The copy only decodes: every activation its epilogues can take joins them.
        model.fuse_for_inference();
        let weight_bytes = match options.precision {
            Precision::F32 => {
                4 * model
                    .params()
                    .params()
                    .iter()
                    .map(|p| p.value.numel())
                    .sum::<usize>()
            }
            p => model.quantize_weights(p)?,
        };
        Ok(Decoder {
            gpu,
            model,
            token_ids,
            vocab,
            context,
            precision: options.precision,
            caches,
            slots: options.max_sequences,
            max_rows: options.max_sequences + options.prefill_chunk,
            weight_bytes,
            plans: Vec::new(),
        })
    }

    /// The longest sequence: the model's context.
    pub fn context(&self) -> usize {
        self.context
    }
    /// Logits per token: the tokens sampling draws from.
    pub fn vocab(&self) -> usize {
        self.vocab
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

    /// Records the model over `ids` at `cursor`, appending each layer's keys and values to its
    /// cache: `prompt` rows are one sequence's positions 0..n, other rows one token each of any
    /// sequences. Returns the logits, `[rows, vocab]`.
    fn record(
        &mut self,
        batch: &mut Batch,
        ids: &Tensor,
        cursor: &Tensor,
        prompt: bool,
    ) -> Result<Tensor> {
        self.model.decode(batch, ids, cursor, prompt, &self.caches)
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
        if prompt.len() > self.context {
            return Err(Error::LimitExceeded {
                what: format!("{op}: prompt tokens (the model's context)"),
                requested: prompt.len() as u64,
                limit: self.context as u64,
            });
        }
        ops::check_ids(op, prompt, self.token_ids)
    }

    /// Records the prefill of `prompt` into `slot` (positions 0..len, overwriting what the slot
    /// held) and returns the logits of its last position (`[1, vocab]`), or of every position
    /// with `every_position`.
    pub fn record_prefill(
        &mut self,
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
        let logits = self.record(batch, &ids, &cursor, true)?;
        if every_position || n == 1 {
            return Ok(logits);
        }
        let last = Tensor::from_slice(&self.gpu, &[n as u32 - 1], &[1])?;
        ops::gather_rows(batch, &logits, &last)
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
            if r.position >= self.context {
                return Err(Error::LimitExceeded {
                    what: format!("{op}: position (the model's context)"),
                    requested: r.position as u64,
                    limit: self.context as u64 - 1,
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
        ops::check_ids(op, &tokens, self.token_ids)
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
        let logits = self.record(&mut batch, &ids, &cursor, false)?;
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
        let logits = self.record(&mut batch, &ids, &cursor, false)?;
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
            s.validate(OP, i, self.vocab)?;
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

impl LanguageModel {
    /// `prompt` followed by `new_tokens` generated ones, through a [`crate::generate::Decoder`]:
    /// the prompt fills a key/value cache, then each token is one decode step, sampled on the
    /// GPU. Past the context, each token runs the forward over the last `context` tokens.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        new_tokens: usize,
        sampling: Sampling,
    ) -> Result<Vec<u32>> {
        const OP: &str = "LanguageModel::generate";
        if prompt.is_empty() {
            return Err(Error::InvalidArgument {
                op: OP,
                details: "the prompt needs at least one token".into(),
            });
        }
        ops::check_ids(OP, prompt, self.config().vocab)?;
        let vocab = self.config().vocab;
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
        let context = self.config().context;
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
}

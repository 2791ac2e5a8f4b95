//! A Llama-architecture language model from a GGUF file on the GPU, its matrices kept in the
//! file's quantized blocks ([`GgufWeights`]: SmolLM2-135M's take 103 MB instead of 540 MB of
//! f32), with a key/value cache of a few sequence slots that holds only the key/value heads.
//!
//! A step runs rows of tokens, each at its slot's next position: a prompt's rows at once
//! ([`Llama::prefill`]) or one token of each of several sequences ([`Llama::decode`]). Per block:
//! RMSNorm, q, k and v products written side by side into one qkv row, rotary embeddings
//! (adjacent pairs, the pairing GGUF's permuted Q and K expect), the keys and values appended to
//! the cache, grouped-query attention over each row's slot, the output product added to the
//! residual, RMSNorm, gate and up products side by side, SwiGLU, the down product added. The
//! head is the embedding table itself where the file ties them.
//!
//! Checked against [`crate::reference::llama::LlamaReference`] (an independent CPU forward in
//! f64) in `tests/llama.rs`.

use crate::batch::Batch;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::gguf::GgufFile;
use crate::ops::{self, GgufWeights, NormKind, Rotary, SamplingSettings};
use crate::tensor::Tensor;

/// The architecture's numbers, from a GGUF file's `llama.*` metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Tokens.
    pub vocab: usize,
    /// The residual width.
    pub dim: usize,
    /// The MLP's hidden width.
    pub hidden: usize,
    /// Blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (`heads` is a multiple of it).
    pub kv_heads: usize,
    /// Dimensions rotated in each head (the first `rope_dims` of `dim / heads`).
    pub rope_dims: usize,
    /// The rotary base.
    pub rope_base: f64,
    /// RMSNorm's epsilon.
    pub eps: f64,
    /// The longest sequence.
    pub context: usize,
}

fn bad(details: String) -> Error {
    Error::ModelFile {
        details: format!("llama GGUF: {details}"),
    }
}

impl LlamaConfig {
    /// The configuration in `file`'s metadata, checked (an architecture other than `llama`, a
    /// missing key, or numbers that do not fit together are refused).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let arch = file.str("general.architecture")?;
        if arch != "llama" {
            return Err(bad(format!("architecture {arch:?}, not \"llama\"")));
        }
        let count = |key: &str, max: u64| -> Result<usize> {
            let v = file.u64(key)?;
            if v == 0 || v > max {
                return Err(bad(format!("{key} is {v}, not in 1..={max}")));
            }
            Ok(v as usize)
        };
        let dim = count("llama.embedding_length", 1 << 16)?;
        let heads = count("llama.attention.head_count", 1 << 10)?;
        let kv_heads = count("llama.attention.head_count_kv", 1 << 10)?;
        let vocab = match file.u64("llama.vocab_size") {
            Ok(_) => count("llama.vocab_size", 1 << 20)?,
            // Older files: the vocabulary's length.
            Err(_) => file
                .value("tokenizer.ggml.tokens")?
                .as_array()
                .map(|a| a.len())
                .ok_or_else(|| bad("tokenizer.ggml.tokens is not an array".into()))?,
        };
        let config = LlamaConfig {
            vocab,
            dim,
            hidden: count("llama.feed_forward_length", 1 << 18)?,
            layers: count("llama.block_count", 1 << 10)?,
            heads,
            kv_heads,
            rope_dims: match file.u64("llama.rope.dimension_count") {
                Ok(_) => count("llama.rope.dimension_count", 1 << 12)?,
                Err(_) => dim / heads,
            },
            rope_base: file.f64("llama.rope.freq_base").unwrap_or(10_000.0),
            eps: file.f64("llama.attention.layer_norm_rms_epsilon")?,
            context: count("llama.context_length", 1 << 20)?,
        };
        let head_dim = dim / heads;
        if !dim.is_multiple_of(heads)
            || !heads.is_multiple_of(kv_heads)
            || config.rope_dims > head_dim
            || !config.rope_dims.is_multiple_of(2)
        {
            return Err(bad(format!(
                "{dim} wide, {heads} heads, {kv_heads} key/value heads, {} rotary dimensions do not fit together",
                config.rope_dims
            )));
        }
        if !(config.rope_base > 1.0 && config.eps > 0.0 && config.eps < 1.0) {
            return Err(bad(format!(
                "rope base {} must be above 1 and RMS epsilon {} in (0, 1)",
                config.rope_base, config.eps
            )));
        }
        Ok(config)
    }

    /// Each head's width.
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }

    /// The width of the key/value heads together.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim()
    }
}

/// How a [`Llama`] is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlamaOptions {
    /// Sequences the cache holds at once: 1 to [`LlamaOptions::MAX_SEQUENCES`].
    pub max_sequences: usize,
    /// Positions each slot holds: 1 to the model's context (and to
    /// [`ops::kv_cache::MAX_CACHE_CONTEXT`]). The cache takes
    /// `2 · layers · max_sequences · context · kv_dim · 4` bytes.
    pub context: usize,
}

impl LlamaOptions {
    /// The most slots: 256.
    pub const MAX_SEQUENCES: usize = 256;
}

impl Default for LlamaOptions {
    fn default() -> Self {
        LlamaOptions {
            max_sequences: 4,
            context: 2048,
        }
    }
}

#[derive(Debug)]
struct Block {
    attn_norm: Tensor,
    q: GgufWeights,
    k: GgufWeights,
    v: GgufWeights,
    o: GgufWeights,
    ffn_norm: Tensor,
    gate: GgufWeights,
    up: GgufWeights,
    down: GgufWeights,
    k_cache: Tensor,
    v_cache: Tensor,
}

/// A Llama model on the GPU in its GGUF blocks, with a key/value cache (see the module's
/// documentation).
#[derive(Debug)]
pub struct Llama {
    gpu: Gpu,
    config: LlamaConfig,
    embedding: GgufWeights,
    /// `None`: tied to the embedding.
    output: Option<GgufWeights>,
    output_norm: Tensor,
    blocks: Vec<Block>,
    slots: usize,
    context: usize,
    /// Each slot's length: positions its cache holds.
    lengths: Vec<usize>,
}

fn invalid(op: &'static str, details: String) -> Error {
    Error::InvalidArgument { op, details }
}

/// A matrix `rows × cols` (GGUF dimensions `[cols, rows]`) uploaded in its blocks.
fn matrix(gpu: &Gpu, file: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<GgufWeights> {
    let info = file.tensor(name)?;
    if info.dims != [cols as u64, rows as u64] {
        return Err(bad(format!(
            "{name} has dimensions {:?}, the configuration needs [{cols}, {rows}]",
            info.dims
        )));
    }
    GgufWeights::new(gpu, info.ggml_type, file.tensor_bytes(name)?, rows, cols)
        .map_err(|e| bad(format!("{name}: {e}")))
}

fn vector(gpu: &Gpu, file: &GgufFile, name: &str, len: usize) -> Result<Tensor> {
    let info = file.tensor(name)?;
    if info.dims != [len as u64] {
        return Err(bad(format!(
            "{name} has dimensions {:?}, the configuration needs [{len}]",
            info.dims
        )));
    }
    Tensor::from_slice(gpu, &file.tensor_f32(name)?, &[len])
}

impl Llama {
    /// The model in `file` on `gpu`, with an empty cache of `options`' slots. The cache's size is
    /// checked against the adapter before anything is uploaded.
    pub fn from_gguf(gpu: &Gpu, file: &GgufFile, options: LlamaOptions) -> Result<Self> {
        const OP: &str = "Llama::from_gguf";
        let c = LlamaConfig::from_gguf(file)?;
        if options.max_sequences == 0 || options.max_sequences > LlamaOptions::MAX_SEQUENCES {
            return Err(invalid(
                OP,
                format!(
                    "max_sequences must be in 1..={}, got {}",
                    LlamaOptions::MAX_SEQUENCES,
                    options.max_sequences
                ),
            ));
        }
        let most = c.context.min(ops::kv_cache::MAX_CACHE_CONTEXT);
        if options.context == 0 || options.context > most {
            return Err(Error::LimitExceeded {
                what: format!("{OP}: cache positions per sequence (the model's context)"),
                requested: options.context as u64,
                limit: most as u64,
            });
        }
        let cache_elements = (options.max_sequences as u64)
            .saturating_mul(options.context as u64)
            .saturating_mul(c.kv_dim() as u64);
        gpu.check_limit(
            &format!("{OP}: elements of a layer's key cache (u32 indexing)"),
            cache_elements,
            u64::from(u32::MAX),
        )?;
        gpu.check_limit(
            &format!("{OP}: bytes of a layer's key cache (max_storage_buffer_binding_size)"),
            cache_elements.saturating_mul(4),
            gpu.limits().max_storage_buffer_binding_size,
        )?;
        let cache_shape = [options.max_sequences, options.context, c.kv_dim()];
        let blocks = (0..c.layers)
            .map(|i| {
                let m = |name: &str, rows, cols| {
                    matrix(gpu, file, &format!("blk.{i}.{name}.weight"), rows, cols)
                };
                Ok(Block {
                    attn_norm: vector(gpu, file, &format!("blk.{i}.attn_norm.weight"), c.dim)?,
                    q: m("attn_q", c.dim, c.dim)?,
                    k: m("attn_k", c.kv_dim(), c.dim)?,
                    v: m("attn_v", c.kv_dim(), c.dim)?,
                    o: m("attn_output", c.dim, c.dim)?,
                    ffn_norm: vector(gpu, file, &format!("blk.{i}.ffn_norm.weight"), c.dim)?,
                    gate: m("ffn_gate", c.hidden, c.dim)?,
                    up: m("ffn_up", c.hidden, c.dim)?,
                    down: m("ffn_down", c.dim, c.hidden)?,
                    k_cache: Tensor::zeros(gpu, &cache_shape, DType::F32)?,
                    v_cache: Tensor::zeros(gpu, &cache_shape, DType::F32)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output = match file.tensor("output.weight") {
            Ok(_) => Some(matrix(gpu, file, "output.weight", c.vocab, c.dim)?),
            Err(_) => None,
        };
        Ok(Llama {
            gpu: gpu.clone(),
            embedding: matrix(gpu, file, "token_embd.weight", c.vocab, c.dim)?,
            output_norm: vector(gpu, file, "output_norm.weight", c.dim)?,
            output,
            blocks,
            slots: options.max_sequences,
            context: options.context,
            lengths: vec![0; options.max_sequences],
            config: c,
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }
    /// The context it runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }
    /// Sequences the cache holds at once.
    pub fn slots(&self) -> usize {
        self.slots
    }
    /// Positions each slot holds.
    pub fn context(&self) -> usize {
        self.context
    }
    /// Positions `slot` holds now (0 past the slots).
    pub fn length(&self, slot: usize) -> usize {
        self.lengths.get(slot).copied().unwrap_or(0)
    }

    /// Bytes the weights take on the GPU (blocks and norms).
    pub fn weight_bytes(&self) -> u64 {
        let mut all: Vec<&GgufWeights> = vec![&self.embedding];
        all.extend(&self.output);
        let mut bytes = self.output_norm.size_bytes();
        for b in &self.blocks {
            all.extend([&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down]);
            bytes += b.attn_norm.size_bytes() + b.ffn_norm.size_bytes();
        }
        bytes + all.iter().map(|w| w.size_bytes()).sum::<u64>()
    }

    fn rotary(&self) -> Rotary {
        Rotary {
            heads: self.config.heads,
            kv_heads: self.config.kv_heads,
            head_dim: self.config.head_dim(),
            rope_dims: self.config.rope_dims,
            base: self.config.rope_base as f32,
        }
    }

    /// Records the model over `ids` (U32 `[rows]`) at `cursor` (U32 `[rows, 2]`: slot,
    /// position), appending each row's keys and values to its slot; each row attends to its
    /// slot's positions up to its own. Returns the final hidden rows (after the output norm),
    /// `[rows, dim]`.
    pub fn record_hidden(
        &self,
        batch: &mut Batch,
        ids: &Tensor,
        cursor: &Tensor,
    ) -> Result<Tensor> {
        let c = &self.config;
        let eps = c.eps as f32;
        let rows = ids.numel();
        let rotary = self.rotary();
        let x = ops::gguf_gather(batch, &self.embedding, ids)?;
        for b in &self.blocks {
            let h = ops::layer_norm(batch, &x, &b.attn_norm, None, NormKind::RmsNorm, eps)?.y;
            let qkv = Tensor::uninit(&self.gpu, &[rows, rotary.row_width()], DType::F32)?;
            ops::gguf_matmul_into(batch, &h, &b.q, &qkv, 0)?;
            ops::gguf_matmul_into(batch, &h, &b.k, &qkv, c.dim)?;
            ops::gguf_matmul_into(batch, &h, &b.v, &qkv, c.dim + c.kv_dim())?;
            ops::rope(batch, &qkv, cursor, &rotary, false)?;
            ops::cache_append(batch, &qkv, cursor, &b.k_cache, &b.v_cache)?;
            let mixed =
                ops::decode_attention(batch, &qkv, cursor, &b.k_cache, &b.v_cache, c.heads)?;
            let o = ops::gguf_matmul(batch, &mixed, &b.o)?;
            ops::axpy(batch, &x, 1.0, &o)?;
            let h = ops::layer_norm(batch, &x, &b.ffn_norm, None, NormKind::RmsNorm, eps)?.y;
            let gate_up = Tensor::uninit(&self.gpu, &[rows, 2 * c.hidden], DType::F32)?;
            ops::gguf_matmul_into(batch, &h, &b.gate, &gate_up, 0)?;
            ops::gguf_matmul_into(batch, &h, &b.up, &gate_up, c.hidden)?;
            let act = ops::swiglu(batch, &gate_up)?;
            let down = ops::gguf_matmul(batch, &act, &b.down)?;
            ops::axpy(batch, &x, 1.0, &down)?;
        }
        Ok(ops::layer_norm(batch, &x, &self.output_norm, None, NormKind::RmsNorm, eps)?.y)
    }

    /// Records the head over hidden rows: logits `[rows, vocab]`.
    pub fn record_logits(&self, batch: &mut Batch, hidden: &Tensor) -> Result<Tensor> {
        ops::gguf_matmul(
            batch,
            hidden,
            self.output.as_ref().unwrap_or(&self.embedding),
        )
    }

    fn check_tokens(&self, op: &'static str, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(invalid(op, "at least one token".into()));
        }
        ops::check_ids(op, tokens, self.config.vocab)
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

    /// Records `(slot, position, token)` rows and their logits, of the rows `keep` picks (every
    /// row with `None`).
    fn record_rows(
        &self,
        batch: &mut Batch,
        rows: &[(usize, usize, u32)],
        keep: Option<&[u32]>,
    ) -> Result<Tensor> {
        let ids: Vec<u32> = rows.iter().map(|r| r.2).collect();
        let cursor: Vec<u32> = rows
            .iter()
            .flat_map(|&(s, p, _)| [s as u32, p as u32])
            .collect();
        let ids = Tensor::from_slice(&self.gpu, &ids, &[rows.len()])?;
        let cursor = Tensor::from_slice(&self.gpu, &cursor, &[rows.len(), 2])?;
        let mut hidden = self.record_hidden(batch, &ids, &cursor)?;
        if let Some(keep) = keep {
            let index = Tensor::from_slice(&self.gpu, keep, &[keep.len()])?;
            hidden = ops::gather_rows(batch, &hidden, &index)?;
        }
        self.record_logits(batch, &hidden)
    }

    /// Runs the rows; returns the kept rows' logits, or with `sample` their sampled tokens.
    fn run(
        &mut self,
        rows: &[(usize, usize, u32)],
        keep: Option<&[u32]>,
        sample: Option<&[SamplingSettings]>,
    ) -> Result<Output> {
        let mut batch = Batch::new(&self.gpu);
        let logits = self.record_rows(&mut batch, rows, keep)?;
        match sample {
            None => {
                batch.submit()?;
                Ok(Output::Logits(logits.to_vec_f32()?))
            }
            Some(settings) => {
                let tokens = ops::sample_tokens(&mut batch, &logits, settings)?;
                batch.submit()?;
                Ok(Output::Tokens(tokens.to_vec::<u32>()?))
            }
        }
    }

    fn prefill_rows(
        &mut self,
        op: &'static str,
        slot: usize,
        prompt: &[u32],
        every_position: bool,
        sample: Option<&[SamplingSettings]>,
    ) -> Result<Output> {
        self.check_slot(op, slot)?;
        self.check_tokens(op, prompt)?;
        if prompt.len() > self.context {
            return Err(Error::LimitExceeded {
                what: format!("{op}: prompt tokens (the cache's context)"),
                requested: prompt.len() as u64,
                limit: self.context as u64,
            });
        }
        let rows: Vec<(usize, usize, u32)> = prompt
            .iter()
            .enumerate()
            .map(|(p, &t)| (slot, p, t))
            .collect();
        self.lengths[slot] = 0;
        let last = [(prompt.len() - 1) as u32];
        let out = self.run(&rows, (!every_position).then_some(&last[..]), sample)?;
        self.lengths[slot] = prompt.len();
        Ok(out)
    }

    /// Runs `prompt` into `slot` from position 0 (what the slot held is forgotten) and returns
    /// the logits of its last position (`[vocab]`), or of every position (`[len · vocab]`) with
    /// `every_position`.
    pub fn prefill(
        &mut self,
        slot: usize,
        prompt: &[u32],
        every_position: bool,
    ) -> Result<Vec<f32>> {
        self.prefill_rows("Llama::prefill", slot, prompt, every_position, None)
            .map(Output::logits)
    }

    /// [`Self::prefill`], then the next token sampled on the GPU as `settings` says (only the
    /// token is read back).
    pub fn prefill_sample(
        &mut self,
        slot: usize,
        prompt: &[u32],
        settings: SamplingSettings,
    ) -> Result<u32> {
        let out = self.prefill_rows(
            "Llama::prefill_sample",
            slot,
            prompt,
            false,
            Some(&[settings]),
        )?;
        out.tokens()
            .first()
            .copied()
            .ok_or_else(|| invalid("Llama::prefill_sample", "the sampler gave no token".into()))
    }

    fn decode_rows(
        &mut self,
        op: &'static str,
        steps: &[(usize, u32)],
    ) -> Result<Vec<(usize, usize, u32)>> {
        let tokens: Vec<u32> = steps.iter().map(|s| s.1).collect();
        self.check_tokens(op, &tokens)?;
        let mut seen = vec![false; self.slots];
        for &(slot, _) in steps {
            self.check_slot(op, slot)?;
            if std::mem::replace(&mut seen[slot], true) {
                return Err(invalid(
                    op,
                    format!("slot {slot} appears twice in one step"),
                ));
            }
            if self.lengths[slot] == 0 {
                return Err(invalid(
                    op,
                    format!("slot {slot} is empty: prefill it first"),
                ));
            }
            if self.lengths[slot] >= self.context {
                return Err(Error::LimitExceeded {
                    what: format!("{op}: positions of slot {slot} (the cache's context)"),
                    requested: self.lengths[slot] as u64 + 1,
                    limit: self.context as u64,
                });
            }
        }
        Ok(steps
            .iter()
            .map(|&(s, t)| (s, self.lengths[s], t))
            .collect())
    }

    /// Appends one token to each `(slot, token)` sequence (each slot once, holding at least one
    /// position: prefill first) and returns each row's next-token logits, `[rows · vocab]`.
    pub fn decode(&mut self, steps: &[(usize, u32)]) -> Result<Vec<f32>> {
        let rows = self.decode_rows("Llama::decode", steps)?;
        let out = self.run(&rows, None, None)?;
        for &(slot, _) in steps {
            self.lengths[slot] += 1;
        }
        Ok(out.logits())
    }

    /// [`Self::decode`] with each row's next token sampled on the GPU as its `settings` say.
    pub fn decode_sample(
        &mut self,
        steps: &[(usize, u32)],
        settings: &[SamplingSettings],
    ) -> Result<Vec<u32>> {
        const OP: &str = "Llama::decode_sample";
        if settings.len() != steps.len() {
            return Err(invalid(
                OP,
                format!("{} settings for {} rows", settings.len(), steps.len()),
            ));
        }
        let rows = self.decode_rows(OP, steps)?;
        let out = self.run(&rows, None, Some(settings))?;
        for &(slot, _) in steps {
            self.lengths[slot] += 1;
        }
        Ok(out.tokens())
    }
}

enum Output {
    Logits(Vec<f32>),
    Tokens(Vec<u32>),
}

impl Output {
    fn logits(self) -> Vec<f32> {
        match self {
            Output::Logits(l) => l,
            Output::Tokens(_) => Vec::new(),
        }
    }
    fn tokens(self) -> Vec<u32> {
        match self {
            Output::Tokens(t) => t,
            Output::Logits(_) => Vec::new(),
        }
    }
}

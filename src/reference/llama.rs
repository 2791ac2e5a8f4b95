//! A Llama-architecture language model from a GGUF file, on the CPU: every weight dequantized to
//! f32, every sum in f64. The oracle for the GPU path; written from the architecture's definition
//! (RMSNorm, rotary positions, grouped-query causal attention, a SwiGLU MLP, a tied or separate
//! output), not from wgnn's layers.
//!
//! GGUF stores Q and K permuted by llama.cpp's converter so that rotary embeddings rotate adjacent
//! pairs `(x[2i], x[2i+1])` of each head; this forward rotates them so.

use crate::error::{Error, Result};
use crate::nn::gguf::GgufFile;

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
            || heads % kv_heads != 0
            || config.rope_dims > head_dim
            || !config.rope_dims.is_multiple_of(2)
        {
            return Err(bad(format!(
                "{dim} wide, {heads} heads, {kv_heads} key/value heads, {} rotary dimensions do not fit together",
                config.rope_dims
            )));
        }
        if !(config.rope_base > 0.0 && config.eps > 0.0 && config.eps < 1.0) {
            return Err(bad(format!(
                "rope base {} and RMS epsilon {} must be positive (epsilon below 1)",
                config.rope_base, config.eps
            )));
        }
        Ok(config)
    }

    /// Each head's width.
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }
}

/// A weight matrix of `rows × cols`, row-major (GGUF's `[cols, rows]` in its own order).
struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl Matrix {
    fn from_gguf(file: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<Self> {
        let info = file.tensor(name)?;
        if info.dims != [cols as u64, rows as u64] {
            return Err(bad(format!(
                "{name} has dimensions {:?}, the configuration needs [{cols}, {rows}]",
                info.dims
            )));
        }
        Ok(Matrix {
            rows,
            cols,
            data: file.tensor_f32(name)?,
        })
    }

    /// `self · x`, each row's sum in f64.
    fn apply(&self, x: &[f64]) -> Vec<f64> {
        (0..self.rows)
            .map(|r| {
                let row = &self.data[r * self.cols..(r + 1) * self.cols];
                row.iter().zip(x).map(|(&w, &v)| f64::from(w) * v).sum()
            })
            .collect()
    }
}

fn vector(file: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>> {
    let info = file.tensor(name)?;
    if info.dims != [len as u64] {
        return Err(bad(format!(
            "{name} has dimensions {:?}, the configuration needs [{len}]",
            info.dims
        )));
    }
    file.tensor_f32(name)
}

struct Block {
    attn_norm: Vec<f32>,
    q: Matrix,
    k: Matrix,
    v: Matrix,
    o: Matrix,
    ffn_norm: Vec<f32>,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

/// The model on the CPU, dequantized.
pub struct LlamaReference {
    /// Its configuration.
    pub config: LlamaConfig,
    embedding: Matrix,
    blocks: Vec<Block>,
    output_norm: Vec<f32>,
    /// `None`: tied to the embedding.
    output: Option<Matrix>,
}

impl LlamaReference {
    /// The model in `file`, every weight dequantized to f32 (checked against the configuration).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let c = LlamaConfig::from_gguf(file)?;
        let kv_width = c.kv_heads * c.head_dim();
        let blocks = (0..c.layers)
            .map(|i| {
                let m = |name: &str, rows, cols| {
                    Matrix::from_gguf(file, &format!("blk.{i}.{name}.weight"), rows, cols)
                };
                Ok(Block {
                    attn_norm: vector(file, &format!("blk.{i}.attn_norm.weight"), c.dim)?,
                    q: m("attn_q", c.dim, c.dim)?,
                    k: m("attn_k", kv_width, c.dim)?,
                    v: m("attn_v", kv_width, c.dim)?,
                    o: m("attn_output", c.dim, c.dim)?,
                    ffn_norm: vector(file, &format!("blk.{i}.ffn_norm.weight"), c.dim)?,
                    gate: m("ffn_gate", c.hidden, c.dim)?,
                    up: m("ffn_up", c.hidden, c.dim)?,
                    down: m("ffn_down", c.dim, c.hidden)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output = match file.tensor("output.weight") {
            Ok(_) => Some(Matrix::from_gguf(file, "output.weight", c.vocab, c.dim)?),
            Err(_) => None,
        };
        Ok(LlamaReference {
            embedding: Matrix::from_gguf(file, "token_embd.weight", c.vocab, c.dim)?,
            output_norm: vector(file, "output_norm.weight", c.dim)?,
            blocks,
            output,
            config: c,
        })
    }

    fn rms_norm(&self, x: &[f64], weight: &[f32]) -> Vec<f64> {
        let mean = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let scale = 1.0 / (mean + self.config.eps).sqrt();
        x.iter()
            .zip(weight)
            .map(|(&v, &w)| v * scale * f64::from(w))
            .collect()
    }

    /// Rotates adjacent pairs of each head's first `rope_dims` dimensions by `position`.
    fn rope(&self, x: &mut [f64], position: usize) {
        let (head_dim, dims) = (self.config.head_dim(), self.config.rope_dims);
        for head in x.chunks_mut(head_dim) {
            for i in 0..dims / 2 {
                let theta =
                    position as f64 * self.config.rope_base.powf(-2.0 * i as f64 / dims as f64);
                let (sin, cos) = theta.sin_cos();
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * cos - b * sin;
                head[2 * i + 1] = a * sin + b * cos;
            }
        }
    }

    /// The logits at every position of `tokens` (each within the vocabulary; at most the
    /// context), as f32.
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        if tokens.is_empty() || tokens.len() > c.context {
            return Err(Error::InvalidArgument {
                op: "LlamaReference::logits",
                details: format!("1 to {} tokens, got {}", c.context, tokens.len()),
            });
        }
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(Error::InvalidArgument {
                op: "LlamaReference::logits",
                details: format!("token {t} is past the vocabulary of {}", c.vocab),
            });
        }
        let (hd, group) = (c.head_dim(), c.heads / c.kv_heads);
        let mut xs: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| {
                let row = &self.embedding.data[t as usize * c.dim..(t as usize + 1) * c.dim];
                row.iter().map(|&v| f64::from(v)).collect()
            })
            .collect();
        for b in &self.blocks {
            let mut keys = Vec::with_capacity(xs.len());
            let mut values = Vec::with_capacity(xs.len());
            let mut queries = Vec::with_capacity(xs.len());
            for (pos, x) in xs.iter().enumerate() {
                let h = self.rms_norm(x, &b.attn_norm);
                let (mut q, mut k) = (b.q.apply(&h), b.k.apply(&h));
                self.rope(&mut q, pos);
                self.rope(&mut k, pos);
                queries.push(q);
                keys.push(k);
                values.push(b.v.apply(&h));
            }
            let scale = 1.0 / (hd as f64).sqrt();
            for (pos, x) in xs.iter_mut().enumerate() {
                let mut mixed = vec![0f64; c.dim];
                for head in 0..c.heads {
                    let kv = head / group;
                    let q = &queries[pos][head * hd..(head + 1) * hd];
                    let scores: Vec<f64> = (0..=pos)
                        .map(|j| {
                            let k = &keys[j][kv * hd..(kv + 1) * hd];
                            q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() * scale
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    for (j, w) in weights.iter().enumerate() {
                        let v = &values[j][kv * hd..(kv + 1) * hd];
                        for (m, &v) in mixed[head * hd..(head + 1) * hd].iter_mut().zip(v) {
                            *m += w / total * v;
                        }
                    }
                }
                for (x, o) in x.iter_mut().zip(b.o.apply(&mixed)) {
                    *x += o;
                }
                let h = self.rms_norm(x, &b.ffn_norm);
                let (gate, up) = (b.gate.apply(&h), b.up.apply(&h));
                let act: Vec<f64> = gate
                    .iter()
                    .zip(&up)
                    .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                for (x, d) in x.iter_mut().zip(b.down.apply(&act)) {
                    *x += d;
                }
            }
        }
        let head = self.output.as_ref().unwrap_or(&self.embedding);
        Ok(xs
            .iter()
            .map(|x| {
                let h = self.rms_norm(x, &self.output_norm);
                head.apply(&h).into_iter().map(|v| v as f32).collect()
            })
            .collect())
    }
}

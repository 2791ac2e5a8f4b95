//! A Llama-architecture language model from a GGUF file, on the CPU: every weight dequantized to
//! f32, every sum in f64. The oracle for the GPU path; written from the architecture's definition
//! (RMSNorm, rotary positions, grouped-query causal attention, a SwiGLU MLP, a tied or separate
//! output), not from wgnn's layers.
//!
//! GGUF stores Q and K permuted by llama.cpp's converter so that rotary embeddings rotate adjacent
//! pairs `(x[2i], x[2i+1])` of each head; this forward rotates them so.

use crate::error::{Error, Result};
use crate::nn::gguf::GgufFile;

pub use crate::nn::llama::LlamaConfig;

fn bad(details: String) -> Error {
    Error::ModelFile {
        details: format!("llama GGUF: {details}"),
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

/// Rotary embeddings on packed qkv rows (`[rows, (heads + 2 · kv_heads) · head_dim]`), row r at
/// `positions[r]`: adjacent pairs of the first `rope_dims` dimensions of each query and key head
/// turned by `position · base^(-2i / rope_dims)` (back with `inverse`); values stay.
pub fn rope(
    qkv: &[f32],
    positions: &[usize],
    (heads, kv_heads, head_dim, rope_dims): (usize, usize, usize, usize),
    base: f64,
    inverse: bool,
) -> Vec<f32> {
    let width = (heads + 2 * kv_heads) * head_dim;
    let mut out = qkv.to_vec();
    for (r, &position) in positions.iter().enumerate() {
        for head in 0..heads + kv_heads {
            let at = r * width + head * head_dim;
            for i in 0..rope_dims / 2 {
                let theta = position as f64 * base.powf(-2.0 * i as f64 / rope_dims as f64);
                let (mut sin, cos) = theta.sin_cos();
                if inverse {
                    sin = -sin;
                }
                let (a, b) = (f64::from(qkv[at + 2 * i]), f64::from(qkv[at + 2 * i + 1]));
                out[at + 2 * i] = (a * cos - b * sin) as f32;
                out[at + 2 * i + 1] = (a * sin + b * cos) as f32;
            }
        }
    }
    out
}

fn silu(g: f64) -> f64 {
    g / (1.0 + (-g).exp())
}

/// silu(gate) · up from rows of `[gate (hidden), up (hidden)]`.
pub fn swiglu(gate_up: &[f32], hidden: usize) -> Vec<f32> {
    gate_up
        .chunks(2 * hidden)
        .flat_map(|row| {
            (0..hidden).map(|j| (silu(f64::from(row[j])) * f64::from(row[hidden + j])) as f32)
        })
        .collect()
}

/// dL/d(gate, up) of [`swiglu`] from dL/d(out).
pub fn swiglu_backward(gate_up: &[f32], grad_out: &[f32], hidden: usize) -> Vec<f32> {
    let mut grad = vec![0f32; gate_up.len()];
    for (r, row) in gate_up.chunks(2 * hidden).enumerate() {
        for j in 0..hidden {
            let (g, u) = (f64::from(row[j]), f64::from(row[hidden + j]));
            let d = f64::from(grad_out[r * hidden + j]);
            let sig = 1.0 / (1.0 + (-g).exp());
            grad[r * 2 * hidden + j] = (d * u * sig * (1.0 + g * (1.0 - sig))) as f32;
            grad[r * 2 * hidden + hidden + j] = (d * silu(g)) as f32;
        }
    }
    grad
}

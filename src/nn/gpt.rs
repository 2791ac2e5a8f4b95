//! The GPT-2 graph: its pre-norm [`transformer_block`] and [`GptConfig`], the architecture of a
//! [`crate::nn::LanguageModel`], written once with the model API's layers.

use serde::{Deserialize, Serialize};

use super::layers::{ActivationLayer, Add, Linear};
use super::model::{ModelBuilder, Value};
use super::transformer::{Dropout, Embedding, LayerNorm, MultiHeadAttention};
use crate::error::{Error, Result};
use crate::ops::{self, Activation};

/// What a [`transformer_block`] is made of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockConfig {
    /// Width of the residual stream.
    pub dim: usize,
    /// Attention heads.
    pub heads: usize,
    /// The MLP's activation.
    pub activation: Activation,
    /// Dropout on each residual branch in training (0: none).
    pub dropout: f32,
    /// The dropout layers' seed (each layer takes its own from it).
    pub seed: u64,
}

/// A pre-norm transformer block on `x` (`[batch, T, dim]`), as GPT-2's:
/// `x + drop(attn(ln1(x)))`, then `h + drop(mlp(ln2(h)))` with `mlp = Linear(dim, 4·dim) →
/// activation → Linear(4·dim, dim)`. Returns the block's output.
pub fn transformer_block(builder: &mut ModelBuilder, x: Value, config: &BlockConfig) -> Value {
    let BlockConfig {
        dim,
        heads,
        activation,
        dropout,
        seed,
    } = *config;
    let h = builder.add(LayerNorm::new(dim), &[x]);
    let mut h = builder.add(MultiHeadAttention::new(dim, heads), &[h]);
    if dropout > 0.0 {
        h = builder.add(Dropout::new(dropout, seed), &[h]);
    }
    let x = builder.add(Add, &[x, h]);
    let h = builder.add(LayerNorm::new(dim), &[x]);
    let h = builder.add(Linear::new(dim, 4 * dim), &[h]);
    let h = builder.add(ActivationLayer::new(activation), &[h]);
    let mut h = builder.add(Linear::new(4 * dim, dim), &[h]);
    if dropout > 0.0 {
        h = builder.add(Dropout::new(dropout, seed.wrapping_add(1)), &[h]);
    }
    builder.add(Add, &[x, h])
}

/// The architecture of a [`crate::nn::LanguageModel`] (GPT-2's pre-norm decoder). Every size is checked ([`Self::validate`]) before
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
    /// LayerNorm and the output projection to `vocab` logits, for token ids `[batch, context]`;
    /// the dropout layers' seeds come from `seed`.
    pub fn builder(&self, seed: u64) -> Result<(ModelBuilder, Value)> {
        self.validate()?;
        let mut b = ModelBuilder::new();
        let ids = b.input_ids(&[self.context], self.vocab);
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

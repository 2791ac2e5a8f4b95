//! The layer contract: what a layer, built in or defined in another crate, gives a [`Model`] so
//! that it can be initialised, trained (forward and backward recorded into one submission),
//! served through captured plans, pruned and saved.
//!
//! A layer has an explicit backward pass rather than a tape: its training forward saves what its
//! backward needs (in the layer itself), and its backward records the gradient kernels directly.
//! Nothing is recorded twice and nothing is kept that the backward does not read, a layer fuses
//! what it likes (a ReLU into its matmul's epilogue), and the inference forward is the same code
//! with `train` off, captured once into a plan.
//!
//! [`Model`]: crate::nn::Model

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::ops::activation::Activation;
use crate::tensor::Tensor;

/// What a parameter is, which decides how it is initialised, whether magnitude pruning may zero
/// it, and whether compact (int8, f16) storage may hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamRole {
    /// A weight matrix or filter bank `[outputs, ...]`: initialised from its fans (Kaiming or
    /// Xavier), prunable, stored per output row in compact formats.
    Weight {
        /// Inputs each output sums over.
        fan_in: usize,
        /// Outputs each input feeds.
        fan_out: usize,
    },
    /// Added to outputs: starts at zero, never pruned, kept f32.
    Bias,
    /// A multiplicative parameter (a normalization's scale): starts at one, never pruned, kept f32.
    Scale,
}

/// One parameter a layer owns: its name within the layer, shape and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    /// Unique within the layer (`"weight"`); the model's name is `"<node>.<name>"`.
    pub name: String,
    /// Its shape; every side at least 1.
    pub shape: Vec<usize>,
    /// What it is.
    pub role: ParamRole,
}

impl ParamSpec {
    /// A weight of `shape` (`[outputs, inputs, ...]`): fan-in is the product past the first side,
    /// fan-out the product past the second.
    pub fn weight(name: &str, shape: &[usize]) -> Self {
        let numel: usize = shape.iter().product();
        let fan_in = numel / shape.first().copied().unwrap_or(1).max(1);
        let fan_out = numel / shape.get(1).copied().unwrap_or(1).max(1);
        ParamSpec {
            name: name.into(),
            shape: shape.to_vec(),
            role: ParamRole::Weight { fan_in, fan_out },
        }
    }

    /// A bias of `len` elements.
    pub fn bias(name: &str, len: usize) -> Self {
        ParamSpec {
            name: name.into(),
            shape: vec![len],
            role: ParamRole::Bias,
        }
    }

    /// A scale of `len` elements (starts at one).
    pub fn scale(name: &str, len: usize) -> Self {
        ParamSpec {
            name: name.into(),
            shape: vec![len],
            role: ParamRole::Scale,
        }
    }
}

/// What a layer's forward and backward see: the batch they record into, the layer's parameter
/// tensors (in the model's compute dtype) and gradient tensors (views into the model's arenas),
/// and whether this is a training forward.
pub struct Context<'a> {
    /// Where the layer records its dispatches.
    pub batch: &'a mut Batch,
    params: &'a [(Tensor, Tensor)],
    names: &'a [String],
    /// A training forward: save what the backward needs.
    pub train: bool,
}

impl<'a> Context<'a> {
    pub(crate) fn new(
        batch: &'a mut Batch,
        params: &'a [(Tensor, Tensor)],
        names: &'a [String],
        train: bool,
    ) -> Self {
        Context {
            batch,
            params,
            names,
            train,
        }
    }

    fn index(&self, name: &str) -> Result<usize> {
        self.names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| Error::InvalidArgument {
                op: "Context::param",
                details: format!(
                    "the layer declared no parameter {name:?} (it has {:?})",
                    self.names
                ),
            })
    }

    /// The value of the parameter the layer declared as `name` (the f16 copy in mixed precision).
    /// The reference outlives this borrow of the context, so `ctx.batch` stays usable beside it.
    pub fn param(&self, name: &str) -> Result<&'a Tensor> {
        let params: &'a [(Tensor, Tensor)] = self.params;
        Ok(&params[self.index(name)?].0)
    }

    /// The gradient the backward adds into for the parameter `name` (zeroed at the start of each
    /// step; accumulate, do not overwrite: micro-batches add up).
    pub fn grad(&self, name: &str) -> Result<&'a Tensor> {
        let params: &'a [(Tensor, Tensor)] = self.params;
        Ok(&params[self.index(name)?].1)
    }
}

/// A layer of a [`crate::nn::Model`]: built in ([`crate::nn::Linear`], [`crate::nn::Conv2d`], ...)
/// or defined in any crate.
pub trait Layer: std::fmt::Debug + Send + Sync {
    /// The layer's kind, as model files and messages name it (`"Linear"`).
    fn kind(&self) -> &'static str;

    /// The parameters the layer owns, in a fixed order. Called once, when the model is made.
    fn parameters(&self) -> Vec<ParamSpec> {
        Vec::new()
    }

    /// The output shape (batch first) for inputs of `inputs` (batch first each), checking that
    /// they fit the layer; sizes in checked arithmetic. How many inputs it takes is the layer's
    /// to say (one for most, two for [`crate::nn::Add`]).
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>>;

    /// Records the forward pass of `inputs`; with `ctx.train`, saves what [`Self::backward`]
    /// needs.
    fn forward(&mut self, ctx: &mut Context, inputs: &[&Tensor]) -> Result<Tensor>;

    /// Records the backward pass from dL/d(output): adds each parameter's gradient into
    /// `ctx.grad(name)` and returns dL/d(input) for each input where `needs[i]` (`None`
    /// elsewhere). Runs after a training forward.
    fn backward(
        &mut self,
        ctx: &mut Context,
        grad_output: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>>;

    /// Takes `activation`, applied right after this layer and to nothing else, into its own
    /// epilogue; returns whether it did (then the model skips that activation's own dispatch).
    fn fuse(&mut self, _activation: Activation) -> bool {
        false
    }

    /// [`Self::fuse`] for a layer that will only run inference (a decoder's copy): it may take
    /// activations whose backward its epilogue could not give (GELU). The default is
    /// [`Self::fuse`].
    fn fuse_for_inference(&mut self, activation: Activation) -> bool {
        self.fuse(activation)
    }

    /// Stores the layer's weights compactly for inference ([`crate::Precision::Int8`] or `F16`),
    /// given their f32 values in the order of [`Self::parameters`]; returns the bytes its
    /// parameters then take, or `None` where it has no compact form (it stays f32).
    fn compact(
        &mut self,
        _gpu: &crate::gpu::Gpu,
        _precision: crate::dtype::Precision,
        _values: &[&[f32]],
    ) -> Result<Option<usize>> {
        Ok(None)
    }

    /// The layer's configuration, a JSON object (what model files record beside its kind, and
    /// what the factory registered under [`Self::kind`] with [`crate::nn::register_layer`] builds
    /// it from again). `None` (the default): the layer cannot be saved, or lowered into a
    /// [`crate::generate::Decoder`], which makes its own copy of every layer.
    fn config(&self) -> Option<serde_json::Value> {
        None
    }

    /// The elementwise activation this layer applies, if that is all it does: what the model's
    /// fusion pass offers to the layer before it ([`Self::fuse`]).
    fn activation(&self) -> Option<Activation> {
        None
    }

    /// The per-sequence state a decode step keeps for this layer: the shapes of the tensors,
    /// each `[slots, context, ...]`, that a [`crate::generate::Decoder`] allocates and passes back
    /// in every [`DecodeStep::cache`] (attention: its keys and values). None by default.
    fn decode_cache(&self, _slots: usize, _context: usize) -> Vec<Vec<usize>> {
        Vec::new()
    }

    /// Records the layer's forward pass inside a decode step. The rows of the inputs are tokens at
    /// `step.cursor`'s (slot, position) pairs, not whole sequences: `[rows, ...]` where the
    /// forward sees `[batch, T, ...]`. The default runs [`Self::forward`] (with `ctx.train` off),
    /// which is right for every layer that treats rows independently (norms, projections, the
    /// MLP, residual adds); a layer that mixes positions (attention) keeps what later tokens need
    /// in its [`Self::decode_cache`] and overrides this.
    fn decode(
        &mut self,
        ctx: &mut Context,
        inputs: &[&Tensor],
        _step: &DecodeStep,
    ) -> Result<Tensor> {
        self.forward(ctx, inputs)
    }
}

/// What a layer sees in a decode step besides its inputs ([`Layer::decode`]).
#[derive(Debug, Clone, Copy)]
pub struct DecodeStep<'a> {
    /// U32 `[rows, 2]`: each row's (slot, position). A row whose slot is past the cache's slots
    /// is padding: it must change nothing.
    pub cursor: &'a Tensor,
    /// The rows are one prompt's positions 0..rows in one slot (a prefill: attention over them
    /// may use the fused causal kernel); otherwise each row is one token of any sequence.
    pub prompt: bool,
    /// The layer's cache tensors, in the shapes [`Layer::decode_cache`] gave.
    pub cache: &'a [Tensor],
}

/// Checks that a layer got `n` inputs.
pub(crate) fn expect_inputs(kind: &str, inputs: usize, n: usize) -> Result<()> {
    if inputs != n {
        return Err(Error::ShapeMismatch {
            op: "Layer",
            details: format!("{kind} takes {n} input(s), got {inputs}"),
        });
    }
    Ok(())
}

//! Inverted dropout with a counter-based generator: the mask is a pure function of (seed, counter,
//! element index), never stored, so the backward drops exactly the elements the forward dropped and
//! a run is reproducible from its seed on every backend.

use crate::batch::Batch;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::checks::{float_dtype, fold_grid, same_gpu, to_u32};
use crate::shaders::{entry_points, shader_params, KernelSpec, Prelude};
use crate::tensor::Tensor;

shader_params! {
    struct Params {
        n: u32,
        groups_x: u32,
        seed_lo: u32,
        seed_hi: u32,
        counter: u32,
        threshold: u32,
        scale: f32,
        _pad: u32,
    }
}
const _: () = assert!(std::mem::size_of::<Params>() == 32);

entry_points! {
    /// The entry points of `shaders/dropout.wgsl`.
    enum Entry {
        Apply = "apply": Params,
    }
}

/// The contract of `shaders/dropout.wgsl`.
pub(crate) static KERNEL: KernelSpec = KernelSpec {
    name: "dropout",
    wgsl: include_str!("../../shaders/dropout.wgsl"),
    preludes: &[Prelude::Hash],
    subgroup_preludes: None,
    dtypes: &[DType::F32, DType::F16],
    entries: ENTRY_POINTS,
    overrides: &[],
    override_sets: None,
    writes: &[2],
};

/// Which elements one dropout call drops: the probability `p` in [0, 1) and the generator's key.
/// The same key drops the same elements; give each call (each layer, each step) its own counter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutKey {
    /// Probability of dropping an element, in [0, 1).
    pub p: f32,
    /// The run's seed.
    pub seed: u64,
    /// This call's number under the seed.
    pub counter: u32,
}

impl DropoutKey {
    /// The drop threshold on the 32-bit hash and the scale of kept values, checked.
    fn threshold_scale(&self, op: &'static str) -> Result<(u32, f32)> {
        if !(0.0..1.0).contains(&self.p) {
            return Err(Error::InvalidArgument {
                op,
                details: format!("dropout probability must be in [0, 1), got {}", self.p),
            });
        }
        let threshold = (f64::from(self.p) * 4_294_967_296.0).min(f64::from(u32::MAX)) as u32;
        Ok((threshold, 1.0 / (1.0 - self.p)))
    }
}

fn record(batch: &mut Batch, op: &'static str, x: &Tensor, key: &DropoutKey) -> Result<Tensor> {
    same_gpu(op, batch, &[x])?;
    float_dtype(op, x)?;
    let (threshold, scale) = key.threshold_scale(op)?;
    let gpu = batch.gpu().clone();
    let y = Tensor::uninit(&gpu, x.shape(), x.dtype())?;
    let n = x.numel();
    let (grid, groups_x) = fold_grid(&gpu, n.div_ceil(256))?;
    let params = Params {
        n: to_u32(op, "elements", n)?,
        groups_x,
        seed_lo: key.seed as u32,
        seed_hi: (key.seed >> 32) as u32,
        counter: key.counter,
        threshold,
        scale,
        _pad: 0,
    };
    let pipeline = gpu.pipeline(KERNEL.pipeline(Entry::Apply, x.dtype(), Vec::new()))?;
    batch.dispatch(&pipeline, bytemuck::bytes_of(&params), &[x, &y], grid)?;
    Ok(y)
}

/// `x` with each element dropped (zeroed) with probability `key.p` and the rest scaled by
/// 1/(1 − p), into a new tensor.
pub fn dropout(batch: &mut Batch, x: &Tensor, key: &DropoutKey) -> Result<Tensor> {
    record(batch, "dropout", x, key)
}

/// dL/dx of [`dropout`] with the same key: dL/dy through the same mask and scale.
pub fn dropout_backward(batch: &mut Batch, grad_y: &Tensor, key: &DropoutKey) -> Result<Tensor> {
    record(batch, "dropout_backward", grad_y, key)
}

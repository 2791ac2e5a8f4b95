//! Mixed-precision training with dynamic loss scaling, on the GPU (see `shaders/amp.wgsl`): f16
//! copies of f32 master weights, the loss gradient scaled up before the f16 backward pass, the
//! gradients unscaled into f32 with an overflow check, an optimizer update skipped on overflow,
//! and the scale adjusted, as PyTorch's `GradScaler`, without a readback.

use crate::batch::Batch;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::checks::{fold_grid, same_gpu};
use crate::shaders::EntryName;
use crate::shaders::{entry_points, KernelSpec};
use crate::tensor::Tensor;

crate::shaders::shader_params! {
    struct Params {
        n: u32,
        groups_x: u32,
        growth_interval: u32,
        _pad: u32,
    }
}

entry_points! {
    /// The entry points of `shaders/amp.wgsl`.
    enum Entry {
        CastFromF32 = "cast_from_f32": Params,
        ScaleByState = "scale_by_state": Params,
        UnscaleCheck = "unscale_check": Params,
        UpdateScale = "update_scale": Params,
    }
}

/// The contract of `shaders/amp.wgsl`.
pub(crate) static KERNEL: KernelSpec = KernelSpec {
    name: "amp",
    wgsl: include_str!("../../shaders/amp.wgsl"),
    preludes: &[],
    subgroup_preludes: None,
    dtypes: &[DType::F32, DType::F16],
    entries: ENTRY_POINTS,
    overrides: &[],
    override_sets: None,
    writes: &[2, 4, 5, 6],
};

/// The loss scale's state on the GPU: `[scale, good steps, skipped steps, 0]` (f32), and the
/// overflow flag the optimizer reads (U32 `[1]`).
#[derive(Debug, Clone)]
pub struct LossScale {
    /// `[scale, good steps, skipped steps, 0]`.
    pub state: Tensor,
    /// U32 `[2]`: `[0]` is non-zero while the current step's gradients hold an inf or NaN;
    /// `[1]` counts the steps skipped so far (the optimizer numbers the applied steps with it).
    pub found_overflow: Tensor,
    /// Good steps after which the scale doubles.
    pub growth_interval: u32,
}

impl LossScale {
    /// A loss scale starting at `initial` (PyTorch: 65,536), doubling after `growth_interval`
    /// steps without overflow (PyTorch: 2,000) and halving on each overflow.
    pub fn new(gpu: &crate::gpu::Gpu, initial: f32, growth_interval: u32) -> Result<Self> {
        if !(initial.is_finite() && initial >= 1.0) || growth_interval == 0 {
            return Err(Error::InvalidArgument {
                op: "LossScale::new",
                details: format!(
                    "initial scale {initial} must be finite and >= 1, growth interval {growth_interval} positive"
                ),
            });
        }
        Ok(LossScale {
            state: Tensor::from_slice(gpu, &[initial, 0.0, 0.0, 0.0], &[4])?,
            found_overflow: Tensor::zeros(gpu, &[2], DType::U32)?,
            growth_interval,
        })
    }

    /// The current scale and the number of steps skipped for overflow (one readback).
    pub fn read(&self) -> Result<(f32, u32)> {
        let state = self.state.to_vec::<f32>()?;
        Ok((state[0], state[2] as u32))
    }
}

fn record(
    batch: &mut Batch,
    entry: Entry,
    dtype: DType,
    n: usize,
    growth_interval: u32,
    bound: &[(u32, &Tensor)],
) -> Result<()> {
    let tensors: Vec<&Tensor> = bound.iter().map(|(_, t)| *t).collect();
    same_gpu(entry.name(), batch, &tensors)?;
    let (grid, groups_x) = fold_grid(batch.gpu(), n.div_ceil(256))?;
    let params = Params {
        n: n as u32,
        groups_x,
        growth_interval,
        _pad: 0,
    };
    let pipeline = batch
        .gpu()
        .pipeline(KERNEL.pipeline(entry, dtype, vec![]))?;
    let grid = if entry == Entry::UpdateScale {
        [1, 1, 1]
    } else {
        grid
    };
    batch.dispatch_bound(&pipeline, bytemuck::bytes_of(&params), bound, grid)
}

fn same_len(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.numel() != b.numel() {
        return Err(Error::ShapeMismatch {
            op,
            details: format!("{:?} beside {:?}", a.shape(), b.shape()),
        });
    }
    Ok(())
}

/// half = master, rounded to half's dtype (f16): the weights the forward pass reads.
pub fn cast_from_f32(batch: &mut Batch, master: &Tensor, half: &Tensor) -> Result<()> {
    same_len("cast_from_f32", master, half)?;
    master.expect_dtype(DType::F32, "cast_from_f32")?;
    record(
        batch,
        Entry::CastFromF32,
        crate::ops::checks::float_dtype("cast_from_f32", half)?,
        half.numel(),
        0,
        &[(7, master), (2, half)],
    )
}

/// y *= the loss scale (the loss gradient, before the backward pass).
pub fn scale_by_loss_scale(batch: &mut Batch, y: &Tensor, scale: &LossScale) -> Result<()> {
    let dtype = crate::ops::checks::float_dtype("scale_by_loss_scale", y)?;
    record(
        batch,
        Entry::ScaleByState,
        dtype,
        y.numel(),
        0,
        &[(2, y), (3, &scale.state)],
    )
}

/// grad32 = grad / the loss scale, setting the overflow flag if any gradient is inf or NaN.
pub fn unscale_gradients(
    batch: &mut Batch,
    grad: &Tensor,
    grad32: &Tensor,
    scale: &LossScale,
) -> Result<()> {
    same_len("unscale_gradients", grad, grad32)?;
    grad32.expect_dtype(DType::F32, "unscale_gradients")?;
    record(
        batch,
        Entry::UnscaleCheck,
        crate::ops::checks::float_dtype("unscale_gradients", grad)?,
        grad.numel(),
        0,
        &[
            (1, grad),
            (3, &scale.state),
            (4, grad32),
            (5, &scale.found_overflow),
        ],
    )
}

/// Adjusts the scale after a step (halve on overflow, double after enough good steps) and clears
/// the overflow flag. Record it after the optimizer step that reads the flag.
pub fn update_loss_scale(batch: &mut Batch, scale: &LossScale) -> Result<()> {
    record(
        batch,
        Entry::UpdateScale,
        DType::F32,
        1,
        scale.growth_interval,
        &[(5, &scale.found_overflow), (6, &scale.state)],
    )
}

//! LayerNorm and RMSNorm over the last axis, fused, with gradients for the input, the scale and the
//! shift. The statistics (mean, 1/σ per row, f32) come out of the forward for the backward.

use crate::batch::Batch;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::checks::{distinct_output, float_dtype, fold_grid, same_dtype, same_gpu, to_u32};
use crate::shaders::{entry_points, shader_params, KernelSpec, Override};
use crate::tensor::Tensor;

/// The longest row the kernels take (one thread walks a row three times, under the software
/// drivers' 65,535-iteration cap).
pub const MAX_NORM_COLS: usize = 16_384;

/// Rows one thread of the parameter-gradient pass sums (`CHUNK_ROWS` in the shader).
const CHUNK_ROWS: usize = 4096;

shader_params! {
    struct Params {
        rows: u32,
        cols: u32,
        groups_x: u32,
        chunks: u32,
        eps: f32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}
const _: () = assert!(std::mem::size_of::<Params>() == 32);

entry_points! {
    /// The entry points of `shaders/layer_norm.wgsl`.
    enum Entry {
        Forward = "forward": Params,
        BackwardInput = "backward_input": Params,
        ParamPartials = "param_partials": Params,
        ParamSum = "param_sum": Params,
    }
}

/// The contract of `shaders/layer_norm.wgsl`.
pub(crate) static KERNEL: KernelSpec = KernelSpec {
    name: "layer_norm",
    wgsl: include_str!("../../shaders/layer_norm.wgsl"),
    preludes: &[],
    subgroup_preludes: None,
    dtypes: &[DType::F32, DType::F16],
    entries: ENTRY_POINTS,
    overrides: &[
        Override {
            name: "RMS",
            values: &[0, 1],
        },
        Override {
            name: "HAS_SHIFT",
            values: &[0, 1],
        },
    ],
    override_sets: None,
    writes: &[2, 5, 7, 8, 9],
};

/// Which normalization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum NormKind {
    /// (x − mean) / √(var + ε) · γ + β.
    LayerNorm,
    /// x / √(mean(x²) + ε) · γ (no shift).
    RmsNorm,
}

/// A normalization's output and the per-row statistics its backward reads.
#[derive(Debug, Clone)]
pub struct Normalized {
    /// The output, `x`'s shape.
    pub y: Tensor,
    /// (mean, 1/σ) per row, f32 `[rows, 2]` (mean 0 for RMSNorm).
    pub stats: Tensor,
}

/// The gradients of a normalization's scale and shift, added into (accumulated, as layers do).
#[derive(Debug, Clone, Copy)]
pub struct NormGrads<'a> {
    /// dL/dγ, `[cols]`, added into.
    pub gamma: &'a Tensor,
    /// dL/dβ, `[cols]`, added into (LayerNorm with a shift only).
    pub beta: Option<&'a Tensor>,
}

fn rows_cols(op: &'static str, x: &Tensor) -> Result<(usize, usize)> {
    let cols = *x.shape().last().ok_or_else(|| Error::ShapeMismatch {
        op,
        details: "x needs at least one axis".into(),
    })?;
    if cols > MAX_NORM_COLS {
        return Err(Error::LimitExceeded {
            what: format!("{op}: normalized features"),
            requested: cols as u64,
            limit: MAX_NORM_COLS as u64,
        });
    }
    Ok((x.numel() / cols.max(1), cols))
}

fn check_params(
    op: &'static str,
    kind: NormKind,
    cols: usize,
    gamma: &Tensor,
    beta: Option<&Tensor>,
) -> Result<()> {
    if kind == NormKind::RmsNorm && beta.is_some() {
        return Err(Error::InvalidArgument {
            op,
            details: "RMSNorm has no shift".into(),
        });
    }
    for t in std::iter::once(gamma).chain(beta) {
        if t.shape() != [cols] {
            return Err(Error::ShapeMismatch {
                op,
                details: format!("scale and shift must be [{cols}], got {:?}", t.shape()),
            });
        }
    }
    Ok(())
}

fn constants(kind: NormKind, shift: bool) -> Vec<(&'static str, u32)> {
    vec![
        ("RMS", u32::from(kind == NormKind::RmsNorm)),
        ("HAS_SHIFT", u32::from(shift)),
    ]
}

/// LayerNorm (with an optional shift β) or RMSNorm (no shift) of `x` over its last axis, with scale
/// `gamma`; `eps` finite and positive.
pub fn layer_norm(
    batch: &mut Batch,
    x: &Tensor,
    gamma: &Tensor,
    beta: Option<&Tensor>,
    kind: NormKind,
    eps: f32,
) -> Result<Normalized> {
    const OP: &str = "layer_norm";
    let mut all = vec![x, gamma];
    all.extend(beta);
    same_gpu(OP, batch, &all)?;
    same_dtype(OP, &all)?;
    float_dtype(OP, x)?;
    if !(eps.is_finite() && eps > 0.0) {
        return Err(Error::InvalidArgument {
            op: OP,
            details: format!("eps must be finite and positive, got {eps}"),
        });
    }
    let (rows, cols) = rows_cols(OP, x)?;
    check_params(OP, kind, cols, gamma, beta)?;
    let gpu = batch.gpu().clone();
    let y = Tensor::uninit(&gpu, x.shape(), x.dtype())?;
    let stats = Tensor::uninit(&gpu, &[rows, 2], DType::F32)?;
    let (grid, groups_x) = fold_grid(&gpu, rows.div_ceil(64))?;
    let params = Params {
        rows: to_u32(OP, "rows", rows)?,
        cols: cols as u32,
        groups_x,
        chunks: 1,
        eps,
        ..Default::default()
    };
    let pipeline =
        gpu.pipeline(KERNEL.pipeline(Entry::Forward, x.dtype(), constants(kind, beta.is_some())))?;
    // Without a shift the kernel never reads binding 4: gamma stands in.
    batch.dispatch_bound(
        &pipeline,
        bytemuck::bytes_of(&params),
        &[
            (1, x),
            (2, &y),
            (3, gamma),
            (4, beta.unwrap_or(gamma)),
            (5, &stats),
        ],
        grid,
    )?;
    Ok(Normalized { y, stats })
}

/// dL/dx of [`layer_norm`] from its input, statistics and scale, and dL/dy; adds dL/dγ (and dL/dβ)
/// into `grads`.
pub fn layer_norm_backward(
    batch: &mut Batch,
    x: &Tensor,
    stats: &Tensor,
    gamma: &Tensor,
    grad_y: &Tensor,
    kind: NormKind,
    grads: NormGrads,
) -> Result<Tensor> {
    const OP: &str = "layer_norm_backward";
    let mut all = vec![x, gamma, grad_y, grads.gamma];
    all.extend(grads.beta);
    same_gpu(OP, batch, &all)?;
    same_dtype(OP, &all)?;
    float_dtype(OP, x)?;
    let (rows, cols) = rows_cols(OP, x)?;
    check_params(OP, kind, cols, gamma, None)?;
    check_params(OP, kind, cols, grads.gamma, grads.beta)?;
    if grad_y.shape() != x.shape() || stats.shape() != [rows, 2] || stats.dtype() != DType::F32 {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!(
                "grad_y must be {:?} and stats f32 [{rows}, 2], got {:?} and {:?} {:?}",
                x.shape(),
                grad_y.shape(),
                stats.dtype(),
                stats.shape()
            ),
        });
    }
    distinct_output(OP, &[x, gamma, grad_y], grads.gamma)?;
    let gpu = batch.gpu().clone();
    let dx = Tensor::uninit(&gpu, x.shape(), x.dtype())?;
    let chunks = rows.div_ceil(CHUNK_ROWS).max(1);
    let params = |groups_x| Params {
        rows: rows as u32,
        cols: cols as u32,
        groups_x,
        chunks: chunks as u32,
        eps: 1.0,
        ..Default::default()
    };
    let shift = grads.beta.is_some();
    let dtype = x.dtype();
    let (grid, groups_x) = fold_grid(&gpu, rows.div_ceil(64))?;
    let pipeline =
        gpu.pipeline(KERNEL.pipeline(Entry::BackwardInput, dtype, constants(kind, shift)))?;
    batch.dispatch_bound(
        &pipeline,
        bytemuck::bytes_of(&params(groups_x)),
        &[(1, x), (2, &dx), (3, gamma), (5, stats), (6, grad_y)],
        grid,
    )?;
    let partial = Tensor::uninit(&gpu, &[chunks * 2 * cols], DType::F32)?;
    let (grid, groups_x) = fold_grid(&gpu, (chunks * cols).div_ceil(64))?;
    let pipeline =
        gpu.pipeline(KERNEL.pipeline(Entry::ParamPartials, dtype, constants(kind, shift)))?;
    batch.dispatch_bound(
        &pipeline,
        bytemuck::bytes_of(&params(groups_x)),
        &[(1, x), (5, stats), (6, grad_y), (7, &partial)],
        grid,
    )?;
    let (grid, groups_x) = fold_grid(&gpu, cols.div_ceil(64))?;
    let pipeline = gpu.pipeline(KERNEL.pipeline(Entry::ParamSum, dtype, constants(kind, shift)))?;
    // Without a shift the kernel never writes binding 9: a placeholder stands in.
    let placeholder;
    let beta = match grads.beta {
        Some(b) => b,
        None => {
            placeholder = Tensor::uninit(&gpu, &[1], dtype)?;
            &placeholder
        }
    };
    batch.dispatch_bound(
        &pipeline,
        bytemuck::bytes_of(&params(groups_x)),
        &[(7, &partial), (8, grads.gamma), (9, beta)],
        grid,
    )?;
    Ok(dx)
}

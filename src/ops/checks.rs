//! What every op checks before it records, and the grid and window arithmetic they share.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub(crate) fn same_dtype(op: &'static str, tensors: &[&Tensor]) -> Result<DType> {
    let dtype = tensors[0].dtype();
    if let Some(t) = tensors.iter().find(|t| t.dtype() != dtype) {
        return Err(Error::DtypeMismatch {
            op,
            details: format!("{:?} beside {:?}", t.dtype(), dtype),
        });
    }
    Ok(dtype)
}

pub(crate) fn same_gpu(
    op: &'static str,
    batch: &crate::batch::Batch,
    tensors: &[&Tensor],
) -> Result<()> {
    if tensors.iter().any(|t| !t.gpu().same_context(batch.gpu())) {
        return Err(Error::ContextMismatch { op });
    }
    Ok(())
}

/// A grid of `groups` workgroups, folded into y past the per-dimension limit.
/// Returns the grid and the x extent the kernel uses to rebuild the flat index.
pub(crate) fn fold_grid(gpu: &crate::gpu::Gpu, groups: usize) -> Result<([u32; 3], u32)> {
    let max_x = gpu.limits().max_compute_workgroups_per_dimension as usize;
    let x = groups.clamp(1, max_x);
    let y = groups.div_ceil(x);
    let y = u32::try_from(y).map_err(|_| Error::LimitExceeded {
        what: "workgroups".into(),
        requested: groups as u64,
        limit: (max_x as u64) * (max_x as u64),
    })?;
    Ok(([x as u32, y, 1], x as u32))
}

pub(crate) fn same_shape(op: &'static str, tensors: &[&Tensor]) -> Result<()> {
    if let Some(t) = tensors.iter().find(|t| t.shape() != tensors[0].shape()) {
        return Err(Error::ShapeMismatch {
            op,
            details: format!("{:?} beside {:?}", t.shape(), tensors[0].shape()),
        });
    }
    Ok(())
}

/// An output must not share a buffer with an input: the kernel binds one read-only, the other
/// read-write.
pub(crate) fn distinct_output(op: &'static str, inputs: &[&Tensor], out: &Tensor) -> Result<()> {
    if inputs.iter().any(|t| t.shares_buffer_with(out)) {
        return Err(Error::Aliasing {
            op,
            details: "the output must not share a buffer with an input".into(),
        });
    }
    Ok(())
}

pub(crate) fn float_dtype(op: &'static str, t: &Tensor) -> Result<DType> {
    match t.dtype() {
        DType::U32 => Err(Error::DtypeMismatch {
            op,
            details: "expected f32 or f16, found U32".into(),
        }),
        d => Ok(d),
    }
}

/// `x` as a u32 shader parameter, or a typed error: never a silent truncation.
pub(crate) fn to_u32(op: &'static str, what: &str, x: usize) -> Result<u32> {
    u32::try_from(x).map_err(|_| Error::LimitExceeded {
        what: format!("{op}: {what}"),
        requested: x as u64,
        limit: u64::from(u32::MAX),
    })
}

/// The result of checked size arithmetic, or a typed error naming what overflowed.
pub(crate) fn checked(op: &'static str, what: &str, x: Option<usize>) -> Result<usize> {
    x.ok_or_else(|| Error::LimitExceeded {
        what: format!("{op}: {what} overflows"),
        requested: u64::MAX,
        limit: usize::MAX as u64,
    })
}

/// Most taps (kernel height × width) a pooling or convolution window may have: kernels loop over
/// them per thread, and Mesa's software drivers stop an invocation after 65,535 loop iterations.
pub(crate) const MAX_WINDOW_TAPS: usize = 32_768;

/// Largest padded image side the window kernels take: their unsigned index arithmetic (positions
/// plus a stride) stays below 2^32.
pub(crate) const MAX_PADDED_SIDE: usize = 1 << 31;

/// One axis of a sliding window: the padded size and the output size for an input of `size`,
/// `pad` on each side and a window spanning `span`, all checked (overflow, padded size past
/// [`MAX_PADDED_SIDE`], a window larger than the padded input).
pub(crate) fn window_axis(
    op: &'static str,
    axis: &str,
    size: usize,
    pad: usize,
    span: usize,
    stride: usize,
) -> Result<(usize, usize)> {
    let padded = checked(
        op,
        &format!("padded {axis}"),
        pad.checked_mul(2).and_then(|p| p.checked_add(size)),
    )?;
    if padded > MAX_PADDED_SIDE {
        return Err(Error::LimitExceeded {
            what: format!("{op}: padded {axis}"),
            requested: padded as u64,
            limit: MAX_PADDED_SIDE as u64,
        });
    }
    if span > padded {
        return Err(Error::ShapeMismatch {
            op,
            details: format!("the window spans {span} along {axis}, the padded input {padded}"),
        });
    }
    Ok((padded, (padded - span) / stride + 1))
}

/// A stride as the shaders take it: past the padded size every stride gives the same single
/// output position, so it is clamped there (exact, and it fits a u32).
pub(crate) fn shader_stride(stride: usize, padded: usize) -> u32 {
    stride.min(padded) as u32 // padded <= MAX_PADDED_SIDE < 2^32
}

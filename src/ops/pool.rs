//! 2-D max and average pooling over NCHW, forward and backward.
//!
//! Max pooling treats padding as -inf and returns, beside the output, the index `h·W + w` of each
//! window's first maximum within its plane (U32, the output's shape), which its backward needs.
//! Average pooling counts padding as zeros in a window of `kh·kw` (PyTorch's `count_include_pad`).
//! Padding may be at most half the kernel, as in PyTorch, so no window is all padding.

use crate::batch::Batch;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::checks::{
    checked, float_dtype, fold_grid, same_gpu, shader_stride, window_axis, MAX_WINDOW_TAPS,
};
use crate::shaders::{entry_points, KernelSpec};
use crate::tensor::Tensor;

/// Window, stride and padding of a pooling layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2dParams {
    /// Window (height, width).
    pub kernel: (usize, usize),
    /// Step between windows (height, width); PyTorch's default is the kernel size.
    pub stride: (usize, usize),
    /// Padding on each side (height, width), at most half the kernel.
    pub padding: (usize, usize),
}

impl Pool2dParams {
    /// A `k`×`k` window with stride `k` and no padding.
    pub fn square(k: usize) -> Self {
        Pool2dParams {
            kernel: (k, k),
            stride: (k, k),
            padding: (0, 0),
        }
    }
}

crate::shaders::shader_params! {
    struct Params {
        planes: u32,
        height: u32,
        width: u32,
        groups_x: u32,
        out_h: u32,
        out_w: u32,
        kernel_h: u32,
        kernel_w: u32,
        stride_h: u32,
        stride_w: u32,
        pad_h: u32,
        pad_w: u32,
    }
}

entry_points! {
    /// The entry points of `shaders/pool.wgsl`.
    enum Entry {
        MaxForward = "max_forward": Params,
        MaxBackward = "max_backward": Params,
        AvgForward = "avg_forward": Params,
        AvgBackward = "avg_backward": Params,
    }
}

/// The contract of `shaders/pool.wgsl`.
pub(crate) static KERNEL: KernelSpec = KernelSpec {
    name: "pool",
    wgsl: include_str!("../../shaders/pool.wgsl"),
    preludes: &[],
    subgroup_preludes: None,
    dtypes: &[DType::F32, DType::F16],
    entries: ENTRY_POINTS,
    overrides: &[],
    override_sets: None,
    writes: &[2, 3],
};
const _: () = assert!(std::mem::size_of::<Params>() == 48);

/// The output shape for an NCHW `input_shape`.
fn output_shape(op: &'static str, input_shape: &[usize], p: &Pool2dParams) -> Result<PoolGeometry> {
    let &[n, c, h, w] = input_shape else {
        return Err(Error::ShapeMismatch {
            op,
            details: format!("input must be NCHW (rank 4), got {input_shape:?}"),
        });
    };
    let invalid = |details: String| Err(Error::InvalidArgument { op, details });
    if p.kernel.0 == 0 || p.kernel.1 == 0 || p.stride.0 == 0 || p.stride.1 == 0 {
        return invalid(format!(
            "kernel {:?} and stride {:?} must be positive",
            p.kernel, p.stride
        ));
    }
    // The kernel >= 2·padding check, written so that it cannot overflow.
    if p.padding.0 > p.kernel.0 / 2 || p.padding.1 > p.kernel.1 / 2 {
        return invalid(format!(
            "padding {:?} must be at most half the kernel {:?}",
            p.padding, p.kernel
        ));
    }
    let taps = checked(op, "window taps", p.kernel.0.checked_mul(p.kernel.1))?;
    if taps > MAX_WINDOW_TAPS {
        return Err(Error::LimitExceeded {
            what: format!("{op}: window taps (height × width)"),
            requested: taps as u64,
            limit: MAX_WINDOW_TAPS as u64,
        });
    }
    let (ph, oh) = window_axis(op, "height", h, p.padding.0, p.kernel.0, p.stride.0)?;
    let (pw, ow) = window_axis(op, "width", w, p.padding.1, p.kernel.1, p.stride.1)?;
    Ok(PoolGeometry {
        out: [n, c, oh, ow],
        padded: (ph, pw),
    })
}

/// Checked output shape and padded input size of one pooling.
struct PoolGeometry {
    out: [usize; 4],
    padded: (usize, usize),
}

#[allow(clippy::too_many_arguments)]
fn record(
    batch: &mut Batch,
    entry: Entry,
    input_shape: &[usize],
    geometry: &PoolGeometry,
    p: &Pool2dParams,
    src: &Tensor,
    dst: &Tensor,
    indices: Option<&Tensor>,
    threads: usize,
) -> Result<()> {
    let (grid, groups_x) = fold_grid(batch.gpu(), threads.div_ceil(256))?;
    let params = Params {
        planes: (input_shape[0] * input_shape[1]) as u32,
        height: input_shape[2] as u32,
        width: input_shape[3] as u32,
        groups_x,
        // Output dims come from tensor sizes (under 2^32 elements); kernel and padding are at most
        // the padded size, which output_shape() keeps under 2^31.
        out_h: geometry.out[2] as u32,
        out_w: geometry.out[3] as u32,
        kernel_h: p.kernel.0 as u32,
        kernel_w: p.kernel.1 as u32,
        stride_h: shader_stride(p.stride.0, geometry.padded.0),
        stride_w: shader_stride(p.stride.1, geometry.padded.1),
        pad_h: p.padding.0 as u32,
        pad_w: p.padding.1 as u32,
    };
    let pipeline = batch
        .gpu()
        .pipeline(KERNEL.pipeline(entry, src.dtype(), vec![]))?;
    let mut bound = vec![(1, src), (2, dst)];
    if let Some(i) = indices {
        bound.push((3, i));
    }
    batch.dispatch_bound(&pipeline, bytemuck::bytes_of(&params), &bound, grid)
}

/// Max pooling: `(output, indices)`.
pub fn max_pool2d(
    batch: &mut Batch,
    x: &Tensor,
    params: &Pool2dParams,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "max_pool2d";
    same_gpu(OP, batch, &[x])?;
    let dtype = float_dtype(OP, x)?;
    let geometry = output_shape(OP, x.shape(), params)?;
    let out_shape = geometry.out;
    let out = Tensor::uninit(batch.gpu(), &out_shape, dtype)?;
    let indices = Tensor::uninit(batch.gpu(), &out_shape, DType::U32)?;
    let n = out.numel();
    record(
        batch,
        Entry::MaxForward,
        x.shape(),
        &geometry,
        params,
        x,
        &out,
        Some(&indices),
        n,
    )?;
    Ok((out, indices))
}

/// dL/dx of max pooling, from dL/dout and the forward's indices; `input_shape` is the input's.
pub fn max_pool2d_backward(
    batch: &mut Batch,
    grad_out: &Tensor,
    indices: &Tensor,
    input_shape: &[usize],
    params: &Pool2dParams,
) -> Result<Tensor> {
    const OP: &str = "max_pool2d_backward";
    same_gpu(OP, batch, &[grad_out, indices])?;
    let dtype = float_dtype(OP, grad_out)?;
    let geometry = output_shape(OP, input_shape, params)?;
    let out_shape = geometry.out;
    if grad_out.shape() != out_shape
        || indices.shape() != out_shape
        || indices.dtype() != DType::U32
    {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!(
                "grad_out {:?} and U32 indices {:?} must both be {out_shape:?}",
                grad_out.shape(),
                indices.shape()
            ),
        });
    }
    let dx = Tensor::uninit(batch.gpu(), input_shape, dtype)?;
    let n = dx.numel();
    record(
        batch,
        Entry::MaxBackward,
        input_shape,
        &geometry,
        params,
        grad_out,
        &dx,
        Some(indices),
        n,
    )?;
    Ok(dx)
}

/// Average pooling.
pub fn avg_pool2d(batch: &mut Batch, x: &Tensor, params: &Pool2dParams) -> Result<Tensor> {
    const OP: &str = "avg_pool2d";
    same_gpu(OP, batch, &[x])?;
    let dtype = float_dtype(OP, x)?;
    let geometry = output_shape(OP, x.shape(), params)?;
    let out_shape = geometry.out;
    let out = Tensor::uninit(batch.gpu(), &out_shape, dtype)?;
    let n = out.numel();
    record(
        batch,
        Entry::AvgForward,
        x.shape(),
        &geometry,
        params,
        x,
        &out,
        None,
        n,
    )?;
    Ok(out)
}

/// dL/dx of average pooling, from dL/dout; `input_shape` is the input's.
pub fn avg_pool2d_backward(
    batch: &mut Batch,
    grad_out: &Tensor,
    input_shape: &[usize],
    params: &Pool2dParams,
) -> Result<Tensor> {
    const OP: &str = "avg_pool2d_backward";
    same_gpu(OP, batch, &[grad_out])?;
    let dtype = float_dtype(OP, grad_out)?;
    let geometry = output_shape(OP, input_shape, params)?;
    let out_shape = geometry.out;
    if grad_out.shape() != out_shape {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!(
                "grad_out is {:?}, the output is {out_shape:?}",
                grad_out.shape()
            ),
        });
    }
    let dx = Tensor::uninit(batch.gpu(), input_shape, dtype)?;
    let n = dx.numel();
    record(
        batch,
        Entry::AvgBackward,
        input_shape,
        &geometry,
        params,
        grad_out,
        &dx,
        None,
        n,
    )?;
    Ok(dx)
}

//! 2-D max and average pooling over NCHW, forward and backward.
//!
//! Max pooling treats padding as -inf and returns, beside the output, the index `h·W + w` of each
//! window's first maximum within its plane (U32, the output's shape), which its backward needs.
//! Average pooling counts padding as zeros in a window of `kh·kw` (PyTorch's `count_include_pad`).
//! Padding may be at most half the kernel, as in PyTorch, so no window is all padding.

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::ops::{float_dtype, fold_grid, same_gpu};
use crate::shaders::{Kernel, PipelineKey};
use crate::tensor::{DType, Tensor};

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

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
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
const _: () = assert!(std::mem::size_of::<Params>() == 48);

/// The output shape for an NCHW `input_shape`.
fn output_shape(op: &'static str, input_shape: &[usize], p: &Pool2dParams) -> Result<[usize; 4]> {
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
    if 2 * p.padding.0 > p.kernel.0 || 2 * p.padding.1 > p.kernel.1 {
        return invalid(format!(
            "padding {:?} must be at most half the kernel {:?}",
            p.padding, p.kernel
        ));
    }
    let (ph, pw) = (h + 2 * p.padding.0, w + 2 * p.padding.1);
    if p.kernel.0 > ph || p.kernel.1 > pw {
        return Err(Error::ShapeMismatch {
            op,
            details: format!(
                "window {:?} is larger than the padded input {ph}x{pw}",
                p.kernel
            ),
        });
    }
    Ok([
        n,
        c,
        (ph - p.kernel.0) / p.stride.0 + 1,
        (pw - p.kernel.1) / p.stride.1 + 1,
    ])
}

#[allow(clippy::too_many_arguments)]
fn record(
    batch: &mut Batch,
    entry: &'static str,
    input_shape: &[usize],
    out_shape: &[usize; 4],
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
        out_h: out_shape[2] as u32,
        out_w: out_shape[3] as u32,
        kernel_h: p.kernel.0 as u32,
        kernel_w: p.kernel.1 as u32,
        stride_h: p.stride.0 as u32,
        stride_w: p.stride.1 as u32,
        pad_h: p.padding.0 as u32,
        pad_w: p.padding.1 as u32,
    };
    let pipeline = batch.gpu().pipeline(PipelineKey {
        kernel: Kernel::Pool,
        dtype: src.dtype(),
        entry,
        constants: vec![],
    })?;
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
    let out_shape = output_shape(OP, x.shape(), params)?;
    let out = Tensor::uninit(batch.gpu(), &out_shape, dtype)?;
    let indices = Tensor::uninit(batch.gpu(), &out_shape, DType::U32)?;
    let n = out.numel();
    record(
        batch,
        "max_forward",
        x.shape(),
        &out_shape,
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
    let out_shape = output_shape(OP, input_shape, params)?;
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
        "max_backward",
        input_shape,
        &out_shape,
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
    let out_shape = output_shape(OP, x.shape(), params)?;
    let out = Tensor::uninit(batch.gpu(), &out_shape, dtype)?;
    let n = out.numel();
    record(
        batch,
        "avg_forward",
        x.shape(),
        &out_shape,
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
    let out_shape = output_shape(OP, input_shape, params)?;
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
        "avg_backward",
        input_shape,
        &out_shape,
        params,
        grad_out,
        &dx,
        None,
        n,
    )?;
    Ok(dx)
}

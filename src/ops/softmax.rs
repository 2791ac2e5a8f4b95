//! Softmax and log-softmax over the last axis, and their backward passes.
//!
//! Any rank ≥ 1: the last axis is normalized, the others are rows. Values: finite logits of any
//! magnitude give finite results; `-inf` entries give exactly 0 (log-softmax: `-inf`); a row that is
//! all `-inf` gives all 0 (log-softmax: all `-inf`), where PyTorch gives NaN; a NaN or `+inf` in a
//! row makes that row NaN, as in PyTorch.

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::ops::{distinct_output, same_dtype, same_gpu, same_shape};
use crate::shaders::{Kernel, PipelineKey};
use crate::tensor::Tensor;

/// Rows up to this many columns take the `*_rows` entry points (several rows per workgroup).
const SHORT_ROW_MAX: usize = 512;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    groups_x: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

/// softmax(x) over the last axis, into a new tensor.
pub fn softmax(batch: &mut Batch, x: &Tensor) -> Result<Tensor> {
    let y = Tensor::uninit(batch.gpu(), x.shape(), x.dtype())?;
    softmax_into(batch, x, &y, false)?;
    Ok(y)
}

/// log(softmax(x)) over the last axis, computed without forming softmax(x).
pub fn log_softmax(batch: &mut Batch, x: &Tensor) -> Result<Tensor> {
    let y = Tensor::uninit(batch.gpu(), x.shape(), x.dtype())?;
    softmax_into(batch, x, &y, true)?;
    Ok(y)
}

/// Softmax (or log-softmax with `log`) of `x` into `y`, which has `x`'s shape and dtype.
pub fn softmax_into(batch: &mut Batch, x: &Tensor, y: &Tensor, log: bool) -> Result<()> {
    let op = if log { "log_softmax" } else { "softmax" };
    check(op, batch, &[x, y])?;
    record(batch, op, "forward", log, &[x, y])
}

/// dL/dx of softmax, from its output `y` and dL/dy: y ⊙ (dy − Σ dy ⊙ y).
pub fn softmax_backward(batch: &mut Batch, y: &Tensor, grad_y: &Tensor) -> Result<Tensor> {
    backward(batch, "softmax_backward", y, grad_y, false)
}

/// dL/dx of log-softmax, from its output `y` and dL/dy: dy − exp(y) Σ dy.
pub fn log_softmax_backward(batch: &mut Batch, y: &Tensor, grad_y: &Tensor) -> Result<Tensor> {
    backward(batch, "log_softmax_backward", y, grad_y, true)
}

fn backward(
    batch: &mut Batch,
    op: &'static str,
    y: &Tensor,
    grad_y: &Tensor,
    log: bool,
) -> Result<Tensor> {
    check(op, batch, &[y, grad_y])?;
    let dx = Tensor::uninit(batch.gpu(), y.shape(), y.dtype())?;
    record(batch, op, "backward", log, &[y, &dx, grad_y])?;
    Ok(dx)
}

/// Same shape, dtype and context; the last tensor is the output and must not alias an input.
fn check(op: &'static str, batch: &Batch, tensors: &[&Tensor]) -> Result<()> {
    same_shape(op, tensors)?;
    same_dtype(op, tensors)?;
    same_gpu(op, batch, tensors)?;
    match tensors.split_last() {
        Some((out, inputs)) => distinct_output(op, inputs, out),
        None => Ok(()),
    }
}

/// `tensors`: bindings 1.. of the entry point: forward [x, y], backward [y, dx, dy].
fn record(
    batch: &mut Batch,
    op: &'static str,
    entry: &'static str,
    log: bool,
    tensors: &[&Tensor],
) -> Result<()> {
    let x = tensors[0];
    let shape = x.shape();
    let cols = shape[shape.len() - 1];
    let rows = x.numel() / cols;
    // Short rows share a workgroup: THREADS_PER_ROW threads per row, about 4 elements each.
    let threads_per_row = if cols <= SHORT_ROW_MAX {
        cols.div_ceil(4).next_power_of_two().min(128)
    } else {
        256
    };
    let (entry, constants) = if threads_per_row < 256 {
        let e = if entry == "forward" {
            "forward_rows"
        } else {
            "backward_rows"
        };
        (
            e,
            vec![
                ("LOG", u32::from(log)),
                ("THREADS_PER_ROW", threads_per_row as u32),
            ],
        )
    } else {
        (entry, vec![("LOG", u32::from(log))])
    };
    let groups = rows.div_ceil(256 / threads_per_row);
    let max_x = batch.gpu().limits().max_compute_workgroups_per_dimension as usize;
    let per_x = groups.min(max_x);
    let params = Params {
        rows: rows as u32, // numel < 2^32 is checked when tensors are made
        cols: cols as u32,
        groups_x: per_x as u32,
        _pad: 0,
    };
    let pipeline = batch.gpu().pipeline(PipelineKey {
        kernel: Kernel::Softmax,
        dtype: x.dtype(),
        entry,
        constants,
    })?;
    let grid_y = u32::try_from(groups.div_ceil(per_x)).map_err(|_| Error::LimitExceeded {
        what: format!("{op}: rows"),
        requested: rows as u64,
        limit: u64::from(u32::MAX),
    })?;
    batch.dispatch(
        &pipeline,
        bytemuck::bytes_of(&params),
        tensors,
        [per_x as u32, grid_y, 1],
    )
}

//! Softmax and log-softmax over the last axis, and their backward passes.
//!
//! Any rank ≥ 1: the last axis is normalized, the others are rows. Values: finite logits of any
//! magnitude give finite results; `-inf` entries give exactly 0 (log-softmax: `-inf`); a row that is
//! all `-inf` gives all 0 (log-softmax: all `-inf`), where PyTorch gives NaN; a NaN or `+inf` in a
//! row makes that row NaN, as in PyTorch.

use crate::batch::Batch;
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::checks::{
    distinct_output, float_dtype, fold_grid, same_dtype, same_gpu, same_shape,
};
use crate::shaders::{entry_points, KernelSpec, Override, Prelude};
use crate::tensor::Tensor;

/// Rows up to this many columns take the `*_rows` entry points (several rows per workgroup).
const SHORT_ROW_MAX: usize = 512;

/// Rows longer than this are cut into chunks of [`CHUNK`] columns, one workgroup each, so that no
/// invocation walks more than 2 × 256 elements per pass (Mesa's software drivers stop an invocation
/// after 65,535 loop iterations), and a long row keeps a large GPU busy.
const LONG_ROW: usize = 65_536;

/// Columns per workgroup of a long row (`CHUNK` in the shader).
const CHUNK: usize = 16_384;

/// Which normalization: softmax or log-softmax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SoftmaxKind {
    /// exp(x − max) / Σ exp(x − max).
    #[default]
    Softmax,
    /// log(softmax(x)), computed without forming softmax(x).
    LogSoftmax,
}

crate::shaders::shader_params! {
    struct Params {
        rows: u32,
        cols: u32,
        groups_x: u32,
        chunks: u32,
    }
}

entry_points! {
    /// The entry points of `shaders/softmax.wgsl`.
    enum Entry {
        Forward = "forward": Params,
        Backward = "backward": Params,
        ForwardChunkStats = "forward_chunk_stats": Params,
        ForwardChunks = "forward_chunks": Params,
        BackwardChunkStats = "backward_chunk_stats": Params,
        BackwardChunks = "backward_chunks": Params,
        ForwardRows = "forward_rows": Params,
        BackwardRows = "backward_rows": Params,
    }
}

/// The contract of `shaders/softmax.wgsl`.
pub(crate) static KERNEL: KernelSpec = KernelSpec {
    name: "softmax",
    wgsl: include_str!("../../shaders/softmax.wgsl"),
    preludes: &[Prelude::Numerics, Prelude::ReduceShared],
    subgroup_preludes: Some(&[Prelude::Numerics, Prelude::ReduceSubgroup]),
    dtypes: &[DType::F32, DType::F16],
    entries: ENTRY_POINTS,
    overrides: &[
        Override {
            name: "LOG",
            values: &[0, 1],
        },
        Override {
            name: "THREADS_PER_ROW",
            values: &[1, 2, 4, 8, 16, 32, 64, 128],
        },
    ],
    override_sets: None,
    writes: &[2, 4],
};
const _: () = assert!(std::mem::size_of::<Params>() == 16);

/// softmax(x) over the last axis, into a new tensor.
pub fn softmax(batch: &mut Batch, x: &Tensor) -> Result<Tensor> {
    float_dtype("softmax", x)?;
    let y = Tensor::uninit(batch.gpu(), x.shape(), x.dtype())?;
    softmax_into(batch, x, &y, SoftmaxKind::Softmax)?;
    Ok(y)
}

/// log(softmax(x)) over the last axis, computed without forming softmax(x).
pub fn log_softmax(batch: &mut Batch, x: &Tensor) -> Result<Tensor> {
    float_dtype("log_softmax", x)?;
    let y = Tensor::uninit(batch.gpu(), x.shape(), x.dtype())?;
    softmax_into(batch, x, &y, SoftmaxKind::LogSoftmax)?;
    Ok(y)
}

/// Softmax or log-softmax of `x` into `y`, which has `x`'s shape and dtype.
pub fn softmax_into(batch: &mut Batch, x: &Tensor, y: &Tensor, kind: SoftmaxKind) -> Result<()> {
    let log = kind == SoftmaxKind::LogSoftmax;
    let op = if log { "log_softmax" } else { "softmax" };
    check(op, batch, &[x], y)?;
    record(batch, Entry::Forward, log, &[x, y])
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
    let dx = Tensor::uninit(batch.gpu(), y.shape(), float_dtype(op, y)?)?;
    check(op, batch, &[y, grad_y], &dx)?;
    record(batch, Entry::Backward, log, &[y, &dx, grad_y])?;
    Ok(dx)
}

/// Float inputs and output of one shape, dtype and context; the output aliases no input (inputs
/// may alias each other: `softmax_backward(y, y)` is fine).
fn check(op: &'static str, batch: &Batch, inputs: &[&Tensor], out: &Tensor) -> Result<()> {
    let mut all = inputs.to_vec();
    all.push(out);
    same_gpu(op, batch, &all)?;
    same_shape(op, &all)?;
    same_dtype(op, &all)?;
    float_dtype(op, out)?;
    distinct_output(op, inputs, out)
}

/// `tensors`: bindings 1.. of the entry point: forward [x, y], backward [y, dx, dy].
fn record(batch: &mut Batch, entry: Entry, log: bool, tensors: &[&Tensor]) -> Result<()> {
    let x = tensors[0];
    let shape = x.shape();
    let cols = shape[shape.len() - 1];
    let rows = x.numel() / cols;
    let forward = entry == Entry::Forward;
    let gpu = batch.gpu().clone();
    let mut params = Params {
        rows: rows as u32, // numel < 2^32 is checked when tensors are made
        cols: cols as u32,
        groups_x: 0,
        chunks: 1,
    };
    if cols > LONG_ROW {
        let chunks = cols.div_ceil(CHUNK);
        let stats = Tensor::uninit(&gpu, &[rows * chunks, 2], DType::F32)?;
        let (grid, groups_x) = fold_grid(&gpu, rows * chunks)?;
        params.groups_x = groups_x;
        params.chunks = chunks as u32;
        let (first, second) = if forward {
            (Entry::ForwardChunkStats, Entry::ForwardChunks)
        } else {
            (Entry::BackwardChunkStats, Entry::BackwardChunks)
        };
        for entry in [first, second] {
            let pipeline =
                gpu.pipeline(KERNEL.pipeline(entry, x.dtype(), vec![("LOG", u32::from(log))]))?;
            // forward [x, y], backward [y, dx, dy] at bindings 1..; the stats pass writes no output.
            let mut bound: Vec<(u32, &Tensor)> = (1..).zip(tensors.iter().copied()).collect();
            if matches!(entry, Entry::ForwardChunkStats | Entry::BackwardChunkStats) {
                bound.retain(|&(b, _)| b != 2);
            }
            bound.push((4, &stats));
            batch.dispatch_bound(&pipeline, bytemuck::bytes_of(&params), &bound, grid)?;
        }
        return Ok(());
    }
    // Short rows share a workgroup: THREADS_PER_ROW threads per row, about 4 elements each.
    let threads_per_row = if cols <= SHORT_ROW_MAX {
        cols.div_ceil(4).next_power_of_two().min(128)
    } else {
        256
    };
    let (entry, constants) = if threads_per_row < 256 {
        let e = if forward {
            Entry::ForwardRows
        } else {
            Entry::BackwardRows
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
    let (grid, groups_x) = fold_grid(&gpu, rows.div_ceil(256 / threads_per_row))?;
    params.groups_x = groups_x;
    let pipeline = gpu.pipeline(KERNEL.pipeline(entry, x.dtype(), constants))?;
    batch.dispatch(&pipeline, bytemuck::bytes_of(&params), tensors, grid)
}

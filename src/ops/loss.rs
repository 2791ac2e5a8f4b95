//! Losses fused with softmax: the mean loss and the logits' gradient from one read of the logits.
//!
//! Logits are `[.., classes]`: every leading index is a row. The loss is the mean over the rows that
//! count (rows labelled [`IGNORE_INDEX`] are left out of the mean, as PyTorch's `ignore_index`; if
//! every row is ignored the loss is NaN, as in PyTorch), returned as an f32 `[1]` tensor; the
//! gradient has the logits' shape and dtype and is exactly the gradient of the reported loss.
//!
//! A label that is neither a class nor [`IGNORE_INDEX`] (a label >= the number of classes, which
//! only the GPU sees when the labels are on the GPU) is left out exactly like an ignored row: no
//! loss, zero gradient, not counted in the mean, so the other rows' gradients are the ones of
//! their own mean. PyTorch stops with a device assertion instead; wgnn cannot stop a kernel, so
//! it counts such labels where the caller can read them: [`Loss::label_counts`] holds `[rows
//! counted, labels out of range]`. (`nn::Trainer` checks its labels on the host and refuses a bad
//! one before anything runs.)

use crate::batch::Batch;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::checks::{float_dtype, fold_grid, same_dtype, same_gpu, same_shape};
use crate::shaders::{entry_points, shader_params, KernelSpec, Override, Prelude};
use crate::tensor::Tensor;

/// A label that marks its row as ignored: no loss, zero gradient.
pub const IGNORE_INDEX: u32 = u32::MAX;

/// A loss and the gradient of that loss with respect to the logits.
#[derive(Debug, Clone)]
pub struct Loss {
    /// The mean loss over rows: f32, shape `[1]`.
    pub loss: Tensor,
    /// dLoss/dLogits, the logits' shape and dtype.
    pub grad_logits: Tensor,
    /// For [`cross_entropy`]: f32 `[2]`, the rows counted in the mean and the labels that were
    /// out of range (neither a class nor [`IGNORE_INDEX`]; left out like ignored rows). Read it
    /// (after the batch is submitted) to notice bad labels. `None` for [`soft_cross_entropy`].
    pub label_counts: Option<Tensor>,
}

/// Rows longer than this take the chunked entry points (one workgroup per chunk of [`CHUNK`]
/// columns), so no invocation loops near the 65,535 iterations where Mesa's software drivers stop.
const LONG_ROW: usize = 65_536;
/// Columns per workgroup of a long row (`CHUNK` in the shader).
const CHUNK: usize = 16_384;
/// Rows of at most this many columns take `cross_entropy_rows` (one thread per row, no barriers);
/// its loops stay far below the software drivers' cap.
const NARROW_COLS: usize = 64;
/// Labels one `count_targets` workgroup counts, at least (16 per thread).
const COUNT_CHUNK: usize = 4096;

crate::shaders::shader_params! {
    struct Params {
        rows: u32,
        cols: u32,
        groups_x: u32,
        chunks: u32,
        smoothing: f32,
        temperature: f32,
        grad_scale: f32,
        _pad: u32,
    }
}

entry_points! {
    /// The entry points of `shaders/loss.wgsl`.
    enum Entry {
        CrossEntropy = "cross_entropy": Params,
        CrossEntropyRows = "cross_entropy_rows": Params,
        CrossEntropyChunkStats = "cross_entropy_chunk_stats": Params,
        CrossEntropyChunks = "cross_entropy_chunks": Params,
        CountTargets = "count_targets": CountParams,
        CountTargetsTotal = "count_targets_total": CountParams,
        SoftCrossEntropy = "soft_cross_entropy": Params,
        SoftCrossEntropyChunkStats = "soft_cross_entropy_chunk_stats": Params,
        SoftCrossEntropyChunks = "soft_cross_entropy_chunks": Params,
        Regression = "regression": RegressionParams,
    }
}

/// The contract of `shaders/loss.wgsl`.
pub(crate) static KERNEL: KernelSpec = KernelSpec {
    name: "loss",
    wgsl: include_str!("../../shaders/loss.wgsl"),
    preludes: &[Prelude::Numerics],
    subgroup_preludes: None,
    dtypes: &[DType::F32, DType::F16],
    entries: ENTRY_POINTS,
    overrides: &[Override {
        name: "KIND",
        values: &[0, 1, 2],
    }],
    override_sets: None,
    writes: &[2, 3, 6, 8, 9],
};
const _: () = assert!(std::mem::size_of::<Params>() == 32);

shader_params! {
    struct RegressionParams {
        n: u32,
        groups_x: u32,
        delta: f32,
        scale: f32,
    }
}

shader_params! {
    struct CountParams {
        rows: u32,
        cols: u32,
        groups_x: u32,
        rows_per_chunk: u32,
    }
}

fn rows_cols(op: &'static str, logits: &Tensor) -> Result<(usize, usize)> {
    float_dtype(op, logits)?;
    let shape = logits.shape();
    if shape.len() < 2 {
        return Err(Error::ShapeMismatch {
            op,
            details: format!("logits must be [rows, classes] (rank >= 2), got {shape:?}"),
        });
    }
    let cols = shape[shape.len() - 1];
    Ok((logits.numel() / cols, cols))
}

/// Mean cross-entropy of `logits` against integer `labels` (U32, shape `logits.shape[..-1]`), with
/// label smoothing `smoothing` in [0, 1] (0: none). A label of [`IGNORE_INDEX`] ignores its row; so
/// does any other label past the class count, which [`Loss::label_counts`] counts (see the module
/// documentation).
pub fn cross_entropy(
    batch: &mut Batch,
    logits: &Tensor,
    labels: &Tensor,
    smoothing: f32,
) -> Result<Loss> {
    const OP: &str = "cross_entropy";
    same_gpu(OP, batch, &[logits, labels])?;
    let (rows, cols) = rows_cols(OP, logits)?;
    if labels.dtype() != DType::U32 {
        return Err(Error::DtypeMismatch {
            op: OP,
            details: format!("labels must be U32, got {:?}", labels.dtype()),
        });
    }
    let label_shape = &logits.shape()[..logits.shape().len() - 1];
    if labels.shape() != label_shape {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!("labels must be {label_shape:?}, got {:?}", labels.shape()),
        });
    }
    if !(0.0..=1.0).contains(&smoothing) {
        return Err(Error::InvalidArgument {
            op: OP,
            details: format!("label smoothing must be in [0, 1], got {smoothing}"),
        });
    }
    let params = Params {
        smoothing,
        temperature: 1.0,
        ..Default::default()
    };
    let count = count_targets(batch, labels, cols)?;
    let mut loss = record(
        batch,
        Entry::CrossEntropy,
        logits,
        &[(4, labels), (7, &count)],
        params,
        rows,
        cols,
    )?;
    loss.label_counts = Some(count);
    Ok(loss)
}

/// Distillation loss: T² · mean over rows of the cross-entropy between the teacher's softened
/// distribution softmax(teacher/T) and the student's softmax(student/T), with its gradient with
/// respect to the student's logits. `temperature` must be finite and positive.
pub fn soft_cross_entropy(
    batch: &mut Batch,
    student_logits: &Tensor,
    teacher_logits: &Tensor,
    temperature: f32,
) -> Result<Loss> {
    const OP: &str = "soft_cross_entropy";
    same_gpu(OP, batch, &[student_logits, teacher_logits])?;
    same_shape(OP, &[student_logits, teacher_logits])?;
    same_dtype(OP, &[student_logits, teacher_logits])?;
    let (rows, cols) = rows_cols(OP, student_logits)?;
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::InvalidArgument {
            op: OP,
            details: format!("temperature must be finite and positive, got {temperature}"),
        });
    }
    let params = Params {
        temperature,
        ..Default::default()
    };
    record(
        batch,
        Entry::SoftCrossEntropy,
        student_logits,
        &[(5, teacher_logits)],
        params,
        rows,
        cols,
    )
}

/// Records the loss kernel (one pass, or statistics then chunks for long rows) and the sum of the
/// row losses. `bound`: the entry's inputs past the logits, at their bindings.
fn record(
    batch: &mut Batch,
    entry: Entry,
    logits: &Tensor,
    bound: &[(u32, &Tensor)],
    mut params: Params,
    rows: usize,
    cols: usize,
) -> Result<Loss> {
    let gpu = batch.gpu().clone();
    let grad = Tensor::uninit(&gpu, logits.shape(), logits.dtype())?;
    let row_loss = Tensor::uninit(&gpu, &[rows], DType::F32)?;
    params.rows = rows as u32;
    params.cols = cols as u32;
    params.grad_scale = 1.0 / rows as f32;
    let pipeline = |entry| gpu.pipeline(KERNEL.pipeline(entry, logits.dtype(), vec![]));
    let mut tensors = vec![(1, logits), (2, &grad), (3, &row_loss)];
    tensors.extend_from_slice(bound);
    if entry == Entry::CrossEntropy && cols <= NARROW_COLS {
        let (grid, groups_x) = fold_grid(&gpu, rows.div_ceil(64))?;
        params.groups_x = groups_x;
        params.chunks = 1;
        batch.dispatch_bound(
            &pipeline(Entry::CrossEntropyRows)?,
            bytemuck::bytes_of(&params),
            &tensors,
            grid,
        )?;
    } else if cols <= LONG_ROW {
        let (grid, groups_x) = fold_grid(&gpu, rows)?;
        params.groups_x = groups_x;
        params.chunks = 1;
        batch.dispatch_bound(
            &pipeline(entry)?,
            bytemuck::bytes_of(&params),
            &tensors,
            grid,
        )?;
    } else {
        let chunks = cols.div_ceil(CHUNK);
        let soft = entry == Entry::SoftCrossEntropy;
        let stats = Tensor::uninit(
            &gpu,
            &[rows * chunks * if soft { 2 } else { 1 }, 4],
            DType::F32,
        )?;
        let (grid, groups_x) = fold_grid(&gpu, rows * chunks)?;
        params.groups_x = groups_x;
        params.chunks = chunks as u32;
        let (first, second) = if soft {
            (
                Entry::SoftCrossEntropyChunkStats,
                Entry::SoftCrossEntropyChunks,
            )
        } else {
            (Entry::CrossEntropyChunkStats, Entry::CrossEntropyChunks)
        };
        // The statistics pass reads the logits (and the teacher's) only.
        let mut stat_bindings: Vec<(u32, &Tensor)> = tensors
            .iter()
            .copied()
            .filter(|&(b, _)| b == 1 || b == 5)
            .collect();
        stat_bindings.push((6, &stats));
        batch.dispatch_bound(
            &pipeline(first)?,
            bytemuck::bytes_of(&params),
            &stat_bindings,
            grid,
        )?;
        tensors.push((6, &stats));
        batch.dispatch_bound(
            &pipeline(second)?,
            bytemuck::bytes_of(&params),
            &tensors,
            grid,
        )?;
    }
    let loss = crate::ops::reduce::sum(batch, &row_loss)?;
    Ok(Loss {
        loss,
        grad_logits: grad,
        label_counts: None,
    })
}

/// The number of labels that are classes (below `cols`) and the number that are neither classes
/// nor [`IGNORE_INDEX`], as an f32 `[2]` tensor.
fn count_targets(batch: &mut Batch, labels: &Tensor, cols: usize) -> Result<Tensor> {
    let gpu = batch.gpu().clone();
    let rows = labels.numel();
    let chunk = rows.div_ceil(4096).max(COUNT_CHUNK);
    let parts = rows.div_ceil(chunk);
    let count = Tensor::uninit(&gpu, &[2], DType::F32)?;
    if parts == 1 {
        let params = CountParams {
            rows: rows as u32,
            cols: cols as u32,
            groups_x: 1,
            rows_per_chunk: chunk as u32,
        };
        let pipeline =
            gpu.pipeline(KERNEL.pipeline(Entry::CountTargetsTotal, DType::F32, vec![]))?;
        batch.dispatch_bound(
            &pipeline,
            bytemuck::bytes_of(&params),
            &[(4, labels), (8, &count)],
            [1, 1, 1],
        )?;
        return Ok(count);
    }
    let counts = Tensor::uninit(&gpu, &[parts], DType::F32)?;
    let invalid = Tensor::uninit(&gpu, &[parts], DType::F32)?;
    let (grid, groups_x) = fold_grid(&gpu, parts)?;
    let params = CountParams {
        rows: rows as u32,
        cols: cols as u32,
        groups_x,
        rows_per_chunk: chunk as u32,
    };
    let pipeline = gpu.pipeline(KERNEL.pipeline(Entry::CountTargets, DType::F32, vec![]))?;
    batch.dispatch_bound(
        &pipeline,
        bytemuck::bytes_of(&params),
        &[(4, labels), (8, &counts), (9, &invalid)],
        grid,
    )?;
    crate::ops::reduce::total_into(batch, "cross_entropy", &counts, false, 1.0, &count, 0)?;
    crate::ops::reduce::total_into(batch, "cross_entropy", &invalid, false, 1.0, &count, 1)?;
    Ok(count)
}

/// An element-wise regression loss ([`regression`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Regression {
    /// Mean squared error: mean (y - t)².
    Mse,
    /// Mean absolute error: mean |y - t| (the gradient at 0 is 0, as PyTorch's).
    L1,
    /// Huber: mean of (y - t)²/2 where |y - t| ≤ δ, else δ(|y - t| - δ/2) (PyTorch's
    /// `HuberLoss(delta)`); δ finite and positive.
    Huber {
        /// Where the loss turns from quadratic to linear.
        delta: f32,
    },
}

impl Regression {
    fn code(self) -> u32 {
        match self {
            Regression::Mse => 0,
            Regression::L1 => 1,
            Regression::Huber { .. } => 2,
        }
    }
}

/// The mean regression loss of `prediction` against `targets` (one shape and float dtype) over
/// every element, as PyTorch's `reduction='mean'`, and its gradient with respect to the
/// prediction.
pub fn regression(
    batch: &mut Batch,
    prediction: &Tensor,
    targets: &Tensor,
    loss: Regression,
) -> Result<Loss> {
    const OP: &str = "regression";
    same_gpu(OP, batch, &[prediction, targets])?;
    same_shape(OP, &[prediction, targets])?;
    same_dtype(OP, &[prediction, targets])?;
    let dtype = float_dtype(OP, prediction)?;
    let delta = match loss {
        Regression::Huber { delta } if !(delta.is_finite() && delta > 0.0) => {
            return Err(Error::InvalidArgument {
                op: OP,
                details: format!("Huber's delta must be finite and positive, got {delta}"),
            })
        }
        Regression::Huber { delta } => delta,
        _ => 1.0,
    };
    let gpu = batch.gpu().clone();
    let n = prediction.numel();
    let grad = Tensor::uninit(&gpu, prediction.shape(), dtype)?;
    let per_element = Tensor::uninit(&gpu, &[n], DType::F32)?;
    let (grid, groups_x) = fold_grid(&gpu, n.div_ceil(256))?;
    let params = RegressionParams {
        n: n as u32,
        groups_x,
        delta,
        scale: 1.0 / n as f32,
    };
    let pipeline =
        gpu.pipeline(KERNEL.pipeline(Entry::Regression, dtype, vec![("KIND", loss.code())]))?;
    batch.dispatch_bound(
        &pipeline,
        bytemuck::bytes_of(&params),
        &[
            (1, prediction),
            (10, targets),
            (2, &grad),
            (3, &per_element),
        ],
        grid,
    )?;
    let loss = crate::ops::reduce::sum(batch, &per_element)?;
    Ok(Loss {
        loss,
        grad_logits: grad,
        label_counts: None,
    })
}

//! Embedding lookup (token ids to rows of a table, plus position embeddings) and its deterministic
//! backward pass: where a token repeats, its gradient rows are summed in row order, with no
//! atomics, so training runs are reproducible.

use crate::batch::Batch;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::checks::{float_dtype, fold_grid, same_dtype, same_gpu, to_u32};
use crate::shaders::{entry_points, shader_params, KernelSpec};
use crate::tensor::Tensor;

/// Rows one backward dispatch sums (`CHUNK_ROWS` in the shader); longer inputs take several
/// dispatches, in order.
const CHUNK_ROWS: usize = 16_384;

shader_params! {
    struct Params {
        rows: u32,
        dim: u32,
        vocab: u32,
        seq: u32,
        has_positions: u32,
        groups_x: u32,
        lo: u32,
        total: u32,
    }
}
const _: () = assert!(std::mem::size_of::<Params>() == 32);

entry_points! {
    /// The entry points of `shaders/embedding.wgsl`.
    enum Entry {
        Forward = "forward": Params,
        BackwardTable = "backward_table": Params,
        BackwardPositions = "backward_positions": Params,
    }
}

/// The contract of `shaders/embedding.wgsl`.
pub(crate) static KERNEL: KernelSpec = KernelSpec {
    name: "embedding",
    wgsl: include_str!("../../shaders/embedding.wgsl"),
    preludes: &[],
    subgroup_preludes: None,
    dtypes: &[DType::F32, DType::F16],
    entries: ENTRY_POINTS,
    overrides: &[],
    override_sets: None,
    writes: &[4, 6, 7],
};

struct Dims {
    rows: usize,
    dim: usize,
    vocab: usize,
    seq: usize,
}

fn check(
    op: &'static str,
    batch: &Batch,
    ids: &Tensor,
    table: &Tensor,
    positions: Option<&Tensor>,
) -> Result<Dims> {
    let mut all = vec![ids, table];
    all.extend(positions);
    same_gpu(op, batch, &all)?;
    float_dtype(op, table)?;
    if ids.dtype() != DType::U32 {
        return Err(Error::DtypeMismatch {
            op,
            details: format!("token ids must be U32, got {:?}", ids.dtype()),
        });
    }
    let &[vocab, dim] = table.shape() else {
        return Err(Error::ShapeMismatch {
            op,
            details: format!("the table must be [vocab, dim], got {:?}", table.shape()),
        });
    };
    let seq = *ids.shape().last().ok_or_else(|| Error::ShapeMismatch {
        op,
        details: "ids need at least one axis".into(),
    })?;
    if let Some(p) = positions {
        same_dtype(op, &[table, p])?;
        match *p.shape() {
            [context, d] if d == dim && context >= seq => {}
            _ => {
                return Err(Error::ShapeMismatch {
                    op,
                    details: format!(
                        "positions must be [context ≥ {seq}, {dim}] for ids {:?}, got {:?}",
                        ids.shape(),
                        p.shape()
                    ),
                })
            }
        }
    }
    Ok(Dims {
        rows: ids.numel(),
        dim,
        vocab,
        seq: seq.max(1),
    })
}

/// `table[ids]` (+ `positions[position within the sequence]`): ids U32 of any shape `[..., seq]`,
/// table `[vocab, dim]`, positions `[context ≥ seq, dim]`; the output is `[..., seq, dim]`. An id
/// past the vocabulary gives a row of zeros (check ids on the host: [`check_ids`]).
pub fn embedding(
    batch: &mut Batch,
    ids: &Tensor,
    table: &Tensor,
    positions: Option<&Tensor>,
) -> Result<Tensor> {
    const OP: &str = "embedding";
    let d = check(OP, batch, ids, table, positions)?;
    let gpu = batch.gpu().clone();
    let shape = [ids.shape(), &[d.dim]].concat();
    let out = Tensor::uninit(&gpu, &shape, table.dtype())?;
    let total = d
        .rows
        .checked_mul(d.dim)
        .ok_or_else(|| Error::LimitExceeded {
            what: format!("{OP}: output elements"),
            requested: u64::MAX,
            limit: u64::from(u32::MAX),
        })?;
    let (grid, groups_x) = fold_grid(&gpu, total.div_ceil(64))?;
    let params = Params {
        rows: to_u32(OP, "tokens", d.rows)?,
        dim: to_u32(OP, "dim", d.dim)?,
        vocab: to_u32(OP, "vocabulary", d.vocab)?,
        seq: to_u32(OP, "sequence length", d.seq)?,
        has_positions: u32::from(positions.is_some()),
        groups_x,
        lo: 0,
        total: to_u32(OP, "output elements", total)?,
    };
    let pipeline = gpu.pipeline(KERNEL.pipeline(Entry::Forward, table.dtype(), Vec::new()))?;
    batch.dispatch_bound(
        &pipeline,
        bytemuck::bytes_of(&params),
        &[
            (1, ids),
            (2, table),
            (3, positions.unwrap_or(table)),
            (4, &out),
        ],
        grid,
    )?;
    Ok(out)
}

/// Adds the gradients of [`embedding`] into `grad_table` (`[vocab, dim]`) and `grad_positions`
/// (`[context, dim]`, when the forward had positions), from dL/d(out): each table row gets the sum
/// of the gradient rows of its tokens, in row order. The work is vocab × tokens × dim (every table
/// element scans the tokens): meant for vocabularies of up to a few thousand.
pub fn embedding_backward(
    batch: &mut Batch,
    ids: &Tensor,
    grad_out: &Tensor,
    grad_table: &Tensor,
    grad_positions: Option<&Tensor>,
) -> Result<()> {
    const OP: &str = "embedding_backward";
    let d = check(OP, batch, ids, grad_table, grad_positions)?;
    same_dtype(OP, &[grad_out, grad_table])?;
    let shape = [ids.shape(), &[d.dim]].concat();
    if grad_out.shape() != shape.as_slice() {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!("grad_out must be {shape:?}, got {:?}", grad_out.shape()),
        });
    }
    let gpu = batch.gpu().clone();
    let dtype = grad_table.dtype();
    let mut targets = vec![(Entry::BackwardTable, grad_table, d.vocab)];
    if let Some(p) = grad_positions {
        targets.push((Entry::BackwardPositions, p, p.shape()[0]));
    }
    for (entry, target, rows_of_target) in targets {
        let total = rows_of_target * d.dim;
        let (grid, groups_x) = fold_grid(&gpu, total.div_ceil(64))?;
        let pipeline = gpu.pipeline(KERNEL.pipeline(entry, dtype, Vec::new()))?;
        for lo in (0..d.rows).step_by(CHUNK_ROWS) {
            let params = Params {
                rows: to_u32(OP, "tokens", d.rows)?,
                dim: d.dim as u32,
                vocab: to_u32(OP, "vocabulary", d.vocab)?,
                seq: d.seq as u32,
                has_positions: 0,
                groups_x,
                lo: lo as u32,
                total: to_u32(OP, "gradient elements", total)?,
            };
            let bound: Vec<(u32, &Tensor)> = match entry {
                Entry::BackwardTable => vec![(1, ids), (5, grad_out), (6, target)],
                _ => vec![(5, grad_out), (7, target)],
            };
            batch.dispatch_bound(&pipeline, bytemuck::bytes_of(&params), &bound, grid)?;
        }
    }
    Ok(())
}

/// Checks token ids from the host against a vocabulary of `vocab`: the first one past it is an
/// [`Error::InvalidArgument`].
pub fn check_ids(op: &'static str, ids: &[u32], vocab: usize) -> Result<()> {
    if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        return Err(Error::InvalidArgument {
            op,
            details: format!("token {i} has id {id}, past the vocabulary of {vocab}"),
        });
    }
    Ok(())
}

//! Reductions: per-channel sums (bias gradients), totals, means, sums of squares, row max/argmax.

use crate::batch::Batch;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::checks::{float_dtype, fold_grid, same_gpu};
use crate::shaders::{entry_points, shader_params, KernelSpec, Override};
use crate::tensor::Tensor;

crate::shaders::shader_params! {
    struct Params {
        outer: u32,
        channels: u32,
        inner: u32,
        groups_x: u32,
        n: u32,
        chunk: u32,
        scale: f32,
        offset: u32,
    }
}

entry_points! {
    /// The entry points of `shaders/reduce.wgsl`.
    enum Entry {
        SumChannels = "sum_channels": Params,
        LeadingXOut = "leading_x_out": Params,
        LeadingXSums = "leading_x_sums": Params,
        LeadingPOut = "leading_p_out": Params,
        LeadingPSums = "leading_p_sums": Params,
        PartialSums = "partial_sums": Params,
        RowMaxArgmax = "row_max_argmax": Params,
        RowMaxArgmaxChunks = "row_max_argmax_chunks": Params,
        RowMaxArgmaxMerge = "row_max_argmax_merge": Params,
        TopK = "top_k": TopKParams,
    }
}

/// The contract of `shaders/reduce.wgsl`.
pub(crate) static KERNEL: KernelSpec = KernelSpec {
    name: "reduce",
    wgsl: include_str!("../../shaders/reduce.wgsl"),
    preludes: &[],
    subgroup_preludes: None,
    dtypes: &[DType::F32, DType::F16],
    entries: ENTRY_POINTS,
    overrides: &[Override {
        name: "SQUARES",
        values: &[0, 1],
    }],
    override_sets: None,
    writes: &[2, 3, 4, 6],
};
const _: () = assert!(std::mem::size_of::<Params>() == 32);

shader_params! {
    struct TopKParams {
        rows: u32,
        cols: u32,
        groups_x: u32,
        k: u32,
    }
}

/// Most partial sums the second stage reads with one workgroup.
const MAX_PARTIALS: usize = 4096;

fn pipeline(
    batch: &Batch,
    dtype: DType,
    entry: Entry,
    squares: bool,
) -> Result<crate::gpu::Pipeline> {
    batch
        .gpu()
        .pipeline(KERNEL.pipeline(entry, dtype, vec![("SQUARES", u32::from(squares))]))
}

/// Most loop iterations one thread of a reduction runs: far below the 65,535 after which Mesa's
/// software drivers silently stop an invocation; longer sums are cut into chunks.
const PER_THREAD: usize = 4096;

/// Rows longer than this take the chunked row_max_argmax.
const LONG_ROW: usize = 65_536;

/// Sums over every axis but `axis`: `[x.shape[axis]]`. The gradient of a bias added along `axis`.
pub fn channel_sum(batch: &mut Batch, x: &Tensor, axis: usize) -> Result<Tensor> {
    const OP: &str = "channel_sum";
    same_gpu(OP, batch, &[x])?;
    let dtype = float_dtype(OP, x)?;
    let Some(&channels) = x.shape().get(axis) else {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!("axis {axis} out of range for {:?}", x.shape()),
        });
    };
    let out = Tensor::uninit(batch.gpu(), &[channels], dtype)?;
    let inner: usize = x.shape()[axis + 1..].iter().product();
    let outer: usize = x.shape()[..axis].iter().product();
    if inner == 1 {
        // Summing over leading rows: one thread per channel, coalesced.
        leading_sum(batch, x, outer, channels, &out)?;
        return Ok(out);
    }
    // One workgroup per channel and chunk of its (outer, inner) elements.
    let count = outer * inner;
    let chunk = count.min(256 * PER_THREAD);
    let chunks = count.div_ceil(chunk);
    let sums = Tensor::uninit(batch.gpu(), &[chunks * channels], DType::F32)?;
    let (grid, groups_x) = fold_grid(batch.gpu(), chunks * channels)?;
    let params = Params {
        outer: outer as u32,
        channels: channels as u32,
        inner: inner as u32,
        groups_x,
        chunk: chunk as u32,
        ..Default::default()
    };
    let p = pipeline(batch, dtype, Entry::SumChannels, false)?;
    batch.dispatch_bound(
        &p,
        bytemuck::bytes_of(&params),
        &[(1, x), (2, &out), (4, &sums)],
        grid,
    )?;
    if chunks > 1 {
        leading_sum(batch, &sums, chunks, channels, &out)?;
    }
    Ok(out)
}

/// out[c] = Σ over `outer` rows of `input` [outer, channels] (x's dtype, or f32 partial sums),
/// in rounds of at most [`PER_THREAD`] rows per thread; intermediate rounds are f32.
fn leading_sum(
    batch: &mut Batch,
    input: &Tensor,
    outer: usize,
    channels: usize,
    out: &Tensor,
) -> Result<()> {
    let gpu = batch.gpu().clone();
    let mut current = input.clone();
    let mut rows = outer;
    // The first round reads x (its own dtype); later rounds read f32 partials.
    let mut from_x = true;
    loop {
        let chunks = rows.div_ceil(PER_THREAD);
        let cgroups = channels.div_ceil(256);
        let (grid, groups_x) = fold_grid(&gpu, chunks * cgroups)?;
        let params = Params {
            outer: rows as u32,
            channels: channels as u32,
            groups_x,
            chunk: PER_THREAD as u32,
            ..Default::default()
        };
        let input_binding = if from_x { 1 } else { 5 };
        // The f32 partials are read by the output dtype's module.
        let dtype = out.dtype();
        if chunks == 1 {
            let entry = if from_x {
                Entry::LeadingXOut
            } else {
                Entry::LeadingPOut
            };
            let p = pipeline(batch, dtype, entry, false)?;
            return batch.dispatch_bound(
                &p,
                bytemuck::bytes_of(&params),
                &[(input_binding, &current), (2, out)],
                grid,
            );
        }
        let sums = Tensor::uninit(&gpu, &[chunks * channels], DType::F32)?;
        let entry = if from_x {
            Entry::LeadingXSums
        } else {
            Entry::LeadingPSums
        };
        let p = pipeline(batch, dtype, entry, false)?;
        batch.dispatch_bound(
            &p,
            bytemuck::bytes_of(&params),
            &[(input_binding, &current), (4, &sums)],
            grid,
        )?;
        current = sums;
        rows = chunks;
        from_x = false;
    }
}

/// scale · Σ x (or Σ x² with `squares`) as an f32 `[1]` tensor.
fn total(
    batch: &mut Batch,
    op: &'static str,
    x: &Tensor,
    squares: bool,
    scale: f32,
) -> Result<Tensor> {
    let out = Tensor::uninit(batch.gpu(), &[1], DType::F32)?;
    total_into(batch, op, x, squares, scale, &out, 0)?;
    Ok(out)
}

/// Writes scale · Σ x (or Σ x²) into `out[offset]` (an f32 tensor), in two stages: chunks of x into
/// f32 partials, then one workgroup over the partials.
pub(crate) fn total_into(
    batch: &mut Batch,
    op: &'static str,
    x: &Tensor,
    squares: bool,
    scale: f32,
    out: &Tensor,
    offset: usize,
) -> Result<()> {
    same_gpu(op, batch, &[x, out])?;
    let dtype = float_dtype(op, x)?;
    let n = x.numel();
    let chunk = n.div_ceil(MAX_PARTIALS).max(2048);
    let parts = n.div_ceil(chunk);
    // One chunk: one workgroup writes the total itself. Else partial sums, then their total.
    let partial;
    let passes = if parts == 1 {
        vec![(x, out, dtype, n, chunk, squares, scale, offset)]
    } else {
        partial = Tensor::uninit(batch.gpu(), &[parts], DType::F32)?;
        vec![
            (x, &partial, dtype, n, chunk, squares, 1.0, 0),
            (
                &partial,
                out,
                DType::F32,
                parts,
                parts,
                false,
                scale,
                offset,
            ),
        ]
    };
    for (input, output, dtype, n, chunk, squares, scale, offset) in passes {
        let (grid, groups_x) = fold_grid(batch.gpu(), n.div_ceil(chunk))?;
        let params = Params {
            groups_x,
            n: n as u32,
            chunk: chunk as u32,
            scale,
            offset: offset as u32,
            ..Default::default()
        };
        let p = pipeline(batch, dtype, Entry::PartialSums, squares)?;
        batch.dispatch_bound(
            &p,
            bytemuck::bytes_of(&params),
            &[(1, input), (4, output)],
            grid,
        )?;
    }
    Ok(())
}

/// Σ x over all elements, as an f32 `[1]` tensor.
pub fn sum(batch: &mut Batch, x: &Tensor) -> Result<Tensor> {
    total(batch, "sum", x, false, 1.0)
}

/// The mean of all elements, as an f32 `[1]` tensor.
pub fn mean(batch: &mut Batch, x: &Tensor) -> Result<Tensor> {
    total(batch, "mean", x, false, 1.0 / x.numel() as f32)
}

/// Σ x² over all elements, as an f32 `[1]` tensor.
pub fn sum_squares(batch: &mut Batch, x: &Tensor) -> Result<Tensor> {
    total(batch, "sum_squares", x, true, 1.0)
}

/// Per-row maximum and the first index where it occurs, over the last axis: `(max, argmax)` with
/// shapes `x.shape[..-1]` (or `[1]` for a vector); argmax is `U32`. NaN counts as the maximum.
pub fn row_max_argmax(batch: &mut Batch, x: &Tensor) -> Result<(Tensor, Tensor)> {
    const OP: &str = "row_max_argmax";
    same_gpu(OP, batch, &[x])?;
    let dtype = float_dtype(OP, x)?;
    let shape = x.shape();
    let cols = shape[shape.len() - 1];
    let rows = x.numel() / cols;
    let out_shape = if shape.len() > 1 {
        shape[..shape.len() - 1].to_vec()
    } else {
        vec![1]
    };
    let gpu = batch.gpu().clone();
    let max = Tensor::uninit(&gpu, &out_shape, dtype)?;
    let argmax = Tensor::uninit(&gpu, &out_shape, DType::U32)?;
    let (grid, groups_x) = fold_grid(&gpu, rows)?;
    let mut params = Params {
        outer: rows as u32,
        inner: cols as u32,
        groups_x,
        ..Default::default()
    };
    if cols <= LONG_ROW {
        let p = pipeline(batch, dtype, Entry::RowMaxArgmax, false)?;
        batch.dispatch(&p, bytemuck::bytes_of(&params), &[x, &max, &argmax], grid)?;
        return Ok((max, argmax));
    }
    // Long rows: the best of each chunk of 16,384 columns, then of the chunks.
    let chunk = 64 * 256;
    let chunks = cols.div_ceil(chunk);
    let pairs = Tensor::uninit(&gpu, &[rows * chunks, 2], DType::U32)?;
    let (chunk_grid, chunk_groups_x) = fold_grid(&gpu, rows * chunks)?;
    params.n = chunks as u32;
    params.chunk = chunk as u32;
    params.groups_x = chunk_groups_x;
    let p = pipeline(batch, dtype, Entry::RowMaxArgmaxChunks, false)?;
    batch.dispatch_bound(
        &p,
        bytemuck::bytes_of(&params),
        &[(1, x), (6, &pairs)],
        chunk_grid,
    )?;
    params.groups_x = groups_x;
    let p = pipeline(batch, dtype, Entry::RowMaxArgmaxMerge, false)?;
    batch.dispatch_bound(
        &p,
        bytemuck::bytes_of(&params),
        &[(2, &max), (3, &argmax), (6, &pairs)],
        grid,
    )?;
    Ok((max, argmax))
}

/// Most k · columns [`top_k`] takes: one thread walks its row k times.
pub const TOP_K_MAX_WORK: usize = 16_384;

/// The `k` largest values of each row (last axis) and their indices, best first, in
/// [`row_max_argmax`]'s order (NaN first, ties to the lower index): `(values, indices)`, shaped
/// `[rows, k]`, indices U32. k · columns may be at most [`TOP_K_MAX_WORK`] (classifier outputs).
pub fn top_k(batch: &mut Batch, x: &Tensor, k: usize) -> Result<(Tensor, Tensor)> {
    const OP: &str = "top_k";
    same_gpu(OP, batch, &[x])?;
    let dtype = float_dtype(OP, x)?;
    let cols = x.shape()[x.shape().len() - 1];
    if k == 0 || k > cols {
        return Err(Error::InvalidArgument {
            op: OP,
            details: format!("k = {k} must be in 1..={cols}"),
        });
    }
    let work = k.saturating_mul(cols);
    if work > TOP_K_MAX_WORK {
        return Err(Error::LimitExceeded {
            what: format!("{OP}: k × columns (a per-thread loop)"),
            requested: work as u64,
            limit: TOP_K_MAX_WORK as u64,
        });
    }
    let rows = x.numel() / cols;
    let values = Tensor::uninit(batch.gpu(), &[rows, k], dtype)?;
    let indices = Tensor::uninit(batch.gpu(), &[rows, k], DType::U32)?;
    let (grid, groups_x) = fold_grid(batch.gpu(), rows.div_ceil(256))?;
    let params = TopKParams {
        rows: rows as u32,
        cols: cols as u32,
        groups_x,
        k: k as u32,
    };
    let p = pipeline(batch, dtype, Entry::TopK, false)?;
    batch.dispatch(
        &p,
        bytemuck::bytes_of(&params),
        &[x, &values, &indices],
        grid,
    )?;
    Ok((values, indices))
}

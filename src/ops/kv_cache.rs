//! Decoding with a key/value cache: each row is one token of one sequence, placed by its cursor
//! (the sequence's slot in the cache, the token's position in it). [`embed_at`] embeds tokens at
//! their positions, [`cache_append`] writes their keys and values into the cache in place, and
//! [`decode_attention`] attends each row's query to its slot's keys `0..=position`, for rows of
//! different sequences and lengths in one dispatch, split along the cache in blocks of 64 keys
//! that a second pass merges (as flash-decoding does), so no thread loops past the software
//! drivers' cap whatever the length.
//!
//! Caches are `[slots, context, heads · D]`, in the activations' element type. A cursor is U32
//! `[rows, 2]`; a row whose cursor lies outside the cache writes nothing there and attends to
//! nothing (its output is zeros), so padding rows of a captured plan can point past the last slot.

use crate::batch::Batch;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::checks::{float_dtype, fold_grid, same_dtype, same_gpu, to_u32};
use crate::shaders::{entry_points, shader_params, KernelSpec, Prelude};
use crate::tensor::Tensor;

/// Keys one decode workgroup takes (`SPLIT` in the shader).
pub const DECODE_SPLIT: usize = 64;
/// The longest cache [`decode_attention`] takes: 1,024 splits, merged in one loop.
pub const MAX_CACHE_CONTEXT: usize = 1024 * DECODE_SPLIT;

shader_params! {
    struct Params {
        rows: u32,
        dim: u32,
        heads: u32,
        head_dim: u32,
        context: u32,
        slots: u32,
        splits: u32,
        vocab: u32,
        scale: f32,
        groups_x: u32,
        total: u32,
        src_rows: u32,
        q_dim: u32,
        kv_heads: u32,
        _pad2: u32,
        _pad3: u32,
    }
}
const _: () = assert!(std::mem::size_of::<Params>() == 64);

entry_points! {
    /// The entry points of `shaders/kv_cache.wgsl`.
    enum Entry {
        EmbedAt = "embed_at": Params,
        Append = "append": Params,
        DecodePartial = "decode_partial": Params,
        DecodeCombine = "decode_combine": Params,
        GatherRows = "gather_rows": Params,
    }
}

/// The contract of `shaders/kv_cache.wgsl`.
pub(crate) static KERNEL: KernelSpec = KernelSpec {
    name: "kv_cache",
    wgsl: include_str!("../../shaders/kv_cache.wgsl"),
    preludes: &[Prelude::Numerics],
    subgroup_preludes: None,
    dtypes: &[DType::F32, DType::F16],
    entries: ENTRY_POINTS,
    overrides: &[],
    override_sets: None,
    writes: &[6, 7, 8, 9],
};

/// Records `entry` with `params` at binding 0 and each tensor at its binding.
fn dispatch(
    batch: &mut Batch,
    entry: Entry,
    dtype: DType,
    params: &Params,
    bound: &[(u32, &Tensor)],
    grid: [u32; 3],
) -> Result<()> {
    let pipeline = batch
        .gpu()
        .pipeline(KERNEL.pipeline(entry, dtype, Vec::new()))?;
    batch.dispatch_bound(&pipeline, bytemuck::bytes_of(params), bound, grid)
}

fn u32_tensor(op: &'static str, t: &Tensor, what: &str) -> Result<()> {
    if t.dtype() != DType::U32 {
        return Err(Error::DtypeMismatch {
            op,
            details: format!("{what} must be U32, got {:?}", t.dtype()),
        });
    }
    Ok(())
}

/// Checks a cursor tensor (U32 `[rows, 2]`) and returns its rows.
fn cursor_rows(op: &'static str, cursor: &Tensor) -> Result<usize> {
    u32_tensor(op, cursor, "the cursor")?;
    match *cursor.shape() {
        [rows, 2] if rows > 0 => Ok(rows),
        [0, 2] => Err(Error::EmptyTensor { op }),
        _ => Err(Error::ShapeMismatch {
            op,
            details: format!(
                "the cursor must be [rows, 2] (slot, position), got {:?}",
                cursor.shape()
            ),
        }),
    }
}

/// The cache's (slots, context, dim), checked against the other cache.
fn cache_dims(op: &'static str, k: &Tensor, v: &Tensor) -> Result<(usize, usize, usize)> {
    same_dtype(op, &[k, v])?;
    match *k.shape() {
        [slots, context, dim] if v.shape() == k.shape() && slots > 0 && context > 0 && dim > 0 => {
            if context > MAX_CACHE_CONTEXT {
                return Err(Error::LimitExceeded {
                    what: format!("{op}: cache context"),
                    requested: context as u64,
                    limit: MAX_CACHE_CONTEXT as u64,
                });
            }
            Ok((slots, context, dim))
        }
        _ => Err(Error::ShapeMismatch {
            op,
            details: format!(
                "caches must be two equal [slots, context, dim], got {:?} and {:?}",
                k.shape(),
                v.shape()
            ),
        }),
    }
}

/// Checks `qkv` (`[rows, q_dim + 2 · dim]`: queries, then keys and values as wide as the caches)
/// against the cursor's rows and the cache width; returns q_dim.
fn check_qkv(op: &'static str, qkv: &Tensor, rows: usize, dim: usize) -> Result<usize> {
    match *qkv.shape() {
        [r, width] if r == rows && width > 2 * dim => Ok(width - 2 * dim),
        _ => Err(Error::ShapeMismatch {
            op,
            details: format!(
                "qkv must be [{rows}, queries + {}] for {rows} cursor rows and caches {dim} wide, \
                 got {:?}",
                2 * dim,
                qkv.shape()
            ),
        }),
    }
}

fn elementwise_grid(
    op: &'static str,
    batch: &Batch,
    rows: usize,
    dim: usize,
) -> Result<([u32; 3], u32, u32)> {
    let total = rows.checked_mul(dim).ok_or_else(|| Error::LimitExceeded {
        what: format!("{op}: output elements"),
        requested: u64::MAX,
        limit: u64::from(u32::MAX),
    })?;
    let total = to_u32(op, "output elements", total)?;
    let (grid, groups_x) = fold_grid(batch.gpu(), (total as usize).div_ceil(64))?;
    Ok((grid, groups_x, total))
}

/// `table[ids[r]] + positions[cursor[r].position]` for each row: ids U32 `[rows]`, cursor U32
/// `[rows, 2]`, table `[vocab, dim]`, positions `[context, dim]`; the output is `[rows, dim]`. An
/// id past the vocabulary or a position past the context adds nothing (check on the host).
pub fn embed_at(
    batch: &mut Batch,
    ids: &Tensor,
    cursor: &Tensor,
    table: &Tensor,
    positions: &Tensor,
) -> Result<Tensor> {
    const OP: &str = "embed_at";
    same_gpu(OP, batch, &[ids, cursor, table, positions])?;
    let dtype = float_dtype(OP, table)?;
    same_dtype(OP, &[table, positions])?;
    u32_tensor(OP, ids, "token ids")?;
    let rows = cursor_rows(OP, cursor)?;
    let (&[vocab, dim], &[context, pdim]) = (table.shape(), positions.shape()) else {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!(
                "table and positions must be [vocab, dim] and [context, dim], got {:?} and {:?}",
                table.shape(),
                positions.shape()
            ),
        });
    };
    if pdim != dim || ids.shape() != [rows] {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!(
                "ids {:?} for {rows} cursor rows, positions {dim} wide: got {:?}",
                [rows],
                ids.shape()
            ),
        });
    }
    let (grid, groups_x, total) = elementwise_grid(OP, batch, rows, dim)?;
    let out = Tensor::uninit(batch.gpu(), &[rows, dim], dtype)?;
    let params = Params {
        rows: rows as u32,
        dim: dim as u32,
        vocab: to_u32(OP, "vocabulary", vocab)?,
        context: to_u32(OP, "context", context)?,
        groups_x,
        total,
        ..Default::default()
    };
    dispatch(
        batch,
        Entry::EmbedAt,
        dtype,
        &params,
        &[(1, cursor), (2, ids), (3, table), (4, positions), (9, &out)],
        grid,
    )?;
    Ok(out)
}

/// Writes each row's key and value (from `qkv`, `[rows, q_dim + 2 · dim]`: queries, keys,
/// values) into `k_cache` and `v_cache` (`[slots, context, dim]`) at the row's cursor, in place.
pub fn cache_append(
    batch: &mut Batch,
    qkv: &Tensor,
    cursor: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
) -> Result<()> {
    const OP: &str = "cache_append";
    same_gpu(OP, batch, &[qkv, cursor, k_cache, v_cache])?;
    let dtype = float_dtype(OP, qkv)?;
    same_dtype(OP, &[qkv, k_cache])?;
    let rows = cursor_rows(OP, cursor)?;
    let (slots, context, dim) = cache_dims(OP, k_cache, v_cache)?;
    let q_dim = check_qkv(OP, qkv, rows, dim)?;
    let (grid, groups_x, total) = elementwise_grid(OP, batch, rows, dim)?;
    let params = Params {
        rows: rows as u32,
        dim: dim as u32,
        context: context as u32,
        slots: to_u32(OP, "slots", slots)?,
        q_dim: to_u32(OP, "query features", q_dim)?,
        groups_x,
        total,
        ..Default::default()
    };
    dispatch(
        batch,
        Entry::Append,
        dtype,
        &params,
        &[(1, cursor), (5, qkv), (6, k_cache), (7, v_cache)],
        grid,
    )
}

/// Attention of each row's query (`qkv`'s first `q_dim` columns, `heads` heads) to the keys and
/// values its slot holds at positions `0..=position`: `[rows, q_dim]`, scaled by 1/√D. Grouped
/// queries: the caches may hold fewer key/value heads (their width over the head width) than
/// there are query heads, each shared by `heads / kv_heads` of them. Rows may belong to
/// different sequences of different lengths; the cache must already hold each row's own key
/// ([`cache_append`] first).
pub fn decode_attention(
    batch: &mut Batch,
    qkv: &Tensor,
    cursor: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    heads: usize,
) -> Result<Tensor> {
    const OP: &str = "decode_attention";
    same_gpu(OP, batch, &[qkv, cursor, k_cache, v_cache])?;
    let dtype = float_dtype(OP, qkv)?;
    same_dtype(OP, &[qkv, k_cache])?;
    let rows = cursor_rows(OP, cursor)?;
    let (slots, context, dim) = cache_dims(OP, k_cache, v_cache)?;
    let q_dim = check_qkv(OP, qkv, rows, dim)?;
    let head_dim = q_dim.checked_div(heads).unwrap_or(0);
    let kv_heads = dim.checked_div(head_dim).unwrap_or(0);
    let fits = heads > 0
        && head_dim > 0
        && q_dim == heads * head_dim
        && dim == kv_heads * head_dim
        && heads.is_multiple_of(kv_heads)
        && head_dim <= super::attention::MAX_HEAD_DIM;
    if !fits {
        return Err(Error::InvalidArgument {
            op: OP,
            details: format!(
                "{q_dim} query features must split into {heads} heads of at most {}, and the \
                 caches' {dim} into key/value heads as wide, {heads} a multiple of their number",
                super::attention::MAX_HEAD_DIM
            ),
        });
    }
    let splits = context.div_ceil(DECODE_SPLIT);
    // rows · heads · splits workgroups, each writing head_dim + 2 partial values.
    let groups = rows
        .checked_mul(heads)
        .and_then(|n| n.checked_mul(splits))
        .ok_or_else(|| Error::LimitExceeded {
            what: format!("{OP}: workgroups"),
            requested: u64::MAX,
            limit: u64::from(u32::MAX),
        })?;
    let groups_u32 = to_u32(OP, "workgroups", groups)?;
    let partial_len = groups
        .checked_mul(head_dim + 2)
        .ok_or_else(|| Error::LimitExceeded {
            what: format!("{OP}: partials"),
            requested: u64::MAX,
            limit: u64::from(u32::MAX),
        })?;
    to_u32(OP, "partials", partial_len)?;
    let gpu = batch.gpu().clone();
    let partials = Tensor::uninit(&gpu, &[partial_len], DType::F32)?;
    let out = Tensor::uninit(&gpu, &[rows, q_dim], dtype)?;
    let (grid, groups_x) = fold_grid(&gpu, groups)?;
    let mut params = Params {
        rows: rows as u32,
        dim: dim as u32,
        heads: heads as u32,
        head_dim: head_dim as u32,
        context: context as u32,
        slots: to_u32(OP, "slots", slots)?,
        splits: splits as u32,
        scale: 1.0 / (head_dim as f32).sqrt(),
        groups_x,
        total: groups_u32,
        q_dim: q_dim as u32,
        kv_heads: kv_heads as u32,
        ..Default::default()
    };
    let bound = [
        (1, cursor),
        (5, qkv),
        (6, k_cache),
        (7, v_cache),
        (8, &partials),
    ];
    dispatch(batch, Entry::DecodePartial, dtype, &params, &bound, grid)?;
    let (grid, groups_x, total) = elementwise_grid(OP, batch, rows, q_dim)?;
    params.groups_x = groups_x;
    params.total = total;
    let bound = [(1, cursor), (8, &partials), (9, &out)];
    dispatch(batch, Entry::DecodeCombine, dtype, &params, &bound, grid)?;
    Ok(out)
}

/// Rows of `x` (`[n, dim]`) picked by `index` (U32 `[m]`): `[m, dim]`. An index past `n` gives
/// a row of zeros.
pub fn gather_rows(batch: &mut Batch, x: &Tensor, index: &Tensor) -> Result<Tensor> {
    const OP: &str = "gather_rows";
    same_gpu(OP, batch, &[x, index])?;
    let dtype = float_dtype(OP, x)?;
    u32_tensor(OP, index, "the index")?;
    let (&[n, dim], &[m]) = (x.shape(), index.shape()) else {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!(
                "x must be [n, dim] and the index [m], got {:?} and {:?}",
                x.shape(),
                index.shape()
            ),
        });
    };
    if n == 0 || dim == 0 || m == 0 {
        return Err(Error::EmptyTensor { op: OP });
    }
    let (grid, groups_x, total) = elementwise_grid(OP, batch, m, dim)?;
    let out = Tensor::uninit(batch.gpu(), &[m, dim], dtype)?;
    let params = Params {
        rows: m as u32,
        dim: dim as u32,
        src_rows: to_u32(OP, "rows", n)?,
        groups_x,
        total,
        ..Default::default()
    };
    dispatch(
        batch,
        Entry::GatherRows,
        dtype,
        &params,
        &[(2, index), (5, x), (9, &out)],
        grid,
    )?;
    Ok(out)
}

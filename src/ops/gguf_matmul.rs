//! y = x · dequant(W)ᵀ with W `[N, K]` kept on the GPU in a GGUF file's block layout (Q4_0,
//! Q4_1, Q8_0, Q4_K, Q5_K, Q6_K, or F32/F16/BF16), dequantized inside the kernel: SmolLM2's Q4_1
//! weights take 0.16 of their f32 bytes.

use crate::batch::Batch;
use crate::dtype::{DType, GgmlType};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops::checks::{fold_grid, same_gpu, to_u32};
use crate::shaders::{entry_points, KernelSpec, Override};
use crate::tensor::Tensor;

crate::shaders::shader_params! {
    struct Params {
        rows: u32,
        n: u32,
        k: u32,
        row_bytes: u32,
        groups_x: u32,
        out_stride: u32,
        out_offset: u32,
        _pad0: u32,
    }
}

entry_points! {
    /// The entry points of `shaders/gguf_matmul.wgsl`.
    enum Entry {
        Main = "main": Params,
        Gather = "gather": Params,
    }
}

/// The contract of `shaders/gguf_matmul.wgsl`.
pub(crate) static KERNEL: KernelSpec = KernelSpec {
    name: "gguf_matmul",
    wgsl: include_str!("../../shaders/gguf_matmul.wgsl"),
    preludes: &[],
    subgroup_preludes: None,
    dtypes: &[DType::F32],
    entries: ENTRY_POINTS,
    overrides: &[
        Override {
            name: "FORMAT",
            values: &[0, 1, 2, 3, 4, 5, 6, 7, 8],
        },
        Override {
            name: "ROWS",
            values: &[1, 4],
        },
    ],
    override_sets: None,
    writes: &[2],
};

/// Most blocks in a weight row: each thread loops over them once (Mesa's software drivers stop a
/// loop past 65,535 iterations).
pub const MAX_ROW_BLOCKS: usize = 65_535;

/// The shader's code of a storage type.
fn format_code(t: GgmlType) -> u32 {
    match t {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::BF16 => 2,
        GgmlType::Q4_0 => 3,
        GgmlType::Q4_1 => 4,
        GgmlType::Q8_0 => 5,
        GgmlType::Q4K => 6,
        GgmlType::Q5K => 7,
        GgmlType::Q6K => 8,
    }
}

/// A weight matrix `[n, k]` on the GPU in its GGUF blocks.
#[derive(Debug, Clone)]
pub struct GgufWeights {
    /// The blocks, packed into U32 words (the last word zero-padded, and one word of zeros past
    /// it, which the kernels' unaligned word reads may touch).
    pub data: Tensor,
    /// Their storage type.
    pub ggml_type: GgmlType,
    /// Output channels (rows).
    pub n: usize,
    /// Inputs (a whole number of the type's blocks).
    pub k: usize,
}

impl GgufWeights {
    /// Uploads `bytes`: `n` rows of `k / block values` blocks of `ggml_type`, as a GGUF tensor of
    /// dimensions `[k, n]` stores them.
    pub fn new(gpu: &Gpu, ggml_type: GgmlType, bytes: &[u8], n: usize, k: usize) -> Result<Self> {
        const OP: &str = "GgufWeights::new";
        let per_block = ggml_type.block_values();
        if n == 0 || k == 0 || !k.is_multiple_of(per_block) {
            return Err(Error::InvalidArgument {
                op: OP,
                details: format!(
                    "[{n}, {k}] is not rows of whole {} blocks of {per_block}",
                    ggml_type.name()
                ),
            });
        }
        if k / per_block > MAX_ROW_BLOCKS {
            return Err(Error::LimitExceeded {
                what: format!("{OP}: blocks per row (a per-thread loop)"),
                requested: (k / per_block) as u64,
                limit: MAX_ROW_BLOCKS as u64,
            });
        }
        let row_bytes = k / per_block * ggml_type.block_bytes();
        let expected = n.checked_mul(row_bytes).ok_or(Error::LimitExceeded {
            what: format!("{OP}: weight bytes"),
            requested: u64::MAX,
            limit: u64::from(u32::MAX),
        })?;
        if bytes.len() != expected {
            return Err(Error::DataLength {
                expected,
                found: bytes.len(),
            });
        }
        to_u32(OP, "weight bytes", expected)?;
        let mut words = vec![0u32; expected.div_ceil(4) + 1];
        for (i, chunk) in bytes.chunks(4).enumerate() {
            let mut b = [0u8; 4];
            b[..chunk.len()].copy_from_slice(chunk);
            words[i] = u32::from_le_bytes(b);
        }
        let len = words.len();
        Ok(GgufWeights {
            data: Tensor::from_slice(gpu, &words, &[len])?,
            ggml_type,
            n,
            k,
        })
    }

    /// Bytes of one row's blocks.
    pub fn row_bytes(&self) -> usize {
        self.k / self.ggml_type.block_values() * self.ggml_type.block_bytes()
    }

    /// Bytes the weights take on the GPU.
    pub fn size_bytes(&self) -> u64 {
        self.data.size_bytes()
    }
}

/// Rows of x one thread of the kernel applies each block to: 4 where there are more than one
/// (the four rows' sums in the lanes of one vector), else 1.
fn tile_rows(rows: usize) -> usize {
    if rows > 1 {
        4
    } else {
        1
    }
}

/// y = x · dequant(W)ᵀ: x `[rows, k]` f32, y `[rows, n]` f32.
pub fn gguf_matmul(batch: &mut Batch, x: &Tensor, w: &GgufWeights) -> Result<Tensor> {
    let rows = check_x("gguf_matmul", x, w)?;
    let y = Tensor::uninit(batch.gpu(), &[rows, w.n], DType::F32)?;
    record(batch, x, w, &y, 0)?;
    Ok(y)
}

/// x · dequant(W)ᵀ written into columns `column..column + n` of `y` (`[rows, width]` f32), the
/// rest of `y` left as it is: the products of several weights side by side in one tensor.
pub fn gguf_matmul_into(
    batch: &mut Batch,
    x: &Tensor,
    w: &GgufWeights,
    y: &Tensor,
    column: usize,
) -> Result<()> {
    const OP: &str = "gguf_matmul_into";
    let rows = check_x(OP, x, w)?;
    let fits = match *y.shape() {
        [r, width] => r == rows && column.checked_add(w.n).is_some_and(|end| end <= width),
        _ => false,
    };
    if y.dtype() != DType::F32 || !fits {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!(
                "y must be f32 [{rows}, at least {column} + {}], got {:?} {:?}",
                w.n,
                y.dtype(),
                y.shape()
            ),
        });
    }
    same_gpu(OP, batch, &[y])?;
    record(batch, x, w, y, column)
}

/// Checks x (f32 `[rows, k]`) against the weights; returns its rows.
fn check_x(op: &'static str, x: &Tensor, w: &GgufWeights) -> Result<usize> {
    if x.dtype() != DType::F32 {
        return Err(Error::DtypeMismatch {
            op,
            details: format!("x must be f32, got {:?}", x.dtype()),
        });
    }
    let &[rows, k] = x.shape() else {
        return Err(Error::ShapeMismatch {
            op,
            details: format!("x must be [rows, {}], got {:?}", w.k, x.shape()),
        });
    };
    if k != w.k {
        return Err(Error::ShapeMismatch {
            op,
            details: format!("x has {k} inputs, the weights {}", w.k),
        });
    }
    if rows == 0 {
        return Err(Error::EmptyTensor { op });
    }
    Ok(rows)
}

fn record(batch: &mut Batch, x: &Tensor, w: &GgufWeights, y: &Tensor, column: usize) -> Result<()> {
    const OP: &str = "gguf_matmul";
    same_gpu(OP, batch, &[x, &w.data])?;
    let rows = x.shape()[0];
    let tile = tile_rows(rows);
    // A workgroup per (64 weight rows, tile of x's rows).
    let groups = rows
        .div_ceil(tile)
        .checked_mul(w.n.div_ceil(64))
        .filter(|_| rows.checked_mul(y.shape()[1]).is_some())
        .ok_or(Error::LimitExceeded {
            what: format!("{OP}: workgroups"),
            requested: u64::MAX,
            limit: u64::from(u32::MAX),
        })?;
    to_u32(OP, "output elements", rows * y.shape()[1])?;
    let (grid, groups_x) = fold_grid(batch.gpu(), groups)?;
    let params = Params {
        rows: to_u32(OP, "rows", rows)?,
        n: to_u32(OP, "outputs", w.n)?,
        k: to_u32(OP, "inputs", w.k)?,
        row_bytes: to_u32(OP, "row bytes", w.row_bytes())?,
        groups_x,
        out_stride: to_u32(OP, "output width", y.shape()[1])?,
        out_offset: to_u32(OP, "output column", column)?,
        ..Default::default()
    };
    let pipeline = batch.gpu().pipeline(KERNEL.pipeline(
        Entry::Main,
        DType::F32,
        vec![("FORMAT", format_code(w.ggml_type)), ("ROWS", tile as u32)],
    ))?;
    batch.dispatch_bound(
        &pipeline,
        bytemuck::bytes_of(&params),
        &[(1, x), (2, y), (3, &w.data)],
        grid,
    )
}

/// Rows of dequant(W) picked by `ids` (U32 `[rows]`): `[rows, k]` f32, an embedding lookup in a
/// table kept in its blocks. An id past the table's `n` rows gives zeros (check ids on the host:
/// [`crate::ops::check_ids`]).
pub fn gguf_gather(batch: &mut Batch, w: &GgufWeights, ids: &Tensor) -> Result<Tensor> {
    const OP: &str = "gguf_gather";
    same_gpu(OP, batch, &[ids, &w.data])?;
    if ids.dtype() != DType::U32 || ids.shape().len() != 1 {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!(
                "ids must be U32 [rows], got {:?} {:?}",
                ids.dtype(),
                ids.shape()
            ),
        });
    }
    let rows = ids.shape()[0];
    if rows == 0 {
        return Err(Error::EmptyTensor { op: OP });
    }
    let outputs = rows.checked_mul(w.k).ok_or(Error::LimitExceeded {
        what: format!("{OP}: outputs"),
        requested: u64::MAX,
        limit: u64::from(u32::MAX),
    })?;
    to_u32(OP, "outputs", outputs)?;
    let y = Tensor::uninit(batch.gpu(), &[rows, w.k], DType::F32)?;
    let (grid, groups_x) = fold_grid(batch.gpu(), outputs.div_ceil(64))?;
    let params = Params {
        rows: rows as u32,
        n: to_u32(OP, "table rows", w.n)?,
        k: to_u32(OP, "table width", w.k)?,
        row_bytes: to_u32(OP, "row bytes", w.row_bytes())?,
        groups_x,
        out_stride: w.k as u32,
        ..Default::default()
    };
    let pipeline = batch.gpu().pipeline(KERNEL.pipeline(
        Entry::Gather,
        DType::F32,
        vec![("FORMAT", format_code(w.ggml_type))],
    ))?;
    batch.dispatch_bound(
        &pipeline,
        bytemuck::bytes_of(&params),
        &[(2, &y), (3, &w.data), (4, ids)],
        grid,
    )?;
    Ok(y)
}

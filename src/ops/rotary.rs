//! The pieces of a Llama block that the other kernel families lack: rotary position embeddings
//! ([`rope`], forward and inverse) on the query and key heads of packed qkv rows, and the SwiGLU
//! MLP's gate ([`swiglu`], [`swiglu_backward`]).

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::ops::checks::{float_dtype, fold_grid, same_dtype, same_gpu, to_u32};
use crate::shaders::{entry_points, shader_params, KernelSpec, Override};
use crate::tensor::Tensor;

shader_params! {
    struct Params {
        rows: u32,
        width: u32,
        heads: u32,
        head_dim: u32,
        rope_dims: u32,
        log2_base: f32,
        groups_x: u32,
        total: u32,
    }
}
const _: () = assert!(std::mem::size_of::<Params>() == 32);

entry_points! {
    /// The entry points of `shaders/rotary.wgsl`.
    enum Entry {
        Rope = "rope": Params,
        Swiglu = "swiglu": Params,
        SwigluBack = "swiglu_back": Params,
    }
}

/// The contract of `shaders/rotary.wgsl`.
pub(crate) static KERNEL: KernelSpec = KernelSpec {
    name: "rotary",
    wgsl: include_str!("../../shaders/rotary.wgsl"),
    preludes: &[],
    subgroup_preludes: None,
    dtypes: &[crate::dtype::DType::F32, crate::dtype::DType::F16],
    entries: ENTRY_POINTS,
    overrides: &[Override {
        name: "INVERSE",
        values: &[0, 1],
    }],
    override_sets: None,
    writes: &[2, 4],
};

/// How rotary embeddings apply to packed qkv rows `[rows, (heads + 2 · kv_heads) · head_dim]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rotary {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Each head's width.
    pub head_dim: usize,
    /// Dimensions turned in each head (its first ones; even, at most `head_dim`).
    pub rope_dims: usize,
    /// The base of the frequencies (10,000 in the original; 100,000 in SmolLM2).
    pub base: f32,
}

impl Rotary {
    /// A qkv row's length.
    pub fn row_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    fn check(&self, op: &'static str) -> Result<()> {
        let fits = self.heads > 0
            && self.kv_heads > 0
            && self.head_dim > 0
            && self.rope_dims > 0
            && self.rope_dims.is_multiple_of(2)
            && self.rope_dims <= self.head_dim
            && self.base.is_finite()
            && self.base > 1.0;
        if !fits {
            return Err(Error::InvalidArgument {
                op,
                details: format!(
                    "{self:?}: heads, key/value heads and widths must be positive, rope_dims even \
                     and at most head_dim, the base finite and above 1"
                ),
            });
        }
        Ok(())
    }
}

fn u32_cursor(op: &'static str, cursor: &Tensor, rows: usize) -> Result<()> {
    if cursor.dtype() != crate::dtype::DType::U32 || cursor.shape() != [rows, 2] {
        return Err(Error::ShapeMismatch {
            op,
            details: format!(
                "the cursor must be U32 [{rows}, 2] (slot, position), got {:?} {:?}",
                cursor.dtype(),
                cursor.shape()
            ),
        });
    }
    Ok(())
}

fn grid(op: &'static str, batch: &Batch, total: usize) -> Result<([u32; 3], u32, u32)> {
    let total = to_u32(op, "threads", total)?;
    let (grid, groups_x) = fold_grid(batch.gpu(), (total as usize).div_ceil(64))?;
    Ok((grid, groups_x, total))
}

/// Turns the query and key heads of `qkv` (`[rows, rotary.row_width()]`, in place) by each row's
/// position (`cursor`, U32 `[rows, 2]`: slot, position); `inverse` turns them back (the
/// backward pass of the rotation).
pub fn rope(
    batch: &mut Batch,
    qkv: &Tensor,
    cursor: &Tensor,
    rotary: &Rotary,
    inverse: bool,
) -> Result<()> {
    const OP: &str = "rope";
    same_gpu(OP, batch, &[qkv, cursor])?;
    let dtype = float_dtype(OP, qkv)?;
    rotary.check(OP)?;
    let &[rows, width] = qkv.shape() else {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!("qkv must be [rows, width], got {:?}", qkv.shape()),
        });
    };
    if width != rotary.row_width() || rows == 0 {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!(
                "qkv must be [rows > 0, {}] for {rotary:?}, got {:?}",
                rotary.row_width(),
                qkv.shape()
            ),
        });
    }
    u32_cursor(OP, cursor, rows)?;
    let heads = rotary.heads + rotary.kv_heads;
    let total = rows
        .checked_mul(heads * rotary.rope_dims / 2)
        .ok_or(Error::LimitExceeded {
            what: format!("{OP}: threads"),
            requested: u64::MAX,
            limit: u64::from(u32::MAX),
        })?;
    let (grid, groups_x, total) = grid(OP, batch, total)?;
    to_u32(OP, "qkv elements", qkv.numel())?;
    let params = Params {
        rows: rows as u32,
        width: width as u32,
        heads: heads as u32,
        head_dim: rotary.head_dim as u32,
        rope_dims: rotary.rope_dims as u32,
        log2_base: rotary.base.log2(),
        groups_x,
        total,
    };
    let pipeline = batch.gpu().pipeline(KERNEL.pipeline(
        Entry::Rope,
        dtype,
        vec![("INVERSE", u32::from(inverse))],
    ))?;
    batch.dispatch_bound(
        &pipeline,
        bytemuck::bytes_of(&params),
        &[(1, cursor), (2, qkv)],
        grid,
    )
}

/// The hidden width of gate and up products side by side (`[rows, 2 · hidden]`).
fn gate_up_hidden(op: &'static str, gu: &Tensor) -> Result<(usize, usize)> {
    match *gu.shape() {
        [rows, w] if rows > 0 && w > 0 && w.is_multiple_of(2) => Ok((rows, w / 2)),
        _ => Err(Error::ShapeMismatch {
            op,
            details: format!(
                "gate and up side by side must be [rows, 2 · hidden], got {:?}",
                gu.shape()
            ),
        }),
    }
}

/// silu(gate) · up from `gu` `[rows, 2 · hidden]` (gate columns first): `[rows, hidden]`.
pub fn swiglu(batch: &mut Batch, gu: &Tensor) -> Result<Tensor> {
    const OP: &str = "swiglu";
    same_gpu(OP, batch, &[gu])?;
    let dtype = float_dtype(OP, gu)?;
    let (rows, hidden) = gate_up_hidden(OP, gu)?;
    let out = Tensor::uninit(batch.gpu(), &[rows, hidden], dtype)?;
    let (grid, groups_x, total) = grid(OP, batch, gu.numel() / 2)?;
    to_u32(OP, "elements", gu.numel())?;
    let params = Params {
        rows: rows as u32,
        width: hidden as u32,
        groups_x,
        total,
        ..Default::default()
    };
    let pipeline = batch
        .gpu()
        .pipeline(KERNEL.pipeline(Entry::Swiglu, dtype, Vec::new()))?;
    batch.dispatch_bound(
        &pipeline,
        bytemuck::bytes_of(&params),
        &[(3, gu), (4, &out)],
        grid,
    )?;
    Ok(out)
}

/// dL/d(gu) of [`swiglu`] from its input and dL/d(out): `[rows, 2 · hidden]`, gate then up.
pub fn swiglu_backward(batch: &mut Batch, gu: &Tensor, grad_out: &Tensor) -> Result<Tensor> {
    const OP: &str = "swiglu_backward";
    same_gpu(OP, batch, &[gu, grad_out])?;
    same_dtype(OP, &[gu, grad_out])?;
    let dtype = float_dtype(OP, gu)?;
    let (rows, hidden) = gate_up_hidden(OP, gu)?;
    if grad_out.shape() != [rows, hidden] {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!(
                "dL/d(out) must be [{rows}, {hidden}], got {:?}",
                grad_out.shape()
            ),
        });
    }
    let grad = Tensor::uninit(batch.gpu(), gu.shape(), dtype)?;
    let (grid, groups_x, total) = grid(OP, batch, rows * hidden)?;
    to_u32(OP, "elements", gu.numel())?;
    let params = Params {
        rows: rows as u32,
        width: hidden as u32,
        groups_x,
        total,
        ..Default::default()
    };
    let pipeline = batch
        .gpu()
        .pipeline(KERNEL.pipeline(Entry::SwigluBack, dtype, Vec::new()))?;
    batch.dispatch_bound(
        &pipeline,
        bytemuck::bytes_of(&params),
        &[(2, grad_out), (3, gu), (4, &grad)],
        grid,
    )?;
    Ok(grad)
}

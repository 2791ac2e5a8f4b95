//! Multi-head scaled dot-product attention, fused in the FlashAttention manner, with its backward
//! pass; and the naive path (scores materialised through matmul and softmax), kept as the GPU
//! reference and the benchmarks' baseline.
//!
//! The input is a fused projection's output: `qkv` is `[batch, T, 3 · heads · D]`, each token's row
//! holding its query, key and value for every head (`[3, heads, D]`, as nanoGPT's `c_attn` splits
//! it). The output is `[batch, T, heads · D]`. Masks: causal (a query sees keys at or before it) and
//! per-sequence lengths (keys at or past `lengths[b]` are padding). A query that sees no key gets
//! zeros. The fused forward keeps the row log-sum-exp of the scores (`[batch, heads, T]`, f32), from
//! which the backward recomputes the probabilities; neither materialises the T×T scores, and
//! neither uses atomics: results are the same from run to run.

use crate::batch::Batch;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::checks::{float_dtype, fold_grid, same_dtype, same_gpu, to_u32};
use crate::ops::matmul::{matmul, MatmulOptions, Transposes};
use crate::ops::softmax::{softmax, softmax_backward};
use crate::shaders::{entry_points, shader_params, KernelSpec};
use crate::tensor::Tensor;

/// The largest head dimension the fused kernels take (their tiles hold 128 values per row).
pub const MAX_HEAD_DIM: usize = 128;

/// Threads per workgroup: positions per block of the fused kernels.
const WG: usize = 64;

shader_params! {
    struct Params {
        batch: u32,
        seq: u32,
        heads: u32,
        head_dim: u32,
        chunk_keys: u32,
        chunks: u32,
        chunk: u32,
        scale: f32,
        causal: u32,
        has_lengths: u32,
        sections: u32,
        total: u32,
        groups_x: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}
const _: () = assert!(std::mem::size_of::<Params>() == 64);

entry_points! {
    /// The entry points of `shaders/attention.wgsl`.
    enum Entry {
        Forward = "forward": Params,
        ForwardCombine = "forward_combine": Params,
        BackwardDelta = "backward_delta": Params,
        BackwardDq = "backward_dq": Params,
        BackwardDkv = "backward_dkv": Params,
        StorePartials = "store_partials": Params,
        SplitHeads = "split_heads": Params,
        MergeHeads = "merge_heads": Params,
        MaskScale = "mask_scale": Params,
    }
}

/// The contract of `shaders/attention.wgsl`.
pub(crate) static KERNEL: KernelSpec = KernelSpec {
    name: "attention",
    wgsl: include_str!("../../shaders/attention.wgsl"),
    preludes: &[],
    subgroup_preludes: None,
    dtypes: &[DType::F32, DType::F16],
    entries: ENTRY_POINTS,
    overrides: &[],
    override_sets: None,
    writes: &[1, 2, 3, 6, 7, 8],
};

/// How attention is masked and scaled.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttentionOptions<'a> {
    /// Heads: `qkv`'s last side is `3 · heads · D`.
    pub heads: usize,
    /// A query sees only keys at or before its own position.
    pub causal: bool,
    /// Valid tokens of each sequence (U32, `[batch]`): keys at or past it are masked. `None`: all.
    pub lengths: Option<&'a Tensor>,
    /// The scores' scale; `None`: 1/√D.
    pub scale: Option<f32>,
}

/// The fused forward's results: the output and what its backward reads.
#[derive(Debug, Clone)]
pub struct Attention {
    /// `[batch, T, heads · D]`.
    pub out: Tensor,
    /// The log-sum-exp of each row of scaled, masked scores, `[batch, heads, T]` (f32; +inf for a
    /// query that sees no key).
    pub lse: Tensor,
}

/// Which kernels a dispatch's chunking is for.
#[derive(Debug, Clone, Copy)]
enum Pass {
    Forward,
    Backward,
}

/// Checked sizes of one attention.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
    scale: f32,
}

impl Dims {
    fn rows(&self) -> usize {
        self.batch * self.heads * self.seq
    }
    fn d4(&self) -> usize {
        self.head_dim.div_ceil(4)
    }
    fn blocks(&self) -> usize {
        self.seq.div_ceil(WG)
    }
    /// Positions one dispatch walks along the other axis, counted as if no compiler unrolled a
    /// loop: the forward's threads loop about 1.25 · D/4 times per key (two keys per iteration,
    /// two loops over D/4 each), the backward's at most 2.5 · D/4 times per key or query, so no
    /// invocation loops more than about 40,000 times (the software drivers' cap is 65,535). A
    /// multiple of 4. At D = 64: 1,664 keys forward, 908 backward.
    fn chunk_keys(&self, pass: Pass) -> usize {
        let per_position = match pass {
            Pass::Forward => 5 * self.d4() / 4 + 4,
            Pass::Backward => 5 * self.d4() / 2 + 4,
        };
        (40_000 / per_position / 4 * 4).clamp(4, 16_384)
    }
    fn chunks(&self, pass: Pass) -> usize {
        self.seq.div_ceil(self.chunk_keys(pass))
    }
}

fn check(
    op: &'static str,
    batch: &Batch,
    qkv: &Tensor,
    options: &AttentionOptions,
) -> Result<Dims> {
    let mut all = vec![qkv];
    all.extend(options.lengths);
    same_gpu(op, batch, &all)?;
    float_dtype(op, qkv)?;
    let mismatch = |details: String| Err(Error::ShapeMismatch { op, details });
    let &[b, t, width] = qkv.shape() else {
        return mismatch(format!(
            "qkv must be [batch, T, 3 · heads · head_dim], got {:?}",
            qkv.shape()
        ));
    };
    let heads = options.heads;
    if heads == 0 || width % (3 * heads) != 0 {
        return mismatch(format!(
            "qkv's last side {width} is not 3 · heads · head_dim for {heads} heads"
        ));
    }
    let head_dim = width / (3 * heads);
    if head_dim > MAX_HEAD_DIM {
        return Err(Error::LimitExceeded {
            what: format!("{op}: head dimension"),
            requested: head_dim as u64,
            limit: MAX_HEAD_DIM as u64,
        });
    }
    if let Some(lengths) = options.lengths {
        if lengths.dtype() != DType::U32 || lengths.shape() != [b] {
            return mismatch(format!(
                "lengths must be U32 [{b}], got {:?} {:?}",
                lengths.dtype(),
                lengths.shape()
            ));
        }
    }
    let scale = match options.scale {
        Some(s) if !s.is_finite() => {
            return Err(Error::InvalidArgument {
                op,
                details: format!("scale must be finite, got {s}"),
            })
        }
        Some(s) => s,
        None => 1.0 / (head_dim as f32).sqrt(),
    };
    let dims = Dims {
        batch: b,
        seq: t,
        heads,
        head_dim,
        scale,
    };
    // Every index the kernels form stays within u32: qkv is the largest tensor they touch, and the
    // naive path's scores are [batch · heads, T, T].
    to_u32(op, "batch · heads", b.saturating_mul(heads))?;
    to_u32(op, "query blocks", dims.blocks())?;
    Ok(dims)
}

impl Dims {
    fn params(&self, options: &AttentionOptions, pass: Pass) -> Params {
        Params {
            batch: self.batch as u32,
            seq: self.seq as u32,
            heads: self.heads as u32,
            head_dim: self.head_dim as u32,
            chunk_keys: self.chunk_keys(pass) as u32,
            chunks: self.chunks(pass) as u32,
            scale: self.scale,
            causal: u32::from(options.causal),
            has_lengths: u32::from(options.lengths.is_some()),
            ..Default::default()
        }
    }
}

/// The lengths tensor to bind: the caller's, or (unread without lengths) `qkv`, which every
/// dispatch that binds lengths only reads: nothing is allocated or written per call.
fn lengths_or<'a>(options: &AttentionOptions<'a>, qkv: &'a Tensor) -> &'a Tensor {
    options.lengths.unwrap_or(qkv)
}

/// Fused attention of `qkv` (see the module documentation): out `[batch, T, heads · D]` and the
/// row log-sum-exp its backward needs.
pub fn attention(batch: &mut Batch, qkv: &Tensor, options: &AttentionOptions) -> Result<Attention> {
    const OP: &str = "attention";
    let d = check(OP, batch, qkv, options)?;
    let gpu = batch.gpu().clone();
    let out = Tensor::uninit(&gpu, &[d.batch, d.seq, d.heads * d.head_dim], qkv.dtype())?;
    let lse = Tensor::uninit(&gpu, &[d.batch, d.heads, d.seq], DType::F32)?;
    let lengths = lengths_or(options, qkv);
    let chunks = d.chunks(Pass::Forward);
    let (partial, partial_ml) = if chunks > 1 {
        (
            Tensor::uninit(&gpu, &[d.rows() * d.d4() * 4], DType::F32)?,
            Tensor::uninit(&gpu, &[d.rows() * 2], DType::F32)?,
        )
    } else {
        (
            Tensor::uninit(&gpu, &[4], DType::F32)?,
            Tensor::uninit(&gpu, &[2], DType::F32)?,
        )
    };
    let pipeline = gpu.pipeline(KERNEL.pipeline(Entry::Forward, qkv.dtype(), Vec::new()))?;
    let grid = [d.blocks() as u32, (d.batch * d.heads) as u32, 1];
    for chunk in 0..chunks {
        let params = Params {
            chunk: chunk as u32,
            ..d.params(options, Pass::Forward)
        };
        batch.dispatch_bound(
            &pipeline,
            bytemuck::bytes_of(&params),
            &[
                (1, qkv),
                (2, &out),
                (3, &lse),
                (4, lengths),
                (7, &partial),
                (8, &partial_ml),
            ],
            grid,
        )?;
    }
    if chunks > 1 {
        let total = d.rows() * d.d4();
        let (grid, groups_x) = fold_grid(&gpu, total.div_ceil(WG))?;
        let params = Params {
            total: to_u32(OP, "rows · head_dim / 4", total)?,
            groups_x,
            ..d.params(options, Pass::Forward)
        };
        let pipeline =
            gpu.pipeline(KERNEL.pipeline(Entry::ForwardCombine, qkv.dtype(), Vec::new()))?;
        batch.dispatch_bound(
            &pipeline,
            bytemuck::bytes_of(&params),
            &[(2, &out), (3, &lse), (7, &partial), (8, &partial_ml)],
            grid,
        )?;
    }
    Ok(Attention { out, lse })
}

/// Checks that the forward's output and row log-sum-exp, and `grad_out`, fit the attention `d`.
fn check_backward_shapes(d: &Dims, forward: &Attention, grad_out: &Tensor) -> Result<()> {
    const OP: &str = "attention_backward";
    let out_shape = [d.batch, d.seq, d.heads * d.head_dim];
    if forward.out.shape() != out_shape
        || grad_out.shape() != out_shape
        || forward.lse.shape() != [d.batch, d.heads, d.seq]
        || forward.lse.dtype() != DType::F32
    {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!(
                "out and grad_out must be {out_shape:?} and lse f32 [{}, {}, {}], got {:?}, {:?} \
                 and {:?} {:?}",
                d.batch,
                d.heads,
                d.seq,
                forward.out.shape(),
                grad_out.shape(),
                forward.lse.dtype(),
                forward.lse.shape()
            ),
        });
    }
    Ok(())
}

/// dL/d(qkv) of the fused attention, from its forward's results and dL/d(out) (`[batch, T,
/// heads · D]`), with the forward's options. The probabilities are recomputed tile by tile from
/// the saved log-sum-exp.
pub fn attention_backward(
    batch: &mut Batch,
    qkv: &Tensor,
    forward: &Attention,
    grad_out: &Tensor,
    options: &AttentionOptions,
) -> Result<Tensor> {
    const OP: &str = "attention_backward";
    let d = check(OP, batch, qkv, options)?;
    same_gpu(OP, batch, &[&forward.out, &forward.lse, grad_out])?;
    same_dtype(OP, &[qkv, &forward.out, grad_out])?;
    check_backward_shapes(&d, forward, grad_out)?;
    let gpu = batch.gpu().clone();
    let dtype = qkv.dtype();
    let dqkv = Tensor::uninit(&gpu, qkv.shape(), dtype)?;
    let lengths = lengths_or(options, qkv);
    // delta = Σ_d dO ⊙ O per row.
    let rows = d.rows();
    let delta = Tensor::uninit(&gpu, &[rows], DType::F32)?;
    {
        let (grid, groups_x) = fold_grid(&gpu, rows.div_ceil(WG))?;
        let params = Params {
            total: to_u32(OP, "rows", rows)?,
            groups_x,
            ..d.params(options, Pass::Backward)
        };
        let pipeline = gpu.pipeline(KERNEL.pipeline(Entry::BackwardDelta, dtype, Vec::new()))?;
        batch.dispatch_bound(
            &pipeline,
            bytemuck::bytes_of(&params),
            &[(2, &forward.out), (5, grad_out), (6, &delta)],
            grid,
        )?;
    }
    let chunks = d.chunks(Pass::Backward);
    let partial = if chunks > 1 {
        Tensor::uninit(&gpu, &[3 * rows * d.d4() * 4], DType::F32)?
    } else {
        Tensor::uninit(&gpu, &[4], DType::F32)?
    };
    let grid = [d.blocks() as u32, (d.batch * d.heads) as u32, 1];
    for entry in [Entry::BackwardDq, Entry::BackwardDkv] {
        let pipeline = gpu.pipeline(KERNEL.pipeline(entry, dtype, Vec::new()))?;
        for chunk in 0..chunks {
            let params = Params {
                chunk: chunk as u32,
                ..d.params(options, Pass::Backward)
            };
            batch.dispatch_bound(
                &pipeline,
                bytemuck::bytes_of(&params),
                &[
                    (1, qkv),
                    (2, &dqkv),
                    (3, &forward.lse),
                    (4, lengths),
                    (5, grad_out),
                    (6, &delta),
                    (7, &partial),
                ],
                grid,
            )?;
        }
    }
    if chunks > 1 {
        let total = 3 * rows * d.d4();
        let (grid, groups_x) = fold_grid(&gpu, total.div_ceil(WG))?;
        let params = Params {
            total: to_u32(OP, "3 · rows · head_dim / 4", total)?,
            groups_x,
            ..d.params(options, Pass::Backward)
        };
        let pipeline = gpu.pipeline(KERNEL.pipeline(Entry::StorePartials, dtype, Vec::new()))?;
        batch.dispatch_bound(
            &pipeline,
            bytemuck::bytes_of(&params),
            &[(2, &dqkv), (7, &partial)],
            grid,
        )?;
    }
    Ok(dqkv)
}

/// One section (0 q, 1 k, 2 v) of `src` (`[batch, T, sections, heads, D]`) as `[batch · heads, T,
/// D]`, or (`merge`) `src` into that section of `dst`.
fn move_heads(
    batch: &mut Batch,
    d: &Dims,
    src: &Tensor,
    dst: &Tensor,
    sections: usize,
    section: usize,
    merge: bool,
) -> Result<()> {
    const OP: &str = "attention_naive";
    let gpu = batch.gpu().clone();
    let total = d.rows() * d.head_dim;
    let (grid, groups_x) = fold_grid(&gpu, total.div_ceil(WG))?;
    let params = Params {
        batch: d.batch as u32,
        seq: d.seq as u32,
        heads: d.heads as u32,
        head_dim: d.head_dim as u32,
        sections: sections as u32,
        chunk: section as u32,
        total: to_u32(OP, "elements", total)?,
        groups_x,
        ..Default::default()
    };
    let entry = if merge {
        Entry::MergeHeads
    } else {
        Entry::SplitHeads
    };
    let pipeline = gpu.pipeline(KERNEL.pipeline(entry, src.dtype(), Vec::new()))?;
    batch.dispatch_bound(
        &pipeline,
        bytemuck::bytes_of(&params),
        &[(1, src), (2, dst)],
        grid,
    )
}

/// q, k, v as `[batch · heads, T, D]` each, and the probabilities softmax(mask(scale · q·kᵀ)).
fn naive_probabilities(
    batch: &mut Batch,
    d: &Dims,
    qkv: &Tensor,
    options: &AttentionOptions,
) -> Result<([Tensor; 3], Tensor)> {
    const OP: &str = "attention_naive";
    let gpu = batch.gpu().clone();
    let bh = d.batch * d.heads;
    let scores_len = bh
        .checked_mul(d.seq)
        .and_then(|n| n.checked_mul(d.seq))
        .ok_or_else(|| Error::LimitExceeded {
            what: format!("{OP}: scores"),
            requested: u64::MAX,
            limit: u64::from(u32::MAX),
        })?;
    let total = to_u32(OP, "scores (batch · heads · T²)", scores_len)?;
    let split = |batch: &mut Batch, s: usize| -> Result<Tensor> {
        let t = Tensor::uninit(&gpu, &[bh, d.seq, d.head_dim], qkv.dtype())?;
        move_heads(batch, d, qkv, &t, 3, s, false)?;
        Ok(t)
    };
    let q = split(batch, 0)?;
    let k = split(batch, 1)?;
    let v = split(batch, 2)?;
    let transpose_b = MatmulOptions {
        transposes: Transposes { a: false, b: true },
        ..Default::default()
    };
    let scores = matmul(batch, &q, &k, &transpose_b)?;
    let lengths = lengths_or(options, qkv);
    let (grid, groups_x) = fold_grid(&gpu, scores_len.div_ceil(WG))?;
    let params = Params {
        total,
        groups_x,
        ..d.params(options, Pass::Forward)
    };
    let pipeline = gpu.pipeline(KERNEL.pipeline(Entry::MaskScale, qkv.dtype(), Vec::new()))?;
    batch.dispatch_bound(
        &pipeline,
        bytemuck::bytes_of(&params),
        &[(1, &scores), (4, lengths)],
        grid,
    )?;
    let p = softmax(batch, &scores)?;
    Ok(([q, k, v], p))
}

/// The same attention as [`attention`] through materialised scores: split heads, q·kᵀ (matmul),
/// scale and mask, softmax, P·v (matmul), merge heads. Memory grows as T²; the reference on the
/// GPU and the benchmarks' baseline.
pub fn attention_naive(
    batch: &mut Batch,
    qkv: &Tensor,
    options: &AttentionOptions,
) -> Result<Tensor> {
    let d = check("attention_naive", batch, qkv, options)?;
    let ([_, _, v], p) = naive_probabilities(batch, &d, qkv, options)?;
    let o = matmul(batch, &p, &v, &Default::default())?;
    let out = Tensor::uninit(
        batch.gpu(),
        &[d.batch, d.seq, d.heads * d.head_dim],
        qkv.dtype(),
    )?;
    move_heads(batch, &d, &o, &out, 1, 0, true)?;
    Ok(out)
}

/// dL/d(qkv) through the naive path (the forward recomputed): dP = dO·vᵀ, dv = Pᵀ·dO,
/// dS = softmax_backward(P, dP) · scale, dq = dS·k, dk = dSᵀ·q.
pub fn attention_naive_backward(
    batch: &mut Batch,
    qkv: &Tensor,
    grad_out: &Tensor,
    options: &AttentionOptions,
) -> Result<Tensor> {
    const OP: &str = "attention_naive_backward";
    let d = check(OP, batch, qkv, options)?;
    same_dtype(OP, &[qkv, grad_out])?;
    if grad_out.shape() != [d.batch, d.seq, d.heads * d.head_dim] {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!(
                "grad_out must be [{}, {}, {}], got {:?}",
                d.batch,
                d.seq,
                d.heads * d.head_dim,
                grad_out.shape()
            ),
        });
    }
    let ([q, k, v], p) = naive_probabilities(batch, &d, qkv, options)?;
    let gpu = batch.gpu().clone();
    let g = Tensor::uninit(&gpu, q.shape(), qkv.dtype())?;
    move_heads(batch, &d, grad_out, &g, 1, 0, false)?;
    let with = |a: bool, b: bool| MatmulOptions {
        transposes: Transposes { a, b },
        ..Default::default()
    };
    let dp = matmul(batch, &g, &v, &with(false, true))?;
    let dv = matmul(batch, &p, &g, &with(true, false))?;
    let ds = softmax_backward(batch, &p, &dp)?;
    crate::ops::scale_in_place(batch, &ds, d.scale)?;
    let dq = matmul(batch, &ds, &k, &Default::default())?;
    let dk = matmul(batch, &ds, &q, &with(true, false))?;
    let dqkv = Tensor::uninit(&gpu, qkv.shape(), qkv.dtype())?;
    for (s, t) in [dq, dk, dv].iter().enumerate() {
        move_heads(batch, &d, t, &dqkv, 3, s, true)?;
    }
    Ok(dqkv)
}

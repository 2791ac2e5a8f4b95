//! Matrix multiply: C = act(op(A)·op(B) + bias), batched, with its backward pass.
//!
//! Shapes: A is `[M, K]` (or `[K, M]` with `trans_a`), B is `[K, N]` (or `[N, K]` with `trans_b`),
//! either may carry a leading batch dimension; a rank-2 operand, or batch 1, is broadcast over the
//! other's batch. C is `[batch, M, N]` when either operand is batched, else `[M, N]`.

use crate::batch::Batch;
use crate::batch::GpuTimer;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops::activation::Activation;
use crate::ops::checks::{distinct_output, float_dtype, same_dtype, same_gpu, to_u32};
use crate::ops::output_check::OutputCheck;
use crate::shaders::{entry_points, KernelSpec, Override, Prelude};
use crate::tensor::Tensor;
use crate::tune::{size_class, Candidate};

/// Which operands a matmul reads transposed: its own type, because the backward pass takes these
/// and nothing else.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transposes {
    /// Use Aᵀ: A is stored `[K, M]`.
    pub a: bool,
    /// Use Bᵀ: B is stored `[N, K]`.
    pub b: bool,
}

/// How a matmul treats its operands and what its epilogue does. Every field is valid with every
/// other: nothing here is refused at run time.
#[derive(Debug, Clone, Copy, Default)]
pub struct MatmulOptions<'a> {
    /// Which operands are read transposed.
    pub transposes: Transposes,
    /// Added to every row of the product: shape `[N]`, A's dtype.
    pub bias: Option<&'a Tensor>,
    /// Applied after the bias.
    pub activation: Activation,
}

/// What [`matmul_into`] does with the output's contents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Write {
    /// C = result.
    #[default]
    Overwrite,
    /// C += result (gradient accumulation).
    Accumulate,
}

/// Gradients of a matmul's operands.
#[derive(Debug, Clone)]
pub struct MatmulGrads {
    /// dL/dA, shaped like A.
    pub a: Tensor,
    /// dL/dB, shaped like B.
    pub b: Tensor,
}

crate::shaders::shader_params! {
    struct Params {
        m: u32,
        n: u32,
        k: u32,
        reduce_count: u32,
        a_stride_z: u32,
        a_stride_r: u32,
        b_stride_z: u32,
        b_stride_r: u32,
        c_stride_z: u32,
        a_offset: u32,
        b_offset: u32,
        c_offset: u32,
        bias_offset: u32,
        splits: u32,
        split_base: u32,
        k_splits: u32,
        r_per_split: u32,
        t_per_split: u32,
        groups_x: u32,
        slabs: u32,
        batches: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

entry_points! {
    /// The entry points of `shaders/matmul.wgsl`.
    enum Entry {
        Main = "main": Params,
        MainPartial = "main_partial": Params,
        SplitkSum = "splitk_sum": Params,
        GemvPlainB = "gemv_plain_b": Params,
        GemvTransB = "gemv_trans_b": Params,
        GemvDot = "gemv_dot": Params,
    }
}

const BOOL: &[u32] = &[0, 1];

/// The contract of `shaders/matmul.wgsl`.
pub(crate) static KERNEL: KernelSpec = KernelSpec {
    name: "matmul",
    wgsl: include_str!("../../shaders/matmul.wgsl"),
    preludes: &[Prelude::Activation, Prelude::MatmulLanesPortable],
    subgroup_preludes: Some(&[Prelude::Activation, Prelude::MatmulSharedRows]),
    dtypes: &[DType::F32, DType::F16],
    entries: ENTRY_POINTS,
    overrides: &[
        Override {
            name: "WG",
            values: &[4, 8, 16],
        },
        Override {
            name: "GROUPS",
            values: &[1, 2],
        },
        Override {
            name: "DIRECT",
            values: BOOL,
        },
        Override {
            name: "LOADS",
            values: &[1, 2],
        },
        Override {
            name: "SHARED_ROWS",
            values: BOOL,
        },
        // Derived in the WGSL (4 · WG · GROUPS); never set.
        Override {
            name: "TILE",
            values: &[],
        },
        Override {
            name: "TRANS_A",
            values: BOOL,
        },
        Override {
            name: "TRANS_B",
            values: BOOL,
        },
        Override {
            name: "ALIGNED_A",
            values: BOOL,
        },
        Override {
            name: "ALIGNED_B",
            values: BOOL,
        },
        Override {
            name: "ALIGNED_C",
            values: BOOL,
        },
        Override {
            name: "HAS_BIAS",
            values: BOOL,
        },
        Override {
            name: "BIAS_PER_ROW",
            values: BOOL,
        },
        Override {
            name: "ACTIVATION",
            values: &[0, 1, 2, 3, 4, 5],
        },
        Override {
            name: "ACCUMULATE",
            values: BOOL,
        },
        Override {
            name: "PARTIAL_ACCUMULATE",
            values: BOOL,
        },
    ],
    override_sets: Some(override_sets),
    writes: &[3, 5],
};

/// The override sets the candidates make: each candidate's kernel shape with the flags in four
/// combinations.
fn override_sets() -> Vec<Vec<(&'static str, u32)>> {
    let mut sets = Vec::new();
    for &candidate in MatmulCandidate::ALL {
        let (wg, groups, loads, direct, shared_rows) = candidate.kernel().shape();
        for flags in 0..4u32 {
            let on = |bit: u32| (flags >> bit) & 1;
            sets.push(vec![
                ("WG", wg),
                ("GROUPS", groups),
                ("DIRECT", u32::from(direct)),
                ("LOADS", loads),
                ("SHARED_ROWS", u32::from(shared_rows)),
                ("TRANS_A", on(0)),
                ("TRANS_B", on(1)),
                ("ALIGNED_A", on(0)),
                ("ALIGNED_B", on(1)),
                ("ALIGNED_C", on(0)),
                ("HAS_BIAS", on(1)),
                ("ACTIVATION", flags),
                ("ACCUMULATE", on(0)),
                ("BIAS_PER_ROW", on(1)),
                ("PARTIAL_ACCUMULATE", on(0)),
            ]);
        }
    }
    sets
}
const _: () = assert!(std::mem::size_of::<Params>() == 96);

/// One operand as the kernel sees it: a matrix view into a tensor.
#[derive(Clone, Copy)]
pub(crate) struct Operand<'t> {
    pub tensor: &'t Tensor,
    /// The stored matrix is the transpose of the operand.
    pub trans: bool,
    /// Elements between consecutive output batches, and between reduced batches.
    pub stride_z: u32,
    pub stride_r: u32,
    /// First element of the view.
    pub offset: u32,
}

/// A bias view: `len` elements from `offset`, added per column (or per row with `per_row`).
#[derive(Clone, Copy)]
pub(crate) struct BiasView<'t> {
    pub tensor: &'t Tensor,
    pub offset: u32,
    pub per_row: bool,
}

/// Everything one dispatch needs.
pub(crate) struct Launch<'t> {
    pub a: Operand<'t>,
    pub b: Operand<'t>,
    pub c: &'t Tensor,
    pub c_offset: u32,
    /// Elements between consecutive output batches (m·n for a packed batch).
    pub c_stride_z: u32,
    pub bias: Option<BiasView<'t>>,
    pub activation: Activation,
    pub accumulate: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub out_batches: usize,
    pub reduce_count: usize,
}

/// Shapes of one matmul, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dims {
    batch: usize,
    a_batch: usize,
    b_batch: usize,
    m: usize,
    n: usize,
    k: usize,
    batched_out: bool,
}

fn split(op: &'static str, name: &str, t: &Tensor) -> Result<(usize, usize, usize)> {
    match *t.shape() {
        [r, c] => Ok((1, r, c)),
        [b, r, c] => Ok((b, r, c)),
        _ => Err(Error::ShapeMismatch {
            op,
            details: format!("{name} must have rank 2 or 3, got {:?}", t.shape()),
        }),
    }
}

fn dims(op: &'static str, a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Dims> {
    let (a_batch, ar, ac) = split(op, "A", a)?;
    let (b_batch, br, bc) = split(op, "B", b)?;
    let (m, ka) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (kb, n) = if trans_b { (bc, br) } else { (br, bc) };
    if ka != kb {
        return Err(Error::ShapeMismatch {
            op,
            details: format!(
                "inner dimensions differ: A {:?}{} has K = {ka}, B {:?}{} has K = {kb}",
                a.shape(),
                if trans_a { "ᵀ" } else { "" },
                b.shape(),
                if trans_b { "ᵀ" } else { "" },
            ),
        });
    }
    if a_batch != b_batch && a_batch != 1 && b_batch != 1 {
        return Err(Error::ShapeMismatch {
            op,
            details: format!("batch sizes {a_batch} and {b_batch} differ (and neither is 1)"),
        });
    }
    Ok(Dims {
        batch: a_batch.max(b_batch),
        a_batch,
        b_batch,
        m,
        n,
        k: ka,
        batched_out: a.shape().len() == 3 || b.shape().len() == 3,
    })
}

impl Dims {
    fn out_shape(&self) -> Vec<usize> {
        if self.batched_out {
            vec![self.batch, self.m, self.n]
        } else {
            vec![self.m, self.n]
        }
    }
}

/// C = act(op(A)·op(B) + bias) into a new tensor (`&MatmulOptions::default()`: C = A·B).
pub fn matmul(
    batch: &mut Batch,
    a: &Tensor,
    b: &Tensor,
    options: &MatmulOptions,
) -> Result<Tensor> {
    let t = options.transposes;
    let d = dims("matmul", a, b, t.a, t.b)?;
    let c = Tensor::uninit(batch.gpu(), &d.out_shape(), a.dtype())?;
    matmul_into(batch, a, b, options, &c, Write::Overwrite)?;
    Ok(c)
}

/// C = act(op(A)·op(B) + bias), or C += that ([`Write::Accumulate`]), into an existing tensor.
pub fn matmul_into(
    batch: &mut Batch,
    a: &Tensor,
    b: &Tensor,
    options: &MatmulOptions,
    c: &Tensor,
    write: Write,
) -> Result<()> {
    const OP: &str = "matmul";
    let t = options.transposes;
    let d = dims(OP, a, b, t.a, t.b)?;
    if c.shape() != d.out_shape().as_slice() {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!(
                "output is {:?}, the product is {:?}",
                c.shape(),
                d.out_shape()
            ),
        });
    }
    let mut all = vec![a, b, c];
    if let Some(bias) = options.bias {
        if bias.shape() != [d.n] {
            return Err(Error::ShapeMismatch {
                op: OP,
                details: format!("bias must be [{}], got {:?}", d.n, bias.shape()),
            });
        }
        all.push(bias);
    }
    same_gpu(OP, batch, &all)?;
    same_dtype(OP, &all)?;
    float_dtype(OP, a)?;
    let inputs: Vec<&Tensor> = [a, b].into_iter().chain(options.bias).collect();
    distinct_output(OP, &inputs, c)?;
    let stride = |batches: usize, size: usize| if batches > 1 { size } else { 0 };
    record(
        batch,
        &Launch {
            a: Operand {
                tensor: a,
                trans: t.a,
                stride_z: to_u32(OP, "A batch stride", stride(d.a_batch, d.m * d.k))?,
                stride_r: 0,
                offset: 0,
            },
            b: Operand {
                tensor: b,
                trans: t.b,
                stride_z: to_u32(OP, "B batch stride", stride(d.b_batch, d.k * d.n))?,
                stride_r: 0,
                offset: 0,
            },
            c,
            c_offset: 0,
            c_stride_z: to_u32(OP, "C batch stride", d.m * d.n)?,
            bias: options.bias.map(|tensor| BiasView {
                tensor,
                offset: 0,
                per_row: false,
            }),
            activation: options.activation,
            accumulate: write == Write::Accumulate,
            m: d.m,
            n: d.n,
            k: d.k,
            out_batches: d.batch,
            reduce_count: 1,
        },
    )
}

/// Gradients of C = op(A)·op(B) given dL/dC, through the same kernel with transposed operands (no
/// transpose is materialized). An operand broadcast over the batch gets the sum over the batch.
/// `transposes` are the forward's. (For a forward with an epilogue, apply `activation_backward`
/// to dL/dC first, and take the bias gradient with `channel_sum`.)
pub fn matmul_backward(
    batch: &mut Batch,
    a: &Tensor,
    b: &Tensor,
    grad_c: &Tensor,
    transposes: Transposes,
) -> Result<MatmulGrads> {
    const OP: &str = "matmul_backward";
    let (trans_a, trans_b) = (transposes.a, transposes.b);
    let d = dims(OP, a, b, trans_a, trans_b)?;
    if grad_c.shape() != d.out_shape().as_slice() {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!("grad_c is {:?}, C is {:?}", grad_c.shape(), d.out_shape()),
        });
    }
    same_gpu(OP, batch, &[a, b, grad_c])?;
    same_dtype(OP, &[a, b, grad_c])?;
    float_dtype(OP, a)?;
    let (m, n, k) = (d.m, d.n, d.k);
    let da = Tensor::uninit(batch.gpu(), a.shape(), a.dtype())?;
    let db = Tensor::uninit(batch.gpu(), b.shape(), b.dtype())?;
    let operand = |tensor, trans, batches: usize, size: usize, reduce: bool| -> Result<Operand> {
        let s = to_u32(OP, "batch stride", if batches > 1 { size } else { 0 })?;
        Ok(Operand {
            tensor,
            trans,
            stride_z: if reduce { 0 } else { s },
            stride_r: if reduce { s } else { 0 },
            offset: 0,
        })
    };
    // Whether a gradient sums over the batch (its operand was broadcast).
    let reduce_a = d.a_batch == 1 && d.batch > 1;
    let reduce_b = d.b_batch == 1 && d.batch > 1;
    let split_batches = |reduce: bool| if reduce { (1, d.batch) } else { (d.batch, 1) };

    // dA: op(A)=X (M×K), dX = dC·Yᵀ. Stored A = X: dA = dC·op(B)ᵀ; stored A = Xᵀ: dA = op(B)·dCᵀ.
    let (out_batches, reduce_count) = split_batches(reduce_a);
    let gc = |trans| operand(grad_c, trans, d.batch, m * n, reduce_a);
    let bb = |trans| operand(b, trans, d.b_batch, k * n, reduce_a);
    let (x, y, mm, nn) = if !trans_a {
        (gc(false)?, bb(!trans_b)?, m, k)
    } else {
        (bb(trans_b)?, gc(true)?, k, m)
    };
    record(
        batch,
        &Launch::plain(x, y, &da, mm, nn, n, out_batches, reduce_count),
    )?;

    // dB: op(B)=Y (K×N), dY = Xᵀ·dC. Stored B = Y: dB = op(A)ᵀ·dC; stored B = Yᵀ: dB = dCᵀ·op(A).
    let (out_batches, reduce_count) = split_batches(reduce_b);
    let gc = |trans| operand(grad_c, trans, d.batch, m * n, reduce_b);
    let aa = |trans| operand(a, trans, d.a_batch, m * k, reduce_b);
    let (x, y, mm, nn) = if !trans_b {
        (aa(!trans_a)?, gc(false)?, k, n)
    } else {
        (gc(true)?, aa(trans_a)?, n, k)
    };
    record(
        batch,
        &Launch::plain(x, y, &db, mm, nn, m, out_batches, reduce_count),
    )?;
    Ok(MatmulGrads { a: da, b: db })
}

impl<'t> Launch<'t> {
    #[allow(clippy::too_many_arguments)]
    fn plain(
        a: Operand<'t>,
        b: Operand<'t>,
        c: &'t Tensor,
        m: usize,
        n: usize,
        k: usize,
        out_batches: usize,
        reduce_count: usize,
    ) -> Self {
        Launch {
            a,
            b,
            c,
            c_offset: 0,
            c_stride_z: (m * n) as u32, // the grad tensors are made here, well under u32
            bias: None,
            activation: Activation::None,
            accumulate: false,
            m,
            n,
            k,
            out_batches,
            reduce_count,
        }
    }
}

/// The matmul candidates ([`crate::tune`]): `tiledWxG` is a shared-memory tile of W×W threads, each
/// computing G×G blocks of 4×4 outputs (tile edge 4·W·G), with a k-step of W/G (`l2`: twice that,
/// each thread storing two vec4s of each operand per step); `directWxG` the same outputs per
/// thread without shared memory; `gemv` the kernels for at most 8 rows; `s8`: K cut into 8 splits
/// summed afterwards, for outputs too small to give every core a workgroup (offered only there);
/// `sr` (shared rows): the 8 lanes of a subgroup share one load of their A values by broadcasts,
/// for adapters with subgroups of exactly 8 (CPU adapters, where every per-lane load costs a
/// scalar load per lane).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatmulCandidate {
    /// 16×16 threads, 2×2 blocks of 4×4 outputs each: a 128-tile.
    Tiled16x2,
    /// 16×16 threads, one 4×4 block each: a 64-tile.
    Tiled16x1,
    /// The kernels for at most 8 rows.
    Gemv,
    /// The GEMV with one thread per output, no shared memory and no barriers (for CPU adapters).
    GemvDot,
    /// [`Self::Tiled16x2`] with a doubled k-step and shared rows.
    Tiled16x2L2Sr,
    /// [`Self::Tiled16x2`] with shared rows.
    Tiled16x2Sr,
    /// [`Self::Tiled16x2`] with a doubled k-step.
    Tiled16x2L2,
    /// 8×8 threads, 2×2 blocks each: a 64-tile.
    Tiled8x2,
    /// [`Self::Tiled8x2`] with a doubled k-step.
    Tiled8x2L2,
    /// 8×8 threads without shared memory.
    Direct8x1,
    /// 4×4 threads without shared memory.
    Direct4x1,
    /// 8×8 threads, one block each: a 32-tile.
    Tiled8x1,
    /// [`Self::Tiled16x1`] with a doubled k-step.
    Tiled16x1L2,
    /// 16×16 threads without shared memory.
    Direct16x1,
    /// [`Self::Tiled16x1`] with K cut into 8 splits.
    Tiled16x1S8,
    /// [`Self::Tiled8x2`] with K cut into 8 splits.
    Tiled8x2S8,
    /// [`Self::Tiled8x2`] sharing A's values across the 8 lanes of a subgroup (lavapipe: 25–30%
    /// faster than tiled8x2 on 64-row products).
    Tiled8x2Sr,
}

impl crate::tune::Candidate for MatmulCandidate {
    const OP: &'static str = "matmul";
    // Ordered so that the likely winners are timed first (tuning stops at its time budget).
    const ALL: &'static [Self] = &[
        Self::Tiled16x2,
        Self::Tiled16x1,
        Self::Gemv,
        Self::GemvDot,
        Self::Tiled16x2L2Sr,
        Self::Tiled16x2Sr,
        Self::Tiled16x2L2,
        Self::Tiled8x2,
        Self::Tiled8x2L2,
        Self::Direct8x1,
        Self::Direct4x1,
        Self::Tiled8x1,
        Self::Tiled16x1L2,
        Self::Direct16x1,
        Self::Tiled16x1S8,
        Self::Tiled8x2S8,
        Self::Tiled8x2Sr,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Tiled16x2 => "tiled16x2",
            Self::Tiled16x1 => "tiled16x1",
            Self::Gemv => "gemv",
            Self::GemvDot => "gemv_dot",
            Self::Tiled16x2L2Sr => "tiled16x2l2sr",
            Self::Tiled16x2Sr => "tiled16x2sr",
            Self::Tiled16x2L2 => "tiled16x2l2",
            Self::Tiled8x2 => "tiled8x2",
            Self::Tiled8x2L2 => "tiled8x2l2",
            Self::Direct8x1 => "direct8x1",
            Self::Direct4x1 => "direct4x1",
            Self::Tiled8x1 => "tiled8x1",
            Self::Tiled16x1L2 => "tiled16x1l2",
            Self::Direct16x1 => "direct16x1",
            Self::Tiled16x1S8 => "tiled16x1s8",
            Self::Tiled8x2S8 => "tiled8x2s8",
            Self::Tiled8x2Sr => "tiled8x2sr",
        }
    }
}

impl MatmulCandidate {
    /// The kernel configuration the candidate stands for.
    fn kernel(self) -> Kernel {
        let tile = |wg, groups, loads, direct, shared_rows, splits| Kernel::Tile {
            wg,
            groups,
            loads,
            direct,
            shared_rows,
            splits,
        };
        match self {
            Self::Tiled16x2 => tile(16, 2, 1, false, false, 1),
            Self::Tiled16x1 => tile(16, 1, 1, false, false, 1),
            Self::Gemv => Kernel::Gemv,
            Self::GemvDot => Kernel::GemvDot,
            Self::Tiled16x2L2Sr => tile(16, 2, 2, false, true, 1),
            Self::Tiled16x2Sr => tile(16, 2, 1, false, true, 1),
            Self::Tiled16x2L2 => tile(16, 2, 2, false, false, 1),
            Self::Tiled8x2 => tile(8, 2, 1, false, false, 1),
            Self::Tiled8x2L2 => tile(8, 2, 2, false, false, 1),
            Self::Direct8x1 => tile(8, 1, 1, true, false, 1),
            Self::Direct4x1 => tile(4, 1, 1, true, false, 1),
            Self::Tiled8x1 => tile(8, 1, 1, false, false, 1),
            Self::Tiled16x1L2 => tile(16, 1, 2, false, false, 1),
            Self::Direct16x1 => tile(16, 1, 1, true, false, 1),
            Self::Tiled16x1S8 => tile(16, 1, 1, false, false, 8),
            Self::Tiled8x2S8 => tile(8, 2, 1, false, false, 8),
            Self::Tiled8x2Sr => tile(8, 2, 1, false, true, 1),
        }
    }

    /// Whether it shares loads across the lanes of an 8-wide subgroup.
    fn shared_rows(self) -> bool {
        matches!(
            self.kernel(),
            Kernel::Tile {
                shared_rows: true,
                ..
            }
        )
    }

    /// Whether it always splits K (for outputs with few tiles).
    fn splits_k(self) -> bool {
        matches!(self.kernel(), Kernel::Tile { splits, .. } if splits > 1)
    }
}

/// Products of fewer FLOPs run the fixed default without tuning.
const TUNING_MIN_FLOPS: usize = 1 << 18;

/// A matmul kernel: a candidate's name parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Tile {
        wg: u32,
        groups: u32,
        loads: u32,
        direct: bool,
        shared_rows: bool,
        /// Cut K into this many splits at least (split-K for parallelism, not only for length).
        splits: u32,
    },
    Gemv,
    GemvDot,
}

impl Kernel {
    /// (WG, GROUPS, LOADS, DIRECT, SHARED_ROWS): the override constants of its shape.
    fn shape(self) -> (u32, u32, u32, bool, bool) {
        match self {
            Kernel::Tile {
                wg,
                groups,
                loads,
                direct,
                shared_rows,
                ..
            } => (wg, groups, loads, direct, shared_rows),
            Kernel::Gemv | Kernel::GemvDot => (16, 1, 1, false, false),
        }
    }

    /// Output rows and columns per workgroup.
    fn tile(self) -> usize {
        match self {
            Kernel::Tile { wg, groups, .. } => 4 * (wg * groups) as usize,
            Kernel::Gemv | Kernel::GemvDot => 64,
        }
    }

    /// Most k-tiles one workgroup walks: at most [`K_PER_SPLIT`] elements of K, and few enough
    /// that its loop iterations stay in [`LOOP_BUDGET`]. Per k-tile, worst case (ragged operands,
    /// whose loads loop over up to 4 elements): the tile loop, the k-step loop, and 4 iterations
    /// per load of a vec4.
    fn tiles_per_split(self) -> usize {
        let per_tile = match self {
            Kernel::Tile { direct: true, .. } => 1 + 8 * 4,
            Kernel::Tile { loads, .. } => 1 + self.k_step() + 2 * loads as usize * 4,
            Kernel::Gemv | Kernel::GemvDot => 1,
        };
        (K_PER_SPLIT / self.k_step()).min(LOOP_BUDGET / per_tile)
    }

    /// Elements of K per loop iteration (the unit of split-K).
    fn k_step(self) -> usize {
        match self {
            Kernel::Tile { direct: true, .. } => 4,
            Kernel::Tile {
                wg, groups, loads, ..
            } => (loads * wg / groups) as usize,
            Kernel::Gemv | Kernel::GemvDot => 16,
        }
    }
}

/// Whether a product is large for a CPU adapter: its 128-tiles are enough to keep every core
/// busy with work per tile that amortizes a barrier.
fn large_on_cpu(l: &Launch) -> bool {
    l.m >= 128 && l.n >= 128 && l.m.div_ceil(128) * l.n.div_ceil(128) * l.out_batches >= 16
}

/// The fixed choice (tuning off, and the first candidate timed): the GEMV for few rows (on a CPU
/// adapter the one without barriers, where K allows, and for B stored N×K only below
/// [`CPU_TILE_FROM_ROWS`]); on a CPU adapter [`cpu_tile_candidate`]
/// below [`large_on_cpu`] (16×16-thread tiles were up to 6x behind there; its 64-tile shares A
/// across subgroup lanes where subgroups are 8 wide); elsewhere a 128-tile
/// where there are enough of them to fill the device, else a 64-tile.
fn default_candidate(
    l: &Launch,
    gemv: GemvFit,
    cpu_adapter: bool,
    lanes_of_8: bool,
) -> MatmulCandidate {
    let tiles128 = l.m.div_ceil(128) * l.n.div_ceil(128) * l.out_batches;
    let cpu_dot = gemv.dot && cpu_adapter;
    if cpu_dot && (l.m < CPU_TILE_FROM_ROWS || !l.b.trans) {
        MatmulCandidate::GemvDot
    } else if gemv.workgroup && !cpu_dot {
        MatmulCandidate::Gemv
    } else if cpu_adapter && large_on_cpu(l) {
        MatmulCandidate::Tiled16x2
    } else if cpu_adapter {
        match cpu_tile_candidate(l) {
            MatmulCandidate::Tiled8x2 if lanes_of_8 => MatmulCandidate::Tiled8x2Sr,
            c => c,
        }
    } else if l.m >= 128 && l.n >= 128 && tiles128 >= 96 {
        MatmulCandidate::Tiled16x2
    } else {
        MatmulCandidate::Tiled16x1
    }
}

/// How much of a `tile`-sided tiling of the output the output fills (1: no padding).
fn tile_fill(l: &Launch, tile: usize) -> f64 {
    let fill = |size: usize| size as f64 / (size.div_ceil(tile) * tile) as f64;
    fill(l.m) * fill(l.n)
}

/// A CPU adapter's fixed tile below [`large_on_cpu`]: the largest of the 64-, 32- and 16-tiles
/// that the output fills to 75% (a 64-tile over 32 rows computes twice the work), else the one
/// it fills most. Measured on lavapipe: the 64-tile (8×8 threads) leads on shapes it fills, the
/// barrier-free 32- and 16-tiles on thin ones (conv weight gradients, 10-class outputs).
fn cpu_tile_candidate(l: &Launch) -> MatmulCandidate {
    let tiles = [
        (64, MatmulCandidate::Tiled8x2),
        (32, MatmulCandidate::Direct8x1),
        (16, MatmulCandidate::Direct4x1),
    ];
    if let Some(&(_, c)) = tiles.iter().find(|(t, _)| tile_fill(l, *t) >= 0.75) {
        return c;
    }
    let mut best = tiles[0];
    for &(t, c) in &tiles[1..] {
        if tile_fill(l, t) > tile_fill(l, best.0) {
            best = (t, c);
        }
    }
    best.1
}

/// The order in which a CPU adapter times candidates (the tuning budget may stop after a few, each
/// first run compiling a pipeline). Shared memory is ordinary memory there and a barrier switches
/// coroutines: below [`large_on_cpu`], kernels without barriers or with small workgroups come
/// first; large products go first to the 128-tiles that share A across a subgroup's lanes (the
/// 1024³ winners on lavapipe). The rest keep [`MatmulCandidate::ALL`]'s order.
const CPU_ORDER: &[MatmulCandidate] = &[
    MatmulCandidate::GemvDot,
    MatmulCandidate::Direct4x1,
    MatmulCandidate::Tiled8x2Sr,
    MatmulCandidate::Tiled8x2,
    MatmulCandidate::Direct8x1,
    MatmulCandidate::Tiled16x2Sr,
    MatmulCandidate::Tiled8x2S8,
    MatmulCandidate::Tiled16x2L2Sr,
    MatmulCandidate::Tiled8x2L2,
    MatmulCandidate::Direct16x1,
    MatmulCandidate::Gemv,
];
const CPU_ORDER_LARGE: &[MatmulCandidate] = &[
    MatmulCandidate::Tiled16x2L2Sr,
    MatmulCandidate::Tiled16x2Sr,
    MatmulCandidate::Tiled8x2Sr,
    MatmulCandidate::Tiled16x2L2,
    MatmulCandidate::Tiled8x2,
    MatmulCandidate::Tiled8x2L2,
];

/// Rows from which a CPU adapter's fixed choice for a Linear layer's product (B stored N×K) is a
/// tile, not `gemv_dot`: each `gemv_dot` thread reloads its column of B for every row. Measured
/// on lavapipe (64×192, 64×256, 256×64 and 64×80 weights): at 4, 6 and 8 rows the 16-tile
/// faster in 11 of 12 cases (1.2–2.1×), `gemv_dot` 1.2–2.4× faster at 1 and 2 rows. With B
/// stored K×N (vec4 loads along N) `gemv_dot` kept up to 8 rows.
const CPU_TILE_FROM_ROWS: usize = 4;

/// Rows up to which the GEMV entry points beat a tile (`GEMV_MAX_ROWS` in the shader).
const GEMV_MAX_ROWS: usize = 8;

/// Most elements of K (times reduced batches) `gemv_dot` walks in one thread: with ragged loads
/// (up to 4 iterations each) its loops stay under the software drivers' 65,535 iterations.
const GEMV_DOT_MAX_K: usize = 8192;

/// Which GEMV entry points can run a product.
#[derive(Debug, Clone, Copy)]
struct GemvFit {
    /// `gemv_plain_b` / `gemv_trans_b`.
    workgroup: bool,
    /// `gemv_dot`.
    dot: bool,
}

/// Most elements of K (times reduced batches) one workgroup walks: 1,024 to 2,048 k-tiles, or
/// 9 × 1,024 GEMV iterations, well under the 65,535 loop iterations after which Mesa's software
/// drivers silently stop an invocation. Longer sums are split across workgroups (split-K).
pub(crate) const K_PER_SPLIT: usize = 16_384;

/// Most partial slabs one `splitk_sum` thread adds (a loop bound, like [`K_PER_SPLIT`]).
const MAX_SLABS: usize = 4096;

/// How a long reduction is cut: each split covers `r_per_split` reduced batches × `t_per_split`
/// k-tiles; `k_splits` chunks of K per group of reduced batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SplitPlan {
    splits: usize,
    k_splits: usize,
    r_per_split: usize,
    t_per_split: usize,
}

/// Loop iterations one invocation may run in all (Mesa stops it at 65,535), with room for the
/// loops outside the k-tiles.
const LOOP_BUDGET: usize = 40_000;

fn split_plan(k: usize, reduce_count: usize, kernel: Kernel) -> SplitPlan {
    let bk = kernel.k_step();
    let tiles = k.div_ceil(bk);
    let mut budget = kernel.tiles_per_split();
    // A split-K candidate cuts each reduced batch's K into `splits` parts at least; the others
    // walk as many reduced batches per split as the budget allows.
    if let Kernel::Tile { splits, .. } = kernel {
        if splits > 1 {
            budget = budget.min(tiles.div_ceil(splits as usize)).max(1);
        }
    }
    if tiles > budget {
        let k_splits = tiles.div_ceil(budget);
        SplitPlan {
            splits: k_splits * reduce_count,
            k_splits,
            r_per_split: 1,
            t_per_split: budget,
        }
    } else {
        let r_per_split = (budget / tiles).max(1);
        SplitPlan {
            splits: reduce_count.div_ceil(r_per_split),
            k_splits: 1,
            r_per_split,
            t_per_split: tiles,
        }
    }
}

/// Records one matmul (one dispatch, or split-K dispatches for long sums) with the kernel tuned for
/// its shape class. Crate-internal so conv can run matmuls on views of its tensors.
pub(crate) fn record(batch: &mut Batch, l: &Launch) -> Result<()> {
    let kernel = choose(batch.gpu(), l)?;
    record_with(batch, l, kernel)
}

/// A matmul's shape class: what decides which candidate wins, sizes rounded up to powers of two
/// (M exactly where the GEMV may run).
struct MatmulClass {
    dtype: DType,
    trans: (bool, bool),
    aligned: (bool, bool),
    m: usize,
    n: usize,
    k: usize,
    batches: usize,
}

impl std::fmt::Display for MatmulClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?}/t{}{}/a{}{}/m{}/n{}/k{}/z{}",
            self.dtype,
            u8::from(self.trans.0),
            u8::from(self.trans.1),
            u8::from(self.aligned.0),
            u8::from(self.aligned.1),
            self.m,
            self.n,
            self.k,
            self.batches
        )
    }
}

/// Whether the stored operand's rows allow 16-byte loads: row length, view offset and strides
/// multiples of 4.
fn aligned(o: &Operand, rows_if_plain: usize, cols_if_plain: usize) -> bool {
    let len = if o.trans {
        rows_if_plain
    } else {
        cols_if_plain
    };
    len.is_multiple_of(4)
        && [o.offset, o.stride_z, o.stride_r]
            .iter()
            .all(|x| x.is_multiple_of(4))
}

/// The kernel for `l`: forced, fixed, cached, or timed now on inputs of `l`'s shape.
fn choose(gpu: &Gpu, l: &Launch) -> Result<Kernel> {
    let summed = summed_k(l)?;
    let gemv = GemvFit {
        workgroup: l.m <= GEMV_MAX_ROWS && summed <= K_PER_SPLIT,
        dot: l.m <= GEMV_MAX_ROWS && summed <= GEMV_DOT_MAX_K,
    };
    let info = gpu.adapter_info();
    let cpu_adapter = info.device_type == wgpu::DeviceType::Cpu;
    let lanes_of_8 =
        gpu.uses_subgroups() && info.subgroup_min_size == 8 && info.subgroup_max_size == 8;
    let default = default_candidate(l, gemv, cpu_adapter, lanes_of_8);
    let mut fitting = vec![default];
    // Products this small take about a dispatch's overhead whichever kernel runs them.
    let work = [l.n, summed, l.out_batches]
        .iter()
        .fold(2 * l.m, |w, &x| w.saturating_mul(x));
    // Split-K for parallelism: where the output has few 64-tiles and K is long.
    let tiles64 = [l.n.div_ceil(64), l.out_batches]
        .iter()
        .fold(l.m.div_ceil(64), |t, &x| t.saturating_mul(x));
    let few_tiles = tiles64 < 32 && summed >= 1024;
    fitting.extend(MatmulCandidate::ALL.iter().copied().filter(|&c| {
        c != default
            && (c != MatmulCandidate::Gemv || gemv.workgroup)
            && (c != MatmulCandidate::GemvDot || gemv.dot)
            && (!c.shared_rows() || lanes_of_8)
            && (!c.splits_k() || few_tiles)
    }));
    if cpu_adapter {
        // The budget may stop tuning after a few candidates (each first run compiles): time the
        // ones that suit a CPU first.
        let order = if large_on_cpu(l) {
            CPU_ORDER_LARGE
        } else {
            CPU_ORDER
        };
        // Then by how much of their tiles the output fills (in quarters; a 64-tile over 32 rows
        // computes twice the work), so that the budget goes to the tiles that fit first.
        fitting[1..].sort_by_key(|c| {
            let filled_quarters = (4.0 * tile_fill(l, c.kernel().tile())) as u32;
            (
                std::cmp::Reverse(filled_quarters),
                order.iter().position(|o| o == c).unwrap_or(usize::MAX),
            )
        });
    }
    let class = || MatmulClass {
        dtype: l.c.dtype(),
        trans: (l.a.trans, l.b.trans),
        aligned: (aligned(&l.a, l.m, l.k), aligned(&l.b, l.k, l.n)),
        m: if l.m <= GEMV_MAX_ROWS {
            l.m
        } else {
            size_class(l.m)
        },
        n: size_class(l.n),
        k: size_class(summed),
        batches: size_class(l.out_batches),
    };
    let mut scratch: Option<(Tensor, Tensor, Tensor, GpuTimer)> = None;
    let mut output_check = OutputCheck::new(l.c.dtype());
    let worth_timing = work >= TUNING_MIN_FLOPS;
    let chosen = gpu
        .0
        .tuner
        .choose(class, &fitting, worth_timing, |candidate| {
            if scratch.is_none() {
                scratch = Some(scratch_for(gpu, l)?);
            }
            let (a, b, c, timer) = scratch.as_mut().expect("made above");
            let copy = Launch {
                a: Operand { tensor: a, ..l.a },
                b: Operand { tensor: b, ..l.b },
                c,
                bias: None,
                activation: Activation::None,
                accumulate: false,
                ..*l
            };
            let took = timer.time(|batch| record_with(batch, &copy, candidate.kernel()))?;
            output_check.check(candidate.name(), c)?;
            Ok(took)
        });
    Ok(chosen.kernel())
}

/// Random operands and an output laid out like `l`'s views (same offsets and strides, so the
/// same alignment), and a timer, for timing candidates.
fn scratch_for(gpu: &Gpu, l: &Launch) -> Result<(Tensor, Tensor, Tensor, GpuTimer)> {
    let z = l.out_batches.saturating_sub(1);
    let r = l.reduce_count.saturating_sub(1);
    let extent = |o: &Operand, size: usize| {
        o.offset as usize + z * o.stride_z as usize + r * o.stride_r as usize + size
    };
    let dtype = l.c.dtype();
    let random = |len: usize, seed: u64| -> Result<Tensor> {
        let data = crate::tune::random_inputs(len, seed);
        Tensor::from_f32(gpu, &data, &[len], dtype)
    };
    let a = random(extent(&l.a, l.m * l.k), 1)?;
    let b = random(extent(&l.b, l.k * l.n), 2)?;
    let c_len = l.c_offset as usize + z * l.c_stride_z as usize + l.m * l.n;
    let c = Tensor::uninit(gpu, &[c_len], dtype)?;
    Ok((a, b, c, GpuTimer::new(gpu)))
}

fn summed_k(l: &Launch) -> Result<usize> {
    l.k.checked_mul(l.reduce_count).ok_or(Error::LimitExceeded {
        what: "matmul: K × reduced batches".into(),
        requested: u64::MAX,
        limit: u64::from(u32::MAX),
    })
}

/// The pipeline of `entry` for `l` on `kernel`'s shape (`partial_accumulate`: a later split-K
/// wave, adding to the slabs).
fn pipeline_key(
    l: &Launch,
    kernel: Kernel,
    entry: Entry,
    partial_accumulate: bool,
) -> crate::shaders::PipelineKey {
    let aligned_a = aligned(&l.a, l.m, l.k);
    let aligned_b = aligned(&l.b, l.k, l.n);
    let aligned_c =
        l.n.is_multiple_of(4) && l.c_offset.is_multiple_of(4) && l.c_stride_z.is_multiple_of(4);
    let (wg, groups, loads, direct, shared_rows) = kernel.shape();
    KERNEL.pipeline(
        entry,
        l.c.dtype(),
        vec![
            ("WG", wg),
            ("GROUPS", groups),
            ("DIRECT", u32::from(direct)),
            ("LOADS", loads),
            ("SHARED_ROWS", u32::from(shared_rows)),
            ("TRANS_A", u32::from(l.a.trans)),
            ("TRANS_B", u32::from(l.b.trans)),
            ("ALIGNED_A", u32::from(aligned_a)),
            ("ALIGNED_B", u32::from(aligned_b)),
            ("ALIGNED_C", u32::from(aligned_c)),
            ("HAS_BIAS", u32::from(l.bias.is_some())),
            ("BIAS_PER_ROW", u32::from(l.bias.is_some_and(|b| b.per_row))),
            ("ACTIVATION", l.activation.code()),
            ("ACCUMULATE", u32::from(l.accumulate)),
            ("PARTIAL_ACCUMULATE", u32::from(partial_accumulate)),
        ],
    )
}

/// The uniform parameters of `l` without split-K.
fn launch_params(l: &Launch) -> Result<Params> {
    const OP: &str = "matmul";
    Ok(Params {
        m: to_u32(OP, "M", l.m)?,
        n: to_u32(OP, "N", l.n)?,
        k: to_u32(OP, "K", l.k)?,
        reduce_count: to_u32(OP, "batch", l.reduce_count)?,
        a_stride_z: l.a.stride_z,
        a_stride_r: l.a.stride_r,
        b_stride_z: l.b.stride_z,
        b_stride_r: l.b.stride_r,
        c_stride_z: l.c_stride_z,
        a_offset: l.a.offset,
        b_offset: l.b.offset,
        c_offset: l.c_offset,
        bias_offset: l.bias.map_or(0, |b| b.offset),
        splits: 1,
        split_base: 0,
        k_splits: 1,
        r_per_split: to_u32(OP, "batch", l.reduce_count)?,
        t_per_split: u32::MAX,
        batches: to_u32(OP, "batch", l.out_batches)?,
        ..Default::default()
    })
}

/// Records `l` with `kernel`.
fn record_with(batch: &mut Batch, l: &Launch, kernel: Kernel) -> Result<()> {
    const OP: &str = "matmul";
    let gemv = matches!(kernel, Kernel::Gemv | Kernel::GemvDot);
    let tile = kernel.tile();
    let plan = split_plan(l.k, l.reduce_count, kernel);
    let params = launch_params(l)?;
    let tiles = [
        to_u32(OP, "column tiles", l.n.div_ceil(tile))?,
        to_u32(OP, "row tiles", l.m.div_ceil(tile))?,
    ];
    if !gemv && plan.splits > 1 {
        return record_split_k(batch, l, kernel, &plan, params, tiles);
    }
    // Columns per workgroup along x, rows per workgroup along y.
    let rows = to_u32(OP, "M", l.m)?;
    let (entry, groups) = match (kernel, l.b.trans) {
        (Kernel::Tile { .. }, _) => (Entry::Main, tiles),
        (Kernel::GemvDot, false) => (
            Entry::GemvDot,
            [to_u32(OP, "tiles", l.n.div_ceil(256))?, rows],
        ),
        (Kernel::GemvDot, true) => (
            Entry::GemvDot,
            [to_u32(OP, "tiles", l.n.div_ceil(64))?, rows],
        ),
        (_, false) => (
            Entry::GemvPlainB,
            [to_u32(OP, "tiles", l.n.div_ceil(64))?, 1],
        ),
        (_, true) => (
            Entry::GemvTransB,
            [to_u32(OP, "tiles", l.n.div_ceil(8))?, 1],
        ),
    };
    let pipeline = batch
        .gpu()
        .pipeline(pipeline_key(l, kernel, entry, false))?;
    // Unused bias slot: bind A again (read-only, so no usage conflict).
    let bias = l.bias.map_or(l.a.tensor, |b| b.tensor);
    batch.dispatch(
        &pipeline,
        bytemuck::bytes_of(&params),
        &[l.a.tensor, l.b.tensor, l.c, bias],
        [groups[0], groups[1], params.batches],
    )
}

/// Records `l` with split-K: waves of splits write f32 slabs (later waves add to them), then one
/// pass adds the slabs and applies the epilogue.
fn record_split_k(
    batch: &mut Batch,
    l: &Launch,
    kernel: Kernel,
    plan: &SplitPlan,
    mut params: Params,
    [tiles_x, tiles_y]: [u32; 2],
) -> Result<()> {
    const OP: &str = "matmul";
    let bias = l.bias.map_or(l.a.tensor, |b| b.tensor);
    let gpu = batch.gpu().clone();
    let slab = l.m * l.n * l.out_batches;
    let slab_bytes = (slab * 4).next_multiple_of(16) as u64;
    let limit = gpu.scratch_limit_bytes();
    let max_z = gpu.limits().max_compute_workgroups_per_dimension as usize;
    let per_wave = plan
        .splits
        .min(MAX_SLABS)
        .min((limit / slab_bytes) as usize)
        .min(max_z / l.out_batches);
    if per_wave == 0 {
        return Err(Error::LimitExceeded {
            what: format!("{OP}: split-K partial sums (bytes, scratch limit)"),
            requested: slab_bytes,
            limit,
        });
    }
    let part = Tensor::uninit(&gpu, &[per_wave, slab], crate::dtype::DType::F32)?;
    params.k_splits = to_u32(OP, "splits", plan.k_splits)?;
    params.r_per_split = to_u32(OP, "splits", plan.r_per_split)?;
    params.t_per_split = to_u32(OP, "splits", plan.t_per_split)?;
    for (wave, first) in (0..plan.splits).step_by(per_wave).enumerate() {
        let splits = per_wave.min(plan.splits - first);
        params.splits = splits as u32;
        params.split_base = to_u32(OP, "splits", first)?;
        let pipeline = gpu.pipeline(pipeline_key(l, kernel, Entry::MainPartial, wave > 0))?;
        batch.dispatch_bound(
            &pipeline,
            bytemuck::bytes_of(&params),
            &[(1, l.a.tensor), (2, l.b.tensor), (5, &part)],
            [tiles_x, tiles_y, (splits * l.out_batches) as u32],
        )?;
    }
    let (grid, groups_x) = crate::ops::checks::fold_grid(&gpu, slab.div_ceil(256))?;
    params.groups_x = groups_x;
    params.slabs = per_wave as u32;
    let pipeline = gpu.pipeline(pipeline_key(l, kernel, Entry::SplitkSum, false))?;
    batch.dispatch_bound(
        &pipeline,
        bytemuck::bytes_of(&params),
        &[(3, l.c), (4, bias), (5, &part)],
        grid,
    )
}

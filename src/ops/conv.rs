//! 2-D convolution, forward and backward.
//!
//! Layouts: activations NCHW (`[batch, channels, height, width]`), filters KCRS
//! (`[out_channels, in_channels / groups, kernel_h, kernel_w]`), bias `[out_channels]`, output NCHW.
//!
//! Implementation: im2col + the tiled matmul. `im2col` writes each image's column matrix
//! `[C·R·S, OH·OW]`; per group, one batched matmul computes `out[n] = W_g · col_g[n]`, which lands in
//! NCHW order with the bias (per output channel) and activation fused into its epilogue. Backward
//! reuses the same matmul on views: dW_g = Σ_n dOut_g\[n\] · col_g\[n\]ᵀ (the batch sum runs inside the
//! kernel), dcol = W_gᵀ · dOut_g, then `col2im` gathers dcol into dx. This was chosen over an
//! implicit-GEMM kernel because it reuses a kernel that is already tuned and tested on ragged
//! shapes; it costs the col buffer's memory traffic (C·R·S·OH·OW per image), which an implicit GEMM
//! would avoid. Images are processed in chunks so the col buffer fits one storage binding.

use crate::batch::Batch;
use crate::batch::GpuTimer;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::activation::Activation;
use crate::ops::checks::{
    checked, float_dtype, fold_grid, same_dtype, same_gpu, shader_stride, window_axis,
    MAX_WINDOW_TAPS,
};
use crate::ops::matmul::{record as record_matmul, BiasView, Launch, Operand};
use crate::ops::output_check::OutputCheck;
use crate::shaders::{entry_points, KernelSpec, Override, Prelude};
use crate::tensor::Tensor;
use crate::tune::{size_class, Candidate};

/// The forward candidates ([`crate::tune`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Conv2dCandidate {
    /// Writes each image's column matrix and runs the tuned matmul on it.
    Im2col,
    /// Reads the input in place (an implicit GEMM, one kernel, no scratch), which also makes
    /// depthwise convolutions one dispatch.
    Implicit,
}

impl Candidate for Conv2dCandidate {
    const OP: &'static str = "conv2d";
    const ALL: &'static [Self] = &[Self::Im2col, Self::Implicit];

    fn name(self) -> &'static str {
        match self {
            Self::Im2col => "im2col",
            Self::Implicit => "implicit",
        }
    }
}

/// A forward convolution's shape class: sizes rounded up to powers of two; the filter and the
/// stride exactly.
struct Conv2dClass {
    dtype: DType,
    n: usize,
    c: usize,
    k: usize,
    grouping: String,
    plane_out: usize,
    filter: (usize, usize),
    stride: (usize, usize),
}

impl std::fmt::Display for Conv2dClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?}/n{}/c{}/k{}/{}/out{}/f{}x{}/s{}x{}",
            self.dtype,
            self.n,
            self.c,
            self.k,
            self.grouping,
            self.plane_out,
            self.filter.0,
            self.filter.1,
            self.stride.0,
            self.stride.1
        )
    }
}

/// Most filter taps (C/groups × R × S) one `implicit` thread walks, under Mesa's loop limit.
const IMPLICIT_MAX_TAPS: usize = 16_384;

/// Stride, zero padding, dilation and groups of a convolution (PyTorch's `Conv2d` arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Step between windows (height, width); must be positive.
    pub stride: (usize, usize),
    /// Zeros added on each side (height, width).
    pub padding: (usize, usize),
    /// Spacing between kernel taps (height, width); must be positive.
    pub dilation: (usize, usize),
    /// Channel groups: 1 for a dense convolution, `in_channels` for depthwise.
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
        }
    }
}

/// Whether [`conv2d_backward`] computes the bias gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BiasGradient {
    /// No bias (or its gradient is not wanted).
    #[default]
    Skip,
    /// Sum dL/dout over images and pixels into `[out_channels]`.
    Compute,
}

/// Gradients of a convolution's inputs.
#[derive(Debug, Clone)]
pub struct Conv2dGrads {
    /// dL/dx, NCHW like the input.
    pub input: Tensor,
    /// dL/dW, KCRS like the filters.
    pub weight: Tensor,
    /// dL/dbias, `[out_channels]`, when asked for.
    pub bias: Option<Tensor>,
}

/// Checked shapes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    r: usize,
    s: usize,
    oh: usize,
    ow: usize,
    /// Padded input height and width (at most `MAX_PADDED_SIDE`).
    ph: usize,
    pw: usize,
    groups: usize,
    p: Conv2dParams,
}

impl Geometry {
    fn cg(&self) -> usize {
        self.c / self.groups
    }
    fn kg(&self) -> usize {
        self.k / self.groups
    }
    /// Rows of one image's column matrix.
    fn crs(&self) -> usize {
        self.c * self.r * self.s
    }
    fn plane_out(&self) -> usize {
        self.oh * self.ow
    }
    fn out_shape(&self) -> [usize; 4] {
        [self.n, self.k, self.oh, self.ow]
    }
}

fn geometry(op: &'static str, x: &Tensor, w: &Tensor, p: &Conv2dParams) -> Result<Geometry> {
    geometry_of(op, x.shape(), w.shape(), p)
}

fn geometry_of(
    op: &'static str,
    x_shape: &[usize],
    w_shape: &[usize],
    p: &Conv2dParams,
) -> Result<Geometry> {
    let (&[n, c, h, wd], &[k, cg, r, s]) = (x_shape, w_shape) else {
        return Err(Error::ShapeMismatch {
            op,
            details: format!(
                "input must be NCHW and filters KCRS (rank 4), got {x_shape:?} and {w_shape:?}"
            ),
        });
    };
    let invalid = |details: String| Err(Error::InvalidArgument { op, details });
    if p.stride.0 == 0 || p.stride.1 == 0 {
        return invalid(format!("stride must be positive, got {:?}", p.stride));
    }
    if p.dilation.0 == 0 || p.dilation.1 == 0 {
        return invalid(format!("dilation must be positive, got {:?}", p.dilation));
    }
    if p.groups == 0 || c % p.groups != 0 || k % p.groups != 0 {
        return invalid(format!(
            "groups = {} must divide in_channels {c} and out_channels {k}",
            p.groups
        ));
    }
    if cg != c / p.groups {
        return Err(Error::ShapeMismatch {
            op,
            details: format!(
                "filters have {cg} input channels, input has {c} in {} groups",
                p.groups
            ),
        });
    }
    let taps = checked(op, "kernel taps", r.checked_mul(s))?;
    if taps > MAX_WINDOW_TAPS {
        return Err(Error::LimitExceeded {
            what: format!("{op}: kernel taps (height × width)"),
            requested: taps as u64,
            limit: MAX_WINDOW_TAPS as u64,
        });
    }
    let span =
        |k: usize, d: usize| checked(op, "kernel span", (k - 1).checked_mul(d)).map(|x| x + 1);
    let (span_h, span_w) = (span(r, p.dilation.0)?, span(s, p.dilation.1)?);
    let (ph, oh) = window_axis(op, "height", h, p.padding.0, span_h, p.stride.0)?;
    let (pw, ow) = window_axis(op, "width", wd, p.padding.1, span_w, p.stride.1)?;
    Ok(Geometry {
        n,
        c,
        h,
        w: wd,
        k,
        r,
        s,
        oh,
        ow,
        ph,
        pw,
        groups: p.groups,
        p: *p,
    })
}

crate::shaders::shader_params! {
    struct Params {
        channels: u32,
        height: u32,
        width: u32,
        images: u32,
        out_h: u32,
        out_w: u32,
        kernel_h: u32,
        kernel_w: u32,
        stride_h: u32,
        stride_w: u32,
        pad_h: u32,
        pad_w: u32,
        dil_h: u32,
        dil_w: u32,
        x_offset: u32,
        groups_x: u32,
        out_channels: u32,
        in_per_group: u32,
        out_per_group: u32,
        first_image: u32,
    }
}

entry_points! {
    /// The entry points of `shaders/conv.wgsl`.
    enum Entry {
        Im2col = "im2col": Params,
        Col2im = "col2im": Params,
        ConvDirect = "conv_direct": Params,
    }
}

/// The contract of `shaders/conv.wgsl`.
pub(crate) static KERNEL: KernelSpec = KernelSpec {
    name: "conv",
    wgsl: include_str!("../../shaders/conv.wgsl"),
    preludes: &[Prelude::Activation],
    subgroup_preludes: None,
    dtypes: &[DType::F32, DType::F16],
    entries: ENTRY_POINTS,
    overrides: &[
        Override {
            name: "HAS_BIAS",
            values: &[0, 1],
        },
        Override {
            name: "KB",
            values: &[1, 4, 8],
        },
        Override {
            name: "ACTIVATION",
            values: &[0, 1, 2, 3, 4, 5],
        },
    ],
    override_sets: None,
    writes: &[2],
};
const _: () = assert!(std::mem::size_of::<Params>() == 80);

/// Images per chunk so that one chunk's column matrices fit a storage binding.
fn chunk_images(batch: &Batch, op: &'static str, g: &Geometry, elem: usize) -> Result<usize> {
    let per_image = (g.crs() * g.plane_out() * elem) as u64;
    let limit = batch.gpu().scratch_limit_bytes();
    if per_image.next_multiple_of(16) > limit {
        return Err(Error::LimitExceeded {
            what: format!("{op}: one image's im2col matrix (bytes, scratch limit)"),
            requested: per_image,
            limit,
        });
    }
    Ok(((limit / per_image.max(1)) as usize).clamp(1, g.n))
}

/// The shared part of the kernels' parameters for `images` images from `first`.
fn layout_params(g: &Geometry, first: usize, images: usize, groups_x: u32) -> Params {
    Params {
        channels: g.c as u32,
        height: g.h as u32,
        width: g.w as u32,
        images: images as u32,
        out_h: g.oh as u32,
        out_w: g.ow as u32,
        kernel_h: g.r as u32,
        kernel_w: g.s as u32,
        // Bounded by the padded sizes, which geometry() keeps under 2^31; the dims and offsets
        // above by tensor sizes, which are under 2^32 elements.
        stride_h: shader_stride(g.p.stride.0, g.ph),
        stride_w: shader_stride(g.p.stride.1, g.pw),
        pad_h: g.p.padding.0 as u32,
        pad_w: g.p.padding.1 as u32,
        dil_h: g.p.dilation.0 as u32,
        dil_w: g.p.dilation.1 as u32,
        x_offset: (first * g.c * g.h * g.w) as u32,
        groups_x,
        ..Default::default()
    }
}

/// im2col or col2im over `images` images starting at `first`.
fn record_layout(
    batch: &mut Batch,
    entry: Entry,
    g: &Geometry,
    first: usize,
    images: usize,
    src: &Tensor,
    dst: &Tensor,
) -> Result<()> {
    let total = if entry == Entry::Im2col {
        images * g.crs() * g.plane_out()
    } else {
        images * g.c * g.h * g.w
    };
    let (grid, groups_x) = fold_grid(batch.gpu(), total.div_ceil(256))?;
    let params = layout_params(g, first, images, groups_x);
    let pipeline = batch
        .gpu()
        .pipeline(KERNEL.pipeline(entry, src.dtype(), vec![]))?;
    batch.dispatch(&pipeline, bytemuck::bytes_of(&params), &[src, dst], grid)
}

/// How many partial weight gradients a chunk of `images` writes: enough output tiles to fill a
/// large GPU (about 256 workgroups), a divisor of `images`, and all of them within `scratch_limit`.
fn weight_grad_parts(g: &Geometry, images: usize, elem: usize, scratch_limit: u64) -> usize {
    let tiles = g.kg().div_ceil(64) * (g.cg() * g.r * g.s).div_ceil(64) * g.groups;
    let by_memory = (scratch_limit / (g.k * g.cg() * g.r * g.s * elem) as u64).max(1) as usize;
    let want = 256usize.div_ceil(tiles).min(by_memory).min(images).max(1);
    (1..=want)
        .rev()
        .find(|p| images.is_multiple_of(*p))
        .unwrap_or(1)
}

fn view(
    tensor: &Tensor,
    trans: bool,
    offset: usize,
    stride_z: usize,
    stride_r: usize,
) -> Operand<'_> {
    Operand {
        tensor,
        trans,
        offset: offset as u32,
        stride_z: stride_z as u32,
        stride_r: stride_r as u32,
    }
}

/// act(conv2d(x, w) + bias), NCHW.
pub fn conv2d(
    batch: &mut Batch,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    params: &Conv2dParams,
    activation: Activation,
) -> Result<Tensor> {
    const OP: &str = "conv2d";
    let g = geometry(OP, x, w, params)?;
    let mut all = vec![x, w];
    if let Some(b) = bias {
        if b.shape() != [g.k] {
            return Err(Error::ShapeMismatch {
                op: OP,
                details: format!("bias must be [{}], got {:?}", g.k, b.shape()),
            });
        }
        all.push(b);
    }
    same_dtype(OP, &all)?;
    same_gpu(OP, batch, &all)?;
    let dtype = float_dtype(OP, x)?;
    let out = Tensor::uninit(batch.gpu(), &g.out_shape(), dtype)?;
    let candidate = choose(batch.gpu(), &g, dtype)?;
    let forward = Forward {
        g: &g,
        x,
        w,
        bias,
        activation,
        out: &out,
    };
    record_forward(batch, &forward, candidate)?;
    Ok(out)
}

/// Records the forward with the named candidate.
fn record_forward(batch: &mut Batch, f: &Forward, candidate: Conv2dCandidate) -> Result<()> {
    match candidate {
        Conv2dCandidate::Implicit => record_implicit(batch, f),
        Conv2dCandidate::Im2col => record_im2col(batch, f),
    }
}

/// One forward convolution's operands.
struct Forward<'t> {
    g: &'t Geometry,
    x: &'t Tensor,
    w: &'t Tensor,
    bias: Option<&'t Tensor>,
    activation: Activation,
    out: &'t Tensor,
}

/// The forward kernel for `g`: forced, fixed (`im2col`; `implicit` on a CPU adapter), cached, or
/// timed now on random inputs of `g`'s shape.
fn choose(gpu: &crate::gpu::Gpu, g: &Geometry, dtype: DType) -> Result<Conv2dCandidate> {
    // im2col needs one image's column matrix under the scratch limit; where it does not fit,
    // the implicit kernel alone runs (or im2col reports the limit).
    let col_bytes = (g.crs() * g.plane_out() * dtype.size()).next_multiple_of(16) as u64;
    let im2col_fits = col_bytes <= gpu.scratch_limit_bytes();
    let mut fitting = Vec::new();
    if im2col_fits || g.cg() * g.r * g.s > IMPLICIT_MAX_TAPS {
        fitting.push(Conv2dCandidate::Im2col);
    }
    if g.cg() * g.r * g.s <= IMPLICIT_MAX_TAPS {
        fitting.push(Conv2dCandidate::Implicit);
    }
    // On a CPU adapter the implicit kernel (no barriers, no column matrix) is the default and is
    // timed first: im2col's first run tunes its matmul, which can use up the budget.
    if gpu.adapter_info().device_type == wgpu::DeviceType::Cpu {
        fitting.reverse();
    }
    let class = || Conv2dClass {
        dtype,
        n: size_class(g.n),
        c: size_class(g.c),
        k: size_class(g.k),
        grouping: match g.groups {
            1 => "dense".to_string(),
            n if n == g.c && g.kg() == 1 => "depthwise".to_string(),
            _ => format!("cg{}kg{}", size_class(g.cg()), size_class(g.kg())),
        },
        plane_out: size_class(g.plane_out()),
        filter: (g.r, g.s),
        stride: g.p.stride,
    };
    let mut scratch: Option<(Tensor, Tensor, Tensor, GpuTimer)> = None;
    let mut output_check = OutputCheck::new(dtype);
    Ok(gpu.0.tuner.choose(class, &fitting, true, |candidate| {
        if scratch.is_none() {
            let random = |shape: &[usize], seed| {
                let len = shape.iter().product();
                Tensor::from_f32(gpu, &crate::tune::random_inputs(len, seed), shape, dtype)
            };
            scratch = Some((
                random(&[g.n, g.c, g.h, g.w], 3)?,
                random(&[g.k, g.cg(), g.r, g.s], 4)?,
                Tensor::uninit(gpu, &g.out_shape(), dtype)?,
                GpuTimer::new(gpu),
            ));
        }
        let (x, w, out, timer) = scratch.as_mut().expect("made above");
        let f = Forward {
            g,
            x,
            w,
            bias: None,
            activation: Activation::None,
            out,
        };
        let took = timer.time(|batch| record_forward(batch, &f, candidate))?;
        output_check.check(candidate.name(), out)?;
        Ok(took)
    }))
}

/// The `implicit` candidate: `conv_direct`, in chunks of images that keep grid z in its limit.
fn record_implicit(batch: &mut Batch, f: &Forward) -> Result<()> {
    let g = f.g;
    // Output channels per thread: each input value loaded feeds KB of them (8 measured 21–26%
    // faster than 4 on lavapipe for 32 output channels).
    let kb = [8, 4, 1]
        .into_iter()
        .find(|kb| g.kg().is_multiple_of(*kb))
        .unwrap_or(1);
    let blocks = g.k / kb;
    let quads = g.plane_out().div_ceil(4);
    // Threads run along images × quads: chunks of at most 2^22 of them keep the index in u32.
    let chunk = ((1 << 22) / quads).clamp(1, g.n);
    let pipeline = batch.gpu().pipeline(KERNEL.pipeline(
        Entry::ConvDirect,
        f.x.dtype(),
        vec![
            ("HAS_BIAS", u32::from(f.bias.is_some())),
            ("KB", kb as u32),
            ("ACTIVATION", f.activation.code()),
        ],
    ))?;
    // Unused bias slot: bind the filters again (read-only).
    let bias = f.bias.unwrap_or(f.w);
    for first in (0..g.n).step_by(chunk) {
        let images = chunk.min(g.n - first);
        let (grid, groups_x) = fold_grid(batch.gpu(), (images * quads).div_ceil(64))?;
        let params = Params {
            first_image: first as u32,
            out_channels: g.k as u32,
            in_per_group: g.cg() as u32,
            out_per_group: g.kg() as u32,
            x_offset: 0,
            ..layout_params(g, first, images, groups_x)
        };
        batch.dispatch(
            &pipeline,
            bytemuck::bytes_of(&params),
            &[f.x, f.out, f.w, bias],
            [grid[0], grid[1], blocks as u32],
        )?;
    }
    Ok(())
}

/// The `im2col` candidate: column matrices of chunks of images, each multiplied by the filters.
fn record_im2col(batch: &mut Batch, f: &Forward) -> Result<()> {
    let (g, x, w, bias, activation, out) = (f.g, f.x, f.w, f.bias, f.activation, f.out);
    let dtype = x.dtype();
    let chunk = chunk_images(batch, "conv2d", g, dtype.size())?;
    let col = Tensor::uninit(batch.gpu(), &[chunk, g.crs(), g.plane_out()], dtype)?;
    let (cgrs, pout) = (g.cg() * g.r * g.s, g.plane_out());
    for first in (0..g.n).step_by(chunk) {
        let images = chunk.min(g.n - first);
        record_layout(batch, Entry::Im2col, g, first, images, x, &col)?;
        for grp in 0..g.groups {
            record_matmul(
                batch,
                &Launch {
                    a: view(w, false, grp * g.kg() * cgrs, 0, 0),
                    b: view(&col, false, grp * cgrs * pout, g.crs() * pout, 0),
                    c: out,
                    c_offset: ((first * g.k + grp * g.kg()) * pout) as u32,
                    c_stride_z: (g.k * pout) as u32,
                    bias: bias.map(|tensor| BiasView {
                        tensor,
                        offset: (grp * g.kg()) as u32,
                        per_row: true,
                    }),
                    activation,
                    accumulate: false,
                    m: g.kg(),
                    n: pout,
                    k: cgrs,
                    out_batches: images,
                    reduce_count: 1,
                },
            )?;
        }
    }
    Ok(())
}

/// One chunk of images of a convolution's backward pass: where its gradients go.
struct ChunkGrads<'a> {
    grad_out: &'a Tensor,
    w: &'a Tensor,
    /// The chunk's im2col columns, and their gradient.
    col: &'a Tensor,
    dcol: &'a Tensor,
    /// dW's partial sums, `[parts, |W|]`.
    partial: &'a Tensor,
    first: usize,
    images: usize,
    /// Partial sums this chunk writes, from `part0`.
    parts: usize,
    part0: usize,
    /// Add to the partial sums (one partial for all chunks) rather than write them.
    accumulate: bool,
}

impl ChunkGrads<'_> {
    /// Group `grp`'s partial dW and dcol.
    fn record_group(&self, batch: &mut Batch, g: &Geometry, grp: usize) -> Result<()> {
        let (cgrs, pout, kp) = (g.cg() * g.r * g.s, g.plane_out(), g.k * g.plane_out());
        let dw_size = self.w.numel();
        let per_part = self.images / self.parts;
        let dout_offset = (self.first * g.k + grp * g.kg()) * pout;
        // Partial dW_g = Σ over its images of dOut_g[n] · col_g[n]ᵀ: [Kg, OH·OW] · [OH·OW, Cg·R·S].
        record_matmul(
            batch,
            &Launch {
                a: view(self.grad_out, false, dout_offset, per_part * kp, kp),
                b: view(
                    self.col,
                    true,
                    grp * cgrs * pout,
                    per_part * g.crs() * pout,
                    g.crs() * pout,
                ),
                c: self.partial,
                c_offset: (self.part0 * dw_size + grp * g.kg() * cgrs) as u32,
                c_stride_z: dw_size as u32,
                bias: None,
                activation: Activation::None,
                accumulate: self.accumulate,
                m: g.kg(),
                n: cgrs,
                k: pout,
                out_batches: self.parts,
                reduce_count: per_part,
            },
        )?;
        // dcol_g[n] = W_gᵀ · dOut_g[n]: [Cg·R·S, Kg] · [Kg, OH·OW].
        record_matmul(
            batch,
            &Launch {
                a: view(self.w, true, grp * g.kg() * cgrs, 0, 0),
                b: view(self.grad_out, false, dout_offset, kp, 0),
                c: self.dcol,
                c_offset: (grp * cgrs * pout) as u32,
                c_stride_z: (g.crs() * pout) as u32,
                bias: None,
                activation: Activation::None,
                accumulate: false,
                m: cgrs,
                n: pout,
                k: g.kg(),
                out_batches: self.images,
                reduce_count: 1,
            },
        )
    }
}

/// Gradients of `conv2d(x, w) + bias` (no activation: apply its backward to `grad_out` first) with
/// respect to x, w and, with [`BiasGradient::Compute`], the bias.
pub fn conv2d_backward(
    batch: &mut Batch,
    x: &Tensor,
    w: &Tensor,
    grad_out: &Tensor,
    params: &Conv2dParams,
    bias: BiasGradient,
) -> Result<Conv2dGrads> {
    const OP: &str = "conv2d_backward";
    let g = geometry(OP, x, w, params)?;
    if grad_out.shape() != g.out_shape() {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!(
                "grad_out is {:?}, the output is {:?}",
                grad_out.shape(),
                g.out_shape()
            ),
        });
    }
    same_dtype(OP, &[x, w, grad_out])?;
    same_gpu(OP, batch, &[x, w, grad_out])?;
    let dtype = float_dtype(OP, x)?;
    let gpu = batch.gpu().clone();
    let dx = Tensor::uninit(&gpu, x.shape(), dtype)?;
    let chunk = chunk_images(batch, OP, &g, dtype.size())?;
    let col = Tensor::uninit(&gpu, &[chunk, g.crs(), g.plane_out()], dtype)?;
    let dcol = Tensor::uninit(&gpu, &[chunk, g.crs(), g.plane_out()], dtype)?;
    // dW sums over images. One workgroup per output tile would leave a large GPU idle (9 tiles for
    // a 128→128 3×3 layer), so each chunk writes `parts` partial sums side by side, and one
    // channel_sum over all partials finishes dW.
    let chunks: Vec<(usize, usize)> = (0..g.n)
        .step_by(chunk)
        .map(|f| (f, chunk.min(g.n - f)))
        .collect();
    // Where even one partial per chunk would not fit the scratch limit, chunks accumulate into one.
    let dw_size = w.numel();
    let limit = gpu.scratch_limit_bytes();
    let split = (chunks.len() * dw_size * dtype.size()) as u64 <= limit;
    let per_chunk_limit = limit / chunks.len() as u64;
    let parts_of = |images: usize| {
        if split {
            weight_grad_parts(&g, images, dtype.size(), per_chunk_limit)
        } else {
            1
        }
    };
    let total_parts: usize = if split {
        chunks.iter().map(|&(_, images)| parts_of(images)).sum()
    } else {
        1
    };
    let partial = Tensor::uninit(&gpu, &[total_parts, dw_size], dtype)?;
    let mut part0 = 0;
    for (chunk_index, &(first, images)) in chunks.iter().enumerate() {
        record_layout(batch, Entry::Im2col, &g, first, images, x, &col)?;
        let parts = parts_of(images);
        let chunk = ChunkGrads {
            grad_out,
            w,
            col: &col,
            dcol: &dcol,
            partial: &partial,
            first,
            images,
            parts,
            part0,
            accumulate: !split && chunk_index > 0,
        };
        for grp in 0..g.groups {
            chunk.record_group(batch, &g, grp)?;
        }
        record_layout(batch, Entry::Col2im, &g, first, images, &dcol, &dx)?;
        if split {
            part0 += parts;
        }
    }
    let dw = if total_parts == 1 {
        partial.reshape(w.shape())?
    } else {
        crate::ops::reduce::channel_sum(batch, &partial, 1)?.reshape(w.shape())?
    };
    let bias = if bias == BiasGradient::Compute {
        Some(crate::ops::reduce::channel_sum(batch, grad_out, 1)?)
    } else {
        None
    };
    Ok(Conv2dGrads {
        input: dx,
        weight: dw,
        bias,
    })
}

/// act(conv2d(x, W) + bias) with compact filters (int8 with per-output-channel scales, or packed
/// f16; see [`crate::ops::quantized_linear::QuantizedWeights`], made from the KCRS filters as `[K, C·R·S]`):
/// im2col, then the dequantizing kernel writes NCHW. `filter_shape` is the KCRS shape. Dense
/// convolutions only (groups 1).
pub fn conv2d_quantized(
    batch: &mut Batch,
    x: &Tensor,
    filter_shape: [usize; 4],
    w: &crate::ops::quantized_linear::QuantizedWeights,
    bias: Option<&Tensor>,
    params: &Conv2dParams,
    activation: Activation,
) -> Result<Tensor> {
    const OP: &str = "conv2d_quantized";
    if params.groups != 1 {
        return Err(Error::InvalidArgument {
            op: OP,
            details: "compact filters serve dense convolutions (groups 1)".into(),
        });
    }
    let g = geometry_of(OP, x.shape(), &filter_shape, params)?;
    if (w.n, w.k) != (g.k, g.crs()) {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!(
                "filters {filter_shape:?} need weights [{}, {}], got [{}, {}]",
                g.k,
                g.crs(),
                w.n,
                w.k
            ),
        });
    }
    if let Some(b) = bias {
        if b.shape() != [g.k] {
            return Err(Error::ShapeMismatch {
                op: OP,
                details: format!("bias must be [{}], got {:?}", g.k, b.shape()),
            });
        }
        same_dtype(OP, &[x, b])?;
    }
    same_gpu(OP, batch, &[x, &w.packed])?;
    let dtype = float_dtype(OP, x)?;
    let out = Tensor::uninit(batch.gpu(), &g.out_shape(), dtype)?;
    let chunk = chunk_images(batch, OP, &g, dtype.size())?;
    let col = Tensor::uninit(batch.gpu(), &[chunk, g.crs(), g.plane_out()], dtype)?;
    for first in (0..g.n).step_by(chunk) {
        let images = chunk.min(g.n - first);
        record_layout(batch, Entry::Im2col, &g, first, images, x, &col)?;
        crate::ops::quantized_linear::record_conv(
            batch,
            &col,
            images,
            g.plane_out(),
            w,
            bias,
            activation,
            &out,
            first * g.k * g.plane_out(),
        )?;
    }
    Ok(out)
}

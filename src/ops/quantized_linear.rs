//! A Linear layer with compact weights: y = act(x · dequant(W)ᵀ + bias), W `[N, K]` either int8
//! quantized symmetrically per output channel (scale = max |w| / 127; a quarter of the f32 bytes)
//! or f16 packed in pairs (half the bytes; read with `unpack2x16float`, so it needs no
//! `SHADER_F16`). Dequantized inside the kernel.

use crate::batch::Batch;
use crate::dtype::{DType, Precision};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops::activation::Activation;
use crate::ops::checks::{float_dtype, fold_grid, same_dtype, same_gpu, to_u32};
use crate::shaders::{entry_points, KernelSpec, Override, Prelude};
use crate::tensor::Tensor;

crate::shaders::shader_params! {
    struct Params {
        rows: u32,
        n: u32,
        k: u32,
        words: u32,
        groups_x: u32,
        plane: u32,
        y_offset: u32,
        _pad: u32,
    }
}

entry_points! {
    /// The entry points of `shaders/quantized_linear.wgsl`.
    enum Entry {
        Main = "main": Params,
        Conv = "conv": Params,
    }
}

/// The contract of `shaders/quantized_linear.wgsl`.
pub(crate) static KERNEL: KernelSpec = KernelSpec {
    name: "quantized_linear",
    wgsl: include_str!("../../shaders/quantized_linear.wgsl"),
    preludes: &[Prelude::Activation],
    subgroup_preludes: None,
    dtypes: &[DType::F32, DType::F16],
    entries: ENTRY_POINTS,
    overrides: &[
        Override {
            name: "FORMAT",
            values: &[0, 1],
        },
        Override {
            name: "HAS_BIAS",
            values: &[0, 1],
        },
        Override {
            name: "ACTIVATION",
            values: &[0, 1, 2, 3, 4, 5],
        },
    ],
    override_sets: None,
    writes: &[2],
};

/// Most inputs (K) the kernel takes: each thread walks K / 4 packed words.
pub const MAX_INPUTS: usize = 65_536;

/// Symmetric per-row int8 quantization of `w` (`[n, k]`, row-major): `(q, scales)` with
/// `w[r, c] ≈ scales[r] · q[r, c]`, q in -127..=127. An all-zero row gets scale 1.
pub fn quantize_int8(w: &[f32], n: usize, k: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::with_capacity(n * k);
    let mut scales = Vec::with_capacity(n);
    for row in w.chunks(k).take(n) {
        let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        scales.push(scale);
        q.extend(
            row.iter()
                .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8),
        );
    }
    (q, scales)
}

/// Compact weights on the GPU, packed into u32 words, with their per-row scales.
#[derive(Debug, Clone)]
pub struct QuantizedWeights {
    /// `[n, words per row]` U32 words.
    pub packed: Tensor,
    /// `[n]` f32 scales (all 1 for f16).
    pub scales: Tensor,
    /// How the weights are stored: [`Precision::Int8`] (four per word, a scale per output
    /// channel) or [`Precision::F16`] (two per word).
    pub format: Precision,
    /// Output channels.
    pub n: usize,
    /// Inputs.
    pub k: usize,
}

impl QuantizedWeights {
    /// `w` (`[n, k]`) in `precision`: [`Self::new`] for int8, [`Self::packed_f16`] for f16; f32
    /// is no compact format ([`Error::InvalidArgument`]).
    pub fn quantize(
        gpu: &Gpu,
        w: &[f32],
        n: usize,
        k: usize,
        precision: Precision,
    ) -> Result<Self> {
        match precision {
            Precision::Int8 => Self::new(gpu, w, n, k),
            Precision::F16 => Self::packed_f16(gpu, w, n, k),
            Precision::F32 => Err(Error::InvalidArgument {
                op: "QuantizedWeights::quantize",
                details: "f32 weights are not compact weights: keep the layer as it is".into(),
            }),
        }
    }

    /// Quantizes `w` (`[n, k]`, a Linear weight in PyTorch's layout) and uploads it.
    pub fn new(gpu: &Gpu, w: &[f32], n: usize, k: usize) -> Result<Self> {
        if w.len() != n * k || n == 0 || k == 0 {
            return Err(Error::DataLength {
                expected: n * k,
                found: w.len(),
            });
        }
        let (q, scales) = quantize_int8(w, n, k);
        Self::from_quantized(gpu, &q, &scales, n, k)
    }

    /// Uploads already quantized weights `q` (`[n, k]`) and `scales` (`[n]`).
    pub fn from_quantized(gpu: &Gpu, q: &[i8], scales: &[f32], n: usize, k: usize) -> Result<Self> {
        if q.len() != n * k || scales.len() != n {
            return Err(Error::DataLength {
                expected: n * k,
                found: q.len(),
            });
        }
        let words = k.div_ceil(4);
        let mut packed = vec![0u32; n * words];
        for (r, row) in q.chunks(k).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                packed[r * words + c / 4] |= u32::from(v as u8) << (8 * (c % 4));
            }
        }
        Ok(QuantizedWeights {
            packed: Tensor::from_slice(gpu, &packed, &[n, words])?,
            scales: Tensor::from_slice(gpu, scales, &[n])?,
            format: Precision::Int8,
            n,
            k,
        })
    }

    /// `w` (`[n, k]`) rounded to f16 and packed two per word.
    pub fn packed_f16(gpu: &Gpu, w: &[f32], n: usize, k: usize) -> Result<Self> {
        if w.len() != n * k || n == 0 || k == 0 {
            return Err(Error::DataLength {
                expected: n * k,
                found: w.len(),
            });
        }
        let words = k.div_ceil(2);
        let mut packed = vec![0u32; n * words];
        for (r, row) in w.chunks(k).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                let bits = u32::from(half::f16::from_f32(v).to_bits());
                packed[r * words + c / 2] |= bits << (16 * (c % 2));
            }
        }
        Ok(QuantizedWeights {
            packed: Tensor::from_slice(gpu, &packed, &[n, words])?,
            scales: Tensor::full(gpu, &[n], crate::dtype::DType::F32, 1.0)?,
            format: Precision::F16,
            n,
            k,
        })
    }

    /// Bytes the weights take: the packed words, and the scales for int8.
    pub fn size_bytes(&self) -> u64 {
        match self.format {
            Precision::Int8 => self.packed.size_bytes() + self.scales.size_bytes(),
            _ => self.packed.size_bytes(),
        }
    }
}

/// y = act(x · dequant(W)ᵀ + bias): x `[rows, k]` (f32 or f16), y `[rows, n]` in x's dtype.
pub fn quantized_linear(
    batch: &mut Batch,
    x: &Tensor,
    w: &QuantizedWeights,
    bias: Option<&Tensor>,
    activation: Activation,
) -> Result<Tensor> {
    const OP: &str = "quantized_linear";
    let dtype = float_dtype(OP, x)?;
    let &[rows, k] = x.shape() else {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!("x must be [rows, {}], got {:?}", w.k, x.shape()),
        });
    };
    if k != w.k {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!("x has {k} inputs, the weights {}", w.k),
        });
    }
    if k > MAX_INPUTS {
        return Err(Error::LimitExceeded {
            what: format!("{OP}: inputs (a per-thread loop)"),
            requested: k as u64,
            limit: MAX_INPUTS as u64,
        });
    }
    let mut all = vec![x, &w.packed, &w.scales];
    if let Some(b) = bias {
        if b.shape() != [w.n] {
            return Err(Error::ShapeMismatch {
                op: OP,
                details: format!("bias must be [{}], got {:?}", w.n, b.shape()),
            });
        }
        same_dtype(OP, &[x, b])?;
        all.push(b);
    }
    same_gpu(OP, batch, &all)?;
    let y = Tensor::uninit(batch.gpu(), &[rows, w.n], dtype)?;
    let outputs = rows.checked_mul(w.n).ok_or(Error::LimitExceeded {
        what: format!("{OP}: outputs"),
        requested: u64::MAX,
        limit: u64::from(u32::MAX),
    })?;
    let (grid, groups_x) = fold_grid(batch.gpu(), outputs.div_ceil(64))?;
    let params = Params {
        rows: to_u32(OP, "rows", rows)?,
        n: to_u32(OP, "outputs", w.n)?,
        k: to_u32(OP, "inputs", k)?,
        words: to_u32(OP, "words", w.packed.shape()[1])?,
        groups_x,
        ..Default::default()
    };
    dispatch(
        batch,
        Entry::Main,
        &params,
        grid,
        (x, &y),
        w,
        bias,
        activation,
    )?;
    Ok(y)
}

/// The convolution form (`conv` entry): `col` `[images, K, plane]` (im2col of a chunk of images)
/// times the filters `w` (`[out channels, K]`) into NCHW `y` from element `y_offset`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_conv(
    batch: &mut Batch,
    col: &Tensor,
    images: usize,
    plane: usize,
    w: &QuantizedWeights,
    bias: Option<&Tensor>,
    activation: Activation,
    y: &Tensor,
    y_offset: usize,
) -> Result<()> {
    const OP: &str = "conv2d_quantized";
    float_dtype(OP, col)?;
    if w.k > MAX_INPUTS {
        return Err(Error::LimitExceeded {
            what: format!("{OP}: filter taps C·R·S (a per-thread loop)"),
            requested: w.k as u64,
            limit: MAX_INPUTS as u64,
        });
    }
    let outputs = images * w.n * plane; // within y, a checked tensor
    let (grid, groups_x) = fold_grid(batch.gpu(), outputs.div_ceil(64))?;
    let params = Params {
        rows: to_u32(OP, "images", images)?,
        n: to_u32(OP, "outputs", w.n)?,
        k: to_u32(OP, "inputs", w.k)?,
        words: to_u32(OP, "words", w.packed.shape()[1])?,
        groups_x,
        plane: to_u32(OP, "plane", plane)?,
        y_offset: to_u32(OP, "offset", y_offset)?,
        _pad: 0,
    };
    dispatch(
        batch,
        Entry::Conv,
        &params,
        grid,
        (col, y),
        w,
        bias,
        activation,
    )
}

/// Records `entry` with `x` and `y` at bindings 1 and 2; without a bias, x fills the (unread)
/// bias slot.
#[allow(clippy::too_many_arguments)]
fn dispatch(
    batch: &mut Batch,
    entry: Entry,
    params: &Params,
    grid: [u32; 3],
    (x, y): (&Tensor, &Tensor),
    w: &QuantizedWeights,
    bias: Option<&Tensor>,
    activation: Activation,
) -> Result<()> {
    let pipeline = batch.gpu().pipeline(KERNEL.pipeline(
        entry,
        x.dtype(),
        vec![
            ("HAS_BIAS", u32::from(bias.is_some())),
            ("ACTIVATION", activation.code()),
            ("FORMAT", u32::from(w.format == Precision::F16)),
        ],
    ))?;
    batch.dispatch_bound(
        &pipeline,
        bytemuck::bytes_of(params),
        &[
            (1, x),
            (2, y),
            (3, &w.packed),
            (4, &w.scales),
            (5, bias.unwrap_or(x)),
        ],
        grid,
    )
}

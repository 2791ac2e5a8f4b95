//! A sequential model: layers in order over one parameter arena.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::layers::{Layer, LayerSpec};
use super::params::{HostParameters, ParamStore};
use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::tensor::Tensor;

/// How weights are initialized (biases start at zero). Seeded: the same seed gives the same values
/// on every machine, and [`crate::reference::nn`] starts from the same ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// He/Kaiming uniform for ReLU networks: U(±sqrt(6 / fan_in)).
    KaimingUniform {
        /// Random seed.
        seed: u64,
    },
    /// Glorot/Xavier uniform: U(±sqrt(6 / (fan_in + fan_out))).
    XavierUniform {
        /// Random seed.
        seed: u64,
    },
}

impl Init {
    /// Initial values of every parameter of `specs`, as (name, shape, values), in layer order.
    /// The layers are checked first ([`LayerSpec::validate`]), and their parameters must number
    /// at most `u32::MAX` elements in all (what one arena can index), before anything is made.
    pub fn values(&self, specs: &[LayerSpec]) -> Result<HostParameters> {
        let seed = match *self {
            Init::KaimingUniform { seed } | Init::XavierUniform { seed } => seed,
        };
        parameter_elements(specs)?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut out = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            for (name, shape) in spec.parameter_shapes() {
                let numel: usize = shape.iter().product();
                let data = if name == "bias" {
                    vec![0.0; numel]
                } else {
                    // Weights are [out, in, ...]: fan_in = numel / out, fan_out = numel / in
                    // (sizes are at least 1: validated above).
                    let fan_in = (numel / shape[0]) as f64;
                    let fan_out = (numel / shape[1]) as f64;
                    let bound = match self {
                        Init::KaimingUniform { .. } => (6.0 / fan_in).sqrt(),
                        Init::XavierUniform { .. } => (6.0 / (fan_in + fan_out)).sqrt(),
                    } as f32;
                    (0..numel)
                        .map(|_| rng.random_range(-bound..bound))
                        .collect()
                };
                out.push((format!("{i}.{name}"), shape, data));
            }
        }
        Ok(out)
    }
}

/// The number of parameter elements of `specs`, each layer validated, in checked arithmetic, at
/// most `u32::MAX`.
fn parameter_elements(specs: &[LayerSpec]) -> Result<usize> {
    let too_many = || Error::LimitExceeded {
        what: "parameter elements of the model (u32 indexing)".into(),
        requested: u64::MAX,
        limit: u64::from(u32::MAX),
    };
    let mut total = 0usize;
    for spec in specs {
        spec.validate()?;
        for (_, shape) in spec.parameter_shapes() {
            let numel = shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .ok_or_else(too_many)?;
            total = total.checked_add(numel).ok_or_else(too_many)?;
        }
    }
    if total > u32::MAX as usize {
        return Err(Error::LimitExceeded {
            what: "parameter elements of the model (u32 indexing)".into(),
            requested: total as u64,
            limit: u64::from(u32::MAX),
        });
    }
    Ok(total)
}

/// Checks an architecture before anything is made for it: the input shape (each side at least 1,
/// its element count in u32), every layer ([`LayerSpec::validate`]), that the layers chain from
/// the input, and that the parameters fit one arena on `gpu` (its storage-binding and buffer
/// limits, with the arena's alignment gaps).
pub(crate) fn check_architecture(
    gpu: &Gpu,
    input_shape: &[usize],
    specs: &[LayerSpec],
) -> Result<()> {
    if specs.is_empty() {
        return Err(Error::InvalidArgument {
            op: "Sequential::new",
            details: "a model needs at least one layer".into(),
        });
    }
    if input_shape.is_empty() || input_shape.contains(&0) {
        return Err(Error::InvalidArgument {
            op: "Sequential::new",
            details: format!(
                "the per-sample input shape needs at least one dimension, each at least 1, got \
                 {input_shape:?}"
            ),
        });
    }
    let fits = input_shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .is_some_and(|n| n <= u32::MAX as usize);
    if !fits {
        return Err(Error::LimitExceeded {
            what: format!("Sequential::new: elements of one sample of {input_shape:?}"),
            requested: u64::MAX,
            limit: u64::from(u32::MAX),
        });
    }
    // The shapes chain, with a batch of 1.
    let mut shape = [&[1usize][..], input_shape].concat();
    for spec in specs {
        shape = spec.output_shape(&shape)?;
    }
    parameter_elements(specs)?;
    // One arena: each parameter rounded up to the view alignment (as ParamStore lays it out).
    let align = ParamStore::alignment(gpu) as u64;
    let arena = specs
        .iter()
        .flat_map(|s| s.parameter_shapes())
        .map(|(_, shape)| shape.iter().product::<usize>() as u64)
        .fold(0u64, |total, n| {
            total.saturating_add(n.div_ceil(align).saturating_mul(align))
        });
    let bytes = arena.saturating_mul(4);
    let limits = gpu.limits();
    gpu.check_limit(
        "parameter arena bytes (max_storage_buffer_binding_size)",
        bytes,
        limits.max_storage_buffer_binding_size,
    )?;
    gpu.check_limit(
        "parameter arena bytes (max_buffer_size)",
        bytes,
        limits.max_buffer_size,
    )
}

/// Layers applied in order, with their parameters in one [`ParamStore`]. A ReLU right after a
/// Linear or Conv2d runs in that layer's epilogue (one dispatch for both).
#[derive(Debug)]
pub struct Sequential {
    gpu: Gpu,
    input_shape: Vec<usize>,
    specs: Vec<LayerSpec>,
    layers: Vec<Layer>,
    params: ParamStore,
}

impl Sequential {
    /// Switches the model to mixed precision: f16 weight copies and f16 activations and gradients
    /// (the f32 master weights stay, and are what is saved). Needs the adapter's `SHADER_F16`.
    pub fn enable_mixed_precision(&mut self) -> Result<()> {
        if !self.gpu.supports_f16() {
            return Err(Error::UnsupportedFeature {
                feature: "SHADER_F16",
                op: "Sequential::enable_mixed_precision",
            });
        }
        self.params.enable_half()?;
        let mut views = self.params.params().iter();
        for layer in &mut self.layers {
            let n = layer.spec().parameter_shapes().len();
            let half = views
                .by_ref()
                .take(n)
                .filter_map(|p| p.half.clone())
                .collect();
            layer.set_params(half);
        }
        Ok(())
    }

    /// Returns the model to f32 compute (the f16 copies are dropped; the f32 master weights,
    /// which the optimizer updated all along, are what the layers read again). Does nothing for
    /// a model in f32.
    pub fn disable_mixed_precision(&mut self) {
        if self.params.half().is_none() {
            return;
        }
        self.params.disable_half();
        let mut views = self.params.params().iter();
        for layer in &mut self.layers {
            let n = layer.spec().parameter_shapes().len();
            let own = views
                .by_ref()
                .take(n)
                .map(|p| (p.value.clone(), p.grad.clone()))
                .collect();
            layer.set_params(own);
        }
    }

    /// Checks that a batch of `batch_size` fits the adapter: every activation of the forward pass
    /// (the input included) within u32 indexing and the storage-binding limit, in checked
    /// arithmetic. [`crate::infer::InferenceSession::new`] runs it for its largest bucket before
    /// it makes anything.
    pub fn check_batch_size(&self, batch_size: usize) -> Result<()> {
        if batch_size == 0 {
            return Err(Error::InvalidArgument {
                op: "Sequential::check_batch_size",
                details: "a batch needs at least one sample".into(),
            });
        }
        let bytes_per = self.compute_dtype().size() as u64;
        let limit = self.gpu.limits().max_storage_buffer_binding_size;
        let mut shape = [&[batch_size][..], &self.input_shape].concat();
        let check = |shape: &[usize], what: &str| {
            let numel = shape
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
                .unwrap_or(u64::MAX);
            self.gpu.check_limit(
                &format!("batch of {batch_size}: elements of the {what} {shape:?} (u32 indexing)"),
                numel,
                u64::from(u32::MAX),
            )?;
            self.gpu.check_limit(
                &format!(
                    "batch of {batch_size}: bytes of the {what} {shape:?} \
                     (max_storage_buffer_binding_size)"
                ),
                numel.saturating_mul(bytes_per),
                limit,
            )
        };
        check(&shape, "input")?;
        for spec in &self.specs {
            shape = spec.output_shape(&shape)?;
            check(&shape, &format!("{} output", spec.kind()))?;
        }
        Ok(())
    }

    /// Stores every Linear and Conv2d layer's weight in `format` (int8 with one scale per output
    /// channel, or packed f16); the forward pass dequantizes inside the kernel, and biases and
    /// activations stay f32. For inference: a quantized model cannot train. Returns the bytes all
    /// parameters now take.
    pub fn quantize_weights(&mut self, precision: crate::dtype::Precision) -> Result<usize> {
        if self.compute_dtype() != crate::dtype::DType::F32 {
            return Err(Error::InvalidArgument {
                op: "Sequential::quantize_weights",
                details: "quantize an f32 model (int8 weights take f32 activations)".into(),
            });
        }
        let host = self.params.to_host()?;
        let mut bytes = 0usize;
        let mut values = host.iter();
        for layer in &mut self.layers {
            let own: Vec<_> = values
                .by_ref()
                .take(layer.spec().parameter_shapes().len())
                .collect();
            let quantizable = matches!(
                layer.spec(),
                LayerSpec::Linear { .. } | LayerSpec::Conv2d { .. }
            );
            match own.first() {
                Some((_, shape, w)) if quantizable => {
                    // [out, in] or [out, in, kh, kw]: one row of K = numel / out per channel.
                    let (o, i) = (shape[0], w.len() / shape[0]);
                    let q = crate::ops::QuantizedWeights::quantize(&self.gpu, w, o, i, precision)?;
                    bytes += q.size_bytes() as usize + 4 * o; // the weights, and the f32 bias
                    layer.set_quantized(q);
                }
                _ => bytes += own.iter().map(|(_, _, v)| 4 * v.len()).sum::<usize>(),
            }
        }
        Ok(bytes)
    }

    /// The dtype of activations and compute: F32, or F16 in mixed precision.
    pub fn compute_dtype(&self) -> crate::dtype::DType {
        if self.params.half().is_some() {
            crate::dtype::DType::F16
        } else {
            crate::dtype::DType::F32
        }
    }
}

impl Sequential {
    /// A model for inputs of `input_shape` per sample (e.g. `[64]`, or `[1, 8, 8]` for images),
    /// with weights from `init`. The architecture is checked first (every size at least 1, the
    /// layers chain from the input, the parameters fit the adapter's limits), before any value is
    /// made.
    pub fn new(
        gpu: &Gpu,
        input_shape: &[usize],
        specs: Vec<LayerSpec>,
        init: Init,
    ) -> Result<Self> {
        gpu.check_alive()?;
        check_architecture(gpu, input_shape, &specs)?;
        let values = init.values(&specs)?;
        Self::with_parameters(gpu, input_shape, specs, values)
    }

    /// A model with the given parameter values (name, shape, values), in layer order: what loading
    /// a saved model does. Checked as [`Self::new`] checks, and the values against the layers.
    pub fn with_parameters(
        gpu: &Gpu,
        input_shape: &[usize],
        specs: Vec<LayerSpec>,
        values: HostParameters,
    ) -> Result<Self> {
        gpu.check_alive()?;
        check_architecture(gpu, input_shape, &specs)?;
        let expected: Vec<(String, Vec<usize>)> = specs
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                s.parameter_shapes()
                    .into_iter()
                    .map(move |(n, sh)| (format!("{i}.{n}"), sh))
            })
            .collect();
        let given: Vec<(String, Vec<usize>)> = values
            .iter()
            .map(|(n, s, _)| (n.clone(), s.clone()))
            .collect();
        if expected != given {
            let first = expected
                .iter()
                .zip(&given)
                .find(|(e, g)| e != g)
                .map(|(e, g)| {
                    format!(
                        "the first difference: {} {:?} against {} {:?}",
                        e.0, e.1, g.0, g.1
                    )
                })
                .unwrap_or_else(|| {
                    format!(
                        "{} parameters needed, {} given",
                        expected.len(),
                        given.len()
                    )
                });
            return Err(Error::ShapeMismatch {
                op: "Sequential::with_parameters",
                details: format!("the values do not match the layers' parameters: {first}"),
            });
        }
        let params = ParamStore::new(gpu, &values)?;
        let mut views = params.params().iter();
        let mut layers: Vec<Layer> = Vec::with_capacity(specs.len());
        for spec in &specs {
            let n = spec.parameter_shapes().len();
            let own = views
                .by_ref()
                .take(n)
                .map(|p| (p.value.clone(), p.grad.clone()))
                .collect();
            let mut layer = Layer::new(spec.clone(), own);
            if let Some(previous) = layers.last_mut() {
                if previous.fuse(spec) {
                    layer.absorb();
                }
            }
            layers.push(layer);
        }
        Ok(Sequential {
            gpu: gpu.clone(),
            input_shape: input_shape.to_vec(),
            specs,
            layers,
            params,
        })
    }

    /// The context the model lives on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }
    /// The per-sample input shape.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }
    /// The layers' architecture.
    pub fn specs(&self) -> &[LayerSpec] {
        &self.specs
    }
    /// The layers.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }
    /// The parameters.
    pub fn params(&self) -> &ParamStore {
        &self.params
    }
    /// The output shape for a batch of `batch_size`.
    pub fn output_shape(&self, batch_size: usize) -> Result<Vec<usize>> {
        let mut shape = [&[batch_size][..], &self.input_shape].concat();
        for spec in &self.specs {
            shape = spec.output_shape(&shape)?;
        }
        Ok(shape)
    }

    /// Records the forward pass of `x` (`[batch, ..input_shape]`); with `train`, each layer saves
    /// what its backward needs.
    pub fn forward(&mut self, batch: &mut Batch, x: &Tensor, train: bool) -> Result<Tensor> {
        if x.shape().get(1..) != Some(&self.input_shape[..]) {
            return Err(Error::ShapeMismatch {
                op: "Sequential::forward",
                details: format!(
                    "input must be [batch, {:?}], got {:?}",
                    self.input_shape,
                    x.shape()
                ),
            });
        }
        let mut h = x.clone();
        for layer in &mut self.layers {
            h = layer.forward(batch, &h, train)?;
        }
        Ok(h)
    }

    /// Records the backward pass from dL/d(output), adding every parameter's gradient into the
    /// gradient arena (zero it first with [`Self::zero_grads`] for a fresh step).
    pub fn backward(&mut self, batch: &mut Batch, grad_output: &Tensor) -> Result<()> {
        let mut g = grad_output.clone();
        for (i, layer) in self.layers.iter_mut().enumerate().rev() {
            match layer.backward(batch, &g, i > 0)? {
                Some(dx) => g = dx,
                None => break,
            }
        }
        Ok(())
    }

    /// Records zeroing every gradient: one clear of the gradient arena (the f16 one in mixed
    /// precision, which the backward pass accumulates into).
    pub fn zero_grads(&self, batch: &mut Batch) -> Result<()> {
        match self.params.half() {
            Some((_, grads)) => batch.clear(grads),
            None => batch.clear(self.params.grads()),
        }
    }
}

impl Sequential {
    /// The predicted class (argmax of the output) of each of the `x.len() / input size` samples in
    /// `x`, run in batches of at most `batch_size` (one submission and one readback each).
    pub fn predict_classes(&mut self, x: &[f32], batch_size: usize) -> Result<Vec<u32>> {
        let per_sample: usize = self.input_shape.iter().product();
        if per_sample == 0 || !x.len().is_multiple_of(per_sample) || batch_size == 0 {
            return Err(Error::ShapeMismatch {
                op: "Sequential::predict_classes",
                details: format!(
                    "{} values are not whole samples of {:?}",
                    x.len(),
                    self.input_shape
                ),
            });
        }
        let mut out = Vec::with_capacity(x.len() / per_sample);
        for chunk in x.chunks(batch_size.saturating_mul(per_sample)) {
            let rows = chunk.len() / per_sample;
            let shape = [&[rows][..], &self.input_shape].concat();
            let tx = Tensor::from_f32(&self.gpu, chunk, &shape, self.compute_dtype())?;
            let mut batch = Batch::new(&self.gpu);
            let logits = self.forward(&mut batch, &tx, false)?;
            let flat = logits.reshape(&[rows, logits.numel() / rows])?;
            let (_, argmax) = crate::ops::row_max_argmax(&mut batch, &flat)?;
            batch.submit()?;
            out.extend(argmax.to_vec::<u32>()?);
        }
        Ok(out)
    }
}

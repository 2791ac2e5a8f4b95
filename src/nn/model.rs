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
    pub fn values(&self, specs: &[LayerSpec]) -> HostParameters {
        let seed = match *self {
            Init::KaimingUniform { seed } | Init::XavierUniform { seed } => seed,
        };
        let mut rng = StdRng::seed_from_u64(seed);
        let mut out = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            for (name, shape) in spec.parameter_shapes() {
                let numel: usize = shape.iter().product();
                let data = if name == "bias" {
                    vec![0.0; numel]
                } else {
                    // Weights are [out, in, ...]: fan_in = numel / out, fan_out = numel / in.
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
        out
    }
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

    /// Stores every Linear and Conv2d layer's weight in `format` (int8 with one scale per output
    /// channel, or packed f16); the forward pass dequantizes inside the kernel, and biases and
    /// activations stay f32. For inference: a quantized model cannot train. Returns the bytes all
    /// parameters now take.
    pub fn quantize_weights(&mut self, format: crate::ops::WeightFormat) -> Result<usize> {
        if self.compute_dtype() != crate::DType::F32 {
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
                    let q = match format {
                        crate::ops::WeightFormat::Int8 => {
                            crate::ops::QuantizedWeights::new(&self.gpu, w, o, i)?
                        }
                        crate::ops::WeightFormat::PackedF16 => {
                            crate::ops::QuantizedWeights::packed_f16(&self.gpu, w, o, i)?
                        }
                    };
                    bytes += q.size_bytes() as usize + 4 * o; // the weights, and the f32 bias
                    layer.set_quantized(q);
                }
                _ => bytes += own.iter().map(|(_, _, v)| 4 * v.len()).sum::<usize>(),
            }
        }
        Ok(bytes)
    }

    /// The dtype of activations and compute: F32, or F16 in mixed precision.
    pub fn compute_dtype(&self) -> crate::DType {
        if self.params.half().is_some() {
            crate::DType::F16
        } else {
            crate::DType::F32
        }
    }
}

impl Sequential {
    /// A model for inputs of `input_shape` per sample (e.g. `[64]`, or `[1, 8, 8]` for images),
    /// with weights from `init`.
    pub fn new(
        gpu: &Gpu,
        input_shape: &[usize],
        specs: Vec<LayerSpec>,
        init: Init,
    ) -> Result<Self> {
        let values = init.values(&specs);
        Self::with_parameters(gpu, input_shape, specs, values)
    }

    /// A model with the given parameter values (name, shape, values), in layer order: what loading
    /// a saved model does.
    pub fn with_parameters(
        gpu: &Gpu,
        input_shape: &[usize],
        specs: Vec<LayerSpec>,
        values: HostParameters,
    ) -> Result<Self> {
        if specs.is_empty() || input_shape.is_empty() {
            return Err(Error::EmptyTensor {
                op: "Sequential::new",
            });
        }
        // Check that the shapes chain, with a batch of 1.
        let mut shape = [&[1usize][..], input_shape].concat();
        for spec in &specs {
            shape = spec.output_shape(&shape)?;
        }
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
            return Err(Error::ShapeMismatch {
                op: "Sequential::with_parameters",
                details: format!("the layers need parameters {expected:?}, got {given:?}"),
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
        for chunk in x.chunks(batch_size * per_sample) {
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

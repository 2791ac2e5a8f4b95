//! A model: layers ([`Layer`], built in or defined elsewhere) wired as a graph (several inputs,
//! skip connections) over one parameter arena. [`Sequential`] is the same model built as a chain
//! of built-in layers, the form saved in model files.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::layer::{Context, Layer, ParamRole, ParamSpec};
use super::layers::LayerSpec;
use super::params::{HostParameters, ParamStore};
use crate::batch::Batch;
use crate::dtype::{DType, Precision};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::tensor::Tensor;

/// How weights are initialized (biases start at zero, scales at one). Seeded: the same seed gives
/// the same values on every machine, and [`crate::reference::nn`] starts from the same ones.
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
    /// Initial values of every parameter of a chain of `specs` (what [`Sequential::new`] makes),
    /// as (name, shape, values), in layer order. The layers are checked first
    /// ([`LayerSpec::validate`]), and their parameters must number at most `u32::MAX` elements in
    /// all (what one arena can index), before anything is made.
    pub fn values(&self, specs: &[LayerSpec]) -> Result<HostParameters> {
        let mut named = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            spec.validate()?;
            for p in spec.parameters() {
                named.push((format!("{i}.{}", p.name), p));
            }
        }
        self.values_of(&named)
    }

    /// Initial values of named parameters, each as its role asks.
    pub fn values_of(&self, params: &[(String, ParamSpec)]) -> Result<HostParameters> {
        let seed = match *self {
            Init::KaimingUniform { seed } | Init::XavierUniform { seed } => seed,
        };
        parameter_elements(params.iter().map(|(_, p)| p))?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(params.len());
        for (name, p) in params {
            let numel: usize = p.shape.iter().product();
            let data = match p.role {
                ParamRole::Bias => vec![0.0; numel],
                ParamRole::Scale => vec![1.0; numel],
                ParamRole::Weight { fan_in, fan_out } => {
                    let (fan_in, fan_out) = (fan_in.max(1) as f64, fan_out.max(1) as f64);
                    let bound = match self {
                        Init::KaimingUniform { .. } => (6.0 / fan_in).sqrt(),
                        Init::XavierUniform { .. } => (6.0 / (fan_in + fan_out)).sqrt(),
                    } as f32;
                    (0..numel)
                        .map(|_| rng.random_range(-bound..bound))
                        .collect()
                }
            };
            out.push((name.clone(), p.shape.clone(), data));
        }
        Ok(out)
    }
}

/// The number of parameter elements, each shape checked (every side at least 1), in checked
/// arithmetic, at most `u32::MAX` in all.
fn parameter_elements<'a>(params: impl Iterator<Item = &'a ParamSpec>) -> Result<usize> {
    let too_many = |requested| Error::LimitExceeded {
        what: "parameter elements of the model (u32 indexing)".into(),
        requested,
        limit: u64::from(u32::MAX),
    };
    let mut total = 0usize;
    for p in params {
        if p.shape.is_empty() || p.shape.contains(&0) {
            return Err(Error::InvalidArgument {
                op: "Layer::parameters",
                details: format!(
                    "parameter {:?} has shape {:?}: every side must be at least 1",
                    p.name, p.shape
                ),
            });
        }
        let numel = p
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| too_many(u64::MAX))?;
        total = total.checked_add(numel).ok_or_else(|| too_many(u64::MAX))?;
    }
    if total > u32::MAX as usize {
        return Err(too_many(total as u64));
    }
    Ok(total)
}

/// A value in a model under construction: one of its inputs or a layer's output. Made by
/// [`ModelBuilder::input`] and [`ModelBuilder::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Value(Source);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Input(usize),
    Node(usize),
}

/// Wires layers into a model: inputs, layers applied to earlier values (several inputs, a value
/// used more than once: skip connections), and the value that is the output.
///
/// ```no_run
/// use wgnn::nn::{ActivationLayer, Add, Init, Linear, ModelBuilder};
/// use wgnn::{Activation, Gpu};
/// # fn main() -> wgnn::Result<()> {
/// let gpu = Gpu::new()?;
/// let mut b = ModelBuilder::new();
/// let x = b.input(&[32]);
/// let h = b.add(Linear::new(32, 32), &[x]);
/// let h = b.add(ActivationLayer::new(Activation::Relu), &[h]); // fused into the Linear
/// let h = b.add(Add, &[h, x]); // the skip connection
/// let y = b.add(Linear::new(32, 10), &[h]);
/// let model = b.build(&gpu, y, Init::KaimingUniform { seed: 1 })?;
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct ModelBuilder {
    inputs: Vec<Vec<usize>>,
    nodes: Vec<(Box<dyn Layer>, Vec<Source>)>,
}

impl ModelBuilder {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// A model input of `per_sample_shape` (the batch dimension comes first at run time).
    pub fn input(&mut self, per_sample_shape: &[usize]) -> Value {
        self.inputs.push(per_sample_shape.to_vec());
        Value(Source::Input(self.inputs.len() - 1))
    }

    /// `layer` applied to `inputs` (values of this builder); its output.
    pub fn add(&mut self, layer: impl Layer + 'static, inputs: &[Value]) -> Value {
        self.add_boxed(Box::new(layer), inputs)
    }

    /// [`Self::add`] for a boxed layer.
    pub fn add_boxed(&mut self, layer: Box<dyn Layer>, inputs: &[Value]) -> Value {
        self.nodes
            .push((layer, inputs.iter().map(|v| v.0).collect()));
        Value(Source::Node(self.nodes.len() - 1))
    }

    /// Every parameter the layers declare, as (`"<layer index>.<name>"`, shape), in layer order:
    /// what [`Self::build_with_parameters`] expects.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.nodes
            .iter()
            .enumerate()
            .flat_map(|(i, (layer, _))| {
                layer
                    .parameters()
                    .into_iter()
                    .map(move |p| (format!("{i}.{}", p.name), p.shape))
            })
            .collect()
    }

    /// The model whose output is `output`, with parameters from `init`. Everything is checked
    /// first (shapes chain, every size at least 1, the parameters fit the adapter), before any
    /// value is made.
    pub fn build(self, gpu: &Gpu, output: Value, init: Init) -> Result<Model> {
        self.finish(gpu, output, |named| init.values_of(named))
    }

    /// The model whose output is `output`, with the given parameter values (named
    /// `"<layer index>.<name>"`, in layer order, as [`Model::params`] lists them).
    pub fn build_with_parameters(
        self,
        gpu: &Gpu,
        output: Value,
        values: HostParameters,
    ) -> Result<Model> {
        self.finish(gpu, output, |named| {
            let expected: Vec<(&str, &[usize])> = named
                .iter()
                .map(|(n, p)| (n.as_str(), p.shape.as_slice()))
                .collect();
            let given: Vec<(&str, &[usize])> = values
                .iter()
                .map(|(n, s, _)| (n.as_str(), s.as_slice()))
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
                    op: "Model::with_parameters",
                    details: format!("the values do not match the layers' parameters: {first}"),
                });
            }
            Ok(values)
        })
    }

    fn finish(
        self,
        gpu: &Gpu,
        output: Value,
        values: impl FnOnce(&[(String, ParamSpec)]) -> Result<HostParameters>,
    ) -> Result<Model> {
        const OP: &str = "ModelBuilder::build";
        gpu.check_alive()?;
        let invalid = |details: String| Err(Error::InvalidArgument { op: OP, details });
        if self.nodes.is_empty() {
            return invalid("a model needs at least one layer".into());
        }
        if self.inputs.is_empty() {
            return invalid("a model needs at least one input".into());
        }
        for shape in &self.inputs {
            check_input_shape(shape)?;
        }
        // Values come from this builder, each layer's from earlier ones.
        for (i, (layer, inputs)) in self.nodes.iter().enumerate() {
            for s in inputs {
                let known = match *s {
                    Source::Input(k) => k < self.inputs.len(),
                    Source::Node(j) => j < i,
                };
                if !known {
                    return invalid(format!(
                        "layer {i} ({}) reads a value of another builder",
                        layer.kind()
                    ));
                }
            }
        }
        let output = match output.0 {
            Source::Node(j) if j < self.nodes.len() => j,
            _ => return invalid("the output must be a layer's output of this builder".into()),
        };
        let model_inputs = self.inputs.clone();
        let mut nodes: Vec<Node> = self
            .nodes
            .into_iter()
            .map(|(layer, inputs)| Node {
                names: Vec::new(),
                views: Vec::new(),
                half: Vec::new(),
                absorbed: false,
                needs_grad: false,
                input_needs: Vec::new(),
                consumers: 0,
                layer,
                inputs,
            })
            .collect();
        // Shapes chain, with a batch of 1.
        shapes(&model_inputs, &nodes, 1)?;
        // The parameters, named "<node>.<name>", and the arena they need on this adapter.
        let mut named = Vec::new();
        for (i, node) in nodes.iter_mut().enumerate() {
            let specs = node.layer.parameters();
            let mut seen = std::collections::HashSet::new();
            for p in &specs {
                if !seen.insert(p.name.clone()) {
                    return invalid(format!(
                        "layer {i} ({}) declares the parameter {:?} twice",
                        node.layer.kind(),
                        p.name
                    ));
                }
            }
            node.names = specs.iter().map(|p| p.name.clone()).collect();
            named.extend(specs.into_iter().map(|p| (format!("{i}.{}", p.name), p)));
        }
        parameter_elements(named.iter().map(|(_, p)| p))?;
        ParamStore::check_fits(gpu, named.iter().map(|(_, p)| p.shape.as_slice()))?;
        let roles = named.iter().map(|(_, p)| p.role).collect();
        let values = values(&named)?;
        let params = ParamStore::new(gpu, &values)?;
        let mut views = params.params().iter();
        for node in &mut nodes {
            node.views = views
                .by_ref()
                .take(node.names.len())
                .map(|p| (p.value.clone(), p.grad.clone()))
                .collect();
        }
        // Who reads each value; a value read once by an activation the layer before can take
        // into its epilogue is fused there.
        for i in 0..nodes.len() {
            for s in nodes[i].inputs.clone() {
                if let Source::Node(j) = s {
                    nodes[j].consumers += 1;
                }
            }
        }
        nodes[output].consumers += 1;
        for i in 0..nodes.len() {
            let Some(LayerSpec::Activation { function }) = nodes[i].layer.spec() else {
                continue;
            };
            if let [Source::Node(j)] = nodes[i].inputs[..] {
                if nodes[j].consumers == 1 && nodes[j].layer.fuse(function) {
                    nodes[i].absorbed = true;
                }
            }
        }
        // Which layers need dL/d(output): those with parameters, or feeding one that does.
        for i in 0..nodes.len() {
            let upstream = nodes[i].inputs.iter().any(|s| match *s {
                Source::Node(j) => nodes[j].needs_grad,
                Source::Input(_) => false,
            });
            nodes[i].needs_grad = !nodes[i].names.is_empty() || upstream;
            nodes[i].input_needs = nodes[i]
                .inputs
                .iter()
                .map(|s| match *s {
                    Source::Node(j) => nodes[j].needs_grad,
                    Source::Input(_) => false,
                })
                .collect();
        }
        Ok(Model {
            gpu: gpu.clone(),
            inputs: model_inputs,
            nodes,
            output,
            params,
            roles,
            chain: None,
        })
    }
}

fn check_input_shape(shape: &[usize]) -> Result<()> {
    if shape.is_empty() || shape.contains(&0) {
        return Err(Error::InvalidArgument {
            op: "Model",
            details: format!(
                "a per-sample input shape needs at least one dimension, each at least 1, got \
                 {shape:?}"
            ),
        });
    }
    let fits = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .is_some_and(|n| n <= u32::MAX as usize);
    if !fits {
        return Err(Error::LimitExceeded {
            what: format!("Model: elements of one sample of {shape:?}"),
            requested: u64::MAX,
            limit: u64::from(u32::MAX),
        });
    }
    Ok(())
}

/// Every layer's output shape for a batch of `batch`, in layer order.
fn shapes(inputs: &[Vec<usize>], nodes: &[Node], batch: usize) -> Result<Vec<Vec<usize>>> {
    let input_shapes: Vec<Vec<usize>> = inputs.iter().map(|s| [&[batch][..], s].concat()).collect();
    let mut out: Vec<Vec<usize>> = Vec::with_capacity(nodes.len());
    for node in nodes {
        let ins: Vec<&[usize]> = node
            .inputs
            .iter()
            .map(|s| match *s {
                Source::Input(k) => input_shapes[k].as_slice(),
                Source::Node(j) => out[j].as_slice(),
            })
            .collect();
        let shape = node.layer.output_shape(&ins)?;
        out.push(shape);
    }
    Ok(out)
}

/// One layer of a model, where it reads from, and its parameter views.
#[derive(Debug)]
struct Node {
    layer: Box<dyn Layer>,
    inputs: Vec<Source>,
    /// The layer's parameter names, in its order.
    names: Vec<String>,
    /// (value, gradient) views into the f32 arenas.
    views: Vec<(Tensor, Tensor)>,
    /// In mixed precision, (value, gradient) views into the f16 arenas.
    half: Vec<(Tensor, Tensor)>,
    /// An activation fused into the layer before it.
    absorbed: bool,
    /// Whether its backward runs (it or a layer it feeds from has parameters).
    needs_grad: bool,
    /// For each input, whether the backward must return its gradient.
    input_needs: Vec<bool>,
    /// Layers (and the model output) that read its value.
    consumers: usize,
}

/// Layers wired as a graph over one parameter arena: what [`crate::nn::Trainer`] trains and
/// [`crate::infer::InferenceSession`] serves. Made by [`ModelBuilder`], or as a chain of
/// built-in layers by [`Sequential::new`] and [`Sequential::load`].
#[derive(Debug)]
pub struct Model {
    gpu: Gpu,
    inputs: Vec<Vec<usize>>,
    nodes: Vec<Node>,
    output: usize,
    params: ParamStore,
    /// What each parameter is, in the order of `params`.
    roles: Vec<ParamRole>,
    /// The layers' specs when the model is a chain of built-in layers (files, pruning).
    chain: Option<Vec<LayerSpec>>,
}

/// A [`Model`] built as a chain of built-in layers ([`LayerSpec`]s), one input: the form model
/// files hold. `Sequential::new` and `Sequential::load` make one.
pub type Sequential = Model;

impl Model {
    /// A chain of `specs` for inputs of `input_shape` per sample (e.g. `[64]`, or `[1, 8, 8]` for
    /// images), with weights from `init`. The architecture is checked first (every size at least
    /// 1, the layers chain from the input, the parameters fit the adapter's limits), before any
    /// value is made.
    pub fn new(
        gpu: &Gpu,
        input_shape: &[usize],
        specs: Vec<LayerSpec>,
        init: Init,
    ) -> Result<Self> {
        let (builder, output) = chain(input_shape, &specs)?;
        let mut model = builder.build(gpu, output, init)?;
        model.chain = Some(specs);
        Ok(model)
    }

    /// A chain of `specs` with the given parameter values (name, shape, values), in layer order:
    /// what loading a saved model does. Checked as [`Self::new`] checks, and the values against
    /// the layers.
    pub fn with_parameters(
        gpu: &Gpu,
        input_shape: &[usize],
        specs: Vec<LayerSpec>,
        values: HostParameters,
    ) -> Result<Self> {
        let (builder, output) = chain(input_shape, &specs)?;
        let mut model = builder.build_with_parameters(gpu, output, values)?;
        model.chain = Some(specs);
        Ok(model)
    }

    /// The context the model lives on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }
    /// The per-sample shape of the (first) input.
    pub fn input_shape(&self) -> &[usize] {
        &self.inputs[0]
    }
    /// The per-sample shapes of every input.
    pub fn input_shapes(&self) -> &[Vec<usize>] {
        &self.inputs
    }
    /// The layers' specs when the model is a chain of built-in layers (what model files hold);
    /// `None` for a model with skip connections, several inputs or layers of another crate.
    pub fn specs(&self) -> Option<&[LayerSpec]> {
        self.chain.as_deref()
    }
    /// The layers, in the order they run.
    pub fn layers(&self) -> impl Iterator<Item = &dyn Layer> {
        self.nodes.iter().map(|n| n.layer.as_ref())
    }
    /// The parameters.
    pub fn params(&self) -> &ParamStore {
        &self.params
    }
    /// What each parameter is (as its layer declared it), in the order of [`Self::params`].
    pub fn param_roles(&self) -> &[ParamRole] {
        &self.roles
    }
    /// The output shape for a batch of `batch_size`.
    pub fn output_shape(&self, batch_size: usize) -> Result<Vec<usize>> {
        let mut all = shapes(&self.inputs, &self.nodes, batch_size)?;
        Ok(all.swap_remove(self.output))
    }

    /// The dtype of activations and compute: F32, or F16 in mixed precision.
    pub fn compute_dtype(&self) -> DType {
        if self.params.half().is_some() {
            DType::F16
        } else {
            DType::F32
        }
    }

    /// Switches the model to mixed precision: f16 weight copies and f16 activations and gradients
    /// (the f32 master weights stay, and are what is saved). Needs the adapter's `SHADER_F16`.
    pub fn enable_mixed_precision(&mut self) -> Result<()> {
        if !self.gpu.supports_f16() {
            return Err(Error::UnsupportedFeature {
                feature: "SHADER_F16",
                op: "Model::enable_mixed_precision",
            });
        }
        self.params.enable_half()?;
        let mut views = self.params.params().iter();
        for node in &mut self.nodes {
            node.half = views
                .by_ref()
                .take(node.names.len())
                .filter_map(|p| p.half.clone())
                .collect();
        }
        Ok(())
    }

    /// Returns the model to f32 compute (the f16 copies are dropped; the f32 master weights,
    /// which the optimizer updated all along, are what the layers read again). Does nothing for
    /// a model in f32.
    pub fn disable_mixed_precision(&mut self) {
        self.params.disable_half();
        for node in &mut self.nodes {
            node.half.clear();
        }
    }

    /// Checks that a batch of `batch_size` fits the adapter: every input and every layer's
    /// output within u32 indexing and the storage-binding limit, in checked arithmetic.
    /// [`crate::infer::InferenceSession::new`] runs it for its largest bucket before it makes
    /// anything.
    pub fn check_batch_size(&self, batch_size: usize) -> Result<()> {
        if batch_size == 0 {
            return Err(Error::InvalidArgument {
                op: "Model::check_batch_size",
                details: "a batch needs at least one sample".into(),
            });
        }
        let bytes_per = self.compute_dtype().size() as u64;
        let limit = self.gpu.limits().max_storage_buffer_binding_size;
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
        for shape in &self.inputs {
            check(&[&[batch_size][..], shape].concat(), "input")?;
        }
        for (node, shape) in self
            .nodes
            .iter()
            .zip(shapes(&self.inputs, &self.nodes, batch_size)?)
        {
            check(&shape, &format!("{} output", node.layer.kind()))?;
        }
        Ok(())
    }

    /// Stores every layer's weights that have a compact form ([`Layer::compact`]: Linear and
    /// Conv2d) in `precision` (int8 with one scale per output channel, or packed f16); the forward
    /// pass dequantizes inside the kernel, and biases and activations stay f32. For inference: a
    /// compacted model cannot train. Returns the bytes all parameters now take.
    pub fn quantize_weights(&mut self, precision: Precision) -> Result<usize> {
        if self.compute_dtype() != DType::F32 {
            return Err(Error::InvalidArgument {
                op: "Model::quantize_weights",
                details: "quantize an f32 model (compact weights take f32 activations)".into(),
            });
        }
        let host = self.params().to_host()?;
        let mut values = host.iter();
        let mut bytes = 0usize;
        for node in &mut self.nodes {
            let own: Vec<&[f32]> = values
                .by_ref()
                .take(node.names.len())
                .map(|(_, _, v)| v.as_slice())
                .collect();
            let f32_bytes: usize = own.iter().map(|v| 4 * v.len()).sum();
            bytes += match node.layer.compact(&self.gpu, precision, &own)? {
                Some(b) => b,
                None => f32_bytes,
            };
        }
        Ok(bytes)
    }

    /// Records the forward pass of the single input `x` (`[batch, ..input_shape]`); with `train`,
    /// each layer saves what its backward needs.
    pub fn forward(&mut self, batch: &mut Batch, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_inputs(batch, &[x], train)
    }

    /// Records the forward pass of every input (`[batch, ..its shape]`, one batch size for all).
    pub fn forward_inputs(
        &mut self,
        batch: &mut Batch,
        inputs: &[&Tensor],
        train: bool,
    ) -> Result<Tensor> {
        const OP: &str = "Model::forward";
        if inputs.len() != self.inputs.len() {
            return Err(Error::ShapeMismatch {
                op: OP,
                details: format!(
                    "the model takes {} input(s), got {}",
                    self.inputs.len(),
                    inputs.len()
                ),
            });
        }
        let rows = inputs[0].shape().first().copied().unwrap_or(0);
        for (x, shape) in inputs.iter().zip(&self.inputs) {
            if x.shape().get(1..) != Some(&shape[..]) || x.shape()[0] != rows {
                return Err(Error::ShapeMismatch {
                    op: OP,
                    details: format!(
                        "input must be [{rows}, {shape:?}] (one batch size for all inputs), got \
                         {:?}",
                        x.shape()
                    ),
                });
            }
        }
        let half = self.compute_dtype() == DType::F16;
        let mut values: Vec<Option<Tensor>> = vec![None; self.nodes.len()];
        for i in 0..self.nodes.len() {
            let node = &mut self.nodes[i];
            let y = {
                let ins = node
                    .inputs
                    .iter()
                    .map(|s| match *s {
                        Source::Input(k) => Ok(inputs[k]),
                        Source::Node(j) => {
                            values[j].as_ref().ok_or_else(|| Error::InvalidArgument {
                                op: OP,
                                details: format!("layer {i} reads layer {j}, which has no output"),
                            })
                        }
                    })
                    .collect::<Result<Vec<&Tensor>>>()?;
                if node.absorbed {
                    ins[0].clone()
                } else {
                    let views = if half { &node.half } else { &node.views };
                    let mut ctx = Context::new(batch, views, &node.names, train);
                    node.layer.forward(&mut ctx, &ins)?
                }
            };
            values[i] = Some(y);
        }
        values[self.output]
            .take()
            .ok_or_else(|| Error::InvalidArgument {
                op: OP,
                details: "the output layer gave no value".into(),
            })
    }

    /// Records the backward pass from dL/d(output), adding every parameter's gradient into the
    /// gradient arena (zero it first with [`Self::zero_grads`] for a fresh step). Where a value
    /// feeds several layers, their gradients add up.
    pub fn backward(&mut self, batch: &mut Batch, grad_output: &Tensor) -> Result<()> {
        let half = self.compute_dtype() == DType::F16;
        let mut grads: Vec<Option<Tensor>> = vec![None; self.nodes.len()];
        grads[self.output] = Some(grad_output.clone());
        for i in (0..self.nodes.len()).rev() {
            let Some(g) = grads[i].take() else {
                continue;
            };
            let node = &mut self.nodes[i];
            if !node.needs_grad {
                continue;
            }
            let input_grads = if node.absorbed {
                // The layer before applies the activation's backward with its own.
                vec![Some(g)]
            } else {
                let views = if half { &node.half } else { &node.views };
                let mut ctx = Context::new(batch, views, &node.names, true);
                node.layer.backward(&mut ctx, &g, &node.input_needs)?
            };
            for (k, dx) in input_grads.into_iter().enumerate() {
                let (Some(&Source::Node(j)), Some(dx)) = (self.nodes[i].inputs.get(k), dx) else {
                    continue;
                };
                grads[j] = Some(match grads[j].take() {
                    None => dx,
                    Some(earlier) => crate::ops::scale_add(batch, 1.0, &earlier, 1.0, &dx)?,
                });
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

    /// The predicted class (argmax of the output) of each of the `x.len() / input size` samples in
    /// `x` (a single-input model), run in batches of at most `batch_size` (one submission and one
    /// readback each).
    pub fn predict_classes(&mut self, x: &[f32], batch_size: usize) -> Result<Vec<u32>> {
        let per_sample: usize = self.input_shape().iter().product();
        if per_sample == 0 || !x.len().is_multiple_of(per_sample) || batch_size == 0 {
            return Err(Error::ShapeMismatch {
                op: "Model::predict_classes",
                details: format!(
                    "{} values are not whole samples of {:?}",
                    x.len(),
                    self.input_shape()
                ),
            });
        }
        let mut out = Vec::with_capacity(x.len() / per_sample);
        for chunk in x.chunks(batch_size.saturating_mul(per_sample)) {
            let rows = chunk.len() / per_sample;
            let shape = [&[rows][..], self.input_shape()].concat();
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

/// A builder holding a chain of `specs` over one input, and its output.
fn chain(input_shape: &[usize], specs: &[LayerSpec]) -> Result<(ModelBuilder, Value)> {
    if specs.is_empty() {
        return Err(Error::InvalidArgument {
            op: "Sequential::new",
            details: "a model needs at least one layer".into(),
        });
    }
    let mut b = ModelBuilder::new();
    let mut v = b.input(input_shape);
    for spec in specs {
        v = b.add_boxed(spec.build()?, &[v]);
    }
    Ok((b, v))
}

//! A model: layers ([`Layer`], built in or defined elsewhere) wired as a graph (several inputs,
//! skip connections) over one parameter arena: the one definition that training
//! ([`crate::nn::Trainer`]), serving ([`crate::infer::InferenceSession`]) and decoding
//! ([`crate::generate::Decoder`], which lowers the same graph) consume. [`Sequential`] is the same
//! model built as a chain of built-in layers; [`GraphSpec`] is its description in model files.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use super::layer::{Context, DecodeStep, Layer, ParamRole, ParamSpec};
use super::params::{HostParameters, ParamStore};
use super::spec::LayerSpec;
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

/// Where a layer of a [`GraphSpec`] reads a value: a model input or an earlier layer's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Model input `k`.
    Input(usize),
    /// The output of layer `j` (an earlier one).
    Node(usize),
}

/// A model input: its per-sample shape, and for token ids (U32) the vocabulary they index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Per-sample shape (the batch dimension comes first at run time).
    pub shape: Vec<usize>,
    /// For an input of token ids: ids are below it. `None`: values in the compute dtype.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab: Option<usize>,
}

/// One layer of a [`GraphSpec`]: `{"type": kind, ...configuration}` and where it reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// The layer's kind and configuration ([`Layer::kind`], [`Layer::config`]).
    pub layer: serde_json::Value,
    /// Its inputs.
    pub inputs: Vec<Source>,
}

/// A model's architecture as model files hold it: inputs, layers in the order they run, and the
/// layer whose output is the model's. Layers are made again by the factories registered under
/// their kinds ([`crate::nn::register_layer`]); parameters are named `"<layer index>.<name>"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphSpec {
    /// The model's inputs.
    pub inputs: Vec<InputSpec>,
    /// The layers.
    pub nodes: Vec<NodeSpec>,
    /// The index of the output layer.
    pub output: usize,
}

impl GraphSpec {
    /// A builder holding the described layers (each made by its registered factory), and the
    /// output value.
    pub fn builder(&self) -> Result<(ModelBuilder, Value)> {
        let mut b = ModelBuilder::new();
        b.inputs = self.inputs.clone();
        for node in &self.nodes {
            let (kind, config) = super::registry::split_kind(node.layer.clone())?;
            let layer = super::registry::make_layer(&kind, &config)?;
            b.nodes.push((layer, node.inputs.clone()));
        }
        Ok((b, Value(Source::Node(self.output))))
    }

    /// The layers' kinds and configurations, as LayerSpecs, where the graph is a chain of
    /// built-in layers over one input of values (what [`Sequential`] holds).
    pub fn as_chain(&self) -> Option<(Vec<usize>, Vec<LayerSpec>)> {
        let [input] = &self.inputs[..] else {
            return None;
        };
        if input.vocab.is_some() || self.output + 1 != self.nodes.len() {
            return None;
        }
        let mut specs = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let from = if i == 0 {
                Source::Input(0)
            } else {
                Source::Node(i - 1)
            };
            if node.inputs != [from] {
                return None;
            }
            specs.push(serde_json::from_value(node.layer.clone()).ok()?);
        }
        Some((input.shape.clone(), specs))
    }
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
    inputs: Vec<InputSpec>,
    nodes: Vec<(Box<dyn Layer>, Vec<Source>)>,
}

impl ModelBuilder {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// A model input of `per_sample_shape` (the batch dimension comes first at run time).
    pub fn input(&mut self, per_sample_shape: &[usize]) -> Value {
        self.inputs.push(InputSpec {
            shape: per_sample_shape.to_vec(),
            vocab: None,
        });
        Value(Source::Input(self.inputs.len() - 1))
    }

    /// A model input of token ids (U32, each below `vocab`) of `per_sample_shape`: what an
    /// [`crate::nn::Embedding`] reads.
    pub fn input_ids(&mut self, per_sample_shape: &[usize], vocab: usize) -> Value {
        self.inputs.push(InputSpec {
            shape: per_sample_shape.to_vec(),
            vocab: Some(vocab),
        });
        Value(Source::Input(self.inputs.len() - 1))
    }

    /// The graph's description with `output` as its output: what model files hold. Every layer
    /// must give its configuration ([`Layer::config`]).
    pub fn graph(&self, output: Value) -> Result<GraphSpec> {
        let output = match output.0 {
            Source::Node(j) if j < self.nodes.len() => j,
            _ => {
                return Err(Error::InvalidArgument {
                    op: "ModelBuilder::graph",
                    details: "the output must be a layer's output of this builder".into(),
                })
            }
        };
        let layers = self.nodes.iter().map(|(l, s)| (l.as_ref(), s.as_slice()));
        graph_spec(&self.inputs, layers, output)
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
        let (prepared, named) = self.prepare(gpu, output)?;
        let values = values(&named)?;
        let params = ParamStore::new(gpu, &values)?;
        Ok(prepared.assemble(gpu, params, &named))
    }

    /// Checks the wiring and the shapes, names the parameters and checks that they fit the
    /// adapter: everything before any value is made.
    fn prepare(self, gpu: &Gpu, output: Value) -> Result<(Prepared, Vec<(String, ParamSpec)>)> {
        gpu.check_alive()?;
        let (output, named) = self.check(output)?;
        ParamStore::check_fits(gpu, named.iter().map(|(_, p)| p.shape.as_slice()))?;
        let nodes: Vec<Node> = self
            .nodes
            .into_iter()
            .map(|(layer, inputs)| {
                let mut node = Node::new(layer, inputs);
                node.names = node
                    .layer
                    .parameters()
                    .into_iter()
                    .map(|p| p.name)
                    .collect();
                node
            })
            .collect();
        let prepared = Prepared {
            inputs: self.inputs,
            nodes,
            output,
        };
        Ok((prepared, named))
    }

    /// Checks the graph with `output` as its output without a GPU (the wiring, the shapes at a
    /// batch of 1, the parameters' names and count) and returns the output layer's index and the
    /// parameters, named `"<layer>.<name>"`: what a model file is checked against before its
    /// tensors are read, and what building a model checks before it needs the GPU.
    pub(crate) fn check(&self, output: Value) -> Result<(usize, Vec<(String, ParamSpec)>)> {
        let output = self.check_wiring(output)?;
        let layers: Vec<(&dyn Layer, &[Source])> = self
            .nodes
            .iter()
            .map(|(l, s)| (l.as_ref(), s.as_slice()))
            .collect();
        shapes_of(&self.inputs, &layers, 1)?;
        let named = name_parameters(&layers.iter().map(|(l, _)| *l).collect::<Vec<_>>())?;
        parameter_elements(named.iter().map(|(_, p)| p))?;
        Ok((output, named))
    }

    /// Checks that there are inputs and layers, that every value a layer reads comes from this
    /// builder and from before it, and returns the output layer's index.
    fn check_wiring(&self, output: Value) -> Result<usize> {
        let invalid = |details: String| {
            Err(Error::InvalidArgument {
                op: "ModelBuilder::build",
                details,
            })
        };
        if self.nodes.is_empty() {
            return invalid("a model needs at least one layer".into());
        }
        if self.inputs.is_empty() {
            return invalid("a model needs at least one input".into());
        }
        for input in &self.inputs {
            check_input_shape(&input.shape)?;
            if input.vocab == Some(0) {
                return invalid("an input of token ids needs a vocabulary of at least 1".into());
            }
        }
        for (i, (layer, inputs)) in self.nodes.iter().enumerate() {
            for s in inputs {
                let known = match *s {
                    Source::Input(k) => k < self.inputs.len(),
                    Source::Node(j) => j < i,
                };
                if !known {
                    return invalid(format!(
                        "layer {i} ({}) reads a value of another builder, or a later layer",
                        layer.kind()
                    ));
                }
            }
        }
        match output.0 {
            Source::Node(j) if j < self.nodes.len() => Ok(j),
            _ => invalid("the output must be a layer's output of this builder".into()),
        }
    }
}

/// The description of `layers` (each with its sources) over `inputs`, `output` the output layer.
fn graph_spec<'a>(
    inputs: &[InputSpec],
    layers: impl Iterator<Item = (&'a dyn Layer, &'a [Source])>,
    output: usize,
) -> Result<GraphSpec> {
    let nodes = layers
        .map(|(layer, sources)| {
            Ok(NodeSpec {
                layer: layer_record(layer)?,
                inputs: sources.to_vec(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(GraphSpec {
        inputs: inputs.to_vec(),
        nodes,
        output,
    })
}

/// A layer's record in a model file: `{"type": kind, ...configuration}`.
fn layer_record(layer: &dyn Layer) -> Result<serde_json::Value> {
    let config = layer.config().ok_or_else(|| Error::InvalidArgument {
        op: "Model::graph",
        details: format!(
            "the layer {} gives no configuration: implement Layer::config and register its kind \
             with wgnn::nn::register_layer to save or decode it",
            layer.kind()
        ),
    })?;
    super::registry::join_kind(layer.kind(), config)
}

/// Names every layer's parameters `"<node>.<name>"` (each name once within its layer).
fn name_parameters(layers: &[&dyn Layer]) -> Result<Vec<(String, ParamSpec)>> {
    let mut named = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let specs = layer.parameters();
        let mut seen = std::collections::HashSet::new();
        for p in &specs {
            if !seen.insert(p.name.clone()) {
                return Err(Error::InvalidArgument {
                    op: "ModelBuilder::build",
                    details: format!(
                        "layer {i} ({}) declares the parameter {:?} twice",
                        layer.kind(),
                        p.name
                    ),
                });
            }
        }
        named.extend(specs.into_iter().map(|p| (format!("{i}.{}", p.name), p)));
    }
    Ok(named)
}

/// A checked graph waiting for its parameters.
struct Prepared {
    inputs: Vec<InputSpec>,
    nodes: Vec<Node>,
    output: usize,
}

impl Prepared {
    /// The model over `params` (laid out as `named`): parameter views, then the graph passes
    /// (activation fusion, which layers need gradients).
    fn assemble(mut self, gpu: &Gpu, params: ParamStore, named: &[(String, ParamSpec)]) -> Model {
        let mut views = params.params().iter();
        for node in &mut self.nodes {
            node.views = views
                .by_ref()
                .take(node.names.len())
                .map(|p| (p.value.clone(), p.grad.clone()))
                .collect();
        }
        fuse_activations(&mut self.nodes, self.output, false);
        mark_gradients(&mut self.nodes);
        Model {
            gpu: gpu.clone(),
            inputs: self.inputs,
            nodes: self.nodes,
            output: self.output,
            params,
            roles: named.iter().map(|(_, p)| p.role).collect(),
            chain: None,
        }
    }
}

/// The fusion pass: an activation whose input is read by nothing else is offered to the layer
/// that made that input ([`Layer::fuse`], or for a model that only runs inference
/// [`Layer::fuse_for_inference`]); where the layer takes it into its epilogue, the activation's
/// own node is skipped.
fn fuse_activations(nodes: &mut [Node], output: usize, inference: bool) {
    let mut consumers = vec![0usize; nodes.len()];
    for node in nodes.iter() {
        for s in &node.inputs {
            if let Source::Node(j) = *s {
                consumers[j] += 1;
            }
        }
    }
    consumers[output] += 1;
    for i in 0..nodes.len() {
        let Some(function) = nodes[i].layer.activation() else {
            continue;
        };
        if nodes[i].absorbed {
            continue;
        }
        let [Source::Node(j)] = nodes[i].inputs[..] else {
            continue;
        };
        // Only a value nothing else reads, made by a layer that runs.
        if consumers[j] != 1 || nodes[j].absorbed {
            continue;
        }
        let layer = &mut nodes[j].layer;
        let fused = match inference {
            true => layer.fuse_for_inference(function),
            false => layer.fuse(function),
        };
        if fused {
            nodes[i].absorbed = true;
        }
    }
}

/// Which layers need dL/d(output): those with parameters, or feeding one that does.
fn mark_gradients(nodes: &mut [Node]) {
    for i in 0..nodes.len() {
        let needs: Vec<bool> = nodes[i]
            .inputs
            .iter()
            .map(|s| match *s {
                Source::Node(j) => nodes[j].needs_grad,
                Source::Input(_) => false,
            })
            .collect();
        nodes[i].needs_grad = !nodes[i].names.is_empty() || needs.iter().any(|&n| n);
        nodes[i].input_needs = needs;
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
fn shapes(inputs: &[InputSpec], nodes: &[Node], batch: usize) -> Result<Vec<Vec<usize>>> {
    let layers: Vec<(&dyn Layer, &[Source])> = nodes
        .iter()
        .map(|n| (n.layer.as_ref(), n.inputs.as_slice()))
        .collect();
    shapes_of(inputs, &layers, batch)
}

fn shapes_of(
    inputs: &[InputSpec],
    layers: &[(&dyn Layer, &[Source])],
    batch: usize,
) -> Result<Vec<Vec<usize>>> {
    let input_shapes: Vec<Vec<usize>> = inputs
        .iter()
        .map(|s| [&[batch][..], &s.shape].concat())
        .collect();
    let mut out: Vec<Vec<usize>> = Vec::with_capacity(layers.len());
    for (layer, sources) in layers {
        let ins: Vec<&[usize]> = sources
            .iter()
            .map(|s| match *s {
                Source::Input(k) => input_shapes[k].as_slice(),
                Source::Node(j) => out[j].as_slice(),
            })
            .collect();
        let shape = layer.output_shape(&ins)?;
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
}

impl Node {
    fn new(layer: Box<dyn Layer>, inputs: Vec<Source>) -> Self {
        Node {
            layer,
            inputs,
            names: Vec::new(),
            views: Vec::new(),
            half: Vec::new(),
            absorbed: false,
            needs_grad: false,
            input_needs: Vec::new(),
        }
    }
}

/// How [`Model::run`] runs each layer.
enum Pass<'a> {
    /// The forward pass, saving for the backward with `train`.
    Forward { train: bool },
    /// A decode step: rows at `cursor`, each layer with its cache.
    Decode {
        cursor: &'a Tensor,
        prompt: bool,
        caches: &'a [Vec<Tensor>],
    },
}

/// Layers wired as a graph over one parameter arena: what [`crate::nn::Trainer`] trains and
/// [`crate::infer::InferenceSession`] serves. Made by [`ModelBuilder`], or as a chain of
/// built-in layers by [`Sequential::new`] and [`Sequential::load`].
#[derive(Debug)]
pub struct Model {
    gpu: Gpu,
    inputs: Vec<InputSpec>,
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
        &self.inputs[0].shape
    }
    /// The per-sample shapes of every input.
    pub fn input_shapes(&self) -> Vec<Vec<usize>> {
        self.inputs.iter().map(|i| i.shape.clone()).collect()
    }
    /// Every input: its shape, and for token ids their vocabulary.
    pub fn inputs(&self) -> &[InputSpec] {
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
        for input in &self.inputs {
            check(&[&[batch_size][..], &input.shape].concat(), "input")?;
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

    /// Records the forward pass of every input (`[batch, ..its shape]`, one batch size for all;
    /// U32 token ids for an input of ids).
    pub fn forward_inputs(
        &mut self,
        batch: &mut Batch,
        inputs: &[&Tensor],
        train: bool,
    ) -> Result<Tensor> {
        self.check_inputs(inputs)?;
        self.run(batch, inputs, Pass::Forward { train })
    }

    fn check_inputs(&self, inputs: &[&Tensor]) -> Result<()> {
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
        for (x, input) in inputs.iter().zip(&self.inputs) {
            let shape = &input.shape;
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
            if input.vocab.is_some() && x.dtype() != DType::U32 {
                return Err(Error::DtypeMismatch {
                    op: OP,
                    details: format!("an input of token ids is U32, got {:?}", x.dtype()),
                });
            }
        }
        Ok(())
    }

    /// Runs every layer in order, as `pass` says, and returns the output layer's value.
    fn run(&mut self, batch: &mut Batch, inputs: &[&Tensor], pass: Pass) -> Result<Tensor> {
        const OP: &str = "Model::forward";
        let half = self.compute_dtype() == DType::F16;
        let mut values: Vec<Option<Tensor>> = vec![None; self.nodes.len()];
        for i in 0..self.nodes.len() {
            let node = &mut self.nodes[i];
            let ins = node
                .inputs
                .iter()
                .map(|s| match *s {
                    Source::Input(k) => Ok(inputs[k]),
                    Source::Node(j) => values[j].as_ref().ok_or_else(|| Error::InvalidArgument {
                        op: OP,
                        details: format!("layer {i} reads layer {j}, which has no output"),
                    }),
                })
                .collect::<Result<Vec<&Tensor>>>()?;
            let y = if node.absorbed {
                ins[0].clone()
            } else {
                let views = if half { &node.half } else { &node.views };
                match pass {
                    Pass::Forward { train } => {
                        let mut ctx = Context::new(batch, views, &node.names, train);
                        node.layer.forward(&mut ctx, &ins)?
                    }
                    Pass::Decode {
                        cursor,
                        prompt,
                        caches,
                    } => {
                        let mut ctx = Context::new(batch, views, &node.names, false);
                        let step = DecodeStep {
                            cursor,
                            prompt,
                            cache: &caches[i],
                        };
                        node.layer.decode(&mut ctx, &ins, &step)?
                    }
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

    /// The model's description: what model files hold (see [`GraphSpec`]). Every layer must give
    /// its configuration ([`Layer::config`]).
    pub fn graph(&self) -> Result<GraphSpec> {
        let layers = self
            .nodes
            .iter()
            .map(|n| (n.layer.as_ref(), n.inputs.as_slice()));
        graph_spec(&self.inputs, layers, self.output)
    }

    /// A second model of the same graph whose layers are made anew from their configurations
    /// (by the registered factories) and read the same f32 parameters (shared, not copied): what
    /// a decoder lowers, so that its layers' own state (compact weights, caches) leaves this
    /// model as it is.
    pub fn duplicate(&self) -> Result<Model> {
        let (builder, output) = self.graph()?.builder()?;
        let (prepared, named) = builder.prepare(&self.gpu, output)?;
        let same = named.len() == self.params.params().len()
            && named
                .iter()
                .zip(self.params.params())
                .all(|((n, p), q)| *n == q.name && p.shape == q.shape);
        if !same {
            return Err(Error::InvalidArgument {
                op: "Model::duplicate",
                details: "a layer made from its configuration declares other parameters than \
                          the original (its Layer::config leaves something out)"
                    .into(),
            });
        }
        let mut model = prepared.assemble(&self.gpu, self.params.share_f32(), &named);
        model.chain = self.chain.clone();
        Ok(model)
    }

    /// Runs the fusion pass again for a model that will only run inference (a decoder's copy):
    /// activations a training epilogue could not take (GELU after a Linear) join the layer before
    /// them. The model can no longer train.
    pub fn fuse_for_inference(&mut self) {
        fuse_activations(&mut self.nodes, self.output, true);
    }

    /// The cache tensors' shapes of each layer ([`Layer::decode_cache`]) for `slots` sequences of
    /// up to `context` positions, in layer order.
    pub fn decode_caches(&self, slots: usize, context: usize) -> Vec<Vec<Vec<usize>>> {
        self.nodes
            .iter()
            .map(|n| n.layer.decode_cache(slots, context))
            .collect()
    }

    /// Records one decode step of a model whose single input is token ids: `ids` `[rows]` at
    /// `cursor` (`[rows, 2]` (slot, position)), each layer through [`Layer::decode`] with its
    /// caches (made in the shapes of [`Self::decode_caches`]); `prompt`: the rows are one
    /// prompt's positions 0..rows. Returns the output layer's rows.
    pub fn decode(
        &mut self,
        batch: &mut Batch,
        ids: &Tensor,
        cursor: &Tensor,
        prompt: bool,
        caches: &[Vec<Tensor>],
    ) -> Result<Tensor> {
        if caches.len() != self.nodes.len() || self.inputs.len() != 1 {
            return Err(Error::InvalidArgument {
                op: "Model::decode",
                details: format!(
                    "{} cache lists for {} layers; a decoded model has one input of token ids",
                    caches.len(),
                    self.nodes.len()
                ),
            });
        }
        let pass = Pass::Decode {
            cursor,
            prompt,
            caches,
        };
        self.run(batch, &[ids], pass)
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

impl AsRef<Model> for Model {
    fn as_ref(&self) -> &Model {
        self
    }
}

impl AsMut<Model> for Model {
    fn as_mut(&mut self) -> &mut Model {
        self
    }
}

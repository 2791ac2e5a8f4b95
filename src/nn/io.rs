//! Model files: one format for every model, safetensors whose metadata holds the graph
//! (`"format": "wgnn-graph"`, `"graph"`: the [`GraphSpec`] as JSON: inputs, each layer's kind,
//! configuration and inputs, the output), the parameters' storage, and any metadata of the
//! model's own (a language model's configuration and vocabulary); the parameters are tensors
//! named like [`crate::nn::Parameter::name`] (`"3.weight"`), f32, f16 or int8 (weights only,
//! with a per-row `"<name>_scale"`). Files of the two formats before it (`"wgnn"`: a chain of
//! built-in layers; `"wgnn-gpt"`: a language model) still load: they are read as their graphs.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::gpt::GptConfig;
use super::layer::{ParamRole, ParamSpec};
use super::model::{GraphSpec, InputSpec, Model, NodeSpec, Sequential, Source};
use super::params::HostParameters;
use super::spec::LayerSpec;
use crate::dtype::Precision;
use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// The metadata key and value that mark a wgnn model file.
const FORMAT: (&str, &str) = ("format", "wgnn-graph");
/// Metadata keys the file format itself uses.
const RESERVED: [&str; 3] = ["format", "graph", "storage"];

pub(crate) fn corrupt(details: impl Into<String>) -> Error {
    Error::ModelFile {
        details: details.into(),
    }
}

/// How a model file is read: limits for files that may come from anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    /// The largest file read, in bytes (default [`ReadOptions::DEFAULT_MAX_FILE_BYTES`], 2 GiB).
    /// A longer file is refused with [`Error::LimitExceeded`] before it is read; only regular
    /// files are read (not a device, FIFO or directory).
    pub max_file_bytes: u64,
    /// Accept weights (and int8 scales) that are NaN or infinite. Off by default: such a model
    /// answers NaN for every input (a training run that diverged, a damaged file), so loading it
    /// is an [`Error::ModelFile`] that names the first bad tensor and element.
    pub allow_non_finite: bool,
}

impl ReadOptions {
    /// The default `max_file_bytes`: 2 GiB.
    pub const DEFAULT_MAX_FILE_BYTES: u64 = 2 << 30;
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            max_file_bytes: Self::DEFAULT_MAX_FILE_BYTES,
            allow_non_finite: false,
        }
    }
}

/// A model file's contents before they are placed on a GPU: the graph, the parameters (f32, in
/// the graph's order) and the model's own metadata.
#[derive(Debug, Clone)]
pub struct ModelFile {
    /// The architecture.
    pub graph: GraphSpec,
    /// The parameters (name, shape, values), in the order the graph's layers declare them.
    pub parameters: HostParameters,
    /// Metadata of the model's own (not `format`, `graph` or `storage`, which the format uses).
    pub metadata: BTreeMap<String, String>,
}

/// Every parameter a graph's layers declare, named `"<layer>.<name>"`, with the layers made by
/// their registered factories and the graph's wiring and shapes checked (nothing allocated).
fn graph_parameters(graph: &GraphSpec) -> Result<Vec<(String, ParamSpec)>> {
    let (builder, output) = graph.builder()?;
    Ok(builder.check(output)?.1)
}

impl ModelFile {
    /// The file of `model`: its graph (every layer must give its configuration) and its current
    /// parameters, read back from the GPU.
    pub fn of(model: &Model) -> Result<Self> {
        Ok(ModelFile {
            graph: model.graph()?,
            parameters: model.params().to_host()?,
            metadata: BTreeMap::new(),
        })
    }

    /// The file of a chain of built-in layers over inputs of `input_shape`.
    pub fn chain(
        input_shape: &[usize],
        layers: &[LayerSpec],
        parameters: HostParameters,
    ) -> Result<Self> {
        let nodes = layers
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let layer = serde_json::to_value(spec).map_err(|e| corrupt(e.to_string()))?;
                let from = if i == 0 {
                    Source::Input(0)
                } else {
                    Source::Node(i - 1)
                };
                Ok(NodeSpec {
                    layer,
                    inputs: vec![from],
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let graph = GraphSpec {
            inputs: vec![InputSpec {
                shape: input_shape.to_vec(),
                vocab: None,
            }],
            output: nodes.len().saturating_sub(1),
            nodes,
        };
        Ok(ModelFile {
            graph,
            parameters,
            metadata: BTreeMap::new(),
        })
    }

    /// The name and element index of the first NaN or infinite parameter value, if any.
    pub fn first_non_finite(&self) -> Option<(&str, usize)> {
        first_non_finite(&self.parameters)
    }

    /// The safetensors bytes, parameters f32.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.to_bytes_as(Precision::F32)
    }

    /// The safetensors bytes with the weights in `storage` (biases and scales stay f32 in int8).
    /// The graph is checked, and each parameter must be the one its layer declares.
    pub fn to_bytes_as(&self, storage: Precision) -> Result<Vec<u8>> {
        // What each parameter is, as its layer says: compact storage holds weights only.
        let weights: std::collections::HashSet<String> = graph_parameters(&self.graph)?
            .into_iter()
            .filter(|(_, p)| matches!(p.role, ParamRole::Weight { .. }))
            .map(|(name, _)| name)
            .collect();
        check_parameters(&self.parameters)?;
        if let Some(key) = self
            .metadata
            .keys()
            .find(|k| RESERVED.contains(&k.as_str()))
        {
            return Err(Error::InvalidArgument {
                op: "ModelFile::to_bytes_as",
                details: format!("the metadata key {key:?} is the format's own"),
            });
        }
        let mut metadata: HashMap<String, String> = self.metadata.clone().into_iter().collect();
        metadata.insert(FORMAT.0.to_string(), FORMAT.1.to_string());
        metadata.insert("graph".into(), json(&self.graph)?);
        metadata.insert("storage".into(), format!("{storage:?}").to_lowercase());
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, shape, values) in &self.parameters {
            let weight = weights.contains(name);
            encode_tensor(&mut tensors, name, shape, values, storage, weight)?;
        }
        let views = tensors
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| corrupt(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(views, Some(metadata)).map_err(|e| corrupt(e.to_string()))
    }

    /// Parses safetensors bytes with the default [`ReadOptions`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_bytes_with(bytes, &ReadOptions::default())
    }

    /// Parses safetensors bytes: the graph is checked (every layer made by its registered
    /// factory, the wiring, the shapes, the parameters' count) before any tensor is decoded, then
    /// every tensor against its layer, and (unless `options` allow them) every value for NaN and
    /// infinity. Anything truncated, corrupt or not a wgnn model is an [`Error::ModelFile`].
    pub fn from_bytes_with(bytes: &[u8], options: &ReadOptions) -> Result<Self> {
        let (_, header) =
            SafeTensors::read_metadata(bytes).map_err(|e| corrupt(format!("header: {e}")))?;
        let tensors =
            SafeTensors::deserialize(bytes).map_err(|e| corrupt(format!("tensors: {e}")))?;
        let meta = header
            .metadata()
            .clone()
            .ok_or_else(|| corrupt("no metadata: not a wgnn model"))?;
        let (graph, metadata) = read_graph(&meta)?;
        let declared = graph_parameters(&graph).map_err(|e| match e {
            Error::ModelFile { .. } => e,
            other => corrupt(format!("graph: {other}")),
        })?;
        let mut parameters = Vec::with_capacity(declared.len());
        let mut expected_tensors = 0usize;
        for (name, spec) in &declared {
            let values = decode_tensor(&tensors, name, spec, options, &mut expected_tensors)?;
            parameters.push((name.clone(), spec.shape.clone(), values));
        }
        if tensors.len() != expected_tensors {
            return Err(corrupt(format!(
                "{} tensors in the file, the layers need {expected_tensors}",
                tensors.len(),
            )));
        }
        Ok(ModelFile {
            graph,
            parameters,
            metadata,
        })
    }

    /// Reads a model file with the default [`ReadOptions`].
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        Self::read_with(path, &ReadOptions::default())
    }

    /// Reads a model file: only a regular file, at most `options.max_file_bytes` long.
    pub fn read_with(path: impl AsRef<Path>, options: &ReadOptions) -> Result<Self> {
        let bytes = read_capped(path.as_ref(), options.max_file_bytes)?;
        Self::from_bytes_with(&bytes, options)
    }

    /// Writes the file with the weights in `storage`, through a temporary file and a rename.
    pub fn write_as(&self, path: impl AsRef<Path>, storage: Precision) -> Result<()> {
        write_whole(path.as_ref(), &self.to_bytes_as(storage)?)
    }

    /// Places the model on `gpu` (a chain of built-in layers keeps its [`Model::specs`]).
    pub fn into_model(self, gpu: &Gpu) -> Result<Model> {
        if let Some((input_shape, layers)) = self.graph.as_chain() {
            return Sequential::with_parameters(gpu, &input_shape, layers, self.parameters);
        }
        let (builder, output) = self.graph.builder()?;
        builder.build_with_parameters(gpu, output, self.parameters)
    }
}

fn first_non_finite(parameters: &HostParameters) -> Option<(&str, usize)> {
    parameters.iter().find_map(|(name, _, values)| {
        values
            .iter()
            .position(|v| !v.is_finite())
            .map(|i| (name.as_str(), i))
    })
}

/// Checks that each parameter's values fill its shape (every side at least 1). Whether the
/// parameters fit the layers is checked when the file is read back or placed on a GPU, so that a
/// file can be written as it is (a test writes damaged ones).
fn check_parameters(parameters: &HostParameters) -> Result<()> {
    for (name, shape, values) in parameters {
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if shape.is_empty() || shape.contains(&0) || numel != Some(values.len()) {
            return Err(Error::ShapeMismatch {
                op: "ModelFile::to_bytes",
                details: format!(
                    "parameter {name:?} has shape {shape:?} (every side at least 1) and {} values",
                    values.len()
                ),
            });
        }
    }
    Ok(())
}

/// Appends the tensors that store one parameter in `storage`.
fn encode_tensor(
    out: &mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
    name: &str,
    shape: &[usize],
    values: &[f32],
    storage: Precision,
    weight: bool,
) -> Result<()> {
    match storage {
        Precision::F16 => {
            let half: Vec<half::f16> = values.iter().map(|&v| half::f16::from_f32(v)).collect();
            let bytes = bytemuck::cast_slice(&half).to_vec();
            out.push((name.into(), Dtype::F16, shape.to_vec(), bytes));
        }
        Precision::Int8 if weight => {
            // Quantization has no NaN or infinity: it would store them as some other number
            // without a word.
            if let Some(j) = values.iter().position(|v| !v.is_finite()) {
                return Err(Error::InvalidArgument {
                    op: "ModelFile::to_bytes_as",
                    details: format!(
                        "{name}: element {j} is {}, which int8 storage cannot hold",
                        values[j]
                    ),
                });
            }
            let (q, scales) = crate::ops::quantize_int8(values, shape[0], values.len() / shape[0]);
            out.push((
                name.into(),
                Dtype::I8,
                shape.to_vec(),
                bytemuck::cast_slice(&q).to_vec(),
            ));
            let scales = bytemuck::cast_slice(&scales).to_vec();
            out.push((format!("{name}_scale"), Dtype::F32, vec![shape[0]], scales));
        }
        Precision::F32 | Precision::Int8 => {
            let bytes = bytemuck::cast_slice(values).to_vec();
            out.push((name.into(), Dtype::F32, shape.to_vec(), bytes));
        }
    }
    Ok(())
}

/// The graph and the model's own metadata of a file of any of the formats.
fn read_graph(meta: &HashMap<String, String>) -> Result<(GraphSpec, BTreeMap<String, String>)> {
    let field = |key: &str| {
        meta.get(key)
            .ok_or_else(|| corrupt(format!("metadata lacks {key:?}")))
    };
    let own: BTreeMap<String, String> = meta
        .iter()
        .filter(|(k, _)| {
            !RESERVED.contains(&k.as_str()) && k.as_str() != "input_shape" && k.as_str() != "layers"
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    match meta.get(FORMAT.0).map(String::as_str) {
        Some("wgnn-graph") => {
            let graph: GraphSpec = serde_json::from_str(field("graph")?)
                .map_err(|e| corrupt(format!("graph: {e}")))?;
            Ok((graph, own))
        }
        Some("wgnn") => {
            let input_shape: Vec<usize> = serde_json::from_str(field("input_shape")?)
                .map_err(|e| corrupt(format!("input_shape: {e}")))?;
            let layers: Vec<LayerSpec> = serde_json::from_str(field("layers")?)
                .map_err(|e| corrupt(format!("layers (an unknown layer?): {e}")))?;
            for (i, spec) in layers.iter().enumerate() {
                spec.validate()
                    .map_err(|e| corrupt(format!("layer {i}: {e}")))?;
            }
            if layers.is_empty() {
                return Err(corrupt("a model needs at least one layer"));
            }
            Ok((
                ModelFile::chain(&input_shape, &layers, Vec::new())?.graph,
                own,
            ))
        }
        Some("wgnn-gpt") => {
            let config: GptConfig = serde_json::from_str(field("config")?)
                .map_err(|e| corrupt(format!("config: {e}")))?;
            config
                .validate()
                .map_err(|e| corrupt(format!("config: {e}")))?;
            let (builder, output) = config.builder(0)?;
            Ok((builder.graph(output)?, own))
        }
        _ => Err(corrupt(
            "metadata has no \"format\": \"wgnn-graph\" (nor an earlier wgnn format)",
        )),
    }
}

/// The f32 values of the parameter `name` from its tensor (F32, F16, or for a weight I8 with its
/// scales), checked against its declared shape; counts the tensors it read.
fn decode_tensor(
    tensors: &SafeTensors,
    name: &str,
    spec: &ParamSpec,
    options: &ReadOptions,
    read: &mut usize,
) -> Result<Vec<f32>> {
    let shape = &spec.shape;
    let weight = matches!(spec.role, ParamRole::Weight { .. });
    let view = tensors
        .tensor(name)
        .map_err(|_| corrupt(format!("missing tensor {name:?}")))?;
    if view.shape() != shape.as_slice() {
        return Err(corrupt(format!(
            "{name}: shape {:?}, the layer needs {shape:?}",
            view.shape()
        )));
    }
    *read += 1;
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => bytemuck::pod_collect_to_vec(view.data()),
        Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(view.data())
            .into_iter()
            .map(f32::from)
            .collect(),
        Dtype::I8 if weight => {
            let scales = decode_scales(tensors, name, shape[0], options)?;
            *read += 1;
            let per = shape.iter().product::<usize>() / shape[0];
            view.data()
                .iter()
                .enumerate()
                .map(|(j, &q)| f32::from(q as i8) * scales[j / per])
                .collect()
        }
        other => {
            return Err(corrupt(format!(
                "{name}: dtype {other:?}, expected F32, F16 or (weights) I8"
            )))
        }
    };
    if !options.allow_non_finite {
        if let Some(j) = values.iter().position(|v| !v.is_finite()) {
            return Err(corrupt(format!(
                "{name}: element {j} is {} (NaN or infinite; ReadOptions::allow_non_finite \
                 accepts it)",
                values[j]
            )));
        }
    }
    Ok(values)
}

/// The per-row scales of the int8 weight `name` (`rows` of them).
fn decode_scales(
    tensors: &SafeTensors,
    name: &str,
    rows: usize,
    options: &ReadOptions,
) -> Result<Vec<f32>> {
    let scale_name = format!("{name}_scale");
    let scales = tensors
        .tensor(&scale_name)
        .map_err(|_| corrupt(format!("{name} is int8 but {scale_name:?} is missing")))?;
    if scales.dtype() != Dtype::F32 || scales.shape() != [rows] {
        return Err(corrupt(format!("{scale_name}: must be F32 [{rows}]")));
    }
    let scales: Vec<f32> = bytemuck::pod_collect_to_vec(scales.data());
    if let Some(j) = scales.iter().position(|s| !s.is_finite()) {
        if !options.allow_non_finite {
            return Err(corrupt(format!(
                "{scale_name}: element {j} is {} (NaN or infinite)",
                scales[j]
            )));
        }
    }
    Ok(scales)
}

/// A chain of built-in layers read from a file, before it is placed on a GPU: the form that
/// structured pruning and compression edit. Its file is a [`ModelFile`] whose graph is the chain.
#[derive(Debug, Clone)]
pub struct SavedModel {
    /// Per-sample input shape.
    pub input_shape: Vec<usize>,
    /// The layers.
    pub layers: Vec<LayerSpec>,
    /// The parameters (name, shape, values), in layer order.
    pub parameters: HostParameters,
}

impl SavedModel {
    /// The safetensors bytes of a model, f32.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.to_bytes_as(Precision::F32)
    }

    /// The name and element index of the first NaN or infinite parameter value, if any.
    pub fn first_non_finite(&self) -> Option<(&str, usize)> {
        first_non_finite(&self.parameters)
    }

    /// The safetensors bytes of the model in `storage` (see [`ModelFile::to_bytes_as`]).
    pub fn to_bytes_as(&self, storage: Precision) -> Result<Vec<u8>> {
        ModelFile::chain(&self.input_shape, &self.layers, self.parameters.clone())?
            .to_bytes_as(storage)
    }

    /// Parses safetensors bytes with the default [`ReadOptions`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_bytes_with(bytes, &ReadOptions::default())
    }

    /// Parses safetensors bytes ([`ModelFile::from_bytes_with`]) of a chain of built-in layers;
    /// any other graph is an [`Error::ModelFile`].
    pub fn from_bytes_with(bytes: &[u8], options: &ReadOptions) -> Result<Self> {
        let file = ModelFile::from_bytes_with(bytes, options)?;
        let (input_shape, layers) = file.graph.as_chain().ok_or_else(|| {
            corrupt("the model is not a chain of built-in layers (load it with Model::load)")
        })?;
        Ok(SavedModel {
            input_shape,
            layers,
            parameters: file.parameters,
        })
    }

    /// Reads a model file with the default [`ReadOptions`].
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        Self::read_with(path, &ReadOptions::default())
    }

    /// Reads a model file: only a regular file, at most `options.max_file_bytes` long.
    pub fn read_with(path: impl AsRef<Path>, options: &ReadOptions) -> Result<Self> {
        let bytes = read_capped(path.as_ref(), options.max_file_bytes)?;
        Self::from_bytes_with(&bytes, options)
    }

    /// Places the model on `gpu`.
    pub fn into_model(self, gpu: &Gpu) -> Result<Sequential> {
        Sequential::with_parameters(gpu, &self.input_shape, self.layers, self.parameters)
    }
}

impl Model {
    /// The model's architecture and current parameters, read back from the GPU, as a chain of
    /// built-in layers (what pruning edits); a model with skip connections, several inputs or
    /// layers of another crate is refused with [`Error::InvalidArgument`] (save those with
    /// [`Self::save`], which takes any graph).
    pub fn to_saved(&self) -> Result<SavedModel> {
        let layers = self.specs().ok_or_else(|| Error::InvalidArgument {
            op: "Model::to_saved",
            details: "this model is not a chain of built-in layers (Sequential): save it with \
                      Model::save"
                .into(),
        })?;
        Ok(SavedModel {
            input_shape: self.input_shape().to_vec(),
            layers: layers.to_vec(),
            parameters: self.params().to_host()?,
        })
    }

    /// Saves the model (any graph whose layers give their configuration) as a safetensors file
    /// (see the module documentation), f32.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_as(path, Precision::F32)
    }

    /// Saves the model with its weights in `storage`; [`Self::load`] reads every storage back
    /// (f16 and int8 weights as the f32 values they stand for).
    pub fn save_as(&self, path: impl AsRef<Path>, storage: Precision) -> Result<()> {
        ModelFile::of(self)?.write_as(path, storage)
    }

    /// Loads a model saved by [`Self::save`] (or a file of an earlier format) onto `gpu`, with
    /// the default [`ReadOptions`]; layers of another crate must be registered first
    /// ([`crate::nn::register_layer`]).
    pub fn load(gpu: &Gpu, path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(gpu, path, &ReadOptions::default())
    }

    /// Loads a model onto `gpu` under `options`.
    pub fn load_with(gpu: &Gpu, path: impl AsRef<Path>, options: &ReadOptions) -> Result<Self> {
        ModelFile::read_with(path, options)?.into_model(gpu)
    }
}

/// Reads a regular file of at most `limit` bytes (a device such as `/dev/zero` or a FIFO is
/// refused before it is opened: one would never end, the other would block).
pub(crate) fn read_capped(path: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let io = |e: std::io::Error| Error::io(path.display().to_string(), e);
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(Error::Io {
            details: format!(
                "{}: not a regular file (a directory, device or FIFO); a model is read from a file",
                path.display()
            ),
            source: None,
        });
    }
    let too_long = |len: u64| Error::LimitExceeded {
        what: format!(
            "{}: model file bytes (ReadOptions::max_file_bytes)",
            path.display()
        ),
        requested: len,
        limit,
    };
    if meta.len() > limit {
        return Err(too_long(meta.len()));
    }
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow after the size check: never read more than the limit.
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(too_long(bytes.len() as u64));
    }
    Ok(bytes)
}

fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| corrupt(e.to_string()))
}

/// Writes `bytes` to `path` through a temporary file beside it and a rename: a process stopped
/// mid-write (a killed training job) leaves the file before it, never half of one.
pub(crate) fn write_whole(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |e: std::io::Error| Error::io(path.display().to_string(), e);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(name);
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

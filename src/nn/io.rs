//! Saving and loading models as safetensors: the parameters as f32 tensors named like
//! [`crate::nn::Parameter::name`] (`"0.weight"`), and in the header's metadata the format
//! (`"format": "wgnn"`), the per-sample input shape and the layers (JSON), so that the inference
//! path and other tools can rebuild the model.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::layer::ParamRole;
use super::layers::LayerSpec;
use super::model::Sequential;
use super::params::HostParameters;
use crate::dtype::Precision;
use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// The metadata key and value that mark a wgnn model file.
const FORMAT: (&str, &str) = ("format", "wgnn");

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

/// A model read from a file, before it is placed on a GPU.
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
        self.parameters.iter().find_map(|(name, _, values)| {
            values
                .iter()
                .position(|v| !v.is_finite())
                .map(|i| (name.as_str(), i))
        })
    }

    /// The safetensors bytes of a model in `storage`. Each parameter's values must fill its shape
    /// (every side at least 1); whether the parameters fit the layers is checked when the file is
    /// read back ([`Self::from_bytes`]) or placed on a GPU ([`Self::into_model`]).
    pub fn to_bytes_as(&self, storage: Precision) -> Result<Vec<u8>> {
        for (name, shape, values) in &self.parameters {
            let numel = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .unwrap_or(usize::MAX);
            if shape.is_empty() || shape.contains(&0) || numel != values.len() {
                return Err(Error::ShapeMismatch {
                    op: "SavedModel::to_bytes",
                    details: format!(
                        "parameter {name:?} has shape {shape:?} (every side at least 1) and {} \
                         values",
                        values.len()
                    ),
                });
            }
        }
        // What each parameter is, as its layer says: compact storage holds weights only.
        let mut weights = std::collections::HashSet::new();
        for (i, spec) in self.layers.iter().enumerate() {
            spec.validate()?;
            for p in spec.parameters() {
                if matches!(p.role, ParamRole::Weight { .. }) {
                    weights.insert(format!("{i}.{}", p.name));
                }
            }
        }
        let mut metadata = HashMap::new();
        metadata.insert(FORMAT.0.to_string(), FORMAT.1.to_string());
        metadata.insert("input_shape".into(), json(&self.input_shape)?);
        metadata.insert("layers".into(), json(&self.layers)?);
        metadata.insert("storage".into(), format!("{storage:?}").to_lowercase());
        // (name, dtype, shape, bytes)
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, shape, values) in &self.parameters {
            match storage {
                Precision::F32 => tensors.push((
                    name.clone(),
                    Dtype::F32,
                    shape.clone(),
                    bytemuck::cast_slice(values).to_vec(),
                )),
                Precision::F16 => {
                    let half: Vec<half::f16> =
                        values.iter().map(|&v| half::f16::from_f32(v)).collect();
                    tensors.push((
                        name.clone(),
                        Dtype::F16,
                        shape.clone(),
                        bytemuck::cast_slice(&half).to_vec(),
                    ));
                }
                Precision::Int8 if weights.contains(name) => {
                    // Quantization has no NaN or infinity: it would store them as some other
                    // number without a word.
                    if let Some(j) = values.iter().position(|v| !v.is_finite()) {
                        return Err(Error::InvalidArgument {
                            op: "SavedModel::to_bytes_as",
                            details: format!(
                                "{name}: element {j} is {}, which int8 storage cannot hold",
                                values[j]
                            ),
                        });
                    }
                    let (q, scales) =
                        crate::ops::quantize_int8(values, shape[0], values.len() / shape[0]);
                    tensors.push((
                        name.clone(),
                        Dtype::I8,
                        shape.clone(),
                        bytemuck::cast_slice(&q).to_vec(),
                    ));
                    tensors.push((
                        format!("{name}_scale"),
                        Dtype::F32,
                        vec![shape[0]],
                        bytemuck::cast_slice(&scales).to_vec(),
                    ));
                }
                Precision::Int8 => tensors.push((
                    name.clone(),
                    Dtype::F32,
                    shape.clone(),
                    bytemuck::cast_slice(values).to_vec(),
                )),
            }
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

    /// Parses safetensors bytes with the default [`ReadOptions`]; anything truncated, corrupt or
    /// not a wgnn model is a [`Error::ModelFile`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_bytes_with(bytes, &ReadOptions::default())
    }

    /// Parses safetensors bytes: the layers are checked ([`LayerSpec::validate`]) before any
    /// tensor is decoded, every tensor against its layer, and (unless `options` allow them) every
    /// value for NaN and infinity.
    pub fn from_bytes_with(bytes: &[u8], options: &ReadOptions) -> Result<Self> {
        let (_, header) =
            SafeTensors::read_metadata(bytes).map_err(|e| corrupt(format!("header: {e}")))?;
        let tensors =
            SafeTensors::deserialize(bytes).map_err(|e| corrupt(format!("tensors: {e}")))?;
        let meta = header
            .metadata()
            .clone()
            .ok_or_else(|| corrupt("no metadata: not a wgnn model"))?;
        if meta.get(FORMAT.0).map(String::as_str) != Some(FORMAT.1) {
            return Err(corrupt("metadata has no \"format\": \"wgnn\""));
        }
        let field = |key: &str| {
            meta.get(key)
                .ok_or_else(|| corrupt(format!("metadata lacks {key:?}")))
        };
        let input_shape: Vec<usize> = serde_json::from_str(field("input_shape")?)
            .map_err(|e| corrupt(format!("input_shape: {e}")))?;
        let layers: Vec<LayerSpec> = serde_json::from_str(field("layers")?)
            .map_err(|e| corrupt(format!("layers (an unknown layer?): {e}")))?;
        for (i, spec) in layers.iter().enumerate() {
            spec.validate()
                .map_err(|e| corrupt(format!("layer {i}: {e}")))?;
        }
        let mut parameters = Vec::new();
        let mut expected_tensors = 0usize;
        for (i, spec) in layers.iter().enumerate() {
            // Validated above.
            for p in spec.parameters() {
                let (name, shape) = (format!("{i}.{}", p.name), p.shape);
                let weight = matches!(p.role, ParamRole::Weight { .. });
                let view = tensors
                    .tensor(&name)
                    .map_err(|_| corrupt(format!("missing tensor {name:?}")))?;
                if view.shape() != shape.as_slice() {
                    return Err(corrupt(format!(
                        "{name}: shape {:?}, the layer needs {shape:?}",
                        view.shape()
                    )));
                }
                expected_tensors += 1;
                let values: Vec<f32> = match view.dtype() {
                    Dtype::F32 => bytemuck::pod_collect_to_vec(view.data()),
                    Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(view.data())
                        .into_iter()
                        .map(f32::from)
                        .collect(),
                    Dtype::I8 if weight => {
                        let scale_name = format!("{name}_scale");
                        let scales = tensors.tensor(&scale_name).map_err(|_| {
                            corrupt(format!("{name} is int8 but {scale_name:?} is missing"))
                        })?;
                        if scales.dtype() != Dtype::F32 || scales.shape() != [shape[0]] {
                            return Err(corrupt(format!(
                                "{scale_name}: must be F32 [{}]",
                                shape[0]
                            )));
                        }
                        expected_tensors += 1;
                        let scales: Vec<f32> = bytemuck::pod_collect_to_vec(scales.data());
                        if let Some(j) = scales.iter().position(|s| !s.is_finite()) {
                            if !options.allow_non_finite {
                                return Err(corrupt(format!(
                                    "{scale_name}: element {j} is {} (NaN or infinite)",
                                    scales[j]
                                )));
                            }
                        }
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
                            "{name}: element {j} is {} (NaN or infinite; ReadOptions::\
                             allow_non_finite accepts it)",
                            values[j]
                        )));
                    }
                }
                parameters.push((name, shape, values));
            }
        }
        if tensors.len() != expected_tensors {
            return Err(corrupt(format!(
                "{} tensors in the file, the layers need {expected_tensors}",
                tensors.len(),
            )));
        }
        Ok(SavedModel {
            input_shape,
            layers,
            parameters,
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

impl Sequential {
    /// The model's architecture and current parameters, read back from the GPU. Model files
    /// hold chains of built-in layers ([`Sequential`]); a model with skip connections, several
    /// inputs or layers of another crate is refused with [`Error::InvalidArgument`].
    pub fn to_saved(&self) -> Result<SavedModel> {
        let layers = self.specs().ok_or_else(|| Error::InvalidArgument {
            op: "Model::save",
            details: "model files hold chains of built-in layers (Sequential); this model has \
                      skip connections, several inputs or layers of another crate"
                .into(),
        })?;
        Ok(SavedModel {
            input_shape: self.input_shape().to_vec(),
            layers: layers.to_vec(),
            parameters: self.params().to_host()?,
        })
    }

    /// Saves the model as a safetensors file (see the module documentation), f32.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_as(path, Precision::F32)
    }

    /// Saves the model as a safetensors file with its weights in `storage`; [`Self::load`] reads
    /// every storage back (f16 and int8 weights as the f32 values they stand for).
    pub fn save_as(&self, path: impl AsRef<Path>, storage: Precision) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_saved()?.to_bytes_as(storage)?;
        write_whole(path, &bytes)
    }

    /// Loads a model saved by [`Self::save`] onto `gpu`, with the default [`ReadOptions`].
    pub fn load(gpu: &Gpu, path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(gpu, path, &ReadOptions::default())
    }

    /// Loads a model saved by [`Self::save`] onto `gpu` under `options`.
    pub fn load_with(gpu: &Gpu, path: impl AsRef<Path>, options: &ReadOptions) -> Result<Self> {
        SavedModel::read_with(path, options)?.into_model(gpu)
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

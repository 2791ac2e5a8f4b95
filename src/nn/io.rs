//! Saving and loading models as safetensors: the parameters as f32 tensors named like
//! [`crate::nn::Parameter::name`] (`"0.weight"`), and in the header's metadata the format
//! (`"format": "wgnn"`), the per-sample input shape and the layers (JSON), so that the inference
//! path and other tools can rebuild the model.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::layers::LayerSpec;
use super::model::Sequential;
use super::params::HostParameters;
use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// The metadata key and value that mark a wgnn model file.
const FORMAT: (&str, &str) = ("format", "wgnn");

fn corrupt(details: impl Into<String>) -> Error {
    Error::ModelFile {
        details: details.into(),
    }
}

/// How a saved model stores its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// f32 tensors.
    #[default]
    F32,
    /// f16 tensors (half the bytes; weights are rounded to f16).
    F16,
    /// Linear and Conv2d weights as int8 (`I8`) with an f32 scale per output channel in
    /// `"<name>_scale"`; biases f32.
    Int8,
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
        self.to_bytes_as(Storage::F32)
    }

    /// The safetensors bytes of a model in `storage`.
    pub fn to_bytes_as(&self, storage: Storage) -> Result<Vec<u8>> {
        let mut metadata = HashMap::new();
        metadata.insert(FORMAT.0.to_string(), FORMAT.1.to_string());
        metadata.insert("input_shape".into(), json(&self.input_shape)?);
        metadata.insert("layers".into(), json(&self.layers)?);
        metadata.insert("storage".into(), format!("{storage:?}").to_lowercase());
        // (name, dtype, shape, bytes)
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, shape, values) in &self.parameters {
            match storage {
                Storage::F32 => tensors.push((
                    name.clone(),
                    Dtype::F32,
                    shape.clone(),
                    bytemuck::cast_slice(values).to_vec(),
                )),
                Storage::F16 => {
                    let half: Vec<half::f16> =
                        values.iter().map(|&v| half::f16::from_f32(v)).collect();
                    tensors.push((
                        name.clone(),
                        Dtype::F16,
                        shape.clone(),
                        bytemuck::cast_slice(&half).to_vec(),
                    ));
                }
                Storage::Int8 if name.ends_with(".weight") => {
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
                Storage::Int8 => tensors.push((
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

    /// Parses safetensors bytes; anything truncated, corrupt or not a wgnn model is a
    /// [`Error::ModelFile`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
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
        let mut parameters = Vec::new();
        let mut expected_tensors = 0usize;
        for (i, spec) in layers.iter().enumerate() {
            for (name, shape) in spec.parameter_shapes() {
                let name = format!("{i}.{name}");
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
                    Dtype::I8 if name.ends_with(".weight") => {
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

    /// Reads a model file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes =
            std::fs::read(path).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        Self::from_bytes(&bytes)
    }

    /// Places the model on `gpu`.
    pub fn into_model(self, gpu: &Gpu) -> Result<Sequential> {
        Sequential::with_parameters(gpu, &self.input_shape, self.layers, self.parameters)
    }
}

impl Sequential {
    /// The model's architecture and current parameters, read back from the GPU.
    pub fn to_saved(&self) -> Result<SavedModel> {
        Ok(SavedModel {
            input_shape: self.input_shape().to_vec(),
            layers: self.specs().to_vec(),
            parameters: self.params().to_host()?,
        })
    }

    /// Saves the model as a safetensors file (see the module documentation), f32.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_as(path, Storage::F32)
    }

    /// Saves the model as a safetensors file with its weights in `storage`; [`Self::load`] reads
    /// every storage back (f16 and int8 weights as the f32 values they stand for).
    pub fn save_as(&self, path: impl AsRef<Path>, storage: Storage) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_saved()?.to_bytes_as(storage)?;
        std::fs::write(path, bytes).map_err(|e| Error::Io(format!("{}: {e}", path.display())))
    }

    /// Loads a model saved by [`Self::save`] onto `gpu`.
    pub fn load(gpu: &Gpu, path: impl AsRef<Path>) -> Result<Self> {
        SavedModel::read(path)?.into_model(gpu)
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| corrupt(e.to_string()))
}

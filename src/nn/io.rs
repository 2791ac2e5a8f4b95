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
    /// The safetensors bytes of a model.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut metadata = HashMap::new();
        metadata.insert(FORMAT.0.to_string(), FORMAT.1.to_string());
        metadata.insert("input_shape".into(), json(&self.input_shape)?);
        metadata.insert("layers".into(), json(&self.layers)?);
        let views = self
            .parameters
            .iter()
            .map(|(name, shape, values)| {
                TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(values))
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
        for (i, spec) in layers.iter().enumerate() {
            for (name, shape) in spec.parameter_shapes() {
                let name = format!("{i}.{name}");
                let view = tensors
                    .tensor(&name)
                    .map_err(|_| corrupt(format!("missing tensor {name:?}")))?;
                if view.dtype() != Dtype::F32 {
                    return Err(corrupt(format!(
                        "{name}: dtype {:?}, expected F32",
                        view.dtype()
                    )));
                }
                if view.shape() != shape.as_slice() {
                    return Err(corrupt(format!(
                        "{name}: shape {:?}, the layer needs {shape:?}",
                        view.shape()
                    )));
                }
                let values: Vec<f32> = bytemuck::pod_collect_to_vec(view.data());
                parameters.push((name, shape, values));
            }
        }
        if tensors.len() != parameters.len() {
            return Err(corrupt(format!(
                "{} tensors in the file, the layers have {} parameters",
                tensors.len(),
                parameters.len()
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

    /// Saves the model as a safetensors file (see the module documentation).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_saved()?.to_bytes()?;
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

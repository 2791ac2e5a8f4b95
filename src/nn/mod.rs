//! Training: layers with explicit backward passes, a [`Sequential`] model over one parameter arena,
//! an arena-wide [`Optimizer`], and a [`Trainer`] that records a whole step (upload, forward, loss,
//! backward, update) into one [`Batch`](crate::Batch) and one submission.
//!
//! ```no_run
//! use wgnn::nn::{Init, LayerSpec, Optimizer, Sequential, Trainer};
//! use wgnn::{ops::SgdConfig, Activation, Gpu};
//! # fn main() -> wgnn::Result<()> {
//! let gpu = Gpu::new()?;
//! let model = Sequential::new(
//!     &gpu,
//!     &[64],
//!     vec![
//!         LayerSpec::Linear { inputs: 64, outputs: 32 },
//!         LayerSpec::Activation { function: Activation::Relu },
//!         LayerSpec::Linear { inputs: 32, outputs: 10 },
//!     ],
//!     Init::KaimingUniform { seed: 7 },
//! )?;
//! let optimizer = Optimizer::sgd(SgdConfig { momentum: 0.9, ..SgdConfig::new(0.05) });
//! let mut trainer = Trainer::new(model, optimizer);
//! let (x, labels) = (vec![0.5f32; 16 * 64], vec![3u32; 16]);
//! trainer.step(&x, &labels)?; // one submission; the loss stays on the GPU
//! let mean_loss = trainer.mean_loss()?; // one readback for all steps since the last call
//! # Ok(()) }
//! ```

pub mod chat;
pub mod gguf;
mod gpt;
pub(crate) mod io;
mod language_model;
mod layer;
mod layers;
pub mod llama;
mod model;
mod optimizer;
mod params;
pub mod prune;
mod registry;
mod spec;
pub mod tokenizer;
mod trainer;
mod transformer;

pub use gpt::{transformer_block, BlockConfig, GptConfig};
pub use io::{ModelFile, ReadOptions, SavedModel};
pub use language_model::{LanguageModel, Sampling};
pub use layer::{Context, DecodeStep, Layer, ParamRole, ParamSpec};
pub use layers::{ActivationLayer, Add, AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d};
pub use model::{
    GraphSpec, Init, InputSpec, Model, ModelBuilder, NodeSpec, Sequential, Source, Value,
};
pub use optimizer::Optimizer;
pub use params::{HostParameters, ParamId, ParamStore, Parameter};
pub use registry::{
    layer_from_config, make_layer, register_layer, registered_layers, LayerFactory,
};
pub use spec::{digits_cnn, LayerSpec};
pub use trainer::{
    Distillation, Input, LossFunction, MicroBatch, MixedPrecision, Targets, Trainer,
};
pub use transformer::{Dropout, Embedding, LayerNorm, MultiHeadAttention, WarmupCosine};

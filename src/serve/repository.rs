//! The model repository: `<name>/<version>/model.safetensors` with an optional `config.json`
//! ([`ModelConfig`]), each model read once and put behind a batcher or a generation engine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::options::ServerOptions;
use crate::dtype::Precision;
use crate::error::{Cause, Error, Result};
use crate::generate::{Decoder, DecoderOptions, Engine, EngineOptions};
use crate::gpu::Gpu;
use crate::infer::{Batcher, BatcherConfig, InferenceSession, SessionOptions};
use crate::nn::LanguageModel;

/// The largest `config.json` read.
const MAX_CONFIG_BYTES: u64 = 64 << 10;

/// How a served model's weights are stored (`config.json`'s `"precision"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightPrecision {
    /// f32 weights.
    #[default]
    F32,
    /// f16 weights.
    F16,
    /// int8 weights with an f32 scale per output channel.
    Int8,
}

impl From<WeightPrecision> for Precision {
    fn from(p: WeightPrecision) -> Precision {
        match p {
            WeightPrecision::F32 => Precision::F32,
            WeightPrecision::F16 => Precision::F16,
            WeightPrecision::Int8 => Precision::Int8,
        }
    }
}

/// A model's serving settings: `config.json` beside its file, a JSON object whose keys are all
/// optional and must be among these (an unknown key, a value of the wrong type, or anything but
/// an object is refused at start, with the file named).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `"f32"`, `"f16"` or `"int8"` weights.
    pub precision: WeightPrecision,
    /// Classifiers: the largest batch of one replay (1 to 65,536).
    pub max_batch: usize,
    /// Classifiers: the longest a request waits for others to batch with, in ms (0 to 10,000).
    pub max_wait_ms: u64,
    /// Requests waiting at most (classifiers: 1 to 2^20; language models: 1 to 65,536); past it,
    /// 503 with `Retry-After`.
    pub queue_capacity: usize,
    /// Language models: sequences generated at once (1 to 1,024).
    pub slots: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            precision: WeightPrecision::F32,
            max_batch: 64,
            max_wait_ms: 2,
            queue_capacity: 1024,
            slots: 16,
        }
    }
}

impl ModelConfig {
    /// The configuration in `json`: an object with known keys only, each of its type.
    pub fn from_json(json: &[u8]) -> std::result::Result<Self, String> {
        let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        if !value.is_object() {
            return Err(format!(
                "the configuration must be a JSON object of named settings, got {}",
                super::protocol::json_kind(&value)
            ));
        }
        serde_path_to_error::deserialize(value).map_err(|e| match e.path().to_string() {
            p if p == "." => e.inner().to_string(),
            p => format!("{p}: {}", e.inner()),
        })
    }
}

/// What a model is served through.
pub(crate) enum Served {
    /// A classifier behind a dynamic batcher.
    Classifier {
        batcher: Batcher,
        input_shape: Vec<usize>,
        classes: usize,
        max_batch: usize,
    },
    /// A language model behind a generation engine, one character per token.
    Language {
        engine: Engine,
        vocabulary: Vec<char>,
        context: usize,
        slots: usize,
    },
}

/// One served model.
pub(crate) struct ServedModel {
    pub name: String,
    pub version: String,
    pub file: PathBuf,
    pub config: ModelConfig,
    pub served: Served,
}

impl ServedModel {
    /// One readable line: what the model is, how it is served, and where it came from.
    pub fn describe(&self) -> String {
        let c = &self.config;
        let precision = serde_json::to_value(c.precision)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let what = match &self.served {
            Served::Classifier {
                input_shape,
                classes,
                max_batch,
                ..
            } => format!(
                "classifier, input {input_shape:?} -> {classes} classes, {precision} weights, \
                 batches of up to {max_batch} within {} ms, queue of {}",
                c.max_wait_ms, c.queue_capacity
            ),
            Served::Language {
                vocabulary,
                context,
                slots,
                ..
            } => format!(
                "language model, {} tokens, context {context}, {precision} weights, \
                 {slots} sequences at once, queue of {}",
                vocabulary.len(),
                c.queue_capacity
            ),
        };
        format!(
            "model {:?} version {}: {what} ({})",
            self.name,
            self.version,
            self.file.display()
        )
    }
}

fn invalid(details: String) -> Error {
    Error::InvalidArgument {
        op: "model repository",
        details,
    }
}

/// `e`, said of the model `name` and its file.
fn of_model(name: &str, file: &Path, e: Error) -> Error {
    Error::Serving {
        details: format!("model {name:?} ({})", file.display()),
        source: Some(Cause::new(e)),
    }
}

/// The highest numeric version directory of a model directory.
fn latest_version(dir: &Path) -> Result<(String, PathBuf)> {
    let io = |e: std::io::Error| Error::io(dir.display().to_string(), e);
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let Some(v) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if entry.path().is_dir() && best.as_ref().is_none_or(|(b, _)| v > *b) {
            best = Some((v, entry.path()));
        }
    }
    best.map(|(v, p)| (v.to_string(), p)).ok_or_else(|| {
        invalid(format!(
            "{} has no numeric version directory",
            dir.display()
        ))
    })
}

fn read_config(path: &Path) -> Result<ModelConfig> {
    if !path.exists() {
        return Ok(ModelConfig::default());
    }
    let bytes = crate::nn::io::read_capped(path, MAX_CONFIG_BYTES)?;
    ModelConfig::from_json(&bytes).map_err(|e| invalid(format!("{}: {e}", path.display())))
}

/// The model in `file` ready to serve: a language model (its file's metadata holds a
/// configuration) behind a generation engine, anything else behind a dynamic batcher. The file is
/// read once.
fn serve_file(
    gpu: &Gpu,
    file: &Path,
    config: &ModelConfig,
    options: &ServerOptions,
) -> Result<Served> {
    let contents = crate::nn::ModelFile::read(file)?;
    if contents.metadata.contains_key("config") {
        let (lm, vocabulary) = LanguageModel::from_file(gpu, contents)?;
        return serve_language_model(&lm, vocabulary, config);
    }
    let model = contents.into_model(gpu)?;
    let session = Arc::new(InferenceSession::new(
        model,
        SessionOptions {
            max_batch: config.max_batch,
            precision: config.precision.into(),
            timeout: options.request_timeout,
            ..Default::default()
        },
    )?);
    let input_shape = session.input_shape().to_vec();
    let classes = session.classes();
    let batcher = Batcher::new(
        session,
        BatcherConfig {
            max_batch: config.max_batch,
            max_wait: Duration::from_millis(config.max_wait_ms),
            queue_capacity: config.queue_capacity,
            request_timeout: options.request_timeout,
        },
    )?;
    Ok(Served::Classifier {
        batcher,
        input_shape,
        classes,
        max_batch: config.max_batch,
    })
}

/// A language model behind a generation engine, its vocabulary one character per token.
fn serve_language_model(
    lm: &LanguageModel,
    vocabulary: String,
    config: &ModelConfig,
) -> Result<Served> {
    let vocabulary: Vec<char> = vocabulary.chars().collect();
    if vocabulary.len() != lm.config().vocab {
        return Err(Error::ModelFile {
            details: format!(
                "{} vocabulary characters for {} token ids",
                vocabulary.len(),
                lm.config().vocab
            ),
        });
    }
    let decoder = Decoder::new(
        lm,
        DecoderOptions {
            max_sequences: config.slots,
            precision: config.precision.into(),
            ..Default::default()
        },
    )?;
    let engine = Engine::new(
        decoder,
        EngineOptions {
            queue_capacity: config.queue_capacity,
            vocabulary: Some(vocabulary.iter().map(|c| c.to_string()).collect()),
            ..Default::default()
        },
    )?;
    Ok(Served::Language {
        engine,
        vocabulary,
        context: lm.config().context,
        slots: config.slots,
    })
}

/// Every model of the repository at `dir` on `gpu` (checked, warmed), ready to serve, by
/// name. An error names the model and its file.
pub(crate) fn load_repository(
    gpu: &Gpu,
    dir: &Path,
    options: &ServerOptions,
) -> Result<BTreeMap<String, ServedModel>> {
    let io = |e: std::io::Error| Error::io(dir.display().to_string(), e);
    let mut models = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if !entry.path().is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let (version, vdir) =
            latest_version(&entry.path()).map_err(|e| of_model(&name, &entry.path(), e))?;
        let config_file = vdir.join("config.json");
        let config = read_config(&config_file).map_err(|e| of_model(&name, &config_file, e))?;
        let file = vdir.join("model.safetensors");
        let served =
            serve_file(gpu, &file, &config, options).map_err(|e| of_model(&name, &file, e))?;
        models.insert(
            name.clone(),
            ServedModel {
                name,
                version,
                file,
                config,
                served,
            },
        );
    }
    Ok(models)
}

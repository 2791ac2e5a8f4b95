//! `wgnn-serve`'s library half: a model repository served over HTTP in the Open Inference Protocol
//! (KServe v2 REST), with Triton's generate extension for language models, Prometheus metrics,
//! limits and graceful shutdown. Behind the `serve` cargo feature.
//!
//! A repository is a directory of `<name>/<version>/model.safetensors` (the highest numeric
//! version is served), each with an optional `config.json` beside it ([`ModelConfig`]). A
//! classifier (a `Sequential` file) is served through an [`InferenceSession`] and a dynamic
//! [`Batcher`]; a language model (a `LanguageModel` file) through a generation [`Engine`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::generate::{
    Decoder, DecoderOptions, Engine, EngineOptions, Event, FinishReason, GenerationRequest,
};
use crate::gpu::Gpu;
use crate::infer::{Batcher, BatcherConfig, InferenceSession, Precision, SessionOptions};
use crate::nn::LanguageModel;
use crate::ops::SamplingSettings;

/// The largest `config.json` read.
const MAX_CONFIG_BYTES: u64 = 64 << 10;
/// Samples one infer request may carry.
pub const MAX_INFER_SAMPLES: usize = 4096;

/// A model's serving settings (`config.json` beside its file; every field optional).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `"f32"`, `"f16"` or `"int8"` weights.
    pub precision: String,
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
            precision: "f32".into(),
            max_batch: 64,
            max_wait_ms: 2,
            queue_capacity: 1024,
            slots: 16,
        }
    }
}

impl ModelConfig {
    fn precision(&self) -> Result<Precision> {
        match self.precision.as_str() {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            "int8" => Ok(Precision::Int8),
            other => Err(Error::InvalidArgument {
                op: "ModelConfig",
                details: format!("precision must be f32, f16 or int8, got {other:?}"),
            }),
        }
    }
}

/// How the server runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerOptions {
    /// The largest request body, in bytes (1 to 1 GiB); past it, 413.
    pub max_body_bytes: usize,
    /// The longest a request may take (more than 0, at most one hour); past it, 504.
    pub request_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_body_bytes: 16 << 20,
            request_timeout: Duration::from_secs(30),
        }
    }
}

enum Served {
    Classifier {
        batcher: Batcher,
        input_shape: Vec<usize>,
        classes: usize,
    },
    Language {
        engine: Engine,
        vocabulary: Vec<char>,
        context: usize,
    },
}

struct Model {
    name: String,
    version: String,
    served: Served,
}

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    queued: HistogramVec,
    computed: HistogramVec,
}

impl Metrics {
    /// Each prediction's time in the queue and in compute, for `model`.
    fn observe_predictions(&self, model: &str, predictions: &[crate::infer::Prediction]) {
        for p in predictions {
            let labels = [model];
            self.queued
                .with_label_values(&labels)
                .observe(p.queued.as_secs_f64());
            self.computed
                .with_label_values(&labels)
                .observe(p.computed.as_secs_f64());
        }
    }

    fn new() -> Result<Self> {
        let e = |e: prometheus::Error| Error::Serving {
            details: "registering the metrics".into(),
            source: Some(crate::error::Cause::new(e)),
        };
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "wgnn_requests_total",
                "Requests by model, endpoint and outcome",
            ),
            &["model", "endpoint", "outcome"],
        )
        .map_err(e)?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "wgnn_request_duration_seconds",
                "Time from a request's arrival to its answer",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16).map_err(e)?),
            &["model", "endpoint"],
        )
        .map_err(e)?;
        let stage = |name: &str, help: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help)
                    .buckets(prometheus::exponential_buckets(0.0001, 2.0, 18).map_err(e)?),
                &["model"],
            )
            .map_err(e)
        };
        let queued = stage(
            "wgnn_queue_duration_seconds",
            "Classifiers: a sample's wait in the batcher before its replay",
        )?;
        let computed = stage(
            "wgnn_compute_duration_seconds",
            "Classifiers: the replay that answered a sample",
        )?;
        for m in [&latency, &queued, &computed] {
            registry.register(Box::new(m.clone())).map_err(e)?;
        }
        registry.register(Box::new(requests.clone())).map_err(e)?;
        Ok(Metrics {
            registry,
            requests,
            latency,
            queued,
            computed,
        })
    }
}

/// The models and the server's settings: what every handler reads.
pub struct ServerState {
    models: BTreeMap<String, Model>,
    options: ServerOptions,
    metrics: Metrics,
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState")
            .field("models", &self.models.keys().collect::<Vec<_>>())
            .field("options", &self.options)
            .finish()
    }
}

fn invalid(op: &'static str, details: String) -> Error {
    Error::InvalidArgument { op, details }
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
        invalid(
            "ModelRepository",
            format!("{} has no numeric version directory", dir.display()),
        )
    })
}

fn read_config(path: &Path) -> Result<ModelConfig> {
    if !path.exists() {
        return Ok(ModelConfig::default());
    }
    let bytes = crate::nn::io::read_capped(path, MAX_CONFIG_BYTES)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| invalid("ModelConfig", format!("{}: {e}", path.display())))
}

/// Whether a model file is a language model's (its metadata says `"format": "wgnn-gpt"`).
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
        return serve_language_model(&lm, vocabulary, file, config);
    }
    let model = contents.into_model(gpu)?;
    let session = Arc::new(InferenceSession::new(
        model,
        SessionOptions {
            max_batch: config.max_batch,
            precision: config.precision()?,
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
    })
}

/// A language model behind a generation engine, its vocabulary one character per token.
fn serve_language_model(
    lm: &LanguageModel,
    vocabulary: String,
    file: &Path,
    config: &ModelConfig,
) -> Result<Served> {
    let decoder = Decoder::new(
        lm,
        DecoderOptions {
            max_sequences: config.slots,
            precision: config.precision()?,
            ..Default::default()
        },
    )?;
    let vocabulary: Vec<char> = vocabulary.chars().collect();
    if vocabulary.len() != lm.config().vocab {
        return Err(Error::ModelFile {
            details: format!(
                "{}: {} vocabulary characters for {} token ids",
                file.display(),
                vocabulary.len(),
                lm.config().vocab
            ),
        });
    }
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
    })
}

impl ServerState {
    /// Loads every model of the repository at `dir` on `gpu` (checked, warmed), ready to serve.
    pub fn load(gpu: &Gpu, dir: &Path, options: ServerOptions) -> Result<Self> {
        if options.max_body_bytes == 0 || options.max_body_bytes > 1 << 30 {
            return Err(invalid(
                "ServerOptions",
                format!(
                    "max_body_bytes must be in 1..=2^30, got {}",
                    options.max_body_bytes
                ),
            ));
        }
        if options.request_timeout.is_zero() || options.request_timeout > Duration::from_secs(3600)
        {
            return Err(invalid(
                "ServerOptions",
                format!(
                    "request_timeout must be in (0, 1 h], got {:?}",
                    options.request_timeout
                ),
            ));
        }
        let io = |e: std::io::Error| Error::io(dir.display().to_string(), e);
        let mut models = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            if !entry.path().is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let (version, vdir) = latest_version(&entry.path())?;
            let config = read_config(&vdir.join("config.json"))?;
            let served = serve_file(gpu, &vdir.join("model.safetensors"), &config, &options)?;
            models.insert(
                name.clone(),
                Model {
                    name,
                    version,
                    served,
                },
            );
        }
        Ok(ServerState {
            models,
            options,
            metrics: Metrics::new()?,
        })
    }

    /// Stops every model's batcher and engine: requests they hold are answered or refused.
    pub fn shutdown(&self) {
        for m in self.models.values() {
            match &m.served {
                Served::Classifier { batcher, .. } => {
                    batcher.shutdown();
                }
                Served::Language { engine, .. } => engine.shutdown(),
            }
        }
    }
}

/// A refused request: its status and message, answered by [`error_response`].
#[derive(Debug)]
struct Reject(StatusCode, String);

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        error_response(self.0, self.1)
    }
}

/// An error answer in the protocol's form: `{"error": "..."}`.
fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    let mut r = (status, axum::Json(json!({ "error": message.into() }))).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// The status a library error answers with.
fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::InvalidArgument { .. }
        | Error::ShapeMismatch { .. }
        | Error::DtypeMismatch { .. }
        | Error::EmptyTensor { .. }
        | Error::DataLength { .. }
        | Error::LimitExceeded { .. } => StatusCode::BAD_REQUEST,
        Error::Overloaded { .. } | Error::ShutDown { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Error::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn from_error(e: &Error) -> Response {
    error_response(status_of(e), e.to_string())
}

type Shared = Arc<ServerState>;

/// The protocol's routes over `state`.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/generate", post(generate))
        .route("/v2/models/{name}/generate_stream", post(generate_stream))
        .route("/metrics", get(metrics))
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// Serves `state` on `listener` until `shutdown` completes: then stops accepting, lets the
/// requests in flight finish, and stops the models.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Shared,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    let s = state.clone();
    let _ = tokio::task::spawn_blocking(move || s.shutdown()).await;
    Ok(())
}

async fn server_metadata() -> Response {
    axum::Json(json!({
        "name": "wgnn",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["generate"],
    }))
    .into_response()
}

async fn live() -> StatusCode {
    StatusCode::OK
}

async fn ready(State(state): State<Shared>) -> StatusCode {
    if state.models.is_empty() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

fn find<'a>(state: &'a ServerState, name: &str) -> std::result::Result<&'a Model, Reject> {
    state
        .models
        .get(name)
        .ok_or_else(|| Reject(StatusCode::NOT_FOUND, format!("unknown model {name:?}")))
}

async fn model_ready(State(state): State<Shared>, UrlPath(name): UrlPath<String>) -> Response {
    match find(&state, &name) {
        Ok(_) => StatusCode::OK.into_response(),
        Err(r) => r.into_response(),
    }
}

fn dims(shape: &[usize]) -> Vec<i64> {
    std::iter::once(-1)
        .chain(shape.iter().map(|&d| d as i64))
        .collect()
}

async fn model_metadata(State(state): State<Shared>, UrlPath(name): UrlPath<String>) -> Response {
    let m = match find(&state, &name) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let (inputs, outputs) = match &m.served {
        Served::Classifier {
            input_shape,
            classes,
            ..
        } => (
            json!([{ "name": "input", "datatype": "FP32", "shape": dims(input_shape) }]),
            json!([
                { "name": "probabilities", "datatype": "FP32", "shape": [-1, classes] },
                { "name": "classes", "datatype": "INT64", "shape": [-1] },
            ]),
        ),
        Served::Language { .. } => (
            json!([{ "name": "text_input", "datatype": "BYTES", "shape": [1] }]),
            json!([{ "name": "text_output", "datatype": "BYTES", "shape": [1] }]),
        ),
    };
    axum::Json(json!({
        "name": m.name,
        "versions": [m.version],
        "platform": "wgnn",
        "inputs": inputs,
        "outputs": outputs,
    }))
    .into_response()
}

async fn metrics(State(state): State<Shared>) -> Response {
    use prometheus::Encoder;
    let mut text = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode(&state.metrics.registry.gather(), &mut text) {
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    // The models' own statistics, read now (their reads take no lock the workers hold long).
    let mut extra = String::new();
    for m in state.models.values() {
        let n = &m.name;
        match &m.served {
            Served::Classifier { batcher, .. } => {
                let s = batcher.stats();
                extra.push_str(&format!(
                    "wgnn_batcher_queue_depth{{model=\"{n}\"}} {}\n",
                    batcher.queue_depth()
                ));
                extra.push_str(&format!(
                    "wgnn_batcher_requests_total{{model=\"{n}\"}} {}\n\
                     wgnn_batcher_refused_total{{model=\"{n}\",reason=\"queue_full\"}} {}\n\
                     wgnn_batcher_timed_out_total{{model=\"{n}\"}} {}\n\
                     wgnn_batcher_latency_seconds{{model=\"{n}\",quantile=\"0.5\"}} {}\n\
                     wgnn_batcher_latency_seconds{{model=\"{n}\",quantile=\"0.99\"}} {}\n",
                    s.requests,
                    s.refused_full,
                    s.timed_out,
                    s.latency_ms.0 / 1e3,
                    s.latency_ms.2 / 1e3,
                ));
                for (size, count) in &s.batch_sizes {
                    extra.push_str(&format!(
                        "wgnn_batches_total{{model=\"{n}\",size=\"{size}\"}} {count}\n"
                    ));
                }
            }
            Served::Language { engine, .. } => {
                let s = engine.stats();
                extra.push_str(&format!(
                    "wgnn_tokens_generated_total{{model=\"{n}\"}} {}\n\
                     wgnn_generation_queue_depth{{model=\"{n}\"}} {}\n\
                     wgnn_generation_running{{model=\"{n}\"}} {}\n\
                     wgnn_generation_occupancy{{model=\"{n}\"}} {}\n",
                    s.tokens, s.queue_depth, s.running, s.occupancy
                ));
                for (metric, l) in [
                    ("time_to_first_token", s.time_to_first_token),
                    ("inter_token_latency", s.inter_token),
                ] {
                    for (q, d) in [("0.5", l.p50), ("0.95", l.p95), ("0.99", l.p99)] {
                        extra.push_str(&format!(
                            "wgnn_{metric}_seconds{{model=\"{n}\",quantile=\"{q}\"}} {}\n",
                            d.as_secs_f64()
                        ));
                    }
                }
            }
        }
    }
    let mut body = String::from_utf8_lossy(&text).into_owned();
    body.push_str(&extra);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// The body, read up to the server's limit (413 past it).
async fn read_body(state: &ServerState, body: Body) -> std::result::Result<Bytes, Reject> {
    axum::body::to_bytes(body, state.options.max_body_bytes)
        .await
        .map_err(|_| {
            Reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is past the server's limit of {} bytes",
                    state.options.max_body_bytes
                ),
            )
        })
}

fn parse_json(bytes: &[u8]) -> std::result::Result<Value, Reject> {
    serde_json::from_slice(bytes)
        .map_err(|e| Reject(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))
}

fn bad(message: impl Into<String>) -> Reject {
    Reject(StatusCode::BAD_REQUEST, message.into())
}

/// Flattens `data` (flat or nested arrays of numbers) into f32s.
fn flatten(data: &Value, out: &mut Vec<f32>, limit: usize) -> std::result::Result<(), Reject> {
    match data {
        Value::Array(items) => {
            for v in items {
                flatten(v, out, limit)?;
            }
            Ok(())
        }
        Value::Number(n) => {
            if out.len() >= limit {
                return Err(bad("more data than the shape holds"));
            }
            let v = n
                .as_f64()
                .ok_or_else(|| bad("a number that is not finite"))? as f32;
            if !v.is_finite() {
                return Err(bad("a value past f32's range"));
            }
            out.push(v);
            Ok(())
        }
        _ => Err(bad("FP32 data must be numbers")),
    }
}

/// The outcome label and the answer of a handler, recorded in the metrics.
fn record(state: &ServerState, model: &str, endpoint: &str, started: Instant, r: &Response) {
    // A name that is no model's is not a label of its own (nor a way to grow the metrics).
    let model = if state.models.contains_key(model) {
        model
    } else {
        "unknown"
    };
    let outcome = if r.status().is_success() {
        "ok"
    } else if r.status() == StatusCode::SERVICE_UNAVAILABLE {
        "overloaded"
    } else if r.status().is_client_error() {
        "bad_request"
    } else {
        "error"
    };
    state
        .metrics
        .requests
        .with_label_values(&[model, endpoint, outcome])
        .inc();
    state
        .metrics
        .latency
        .with_label_values(&[model, endpoint])
        .observe(started.elapsed().as_secs_f64());
}

async fn infer(
    State(state): State<Shared>,
    UrlPath(name): UrlPath<String>,
    body: Body,
) -> Response {
    let started = Instant::now();
    let r = infer_inner(&state, &name, body).await;
    record(&state, &name, "infer", started, &r);
    r
}

/// The one input of an infer request: its sample count and values (whole samples of
/// `input_shape`, FP32).
fn infer_input(
    request: &Value,
    input_shape: &[usize],
) -> std::result::Result<(usize, Vec<f32>), Reject> {
    let Some(inputs) = request.get("inputs").and_then(Value::as_array) else {
        return Err(bad("the request needs an \"inputs\" array"));
    };
    let [input] = inputs.as_slice() else {
        return Err(bad(format!(
            "the model takes 1 input, got {}",
            inputs.len()
        )));
    };
    if input.get("datatype").and_then(Value::as_str) != Some("FP32") {
        return Err(bad("the input's datatype must be \"FP32\""));
    }
    let shape: Option<Vec<usize>> = input
        .get("shape")
        .and_then(Value::as_array)
        .and_then(|s| s.iter().map(|d| d.as_u64().map(|d| d as usize)).collect());
    let Some(shape) = shape else {
        return Err(bad("the input's shape must be an array of sizes"));
    };
    let per_sample: usize = input_shape.iter().product();
    let samples = match shape.split_first() {
        Some((&n, rest)) if rest == input_shape && n >= 1 => n,
        _ => {
            return Err(bad(format!(
                "the input's shape must be [n, {}], got {shape:?}",
                input_shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    };
    if samples > MAX_INFER_SAMPLES {
        return Err(bad(format!(
            "at most {MAX_INFER_SAMPLES} samples per request, got {samples}"
        )));
    }
    let mut data = Vec::with_capacity(samples * per_sample);
    let Some(raw) = input.get("data") else {
        return Err(bad("the input has no \"data\""));
    };
    flatten(raw, &mut data, samples * per_sample)?;
    if data.len() != samples * per_sample {
        return Err(bad(format!(
            "the shape {shape:?} holds {} values, the data has {}",
            samples * per_sample,
            data.len()
        )));
    }
    Ok((samples, data))
}

/// The requested outputs (`probabilities`, `classes`) of `samples` predictions, in the protocol's
/// JSON form.
fn infer_outputs(
    wanted: &[String],
    predictions: &[crate::infer::Prediction],
    samples: usize,
    classes: usize,
) -> Vec<Value> {
    let mut outputs = Vec::new();
    for w in wanted {
        if w == "probabilities" {
            let data: Vec<f32> = predictions.iter().flat_map(|p| p.outputs.clone()).collect();
            outputs.push(json!({
                "name": "probabilities", "datatype": "FP32",
                "shape": [samples, classes], "data": data,
            }));
        } else {
            let data: Vec<i64> = predictions
                .iter()
                .map(|p| p.class.map_or(-1, i64::from))
                .collect();
            outputs.push(json!({
                "name": "classes", "datatype": "INT64", "shape": [samples], "data": data,
            }));
        }
    }
    outputs
}

async fn infer_inner(state: &Shared, name: &str, body: Body) -> Response {
    let m = match find(state, name) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let Served::Classifier {
        input_shape,
        classes,
        ..
    } = &m.served
    else {
        return bad(format!(
            "{name} is a language model: use /v2/models/{name}/generate"
        ))
        .into_response();
    };
    let bytes = match read_body(state, body).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let request = match parse_json(&bytes) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let (samples, data) = match infer_input(&request, input_shape) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let per_sample: usize = input_shape.iter().product();
    let wanted: Vec<String> = match request.get("outputs").and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .filter_map(|o| o.get("name").and_then(Value::as_str).map(String::from))
            .collect(),
        None => vec!["probabilities".into(), "classes".into()],
    };
    if let Some(w) = wanted
        .iter()
        .find(|w| *w != "probabilities" && *w != "classes")
    {
        return bad(format!("unknown output {w:?}")).into_response();
    }
    // Each sample through the batcher, so they batch with every other request.
    let state2 = state.clone();
    let model = name.to_string();
    let work = tokio::task::spawn_blocking(move || {
        let Some(Model {
            served: Served::Classifier { batcher, .. },
            ..
        }) = state2.models.get(&model)
        else {
            return Err(Error::ShutDown { op: "infer" });
        };
        data.chunks(per_sample)
            .map(|x| batcher.predict(x))
            .collect::<Result<Vec<_>>>()
    });
    let predictions = match tokio::time::timeout(state.options.request_timeout, work).await {
        Err(_) => {
            return error_response(StatusCode::GATEWAY_TIMEOUT, "the request timed out");
        }
        Ok(Err(e)) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Ok(Ok(Err(e))) => return from_error(&e),
        Ok(Ok(Ok(p))) => p,
    };
    state.metrics.observe_predictions(name, &predictions);
    let outputs = infer_outputs(&wanted, &predictions, samples, *classes);
    let mut answer = json!({
        "model_name": m.name,
        "model_version": m.version,
        "outputs": outputs,
    });
    if let Some(id) = request.get("id") {
        answer["id"] = id.clone();
    }
    axum::Json(answer).into_response()
}

/// A generate request (Triton's generate extension): the text and its parameters.
fn generation_request(m: &Model, bytes: &[u8]) -> std::result::Result<GenerationRequest, Reject> {
    let Served::Language {
        vocabulary,
        context,
        ..
    } = &m.served
    else {
        return Err(bad(format!(
            "{} is not a language model: use /v2/models/{}/infer",
            m.name, m.name
        )));
    };
    let request = parse_json(bytes)?;
    let Some(text) = request.get("text_input").and_then(Value::as_str) else {
        return Err(bad("the request needs a \"text_input\" string"));
    };
    let mut prompt = Vec::with_capacity(text.len());
    for c in text.chars() {
        match vocabulary.iter().position(|&v| v == c) {
            Some(i) => prompt.push(i as u32),
            None => return Err(bad(format!("{c:?} is not in the model's vocabulary"))),
        }
    }
    let p = request.get("parameters").cloned().unwrap_or(json!({}));
    let number = |key: &str| p.get(key).and_then(Value::as_f64);
    let max_tokens = match number("max_tokens") {
        Some(v) if v >= 1.0 && v.fract() == 0.0 => v as usize,
        Some(v) => {
            return Err(bad(format!(
                "max_tokens must be a positive integer, got {v}"
            )))
        }
        None => 32.min(*context),
    };
    let mut sampling = SamplingSettings::greedy();
    if let Some(t) = number("temperature") {
        sampling.temperature = t as f32;
    }
    if let Some(k) = number("top_k") {
        if k < 0.0 || k.fract() != 0.0 || k > f64::from(u32::MAX) {
            return Err(bad(format!("top_k must be a count, got {k}")));
        }
        sampling.top_k = k as u32;
    }
    if let Some(q) = number("top_p") {
        sampling.top_p = q as f32;
    }
    if let Some(s) = number("seed") {
        if s < 0.0 || s.fract() != 0.0 || s > u64::MAX as f64 {
            return Err(bad(format!("seed must be a non-negative integer, got {s}")));
        }
        sampling.seed = s as u64;
    }
    let stop = match p.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => {
            let strings: Option<Vec<String>> =
                list.iter().map(|v| v.as_str().map(String::from)).collect();
            strings.ok_or_else(|| bad("stop must be a string or an array of strings"))?
        }
        Some(_) => return Err(bad("stop must be a string or an array of strings")),
    };
    Ok(GenerationRequest {
        prompt,
        max_tokens,
        sampling,
        stop,
        timeout: None,
    })
}

fn decode(m: &Model, tokens: &[u32]) -> String {
    match &m.served {
        Served::Language { vocabulary, .. } => tokens
            .iter()
            .map(|&t| {
                vocabulary
                    .get(t as usize)
                    .copied()
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
        Served::Classifier { .. } => String::new(),
    }
}

fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::MaxTokens => "length",
        FinishReason::EndToken | FinishReason::StopString => "stop",
        FinishReason::ContextFull => "context",
    }
}

async fn generate(
    State(state): State<Shared>,
    UrlPath(name): UrlPath<String>,
    body: Body,
) -> Response {
    let started = Instant::now();
    let r = generate_inner(&state, &name, body).await;
    record(&state, &name, "generate", started, &r);
    r
}

async fn generate_inner(state: &Shared, name: &str, body: Body) -> Response {
    let m = match find(state, name) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let bytes = match read_body(state, body).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let mut request = match generation_request(m, &bytes) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    request.timeout = Some(state.options.request_timeout);
    let Served::Language { engine, .. } = &m.served else {
        return bad("not a language model").into_response();
    };
    let stream = match engine.submit(request) {
        Ok(s) => s,
        Err(e) => return from_error(&e),
    };
    let result = tokio::task::spawn_blocking(move || stream.wait()).await;
    match result {
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Ok(Err(e)) => from_error(&e),
        Ok(Ok((tokens, reason))) => axum::Json(json!({
            "model_name": m.name,
            "model_version": m.version,
            "text_output": decode(m, &tokens),
            "finish_reason": finish_reason(reason),
        }))
        .into_response(),
    }
}

async fn generate_stream(
    State(state): State<Shared>,
    UrlPath(name): UrlPath<String>,
    body: Body,
) -> Response {
    let started = Instant::now();
    let m = match find(&state, &name) {
        Ok(m) => m,
        Err(r) => {
            let r = r.into_response();
            record(&state, &name, "generate_stream", started, &r);
            return r;
        }
    };
    let bytes = match read_body(&state, body).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let mut request = match generation_request(m, &bytes) {
        Ok(r) => r,
        Err(r) => {
            let r = r.into_response();
            record(&state, &name, "generate_stream", started, &r);
            return r;
        }
    };
    request.timeout = Some(state.options.request_timeout);
    let Served::Language { engine, .. } = &m.served else {
        return bad("not a language model").into_response();
    };
    let mut generation = match engine.submit(request) {
        Ok(s) => s,
        Err(e) => {
            let r = from_error(&e);
            record(&state, &name, "generate_stream", started, &r);
            return r;
        }
    };
    let ok = StatusCode::OK.into_response();
    record(&state, &name, "generate_stream", started, &ok);
    // Events from the engine's stream, forwarded by a blocking task; the client going away
    // drops the receiver, which ends the task and cancels the generation.
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(64);
    let (model_name, version) = (m.name.clone(), m.version.clone());
    let state2 = state.clone();
    tokio::task::spawn_blocking(move || {
        let Some(m) = state2.models.get(&model_name) else {
            return;
        };
        loop {
            let Some(event) = generation.next_event(Duration::from_secs(3600)) else {
                return;
            };
            let (data, last) = match event {
                Event::Token(t) => (
                    json!({
                        "model_name": model_name, "model_version": version,
                        "text_output": decode(m, &[t]),
                    }),
                    false,
                ),
                Event::Finished(r) => (
                    json!({
                        "model_name": model_name, "model_version": version,
                        "text_output": "", "finish_reason": finish_reason(r),
                    }),
                    true,
                ),
                Event::Failed(e) => (json!({ "error": e.to_string() }), true),
            };
            if tx
                .blocking_send(SseEvent::default().data(data.to_string()))
                .is_err()
            {
                generation.cancel();
                return;
            }
            if last {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let stream = tokio_stream::StreamExt::map(stream, Ok::<_, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

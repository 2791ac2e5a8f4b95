//! The protocol's endpoints: health, server and model metadata, Triton's model configuration,
//! `infer` (JSON or binary tensors), metrics; the answers to refused requests and the body reader
//! the endpoints share.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::connection::ConnectionHandle;
use super::protocol::{self, InferRequest, InferResponse, OutputTensor, TensorData};
use super::repository::{Served, ServedModel};
use super::state::ServerState;
use super::MAX_INFER_SAMPLES;
use crate::error::Error;
use crate::infer::Prediction;

pub(crate) type Shared = Arc<ServerState>;

/// A refused request: its status and message (which names the model, where there is one).
#[derive(Debug)]
pub(crate) struct Reject(pub StatusCode, pub String);

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        error_response(self.0, self.1)
    }
}

/// An error answer in the protocol's form: `{"error": "..."}`.
pub(crate) fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    let mut r = (status, axum::Json(json!({ "error": message.into() }))).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// A 400 with `message`.
pub(crate) fn bad(message: impl Into<String>) -> Reject {
    Reject(StatusCode::BAD_REQUEST, message.into())
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

/// What a client is told of a library error: what went wrong, without the library's call names.
fn client_message(e: &Error) -> String {
    match e {
        Error::InvalidArgument { details, .. }
        | Error::ShapeMismatch { details, .. }
        | Error::DtypeMismatch { details, .. } => details.clone(),
        Error::Timeout { after, .. } => format!("no answer within the deadline of {after:?}"),
        Error::ShutDown { .. } => "the server is shutting down".into(),
        Error::Cancelled { .. } => "the request was cancelled".into(),
        other => other.to_string(),
    }
}

/// The answer to a library error met serving `model`.
pub(crate) fn from_error(model: &str, e: &Error) -> Response {
    error_response(
        status_of(e),
        format!("model {model:?}: {}", client_message(e)),
    )
}

/// The served model a route names (`{name}`, and `{version}` where the route has one).
pub(crate) fn find<'a>(
    state: &'a ServerState,
    path: &HashMap<String, String>,
) -> Result<&'a ServedModel, Reject> {
    let name = path.get("name").map(String::as_str).unwrap_or_default();
    let m = state
        .models
        .get(name)
        .ok_or_else(|| Reject(StatusCode::NOT_FOUND, format!("unknown model {name:?}")))?;
    match path.get("version") {
        Some(v) if *v != m.version => Err(Reject(
            StatusCode::NOT_FOUND,
            format!(
                "model {name:?} has no version {v:?} (it serves version {})",
                m.version
            ),
        )),
        _ => Ok(m),
    }
}

pub(crate) async fn server_metadata() -> Response {
    axum::Json(json!({
        "name": "wgnn",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "generate", "model_configuration"],
    }))
    .into_response()
}

pub(crate) async fn live() -> StatusCode {
    StatusCode::OK
}

pub(crate) async fn ready(State(state): State<Shared>) -> StatusCode {
    if state.models.is_empty() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

pub(crate) async fn model_ready(
    State(state): State<Shared>,
    UrlPath(path): UrlPath<HashMap<String, String>>,
) -> Response {
    match find(&state, &path) {
        Ok(_) => StatusCode::OK.into_response(),
        Err(r) => r.into_response(),
    }
}

/// Every dimension of `shape` after a variable batch dimension.
fn dims(shape: &[usize]) -> Vec<i64> {
    std::iter::once(-1)
        .chain(shape.iter().map(|&d| d as i64))
        .collect()
}

pub(crate) async fn model_metadata(
    State(state): State<Shared>,
    UrlPath(path): UrlPath<HashMap<String, String>>,
) -> Response {
    let m = match find(&state, &path) {
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

/// The model's configuration in the shape of Triton's `model_config` (as far as it applies).
pub(crate) async fn model_config(
    State(state): State<Shared>,
    UrlPath(path): UrlPath<HashMap<String, String>>,
) -> Response {
    let m = match find(&state, &path) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let c = &m.config;
    let precision = serde_json::to_value(c.precision).unwrap_or_default();
    let mut config = match &m.served {
        Served::Classifier {
            input_shape,
            classes,
            max_batch,
            ..
        } => json!({
            "max_batch_size": max_batch,
            "input": [{ "name": "input", "data_type": "TYPE_FP32", "dims": input_shape }],
            "output": [
                { "name": "probabilities", "data_type": "TYPE_FP32", "dims": [classes] },
                { "name": "classes", "data_type": "TYPE_INT64", "dims": [1],
                  "reshape": { "shape": [] } },
            ],
            "dynamic_batching": {
                "max_queue_delay_microseconds": c.max_wait_ms.saturating_mul(1000),
                "default_queue_policy": { "max_queue_size": c.queue_capacity },
            },
        }),
        Served::Language { context, slots, .. } => json!({
            "max_batch_size": 0,
            "model_transaction_policy": { "decoupled": true },
            "input": [{ "name": "text_input", "data_type": "TYPE_STRING", "dims": [1] }],
            "output": [{ "name": "text_output", "data_type": "TYPE_STRING", "dims": [1] }],
            "parameters": {
                "context": { "string_value": context.to_string() },
                "slots": { "string_value": slots.to_string() },
                "queue_capacity": { "string_value": c.queue_capacity.to_string() },
            },
        }),
    };
    config["name"] = json!(m.name);
    config["platform"] = json!("wgnn");
    config["backend"] = json!("wgnn");
    config["version_policy"] = json!({ "specific": { "versions": [m.version] } });
    config["instance_group"] = json!([{ "kind": "KIND_GPU", "count": 1 }]);
    if config.get("parameters").is_none() {
        config["parameters"] = json!({});
    }
    config["parameters"]["precision"] = json!({ "string_value": precision });
    axum::Json(config).into_response()
}

pub(crate) async fn metrics(State(state): State<Shared>) -> Response {
    match state.metrics.render(&state.models) {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The outcome label of an answer.
pub(crate) fn outcome(status: StatusCode) -> &'static str {
    if status.is_success() {
        "ok"
    } else if status == StatusCode::SERVICE_UNAVAILABLE {
        "overloaded"
    } else if status.is_client_error() {
        "bad_request"
    } else {
        "error"
    }
}

/// The metrics' name for `model`: a name that is no model's is not a label of its own (nor a way
/// to grow the metrics).
pub(crate) fn model_label<'a>(state: &ServerState, path: &'a HashMap<String, String>) -> &'a str {
    match path.get("name") {
        Some(n) if state.models.contains_key(n) => n,
        _ => "unknown",
    }
}

/// The body of `request`, read within the server's body deadline and size limit. A declared
/// length past the limit is refused before the body is asked for (no `100 Continue`), and the
/// connection then lingers to let a client that sends anyway finish and read the 413. A gzip or
/// deflate `Content-Encoding` is undone within the same limit.
pub(crate) async fn read_body(state: &ServerState, request: Request) -> Result<Vec<u8>, Reject> {
    let limit = state.options.max_body_bytes;
    let (parts, body) = request.into_parts();
    let connection = parts.extensions.get::<ConnectionHandle>().cloned();
    let too_large = || {
        if let Some(c) = &connection {
            c.linger_before_close();
        }
        Reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is past the server's limit of {limit} bytes"),
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = axum::body::to_bytes(body, limit);
    let bytes = match tokio::time::timeout(state.options.body_timeout, read).await {
        Err(_) => {
            return Err(Reject(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within the body deadline of {:?}",
                    state.options.body_timeout
                ),
            ))
        }
        Ok(Err(e)) if is_length_limit(&e) => return Err(too_large()),
        Ok(Err(e)) => return Err(bad(format!("reading the body: {e}"))),
        Ok(Ok(b)) => b,
    };
    decode_content(&parts.headers, bytes.to_vec(), limit)
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// `bytes` with its `Content-Encoding` (identity, gzip or deflate) undone, at most `limit` bytes.
fn decode_content(headers: &HeaderMap, bytes: Vec<u8>, limit: usize) -> Result<Vec<u8>, Reject> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    let mut out = Vec::new();
    let read = match encoding.as_deref() {
        None | Some("identity") => return Ok(bytes),
        Some("gzip") => flate2::read::GzDecoder::new(bytes.as_slice())
            .take(limit as u64 + 1)
            .read_to_end(&mut out),
        Some("deflate") => flate2::read::ZlibDecoder::new(bytes.as_slice())
            .take(limit as u64 + 1)
            .read_to_end(&mut out),
        Some(other) => {
            return Err(Reject(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding {other:?}: gzip, deflate or none are taken"),
            ))
        }
    };
    read.map_err(|e| {
        bad(format!(
            "the body's Content-Encoding could not be undone: {e}"
        ))
    })?;
    if out.len() > limit {
        return Err(Reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the decoded body is past the server's limit of {limit} bytes"),
        ));
    }
    Ok(out)
}

pub(crate) async fn infer(
    State(state): State<Shared>,
    UrlPath(path): UrlPath<HashMap<String, String>>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let r = match infer_inner(&state, &path, request).await {
        Ok(r) => r,
        Err(r) => r.into_response(),
    };
    state.metrics.observe_request(
        model_label(&state, &path),
        "infer",
        outcome(r.status()),
        started.elapsed().as_secs_f64(),
    );
    r
}

/// A checked infer request for a classifier: its samples and the outputs wanted.
struct Checked {
    samples: usize,
    values: Vec<f32>,
    /// (name, binary) of each output wanted, in the request's order.
    outputs: Vec<(&'static str, bool)>,
    timeout: Duration,
    id: Option<String>,
}

/// `body` (with its binary part after `header_length` bytes of JSON) checked against a classifier
/// of `input_shape`.
fn check_infer(
    state: &ServerState,
    body: &[u8],
    header_length: Option<&str>,
    input_shape: &[usize],
) -> Result<Checked, String> {
    let (json_part, mut binary) = protocol::split_body(body, header_length)?;
    let request: InferRequest = protocol::parse(json_part)?;
    let [input] = request.inputs.as_slice() else {
        return Err(format!(
            "the model takes 1 input, the request has {}",
            request.inputs.len()
        ));
    };
    if input.name != "input" {
        return Err(format!(
            "the model's input is named \"input\", not {:?}",
            input.name
        ));
    }
    if input.datatype != "FP32" {
        return Err(format!(
            "the input's datatype must be \"FP32\", got {:?}",
            input.datatype
        ));
    }
    let want = || {
        let dims: Vec<String> = input_shape.iter().map(|d| d.to_string()).collect();
        format!("[n, {}]", dims.join(", "))
    };
    let samples = match input.shape.split_first() {
        Some((&n, rest))
            if rest.len() == input_shape.len()
                && rest.iter().zip(input_shape).all(|(&a, &b)| a == b as u64)
                && n >= 1 =>
        {
            n
        }
        _ => {
            return Err(format!(
                "the input's shape must be {}, got {:?}",
                want(),
                input.shape
            ))
        }
    };
    if samples > MAX_INFER_SAMPLES as u64 {
        return Err(format!(
            "at most {MAX_INFER_SAMPLES} samples per request, got {samples}"
        ));
    }
    let samples = samples as usize;
    let per_sample: usize = input_shape.iter().product();
    let values = protocol::fp32_values(input, &mut binary, samples * per_sample)
        .map_err(|e| format!("input \"input\": {e}"))?;
    if !binary.is_empty() {
        return Err(format!(
            "{} bytes of binary data belong to no input",
            binary.len()
        ));
    }
    let default_binary = request.parameters.binary_data_output;
    let outputs = match &request.outputs {
        None => vec![
            ("probabilities", default_binary),
            ("classes", default_binary),
        ],
        Some(list) => {
            let mut outputs = Vec::new();
            for o in list {
                let name = match o.name.as_str() {
                    "probabilities" => "probabilities",
                    "classes" => "classes",
                    other => {
                        return Err(format!(
                        "unknown output {other:?}: the model has \"probabilities\" and \"classes\""
                    ))
                    }
                };
                if outputs.iter().any(|(n, _)| *n == name) {
                    return Err(format!("output {name:?} is asked for twice"));
                }
                outputs.push((name, o.parameters.binary_data.unwrap_or(default_binary)));
            }
            outputs
        }
    };
    let server = state.options.request_timeout;
    let timeout = match request.parameters.timeout {
        Some(0) => return Err("parameters.timeout must be at least 1 microsecond".into()),
        Some(us) => Duration::from_micros(us).min(server),
        None => server,
    };
    Ok(Checked {
        samples,
        values,
        outputs,
        timeout,
        id: request.id,
    })
}

/// The answer to a checked request: JSON, or JSON then binary tensor data.
fn infer_response(
    m: &ServedModel,
    checked: &Checked,
    predictions: &[Prediction],
    classes: usize,
) -> Response {
    let mut binary = Vec::new();
    let outputs = checked
        .outputs
        .iter()
        .map(|&(name, as_binary)| {
            let (datatype, shape, data) = if name == "probabilities" {
                let data: Vec<f32> = predictions
                    .iter()
                    .flat_map(|p| p.outputs.iter().copied())
                    .collect();
                (
                    "FP32",
                    vec![checked.samples, classes],
                    TensorData::Fp32(data),
                )
            } else {
                let data: Vec<i64> = predictions
                    .iter()
                    .map(|p| p.class.map_or(-1, i64::from))
                    .collect();
                ("INT64", vec![checked.samples], TensorData::Int64(data))
            };
            let (parameters, data) = if as_binary {
                let bytes = data.to_le_bytes();
                let size = bytes.len();
                binary.extend_from_slice(&bytes);
                (
                    Some(protocol::BinarySize {
                        binary_data_size: size,
                    }),
                    None,
                )
            } else {
                (None, Some(data))
            };
            OutputTensor {
                name,
                datatype,
                shape,
                parameters,
                data,
            }
        })
        .collect();
    let answer = InferResponse {
        model_name: m.name.clone(),
        model_version: m.version.clone(),
        id: checked.id.clone(),
        outputs,
    };
    if binary.is_empty() {
        return axum::Json(answer).into_response();
    }
    let mut body = match serde_json::to_vec(&answer) {
        Ok(b) => b,
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let json_length = body.len();
    body.extend_from_slice(&binary);
    let mut r = Response::new(Body::from(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(protocol::HEADER_LENGTH, HeaderValue::from(json_length));
    r
}

async fn infer_inner(
    state: &Shared,
    path: &HashMap<String, String>,
    request: Request,
) -> Result<Response, Reject> {
    let m = find(state, path)?;
    let name = &m.name;
    let Served::Classifier {
        input_shape,
        classes,
        ..
    } = &m.served
    else {
        return Err(bad(format!(
            "model {name:?} is a language model: use /v2/models/{name}/generate"
        )));
    };
    let header_length = request
        .headers()
        .get(protocol::HEADER_LENGTH)
        .map(|v| v.to_str().unwrap_or("?").to_string());
    let body = read_body(state, request)
        .await
        .map_err(|Reject(s, e)| Reject(s, format!("model {name:?}: {e}")))?;
    let checked = check_infer(state, &body, header_length.as_deref(), input_shape)
        .map_err(|e| bad(format!("model {name:?}: {e}")))?;
    drop(body);
    // The request's samples enter the batcher as one submission: it batches with other
    // requests, and is answered whole or refused whole.
    let state2 = state.clone();
    let (model, values, timeout) = (name.clone(), checked.values.clone(), checked.timeout);
    let work = tokio::task::spawn_blocking(move || match state2.models.get(&model) {
        Some(ServedModel {
            served: Served::Classifier { batcher, .. },
            ..
        }) => batcher.predict_rows_within(&values, timeout),
        _ => Err(Error::ShutDown { op: "infer" }),
    });
    let predictions = match tokio::time::timeout(timeout + Duration::from_secs(1), work).await {
        Err(_) => {
            return Err(Reject(
                StatusCode::GATEWAY_TIMEOUT,
                format!("model {name:?}: no answer within the deadline of {timeout:?}"),
            ))
        }
        Ok(Err(e)) => {
            return Err(Reject(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("model {name:?}: {e}"),
            ))
        }
        Ok(Ok(Err(e))) => return Ok(from_error(name, &e)),
        Ok(Ok(Ok(p))) => p,
    };
    state.metrics.observe_predictions(name, &predictions);
    Ok(infer_response(m, &checked, &predictions, *classes))
}

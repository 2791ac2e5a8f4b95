//! wgnn-serve's protocol over real HTTP on an ephemeral loopback port: health, metadata, Triton's
//! model configuration, infer with JSON and binary tensors (answers equal to the in-process
//! session's; a request is one batcher submission), generate and generate_stream (text equal to
//! the in-process engine's; unseeded sampling reports its seed), typed requests refused by field,
//! metrics (typed, current), every bad input's 4xx with a JSON error body, an overload's 503 with
//! Retry-After, a deadline on every read, a 413 a client can read, and shutdown: a request in
//! flight, the listen backlog, and 20 SIGTERMs of the `wgnn-serve` binary under load. Needs
//! `--features serve`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use wgnn::generate::{Decoder, DecoderOptions, Engine, EngineOptions, GenerationRequest};
use wgnn::infer::{InferenceSession, SessionOptions};
use wgnn::nn::{GptConfig, Init, LanguageModel, LayerSpec, Sequential};
use wgnn::serve::{ServerOptions, ServerState};
use wgnn::Activation;

/// One server at a time in this file (each holds models and a worker per model).
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

const VOCABULARY: &str = "abcdefghijklmnopqrstuvwxyz .,";

fn gpt() -> GptConfig {
    GptConfig {
        vocab: VOCABULARY.len(),
        context: 32,
        dim: 32,
        heads: 2,
        layers: 1,
        activation: Activation::Gelu,
        dropout: 0.0,
    }
}

/// A repository with a classifier ("digits", version 3 beside an older 1) and a language model
/// ("shakespeare", one slot and a queue of one: easy to overload).
fn repository(dir: &Path) {
    let gpu = gpu();
    let specs = vec![
        LayerSpec::Linear {
            inputs: 12,
            outputs: 16,
        },
        LayerSpec::Activation {
            function: Activation::Relu,
        },
        LayerSpec::Linear {
            inputs: 16,
            outputs: 5,
        },
    ];
    let mlp = Sequential::new(&gpu, &[12], specs, Init::KaimingUniform { seed: 3 }).unwrap();
    for v in ["1", "3"] {
        std::fs::create_dir_all(dir.join("digits").join(v)).unwrap();
        mlp.save(dir.join("digits").join(v).join("model.safetensors"))
            .unwrap();
    }
    std::fs::write(
        dir.join("digits/3/config.json"),
        r#"{"max_batch": 8, "max_wait_ms": 1}"#,
    )
    .unwrap();
    let lm = LanguageModel::new(&gpu, gpt(), 5).unwrap();
    let lm_dir = dir.join("shakespeare").join("1");
    std::fs::create_dir_all(&lm_dir).unwrap();
    lm.save(lm_dir.join("model.safetensors"), VOCABULARY)
        .unwrap();
    std::fs::write(
        lm_dir.join("config.json"),
        r#"{"slots": 1, "queue_capacity": 1}"#,
    )
    .unwrap();
}

struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: TempDir,
}

impl Server {
    fn start(options: ServerOptions) -> Self {
        let dir = TempDir::new();
        repository(dir.path());
        let state = Arc::new(ServerState::load(&gpu(), dir.path(), options).unwrap());
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime
                .block_on(wgnn::serve::serve(listener, state, async {
                    let _ = stopped.await;
                }))
                .unwrap();
        });
        Server {
            addr,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Stops accepting and waits for the requests in flight and the models to finish.
    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("wgnn-serve-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An HTTP/1.1 exchange: (status, headers lower-cased, body).
fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, head, raw[split + 4..].to_vec())
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

fn post(addr: SocketAddr, path: &str, v: &Value) -> (u16, String, Value) {
    let (status, head, body) = http(addr, "POST", path, v.to_string().as_bytes());
    (status, head, json_of(&body))
}

fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, _, body) = http(addr, "GET", path, b"");
    (status, json_of(&body))
}

#[test]
fn health_metadata_and_infer_match_the_in_process_answer() {
    let _one = exclusive();
    let server = Server::start(ServerOptions::default());
    let a = server.addr;
    assert_eq!(http(a, "GET", "/v2/health/live", b"").0, 200);
    assert_eq!(http(a, "GET", "/v2/health/ready", b"").0, 200);
    assert_eq!(http(a, "GET", "/v2/models/digits/ready", b"").0, 200);
    let (status, meta) = get_json(a, "/v2");
    assert_eq!((status, meta["name"].as_str()), (200, Some("wgnn")));
    let (status, meta) = get_json(a, "/v2/models/digits");
    assert_eq!(status, 200);
    assert_eq!(meta["versions"], json!(["3"]));
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, 12]));
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 5]));
    let (status, meta) = get_json(a, "/v2/models/shakespeare");
    assert_eq!(
        (status, &meta["inputs"][0]["datatype"]),
        (200, &json!("BYTES"))
    );
    // Three samples against the same model in process.
    let (mut rng, seed) = rng();
    let x = random(&mut rng, 3 * 12);
    let request = json!({
        "id": "r1",
        "inputs": [{ "name": "input", "shape": [3, 12], "datatype": "FP32", "data": x }],
    });
    let (status, _, answer) = post(a, "/v2/models/digits/infer", &request);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["id"], json!("r1"));
    assert_eq!(answer["model_version"], json!("3"));
    let local = {
        let specs_model = Sequential::load(
            &gpu(),
            server._dir.path().join("digits/3/model.safetensors"),
        )
        .unwrap();
        InferenceSession::new(specs_model, SessionOptions::default())
            .unwrap()
            .predict(&x)
            .unwrap()
    };
    let probabilities: Vec<f32> = answer["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_close(
        &probabilities,
        &local.outputs,
        1e-5,
        &format!("seed {seed}"),
    );
    let classes: Vec<u32> = answer["outputs"][1]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(classes, local.classes);
    // Nested data and one output asked for.
    let nested: Vec<Vec<f32>> = x.chunks(12).map(<[f32]>::to_vec).collect();
    let request = json!({
        "inputs": [{ "name": "input", "shape": [3, 12], "datatype": "FP32", "data": nested }],
        "outputs": [{ "name": "classes" }],
    });
    let (status, _, answer) = post(a, "/v2/models/digits/infer", &request);
    assert_eq!(
        (status, answer["outputs"].as_array().unwrap().len()),
        (200, 1)
    );
    // Two requests of three samples, each one submission timed in the queue and its replay.
    let (_, _, body) = http(a, "GET", "/metrics", b"");
    let metrics = String::from_utf8_lossy(&body);
    for line in [
        r#"wgnn_queue_duration_seconds_count{model="digits"} 2"#,
        r#"wgnn_compute_duration_seconds_count{model="digits"} 2"#,
        r#"wgnn_infer_samples_total{model="digits"} 6"#,
        r#"wgnn_requests_total{endpoint="infer",model="digits",outcome="ok"} 2"#,
        r#"wgnn_batcher_queue_depth{model="digits"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[test]
fn bad_requests_get_4xx_with_a_json_error() {
    let _one = exclusive();
    let server = Server::start(ServerOptions {
        max_body_bytes: 4096,
        ..Default::default()
    });
    let a = server.addr;
    let good = |data: Value, shape: Value, datatype: &str| json!({ "inputs": [{ "name": "input", "shape": shape, "datatype": datatype, "data": data }] });
    let twelve: Vec<f32> = (0..12).map(|i| i as f32 / 7.0).collect();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("/v2/models/digits/infer", b"{not json".to_vec(), 400),
        (
            "/v2/models/nope/infer",
            good(json!(twelve), json!([1, 12]), "FP32")
                .to_string()
                .into_bytes(),
            404,
        ),
        (
            "/v2/models/digits/infer",
            good(json!(twelve), json!([1, 12]), "INT32")
                .to_string()
                .into_bytes(),
            400,
        ),
        (
            "/v2/models/digits/infer",
            good(json!(twelve), json!([1, 13]), "FP32")
                .to_string()
                .into_bytes(),
            400,
        ),
        (
            "/v2/models/digits/infer",
            good(json!(twelve), json!([2, 12]), "FP32")
                .to_string()
                .into_bytes(),
            400,
        ),
        (
            "/v2/models/digits/infer",
            good(json!(["x"]), json!([1, 12]), "FP32")
                .to_string()
                .into_bytes(),
            400,
        ),
        (
            "/v2/models/digits/infer",
            json!({ "inputs": [] }).to_string().into_bytes(),
            400,
        ),
        ("/v2/models/digits/infer", vec![b' '; 5000], 413),
        (
            "/v2/models/shakespeare/infer",
            good(json!(twelve), json!([1, 12]), "FP32")
                .to_string()
                .into_bytes(),
            400,
        ),
        (
            "/v2/models/digits/generate",
            json!({ "text_input": "ab" }).to_string().into_bytes(),
            400,
        ),
        (
            "/v2/models/shakespeare/generate",
            json!({ "text_input": "AB" }).to_string().into_bytes(),
            400,
        ),
        (
            "/v2/models/shakespeare/generate",
            json!({ "text_input": "" }).to_string().into_bytes(),
            400,
        ),
        (
            "/v2/models/shakespeare/generate",
            json!({ "text_input": "ab", "parameters": { "max_tokens": 0 } })
                .to_string()
                .into_bytes(),
            400,
        ),
        (
            "/v2/models/shakespeare/generate",
            json!({ "text_input": "ab", "parameters": { "top_p": 2.0 } })
                .to_string()
                .into_bytes(),
            400,
        ),
        (
            "/v2/models/shakespeare/generate",
            json!({ "text_input": "a".repeat(40) })
                .to_string()
                .into_bytes(),
            400,
        ),
    ];
    for (path, body, want) in cases {
        let (status, _, body) = http(a, "POST", path, &body);
        assert_eq!(status, want, "{path}: {}", String::from_utf8_lossy(&body));
        let v = json_of(&body);
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    let (status, _, body) = http(a, "GET", "/v2/nothing", b"");
    assert_eq!(status, 404);
    assert!(json_of(&body)["error"].is_string());
    // Still serving.
    let request = good(json!(twelve), json!([1, 12]), "FP32");
    assert_eq!(post(a, "/v2/models/digits/infer", &request).0, 200);
}

#[test]
fn generate_and_its_stream_give_the_engines_text_and_metrics_count_them() {
    let _one = exclusive();
    let server = Server::start(ServerOptions::default());
    let a = server.addr;
    let prompt = "to be or not";
    let request = json!({ "text_input": prompt, "parameters": { "max_tokens": 12 } });
    let (status, _, answer) = post(a, "/v2/models/shakespeare/generate", &request);
    assert_eq!(status, 200, "{answer}");
    // The same model in process.
    let (lm, _) = LanguageModel::load(
        &gpu(),
        server._dir.path().join("shakespeare/1/model.safetensors"),
    )
    .unwrap();
    let ids: Vec<u32> = prompt
        .chars()
        .map(|c| VOCABULARY.find(c).unwrap() as u32)
        .collect();
    let engine = Engine::new(
        Decoder::new(&lm, DecoderOptions::default()).unwrap(),
        EngineOptions::default(),
    )
    .unwrap();
    let (tokens, _) = engine.generate(GenerationRequest::greedy(ids, 12)).unwrap();
    let want: String = tokens
        .iter()
        .map(|&t| VOCABULARY.as_bytes()[t as usize] as char)
        .collect();
    assert_eq!(answer["text_output"], json!(want));
    assert_eq!(answer["finish_reason"], json!("length"));
    // The stream: one event per token, then the finish.
    let (status, head, body) = http(
        a,
        "POST",
        "/v2/models/shakespeare/generate_stream",
        request.to_string().as_bytes(),
    );
    assert_eq!(status, 200);
    assert!(head.contains("text/event-stream"), "{head}");
    let text = String::from_utf8_lossy(&body);
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| json_of(d.as_bytes()))
        .collect();
    assert_eq!(events.len(), 13, "{text}");
    let streamed: String = events
        .iter()
        .filter_map(|e| e["text_output"].as_str())
        .collect();
    assert_eq!(streamed, want);
    assert_eq!(events[12]["finish_reason"], json!("length"));
    let (status, _, body) = http(a, "GET", "/metrics", b"");
    let metrics = String::from_utf8_lossy(&body);
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            r#"wgnn_requests_total{endpoint="generate",model="shakespeare",outcome="ok"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(r#"wgnn_tokens_generated_total{model="shakespeare"} 24"#));
    assert!(metrics.contains("wgnn_request_duration_seconds_bucket"));
    assert!(metrics
        .contains(r#"wgnn_inter_token_latency_seconds{model="shakespeare",quantile="0.99"}"#));
}

#[test]
fn overload_is_503_with_retry_after_and_shutdown_drains_requests_in_flight() {
    let _one = exclusive();
    let mut server = Server::start(ServerOptions::default());
    let a = server.addr;
    // One slot, a queue of one: of six long requests at once, some are refused.
    let long = json!({ "text_input": "the", "parameters": { "max_tokens": 29 } });
    let results: Vec<(u16, String, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| s.spawn(|| post(a, "/v2/models/shakespeare/generate", &long)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let refused: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert!(!refused.is_empty(), "{results:?}");
    for (_, head, body) in &refused {
        assert!(head.contains("retry-after: 1"), "{head}");
        assert!(body["error"].is_string());
    }
    for (status, _, body) in &results {
        assert!(*status == 200 || *status == 503, "{status} {body}");
    }
    // A request in flight when the server is told to stop still gets its answer.
    let in_flight = std::thread::spawn(move || post(a, "/v2/models/shakespeare/generate", &long));
    std::thread::sleep(Duration::from_millis(50));
    server.shutdown();
    let (status, _, body) = in_flight.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(TcpStream::connect(a).is_err() || http_refused(a));
}

/// After shutdown a connection may still be accepted by the OS backlog, but no answer comes.
fn http_refused(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return true;
    };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = s.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = [0u8; 16];
    !matches!(s.read(&mut buf), Ok(n) if n > 0)
}

/// An HTTP/1.1 exchange with extra headers: (status, headers lower-cased, body).
fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    split_response(&raw)
}

fn split_response(raw: &[u8]) -> (u16, String, Vec<u8>) {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, head, raw[split + 4..].to_vec())
}

fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        l.strip_prefix(&format!("{name}: "))
            .map(|v| v.trim().to_string())
    })
}

/// The text of `/metrics`.
fn metrics_text(a: SocketAddr) -> String {
    let (status, _, body) = http(a, "GET", "/metrics", b"");
    assert_eq!(status, 200);
    String::from_utf8(body).unwrap()
}

/// The value of the series `series` (name and labels, as printed) in a metrics text.
fn series(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// The in-process session's answer for `x` on the served digits model.
fn in_process(server: &Server, x: &[f32]) -> wgnn::infer::Predictions {
    let model = Sequential::load(
        &gpu(),
        server._dir.path().join("digits/3/model.safetensors"),
    )
    .unwrap();
    InferenceSession::new(model, SessionOptions::default())
        .unwrap()
        .predict(x)
        .unwrap()
}

#[test]
fn binary_tensors_both_ways_give_the_json_answer_and_the_config_is_tritons() {
    let _one = exclusive();
    let server = Server::start(ServerOptions::default());
    let a = server.addr;
    let (mut rng, seed) = rng();
    let x = random(&mut rng, 5 * 12);
    let local = in_process(&server, &x);
    // Binary input, binary outputs (tritonclient's defaults: no outputs listed,
    // binary_data_output set).
    let header = json!({
        "id": "b1",
        "parameters": { "binary_data_output": true },
        "inputs": [{ "name": "input", "shape": [5, 12], "datatype": "FP32",
                     "parameters": { "binary_data_size": 5 * 12 * 4 } }],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(x.iter().flat_map(|v| v.to_le_bytes()));
    let (status, head, answer) = http_with(
        a,
        "POST",
        "/v2/models/digits/infer",
        &[("Inference-Header-Content-Length", header.len().to_string())],
        &body,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let json_length: usize = header_value(&head, "inference-header-content-length")
        .expect("a binary answer names its JSON's length")
        .parse()
        .unwrap();
    let meta = json_of(&answer[..json_length]);
    assert_eq!(meta["id"], json!("b1"));
    assert_eq!(meta["outputs"][0]["name"], json!("probabilities"));
    assert_eq!(
        meta["outputs"][0]["parameters"]["binary_data_size"],
        json!(5 * 5 * 4)
    );
    assert_eq!(
        meta["outputs"][1]["parameters"]["binary_data_size"],
        json!(5 * 8)
    );
    assert!(meta["outputs"][0].get("data").is_none(), "{meta}");
    let rest = &answer[json_length..];
    assert_eq!(rest.len(), 5 * 5 * 4 + 5 * 8);
    let probabilities: Vec<f32> = rest[..100]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let classes: Vec<u32> = rest[100..]
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    assert_close(
        &probabilities,
        &local.outputs,
        1e-5,
        &format!("seed {seed}"),
    );
    assert_eq!(classes, local.classes);
    // Binary input, one JSON output asked for by name: the same numbers.
    let header = json!({
        "inputs": [{ "name": "input", "shape": [5, 12], "datatype": "FP32",
                     "parameters": { "binary_data_size": 240 } }],
        "outputs": [{ "name": "probabilities", "parameters": { "binary_data": false } }],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(x.iter().flat_map(|v| v.to_le_bytes()));
    let lengths = [("Inference-Header-Content-Length", header.len().to_string())];
    let (status, head, answer) = http_with(a, "POST", "/v2/models/digits/infer", &lengths, &body);
    assert_eq!(status, 200);
    assert!(header_value(&head, "inference-header-content-length").is_none());
    let json_probabilities: Vec<f32> = json_of(&answer)["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(
        json_probabilities, probabilities,
        "JSON and binary agree exactly"
    );
    // Binary data that does not fit the header's promises is refused by what is wrong.
    for (bytes, header_length, wrong) in [
        (&body[..body.len() - 4], header.len().to_string(), "binary"),
        (&body[..], (body.len() + 1).to_string(), "past the body"),
        (&body[..], "ten".to_string(), "byte count"),
    ] {
        let h = [("Inference-Header-Content-Length", header_length)];
        let (status, _, answer) = http_with(a, "POST", "/v2/models/digits/infer", &h, bytes);
        let e = json_of(&answer)["error"].as_str().unwrap().to_string();
        assert_eq!(status, 400, "{e}");
        assert!(e.contains(wrong) && e.contains("\"digits\""), "{e}");
    }
    let mut extra = body.clone();
    extra.extend_from_slice(&[0; 8]);
    let (status, _, answer) = http_with(a, "POST", "/v2/models/digits/infer", &lengths, &extra);
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&answer).contains("belong to no input"));
    // Non-finite binary values are refused.
    let mut nan = header.clone().into_bytes();
    nan.extend(std::iter::repeat_n(f32::NAN.to_le_bytes(), 60).flatten());
    assert_eq!(
        http_with(a, "POST", "/v2/models/digits/infer", &lengths, &nan).0,
        400
    );
    // Triton's model configuration, and the versioned routes.
    let (status, config) = get_json(a, "/v2/models/digits/config");
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["name"], json!("digits"));
    assert_eq!(config["max_batch_size"], json!(8));
    assert_eq!(config["input"][0]["data_type"], json!("TYPE_FP32"));
    assert_eq!(config["input"][0]["dims"], json!([12]));
    assert_eq!(config["output"][0]["dims"], json!([5]));
    assert_eq!(
        config["dynamic_batching"]["max_queue_delay_microseconds"],
        json!(1000)
    );
    let (status, config) = get_json(a, "/v2/models/shakespeare/config");
    assert_eq!((status, &config["max_batch_size"]), (200, &json!(0)));
    assert_eq!(get_json(a, "/v2/models/digits/versions/3/config").0, 200);
    assert_eq!(
        http(a, "GET", "/v2/models/digits/versions/3/ready", b"").0,
        200
    );
    let (status, answer) = get_json(a, "/v2/models/digits/versions/1/ready");
    assert_eq!(status, 404, "{answer}");
    let request = json!({ "inputs": [{ "name": "input", "shape": [1, 12], "datatype": "FP32",
                                       "data": &x[..12] }] });
    assert_eq!(
        post(a, "/v2/models/digits/versions/3/infer", &request).0,
        200
    );
}

#[test]
fn a_request_of_many_samples_is_one_batcher_submission() {
    let _one = exclusive();
    let server = Server::start(ServerOptions::default());
    let a = server.addr;
    let (mut rng, seed) = rng();
    let x = random(&mut rng, 300 * 12);
    let request = json!({
        "inputs": [{ "name": "input", "shape": [300, 12], "datatype": "FP32", "data": x }],
    });
    let (status, _, answer) = post(a, "/v2/models/digits/infer", &request);
    assert_eq!(status, 200, "{answer}");
    let got: Vec<f32> = answer["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_close(
        &got,
        &in_process(&server, &x).outputs,
        1e-5,
        &format!("seed {seed}"),
    );
    // One submission, split only at the model's max batch of 8: 37 replays of 8 and one of 4.
    let m = metrics_text(a);
    assert_eq!(
        series(&m, r#"wgnn_batcher_requests_total{model="digits"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        series(&m, r#"wgnn_batches_total{model="digits",size="8"}"#),
        Some(37.0)
    );
    assert_eq!(
        series(&m, r#"wgnn_batches_total{model="digits",size="4"}"#),
        Some(1.0)
    );
    assert_eq!(
        series(&m, r#"wgnn_batches_total{model="digits",size="1"}"#),
        None
    );
    assert_eq!(
        series(&m, r#"wgnn_infer_samples_total{model="digits"}"#),
        Some(300.0)
    );
}

#[test]
fn wrongly_typed_or_unknown_fields_are_refused_by_name() {
    let _one = exclusive();
    let server = Server::start(ServerOptions::default());
    let a = server.addr;
    let generate = "/v2/models/shakespeare/generate";
    let cases = [
        (
            generate,
            json!({ "text_input": "ab", "parameters": { "temperature": "hot" } }),
            "parameters.temperature",
        ),
        (
            generate,
            json!({ "text_input": "ab", "parameters": { "max_tokens": "8" } }),
            "parameters.max_tokens",
        ),
        (
            generate,
            json!({ "text_input": "ab", "parameters": 5 }),
            "parameters",
        ),
        (
            generate,
            json!({ "text_input": "ab", "parameters": { "temprature": 1.0 } }),
            "temprature",
        ),
        (generate, json!({ "text_input": 7 }), "text_input"),
        (
            generate,
            json!({ "text_input": "ab", "prompt": "x" }),
            "prompt",
        ),
        (
            "/v2/models/shakespeare/generate_stream",
            json!({ "text_input": "ab", "parameters": { "top_k": -1 } }),
            "parameters.top_k",
        ),
        (
            "/v2/models/digits/infer",
            json!({ "inputs": [{ "name": "input", "shape": [1, 12], "datatype": "FP32", "data": vec![0.5f32; 12], "extra": 1 }] }),
            "inputs[0]",
        ),
        (
            "/v2/models/digits/infer",
            json!({ "inputs": [{ "name": "input", "shape": [1, "12"], "datatype": "FP32", "data": vec![0.5f32; 12] }] }),
            "inputs[0].shape[1]",
        ),
        (
            "/v2/models/digits/infer",
            json!({ "inputs": [{ "name": "input", "shape": [1, 12], "datatype": "FP32", "data": vec![0.5f32; 12] }], "parameters": { "binary_data_output": "yes" } }),
            "parameters.binary_data_output",
        ),
        (
            "/v2/models/digits/infer",
            json!({ "inputs": [{ "name": "image", "shape": [1, 12], "datatype": "FP32", "data": vec![0.5f32; 12] }] }),
            "\"image\"",
        ),
        (
            generate,
            json!({ "text_input": "a".repeat(40) }),
            "context of 32",
        ),
    ];
    for (path, request, named) in cases {
        let (status, _, answer) = post(a, path, &request);
        let e = answer["error"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{request}: {answer}");
        assert!(
            e.contains(named),
            "{request}: {e:?} does not name {named:?}"
        );
        assert!(
            e.contains("\"shakespeare\"") || e.contains("\"digits\""),
            "{e}"
        );
        assert!(
            !e.contains("::") && !e.contains("adapter"),
            "internal names in {e:?}"
        );
    }
    // A method a route does not take: 405 with a JSON body.
    let (status, _, body) = http(a, "GET", "/v2/models/digits/infer", b"");
    assert_eq!(status, 405);
    assert!(json_of(&body)["error"].is_string());
    // Sampling without a seed draws one and says which; that seed repeats the text.
    let sampled =
        json!({ "text_input": "to be", "parameters": { "max_tokens": 20, "temperature": 1.0 } });
    let (status, _, first) = post(a, generate, &sampled);
    assert_eq!(status, 200, "{first}");
    let (_, _, second) = post(a, generate, &sampled);
    let (s1, s2) = (
        first["seed"].as_u64().unwrap(),
        second["seed"].as_u64().unwrap(),
    );
    assert_ne!(s1, s2, "two unseeded requests drew the same seed");
    let mut seeded = sampled.clone();
    seeded["parameters"]["seed"] = json!(s1);
    let (_, _, again) = post(a, generate, &seeded);
    assert_eq!(again["text_output"], first["text_output"]);
    assert_eq!(again["seed"], json!(s1));
    // Greedy answers carry no seed.
    let (_, _, greedy) = post(a, generate, &json!({ "text_input": "to be" }));
    assert!(greedy.get("seed").is_none(), "{greedy}");
}

#[test]
fn config_json_is_an_object_of_known_keys_and_start_up_errors_name_the_model() {
    let _one = exclusive();
    let gpu = gpu();
    for (config, named) in [
        ("[]", "JSON object"),
        (r#"["int8", 64, 2, 1024, 16]"#, "JSON object"),
        (r#"{"max_batch": "8"}"#, "max_batch"),
        (r#"{"precision": "f64"}"#, "precision"),
        (r#"{"max_btach": 8}"#, "max_btach"),
        (r#"{"max_batch": 0}"#, "max_batch"),
        (r#"{"queue_capacity": 0}"#, "queue_capacity"),
    ] {
        let dir = TempDir::new();
        repository(dir.path());
        std::fs::write(dir.path().join("digits/3/config.json"), config).unwrap();
        let e = ServerState::load(&gpu, dir.path(), ServerOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"digits\""), "{config}: {e}");
        assert!(e.contains("digits/3/"), "{config}: {e} names no file");
        assert!(e.contains(named), "{config}: {e} does not name {named:?}");
    }
    // The same for a language model's engine settings.
    let dir = TempDir::new();
    repository(dir.path());
    std::fs::write(
        dir.path().join("shakespeare/1/config.json"),
        r#"{"slots": 0}"#,
    )
    .unwrap();
    let e = ServerState::load(&gpu, dir.path(), ServerOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"shakespeare\"") && e.contains("shakespeare/1/"),
        "{e}"
    );
}

#[test]
fn metrics_are_typed_current_and_a_stream_is_timed_to_its_last_event() {
    let _one = exclusive();
    let server = Server::start(ServerOptions::default());
    let a = server.addr;
    let request = json!({ "text_input": "the", "parameters": { "max_tokens": 29 } });
    let started = std::time::Instant::now();
    let (status, _, body) = http(
        a,
        "POST",
        "/v2/models/shakespeare/generate_stream",
        request.to_string().as_bytes(),
    );
    let streamed = started.elapsed().as_secs_f64();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("finish_reason"));
    let m = metrics_text(a);
    // Every series belongs to a family with HELP and TYPE.
    let mut typed = std::collections::HashSet::new();
    let mut helped = std::collections::HashSet::new();
    for l in m.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            typed.insert(rest.split_whitespace().next().unwrap().to_string());
        } else if let Some(rest) = l.strip_prefix("# HELP ") {
            helped.insert(rest.split_whitespace().next().unwrap().to_string());
        } else if !l.is_empty() {
            let name = l.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                .unwrap_or(name);
            assert!(typed.contains(family), "{name} has no TYPE in\n{m}");
            assert!(helped.contains(family), "{name} has no HELP");
        }
    }
    // Nothing runs now: the gauges say so.
    for s in [
        r#"wgnn_generation_occupancy{model="shakespeare"}"#,
        r#"wgnn_generation_running{model="shakespeare"}"#,
        r#"wgnn_generation_queue_depth{model="shakespeare"}"#,
    ] {
        assert_eq!(series(&m, s), Some(0.0), "{s} in {m}");
    }
    assert_eq!(
        series(&m, r#"wgnn_tokens_generated_total{model="shakespeare"}"#),
        Some(29.0)
    );
    // The stream's latency runs to its last event.
    let recorded = series(
        &m,
        r#"wgnn_request_duration_seconds_sum{endpoint="generate_stream",model="shakespeare"}"#,
    )
    .unwrap();
    assert!(
        recorded >= 0.7 * streamed,
        "the stream took {streamed} s at the client, {recorded} s recorded"
    );
    assert_eq!(
        series(
            &m,
            r#"wgnn_requests_total{endpoint="generate_stream",model="shakespeare",outcome="ok"}"#
        ),
        Some(1.0)
    );
}

/// Reads until the peer closes (or errors, or 10 s pass): what arrived, and when it ended.
fn read_until_closed(s: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = std::time::Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return (got, started.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn slow_clients_are_closed_at_their_deadlines_while_others_are_served() {
    let _one = exclusive();
    let deadline = Duration::from_millis(600);
    let server = Server::start(ServerOptions {
        header_timeout: deadline,
        body_timeout: deadline,
        idle_timeout: deadline,
        ..Default::default()
    });
    let a = server.addr;
    let request = json!({ "inputs": [{ "name": "input", "shape": [1, 12], "datatype": "FP32",
                                       "data": vec![0.25f32; 12] }] })
    .to_string();
    // Half the headers; half a body; a kept-alive connection after one answer; nothing at all.
    let mut half_head = TcpStream::connect(a).unwrap();
    half_head
        .write_all(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut half_body = TcpStream::connect(a).unwrap();
    half_body
        .write_all(
            format!(
                "POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{}",
                request.len(),
                &request[..request.len() / 2]
            )
            .as_bytes(),
        )
        .unwrap();
    let mut idle = TcpStream::connect(a).unwrap();
    idle.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 1024];
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = idle.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let mut silent = TcpStream::connect(a).unwrap();
    let opened = std::time::Instant::now();
    // 20 other clients are served meanwhile.
    let served = std::thread::scope(|s| {
        let clients: Vec<_> = (0..20)
            .map(|_| {
                s.spawn(|| {
                    (0..3)
                        .map(|_| http(a, "POST", "/v2/models/digits/infer", request.as_bytes()).0)
                        .filter(|&status| status == 200)
                        .count()
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().unwrap())
            .sum::<usize>()
    });
    assert_eq!(served, 60);
    for (what, s) in [
        ("half the headers", &mut half_head),
        ("half a body", &mut half_body),
        ("an idle keep-alive", &mut idle),
        ("no request", &mut silent),
    ] {
        let (got, _) = read_until_closed(s);
        let closed_after = opened.elapsed();
        assert!(
            closed_after < deadline * 4,
            "{what}: still open {closed_after:?} after it opened (deadline {deadline:?})"
        );
        if what == "half a body" {
            let (status, _, body) = split_response(&got);
            assert_eq!(status, 408, "{}", String::from_utf8_lossy(&body));
        }
    }
}

#[test]
fn an_over_limit_body_is_refused_before_100_continue_and_the_client_reads_the_413() {
    let _one = exclusive();
    let server = Server::start(ServerOptions {
        max_body_bytes: 4096,
        ..Default::default()
    });
    let a = server.addr;
    // A client that waits for 100 Continue is answered 413 at once.
    let mut s = TcpStream::connect(a).unwrap();
    s.write_all(
        b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 67108864\r\n\
          Expect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let (got, _) = read_until_closed(&mut s);
    let (status, head, body) = split_response(&got);
    assert_eq!(status, 413, "{head}");
    assert!(json_of(&body)["error"].as_str().unwrap().contains("4096"));
    // A client that sends its whole (4 MiB) body before reading sees the 413, not a reset.
    let mut s = TcpStream::connect(a).unwrap();
    let size = 4 << 20;
    s.write_all(
        format!(
            "POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let chunk = vec![b' '; 64 << 10];
    for _ in 0..size / chunk.len() {
        s.write_all(&chunk)
            .expect("the server reads a refused body before it closes");
    }
    let (got, _) = read_until_closed(&mut s);
    assert_eq!(split_response(&got).0, 413);
    // Still serving.
    assert_eq!(http(a, "GET", "/v2/health/ready", b"").0, 200);
}

#[test]
fn shutdown_answers_the_connections_still_in_the_listen_backlog() {
    let _one = exclusive();
    let dir = TempDir::new();
    repository(dir.path());
    let state = Arc::new(ServerState::load(&gpu(), dir.path(), ServerOptions::default()).unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let a = listener.local_addr().unwrap();
    let request = json!({ "inputs": [{ "name": "input", "shape": [2, 12], "datatype": "FP32",
                                       "data": vec![0.5f32; 24] }] })
    .to_string();
    // Eight clients connected and sent before the server takes any connection: they wait in
    // the kernel's backlog. The server is told to stop before it starts.
    let clients: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(a).unwrap();
            s.write_all(
                format!(
                    "POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{request}",
                    request.len()
                )
                .as_bytes(),
            )
            .unwrap();
            s
        })
        .collect();
    runtime
        .block_on(wgnn::serve::serve(listener, state, async {}))
        .unwrap();
    for mut c in clients {
        let (got, _) = read_until_closed(&mut c);
        assert!(!got.is_empty(), "a connection in the backlog was dropped");
        assert_eq!(split_response(&got).0, 200);
    }
    assert!(TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_err());
}

/// A repository with the classifier only (quick to load), for the binary's tests.
fn classifier_repository(dir: &Path) {
    repository(dir);
    std::fs::remove_dir_all(dir.join("shakespeare")).unwrap();
}

/// `wgnn-serve` on a free loopback port, its stderr in a file, without NODEVICE_SELECT (the
/// binary must quiet Mesa itself).
fn start_binary(repo: &Path, log: &Path) -> (std::process::Child, SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_wgnn-serve"))
        .args([
            "--model-repository",
            repo.to_str().unwrap(),
            "--bind",
            &addr.to_string(),
        ])
        .env_remove("NODEVICE_SELECT")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    (child, addr)
}

fn wait_ready(addr: SocketAddr, child: &mut std::process::Child) {
    let started = std::time::Instant::now();
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s
                .write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let (got, _) = read_until_closed(&mut s);
            if got.starts_with(b"HTTP/1.1 200") {
                return;
            }
        }
        assert!(child.try_wait().unwrap().is_none(), "wgnn-serve exited");
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "wgnn-serve never became live"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn the_binary_starts_quietly_and_loses_no_accepted_request_across_20_sigterms() {
    let _one = exclusive();
    let dir = TempDir::new();
    classifier_repository(dir.path());
    let log = dir.path().join("stderr.log");
    let request = json!({ "inputs": [{ "name": "input", "shape": [16, 12], "datatype": "FP32",
                                       "data": vec![0.5f32; 16 * 12] }] })
    .to_string();
    let message = format!(
        "POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{request}",
        request.len()
    );
    let mut answered_in_all = 0;
    for round in 0..20 {
        let (mut child, a) = start_binary(dir.path(), &log);
        wait_ready(a, &mut child);
        // 16 clients send requests one after another (a new connection each) until connecting
        // fails; every connection that was accepted must be answered 200.
        let (answered, lost) = std::thread::scope(|s| {
            let clients: Vec<_> = (0..16)
                .map(|_| {
                    s.spawn(|| {
                        let (mut answered, mut lost) = (0, Vec::new());
                        loop {
                            let Ok(mut c) = TcpStream::connect_timeout(&a, Duration::from_secs(3))
                            else {
                                return (answered, lost);
                            };
                            if c.write_all(message.as_bytes()).is_err() {
                                lost.push("the request could not be sent".to_string());
                                continue;
                            }
                            let (got, _) = read_until_closed(&mut c);
                            if got.starts_with(b"HTTP/1.1 200") {
                                answered += 1;
                            } else {
                                lost.push(String::from_utf8_lossy(&got).into_owned());
                            }
                        }
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(200));
            sigterm(&child);
            clients.into_iter().fold((0, Vec::new()), |(n, mut l), c| {
                let (a, mut b) = c.join().unwrap();
                l.append(&mut b);
                (n + a, l)
            })
        });
        let status = child.wait().unwrap();
        let stderr = std::fs::read_to_string(&log).unwrap();
        assert!(
            lost.is_empty(),
            "round {round}: {} accepted requests lost: {lost:?}",
            lost.len()
        );
        assert!(status.success(), "round {round}: {status}\n{stderr}");
        answered_in_all += answered;
        if round == 0 {
            assert!(!stderr.contains("XDG_RUNTIME_DIR"), "{stderr}");
            let model_lines: Vec<&str> = stderr
                .lines()
                .filter(|l| l.contains("model \"digits\" version 3"))
                .collect();
            assert_eq!(model_lines.len(), 1, "{stderr}");
            assert!(model_lines[0].contains("classifier") && model_lines[0].contains("[12]"));
            assert!(stderr.contains("listening on http://"), "{stderr}");
            assert!(!stderr.contains("ServerState {"), "a debug dump: {stderr}");
        }
    }
    eprintln!("{answered_in_all} requests answered across 20 SIGTERMs, none lost");
    assert!(
        answered_in_all >= 20,
        "only {answered_in_all} requests answered in 20 rounds"
    );
}

#[test]
fn an_empty_repository_starts_with_a_warning() {
    let _one = exclusive();
    let dir = TempDir::new();
    let repo = dir.path().join("models");
    std::fs::create_dir_all(&repo).unwrap();
    let log = dir.path().join("stderr.log");
    let (mut child, a) = start_binary(&repo, &log);
    wait_ready(a, &mut child);
    assert_eq!(http(a, "GET", "/v2/health/ready", b"").0, 503);
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        stderr.contains("warning") && stderr.contains("no model"),
        "{stderr}"
    );
}

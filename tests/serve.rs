//! wgnn-serve's protocol over real HTTP on an ephemeral loopback port: health, metadata, infer
//! (answers equal to the in-process session's), generate and generate_stream (text equal to the
//! in-process engine's), metrics, every bad input's 4xx with a JSON error body, an overload's 503
//! with Retry-After, and a graceful shutdown with a request in flight. Needs `--features serve`.

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
    // Six samples, each timed in the queue and in its replay.
    let (_, _, body) = http(a, "GET", "/metrics", b"");
    let metrics = String::from_utf8_lossy(&body);
    for line in [
        r#"wgnn_queue_duration_seconds_count{model="digits"} 6"#,
        r#"wgnn_compute_duration_seconds_count{model="digits"} 6"#,
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

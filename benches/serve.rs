//! One request of 1,797 digits through `wgnn-serve`'s HTTP front door, against
//! `InferenceSession::predict` on the same 1,797 rows in process: what the server adds.
//!
//! - `serve_1797/in_process_predict`: one `predict` of 1,797 rows ([1, 8, 8] each) on the digits
//!   CNN, f32, max batch 64 (28 replays of 64 and one of 5).
//! - `serve_1797/http_json` and `serve_1797/http_binary`: one infer request of the same 1,797
//!   rows to an in-process server on loopback (the same model, max batch 64), JSON tensors or the
//!   binary tensor extension both ways, from connect to the answer's last byte. The request is
//!   one batcher submission.
//!
//! `cargo bench --features serve --bench serve`. The bound: http ≤ 1.5 × in process.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
mod common;

use common::random;
use wgnn::infer::{InferenceSession, SessionOptions};
use wgnn::nn::{digits_cnn, Init, Sequential};
use wgnn::serve::{ServerOptions, ServerState};
use wgnn::Gpu;

const ROWS: usize = 1797;

/// One HTTP/1.1 exchange; panics unless the answer is 200.
fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> usize {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(head.as_bytes()).expect("send");
    s.write_all(body).expect("send");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("read");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..answer.len().min(300)])
    );
    answer.len()
}

fn bench(c: &mut Criterion) {
    let gpu = Gpu::new().expect("gpu");
    let model = Sequential::new(
        &gpu,
        &[1, 8, 8],
        digits_cnn(),
        Init::KaimingUniform { seed: 1 },
    )
    .expect("model");
    let dir = std::env::temp_dir().join(format!("wgnn-bench-serve-{}", std::process::id()));
    let version = dir.join("digits/1");
    std::fs::create_dir_all(&version).expect("repository");
    model.save(version.join("model.safetensors")).expect("save");
    // Pixel values as the digits have them (0 to 16), not zeros.
    let x: Vec<f32> = random(ROWS * 64, 7, 1.0)
        .iter()
        .map(|v| (v + 1.0) * 8.0)
        .collect();

    let session = InferenceSession::new(
        Sequential::load(&gpu, version.join("model.safetensors")).expect("load"),
        SessionOptions::default(),
    )
    .expect("session");
    let state =
        Arc::new(ServerState::load(&gpu, &dir, ServerOptions::default()).expect("server state"));
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        runtime
            .block_on(wgnn::serve::serve(listener, state, async {
                let _ = stopped.await;
            }))
            .expect("serve");
    });

    let json_body = serde_json::json!({
        "inputs": [{ "name": "input", "shape": [ROWS, 1, 8, 8], "datatype": "FP32", "data": x }],
    })
    .to_string()
    .into_bytes();
    let json_head = format!(
        "POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        json_body.len()
    );
    let header = serde_json::json!({
        "parameters": { "binary_data_output": true },
        "inputs": [{ "name": "input", "shape": [ROWS, 1, 8, 8], "datatype": "FP32",
                     "parameters": { "binary_data_size": ROWS * 64 * 4 } }],
    })
    .to_string();
    let mut binary_body = header.clone().into_bytes();
    binary_body.extend(x.iter().flat_map(|v| v.to_le_bytes()));
    let binary_head = format!(
        "POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\
         Inference-Header-Content-Length: {}\r\nConnection: close\r\n\r\n",
        binary_body.len(),
        header.len()
    );
    println!(
        "serve_1797: request bodies {} bytes (JSON), {} bytes (binary); answers {} and {} bytes",
        json_body.len(),
        binary_body.len(),
        exchange(addr, &json_head, &json_body),
        exchange(addr, &binary_head, &binary_body)
    );

    let mut group = c.benchmark_group("serve_1797");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("in_process_predict", |b| {
        b.iter(|| session.predict(&x).expect("predict"))
    });
    group.bench_function("http_json", |b| {
        b.iter(|| exchange(addr, &json_head, &json_body))
    });
    group.bench_function("http_binary", |b| {
        b.iter(|| exchange(addr, &binary_head, &binary_body))
    });
    group.finish();
    let _ = stop.send(());
    let _ = server.join();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);

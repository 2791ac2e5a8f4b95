//! A load run of `wgnn-serve`: the digits CNN behind the server in this process, on a loopback
//! port, with dynamic batching on (batches of up to 64 within 2 ms) and off (one sample per
//! replay); client threads at concurrency 1 to 64, each on its own keep-alive connection, send
//! batch-1 `infer` requests back to back. Prints throughput and p50/p99 latency per level, the
//! in-process batcher's batch-1 p50 beside the HTTP one (what the HTTP layer adds), and plots
//! throughput and p99 latency.
//!
//! `cargo run --release --features serve --example serve_load -- [--model PATH]
//! [--concurrency 1,2,4,8,16,32,64] [--requests N] [--out DIR]`
//!
//! Needs `train_digits`' saved model (`target/train_digits/digits_cnn.safetensors`).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use plotters::style::{BLUE, RED};
use wgnn::data::Digits;
use wgnn::infer::{Batcher, BatcherConfig, InferenceSession, SessionOptions};
use wgnn::nn::Sequential;
use wgnn::serve::{ServerOptions, ServerState};

struct Args {
    model: PathBuf,
    concurrency: Vec<usize>,
    requests: usize,
    out: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        model: PathBuf::from("target/train_digits/digits_cnn.safetensors"),
        concurrency: vec![1, 2, 4, 8, 16, 32, 64],
        requests: 2000,
        out: PathBuf::from("target/serve_load"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--model" => args.model = PathBuf::from(value()?),
            "--concurrency" => args.concurrency = common::parse_list(&value()?)?,
            "--requests" => args.requests = value()?.parse()?,
            "--out" => args.out = PathBuf::from(value()?),
            "-h" | "--help" => {
                println!(
                    "serve_load [--model PATH] [--concurrency 1,2,4,...] [--requests N] [--out DIR]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if args.concurrency.is_empty() || args.concurrency.iter().any(|&c| c == 0 || c > 1024) {
        bail!("--concurrency takes levels from 1 to 1024");
    }
    if args.requests == 0 || args.requests > 1_000_000 {
        bail!("--requests must be in 1..=1000000");
    }
    if !args.model.exists() {
        bail!(
            "no model at {}: run `cargo run --release --example train_digits` first",
            args.model.display()
        );
    }
    Ok(args)
}

/// A keep-alive HTTP/1.1 connection that posts JSON and reads one response at a time.
struct Connection {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Connection {
    fn open(addr: SocketAddr) -> Result<Self> {
        let writer = TcpStream::connect(addr)?;
        writer.set_nodelay(true)?;
        let reader = BufReader::new(writer.try_clone()?);
        Ok(Connection { writer, reader })
    }

    /// Posts `body` to `path`; the status and the response body.
    fn post(&mut self, path: &str, body: &str) -> Result<(u16, String)> {
        write!(
            self.writer,
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("a status line")?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse()?;
                }
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

fn write_repository(dir: &Path, model: &Path, batching: bool) -> Result<()> {
    let v = dir.join("digits").join("1");
    std::fs::create_dir_all(&v)?;
    std::fs::copy(model, v.join("model.safetensors"))?;
    let config = if batching {
        r#"{"max_batch": 64, "max_wait_ms": 2, "queue_capacity": 4096}"#
    } else {
        r#"{"max_batch": 1, "max_wait_ms": 0, "queue_capacity": 4096}"#
    };
    std::fs::write(v.join("config.json"), config)?;
    Ok(())
}

/// Sorted latencies' q-quantile in ms.
fn quantile(sorted: &[Duration], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

#[derive(Debug, Clone)]
struct Level {
    batching: bool,
    clients: usize,
    per_second: f64,
    p50: f64,
    p99: f64,
}

fn main() -> Result<()> {
    common::quiet_vulkan_layers();
    let args = parse_args()?;
    let gpu = common::open_gpu()?;
    let (_, test) = Digits::load()?.split(0.2, 0);
    let images: Vec<String> = test
        .images
        .chunks(64)
        .map(|x| {
            serde_json::json!({
                "inputs": [{ "name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": x }]
            })
            .to_string()
        })
        .collect();
    // The in-process batcher's batch-1 latency, one caller: what HTTP is compared with.
    let in_process = {
        let model = Sequential::load(&gpu, &args.model)?;
        let session = Arc::new(InferenceSession::new(model, SessionOptions::default())?);
        let batcher = Batcher::new(session, BatcherConfig::default())?;
        let mut times = Vec::with_capacity(args.requests);
        for i in 0..args.requests {
            let x = &test.images[(i % test.labels.len()) * 64..][..64];
            let start = Instant::now();
            batcher.predict(x)?;
            times.push(start.elapsed());
        }
        times.sort();
        batcher.shutdown();
        (quantile(&times, 0.5), quantile(&times, 0.99))
    };
    println!(
        "in-process Batcher, 1 caller: p50 {:.3} ms, p99 {:.3} ms",
        in_process.0, in_process.1
    );
    println!("| batching | clients | requests/s | p50 ms | p99 ms |\n|---|---|---|---|---|");
    let runtime = tokio::runtime::Runtime::new()?;
    let mut levels = Vec::new();
    for batching in [true, false] {
        let dir =
            std::env::temp_dir().join(format!("wgnn-serve-load-{}-{batching}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_repository(&dir, &args.model, batching)?;
        let state = Arc::new(ServerState::load(&gpu, &dir, ServerOptions::default())?);
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = runtime.spawn(wgnn::serve::serve(listener, state, async {
            let _ = stopped.await;
        }));
        for &clients in &args.concurrency {
            let per_client = args.requests.div_ceil(clients).max(1);
            let started = Instant::now();
            let latencies = std::thread::scope(|s| -> Result<Vec<Duration>> {
                let handles: Vec<_> = (0..clients)
                    .map(|c| {
                        let images = &images;
                        s.spawn(move || -> Result<Vec<Duration>> {
                            let mut conn = Connection::open(addr)?;
                            let mut times = Vec::with_capacity(per_client);
                            for i in 0..per_client {
                                let body = &images[(c * per_client + i) % images.len()];
                                let start = Instant::now();
                                let (status, answer) =
                                    conn.post("/v2/models/digits/infer", body)?;
                                if status != 200 {
                                    bail!("status {status}: {answer}");
                                }
                                times.push(start.elapsed());
                            }
                            Ok(times)
                        })
                    })
                    .collect();
                let mut all = Vec::new();
                for h in handles {
                    all.extend(h.join().expect("a client thread panicked")?);
                }
                Ok(all)
            })?;
            let seconds = started.elapsed().as_secs_f64();
            let mut sorted = latencies;
            sorted.sort();
            let level = Level {
                batching,
                clients,
                per_second: sorted.len() as f64 / seconds,
                p50: quantile(&sorted, 0.5),
                p99: quantile(&sorted, 0.99),
            };
            println!(
                "| {} | {} | {:.0} | {:.3} | {:.3} |",
                if batching { "on" } else { "off" },
                clients,
                level.per_second,
                level.p50,
                level.p99
            );
            levels.push(level);
        }
        let _ = stop.send(());
        runtime.block_on(server)??;
        let _ = std::fs::remove_dir_all(&dir);
    }
    if let Some(one) = levels.iter().find(|l| l.batching && l.clients == 1) {
        println!(
            "HTTP adds {:.3} ms to the batch-1 p50 ({:.3} ms over HTTP, {:.3} ms in process)",
            one.p50 - in_process.0,
            one.p50,
            in_process.0
        );
    }
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join("serve_load.png");
    let series: Vec<common::Series> = [
        (true, BLUE, "dynamic batching"),
        (false, RED, "no batching"),
    ]
    .into_iter()
    .map(|(batching, color, label)| {
        let mine: Vec<&Level> = levels.iter().filter(|l| l.batching == batching).collect();
        common::Series {
            label,
            color,
            points: vec![
                mine.iter()
                    .map(|l| (l.clients as f64, l.per_second))
                    .collect(),
                mine.iter().map(|l| (l.clients as f64, l.p99)).collect(),
            ],
        }
    })
    .collect();
    common::plot_against_load(
        &path,
        "concurrent clients",
        &[("throughput", "requests/s"), ("p99 latency", "ms")],
        &series,
    )?;
    println!("plot written to {}", path.display());
    Ok(())
}

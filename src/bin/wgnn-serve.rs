//! `wgnn-serve`: a model repository behind HTTP in the Open Inference Protocol (KServe v2 REST),
//! with Triton's generate extension for language models and Prometheus metrics at `/metrics`.
//!
//! ```sh
//! cargo run --release --features serve --bin wgnn-serve -- --model-repository models
//! ```
//!
//! Binds to 127.0.0.1:8000 unless `--bind` says otherwise; SIGTERM or Ctrl-C stops accepting,
//! lets the requests in flight finish, and exits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wgnn::serve::{ServerOptions, ServerState};

struct Args {
    repository: PathBuf,
    bind: String,
    options: ServerOptions,
}

fn usage() -> ! {
    eprintln!(
        "wgnn-serve --model-repository DIR [--bind ADDR:PORT] [--max-body-bytes N] \
         [--request-timeout-ms N]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut repository = None;
    let mut bind = "127.0.0.1:8000".to_string();
    let mut options = ServerOptions::default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--model-repository" => repository = Some(PathBuf::from(value())),
            "--bind" => bind = value(),
            "--max-body-bytes" => {
                options.max_body_bytes = value().parse().unwrap_or_else(|_| usage())
            }
            "--request-timeout-ms" => {
                let ms: u64 = value().parse().unwrap_or_else(|_| usage());
                options.request_timeout = Duration::from_millis(ms);
            }
            "-h" | "--help" => usage(),
            other => {
                eprintln!("unknown argument {other:?}");
                usage()
            }
        }
    }
    let Some(repository) = repository else {
        usage()
    };
    Args {
        repository,
        bind,
        options,
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("wgnn-serve: shutting down (draining requests in flight)");
}

fn main() {
    let args = parse_args();
    let gpu = match wgnn::Gpu::new() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("wgnn-serve: {e}");
            std::process::exit(1);
        }
    };
    let state = match ServerState::load(&gpu, &args.repository, args.options) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("wgnn-serve: {}: {e}", args.repository.display());
            std::process::exit(1);
        }
    };
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| {
        eprintln!("wgnn-serve: tokio: {e}");
        std::process::exit(1);
    });
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.bind).await?;
        eprintln!(
            "wgnn-serve: {:?} on http://{}",
            state,
            listener.local_addr()?
        );
        wgnn::serve::serve(listener, state, shutdown_signal()).await
    });
    if let Err(e) = result {
        eprintln!("wgnn-serve: {e}");
        std::process::exit(1);
    }
}

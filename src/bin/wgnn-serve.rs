//! `wgnn-serve`: a model repository behind HTTP in the Open Inference Protocol (KServe v2 REST)
//! with its binary tensor extension, Triton's model configuration and generate extensions, and
//! Prometheus metrics at `/metrics`.
//!
//! ```sh
//! cargo run --release --features serve --bin wgnn-serve -- --model-repository models
//! ```
//!
//! Binds to 127.0.0.1:8000 unless `--bind` says otherwise; SIGTERM or Ctrl-C stops accepting,
//! answers every request of every accepted connection, and exits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wgnn::serve::{ServerOptions, ServerState};

struct Args {
    repository: PathBuf,
    bind: String,
    options: ServerOptions,
}

const USAGE: &str = "wgnn-serve --model-repository DIR [--bind ADDR:PORT] [--max-body-bytes N] \
[--request-timeout-ms N] [--header-timeout-ms N] [--body-timeout-ms N] [--idle-timeout-ms N] \
[--discard-after-refusal-bytes N]";

fn fail(message: &str) -> ! {
    eprintln!("wgnn-serve: {message}\nusage: {USAGE}");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut repository = None;
    let mut bind = "127.0.0.1:8000".to_string();
    let mut options = ServerOptions::default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| fail(&format!("{arg} needs a value")))
        };
        let mut number = |what: &str| -> u64 {
            let v = value();
            v.parse()
                .unwrap_or_else(|_| fail(&format!("{what} must be a whole number, got {v:?}")))
        };
        let ms = |n: u64| Duration::from_millis(n);
        match arg.as_str() {
            "--model-repository" => repository = Some(PathBuf::from(value())),
            "--bind" => bind = value(),
            "--max-body-bytes" => {
                options.max_body_bytes = usize::try_from(number("--max-body-bytes"))
                    .unwrap_or_else(|_| fail("--max-body-bytes is too large"))
            }
            "--discard-after-refusal-bytes" => {
                options.discard_after_refusal_bytes =
                    usize::try_from(number("--discard-after-refusal-bytes"))
                        .unwrap_or_else(|_| fail("--discard-after-refusal-bytes is too large"))
            }
            "--request-timeout-ms" => options.request_timeout = ms(number(&arg)),
            "--header-timeout-ms" => options.header_timeout = ms(number(&arg)),
            "--body-timeout-ms" => options.body_timeout = ms(number(&arg)),
            "--idle-timeout-ms" => options.idle_timeout = ms(number(&arg)),
            "-h" | "--help" => {
                println!("usage: {USAGE}");
                std::process::exit(0)
            }
            other => fail(&format!("unknown argument {other:?}")),
        }
    }
    let Some(repository) = repository else {
        fail("--model-repository is needed")
    };
    if let Err(e) = options.validate() {
        fail(&e.to_string())
    }
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
    eprintln!("wgnn-serve: shutting down (answering every accepted request)");
}

fn main() {
    // Mesa's device-select layer prints an error where there is no Wayland display; wgnn picks
    // its adapter itself. Set before any thread starts (the library never changes the
    // environment).
    if std::env::var_os("WAYLAND_DISPLAY").is_none()
        && std::env::var_os("NODEVICE_SELECT").is_none()
    {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
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
    for line in state.describe() {
        eprintln!("wgnn-serve: {line}");
    }
    if state.is_empty() {
        eprintln!(
            "wgnn-serve: warning: {} holds no model directory (<name>/<version>/model.safetensors): \
             nothing is served and /v2/health/ready answers 503",
            args.repository.display()
        );
    }
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| {
        eprintln!("wgnn-serve: tokio: {e}");
        std::process::exit(1);
    });
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.bind).await?;
        eprintln!(
            "wgnn-serve: listening on http://{} ({} on {})",
            listener.local_addr()?,
            gpu.adapter_info().name,
            format!("{:?}", gpu.adapter_info().backend).to_lowercase()
        );
        wgnn::serve::serve(listener, state, shutdown_signal()).await
    });
    if let Err(e) = result {
        eprintln!("wgnn-serve: {e}");
        std::process::exit(1);
    }
}

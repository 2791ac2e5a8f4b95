//! Serves the digits model that `train_digits` saved: replays the test set as a stream of
//! single-image requests from several threads at a chosen rate, through the dynamic batcher, for
//! each precision (f32, f16, int8 Linear weights) and batching setting, and prints a latency/throughput table; writes a PNG plot of
//! latency against throughput.
//!
//! Run: `cargo run --release --example train_digits` first, then
//! `cargo run --release --example serve_digits [-- --mlp] [--model PATH] [--threads N]
//! [--rate REQUESTS_PER_S] [--repeat N] [--out DIR]`

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use wgnn::data::Digits;
use wgnn::infer::{Batcher, BatcherConfig, Head, InferenceSession, Precision, SessionOptions};
use wgnn::nn::SavedModel;
use wgnn::Gpu;

struct Args {
    model: PathBuf,
    threads: usize,
    rate: Option<f64>,
    repeat: usize,
    out: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        model: PathBuf::from("target/train_digits/digits_cnn.safetensors"),
        threads: 4,
        rate: None,
        repeat: 3,
        out: PathBuf::from("target/serve_digits"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--mlp" => args.model = PathBuf::from("target/train_digits/digits_mlp.safetensors"),
            "--model" => args.model = PathBuf::from(value()?),
            "--threads" => args.threads = value()?.parse()?,
            "--rate" => args.rate = Some(value()?.parse()?),
            "--repeat" => args.repeat = value()?.parse()?,
            "--out" => args.out = PathBuf::from(value()?),
            "-h" | "--help" => {
                println!("serve_digits [--mlp] [--model PATH] [--threads N] [--rate R] [--repeat N] [--out DIR]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if args.threads == 0 || args.repeat == 0 {
        bail!("--threads and --repeat must be positive");
    }
    Ok(args)
}

struct Row {
    precision: Precision,
    setting: String,
    model_bytes: usize,
    accuracy: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    throughput: f64,
    mean_batch: f64,
}

fn main() -> Result<()> {
    common::quiet_vulkan_layers();
    let args = parse_args()?;
    if !args.model.exists() {
        bail!(
            "no model at {}: train one first with `cargo run --release --example train_digits` \
             (add `-- --mlp` for the MLP), or pass --model PATH",
            args.model.display()
        );
    }
    let gpu = Gpu::new()?;
    let saved = SavedModel::read(&args.model)?;
    println!(
        "adapter: {}; model {} ({} layers)",
        gpu.adapter_info().name,
        args.model.display(),
        saved.layers.len()
    );
    let (_, test) = Digits::load()?.split(0.2, 42);
    let per = Digits::PIXELS;
    let settings = [
        ("no batching", 1usize, Duration::ZERO),
        ("batch ≤ 16, wait ≤ 1 ms", 16, Duration::from_millis(1)),
        ("batch ≤ 64, wait ≤ 4 ms", 64, Duration::from_millis(4)),
    ];
    let mut rows = Vec::new();
    for precision in [Precision::F32, Precision::F16, Precision::Int8] {
        if precision == Precision::F16 && !gpu.supports_f16() {
            println!("(the adapter has no SHADER_F16: f16 skipped)");
            continue;
        }
        let options = SessionOptions {
            max_batch: 64,
            precision,
            head: Head::Classifier { top_k: 3 },
            ..SessionOptions::default()
        };
        let session = Arc::new(InferenceSession::new(
            saved.clone().into_model(&gpu)?,
            options,
        )?);
        for (name, max_batch, max_wait) in settings {
            let config = BatcherConfig {
                max_batch,
                max_wait,
                queue_capacity: 4096,
                ..BatcherConfig::default()
            };
            let batcher = Arc::new(Batcher::new(session.clone(), config)?);
            let correct = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let start = Instant::now();
            let workers: Vec<_> = (0..args.threads)
                .map(|t| {
                    let (batcher, correct, test) = (batcher.clone(), correct.clone(), test.clone());
                    let (threads, repeat, rate) = (args.threads, args.repeat, args.rate);
                    std::thread::spawn(move || -> wgnn::Result<()> {
                        let begun = Instant::now();
                        let mut sent = 0usize;
                        for _ in 0..repeat {
                            for i in (t..test.len()).step_by(threads) {
                                if let Some(rate) = rate {
                                    // Open loop at rate / threads requests per second per thread.
                                    let due = Duration::from_secs_f64(
                                        sent as f64 * threads as f64 / rate,
                                    );
                                    if let Some(wait) = due.checked_sub(begun.elapsed()) {
                                        std::thread::sleep(wait);
                                    }
                                }
                                let p = batcher.predict(&test.images[i * per..(i + 1) * per])?;
                                if p.class == Some(test.labels[i]) {
                                    correct.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                                sent += 1;
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            for w in workers {
                w.join()
                    .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
            }
            let elapsed = start.elapsed().as_secs_f64();
            let stats = batcher.shutdown();
            let batches: u64 = stats.batch_sizes.values().sum();
            rows.push(Row {
                precision,
                setting: name.to_string(),
                model_bytes: session.model_bytes(),
                accuracy: correct.load(std::sync::atomic::Ordering::Relaxed) as f64
                    / (test.len() * args.repeat) as f64,
                p50: stats.latency_ms.0,
                p95: stats.latency_ms.1,
                p99: stats.latency_ms.2,
                throughput: stats.requests as f64 / elapsed,
                mean_batch: stats.requests as f64 / batches.max(1) as f64,
            });
        }
    }
    println!(
        "{} requests per setting from {} threads{}",
        test.len() * args.repeat,
        args.threads,
        args.rate
            .map_or(String::from(", as fast as they are answered"), |r| format!(
                " at {r} requests/s"
            ))
    );
    println!("| precision | batching | weights | accuracy | p50 ms | p95 ms | p99 ms | requests/s | mean batch |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {:?} | {} | {} B | {:.2}% | {:.3} | {:.3} | {:.3} | {:.0} | {:.1} |",
            r.precision,
            r.setting,
            r.model_bytes,
            100.0 * r.accuracy,
            r.p50,
            r.p95,
            r.p99,
            r.throughput,
            r.mean_batch
        );
    }
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join("latency_vs_throughput.png");
    plot(&path, &rows)?;
    println!("plot written to {}", path.display());
    Ok(())
}

/// Latency against throughput: one colour per row, a hue per precision (F32 blue, F16 green,
/// Int8 red) and a shade per batching setting; filled circle p50, ring p99, joined by a line. The
/// legend is drawn beside the chart, never over its points.
fn plot(path: &std::path::Path, rows: &[Row]) -> Result<()> {
    static FONT: &[u8] = include_bytes!("assets/DejaVuSans.ttf");
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("the bundled font does not load"))?;
    let root = BitMapBackend::new(path, (1150, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let (chart_area, legend_area) = root.split_horizontally(800);
    let max_x = rows.iter().map(|r| r.throughput).fold(1.0, f64::max) * 1.1;
    let max_y = rows.iter().map(|r| r.p99).fold(0.01, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&chart_area)
        .caption(
            "serve_digits: latency against throughput",
            ("sans-serif", 22),
        )
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)?;
    chart
        .configure_mesh()
        .x_desc("requests per second")
        .y_desc("latency (ms)")
        .draw()?;
    let mut settings: Vec<&str> = Vec::new();
    for r in rows {
        if !settings.contains(&r.setting.as_str()) {
            settings.push(&r.setting);
        }
    }
    // Per precision: a base, light and dark shade of its hue, one per batching setting.
    let colour = |r: &Row| {
        let shade = settings.iter().position(|s| *s == r.setting).unwrap_or(0) % 3;
        let palette = match r.precision {
            Precision::F32 => [(20, 60, 230), (120, 160, 255), (10, 20, 120)],
            Precision::F16 => [(0, 170, 0), (120, 220, 120), (0, 90, 0)],
            Precision::Int8 => [(220, 20, 20), (255, 140, 140), (120, 0, 0)],
        };
        let (red, green, blue) = palette[shade];
        RGBColor(red, green, blue)
    };
    for r in rows {
        let c = colour(r);
        chart.draw_series(LineSeries::new(
            [(r.throughput, r.p50), (r.throughput, r.p99)],
            c,
        ))?;
        chart.draw_series([
            Circle::new((r.throughput, r.p50), 6, c.filled()),
            Circle::new((r.throughput, r.p99), 6, c.stroke_width(2)),
        ])?;
    }
    let legend = legend_area.margin(50, 10, 10, 10);
    let text = |s: String, y: i32| Text::new(s, (26, y), ("sans-serif", 15));
    legend.draw(&Text::new(
        "filled: p50, ring: p99",
        (0, 0),
        ("sans-serif", 15),
    ))?;
    for (i, r) in rows.iter().enumerate() {
        let y = 30 + 26 * i as i32;
        legend.draw(&Circle::new((10, y + 8), 6, colour(r).filled()))?;
        legend.draw(&text(format!("{:?}, {}", r.precision, r.setting), y))?;
    }
    root.present()?;
    Ok(())
}

//! Where a training step and a prediction spend their time: every dispatch's GPU time (timestamp
//! queries, one pass per dispatch) and the host's phases, for the benches' MLP and CNN at the
//! batches of the burn comparison (issue 17).
//!
//! `cargo run --release --example profile [-- --model mlp|cnn] [--runs N]`
//!
//! Training: `record` is the host time to record a step (upload, forward, loss, backward, SGD),
//! `submit` the time to hand it to the driver, `wait` the time until the GPU is done. Prediction:
//! `predict` is the wall clock of `InferenceSession::predict` (write, replay, readback), `gpu span`
//! the GPU time from its first dispatch to its last. Figures are medians of `--runs` (default 10)
//! after three untimed calls; each dispatch's time is its median over the profiled runs.

mod common;

use std::time::{Duration, Instant};

use wgnn::infer::{InferenceSession, SessionOptions};
use wgnn::nn::{Init, LayerSpec, Optimizer, Sequential, Trainer};
use wgnn::ops::SgdConfig;
use wgnn::{Batch, DispatchProfile, DispatchTime, Gpu, GpuTimer};

/// The benches' models and data (`benches/common`): one definition for the benches, this example
/// and the burn peer.
#[path = "../benches/common/mod.rs"]
mod bench_common;

use bench_common::random;

/// The benches' models: input shape and layers.
fn model(name: &str) -> (Vec<usize>, Vec<LayerSpec>) {
    match name {
        "mlp" => (vec![64], bench_common::mlp()),
        _ => (vec![1, 8, 8], bench_common::cnn()),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Prints each dispatch's median time over `profiles` (same dispatches in each).
fn print_profile(profiles: &[DispatchProfile]) {
    let first = &profiles[0];
    let times: Vec<Duration> = (0..first.dispatches.len())
        .map(|i| median(profiles.iter().map(|p| p.dispatches[i].time).collect()))
        .collect();
    let total: Duration = times.iter().sum();
    println!("| # | kernel::entry | constants | workgroups | GPU µs | share |");
    println!("|---|---|---|---|---|---|");
    for (i, (d, t)) in first.dispatches.iter().zip(&times).enumerate() {
        let [x, y, z] = d.workgroups;
        let constants: Vec<String> = d
            .constants
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        println!(
            "| {i} | {}::{} | {} | {x}×{y}×{z} | {:.1} | {:.1}% |",
            d.kernel,
            d.entry,
            constants.join(" "),
            us(*t),
            100.0 * t.as_secs_f64() / total.as_secs_f64()
        );
    }
    let span = median(profiles.iter().map(|p| p.span).collect());
    println!(
        "| | {} dispatches | | | {:.1} (span {:.1}) | |",
        times.len(),
        us(total),
        us(span)
    );
    let medians = DispatchProfile {
        dispatches: first
            .dispatches
            .iter()
            .zip(&times)
            .map(|(d, &time)| DispatchTime { time, ..d.clone() })
            .collect(),
        span,
    };
    println!("\nBy entry point: {}", {
        let parts: Vec<String> = medians
            .by_entry()
            .iter()
            .map(|(entry, n, t)| format!("{entry} ×{n} {:.0} µs", us(*t)))
            .collect();
        parts.join(", ")
    });
}

fn train_case(gpu: &Gpu, name: &str, rows: usize, runs: usize) -> anyhow::Result<()> {
    let (input, specs) = model(name);
    let model = Sequential::new(gpu, &input, specs, Init::KaimingUniform { seed: 1 })?;
    let sgd = SgdConfig {
        momentum: 0.9,
        ..SgdConfig::new(0.01)
    };
    let mut trainer = Trainer::new(model, Optimizer::sgd(sgd));
    let x = random(rows * 64, 7, 1.0);
    let labels: Vec<u32> = (0..rows as u32).map(|i| i % 10).collect();
    let (mut record, mut submit, mut wait) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs + 3 {
        let start = Instant::now();
        let mut batch = Batch::new(gpu);
        trainer.record_step(&mut batch, &[(&x, &labels)])?;
        let recorded = Instant::now();
        batch.submit()?;
        let submitted = Instant::now();
        gpu.wait()?;
        let done = Instant::now();
        if run >= 3 {
            record.push(recorded - start);
            submit.push(submitted - recorded);
            wait.push(done - submitted);
        }
    }
    println!("\n### train {name}, batch {rows}\n");
    let (r, s, w) = (median(record), median(submit), median(wait));
    println!(
        "host: record {:.0} µs, submit {:.0} µs, wait {:.0} µs (total {:.0} µs)\n",
        us(r),
        us(s),
        us(w),
        us(r + s + w)
    );
    let mut timer = GpuTimer::new(gpu);
    let profiles = (0..runs)
        .map(|_| timer.profile(|batch| trainer.record_step(batch, &[(&x, &labels)])))
        .collect::<wgnn::Result<Vec<_>>>()?;
    print_profile(&profiles);
    Ok(())
}

fn predict_case(gpu: &Gpu, name: &str, rows: usize, runs: usize) -> anyhow::Result<()> {
    let (input, specs) = model(name);
    let model = Sequential::new(gpu, &input, specs, Init::KaimingUniform { seed: 1 })?;
    let session = InferenceSession::new(
        model,
        SessionOptions {
            max_batch: 64,
            ..Default::default()
        },
    )?;
    let x = random(rows * 64, 7, 1.0);
    let mut walls = Vec::new();
    for run in 0..runs + 3 {
        let start = Instant::now();
        session.predict(&x)?;
        if run >= 3 {
            walls.push(start.elapsed());
        }
    }
    let profiles = (0..runs)
        .map(|_| session.profile(&x))
        .collect::<wgnn::Result<Vec<_>>>()?;
    let span = median(profiles.iter().map(|p| p.span).collect());
    println!("\n### predict {name} f32, batch {rows}\n");
    println!(
        "predict {:.0} µs wall, GPU span {:.0} µs\n",
        us(median(walls)),
        us(span)
    );
    print_profile(&profiles);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    common::quiet_vulkan_layers();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let runs: usize = flag("--runs").map_or(Ok(10), |r| r.parse())?;
    anyhow::ensure!((1..=1000).contains(&runs), "--runs is 1 to 1000");
    let only = flag("--model");
    let models: Vec<&str> = match only.as_deref() {
        None => vec!["mlp", "cnn"],
        Some(m @ ("mlp" | "cnn")) => vec![m],
        Some(other) => anyhow::bail!("--model is mlp or cnn, not {other}"),
    };
    let gpu = Gpu::new()?;
    anyhow::ensure!(
        gpu.supports_timestamps(),
        "this adapter has no timestamp queries: the profile needs them"
    );
    let info = gpu.adapter_info();
    println!("# wgnn profile on {} ({:?})", info.name, info.backend);
    for name in &models {
        for rows in [64, 256] {
            train_case(&gpu, name, rows, runs)?;
        }
    }
    for name in &models {
        for rows in [1, 64] {
            predict_case(&gpu, name, rows, runs)?;
        }
    }
    Ok(())
}

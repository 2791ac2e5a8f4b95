//! Tunes wgnn's kernels for this adapter ahead of time, so that the first real call does not pay for
//! it, and prints what each candidate took and which was kept.
//!
//! Run: `cargo run --release --example tune` (all classes below), or name what to tune:
//! `... --example tune -- 1024x1024x1024 1000x1000x1000` (matmul M×N×K), `matmul` or `conv` (that
//! op's classes below). Ahead of time the budget is `TuningBudget::thorough()` (every candidate
//! of most classes), not the first call's default. The choices are written to the cache file
//! printed at the end and read by every later process on this adapter. `--retune` times classes
//! already in the file again (after the machine was busy during a tuning, say). With
//! `WGNN_TUNE=session` nothing is read or written (a fresh tuning every run, for experiments).
//!
//! `--first-call MxNxK` measures what tuning costs a user: the first f32 matmul of that shape
//! (compile included) with tuning off, then in a fresh context with tuning on and the default
//! budget, and a second call of each.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use wgnn::ops::{self, Conv2dParams};
use wgnn::tune::{Tuning, TuningBudget};
use wgnn::{Activation, Batch, DType, Gpu, GpuOptions, Tensor};

fn random(len: usize, seed: u32) -> Vec<f32> {
    // A cheap deterministic generator; timing only needs non-zero, non-constant data.
    (0..len)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
            x as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

fn matmul(gpu: &Gpu, m: usize, n: usize, k: usize, dtype: DType) -> Result<()> {
    let a = Tensor::from_f32(gpu, &random(m * k, 1), &[m, k], dtype)?;
    let b = Tensor::from_f32(gpu, &random(k * n, 2), &[k, n], dtype)?;
    let mut batch = Batch::new(gpu);
    ops::matmul(&mut batch, &a, &b, &Default::default())?;
    batch.submit_and_wait()?;
    Ok(())
}

fn conv(gpu: &Gpu, x: [usize; 4], k: usize, r: usize, pad: usize, groups: usize) -> Result<()> {
    let [n, c, h, w] = x;
    let xs = Tensor::from_f32(gpu, &random(n * c * h * w, 3), &x, DType::F32)?;
    let ws = Tensor::from_f32(
        gpu,
        &random(k * (c / groups) * r * r, 4),
        &[k, c / groups, r, r],
        DType::F32,
    )?;
    let params = Conv2dParams {
        padding: (pad, pad),
        groups,
        ..Default::default()
    };
    let mut batch = Batch::new(gpu);
    ops::conv2d(&mut batch, &xs, &ws, None, &params, Activation::None)?;
    batch.submit_and_wait()?;
    Ok(())
}

fn parse_shape(s: &str) -> Result<(usize, usize, usize)> {
    let dims: Vec<usize> = s.split('x').filter_map(|d| d.parse().ok()).collect();
    match dims[..] {
        [m, n, k] => Ok((m, n, k)),
        _ => bail!("shapes are M x N x K, like 1024x1024x1024; got {s:?}"),
    }
}

/// The first and second call of an f32 matmul of `shape` in a fresh context with `tuning`.
fn first_and_second_call(
    tuning: Tuning,
    shape: (usize, usize, usize),
) -> Result<(Duration, Duration, Gpu)> {
    let gpu = Gpu::with_options(GpuOptions {
        tuning,
        ..GpuOptions::from_env()
    })?;
    let (m, n, k) = shape;
    let a = Tensor::from_f32(&gpu, &random(m * k, 1), &[m, k], DType::F32)?;
    let b = Tensor::from_f32(&gpu, &random(k * n, 2), &[k, n], DType::F32)?;
    let mut calls = [Duration::ZERO; 2];
    for call in &mut calls {
        let start = Instant::now();
        let mut batch = Batch::new(&gpu);
        ops::matmul(&mut batch, &a, &b, &Default::default())?;
        batch.submit_and_wait()?;
        *call = start.elapsed();
    }
    Ok((calls[0], calls[1], gpu))
}

fn first_call(shape: &str) -> Result<()> {
    let shape = parse_shape(shape)?;
    let (off_first, off_second, gpu) = first_and_second_call(Tuning::Off, shape)?;
    println!(
        "{shape:?} on {}: tuning off: first call {:.2} s, second {:.2} s",
        gpu.adapter_info().name,
        off_first.as_secs_f64(),
        off_second.as_secs_f64()
    );
    drop(gpu);
    let (on_first, on_second, gpu) = first_and_second_call(Tuning::Session, shape)?;
    println!(
        "tuning on (default budget): first call {:.2} s ({:.2}x the untuned first call), \
         second {:.2} s",
        on_first.as_secs_f64(),
        on_first.as_secs_f64() / off_first.as_secs_f64(),
        on_second.as_secs_f64()
    );
    print_records(&gpu);
    Ok(())
}

fn print_records(gpu: &Gpu) {
    for record in gpu.tuning_records() {
        let times: Vec<String> = record
            .times
            .iter()
            .map(|(c, t)| format!("{c} {:.3} ms", t.as_secs_f64() * 1e3))
            .collect();
        println!(
            "{:<48} -> {:<11} [{}] in {:.2} s of a {:.2} s budget{}",
            format!("{}/{}", record.op, record.class),
            record.chosen,
            times.join(", "),
            record.took.as_secs_f64(),
            record.budget.as_secs_f64(),
            if record.skipped.is_empty() {
                String::new()
            } else {
                format!("; not tried: {}", record.skipped.join(", "))
            }
        );
    }
}

fn main() -> Result<()> {
    common::quiet_vulkan_layers();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--first-call") {
        let Some(shape) = args.get(i + 1) else {
            bail!("--first-call takes a shape, like 4097x4095x4099");
        };
        return first_call(shape);
    }
    let from_env = GpuOptions::from_env();
    let retune = args.iter().any(|a| a == "--retune");
    let gpu = Gpu::with_options(GpuOptions {
        tuning: if retune && from_env.tuning == Tuning::Auto {
            Tuning::Retune
        } else {
            from_env.tuning
        },
        tuning_budget: TuningBudget::thorough(),
        ..from_env
    })?;
    let info = gpu.adapter_info();
    println!(
        "tuning on {} ({:?}, {})",
        info.name, info.backend, info.driver_info
    );
    if gpu.tuning() == Tuning::Off {
        bail!("WGNN_TUNE=off: nothing to tune (unset it, or set WGNN_TUNE=session)");
    }
    let software = info.device_type == wgnn::wgpu::DeviceType::Cpu;
    let named: Vec<String> = args.into_iter().filter(|a| a != "--retune").collect();
    let shapes: Vec<&String> = named.iter().filter(|a| a.contains('x')).collect();
    let op = |name: &str| named.is_empty() || named.iter().any(|a| a == name);
    for s in &shapes {
        let (m, n, k) = parse_shape(s)?;
        matmul(&gpu, m, n, k, DType::F32)?;
    }
    if op("matmul") {
        let big = if software { 1024 } else { 4096 };
        let mut dtypes = vec![DType::F32];
        if gpu.supports_f16() {
            dtypes.push(DType::F16);
        }
        for &dtype in &dtypes {
            let mut s = 256;
            while s <= big {
                matmul(&gpu, s, s, s, dtype)?;
                s *= 2;
            }
            for m in [1, 8, 64] {
                matmul(&gpu, m, big, big, dtype)?;
            }
        }
    }
    if op("conv") {
        // The digits models' layers (examples/train_digits.rs, serve_digits.rs).
        for batch in [1, 64, 256] {
            conv(&gpu, [batch, 1, 28, 28], 32, 3, 1, 1)?;
            conv(&gpu, [batch, 8, 8, 8], 16, 3, 1, 1)?;
            matmul(&gpu, batch, 10, 64, DType::F32)?;
        }
        conv(&gpu, [64, 32, 16, 16], 32, 3, 1, 32)?; // depthwise
    }
    print_records(&gpu);
    match gpu.tuning_cache_file() {
        Some(path) => println!("choices kept in {}", path.display()),
        None => println!("choices not kept (WGNN_TUNE=session)"),
    }
    Ok(())
}

//! Tunes wgnn's kernels for this adapter ahead of time, so that the first real call does not pay for
//! it, and prints what each candidate took and which was kept.
//!
//! Run: `cargo run --release --example tune` (all classes below), or name what to tune:
//! `... --example tune -- 1024x1024x1024 1000x1000x1000` (matmul M×N×K), `matmul` or `conv` (that
//! op's classes below). The choices are written to
//! the cache file printed at the end and read by every later process on this adapter. With
//! `WGNN_TUNE=session` nothing is read or written (a fresh tuning every run, for experiments).

use anyhow::{bail, Result};
use wgnn::ops::{self, Conv2dParams};
use wgnn::tune::Tuning;
use wgnn::{Activation, Batch, DType, Gpu, Tensor};

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
    ops::matmul(&mut batch, &a, &b)?;
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

fn main() -> Result<()> {
    let gpu = Gpu::new()?;
    let info = gpu.adapter_info();
    println!(
        "tuning on {} ({:?}, {})",
        info.name, info.backend, info.driver_info
    );
    if gpu.tuning() == Tuning::Off {
        bail!("WGNN_TUNE=off: nothing to tune (unset it, or set WGNN_TUNE=session)");
    }
    let software = info.device_type == wgnn::wgpu::DeviceType::Cpu;
    let named: Vec<String> = std::env::args().skip(1).collect();
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
    for record in gpu.tuning_records() {
        let times: Vec<String> = record
            .times
            .iter()
            .map(|(c, t)| format!("{c} {:.3} ms", t.as_secs_f64() * 1e3))
            .collect();
        println!(
            "{:<48} -> {:<11} [{}]",
            record.key.0,
            record.chosen,
            times.join(", ")
        );
    }
    match gpu.tuning_cache_file() {
        Some(path) => println!("choices kept in {}", path.display()),
        None => println!("choices not kept (WGNN_TUNE=session)"),
    }
    Ok(())
}

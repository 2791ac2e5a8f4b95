//! Quickstart: a fused linear layer (matmul + bias + ReLU) and its backward on the GPU, checked
//! against the CPU reference, then a timed 1024³ matmul.
//!
//! Run: `cargo run --release --example quickstart`

use anyhow::{ensure, Result};
use wgnn::reference::{self, Array};
use wgnn::{ops, Activation, Batch, DType, Gpu, GpuTimer, Tensor};

fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    // A small LCG keeps the example free of extra dependencies; values in [-1, 1).
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn main() -> Result<()> {
    let gpu = Gpu::new()?;
    let info = gpu.adapter_info();
    println!(
        "adapter: {} ({:?}, {:?})",
        info.name, info.backend, info.device_type
    );

    // A linear layer: y = relu(x · W + b), batch 200, 300 inputs, 100 outputs.
    let (batch_size, inputs, outputs) = (200, 300, 100);
    let x = pseudo_random(batch_size * inputs, 1);
    let w = pseudo_random(inputs * outputs, 2);
    let b = pseudo_random(outputs, 3);
    let gx = Tensor::from_slice(&gpu, &x, &[batch_size, inputs])?;
    let gw = Tensor::from_slice(&gpu, &w, &[inputs, outputs])?;
    let gb = Tensor::from_slice(&gpu, &b, &[outputs])?;

    let mut batch = Batch::new(&gpu);
    let options = ops::MatmulOptions {
        bias: Some(&gb),
        activation: Activation::Relu,
        ..Default::default()
    };
    let y = ops::matmul_with(&mut batch, &gx, &gw, &options)?;
    // Backward of the plain product for a given upstream gradient (here: y itself).
    let grads = ops::matmul_backward(&mut batch, &gx, &gw, &y, &Default::default())?;
    batch.submit()?;

    let (ax, aw) = (
        Array::new(&[batch_size, inputs], x),
        Array::new(&[inputs, outputs], w),
    );
    let want = reference::matmul(&ax, &aw, false, false, Some(&b), Activation::Relu);
    let got = y.to_vec::<f32>()?;
    let max_err = got
        .iter()
        .zip(&want.data)
        .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
        .fold(0.0f32, f32::max);
    println!(
        "linear layer {batch_size}x{inputs} -> {outputs}: max relative error vs CPU {max_err:.2e}"
    );
    ensure!(max_err < 1e-4, "GPU and CPU disagree");
    let (dx, dw) =
        reference::matmul_backward(&ax, &aw, &Array::new(&want.shape, got), false, false);
    for (name, gpu_grad, cpu_grad) in [("dX", &grads.a, &dx), ("dW", &grads.b, &dw)] {
        let g = gpu_grad.to_vec::<f32>()?;
        let err = g
            .iter()
            .zip(&cpu_grad.data)
            .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
            .fold(0.0f32, f32::max);
        println!(
            "backward {name} {:?}: max relative error vs CPU {err:.2e}",
            gpu_grad.shape()
        );
        ensure!(err < 1e-4, "GPU and CPU disagree on {name}");
    }

    // Timing: a 1024³ matmul, f32 and (where the adapter has it) f16 storage.
    let n = 1024;
    let mut timer = GpuTimer::new(&gpu);
    for dtype in [DType::F32, DType::F16] {
        if dtype == DType::F16 && !gpu.supports_f16() {
            continue;
        }
        let a = Tensor::from_f32(&gpu, &pseudo_random(n * n, 4), &[n, n], dtype)?;
        let b = Tensor::from_f32(&gpu, &pseudo_random(n * n, 5), &[n, n], dtype)?;
        let c = Tensor::uninit(&gpu, &[n, n], dtype)?;
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let t = timer.time(|batch| ops::matmul_into(batch, &a, &b, &Default::default(), &c))?;
            best = best.min(t.as_secs_f64());
        }
        let tflops = 2.0 * (n as f64).powi(3) / best / 1e12;
        println!(
            "matmul {n}³ {dtype:?}: {:.3} ms, {tflops:.3} TFLOP/s ({})",
            best * 1e3,
            if timer.uses_timestamps() {
                "GPU timestamps"
            } else {
                "host clock"
            }
        );
    }
    Ok(())
}

//! conv2d throughput, forward and backward (input + weight gradients), f32, NCHW, on ResNet-like
//! layers at batch 32 (64×56×56→64 3×3; 128×28×28→128 3×3; 256×14×14→256 3×3; 3×224×224→64 7×7
//! stride 2) and a small one (batch 256, 1×28×28→32 3×3). Throughput is FLOPs: 2·N·K·OH·OW·C·R·S
//! forward, twice that backward, so criterion's "elem/s" reads FLOP/s. GPU time from timestamps.
//!
//! `cargo bench --bench conv`. On a software (CPU) adapter the batches shrink (2 and 16) unless
//! WGNN_BENCH_FULL=1.

mod common;

use std::time::Duration;

use common::{full_size_set, random};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wgnn::ops::Conv2dParams;
use wgnn::{ops, Activation, Gpu, GpuTimer, Tensor};

/// A conv layer: square input and kernel.
struct Layer {
    name: &'static str,
    batch: usize,
    cin: usize,
    size: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
}

const LAYERS: &[Layer] = &[
    Layer {
        name: "64x56x56-64-3x3",
        batch: 32,
        cin: 64,
        size: 56,
        cout: 64,
        kernel: 3,
        stride: 1,
        pad: 1,
    },
    Layer {
        name: "128x28x28-128-3x3",
        batch: 32,
        cin: 128,
        size: 28,
        cout: 128,
        kernel: 3,
        stride: 1,
        pad: 1,
    },
    Layer {
        name: "256x14x14-256-3x3",
        batch: 32,
        cin: 256,
        size: 14,
        cout: 256,
        kernel: 3,
        stride: 1,
        pad: 1,
    },
    Layer {
        name: "3x224x224-64-7x7s2",
        batch: 32,
        cin: 3,
        size: 224,
        cout: 64,
        kernel: 7,
        stride: 2,
        pad: 3,
    },
    Layer {
        name: "1x28x28-32-3x3",
        batch: 256,
        cin: 1,
        size: 28,
        cout: 32,
        kernel: 3,
        stride: 1,
        pad: 1,
    },
];

fn bench(c: &mut Criterion) {
    let gpu = Gpu::new().expect("benchmarks need a GPU adapter");
    let full = full_size_set(&gpu);
    let mut timer = GpuTimer::new(&gpu);
    let mut group = c.benchmark_group("conv2d_f32");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for &Layer {
        name,
        batch: batch_size,
        cin,
        size,
        cout,
        kernel: k,
        stride,
        pad,
    } in LAYERS
    {
        let n = if full {
            batch_size
        } else {
            (batch_size / 16).max(2)
        };
        let x = Tensor::from_slice(
            &gpu,
            &random(n * cin * size * size, 1, 1.0),
            &[n, cin, size, size],
        )
        .unwrap();
        let w = Tensor::from_slice(
            &gpu,
            &random(cout * cin * k * k, 2, 0.1),
            &[cout, cin, k, k],
        )
        .unwrap();
        let p = Conv2dParams {
            stride: (stride, stride),
            padding: (pad, pad),
            ..Default::default()
        };
        let out_size = (size + 2 * pad - k) / stride + 1;
        let flops = 2 * n * cout * out_size * out_size * cin * k * k;
        let gy = Tensor::from_slice(
            &gpu,
            &random(n * cout * out_size * out_size, 3, 1.0),
            &[n, cout, out_size, out_size],
        )
        .unwrap();
        let id = format!("{name}/n{n}");
        group.throughput(Throughput::Elements(flops as u64));
        group.bench_function(BenchmarkId::new("forward", &id), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        timer
                            .time(|batch| {
                                ops::conv2d(batch, &x, &w, None, &p, Activation::None).map(drop)
                            })
                            .unwrap()
                    })
                    .sum()
            })
        });
        group.throughput(Throughput::Elements(2 * flops as u64));
        group.bench_function(BenchmarkId::new("backward", &id), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        timer
                            .time(|batch| {
                                ops::conv2d_backward(
                                    batch,
                                    &x,
                                    &w,
                                    &gy,
                                    &p,
                                    ops::BiasGradient::Skip,
                                )
                                .map(drop)
                            })
                            .unwrap()
                    })
                    .sum()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

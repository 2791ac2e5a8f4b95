//! softmax throughput, forward and backward, f32: rows×cols 4096×4096, 65536×1024, 1024×32768 and
//! 256×10. Throughput counts bytes read plus written once (forward: x in, y out; backward: y and dy
//! in, dx out), so criterion's B/s is effective bandwidth. GPU time from timestamp queries.
//!
//! `cargo bench --bench softmax`. On a software (CPU) adapter the shapes shrink unless
//! WGNN_BENCH_FULL=1.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
mod common;

use common::{full_size_set, random};
use wgnn::{ops, Gpu, GpuTimer, Tensor};

fn bench(c: &mut Criterion) {
    let gpu = Gpu::new().expect("benchmarks need a GPU adapter");
    let full = full_size_set(&gpu);
    let shapes: &[(usize, usize)] = if full {
        &[(4096, 4096), (65536, 1024), (1024, 32768), (256, 10)]
    } else {
        &[(256, 1024), (2048, 256), (16, 32768), (256, 10)]
    };
    let mut timer = GpuTimer::new(&gpu);
    let mut group = c.benchmark_group("softmax_f32");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for &(rows, cols) in shapes {
        let n = rows * cols;
        let x = Tensor::from_slice(&gpu, &random(n, 1, 8.0), &[rows, cols]).unwrap();
        let dy = Tensor::from_slice(&gpu, &random(n, 2, 8.0), &[rows, cols]).unwrap();
        let y = Tensor::uninit(&gpu, &[rows, cols], x.dtype()).unwrap();
        let name = format!("{rows}x{cols}");
        group.throughput(Throughput::Bytes((2 * n * 4) as u64));
        group.bench_function(BenchmarkId::new("forward", &name), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        timer
                            .time(|batch| {
                                ops::softmax_into(batch, &x, &y, ops::SoftmaxKind::Softmax)
                            })
                            .unwrap()
                    })
                    .sum()
            })
        });
        group.throughput(Throughput::Bytes((3 * n * 4) as u64));
        group.bench_function(BenchmarkId::new("backward", &name), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        timer
                            .time(|batch| ops::softmax_backward(batch, &y, &dy).map(drop))
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

//! matmul throughput: f32 and f16 storage, square 256..4096 and skinny shapes (M = 1 and 64 with
//! K = N = 4096). Criterion's throughput is FLOPs (2·M·N·K per product), so "elem/s" reads FLOP/s.
//! Each sample times GPU work only: timestamp queries where the adapter has them, else the host clock
//! around a submission that is waited for. Inputs are random, never zeros.
//!
//! `cargo bench --bench matmul`. On a software (CPU) adapter the sizes stop at 1024 and the skinny
//! shapes use K = N = 1024, unless WGNN_BENCH_FULL=1.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
mod common;

use common::{full_size_set, random};
use wgnn::{ops, DType, Gpu, GpuTimer, Tensor};

fn bench(c: &mut Criterion) {
    let gpu = Gpu::new().expect("benchmarks need a GPU adapter");
    let software = gpu.adapter_info().device_type == wgnn::wgpu::DeviceType::Cpu;
    let full = full_size_set(&gpu);
    let info = gpu.adapter_info();
    eprintln!(
        "matmul bench on {} ({:?}), full size set: {full}",
        info.name, info.backend
    );
    let (squares, wide): (&[usize], usize) = if full {
        (&[256, 512, 1024, 2048, 4096], 4096)
    } else {
        (&[256, 512, 1024], 1024)
    };
    let mut shapes: Vec<(String, usize, usize, usize)> = squares
        .iter()
        .map(|&s| (format!("{s}x{s}x{s}"), s, s, s))
        .collect();
    for m in [1, 64] {
        shapes.push((format!("{m}x{wide}x{wide}"), m, wide, wide));
    }
    if full {
        shapes.push(("4097x4095x4099".into(), 4097, 4095, 4099));
    }
    let mut timer = GpuTimer::new(&gpu);
    for dtype in [DType::F32, DType::F16] {
        if dtype == DType::F16 && !gpu.supports_f16() {
            eprintln!("adapter lacks SHADER_F16: no f16 figures");
            continue;
        }
        let mut group = c.benchmark_group(format!("matmul_{dtype:?}").to_lowercase());
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(if software { 3 } else { 2 }));
        for (name, m, n, k) in &shapes {
            let (m, n, k) = (*m, *n, *k);
            let a = Tensor::from_f32(&gpu, &random(m * k, 1, 1.0), &[m, k], dtype).unwrap();
            let b = Tensor::from_f32(&gpu, &random(k * n, 2, 1.0), &[k, n], dtype).unwrap();
            let out = Tensor::uninit(&gpu, &[m, n], dtype).unwrap();
            group.throughput(Throughput::Elements((2 * m * n * k) as u64));
            group.bench_function(BenchmarkId::from_parameter(name), |bench| {
                bench.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += timer
                            .time(|batch| {
                                ops::matmul_into(
                                    batch,
                                    &a,
                                    &b,
                                    &Default::default(),
                                    &out,
                                    ops::Write::Overwrite,
                                )
                            })
                            .unwrap();
                    }
                    total
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

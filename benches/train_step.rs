//! One training step (upload, forward, cross-entropy, backward, SGD with momentum: one
//! submission) for the MLP 64-256-256-10 and the CNN (conv 1→16 3×3 pad 1, ReLU, conv 16→32 3×3
//! pad 1, ReLU, flatten, linear 2048→10) on 8×8 inputs, batch 64, 256 and 4096.
//!
//! Three measures per case: `gpu` is the GPU time of a step (timestamp queries; criterion's thrpt is
//! samples/s), `host` is the CPU time to record and submit one step (not waiting for the GPU),
//! `record` the CPU time to record one without submitting it.
//!
//! `cargo bench --bench train_step`. On a software (CPU) adapter batch 4096 runs only with
//! WGNN_BENCH_FULL=1. PyTorch peer: `python3 benches/torch_train_step.py`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
mod common;

use common::{cnn, full_size_set, mlp, random};
use wgnn::nn::{Init, Optimizer, Sequential, Trainer};
use wgnn::ops::SgdConfig;
use wgnn::{Batch, Gpu, GpuTimer};

fn bench(c: &mut Criterion) {
    let gpu = Gpu::new().expect("benchmarks need a GPU adapter");
    let batches: &[usize] = if full_size_set(&gpu) {
        &[64, 256, 4096]
    } else {
        &[64, 256]
    };
    let mut timer = GpuTimer::new(&gpu);
    let mut group = c.benchmark_group("train_step");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for (name, specs, input) in [("mlp", mlp(), vec![64]), ("cnn", cnn(), vec![1, 8, 8])] {
        for &rows in batches {
            let model = Sequential::new(
                &gpu,
                &input,
                specs.clone(),
                Init::KaimingUniform { seed: 1 },
            )
            .expect("model");
            let sgd = SgdConfig {
                momentum: 0.9,
                ..SgdConfig::new(0.01)
            };
            let mut trainer = Trainer::new(model, Optimizer::sgd(sgd));
            let x = random(rows * 64, 1, 1.0);
            let labels: Vec<u32> = (0..rows as u32).map(|i| i % 10).collect();
            let id = format!("{name}/batch{rows}");
            group.throughput(Throughput::Elements(rows as u64));
            group.bench_function(BenchmarkId::new("gpu", &id), |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            timer
                                .time(|batch| trainer.record_step(batch, &[(&x, &labels)]))
                                .expect("step")
                        })
                        .sum()
                })
            });
            group.throughput(Throughput::Elements(1));
            group.bench_function(BenchmarkId::new("host", &id), |b| {
                b.iter_custom(|iters| {
                    let mut host = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        trainer.step(&x, &labels).expect("step");
                        host += start.elapsed();
                        gpu.wait().expect("wait");
                    }
                    host
                })
            });
            // Recording alone (no submission, so no driver work in the figure): the host cost of
            // the model's forward, loss, backward and update calls.
            group.bench_function(BenchmarkId::new("record", &id), |b| {
                b.iter(|| {
                    let mut batch = Batch::new(&gpu);
                    trainer
                        .record_step(&mut batch, &[(&x, &labels)])
                        .expect("step");
                })
            });
            assert!(trainer.mean_loss().expect("loss").is_finite());
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

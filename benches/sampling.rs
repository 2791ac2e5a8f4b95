//! Next-token sampling on the GPU (`ops::sample_tokens`): greedy against top-k 40 with top-p 0.9
//! at temperature 0.8, for 1 and 32 rows of a character vocabulary (80) and GPT-2's (50,257).
//! Work per row: greedy reads the row once; top-k with top-p reads it about 67 times (the
//! maximum, 32 bisection passes for each threshold, the total, the draw), each read an exp for
//! the top-p passes. Throughput is in rows. GPU time from timestamp queries.
//!
//! `cargo bench --bench sampling`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
mod common;

use common::random;
use wgnn::ops::{self, SamplingSettings};
use wgnn::{Gpu, GpuTimer, Tensor};

fn bench(c: &mut Criterion) {
    let gpu = Gpu::new().expect("benchmarks need a GPU adapter");
    let mut timer = GpuTimer::new(&gpu);
    let mut group = c.benchmark_group("sample_tokens_f32");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for vocab in [80usize, 50_257] {
        for rows in [1usize, 32] {
            let logits =
                Tensor::from_slice(&gpu, &random(rows * vocab, 3, 8.0), &[rows, vocab]).unwrap();
            group.throughput(Throughput::Elements(rows as u64));
            let nucleus: Vec<SamplingSettings> = (0..rows as u32)
                .map(|i| SamplingSettings {
                    temperature: 0.8,
                    top_k: 40,
                    top_p: 0.9,
                    seed: 7,
                    counter: i,
                })
                .collect();
            let greedy = vec![SamplingSettings::greedy(); rows];
            for (name, settings) in [("greedy", &greedy), ("top_k40_top_p0.9", &nucleus)] {
                let id = BenchmarkId::new(name, format!("{rows}x{vocab}"));
                group.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        (0..iters)
                            .map(|_| {
                                timer
                                    .time(|batch: &mut wgnn::Batch| {
                                        ops::sample_tokens(batch, &logits, settings).map(drop)
                                    })
                                    .unwrap()
                            })
                            .sum()
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Generation with the key/value cache: `train_shakespeare`'s model (vocab 80, context 64, 2 layers
//! of 64, 4 heads) with random weights.
//!
//! - `generate/decode_step/batch{n}`: one `Decoder::step` round trip for n sequences (write the
//!   rows, replay the captured step, sample on the GPU, read the token ids back); thrpt is
//!   tokens/s. Each sequence attends to 48 cached positions.
//! - `generate/prefill/{p}`: one prompt of p tokens through the fused attention into the cache,
//!   and its first token sampled.
//! - `generate/host/decode_plan/batch{n}` and `generate/host/raw_wgpu/{d}_dispatches_{kind}`: host
//!   time to encode and submit one replay of the captured step beside raw wgpu loops with prebuilt
//!   bind groups and the same number of dispatches (printed): each binding one storage buffer
//!   (`1_buffer`, the inference bench's loop), a uniform and four storage buffers (`5_buffers`),
//!   or five buffers with each dispatch reading what the one before wrote (`chained`: the
//!   read-after-write tracking a model's dependent dispatches cost wgpu).
//!
//! `cargo bench --bench generate`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
mod common;

use common::{host_time, RawLoop};
use wgnn::generate::{DecodeRow, Decoder, DecoderOptions};
use wgnn::nn::{GptConfig, LanguageModel};
use wgnn::ops::SamplingSettings;
use wgnn::{Activation, Gpu, Precision};

fn bench(c: &mut Criterion) {
    let gpu = Gpu::new().expect("benchmarks need a GPU adapter");
    let config = GptConfig {
        vocab: 80,
        context: 64,
        dim: 64,
        heads: 4,
        layers: 2,
        activation: Activation::Gelu,
        dropout: 0.0,
    };
    let lm = LanguageModel::new(&gpu, config, 1).expect("model");
    let mut group = c.benchmark_group("generate");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    let options = DecoderOptions {
        max_sequences: 32,
        precision: Precision::F32,
        ..Default::default()
    };
    let mut decoder = Decoder::new(&lm, options).expect("decoder");
    let prompt: Vec<u32> = (0..48).map(|i| (i * 7 % 80) as u32).collect();
    let settings = [SamplingSettings::greedy()];
    for slot in 0..32 {
        decoder
            .prefill_and_sample(&[(slot, &prompt[..])], &settings)
            .expect("prefill");
    }
    for rows in [1usize, 8, 32] {
        let batch: Vec<DecodeRow> = (0..rows)
            .map(|slot| DecodeRow {
                slot,
                position: 48,
                token: (slot % 80) as u32,
            })
            .collect();
        let settings = vec![SamplingSettings::greedy(); rows];
        decoder.step(&batch, &settings).expect("warm-up");
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_function(
            BenchmarkId::new("decode_step", format!("batch{rows}")),
            |b| b.iter(|| decoder.step(&batch, &settings).expect("step")),
        );
    }
    for p in [16usize, 48] {
        group.throughput(Throughput::Elements(p as u64));
        group.bench_function(BenchmarkId::new("prefill", p), |b| {
            b.iter(|| {
                decoder
                    .prefill_and_sample(&[(0, &prompt[..p])], &settings)
                    .expect("prefill")
            })
        });
    }
    let mut raw_counts = Vec::new();
    for rows in [1usize, 32] {
        let plan = decoder.captured_step(rows).expect("plan");
        let n = plan.dispatches();
        println!("decode step for {rows} rows: {n} dispatches");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(
            BenchmarkId::new("host", format!("decode_plan/batch{rows}")),
            |b| b.iter_custom(|iters| host_time(&gpu, iters, &|e| plan.encode(e))),
        );
        if raw_counts.contains(&n) {
            continue;
        }
        raw_counts.push(n);
        // One buffer per dispatch (the inference bench's loop), and a uniform and four storage
        // buffers per dispatch (about what the step's kernels bind).
        let loops = [
            ("1_buffer", RawLoop::with_bindings(&gpu, n, 1)),
            ("5_buffers", RawLoop::with_bindings(&gpu, n, 4)),
            ("chained", RawLoop::chained(&gpu, n)),
        ];
        for (name, raw) in &loops {
            group.bench_function(
                BenchmarkId::new("host", format!("raw_wgpu/{n}_dispatches_{name}")),
                |b| b.iter_custom(|iters| host_time(&gpu, iters, &|e| raw.encode(e))),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

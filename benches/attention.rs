//! Causal multi-head attention, forward and forward + backward, fused against the naive path
//! (scores materialised through matmul and softmax) in the same run, f32. Sizes: batch 1, 4 heads of
//! 64, T = 256 and 1,024 (2,048 and 4,096 too with WGNN_BENCH_FULL=1 or on a hardware adapter).
//! Throughput is in tokens; the work is 4·T²·H·D FLOPs forward with the causal half skipped (the
//! fused kernel skips it; the naive path computes and masks it), 2.5× that for the backward.
//! GPU time from timestamp queries.
//!
//! `cargo bench --bench attention`; the PyTorch peer is `benches/torch_attention.py`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
mod common;

use common::{full_size_set, random};
use wgnn::ops::{self, AttentionOptions};
use wgnn::{Gpu, GpuTimer, Tensor};

const HEADS: usize = 4;
const HEAD_DIM: usize = 64;

fn bench(c: &mut Criterion) {
    let gpu = Gpu::new().expect("benchmarks need a GPU adapter");
    let lengths: &[usize] = if full_size_set(&gpu) {
        &[256, 1024, 2048, 4096]
    } else {
        &[256, 1024]
    };
    let mut timer = GpuTimer::new(&gpu);
    let mut group = c.benchmark_group("attention_causal_f32");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    let options = AttentionOptions {
        heads: HEADS,
        causal: true,
        ..Default::default()
    };
    for &t in lengths {
        let width = HEADS * HEAD_DIM;
        let qkv =
            Tensor::from_slice(&gpu, &random(t * 3 * width, 1, 1.0), &[1, t, 3 * width]).unwrap();
        let dout = Tensor::from_slice(&gpu, &random(t * width, 2, 1.0), &[1, t, width]).unwrap();
        group.throughput(Throughput::Elements(t as u64));
        let mut time =
            |name: &str, record: &mut dyn FnMut(&mut wgnn::Batch) -> wgnn::Result<()>| {
                group.bench_function(BenchmarkId::new(name, t), |b| {
                    b.iter_custom(|iters| {
                        (0..iters).map(|_| timer.time(&mut *record).unwrap()).sum()
                    })
                });
            };
        time("fused_forward", &mut |batch| {
            ops::attention(batch, &qkv, &options).map(drop)
        });
        time("naive_forward", &mut |batch| {
            ops::attention_naive(batch, &qkv, &options).map(drop)
        });
        time("fused_forward_backward", &mut |batch| {
            let f = ops::attention(batch, &qkv, &options)?;
            ops::attention_backward(batch, &qkv, &f, &dout, &options).map(drop)
        });
        time("naive_forward_backward", &mut |batch| {
            ops::attention_naive(batch, &qkv, &options)?;
            ops::attention_naive_backward(batch, &qkv, &dout, &options).map(drop)
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

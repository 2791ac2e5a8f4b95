//! SmolLM2-135M-Instruct's weights on the GPU in their GGUF blocks (Q4_1 blocks, the Q8_0
//! embedding as the tied head): every matrix a decode step multiplies by (30 blocks × q, k, v, o,
//! gate, up, down, and the 49,152-token head), for 1 and 8 rows, recorded in one batch. GPU time
//! from timestamp queries; throughput is the weights' bytes (each read once per product), the
//! figure a memory-bound decode is judged by. Then the whole model (`nn::llama::Llama`): a
//! 64-token prefill and decode steps of 1 and 8 sequences, host time with the logits read back.
//!
//! `bash tests/fixtures/gguf/fetch_smollm2.sh && cargo bench --bench gguf`; the llama.cpp peer is
//! `python3 benches/llamacpp_smollm2.py` (pip install llama-cpp-python).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
mod common;

use common::random;
use wgnn::nn::gguf::GgufFile;
use wgnn::nn::llama::{Llama, LlamaOptions};
use wgnn::ops::{gguf_matmul, GgufWeights};
use wgnn::{Gpu, GpuTimer, Tensor};

const FILE: &str = "target/models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn bench(c: &mut Criterion) {
    let Ok(file) = GgufFile::read(FILE) else {
        eprintln!(
            "benches/gguf: no {FILE}; `bash tests/fixtures/gguf/fetch_smollm2.sh` fetches it"
        );
        return;
    };
    let gpu = Gpu::new().expect("benchmarks need a GPU adapter");
    let layers = file.u64("llama.block_count").expect("block count") as usize;
    let mut names: Vec<String> = (0..layers)
        .flat_map(|i| {
            [
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_output",
                "ffn_gate",
                "ffn_up",
                "ffn_down",
            ]
            .map(|m| format!("blk.{i}.{m}.weight"))
        })
        .collect();
    names.push("token_embd.weight".into());
    let weights: Vec<GgufWeights> = names
        .iter()
        .map(|name| {
            let info = file.tensor(name).expect("tensor");
            let (k, n) = (info.dims[0] as usize, info.dims[1] as usize);
            GgufWeights::new(
                &gpu,
                info.ggml_type,
                file.tensor_bytes(name).expect("bytes"),
                n,
                k,
            )
            .expect("upload")
        })
        .collect();
    let bytes: u64 = weights.iter().map(GgufWeights::size_bytes).sum();
    println!(
        "gguf: {} matrices, {:.1} MB of blocks on the GPU ({:.1} MB as f32)",
        weights.len(),
        bytes as f64 / 1e6,
        weights.iter().map(|w| w.n * w.k * 4).sum::<usize>() as f64 / 1e6
    );
    let mut timer = GpuTimer::new(&gpu);
    let mut group = c.benchmark_group("gguf_matmul_smollm2");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Bytes(bytes));
    for rows in [1usize, 8] {
        let inputs: Vec<Tensor> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Tensor::from_slice(&gpu, &random(rows * w.k, i as u64 + 1, 1.0), &[rows, w.k])
                    .expect("input")
            })
            .collect();
        group.bench_function(BenchmarkId::new("decode_step_weights", rows), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        timer
                            .time(|batch: &mut wgnn::Batch| {
                                for (w, x) in weights.iter().zip(&inputs) {
                                    gguf_matmul(&mut *batch, x, w)?;
                                }
                                Ok(())
                            })
                            .expect("timed")
                    })
                    .sum()
            })
        });
    }
    group.finish();
    model(c, &gpu, &file);
}

/// The whole model ([`Llama`]): a 64-token prefill into one slot, and decode steps of 1 and 8
/// sequences, each step's logits read back (what sampling on the host needs).
fn model(c: &mut Criterion, gpu: &Gpu, file: &GgufFile) {
    let options = LlamaOptions {
        max_sequences: 8,
        context: 1024,
    };
    let mut llama = Llama::from_gguf(gpu, file, options).expect("model");
    let prompt: Vec<u32> = (0..64).map(|i| 100 + 37 * i).collect();
    let mut group = c.benchmark_group("smollm2");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(prompt.len() as u64));
    group.bench_function("prefill_64_tokens", |b| {
        b.iter(|| llama.prefill(0, &prompt, false).expect("prefill"))
    });
    for rows in [1usize, 8] {
        for slot in 0..rows {
            llama.prefill(slot, &prompt, false).expect("prefill");
        }
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_function(BenchmarkId::new("decode_step", rows), |b| {
            b.iter(|| {
                if llama.length(0) + 1 >= llama.context() {
                    for slot in 0..rows {
                        llama.prefill(slot, &prompt, false).expect("prefill");
                    }
                }
                let steps: Vec<(usize, u32)> = (0..rows).map(|s| (s, 500 + s as u32)).collect();
                llama.decode(&steps).expect("decode")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

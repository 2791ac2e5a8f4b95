//! Inference through `wgnn::infer::InferenceSession`: the MLP 64-256-256-10 and the CNN of the
//! train_step bench, f32, f16 and int8 (Linear weights), batch 1, 8, 64, 512 and 4096.
//!
//! - `predict/{model}/{precision}/batch{n}`: wall-clock time of one `predict` call, the whole
//!   host→GPU→host round trip (write the input, replay the plan, read probabilities, classes and
//!   top-3 back); criterion's thrpt is samples/s.
//! - `host_cpu/{model}/predict_round_trip` and `host_cpu/{model}/raw_round_trip`: the calling
//!   thread's CPU time for one batch-1 `predict` and for the same dispatches driven with raw wgpu
//!   calls (one write, the replay, the copies, one map): what wgnn's per-request bookkeeping costs.
//!   Printed first as the mean of 2,000 calls of each, interleaved.
//! - `host/{model}/plan` and `host/raw_wgpu`: host time to encode and submit one replay of a
//!   captured plan (the CNN's or MLP's forward at batch 1), next to a raw wgpu loop with prebuilt
//!   bind groups and the same number of dispatches; divide by the dispatch count (printed) for the
//!   cost per dispatch. `host/{model}/batch_recording` records the same forward through `Batch`
//!   (bind groups made per dispatch), as training does.
//!
//! `cargo bench --bench inference`. On a software (CPU) adapter batches 512 and 4096 run only with
//! WGNN_BENCH_FULL=1. PyTorch peer: `python3 benches/torch_inference.py`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
mod common;

use common::{cnn, full_size_set, host_time, mlp, random, RawLoop};
use wgnn::infer::{Head, InferenceSession, Precision, SessionOptions};
use wgnn::nn::{Init, Sequential};
use wgnn::{Batch, DType, Gpu, Tensor};

fn model(gpu: &Gpu, name: &str) -> Sequential {
    let (specs, input) = if name == "mlp" {
        (mlp(), vec![64])
    } else {
        (cnn(), vec![1, 8, 8])
    };
    Sequential::new(gpu, &input, specs, Init::KaimingUniform { seed: 1 }).expect("model")
}

/// A classifier's batch-1 round trip with raw wgpu calls around a captured plan of the same
/// dispatches as an `InferenceSession`'s (forward, softmax, top-3).
struct RawRoundTrip {
    plan: wgnn::Plan,
    input: Tensor,
    outputs: Vec<Tensor>,
    staging: wgpu::Buffer,
}

impl RawRoundTrip {
    fn new(gpu: &Gpu, name: &str) -> Self {
        let mut m = model(gpu, name);
        let shape = [&[1usize][..], m.input_shape()].concat();
        let input = Tensor::zeros(gpu, &shape, DType::F32).expect("input");
        let mut capture = Batch::capture(gpu);
        let logits = m.forward(&mut capture, &input, false).expect("forward");
        let logits = logits.reshape(&[1, 10]).expect("logits");
        let probs = wgnn::ops::softmax(&mut capture, &logits).expect("softmax");
        let (values, indices) = wgnn::ops::top_k(&mut capture, &probs, 3).expect("top_k");
        let plan = capture.into_plan().expect("plan");
        let outputs = vec![probs, values, indices];
        let size = outputs
            .iter()
            .map(|t| t.size_bytes().next_multiple_of(4))
            .sum();
        let staging = gpu.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("raw round trip"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        RawRoundTrip {
            plan,
            input,
            outputs,
            staging,
        }
    }

    fn run(&self, gpu: &Gpu, x: &[f32]) -> f32 {
        gpu.queue().write_buffer(
            self.input.buffer(),
            self.input.offset_bytes(),
            bytemuck::cast_slice(x),
        );
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        self.plan.encode(&mut encoder);
        let mut offset = 0;
        for t in &self.outputs {
            let len = t.size_bytes().next_multiple_of(4);
            encoder.copy_buffer_to_buffer(t.buffer(), t.offset_bytes(), &self.staging, offset, len);
            offset += len;
        }
        gpu.queue().submit([encoder.finish()]);
        let slice = self.staging.slice(..);
        slice.map_async(wgpu::MapMode::Read, |_| {});
        gpu.wait().expect("wait");
        let first = {
            let view = slice.get_mapped_range().expect("mapped");
            f32::from_le_bytes([view[0], view[1], view[2], view[3]])
        };
        self.staging.unmap();
        first
    }
}

fn bench(c: &mut Criterion) {
    let gpu = Gpu::new().expect("benchmarks need a GPU adapter");
    let batches: &[usize] = if full_size_set(&gpu) {
        &[1, 8, 64, 512, 4096]
    } else {
        &[1, 8, 64]
    };
    let max_batch = *batches.last().unwrap_or(&1);
    let mut group = c.benchmark_group("inference");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for name in ["mlp", "cnn"] {
        for precision in [Precision::F32, Precision::F16, Precision::Int8] {
            if precision == Precision::F16 && !gpu.supports_f16() {
                continue;
            }
            let options = SessionOptions {
                max_batch,
                precision,
                head: Head::Classifier { top_k: 3 },
                ..SessionOptions::default()
            };
            let session =
                Arc::new(InferenceSession::new(model(&gpu, name), options).expect("session"));
            println!(
                "{name} {precision:?}: {} bytes of weights, {} dispatches per replay",
                session.model_bytes(),
                session.dispatches_for(1)
            );
            for &rows in batches {
                let x = random(rows * 64, 3, 1.0);
                group.throughput(Throughput::Elements(rows as u64));
                let id = format!("{name}/{precision:?}/batch{rows}");
                group.bench_function(BenchmarkId::new("predict", &id), |b| {
                    b.iter(|| session.predict(&x).expect("predict"))
                });
            }
        }
        // Host cost per dispatch: a captured plan, the same forward recorded through Batch, raw wgpu.
        let mut m = model(&gpu, name);
        let input_shape = [&[1usize][..], m.input_shape()].concat();
        let input = Tensor::zeros(&gpu, &input_shape, DType::F32).expect("input");
        let mut capture = Batch::capture(&gpu);
        m.forward(&mut capture, &input, false).expect("forward");
        let plan = capture.into_plan().expect("plan");
        let n = plan.dispatches();
        println!("{name} forward at batch 1: {n} dispatches");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("host", format!("{name}/plan")), |b| {
            b.iter_custom(|iters| host_time(&gpu, iters, &|e| plan.encode(e)))
        });
        group.bench_function(
            BenchmarkId::new("host", format!("{name}/batch_recording")),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        let mut batch = Batch::new(&gpu);
                        m.forward(&mut batch, &input, false).expect("forward");
                        batch.submit().expect("submit");
                        total += start.elapsed();
                        gpu.wait().expect("wait");
                    }
                    total
                })
            },
        );
        // A whole batch-1 round trip, by the calling thread's CPU time (the GPU's work and the
        // wait are not in it): `predict` against the same dispatches (the forward, softmax and
        // top-3, captured once) driven by hand with raw wgpu calls: one write, the replay, one
        // copy per output into one staging buffer, one map.
        let session = InferenceSession::new(
            model(&gpu, name),
            SessionOptions {
                max_batch: 1,
                ..SessionOptions::default()
            },
        )
        .expect("session");
        let x = random(64, 3, 1.0);
        group.throughput(Throughput::Elements(1));
        group.bench_function(
            BenchmarkId::new("host_cpu", format!("{name}/predict_round_trip")),
            |b| {
                b.iter_custom(|iters| {
                    let start = cpu_time::ThreadTime::now();
                    for _ in 0..iters {
                        session.predict(&x).expect("predict");
                    }
                    start.elapsed()
                })
            },
        );
        let raw_trip = RawRoundTrip::new(&gpu, name);
        // The two interleaved, call by call, so that drifts in the machine's load hit both alike
        // (criterion's figures below run them minutes apart and move by ±40% on lavapipe).
        let (mut ours, mut raw) = (Duration::ZERO, Duration::ZERO);
        const CALLS: u32 = 2000;
        for _ in 0..CALLS {
            let start = cpu_time::ThreadTime::now();
            session.predict(&x).expect("predict");
            ours += start.elapsed();
            let start = cpu_time::ThreadTime::now();
            raw_trip.run(&gpu, &x);
            raw += start.elapsed();
        }
        println!(
            "{name} batch-1 round trip, thread CPU time, mean of {CALLS} interleaved calls: predict {:.1} µs, raw wgpu {:.1} µs, ratio {:.2}",
            ours.as_secs_f64() * 1e6 / f64::from(CALLS),
            raw.as_secs_f64() * 1e6 / f64::from(CALLS),
            ours.as_secs_f64() / raw.as_secs_f64()
        );
        group.bench_function(
            BenchmarkId::new("host_cpu", format!("{name}/raw_round_trip")),
            |b| {
                b.iter_custom(|iters| {
                    let start = cpu_time::ThreadTime::now();
                    for _ in 0..iters {
                        raw_trip.run(&gpu, &x);
                    }
                    start.elapsed()
                })
            },
        );
        let raw = RawLoop::new(&gpu, n);
        group.bench_function(
            BenchmarkId::new("host", format!("raw_wgpu/{name}/{n}_dispatches")),
            |b| b.iter_custom(|iters| host_time(&gpu, iters, &|e| raw.encode(e))),
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The inference path: recorded plans against the CPU reference, in f32 and f16, from many
//! threads, and the dynamic batcher.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use wgnn::infer::{Batcher, BatcherConfig, InferenceSession, Precision, SessionOptions};
use wgnn::nn::{Init, LayerSpec, Sequential};
use wgnn::reference::{self, Array};
use wgnn::{Activation, Error};

fn cnn() -> Vec<LayerSpec> {
    vec![
        LayerSpec::Conv2d {
            in_channels: 1,
            out_channels: 8,
            kernel: (3, 3),
            stride: (1, 1),
            padding: (1, 1),
        },
        LayerSpec::Activation {
            function: Activation::Relu,
        },
        LayerSpec::MaxPool2d {
            kernel: (2, 2),
            stride: (2, 2),
        },
        LayerSpec::Flatten,
        LayerSpec::Linear {
            inputs: 128,
            outputs: 32,
        },
        LayerSpec::Activation {
            function: Activation::Gelu,
        },
        LayerSpec::Linear {
            inputs: 32,
            outputs: 10,
        },
    ]
}

fn reference_probs(specs: &[LayerSpec], seed: u64, x: &[f32]) -> Array {
    reference_probs_with(specs, seed, x, false)
}

/// The reference's probabilities; with `int8`, its Linear weights are the dequantized int8 ones
/// the session uses.
fn reference_probs_with(specs: &[LayerSpec], seed: u64, x: &[f32], int8: bool) -> Array {
    let init = Init::XavierUniform { seed };
    let mut values = init.values(specs);
    if int8 {
        for (name, shape, v) in &mut values {
            if name.ends_with("weight") {
                let k = v.len() / shape[0];
                let (q, scales) = wgnn::ops::quantize_int8(v, shape[0], k);
                for (i, w) in v.iter_mut().enumerate() {
                    *w = f32::from(q[i]) * scales[i / k];
                }
            }
        }
    }
    let mut model = reference::nn::Model::new(specs.to_vec(), values);
    let logits = model.forward(&Array::new(&[x.len() / 64, 1, 8, 8], x.to_vec()));
    reference::softmax(&logits)
}

fn session(seed: u64, precision: Precision) -> InferenceSession {
    let gpu = gpu();
    let model = Sequential::new(&gpu, &[1, 8, 8], cnn(), Init::XavierUniform { seed }).unwrap();
    let options = SessionOptions {
        max_batch: 16,
        precision,
        top_k: 3,
    };
    InferenceSession::new(model, options).unwrap()
}

#[test]
fn predictions_match_the_reference() {
    let (mut rng, seed) = rng();
    // F16 runs everywhere: f16 compute with SHADER_F16, packed f16 Linear weights without it.
    for precision in [Precision::F32, Precision::F16, Precision::Int8] {
        let session = session(seed, precision);
        assert_eq!(session.bucket_sizes(), [1, 2, 4, 8, 16]);
        let tol = if precision == Precision::F16 {
            1e-2
        } else {
            1e-5
        };
        // One sample, a partly filled bucket, an exact bucket, and more than one replay holds.
        for rows in [1usize, 3, 16, 37] {
            let x = round_f16(&random(&mut rng, rows * 64));
            let want = reference_probs_with(&cnn(), seed, &x, precision == Precision::Int8);
            let got = session.predict(&x).unwrap();
            let context = format!("{precision:?} rows {rows} seed {seed}");
            assert_close(&got.probabilities, &want.data, tol, &context);
            assert_eq!(got.classes.len(), rows);
            for r in 0..rows {
                let row = &got.probabilities[r * 10..(r + 1) * 10];
                let best = (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)));
                assert_eq!(Some(got.classes[r] as usize), best, "{context} row {r}");
                assert_eq!(got.top_k[r].len(), 3);
                assert_eq!(got.top_k[r][0].0, got.classes[r], "{context}");
                assert!(got.top_k[r][0].1 >= got.top_k[r][1].1, "{context}");
                assert_eq!(got.top_k[r][1].1, row[got.top_k[r][1].0 as usize]);
            }
        }
    }
}

#[test]
fn a_session_serves_many_threads_at_once() {
    let (_, seed) = rng();
    let session = Arc::new(session(seed, Precision::F32));
    let threads: Vec<_> = (0..6u64)
        .map(|t| {
            let session = session.clone();
            std::thread::spawn(move || {
                let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed ^ t);
                for i in 0..12 {
                    let rows = 1 + (i * 5 + t as usize) % 20;
                    let x = random(&mut rng, rows * 64);
                    let got = session.predict(&x).unwrap();
                    let want = reference_probs(&cnn(), seed, &x);
                    assert_close(
                        &got.probabilities,
                        &want.data,
                        1e-5,
                        &format!("thread {t} request {i} seed {seed}"),
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a thread failed");
    }
}

#[test]
fn the_batcher_groups_requests_and_answers_each_caller() {
    let (_, seed) = rng();
    let session = Arc::new(session(seed, Precision::F32));
    let config = BatcherConfig {
        max_batch: 8,
        max_wait: Duration::from_millis(5),
        queue_capacity: 256,
    };
    let batcher = Arc::new(Batcher::new(session.clone(), config).unwrap());
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let batcher = batcher.clone();
            std::thread::spawn(move || {
                let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed ^ t);
                for i in 0..10 {
                    let x = random(&mut rng, 64);
                    let got = batcher.predict(&x).unwrap();
                    let want = reference_probs(&cnn(), seed, &x);
                    assert_close(
                        &got.probabilities,
                        &want.data,
                        1e-5,
                        &format!("thread {t} request {i} seed {seed}"),
                    );
                    // A wrong-shaped request is refused; the others go on.
                    if i == 3 {
                        assert!(matches!(
                            batcher.predict(&x[..10]),
                            Err(Error::ShapeMismatch { .. })
                        ));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a thread failed");
    }
    let stats = Arc::try_unwrap(batcher)
        .expect("threads are done")
        .shutdown();
    assert_eq!(stats.requests, 80, "{stats:?}");
    assert_eq!(stats.refused_shape, 8);
    assert!(
        stats.batch_sizes.keys().all(|&b| (1..=8).contains(&b)),
        "{stats:?}"
    );
    assert!(stats.latency_ms.0 <= stats.latency_ms.2, "{stats:?}");
}

#[test]
fn bad_requests_and_options_give_typed_errors() {
    let gpu = gpu();
    let model = Sequential::new(&gpu, &[1, 8, 8], cnn(), Init::XavierUniform { seed: 1 }).unwrap();
    let too_many = SessionOptions {
        top_k: 11,
        ..SessionOptions::default()
    };
    assert!(matches!(
        InferenceSession::new(model, too_many),
        Err(Error::InvalidArgument { .. })
    ));
    let session = session(1, Precision::F32);
    assert!(matches!(
        session.predict(&[0.5; 65]),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        session.predict(&[]),
        Err(Error::ShapeMismatch { .. })
    ));
}

//! The inference path: recorded plans against the CPU reference, in f32 and f16, from many
//! threads, and the dynamic batcher.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use wgnn::infer::{Batcher, BatcherConfig, Head, InferenceSession, Precision, SessionOptions};
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
    let mut values = init.values(specs).unwrap();
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
        head: Head::Classifier { top_k: 3 },
        ..SessionOptions::default()
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
            assert_close(&got.outputs, &want.data, tol, &context);
            assert_eq!(got.classes.len(), rows);
            for r in 0..rows {
                let row = &got.outputs[r * 10..(r + 1) * 10];
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
                        &got.outputs,
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
        ..BatcherConfig::default()
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
                        &got.outputs,
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
    let stats = batcher.shutdown();
    assert_eq!(stats.requests, 80, "{stats:?}");
    assert_eq!(stats.refused_shape, 8);
    assert!(
        stats.batch_sizes.keys().all(|&b| (1..=8).contains(&b)),
        "{stats:?}"
    );
    assert!(stats.latency_ms.0 <= stats.latency_ms.2, "{stats:?}");
}

/// A request of many samples is one submission: its rows batch with single-sample requests, are
/// split only at max_batch, and come back in order, each equal to the CPU reference.
#[test]
fn a_request_of_many_rows_is_one_submission_answered_in_order() {
    let (_, seed) = rng();
    let session = Arc::new(session(seed, Precision::F32));
    let config = BatcherConfig {
        max_batch: 8,
        max_wait: Duration::from_millis(5),
        queue_capacity: 64,
        ..BatcherConfig::default()
    };
    let batcher = Arc::new(Batcher::new(session, config).unwrap());
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let many = random(&mut rng, 37 * 64);
    let singles: Vec<Vec<f32>> = (0..4).map(|_| random(&mut rng, 64)).collect();
    std::thread::scope(|s| {
        let b = &batcher;
        let others: Vec<_> = singles
            .iter()
            .map(|x| s.spawn(move || b.predict(x).unwrap()))
            .collect();
        let got = batcher.predict_rows(&many).unwrap();
        assert_eq!(got.len(), 37);
        for (i, p) in got.iter().enumerate() {
            let want = reference_probs(&cnn(), seed, &many[i * 64..(i + 1) * 64]);
            assert_close(
                &p.outputs,
                &want.data,
                1e-5,
                &format!("row {i} seed {seed}"),
            );
        }
        for (o, x) in others.into_iter().zip(&singles) {
            let want = reference_probs(&cnn(), seed, x);
            assert_close(
                &o.join().unwrap().outputs,
                &want.data,
                1e-5,
                &format!("seed {seed}"),
            );
        }
    });
    // Ragged and empty requests are refused whole.
    assert!(matches!(
        batcher.predict_rows(&many[..100]),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        batcher.predict_rows(&[]),
        Err(Error::ShapeMismatch { .. })
    ));
    let stats = batcher.shutdown();
    assert_eq!(stats.requests, 5, "five submissions: {stats:?}");
    let rows: usize = stats.batch_sizes.iter().map(|(s, n)| s * *n as usize).sum();
    assert_eq!(rows, 41, "{stats:?}");
    assert!(
        stats.batch_sizes.keys().all(|&b| (1..=8).contains(&b)),
        "{stats:?}"
    );
}

#[test]
fn bad_requests_and_options_give_typed_errors() {
    let gpu = gpu();
    let model = Sequential::new(&gpu, &[1, 8, 8], cnn(), Init::XavierUniform { seed: 1 }).unwrap();
    let too_many = SessionOptions {
        head: Head::Classifier { top_k: 11 },
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

/// Every option is checked before anything is made: absurd batch sizes are refused at once
/// (`usize::MAX` panicked making the bucket list; 2^40 built and tuned every bucket first), and a
/// batch whose activations pass the adapter's limit is refused before any bucket.
#[test]
fn session_options_are_checked_before_anything_is_made() {
    let gpu = gpu();
    let model =
        || Sequential::new(&gpu, &[1, 8, 8], cnn(), Init::XavierUniform { seed: 1 }).unwrap();
    for (what, options) in [
        (
            "max_batch usize::MAX",
            SessionOptions {
                max_batch: usize::MAX,
                ..Default::default()
            },
        ),
        (
            "max_batch 2^40",
            SessionOptions {
                max_batch: 1 << 40,
                ..Default::default()
            },
        ),
        (
            "max_batch 0",
            SessionOptions {
                max_batch: 0,
                ..Default::default()
            },
        ),
        (
            "top_k 0",
            SessionOptions {
                head: Head::Classifier { top_k: 0 },
                ..Default::default()
            },
        ),
        (
            "timeout 0",
            SessionOptions {
                timeout: Duration::ZERO,
                ..Default::default()
            },
        ),
        (
            "timeout MAX",
            SessionOptions {
                timeout: Duration::MAX,
                ..Default::default()
            },
        ),
    ] {
        let err = InferenceSession::new(model(), options).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "{what}: {err:?}"
        );
    }
    // A Linear wide enough that its output at the largest batch passes the binding limit.
    let limit = gpu.limits().max_storage_buffer_binding_size;
    let max_batch = SessionOptions::MAX_BATCH;
    let outputs = (limit / (4 * max_batch as u64)) as usize + 1;
    let wide = Sequential::new(
        &gpu,
        &[4],
        vec![LayerSpec::Linear { inputs: 4, outputs }],
        Init::XavierUniform { seed: 1 },
    )
    .unwrap();
    let pipelines = gpu.cached_pipelines();
    let err = InferenceSession::new(
        wide,
        SessionOptions {
            max_batch,
            head: Head::Classifier { top_k: 1 },
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::LimitExceeded { .. }), "{err:?}");
    assert_eq!(gpu.cached_pipelines(), pipelines, "nothing was compiled");
}

/// A model that trained in mixed precision is served at f32 from its f32 master weights (it
/// computed in f16 while reporting f32 bytes).
#[test]
fn a_mixed_precision_model_is_served_in_the_precision_asked_for() {
    let gpu = gpu();
    if !gpu.supports_f16() {
        skip(
            "a_mixed_precision_model_is_served_in_the_precision_asked_for",
            "no SHADER_F16",
        );
        return;
    }
    let (mut rng, seed) = rng();
    let mut model = Sequential::new(&gpu, &[1, 8, 8], cnn(), Init::XavierUniform { seed }).unwrap();
    model.enable_mixed_precision().unwrap();
    let session = InferenceSession::new(
        model,
        SessionOptions {
            max_batch: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let x = random(&mut rng, 4 * 64);
    let got = session.predict(&x).unwrap();
    let want = reference_probs(&cnn(), seed, &x);
    assert_close(&got.outputs, &want.data, 1e-5, &format!("seed {seed}"));
    assert_eq!(
        session.model_bytes(),
        4 * (8 * 9 + 8 + 128 * 32 + 32 + 32 * 10 + 10)
    );
}

/// A replay has a deadline: one already passed is refused before anything runs; one that passes
/// while the GPU works gives `Timeout`, and the bucket finishes that replay before its next use,
/// which answers correctly.
#[test]
fn predictions_have_a_deadline() {
    let (mut rng, seed) = rng();
    let session = session(seed, Precision::F32);
    let x = random(&mut rng, 16 * 64);
    let late = session.predict_until(&x, std::time::Instant::now());
    assert!(matches!(late, Err(Error::Timeout { .. })), "{late:?}");
    for bad in [Duration::ZERO, Duration::MAX] {
        assert!(matches!(
            session.predict_within(&x, bad),
            Err(Error::InvalidArgument { .. })
        ));
    }
    // The GPU cannot finish 16 samples in a microsecond: this one times out while it waits (or,
    // on a very fast device, answers).
    let soon = std::time::Instant::now() + Duration::from_micros(1);
    match session.predict_until(&x, soon) {
        Err(Error::Timeout { .. }) | Ok(_) => {}
        Err(e) => panic!("{e:?}"),
    }
    let want = reference_probs(&cnn(), seed, &x);
    for _ in 0..2 {
        let got = session.predict(&x).unwrap();
        assert_close(&got.outputs, &want.data, 1e-5, &format!("seed {seed}"));
    }
    let options = SessionOptions {
        warm_up: false,
        ..*session.options()
    };
    assert!(!options.warm_up);
    session.warm_up().unwrap();
}

/// The batcher's numbers are checked: a wait past `MAX_WAIT` (`Duration::MAX` killed the worker
/// on the first request), a queue past `MAX_QUEUE_CAPACITY` (`usize::MAX` panicked, 2^40 aborted
/// allocating), a zero timeout.
#[test]
fn batcher_config_is_checked() {
    let session = Arc::new(session(1, Precision::F32));
    for (what, config) in [
        (
            "max_wait MAX",
            BatcherConfig {
                max_wait: Duration::MAX,
                ..Default::default()
            },
        ),
        (
            "max_wait 11 s",
            BatcherConfig {
                max_wait: Duration::from_secs(11),
                ..Default::default()
            },
        ),
        (
            "queue usize::MAX",
            BatcherConfig {
                queue_capacity: usize::MAX,
                ..Default::default()
            },
        ),
        (
            "queue 2^40",
            BatcherConfig {
                queue_capacity: 1 << 40,
                ..Default::default()
            },
        ),
        (
            "queue 0",
            BatcherConfig {
                queue_capacity: 0,
                ..Default::default()
            },
        ),
        (
            "max_batch 0",
            BatcherConfig {
                max_batch: 0,
                ..Default::default()
            },
        ),
        (
            "timeout 0",
            BatcherConfig {
                request_timeout: Duration::ZERO,
                ..Default::default()
            },
        ),
        (
            "timeout MAX",
            BatcherConfig {
                request_timeout: Duration::MAX,
                ..Default::default()
            },
        ),
    ] {
        let err = Batcher::new(session.clone(), config).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "{what}: {err:?}"
        );
    }
    // The largest queue and wait are accepted, and nothing is allocated for the queue up front.
    let config = BatcherConfig {
        max_wait: BatcherConfig::MAX_WAIT,
        queue_capacity: BatcherConfig::MAX_QUEUE_CAPACITY,
        max_batch: 1,
        ..Default::default()
    };
    let batcher = Batcher::new(session.clone(), config).unwrap();
    let answer = batcher.predict(&[0.5; 64]).unwrap();
    assert_eq!(answer.outputs.len(), 10);
}

/// A request waits at most its timeout: one left waiting for company past it gets `Timeout`, is
/// counted, and is never computed.
#[test]
fn batcher_requests_time_out() {
    let session = Arc::new(session(2, Precision::F32));
    let config = BatcherConfig {
        max_batch: 8,
        max_wait: Duration::from_millis(400),
        request_timeout: Duration::from_millis(40),
        ..Default::default()
    };
    let batcher = Batcher::new(session, config).unwrap();
    let err = batcher.predict(&[0.5; 64]).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    let err = batcher
        .predict_within(&[0.5; 64], Duration::from_millis(10))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    let stats = batcher.shutdown();
    assert_eq!((stats.timed_out, stats.requests), (2, 0), "{stats:?}");
    assert!(stats.batch_sizes.is_empty(), "nothing ran: {stats:?}");
}

/// Shutdown from a handle shared with the clients, while they send: every request is either
/// answered correctly or refused with `ShutDown`, none is lost, and later requests are refused.
#[test]
fn batcher_shuts_down_from_a_shared_handle_under_traffic() {
    let (_, seed) = rng();
    let session = Arc::new(session(seed, Precision::F32));
    let config = BatcherConfig {
        max_batch: 4,
        max_wait: Duration::from_millis(1),
        ..Default::default()
    };
    let batcher = Arc::new(Batcher::new(session, config).unwrap());
    let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let threads: Vec<_> = (0..6u64)
        .map(|t| {
            let (batcher, answered) = (batcher.clone(), answered.clone());
            std::thread::spawn(move || {
                let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed ^ t);
                let mut refused = false;
                for _ in 0..200 {
                    let x = random(&mut rng, 64);
                    match batcher.predict(&x) {
                        Ok(p) => {
                            assert!(!refused, "answered after a refusal");
                            let want = reference_probs(&cnn(), seed, &x);
                            assert_close(&p.outputs, &want.data, 1e-5, "under shutdown");
                            answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(Error::ShutDown { .. }) => refused = true,
                        Err(e) => panic!("thread {t}: {e:?}"),
                    }
                }
                refused
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(150));
    let stats = batcher.shutdown();
    assert!(batcher.is_shut_down());
    let refused: Vec<bool> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let answered = answered.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(stats.requests, answered, "{stats:?}");
    assert!(
        refused.iter().any(|&r| r),
        "shutdown came after all traffic: {stats:?}"
    );
    assert!(matches!(
        batcher.predict(&[0.5; 64]),
        Err(Error::ShutDown { .. })
    ));
    // A second shutdown returns at once with the same numbers.
    assert_eq!(batcher.shutdown().requests, stats.requests);
}

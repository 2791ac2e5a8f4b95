//! Token sampling on the GPU against the CPU reference: greedy, temperature, top-k, top-p and
//! both, per-row settings in one dispatch, ragged vocabularies, f32 and f16 logits; draws that
//! depend on the seed and counter only (not on the batch around them), that follow the
//! distribution, and typed errors for bad settings.

mod common;

use common::*;
use rand::RngExt;
use wgnn::ops::{self, SamplingSettings};
use wgnn::reference::sampling as reference;
use wgnn::{Batch, DType, Error, Gpu, Tensor};

/// One GPU user at a time in this file: on GL (llvmpipe) a submission holds the adapter's context
/// while it runs, and wgpu gives up on a context lock after 6 s, which the distribution test's
/// 4,000 rows beside another test's would exceed.
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn run(
    gpu: &Gpu,
    logits: &[f32],
    rows: usize,
    vocab: usize,
    dtype: DType,
    s: &[SamplingSettings],
) -> Vec<u32> {
    let t = Tensor::from_f32(gpu, logits, &[rows, vocab], dtype).unwrap();
    let mut batch = Batch::new(gpu);
    let tokens = ops::sample_tokens(&mut batch, &t, s).unwrap();
    batch.submit().unwrap();
    tokens.to_vec::<u32>().unwrap()
}

fn settings(rng: &mut rand::rngs::StdRng, vocab: usize, i: usize) -> SamplingSettings {
    let base = SamplingSettings {
        temperature: 0.5 + rng.random_range(0.0..1.5f32),
        top_k: 0,
        top_p: 1.0,
        seed: rng.random(),
        counter: rng.random_range(0..1000),
    };
    match i % 6 {
        0 => SamplingSettings::greedy(),
        5 => SamplingSettings::skip(),
        1 => base,
        2 => SamplingSettings {
            top_k: rng.random_range(1..=vocab as u32),
            ..base
        },
        3 => SamplingSettings {
            top_p: rng.random_range(0.05..1.0f32),
            ..base
        },
        _ => SamplingSettings {
            top_k: rng.random_range(1..=vocab as u32),
            top_p: rng.random_range(0.05..1.0f32),
            ..base
        },
    }
}

#[test]
fn tokens_match_the_reference() {
    let _gpu = exclusive();
    let gpu = gpu();
    let (mut rng, seed) = rng();
    for dtype in [DType::F32, DType::F16] {
        if dtype == DType::F16 && !gpu.supports_f16() {
            continue;
        }
        for vocab in [1usize, 5, 80, 257, 1000, 5003] {
            let rows = 23;
            let mut logits = random(&mut rng, rows * vocab);
            for x in &mut logits {
                *x *= 6.0;
            }
            if dtype == DType::F16 {
                logits = round_f16(&logits);
            }
            let s: Vec<SamplingSettings> =
                (0..rows).map(|i| settings(&mut rng, vocab, i)).collect();
            let got = run(&gpu, &logits, rows, vocab, dtype, &s);
            for (r, row) in logits.chunks(vocab).enumerate() {
                let want = reference::sample(row, &s[r]);
                assert_eq!(
                    got[r], want,
                    "row {r} of {rows}, vocab {vocab}, {dtype:?}, {:?}, seed {seed}",
                    s[r]
                );
                assert!(reference::kept(row, &s[r])[got[r] as usize]);
            }
        }
    }
}

/// The same row settings draw the same token alone and amid other rows; the draw moves with the
/// counter.
#[test]
fn a_draw_depends_on_its_seed_and_counter_only() {
    let _gpu = exclusive();
    let gpu = gpu();
    let (mut rng, _) = rng();
    let vocab = 300;
    let row = random(&mut rng, vocab);
    let s = SamplingSettings {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed: 42,
        counter: 7,
    };
    let alone = run(&gpu, &row, 1, vocab, DType::F32, &[s])[0];
    let mut many = random(&mut rng, 5 * vocab);
    many[3 * vocab..4 * vocab].copy_from_slice(&row);
    let mut all: Vec<SamplingSettings> = (0..5).map(|i| settings(&mut rng, vocab, i)).collect();
    all[3] = s;
    assert_eq!(run(&gpu, &many, 5, vocab, DType::F32, &all)[3], alone);
    let draws: Vec<u32> = (0..16)
        .map(|c| {
            run(
                &gpu,
                &row,
                1,
                vocab,
                DType::F32,
                &[SamplingSettings { counter: c, ..s }],
            )[0]
        })
        .collect();
    assert!(draws.iter().any(|&d| d != draws[0]), "{draws:?}");
}

/// Over many counters, the draws follow softmax(logits / T) restricted to the top-k.
#[test]
fn draws_follow_the_distribution() {
    let _gpu = exclusive();
    let gpu = gpu();
    let logits = [2.0f32, 1.0, 0.0, -1.0, 0.5, -3.0];
    let vocab = logits.len();
    let rows = 4000;
    let all: Vec<f32> = logits.iter().copied().cycle().take(rows * vocab).collect();
    let s: Vec<SamplingSettings> = (0..rows as u32)
        .map(|c| SamplingSettings {
            temperature: 1.0,
            top_k: 4,
            top_p: 1.0,
            seed: 9,
            counter: c,
        })
        .collect();
    let got = run(&gpu, &all, rows, vocab, DType::F32, &s);
    let kept = [0usize, 1, 2, 4];
    let z: f64 = kept.iter().map(|&i| f64::from(logits[i]).exp()).sum();
    for (i, &x) in logits.iter().enumerate() {
        let seen = got.iter().filter(|&&t| t as usize == i).count() as f64 / rows as f64;
        let want = if kept.contains(&i) {
            f64::from(x).exp() / z
        } else {
            0.0
        };
        // 4,000 draws: a standard error of at most 0.8%.
        assert!(
            (seen - want).abs() < 0.03,
            "token {i}: {seen} drawn, {want} expected"
        );
    }
}

#[test]
fn bad_settings_get_typed_errors() {
    let gpu = gpu();
    let t = Tensor::from_f32(&gpu, &[0.5f32; 12], &[3, 4], DType::F32).unwrap();
    let ok = SamplingSettings::greedy();
    let mut batch = Batch::new(&gpu);
    for bad in [
        SamplingSettings {
            temperature: -0.5,
            ..ok
        },
        SamplingSettings {
            temperature: f32::NAN,
            ..ok
        },
        SamplingSettings {
            temperature: 1e-9,
            ..ok
        },
        SamplingSettings { top_p: 0.0, ..ok },
        SamplingSettings { top_p: 1.5, ..ok },
        SamplingSettings { top_k: 5, ..ok },
    ] {
        let r = ops::sample_tokens(&mut batch, &t, &[ok, bad, ok]);
        assert!(
            matches!(r, Err(Error::InvalidArgument { .. })),
            "{bad:?}: {r:?}"
        );
    }
    assert!(matches!(
        ops::sample_tokens(&mut batch, &t, &[ok, ok]),
        Err(Error::ShapeMismatch { .. })
    ));
    let flat = Tensor::from_f32(&gpu, &[0.5f32; 12], &[12], DType::F32).unwrap();
    assert!(matches!(
        ops::sample_tokens(&mut batch, &flat, &[ok]),
        Err(Error::ShapeMismatch { .. })
    ));
    let ids = Tensor::from_slice(&gpu, &[1u32; 12], &[3, 4]).unwrap();
    assert!(ops::sample_tokens(&mut batch, &ids, &[ok, ok, ok]).is_err());
}

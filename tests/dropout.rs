//! Dropout: the GPU drops exactly the elements the reference hash drops, the backward the same
//! ones, at the expected rate; the mask follows the key; the layer trains reproducibly.

mod common;

use common::*;
use rand::RngExt;
use wgnn::nn::{GptConfig, LanguageModel, Optimizer};
use wgnn::ops::{self, AdamConfig, DropoutKey};
use wgnn::reference::dropout as reference;
use wgnn::reference::Array;
use wgnn::{Activation, Batch, DType, Error, Tensor};

#[test]
fn forward_and_backward_match_the_reference_mask() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    for (n, p) in [(1usize, 0.5f32), (1000, 0.1), (70_001, 0.5), (300_000, 0.9)] {
        for dtype in [DType::F32, DType::F16] {
            if dtype == DType::F16 && !gpu.supports_f16() {
                continue;
            }
            let key = DropoutKey {
                p,
                seed: rng.random(),
                counter: rng.random(),
            };
            let mut x = random(&mut rng, n);
            if dtype == DType::F16 {
                x = round_f16(&x);
            }
            // Nonzero inputs, so a dropped element is exactly the zeros.
            for v in &mut x {
                if *v == 0.0 {
                    *v = 0.5;
                }
            }
            let tx = Tensor::from_f32(&gpu, &x, &[n], dtype).unwrap();
            let mut batch = Batch::new(&gpu);
            let y = ops::dropout(&mut batch, &tx, &key).unwrap();
            let dx = ops::dropout_backward(&mut batch, &tx, &key).unwrap();
            batch.submit().unwrap();
            assert_guard_intact(&y, "dropout");
            let want = reference::dropout(&Array::new(&[n], x), &key);
            let tol = if dtype == DType::F16 { 1e-2 } else { 1e-6 };
            let context = format!("n {n}, p {p}, {dtype:?}, seed {seed}");
            let (y, dx) = (y.to_vec_f32().unwrap(), dx.to_vec_f32().unwrap());
            assert_close(&y, &want.data, tol, &context);
            assert_close(&dx, &want.data, tol, &format!("backward, {context}"));
            for (i, (a, b)) in y.iter().zip(&want.data).enumerate() {
                assert_eq!(
                    *a == 0.0,
                    *b == 0.0,
                    "element {i} kept differently, {context}"
                );
            }
        }
    }
}

#[test]
fn the_keep_rate_follows_p_and_the_mask_follows_the_key() {
    let n = 1_000_000u32;
    for p in [0.1f32, 0.5, 0.8] {
        let key = DropoutKey {
            p,
            seed: 42,
            counter: 7,
        };
        let kept = (0..n).filter(|&i| reference::kept(&key, i)).count() as f64 / f64::from(n);
        assert!(
            (kept - (1.0 - f64::from(p))).abs() < 3e-3,
            "p {p}: kept {kept}"
        );
        let next = DropoutKey { counter: 8, ..key };
        let same = (0..10_000)
            .filter(|&i| reference::kept(&key, i) == reference::kept(&next, i))
            .count();
        assert!(
            same < 9_500,
            "p {p}: another counter should give another mask"
        );
    }
}

#[test]
fn bad_probabilities_get_typed_errors() {
    let gpu = gpu();
    let x = Tensor::zeros(&gpu, &[4], DType::F32).unwrap();
    for p in [1.0f32, -0.1, f32::NAN] {
        let mut batch = Batch::new(&gpu);
        let key = DropoutKey {
            p,
            seed: 1,
            counter: 0,
        };
        assert!(matches!(
            ops::dropout(&mut batch, &x, &key),
            Err(Error::InvalidArgument { .. })
        ));
    }
}

#[test]
fn a_model_with_dropout_trains_reproducibly_and_serves_without_it() {
    let gpu = gpu();
    let config = GptConfig {
        vocab: 7,
        context: 8,
        dim: 16,
        heads: 2,
        layers: 1,
        activation: Activation::GeluTanh,
        dropout: 0.2,
    };
    let run_with = |config: GptConfig| {
        let lm = LanguageModel::new(&gpu, config, 3).unwrap();
        let optimizer = Optimizer::adam(AdamConfig::adamw(1e-2, 0.0));
        let mut trainer = wgnn::nn::Trainer::new(lm, optimizer);
        let ids: Vec<u32> = (0..16).map(|i| i % 7).collect();
        let next: Vec<u32> = (0..16).map(|i| (i + 1) % 7).collect();
        for _ in 0..3 {
            trainer.step_sequences(&ids, &next, 8).unwrap();
        }
        let loss = trainer.mean_loss().unwrap();
        let mut lm = trainer.into_model();
        // Inference has no dropout: the same logits twice.
        let a = lm.logits(&ids[..8], 8).unwrap();
        assert_eq!(a, lm.logits(&ids[..8], 8).unwrap());
        (loss, lm.model().params().to_host().unwrap())
    };
    let (loss, params) = run_with(config);
    assert!(loss.is_finite());
    let (again, params_again) = run_with(config);
    assert_eq!(loss, again);
    assert_eq!(params, params_again);
    // The dropout layers did drop: the same steps without them end elsewhere.
    let (_, plain) = run_with(GptConfig {
        dropout: 0.0,
        ..config
    });
    assert_ne!(params, plain);
}

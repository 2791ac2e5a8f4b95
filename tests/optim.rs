//! The optimizer front-end ([`wgnn::nn::Optimizer`] over a parameter arena) and its kernels on
//! the GPU against the CPU reference over several steps.

mod common;

use common::*;
use wgnn::nn::{Optimizer, ParamStore};
use wgnn::ops::{AdamConfig, SgdConfig};
use wgnn::{ops, reference, Batch, DType, Error, Tensor};

/// A parameter arena holding `params` (one flat parameter each).
fn store(gpu: &wgnn::Gpu, params: &[Vec<f32>]) -> ParamStore {
    let specs: Vec<(String, Vec<usize>, Vec<f32>)> = params
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("p{i}"), vec![p.len()], p.clone()))
        .collect();
    ParamStore::new(gpu, &specs).unwrap()
}

/// One step of `opt` over `store` with these gradients.
fn step(gpu: &wgnn::Gpu, opt: &mut Optimizer, store: &ParamStore, grads: &[Vec<f32>]) {
    for (p, g) in store.params().iter().zip(grads) {
        p.grad.write(g).unwrap();
    }
    let mut batch = Batch::new(gpu);
    opt.step(&mut batch, store).unwrap();
    batch.submit().unwrap();
}

/// Parameter sizes: one element, ragged, and more than one grid row of workgroups.
const SIZES: &[usize] = &[1, 257, 70_001];

fn sgd_configs() -> Vec<SgdConfig> {
    let base = SgdConfig::new(0.05);
    vec![
        base,
        SgdConfig {
            weight_decay: 0.01,
            ..base
        },
        SgdConfig {
            momentum: 0.9,
            dampening: 0.1,
            ..base
        },
        SgdConfig {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.001,
            ..base
        },
    ]
}

#[test]
fn sgd_matches_the_reference_over_steps() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    for config in sgd_configs() {
        let params: Vec<Vec<f32>> = SIZES.iter().map(|&n| random(&mut rng, n)).collect();
        let store = store(&gpu, &params);
        let mut want = params.clone();
        let mut momentum: Vec<Vec<f32>> = SIZES.iter().map(|&n| vec![0.0; n]).collect();
        let mut opt = Optimizer::sgd(config);
        for s in 0..3 {
            let grads: Vec<Vec<f32>> = SIZES.iter().map(|&n| random(&mut rng, n)).collect();
            step(&gpu, &mut opt, &store, &grads);
            for i in 0..SIZES.len() {
                reference::optim::sgd_step(
                    &mut want[i],
                    &grads[i],
                    &mut momentum[i],
                    &config,
                    s == 0,
                );
            }
        }
        for (p, w) in store.params().iter().zip(&want) {
            assert_close(
                &p.value.to_vec::<f32>().unwrap(),
                w,
                1e-5,
                &format!("{config:?} n {} seed {seed}", w.len()),
            );
        }
    }
}

/// Moves each gradient at least 1e-3 away from `-weight_decay * w`. Where coupled decay cancels
/// the gradient, the f32 rounding of `g + wd * w` is most of what is left, and Adam's first step
/// (`m / sqrt(v)`, about ±1) turns that rounding into a whole step of difference.
fn keep_away_from_cancellation(grads: &mut [Vec<f32>], weights: &[Vec<f32>], weight_decay: f32) {
    for (g, w) in grads.iter_mut().flatten().zip(weights.iter().flatten()) {
        let decayed = *g + weight_decay * w;
        if decayed.abs() < 1e-3 {
            *g += 2e-3f32.copysign(decayed);
        }
    }
}

#[test]
fn adam_and_adamw_match_the_reference_over_steps() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    for config in [
        AdamConfig::adam(1e-2),
        AdamConfig {
            weight_decay: 0.1,
            ..AdamConfig::adam(1e-2)
        },
        AdamConfig::adamw(1e-2, 0.1),
    ] {
        let params: Vec<Vec<f32>> = SIZES.iter().map(|&n| random(&mut rng, n)).collect();
        let store = store(&gpu, &params);
        let mut want = params.clone();
        let mut m: Vec<Vec<f32>> = SIZES.iter().map(|&n| vec![0.0; n]).collect();
        let mut v = m.clone();
        let mut opt = Optimizer::adam(config);
        for s in 1..=4 {
            let mut grads: Vec<Vec<f32>> = SIZES.iter().map(|&n| random(&mut rng, n)).collect();
            if !config.decoupled {
                keep_away_from_cancellation(&mut grads, &want, config.weight_decay);
            }
            step(&gpu, &mut opt, &store, &grads);
            for i in 0..SIZES.len() {
                reference::optim::adam_step(
                    &mut want[i],
                    &grads[i],
                    &mut m[i],
                    &mut v[i],
                    &config,
                    s,
                );
            }
        }
        assert_eq!(opt.steps(), 4);
        for (p, w) in store.params().iter().zip(&want) {
            assert_close(
                &p.value.to_vec::<f32>().unwrap(),
                w,
                1e-5,
                &format!("{config:?} n {} seed {seed}", w.len()),
            );
        }
    }
}

#[test]
fn clip_grad_norm_scales_only_when_above_the_limit() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    for max_norm in [0.5f32, 1e6] {
        let mut grads: Vec<Vec<f32>> = SIZES.iter().map(|&n| random(&mut rng, n)).collect();
        let tensors: Vec<Tensor> = grads
            .iter()
            .map(|g| Tensor::from_slice(&gpu, g, &[g.len()]).unwrap())
            .collect();
        let mut batch = Batch::new(&gpu);
        let norm =
            ops::clip_grad_norm(&mut batch, &tensors.iter().collect::<Vec<_>>(), max_norm).unwrap();
        batch.submit().unwrap();
        let want_norm = reference::optim::clip_grad_norm(&mut grads, max_norm);
        let context = format!("max_norm {max_norm} seed {seed}");
        assert_close(&norm.to_vec::<f32>().unwrap(), &[want_norm], 1e-5, &context);
        for (t, w) in tensors.iter().zip(&grads) {
            assert_close(&t.to_vec::<f32>().unwrap(), w, 1e-5, &context);
        }
    }
}

#[test]
fn bad_input_gives_typed_errors() {
    let gpu = gpu();
    let t = |shape: &[usize]| Tensor::zeros(&gpu, shape, DType::F32).unwrap();
    let (p, g, m, v) = (t(&[4]), t(&[4]), t(&[4]), t(&[4]));
    let mut batch = Batch::new(&gpu);
    let invalid = |r: wgnn::Result<()>| matches!(r, Err(Error::InvalidArgument { .. }));
    assert!(invalid(ops::sgd_step(
        &mut batch,
        &p,
        &g,
        ops::Momentum::None,
        &SgdConfig::new(-1.0)
    )));
    assert!(invalid(ops::sgd_step(
        &mut batch,
        &p,
        &g,
        ops::Momentum::None,
        &SgdConfig::new(f32::NAN)
    )));
    let momentum = SgdConfig {
        momentum: 0.9,
        ..SgdConfig::new(0.1)
    };
    assert!(
        invalid(ops::sgd_step(
            &mut batch,
            &p,
            &g,
            ops::Momentum::None,
            &momentum
        )),
        "missing buffer"
    );
    let nesterov = SgdConfig {
        nesterov: true,
        ..SgdConfig::new(0.1)
    };
    assert!(invalid(ops::sgd_step(
        &mut batch,
        &p,
        &g,
        ops::Momentum::Continue(&m),
        &nesterov
    )));
    assert!(invalid(ops::adam_step(
        &mut batch,
        &p,
        &g,
        &m,
        &v,
        &AdamConfig::adam(0.1),
        0
    )));
    let bad_beta = AdamConfig {
        beta1: 1.0,
        ..AdamConfig::adam(0.1)
    };
    assert!(invalid(ops::adam_step(
        &mut batch, &p, &g, &m, &v, &bad_beta, 1
    )));
    let r = ops::adam_step(&mut batch, &p, &t(&[5]), &m, &v, &AdamConfig::adam(0.1), 1);
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })));
    let r = ops::adam_step(&mut batch, &p, &g, &m, &m, &AdamConfig::adam(0.1), 1);
    assert!(matches!(r, Err(Error::Aliasing { .. })), "aliased state");
    let r = ops::sgd_step(
        &mut batch,
        &p,
        &p,
        ops::Momentum::None,
        &SgdConfig::new(0.1),
    );
    assert!(matches!(r, Err(Error::Aliasing { .. })), "aliased gradient");
    if gpu.supports_f16() {
        let h = Tensor::zeros(&gpu, &[4], DType::F16).unwrap();
        let r = ops::sgd_step(
            &mut batch,
            &h,
            &g,
            ops::Momentum::None,
            &SgdConfig::new(0.1),
        );
        assert!(matches!(r, Err(Error::DtypeMismatch { .. })));
    }
    assert!(matches!(
        ops::clip_grad_norm(&mut batch, &[], 1.0),
        Err(Error::EmptyTensor { .. })
    ));
    assert!(matches!(
        ops::clip_grad_norm(&mut batch, &[&g], 0.0),
        Err(Error::InvalidArgument { .. })
    ));
    // An optimizer's state belongs to the arena it first stepped.
    let mut opt = Optimizer::sgd(SgdConfig {
        momentum: 0.9,
        ..SgdConfig::new(0.1)
    });
    let (one, other) = (store(&gpu, &[vec![1.0; 4]]), store(&gpu, &[vec![1.0; 4]]));
    opt.step(&mut batch, &one).unwrap();
    let dispatches = batch.dispatches();
    assert!(matches!(
        opt.step(&mut batch, &other),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(batch.dispatches(), dispatches);
}

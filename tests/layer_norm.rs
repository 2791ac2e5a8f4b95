//! LayerNorm and RMSNorm, forward and backward, against the CPU reference on ragged shapes, f32 and
//! f16, with finite differences on the reference.

mod common;

use common::*;
use wgnn::ops::{self, NormGrads, NormKind};
use wgnn::reference::layer_norm as reference;
use wgnn::reference::Array;
use wgnn::{Batch, DType, Error, Gpu, Tensor};

const SHAPES: &[&[usize]] = &[
    &[1, 1],
    &[3, 7],
    &[2, 5, 33],
    &[130, 128],
    &[4100, 9],
    &[2, 1000],
];

fn check(gpu: &Gpu, shape: &[usize], kind: NormKind, dtype: DType, tol: f32, seed: u64) {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let cols = *shape.last().unwrap();
    let n: usize = shape.iter().product();
    let prep = |v: Vec<f32>| {
        if dtype == DType::F16 {
            round_f16(&v)
        } else {
            v
        }
    };
    // An offset row mean, so LayerNorm's centring matters.
    let x = prep(random(&mut rng, n).iter().map(|v| 3.0 * v + 0.5).collect());
    let gamma = prep(random(&mut rng, cols).iter().map(|v| 1.0 + v).collect());
    let beta = prep(random(&mut rng, cols));
    let dy = prep(random(&mut rng, n));
    let gg0 = prep(random(&mut rng, cols));
    let gb0 = prep(random(&mut rng, cols));
    let shift = kind == NormKind::LayerNorm;
    let eps = 1e-5;
    let t = |v: &[f32], s: &[usize]| Tensor::from_f32(gpu, v, s, dtype).unwrap();
    let (tx, tg, tb, tdy) = (
        t(&x, shape),
        t(&gamma, &[cols]),
        t(&beta, &[cols]),
        t(&dy, shape),
    );
    let (tgg, tgb) = (t(&gg0, &[cols]), t(&gb0, &[cols]));
    let mut batch = Batch::new(gpu);
    let out = ops::layer_norm(&mut batch, &tx, &tg, shift.then_some(&tb), kind, eps).unwrap();
    let grads = NormGrads {
        gamma: &tgg,
        beta: shift.then_some(&tgb),
    };
    let dx = ops::layer_norm_backward(&mut batch, &tx, &out.stats, &tg, &tdy, kind, grads).unwrap();
    batch.submit().unwrap();
    assert_guard_intact(&out.y, "y");
    assert_guard_intact(&dx, "dx");
    let ax = Array::new(shape, x.clone());
    let want = reference::layer_norm(&ax, &gamma, shift.then_some(&beta[..]), kind, eps);
    let (want_dx, want_dg, want_db) =
        reference::layer_norm_backward(&ax, &gamma, &Array::new(shape, dy), kind, eps);
    let context = format!("{kind:?} {shape:?} {dtype:?}, seed {seed}");
    assert_close(
        &out.y.to_vec_f32().unwrap(),
        &want.data,
        tol,
        &format!("y, {context}"),
    );
    assert_close(
        &dx.to_vec_f32().unwrap(),
        &want_dx.data,
        tol,
        &format!("dx, {context}"),
    );
    let plus = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| a + b).collect::<Vec<_>>();
    assert_close(
        &tgg.to_vec_f32().unwrap(),
        &plus(&gg0, &want_dg),
        tol,
        &format!("dγ, {context}"),
    );
    if shift {
        assert_close(
            &tgb.to_vec_f32().unwrap(),
            &plus(&gb0, &want_db),
            tol,
            &format!("dβ, {context}"),
        );
    } else {
        assert_eq!(tgb.to_vec_f32().unwrap(), gb0, "RMSNorm left dβ alone");
    }
}

#[test]
fn layer_norm_and_rms_norm_match_the_reference() {
    let gpu = gpu();
    let (_, seed) = rng();
    for shape in SHAPES {
        for kind in [NormKind::LayerNorm, NormKind::RmsNorm] {
            check(&gpu, shape, kind, DType::F32, 1e-4, seed);
            if gpu.supports_f16() && shape.iter().product::<usize>() < 100_000 {
                check(&gpu, shape, kind, DType::F16, 2e-2, seed);
            }
        }
    }
}

#[test]
fn reference_backward_matches_finite_differences() {
    let (mut rng, seed) = rng();
    for kind in [NormKind::LayerNorm, NormKind::RmsNorm] {
        let shape = [3, 6];
        let x = random(&mut rng, 18);
        let gamma: Vec<f32> = random(&mut rng, 6).iter().map(|v| 1.0 + v).collect();
        let beta = random(&mut rng, 6);
        let w = random(&mut rng, 18);
        let shift = (kind == NormKind::LayerNorm).then_some(&beta[..]);
        let loss = |x: &[f32], g: &[f32], b: Option<&[f32]>| -> f64 {
            let y = reference::layer_norm(&Array::new(&shape, x.to_vec()), g, b, kind, 1e-5);
            y.data
                .iter()
                .zip(&w)
                .map(|(y, w)| f64::from(*y) * f64::from(*w))
                .sum()
        };
        let (dx, dg, db) = reference::layer_norm_backward(
            &Array::new(&shape, x.clone()),
            &gamma,
            &Array::new(&shape, w.clone()),
            kind,
            1e-5,
        );
        let eps = 1e-2f32;
        let numeric = |f: &dyn Fn(f32) -> f64| (f(eps) - f(-eps)) / (2.0 * f64::from(eps));
        let close = |n: f64, a: f32, what: String| {
            assert!(
                (n - f64::from(a)).abs() <= 2e-3 * f64::from(a).abs().max(1.0),
                "{kind:?} {what}: numeric {n}, analytic {a} (seed {seed})"
            );
        };
        for i in 0..18 {
            let n = numeric(&|e| {
                let mut v = x.clone();
                v[i] += e;
                loss(&v, &gamma, shift)
            });
            close(n, dx.data[i], format!("dx[{i}]"));
        }
        for i in 0..6 {
            let n = numeric(&|e| {
                let mut g = gamma.clone();
                g[i] += e;
                loss(&x, &g, shift)
            });
            close(n, dg[i], format!("dγ[{i}]"));
            if let Some(beta) = shift {
                let n = numeric(&|e| {
                    let mut b = beta.to_vec();
                    b[i] += e;
                    loss(&x, &gamma, Some(&b))
                });
                close(n, db[i], format!("dβ[{i}]"));
            }
        }
    }
}

#[test]
fn bad_inputs_get_typed_errors() {
    let gpu = gpu();
    let mut batch = Batch::new(&gpu);
    let x = Tensor::zeros(&gpu, &[4, 8], DType::F32).unwrap();
    let g = Tensor::zeros(&gpu, &[8], DType::F32).unwrap();
    let g7 = Tensor::zeros(&gpu, &[7], DType::F32).unwrap();
    let norm = |batch: &mut Batch, g: &Tensor, b: Option<&Tensor>, kind, eps| {
        ops::layer_norm(batch, &x, g, b, kind, eps).map(drop)
    };
    assert!(matches!(
        norm(&mut batch, &g7, None, NormKind::LayerNorm, 1e-5),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        norm(&mut batch, &g, Some(&g), NormKind::RmsNorm, 1e-5),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        norm(&mut batch, &g, None, NormKind::LayerNorm, 0.0),
        Err(Error::InvalidArgument { .. })
    ));
    let wide = Tensor::zeros(&gpu, &[1, 20_000], DType::F32).unwrap();
    let gw = Tensor::zeros(&gpu, &[20_000], DType::F32).unwrap();
    assert!(matches!(
        ops::layer_norm(&mut batch, &wide, &gw, None, NormKind::LayerNorm, 1e-5),
        Err(Error::LimitExceeded { .. })
    ));
}

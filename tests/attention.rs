//! Fused attention and its backward pass against the CPU reference and the naive GPU path, on
//! ragged shapes (causal, padded, heads and head dimensions that are not powers of two, sequences
//! long enough to split into chunks), f32 and f16; finite differences on the reference.

mod common;

use common::*;
use wgnn::ops::{self, AttentionOptions};
use wgnn::reference::attention::{self as reference, AttentionSpec};
use wgnn::reference::Array;
use wgnn::{Batch, DType, Error, Gpu, Tensor};

/// One GPU user at a time in this file: on GL (llvmpipe) a submission holds the adapter's context
/// for as long as the GPU runs it, and wgpu gives up on a context lock after 6 s, which the
/// T = 2,048 cases of another test thread would exceed.
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// (batch, T, heads, head_dim, causal, lengths).
type Case = (usize, usize, usize, usize, bool, Option<Vec<u32>>);

fn cases() -> Vec<Case> {
    vec![
        (2, 1, 2, 16, true, None),
        (2, 7, 3, 40, true, Some(vec![5, 7])),
        (1, 7, 1, 3, false, None),
        (1, 64, 2, 64, false, None),
        (2, 64, 1, 16, true, Some(vec![0, 33])),
        (2, 257, 2, 40, true, Some(vec![200, 257])),
        (1, 257, 1, 128, false, Some(vec![250])),
        // At D = 64: two forward chunks of 1,664 keys and three backward chunks of 908, merged.
        (1, 2048, 1, 64, true, Some(vec![1999])),
    ]
}

struct Run {
    out: Vec<f32>,
    lse: Vec<f32>,
    dqkv: Vec<f32>,
}

fn run_fused(gpu: &Gpu, qkv: &[f32], g: &[f32], case: &Case, dtype: DType) -> Run {
    let (b, t, h, d, causal, lengths) = case;
    let x = Tensor::from_f32(gpu, qkv, &[*b, *t, 3 * h * d], dtype).unwrap();
    let go = Tensor::from_f32(gpu, g, &[*b, *t, h * d], dtype).unwrap();
    let lens = lengths
        .as_ref()
        .map(|l| Tensor::from_slice(gpu, l, &[*b]).unwrap());
    let options = AttentionOptions {
        heads: *h,
        causal: *causal,
        lengths: lens.as_ref(),
        scale: None,
    };
    let mut batch = Batch::new(gpu);
    let fwd = ops::attention(&mut batch, &x, &options).unwrap();
    let dqkv = ops::attention_backward(&mut batch, &x, &fwd, &go, &options).unwrap();
    batch.submit().unwrap();
    for (tensor, what) in [(&fwd.out, "out"), (&fwd.lse, "lse"), (&dqkv, "dqkv")] {
        assert_guard_intact(tensor, what);
    }
    Run {
        out: fwd.out.to_vec_f32().unwrap(),
        lse: fwd.lse.to_vec_f32().unwrap(),
        dqkv: dqkv.to_vec_f32().unwrap(),
    }
}

fn run_naive(gpu: &Gpu, qkv: &[f32], g: &[f32], case: &Case) -> (Vec<f32>, Vec<f32>) {
    let (b, t, h, d, causal, lengths) = case;
    let x = Tensor::from_f32(gpu, qkv, &[*b, *t, 3 * h * d], DType::F32).unwrap();
    let go = Tensor::from_f32(gpu, g, &[*b, *t, h * d], DType::F32).unwrap();
    let lens = lengths
        .as_ref()
        .map(|l| Tensor::from_slice(gpu, l, &[*b]).unwrap());
    let options = AttentionOptions {
        heads: *h,
        causal: *causal,
        lengths: lens.as_ref(),
        scale: None,
    };
    let mut batch = Batch::new(gpu);
    let out = ops::attention_naive(&mut batch, &x, &options).unwrap();
    let dqkv = ops::attention_naive_backward(&mut batch, &x, &go, &options).unwrap();
    batch.submit().unwrap();
    (out.to_vec_f32().unwrap(), dqkv.to_vec_f32().unwrap())
}

fn spec(case: &Case) -> AttentionSpec {
    AttentionSpec {
        heads: case.2,
        causal: case.4,
        lengths: case.5.clone(),
        scale: None,
    }
}

/// lse matches where finite, and is +inf exactly where the reference's is.
fn assert_lse(got: &[f32], want: &[f32], tol: f32, context: &str) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= tol * w.abs().max(1.0)
        };
        assert!(ok, "{context}: lse[{i}] is {g}, the reference says {w}");
    }
}

#[test]
fn fused_and_naive_match_the_reference_f32() {
    let _gpu = exclusive();
    let gpu = gpu();
    let (mut rng, seed) = rng();
    for case in cases() {
        let (b, t, h, d, ..) = case;
        let qkv = random(&mut rng, b * t * 3 * h * d);
        let g = random(&mut rng, b * t * h * d);
        let context = format!("case {case:?}, seed {seed}");
        let x = Array::new(&[b, t, 3 * h * d], qkv.clone());
        let (want_out, want_lse) = reference::attention(&x, &spec(&case));
        let want_dqkv =
            reference::attention_backward(&x, &Array::new(&[b, t, h * d], g.clone()), &spec(&case));
        let fused = run_fused(&gpu, &qkv, &g, &case, DType::F32);
        assert_close(
            &fused.out,
            &want_out.data,
            1e-4,
            &format!("fused out, {context}"),
        );
        assert_lse(&fused.lse, &want_lse, 1e-4, &format!("fused, {context}"));
        assert_close(
            &fused.dqkv,
            &want_dqkv.data,
            1e-4,
            &format!("fused dqkv, {context}"),
        );
        let (out, dqkv) = run_naive(&gpu, &qkv, &g, &case);
        assert_close(&out, &want_out.data, 1e-4, &format!("naive out, {context}"));
        assert_close(
            &dqkv,
            &want_dqkv.data,
            1e-4,
            &format!("naive dqkv, {context}"),
        );
    }
}

/// The longest sequence, 8,192 tokens: several chunked dispatches each way, none cut short
/// by the software drivers' 65,535-iteration cap (a truncated loop leaves keys out and fails).
/// Forward and backward in separate submissions, each well under GL's lock timeout.
#[test]
fn the_longest_sequences_match_the_reference() {
    let _gpu = exclusive();
    let gpu = gpu();
    let (mut rng, seed) = rng();
    let case: Case = (1, 8192, 1, 16, true, Some(vec![8000]));
    let (b, t, h, d, ..) = case;
    let qkv = random(&mut rng, b * t * 3 * h * d);
    let g = random(&mut rng, b * t * h * d);
    let x = Tensor::from_f32(&gpu, &qkv, &[b, t, 3 * h * d], DType::F32).unwrap();
    let go = Tensor::from_f32(&gpu, &g, &[b, t, h * d], DType::F32).unwrap();
    let lens = Tensor::from_slice(&gpu, &[8000u32], &[1]).unwrap();
    let options = AttentionOptions {
        heads: h,
        causal: true,
        lengths: Some(&lens),
        scale: None,
    };
    let mut batch = Batch::new(&gpu);
    let fwd = ops::attention(&mut batch, &x, &options).unwrap();
    batch.submit().unwrap();
    let mut batch = Batch::new(&gpu);
    let dqkv = ops::attention_backward(&mut batch, &x, &fwd, &go, &options).unwrap();
    batch.submit().unwrap();
    let context = format!("T = 8,192, seed {seed}");
    let xa = Array::new(&[b, t, 3 * h * d], qkv);
    let (want_out, want_lse) = reference::attention(&xa, &spec(&case));
    let want_dqkv =
        reference::attention_backward(&xa, &Array::new(&[b, t, h * d], g), &spec(&case));
    assert_close(
        &fwd.out.to_vec_f32().unwrap(),
        &want_out.data,
        1e-4,
        &context,
    );
    assert_lse(&fwd.lse.to_vec_f32().unwrap(), &want_lse, 1e-4, &context);
    assert_close(&dqkv.to_vec_f32().unwrap(), &want_dqkv.data, 1e-4, &context);
}

#[test]
fn fused_matches_the_reference_f16() {
    let _gpu = exclusive();
    let gpu = gpu();
    if !gpu.supports_f16() {
        skip("fused_matches_the_reference_f16", "no SHADER_F16");
        return;
    }
    let (mut rng, seed) = rng();
    // Head dimensions 16, 40 and 3 (each a pipeline to compile on a cold software driver).
    for case in cases()
        .into_iter()
        .filter(|c| c.1 <= 257 && [16, 40, 3].contains(&c.3))
    {
        let (b, t, h, d, ..) = case;
        let qkv = round_f16(&random(&mut rng, b * t * 3 * h * d));
        let g = round_f16(&random(&mut rng, b * t * h * d));
        let context = format!("f16 case {case:?}, seed {seed}");
        let x = Array::new(&[b, t, 3 * h * d], qkv.clone());
        let (want_out, want_lse) = reference::attention(&x, &spec(&case));
        let want_dqkv =
            reference::attention_backward(&x, &Array::new(&[b, t, h * d], g.clone()), &spec(&case));
        let fused = run_fused(&gpu, &qkv, &g, &case, DType::F16);
        assert_close(&fused.out, &want_out.data, 1e-2, &context);
        assert_lse(&fused.lse, &want_lse, 1e-3, &context);
        assert_close(&fused.dqkv, &want_dqkv.data, 1e-2, &context);
    }
}

#[test]
fn results_are_the_same_from_run_to_run() {
    let _gpu = exclusive();
    let gpu = gpu();
    let (mut rng, _) = rng();
    let case: Case = (1, 2048, 2, 40, true, None);
    let qkv = random(&mut rng, 2048 * 3 * 80);
    let g = random(&mut rng, 2048 * 80);
    let first = run_fused(&gpu, &qkv, &g, &case, DType::F32);
    let second = run_fused(&gpu, &qkv, &g, &case, DType::F32);
    assert!(first.out == second.out && first.dqkv == second.dqkv);
}

/// The reference's backward against central differences of L = Σ out ⊙ w.
#[test]
fn reference_backward_matches_finite_differences() {
    let (mut rng, seed) = rng();
    for case in [
        (1usize, 5usize, 2usize, 3usize, true, Some(vec![4u32])),
        (2, 4, 1, 4, false, None),
    ] {
        let (b, t, h, d, ..) = case;
        let s = spec(&case);
        let qkv = random(&mut rng, b * t * 3 * h * d);
        let w = random(&mut rng, b * t * h * d);
        let loss = |x: &[f32]| -> f64 {
            let (out, _) = reference::attention(&Array::new(&[b, t, 3 * h * d], x.to_vec()), &s);
            out.data
                .iter()
                .zip(&w)
                .map(|(o, w)| f64::from(*o) * f64::from(*w))
                .sum()
        };
        let grad = reference::attention_backward(
            &Array::new(&[b, t, 3 * h * d], qkv.clone()),
            &Array::new(&[b, t, h * d], w.clone()),
            &s,
        );
        let eps = 1e-2f32;
        for i in 0..qkv.len() {
            let mut plus = qkv.clone();
            plus[i] += eps;
            let mut minus = qkv.clone();
            minus[i] -= eps;
            let numeric = (loss(&plus) - loss(&minus)) / (2.0 * f64::from(eps));
            let analytic = f64::from(grad.data[i]);
            assert!(
                (numeric - analytic).abs() <= 2e-3 * analytic.abs().max(1.0),
                "case {case:?}, element {i}: numeric {numeric}, analytic {analytic} (seed {seed})"
            );
        }
    }
}

#[test]
fn bad_inputs_get_typed_errors() {
    let _gpu = exclusive();
    let gpu = gpu();
    let mut batch = Batch::new(&gpu);
    let x = Tensor::zeros(&gpu, &[1, 4, 3 * 2 * 8], DType::F32).unwrap();
    let opts = |heads| AttentionOptions {
        heads,
        ..Default::default()
    };
    assert!(matches!(
        ops::attention(&mut batch, &x, &opts(5)),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        ops::attention(&mut batch, &x, &opts(0)),
        Err(Error::ShapeMismatch { .. })
    ));
    let flat = Tensor::zeros(&gpu, &[4, 48], DType::F32).unwrap();
    assert!(matches!(
        ops::attention(&mut batch, &flat, &opts(2)),
        Err(Error::ShapeMismatch { .. })
    ));
    let wide = Tensor::zeros(&gpu, &[1, 2, 3 * 136], DType::F32).unwrap();
    assert!(matches!(
        ops::attention(&mut batch, &wide, &opts(1)),
        Err(Error::LimitExceeded { .. })
    ));
    let lengths = Tensor::zeros(&gpu, &[2], DType::U32).unwrap();
    let bad = AttentionOptions {
        heads: 2,
        lengths: Some(&lengths),
        ..Default::default()
    };
    assert!(matches!(
        ops::attention(&mut batch, &x, &bad),
        Err(Error::ShapeMismatch { .. })
    ));
    let nan_scale = AttentionOptions {
        heads: 2,
        scale: Some(f32::NAN),
        ..Default::default()
    };
    assert!(matches!(
        ops::attention(&mut batch, &x, &nan_scale),
        Err(Error::InvalidArgument { .. })
    ));
    let ids = Tensor::zeros(&gpu, &[1, 4, 48], DType::U32).unwrap();
    assert!(matches!(
        ops::attention(&mut batch, &ids, &opts(2)),
        Err(Error::DtypeMismatch { .. })
    ));
}

/// Large logits stay finite: scores of ±1e4 after scaling.
#[test]
fn large_scores_stay_finite() {
    let _gpu = exclusive();
    let gpu = gpu();
    let (mut rng, seed) = rng();
    let case: Case = (1, 33, 1, 8, true, None);
    let qkv: Vec<f32> = random(&mut rng, 33 * 24)
        .iter()
        .map(|v| v * 100.0)
        .collect();
    let g = random(&mut rng, 33 * 8);
    let fused = run_fused(&gpu, &qkv, &g, &case, DType::F32);
    let x = Array::new(&[1, 33, 24], qkv);
    let (want, _) = reference::attention(&x, &spec(&case));
    assert!(fused.out.iter().chain(&fused.dqkv).all(|v| v.is_finite()));
    assert_close(&fused.out, &want.data, 1e-3, &format!("seed {seed}"));
}

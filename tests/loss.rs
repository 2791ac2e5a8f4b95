//! Cross-entropy (with label smoothing) and soft-target cross-entropy on the GPU against the CPU
//! reference; the reference gradients against finite differences.

mod common;

use common::*;
use rand::RngExt;
use wgnn::reference::{self, Array};
use wgnn::{ops, Batch, DType, Error, Tensor};

fn labels_for(rng: &mut rand::rngs::StdRng, rows: usize, classes: usize) -> Vec<u32> {
    (0..rows)
        .map(|_| rng.random_range(0..classes as u32))
        .collect()
}

#[test]
fn cross_entropy_matches_the_reference() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    // Rows of up to 64 classes take the one-thread-per-row kernel (130 × 64: three workgroups of
    // it), 65 and more the workgroup-per-row one. The last two have rows long enough to take the
    // chunked path: one workgroup walking them looped past the software drivers' 65,535-iteration
    // cap (NaN tails).
    for &(rows, classes) in &[
        (1usize, 1usize),
        (7, 10),
        (130, 64),
        (5, 65),
        (33, 1000),
        (300, 3),
        (2, 70_001),
        (3, 1_000_003),
        (1, (1 << 23) + 4096),
    ] {
        for dtype in [DType::F32, DType::F16] {
            if dtype == DType::F16 && (!gpu.supports_f16() || classes > 100_000) {
                continue;
            }
            for smoothing in [0.0f32, 0.1] {
                let mut x: Vec<f32> = random(&mut rng, rows * classes)
                    .iter()
                    .map(|v| v * 6.0)
                    .collect();
                if dtype == DType::F16 {
                    x = round_f16(&x);
                }
                let mut labels = labels_for(&mut rng, rows, classes);
                if rows > 2 {
                    labels[1] = ops::IGNORE_INDEX;
                }
                let shape = [rows, classes];
                let (want_loss, want_grad) = reference::loss::cross_entropy(
                    &Array::new(&shape, x.clone()),
                    &labels,
                    smoothing,
                );
                let tx = Tensor::from_f32(&gpu, &x, &shape, dtype).unwrap();
                let tl = Tensor::from_slice(&gpu, &labels, &[rows]).unwrap();
                let mut batch = Batch::new(&gpu);
                let out = ops::cross_entropy(&mut batch, &tx, &tl, smoothing).unwrap();
                batch.submit().unwrap();
                let context =
                    format!("{rows}x{classes} {dtype:?} smoothing {smoothing} seed {seed}");
                let tol = if dtype == DType::F16 { 1e-2 } else { 1e-5 };
                assert_eq!(out.loss.shape(), [1]);
                assert_close(
                    &out.loss.to_vec::<f32>().unwrap(),
                    &[want_loss],
                    1e-5,
                    &context,
                );
                assert_close(
                    &out.grad_logits.to_vec_f32().unwrap(),
                    &want_grad.data,
                    tol,
                    &context,
                );
                assert_guard_intact(&out.grad_logits, &context);
            }
        }
    }
}

#[test]
fn cross_entropy_adversarial_logits() {
    let gpu = gpu();
    let inf = f32::INFINITY;
    // Huge logits stay finite; a masked (-inf) non-target class contributes nothing.
    let x = [1e4, -1e4, 9999.0, 3e38, -3e38, 0.0, -inf, 2.0, 1.0];
    let labels = [2u32, 0, 1];
    let tx = Tensor::from_slice(&gpu, &x, &[3, 3]).unwrap();
    let tl = Tensor::from_slice(&gpu, &labels, &[3]).unwrap();
    let mut batch = Batch::new(&gpu);
    let out = ops::cross_entropy(&mut batch, &tx, &tl, 0.0).unwrap();
    batch.submit().unwrap();
    let (want_loss, want_grad) =
        reference::loss::cross_entropy(&Array::new(&[3, 3], x.to_vec()), &labels, 0.0);
    let loss = out.loss.to_vec::<f32>().unwrap()[0];
    assert!(loss.is_finite(), "{loss}");
    assert_close(&[loss], &[want_loss], 1e-5, "adversarial loss");
    let grad = out.grad_logits.to_vec::<f32>().unwrap();
    assert!(grad.iter().all(|g| g.is_finite()), "{grad:?}");
    assert_close(&grad, &want_grad.data, 1e-5, "adversarial grad");
    assert_eq!(grad[6], 0.0, "a masked class gets exactly zero gradient");

    // A label past the class count is left out like an ignored row (the other rows keep the
    // gradient of their own mean) and counted in label_counts.
    let bad = Tensor::from_slice(&gpu, &[2u32, 7, 1], &[3]).unwrap();
    let mut batch = Batch::new(&gpu);
    let out = ops::cross_entropy(&mut batch, &tx, &bad, 0.0).unwrap();
    batch.submit().unwrap();
    let (want_loss, want_grad) = reference::loss::cross_entropy(
        &Array::new(&[3, 3], x.to_vec()),
        &[2, ops::IGNORE_INDEX, 1],
        0.0,
    );
    assert_close(
        &out.loss.to_vec::<f32>().unwrap(),
        &[want_loss],
        1e-5,
        "bad label loss",
    );
    assert_close(
        &out.grad_logits.to_vec::<f32>().unwrap(),
        &want_grad.data,
        1e-5,
        "bad label grad",
    );
    let counts = out.label_counts.as_ref().unwrap().to_vec::<f32>().unwrap();
    assert_eq!(counts, [2.0, 1.0], "rows counted, labels out of range");

    // With smoothing, mass on a masked class makes the loss +inf: correct, not NaN.
    let mut batch = Batch::new(&gpu);
    let out = ops::cross_entropy(&mut batch, &tx, &tl, 0.1).unwrap();
    batch.submit().unwrap();
    assert_eq!(out.loss.to_vec::<f32>().unwrap()[0], inf);
}

#[test]
fn soft_cross_entropy_matches_the_reference() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    for &(rows, classes) in &[
        (1usize, 1usize),
        (9, 10),
        (17, 1001),
        (2, 40_000),
        (2, 1_000_003),
    ] {
        for temperature in [1.0f32, 2.5] {
            let z: Vec<f32> = random(&mut rng, rows * classes)
                .iter()
                .map(|v| v * 5.0)
                .collect();
            let mut t: Vec<f32> = random(&mut rng, rows * classes)
                .iter()
                .map(|v| v * 5.0)
                .collect();
            if classes > 3 {
                t[2] = f32::NEG_INFINITY; // a class the teacher rules out
            }
            let shape = [rows, classes];
            let (want_loss, want_grad) = reference::loss::soft_cross_entropy(
                &Array::new(&shape, z.clone()),
                &Array::new(&shape, t.clone()),
                temperature,
            );
            let tz = Tensor::from_slice(&gpu, &z, &shape).unwrap();
            let tt = Tensor::from_slice(&gpu, &t, &shape).unwrap();
            let mut batch = Batch::new(&gpu);
            let out = ops::soft_cross_entropy(&mut batch, &tz, &tt, temperature).unwrap();
            batch.submit().unwrap();
            let context = format!("{rows}x{classes} T {temperature} seed {seed}");
            assert_close(
                &out.loss.to_vec::<f32>().unwrap(),
                &[want_loss],
                1e-5,
                &context,
            );
            assert_close(
                &out.grad_logits.to_vec::<f32>().unwrap(),
                &want_grad.data,
                1e-5,
                &context,
            );
        }
    }
}

/// Ignored rows leave the mean, as PyTorch's `ignore_index`: two equal logit rows with one ignored
/// give that row's loss, not half of it; all rows ignored give NaN (0/0) and zero gradients.
#[test]
fn ignored_rows_leave_the_mean() {
    let gpu = gpu();
    let x = [0.0f32, 0.0, 0.0, 0.0];
    let tx = Tensor::from_slice(&gpu, &x, &[2, 2]).unwrap();
    let one_ignored = Tensor::from_slice(&gpu, &[0u32, ops::IGNORE_INDEX], &[2]).unwrap();
    let all_ignored = Tensor::from_slice(&gpu, &[ops::IGNORE_INDEX; 2], &[2]).unwrap();
    let mut batch = Batch::new(&gpu);
    let one = ops::cross_entropy(&mut batch, &tx, &one_ignored, 0.0).unwrap();
    let all = ops::cross_entropy(&mut batch, &tx, &all_ignored, 0.0).unwrap();
    batch.submit().unwrap();
    let loss = one.loss.to_vec::<f32>().unwrap()[0];
    assert!((loss - std::f32::consts::LN_2).abs() < 1e-6, "{loss}");
    assert_eq!(
        one.grad_logits.to_vec::<f32>().unwrap(),
        [-0.5, 0.5, 0.0, 0.0]
    );
    assert!(all.loss.to_vec::<f32>().unwrap()[0].is_nan());
    assert_eq!(all.grad_logits.to_vec::<f32>().unwrap(), [0.0; 4]);
    assert_eq!(
        one.label_counts.as_ref().unwrap().to_vec::<f32>().unwrap(),
        [1.0, 0.0]
    );
}

/// A label past the classes (which only the GPU sees) counts like an ignored row: it does not
/// dilute the other rows' mean, and label_counts reports it. Over many rows and chunked counts.
#[test]
fn labels_past_the_classes_are_left_out_and_counted() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    let (rows, classes) = (70_001usize, 3usize);
    let x = random(&mut rng, rows * classes);
    let mut labels: Vec<u32> = (0..rows).map(|r| (r % classes) as u32).collect();
    let mut bad = 0;
    for r in (0..rows).step_by(97) {
        labels[r] = classes as u32 + (r % 5) as u32;
        bad += 1;
    }
    labels[1] = ops::IGNORE_INDEX;
    let shape = [rows, classes];
    let (want_loss, want_grad) =
        reference::loss::cross_entropy(&Array::new(&shape, x.clone()), &labels, 0.0);
    let tx = Tensor::from_slice(&gpu, &x, &shape).unwrap();
    let tl = Tensor::from_slice(&gpu, &labels, &[rows]).unwrap();
    let mut batch = Batch::new(&gpu);
    let out = ops::cross_entropy(&mut batch, &tx, &tl, 0.0).unwrap();
    batch.submit().unwrap();
    let context = format!("seed {seed}");
    assert_close(
        &out.loss.to_vec::<f32>().unwrap(),
        &[want_loss],
        1e-5,
        &context,
    );
    assert_close(
        &out.grad_logits.to_vec::<f32>().unwrap(),
        &want_grad.data,
        1e-5,
        &context,
    );
    let counts = out.label_counts.as_ref().unwrap().to_vec::<f32>().unwrap();
    assert_eq!(counts, [(rows - bad - 1) as f32, bad as f32], "{context}");
}

#[test]
fn reference_gradients_match_finite_differences() {
    let (mut rng, seed) = rng();
    let shape = [4, 6];
    let x = Array::new(
        &shape,
        random(&mut rng, 24).iter().map(|v| v * 3.0).collect(),
    );
    let teacher = Array::new(
        &shape,
        random(&mut rng, 24).iter().map(|v| v * 3.0).collect(),
    );
    let labels = [5u32, 0, ops::IGNORE_INDEX, 3];
    // The reference returns an f32 loss: h = 1e-2 keeps its rounding (~1e-6) small against 2h.
    let h = 1e-2f32;
    let check = |name: &str, f: &dyn Fn(&Array) -> (f32, Array)| {
        let (_, grad) = f(&x);
        for i in 0..x.data.len() {
            let (mut p, mut m) = (x.clone(), x.clone());
            p.data[i] += h;
            m.data[i] -= h;
            let fd = (f64::from(f(&p).0) - f64::from(f(&m).0)) / (2.0 * f64::from(h));
            let an = f64::from(grad.data[i]);
            assert!(
                (fd - an).abs() <= 5e-4 + 1e-3 * an.abs(),
                "{name} [{i}]: {an} vs {fd} (seed {seed})"
            );
        }
    };
    check("cross_entropy", &|x| {
        reference::loss::cross_entropy(x, &labels, 0.0)
    });
    check("cross_entropy smoothed", &|x| {
        reference::loss::cross_entropy(x, &labels, 0.2)
    });
    check("soft_cross_entropy", &|x| {
        reference::loss::soft_cross_entropy(x, &teacher, 2.0)
    });
    // Regression losses, away from their kinks (|e| = 0 for L1, |e| = delta for Huber).
    let targets: Vec<f32> = teacher.data.clone();
    for (name, loss) in [
        ("mse", ops::Regression::Mse),
        ("l1", ops::Regression::L1),
        ("huber", ops::Regression::Huber { delta: 0.7 }),
    ] {
        let away = x
            .data
            .iter()
            .zip(&targets)
            .all(|(a, b)| ((a - b).abs() - 0.7).abs() > 2.0 * h && (a - b).abs() > 2.0 * h);
        if away {
            check(name, &|x| reference::loss::regression(x, &targets, loss));
        }
    }
}

/// MSE, L1 and Huber on the GPU against the reference, over ragged sizes (one element, odd
/// counts, several grid rows) in f32 and f16, with a poisoned gradient output.
#[test]
fn regression_losses_match_the_reference() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    let dtypes: &[DType] = if gpu.supports_f16() {
        &[DType::F32, DType::F16]
    } else {
        &[DType::F32]
    };
    for &dtype in dtypes {
        for shape in [vec![1, 1], vec![7, 3], vec![3, 70_001]] {
            let n: usize = shape.iter().product();
            let mut y: Vec<f32> = random(&mut rng, n).iter().map(|v| v * 3.0).collect();
            let mut t: Vec<f32> = random(&mut rng, n).iter().map(|v| v * 3.0).collect();
            if dtype == DType::F16 {
                (y, t) = (round_f16(&y), round_f16(&t));
            }
            for loss in [
                ops::Regression::Mse,
                ops::Regression::L1,
                ops::Regression::Huber { delta: 1.0 },
                ops::Regression::Huber { delta: 0.25 },
            ] {
                let (want_loss, want_grad) =
                    reference::loss::regression(&Array::new(&shape, y.clone()), &t, loss);
                let ty = Tensor::from_f32(&gpu, &y, &shape, dtype).unwrap();
                let tt = Tensor::from_f32(&gpu, &t, &shape, dtype).unwrap();
                let mut batch = Batch::new(&gpu);
                let out = ops::regression(&mut batch, &ty, &tt, loss).unwrap();
                batch.submit().unwrap();
                let context = format!("{loss:?} {shape:?} {dtype:?} seed {seed}");
                let tol = if dtype == DType::F16 { 1e-2 } else { 1e-5 };
                assert_close(
                    &out.loss.to_vec::<f32>().unwrap(),
                    &[want_loss],
                    tol,
                    &context,
                );
                // Gradients are of size 1/n: compare them scaled to O(1).
                let scaled = |g: Vec<f32>| g.iter().map(|v| v * n as f32).collect::<Vec<f32>>();
                assert_close(
                    &scaled(out.grad_logits.to_vec_f32().unwrap()),
                    &scaled(want_grad.data),
                    tol,
                    &context,
                );
                assert_guard_intact(&out.grad_logits, &context);
            }
        }
    }
    // Bad input: shapes, dtypes, a delta that is no positive number.
    let a = Tensor::zeros(&gpu, &[2, 3], DType::F32).unwrap();
    let b = Tensor::zeros(&gpu, &[3, 2], DType::F32).unwrap();
    let mut batch = Batch::new(&gpu);
    assert!(matches!(
        ops::regression(&mut batch, &a, &b, ops::Regression::Mse),
        Err(Error::ShapeMismatch { .. })
    ));
    for delta in [0.0, -1.0, f32::NAN] {
        assert!(matches!(
            ops::regression(&mut batch, &a, &a, ops::Regression::Huber { delta }),
            Err(Error::InvalidArgument { .. })
        ));
    }
}

#[test]
fn bad_input_gives_typed_errors() {
    let gpu = gpu();
    let logits = Tensor::zeros(&gpu, &[3, 4], DType::F32).unwrap();
    let labels = Tensor::zeros(&gpu, &[3], DType::U32).unwrap();
    let mut batch = Batch::new(&gpu);
    let wrong_labels = Tensor::zeros(&gpu, &[4], DType::U32).unwrap();
    assert!(matches!(
        ops::cross_entropy(&mut batch, &logits, &wrong_labels, 0.0),
        Err(Error::ShapeMismatch { .. })
    ));
    let float_labels = Tensor::zeros(&gpu, &[3], DType::F32).unwrap();
    assert!(matches!(
        ops::cross_entropy(&mut batch, &logits, &float_labels, 0.0),
        Err(Error::DtypeMismatch { .. })
    ));
    assert!(matches!(
        ops::cross_entropy(&mut batch, &logits, &labels, 1.5),
        Err(Error::InvalidArgument { .. })
    ));
    let vector = Tensor::zeros(&gpu, &[4], DType::F32).unwrap();
    assert!(matches!(
        ops::cross_entropy(&mut batch, &vector, &labels, 0.0),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        ops::soft_cross_entropy(&mut batch, &logits, &logits, 0.0),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        ops::soft_cross_entropy(&mut batch, &logits, &logits, f32::NAN),
        Err(Error::InvalidArgument { .. })
    ));
    let other = Tensor::zeros(&gpu, &[3, 5], DType::F32).unwrap();
    assert!(matches!(
        ops::soft_cross_entropy(&mut batch, &logits, &other, 1.0),
        Err(Error::ShapeMismatch { .. })
    ));
    assert_eq!(batch.dispatches(), 0);
}

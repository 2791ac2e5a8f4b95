//! Reductions on the GPU against the CPU reference.

mod common;

use common::*;
use wgnn::reference::{self, Array};
use wgnn::{ops, Batch, DType, Error, Tensor};

#[test]
fn channel_sums_are_bias_gradients() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    for (shape, axis) in [
        (vec![1usize, 1], 1usize),
        (vec![256, 10], 1),
        (vec![33, 5, 7, 9], 1),
        (vec![3, 70_001], 0),
        (vec![5, 3], 0),
        (vec![3, 70_001], 1),
        (vec![1000, 300], 1),
        // Past the 65,535 loop iterations after which Mesa's software drivers stop an invocation
        // (one thread per channel over 70,000 rows was wrong in every channel): chunked sums,
        // in one, two and three rounds.
        (vec![70_000, 3], 1),
        (vec![64, 2048, 5], 2),
        (vec![17_000_001, 1], 1),
        (vec![40, 3, 30_001], 1),
    ] {
        let n = shape.iter().product();
        let x = random(&mut rng, n);
        let tx = Tensor::from_slice(&gpu, &x, &shape).unwrap();
        let mut batch = Batch::new(&gpu);
        let s = ops::channel_sum(&mut batch, &tx, axis).unwrap();
        batch.submit().unwrap();
        let a = Array::new(&shape, x);
        let want = reference::reduce::channel_sum(&a, axis);
        // A sum's f32 error scales with the L2 norm of its summands, not with the (possibly
        // cancelled) result: compare on that scale.
        let channels = shape[axis];
        let inner: usize = shape[axis + 1..].iter().product();
        let mut norms = vec![0.0f64; channels];
        for (i, &v) in a.data.iter().enumerate() {
            norms[(i / inner) % channels] += f64::from(v).powi(2);
        }
        let got = s.to_vec::<f32>().unwrap();
        for c in 0..channels {
            let scale = f64::from(want.data[c].abs()).max(norms[c].sqrt()).max(1.0);
            let err = f64::from((got[c] - want.data[c]).abs());
            assert!(
                err <= 1e-5 * scale,
                "{shape:?} axis {axis} channel {c}: {} vs {} (seed {seed})",
                got[c],
                want.data[c]
            );
        }
    }
}

#[test]
fn totals_means_and_norms() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    // Up to 2,048 elements one workgroup writes the total; past it, partial sums first.
    for n in [1usize, 255, 2048, 2049, 100_003, 9_000_001] {
        let x = random(&mut rng, n);
        let a = Array::new(&[n], x.clone());
        for dtype in [DType::F32, DType::F16] {
            if dtype == DType::F16 && !gpu.supports_f16() {
                continue;
            }
            let a = if dtype == DType::F16 {
                Array::new(&[n], round_f16(&x))
            } else {
                a.clone()
            };
            let tx = Tensor::from_f32(&gpu, &a.data, &[n], dtype).unwrap();
            let mut batch = Batch::new(&gpu);
            let s = ops::sum(&mut batch, &tx).unwrap();
            let m = ops::mean(&mut batch, &tx).unwrap();
            let q = ops::sum_squares(&mut batch, &tx).unwrap();
            batch.submit().unwrap();
            let context = format!("n {n} {dtype:?} seed {seed}");
            // Sums of n random signs: compare on the scale of sqrt(n), the sum's typical size.
            let scale = (n as f32).sqrt();
            let got = s.to_vec::<f32>().unwrap()[0];
            let want = reference::reduce::sum(&a);
            assert!(
                (got - want).abs() <= 1e-5 * scale.max(1.0),
                "sum {got} vs {want}, {context}"
            );
            let got = m.to_vec::<f32>().unwrap()[0];
            let want = reference::reduce::mean(&a);
            assert!(
                (got - want).abs() <= 1e-5 * scale.max(1.0) / n as f32 + 1e-7,
                "mean {got} vs {want}, {context}"
            );
            assert_close(
                &q.to_vec::<f32>().unwrap(),
                &[reference::reduce::sum_squares(&a)],
                1e-5,
                &context,
            );
        }
    }
}

#[test]
fn nan_propagates_through_sums() {
    let gpu = gpu();
    let mut x = vec![1.0f32; 5000];
    x[4321] = f32::NAN;
    let tx = Tensor::from_slice(&gpu, &x, &[50, 100]).unwrap();
    let mut batch = Batch::new(&gpu);
    let (s, m, q) = (
        ops::sum(&mut batch, &tx).unwrap(),
        ops::mean(&mut batch, &tx).unwrap(),
        ops::sum_squares(&mut batch, &tx).unwrap(),
    );
    let c = ops::channel_sum(&mut batch, &tx, 1).unwrap();
    batch.submit().unwrap();
    for t in [&s, &m, &q] {
        assert!(t.to_vec::<f32>().unwrap()[0].is_nan());
    }
    let c = c.to_vec::<f32>().unwrap();
    assert!(
        c[21].is_nan() && c.iter().filter(|v| v.is_nan()).count() == 1,
        "{c:?}"
    );
}

#[test]
fn row_max_and_argmax() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    for shape in [
        vec![1usize, 1],
        vec![7, 10],
        vec![3, 4, 1000],
        vec![2, 70_000],
        vec![70_000, 3],
        // One workgroup per row looped past the software drivers' 65,535-iteration cap here.
        vec![1, (1 << 24) + 4096],
        vec![3, 200_003],
    ] {
        let n = shape.iter().product();
        // Coarse values so that ties occur: the first index must win.
        let mut x: Vec<f32> = random(&mut rng, n)
            .iter()
            .map(|v| (v * 4.0).round())
            .collect();
        // Long rows: a unique maximum near each row's end, where a truncated loop never looks.
        let cols = shape[shape.len() - 1];
        if cols > 65_536 {
            for row in x.chunks_mut(cols) {
                row[cols - 3] = 10.0;
            }
        }
        let tx = Tensor::from_slice(&gpu, &x, &shape).unwrap();
        let mut batch = Batch::new(&gpu);
        let (max, arg) = ops::row_max_argmax(&mut batch, &tx).unwrap();
        batch.submit().unwrap();
        let (want_max, want_arg) = reference::reduce::row_max_argmax(&Array::new(&shape, x));
        let context = format!("{shape:?} seed {seed}");
        assert_eq!(max.to_vec::<f32>().unwrap(), want_max, "{context}");
        assert_eq!(arg.to_vec::<u32>().unwrap(), want_arg, "{context}");
        assert_eq!(arg.dtype(), DType::U32);
        assert_guard_intact(&max, &context);
        assert_guard_intact(&arg, &context);
    }
    // NaN counts as the maximum; -inf rows still have a first index.
    let x = [
        1.0,
        f32::NAN,
        5.0,
        f32::NAN,
        f32::NEG_INFINITY,
        f32::NEG_INFINITY,
        2.0,
        3.0,
        3.0,
    ];
    let tx = Tensor::from_slice(&gpu, &x, &[3, 3]).unwrap();
    let mut batch = Batch::new(&gpu);
    let (max, arg) = ops::row_max_argmax(&mut batch, &tx).unwrap();
    batch.submit().unwrap();
    let m = max.to_vec::<f32>().unwrap();
    assert!(m[0].is_nan() && m[1].is_nan() && m[2] == 3.0, "{m:?}");
    assert_eq!(arg.to_vec::<u32>().unwrap(), [1, 0, 1]);
}

#[test]
fn bad_input_gives_typed_errors() {
    let gpu = gpu();
    let mut batch = Batch::new(&gpu);
    let x = Tensor::zeros(&gpu, &[3, 4], DType::F32).unwrap();
    assert!(matches!(
        ops::channel_sum(&mut batch, &x, 2),
        Err(Error::ShapeMismatch { .. })
    ));
    let labels = Tensor::zeros(&gpu, &[3], DType::U32).unwrap();
    assert!(matches!(
        ops::sum(&mut batch, &labels),
        Err(Error::DtypeMismatch { .. })
    ));
    assert_eq!(batch.dispatches(), 0);
}

#[test]
fn top_k_values_and_indices() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    for (rows, cols, k) in [
        (1usize, 1usize, 1usize),
        (7, 10, 3),
        (300, 10, 10),
        (3, 1000, 5),
    ] {
        // Coarse values so that ties occur: lower indices come first among equals.
        let x: Vec<f32> = random(&mut rng, rows * cols)
            .iter()
            .map(|v| (v * 4.0).round() + 0.0) // no -0.0: the GPU ties it with 0.0
            .collect();
        let tx = Tensor::from_slice(&gpu, &x, &[rows, cols]).unwrap();
        let mut batch = Batch::new(&gpu);
        let (values, indices) = ops::top_k(&mut batch, &tx, k).unwrap();
        batch.submit().unwrap();
        let (values, indices) = (
            values.to_vec::<f32>().unwrap(),
            indices.to_vec::<u32>().unwrap(),
        );
        for r in 0..rows {
            let mut order: Vec<usize> = (0..cols).collect();
            // Stable sort by value, descending: ties keep index order.
            order.sort_by(|&a, &b| x[r * cols + b].total_cmp(&x[r * cols + a]));
            for t in 0..k {
                let context = format!("{rows}x{cols} k {k} row {r} rank {t} seed {seed}");
                assert_eq!(indices[r * k + t] as usize, order[t], "{context}");
                assert_eq!(values[r * k + t], x[r * cols + order[t]], "{context}");
            }
        }
    }
    let tx = Tensor::zeros(&gpu, &[2, 5000], DType::F32).unwrap();
    let mut batch = Batch::new(&gpu);
    assert!(matches!(
        ops::top_k(&mut batch, &tx, 6),
        Err(Error::LimitExceeded { .. })
    ));
    assert!(matches!(
        ops::top_k(&mut batch, &tx, 0),
        Err(Error::InvalidArgument { .. })
    ));
}

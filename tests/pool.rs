//! Max and average pooling, forward and backward, on the GPU against the CPU reference.

mod common;

use common::*;
use wgnn::ops::Pool2dParams;
use wgnn::reference::{self, Array};
use wgnn::{ops, Batch, DType, Error, Tensor};

fn cases() -> Vec<([usize; 4], Pool2dParams)> {
    let p = |k: usize, s: usize, pad: usize| Pool2dParams {
        kernel: (k, k),
        stride: (s, s),
        padding: (pad, pad),
    };
    vec![
        ([1, 1, 1, 1], p(1, 1, 0)),
        ([2, 3, 8, 8], Pool2dParams::square(2)),
        ([2, 5, 9, 7], p(3, 2, 1)),
        ([33, 3, 11, 13], p(3, 1, 1)),
        (
            [1, 2, 10, 9],
            Pool2dParams {
                kernel: (2, 3),
                stride: (1, 2),
                padding: (1, 0),
            },
        ),
    ]
}

#[test]
fn max_pool_forward_and_backward() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    for (shape, p) in cases() {
        // Coarse values so windows hold ties: the first maximum must win.
        let x: Vec<f32> = random(&mut rng, shape.iter().product())
            .iter()
            .map(|v| (v * 3.0).round())
            .collect();
        let (want, want_idx) = reference::conv::max_pool2d(&Array::new(&shape, x.clone()), &p);
        let g = Array::new(&want.shape, random(&mut rng, want.data.len()));
        let want_dx = reference::conv::max_pool2d_backward(&g, &want_idx, &shape);
        let tx = Tensor::from_slice(&gpu, &x, &shape).unwrap();
        let tg = Tensor::from_slice(&gpu, &g.data, &g.shape).unwrap();
        let mut batch = Batch::new(&gpu);
        let (out, idx) = ops::max_pool2d(&mut batch, &tx, &p).unwrap();
        let dx = ops::max_pool2d_backward(&mut batch, &tg, &idx, &shape, &p).unwrap();
        batch.submit().unwrap();
        let context = format!("{shape:?} {p:?} seed {seed}");
        assert_eq!(out.to_vec::<f32>().unwrap(), want.data, "{context}");
        assert_eq!(idx.to_vec::<u32>().unwrap(), want_idx, "{context}");
        assert_close(&dx.to_vec::<f32>().unwrap(), &want_dx.data, 1e-6, &context);
        assert_guard_intact(&out, &context);
        assert_guard_intact(&dx, &context);
    }
    // NaN wins its window.
    let x = [1.0, f32::NAN, 3.0, 2.0];
    let tx = Tensor::from_slice(&gpu, &x, &[1, 1, 2, 2]).unwrap();
    let mut batch = Batch::new(&gpu);
    let (out, idx) = ops::max_pool2d(&mut batch, &tx, &Pool2dParams::square(2)).unwrap();
    batch.submit().unwrap();
    assert!(out.to_vec::<f32>().unwrap()[0].is_nan());
    assert_eq!(idx.to_vec::<u32>().unwrap(), [1]);
}

#[test]
fn avg_pool_forward_and_backward() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    for (shape, p) in cases() {
        for dtype in [DType::F32, DType::F16] {
            if dtype == DType::F16 && !gpu.supports_f16() {
                continue;
            }
            let mut x = random(&mut rng, shape.iter().product());
            let mut g: Vec<f32> = Vec::new();
            if dtype == DType::F16 {
                x = round_f16(&x);
            }
            let want = reference::conv::avg_pool2d(&Array::new(&shape, x.clone()), &p);
            g.extend(random(&mut rng, want.data.len()));
            if dtype == DType::F16 {
                g = round_f16(&g);
            }
            let want_dx = reference::conv::avg_pool2d_backward(
                &Array::new(&want.shape, g.clone()),
                &shape,
                &p,
            );
            let tx = Tensor::from_f32(&gpu, &x, &shape, dtype).unwrap();
            let tg = Tensor::from_f32(&gpu, &g, &want.shape, dtype).unwrap();
            let mut batch = Batch::new(&gpu);
            let out = ops::avg_pool2d(&mut batch, &tx, &p).unwrap();
            let dx = ops::avg_pool2d_backward(&mut batch, &tg, &shape, &p).unwrap();
            batch.submit().unwrap();
            let context = format!("{shape:?} {p:?} {dtype:?} seed {seed}");
            let tol = if dtype == DType::F16 { 1e-2 } else { 1e-5 };
            assert_close(&out.to_vec_f32().unwrap(), &want.data, tol, &context);
            assert_close(&dx.to_vec_f32().unwrap(), &want_dx.data, tol, &context);
        }
    }
}

#[test]
fn reference_avg_pool_backward_matches_finite_differences() {
    let (mut rng, seed) = rng();
    let (shape, p) = (
        [1, 2, 5, 4],
        Pool2dParams {
            kernel: (3, 2),
            stride: (2, 1),
            padding: (1, 1),
        },
    );
    let x = Array::new(&shape, random(&mut rng, 40));
    let out = reference::conv::avg_pool2d(&x, &p);
    let g = random(&mut rng, out.data.len());
    let dx = reference::conv::avg_pool2d_backward(&Array::new(&out.shape, g.clone()), &shape, &p);
    let loss = |x: &Array| -> f64 {
        reference::conv::avg_pool2d(x, &p)
            .data
            .iter()
            .zip(&g)
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum()
    };
    for i in 0..x.data.len() {
        let (mut a, mut b) = (x.clone(), x.clone());
        a.data[i] += 1e-2;
        b.data[i] -= 1e-2;
        let fd = (loss(&a) - loss(&b)) / 2e-2;
        assert!(
            (fd - f64::from(dx.data[i])).abs() < 1e-3,
            "[{i}] {} vs {fd} (seed {seed})",
            dx.data[i]
        );
    }
}

#[test]
fn bad_input_gives_typed_errors() {
    let gpu = gpu();
    let x = Tensor::zeros(&gpu, &[1, 2, 4, 4], DType::F32).unwrap();
    let mut batch = Batch::new(&gpu);
    let zero = Pool2dParams {
        kernel: (0, 2),
        stride: (1, 1),
        padding: (0, 0),
    };
    assert!(matches!(
        ops::avg_pool2d(&mut batch, &x, &zero),
        Err(Error::InvalidArgument { .. })
    ));
    let too_much_pad = Pool2dParams {
        kernel: (2, 2),
        stride: (1, 1),
        padding: (2, 0),
    };
    assert!(matches!(
        ops::max_pool2d(&mut batch, &x, &too_much_pad),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        ops::max_pool2d(&mut batch, &x, &Pool2dParams::square(5)),
        Err(Error::ShapeMismatch { .. })
    ));
    let flat = Tensor::zeros(&gpu, &[2, 16], DType::F32).unwrap();
    assert!(matches!(
        ops::avg_pool2d(&mut batch, &flat, &Pool2dParams::square(2)),
        Err(Error::ShapeMismatch { .. })
    ));
    let g = Tensor::zeros(&gpu, &[1, 2, 3, 3], DType::F32).unwrap();
    let r = ops::avg_pool2d_backward(&mut batch, &g, &[1, 2, 4, 4], &Pool2dParams::square(2));
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })));
    // Sizes near usize::MAX give typed errors, never an overflow panic or a truncation; so does a
    // window with more taps than a thread may loop over.
    for p in [
        Pool2dParams {
            kernel: (usize::MAX, 2),
            stride: (1, 1),
            padding: (usize::MAX / 2, 0),
        },
        Pool2dParams {
            kernel: (usize::MAX, usize::MAX),
            stride: (1, 1),
            padding: (0, 0),
        },
        Pool2dParams::square(200),
    ] {
        let r = ops::max_pool2d(&mut batch, &x, &p);
        assert!(
            matches!(r, Err(Error::LimitExceeded { .. })),
            "{p:?}: {r:?}"
        );
    }
    assert_eq!(batch.dispatches(), 0);
    // A stride past u32::MAX is exact: one window per plane.
    let huge = Pool2dParams {
        kernel: (2, 2),
        stride: ((1 << 32) + 1, (1 << 32) + 1),
        padding: (0, 0),
    };
    let xs: Vec<f32> = (0..32).map(|v| v as f32).collect();
    let tx = Tensor::from_slice(&gpu, &xs, &[1, 2, 4, 4]).unwrap();
    let (y, _) = ops::max_pool2d(&mut batch, &tx, &huge).unwrap();
    batch.submit().unwrap();
    assert_eq!(y.shape(), [1, 2, 1, 1]);
    assert_eq!(y.to_vec::<f32>().unwrap(), [5.0, 21.0]);
}

//! conv2d forward and backward on the GPU against the direct-loop CPU reference.

mod common;

use common::*;
use wgnn::ops::Conv2dParams;
use wgnn::reference::{self, Array};
use wgnn::{ops, Activation, Batch, DType, Error, Gpu, GpuOptions, Tensor};

/// A case: input [n, c, h, w], filters [k, c/groups, r, s], and the convolution's parameters.
struct Case {
    x: [usize; 4],
    k: usize,
    kernel: (usize, usize),
    p: Conv2dParams,
}

fn case(
    x: [usize; 4],
    k: usize,
    kernel: (usize, usize),
    stride: usize,
    pad: usize,
    dil: usize,
    groups: usize,
) -> Case {
    Case {
        x,
        k,
        kernel,
        p: Conv2dParams {
            stride: (stride, stride),
            padding: (pad, pad),
            dilation: (dil, dil),
            groups,
        },
    }
}

/// Odd H and W, C not a multiple of 4, stride 2, padding 0/1/3, 1×1 and 7×7, batch 1 and 33, groups.
fn cases() -> Vec<Case> {
    let mut asymmetric = case([1, 4, 12, 11], 3, (3, 2), 1, 1, 2, 1);
    asymmetric.p.stride = (1, 2);
    asymmetric.p.padding = (2, 1);
    vec![
        case([1, 3, 7, 9], 5, (3, 3), 1, 1, 1, 1),
        case([2, 5, 11, 13], 6, (3, 3), 2, 0, 1, 1),
        case([1, 3, 17, 15], 4, (7, 7), 2, 3, 1, 1),
        case([3, 6, 9, 9], 6, (3, 3), 1, 1, 1, 6),
        case([2, 6, 7, 5], 12, (3, 3), 2, 1, 1, 6),
        case([2, 8, 10, 7], 12, (1, 1), 1, 0, 1, 4),
        case([33, 3, 5, 6], 4, (3, 3), 1, 1, 1, 1),
        case([2, 70, 9, 9], 65, (3, 3), 1, 1, 1, 1),
        asymmetric,
    ]
}

fn filters_shape(c: &Case) -> [usize; 4] {
    [c.k, c.x[1] / c.p.groups, c.kernel.0, c.kernel.1]
}

fn run_forward(gpu: &Gpu, c: &Case, dtype: DType, act: Activation) {
    let (mut rng, seed) = rng();
    let ws = filters_shape(c);
    let mut x = random(&mut rng, c.x.iter().product());
    let mut w = random(&mut rng, ws.iter().product());
    let mut b = random(&mut rng, c.k);
    if dtype == DType::F16 {
        (x, w, b) = (round_f16(&x), round_f16(&w), round_f16(&b));
    }
    let want = reference::conv::conv2d(
        &Array::new(&c.x, x.clone()),
        &Array::new(&ws, w.clone()),
        Some(&b),
        &c.p,
        act,
    );
    let tx = Tensor::from_f32(gpu, &x, &c.x, dtype).unwrap();
    let tw = Tensor::from_f32(gpu, &w, &ws, dtype).unwrap();
    let tb = Tensor::from_f32(gpu, &b, &[c.k], dtype).unwrap();
    let mut batch = Batch::new(gpu);
    let out = ops::conv2d(&mut batch, &tx, &tw, Some(&tb), &c.p, act).unwrap();
    batch.submit().unwrap();
    let context = format!(
        "x {:?} w {ws:?} {:?} {dtype:?} {act:?} seed {seed}",
        c.x, c.p
    );
    assert_eq!(out.shape(), want.shape.as_slice(), "{context}");
    let tol = if dtype == DType::F16 { 1e-2 } else { 1e-5 };
    assert_close(&out.to_vec_f32().unwrap(), &want.data, tol, &context);
    assert_guard_intact(&out, &context);
}

#[test]
fn forward_matches_the_reference() {
    let gpu = gpu();
    for c in cases() {
        run_forward(&gpu, &c, DType::F32, Activation::None);
    }
    run_forward(&gpu, &cases()[1], DType::F32, Activation::Relu);
    run_forward(&gpu, &cases()[3], DType::F32, Activation::Gelu);
    if gpu.supports_f16() {
        run_forward(&gpu, &cases()[2], DType::F16, Activation::None);
        run_forward(&gpu, &cases()[3], DType::F16, Activation::Relu);
    }
}

fn run_backward(gpu: &Gpu, c: &Case) {
    let (mut rng, seed) = rng();
    let ws = filters_shape(c);
    let x = Array::new(&c.x, random(&mut rng, c.x.iter().product()));
    let w = Array::new(&ws, random(&mut rng, ws.iter().product()));
    let out = reference::conv::conv2d(&x, &w, None, &c.p, Activation::None);
    let g = Array::new(&out.shape, random(&mut rng, out.data.len()));
    let (dx, dw, db) = reference::conv::conv2d_backward(&x, &w, &g, &c.p);
    let t = |a: &Array| Tensor::from_slice(gpu, &a.data, &a.shape).unwrap();
    let mut batch = Batch::new(gpu);
    let grads = ops::conv2d_backward(
        &mut batch,
        &t(&x),
        &t(&w),
        &t(&g),
        &c.p,
        ops::BiasGradient::Compute,
    )
    .unwrap();
    batch.submit().unwrap();
    let context = format!("backward x {:?} w {ws:?} {:?} seed {seed}", c.x, c.p);
    assert_close(
        &grads.input.to_vec::<f32>().unwrap(),
        &dx.data,
        1e-5,
        &format!("dx {context}"),
    );
    assert_close(
        &grads.weight.to_vec::<f32>().unwrap(),
        &dw.data,
        1e-5,
        &format!("dw {context}"),
    );
    let gb = grads.bias.expect("bias gradient").to_vec::<f32>().unwrap();
    assert_close(&gb, &db, 1e-5, &format!("dbias {context}"));
    assert_guard_intact(&grads.input, &context);
    assert_guard_intact(&grads.weight, &context);
}

#[test]
fn backward_matches_the_reference() {
    let gpu = gpu();
    for c in cases() {
        run_backward(&gpu, &c);
    }
}

#[test]
fn chunked_im2col_gives_the_same_results() {
    // A scratch limit far below one batch's column matrices forces several chunks.
    let options = GpuOptions {
        scratch_limit_bytes: Some(7000),
        ..options()
    };
    let gpu = Gpu::with_options(options).expect("GPU tests need an adapter");
    gpu.force_candidate(Some(wgnn::ops::conv::Conv2dCandidate::Im2col));
    let c = case([7, 3, 6, 5], 4, (3, 3), 1, 1, 1, 1); // 27·30·4 = 3,240 B per image: chunks of 2, 2, 2, 1
    run_forward(&gpu, &c, DType::F32, Activation::None);
    run_backward(&gpu, &c);
    // 40 filters: dW is 40·27·4 = 4,320 B, so partials for 4 chunks (17 KB) do not fit 7,000 B and
    // the chunks accumulate into one dW instead.
    run_backward(&gpu, &case([7, 3, 6, 5], 40, (3, 3), 1, 1, 1, 1));
    // One image's column matrix past the limit: the implicit kernel, which needs none, runs.
    run_forward(
        &gpu,
        &case([2, 3, 60, 60], 4, (3, 3), 1, 1, 1, 1),
        DType::F32,
        Activation::None,
    );
    // Past the limit and too many taps for the implicit kernel's loop: a typed error.
    let big = case([1, 2000, 3, 3], 4, (3, 3), 1, 1, 1, 1);
    let x = Tensor::zeros(&gpu, &big.x, DType::F32).unwrap();
    let w = Tensor::zeros(&gpu, &filters_shape(&big), DType::F32).unwrap();
    let mut batch = Batch::new(&gpu);
    let r = ops::conv2d(&mut batch, &x, &w, None, &big.p, Activation::None);
    assert!(matches!(r, Err(Error::LimitExceeded { .. })), "{r:?}");
}

#[test]
fn reference_backward_matches_finite_differences() {
    let (mut rng, seed) = rng();
    for c in [
        case([2, 4, 5, 6], 4, (3, 3), 2, 1, 1, 2),
        case([1, 2, 6, 5], 3, (2, 3), 1, 0, 2, 1),
    ] {
        let ws = filters_shape(&c);
        let x = Array::new(&c.x, random(&mut rng, c.x.iter().product()));
        let w = Array::new(&ws, random(&mut rng, ws.iter().product()));
        let b = random(&mut rng, c.k);
        let out = reference::conv::conv2d(&x, &w, Some(&b), &c.p, Activation::None);
        let g = random(&mut rng, out.data.len());
        let loss = |x: &Array, w: &Array, b: &[f32]| -> f64 {
            let o = reference::conv::conv2d(x, w, Some(b), &c.p, Activation::None);
            o.data
                .iter()
                .zip(&g)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum()
        };
        let (dx, dw, db) =
            reference::conv::conv2d_backward(&x, &w, &Array::new(&out.shape, g.clone()), &c.p);
        let h = 1e-2f32;
        let check = |name: &str, i: usize, an: f32, lp: f64, lm: f64| {
            let fd = (lp - lm) / (2.0 * f64::from(h));
            assert!(
                (fd - f64::from(an)).abs() <= 1e-3 * f64::from(an.abs()).max(1.0),
                "{name}[{i}]: {an} vs {fd} (seed {seed})"
            );
        };
        for i in 0..x.data.len() {
            let (mut p, mut m) = (x.clone(), x.clone());
            p.data[i] += h;
            m.data[i] -= h;
            check("dx", i, dx.data[i], loss(&p, &w, &b), loss(&m, &w, &b));
        }
        for i in 0..w.data.len() {
            let (mut p, mut m) = (w.clone(), w.clone());
            p.data[i] += h;
            m.data[i] -= h;
            check("dw", i, dw.data[i], loss(&x, &p, &b), loss(&x, &m, &b));
        }
        for i in 0..b.len() {
            let (mut p, mut m) = (b.clone(), b.clone());
            p[i] += h;
            m[i] -= h;
            check("db", i, db[i], loss(&x, &w, &p), loss(&x, &w, &m));
        }
    }
}

#[test]
fn bad_shapes_give_typed_errors() {
    let gpu = gpu();
    let t = |shape: &[usize]| Tensor::zeros(&gpu, shape, DType::F32).unwrap();
    let x = t(&[1, 3, 5, 5]);
    let mut batch = Batch::new(&gpu);
    let conv = |batch: &mut Batch, w: &Tensor, p: Conv2dParams| {
        ops::conv2d(batch, &x, w, None, &p, Activation::None)
    };
    let d = Conv2dParams::default();
    // Kernel larger than the padded input.
    assert!(matches!(
        conv(&mut batch, &t(&[2, 3, 7, 7]), d),
        Err(Error::ShapeMismatch { .. })
    ));
    // Channel mismatch.
    assert!(matches!(
        conv(&mut batch, &t(&[2, 4, 3, 3]), d),
        Err(Error::ShapeMismatch { .. })
    ));
    // Zero stride, zero dilation, groups that do not divide the channels.
    let w = t(&[2, 3, 3, 3]);
    assert!(matches!(
        conv(
            &mut batch,
            &w,
            Conv2dParams {
                stride: (0, 1),
                ..d
            }
        ),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        conv(
            &mut batch,
            &w,
            Conv2dParams {
                dilation: (1, 0),
                ..d
            }
        ),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        conv(
            &mut batch,
            &t(&[2, 1, 3, 3]),
            Conv2dParams { groups: 2, ..d }
        ),
        Err(Error::InvalidArgument { .. })
    ));
    // Wrong rank, wrong bias, wrong grad_out.
    assert!(matches!(
        conv(&mut batch, &t(&[2, 3, 3]), d),
        Err(Error::ShapeMismatch { .. })
    ));
    let r = ops::conv2d(&mut batch, &x, &w, Some(&t(&[3])), &d, Activation::None);
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })));
    let r = ops::conv2d_backward(
        &mut batch,
        &x,
        &w,
        &t(&[1, 2, 4, 4]),
        &d,
        ops::BiasGradient::Skip,
    );
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })));
    // Parameters near usize::MAX: typed errors, never an overflow panic or a truncation.
    for p in [
        Conv2dParams {
            padding: (usize::MAX / 2, 0),
            ..d
        },
        Conv2dParams {
            padding: (1 << 31, 0),
            ..d
        },
        Conv2dParams {
            dilation: (usize::MAX, 1),
            ..d
        },
    ] {
        let r = conv(&mut batch, &w, p);
        assert!(
            matches!(r, Err(Error::LimitExceeded { .. })),
            "{p:?}: {r:?}"
        );
    }
    let r = conv(
        &mut batch,
        &w,
        Conv2dParams {
            dilation: (1 << 40, 1),
            ..d
        },
    );
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })), "{r:?}");
    assert_eq!(batch.dispatches(), 0);
}

/// A stride past u32::MAX is a stride, not its low 32 bits: 2^32 + 1 gives one output row, where
/// a truncation to 1 would give three.
#[test]
fn huge_strides_are_exact() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    let p = Conv2dParams {
        stride: ((1 << 32) + 1, 2),
        padding: (0, 1),
        ..Conv2dParams::default()
    };
    let x = Array::new(&[2, 3, 5, 6], random(&mut rng, 2 * 3 * 5 * 6));
    let w = Array::new(&[4, 3, 3, 2], random(&mut rng, 4 * 3 * 3 * 2));
    let want = reference::conv::conv2d(&x, &w, None, &p, Activation::None);
    assert_eq!(want.shape[2], 1);
    let tx = Tensor::from_slice(&gpu, &x.data, &x.shape).unwrap();
    let tw = Tensor::from_slice(&gpu, &w.data, &w.shape).unwrap();
    let mut batch = Batch::new(&gpu);
    let y = ops::conv2d(&mut batch, &tx, &tw, None, &p, Activation::None).unwrap();
    batch.submit().unwrap();
    assert_eq!(y.shape(), want.shape.as_slice());
    assert_close(
        &y.to_vec::<f32>().unwrap(),
        &want.data,
        1e-5,
        &format!("seed {seed}"),
    );
}

/// Every forward candidate (im2col + matmul, implicit GEMM), pinned in turn on a context of its
/// own, over the cases above and blocks of 4 output channels with and without groups.
#[test]
fn every_forward_candidate_matches_the_reference() {
    use wgnn::ops::conv::Conv2dCandidate;
    use wgnn::tune::Candidate;
    let gpu = Gpu::with_options(options()).expect("GPU tests need an adapter");
    let mut all = cases();
    all.push(case([2, 5, 11, 13], 8, (3, 3), 1, 1, 1, 1));
    all.push(case([2, 6, 9, 7], 24, (3, 3), 2, 1, 1, 3));
    all.push(case([3, 16, 6, 5], 16, (5, 5), 1, 2, 2, 16));
    for &candidate in Conv2dCandidate::ALL {
        gpu.force_candidate(Some(candidate));
        for c in &all {
            run_forward(&gpu, c, DType::F32, Activation::None);
        }
        run_forward(&gpu, &all[9], DType::F32, Activation::Relu);
        run_forward(&gpu, &all[10], DType::F32, Activation::Sigmoid);
        if gpu.supports_f16() {
            run_forward(&gpu, &all[9], DType::F16, Activation::None);
            run_forward(&gpu, &all[11], DType::F16, Activation::Relu);
        }
    }
}

//! softmax / log-softmax and their backward passes on the GPU against the CPU reference.

mod common;

use common::*;
use wgnn::reference::{self, Array};
use wgnn::{ops, Batch, DType, Error, Tensor};

/// Rows × cols: one element, ragged, a row longer than 65,536, and more rows than one grid axis holds.
/// Short rows (several per workgroup, 1 to 128 threads each) at and past the 512-column switch.
const SHAPES: &[&[usize]] = &[
    &[1, 1],
    &[3, 7],
    &[33, 257],
    &[2, 3, 255],
    &[5, 512],
    &[9, 513],
    &[2, 1000],
    &[2, 70_001],
    &[70_000, 3],
    &[3, 65_537],
];

/// Rows long enough that one invocation per 256 columns would loop past the 65,535 iterations
/// after which Mesa's software drivers stop it (these gave NaN tails before they were chunked).
const LONG_SHAPES: &[&[usize]] = &[&[1, (1 << 23) + 4096], &[2, 1_000_003]];

/// got matches want: NaN where want is NaN, exact where want is ±inf or exactly 0, else within tol.
fn assert_matches(got: &[f32], want: &[f32], tol: f32, context: &str) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() || w == 0.0 {
            g == w
        } else {
            (g - w).abs() <= tol * w.abs().max(1.0)
        };
        assert!(ok, "{context}: element {i} is {g}, the reference says {w}");
    }
}

fn run_forward(x: &Tensor, log: bool) -> Tensor {
    let gpu = x.gpu().clone();
    let y = poisoned(&gpu, x.shape(), x.dtype());
    let mut batch = Batch::new(&gpu);
    let kind = if log {
        ops::SoftmaxKind::LogSoftmax
    } else {
        ops::SoftmaxKind::Softmax
    };
    ops::softmax_into(&mut batch, x, &y, kind).unwrap();
    batch.submit().unwrap();
    y
}

#[test]
fn forward_ragged_shapes_f32_and_f16() {
    for gpu in both_paths() {
        forward_ragged_shapes_on(&gpu);
    }
}

fn forward_ragged_shapes_on(gpu: &wgnn::Gpu) {
    let gpu = gpu.clone();
    let (mut rng, seed) = rng();
    let path = if gpu.uses_subgroups() {
        "subgroups"
    } else {
        "portable"
    };
    for shape in SHAPES.iter().chain(LONG_SHAPES) {
        let n: usize = shape.iter().product();
        for dtype in [DType::F32, DType::F16] {
            if dtype == DType::F16 && LONG_SHAPES.contains(shape) {
                continue;
            }
            if dtype == DType::F16 && !gpu.supports_f16() {
                continue;
            }
            let mut x: Vec<f32> = random(&mut rng, n).iter().map(|v| v * 8.0).collect();
            if dtype == DType::F16 {
                x = round_f16(&x);
            }
            let tx = Tensor::from_f32(&gpu, &x, shape, dtype).unwrap();
            for log in [false, true] {
                let a = Array::new(shape, x.clone());
                let want = if log {
                    reference::log_softmax(&a)
                } else {
                    reference::softmax(&a)
                };
                let y = run_forward(&tx, log);
                let context = format!("{shape:?} {dtype:?} log {log} {path} seed {seed}");
                let tol = if dtype == DType::F16 { 1e-2 } else { 1e-5 };
                assert_close(&y.to_vec_f32().unwrap(), &want.data, tol, &context);
                assert_guard_intact(&y, &context);
            }
        }
    }
}

#[test]
fn adversarial_values() {
    for gpu in both_paths() {
        adversarial_values_on(&gpu);
    }
}

fn adversarial_values_on(gpu: &wgnn::Gpu) {
    let gpu = gpu.clone();
    let inf = f32::INFINITY;
    let rows: Vec<Vec<f32>> = vec![
        vec![1e4, -1e4, 0.0, 9999.0, 1e4],
        vec![3e38, -3e38, 1e30, 3e38, 0.0],
        vec![-inf, 2.0, -inf, 1.0, 0.5],
        vec![-inf; 5],
        vec![1.0, f32::NAN, 0.0, 2.0, 3.0],
        vec![1.0, inf, 0.0, -inf, 3.0],
        vec![-1e-30, 1e-30, 0.0, 1e-38, -0.0],
    ];
    let x: Vec<f32> = rows.concat();
    let shape = [rows.len(), 5];
    let tx = Tensor::from_slice(&gpu, &x, &shape).unwrap();
    for log in [false, true] {
        let a = Array::new(&shape, x.clone());
        let want = if log {
            reference::log_softmax(&a)
        } else {
            reference::softmax(&a)
        };
        let got = run_forward(&tx, log).to_vec::<f32>().unwrap();
        assert_matches(&got, &want.data, 1e-5, &format!("log {log}"));
        // Finite input never yields NaN (log-softmax of -3e38 beside 3e38 is -6e38: -inf in f32).
        for (r, row) in rows.iter().enumerate() {
            if row.iter().all(|v| v.is_finite()) {
                assert!(
                    got[r * 5..r * 5 + 5].iter().all(|v| !v.is_nan()),
                    "row {r} log {log}"
                );
            }
        }
    }
    let got = run_forward(&tx, false).to_vec::<f32>().unwrap();
    assert_eq!(&got[15..20], &[0.0; 5], "an all -inf row is all zeros");
    assert_eq!(
        (got[10], got[12]),
        (0.0, 0.0),
        "-inf entries are exact zeros"
    );
}

#[test]
fn backward_matches_the_reference() {
    for gpu in both_paths() {
        backward_matches_the_reference_on(&gpu);
    }
}

fn backward_matches_the_reference_on(gpu: &wgnn::Gpu) {
    let gpu = gpu.clone();
    let (mut rng, seed) = rng();
    for shape in [
        &[1usize, 1][..],
        &[3, 7],
        &[17, 300],
        &[700, 10],
        &[2, 5000],
        &[2, 1_000_003],
    ] {
        let n: usize = shape.iter().product();
        let x = Array::new(shape, random(&mut rng, n).iter().map(|v| v * 4.0).collect());
        let g = Array::new(shape, random(&mut rng, n));
        for log in [false, true] {
            let y = if log {
                reference::log_softmax(&x)
            } else {
                reference::softmax(&x)
            };
            let want = if log {
                reference::log_softmax_backward(&y, &g)
            } else {
                reference::softmax_backward(&y, &g)
            };
            let ty = Tensor::from_slice(&gpu, &y.data, shape).unwrap();
            let tg = Tensor::from_slice(&gpu, &g.data, shape).unwrap();
            let mut batch = Batch::new(&gpu);
            let dx = if log {
                ops::log_softmax_backward(&mut batch, &ty, &tg)
            } else {
                ops::softmax_backward(&mut batch, &ty, &tg)
            }
            .unwrap();
            batch.submit().unwrap();
            let context = format!("backward {shape:?} log {log} seed {seed}");
            assert_close(&dx.to_vec::<f32>().unwrap(), &want.data, 1e-5, &context);
        }
    }
}

#[test]
fn reference_backward_matches_finite_differences() {
    let (mut rng, seed) = rng();
    let shape = [3, 6];
    let x = Array::new(
        &shape,
        random(&mut rng, 18).iter().map(|v| v * 3.0).collect(),
    );
    let g = random(&mut rng, 18);
    for log in [false, true] {
        let f = |x: &Array| {
            if log {
                reference::log_softmax(x)
            } else {
                reference::softmax(x)
            }
        };
        let loss = |x: &Array| -> f64 {
            f(x).data
                .iter()
                .zip(&g)
                .map(|(&y, &w)| f64::from(y) * f64::from(w))
                .sum()
        };
        let ga = Array::new(&shape, g.clone());
        let y = f(&x);
        let analytic = if log {
            reference::log_softmax_backward(&y, &ga)
        } else {
            reference::softmax_backward(&y, &ga)
        };
        let h = 1e-3f32;
        for i in 0..x.data.len() {
            let (mut p, mut m) = (x.clone(), x.clone());
            p.data[i] += h;
            m.data[i] -= h;
            let fd = (loss(&p) - loss(&m)) / (2.0 * f64::from(h));
            let an = f64::from(analytic.data[i]);
            assert!(
                (fd - an).abs() <= 2e-3 * an.abs().max(1.0),
                "log {log} [{i}]: {an} vs {fd} (seed {seed})"
            );
        }
    }
}

#[test]
fn bad_input_gives_typed_errors() {
    let gpu = gpu();
    let t = |shape: &[usize]| Tensor::zeros(&gpu, shape, DType::F32).unwrap();
    let mut batch = Batch::new(&gpu);
    let x = t(&[3, 4]);
    assert!(matches!(
        ops::softmax_into(&mut batch, &x, &t(&[4, 3]), ops::SoftmaxKind::Softmax),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        ops::softmax_into(&mut batch, &x, &x, ops::SoftmaxKind::Softmax),
        Err(Error::Aliasing { .. })
    ));
    assert!(matches!(
        ops::softmax_backward(&mut batch, &x, &t(&[3, 5])),
        Err(Error::ShapeMismatch { .. })
    ));
    if gpu.supports_f16() {
        let h = Tensor::zeros(&gpu, &[3, 4], DType::F16).unwrap();
        assert!(matches!(
            ops::log_softmax_backward(&mut batch, &x, &h),
            Err(Error::DtypeMismatch { .. })
        ));
    }
    // U32 tensors hold labels and indices, not logits.
    let u = Tensor::zeros(&gpu, &[3, 4], DType::U32).unwrap();
    let dtype_err = |r: wgnn::Result<Tensor>| matches!(r, Err(Error::DtypeMismatch { .. }));
    assert!(dtype_err(ops::softmax(&mut batch, &u)));
    assert!(dtype_err(ops::log_softmax(&mut batch, &u)));
    assert!(dtype_err(ops::softmax_backward(&mut batch, &u, &u)));
    assert!(dtype_err(ops::log_softmax_backward(&mut batch, &u, &u)));
    let r = ops::softmax_into(&mut batch, &u, &t(&[3, 4]), ops::SoftmaxKind::Softmax);
    assert!(matches!(r, Err(Error::DtypeMismatch { .. })), "{r:?}");
    assert_eq!(batch.dispatches(), 0);
}

/// Both inputs of a backward pass may be the same tensor: only the output must be distinct.
#[test]
fn backward_takes_the_same_tensor_twice() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    let shape = [5, 37];
    let y = Array::new(&shape, random(&mut rng, 5 * 37));
    let ty = Tensor::from_slice(&gpu, &y.data, &shape).unwrap();
    let mut batch = Batch::new(&gpu);
    let dx = ops::softmax_backward(&mut batch, &ty, &ty).unwrap();
    let dlx = ops::log_softmax_backward(&mut batch, &ty, &ty).unwrap();
    batch.submit().unwrap();
    let context = format!("seed {seed}");
    let want = reference::softmax_backward(&y, &y);
    assert_close(&dx.to_vec::<f32>().unwrap(), &want.data, 1e-5, &context);
    let want = reference::log_softmax_backward(&y, &y);
    assert_close(&dlx.to_vec::<f32>().unwrap(), &want.data, 1e-5, &context);
}

/// The same input gives the same bits, run after run, on every path (the subgroup reduction once
/// took its slots by atomicAdd, whose order can vary between runs).
#[test]
fn reductions_are_deterministic() {
    for gpu in both_paths() {
        let (mut rng, seed) = rng();
        for shape in [[64usize, 1000], [2, 100_003]] {
            let n = shape.iter().product();
            let x = random(&mut rng, n);
            let g = random(&mut rng, n);
            let tx = Tensor::from_slice(&gpu, &x, &shape).unwrap();
            let tg = Tensor::from_slice(&gpu, &g, &shape).unwrap();
            let run = || {
                let mut batch = Batch::new(&gpu);
                let y = ops::softmax(&mut batch, &tx).unwrap();
                let dx = ops::softmax_backward(&mut batch, &y, &tg).unwrap();
                batch.submit().unwrap();
                let bits = |t: &Tensor| -> Vec<u32> {
                    t.to_vec::<f32>()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect()
                };
                (bits(&y), bits(&dx))
            };
            let first = run();
            for _ in 0..4 {
                assert!(
                    run() == first,
                    "{shape:?} seed {seed}: bits differ between runs"
                );
            }
        }
    }
}

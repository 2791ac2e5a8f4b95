//! Activations, bias add and scale-add on the GPU against the CPU reference.

mod common;

use common::*;
use wgnn::reference::{self, Array};
use wgnn::{ops, Activation, Batch, DType, Error, Tensor};

const ACTIVATIONS: [Activation; 6] = [
    Activation::None,
    Activation::Relu,
    Activation::Gelu,
    Activation::Sigmoid,
    Activation::Tanh,
    Activation::GeluTanh,
];

fn dtypes() -> Vec<DType> {
    if gpu().supports_f16() {
        vec![DType::F32, DType::F16]
    } else {
        vec![DType::F32]
    }
}

fn tol(dtype: DType) -> f32 {
    if dtype == DType::F16 {
        1e-2
    } else {
        1e-5
    }
}

/// Values in [-6, 6) plus large magnitudes, rounded to what `dtype` holds.
fn inputs(rng: &mut rand::rngs::StdRng, n: usize, dtype: DType) -> Vec<f32> {
    let mut x: Vec<f32> = random(rng, n).iter().map(|v| v * 6.0).collect();
    for (i, big) in [-60000.0f32, -20.0, 20.0, 60000.0].into_iter().enumerate() {
        if i < n {
            x[i] = big;
        }
    }
    if dtype == DType::F16 {
        x = round_f16(&x);
    }
    x
}

#[test]
fn activations_forward_and_backward() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    for dtype in dtypes() {
        for shape in [&[1usize][..], &[7, 13], &[3, 5, 257], &[70_000]] {
            let n = shape.iter().product();
            let x = inputs(&mut rng, n, dtype);
            let mut g = random(&mut rng, n);
            if dtype == DType::F16 {
                g = round_f16(&g);
            }
            let (ax, ag) = (Array::new(shape, x.clone()), Array::new(shape, g.clone()));
            let tx = Tensor::from_f32(&gpu, &x, shape, dtype).unwrap();
            let tg = Tensor::from_f32(&gpu, &g, shape, dtype).unwrap();
            for act in ACTIVATIONS {
                let mut batch = Batch::new(&gpu);
                let y = ops::activation(&mut batch, &tx, act).unwrap();
                let dx = ops::activation_backward(&mut batch, &tx, &tg, act).unwrap();
                batch.submit().unwrap();
                let context = format!("{act:?} {shape:?} {dtype:?} seed {seed}");
                let want = reference::elementwise::activation(&ax, act);
                assert_close(&y.to_vec_f32().unwrap(), &want.data, tol(dtype), &context);
                let want = reference::elementwise::activation_backward(&ax, &ag, act);
                assert_close(
                    &dx.to_vec_f32().unwrap(),
                    &want.data,
                    tol(dtype),
                    &format!("backward {context}"),
                );
                assert_guard_intact(&y, &context);
                assert_guard_intact(&dx, &context);
            }
        }
    }
}

/// NaNs of several bit patterns (quiet, signalling-looking, negative), which no shader compiler can
/// treat as one constant.
fn nans() -> [f32; 3] {
    [
        f32::from_bits(0x7fc0_0000),
        f32::from_bits(0x7f80_0001),
        f32::from_bits(0xffc0_1234),
    ]
}

#[test]
fn nan_propagates_through_every_activation() {
    let gpu = gpu();
    let [n0, n1, n2] = nans();
    let x = [n0, 1.0, -2.0, n1, 0.5, n2];
    for dtype in dtypes() {
        let tx = Tensor::from_f32(&gpu, &x, &[6], dtype).unwrap();
        for act in ACTIVATIONS {
            let mut batch = Batch::new(&gpu);
            let y = ops::activation(&mut batch, &tx, act).unwrap();
            batch.submit().unwrap();
            let y = y.to_vec_f32().unwrap();
            assert!(
                y[0].is_nan() && y[3].is_nan() && y[5].is_nan(),
                "{act:?} {dtype:?}: {y:?}"
            );
            assert!(
                y[1].is_finite() && y[2].is_finite() && y[4].is_finite(),
                "{act:?} {dtype:?}: {y:?}"
            );
            // Backward at a NaN input: NaN, except ReLU's gradient, which is 0 there (PyTorch).
            let g = Tensor::from_f32(&gpu, &[1.0; 6], &[6], dtype).unwrap();
            let mut batch = Batch::new(&gpu);
            let dx = ops::activation_backward(&mut batch, &tx, &g, act).unwrap();
            batch.submit().unwrap();
            let dx = dx.to_vec_f32().unwrap();
            for i in [0, 3, 5] {
                let ok = match act {
                    Activation::Relu => dx[i] == 0.0,
                    Activation::None => dx[i] == 1.0,
                    _ => dx[i].is_nan(),
                };
                assert!(ok, "backward {act:?} {dtype:?} at NaN: {dx:?}");
            }
        }
    }
}

#[test]
fn reference_activation_gradients_match_finite_differences() {
    let (mut rng, seed) = rng();
    let xs: Vec<f64> = random(&mut rng, 50)
        .iter()
        .map(|&v| f64::from(v) * 4.0)
        .collect();
    for act in ACTIVATIONS {
        for &x in &xs {
            if act == Activation::Relu && x.abs() < 1e-3 {
                continue; // not differentiable at 0
            }
            let h = 1e-5;
            let fd =
                (reference::activate(act, x + h) - reference::activate(act, x - h)) / (2.0 * h);
            let an = reference::elementwise::activate_grad(act, x);
            assert!(
                (fd - an).abs() < 1e-6,
                "{act:?} at {x}: {an} vs {fd} (seed {seed})"
            );
        }
    }
}

#[test]
fn bias_add_along_each_axis() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    for dtype in dtypes() {
        for (shape, axis) in [
            (vec![5usize, 7], 1usize),
            (vec![3, 4, 5, 6], 1),
            (vec![2, 9, 1], 1),
            (vec![11], 0),
        ] {
            let n = shape.iter().product();
            let mut x = random(&mut rng, n);
            let mut b = random(&mut rng, shape[axis]);
            if dtype == DType::F16 {
                (x, b) = (round_f16(&x), round_f16(&b));
            }
            let tx = Tensor::from_f32(&gpu, &x, &shape, dtype).unwrap();
            let tb = Tensor::from_f32(&gpu, &b, &[shape[axis]], dtype).unwrap();
            let mut batch = Batch::new(&gpu);
            let y = ops::bias_add(&mut batch, &tx, &tb, axis).unwrap();
            batch.submit().unwrap();
            let want = reference::elementwise::bias_add(&Array::new(&shape, x), &b, axis);
            let context = format!("{shape:?} axis {axis} {dtype:?} seed {seed}");
            assert_close(&y.to_vec_f32().unwrap(), &want.data, tol(dtype), &context);
        }
    }
}

#[test]
fn scale_add_matches() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    let shape = [33, 65];
    let (x, z) = (random(&mut rng, 33 * 65), random(&mut rng, 33 * 65));
    let tx = Tensor::from_slice(&gpu, &x, &shape).unwrap();
    let tz = Tensor::from_slice(&gpu, &z, &shape).unwrap();
    let mut batch = Batch::new(&gpu);
    let y = ops::scale_add(&mut batch, 0.75, &tx, -1.5, &tz).unwrap();
    batch.submit().unwrap();
    let want = reference::elementwise::scale_add(
        0.75,
        &Array::new(&shape, x),
        -1.5,
        &Array::new(&shape, z),
    );
    assert_close(
        &y.to_vec::<f32>().unwrap(),
        &want.data,
        1e-6,
        &format!("seed {seed}"),
    );
    assert_guard_intact(&y, "scale_add");
}

#[test]
fn bad_input_gives_typed_errors() {
    let gpu = gpu();
    let t = |shape: &[usize]| Tensor::zeros(&gpu, shape, DType::F32).unwrap();
    let mut batch = Batch::new(&gpu);
    assert!(matches!(
        ops::bias_add(&mut batch, &t(&[3, 4]), &t(&[3]), 1),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        ops::bias_add(&mut batch, &t(&[3, 4]), &t(&[4]), 2),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        ops::scale_add(&mut batch, 1.0, &t(&[3]), 1.0, &t(&[4])),
        Err(Error::ShapeMismatch { .. })
    ));
    let r = ops::activation_backward(&mut batch, &t(&[3]), &t(&[4]), Activation::Relu);
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })));
    let labels = Tensor::zeros(&gpu, &[3], DType::U32).unwrap();
    assert!(matches!(
        ops::activation(&mut batch, &labels, Activation::Relu),
        Err(Error::DtypeMismatch { .. })
    ));
    assert_eq!(batch.dispatches(), 0);
}

#[test]
fn axpy_and_scale_in_place() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    for n in [1usize, 257, 70_001] {
        let x = random(&mut rng, n);
        let y0 = random(&mut rng, n);
        let tx = Tensor::from_slice(&gpu, &x, &[n]).unwrap();
        let ty = Tensor::from_slice(&gpu, &y0, &[n]).unwrap();
        let mut batch = Batch::new(&gpu);
        ops::axpy(&mut batch, &ty, -0.5, &tx).unwrap();
        ops::scale_in_place(&mut batch, &ty, 3.0).unwrap();
        batch.submit().unwrap();
        let want: Vec<f32> = y0
            .iter()
            .zip(&x)
            .map(|(y, x)| 3.0 * (y - 0.5 * x))
            .collect();
        assert_close(
            &ty.to_vec::<f32>().unwrap(),
            &want,
            1e-6,
            &format!("n {n} seed {seed}"),
        );
        assert_guard_intact(&ty, "axpy");
    }
    let mut batch = Batch::new(&gpu);
    let t = Tensor::zeros(&gpu, &[4], DType::F32).unwrap();
    assert!(matches!(
        ops::axpy(&mut batch, &t, 1.0, &t),
        Err(Error::Aliasing { .. })
    ));
}

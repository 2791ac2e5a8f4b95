//! The int8-weight Linear on the GPU against the CPU reference with the same quantized weights.

mod common;

use common::*;
use wgnn::ops::{self, quantize_int8, QuantizedWeights};
use wgnn::reference::{self, Array};
use wgnn::{Activation, Batch, DType, Error, Tensor};

#[test]
fn matches_the_reference_with_the_same_quantized_weights() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    for &(rows, n, k) in &[
        (1usize, 1usize, 1usize),
        (3, 5, 7),
        (64, 37, 129),
        (257, 10, 64),
        (2, 300, 2050),
    ] {
        for dtype in [DType::F32, DType::F16] {
            if dtype == DType::F16 && !gpu.supports_f16() {
                continue;
            }
            for (with_bias, act) in [(false, Activation::None), (true, Activation::Relu)] {
                let mut x = random(&mut rng, rows * k);
                let w = random(&mut rng, n * k);
                let mut b = random(&mut rng, n);
                if dtype == DType::F16 {
                    (x, b) = (round_f16(&x), round_f16(&b));
                }
                let (q, scales) = quantize_int8(&w, n, k);
                let want = reference::quantized_linear::quantized_linear(
                    &Array::new(&[rows, k], x.clone()),
                    &q,
                    &scales,
                    n,
                    with_bias.then_some(&b[..]),
                    act,
                );
                let qw = QuantizedWeights::from_quantized(&gpu, &q, &scales, n, k).unwrap();
                let tx = Tensor::from_f32(&gpu, &x, &[rows, k], dtype).unwrap();
                let tb = Tensor::from_f32(&gpu, &b, &[n], dtype).unwrap();
                let mut batch = Batch::new(&gpu);
                let y = ops::quantized_linear(&mut batch, &tx, &qw, with_bias.then_some(&tb), act)
                    .unwrap();
                batch.submit().unwrap();
                let context =
                    format!("{rows}x{n}x{k} {dtype:?} bias {with_bias} {act:?} seed {seed}");
                let tol = if dtype == DType::F16 { 1e-2 } else { 1e-5 };
                assert_close(&y.to_vec_f32().unwrap(), &want.data, tol, &context);
                assert_guard_intact(&y, &context);
            }
        }
    }
}

#[test]
fn quantization_error_is_at_most_half_a_step() {
    let (mut rng, seed) = rng();
    let (n, k) = (7, 33);
    let mut w = random(&mut rng, n * k);
    w[k..2 * k].fill(0.0); // an all-zero row
    let (q, scales) = quantize_int8(&w, n, k);
    assert_eq!(scales[1], 1.0);
    for (i, (&v, &qv)) in w.iter().zip(&q).enumerate() {
        let s = scales[i / k];
        assert!(
            (v - s * f32::from(qv)).abs() <= s / 2.0 + 1e-7,
            "[{i}] seed {seed}"
        );
        assert!(qv != -128);
    }
}

#[test]
fn bad_input_gives_typed_errors() {
    let gpu = gpu();
    let qw = QuantizedWeights::new(&gpu, &[0.5; 12], 3, 4).unwrap();
    let mut batch = Batch::new(&gpu);
    let x = Tensor::zeros(&gpu, &[2, 5], DType::F32).unwrap();
    assert!(matches!(
        ops::quantized_linear(&mut batch, &x, &qw, None, Activation::None),
        Err(Error::ShapeMismatch { .. })
    ));
    let x = Tensor::zeros(&gpu, &[2, 4], DType::F32).unwrap();
    let b = Tensor::zeros(&gpu, &[4], DType::F32).unwrap();
    assert!(matches!(
        ops::quantized_linear(&mut batch, &x, &qw, Some(&b), Activation::None),
        Err(Error::ShapeMismatch { .. })
    ));
    let u = Tensor::zeros(&gpu, &[2, 4], DType::U32).unwrap();
    assert!(matches!(
        ops::quantized_linear(&mut batch, &u, &qw, None, Activation::None),
        Err(Error::DtypeMismatch { .. })
    ));
    assert!(matches!(
        QuantizedWeights::new(&gpu, &[0.5; 11], 3, 4),
        Err(Error::DataLength { .. })
    ));
    assert_eq!(batch.dispatches(), 0);
}

/// f16 weights packed in pairs: exact f16 rounding of the weights, f32 activations, on any adapter
/// (no SHADER_F16 needed).
#[test]
fn packed_f16_weights_match_the_reference() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    for &(rows, n, k) in &[(1usize, 1usize, 1usize), (5, 9, 7), (33, 70, 130)] {
        let x = random(&mut rng, rows * k);
        let w = random(&mut rng, n * k);
        let b = random(&mut rng, n);
        let want = reference::matmul(
            &Array::new(&[rows, k], x.clone()),
            &Array::new(&[n, k], round_f16(&w)),
            false,
            true,
            Some(&b),
            Activation::Gelu,
        );
        let qw = QuantizedWeights::packed_f16(&gpu, &w, n, k).unwrap();
        assert_eq!(qw.size_bytes(), (n * k.div_ceil(2) * 4) as u64);
        let tx = Tensor::from_slice(&gpu, &x, &[rows, k]).unwrap();
        let tb = Tensor::from_slice(&gpu, &b, &[n]).unwrap();
        let mut batch = Batch::new(&gpu);
        let y = ops::quantized_linear(&mut batch, &tx, &qw, Some(&tb), Activation::Gelu).unwrap();
        batch.submit().unwrap();
        let context = format!("{rows}x{n}x{k} seed {seed}");
        assert_close(&y.to_vec::<f32>().unwrap(), &want.data, 1e-5, &context);
    }
}

/// Convolutions with compact filters: im2col, then the dequantizing kernel, against the reference
/// convolution with the same (dequantized) filters; also in chunks of images.
#[test]
fn quantized_convolutions_match_the_reference() {
    use wgnn::ops::Conv2dParams;
    use wgnn::Precision;
    let (mut rng, seed) = rng();
    let small_scratch = wgnn::Gpu::with_options(wgnn::GpuOptions {
        scratch_limit_bytes: Some(6000), // one image per chunk
        ..options()
    })
    .expect("GPU tests need an adapter");
    for gpu in [gpu(), small_scratch] {
        for format in [Precision::Int8, Precision::F16] {
            let (n, c, h, w, k, r, s) = (3, 5, 9, 7, 6, 3, 2);
            let p = Conv2dParams {
                stride: (2, 1),
                padding: (1, 1),
                ..Conv2dParams::default()
            };
            let x = random(&mut rng, n * c * h * w);
            let filters = random(&mut rng, k * c * r * s);
            let b = random(&mut rng, k);
            let (qw, dequantized) = match format {
                Precision::Int8 => {
                    let (q, scales) = quantize_int8(&filters, k, c * r * s);
                    let dq: Vec<f32> = q
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| f32::from(v) * scales[i / (c * r * s)])
                        .collect();
                    let qw = QuantizedWeights::from_quantized(&gpu, &q, &scales, k, c * r * s);
                    (qw.unwrap(), dq)
                }
                _ => (
                    QuantizedWeights::packed_f16(&gpu, &filters, k, c * r * s).unwrap(),
                    round_f16(&filters),
                ),
            };
            let want = reference::conv::conv2d(
                &Array::new(&[n, c, h, w], x.clone()),
                &Array::new(&[k, c, r, s], dequantized),
                Some(&b),
                &p,
                Activation::Relu,
            );
            let tx = Tensor::from_slice(&gpu, &x, &[n, c, h, w]).unwrap();
            let tb = Tensor::from_slice(&gpu, &b, &[k]).unwrap();
            let mut batch = Batch::new(&gpu);
            let y = ops::conv2d_quantized(
                &mut batch,
                &tx,
                [k, c, r, s],
                &qw,
                Some(&tb),
                &p,
                Activation::Relu,
            )
            .unwrap();
            batch.submit().unwrap();
            assert_eq!(y.shape(), want.shape.as_slice());
            let context = format!(
                "{format:?} scratch {} seed {seed}",
                gpu.scratch_limit_bytes()
            );
            assert_close(&y.to_vec::<f32>().unwrap(), &want.data, 1e-5, &context);
            assert_guard_intact(&y, &context);
        }
    }
}

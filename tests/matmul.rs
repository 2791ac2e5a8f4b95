//! matmul and its backward on the GPU against the CPU reference.

mod common;

use common::*;
use wgnn::reference::{self, Array};
use wgnn::{ops, Activation, Batch, DType, Error, Tensor};

/// (M, N, K): degenerate, skinny, tile-aligned, and ragged shapes.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 300, 37),
    (5, 7, 1),
    (64, 64, 64),
    (130, 67, 256),
    (257, 129, 67),
    (3, 517, 9),
    (8, 45, 300),
    (9, 70, 129),
    (2, 1000, 1029),
];

fn stored(rows: usize, cols: usize, trans: bool) -> [usize; 2] {
    if trans {
        [cols, rows]
    } else {
        [rows, cols]
    }
}

/// Runs one matmul on the GPU into a poisoned output and compares with the reference.
#[allow(clippy::too_many_arguments)]
fn check(
    gpu: &wgnn::Gpu,
    a_shape: &[usize],
    b_shape: &[usize],
    trans_a: bool,
    trans_b: bool,
    with_bias: bool,
    activation: Activation,
    dtype: DType,
    tol: f32,
) {
    let (mut rng, seed) = rng();
    let mut a = random(&mut rng, a_shape.iter().product());
    let mut b = random(&mut rng, b_shape.iter().product());
    let n = if trans_b {
        b_shape[b_shape.len() - 2]
    } else {
        b_shape[b_shape.len() - 1]
    };
    let mut bias = random(&mut rng, n);
    if dtype == DType::F16 {
        (a, b, bias) = (round_f16(&a), round_f16(&b), round_f16(&bias));
    }
    let want = reference::matmul(
        &Array::new(a_shape, a.clone()),
        &Array::new(b_shape, b.clone()),
        trans_a,
        trans_b,
        with_bias.then_some(&bias[..]),
        activation,
    );
    let ta = Tensor::from_f32(gpu, &a, a_shape, dtype).unwrap();
    let tb = Tensor::from_f32(gpu, &b, b_shape, dtype).unwrap();
    let tbias = Tensor::from_f32(gpu, &bias, &[n], dtype).unwrap();
    let out = poisoned(gpu, &want.shape, dtype);
    let mut batch = Batch::new(gpu);
    let options = ops::MatmulOptions {
        transposes: ops::Transposes {
            a: trans_a,
            b: trans_b,
        },
        bias: with_bias.then_some(&tbias),
        activation,
    };
    ops::matmul_into(&mut batch, &ta, &tb, &options, &out, ops::Write::Overwrite).unwrap();
    batch.submit().unwrap();
    let context = format!(
        "A {a_shape:?} B {b_shape:?} trans ({trans_a}, {trans_b}) bias {with_bias} {activation:?} {dtype:?} seed {seed}"
    );
    assert_close(&out.to_vec_f32().unwrap(), &want.data, tol, &context);
    assert_guard_intact(&out, &context);
}

#[test]
fn tells_a_times_b_from_b_times_a() {
    let gpu = gpu();
    let a = Tensor::from_slice(&gpu, &[1.0f32, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
    let b = Tensor::from_slice(&gpu, &[5.0f32, 6.0, 7.0, 8.0], &[2, 2]).unwrap();
    let mut batch = Batch::new(&gpu);
    let ab = ops::matmul(&mut batch, &a, &b, &Default::default()).unwrap();
    let ba = ops::matmul(&mut batch, &b, &a, &Default::default()).unwrap();
    batch.submit().unwrap();
    assert_eq!(ab.to_vec::<f32>().unwrap(), [19.0, 22.0, 43.0, 50.0]);
    assert_eq!(ba.to_vec::<f32>().unwrap(), [23.0, 34.0, 31.0, 46.0]);
}

#[test]
fn f32_ragged_shapes_every_transpose() {
    for &(m, n, k) in SHAPES {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            check(
                &gpu(),
                &stored(m, k, ta),
                &stored(k, n, tb),
                ta,
                tb,
                false,
                Activation::None,
                DType::F32,
                1e-5,
            );
        }
    }
}

#[test]
fn f32_large_tiles() {
    // Enough 128-tiles to take the large-tile path; ragged on every axis.
    check(
        &gpu(),
        &[1200, 131],
        &[131, 1029],
        false,
        false,
        false,
        Activation::None,
        DType::F32,
        1e-5,
    );
    check(
        &gpu(),
        &[131, 1200],
        &[1029, 131],
        true,
        true,
        false,
        Activation::None,
        DType::F32,
        1e-5,
    );
}

#[test]
fn f16_storage_ragged_shapes_every_transpose() {
    if !gpu().supports_f16() {
        // Without SHADER_F16 an f16 matmul is refused with a typed error, and the check of its
        // values is skipped (counted).
        let t = Tensor::from_f32(&gpu(), &[1.0, 2.0], &[1, 2], DType::F16).unwrap();
        let u = Tensor::from_f32(&gpu(), &[1.0, 2.0], &[2, 1], DType::F16).unwrap();
        let mut batch = wgnn::Batch::new(&gpu());
        let r = wgnn::ops::matmul(&mut batch, &t, &u, &Default::default());
        assert!(
            matches!(r, Err(wgnn::Error::UnsupportedFeature { .. })),
            "{r:?}"
        );
        skip("f16_storage_ragged_shapes_every_transpose", "no SHADER_F16");
        return;
    }
    for &(m, n, k) in SHAPES {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            check(
                &gpu(),
                &stored(m, k, ta),
                &stored(k, n, tb),
                ta,
                tb,
                true,
                Activation::None,
                DType::F16,
                1e-2,
            );
        }
    }
}

#[test]
fn batched_and_broadcast() {
    let (m, n, k) = (33, 21, 19);
    check(
        &gpu(),
        &[3, m, k],
        &[3, k, n],
        false,
        false,
        false,
        Activation::None,
        DType::F32,
        1e-5,
    );
    check(
        &gpu(),
        &[m, k],
        &[4, k, n],
        false,
        false,
        false,
        Activation::None,
        DType::F32,
        1e-5,
    );
    check(
        &gpu(),
        &[4, k, m],
        &[n, k],
        true,
        true,
        false,
        Activation::None,
        DType::F32,
        1e-5,
    );
    check(
        &gpu(),
        &[1, m, k],
        &[2, n, k],
        false,
        true,
        false,
        Activation::None,
        DType::F32,
        1e-5,
    );
}

#[test]
fn fused_bias_and_activations() {
    for act in [
        Activation::None,
        Activation::Relu,
        Activation::Gelu,
        Activation::Sigmoid,
        Activation::Tanh,
    ] {
        check(
            &gpu(),
            &[37, 29],
            &[29, 45],
            false,
            false,
            true,
            act,
            DType::F32,
            1e-5,
        );
        check(
            &gpu(),
            &[2, 29, 37],
            &[44, 29],
            true,
            true,
            true,
            act,
            DType::F32,
            1e-5,
        );
    }
}

#[test]
fn accumulate_adds_to_the_output() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    let (m, n, k) = (19, 23, 17);
    let (a, b, c0) = (
        random(&mut rng, m * k),
        random(&mut rng, k * n),
        random(&mut rng, m * n),
    );
    let prod = reference::matmul(
        &Array::new(&[m, k], a.clone()),
        &Array::new(&[k, n], b.clone()),
        false,
        false,
        None,
        Activation::None,
    );
    let want: Vec<f32> = prod.data.iter().zip(&c0).map(|(p, c)| p + c).collect();
    let ta = Tensor::from_slice(&gpu, &a, &[m, k]).unwrap();
    let tb = Tensor::from_slice(&gpu, &b, &[k, n]).unwrap();
    let tc = Tensor::from_slice(&gpu, &c0, &[m, n]).unwrap();
    let mut batch = Batch::new(&gpu);
    ops::matmul_into(
        &mut batch,
        &ta,
        &tb,
        &Default::default(),
        &tc,
        ops::Write::Accumulate,
    )
    .unwrap();
    batch.submit().unwrap();
    assert_close(
        &tc.to_vec::<f32>().unwrap(),
        &want,
        1e-5,
        &format!("seed {seed}"),
    );
}

fn check_backward(gpu: &wgnn::Gpu, a_shape: &[usize], b_shape: &[usize], ta: bool, tb: bool) {
    let (mut rng, seed) = rng();
    let a = Array::new(a_shape, random(&mut rng, a_shape.iter().product()));
    let b = Array::new(b_shape, random(&mut rng, b_shape.iter().product()));
    let c = reference::matmul(&a, &b, ta, tb, None, Activation::None);
    let g = Array::new(&c.shape, random(&mut rng, c.data.len()));
    let (da, db) = reference::matmul_backward(&a, &b, &g, ta, tb);
    let t = |x: &Array| Tensor::from_slice(gpu, &x.data, &x.shape).unwrap();
    let mut batch = Batch::new(gpu);
    let transposes = ops::Transposes { a: ta, b: tb };
    let grads = ops::matmul_backward(&mut batch, &t(&a), &t(&b), &t(&g), transposes).unwrap();
    batch.submit().unwrap();
    let context = format!("backward A {a_shape:?} B {b_shape:?} trans ({ta}, {tb}) seed {seed}");
    assert_eq!(grads.a.shape(), a_shape);
    assert_eq!(grads.b.shape(), b_shape);
    assert_close(
        &grads.a.to_vec::<f32>().unwrap(),
        &da.data,
        1e-5,
        &format!("dA {context}"),
    );
    assert_close(
        &grads.b.to_vec::<f32>().unwrap(),
        &db.data,
        1e-5,
        &format!("dB {context}"),
    );
}

#[test]
fn backward_every_transpose_and_broadcast() {
    let (m, n, k) = (37, 45, 29);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        check_backward(&gpu(), &stored(m, k, ta), &stored(k, n, tb), ta, tb);
        let (sa, sb) = (stored(m, k, ta), stored(k, n, tb));
        // Batched on both sides, and each side broadcast (its gradient sums over the batch).
        check_backward(&gpu(), &[3, sa[0], sa[1]], &[3, sb[0], sb[1]], ta, tb);
        check_backward(&gpu(), &sa, &[3, sb[0], sb[1]], ta, tb);
        check_backward(&gpu(), &[3, sa[0], sa[1]], &sb, ta, tb);
    }
    check_backward(&gpu(), &[1, 1], &[1, 1], false, false);
    // Small M: the forward-shaped gradient dA goes through the GEMV entry points.
    check_backward(&gpu(), &[3, 5, 200], &[200, 7], false, false);
    check_backward(&gpu(), &[200, 2], &[3, 7, 200], true, true);
}

/// The reference backward agrees with central differences of L = Σ C·G on the reference forward.
#[test]
fn reference_backward_matches_finite_differences() {
    let (mut rng, seed) = rng();
    for (a_shape, b_shape, ta, tb) in [
        (vec![3, 4], vec![4, 5], false, false),
        (vec![4, 3], vec![5, 4], true, true),
        (vec![2, 3, 4], vec![5, 4], false, true),
        (vec![4, 3], vec![2, 4, 5], true, false),
    ] {
        let a = Array::new(&a_shape, random(&mut rng, a_shape.iter().product()));
        let b = Array::new(&b_shape, random(&mut rng, b_shape.iter().product()));
        let c = reference::matmul(&a, &b, ta, tb, None, Activation::None);
        let g = random(&mut rng, c.data.len());
        let loss = |a: &Array, b: &Array| -> f64 {
            let c = reference::matmul(a, b, ta, tb, None, Activation::None);
            c.data
                .iter()
                .zip(&g)
                .map(|(&x, &y)| f64::from(x) * f64::from(y))
                .sum()
        };
        let (da, db) = reference::matmul_backward(&a, &b, &Array::new(&c.shape, g.clone()), ta, tb);
        let h = 1e-2f32;
        for (x, grad, is_a) in [(&a, &da, true), (&b, &db, false)] {
            for i in 0..x.data.len() {
                let (mut plus, mut minus) = (x.clone(), x.clone());
                plus.data[i] += h;
                minus.data[i] -= h;
                let (lp, lm) = if is_a {
                    (loss(&plus, &b), loss(&minus, &b))
                } else {
                    (loss(&a, &plus), loss(&a, &minus))
                };
                let fd = (lp - lm) / (2.0 * f64::from(h));
                let an = f64::from(grad.data[i]);
                assert!(
                    (fd - an).abs() <= 1e-3 * an.abs().max(1.0),
                    "d{} [{i}] analytic {an} vs finite difference {fd} (shapes {a_shape:?} {b_shape:?}, seed {seed})",
                    if is_a { "A" } else { "B" }
                );
            }
        }
    }
}

#[test]
fn bad_input_gives_typed_errors() {
    let gpu = gpu();
    let t = |shape: &[usize]| Tensor::zeros(&gpu, shape, DType::F32).unwrap();
    let mut batch = Batch::new(&gpu);
    let shape_err = |r: wgnn::Result<Tensor>| matches!(r, Err(Error::ShapeMismatch { .. }));
    assert!(shape_err(ops::matmul(
        &mut batch,
        &t(&[3, 4]),
        &t(&[5, 6]),
        &Default::default()
    )));
    assert!(shape_err(ops::matmul(
        &mut batch,
        &t(&[2, 3, 4]),
        &t(&[3, 4, 5]),
        &Default::default()
    )));
    assert!(shape_err(ops::matmul(
        &mut batch,
        &t(&[12]),
        &t(&[12, 1]),
        &Default::default()
    )));
    assert!(shape_err(ops::matmul(
        &mut batch,
        &t(&[1, 1, 1, 1]),
        &t(&[1, 1]),
        &Default::default()
    )));
    let bias = t(&[4]);
    let opts = ops::MatmulOptions {
        bias: Some(&bias),
        ..Default::default()
    };
    assert!(shape_err(ops::matmul(
        &mut batch,
        &t(&[3, 4]),
        &t(&[4, 5]),
        &opts
    )));
    let a = t(&[3, 4]);
    let wrong_out = t(&[3, 4]);
    let r = ops::matmul_into(
        &mut batch,
        &a,
        &t(&[4, 5]),
        &Default::default(),
        &wrong_out,
        ops::Write::Overwrite,
    );
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })));
    let r = ops::matmul_into(
        &mut batch,
        &a,
        &t(&[4, 4]),
        &Default::default(),
        &a,
        ops::Write::Overwrite,
    );
    assert!(matches!(r, Err(Error::Aliasing { .. })), "aliased output");
    let out = t(&[1, 4]);
    let bias_view = out.reshape(&[4]).unwrap();
    let aliased_bias = ops::MatmulOptions {
        bias: Some(&bias_view),
        ..Default::default()
    };
    let r = ops::matmul_into(
        &mut batch,
        &t(&[1, 4]),
        &t(&[4, 4]),
        &aliased_bias,
        &out,
        ops::Write::Overwrite,
    );
    assert!(
        matches!(r, Err(Error::Aliasing { .. })),
        "output aliasing the bias: {r:?}"
    );
    let r = ops::matmul_backward(
        &mut batch,
        &t(&[3, 4]),
        &t(&[4, 5]),
        &t(&[3, 4]),
        Default::default(),
    );
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })));
    if gpu.supports_f16() {
        let h = Tensor::zeros(&gpu, &[4, 5], DType::F16).unwrap();
        assert!(matches!(
            ops::matmul(&mut batch, &a, &h, &Default::default()),
            Err(Error::DtypeMismatch { .. })
        ));
    }
    // U32 tensors hold labels and indices: no op computes on their raw bits.
    let u = Tensor::zeros(&gpu, &[4, 4], DType::U32).unwrap();
    assert!(matches!(
        ops::matmul(&mut batch, &u, &u, &Default::default()),
        Err(Error::DtypeMismatch { .. })
    ));
    let r = ops::matmul_backward(&mut batch, &u, &u, &u, Default::default());
    assert!(matches!(r, Err(Error::DtypeMismatch { .. })), "{r:?}");
    // Empty tensors are refused where they are made.
    assert!(matches!(
        Tensor::zeros(&gpu, &[0, 4], DType::F32),
        Err(Error::EmptyTensor { .. })
    ));
    assert!(matches!(
        Tensor::zeros(&gpu, &[], DType::F32),
        Err(Error::EmptyTensor { .. })
    ));
    assert!(matches!(
        Tensor::from_slice(&gpu, &[1.0f32; 5], &[2, 3]),
        Err(Error::DataLength {
            expected: 6,
            found: 5
        })
    ));
    // Past the adapter's limits: a buffer too big, and more workgroups than a dispatch allows.
    let limit = gpu.limits().max_storage_buffer_binding_size;
    let too_big = Tensor::uninit(&gpu, &[(limit / 4 + 1) as usize], DType::F32);
    assert!(
        matches!(too_big, Err(Error::LimitExceeded { .. })),
        "{too_big:?}"
    );
    let huge = Tensor::uninit(&gpu, &[1 << 20, 1 << 20, 1 << 20], DType::F32);
    assert!(matches!(huge, Err(Error::LimitExceeded { .. })), "{huge:?}");
    let batches = gpu.limits().max_compute_workgroups_per_dimension as usize + 1;
    let r = ops::matmul(
        &mut batch,
        &t(&[batches, 1, 1]),
        &t(&[1, 1]),
        &Default::default(),
    );
    assert!(matches!(r, Err(Error::LimitExceeded { .. })), "{r:?}");
    assert_eq!(batch.dispatches(), 0, "nothing is recorded for bad input");
    batch.submit().unwrap();
}

#[test]
fn a_thousand_iteration_loop_allocates_no_buffers_after_the_first() {
    // Its own context: the shared one's pool also serves the tests running beside this one.
    let gpu = wgnn::Gpu::with_options(options()).expect("GPU tests need an adapter");
    let (mut rng, seed) = rng();
    let (m, n, k) = (24, 40, 8);
    let a_data = random(&mut rng, m * k);
    let b_data = random(&mut rng, k * n);
    let a = Tensor::from_slice(&gpu, &a_data, &[m, k]).unwrap();
    let b = Tensor::from_slice(&gpu, &b_data, &[k, n]).unwrap();
    let mut after_first = None;
    let mut last = Vec::new();
    for i in 0..1000 {
        a.write(&a_data).unwrap();
        let mut batch = Batch::new(&gpu);
        let c = ops::matmul(&mut batch, &a, &b, &Default::default()).unwrap();
        let grads = ops::matmul_backward(&mut batch, &a, &b, &c, Default::default()).unwrap();
        batch.submit().unwrap();
        if i % 100 == 0 || i == 999 {
            last = c.to_vec::<f32>().unwrap();
            drop(grads);
        }
        if i == 0 {
            after_first = Some(gpu.pool_stats().buffers_created);
        }
    }
    let created = gpu.pool_stats().buffers_created;
    assert_eq!(
        Some(created),
        after_first,
        "buffers were created after the first iteration"
    );
    let want = reference::matmul(
        &Array::new(&[m, k], a_data),
        &Array::new(&[k, n], b_data),
        false,
        false,
        None,
        Activation::None,
    );
    assert_close(&last, &want.data, 1e-5, &format!("seed {seed}"));
}

/// Mesa's software drivers stop an invocation after 65,535 loop iterations, silently. Sums longer
/// than one workgroup may walk are split across workgroups (split-K). Unsplit, the default
/// kernel walks K / 16 k-tiles of at least 17 iterations each: K = 2^17 is 139,000 iterations,
/// twice past the cap (the shapes first found wrong, K = 2^21 and a GEMV of K = 2^22, cost 55 s of
/// this test on lavapipe for the same check: a 64-tile per split whatever M and N).
#[test]
fn long_sums_past_the_software_loop_cap() {
    let k = (1 << 17) + 37;
    check(
        &gpu(),
        &[9, k],
        &[k, 9],
        false,
        false,
        true,
        Activation::None,
        DType::F32,
        2e-5,
    );
    check(
        &gpu(),
        &[k, 9],
        &[9, k],
        true,
        true,
        false,
        Activation::None,
        DType::F32,
        2e-5,
    );
    // A batch-1 GEMV against a Linear weight stored [N, K].
    let k = (1 << 18) + 5;
    check(
        &gpu(),
        &[1, k],
        &[3, k],
        false,
        true,
        true,
        Activation::None,
        DType::F32,
        2e-5,
    );
    if gpu().supports_f16() {
        let k = 40_003;
        check(
            &gpu(),
            &[3, 70, k],
            &[k, 5],
            false,
            false,
            true,
            Activation::Relu,
            DType::F16,
            1e-2,
        );
    }
    // A gradient summed over 4000 broadcast batches: splits group several batches each.
    check_backward(&gpu(), &[4000, 5, 40], &[40, 7], false, false);
}

/// Split-K under a scratch limit too small for all partial sums at once: waves of splits add into
/// the same slabs.
#[test]
fn split_k_in_waves_under_a_scratch_limit() {
    let gpu = wgnn::Gpu::with_options(wgnn::GpuOptions {
        scratch_limit_bytes: Some(4096),
        ..options()
    })
    .expect("GPU tests need an adapter");
    let (mut rng, seed) = rng();
    let (m, n, k) = (17, 19, 200_000);
    let a = random(&mut rng, m * k);
    let b = random(&mut rng, k * n);
    let want = reference::matmul(
        &Array::new(&[m, k], a.clone()),
        &Array::new(&[k, n], b.clone()),
        false,
        false,
        None,
        Activation::None,
    );
    let ta = Tensor::from_slice(&gpu, &a, &[m, k]).unwrap();
    let tb = Tensor::from_slice(&gpu, &b, &[k, n]).unwrap();
    let mut batch = Batch::new(&gpu);
    let c = ops::matmul(&mut batch, &ta, &tb, &Default::default()).unwrap();
    assert!(
        batch.dispatches() > 3,
        "expected waves of split-K dispatches"
    );
    batch.submit().unwrap();
    assert_close(
        &c.to_vec::<f32>().unwrap(),
        &want.data,
        2e-5,
        &format!("seed {seed}"),
    );
}

/// Every kernel candidate, pinned in turn on a context of its own, over ragged shapes, every
/// transpose, the fused epilogue, f16, batches, broadcast gradients and split-K.
#[test]
fn every_candidate_matches_the_reference() {
    use wgnn::ops::matmul::MatmulCandidate;
    use wgnn::tune::Candidate;
    let gpu = wgnn::Gpu::with_options(options()).expect("GPU tests need an adapter");
    for &candidate in MatmulCandidate::ALL {
        gpu.force_candidate(Some(candidate));
        // Small outputs with long K also take the `s8` (split-K) candidates.
        for &(m, n, k) in &[
            (1, 300, 37),
            (5, 7, 9),
            (8, 45, 300),
            (130, 67, 256),
            (33, 19, 70),
            (40, 70, 1501),
        ] {
            for flags in 0..4 {
                let (ta, tb) = (flags & 1 == 1, flags & 2 == 2);
                let bias = flags == 3;
                let act = if flags == 1 {
                    Activation::Gelu
                } else {
                    Activation::None
                };
                check(
                    &gpu,
                    &stored(m, k, ta),
                    &stored(k, n, tb),
                    ta,
                    tb,
                    bias,
                    act,
                    DType::F32,
                    1e-5,
                );
            }
        }
        // Batched, and broadcast over the batch (its gradient sums the batch).
        check(
            &gpu,
            &[3, 6, 11],
            &[13, 11],
            false,
            true,
            true,
            Activation::Relu,
            DType::F32,
            1e-5,
        );
        check_backward(&gpu, &[5, 7, 10], &[10, 3], false, false);
        check_backward(&gpu, &[9, 4], &[3, 9, 6], true, false);
        // Split-K: K past one split's loop budget.
        check(
            &gpu,
            &[9, 20_011],
            &[20_011, 10],
            false,
            false,
            false,
            Activation::None,
            DType::F32,
            2e-5,
        );
        if gpu.supports_f16() {
            for &(m, n, k) in &[(3, 17, 40), (70, 33, 129)] {
                check(
                    &gpu,
                    &[m, k],
                    &stored(k, n, true),
                    false,
                    true,
                    true,
                    Activation::None,
                    DType::F16,
                    1e-2,
                );
            }
        }
    }
    // Names round-trip (cache files hold them); a name that is no candidate is none.
    for &candidate in MatmulCandidate::ALL {
        assert_eq!(
            MatmulCandidate::from_name(candidate.name()),
            Some(candidate)
        );
    }
    assert_eq!(MatmulCandidate::from_name("tiled3x3"), None);
}

//! Embedding lookup and its deterministic backward pass against the CPU reference: repeated tokens,
//! position embeddings, more tokens than one backward dispatch sums, f32 and f16.

mod common;

use common::*;
use rand::RngExt;
use wgnn::ops;
use wgnn::reference::embedding as reference;
use wgnn::reference::Array;
use wgnn::{Batch, DType, Error, Gpu, Tensor};

fn check(gpu: &Gpu, seqs: usize, seq: usize, vocab: usize, dim: usize, dtype: DType, seed: u64) {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let prep = |v: Vec<f32>| {
        if dtype == DType::F16 {
            round_f16(&v)
        } else {
            v
        }
    };
    let rows = seqs * seq;
    let context = seq + 3;
    // Few distinct ids, so tokens repeat.
    let ids: Vec<u32> = (0..rows)
        .map(|_| rng.random_range(0..vocab as u32))
        .collect();
    let table = prep(random(&mut rng, vocab * dim));
    let pos = prep(random(&mut rng, context * dim));
    let dy = prep(random(&mut rng, rows * dim));
    let gt0 = prep(random(&mut rng, vocab * dim));
    let gp0 = prep(random(&mut rng, context * dim));
    let t = |v: &[f32], s: &[usize]| Tensor::from_f32(gpu, v, s, dtype).unwrap();
    let tids = Tensor::from_slice(gpu, &ids, &[seqs, seq]).unwrap();
    let (tt, tp, tdy) = (
        t(&table, &[vocab, dim]),
        t(&pos, &[context, dim]),
        t(&dy, &[seqs, seq, dim]),
    );
    let (tgt, tgp) = (t(&gt0, &[vocab, dim]), t(&gp0, &[context, dim]));
    let mut batch = Batch::new(gpu);
    let out = ops::embedding(&mut batch, &tids, &tt, Some(&tp)).unwrap();
    ops::embedding_backward(&mut batch, &tids, &tdy, &tgt, Some(&tgp)).unwrap();
    batch.submit().unwrap();
    assert_eq!(out.shape(), [seqs, seq, dim]);
    assert_guard_intact(&out, "out");
    let want = reference::embedding(
        &ids,
        seq,
        &Array::new(&[vocab, dim], table),
        Some(&Array::new(&[context, dim], pos)),
    );
    let (want_t, want_p) =
        reference::embedding_backward(&ids, seq, &Array::new(&[rows, dim], dy), vocab, context);
    let tol = if dtype == DType::F16 { 1e-2 } else { 1e-5 };
    let context_s =
        format!("{seqs}x{seq} tokens, vocab {vocab}, dim {dim}, {dtype:?}, seed {seed}");
    assert_close(&out.to_vec_f32().unwrap(), &want.data, tol, &context_s);
    let plus = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| a + b).collect::<Vec<_>>();
    assert_close(
        &tgt.to_vec_f32().unwrap(),
        &plus(&gt0, &want_t),
        tol,
        &format!("table, {context_s}"),
    );
    assert_close(
        &tgp.to_vec_f32().unwrap(),
        &plus(&gp0, &want_p),
        tol,
        &format!("positions, {context_s}"),
    );
}

#[test]
fn lookup_and_backward_match_the_reference() {
    let gpu = gpu();
    let (_, seed) = rng();
    check(&gpu, 1, 1, 1, 1, DType::F32, seed);
    check(&gpu, 3, 7, 5, 13, DType::F32, seed);
    check(&gpu, 12, 64, 65, 128, DType::F32, seed);
    // Past one backward dispatch's 16,384 rows: two dispatches, summed in order.
    check(&gpu, 41, 500, 7, 4, DType::F32, seed);
    if gpu.supports_f16() {
        check(&gpu, 3, 7, 5, 13, DType::F16, seed);
    }
}

#[test]
fn backward_is_the_same_from_run_to_run() {
    let gpu = gpu();
    let ids: Vec<u32> = (0..4096).map(|i| (i * 7 % 3) as u32).collect();
    let dy: Vec<f32> = (0..4096 * 8)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
        .collect();
    let run = || {
        let tids = Tensor::from_slice(&gpu, &ids, &[4096]).unwrap();
        let tdy = Tensor::from_slice(&gpu, &dy, &[4096, 8]).unwrap();
        let g = Tensor::zeros(&gpu, &[3, 8], DType::F32).unwrap();
        let mut batch = Batch::new(&gpu);
        ops::embedding_backward(&mut batch, &tids, &tdy, &g, None).unwrap();
        batch.submit().unwrap();
        g.to_vec::<f32>().unwrap()
    };
    assert_eq!(run(), run());
}

#[test]
fn bad_inputs_get_typed_errors() {
    let gpu = gpu();
    let mut batch = Batch::new(&gpu);
    let table = Tensor::zeros(&gpu, &[5, 4], DType::F32).unwrap();
    let float_ids = Tensor::zeros(&gpu, &[3], DType::F32).unwrap();
    assert!(matches!(
        ops::embedding(&mut batch, &float_ids, &table, None),
        Err(Error::DtypeMismatch { .. })
    ));
    let ids = Tensor::zeros(&gpu, &[2, 8], DType::U32).unwrap();
    let short = Tensor::zeros(&gpu, &[7, 4], DType::F32).unwrap();
    assert!(matches!(
        ops::embedding(&mut batch, &ids, &table, Some(&short)),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        ops::check_ids("test", &[1, 5], 5),
        Err(Error::InvalidArgument { .. })
    ));
}

/// The reference's backward against central differences of L = Σ out ⊙ w, for the table and the
/// positions, with repeated tokens.
#[test]
fn reference_backward_matches_finite_differences() {
    let (mut rng, seed) = rng();
    let (seqs, seq, vocab, dim, context) = (2, 5, 3, 4, 6);
    let rows = seqs * seq;
    let ids: Vec<u32> = (0..rows)
        .map(|_| rng.random_range(0..vocab as u32))
        .collect();
    let table = random(&mut rng, vocab * dim);
    let pos = random(&mut rng, context * dim);
    let w = random(&mut rng, rows * dim);
    let loss = |table: &[f32], pos: &[f32]| -> f64 {
        let out = reference::embedding(
            &ids,
            seq,
            &Array::new(&[vocab, dim], table.to_vec()),
            Some(&Array::new(&[context, dim], pos.to_vec())),
        );
        out.data
            .iter()
            .zip(&w)
            .map(|(o, w)| f64::from(*o) * f64::from(*w))
            .sum()
    };
    let (grad_table, grad_pos) = reference::embedding_backward(
        &ids,
        seq,
        &Array::new(&[rows, dim], w.clone()),
        vocab,
        context,
    );
    let h = 1e-2f32;
    let numeric = |which: usize, i: usize| -> f32 {
        let (mut t, mut p) = (table.clone(), pos.clone());
        let x = if which == 0 { &mut t } else { &mut p };
        x[i] += h;
        let up = loss(&t, &p);
        let x = if which == 0 { &mut t } else { &mut p };
        x[i] -= 2.0 * h;
        ((up - loss(&t, &p)) / (2.0 * f64::from(h))) as f32
    };
    let want_table: Vec<f32> = (0..table.len()).map(|i| numeric(0, i)).collect();
    let want_pos: Vec<f32> = (0..pos.len()).map(|i| numeric(1, i)).collect();
    assert_close(
        &grad_table,
        &want_table,
        1e-3,
        &format!("table, seed {seed}"),
    );
    assert_close(
        &grad_pos,
        &want_pos,
        1e-3,
        &format!("positions, seed {seed}"),
    );
}

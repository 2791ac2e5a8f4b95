//! Reference matmul and its backward, mirroring [`crate::ops::matmul`](mod@crate::ops::matmul).

use super::{activate, Array};
use crate::ops::Activation;

/// Splits a rank-2 or rank-3 shape into (batch, rows, cols).
fn split(shape: &[usize]) -> (usize, usize, usize) {
    match *shape {
        [r, c] => (1, r, c),
        [b, r, c] => (b, r, c),
        _ => panic!("reference matmul takes rank 2 or 3, got {shape:?}"),
    }
}

/// Element (i, j) of op(X) for batch `z` of a stored `[batch, rows, cols]` array.
fn at(x: &Array, z: usize, i: usize, j: usize, trans: bool) -> f64 {
    let (batch, rows, cols) = split(&x.shape);
    let z = if batch == 1 { 0 } else { z };
    let (r, c) = if trans { (j, i) } else { (i, j) };
    debug_assert!(r < rows);
    f64::from(x.data[z * rows * cols + r * cols + c])
}

/// C = act(op(A)·op(B) + bias), with the shape rules of [`crate::ops::matmul`](mod@crate::ops::matmul).
pub fn matmul(
    a: &Array,
    b: &Array,
    trans_a: bool,
    trans_b: bool,
    bias: Option<&[f32]>,
    activation: Activation,
) -> Array {
    let (ab, ar, ac) = split(&a.shape);
    let (bb, br, bc) = split(&b.shape);
    let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
    let n = if trans_b { br } else { bc };
    assert_eq!(k, if trans_b { bc } else { br }, "inner dimensions");
    let batch = ab.max(bb);
    let mut out = Vec::with_capacity(batch * m * n);
    for z in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    s += at(a, z, i, p, trans_a) * at(b, z, p, j, trans_b);
                }
                if let Some(bias) = bias {
                    s += f64::from(bias[j]);
                }
                out.push(activate(activation, s) as f32);
            }
        }
    }
    let shape = if a.shape.len() == 3 || b.shape.len() == 3 {
        vec![batch, m, n]
    } else {
        vec![m, n]
    };
    Array::new(&shape, out)
}

/// (dA, dB) for C = op(A)·op(B) given dC; an operand broadcast over the batch gets the batch sum.
pub fn matmul_backward(
    a: &Array,
    b: &Array,
    grad_c: &Array,
    trans_a: bool,
    trans_b: bool,
) -> (Array, Array) {
    let (ab, ar, ac) = split(&a.shape);
    let (bb, br, bc) = split(&b.shape);
    let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
    let n = if trans_b { br } else { bc };
    let batch = ab.max(bb);
    let mut da = vec![0.0f64; a.data.len()];
    let mut db = vec![0.0f64; b.data.len()];
    for z in 0..batch {
        let za = if ab == 1 { 0 } else { z };
        let zb = if bb == 1 { 0 } else { z };
        for i in 0..m {
            for j in 0..n {
                let g = f64::from(grad_c.data[z * m * n + i * n + j]);
                for p in 0..k {
                    // C[i,j] += X[i,p]·Y[p,j] with X = op(A), Y = op(B).
                    let (xr, xc) = if trans_a { (p, i) } else { (i, p) };
                    let (yr, yc) = if trans_b { (j, p) } else { (p, j) };
                    da[za * ar * ac + xr * ac + xc] += g * at(b, z, p, j, trans_b);
                    db[zb * br * bc + yr * bc + yc] += g * at(a, z, i, p, trans_a);
                }
            }
        }
    }
    let to32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    (
        Array::new(&a.shape, to32(da)),
        Array::new(&b.shape, to32(db)),
    )
}

//! Reference embedding lookup, mirroring [`crate::ops::embedding`](mod@crate::ops::embedding).

use super::Array;

/// `table[ids] + positions[row % seq]`; ids `[rows]` of sequences of `seq`.
pub fn embedding(ids: &[u32], seq: usize, table: &Array, positions: Option<&Array>) -> Array {
    let dim = table.shape[1];
    let mut out = Vec::with_capacity(ids.len() * dim);
    for (r, &id) in ids.iter().enumerate() {
        for c in 0..dim {
            let p = positions.map_or(0.0, |p| p.data[(r % seq) * dim + c]);
            out.push(table.data[id as usize * dim + c] + p);
        }
    }
    Array::new(&[ids.len(), dim], out)
}

/// (dL/d(table), dL/d(positions)) given dL/d(out), for a table of `vocab` rows and `context`
/// positions.
pub fn embedding_backward(
    ids: &[u32],
    seq: usize,
    grad_out: &Array,
    vocab: usize,
    context: usize,
) -> (Vec<f32>, Vec<f32>) {
    let dim = grad_out.shape[1];
    let mut table = vec![0.0f64; vocab * dim];
    let mut positions = vec![0.0f64; context * dim];
    for (r, &id) in ids.iter().enumerate() {
        for c in 0..dim {
            let g = f64::from(grad_out.data[r * dim + c]);
            table[id as usize * dim + c] += g;
            positions[(r % seq) * dim + c] += g;
        }
    }
    let to32 = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
    (to32(table), to32(positions))
}

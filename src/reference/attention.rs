//! Reference multi-head attention, mirroring [`crate::ops::attention`](mod@crate::ops::attention):
//! the scores materialised per (sequence, head), in f64.

use super::Array;

/// The masks and scale of one attention, as [`crate::ops::AttentionOptions`] gives them.
#[derive(Debug, Clone, Default)]
pub struct AttentionSpec {
    /// Heads.
    pub heads: usize,
    /// Keys after the query are masked.
    pub causal: bool,
    /// Valid tokens per sequence; `None`: all.
    pub lengths: Option<Vec<u32>>,
    /// The scores' scale; `None`: 1/√D.
    pub scale: Option<f32>,
}

struct Shape {
    b: usize,
    t: usize,
    h: usize,
    d: usize,
    scale: f64,
}

fn shape(qkv: &Array, spec: &AttentionSpec) -> Shape {
    let [b, t, w] = qkv.shape[..] else {
        panic!("qkv must be [batch, T, 3 · heads · D]");
    };
    let d = w / (3 * spec.heads);
    let scale = spec.scale.map_or(1.0 / (d as f64).sqrt(), f64::from);
    Shape {
        b,
        t,
        h: spec.heads,
        d,
        scale,
    }
}

impl Shape {
    fn qkv(&self, b: usize, t: usize, s: usize, h: usize) -> usize {
        ((b * self.t + t) * 3 + s) * self.h * self.d + h * self.d
    }
    fn out(&self, b: usize, t: usize, h: usize) -> usize {
        (b * self.t + t) * self.h * self.d + h * self.d
    }
}

fn visible(spec: &AttentionSpec, b: usize, q: usize, k: usize, t: usize) -> bool {
    let keys = spec.lengths.as_ref().map_or(t, |l| (l[b] as usize).min(t));
    k < keys && !(spec.causal && k > q)
}

/// The probabilities of query `q` of (b, h): softmax over its visible keys (zeros if none).
fn probabilities(
    qkv: &Array,
    s: &Shape,
    spec: &AttentionSpec,
    b: usize,
    h: usize,
    q: usize,
) -> Vec<f64> {
    let qi = s.qkv(b, q, 0, h);
    let scores: Vec<Option<f64>> = (0..s.t)
        .map(|k| {
            visible(spec, b, q, k, s.t).then(|| {
                let ki = s.qkv(b, k, 1, h);
                let dot: f64 = (0..s.d)
                    .map(|e| f64::from(qkv.data[qi + e]) * f64::from(qkv.data[ki + e]))
                    .sum();
                dot * s.scale
            })
        })
        .collect();
    let max = scores
        .iter()
        .flatten()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(v));
    let exps: Vec<f64> = scores
        .iter()
        .map(|v| v.map_or(0.0, |v| (v - max).exp()))
        .collect();
    let sum: f64 = exps.iter().sum();
    exps.iter()
        .map(|e| if sum > 0.0 { e / sum } else { 0.0 })
        .collect()
}

/// The attention output `[batch, T, heads · D]` of `qkv` (`[batch, T, 3 · heads · D]`), and the
/// row log-sum-exp `[batch, heads, T]` (+inf for a query that sees no key).
pub fn attention(qkv: &Array, spec: &AttentionSpec) -> (Array, Vec<f32>) {
    let s = shape(qkv, spec);
    let mut out = vec![0.0f32; s.b * s.t * s.h * s.d];
    let mut lse = vec![0.0f32; s.b * s.h * s.t];
    for b in 0..s.b {
        for h in 0..s.h {
            for q in 0..s.t {
                let p = probabilities(qkv, &s, spec, b, h, q);
                let oi = s.out(b, q, h);
                for e in 0..s.d {
                    let v: f64 = (0..s.t)
                        .map(|k| p[k] * f64::from(qkv.data[s.qkv(b, k, 2, h) + e]))
                        .sum();
                    out[oi + e] = v as f32;
                }
                // lse from the visible scores.
                let qi = s.qkv(b, q, 0, h);
                let scores: Vec<f64> = (0..s.t)
                    .filter(|&k| visible(spec, b, q, k, s.t))
                    .map(|k| {
                        let ki = s.qkv(b, k, 1, h);
                        (0..s.d)
                            .map(|e| f64::from(qkv.data[qi + e]) * f64::from(qkv.data[ki + e]))
                            .sum::<f64>()
                            * s.scale
                    })
                    .collect();
                lse[(b * s.h + h) * s.t + q] = if scores.is_empty() {
                    f32::INFINITY
                } else {
                    let max = scores.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
                    (max + scores.iter().map(|v| (v - max).exp()).sum::<f64>().ln()) as f32
                };
            }
        }
    }
    (Array::new(&[s.b, s.t, s.h * s.d], out), lse)
}

/// dL/d(qkv) of [`attention`] given dL/d(out).
pub fn attention_backward(qkv: &Array, grad_out: &Array, spec: &AttentionSpec) -> Array {
    let s = shape(qkv, spec);
    let mut dqkv = vec![0.0f64; qkv.data.len()];
    for b in 0..s.b {
        for h in 0..s.h {
            for q in 0..s.t {
                let p = probabilities(qkv, &s, spec, b, h, q);
                let gi = s.out(b, q, h);
                // dP[k] = dO · v_k; dS = P ⊙ (dP - Σ P ⊙ dP).
                let dp: Vec<f64> = (0..s.t)
                    .map(|k| {
                        let vi = s.qkv(b, k, 2, h);
                        (0..s.d)
                            .map(|e| f64::from(grad_out.data[gi + e]) * f64::from(qkv.data[vi + e]))
                            .sum()
                    })
                    .collect();
                let dot: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                let qi = s.qkv(b, q, 0, h);
                for k in 0..s.t {
                    if p[k] == 0.0 {
                        continue;
                    }
                    let ds = p[k] * (dp[k] - dot) * s.scale;
                    let (ki, vi) = (s.qkv(b, k, 1, h), s.qkv(b, k, 2, h));
                    for e in 0..s.d {
                        dqkv[qi + e] += ds * f64::from(qkv.data[ki + e]);
                        dqkv[ki + e] += ds * f64::from(qkv.data[qi + e]);
                        dqkv[vi + e] += p[k] * f64::from(grad_out.data[gi + e]);
                    }
                }
            }
        }
    }
    Array::new(&qkv.shape, dqkv.into_iter().map(|v| v as f32).collect())
}

/// Decode attention over a key/value cache (`ops::decode_attention`'s reference): for each row
/// `r` with cursor `(slot, position)`, the query `qkv[r][..dim]` (`heads` heads) attends to
/// `k_cache[slot][0..=position]` and `v_cache` alike, scaled by 1/√D. Caches are
/// `[slots, context, dim]`, flat; a cursor outside the cache gives zeros. In f64.
pub fn decode_attention(
    qkv: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    cursor: &[(usize, usize)],
    heads: usize,
    slots: usize,
    context: usize,
) -> Vec<f32> {
    let dim = qkv.len() / (3 * cursor.len().max(1));
    let d = dim / heads;
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0f32; cursor.len() * dim];
    for (r, &(slot, pos)) in cursor.iter().enumerate() {
        if slot >= slots || pos >= context {
            continue;
        }
        for h in 0..heads {
            let q = &qkv[r * 3 * dim + h * d..][..d];
            let at = |j: usize| (slot * context + j) * dim + h * d;
            let scores: Vec<f64> = (0..=pos)
                .map(|j| {
                    let k = &k_cache[at(j)..][..d];
                    scale
                        * q.iter()
                            .zip(k)
                            .map(|(&a, &b)| f64::from(a) * f64::from(b))
                            .sum::<f64>()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for c in 0..d {
                let v: f64 = (0..=pos)
                    .map(|j| weights[j] * f64::from(v_cache[at(j) + c]))
                    .sum();
                out[r * dim + h * d + c] = (v / total) as f32;
            }
        }
    }
    out
}

//! Reference token sampling, mirroring [`crate::ops::sampling`](mod@crate::ops::sampling): the
//! same kept set, the same generator and the same draw, in f64.

use super::dropout::mix;
use crate::ops::sampling::SamplingSettings;

/// The generator's uniform draw in [0, 1) for `settings`' seed and counter (24 bits).
pub fn uniform(settings: &SamplingSettings) -> f64 {
    let mut h = mix(settings.seed as u32 ^ 0x5bd1_e995);
    h = mix(h ^ (settings.seed >> 32) as u32);
    h = mix(h ^ settings.counter);
    f64::from(mix(h.wrapping_add(0x9e37_79b9)) >> 8) / 16_777_216.0
}

/// The tokens kept for a draw from `logits` (greedy rows keep only the first largest): a mask.
pub fn kept(logits: &[f32], settings: &SamplingSettings) -> Vec<bool> {
    let first_max = logits
        .iter()
        .enumerate()
        .fold(0, |best, (i, &x)| if x > logits[best] { i } else { best });
    if settings.temperature == 0.0 || settings.top_k == 1 {
        return (0..logits.len()).map(|i| i == first_max).collect();
    }
    let mut sorted: Vec<f32> = logits.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let mut threshold = f32::NEG_INFINITY;
    let k = settings.top_k as usize;
    if k != 0 && k < logits.len() {
        threshold = sorted[k - 1];
    }
    if settings.top_p < 1.0 {
        let weights = weights(logits, settings.temperature);
        let total: f64 = weights.iter().sum();
        let mut w: Vec<(f32, f64)> = logits.iter().copied().zip(weights).collect();
        w.sort_by(|a, b| b.0.total_cmp(&a.0));
        // The largest logit whose tail (every weight of a logit at least it) reaches p · total.
        let goal = f64::from(settings.top_p) * total;
        let mut tail = 0.0;
        let mut i = 0;
        while i < w.len() {
            let v = w[i].0;
            while i < w.len() && w[i].0 == v {
                tail += w[i].1;
                i += 1;
            }
            if tail >= goal {
                threshold = threshold.max(v);
                break;
            }
        }
    }
    logits.iter().map(|&x| x >= threshold).collect()
}

fn weights(logits: &[f32], temperature: f32) -> Vec<f64> {
    let t = f64::from(temperature);
    let m = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x) / t));
    logits
        .iter()
        .map(|&x| (f64::from(x) / t - m).exp())
        .collect()
}

/// The token [`crate::ops::sample_tokens`] chooses for one row.
pub fn sample(logits: &[f32], settings: &SamplingSettings) -> u32 {
    if settings.is_skip() {
        return 0;
    }
    let keep = kept(logits, settings);
    if settings.temperature == 0.0 || settings.top_k == 1 {
        return keep.iter().position(|&k| k).unwrap_or(0) as u32;
    }
    let weights = weights(logits, settings.temperature);
    let mass: f64 = weights
        .iter()
        .zip(&keep)
        .filter(|(_, &k)| k)
        .map(|(w, _)| w)
        .sum();
    let target = uniform(settings) * mass;
    let mut run = 0.0;
    let mut last = 0;
    for (i, (w, &k)) in weights.iter().zip(&keep).enumerate() {
        if k {
            run += w;
            last = i;
            if target < run {
                return i as u32;
            }
        }
    }
    last as u32
}

//! Reference dropout, mirroring [`crate::ops::dropout`](mod@crate::ops::dropout): the same hash,
//! so the CPU drops the same elements as the GPU.

use super::Array;
use crate::ops::dropout::DropoutKey;

/// The generator's 32-bit mixer (lowbias32), shared with the sampling reference.
pub(crate) fn mix(v: u32) -> u32 {
    let mut h = v;
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^= h >> 16;
    h
}

/// Whether element `i` survives under `key`.
pub fn kept(key: &DropoutKey, i: u32) -> bool {
    let threshold = (f64::from(key.p) * 4_294_967_296.0).min(f64::from(u32::MAX)) as u32;
    let mut h = mix(i ^ key.seed as u32);
    h = mix(h ^ (key.seed >> 32) as u32);
    h = mix(h ^ key.counter);
    mix(h.wrapping_add(0x9e37_79b9)) >= threshold
}

/// `x` with the dropped elements zeroed and the rest scaled by 1/(1 − p) (the backward is the
/// same map on dL/dy).
pub fn dropout(x: &Array, key: &DropoutKey) -> Array {
    let scale = 1.0 / (1.0 - f64::from(key.p));
    let data = x
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if kept(key, i as u32) {
                (f64::from(v) * scale) as f32
            } else {
                0.0
            }
        })
        .collect();
    Array::new(&x.shape, data)
}

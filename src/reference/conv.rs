//! Reference 2-D convolution and pooling by direct loops, mirroring [`crate::ops::conv`] and
//! [`crate::ops::pool`] (NCHW activations, KCRS filters).

use super::{activate, Array};
use crate::ops::{Activation, Conv2dParams, Pool2dParams};

fn out_size(size: usize, kernel: usize, stride: usize, pad: usize, dil: usize) -> usize {
    (size + 2 * pad - (kernel - 1) * dil - 1) / stride + 1
}

/// The input coordinate a tap reads, or None in the padding.
fn tap(o: usize, k: usize, stride: usize, pad: usize, dil: usize, size: usize) -> Option<usize> {
    (o * stride + k * dil)
        .checked_sub(pad)
        .filter(|&i| i < size)
}

/// act(conv2d(x, w) + bias).
pub fn conv2d(
    x: &Array,
    w: &Array,
    bias: Option<&[f32]>,
    p: &Conv2dParams,
    act: Activation,
) -> Array {
    let (&[n, c, h, wd], &[k, cg, r, s]) = (&x.shape[..], &w.shape[..]) else {
        panic!("conv2d reference takes NCHW and KCRS");
    };
    let kg = k / p.groups;
    let oh = out_size(h, r, p.stride.0, p.padding.0, p.dilation.0);
    let ow = out_size(wd, s, p.stride.1, p.padding.1, p.dilation.1);
    let mut out = Vec::with_capacity(n * k * oh * ow);
    for b in 0..n {
        for ko in 0..k {
            let g = ko / kg;
            for y in 0..oh {
                for xo in 0..ow {
                    let mut acc = bias.map_or(0.0, |bi| f64::from(bi[ko]));
                    for ci in 0..cg {
                        let cin = g * cg + ci;
                        for ri in 0..r {
                            let Some(hi) = tap(y, ri, p.stride.0, p.padding.0, p.dilation.0, h)
                            else {
                                continue;
                            };
                            for si in 0..s {
                                let Some(wi) =
                                    tap(xo, si, p.stride.1, p.padding.1, p.dilation.1, wd)
                                else {
                                    continue;
                                };
                                let xv = x.data[((b * c + cin) * h + hi) * wd + wi];
                                let wv = w.data[((ko * cg + ci) * r + ri) * s + si];
                                acc += f64::from(xv) * f64::from(wv);
                            }
                        }
                    }
                    out.push(activate(act, acc) as f32);
                }
            }
        }
    }
    Array::new(&[n, k, oh, ow], out)
}

/// (dx, dw, dbias) of conv2d(x, w) + bias given dL/dout.
#[allow(clippy::needless_range_loop)] // indices mirror the formula
pub fn conv2d_backward(
    x: &Array,
    w: &Array,
    grad_out: &Array,
    p: &Conv2dParams,
) -> (Array, Array, Vec<f32>) {
    let (&[n, c, h, wd], &[k, cg, r, s]) = (&x.shape[..], &w.shape[..]) else {
        panic!("conv2d reference takes NCHW and KCRS");
    };
    let (oh, ow) = (grad_out.shape[2], grad_out.shape[3]);
    let kg = k / p.groups;
    let mut dx = vec![0.0f64; x.data.len()];
    let mut dw = vec![0.0f64; w.data.len()];
    let mut db = vec![0.0f64; k];
    for b in 0..n {
        for ko in 0..k {
            let g = ko / kg;
            for y in 0..oh {
                for xo in 0..ow {
                    let go = f64::from(grad_out.data[((b * k + ko) * oh + y) * ow + xo]);
                    db[ko] += go;
                    for ci in 0..cg {
                        let cin = g * cg + ci;
                        for ri in 0..r {
                            let Some(hi) = tap(y, ri, p.stride.0, p.padding.0, p.dilation.0, h)
                            else {
                                continue;
                            };
                            for si in 0..s {
                                let Some(wi) =
                                    tap(xo, si, p.stride.1, p.padding.1, p.dilation.1, wd)
                                else {
                                    continue;
                                };
                                let xi = ((b * c + cin) * h + hi) * wd + wi;
                                let wi_ = ((ko * cg + ci) * r + ri) * s + si;
                                dx[xi] += go * f64::from(w.data[wi_]);
                                dw[wi_] += go * f64::from(x.data[xi]);
                            }
                        }
                    }
                }
            }
        }
    }
    let to32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    (
        Array::new(&x.shape, to32(dx)),
        Array::new(&w.shape, to32(dw)),
        to32(db),
    )
}

/// Pooling windows: calls `f(out_index, plane, [(input_index_in_plane)...])` per output element.
fn windows(
    shape: &[usize],
    p: &Pool2dParams,
    mut f: impl FnMut(usize, usize, Vec<usize>),
) -> [usize; 4] {
    let &[n, c, h, w] = shape else {
        panic!("pooling reference takes NCHW")
    };
    let oh = out_size(h, p.kernel.0, p.stride.0, p.padding.0, 1);
    let ow = out_size(w, p.kernel.1, p.stride.1, p.padding.1, 1);
    let mut o = 0;
    for plane in 0..n * c {
        for y in 0..oh {
            for xo in 0..ow {
                let mut taps = Vec::new();
                for ri in 0..p.kernel.0 {
                    let Some(hi) = tap(y, ri, p.stride.0, p.padding.0, 1, h) else {
                        continue;
                    };
                    for si in 0..p.kernel.1 {
                        let Some(wi) = tap(xo, si, p.stride.1, p.padding.1, 1, w) else {
                            continue;
                        };
                        taps.push(hi * w + wi);
                    }
                }
                f(o, plane, taps);
                o += 1;
            }
        }
    }
    [n, c, oh, ow]
}

/// Max pooling: (output, index of the first maximum in its plane); NaN wins.
pub fn max_pool2d(x: &Array, p: &Pool2dParams) -> (Array, Vec<u32>) {
    let plane_in = x.shape[2] * x.shape[3];
    let (mut out, mut idx) = (Vec::new(), Vec::new());
    let shape = windows(&x.shape, p, |_, plane, taps| {
        let mut best = taps[0];
        for &t in &taps {
            let (v, b) = (
                x.data[plane * plane_in + t],
                x.data[plane * plane_in + best],
            );
            if !b.is_nan() && (v > b || v.is_nan()) {
                best = t;
            }
        }
        out.push(x.data[plane * plane_in + best]);
        idx.push(best as u32);
    });
    (Array::new(&shape, out), idx)
}

/// dx of max pooling.
pub fn max_pool2d_backward(grad_out: &Array, indices: &[u32], input_shape: &[usize]) -> Array {
    let plane_in = input_shape[2] * input_shape[3];
    let plane_out = grad_out.shape[2] * grad_out.shape[3];
    let mut dx = vec![0.0f64; input_shape.iter().product()];
    for (o, (&g, &i)) in grad_out.data.iter().zip(indices).enumerate() {
        dx[(o / plane_out) * plane_in + i as usize] += f64::from(g);
    }
    Array::new(input_shape, dx.into_iter().map(|v| v as f32).collect())
}

/// Average pooling (padding counts as zeros, divisor kh·kw).
pub fn avg_pool2d(x: &Array, p: &Pool2dParams) -> Array {
    let plane_in = x.shape[2] * x.shape[3];
    let div = (p.kernel.0 * p.kernel.1) as f64;
    let mut out = Vec::new();
    let shape = windows(&x.shape, p, |_, plane, taps| {
        let sum: f64 = taps
            .iter()
            .map(|&t| f64::from(x.data[plane * plane_in + t]))
            .sum();
        out.push((sum / div) as f32);
    });
    Array::new(&shape, out)
}

/// dx of average pooling.
pub fn avg_pool2d_backward(grad_out: &Array, input_shape: &[usize], p: &Pool2dParams) -> Array {
    let plane_in = input_shape[2] * input_shape[3];
    let div = (p.kernel.0 * p.kernel.1) as f64;
    let mut dx = vec![0.0f64; input_shape.iter().product()];
    windows(input_shape, p, |o, plane, taps| {
        for t in taps {
            dx[plane * plane_in + t] += f64::from(grad_out.data[o]) / div;
        }
    });
    Array::new(input_shape, dx.into_iter().map(|v| v as f32).collect())
}

//! The training step on the CPU, mirroring [`crate::nn`]: the same layers from the same initial
//! values, with f64-accumulating reference ops, so that a GPU run can be checked parameter by
//! parameter after several steps.

use super::Array;
use crate::nn::{HostParameters, LayerSpec};
use crate::ops::{AdamConfig, Conv2dParams, Pool2dParams, SgdConfig};

/// The convolution's stride and padding, from the spec's own fields.
fn conv_params(spec: &LayerSpec) -> Conv2dParams {
    match *spec {
        LayerSpec::Conv2d {
            stride, padding, ..
        } => Conv2dParams {
            stride,
            padding,
            ..Conv2dParams::default()
        },
        _ => Conv2dParams::default(),
    }
}

/// The pool's window and stride, from the spec's own fields.
fn pool_params(spec: &LayerSpec) -> Pool2dParams {
    match *spec {
        LayerSpec::MaxPool2d { kernel, stride } | LayerSpec::AvgPool2d { kernel, stride } => {
            Pool2dParams {
                kernel,
                stride,
                padding: (0, 0),
            }
        }
        _ => Pool2dParams::square(1),
    }
}

/// What one layer saved in the forward pass.
enum Saved {
    Input(Array),
    Indices(Vec<u32>, Vec<usize>),
    Shape(Vec<usize>),
}

/// The optimizer of a [`Model`].
#[derive(Debug, Clone, Copy)]
pub enum Optimizer {
    /// SGD.
    Sgd(SgdConfig),
    /// Adam / AdamW.
    Adam(AdamConfig),
}

/// A sequential model on the CPU.
pub struct Model {
    specs: Vec<LayerSpec>,
    /// Parameters (name, shape, values), in layer order, as [`crate::nn::Init::values`] gives.
    pub params: HostParameters,
    state: Vec<(Vec<f32>, Vec<f32>)>,
    steps: u32,
    saved: Vec<Saved>,
}

impl Model {
    /// A model with the given layers and initial parameters.
    pub fn new(specs: Vec<LayerSpec>, params: HostParameters) -> Self {
        let state = params
            .iter()
            .map(|(_, _, v)| (vec![0.0; v.len()], vec![0.0; v.len()]))
            .collect();
        Model {
            specs,
            params,
            state,
            steps: 0,
            saved: Vec::new(),
        }
    }

    /// Index of layer `i`'s first parameter.
    fn first_param(&self, layer: usize) -> usize {
        self.specs[..layer]
            .iter()
            .map(|s| s.parameter_shapes().len())
            .sum()
    }

    fn param(&self, i: usize) -> Array {
        Array::new(&self.params[i].1, self.params[i].2.clone())
    }

    /// The forward pass, saving what backward needs.
    pub fn forward(&mut self, x: &Array) -> Array {
        self.saved.clear();
        let mut h = x.clone();
        for (i, spec) in self.specs.clone().iter().enumerate() {
            let p = self.first_param(i);
            h = match spec {
                LayerSpec::Linear { .. } => {
                    self.saved.push(Saved::Input(h.clone()));
                    let w = self.param(p);
                    super::matmul(
                        &h,
                        &w,
                        false,
                        true,
                        Some(&self.params[p + 1].2),
                        Default::default(),
                    )
                }
                LayerSpec::Conv2d { .. } => {
                    self.saved.push(Saved::Input(h.clone()));
                    let w = self.param(p);
                    super::conv::conv2d(
                        &h,
                        &w,
                        Some(&self.params[p + 1].2),
                        &conv_params(spec),
                        Default::default(),
                    )
                }
                LayerSpec::MaxPool2d { .. } => {
                    let (y, idx) = super::conv::max_pool2d(&h, &pool_params(spec));
                    self.saved.push(Saved::Indices(idx, h.shape.clone()));
                    y
                }
                LayerSpec::AvgPool2d { .. } => {
                    self.saved.push(Saved::Shape(h.shape.clone()));
                    super::conv::avg_pool2d(&h, &pool_params(spec))
                }
                LayerSpec::Flatten => {
                    self.saved.push(Saved::Shape(h.shape.clone()));
                    let rows = h.shape[0];
                    Array::new(&[rows, h.data.len() / rows], h.data)
                }
                LayerSpec::Activation { function } => {
                    self.saved.push(Saved::Input(h.clone()));
                    super::elementwise::activation(&h, *function)
                }
                LayerSpec::Add => panic!("a chain has no Add (it takes two inputs)"),
            };
        }
        h
    }

    /// The backward pass from dL/d(output): the gradient of every parameter, in order.
    pub fn backward(&mut self, grad: &Array) -> Vec<Vec<f32>> {
        let mut grads: Vec<Vec<f32>> = self
            .params
            .iter()
            .map(|(_, _, v)| vec![0.0; v.len()])
            .collect();
        let mut g = grad.clone();
        let saved = std::mem::take(&mut self.saved);
        for (i, (spec, saved)) in self.specs.clone().iter().zip(saved).enumerate().rev() {
            let p = self.first_param(i);
            g = match (spec, saved) {
                (LayerSpec::Linear { .. }, Saved::Input(x)) => {
                    let w = self.param(p);
                    let (dx, dw) = super::matmul_backward(&x, &w, &g, false, true);
                    grads[p] = dw.data;
                    grads[p + 1] = super::reduce::channel_sum(&g, 1).data;
                    dx
                }
                (LayerSpec::Conv2d { .. }, Saved::Input(x)) => {
                    let w = self.param(p);
                    let (dx, dw, db) = super::conv::conv2d_backward(&x, &w, &g, &conv_params(spec));
                    grads[p] = dw.data;
                    grads[p + 1] = db;
                    dx
                }
                (LayerSpec::MaxPool2d { .. }, Saved::Indices(idx, shape)) => {
                    super::conv::max_pool2d_backward(&g, &idx, &shape)
                }
                (LayerSpec::AvgPool2d { .. }, Saved::Shape(shape)) => {
                    super::conv::avg_pool2d_backward(&g, &shape, &pool_params(spec))
                }
                (LayerSpec::Flatten, Saved::Shape(shape)) => Array::new(&shape, g.data),
                (LayerSpec::Activation { function }, Saved::Input(x)) => {
                    super::elementwise::activation_backward(&x, &g, *function)
                }
                _ => unreachable!("forward saved this layer's kind"),
            };
        }
        grads
    }

    /// One training step with cross-entropy on integer labels: returns the loss.
    pub fn step(&mut self, x: &Array, labels: &[u32], optimizer: &Optimizer) -> f32 {
        let logits = self.forward(x);
        let (loss, grad) = super::loss::cross_entropy(&logits, labels, 0.0);
        let grads = self.backward(&grad);
        self.steps += 1;
        for ((param, grad), (a, b)) in self.params.iter_mut().zip(&grads).zip(&mut self.state) {
            match optimizer {
                Optimizer::Sgd(c) => {
                    super::optim::sgd_step(&mut param.2, grad, a, c, self.steps == 1)
                }
                Optimizer::Adam(c) => {
                    super::optim::adam_step(&mut param.2, grad, a, b, c, self.steps)
                }
            }
        }
        loss
    }
}

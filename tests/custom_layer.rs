//! A layer defined outside wgnn (here, in a test crate): a residual block with its own skip
//! connection, wired with built-in layers into a graph with a second skip (a value read twice),
//! trained against a CPU reference for several steps, served through captured plans, and saved
//! and loaded (the block registered by its kind) with the same outputs.

mod common;

use common::*;
use serde::{Deserialize, Serialize};
use wgnn::infer::{Head, InferenceSession, SessionOptions};
use wgnn::nn::{
    layer_from_config, register_layer, ActivationLayer, Add, Context, Init, Layer, Linear, Model,
    ModelBuilder, Optimizer, ParamSpec, Trainer,
};
use wgnn::ops::{self, SgdConfig};
use wgnn::reference::{self, Array};
use wgnn::{Activation, Result, Tensor};

/// y = x + W2·relu(W1·x + b1) + b2 over `[batch, features]`: two Linear maps around a ReLU, and
/// the input added back. Its forward fuses the bias and the ReLU into the first matmul; its
/// backward adds the skip's gradient to the input's.
#[derive(Debug, Serialize, Deserialize)]
struct ResidualBlock {
    features: usize,
    hidden: usize,
    /// The input and relu(W1·x + b1).
    #[serde(skip)]
    saved: Option<(Tensor, Tensor)>,
}

impl ResidualBlock {
    fn new(features: usize, hidden: usize) -> Self {
        ResidualBlock {
            features,
            hidden,
            saved: None,
        }
    }
}

fn transposed_b() -> ops::Transposes {
    ops::Transposes { a: false, b: true }
}

impl Layer for ResidualBlock {
    fn kind(&self) -> &'static str {
        "ResidualBlock"
    }

    fn parameters(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::weight("w1", &[self.hidden, self.features]),
            ParamSpec::bias("b1", self.hidden),
            ParamSpec::weight("w2", &[self.features, self.hidden]),
            ParamSpec::bias("b2", self.features),
        ]
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        match inputs {
            [[b, f]] if *f == self.features => Ok(vec![*b, *f]),
            _ => Err(wgnn::Error::ShapeMismatch {
                op: "ResidualBlock",
                details: format!("takes one [batch, {}], got {inputs:?}", self.features),
            }),
        }
    }

    fn forward(&mut self, ctx: &mut Context, inputs: &[&Tensor]) -> Result<Tensor> {
        let x = inputs[0];
        let (w1, b1) = (ctx.param("w1")?, ctx.param("b1")?);
        let (w2, b2) = (ctx.param("w2")?, ctx.param("b2")?);
        let first = ops::MatmulOptions {
            transposes: transposed_b(),
            bias: Some(b1),
            activation: Activation::Relu,
        };
        let h = ops::matmul(ctx.batch, x, w1, &first)?;
        let second = ops::MatmulOptions {
            transposes: transposed_b(),
            bias: Some(b2),
            activation: Activation::None,
        };
        let z = ops::matmul(ctx.batch, &h, w2, &second)?;
        if ctx.train {
            self.saved = Some((x.clone(), h.clone()));
        }
        ops::scale_add(ctx.batch, 1.0, &z, 1.0, x)
    }

    fn backward(
        &mut self,
        ctx: &mut Context,
        grad_y: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let (x, h) = self.saved.take().expect("a training forward came first");
        let accumulate_at = ops::MatmulOptions {
            transposes: ops::Transposes { a: true, b: false },
            ..Default::default()
        };
        // dW2 += gᵀ·h, db2 += Σ g, dh = g·W2, through the ReLU (its output tells where it passed).
        let (w1, w2) = (ctx.param("w1")?, ctx.param("w2")?);
        let (gw1, gb1) = (ctx.grad("w1")?, ctx.grad("b1")?);
        let (gw2, gb2) = (ctx.grad("w2")?, ctx.grad("b2")?);
        ops::matmul_into(
            ctx.batch,
            grad_y,
            &h,
            &accumulate_at,
            gw2,
            ops::Write::Accumulate,
        )?;
        let db2 = ops::channel_sum(ctx.batch, grad_y, 1)?;
        ops::axpy(ctx.batch, gb2, 1.0, &db2)?;
        let dh = ops::matmul(ctx.batch, grad_y, w2, &Default::default())?;
        let dpre = ops::activation_backward(ctx.batch, &h, &dh, Activation::Relu)?;
        ops::matmul_into(
            ctx.batch,
            &dpre,
            &x,
            &accumulate_at,
            gw1,
            ops::Write::Accumulate,
        )?;
        let db1 = ops::channel_sum(ctx.batch, &dpre, 1)?;
        ops::axpy(ctx.batch, gb1, 1.0, &db1)?;
        if !needs[0] {
            return Ok(vec![None]);
        }
        let dx = ops::matmul(ctx.batch, &dpre, w1, &Default::default())?;
        Ok(vec![Some(ops::scale_add(
            ctx.batch, 1.0, &dx, 1.0, grad_y,
        )?)])
    }

    fn config(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self).ok()
    }
}

/// A layer that gives no configuration: it trains and serves, but cannot be saved or decoded.
#[derive(Debug)]
struct Unsaveable;

impl Layer for Unsaveable {
    fn kind(&self) -> &'static str {
        "Unsaveable"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        Ok(inputs[0].to_vec())
    }
    fn forward(&mut self, _ctx: &mut Context, inputs: &[&Tensor]) -> Result<Tensor> {
        Ok(inputs[0].clone())
    }
    fn backward(
        &mut self,
        _ctx: &mut Context,
        grad_y: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(grad_y.clone())])
    }
}

/// The same block under a kind nobody registers.
#[derive(Debug, Serialize, Deserialize)]
struct Unregistered {
    features: usize,
}

impl Layer for Unregistered {
    fn kind(&self) -> &'static str {
        "Unregistered"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        Ok(inputs[0].to_vec())
    }
    fn forward(&mut self, _ctx: &mut Context, inputs: &[&Tensor]) -> Result<Tensor> {
        Ok(inputs[0].clone())
    }
    fn backward(
        &mut self,
        _ctx: &mut Context,
        grad_y: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(grad_y.clone())])
    }
    fn config(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self).ok()
    }
}

fn register() {
    register_layer("ResidualBlock", |config| {
        layer_from_config::<ResidualBlock>("ResidualBlock", config)
    })
    .unwrap();
}

const FEATURES: usize = 8;
const WIDTH: usize = 16;
const HIDDEN: usize = 12;
const CLASSES: usize = 3;

/// x → Linear → ReLU (= r) → ResidualBlock → Add(·, r) → Linear: r is read twice.
fn model(gpu: &wgnn::Gpu, seed: u64) -> wgnn::nn::Model {
    let mut b = ModelBuilder::new();
    let x = b.input(&[FEATURES]);
    let a = b.add(Linear::new(FEATURES, WIDTH), &[x]);
    let r = b.add(ActivationLayer::new(Activation::Relu), &[a]);
    let h = b.add(ResidualBlock::new(WIDTH, HIDDEN), &[r]);
    let s = b.add(Add, &[h, r]);
    let y = b.add(Linear::new(WIDTH, CLASSES), &[s]);
    b.build(gpu, y, Init::KaimingUniform { seed }).unwrap()
}

/// The same model on the CPU: its parameters (in the model's order) and a forward that keeps
/// what the backward needs.
struct Cpu {
    params: Vec<Vec<f32>>,
}

struct Trace {
    x: Array,
    r: Array,
    h1: Array,
    s: Array,
    y: Array,
}

impl Cpu {
    fn forward(&self, x: &Array) -> Trace {
        let p = &self.params;
        let linear = |input: &Array, w: &[f32], b: &[f32], out: usize, act: Activation| {
            let w = Array::new(&[out, input.shape[1]], w.to_vec());
            reference::matmul(input, &w, false, true, Some(b), act)
        };
        let r = linear(x, &p[0], &p[1], WIDTH, Activation::Relu);
        let h1 = linear(&r, &p[2], &p[3], HIDDEN, Activation::Relu);
        let z = linear(&h1, &p[4], &p[5], WIDTH, Activation::None);
        let h = reference::elementwise::scale_add(1.0, &z, 1.0, &r);
        let s = reference::elementwise::scale_add(1.0, &h, 1.0, &r);
        let y = linear(&s, &p[6], &p[7], CLASSES, Activation::None);
        Trace {
            x: x.clone(),
            r,
            h1,
            s,
            y,
        }
    }

    /// One SGD step on cross-entropy against `labels`.
    fn step(
        &mut self,
        x: &Array,
        labels: &[u32],
        momentum: &mut [Vec<f32>],
        sgd: &SgdConfig,
        first: bool,
    ) {
        let t = self.forward(x);
        let (_, g) = reference::loss::cross_entropy(&t.y, labels, 0.0);
        let p = self.params.clone();
        let w = |i: usize, rows: usize, cols: usize| Array::new(&[rows, cols], p[i].clone());
        let bias_grad = |g: &Array| reference::reduce::channel_sum(g, 1).data;
        // y = s·W3ᵀ + b3
        let (ds, dw3) = reference::matmul_backward(&t.s, &w(6, CLASSES, WIDTH), &g, false, true);
        let db3 = bias_grad(&g);
        // s = h + r, h = z + r: dz = ds; dr gets ds twice (through h's skip and s's).
        let dz = ds.clone();
        let (dh1, dw2) = reference::matmul_backward(&t.h1, &w(4, WIDTH, HIDDEN), &dz, false, true);
        let db2 = bias_grad(&dz);
        let dpre = reference::elementwise::activation_backward(&t.h1, &dh1, Activation::Relu);
        let (dr_block, dw1) =
            reference::matmul_backward(&t.r, &w(2, HIDDEN, WIDTH), &dpre, false, true);
        let db1 = bias_grad(&dpre);
        let dr = reference::elementwise::scale_add(1.0, &dr_block, 1.0, &ds);
        let dr = reference::elementwise::scale_add(1.0, &dr, 1.0, &ds);
        let da = reference::elementwise::activation_backward(&t.r, &dr, Activation::Relu);
        let (_, dw0) = reference::matmul_backward(&t.x, &w(0, WIDTH, FEATURES), &da, false, true);
        let db0 = bias_grad(&da);
        let grads = [dw0.data, db0, dw1.data, db1, dw2.data, db2, dw3.data, db3];
        for ((param, grad), m) in self.params.iter_mut().zip(&grads).zip(momentum) {
            reference::optim::sgd_step(param, grad, m, sgd, first);
        }
    }
}

#[test]
fn a_layer_of_another_crate_trains_against_the_reference_and_serves() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    let model = model(&gpu, seed);
    let names: Vec<&str> = model
        .params()
        .params()
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["0.weight", "0.bias", "2.w1", "2.b1", "2.w2", "2.b2", "4.weight", "4.bias"]
    );
    let mut cpu = Cpu {
        params: model
            .params()
            .to_host()
            .unwrap()
            .into_iter()
            .map(|(_, _, v)| v)
            .collect(),
    };
    let mut momentum: Vec<Vec<f32>> = cpu.params.iter().map(|p| vec![0.0; p.len()]).collect();
    let sgd = SgdConfig {
        momentum: 0.9,
        ..SgdConfig::new(0.05)
    };
    let mut trainer = Trainer::new(model, Optimizer::sgd(sgd));
    let rows = 11;
    for step in 0..5 {
        let x = random(&mut rng, rows * FEATURES);
        let labels: Vec<u32> = (0..rows as u32).map(|i| (i * 5 + step) % 3).collect();
        trainer.step(&x, &labels).unwrap();
        cpu.step(
            &Array::new(&[rows, FEATURES], x),
            &labels,
            &mut momentum,
            &sgd,
            step == 0,
        );
    }
    let context = format!("seed {seed}");
    let got = trainer.model().params().to_host().unwrap();
    for ((name, _, g), want) in got.iter().zip(&cpu.params) {
        assert_close(g, want, 1e-4, &format!("{name} after 5 steps, {context}"));
    }
    // Served through captured plans: the classifier head and the raw outputs.
    let x = random(&mut rng, 6 * FEATURES);
    let want = cpu.forward(&Array::new(&[6, FEATURES], x.clone())).y;
    let probabilities = reference::softmax(&want);
    let session = InferenceSession::new(
        trainer.into_model(),
        SessionOptions {
            max_batch: 4,
            head: Head::Classifier { top_k: 2 },
            ..Default::default()
        },
    )
    .unwrap();
    let p = session.predict(&x).unwrap();
    assert_close(&p.outputs, &probabilities.data, 1e-5, &context);
    assert_eq!(p.classes.len(), 6);
    assert_eq!(p.top_k[0].len(), 2);
}

#[test]
fn a_graph_is_checked_when_it_is_built() {
    let gpu = gpu();
    // An Add of two shapes that differ.
    let mut b = ModelBuilder::new();
    let x = b.input(&[4]);
    let a = b.add(Linear::new(4, 3), &[x]);
    let s = b.add(Add, &[a, x]);
    let err = b
        .build(&gpu, s, Init::KaimingUniform { seed: 1 })
        .unwrap_err();
    assert!(matches!(err, wgnn::Error::ShapeMismatch { .. }), "{err:?}");
    // A value of another builder.
    let mut other = ModelBuilder::new();
    let foreign = other.input(&[4]);
    let foreign = other.add(Linear::new(4, 4), &[foreign]);
    let mut b = ModelBuilder::new();
    b.input(&[4]);
    let y = b.add(Linear::new(4, 4), &[foreign]);
    let err = b
        .build(&gpu, y, Init::KaimingUniform { seed: 1 })
        .unwrap_err();
    assert!(
        matches!(err, wgnn::Error::InvalidArgument { .. }),
        "{err:?}"
    );
    // A graph is not a chain: pruning's chain form refuses it, and says why.
    let mut b = ModelBuilder::new();
    let x = b.input(&[4]);
    let a = b.add(ResidualBlock::new(4, 2), &[x]);
    let model = b.build(&gpu, a, Init::KaimingUniform { seed: 1 }).unwrap();
    assert!(model.specs().is_none());
    assert!(matches!(
        model.to_saved(),
        Err(wgnn::Error::InvalidArgument { .. })
    ));
}

/// Raw outputs of `model` for `x` through a captured session.
fn serve(model: Model, x: &[f32]) -> Vec<f32> {
    let options = SessionOptions {
        max_batch: 8,
        head: Head::Raw,
        ..Default::default()
    };
    let session = InferenceSession::new(model, options).unwrap();
    session.predict(x).unwrap().outputs
}

#[test]
fn a_graph_with_an_outside_layer_saves_loads_and_serves_the_same() {
    register();
    let gpu = gpu();
    let (mut rng, seed) = rng();
    let mut trainer = Trainer::new(model(&gpu, seed), Optimizer::sgd(SgdConfig::new(0.05)));
    for step in 0..2 {
        let x = random(&mut rng, 7 * FEATURES);
        let labels: Vec<u32> = (0..7u32).map(|i| (i + step) % 3).collect();
        trainer.step(&x, &labels).unwrap();
    }
    let model = trainer.into_model();
    let dir = std::env::temp_dir().join(format!("wgnn-graph-{}-{seed}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("graph.safetensors");
    model.save(&path).unwrap();
    let loaded = Model::load(&gpu, &path).unwrap();
    assert_eq!(loaded.graph().unwrap(), model.graph().unwrap());
    let x = random(&mut rng, 5 * FEATURES);
    let (want, got) = (serve(model, &x), serve(loaded, &x));
    assert_close(&got, &want, 1e-6, &format!("seed {seed}"));
    // Int8 storage of the same graph loads too (its weights as the values they stand for).
    let loaded = Model::load(&gpu, &path).unwrap();
    loaded.save_as(&path, wgnn::Precision::Int8).unwrap();
    let int8 = serve(Model::load(&gpu, &path).unwrap(), &x);
    assert_close(&int8, &want, 5e-2, &format!("int8, seed {seed}"));
    // A layer that gives no configuration cannot be saved; an unregistered kind cannot be
    // loaded: typed errors that name the layer.
    let mut b = ModelBuilder::new();
    let x = b.input(&[4]);
    let y = b.add(Unsaveable, &[x]);
    let model = b.build(&gpu, y, Init::KaimingUniform { seed: 1 }).unwrap();
    let err = model.save(&path).unwrap_err();
    assert!(
        matches!(&err, wgnn::Error::InvalidArgument { details, .. } if details.contains("Unsaveable")),
        "{err:?}"
    );
    let mut b = ModelBuilder::new();
    let x = b.input(&[4]);
    let y = b.add(Unregistered { features: 4 }, &[x]);
    let model = b.build(&gpu, y, Init::KaimingUniform { seed: 1 }).unwrap();
    let err = model.save(&path).unwrap_err();
    assert!(
        matches!(&err, wgnn::Error::ModelFile { details } if details.contains("Unregistered")),
        "{err:?}"
    );
    // A file naming a kind nobody registered (a registered kind renamed in place, the same
    // length, so the file stays well formed) loads as a typed error naming it.
    let mut b = ModelBuilder::new();
    let x = b.input(&[4]);
    let y = b.add(ResidualBlock::new(4, 2), &[x]);
    b.build(&gpu, y, Init::KaimingUniform { seed: 1 })
        .unwrap()
        .save(&path)
        .unwrap();
    let text = std::fs::read(&path).unwrap();
    let mut edited = text.clone();
    let at = text
        .windows(13)
        .position(|w| w == b"ResidualBlock")
        .expect("the kind is in the header");
    edited[at..at + 13].copy_from_slice(b"UnknownBlock1");
    std::fs::write(&path, &edited).unwrap();
    let err = Model::load(&gpu, &path).unwrap_err();
    assert!(
        matches!(&err, wgnn::Error::ModelFile { details } if details.contains("UnknownBlock1")),
        "{err:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

//! A block type defined outside wgnn (here, in a test crate) with its own decode behaviour: a
//! residual causal attention block without biases, `y = x + attention(x·Wqkvᵀ)·Woᵀ`. One `Layer`
//! implementation gives its forward, backward and decode step; the model around it (embeddings,
//! LayerNorm, output projection) is built-in. It trains with `Trainer` against a CPU reference,
//! saves and loads through the layer registry, and decodes through `Decoder` and `Engine`: the
//! prefill and every decode position against the CPU forward over the whole prefix.

mod common;

use common::*;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use wgnn::generate::{
    DecodeRow, Decoder, DecoderOptions, Engine, EngineOptions, GenerationRequest,
};
use wgnn::nn::{
    layer_from_config, register_layer, Context, DecodeStep, Embedding, Init, Input, Layer,
    LayerNorm, Linear, MicroBatch, Model, ModelBuilder, Optimizer, ParamSpec, Targets, Trainer,
};
use wgnn::ops::{self, NormKind, SgdConfig};
use wgnn::reference::attention::AttentionSpec;
use wgnn::reference::{self, Array};
use wgnn::{Activation, Batch, Result, Tensor};

/// `y = x + attention(x·Wqkvᵀ)·Woᵀ` over `[batch, T, dim]`, causal, `heads` heads, no biases.
#[derive(Debug, Serialize, Deserialize)]
struct ResidualAttention {
    dim: usize,
    heads: usize,
    /// The input rows, q/k/v and the attention (with its row log-sum-exp).
    #[serde(skip)]
    saved: Option<(Tensor, Tensor, ops::Attention)>,
}

impl ResidualAttention {
    fn new(dim: usize, heads: usize) -> Self {
        ResidualAttention {
            dim,
            heads,
            saved: None,
        }
    }

    fn options(&self) -> ops::AttentionOptions<'static> {
        ops::AttentionOptions {
            heads: self.heads,
            causal: true,
            lengths: None,
            scale: None,
        }
    }

    /// rows·Wᵀ for the weight `name`.
    fn project(ctx: &mut Context, rows: &Tensor, name: &str) -> Result<Tensor> {
        let options = ops::MatmulOptions {
            transposes: ops::Transposes { a: false, b: true },
            ..Default::default()
        };
        ops::matmul(ctx.batch, rows, ctx.param(name)?, &options)
    }
}

impl Layer for ResidualAttention {
    fn kind(&self) -> &'static str {
        "ResidualAttention"
    }

    fn parameters(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::weight("qkv", &[3 * self.dim, self.dim]),
            ParamSpec::weight("out", &[self.dim, self.dim]),
        ]
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        match inputs {
            [[b, t, d]] if *d == self.dim => Ok(vec![*b, *t, *d]),
            _ => Err(wgnn::Error::ShapeMismatch {
                op: "ResidualAttention",
                details: format!("takes one [batch, T, {}], got {inputs:?}", self.dim),
            }),
        }
    }

    fn forward(&mut self, ctx: &mut Context, inputs: &[&Tensor]) -> Result<Tensor> {
        let &[b, t, d] = inputs[0].shape() else {
            unreachable!("output_shape checked the input");
        };
        let rows = inputs[0].reshape(&[b * t, d])?;
        let qkv = Self::project(ctx, &rows, "qkv")?.reshape(&[b, t, 3 * d])?;
        let att = ops::attention(ctx.batch, &qkv, &self.options())?;
        let out = Self::project(ctx, &att.out.reshape(&[b * t, d])?, "out")?;
        let y = ops::scale_add(ctx.batch, 1.0, &out, 1.0, &rows)?;
        if ctx.train {
            self.saved = Some((rows, qkv, att));
        }
        y.reshape(&[b, t, d])
    }

    fn backward(
        &mut self,
        ctx: &mut Context,
        grad_y: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let (rows, qkv, att) = self.saved.take().expect("a training forward came first");
        let &[b, t, d] = grad_y.shape() else {
            unreachable!("the gradient has the output's shape");
        };
        let dy = grad_y.reshape(&[b * t, d])?;
        let accumulate = ops::MatmulOptions {
            transposes: ops::Transposes { a: true, b: false },
            ..Default::default()
        };
        // dWo += dyᵀ·att, d(att) = dy·Wo, then through the attention to dWqkv and dx.
        let att_rows = att.out.reshape(&[b * t, d])?;
        let (gqkv, gout) = (ctx.grad("qkv")?, ctx.grad("out")?);
        ops::matmul_into(
            ctx.batch,
            &dy,
            &att_rows,
            &accumulate,
            gout,
            ops::Write::Accumulate,
        )?;
        let datt = ops::matmul(ctx.batch, &dy, ctx.param("out")?, &Default::default())?;
        let datt = datt.reshape(&[b, t, d])?;
        let dqkv = ops::attention_backward(ctx.batch, &qkv, &att, &datt, &self.options())?;
        let dqkv = dqkv.reshape(&[b * t, 3 * d])?;
        ops::matmul_into(
            ctx.batch,
            &dqkv,
            &rows,
            &accumulate,
            gqkv,
            ops::Write::Accumulate,
        )?;
        if !needs[0] {
            return Ok(vec![None]);
        }
        let dx = ops::matmul(ctx.batch, &dqkv, ctx.param("qkv")?, &Default::default())?;
        let dx = ops::scale_add(ctx.batch, 1.0, &dx, 1.0, &dy)?;
        Ok(vec![Some(dx.reshape(&[b, t, d])?)])
    }

    fn config(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self).ok()
    }

    fn decode_cache(&self, slots: usize, context: usize) -> Vec<Vec<usize>> {
        vec![vec![slots, context, self.dim]; 2]
    }

    fn decode(
        &mut self,
        ctx: &mut Context,
        inputs: &[&Tensor],
        step: &DecodeStep,
    ) -> Result<Tensor> {
        // Rows are tokens at (slot, position): append their keys and values, then attend over
        // each row's cache (a prompt's rows: the fused causal attention over them).
        let (x, d) = (inputs[0], self.dim);
        let n = x.shape()[0];
        let qkv = Self::project(ctx, x, "qkv")?;
        let (keys, values) = (&step.cache[0], &step.cache[1]);
        ops::cache_append(ctx.batch, &qkv, step.cursor, keys, values)?;
        let att = if step.prompt {
            let qkv = qkv.reshape(&[1, n, 3 * d])?;
            let att = ops::attention(ctx.batch, &qkv, &self.options())?;
            att.out.reshape(&[n, d])?
        } else {
            ops::decode_attention(ctx.batch, &qkv, step.cursor, keys, values, self.heads)?
        };
        let out = Self::project(ctx, &att, "out")?;
        ops::scale_add(ctx.batch, 1.0, &out, 1.0, x)
    }
}

const VOCAB: usize = 13;
const CONTEXT: usize = 16;
const DIM: usize = 16;
const HEADS: usize = 2;

fn register() {
    register_layer("ResidualAttention", |config| {
        layer_from_config::<ResidualAttention>("ResidualAttention", config)
    })
    .unwrap();
}

/// ids → Embedding → ResidualAttention → LayerNorm → Linear: logits `[CONTEXT, VOCAB]`.
fn model(gpu: &wgnn::Gpu, seed: u64) -> Model {
    let mut b = ModelBuilder::new();
    let ids = b.input_ids(&[CONTEXT], VOCAB);
    let x = b.add(Embedding::new(VOCAB, DIM, CONTEXT), &[ids]);
    let x = b.add(ResidualAttention::new(DIM, HEADS), &[x]);
    let x = b.add(LayerNorm::new(DIM), &[x]);
    let y = b.add(Linear::new(DIM, VOCAB), &[x]);
    b.build(gpu, y, Init::XavierUniform { seed }).unwrap()
}

/// The same model on the CPU, over parameters in the model's order.
struct Cpu {
    params: Vec<Vec<f32>>,
}

/// What the CPU forward keeps for its backward.
struct Trace {
    e: Array,
    qkv: Array,
    att: Array,
    h: Array,
    ln: Array,
    logits: Array,
}

fn spec() -> AttentionSpec {
    AttentionSpec {
        heads: HEADS,
        causal: true,
        lengths: None,
        scale: None,
    }
}

fn add(a: &Array, b: &Array) -> Array {
    reference::elementwise::scale_add(1.0, a, 1.0, b)
}

impl Cpu {
    fn array(&self, i: usize, shape: &[usize]) -> Array {
        Array::new(shape, self.params[i].clone())
    }

    /// Logits `[n · t, VOCAB]` of `n` sequences of `t` ids.
    fn forward(&self, ids: &[u32], t: usize) -> Trace {
        let n = ids.len() / t;
        let p = &self.params;
        let position = self.array(1, &[CONTEXT, DIM]);
        let e =
            reference::embedding::embedding(ids, t, &self.array(0, &[VOCAB, DIM]), Some(&position));
        let qkv = reference::matmul(
            &e,
            &self.array(2, &[3 * DIM, DIM]),
            false,
            true,
            None,
            Activation::None,
        );
        let qkv = Array::new(&[n, t, 3 * DIM], qkv.data);
        let (att, _) = reference::attention::attention(&qkv, &spec());
        let att = Array::new(&[n * t, DIM], att.data);
        let out = reference::matmul(
            &att,
            &self.array(3, &[DIM, DIM]),
            false,
            true,
            None,
            Activation::None,
        );
        let h = add(&e, &out);
        let ln =
            reference::layer_norm::layer_norm(&h, &p[4], Some(&p[5]), NormKind::LayerNorm, 1e-5);
        let logits = reference::matmul(
            &ln,
            &self.array(6, &[VOCAB, DIM]),
            false,
            true,
            Some(&p[7]),
            Activation::None,
        );
        Trace {
            e,
            qkv,
            att,
            h,
            ln,
            logits,
        }
    }

    /// One SGD step (no momentum) on the mean next-token cross-entropy; returns the loss.
    fn sgd_step(&mut self, ids: &[u32], labels: &[u32], lr: f32) -> f32 {
        let t = self.forward(ids, CONTEXT);
        let (loss, g) = reference::loss::cross_entropy(&t.logits, labels, 0.0);
        let (dln, dw) =
            reference::matmul_backward(&t.ln, &self.array(6, &[VOCAB, DIM]), &g, false, true);
        let db = reference::reduce::channel_sum(&g, 1).data;
        let (dh, dgamma, dbeta) = reference::layer_norm::layer_norm_backward(
            &t.h,
            &self.params[4],
            &dln,
            NormKind::LayerNorm,
            1e-5,
        );
        let (datt, dwo) =
            reference::matmul_backward(&t.att, &self.array(3, &[DIM, DIM]), &dh, false, true);
        let n = ids.len() / CONTEXT;
        let datt = Array::new(&[n, CONTEXT, DIM], datt.data);
        let dqkv = reference::attention::attention_backward(&t.qkv, &datt, &spec());
        let dqkv = Array::new(&[n * CONTEXT, 3 * DIM], dqkv.data);
        let (de, dwqkv) =
            reference::matmul_backward(&t.e, &self.array(2, &[3 * DIM, DIM]), &dqkv, false, true);
        let de = add(&de, &dh);
        let (dtoken, dposition) =
            reference::embedding::embedding_backward(ids, CONTEXT, &de, VOCAB, CONTEXT);
        let grads = [
            dtoken, dposition, dwqkv.data, dwo.data, dgamma, dbeta, dw.data, db,
        ];
        for (param, grad) in self.params.iter_mut().zip(&grads) {
            for (p, g) in param.iter_mut().zip(grad) {
                *p -= lr * g;
            }
        }
        loss
    }
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn an_outside_block_trains_saves_loads_and_decodes_through_the_engine() {
    register();
    let gpu = gpu();
    let (mut rng, seed) = rng();
    let context = format!("seed {seed}");
    // Training: three SGD steps on 3 sequences, against the CPU reference.
    let model = model(&gpu, seed);
    let host = model.params().to_host().unwrap();
    let mut cpu = Cpu {
        params: host.into_iter().map(|(_, _, v)| v).collect(),
    };
    let lr = 0.1;
    let mut trainer = Trainer::new(model, Optimizer::sgd(SgdConfig::new(lr)));
    for step in 0..3 {
        let ids: Vec<u32> = (0..3 * CONTEXT)
            .map(|_| rng.random_range(0..VOCAB as u32))
            .collect();
        let next: Vec<u32> = (0..3 * CONTEXT)
            .map(|_| rng.random_range(0..VOCAB as u32))
            .collect();
        let inputs = [Input::Ids(&ids)];
        let micro = MicroBatch {
            inputs: &inputs,
            targets: Targets::Classes(&next),
        };
        trainer.step_micro_batches(&[micro]).unwrap();
        let want = cpu.sgd_step(&ids, &next, lr);
        let got = trainer.mean_loss().unwrap();
        assert_close(
            &[got],
            &[want],
            1e-4,
            &format!("loss of step {step}, {context}"),
        );
    }
    let model = trainer.into_model();
    for ((name, _, got), want) in model.params().to_host().unwrap().iter().zip(&cpu.params) {
        assert_close(got, want, 1e-4, &format!("{name} after 3 steps, {context}"));
    }
    // Saved and loaded through the registry: the same logits.
    let dir = std::env::temp_dir().join(format!("wgnn-custom-block-{}-{seed}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    model.save(&path).unwrap();
    let mut loaded = Model::load(&gpu, &path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let ids: Vec<u32> = (0..CONTEXT)
        .map(|_| rng.random_range(0..VOCAB as u32))
        .collect();
    let full = {
        let x = Tensor::from_slice(&gpu, &ids, &[1, CONTEXT]).unwrap();
        let mut batch = Batch::new(&gpu);
        let y = loaded.forward(&mut batch, &x, false).unwrap();
        batch.submit().unwrap();
        y.to_vec::<f32>().unwrap()
    };
    assert_close(
        &full,
        &cpu.forward(&ids, CONTEXT).logits.data,
        1e-4,
        &context,
    );
    // Decoding: the prefill of 5 tokens, then one token per step, each position against the
    // CPU forward over its whole prefix.
    let options = DecoderOptions {
        max_sequences: 2,
        ..Default::default()
    };
    let mut decoder = Decoder::new(&loaded, options).unwrap();
    let prefill = decoder.prefill(1, &ids[..5]).unwrap();
    let want = cpu.forward(&ids[..5], 5).logits;
    assert_close(&prefill, &want.data, 1e-4, &format!("prefill, {context}"));
    for position in 5..CONTEXT {
        let row = DecodeRow {
            slot: 1,
            position,
            token: ids[position],
        };
        let got = decoder.decode(&[row]).unwrap();
        let want = cpu.forward(&ids[..=position], position + 1).logits;
        let last = &want.data[position * VOCAB..];
        assert_close(
            &got,
            last,
            1e-4,
            &format!("decode position {position}, {context}"),
        );
    }
    // Through the engine: greedy tokens against the CPU's argmax over each prefix (a near-tie,
    // within 1e-3, may go either way).
    let engine = Engine::new(
        Decoder::new(&loaded, options).unwrap(),
        EngineOptions::default(),
    )
    .unwrap();
    let prompt = ids[..4].to_vec();
    let (tokens, _) = engine
        .generate(GenerationRequest::greedy(prompt.clone(), 8))
        .unwrap();
    assert_eq!(tokens.len(), 8);
    let mut prefix = prompt;
    for &token in &tokens {
        let logits = cpu.forward(&prefix, prefix.len()).logits;
        let row = &logits.data[(prefix.len() - 1) * VOCAB..];
        let best = argmax(row);
        let margin = row[best as usize] - row[token as usize];
        assert!(
            token == best || margin < 1e-3,
            "the engine chose {token}, the reference {best} by {margin}, {context}"
        );
        prefix.push(token);
    }
}

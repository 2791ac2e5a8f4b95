//! The language model's training step on the CPU, mirroring [`crate::nn::LanguageModel`]: the same
//! graph (embeddings, pre-norm blocks, final LayerNorm, output projection) from the same initial
//! values, with the reference ops, next-token cross-entropy, global-norm clipping and AdamW that
//! decays weight matrices only.

use super::attention::{attention, attention_backward, AttentionSpec};
use super::elementwise::activation_backward;
use super::embedding::{embedding, embedding_backward};
use super::layer_norm::{layer_norm, layer_norm_backward};
use super::matmul::{matmul, matmul_backward};
use super::reduce::channel_sum;
use super::{activate, Array};
use crate::nn::{GptConfig, HostParameters};
use crate::ops::{AdamConfig, NormKind};

/// A [`GptConfig`] model on the CPU.
pub struct Gpt {
    config: GptConfig,
    /// Parameters (name, shape, values) in the order of [`crate::nn::Model::params`].
    pub params: HostParameters,
    state: Vec<(Vec<f32>, Vec<f32>)>,
    steps: u32,
}

const EPS: f32 = 1e-5;

fn linear(x: &Array, w: &Array, b: &[f32]) -> Array {
    matmul(x, w, false, true, Some(b), crate::ops::Activation::None)
}

/// (dx, dW, db) of `linear`.
fn linear_backward(x: &Array, w: &Array, dy: &Array) -> (Array, Vec<f32>, Vec<f32>) {
    let (dx, dw) = matmul_backward(x, w, dy, false, true);
    (dx, dw.data, channel_sum(dy, 1).data)
}

fn add(a: &Array, b: &Array) -> Array {
    Array::new(
        &a.shape,
        a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect(),
    )
}

impl Gpt {
    /// A model of `config` with the given values (as [`crate::nn::Model::params`] lists them).
    pub fn new(config: GptConfig, params: HostParameters) -> Self {
        let state = params
            .iter()
            .map(|(_, _, v)| (vec![0.0; v.len()], vec![0.0; v.len()]))
            .collect();
        Gpt {
            config,
            params,
            state,
            steps: 0,
        }
    }

    fn p(&self, i: usize) -> Array {
        Array::new(&self.params[i].1, self.params[i].2.clone())
    }

    fn spec(&self) -> AttentionSpec {
        AttentionSpec {
            heads: self.config.heads,
            causal: true,
            lengths: None,
            scale: None,
        }
    }

    fn norm(&self, x: &Array, i: usize) -> Array {
        layer_norm(
            x,
            &self.params[i].2,
            Some(&self.params[i + 1].2),
            NormKind::LayerNorm,
            EPS,
        )
    }

    /// Block `l`'s forward from `x` (`seqs` sequences): what its backward keeps, and its output.
    fn block_forward(&self, l: usize, x: Array, seqs: usize) -> (Block, Array) {
        let c = self.config;
        let (t, d, n) = (c.context, c.dim, x.shape[0]);
        let k = 2 + 12 * l;
        let h1 = self.norm(&x, k);
        let qkv = linear(&h1, &self.p(k + 2), &self.params[k + 3].2);
        let qkv3 = Array::new(&[seqs, t, 3 * d], qkv.data.clone());
        let att = Array::new(&[n, d], attention(&qkv3, &self.spec()).0.data);
        let o = linear(&att, &self.p(k + 4), &self.params[k + 5].2);
        let x2 = add(&x, &o);
        let h2 = self.norm(&x2, k + 6);
        let pre = linear(&h2, &self.p(k + 8), &self.params[k + 9].2);
        let act = Array::new(
            &pre.shape,
            pre.data
                .iter()
                .map(|&v| activate(c.activation, f64::from(v)) as f32)
                .collect(),
        );
        let f = linear(&act, &self.p(k + 10), &self.params[k + 11].2);
        let next = add(&x2, &f);
        let block = Block {
            x,
            h1,
            qkv: qkv3,
            att,
            x2,
            h2,
            pre,
            act,
        };
        (block, next)
    }

    /// Block `l`'s backward from dL/d(its output): its parameters' gradients into `grads`, and
    /// dL/d(its input).
    fn block_backward(&self, l: usize, b: &Block, dx: &Array, grads: &mut [Vec<f32>]) -> Array {
        let c = self.config;
        let (t, d, n) = (c.context, c.dim, dx.shape[0]);
        let seqs = n / t;
        let k = 2 + 12 * l;
        // x = x2 + fc2(act(fc1(ln2(x2)))).
        let (dact, dw, db) = linear_backward(&b.act, &self.p(k + 10), dx);
        grads[k + 10] = dw;
        grads[k + 11] = db;
        let dpre = activation_backward(&b.pre, &dact, c.activation);
        let (dh2, dw, db) = linear_backward(&b.h2, &self.p(k + 8), &dpre);
        grads[k + 8] = dw;
        grads[k + 9] = db;
        let (dx2n, dg, dbeta) =
            layer_norm_backward(&b.x2, &self.params[k + 6].2, &dh2, NormKind::LayerNorm, EPS);
        grads[k + 6] = dg;
        grads[k + 7] = dbeta;
        let dx2 = add(dx, &dx2n);
        // x2 = x + proj(attention(qkv(ln1(x)))).
        let (datt, dw, db) = linear_backward(&b.att, &self.p(k + 4), &dx2);
        grads[k + 4] = dw;
        grads[k + 5] = db;
        let datt = Array::new(&[seqs, t, d], datt.data);
        let dqkv = attention_backward(&b.qkv, &datt, &self.spec());
        let dqkv = Array::new(&[n, 3 * d], dqkv.data);
        let (dh1, dw, db) = linear_backward(&b.h1, &self.p(k + 2), &dqkv);
        grads[k + 2] = dw;
        grads[k + 3] = db;
        let (dxn, dg, dbeta) =
            layer_norm_backward(&b.x, &self.params[k].2, &dh1, NormKind::LayerNorm, EPS);
        grads[k] = dg;
        grads[k + 1] = dbeta;
        add(&dx2, &dxn)
    }

    /// One step on `inputs`/`targets` (`n` sequences of the full context): returns the loss.
    pub fn step(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        optimizer: &AdamConfig,
        clip: Option<f32>,
    ) -> f32 {
        let c = self.config;
        let seqs = inputs.len() / c.context;
        // Forward, keeping each block's inputs.
        let mut x = embedding(inputs, c.context, &self.p(0), Some(&self.p(1)));
        let mut blocks = Vec::new();
        for l in 0..c.layers {
            let (block, next) = self.block_forward(l, x, seqs);
            blocks.push(block);
            x = next;
        }
        let k = 2 + 12 * c.layers;
        let hf = self.norm(&x, k);
        let logits = linear(&hf, &self.p(k + 2), &self.params[k + 3].2);
        let (loss, dlogits) = super::loss::cross_entropy(&logits, targets, 0.0);
        // Backward.
        let mut grads: Vec<Vec<f32>> = self.params.iter().map(|p| vec![0.0; p.2.len()]).collect();
        let (dhf, dw, db) = linear_backward(&hf, &self.p(k + 2), &dlogits);
        grads[k + 2] = dw;
        grads[k + 3] = db;
        let (mut dx, dg, dbeta) =
            layer_norm_backward(&x, &self.params[k].2, &dhf, NormKind::LayerNorm, EPS);
        grads[k] = dg;
        grads[k + 1] = dbeta;
        for l in (0..c.layers).rev() {
            dx = self.block_backward(l, &blocks[l], &dx, &mut grads);
        }
        let (dtok, dpos) = embedding_backward(inputs, c.context, &dx, c.vocab, c.context);
        grads[0] = dtok;
        grads[1] = dpos;
        if let Some(max_norm) = clip {
            super::optim::clip_grad_norm(&mut grads, max_norm);
        }
        self.update(&grads, optimizer);
        loss
    }

    /// AdamW on every parameter; weight decay on matrices only.
    fn update(&mut self, grads: &[Vec<f32>], optimizer: &AdamConfig) {
        self.steps += 1;
        for ((param, grad), (m, v)) in self.params.iter_mut().zip(grads).zip(&mut self.state) {
            let config = if param.1.len() >= 2 {
                *optimizer
            } else {
                AdamConfig {
                    weight_decay: 0.0,
                    ..*optimizer
                }
            };
            super::optim::adam_step(&mut param.2, grad, m, v, &config, self.steps);
        }
    }
}

/// What one block's forward keeps for its backward.
struct Block {
    x: Array,
    h1: Array,
    qkv: Array,
    att: Array,
    x2: Array,
    h2: Array,
    pre: Array,
    act: Array,
}

//! The training step: upload, forward, loss, backward and update in one submission.

use std::collections::HashMap;

use super::model::Sequential;
use super::optimizer::Optimizer;
use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::ops;
use crate::tensor::{DType, Tensor};

/// Trains a [`Sequential`] classifier with cross-entropy: each [`Trainer::step`] records the
/// mini-batch's upload, the forward pass, the loss, the backward pass and the optimizer update into
/// one [`Batch`] and submits it once. The loss is summed on the GPU and read only when asked for
/// ([`Trainer::mean_loss`]), so steps never wait for the GPU.
#[derive(Debug)]
pub struct Trainer {
    model: Sequential,
    optimizer: Optimizer,
    /// Label smoothing of the cross-entropy.
    pub label_smoothing: f32,
    loss_sum: Tensor,
    loss_steps: u32,
    inputs: HashMap<usize, (Tensor, Tensor)>,
}

impl Trainer {
    /// A trainer for `model` with `optimizer`.
    pub fn new(model: Sequential, optimizer: Optimizer) -> Self {
        let loss_sum = Tensor::zeros(model.gpu(), &[1], DType::F32)
            .expect("a one-element tensor fits every adapter");
        Trainer {
            model,
            optimizer,
            label_smoothing: 0.0,
            loss_sum,
            loss_steps: 0,
            inputs: HashMap::new(),
        }
    }

    /// The model.
    pub fn model(&self) -> &Sequential {
        &self.model
    }
    /// The model, mutably (to predict between steps).
    pub fn model_mut(&mut self) -> &mut Sequential {
        &mut self.model
    }
    /// The optimizer (to change its learning rate).
    pub fn optimizer_mut(&mut self) -> &mut Optimizer {
        &mut self.optimizer
    }
    /// Gives the model back.
    pub fn into_model(self) -> Sequential {
        self.model
    }

    /// One training step on a mini-batch: `x` holds `labels.len()` samples of the model's input
    /// shape, row-major.
    pub fn step(&mut self, x: &[f32], labels: &[u32]) -> Result<()> {
        self.step_accumulate(&[(x, labels)])
    }

    /// One optimizer step over several micro-batches whose gradients accumulate: the update is
    /// the one of their mean loss (micro-batches of equal size give the step of their union).
    pub fn step_accumulate(&mut self, micro_batches: &[(&[f32], &[u32])]) -> Result<()> {
        if micro_batches.is_empty() {
            return Err(Error::EmptyTensor {
                op: "Trainer::step_accumulate",
            });
        }
        let gpu = self.model.gpu().clone();
        let per_sample: usize = self.model.input_shape().iter().product();
        let k = micro_batches.len() as f32;
        let mut batch = Batch::new(&gpu);
        self.model.zero_grads(&mut batch)?;
        for (x, labels) in micro_batches {
            let rows = labels.len();
            if rows == 0 || x.len() != rows * per_sample {
                return Err(Error::DataLength {
                    expected: rows * per_sample,
                    found: x.len(),
                });
            }
            let (tx, tl) = self.input_tensors(rows)?;
            batch.write(&tx, x)?;
            batch.write(&tl, labels)?;
            let logits = self.model.forward(&mut batch, &tx, true)?;
            let loss = ops::cross_entropy(&mut batch, &logits, &tl, self.label_smoothing)?;
            if micro_batches.len() > 1 {
                ops::scale_in_place(&mut batch, &loss.grad_logits, 1.0 / k)?;
            }
            self.model.backward(&mut batch, &loss.grad_logits)?;
            ops::axpy(&mut batch, 1.0 / k, &loss.loss, &self.loss_sum)?;
        }
        self.optimizer.step(&mut batch, self.model.params())?;
        batch.submit()?;
        self.loss_steps += 1;
        Ok(())
    }

    /// The mean training loss over the steps since the last call (NaN if there were none). One
    /// readback: call it every N steps, not every step.
    pub fn mean_loss(&mut self) -> Result<f32> {
        let sum = self.loss_sum.to_vec::<f32>()?[0];
        let mean = sum / self.loss_steps as f32;
        self.loss_sum.write(&[0.0f32])?;
        self.loss_steps = 0;
        Ok(mean)
    }

    /// Input and label tensors for mini-batches of `rows`, made once per size.
    fn input_tensors(&mut self, rows: usize) -> Result<(Tensor, Tensor)> {
        if let Some(t) = self.inputs.get(&rows) {
            return Ok(t.clone());
        }
        let gpu = self.model.gpu().clone();
        let shape = [&[rows][..], self.model.input_shape()].concat();
        let t = (
            Tensor::uninit(&gpu, &shape, DType::F32)?,
            Tensor::uninit(&gpu, &[rows], DType::U32)?,
        );
        self.inputs.insert(rows, t.clone());
        Ok(t)
    }
}

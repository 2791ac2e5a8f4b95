//! The training step: upload, forward, loss, backward and update in one submission.

use std::collections::HashMap;

use super::model::Sequential;
use super::optimizer::Optimizer;
use crate::batch::Batch;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{self, amp::LossScale};
use crate::tensor::Tensor;

/// Mixed-precision settings: f16 weights copies, activations and gradients with f32 master
/// weights, and a dynamic loss scale (PyTorch's `GradScaler` defaults: 65,536 and 2,000).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixedPrecision {
    /// The first loss scale: finite and at least 1 (the scale stays within 1 and 2^24).
    pub initial_scale: f32,
    /// Steps without overflow after which the scale doubles (it halves on every overflow, and
    /// that step's update is skipped): at least 1. Outside either range,
    /// [`Trainer::with_mixed_precision`] returns [`Error::InvalidArgument`].
    pub growth_interval: u32,
}

/// Knowledge distillation settings: the loss is α · T² · CE(softmax(teacher/T), softmax(student/T))
/// + (1 − α) · CE(labels, student) (Hinton et al.), the teacher's forward recorded in the same step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Distillation {
    /// Softening temperature T: finite and positive.
    pub temperature: f32,
    /// Weight α of the soft-target loss (0: labels only, 1: teacher only), in [0, 1]. Outside
    /// either range, [`Trainer::set_teacher`] returns [`Error::InvalidArgument`].
    pub alpha: f32,
}

impl Default for MixedPrecision {
    fn default() -> Self {
        MixedPrecision {
            initial_scale: 65_536.0,
            growth_interval: 2_000,
        }
    }
}

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
    /// The loss summed over the steps since the last read (made on the first step).
    loss_sum: Option<Tensor>,
    loss_steps: u32,
    inputs: HashMap<usize, (Tensor, Tensor)>,
    loss_scale: Option<LossScale>,
    mask: Option<super::prune::PruningMask>,
    teacher: Option<(Sequential, Distillation)>,
}

impl Trainer {
    /// A trainer for `model` with `optimizer`.
    pub fn new(model: Sequential, optimizer: Optimizer) -> Self {
        Trainer {
            model,
            optimizer,
            label_smoothing: 0.0,
            loss_sum: None,
            loss_steps: 0,
            inputs: HashMap::new(),
            loss_scale: None,
            mask: None,
            teacher: None,
        }
    }

    /// Keeps the weights a mask prunes at exactly zero: applied now and after every optimizer
    /// step, on the GPU (`None` removes it).
    pub fn set_pruning_mask(&mut self, mask: Option<super::prune::PruningMask>) -> Result<()> {
        if let Some(m) = &mask {
            let gpu = self.model.gpu().clone();
            let mut batch = Batch::new(&gpu);
            self.apply_mask(&mut batch, m)?;
            batch.submit()?;
        }
        self.mask = mask;
        Ok(())
    }

    /// values *= mask (and the f16 copies follow in mixed precision).
    fn apply_mask(&self, batch: &mut Batch, mask: &super::prune::PruningMask) -> Result<()> {
        let params = self.model.params();
        ops::mul_in_place(batch, params.values(), &mask.mask)?;
        if let Some((half, _)) = params.half() {
            ops::amp::cast_from_f32(batch, params.values(), half)?;
        }
        Ok(())
    }

    /// Trains the model as a student of `teacher` (as many values per sample, in the teacher's own
    /// shape, and the same classes): every step records the teacher's inference forward (fused, no
    /// saved state) and the distillation loss.
    pub fn set_teacher(&mut self, teacher: Sequential, settings: Distillation) -> Result<()> {
        let valid = settings.temperature.is_finite()
            && settings.temperature > 0.0
            && (0.0..=1.0).contains(&settings.alpha);
        if !valid {
            return Err(Error::InvalidArgument {
                op: "Trainer::set_teacher",
                details: format!(
                    "temperature must be positive and alpha in [0, 1], got {settings:?}"
                ),
            });
        }
        let per_sample = |m: &Sequential| m.input_shape().iter().product::<usize>();
        if per_sample(&teacher) != per_sample(&self.model)
            || teacher.output_shape(1)? != self.model.output_shape(1)?
        {
            return Err(Error::ShapeMismatch {
                op: "Trainer::set_teacher",
                details: "the teacher must take as many values per sample as the student (its \
                          own shape: a CNN teacher can read an MLP student's flat rows) and give \
                          the same outputs"
                    .into(),
            });
        }
        if teacher.compute_dtype() != self.model.compute_dtype() {
            return Err(Error::DtypeMismatch {
                op: "Trainer::set_teacher",
                details: "teacher and student must compute in the same precision".into(),
            });
        }
        self.teacher = Some((teacher, settings));
        Ok(())
    }

    /// A trainer in mixed precision: the model switches to f16 compute
    /// ([`Sequential::enable_mixed_precision`]), the optimizer updates the f32 masters, and a
    /// dynamic loss scale guards the f16 gradients: a step whose gradients overflow is skipped on
    /// the GPU and the scale halves, without the host waiting for anything.
    pub fn with_mixed_precision(
        mut model: Sequential,
        optimizer: Optimizer,
        settings: MixedPrecision,
    ) -> Result<Self> {
        model.enable_mixed_precision()?;
        let scale = LossScale::new(
            model.gpu(),
            settings.initial_scale,
            settings.growth_interval,
        )?;
        let mut trainer = Trainer::new(model, optimizer);
        trainer.loss_scale = Some(scale);
        Ok(trainer)
    }

    /// In mixed precision, the current loss scale and the number of steps skipped for overflow
    /// (one readback).
    pub fn loss_scale(&self) -> Result<Option<(f32, u32)>> {
        match &self.loss_scale {
            None => Ok(None),
            Some(s) => {
                let state = s.state.to_vec::<f32>()?;
                Ok(Some((state[0], state[2] as u32)))
            }
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
        let mut batch = Batch::new(self.model.gpu());
        self.record_step(&mut batch, micro_batches)?;
        batch.submit()
    }

    /// Records one step (as [`Self::step_accumulate`]) into `batch` without submitting it, to
    /// time it or to add other work to the same submission.
    pub fn record_step(
        &mut self,
        batch: &mut Batch,
        micro_batches: &[(&[f32], &[u32])],
    ) -> Result<()> {
        if micro_batches.is_empty() {
            return Err(Error::EmptyTensor {
                op: "Trainer::step_accumulate",
            });
        }
        self.check_micro_batches(micro_batches)?;
        let k = micro_batches.len() as f32;
        self.model.zero_grads(batch)?;
        for (x, labels) in micro_batches {
            let rows = labels.len();
            let (tx, tl) = self.input_tensors(rows)?;
            if tx.dtype() == DType::F16 {
                let half: Vec<crate::f16> = x.iter().map(|&v| crate::f16::from_f32(v)).collect();
                batch.write(&tx, &half)?;
            } else {
                batch.write(&tx, x)?;
            }
            batch.write(&tl, labels)?;
            let logits = self.model.forward(batch, &tx, true)?;
            let loss = ops::cross_entropy(batch, &logits, &tl, self.label_smoothing)?;
            if let Some((teacher, d)) = self.teacher.as_mut() {
                // grad = α · soft + (1 − α) · hard; the same mix for the loss.
                let shape = [&[rows][..], teacher.input_shape()].concat();
                let teacher_logits = teacher.forward(batch, &tx.reshape(&shape)?, false)?;
                let soft = ops::soft_cross_entropy(batch, &logits, &teacher_logits, d.temperature)?;
                ops::scale_in_place(batch, &loss.grad_logits, 1.0 - d.alpha)?;
                ops::axpy(batch, &loss.grad_logits, d.alpha, &soft.grad_logits)?;
                ops::scale_in_place(batch, &loss.loss, 1.0 - d.alpha)?;
                ops::axpy(batch, &loss.loss, d.alpha, &soft.loss)?;
            }
            if micro_batches.len() > 1 {
                ops::scale_in_place(batch, &loss.grad_logits, 1.0 / k)?;
            }
            if let Some(scale) = &self.loss_scale {
                ops::amp::scale_by_loss_scale(batch, &loss.grad_logits, scale)?;
            }
            self.model.backward(batch, &loss.grad_logits)?;
            if self.loss_sum.is_none() {
                self.loss_sum = Some(Tensor::zeros(self.model.gpu(), &[1], DType::F32)?);
            }
            if let Some(sum) = &self.loss_sum {
                ops::axpy(batch, sum, 1.0 / k, &loss.loss)?;
            }
        }
        let params = self.model.params();
        match (&self.loss_scale, params.half()) {
            (Some(scale), Some((half_values, half_grads))) => {
                // f16 gradients / scale -> f32 gradients (flagging overflow), the update unless
                // flagged, the scale's adjustment, then fresh f16 copies of the weights.
                ops::amp::unscale_gradients(batch, half_grads, params.grads(), scale)?;
                self.optimizer
                    .step_unless(batch, params, Some(&scale.found_overflow))?;
                ops::amp::update_loss_scale(batch, scale)?;
                if let Some(mask) = &self.mask {
                    ops::mul_in_place(batch, params.values(), &mask.mask)?;
                }
                ops::amp::cast_from_f32(batch, params.values(), half_values)?;
            }
            _ => {
                self.optimizer.step(batch, params)?;
                if let Some(mask) = &self.mask {
                    ops::mul_in_place(batch, params.values(), &mask.mask)?;
                }
            }
        }
        self.loss_steps += 1;
        Ok(())
    }

    /// The mean training loss over the steps since the last call (NaN if there were none). One
    /// readback: call it every N steps, not every step.
    pub fn mean_loss(&mut self) -> Result<f32> {
        let Some(loss_sum) = &self.loss_sum else {
            return Ok(f32::NAN);
        };
        let sum = loss_sum.to_vec::<f32>()?[0];
        let mean = sum / self.loss_steps as f32;
        loss_sum.write(&[0.0f32])?;
        self.loss_steps = 0;
        Ok(mean)
    }

    /// Checks every micro-batch on the host before anything is recorded: at least one sample,
    /// `x` holding exactly that many samples, and every label a class of the model (or
    /// [`ops::IGNORE_INDEX`]). A label past the classes would make the loss and every parameter
    /// NaN.
    fn check_micro_batches(&self, micro_batches: &[(&[f32], &[u32])]) -> Result<()> {
        const OP: &str = "Trainer::step";
        let input_shape = self.model.input_shape();
        let per_sample: usize = input_shape.iter().product();
        let classes: usize = self.model.output_shape(1)?[1..].iter().product();
        for (i, (x, labels)) in micro_batches.iter().enumerate() {
            let rows = labels.len();
            if rows == 0 {
                return Err(Error::InvalidArgument {
                    op: OP,
                    details: format!(
                        "mini-batch {i} has no samples (its labels are empty): a step needs at \
                         least one"
                    ),
                });
            }
            let needed = rows.checked_mul(per_sample);
            if needed != Some(x.len()) {
                return Err(Error::ShapeMismatch {
                    op: OP,
                    details: format!(
                        "mini-batch {i}: {rows} labels need {rows} samples of {input_shape:?} \
                         ({per_sample} values each), but x holds {} values",
                        x.len()
                    ),
                });
            }
            let bad = labels
                .iter()
                .enumerate()
                .find(|(_, &l)| l as usize >= classes && l != ops::IGNORE_INDEX);
            if let Some((j, &label)) = bad {
                return Err(Error::InvalidArgument {
                    op: OP,
                    details: format!(
                        "mini-batch {i}, sample {j}: label {label} is not one of the model's \
                         {classes} classes (0..{classes}; ops::IGNORE_INDEX ignores a sample)"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Input and label tensors for mini-batches of `rows`, made once per size.
    fn input_tensors(&mut self, rows: usize) -> Result<(Tensor, Tensor)> {
        if let Some(t) = self.inputs.get(&rows) {
            return Ok(t.clone());
        }
        let gpu = self.model.gpu().clone();
        let shape = [&[rows][..], self.model.input_shape()].concat();
        let t = (
            Tensor::uninit(&gpu, &shape, self.model.compute_dtype())?,
            Tensor::uninit(&gpu, &[rows], DType::U32)?,
        );
        self.inputs.insert(rows, t.clone());
        Ok(t)
    }
}

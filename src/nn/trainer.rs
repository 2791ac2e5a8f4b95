//! The training step: upload, forward, loss, backward and update in one submission.

use std::collections::HashMap;

use super::model::Model;
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

/// The loss a [`Trainer`] minimises: one interface for classification (integer labels) and
/// regression (f32 targets of the output's shape).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossFunction {
    /// Softmax cross-entropy against class labels ([`Targets::Classes`]), with label smoothing in
    /// [0, 1] (0: none). The default.
    CrossEntropy {
        /// Label smoothing ε.
        label_smoothing: f32,
    },
    /// Mean squared error against values ([`Targets::Values`]).
    Mse,
    /// Mean absolute error against values.
    L1,
    /// Huber loss against values (quadratic within `delta`, linear past it; `delta` finite and
    /// positive).
    Huber {
        /// Where the loss turns linear.
        delta: f32,
    },
}

impl Default for LossFunction {
    fn default() -> Self {
        LossFunction::CrossEntropy {
            label_smoothing: 0.0,
        }
    }
}

impl LossFunction {
    fn regression(self) -> Option<ops::Regression> {
        match self {
            LossFunction::CrossEntropy { .. } => None,
            LossFunction::Mse => Some(ops::Regression::Mse),
            LossFunction::L1 => Some(ops::Regression::L1),
            LossFunction::Huber { delta } => Some(ops::Regression::Huber { delta }),
        }
    }
}

/// What one mini-batch is trained towards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Targets<'a> {
    /// A class label per sample (for [`LossFunction::CrossEntropy`]).
    Classes(&'a [u32]),
    /// Values of the model's output shape per sample, row-major (for the regression losses).
    Values(&'a [f32]),
}

/// The samples of one model input, row-major (the input's shape per sample).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Input<'a> {
    /// Values, for an input made with [`crate::nn::ModelBuilder::input`].
    Values(&'a [f32]),
    /// Token ids, for an input made with [`crate::nn::ModelBuilder::input_ids`].
    Ids(&'a [u32]),
}

impl Input<'_> {
    fn len(&self) -> usize {
        match self {
            Input::Values(v) => v.len(),
            Input::Ids(v) => v.len(),
        }
    }
}

/// One micro-batch: the samples of each model input, and their targets.
#[derive(Debug, Clone, Copy)]
pub struct MicroBatch<'a> {
    /// One per model input.
    pub inputs: &'a [Input<'a>],
    /// The targets: for the cross-entropy one label per sample, or per position for an output
    /// `[batch, positions, classes]` (a language model's next tokens).
    pub targets: Targets<'a>,
}

/// The tensors of mini-batches of one size: inputs and targets.
#[derive(Debug, Clone)]
struct Staged {
    inputs: Vec<Tensor>,
    targets: Tensor,
}

/// Trains a [`Model`], or anything built over one (`M`: a [`crate::nn::LanguageModel`]), with any
/// layers and inputs, a classifier or a regressor (see [`LossFunction`]): each step records the
/// mini-batch's upload, the forward pass, the loss, the backward pass and the optimizer update
/// into one [`Batch`] and submits it once. The loss is summed on the GPU and read only when asked
/// for ([`Trainer::mean_loss`]), so steps never wait for the GPU. This is the one training stack:
/// data-parallel training ([`crate::distributed`]) drives it through [`Self::record_gradients`]
/// and [`Self::record_update`].
#[derive(Debug)]
pub struct Trainer<M = Model> {
    model: M,
    optimizer: Optimizer,
    loss: LossFunction,
    /// The loss summed over the steps since the last read (made on the first step).
    loss_sum: Option<Tensor>,
    loss_steps: u32,
    /// A step whose gradients are recorded and whose update is not yet: it counts in
    /// `loss_steps` once its update is recorded (a refused update drops the batch and its loss).
    pending_step: bool,
    staged: HashMap<usize, Staged>,
    /// The model's output values per sample (its classes, for a classifier).
    outputs_per_sample: usize,
    /// Classes of the output's last axis, and labels per sample (its positions).
    classes: usize,
    labels_per_sample: usize,
    loss_scale: Option<LossScale>,
    grad_clip: Option<f32>,
    mask: Option<super::prune::PruningMask>,
    teacher: Option<(Model, Distillation)>,
}

impl<M: AsRef<Model> + AsMut<Model>> Trainer<M> {
    /// A trainer for `model` with `optimizer`, minimising cross-entropy (see
    /// [`Self::with_loss`]).
    pub fn new(model: M, optimizer: Optimizer) -> Self {
        // A built model's shapes were checked when it was made.
        let out = model.as_ref().output_shape(1).unwrap_or_default();
        let outputs_per_sample = out.get(1..).map(|s| s.iter().product()).unwrap_or(0);
        let classes = out.last().copied().unwrap_or(0);
        let labels_per_sample = outputs_per_sample / classes.max(1);
        Trainer {
            model,
            optimizer,
            loss: LossFunction::default(),
            loss_sum: None,
            loss_steps: 0,
            pending_step: false,
            staged: HashMap::new(),
            outputs_per_sample,
            classes,
            labels_per_sample,
            loss_scale: None,
            grad_clip: None,
            mask: None,
            teacher: None,
        }
    }

    fn net(&self) -> &Model {
        self.model.as_ref()
    }

    fn net_mut(&mut self) -> &mut Model {
        self.model.as_mut()
    }

    /// Clips the gradients' global norm to `max_norm` before each update (`None`: no clipping).
    pub fn set_grad_clip(&mut self, max_norm: Option<f32>) -> Result<()> {
        if let Some(m) = max_norm {
            if !(m.is_finite() && m > 0.0) {
                return Err(Error::InvalidArgument {
                    op: "Trainer::set_grad_clip",
                    details: format!("max_norm must be finite and positive, got {m}"),
                });
            }
        }
        self.grad_clip = max_norm;
        Ok(())
    }

    /// Switches training to mixed precision (see [`Self::with_mixed_precision`]); does nothing
    /// the second time.
    pub fn enable_mixed_precision(&mut self, settings: MixedPrecision) -> Result<()> {
        if self.loss_scale.is_some() {
            return Ok(());
        }
        let scale = LossScale::new(
            self.net().gpu(),
            settings.initial_scale,
            settings.growth_interval,
        )?;
        self.net_mut().enable_mixed_precision()?;
        self.loss_scale = Some(scale);
        self.staged.clear();
        Ok(())
    }

    /// The trainer minimising `loss` instead (checked: label smoothing in [0, 1], Huber's delta
    /// finite and positive).
    pub fn with_loss(mut self, loss: LossFunction) -> Result<Self> {
        let valid = match loss {
            LossFunction::CrossEntropy { label_smoothing } => {
                (0.0..=1.0).contains(&label_smoothing)
            }
            LossFunction::Huber { delta } => delta.is_finite() && delta > 0.0,
            LossFunction::Mse | LossFunction::L1 => true,
        };
        if !valid {
            return Err(Error::InvalidArgument {
                op: "Trainer::with_loss",
                details: format!("{loss:?} is out of range"),
            });
        }
        if loss.regression().is_some() && self.teacher.is_some() {
            return Err(Error::InvalidArgument {
                op: "Trainer::with_loss",
                details: "distillation trains a classifier: it needs the cross-entropy".into(),
            });
        }
        self.loss = loss;
        self.staged.clear();
        Ok(self)
    }

    /// The loss the trainer minimises.
    pub fn loss(&self) -> LossFunction {
        self.loss
    }

    /// Keeps the weights a mask prunes at exactly zero: applied now and after every optimizer
    /// step, on the GPU (`None` removes it).
    pub fn set_pruning_mask(&mut self, mask: Option<super::prune::PruningMask>) -> Result<()> {
        if let Some(m) = &mask {
            let gpu = self.net().gpu().clone();
            let mut batch = Batch::new(&gpu);
            self.apply_mask(&mut batch, m)?;
            batch.submit()?;
        }
        self.mask = mask;
        Ok(())
    }

    /// values *= mask (and the f16 copies follow in mixed precision).
    fn apply_mask(&self, batch: &mut Batch, mask: &super::prune::PruningMask) -> Result<()> {
        let params = self.net().params();
        ops::mul_in_place(batch, params.values(), &mask.mask)?;
        if let Some((half, _)) = params.half() {
            ops::amp::cast_from_f32(batch, params.values(), half)?;
        }
        Ok(())
    }

    /// Trains the model as a student of `teacher` (as many values per sample, in the teacher's own
    /// shape, and the same classes): every step records the teacher's inference forward (fused, no
    /// saved state) and the distillation loss.
    pub fn set_teacher(&mut self, teacher: Model, settings: Distillation) -> Result<()> {
        if self.loss.regression().is_some() {
            return Err(Error::InvalidArgument {
                op: "Trainer::set_teacher",
                details: "distillation trains a classifier: it needs the cross-entropy".into(),
            });
        }
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
        let per_sample = |m: &Model| m.input_shape().iter().product::<usize>();
        if per_sample(&teacher) != per_sample(self.net())
            || teacher.output_shape(1)? != self.net().output_shape(1)?
        {
            return Err(Error::ShapeMismatch {
                op: "Trainer::set_teacher",
                details: "the teacher must take as many values per sample as the student (its \
                          own shape: a CNN teacher can read an MLP student's flat rows) and give \
                          the same outputs"
                    .into(),
            });
        }
        if teacher.compute_dtype() != self.net().compute_dtype() {
            return Err(Error::DtypeMismatch {
                op: "Trainer::set_teacher",
                details: "teacher and student must compute in the same precision".into(),
            });
        }
        self.teacher = Some((teacher, settings));
        Ok(())
    }

    /// A trainer in mixed precision: the model switches to f16 compute
    /// ([`Model::enable_mixed_precision`]), the optimizer updates the f32 masters, and a
    /// dynamic loss scale guards the f16 gradients: a step whose gradients overflow is skipped on
    /// the GPU and the scale halves, without the host waiting for anything.
    pub fn with_mixed_precision(
        model: M,
        optimizer: Optimizer,
        settings: MixedPrecision,
    ) -> Result<Self> {
        let mut trainer = Trainer::new(model, optimizer);
        trainer.enable_mixed_precision(settings)?;
        Ok(trainer)
    }

    /// In mixed precision, the current loss scale and the number of steps skipped for overflow
    /// (one readback).
    pub fn loss_scale(&self) -> Result<Option<(f32, u32)>> {
        self.loss_scale.as_ref().map(LossScale::read).transpose()
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }
    /// The model, mutably (to predict or evaluate between steps).
    pub fn model_mut(&mut self) -> &mut M {
        &mut self.model
    }
    /// The optimizer (to change its learning rate).
    pub fn optimizer_mut(&mut self) -> &mut Optimizer {
        &mut self.optimizer
    }
    /// Gives the model back.
    pub fn into_model(self) -> M {
        self.model
    }

    /// One training step of a classifier on a mini-batch: `x` holds `labels.len()` samples of the
    /// model's input shape, row-major.
    pub fn step(&mut self, x: &[f32], labels: &[u32]) -> Result<()> {
        self.step_accumulate(&[(x, labels)])
    }

    /// One training step of a single-input model towards `targets` (labels or values, as the
    /// trainer's [`LossFunction`] asks).
    pub fn step_towards(&mut self, x: &[f32], targets: Targets) -> Result<()> {
        self.step_micro_batches(&[MicroBatch {
            inputs: &[Input::Values(x)],
            targets,
        }])
    }

    /// One optimizer step of a classifier over several micro-batches whose gradients accumulate:
    /// the update is the one of their mean loss (micro-batches of equal size give the step of
    /// their union).
    pub fn step_accumulate(&mut self, micro_batches: &[(&[f32], &[u32])]) -> Result<()> {
        let mut batch = Batch::new(self.net().gpu());
        self.record_step(&mut batch, micro_batches)?;
        batch.submit()
    }

    /// One optimizer step over micro-batches of any model (several inputs, any targets).
    pub fn step_micro_batches(&mut self, micro_batches: &[MicroBatch]) -> Result<()> {
        let mut batch = Batch::new(self.net().gpu());
        self.record_micro_batches(&mut batch, micro_batches)?;
        batch.submit()
    }

    /// Records one step of a classifier (as [`Self::step_accumulate`]) into `batch` without
    /// submitting it, to time it or to add other work to the same submission.
    pub fn record_step(
        &mut self,
        batch: &mut Batch,
        micro_batches: &[(&[f32], &[u32])],
    ) -> Result<()> {
        let inputs: Vec<[Input; 1]> = micro_batches
            .iter()
            .map(|(x, _)| [Input::Values(x)])
            .collect();
        let micro: Vec<MicroBatch> = micro_batches
            .iter()
            .zip(&inputs)
            .map(|((_, labels), x)| MicroBatch {
                inputs: x,
                targets: Targets::Classes(labels),
            })
            .collect();
        self.record_micro_batches(batch, &micro)
    }

    /// Records one step over micro-batches of any model into `batch` without submitting it.
    pub fn record_micro_batches(
        &mut self,
        batch: &mut Batch,
        micro_batches: &[MicroBatch],
    ) -> Result<()> {
        self.record_gradients(batch, micro_batches)?;
        self.record_update(batch)
    }

    /// The first half of [`Self::record_micro_batches`]: the forward and backward passes, which
    /// leave the step's f32 gradients in the model's gradient arena (`params().grads()`; in
    /// mixed precision unscaled, with the overflow flag of [`Self::overflow_flag`] set). Between
    /// it and [`Self::record_update`] the gradients may be changed, as a data-parallel
    /// all-reduce does after submitting it.
    pub fn record_gradients(
        &mut self,
        batch: &mut Batch,
        micro_batches: &[MicroBatch],
    ) -> Result<()> {
        if micro_batches.is_empty() {
            return Err(Error::InvalidArgument {
                op: "Trainer::step",
                details: "a step needs at least one micro-batch".into(),
            });
        }
        let rows = self.check_micro_batches(micro_batches)?;
        let k = micro_batches.len() as f32;
        self.net().zero_grads(batch)?;
        for (micro, &rows) in micro_batches.iter().zip(&rows) {
            self.record_micro_batch(batch, micro, rows, k)?;
        }
        let params = self.net().params();
        if let (Some(scale), Some((_, half_grads))) = (&self.loss_scale, params.half()) {
            // f16 gradients / scale -> f32 gradients, flagging overflow.
            ops::amp::unscale_gradients(batch, half_grads, params.grads(), scale)?;
        }
        self.pending_step = true;
        Ok(())
    }

    /// Records one micro-batch of `rows` samples (one of `k`): upload, forward, loss (with the
    /// teacher's soft targets), backward, and its share of the loss sum.
    fn record_micro_batch(
        &mut self,
        batch: &mut Batch,
        micro: &MicroBatch,
        rows: usize,
        k: f32,
    ) -> Result<()> {
        self.stage(rows)?;
        let staged = &self.staged[&rows];
        for (t, x) in staged.inputs.iter().zip(micro.inputs) {
            match x {
                Input::Values(v) => write_floats(batch, t, v)?,
                Input::Ids(ids) => batch.write(t, ids)?,
            }
        }
        match micro.targets {
            Targets::Classes(labels) => batch.write(&staged.targets, labels)?,
            Targets::Values(values) => write_floats(batch, &staged.targets, values)?,
        }
        let inputs: Vec<&Tensor> = staged.inputs.iter().collect();
        let output = self.model.as_mut().forward_inputs(batch, &inputs, true)?;
        let loss = match (self.loss, self.loss.regression()) {
            (_, Some(regression)) => {
                let prediction = output.reshape(staged.targets.shape())?;
                ops::regression(batch, &prediction, &staged.targets, regression)?
            }
            (LossFunction::CrossEntropy { label_smoothing }, None) => {
                ops::cross_entropy(batch, &output, &staged.targets, label_smoothing)?
            }
            _ => unreachable!("regression() is None only for the cross-entropy"),
        };
        if let Some((teacher, d)) = self.teacher.as_mut() {
            // grad = α · soft + (1 − α) · hard; the same mix for the loss.
            let shape = [&[rows][..], teacher.input_shape()].concat();
            let teacher_logits =
                teacher.forward(batch, &staged.inputs[0].reshape(&shape)?, false)?;
            let soft = ops::soft_cross_entropy(batch, &output, &teacher_logits, d.temperature)?;
            ops::scale_in_place(batch, &loss.grad_logits, 1.0 - d.alpha)?;
            ops::axpy(batch, &loss.grad_logits, d.alpha, &soft.grad_logits)?;
            ops::scale_in_place(batch, &loss.loss, 1.0 - d.alpha)?;
            ops::axpy(batch, &loss.loss, d.alpha, &soft.loss)?;
        }
        if k > 1.0 {
            ops::scale_in_place(batch, &loss.grad_logits, 1.0 / k)?;
        }
        if let Some(scale) = &self.loss_scale {
            ops::amp::scale_by_loss_scale(batch, &loss.grad_logits, scale)?;
        }
        let grad_output = loss.grad_logits.reshape(output.shape())?;
        self.model.as_mut().backward(batch, &grad_output)?;
        if self.loss_sum.is_none() {
            self.loss_sum = Some(Tensor::zeros(self.net().gpu(), &[1], DType::F32)?);
        }
        if let Some(sum) = &self.loss_sum {
            ops::axpy(batch, sum, 1.0 / k, &loss.loss)?;
        }
        Ok(())
    }

    /// In mixed precision, the U32 `[2]` flag whose `[0]` is non-zero when this step's gradients
    /// overflowed (the update is then skipped): what data-parallel ranks agree on.
    pub fn overflow_flag(&self) -> Option<&Tensor> {
        self.loss_scale.as_ref().map(|s| &s.found_overflow)
    }

    /// The second half of [`Self::record_micro_batches`]: the optimizer's update from the
    /// gradients [`Self::record_gradients`] left (skipped on overflow in mixed precision, with
    /// the loss scale's adjustment and fresh f16 copies of the weights).
    pub fn record_update(&mut self, batch: &mut Batch) -> Result<()> {
        let params = self.model.as_ref().params();
        if let Some(max_norm) = self.grad_clip {
            ops::clip_grad_norm(batch, &[params.grads()], max_norm)?;
        }
        match (&self.loss_scale, params.half()) {
            (Some(scale), Some((half_values, _))) => {
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
        // The step counts now that its update is recorded: an update the optimizer refused
        // leaves its batch (and the loss added in it) unsubmitted.
        if std::mem::take(&mut self.pending_step) {
            self.loss_steps += 1;
        }
        Ok(())
    }

    /// The mean training loss over the steps since the last call (NaN if there were none). One
    /// readback: call it every N steps, not every step.
    pub fn mean_loss(&mut self) -> Result<f32> {
        let Some(loss_sum) = &self.loss_sum else {
            return Ok(f32::NAN);
        };
        let sum = loss_sum.to_vec::<f32>()?[0];
        let mean = sum / self.loss_steps.max(1) as f32;
        loss_sum.write(&[0.0f32])?;
        self.loss_steps = 0;
        Ok(mean)
    }

    /// Checks every micro-batch on the host before anything is recorded, and returns their
    /// sample counts: one slice per model input, each holding whole samples of one count, targets
    /// of the kind the loss takes (every label a class of the model or [`ops::IGNORE_INDEX`]: a
    /// label past the classes would make the loss and every parameter NaN; values of the output's
    /// shape per sample).
    fn check_micro_batches(&self, micro_batches: &[MicroBatch]) -> Result<Vec<usize>> {
        micro_batches
            .iter()
            .enumerate()
            .map(|(i, micro)| self.check_micro_batch(i, micro))
            .collect()
    }

    /// Checks micro-batch `i` and returns its sample count.
    fn check_micro_batch(&self, i: usize, micro: &MicroBatch) -> Result<usize> {
        const OP: &str = "Trainer::step";
        let mismatch = |details: String| Err(Error::ShapeMismatch { op: OP, details });
        let inputs = self.net().inputs();
        if micro.inputs.len() != inputs.len() {
            return mismatch(format!(
                "mini-batch {i} has {} input(s); the model takes {}",
                micro.inputs.len(),
                inputs.len()
            ));
        }
        let (per_label, per_value) = (self.labels_per_sample.max(1), self.outputs_per_sample);
        let rows = match micro.targets {
            Targets::Classes(labels) if labels.len() % per_label == 0 => labels.len() / per_label,
            Targets::Classes(labels) => {
                return mismatch(format!(
                    "mini-batch {i}: {} labels are not whole samples of {per_label} positions",
                    labels.len()
                ))
            }
            Targets::Values(values) => values.len() / per_value.max(1),
        };
        if rows == 0 {
            return Err(Error::InvalidArgument {
                op: OP,
                details: format!(
                    "mini-batch {i} has no samples (its targets are empty): a step needs at least \
                     one"
                ),
            });
        }
        for (x, input) in micro.inputs.iter().zip(inputs) {
            self.check_input(i, rows, x, input)?;
        }
        self.check_targets(i, rows, micro.targets)?;
        Ok(rows)
    }

    /// Checks one input of micro-batch `i`: whole samples of its shape, of its kind (values or
    /// ids), ids within its vocabulary.
    fn check_input(
        &self,
        i: usize,
        rows: usize,
        x: &Input,
        input: &super::model::InputSpec,
    ) -> Result<()> {
        const OP: &str = "Trainer::step";
        let shape = &input.shape;
        let per_sample: usize = shape.iter().product();
        if rows.checked_mul(per_sample) != Some(x.len()) {
            return Err(Error::ShapeMismatch {
                op: OP,
                details: format!(
                    "mini-batch {i}: {rows} targets need {rows} samples of {shape:?} \
                     ({per_sample} values each), but x holds {} values",
                    x.len()
                ),
            });
        }
        match (x, input.vocab) {
            (Input::Values(_), None) => Ok(()),
            (Input::Ids(ids), Some(vocab)) => ops::check_ids(OP, ids, vocab),
            (_, vocab) => Err(Error::DtypeMismatch {
                op: OP,
                details: format!(
                    "mini-batch {i}: the model's input takes {}",
                    if vocab.is_some() {
                        "token ids (Input::Ids)"
                    } else {
                        "values (Input::Values)"
                    }
                ),
            }),
        }
    }

    /// Checks micro-batch `i`'s targets against the loss: labels for the cross-entropy, each a
    /// class of the model or [`ops::IGNORE_INDEX`] (a label past the classes would make the loss
    /// and every parameter NaN); values of the output's shape for a regression.
    fn check_targets(&self, i: usize, rows: usize, targets: Targets) -> Result<()> {
        const OP: &str = "Trainer::step";
        let invalid = |details: String| Err(Error::InvalidArgument { op: OP, details });
        match (targets, self.loss.regression()) {
            (Targets::Classes(labels), None) => {
                let classes = self.classes;
                let bad = labels
                    .iter()
                    .enumerate()
                    .find(|(_, &l)| l as usize >= classes && l != ops::IGNORE_INDEX);
                match bad {
                    Some((j, &label)) => invalid(format!(
                        "mini-batch {i}, target {j}: label {label} is not one of the model's \
                         {classes} classes (0..{classes}; ops::IGNORE_INDEX ignores a sample)"
                    )),
                    None => Ok(()),
                }
            }
            (Targets::Values(values), Some(_)) => {
                let per_output = self.outputs_per_sample;
                if values.len() != rows * per_output {
                    return Err(Error::ShapeMismatch {
                        op: OP,
                        details: format!(
                            "mini-batch {i}: {} target values are not whole samples of the \
                             output ({per_output} values each)",
                            values.len()
                        ),
                    });
                }
                Ok(())
            }
            (Targets::Classes(_), Some(_)) => invalid(format!(
                "{:?} trains towards values (Targets::Values), not labels",
                self.loss
            )),
            (Targets::Values(_), None) => invalid(
                "the cross-entropy trains towards labels (Targets::Classes); choose a regression \
                 loss with Trainer::with_loss for values"
                    .into(),
            ),
        }
    }

    /// Makes the input and target tensors for mini-batches of `rows`, once per size.
    fn stage(&mut self, rows: usize) -> Result<()> {
        if self.staged.contains_key(&rows) {
            return Ok(());
        }
        let gpu = self.net().gpu().clone();
        let dtype = self.net().compute_dtype();
        let inputs = self
            .net()
            .inputs()
            .iter()
            .map(|input| {
                let dtype = if input.vocab.is_some() {
                    DType::U32
                } else {
                    dtype
                };
                Tensor::uninit(&gpu, &[&[rows][..], &input.shape].concat(), dtype)
            })
            .collect::<Result<Vec<_>>>()?;
        let targets = match self.loss.regression() {
            None => {
                let out = self.net().output_shape(rows)?;
                Tensor::uninit(&gpu, &out[..out.len() - 1], DType::U32)?
            }
            Some(_) => Tensor::uninit(&gpu, &self.net().output_shape(rows)?, dtype)?,
        };
        self.staged.insert(rows, Staged { inputs, targets });
        Ok(())
    }
}

/// Records the upload of f32 host values into `t` (converted to f16 for an f16 tensor).
fn write_floats(batch: &mut Batch, t: &Tensor, values: &[f32]) -> Result<()> {
    if t.dtype() == DType::F16 {
        let half: Vec<crate::f16> = values.iter().map(|&v| crate::f16::from_f32(v)).collect();
        batch.write(t, &half)
    } else {
        batch.write(t, values)
    }
}

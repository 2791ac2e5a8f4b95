//! Stateful optimizers: they own the per-parameter state tensors (allocated once, on the first
//! step) and record their updates into a [`Batch`], so a training step stays one submission.

use crate::batch::Batch;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::optim::{adam_step, sgd_step, AdamConfig, Momentum, SgdConfig};
use crate::tensor::Tensor;

fn check_lists(
    op: &'static str,
    params: &[&Tensor],
    grads: &[&Tensor],
    known: usize,
) -> Result<()> {
    if params.len() != grads.len() {
        return Err(Error::ShapeMismatch {
            op,
            details: format!("{} parameters but {} gradients", params.len(), grads.len()),
        });
    }
    if known != 0 && known != params.len() {
        return Err(Error::ShapeMismatch {
            op,
            details: format!("state for {known} parameters, but {} given", params.len()),
        });
    }
    Ok(())
}

/// SGD with optional momentum, as `torch.optim.SGD`.
#[derive(Debug)]
pub struct Sgd {
    /// Hyperparameters; may be changed between steps (e.g. a learning-rate schedule).
    pub config: SgdConfig,
    momentum: Vec<Tensor>,
    steps: u64,
}

impl Sgd {
    /// An optimizer with `config`.
    pub fn new(config: SgdConfig) -> Self {
        Sgd {
            config,
            momentum: Vec::new(),
            steps: 0,
        }
    }

    /// Records one update of every parameter (in place) from its gradient.
    pub fn step(&mut self, batch: &mut Batch, params: &[&Tensor], grads: &[&Tensor]) -> Result<()> {
        check_lists("Sgd::step", params, grads, self.momentum.len())?;
        let with_momentum = self.config.momentum > 0.0;
        if with_momentum && self.momentum.is_empty() {
            for p in params {
                self.momentum
                    .push(Tensor::zeros(batch.gpu(), p.shape(), DType::F32)?);
            }
        }
        let first = self.steps == 0;
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let momentum = match self.momentum.get(i).filter(|_| with_momentum) {
                None => Momentum::None,
                Some(b) if first => Momentum::Start(b),
                Some(b) => Momentum::Continue(b),
            };
            sgd_step(batch, p, g, momentum, &self.config)?;
        }
        self.steps += 1;
        Ok(())
    }
}

/// Adam or AdamW, as `torch.optim.Adam` / `torch.optim.AdamW`.
#[derive(Debug)]
pub struct Adam {
    /// Hyperparameters; may be changed between steps.
    pub config: AdamConfig,
    moments: Vec<(Tensor, Tensor)>,
    step: u32,
}

impl Adam {
    /// An optimizer with `config` ([`AdamConfig::adam`] or [`AdamConfig::adamw`]).
    pub fn new(config: AdamConfig) -> Self {
        Adam {
            config,
            moments: Vec::new(),
            step: 0,
        }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u32 {
        self.step
    }

    /// Records one update of every parameter (in place) from its gradient.
    pub fn step(&mut self, batch: &mut Batch, params: &[&Tensor], grads: &[&Tensor]) -> Result<()> {
        check_lists("Adam::step", params, grads, self.moments.len())?;
        if self.moments.is_empty() {
            for p in params {
                let m = Tensor::zeros(batch.gpu(), p.shape(), DType::F32)?;
                let v = Tensor::zeros(batch.gpu(), p.shape(), DType::F32)?;
                self.moments.push((m, v));
            }
        }
        let step = self.step + 1;
        for ((p, g), (m, v)) in params.iter().zip(grads).zip(&self.moments) {
            adam_step(batch, p, g, m, v, &self.config, step)?;
        }
        self.step = step;
        Ok(())
    }
}

//! Optimizers over a whole [`ParamStore`]: one dispatch updates every parameter of a model, and
//! the state (momentum, Adam's moments) lives in arenas of the same layout, keyed by the store
//! and its parameters' identities.

use super::params::{ParamId, ParamStore};
use crate::batch::Batch;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::optim::{adam_step_unless, sgd_step_unless, AdamConfig, Momentum, SgdConfig};
use crate::tensor::Tensor;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Sgd(SgdConfig),
    Adam(AdamConfig),
}

#[derive(Debug)]
struct State {
    store: u64,
    ids: Vec<(ParamId, usize)>,
    first: Option<Tensor>,
    second: Option<Tensor>,
    steps: u32,
}

/// SGD (momentum, Nesterov, weight decay) or Adam/AdamW over a model's parameters.
#[derive(Debug)]
pub struct Optimizer {
    kind: Kind,
    state: Option<State>,
    /// Which elements weight decay applies to (f32 0/1 over the arena), and the store it is for.
    decay_mask: Option<(u64, Tensor)>,
}

impl Optimizer {
    /// SGD, as `torch.optim.SGD`.
    pub fn sgd(config: SgdConfig) -> Self {
        Optimizer {
            kind: Kind::Sgd(config),
            state: None,
            decay_mask: None,
        }
    }

    /// Adam or AdamW ([`AdamConfig::adam`], [`AdamConfig::adamw`]).
    pub fn adam(config: AdamConfig) -> Self {
        Optimizer {
            kind: Kind::Adam(config),
            state: None,
            decay_mask: None,
        }
    }

    /// Applies Adam's weight decay to `model`'s weight matrices and filters only
    /// ([`crate::nn::ParamRole::Weight`]), not to biases and normalization scales: AdamW as GPT
    /// training uses it. (SGD's weight decay is unchanged.)
    pub fn decay_weights_only(&mut self, model: &crate::nn::Model) -> Result<()> {
        let store = model.params();
        let mut mask = vec![0.0f32; store.len()];
        for (p, role) in store.params().iter().zip(model.param_roles()) {
            if matches!(role, crate::nn::ParamRole::Weight { .. }) {
                let n: usize = p.shape.iter().product();
                mask[p.offset..p.offset + n].fill(1.0);
            }
        }
        let tensor = Tensor::from_slice(model.gpu(), &mask, &[mask.len()])?;
        self.decay_mask = Some((store.store_id(), tensor));
        Ok(())
    }

    /// The learning rate.
    pub fn lr(&self) -> f32 {
        match &self.kind {
            Kind::Sgd(c) => c.lr,
            Kind::Adam(c) => c.lr,
        }
    }

    /// Sets the learning rate (a schedule).
    pub fn set_lr(&mut self, lr: f32) {
        match &mut self.kind {
            Kind::Sgd(c) => c.lr = lr,
            Kind::Adam(c) => c.lr = lr,
        }
    }

    /// Steps recorded so far (in mixed precision, steps skipped for overflow included; see
    /// [`crate::nn::Trainer::loss_scale`] for those).
    pub fn steps(&self) -> u32 {
        self.state.as_ref().map_or(0, |s| s.steps)
    }

    /// The optimizer's state for parameter `id` (SGD: the momentum buffer; Adam: the first and
    /// second moments), as views; `None` before the first step or for another model's parameter.
    pub fn state_of(&self, id: ParamId) -> Option<(Tensor, Option<Tensor>)> {
        let state = self.state.as_ref()?;
        let first = state.first.as_ref()?;
        let &(_, offset) = state.ids.iter().find(|(i, _)| *i == id)?;
        let len = state
            .ids
            .iter()
            .map(|&(_, o)| o)
            .filter(|&o| o > offset)
            .min()
            .unwrap_or(first.numel())
            - offset;
        Some((
            first.view(offset, &[len]).ok()?,
            state
                .second
                .as_ref()
                .and_then(|s| s.view(offset, &[len]).ok()),
        ))
    }

    /// Records one update of every parameter of `store` from its gradient arena.
    pub fn step(&mut self, batch: &mut Batch, store: &ParamStore) -> Result<()> {
        self.step_unless(batch, store, None)
    }

    /// [`Self::step`] that changes nothing while the U32 flag `skip[0]` is set (a loss-scale
    /// overflow). The host's step count advances either way; the kernels number the applied
    /// steps with `skip[1]`, the count of skipped ones, so Adam's bias correction and SGD's first
    /// momentum step are those of PyTorch's GradScaler, which skips `optimizer.step()`.
    pub(crate) fn step_unless(
        &mut self,
        batch: &mut Batch,
        store: &ParamStore,
        skip: Option<&Tensor>,
    ) -> Result<()> {
        let ids: Vec<(ParamId, usize)> = store.params().iter().map(|p| (p.id, p.offset)).collect();
        match &self.state {
            Some(s) if s.store != store.store_id() || s.ids != ids => {
                return Err(Error::InvalidArgument {
                    op: "Optimizer::step",
                    details: "this optimizer's state belongs to another model's parameters".into(),
                })
            }
            Some(_) => {}
            None => {
                let gpu = batch.gpu().clone();
                let zeros = || Tensor::zeros(&gpu, &[store.len()], DType::F32);
                let (first, second) = match self.kind {
                    Kind::Sgd(c) if c.momentum > 0.0 => (Some(zeros()?), None),
                    Kind::Sgd(_) => (None, None),
                    Kind::Adam(_) => (Some(zeros()?), Some(zeros()?)),
                };
                self.state = Some(State {
                    store: store.store_id(),
                    ids,
                    first,
                    second,
                    steps: 0,
                });
            }
        }
        let Some(state) = self.state.as_mut() else {
            return Ok(());
        };
        let (values, grads) = (store.values(), store.grads());
        match (&self.kind, &state.first, &state.second) {
            (Kind::Sgd(config), first, _) => {
                let momentum = match first {
                    None => Momentum::None,
                    Some(b) if state.steps == 0 => Momentum::Start(b),
                    Some(b) => Momentum::Continue(b),
                };
                sgd_step_unless(
                    batch,
                    values,
                    grads,
                    momentum,
                    config,
                    state.steps + 1,
                    skip,
                )?;
            }
            (Kind::Adam(config), Some(m), Some(v)) => {
                let mask = match &self.decay_mask {
                    Some((id, mask)) if *id == store.store_id() => Some(mask),
                    Some(_) => {
                        return Err(Error::InvalidArgument {
                            op: "Optimizer::step",
                            details: "the weight-decay mask belongs to another model".into(),
                        })
                    }
                    None => None,
                };
                adam_step_unless(
                    batch,
                    values,
                    grads,
                    m,
                    v,
                    config,
                    state.steps + 1,
                    skip,
                    mask,
                )?;
            }
            (Kind::Adam(_), _, _) => unreachable!("Adam state has both moments"),
        }
        state.steps += 1;
        Ok(())
    }
}

//! Optimizer updates as GPU kernels, applied in place: SGD (momentum, dampening, Nesterov, weight
//! decay), Adam and AdamW, and gradient clipping by global norm. Parameters, gradients and state are
//! f32. These are the low layer: the one optimizer front-end, which owns the state, is
//! [`crate::nn::Optimizer`].

use crate::batch::Batch;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::checks::{fold_grid, same_gpu};
use crate::shaders::{entry_points, shader_params, EntryName, KernelSpec, Override};
use crate::tensor::Tensor;

/// SGD hyperparameters, as PyTorch's `torch.optim.SGD`. Every value must be finite and in the range
/// given on its field; a step with one outside returns [`Error::InvalidArgument`] and records
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    /// Learning rate, at least 0.
    pub lr: f32,
    /// Momentum factor μ (0: plain SGD), at least 0.
    pub momentum: f32,
    /// Dampening of the momentum's new contribution (any finite value).
    pub dampening: f32,
    /// L2 penalty added to the gradient, at least 0.
    pub weight_decay: f32,
    /// Nesterov momentum (needs momentum > 0 and zero dampening).
    pub nesterov: bool,
}

impl SgdConfig {
    /// Plain SGD with learning rate `lr`.
    pub fn new(lr: f32) -> Self {
        SgdConfig {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

/// Adam / AdamW hyperparameters, as PyTorch's `torch.optim.Adam` and `AdamW`. Every value must be
/// finite and in the range given on its field; a step with one outside returns
/// [`Error::InvalidArgument`] and records nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Learning rate, at least 0.
    pub lr: f32,
    /// Decay of the first moment, in [0, 1).
    pub beta1: f32,
    /// Decay of the second moment, in [0, 1).
    pub beta2: f32,
    /// Added to the denominator, at least 0.
    pub eps: f32,
    /// L2 penalty (Adam) or decoupled decay (AdamW), at least 0.
    pub weight_decay: f32,
    /// AdamW: decay the weights directly instead of adding to the gradient.
    pub decoupled: bool,
}

impl AdamConfig {
    /// Adam with PyTorch's defaults (β 0.9/0.999, eps 1e-8, no weight decay).
    pub fn adam(lr: f32) -> Self {
        AdamConfig {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
        }
    }

    /// AdamW with PyTorch's defaults and decoupled weight decay `weight_decay` (PyTorch: 0.01).
    pub fn adamw(lr: f32, weight_decay: f32) -> Self {
        AdamConfig {
            weight_decay,
            decoupled: true,
            ..Self::adam(lr)
        }
    }
}

shader_params! {
    struct SgdParams {
        n: u32,
        groups_x: u32,
        flags: u32,
        step: u32,
        lr: f32,
        weight_decay: f32,
        momentum: f32,
        dampening: f32,
    }
}

shader_params! {
    struct AdamParams {
        n: u32,
        groups_x: u32,
        step: u32,
        _pad: u32,
        lr: f32,
        weight_decay: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        bias_correction1: f32,
        bias_correction2: f32,
        _pad2: u32,
    }
}

shader_params! {
    struct ClipParams {
        n: u32,
        groups_x: u32,
        max_norm: f32,
        _pad: u32,
    }
}

entry_points! {
    /// The entry points of `shaders/optim.wgsl`.
    enum Entry {
        Sgd = "sgd": SgdParams,
        Adam = "adam": AdamParams,
        ClipCoefficient = "clip_coefficient": ClipParams,
        ScaleByCoefficient = "scale_by_coefficient": ClipParams,
    }
}

/// The contract of `shaders/optim.wgsl` (f32 only: parameters, gradients and optimizer state are
/// f32 master copies).
pub(crate) static KERNEL: KernelSpec = KernelSpec {
    name: "optim",
    wgsl: include_str!("../../shaders/optim.wgsl"),
    preludes: &[],
    subgroup_preludes: None,
    dtypes: &[DType::F32],
    entries: ENTRY_POINTS,
    overrides: &[
        Override {
            name: "DECOUPLED",
            values: &[0, 1],
        },
        Override {
            name: "SKIP_ON_FLAG",
            values: &[0, 1],
        },
        Override {
            name: "DECAY_MASK",
            values: &[0, 1],
        },
    ],
    override_sets: None,
    writes: &[1, 3, 4, 5],
};

fn check_scalar(op: &'static str, name: &str, value: f32, ok: bool) -> Result<()> {
    if !value.is_finite() || !ok {
        return Err(Error::InvalidArgument {
            op,
            details: format!("{name} = {value} is out of range"),
        });
    }
    Ok(())
}

/// The parameter, its gradient and its state tensors: same shape, f32, distinct buffers.
fn check_tensors(
    op: &'static str,
    batch: &Batch,
    param: &Tensor,
    others: &[&Tensor],
) -> Result<()> {
    let mut all = vec![param];
    all.extend_from_slice(others);
    same_gpu(op, batch, &all)?;
    for t in &all {
        if t.dtype() != DType::F32 {
            return Err(Error::DtypeMismatch {
                op,
                details: format!("optimizers work on f32 tensors, got {:?}", t.dtype()),
            });
        }
        if t.shape() != param.shape() {
            return Err(Error::ShapeMismatch {
                op,
                details: format!("{:?} beside the parameter's {:?}", t.shape(), param.shape()),
            });
        }
    }
    for (i, a) in all.iter().enumerate() {
        if all[i + 1..].iter().any(|b| a.shares_buffer_with(b)) {
            return Err(Error::Aliasing {
                op,
                details: "parameter, gradient and state must be distinct tensors".into(),
            });
        }
    }
    Ok(())
}

/// Records `entry` over `n` elements with the params `make(groups_x)` gives; with `skip` (a U32
/// `[flag, skipped steps]`), the update leaves everything unchanged while the flag is set (a
/// loss-scale overflow in mixed precision).
#[allow(clippy::too_many_arguments)]
fn record<P: bytemuck::Pod>(
    batch: &mut Batch,
    entry: Entry,
    decoupled: bool,
    make: impl FnOnce(u32) -> P,
    bound: &[(u32, &Tensor)],
    n: usize,
    skip: Option<&Tensor>,
    decay_mask: bool,
) -> Result<()> {
    let (grid, groups_x) = fold_grid(batch.gpu(), n.div_ceil(256))?;
    let params = make(groups_x);
    let pipeline = batch.gpu().pipeline(KERNEL.pipeline(
        entry,
        DType::F32,
        vec![
            ("DECOUPLED", u32::from(decoupled)),
            ("SKIP_ON_FLAG", u32::from(skip.is_some())),
            ("DECAY_MASK", u32::from(decay_mask)),
        ],
    ))?;
    let mut bound = bound.to_vec();
    match skip {
        Some(flag) => {
            flag.expect_dtype(DType::U32, entry.name())?;
            if flag.numel() < 2 {
                return Err(Error::ShapeMismatch {
                    op: entry.name(),
                    details: "the skip flag holds [flag, skipped steps]".into(),
                });
            }
            bound.push((7, flag));
        }
        // The layout has the flag's slot either way: bind the (read-only) gradient there; the
        // kernel does not read it without SKIP_ON_FLAG.
        None if matches!(entry, Entry::Sgd | Entry::Adam) => {
            if let Some(&(_, g)) = bound.iter().find(|(b, _)| *b == 2) {
                bound.push((7, g));
            }
        }
        None => {}
    }
    batch.dispatch_bound(&pipeline, bytemuck::bytes_of(&params), &bound, grid)
}

/// The momentum buffer of an SGD step.
#[derive(Debug, Clone, Copy)]
pub enum Momentum<'a> {
    /// No buffer: only for `config.momentum == 0`.
    None,
    /// The first step: the buffer is set to the gradient, as PyTorch does.
    Start(&'a Tensor),
    /// A later step: the buffer holds the running momentum.
    Continue(&'a Tensor),
}

/// One SGD step on `param` in place. A momentum buffer ([`Momentum::Start`] on the first step,
/// then [`Momentum::Continue`]) is required when `config.momentum > 0`.
pub fn sgd_step(
    batch: &mut Batch,
    param: &Tensor,
    grad: &Tensor,
    momentum: Momentum,
    config: &SgdConfig,
) -> Result<()> {
    sgd_step_unless(batch, param, grad, momentum, config, 0, None)
}

/// [`sgd_step`] that changes nothing while `skip[0]` (a U32 `[2]` flag and skipped-step count, if
/// given) is non-zero; then the step numbered `step` (from 1, skipped steps included) starts the
/// momentum when it is the first applied one.
pub(crate) fn sgd_step_unless(
    batch: &mut Batch,
    param: &Tensor,
    grad: &Tensor,
    momentum: Momentum,
    config: &SgdConfig,
    step: u32,
    skip: Option<&Tensor>,
) -> Result<()> {
    const OP: &str = "sgd_step";
    check_scalar(OP, "lr", config.lr, config.lr >= 0.0)?;
    check_scalar(OP, "momentum", config.momentum, config.momentum >= 0.0)?;
    check_scalar(OP, "dampening", config.dampening, true)?;
    check_scalar(
        OP,
        "weight_decay",
        config.weight_decay,
        config.weight_decay >= 0.0,
    )?;
    if config.nesterov && (config.momentum <= 0.0 || config.dampening != 0.0) {
        return Err(Error::InvalidArgument {
            op: OP,
            details: "Nesterov momentum needs momentum > 0 and zero dampening".into(),
        });
    }
    let uses_momentum = config.momentum > 0.0;
    let (momentum_buffer, first_step) = match momentum {
        Momentum::None => (None, false),
        Momentum::Start(b) => (Some(b), true),
        Momentum::Continue(b) => (Some(b), false),
    };
    let buffer = match (uses_momentum, momentum_buffer) {
        (true, Some(b)) => b,
        (true, None) => {
            return Err(Error::InvalidArgument {
                op: OP,
                details: "momentum > 0 needs a momentum buffer".into(),
            })
        }
        (false, _) => {
            check_tensors(OP, batch, param, &[grad])?;
            // The kernel leaves the momentum slot alone without momentum, but the layout has it.
            let unused = Tensor::uninit(batch.gpu(), &[1], DType::F32)?;
            let n = param.numel();
            let params = |groups_x| SgdParams {
                n: n as u32,
                groups_x,
                step,
                lr: config.lr,
                weight_decay: config.weight_decay,
                ..Default::default()
            };
            let bound = [(1, param), (2, grad), (3, &unused)];
            return record(batch, Entry::Sgd, false, params, &bound, n, skip, false);
        }
    };
    check_tensors(OP, batch, param, &[grad, buffer])?;
    let flags = 1 | (u32::from(config.nesterov) << 1) | (u32::from(first_step) << 2);
    let n = param.numel();
    let params = |groups_x| SgdParams {
        n: n as u32,
        groups_x,
        flags,
        step,
        lr: config.lr,
        weight_decay: config.weight_decay,
        momentum: config.momentum,
        dampening: config.dampening,
    };
    record(
        batch,
        Entry::Sgd,
        false,
        params,
        &[(1, param), (2, grad), (3, buffer)],
        n,
        skip,
        false,
    )
}

/// One Adam (or AdamW) step on `param` in place, with moment estimates `m` and `v` (zeros before the
/// first step). `step` counts from 1 and sets the bias corrections.
pub fn adam_step(
    batch: &mut Batch,
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    config: &AdamConfig,
    step: u32,
) -> Result<()> {
    adam_step_unless(batch, param, grad, m, v, config, step, None, None)
}

/// [`adam_step`] that changes nothing while `skip[0]` (a U32 `[2]` flag and skipped-step count, if
/// given) is non-zero; then the bias corrections are those of step `step - skip[1]`. With
/// `decay_mask` (f32, one per element, 0 or 1), only the elements it marks decay.
#[allow(clippy::too_many_arguments)]
pub(crate) fn adam_step_unless(
    batch: &mut Batch,
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    config: &AdamConfig,
    step: u32,
    skip: Option<&Tensor>,
    decay_mask: Option<&Tensor>,
) -> Result<()> {
    const OP: &str = "adam_step";
    check_scalar(OP, "lr", config.lr, config.lr >= 0.0)?;
    check_scalar(
        OP,
        "beta1",
        config.beta1,
        (0.0..1.0).contains(&config.beta1),
    )?;
    check_scalar(
        OP,
        "beta2",
        config.beta2,
        (0.0..1.0).contains(&config.beta2),
    )?;
    check_scalar(OP, "eps", config.eps, config.eps >= 0.0)?;
    check_scalar(
        OP,
        "weight_decay",
        config.weight_decay,
        config.weight_decay >= 0.0,
    )?;
    if step == 0 {
        return Err(Error::InvalidArgument {
            op: OP,
            details: "step counts from 1".into(),
        });
    }
    check_tensors(OP, batch, param, &[grad, m, v])?;
    if let Some(mask) = decay_mask {
        check_tensors(OP, batch, param, &[mask])?;
    }
    let t = step as i32;
    let n = param.numel();
    let params = |groups_x| AdamParams {
        n: n as u32,
        groups_x,
        step,
        lr: config.lr,
        weight_decay: config.weight_decay,
        beta1: config.beta1,
        beta2: config.beta2,
        eps: config.eps,
        bias_correction1: 1.0 - config.beta1.powi(t),
        bias_correction2: 1.0 - config.beta2.powi(t),
        ..Default::default()
    };
    // Without a mask the kernel does not read binding 8: the gradient stands in.
    record(
        batch,
        Entry::Adam,
        config.decoupled,
        params,
        &[
            (1, param),
            (2, grad),
            (3, m),
            (4, v),
            (8, decay_mask.unwrap_or(grad)),
        ],
        n,
        skip,
        decay_mask.is_some(),
    )
}

/// Scales `grads` in place so that their global L2 norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`), without leaving the GPU. Returns the norm before clipping (f32, `[1]`).
pub fn clip_grad_norm(batch: &mut Batch, grads: &[&Tensor], max_norm: f32) -> Result<Tensor> {
    const OP: &str = "clip_grad_norm";
    check_scalar(OP, "max_norm", max_norm, max_norm > 0.0)?;
    if grads.is_empty() {
        return Err(Error::EmptyTensor { op: OP });
    }
    same_gpu(OP, batch, grads)?;
    if let Some(g) = grads.iter().find(|g| g.dtype() != DType::F32) {
        return Err(Error::DtypeMismatch {
            op: OP,
            details: format!("gradients must be f32, got {:?}", g.dtype()),
        });
    }
    let gpu = batch.gpu().clone();
    let squares = Tensor::uninit(&gpu, &[grads.len()], DType::F32)?;
    for (i, g) in grads.iter().enumerate() {
        crate::ops::reduce::total_into(batch, OP, g, true, 1.0, &squares, i)?;
    }
    let coef = Tensor::uninit(&gpu, &[2], DType::F32)?;
    let params = ClipParams {
        n: grads.len() as u32,
        max_norm,
        ..Default::default()
    };
    let pipeline = gpu.pipeline(KERNEL.pipeline(Entry::ClipCoefficient, DType::F32, vec![]))?;
    batch.dispatch_bound(
        &pipeline,
        bytemuck::bytes_of(&params),
        &[(2, &squares), (5, &coef)],
        [1, 1, 1],
    )?;
    for g in grads {
        let n = g.numel();
        let params = |groups_x| ClipParams {
            n: n as u32,
            groups_x,
            max_norm,
            _pad: 0,
        };
        record(
            batch,
            Entry::ScaleByCoefficient,
            false,
            params,
            &[(1, g), (6, &coef)],
            n,
            None,
            false,
        )?;
    }
    // coef holds [norm, coefficient]: hand back the norm.
    let norm = Tensor::uninit(&gpu, &[1], DType::F32)?;
    batch.copy_prefix(&coef, &norm)?;
    Ok(norm)
}

//! Pruning: unstructured magnitude masks kept through fine-tuning, a gradual schedule, and
//! structured pruning that removes whole neurons and channels into a smaller dense model.

use super::io::SavedModel;
use super::layer::ParamRole;
use super::model::Sequential;
use super::spec::LayerSpec;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

fn check_fraction(op: &'static str, fraction: f32) -> Result<()> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(Error::InvalidArgument {
            op,
            details: format!("the pruned fraction must be in [0, 1), got {fraction}"),
        });
    }
    Ok(())
}

/// An unstructured mask over a model's parameter arena: 1 keeps a weight, 0 prunes it. Made by
/// [`magnitude_mask`]; a [`crate::nn::Trainer`] applies it after every optimizer step
/// ([`crate::nn::Trainer::set_pruning_mask`]), so pruned weights stay exactly zero.
#[derive(Debug, Clone)]
pub struct PruningMask {
    /// f32, the layout of [`crate::nn::ParamStore::values`].
    pub mask: Tensor,
    /// The fraction of Linear/Conv2d weights it prunes.
    pub sparsity: f32,
}

/// Magnitude pruning, layer by layer: in every weight (a parameter its layer declares a
/// [`ParamRole::Weight`]: Linear and Conv2d weights among the built-in layers), the `sparsity`
/// fraction of smallest |w| is pruned (biases and scales are kept). Already-zero weights go first,
/// so masks made with growing sparsity nest.
pub fn magnitude_mask(model: &Sequential, sparsity: f32) -> Result<PruningMask> {
    check_fraction("magnitude_mask", sparsity)?;
    let store = model.params();
    let values = store.values().to_vec::<f32>()?;
    let mut mask = vec![1.0f32; values.len()];
    let mut pruned = 0usize;
    let mut total = 0usize;
    for (p, role) in store.params().iter().zip(model.param_roles()) {
        if !matches!(role, ParamRole::Weight { .. }) {
            continue;
        }
        let n = p.value.numel();
        let slice = &values[p.offset..p.offset + n];
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| slice[a].abs().total_cmp(&slice[b].abs()).then(a.cmp(&b)));
        let cut = (n as f32 * sparsity).floor() as usize;
        for &i in &order[..cut] {
            mask[p.offset + i] = 0.0;
        }
        pruned += cut;
        total += n;
    }
    Ok(PruningMask {
        mask: Tensor::from_slice(model.gpu(), &mask, &[mask.len()])?,
        sparsity: pruned as f32 / total.max(1) as f32,
    })
}

/// Gradual pruning (Zhu & Gupta): sparsity rises from 0 at `start` to `final_sparsity` at `end`
/// as final · (1 − (1 − t)³), new masks every `every` steps. [`Self::validate`] checks the ranges
/// given on each field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PruningSchedule {
    /// The sparsity reached at `end`, in [0, 1).
    pub final_sparsity: f32,
    /// First step that prunes.
    pub start: u64,
    /// Step from which the sparsity stays final: at least `start`.
    pub end: u64,
    /// Steps between mask updates: at least 1.
    pub every: u64,
}

impl PruningSchedule {
    /// Checks the fields against their ranges ([`Error::InvalidArgument`] names the one outside).
    pub fn validate(&self) -> Result<()> {
        check_fraction("PruningSchedule", self.final_sparsity)?;
        if self.end < self.start || self.every == 0 {
            return Err(Error::InvalidArgument {
                op: "PruningSchedule",
                details: format!(
                    "needs start <= end and every >= 1, got start {}, end {}, every {}",
                    self.start, self.end, self.every
                ),
            });
        }
        Ok(())
    }

    /// The target sparsity at `step`.
    pub fn sparsity_at(&self, step: u64) -> f32 {
        if step < self.start {
            return 0.0;
        }
        let span = self.end.saturating_sub(self.start).max(1) as f32;
        let t = ((step - self.start) as f32 / span).min(1.0);
        self.final_sparsity * (1.0 - (1.0 - t).powi(3))
    }

    /// Whether `step` is one where the mask is recomputed.
    pub fn updates_at(&self, step: u64) -> bool {
        step >= self.start
            && step <= self.end
            && (step - self.start).is_multiple_of(self.every.max(1))
    }
}

/// Which units (output neurons or channels) of each prunable layer a structured pruning keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct StructuredPlan {
    /// (layer index, kept units in increasing order), for every pruned layer.
    pub keep: Vec<(usize, Vec<usize>)>,
}

/// Plans structured pruning of `model`: in every Linear and Conv2d but the last parametric layer
/// (whose outputs are the classes), the `fraction` of output units with the smallest L1 weight
/// norm is removed (at least one unit stays).
pub fn structured_plan(model: &SavedModel, fraction: f32) -> Result<StructuredPlan> {
    check_fraction("structured_plan", fraction)?;
    let param_layers: Vec<usize> = (0..model.layers.len())
        .filter(|&i| !model.layers[i].parameter_shapes().is_empty())
        .collect();
    let mut keep = Vec::new();
    for &i in param_layers
        .iter()
        .take(param_layers.len().saturating_sub(1))
    {
        let (_, shape, w) = weight_of(model, i)?;
        let units = shape[0];
        let per = w.len() / units;
        let mut order: Vec<usize> = (0..units).collect();
        let norm = |u: usize| {
            w[u * per..(u + 1) * per]
                .iter()
                .map(|v| v.abs())
                .sum::<f32>()
        };
        order.sort_by(|&a, &b| norm(b).total_cmp(&norm(a)).then(a.cmp(&b)));
        let kept = ((units as f32 * (1.0 - fraction)).ceil() as usize).clamp(1, units);
        let mut kept_units: Vec<usize> = order[..kept].to_vec();
        kept_units.sort_unstable();
        keep.push((i, kept_units));
    }
    Ok(StructuredPlan { keep })
}

fn weight_of(model: &SavedModel, layer: usize) -> Result<&(String, Vec<usize>, Vec<f32>)> {
    let name = format!("{layer}.weight");
    model
        .parameters
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| Error::ModelFile {
            details: format!("missing {name}"),
        })
}

fn param_mut<'a>(
    model: &'a mut SavedModel,
    name: &str,
) -> Result<&'a mut (String, Vec<usize>, Vec<f32>)> {
    model
        .parameters
        .iter_mut()
        .find(|(n, _, _)| n == name)
        .ok_or_else(|| Error::InvalidArgument {
            op: "structured pruning",
            details: format!(
                "the plan names {name}, which this model lacks (a plan of another model?)"
            ),
        })
}

/// The plan's layers must be this model's Linear or Conv2d layers, with units in range.
fn check_plan(model: &SavedModel, plan: &StructuredPlan) -> Result<()> {
    for (layer, kept) in &plan.keep {
        let units = match model.layers.get(*layer) {
            Some(LayerSpec::Linear { outputs, .. }) => *outputs,
            Some(LayerSpec::Conv2d { out_channels, .. }) => *out_channels,
            _ => {
                return Err(Error::InvalidArgument {
                    op: "structured pruning",
                    details: format!("layer {layer} is not a Linear or Conv2d of this model"),
                })
            }
        };
        if kept.is_empty()
            || kept.iter().any(|&u| u >= units)
            || !kept.windows(2).all(|w| w[0] < w[1])
        {
            return Err(Error::InvalidArgument {
                op: "structured pruning",
                details: format!(
                    "layer {layer}: kept units must be increasing, in 0..{units}, and not none"
                ),
            });
        }
    }
    Ok(())
}

/// The original model with the planned units' weights and biases set to zero: it computes what
/// the smaller model of [`apply_structured`] computes (for activations with act(0) = 0).
pub fn mask_structured(model: &SavedModel, plan: &StructuredPlan) -> Result<SavedModel> {
    check_plan(model, plan)?;
    let mut out = model.clone();
    for (layer, kept) in &plan.keep {
        let (_, shape, w) = param_mut(&mut out, &format!("{layer}.weight"))?;
        let per = w.len() / shape[0];
        for u in 0..shape[0] {
            if kept.binary_search(&u).is_err() {
                w[u * per..(u + 1) * per].fill(0.0);
            }
        }
        let (_, _, b) = param_mut(&mut out, &format!("{layer}.bias"))?;
        for (u, v) in b.iter_mut().enumerate() {
            if kept.binary_search(&u).is_err() {
                *v = 0.0;
            }
        }
    }
    Ok(out)
}

/// The smaller dense model the plan describes: pruned units leave their layer, and the inputs they
/// fed leave the next parametric layer (through activations, pooling and flattening).
pub fn apply_structured(model: &SavedModel, plan: &StructuredPlan) -> Result<SavedModel> {
    check_plan(model, plan)?;
    let mut out = model.clone();
    // Per-sample shapes at every layer's input, to map channels to flattened features.
    let mut shapes = vec![[&[1usize][..], &model.input_shape].concat()];
    for spec in &model.layers {
        let next = spec.output_shape(shapes.last().expect("non-empty"))?;
        shapes.push(next);
    }
    for (layer, kept) in &plan.keep {
        // This layer: keep the rows (output units) and bias entries.
        {
            let (_, shape, w) = param_mut(&mut out, &format!("{layer}.weight"))?;
            let per = w.len() / shape[0];
            *w = kept
                .iter()
                .flat_map(|&u| w[u * per..(u + 1) * per].to_vec())
                .collect();
            shape[0] = kept.len();
        }
        {
            let (_, shape, b) = param_mut(&mut out, &format!("{layer}.bias"))?;
            *b = kept.iter().map(|&u| b[u]).collect();
            shape[0] = kept.len();
        }
        match &mut out.layers[*layer] {
            LayerSpec::Linear { outputs, .. } => *outputs = kept.len(),
            LayerSpec::Conv2d { out_channels, .. } => *out_channels = kept.len(),
            _ => unreachable!("only Linear and Conv2d are planned"),
        }
        // The next parametric layer: keep the inputs fed by the kept units.
        let mut features_per_unit = 1usize;
        let next = (layer + 1..model.layers.len())
            .find(|&j| {
                if model.layers[j] == LayerSpec::Flatten {
                    let s = &shapes[j];
                    features_per_unit = s[2..].iter().product();
                }
                !model.layers[j].parameter_shapes().is_empty()
            })
            .ok_or_else(|| Error::InvalidArgument {
                op: "apply_structured",
                details: "the last parametric layer cannot be pruned".into(),
            })?;
        let (_, shape, w) = param_mut(&mut out, &format!("{next}.weight"))?;
        let (rows, cols) = (shape[0], w.len() / shape[0]);
        let old_inputs = shape[1];
        let inner = cols / old_inputs; // kh·kw for a conv, 1 for a Linear
        let keep_cols: Vec<usize> = match model.layers[next] {
            LayerSpec::Linear { .. } => kept
                .iter()
                .flat_map(|&u| u * features_per_unit..(u + 1) * features_per_unit)
                .collect(),
            _ => kept
                .iter()
                .flat_map(|&u| u * inner..(u + 1) * inner)
                .collect(),
        };
        *w = (0..rows)
            .flat_map(|r| keep_cols.iter().map(move |&c| (r, c)))
            .map(|(r, c)| w[r * cols + c])
            .collect();
        let new_inputs = keep_cols.len() / inner;
        shape[1] = new_inputs;
        match &mut out.layers[next] {
            LayerSpec::Linear { inputs, .. } => *inputs = new_inputs,
            LayerSpec::Conv2d { in_channels, .. } => *in_channels = new_inputs,
            _ => unreachable!("a parametric layer"),
        }
    }
    Ok(out)
}

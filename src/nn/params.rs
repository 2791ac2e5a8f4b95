//! Parameters: one flat f32 arena of values and one of gradients, with a view per parameter, so
//! that an optimizer updates every parameter of a model in one dispatch.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::tensor::Tensor;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Parameters on the host: (name, shape, values), in layer order.
pub type HostParameters = Vec<(String, Vec<usize>, Vec<f32>)>;

/// The identity of one parameter: optimizer state is keyed by it, not by a position in a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(u64);

/// One parameter of a [`ParamStore`]: where it lives in the arenas and what it is.
#[derive(Debug, Clone)]
pub struct Parameter {
    /// Its identity.
    pub id: ParamId,
    /// A name unique within the model, e.g. `"0.weight"`.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// First element in the arenas.
    pub offset: usize,
    /// The value: a view into [`ParamStore::values`].
    pub value: Tensor,
    /// The gradient: a view into [`ParamStore::grads`].
    pub grad: Tensor,
    /// In mixed precision, the f16 copy the forward pass reads and the f16 gradient the backward
    /// pass writes (views into [`ParamStore::half`]).
    pub half: Option<(Tensor, Tensor)>,
}

/// A model's parameters: f32 values and gradients in two arenas of the same layout, each
/// parameter at an offset aligned for binding as a tensor of its own.
#[derive(Debug)]
pub struct ParamStore {
    id: u64,
    values: Tensor,
    grads: Tensor,
    half: Option<(Tensor, Tensor)>,
    params: Vec<Parameter>,
}

impl ParamStore {
    /// Lays out parameters `(name, shape, initial values)` in new arenas on `gpu` (none: arenas
    /// of one aligned block of zeros, for a model without parameters).
    pub fn new(gpu: &Gpu, specs: &[(String, Vec<usize>, Vec<f32>)]) -> Result<Self> {
        let align = Self::alignment(gpu);
        let mut offsets = Vec::with_capacity(specs.len());
        let mut names = std::collections::HashSet::with_capacity(specs.len());
        let mut total = 0usize;
        for (name, shape, data) in specs {
            let numel = shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .unwrap_or(usize::MAX);
            if shape.is_empty() || numel == 0 || numel != data.len() {
                return Err(Error::ShapeMismatch {
                    op: "ParamStore::new",
                    details: format!(
                        "parameter {name:?} has shape {shape:?} but {} values",
                        data.len()
                    ),
                });
            }
            if !names.insert(name.as_str()) {
                return Err(Error::InvalidArgument {
                    op: "ParamStore::new",
                    details: format!("parameter name {name:?} is not unique"),
                });
            }
            offsets.push(total);
            total = total
                .checked_add(numel.next_multiple_of(align))
                .ok_or_else(|| Error::LimitExceeded {
                    what: "parameter arena elements".into(),
                    requested: u64::MAX,
                    limit: u64::from(u32::MAX),
                })?;
        }
        // Checked against the adapter before the host copy is made.
        Self::check_arena(gpu, total as u64)?;
        let total = total.max(align);
        let mut host = vec![0.0f32; total];
        for ((_, _, data), &offset) in specs.iter().zip(&offsets) {
            host[offset..offset + data.len()].copy_from_slice(data);
        }
        let values = Tensor::from_slice(gpu, &host, &[total])?;
        let grads = Tensor::zeros(gpu, &[total], DType::F32)?;
        let mut params = Vec::with_capacity(specs.len());
        for ((name, shape, _), &offset) in specs.iter().zip(&offsets) {
            params.push(Parameter {
                id: ParamId(next_id()),
                name: name.clone(),
                shape: shape.clone(),
                offset,
                value: values.view(offset, shape)?,
                grad: grads.view(offset, shape)?,
                half: None,
            });
        }
        Ok(ParamStore {
            id: next_id(),
            values,
            grads,
            half: None,
            params,
        })
    }

    /// Elements each parameter's offset is a multiple of: the adapter's offset alignment for
    /// views, for f16 views too (mixed precision keeps f16 arenas of the same layout).
    pub fn alignment(gpu: &Gpu) -> usize {
        (gpu.limits().min_storage_buffer_offset_alignment as usize / 2).max(8)
    }

    /// Checks that parameters of these shapes fit one arena on `gpu`, each rounded up to the
    /// view alignment as [`Self::new`] lays them out: what a model checks before it makes any
    /// value.
    pub fn check_fits<'a>(gpu: &Gpu, shapes: impl Iterator<Item = &'a [usize]>) -> Result<()> {
        let align = Self::alignment(gpu) as u64;
        let elements = shapes
            .map(|shape| {
                shape
                    .iter()
                    .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
                    .unwrap_or(u64::MAX)
            })
            .fold(0u64, |total, n| {
                total.saturating_add(n.div_ceil(align).saturating_mul(align))
            });
        Self::check_arena(gpu, elements)
    }

    /// An arena of `elements` f32 against the adapter's storage-binding and buffer limits.
    fn check_arena(gpu: &Gpu, elements: u64) -> Result<()> {
        let bytes = elements.saturating_mul(4);
        let limits = gpu.limits();
        gpu.check_limit(
            "parameter arena bytes (max_storage_buffer_binding_size)",
            bytes,
            limits.max_storage_buffer_binding_size,
        )?;
        gpu.check_limit(
            "parameter arena bytes (max_buffer_size)",
            bytes,
            limits.max_buffer_size,
        )
    }

    /// The same arenas (shared, not copied) without the f16 ones: what a second consumer of the
    /// parameters that computes in f32 (a decoder) reads.
    pub(crate) fn share_f32(&self) -> ParamStore {
        let mut shared = ParamStore {
            id: self.id,
            values: self.values.clone(),
            grads: self.grads.clone(),
            half: None,
            params: self.params.clone(),
        };
        shared.disable_half();
        shared
    }

    /// Drops the f16 arenas: the parameters are f32 only again.
    pub fn disable_half(&mut self) {
        self.half = None;
        for p in &mut self.params {
            p.half = None;
        }
    }

    /// Adds f16 arenas (values cast from the f32 masters, gradients zero) for mixed precision.
    pub fn enable_half(&mut self) -> Result<()> {
        if self.half.is_some() {
            return Ok(());
        }
        let gpu = self.values.gpu().clone();
        let values = Tensor::uninit(&gpu, &[self.len()], DType::F16)?;
        let grads = Tensor::zeros(&gpu, &[self.len()], DType::F16)?;
        let mut batch = crate::batch::Batch::new(&gpu);
        crate::ops::amp::cast_from_f32(&mut batch, &self.values, &values)?;
        batch.submit()?;
        for p in &mut self.params {
            p.half = Some((
                values.view(p.offset, &p.shape)?,
                grads.view(p.offset, &p.shape)?,
            ));
        }
        self.half = Some((values, grads));
        Ok(())
    }

    /// In mixed precision, the f16 (values, gradients) arenas.
    pub fn half(&self) -> Option<&(Tensor, Tensor)> {
        self.half.as_ref()
    }

    /// The identity of the store (its arenas); optimizer state is made for one store.
    pub fn store_id(&self) -> u64 {
        self.id
    }
    /// All values, one arena `[len]` (gaps between parameters hold zeros).
    pub fn values(&self) -> &Tensor {
        &self.values
    }
    /// All gradients, the same layout as [`Self::values`].
    pub fn grads(&self) -> &Tensor {
        &self.grads
    }
    /// The parameters, in layer order.
    pub fn params(&self) -> &[Parameter] {
        &self.params
    }
    /// The parameter called `name`.
    pub fn get(&self, name: &str) -> Option<&Parameter> {
        self.params.iter().find(|p| p.name == name)
    }
    /// Elements in each arena.
    pub fn len(&self) -> usize {
        self.values.numel()
    }
    /// Whether the store holds no parameter.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }
    /// Parameters' element count, without the alignment gaps.
    pub fn parameter_count(&self) -> usize {
        self.params.iter().map(|p| p.value.numel()).sum()
    }
    /// Reads every parameter back as (name, shape, values).
    pub fn to_host(&self) -> Result<HostParameters> {
        let all = self.values.to_vec::<f32>()?;
        Ok(self
            .params
            .iter()
            .map(|p| {
                let n = p.value.numel();
                (
                    p.name.clone(),
                    p.shape.clone(),
                    all[p.offset..p.offset + n].to_vec(),
                )
            })
            .collect())
    }
}

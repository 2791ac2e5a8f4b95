//! The next token of each row of logits, chosen on the GPU: greedy, or drawn from
//! softmax(logits / temperature) restricted to the top-k tokens and the top-p nucleus, with a
//! counter-based generator, so that a row with a seed draws the same token every time, whatever
//! else is in the batch, and only token ids are read back. Rows have settings of their own (a
//! generation engine samples many requests in one dispatch).
//!
//! Ties: the top-k set keeps every token tied with the k-th largest logit; greedy takes the
//! lowest index among the largest. Logits that are NaN give an unspecified token, never one
//! past the vocabulary.

use crate::batch::Batch;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::checks::{float_dtype, fold_grid, same_gpu, to_u32};
use crate::shaders::{entry_points, shader_params, KernelSpec, Prelude};
use crate::tensor::Tensor;

/// The largest vocabulary [`sample_tokens`] takes (its passes over a row stay under the software
/// drivers' loop cap).
pub const MAX_SAMPLING_VOCAB: usize = 1 << 17;
/// The temperature range besides 0 (greedy): outside it, logits / temperature over- or underflow.
pub const TEMPERATURE_RANGE: (f32, f32) = (1e-3, 1e3);

shader_params! {
    struct Params {
        rows: u32,
        vocab: u32,
        groups_x: u32,
        seg: u32,
    }
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

entry_points! {
    /// The entry points of `shaders/sampling.wgsl`.
    enum Entry {
        Sample = "sample": Params,
    }
}

/// The contract of `shaders/sampling.wgsl`.
pub(crate) static KERNEL: KernelSpec = KernelSpec {
    name: "sampling",
    wgsl: include_str!("../../shaders/sampling.wgsl"),
    preludes: &[Prelude::Hash, Prelude::Numerics, Prelude::ReduceShared],
    subgroup_preludes: None,
    dtypes: &[DType::F32, DType::F16],
    entries: ENTRY_POINTS,
    overrides: &[],
    override_sets: None,
    writes: &[3],
};

/// How one row's token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingSettings {
    /// 0: greedy; otherwise within [`TEMPERATURE_RANGE`]; or -1: no draw ([`Self::skip`]).
    pub temperature: f32,
    /// Keep the k most likely tokens (ties at the k-th kept too); 0: all.
    pub top_k: u32,
    /// Keep the most likely tokens whose probabilities add up to at least `top_p`, in (0, 1];
    /// 1: all.
    pub top_p: f32,
    /// The generator's seed.
    pub seed: u64,
    /// This draw's number under the seed (a sequence's position, say).
    pub counter: u32,
}

impl SamplingSettings {
    /// Greedy: the most likely token.
    pub fn greedy() -> Self {
        SamplingSettings {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            counter: 0,
        }
    }

    /// Words one row's settings take in a settings table ([`sample_tokens_with_table`]).
    pub const WORDS: usize = 8;

    /// Checks the settings for a vocabulary of `vocab` ([`Error::InvalidArgument`] naming
    /// `row`).
    pub fn validate(&self, op: &'static str, row: usize, vocab: usize) -> Result<()> {
        self.check(op, row, vocab)
    }

    /// No draw: the row's token is not needed and comes back as 0, at almost no cost (a prompt's
    /// inner positions in a decode step, say).
    pub fn skip() -> Self {
        SamplingSettings {
            temperature: -1.0,
            ..Self::greedy()
        }
    }

    /// Whether this is [`Self::skip`].
    pub fn is_skip(&self) -> bool {
        self.temperature == -1.0
    }

    fn check(&self, op: &'static str, row: usize, vocab: usize) -> Result<()> {
        if self.is_skip() {
            return Ok(());
        }
        let bad = |details: String| {
            Err(Error::InvalidArgument {
                op,
                details: format!("row {row}: {details}"),
            })
        };
        let (lo, hi) = TEMPERATURE_RANGE;
        if !(self.temperature == 0.0 || (lo..=hi).contains(&self.temperature)) {
            return bad(format!(
                "temperature must be 0 (greedy), -1 (no draw) or in [{lo}, {hi}], got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if self.top_k as usize > vocab {
            return bad(format!(
                "top_k {} is past the vocabulary of {vocab}",
                self.top_k
            ));
        }
        Ok(())
    }

    /// The row's entry in a settings table (U32 `[rows, WORDS]`) for
    /// [`sample_tokens_with_table`].
    pub fn words(&self) -> [u32; 8] {
        [
            self.temperature.to_bits(),
            self.top_k,
            self.top_p.to_bits(),
            self.seed as u32,
            (self.seed >> 32) as u32,
            self.counter,
            0,
            0,
        ]
    }
}

/// Checks `logits` (`[rows, vocab]`, f32 or f16, on the batch's context, the vocabulary within
/// [`MAX_SAMPLING_VOCAB`]) and returns (rows, vocab).
fn check_logits(op: &'static str, batch: &Batch, logits: &Tensor) -> Result<(usize, usize)> {
    same_gpu(op, batch, &[logits])?;
    float_dtype(op, logits)?;
    let &[rows, vocab] = logits.shape() else {
        return Err(Error::ShapeMismatch {
            op,
            details: format!("logits must be [rows, vocab], got {:?}", logits.shape()),
        });
    };
    if rows == 0 || vocab == 0 {
        return Err(Error::EmptyTensor { op });
    }
    if vocab > MAX_SAMPLING_VOCAB {
        return Err(Error::LimitExceeded {
            what: format!("{op}: vocabulary"),
            requested: vocab as u64,
            limit: MAX_SAMPLING_VOCAB as u64,
        });
    }
    Ok((rows, vocab))
}

/// The next token (U32 `[rows]`) of each row of `logits` (`[rows, vocab]`, f32 or f16), row `r`
/// chosen as `settings[r]` says.
pub fn sample_tokens(
    batch: &mut Batch,
    logits: &Tensor,
    settings: &[SamplingSettings],
) -> Result<Tensor> {
    const OP: &str = "sample_tokens";
    let (rows, vocab) = check_logits(OP, batch, logits)?;
    if settings.len() != rows {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!("{} settings for {rows} rows", settings.len()),
        });
    }
    for (r, s) in settings.iter().enumerate() {
        s.check(OP, r, vocab)?;
    }
    let gpu = batch.gpu().clone();
    let words: Vec<u32> = settings.iter().flat_map(|s| s.words()).collect();
    let table = Tensor::uninit(&gpu, &[rows, SamplingSettings::WORDS], DType::U32)?;
    batch.write(&table, &words)?;
    record(batch, logits, &table)
}

/// [`sample_tokens`] with the settings already on the GPU: `table` is U32 `[rows,
/// SamplingSettings::WORDS]`, each row [`SamplingSettings::words`] of settings the caller checked
/// ([`SamplingSettings::validate`]). What a replayed plan uses: the table is written between
/// replays, nothing is allocated per step.
pub fn sample_tokens_with_table(
    batch: &mut Batch,
    logits: &Tensor,
    table: &Tensor,
) -> Result<Tensor> {
    const OP: &str = "sample_tokens_with_table";
    same_gpu(OP, batch, &[table])?;
    let (rows, _) = check_logits(OP, batch, logits)?;
    if table.dtype() != DType::U32 || table.shape() != [rows, SamplingSettings::WORDS] {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!(
                "the settings table must be U32 [{rows}, {}], got {:?} {:?}",
                SamplingSettings::WORDS,
                table.dtype(),
                table.shape()
            ),
        });
    }
    record(batch, logits, table)
}

fn record(batch: &mut Batch, logits: &Tensor, table: &Tensor) -> Result<Tensor> {
    const OP: &str = "sample_tokens";
    let gpu = batch.gpu().clone();
    let (rows, vocab) = (logits.shape()[0], logits.shape()[1]);
    let tokens = Tensor::uninit(&gpu, &[rows], DType::U32)?;
    let (grid, groups_x) = fold_grid(&gpu, rows)?;
    let params = Params {
        rows: to_u32(OP, "rows", rows)?,
        vocab: vocab as u32,
        groups_x,
        seg: vocab.div_ceil(256) as u32,
    };
    let pipeline = gpu.pipeline(KERNEL.pipeline(Entry::Sample, logits.dtype(), Vec::new()))?;
    batch.dispatch(
        &pipeline,
        bytemuck::bytes_of(&params),
        &[logits, table, &tokens],
        grid,
    )?;
    Ok(tokens)
}

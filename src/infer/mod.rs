//! Inference: a trained model compiled into recorded plans, one per batch-size bucket, replayed
//! for each request with one write, one submission and one readback.
//!
//! Each Linear or Conv2d runs with its bias and a following ReLU in one dispatch; the softmax,
//! argmax and top-k follow on the GPU. A request pays for no shape check, pipeline look-up,
//! allocation or bind group: those were made when the plan was captured ([`crate::Plan`]).

mod batcher;

pub use batcher::{Batcher, BatcherConfig, BatcherStats, Prediction};

use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use crate::batch::{Batch, DispatchProfile, DispatchStamps, Plan};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::Model;
use crate::ops;
use crate::tensor::Tensor;

pub use crate::dtype::Precision;

/// How an [`InferenceSession`] is built. [`InferenceSession::new`] checks every field against the
/// ranges given here (and the model against the adapter's limits at `max_batch`) before it makes
/// anything, and refuses a value outside them with [`Error::InvalidArgument`] or
/// [`Error::LimitExceeded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// The largest batch one replay serves: 1 to [`SessionOptions::MAX_BATCH`], and small enough
    /// that every activation of the model at that batch fits the adapter's storage-binding limit.
    /// One plan is captured per power of two up to it (and one for it); larger requests run in
    /// several replays.
    pub max_batch: usize,
    /// Compute precision. A model that trained in mixed precision is served in the precision
    /// asked for here (its f32 master weights for [`Precision::F32`]).
    pub precision: Precision,
    /// What each prediction holds: the classifier head (softmax, argmax and top-k on the GPU) or
    /// the model's raw outputs.
    pub head: Head,
    /// Replay every bucket once when the session is made, so that the first requests do not pay
    /// for first-touch costs (pipelines and memory used for the first time: up to 400 ms per
    /// bucket on software Vulkan). On by default.
    pub warm_up: bool,
    /// Longest [`InferenceSession::predict`] waits for the GPU to finish a replay: more than 0
    /// and at most [`SessionOptions::MAX_TIMEOUT`]. Past it the call returns [`Error::Timeout`]
    /// (the bucket finishes the replay before its next use).
    pub timeout: Duration,
}

impl SessionOptions {
    /// The largest `max_batch`: 65,536.
    pub const MAX_BATCH: usize = 1 << 16;
    /// The longest `timeout`: one hour.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            max_batch: 64,
            precision: Precision::F32,
            head: Head::Classifier { top_k: 3 },
            warm_up: true,
            timeout: Duration::from_secs(30),
        }
    }
}

/// What an [`InferenceSession`] computes after the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// A classifier's answer: softmax probabilities, the argmax and the `top_k` best classes, all
    /// on the GPU. `top_k` is 1 to the model's number of outputs per sample.
    Classifier {
        /// How many best classes each prediction lists.
        top_k: usize,
    },
    /// The model's outputs as they are (a regression, embeddings, logits).
    Raw,
}

/// The result of [`InferenceSession::predict`] for `rows` samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    /// Per sample, `rows × outputs` row-major: class probabilities (the softmax of the model's
    /// outputs) for [`Head::Classifier`], the model's outputs for [`Head::Raw`].
    pub outputs: Vec<f32>,
    /// The most probable class of each sample (classifier head; empty for raw outputs).
    pub classes: Vec<u32>,
    /// The `top_k` best (class, probability) pairs of each sample, best first (classifier head;
    /// empty for raw outputs).
    pub top_k: Vec<Vec<(u32, f32)>>,
}

/// One bucket: a plan for `rows` samples with its input, outputs and readback buffer.
struct Bucket {
    plan: Plan,
    input: Tensor,
    /// Classifier: probabilities, top-k values, top-k indices; raw: the outputs.
    outputs: Vec<Tensor>,
    offsets: Vec<u64>,
    staging: wgpu::Buffer,
    /// Zeros between requests: the padding past a short request (and f16 inputs' staging).
    host_input: Vec<u8>,
    /// A replay whose wait timed out: it is finished (and its readback unmapped) before the
    /// bucket is used again.
    in_flight: Option<InFlight>,
}

/// A timeout must be more than 0 and at most `max` (so that an `Instant` plus it cannot overflow).
pub(crate) fn check_timeout(
    op: &'static str,
    what: &str,
    timeout: Duration,
    max: Duration,
) -> Result<()> {
    if timeout.is_zero() || timeout > max {
        return Err(Error::InvalidArgument {
            op,
            details: format!("{what} must be more than 0 and at most {max:?}, got {timeout:?}"),
        });
    }
    Ok(())
}

/// When a call gives up, and how long it was given.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    allowed: Duration,
}

impl Deadline {
    fn after(allowed: Duration) -> Self {
        Deadline {
            at: Instant::now() + allowed,
            allowed,
        }
    }

    fn missed(&self, op: &'static str) -> Error {
        Error::Timeout {
            op,
            after: self.allowed,
        }
    }
}

struct InFlight {
    submission: wgpu::SubmissionIndex,
    mapped: mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
}

/// A trained model compiled for serving. Safe to share between threads: calls on different
/// bucket sizes run concurrently, calls on the same bucket take turns.
pub struct InferenceSession {
    gpu: Gpu,
    input_shape: Vec<usize>,
    classes: usize,
    options: SessionOptions,
    model_bytes: usize,
    buckets: Vec<Mutex<Bucket>>,
    sizes: Vec<usize>,
    _model: Model,
}

impl std::fmt::Debug for InferenceSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferenceSession")
            .field("input_shape", &self.input_shape)
            .field("classes", &self.classes)
            .field("options", &self.options)
            .field("buckets", &self.sizes)
            .finish_non_exhaustive()
    }
}

/// Batch-size buckets: powers of two below `max`, and `max` (`max` is at most
/// [`SessionOptions::MAX_BATCH`]).
fn bucket_sizes(max: usize) -> Vec<usize> {
    let mut sizes: Vec<usize> = (0..usize::BITS)
        .map(|i| 1usize << i)
        .take_while(|&s| s < max)
        .collect();
    sizes.push(max);
    sizes
}

impl InferenceSession {
    /// Compiles `model` (one input; its outputs per sample are the classes of a classifier head,
    /// or whatever [`Head::Raw`] hands back) for serving. `options` and the model's activations at
    /// `max_batch` are checked before any plan is made.
    pub fn new(mut model: Model, options: SessionOptions) -> Result<Self> {
        const OP: &str = "InferenceSession::new";
        let gpu = model.gpu().clone();
        let invalid = |details: String| Err(Error::InvalidArgument { op: OP, details });
        if options.max_batch == 0 || options.max_batch > SessionOptions::MAX_BATCH {
            return invalid(format!(
                "max_batch must be in 1..={}, got {}",
                SessionOptions::MAX_BATCH,
                options.max_batch
            ));
        }
        check_timeout(OP, "timeout", options.timeout, SessionOptions::MAX_TIMEOUT)?;
        if model.input_shapes().len() != 1 {
            return invalid(format!(
                "a session serves single-input models; this one takes {}",
                model.input_shapes().len()
            ));
        }
        let out = model.output_shape(1)?;
        let classes: usize = out[1..].iter().product();
        if let Head::Classifier { top_k } = options.head {
            if top_k == 0 || top_k > classes {
                return invalid(format!(
                    "top_k must be in 1..={classes} (the model's classes), got {top_k}"
                ));
            }
        }
        // The served precision, whatever the model trained in.
        let model_bytes = match options.precision {
            Precision::F16 if gpu.supports_f16() => {
                model.enable_mixed_precision()?;
                model.params().parameter_count() * 2
            }
            precision => {
                model.disable_mixed_precision();
                match precision {
                    Precision::F16 | Precision::Int8 => model.quantize_weights(precision)?,
                    Precision::F32 => model.params().parameter_count() * 4,
                }
            }
        };
        // Every activation of the largest bucket fits the adapter, before any bucket is made.
        model.check_batch_size(options.max_batch)?;
        let sizes = bucket_sizes(options.max_batch);
        let mut buckets = Vec::with_capacity(sizes.len());
        for &rows in &sizes {
            buckets.push(Mutex::new(Self::bucket(
                &gpu, &mut model, rows, classes, options,
            )?));
        }
        let session = InferenceSession {
            gpu,
            input_shape: model.input_shape().to_vec(),
            classes,
            options,
            model_bytes,
            buckets,
            sizes,
            _model: model,
        };
        if options.warm_up {
            session.warm_up()?;
        }
        Ok(session)
    }

    /// Replays every bucket once on zeros (what [`SessionOptions::warm_up`] does when the session
    /// is made).
    pub fn warm_up(&self) -> Result<()> {
        let per_sample: usize = self.input_shape.iter().product();
        let deadline = Deadline::after(self.options.timeout);
        for &rows in &self.sizes {
            self.predict_bucket(&vec![0.0; rows * per_sample], rows, deadline, None)?;
        }
        Ok(())
    }

    fn bucket(
        gpu: &Gpu,
        model: &mut Model,
        rows: usize,
        classes: usize,
        options: SessionOptions,
    ) -> Result<Bucket> {
        let dtype = model.compute_dtype();
        let shape = [&[rows][..], model.input_shape()].concat();
        let input = Tensor::zeros(gpu, &shape, dtype)?;
        let mut batch = Batch::capture(gpu);
        let logits = model.forward(&mut batch, &input, false)?;
        let logits = logits.reshape(&[rows, classes])?;
        let outputs = match options.head {
            Head::Classifier { top_k } => {
                // The class is the first of the top k (same order and ties as row_max_argmax).
                let probs = ops::softmax(&mut batch, &logits)?;
                let (top_values, top_indices) = ops::top_k(&mut batch, &probs, top_k)?;
                vec![probs, top_values, top_indices]
            }
            Head::Raw => vec![logits],
        };
        let plan = batch.into_plan()?;
        let mut offsets = vec![0u64; outputs.len()];
        let mut total = 0u64;
        for (offset, t) in offsets.iter_mut().zip(&outputs) {
            *offset = total;
            total += t.size_bytes().next_multiple_of(4);
        }
        let staging = gpu.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgnn inference readback"),
            size: total,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Bucket {
            plan,
            host_input: vec![0; input.size_bytes().next_multiple_of(4) as usize],
            input,
            outputs,
            offsets,
            staging,
            in_flight: None,
        })
    }

    /// Per-sample input shape.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }
    /// The model's outputs per sample (the number of classes of a classifier).
    pub fn classes(&self) -> usize {
        self.classes
    }
    /// The options the session was built with.
    pub fn options(&self) -> &SessionOptions {
        &self.options
    }
    /// Bytes of weights in the session's precision.
    pub fn model_bytes(&self) -> usize {
        self.model_bytes
    }
    /// The batch-size buckets, each with its own plan.
    pub fn bucket_sizes(&self) -> &[usize] {
        &self.sizes
    }
    /// Dispatches one replay of the bucket for `rows` samples makes.
    pub fn dispatches_for(&self, rows: usize) -> usize {
        let i = self
            .sizes
            .iter()
            .position(|&s| s >= rows)
            .unwrap_or(self.sizes.len() - 1);
        self.buckets[i]
            .lock()
            .map(|b| b.plan.dispatches())
            .unwrap_or(0)
    }

    /// Predicts `x.len() / input size` samples (row-major, the model's input shape each), waiting
    /// for the GPU at most the session's `timeout` per replay.
    pub fn predict(&self, x: &[f32]) -> Result<Predictions> {
        self.predict_until(x, Instant::now() + self.options.timeout)
    }

    /// [`Self::predict`] that waits for the GPU at most `timeout` in all (more than 0 and at
    /// most [`SessionOptions::MAX_TIMEOUT`]).
    pub fn predict_within(&self, x: &[f32], timeout: Duration) -> Result<Predictions> {
        check_timeout(
            "InferenceSession::predict_within",
            "the timeout",
            timeout,
            SessionOptions::MAX_TIMEOUT,
        )?;
        self.predict_until(x, Instant::now() + timeout)
    }

    /// [`Self::predict`] that gives up with [`Error::Timeout`] at `deadline`: one not yet passed
    /// is needed to start, and the GPU's work is waited for until then.
    pub fn predict_until(&self, x: &[f32], deadline: Instant) -> Result<Predictions> {
        let deadline = Deadline {
            at: deadline,
            allowed: deadline.saturating_duration_since(Instant::now()),
        };
        let per_sample: usize = self.input_shape.iter().product();
        if x.is_empty() || !x.len().is_multiple_of(per_sample) {
            return Err(Error::ShapeMismatch {
                op: "InferenceSession::predict",
                details: format!(
                    "{} values are not a whole number of samples of {:?} ({per_sample} values each)",
                    x.len(),
                    self.input_shape
                ),
            });
        }
        let mut all = Predictions {
            outputs: Vec::new(),
            classes: Vec::new(),
            top_k: Vec::new(),
        };
        for chunk in x.chunks(self.options.max_batch * per_sample) {
            let part = self.predict_bucket(chunk, chunk.len() / per_sample, deadline, None)?;
            all.outputs.extend(part.outputs);
            all.classes.extend(part.classes);
            all.top_k.extend(part.top_k);
        }
        Ok(all)
    }

    /// One prediction of `x` (1 to `max_batch` samples) with each dispatch of its replay timed on
    /// the GPU: the model's layers and the head, in order. Needs timestamp queries.
    pub fn profile(&self, x: &[f32]) -> Result<DispatchProfile> {
        const OP: &str = "InferenceSession::profile";
        let per_sample: usize = self.input_shape.iter().product();
        let rows = x.len() / per_sample;
        if x.is_empty() || !x.len().is_multiple_of(per_sample) || rows > self.options.max_batch {
            return Err(Error::ShapeMismatch {
                op: OP,
                details: format!(
                    "{} values are not 1 to {} samples of {:?}",
                    x.len(),
                    self.options.max_batch,
                    self.input_shape
                ),
            });
        }
        let mut stamps = DispatchStamps::new(&self.gpu, OP)?;
        let deadline = Deadline::after(self.options.timeout);
        self.predict_bucket(x, rows, deadline, Some(&mut stamps))?;
        stamps.read(&self.gpu)
    }

    /// Waits for `submission` until `deadline`.
    fn wait(&self, submission: wgpu::SubmissionIndex, deadline: Deadline) -> Result<()> {
        const OP: &str = "InferenceSession::predict";
        let left = deadline.at.saturating_duration_since(Instant::now());
        match self.gpu.device().poll(wgpu::PollType::Wait {
            submission_index: Some(submission),
            timeout: Some(left),
        }) {
            Ok(_) => Ok(()),
            Err(wgpu::PollError::Timeout) => {
                self.gpu.take_uncaptured_error()?;
                Err(deadline.missed(OP))
            }
            Err(e) => Err(Error::DeviceLost(e.to_string())),
        }
    }

    /// Writes `x` into the bucket's input, padded with zeros past its rows (`host_input` holds
    /// zeros for that).
    fn write_input(&self, b: &mut Bucket, x: &[f32]) {
        let queue = self.gpu.queue();
        let (input, offset) = (b.input.buffer(), b.input.offset_bytes());
        let used = match b.input.dtype() {
            DType::F16 => {
                let half: Vec<crate::f16> = x.iter().map(|&v| crate::f16::from_f32(v)).collect();
                let bytes: &[u8] = bytemuck::cast_slice(&half);
                b.host_input[..bytes.len()].copy_from_slice(bytes);
                let used = bytes.len();
                b.host_input[used..].fill(0);
                queue.write_buffer(input, offset, &b.host_input);
                b.host_input.fill(0);
                b.host_input.len()
            }
            _ => {
                // Written straight from the caller's slice, no staging copy on the host.
                let bytes: &[u8] = bytemuck::cast_slice(x);
                queue.write_buffer(input, offset, bytes);
                bytes.len()
            }
        };
        if used < b.host_input.len() {
            queue.write_buffer(input, offset + used as u64, &b.host_input[used..]);
        }
    }

    /// The predictions of `rows` rows from the mapped staging buffer `view`.
    fn read_predictions(&self, b: &Bucket, view: &[u8], rows: usize) -> Predictions {
        let bytes_of = |i: usize| {
            let start = b.offsets[i] as usize;
            &view[start..start + b.outputs[i].size_bytes() as usize]
        };
        // The first `len` values of output `i`, as f32.
        let floats = |i: usize, len: usize| -> Vec<f32> {
            let bytes = bytes_of(i);
            match b.outputs[i].dtype() {
                DType::F16 => bytemuck::pod_collect_to_vec::<u8, crate::f16>(&bytes[..len * 2])
                    .into_iter()
                    .map(f32::from)
                    .collect(),
                _ => bytemuck::pod_collect_to_vec(&bytes[..len * 4]),
            }
        };
        let outputs = floats(0, rows * self.classes);
        match self.options.head {
            Head::Raw => Predictions {
                outputs,
                classes: Vec::new(),
                top_k: Vec::new(),
            },
            Head::Classifier { top_k: k } => {
                let top_values = floats(1, rows * k);
                let top_indices: Vec<u32> =
                    bytemuck::pod_collect_to_vec(&bytes_of(2)[..rows * k * 4]);
                Predictions {
                    outputs,
                    classes: (0..rows).map(|r| top_indices[r * k]).collect(),
                    top_k: (0..rows)
                        .map(|r| {
                            (0..k)
                                .map(|t| (top_indices[r * k + t], top_values[r * k + t]))
                                .collect()
                        })
                        .collect(),
                }
            }
        }
    }

    fn predict_bucket(
        &self,
        x: &[f32],
        rows: usize,
        deadline: Deadline,
        stamps: Option<&mut DispatchStamps>,
    ) -> Result<Predictions> {
        let index = self
            .sizes
            .iter()
            .position(|&s| s >= rows)
            .unwrap_or(self.sizes.len() - 1);
        let mut bucket = self.buckets[index]
            .lock()
            .map_err(|_| Error::gpu("an earlier request on this bucket panicked"))?;
        if Instant::now() >= deadline.at {
            return Err(deadline.missed("InferenceSession::predict"));
        }
        // A replay that timed out before is finished first: its readback is still mapped.
        if let Some(earlier) = bucket.in_flight.take() {
            if let Err(e) = self.wait(earlier.submission.clone(), deadline) {
                bucket.in_flight = Some(earlier);
                return Err(e);
            }
            if let Ok(Ok(())) = earlier.mapped.recv() {
                bucket.staging.unmap();
            }
        }
        let b = &mut *bucket;
        self.write_input(b, x);
        let mut encoder =
            self.gpu
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("wgnn inference"),
                });
        match stamps {
            Some(stamps) => {
                b.plan.encode_profiled(&mut encoder, stamps);
                stamps.resolve(&mut encoder);
            }
            None => b.plan.encode(&mut encoder),
        }
        for (t, &offset) in b.outputs.iter().zip(&b.offsets) {
            let len = t.size_bytes().next_multiple_of(4);
            encoder.copy_buffer_to_buffer(t.buffer(), t.offset_bytes(), &b.staging, offset, len);
        }
        let submission = self.gpu.queue().submit([encoder.finish()]);
        let slice = b.staging.slice(..);
        let (tx, rx) = mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        if let Err(e) = self.wait(submission.clone(), deadline) {
            if matches!(e, Error::Timeout { .. }) {
                b.in_flight = Some(InFlight {
                    submission,
                    mapped: rx,
                });
            }
            return Err(e);
        }
        rx.recv()
            .map_err(|e| Error::DeviceLost(format!("readback callback lost: {e}")))?
            .map_err(|e| Error::gpu_caused("readback failed", e))?;
        let result = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::gpu_caused("readback failed", e))?;
            self.read_predictions(b, &view, rows)
        };
        b.staging.unmap();
        self.gpu.take_uncaptured_error()?;
        Ok(result)
    }
}

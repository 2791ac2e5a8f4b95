//! Data-parallel training across processes through MPI (cargo feature `mpi`; Open MPI or
//! MPICH installed, started with `mpirun -n N`).
//!
//! Every rank holds a replica of the model on its own adapter ([`Distributed::gpu`] picks one
//! by the local rank). [`Distributed::broadcast_parameters`] copies rank 0's parameters to
//! every rank; each step, every rank computes the gradients of its shard of the global batch
//! ([`Distributed::shard`]), the gradients are averaged with an all-reduce staged through host
//! memory in buckets, and every rank applies the same update, so the replicas stay equal. With
//! equal shards the step is the one of the whole batch on one process (the losses are means).
//!
//! ```no_run
//! # fn main() -> wgnn::Result<()> {
//! use wgnn::distributed::{Distributed, DistributedOptions};
//! use wgnn::nn::{Init, LayerSpec, Optimizer, Sequential, Trainer};
//! use wgnn::ops::SgdConfig;
//!
//! let mut dist = Distributed::init(DistributedOptions::default())?;
//! let gpu = dist.gpu()?;
//! let model = Sequential::new(&gpu, &[4], vec![LayerSpec::Linear { inputs: 4, outputs: 3 }],
//!     Init::XavierUniform { seed: 1 })?;
//! dist.broadcast_parameters(&model)?;
//! let mut trainer = Trainer::new(model, Optimizer::sgd(SgdConfig::new(0.1)));
//! let (x, y) = (vec![0.5f32; 4 * 8], vec![1u32; 8]); // the global batch, the same on every rank
//! let (x, y) = (dist.shard(&x, 4)?, dist.shard(&y, 1)?);
//! dist.train_step(&mut trainer, x, y)?;
//! # Ok(()) }
//! ```
//!
//! Faults: MPI cannot cancel a collective, so a rank whose collective waits longer than
//! [`DistributedOptions::collective_timeout`] for the others (one stalled, or gone) prints which
//! step it waited on and aborts the whole job (`MPI_Abort`): every rank stops with an error
//! status instead of hanging. A rank that dies is noticed by `mpirun`, which stops the others.
//! Checkpoints are for rank 0 to write ([`Distributed::is_root`]); wgnn writes a model file
//! through a temporary file and a rename, so a job stopped mid-write keeps the previous one.

use std::time::{Duration, Instant};

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuOptions};
use crate::nn::{Input, MicroBatch, Model, ParamStore, Targets, Trainer};
use crate::ops;
use crate::tensor::Tensor;

/// How a [`Distributed`] context moves gradients. [`Distributed::init`] checks every field.
#[derive(Debug, Clone, PartialEq)]
pub struct DistributedOptions {
    /// Gradient bytes per all-reduce: [`Self::BUCKET_BYTES_RANGE`] (default 4 MiB). One
    /// bucket's all-reduce runs while the next is copied out of the readback (wgpu maps a
    /// buffer only once the GPU is done with it, so the GPU-side copy is one piece).
    pub bucket_bytes: usize,
    /// How long one collective may wait for the other ranks before the job is aborted:
    /// [`Self::TIMEOUT_RANGE`] (default 120 s; the first step includes the others' start-up).
    pub collective_timeout: Duration,
}

impl DistributedOptions {
    /// Allowed bucket sizes: 4 KiB to 1 GiB.
    pub const BUCKET_BYTES_RANGE: std::ops::RangeInclusive<usize> = 4096..=(1 << 30);
    /// Allowed collective timeouts: 100 ms to 24 h.
    pub const TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
        Duration::from_millis(100)..=Duration::from_secs(24 * 3600);
}

impl Default for DistributedOptions {
    fn default() -> Self {
        DistributedOptions {
            bucket_bytes: 4 << 20,
            collective_timeout: Duration::from_secs(120),
        }
    }
}

/// Where one data-parallel step's time went on this rank.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTiming {
    /// The rest of the step: recording and running the forward and backward passes, reading
    /// the gradients back, and recording the update.
    pub gradients: Duration,
    /// The all-reduce of the gradients (and the overflow flag), waiting for the other ranks
    /// included, and writing the averages back.
    pub all_reduce: Duration,
    /// Bytes of gradients this rank sent into the all-reduce.
    pub bytes: usize,
}

/// An MPI job's data-parallel context: the ranks, the communicator and the staging buffers.
pub struct Distributed {
    // Finalizes MPI when dropped (after `world`).
    world: SimpleCommunicator,
    _universe: Universe,
    local_rank: usize,
    options: DistributedOptions,
    staging: Option<wgpu::Buffer>,
    send: Vec<f32>,
    received: Vec<f32>,
    steps: u64,
}

impl std::fmt::Debug for Distributed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distributed")
            .field("rank", &self.rank())
            .field("world_size", &self.world_size())
            .field("local_rank", &self.local_rank)
            .field("options", &self.options)
            .finish()
    }
}

fn comm_error(details: String) -> Error {
    Error::communication(details)
}

impl Distributed {
    /// Initializes MPI (once per process: a second call gets [`Error::Communication`]). Run
    /// without `mpirun`, the job is this one process (world size 1).
    pub fn init(options: DistributedOptions) -> Result<Self> {
        if !DistributedOptions::BUCKET_BYTES_RANGE.contains(&options.bucket_bytes) {
            return Err(Error::InvalidArgument {
                op: "Distributed::init",
                details: format!(
                    "bucket_bytes must be in {:?}, got {}",
                    DistributedOptions::BUCKET_BYTES_RANGE,
                    options.bucket_bytes
                ),
            });
        }
        if !DistributedOptions::TIMEOUT_RANGE.contains(&options.collective_timeout) {
            return Err(Error::InvalidArgument {
                op: "Distributed::init",
                details: format!(
                    "collective_timeout must be in {:?}, got {:?}",
                    DistributedOptions::TIMEOUT_RANGE,
                    options.collective_timeout
                ),
            });
        }
        let universe = mpi::initialize()
            .ok_or_else(|| comm_error("MPI is already initialized in this process".into()))?;
        let world = universe.world();
        let local_rank = usize::try_from(world.split_shared(world.rank()).rank()).unwrap_or(0);
        Ok(Distributed {
            world,
            _universe: universe,
            local_rank,
            options,
            staging: None,
            send: Vec::new(),
            received: Vec::new(),
            steps: 0,
        })
    }

    /// This process's rank, 0 to [`Self::world_size`] − 1.
    pub fn rank(&self) -> usize {
        usize::try_from(self.world.rank()).unwrap_or(0)
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        usize::try_from(self.world.size()).unwrap_or(1)
    }

    /// This process's rank among those on its machine.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Whether this is rank 0, the one that writes checkpoints and prints.
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// This rank's adapter: [`Gpu::new`]'s choice, among several adapters of the preferred kind
    /// the one at this rank's local index (`WGNN_ADAPTER_INDEX` overrides it).
    pub fn gpu(&self) -> Result<Gpu> {
        let mut options = GpuOptions::from_env_checked()?;
        options.adapter_index.get_or_insert(self.local_rank);
        Gpu::with_options(options)
    }

    /// This rank's contiguous share of a global batch of `global.len() / per_sample` samples
    /// (every rank passes the same batch): the samples must divide evenly among the ranks, so
    /// that the averaged gradients are the whole batch's.
    pub fn shard<'a, T>(&self, global: &'a [T], per_sample: usize) -> Result<&'a [T]> {
        const OP: &str = "Distributed::shard";
        if per_sample == 0 || global.is_empty() || !global.len().is_multiple_of(per_sample) {
            return Err(Error::ShapeMismatch {
                op: OP,
                details: format!(
                    "{} values are not whole samples of {per_sample}",
                    global.len()
                ),
            });
        }
        let samples = global.len() / per_sample;
        let ranks = self.world_size();
        if !samples.is_multiple_of(ranks) {
            return Err(Error::InvalidArgument {
                op: OP,
                details: format!("{samples} samples do not divide evenly among {ranks} ranks"),
            });
        }
        let share = samples / ranks * per_sample;
        Ok(&global[self.rank() * share..(self.rank() + 1) * share])
    }

    /// Checks that every rank holds the same parameters (names, shapes and layout):
    /// [`Error::Communication`] on every rank otherwise, where a collective of mismatched sizes
    /// would abort the job or, worse, mix unrelated values.
    fn agree_on_layout(&self, params: &ParamStore, what: &str) -> Result<()> {
        // FNV-1a over the arena's length and each parameter's name, shape and offset.
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        let mut mix = |bytes: &[u8]| {
            for &b in bytes {
                hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        };
        mix(&(params.values().numel() as u64).to_le_bytes());
        for p in params.params() {
            mix(p.name.as_bytes());
            for &d in &p.shape {
                mix(&(d as u64).to_le_bytes());
            }
            mix(&(p.offset as u64).to_le_bytes());
        }
        // One max over (hash, !hash): the largest hash and the complement of the smallest.
        let mine = [hash, !hash];
        let mut most = [0u64; 2];
        let (world, timeout, step) = (&self.world, self.options.collective_timeout, self.steps);
        mpi::request::scope(|scope| {
            let request = world.immediate_all_reduce_into(
                scope,
                &mine[..],
                &mut most[..],
                SystemOperation::max(),
            );
            wait_or_abort(world, request, timeout, what, step);
        });
        if most[0] != !most[1] {
            return Err(comm_error(format!(
                "{what}: the ranks hold different models (parameter names, shapes or layout \
                 differ; rank {} has {} parameters in {} values)",
                self.rank(),
                params.params().len(),
                params.parameter_count()
            )));
        }
        Ok(())
    }

    /// Copies rank 0's parameter values to every rank (call it once the model is built, before
    /// training; in mixed precision the f16 copies are refreshed too). Every rank must pass the
    /// same architecture: [`Error::Communication`] on every rank otherwise.
    pub fn broadcast_parameters(&mut self, model: &Model) -> Result<()> {
        let params = model.params();
        self.agree_on_layout(params, "broadcast of the parameters")?;
        let mut values = params.values().to_vec::<f32>()?;
        let timeout = self.options.collective_timeout;
        {
            let world = &self.world;
            let step = self.steps;
            mpi::request::scope(|scope| {
                let request = world
                    .process_at_rank(0)
                    .immediate_broadcast_into(scope, &mut values[..]);
                wait_or_abort(world, request, timeout, "broadcast of the parameters", step);
            });
        }
        params.values().write(&values)?;
        if let Some((half_values, _)) = params.half() {
            let mut batch = Batch::new(model.gpu());
            ops::amp::cast_from_f32(&mut batch, params.values(), half_values)?;
            batch.submit()?;
        }
        Ok(())
    }

    /// The sum of `value` over the ranks (throughputs, losses, sample counts).
    pub fn sum(&self, value: f64) -> Result<f64> {
        let mut total = 0.0f64;
        let timeout = self.options.collective_timeout;
        let world = &self.world;
        let step = self.steps;
        mpi::request::scope(|scope| {
            let request =
                world.immediate_all_reduce_into(scope, &value, &mut total, SystemOperation::sum());
            wait_or_abort(world, request, timeout, "sum", step);
        });
        Ok(total)
    }

    /// Stops every rank of the job now with `code` (`MPI_Abort`): what a rank does after an
    /// error of its own, while the others wait for it in a collective.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    /// Waits until every rank has reached this call (or aborts the job after the timeout).
    pub fn barrier(&self) {
        let request = self.world.immediate_barrier();
        wait_or_abort(
            &self.world,
            request,
            self.options.collective_timeout,
            "barrier",
            self.steps,
        );
    }

    /// One data-parallel step of a classifier: this rank's shard `x`, `labels` (see
    /// [`Self::shard`]); as [`Trainer::step`] on the whole batch.
    pub fn train_step<M: AsRef<Model> + AsMut<Model>>(
        &mut self,
        trainer: &mut Trainer<M>,
        x: &[f32],
        labels: &[u32],
    ) -> Result<StepTiming> {
        self.train_step_micro_batches(
            trainer,
            &[MicroBatch {
                inputs: &[Input::Values(x)],
                targets: Targets::Classes(labels),
            }],
        )
    }

    /// One data-parallel step over this rank's micro-batches (gradient accumulation: each rank
    /// accumulates its own, then the ranks average), as [`Trainer::step_micro_batches`]: the one
    /// step function, for any model the trainer trains (a language model's micro-batch is its
    /// sequences, [`crate::nn::LanguageModel::sequences`]).
    pub fn train_step_micro_batches<M: AsRef<Model> + AsMut<Model>>(
        &mut self,
        trainer: &mut Trainer<M>,
        micro_batches: &[MicroBatch],
    ) -> Result<StepTiming> {
        let start = Instant::now();
        let gpu = trainer.model().as_ref().gpu().clone();
        let mut batch = Batch::new(&gpu);
        trainer.record_gradients(&mut batch, micro_batches)?;
        batch.submit()?;
        let overflow = trainer.overflow_flag().cloned();
        let params = trainer.model().as_ref().params();
        let mut timing = self.average_gradients(params, overflow.as_ref())?;
        timing.gradients = start.elapsed() - timing.all_reduce;
        let mut batch = Batch::new(&gpu);
        trainer.record_update(&mut batch)?;
        batch.submit()?;
        Ok(timing)
    }

    /// All-reduces `mapped` (the gradients read back) into `received`, bucket by bucket: bucket
    /// i's all-reduce runs while bucket i + 1 is copied out of the readback.
    fn all_reduce_buckets(&mut self, mapped: &[f32]) {
        let bucket = (self.options.bucket_bytes / 4).max(1);
        let (world, timeout, step) = (&self.world, self.options.collective_timeout, self.steps);
        let (send, received) = (&mut self.send, &mut self.received);
        mpi::request::scope(|scope| {
            let mut pending = Vec::new();
            for ((out, into), from) in send
                .chunks_mut(bucket)
                .zip(received.chunks_mut(bucket))
                .zip(mapped.chunks(bucket))
            {
                out.copy_from_slice(from);
                let out: &[f32] = out;
                pending.push(world.immediate_all_reduce_into(
                    scope,
                    out,
                    into,
                    SystemOperation::sum(),
                ));
            }
            for request in pending {
                wait_or_abort(world, request, timeout, "all-reduce of the gradients", step);
            }
        });
    }

    /// The largest overflow flag of any rank: every rank skips a step one rank overflowed in.
    fn agree_on_overflow(&self, local: u32) -> u32 {
        let mut any = 0u32;
        let (world, timeout, step) = (&self.world, self.options.collective_timeout, self.steps);
        mpi::request::scope(|scope| {
            let request =
                world.immediate_all_reduce_into(scope, &local, &mut any, SystemOperation::max());
            wait_or_abort(world, request, timeout, "agreement on overflow", step);
        });
        any
    }

    /// Replaces the gradients in `params` by their mean over the ranks, once the work submitted
    /// before has made them; with `overflow` (mixed precision's flag), the ranks also agree on
    /// it: if any rank's gradients overflowed, every rank skips the update.
    pub fn average_gradients(
        &mut self,
        params: &ParamStore,
        overflow: Option<&Tensor>,
    ) -> Result<StepTiming> {
        self.steps += 1;
        let grads = params.grads();
        let n = grads.numel();
        let bytes = grads.size_bytes();
        let gpu = grads.gpu().clone();
        // The gradients, then 8 bytes for mixed precision's U32 [2] overflow flag: one copy.
        const FLAG_BYTES: u64 = 8;
        if self
            .staging
            .as_ref()
            .is_none_or(|b| b.size() != bytes + FLAG_BYTES)
        {
            self.agree_on_layout(params, "all-reduce of the gradients")?;
            self.staging = Some(gpu.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgnn all-reduce staging"),
                size: bytes + FLAG_BYTES,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
            self.send = vec![0.0; n];
            self.received = vec![0.0; n];
        }
        let staging = self.staging.clone().expect("made above");
        let mut encoder = gpu
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgnn gradient readback"),
            });
        encoder.copy_buffer_to_buffer(grads.buffer(), grads.offset_bytes(), &staging, 0, bytes);
        if let Some(flag) = overflow {
            if flag.dtype() != crate::DType::U32 || flag.size_bytes() != FLAG_BYTES {
                return Err(Error::InvalidArgument {
                    op: "Distributed::average_gradients",
                    details: format!(
                        "the overflow flag must be U32 [2], got {:?} {:?}",
                        flag.dtype(),
                        flag.shape()
                    ),
                });
            }
            encoder.copy_buffer_to_buffer(
                flag.buffer(),
                flag.offset_bytes(),
                &staging,
                bytes,
                FLAG_BYTES,
            );
        }
        gpu.scoped(|| gpu.queue().submit([encoder.finish()]))?;
        let slice = staging.slice(..);
        gpu.map_for_reading(&slice)?;
        let reduce_start = Instant::now();
        let mut local_flag: [u32; 2] = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::gpu_caused("readback failed", e))?;
            let (grad_bytes, flag_bytes) = view.split_at(bytes as usize);
            self.all_reduce_buckets(bytemuck::cast_slice(grad_bytes));
            bytemuck::pod_read_unaligned(flag_bytes)
        };
        staging.unmap();
        let ranks = self.world_size() as f32;
        for v in &mut self.received {
            *v /= ranks;
        }
        grads.write(&self.received)?;
        if let Some(flag) = overflow {
            local_flag[0] = self.agree_on_overflow(local_flag[0]);
            flag.write(&local_flag)?;
        }
        Ok(StepTiming {
            gradients: Duration::ZERO,
            all_reduce: reduce_start.elapsed(),
            bytes: bytes as usize,
        })
    }
}

/// Polls `request` until it completes; past `timeout`, says what waited and aborts the job (an
/// MPI collective cannot be cancelled, and returning would leave MPI writing into freed memory).
fn wait_or_abort<'a, D: ?Sized, S: mpi::request::Scope<'a>>(
    world: &SimpleCommunicator,
    mut request: mpi::request::Request<'a, D, S>,
    timeout: Duration,
    what: &str,
    step: u64,
) {
    let start = Instant::now();
    let mut polls = 0u32;
    loop {
        match request.test() {
            Ok(_) => return,
            Err(r) => request = r,
        }
        if start.elapsed() > timeout {
            eprintln!(
                "wgnn::distributed: rank {} waited {:?} for the other ranks in the {what} \
                 (step {step}); one of them stalled or failed: aborting the job",
                world.rank(),
                timeout
            );
            world.abort(3);
        }
        polls += 1;
        if polls < 1000 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

//! Recording: ops append dispatches to a [`Batch`]; the caller submits it once.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Pipeline};
use std::sync::Arc;

use crate::pool::{Held, PooledBuffer};
use crate::tensor::Tensor;

/// Bytes of one uniform chunk; each dispatch's parameters take one aligned slot in it.
const UNIFORM_CHUNK: u64 = 64 * 1024;

struct UniformChunk {
    buffer: PooledBuffer,
    data: Vec<u8>,
}

/// A command batch: ops record into it, nothing runs until [`Batch::submit`].
///
/// A batch keeps every buffer its work touches alive until it is submitted, so dropping a tensor
/// after recording an op on it is safe. One batch per training step or inference request is the
/// intended use: one submission instead of one per op.
pub struct Batch {
    gpu: Gpu,
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    /// Buffers the recorded work touches, held (and counted as pending) until submission.
    keep_alive: Vec<Held>,
    uniforms: Vec<UniformChunk>,
    /// Staging buffers of recorded uploads and their bytes, written at submit.
    uploads: Vec<(PooledBuffer, Vec<u8>)>,
    dispatches: usize,
    timer: Option<TimerQueries>,
    /// While profiling: one timed pass per dispatch.
    stamps: Option<DispatchStamps>,
    passes: usize,
    /// While capturing a plan: the steps so far.
    capture: Option<Plan>,
}

/// One captured dispatch: everything a replay needs, made once.
struct Step {
    kernel: Pipeline,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
}

/// Dispatches captured once and replayed many times: each step's pipeline, bind group, workgroup
/// counts and parameters are made at capture, so a replay costs only `set_pipeline`,
/// `set_bind_group` and `dispatch` per step (wgpu cannot replay a command buffer). The plan owns
/// every buffer its steps touch, so their contents persist between replays: write the inputs,
/// replay, read the outputs. Made by [`Batch::capture`] and [`Batch::into_plan`].
pub struct Plan {
    steps: Vec<Step>,
    buffers: Vec<Arc<PooledBuffer>>,
    uniforms: Vec<PooledBuffer>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("dispatches", &self.steps.len())
            .field("buffers", &self.buffers.len())
            .finish()
    }
}

impl Plan {
    /// Dispatches per replay.
    pub fn dispatches(&self) -> usize {
        self.steps.len()
    }

    /// Encodes one replay with each step in a pass of its own between two timestamps.
    pub(crate) fn encode_profiled(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        stamps: &mut DispatchStamps,
    ) {
        for step in &self.steps {
            let writes = stamps.next_pass(&step.kernel, step.workgroups);
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(step.kernel.pipeline_name()),
                timestamp_writes: Some(writes),
            });
            pass.set_pipeline(&step.pipeline);
            pass.set_bind_group(0, &step.bind_group, &[]);
            let [x, y, z] = step.workgroups;
            pass.dispatch_workgroups(x, y, z);
        }
    }

    /// Encodes one replay of every step, in one compute pass.
    pub fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("wgnn plan"),
            timestamp_writes: None,
        });
        for step in &self.steps {
            pass.set_pipeline(&step.pipeline);
            pass.set_bind_group(0, &step.bind_group, &[]);
            let [x, y, z] = step.workgroups;
            pass.dispatch_workgroups(x, y, z);
        }
    }
}

impl Batch {
    /// An empty batch on `gpu`.
    pub fn new(gpu: &Gpu) -> Self {
        Batch {
            gpu: gpu.clone(),
            encoder: None,
            pass: None,
            keep_alive: Vec::new(),
            uniforms: Vec::new(),
            uploads: Vec::new(),
            dispatches: 0,
            timer: None,
            stamps: None,
            passes: 0,
            capture: None,
        }
    }

    /// A batch that captures its dispatches as a [`Plan`] instead of running them: record ops
    /// into it as usual, then call [`Batch::into_plan`]. Only dispatches can be captured (copies,
    /// clears and writes are refused with [`Error::InvalidArgument`]).
    pub fn capture(gpu: &Gpu) -> Self {
        let mut batch = Batch::new(gpu);
        batch.capture = Some(Plan {
            steps: Vec::new(),
            buffers: Vec::new(),
            uniforms: Vec::new(),
        });
        batch
    }

    /// The captured plan, with every step's parameters uploaded once.
    pub fn into_plan(mut self) -> Result<Plan> {
        let Some(mut plan) = self.capture.take() else {
            return Err(Error::InvalidArgument {
                op: "Batch::into_plan",
                details: "the batch was not made by Batch::capture".into(),
            });
        };
        for chunk in self.uniforms.drain(..) {
            self.gpu
                .queue()
                .write_buffer(chunk.buffer.buffer(), 0, &chunk.data);
            plan.uniforms.push(chunk.buffer);
        }
        self.gpu.take_uncaptured_error()?;
        Ok(plan)
    }

    fn refuse_in_capture(&self, op: &'static str) -> Result<()> {
        if self.capture.is_some() {
            return Err(Error::InvalidArgument {
                op,
                details: "a captured plan holds dispatches only".into(),
            });
        }
        Ok(())
    }

    /// The context the batch records for.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Dispatches recorded so far.
    pub fn dispatches(&self) -> usize {
        self.dispatches
    }

    fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        open_encoder(&mut self.encoder, &self.gpu)
    }

    fn end_pass(&mut self) {
        self.pass = None;
    }

    /// Records one dispatch of `pipeline` with `params` at binding 0 and `tensors` at bindings 1...
    pub(crate) fn dispatch(
        &mut self,
        pipeline: &Pipeline,
        params: &[u8],
        tensors: &[&Tensor],
        workgroups: [u32; 3],
    ) -> Result<()> {
        let bound: Vec<(u32, &Tensor)> = (1..).zip(tensors.iter().copied()).collect();
        self.dispatch_bound(pipeline, params, &bound, workgroups)
    }

    /// Records one dispatch with `params` at binding 0 and each tensor at its given binding.
    pub(crate) fn dispatch_bound(
        &mut self,
        pipeline: &Pipeline,
        params: &[u8],
        tensors: &[(u32, &Tensor)],
        workgroups: [u32; 3],
    ) -> Result<()> {
        if tensors
            .iter()
            .any(|(_, t)| !t.gpu().same_context(&self.gpu))
        {
            return Err(Error::ContextMismatch {
                op: pipeline.pipeline_name(),
            });
        }
        let max = self.gpu.limits().max_compute_workgroups_per_dimension;
        if let Some((axis, &n)) = workgroups.iter().enumerate().find(|(_, &n)| n > max) {
            return Err(Error::LimitExceeded {
                what: format!(
                    "workgroups along axis {axis} (max_compute_workgroups_per_dimension)"
                ),
                requested: u64::from(n),
                limit: u64::from(max),
            });
        }
        let (chunk, offset) = self.uniform_slot(params);
        let gpu = self.gpu.clone();
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: self.uniforms[chunk].buffer.buffer(),
                offset,
                size: std::num::NonZeroU64::new(params.len() as u64),
            }),
        }];
        for (binding, t) in tensors {
            entries.push(wgpu::BindGroupEntry {
                binding: *binding,
                resource: t.binding(),
            });
        }
        let bind_group = gpu.scoped(|| {
            gpu.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: pipeline.layout(),
                entries: &entries,
            })
        })?;
        if let Some(plan) = self.capture.as_mut() {
            // Capturing: keep the step for replay; the plan owns the buffers, nothing is encoded.
            for (_, t) in tensors {
                plan.buffers.push(t.buffer.clone());
            }
            plan.steps.push(Step {
                kernel: pipeline.clone(),
                pipeline: pipeline.pipeline().clone(),
                bind_group,
                workgroups,
            });
            self.dispatches += 1;
            return Ok(());
        }
        for (binding, t) in tensors {
            self.hold(t, pipeline.writes(*binding));
        }
        // Profiling puts each dispatch in a pass of its own between two timestamps.
        let profiling = self.stamps.is_some();
        if self.pass.is_none() || profiling {
            self.pass = None;
            let timestamp_writes = match (self.stamps.as_mut(), &self.timer) {
                (Some(stamps), _) => Some(stamps.next_pass(pipeline, workgroups)),
                (None, Some(t)) if self.passes == 0 => Some(wgpu::ComputePassTimestampWrites {
                    query_set: &t.query_set,
                    beginning_of_pass_write_index: Some(0),
                    end_of_pass_write_index: None,
                }),
                _ => None,
            };
            let label = if profiling {
                pipeline.pipeline_name()
            } else {
                "wgnn"
            };
            let pass = open_encoder(&mut self.encoder, &gpu)
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(label),
                    timestamp_writes,
                })
                .forget_lifetime();
            self.pass = Some(pass);
            self.passes += 1;
        }
        if let Some(pass) = self.pass.as_mut() {
            pass.set_pipeline(pipeline.pipeline());
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        }
        self.dispatches += 1;
        Ok(())
    }

    /// Reserves an aligned slot for `params` in a uniform chunk; the bytes are uploaded at submit.
    fn uniform_slot(&mut self, params: &[u8]) -> (usize, u64) {
        let align = u64::from(self.gpu.limits().min_uniform_buffer_offset_alignment).max(16);
        let need = params.len() as u64;
        let fits = self
            .uniforms
            .last()
            .is_some_and(|c| (c.data.len() as u64).next_multiple_of(align) + need <= UNIFORM_CHUNK);
        if !fits {
            let buffer = self.gpu.0.pool.acquire(
                &self.gpu.0.device,
                UNIFORM_CHUNK,
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                self.gpu.limits().max_buffer_size,
            );
            self.uniforms.push(UniformChunk {
                buffer,
                data: Vec::with_capacity(4096),
            });
        }
        let chunk = self.uniforms.len() - 1;
        let data = &mut self.uniforms[chunk].data;
        let offset = (data.len() as u64).next_multiple_of(align);
        data.resize(offset as usize, 0);
        data.extend_from_slice(params);
        (chunk, offset)
    }

    fn hold(&mut self, t: &Tensor, writes: bool) {
        self.keep_alive.push(Held::new(t.buffer.clone(), writes));
    }

    fn same_context(&self, op: &'static str, tensors: &[&Tensor]) -> Result<()> {
        if tensors.iter().any(|t| !t.gpu().same_context(&self.gpu)) {
            return Err(Error::ContextMismatch { op });
        }
        Ok(())
    }

    /// Records a copy of `src` into `dst` (same byte size).
    pub fn copy(&mut self, src: &Tensor, dst: &Tensor) -> Result<()> {
        self.refuse_in_capture("Batch::copy")?;
        self.same_context("Batch::copy", &[src, dst])?;
        if src.size_bytes() != dst.size_bytes() {
            return Err(Error::ShapeMismatch {
                op: "Batch::copy",
                details: format!("{:?} into {:?}", src.shape(), dst.shape()),
            });
        }
        self.end_pass();
        let len = src.size_bytes().next_multiple_of(4);
        self.encoder().copy_buffer_to_buffer(
            src.buffer.buffer(),
            src.offset_bytes(),
            dst.buffer.buffer(),
            dst.offset_bytes(),
            len,
        );
        self.hold(src, false);
        self.hold(dst, true);
        Ok(())
    }

    /// Records setting every element of `t` to zero, in order with the recorded work.
    pub fn clear(&mut self, t: &Tensor) -> Result<()> {
        self.refuse_in_capture("Batch::clear")?;
        self.same_context("Batch::clear", &[t])?;
        self.end_pass();
        let len = t.size_bytes().next_multiple_of(4).min(t.capacity_bytes());
        let offset = t.offset_bytes();
        self.encoder()
            .clear_buffer(t.buffer.buffer(), offset, Some(len));
        self.hold(t, true);
        Ok(())
    }

    /// Records an upload of `data` into `t`, in order with the recorded work: work recorded before
    /// it reads the old contents, work after it the new ones (unlike [`Tensor::write`], which lands
    /// before the whole submission). The bytes go through a pooled staging buffer.
    pub fn write<T: crate::dtype::Element>(&mut self, t: &Tensor, data: &[T]) -> Result<()> {
        self.refuse_in_capture("Batch::write")?;
        self.same_context("Batch::write", &[t])?;
        t.expect_dtype(T::DTYPE, "Batch::write")?;
        if data.len() != t.numel() {
            return Err(Error::DataLength {
                expected: t.numel(),
                found: data.len(),
            });
        }
        let mut bytes: Vec<u8> = bytemuck::cast_slice(data).to_vec();
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        let len = bytes.len() as u64;
        let staging = self.gpu.0.pool.acquire(
            &self.gpu.0.device,
            len,
            wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            self.gpu.limits().max_buffer_size,
        );
        self.end_pass();
        self.encoder().copy_buffer_to_buffer(
            staging.buffer(),
            0,
            t.buffer.buffer(),
            t.offset_bytes(),
            len,
        );
        self.hold(t, true);
        self.uploads.push((staging, bytes));
        Ok(())
    }

    /// Records a copy of the first `dst.size_bytes()` bytes of `src` into `dst`.
    pub(crate) fn copy_prefix(&mut self, src: &Tensor, dst: &Tensor) -> Result<()> {
        self.refuse_in_capture("Batch::copy_prefix")?;
        self.same_context("Batch::copy_prefix", &[src, dst])?;
        if dst.size_bytes() > src.size_bytes() {
            return Err(Error::ShapeMismatch {
                op: "Batch::copy_prefix",
                details: format!("{:?} into {:?}", src.shape(), dst.shape()),
            });
        }
        self.end_pass();
        let len = dst.size_bytes().next_multiple_of(4);
        self.encoder().copy_buffer_to_buffer(
            src.buffer.buffer(),
            src.offset_bytes(),
            dst.buffer.buffer(),
            dst.offset_bytes(),
            len,
        );
        self.hold(src, false);
        self.hold(dst, true);
        Ok(())
    }

    /// Submits the recorded work without waiting for it. Buffers the batch held go back to the pool;
    /// later work on them is ordered after this submission.
    pub fn submit(mut self) -> Result<()> {
        self.finish_and_submit().map(|_| ())
    }

    /// Submits and blocks until the GPU has finished the work.
    pub fn submit_and_wait(self) -> Result<()> {
        let gpu = self.gpu.clone();
        self.submit()?;
        gpu.wait()
    }

    fn finish_and_submit(&mut self) -> Result<wgpu::SubmissionIndex> {
        self.end_pass();
        if let Some(timer) = self.timer.take() {
            // An empty pass at the end stamps the time after all prior work.
            let first = (self.passes == 0).then_some(0);
            let pass = self
                .encoder()
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("wgnn timer end"),
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &timer.query_set,
                        beginning_of_pass_write_index: first,
                        end_of_pass_write_index: Some(1),
                    }),
                });
            drop(pass);
            let encoder = self.encoder();
            encoder.resolve_query_set(&timer.query_set, 0..2, &timer.resolve, 0);
            encoder.copy_buffer_to_buffer(&timer.resolve, 0, &timer.readback, 0, 16);
            self.timer = Some(timer);
        }
        if let Some(stamps) = self.stamps.as_mut() {
            stamps.resolve(open_encoder(&mut self.encoder, &self.gpu));
        }
        let gpu = self.gpu.clone();
        for chunk in &self.uniforms {
            gpu.queue()
                .write_buffer(chunk.buffer.buffer(), 0, &chunk.data);
        }
        // The staging buffers are this batch's alone: their writes land before its commands.
        for (staging, bytes) in &self.uploads {
            gpu.queue().write_buffer(staging.buffer(), 0, bytes);
        }
        let encoder = self.encoder.take();
        let index = gpu.scoped(|| gpu.queue().submit(encoder.map(|e| e.finish())))?;
        // Let wgpu reclaim finished work without blocking, so memory does not grow.
        let _ = gpu.device().poll(wgpu::PollType::Poll);
        self.keep_alive.clear();
        self.uniforms.clear();
        self.uploads.clear();
        gpu.take_uncaptured_error()?;
        Ok(index)
    }
}

/// The batch's encoder, made on first use.
fn open_encoder<'e>(
    slot: &'e mut Option<wgpu::CommandEncoder>,
    gpu: &Gpu,
) -> &'e mut wgpu::CommandEncoder {
    slot.get_or_insert_with(|| {
        gpu.device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgnn batch"),
            })
    })
}

struct TimerQueries {
    query_set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
}

/// Times GPU work: with timestamp queries where the adapter has them, else by the host clock around
/// a submission that is waited for. Reusable; it allocates its query buffers once.
pub struct GpuTimer {
    gpu: Gpu,
    queries: Option<TimerQueries>,
}

impl GpuTimer {
    /// A timer for work on `gpu`.
    pub fn new(gpu: &Gpu) -> Self {
        let queries = gpu.supports_timestamps().then(|| TimerQueries {
            query_set: gpu.device().create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("wgnn timer"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            }),
            resolve: gpu.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgnn timer resolve"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            readback: gpu.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgnn timer readback"),
                size: 16,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        });
        GpuTimer {
            gpu: gpu.clone(),
            queries,
        }
    }

    /// Whether the timer reads GPU timestamps (else the host clock).
    pub fn uses_timestamps(&self) -> bool {
        self.queries.is_some()
    }

    /// Records what `record` puts into a fresh batch with every dispatch in a compute pass of its
    /// own between two timestamps, submits it, waits, and returns each dispatch's GPU time. Needs
    /// timestamp queries ([`Gpu::supports_timestamps`]); one pass per dispatch adds a little to
    /// the whole, so compare dispatches with each other, not the sum with [`GpuTimer::time`].
    pub fn profile(
        &mut self,
        record: impl FnOnce(&mut Batch) -> Result<()>,
    ) -> Result<DispatchProfile> {
        let mut batch = Batch::new(&self.gpu);
        batch.stamps = Some(DispatchStamps::new(&self.gpu, "GpuTimer::profile")?);
        record(&mut batch)?;
        batch.finish_and_submit()?;
        let stamps = batch.stamps.take().expect("profiling batch");
        stamps.read(&self.gpu)
    }

    /// Records what `record` puts into a fresh batch, submits it, waits, and returns how long the
    /// GPU took.
    pub fn time(&mut self, record: impl FnOnce(&mut Batch) -> Result<()>) -> Result<Duration> {
        let mut batch = Batch::new(&self.gpu);
        batch.timer = self.queries.take();
        let recorded = record(&mut batch);
        let start = Instant::now();
        let submitted = recorded.and_then(|()| batch.finish_and_submit());
        self.queries = batch.timer.take();
        submitted?;
        self.gpu.wait()?;
        let host = start.elapsed();
        let Some(q) = &self.queries else {
            return Ok(host);
        };
        let slice = q.readback.slice(..);
        self.gpu.map_for_reading(&slice)?;
        let stamps: [u64; 2] = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::gpu_caused("reading the timestamps back", e))?;
            bytemuck::pod_read_unaligned(&view[..16])
        };
        q.readback.unmap();
        let ticks = stamps[1].saturating_sub(stamps[0]);
        let ns = ticks as f64 * f64::from(self.gpu.queue().get_timestamp_period());
        Ok(Duration::from_nanos(ns as u64))
    }
}

/// One dispatch's GPU time, from [`GpuTimer::profile`] or `InferenceSession::profile`.
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchTime {
    /// The kernel family (its file in `shaders/`).
    pub kernel: &'static str,
    /// The entry point.
    pub entry: &'static str,
    /// The override constants it was compiled with.
    pub constants: Vec<(&'static str, u32)>,
    /// Workgroups along x, y and z.
    pub workgroups: [u32; 3],
    /// Time between the timestamps before and after its pass.
    pub time: Duration,
}

/// Every dispatch of a profiled submission, in recording order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DispatchProfile {
    /// The dispatches.
    pub dispatches: Vec<DispatchTime>,
    /// From the first dispatch's start to the last one's end (copies between them included).
    pub span: Duration,
}

impl DispatchProfile {
    /// The dispatches' times added up.
    pub fn total(&self) -> Duration {
        self.dispatches.iter().map(|d| d.time).sum()
    }

    /// Time per entry point, largest first: (`kernel::entry`, dispatches, time).
    pub fn by_entry(&self) -> Vec<(String, usize, Duration)> {
        let mut by: Vec<(String, usize, Duration)> = Vec::new();
        for d in &self.dispatches {
            let name = format!("{}::{}", d.kernel, d.entry);
            match by.iter_mut().find(|(k, _, _)| *k == name) {
                Some(entry) => {
                    entry.1 += 1;
                    entry.2 += d.time;
                }
                None => by.push((name, 1, d.time)),
            }
        }
        by.sort_by_key(|entry| std::cmp::Reverse(entry.2));
        by
    }
}

/// Timestamp queries for one pass per dispatch: sets of [`DispatchStamps::PER_SET`] queries, made
/// as the dispatches come.
pub(crate) struct DispatchStamps {
    gpu: Gpu,
    sets: Vec<wgpu::QuerySet>,
    kernels: Vec<(Pipeline, [u32; 3])>,
    readback: Option<(wgpu::Buffer, wgpu::Buffer)>,
}

impl DispatchStamps {
    /// Queries per set: two per dispatch.
    const PER_SET: u32 = 256;

    pub(crate) fn new(gpu: &Gpu, op: &'static str) -> Result<Self> {
        if !gpu.supports_timestamps() {
            return Err(Error::UnsupportedFeature {
                feature: "TIMESTAMP_QUERY",
                op,
            });
        }
        Ok(DispatchStamps {
            gpu: gpu.clone(),
            sets: Vec::new(),
            kernels: Vec::new(),
            readback: None,
        })
    }

    /// The timestamp writes of the next dispatch's pass.
    pub(crate) fn next_pass(
        &mut self,
        kernel: &Pipeline,
        workgroups: [u32; 3],
    ) -> wgpu::ComputePassTimestampWrites<'_> {
        let index = self.kernels.len() as u32 * 2;
        let (set, slot) = ((index / Self::PER_SET) as usize, index % Self::PER_SET);
        if set == self.sets.len() {
            self.sets.push(
                self.gpu
                    .device()
                    .create_query_set(&wgpu::QuerySetDescriptor {
                        label: Some("wgnn dispatch profile"),
                        ty: wgpu::QueryType::Timestamp,
                        count: Self::PER_SET,
                    }),
            );
        }
        self.kernels.push((kernel.clone(), workgroups));
        wgpu::ComputePassTimestampWrites {
            query_set: &self.sets[set],
            beginning_of_pass_write_index: Some(slot),
            end_of_pass_write_index: Some(slot + 1),
        }
    }

    /// Records resolving every query into a readback buffer.
    pub(crate) fn resolve(&mut self, encoder: &mut wgpu::CommandEncoder) {
        let queries = self.kernels.len() as u64 * 2;
        if queries == 0 {
            return;
        }
        let bytes = queries * 8;
        let size = (self.sets.len() as u64 * u64::from(Self::PER_SET) * 8).max(bytes);
        let device = self.gpu.device();
        let resolve = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgnn profile resolve"),
            size,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgnn profile readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut left = queries as u32;
        for (i, set) in self.sets.iter().enumerate() {
            let used = left.min(Self::PER_SET);
            let offset = i as u64 * u64::from(Self::PER_SET) * 8;
            encoder.resolve_query_set(set, 0..used, &resolve, offset);
            left -= used;
        }
        encoder.copy_buffer_to_buffer(&resolve, 0, &readback, 0, bytes);
        self.readback = Some((resolve, readback));
    }

    /// Waits for the submission that resolved the queries and reads the times.
    pub(crate) fn read(self, gpu: &Gpu) -> Result<DispatchProfile> {
        let Some((_, readback)) = &self.readback else {
            return Ok(DispatchProfile::default());
        };
        let slice = readback.slice(..);
        gpu.map_for_reading(&slice)?;
        let ticks: Vec<u64> = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::gpu_caused("reading the timestamps back", e))?;
            bytemuck::pod_collect_to_vec(&view[..])
        };
        readback.unmap();
        let period = f64::from(gpu.queue().get_timestamp_period());
        let ns = |ticks: u64| Duration::from_nanos((ticks as f64 * period) as u64);
        let dispatches = self
            .kernels
            .iter()
            .zip(ticks.chunks_exact(2))
            .map(|((kernel, workgroups), pair)| DispatchTime {
                kernel: kernel.pipeline_name(),
                entry: kernel.entry(),
                constants: kernel.constants().to_vec(),
                workgroups: *workgroups,
                time: ns(pair[1].saturating_sub(pair[0])),
            })
            .collect();
        let span = match (ticks.first(), ticks.last()) {
            (Some(&first), Some(&last)) => ns(last.saturating_sub(first)),
            _ => Duration::ZERO,
        };
        Ok(DispatchProfile { dispatches, span })
    }
}

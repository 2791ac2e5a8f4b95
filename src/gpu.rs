//! The GPU context: adapter choice, device, features, limits, the pipeline cache and the buffer pool.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::pool::{BufferPool, PoolStats};
use crate::shaders::{KernelSpec, PipelineKey};
use crate::tune::{Candidate, Tuner, Tuning, TuningBudget, TuningRecord};

/// The device features wgnn uses when the adapter has them. None is required.
pub const WANTED_FEATURES: wgpu::Features = wgpu::Features::SHADER_F16
    .union(wgpu::Features::SUBGROUP)
    .union(wgpu::Features::SUBGROUP_BARRIER)
    .union(wgpu::Features::TIMESTAMP_QUERY);

/// How [`Gpu::with_options`] picks and sets up an adapter.
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Only adapters whose name contains this text (case-insensitive). Env: `WGNN_ADAPTER`.
    pub adapter_name: Option<String>,
    /// Among the usable adapters of the most preferred kind (discrete GPUs first), the one at
    /// this index, counted modulo their number: how each process of a multi-GPU node takes its
    /// own adapter (`wgnn::distributed` passes its local rank). Env: `WGNN_ADAPTER_INDEX`.
    pub adapter_index: Option<usize>,
    /// Only these backends. Env: `WGNN_BACKEND`, else `WGPU_BACKEND` (e.g. `vulkan`, `metal,dx12`).
    pub backends: Option<wgpu::Backends>,
    /// Keep naga's bounds clamping in shaders (slower; the kernels guard their own indices).
    /// Env: `WGNN_SHADER_CHECKS=1`.
    pub shader_runtime_checks: bool,
    /// Fill every new tensor's buffer with 0xFF bytes (NaN in f32 and f16, u32::MAX in U32), so an
    /// element a kernel fails to write shows up. For tests; costs an upload per tensor.
    /// Env: `WGNN_POISON=1`.
    pub poison_new_tensors: bool,
    /// Use only the portable code paths, even where the adapter has subgroups (tests run both).
    /// Env: `WGNN_PORTABLE=1`.
    pub portable_only: bool,
    /// Largest scratch buffer an op may allocate (conv's im2col matrix, split-K's partial sums);
    /// ops work in chunks to stay under it. Default: the storage-binding limit. Any value: one
    /// above the storage-binding limit is lowered to it, and an op whose smallest chunk does not
    /// fit returns [`Error::LimitExceeded`]. Env: `WGNN_SCRATCH_LIMIT` (bytes).
    pub scratch_limit_bytes: Option<u64>,
    /// Most bytes of idle buffers the pool keeps for reuse; past it, the least recently returned
    /// are freed. Default [`crate::DEFAULT_POOL_IDLE_LIMIT`] (512 MiB). Any value (0 keeps no idle
    /// buffer: every new tensor allocates). Keep it above one training step's working set, or
    /// steps will allocate. Env: `WGNN_POOL_IDLE_LIMIT` (bytes).
    pub pool_idle_limit_bytes: Option<u64>,
    /// Whether ops time their candidate kernels on first use ([`crate::tune`]). Env: `WGNN_TUNE`
    /// (`off` or `0` for [`Tuning::Off`], `session` for [`Tuning::Session`], `retune` for
    /// [`Tuning::Retune`]; anything else is [`Tuning::Auto`]).
    pub tuning: Tuning,
    /// How long tuning one shape class may take ([`TuningBudget`]; checked by
    /// [`Gpu::with_options`]).
    pub tuning_budget: TuningBudget,
    /// Where tuning choices persist. Default: [`crate::tune::default_cache_dir`].
    /// Env: `WGNN_TUNE_CACHE` (a directory).
    pub tuning_cache_dir: Option<PathBuf>,
}

impl GpuOptions {
    /// Options from the environment variables named on each field. A value that cannot be read
    /// (a limit that is not a number of bytes, an unknown `WGNN_TUNE` or backend) is ignored here;
    /// [`Self::from_env_checked`], which [`Gpu::new`] uses, refuses it.
    pub fn from_env() -> Self {
        Self::read_env().0
    }

    /// [`Self::from_env`], refusing a value it cannot read with [`Error::InvalidArgument`] that
    /// names the variable.
    pub fn from_env_checked() -> Result<Self> {
        let (options, problems) = Self::read_env();
        match problems.first() {
            None => Ok(options),
            Some(problem) => Err(Error::InvalidArgument {
                op: "GpuOptions::from_env",
                details: problem.clone(),
            }),
        }
    }

    fn read_env() -> (Self, Vec<String>) {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let mut problems = Vec::new();
        let mut bytes = |name: &str| {
            let value = var(name)?;
            let parsed = value.trim().parse::<u64>().ok();
            if parsed.is_none() {
                problems.push(format!("{name}={value:?} is not a number of bytes"));
            }
            parsed
        };
        let scratch_limit_bytes = bytes("WGNN_SCRATCH_LIMIT");
        let pool_idle_limit_bytes = bytes("WGNN_POOL_IDLE_LIMIT");
        let adapter_index = var("WGNN_ADAPTER_INDEX").and_then(|v| {
            let parsed = v.trim().parse::<usize>().ok();
            if parsed.is_none() {
                problems.push(format!("WGNN_ADAPTER_INDEX={v:?} is not an index"));
            }
            parsed
        });
        let tuning = match var("WGNN_TUNE").map(|v| v.trim().to_lowercase()).as_deref() {
            Some("off" | "0" | "false") => Tuning::Off,
            Some("session") => Tuning::Session,
            Some("retune") => Tuning::Retune,
            None | Some("auto" | "on" | "1" | "true") => Tuning::Auto,
            Some(other) => {
                problems.push(format!(
                    "WGNN_TUNE={other:?}: expected auto, off, session or retune"
                ));
                Tuning::Auto
            }
        };
        let backends = var("WGNN_BACKEND")
            .map(|v| ("WGNN_BACKEND", v))
            .or_else(|| var("WGPU_BACKEND").map(|v| ("WGPU_BACKEND", v)))
            .map(|(name, v)| {
                let b = wgpu::Backends::from_comma_list(&v);
                if b.is_empty() {
                    problems.push(format!(
                        "{name}={v:?} names no backend (vulkan, metal, dx12, gl)"
                    ));
                }
                b
            });
        let options = GpuOptions {
            adapter_name: var("WGNN_ADAPTER"),
            adapter_index,
            backends,
            shader_runtime_checks: var("WGNN_SHADER_CHECKS").is_some_and(|v| v != "0"),
            poison_new_tensors: var("WGNN_POISON").is_some_and(|v| v != "0"),
            portable_only: var("WGNN_PORTABLE").is_some_and(|v| v != "0"),
            scratch_limit_bytes,
            pool_idle_limit_bytes,
            tuning,
            tuning_cache_dir: var("WGNN_TUNE_CACHE").map(PathBuf::from),
            tuning_budget: TuningBudget::default(),
        };
        (options, problems)
    }
}

struct CachedPipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    /// Bindings the kernel may write (declared `read_write`).
    writes: &'static [u32],
    name: &'static str,
    entry: &'static str,
    constants: Vec<(&'static str, u32)>,
}

/// A compiled kernel, ready to dispatch. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Pipeline(Arc<CachedPipeline>);

impl Pipeline {
    pub(crate) fn pipeline(&self) -> &wgpu::ComputePipeline {
        &self.0.pipeline
    }
    pub(crate) fn layout(&self) -> &wgpu::BindGroupLayout {
        &self.0.layout
    }
    pub(crate) fn pipeline_name(&self) -> &'static str {
        self.0.name
    }
    pub(crate) fn entry(&self) -> &'static str {
        self.0.entry
    }
    pub(crate) fn constants(&self) -> &[(&'static str, u32)] {
        &self.0.constants
    }
    pub(crate) fn writes(&self, binding: u32) -> bool {
        self.0.writes.contains(&binding)
    }
}

pub(crate) struct GpuInner {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    features: wgpu::Features,
    limits: wgpu::Limits,
    shader_runtime_checks: bool,
    pub(crate) poison_new_tensors: bool,
    portable_only: bool,
    scratch_limit_bytes: Option<u64>,
    pub(crate) pool: Arc<BufferPool>,
    modules: Mutex<HashMap<(&'static str, DType, bool), wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, Pipeline>>,
    uncaptured: Arc<Mutex<Option<Error>>>,
    lost: Arc<Mutex<Option<String>>>,
    pub(crate) tuner: Tuner,
}

/// A GPU device and queue with wgnn's caches. Cheap to clone: clones share one device.
#[derive(Clone)]
pub struct Gpu(pub(crate) Arc<GpuInner>);

impl fmt::Debug for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.0.info.name)
            .field("backend", &self.0.info.backend)
            .finish_non_exhaustive()
    }
}

fn type_rank(info: &wgpu::AdapterInfo) -> u32 {
    let device = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    // GL lacks much of what compute needs; prefer any native API over it.
    let backend = u32::from(info.backend == wgpu::Backend::Gl);
    backend * 10 + device
}

impl Gpu {
    /// The best adapter (discrete, then integrated, then software), narrowed by the environment
    /// variables of [`GpuOptions::from_env_checked`] (a value it cannot read is an
    /// [`Error::InvalidArgument`]).
    pub fn new() -> Result<Self> {
        Self::with_options(GpuOptions::from_env_checked()?)
    }

    /// The best adapter that `options` allow.
    pub fn with_options(options: GpuOptions) -> Result<Self> {
        options.tuning_budget.validate()?;
        let backends = options.backends.unwrap_or(wgpu::Backends::all());
        let wanted = options.adapter_name.as_ref().map(|n| n.to_lowercase());
        let usable = |a: &wgpu::Adapter| {
            let compute = a
                .get_downlevel_capabilities()
                .flags
                .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS);
            let named = wanted
                .as_ref()
                .is_none_or(|w| a.get_info().name.to_lowercase().contains(w));
            compute && named
        };
        // Native APIs first; GL (EGL) is opened only where none of them has a usable adapter:
        // it is slow to start and prints its own messages.
        let mut found = Vec::new();
        let mut adapter = None;
        for group in [backends - wgpu::Backends::GL, backends & wgpu::Backends::GL] {
            if group.is_empty() || adapter.is_some() {
                continue;
            }
            let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
            desc.backends = group;
            let instance = wgpu::Instance::new(desc);
            let adapters = pollster::block_on(instance.enumerate_adapters(group));
            found.extend(adapters.iter().map(|a| {
                let i = a.get_info();
                format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
            }));
            let mut candidates: Vec<wgpu::Adapter> =
                adapters.into_iter().filter(|a| usable(a)).collect();
            candidates.sort_by_key(|a| type_rank(&a.get_info()));
            if let Some(best) = candidates.first().map(|a| type_rank(&a.get_info())) {
                candidates.retain(|a| type_rank(&a.get_info()) == best);
                let index = options.adapter_index.unwrap_or(0) % candidates.len();
                adapter = Some(candidates.swap_remove(index));
            }
        }
        let adapter = adapter.ok_or_else(|| Error::NoAdapter {
            details: format!(
                "asked for backends {backends:?}, name {:?}; found [{}]",
                options.adapter_name.as_deref().unwrap_or("any"),
                found.join(", ")
            ),
        })?;
        let features = adapter.features() & WANTED_FEATURES;
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("wgnn"),
            required_features: features,
            required_limits: limits,
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::RequestDevice(e.to_string()))?;
        let gpu = Self::build(device, queue, &options);
        // wgnn owns this device: keep errors that escape every error scope instead of panicking,
        // and remember a loss of the device so that every later call reports it.
        let slot = gpu.0.uncaptured.clone();
        gpu.0
            .device
            .on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                if let Ok(mut s) = slot.lock() {
                    s.get_or_insert_with(|| e.into());
                }
            }));
        let lost = gpu.0.lost.clone();
        gpu.0
            .device
            .set_device_lost_callback(move |reason, message| {
                if let Ok(mut s) = lost.lock() {
                    s.get_or_insert_with(|| format!("{reason:?}: {message}"));
                }
            });
        Ok(gpu)
    }

    /// Wraps a device and queue that the application already owns (a renderer, a game). wgnn uses
    /// the features and limits the device was created with, and leaves its error handler alone.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        Self::build(device, queue, &GpuOptions::from_env())
    }

    fn build(device: wgpu::Device, queue: wgpu::Queue, options: &GpuOptions) -> Self {
        let info = device.adapter_info();
        let cache_dir = match options.tuning {
            Tuning::Auto | Tuning::Retune => options
                .tuning_cache_dir
                .clone()
                .or_else(crate::tune::default_cache_dir),
            Tuning::Session | Tuning::Off => None,
        };
        let tuner = Tuner::new(&info, options.tuning, options.tuning_budget, cache_dir);
        Gpu(Arc::new(GpuInner {
            tuner,
            info: device.adapter_info(),
            features: device.features(),
            limits: device.limits(),
            device,
            queue,
            shader_runtime_checks: options.shader_runtime_checks,
            poison_new_tensors: options.poison_new_tensors,
            portable_only: options.portable_only,
            scratch_limit_bytes: options.scratch_limit_bytes,
            pool: Arc::new(BufferPool::with_idle_limit(
                options
                    .pool_idle_limit_bytes
                    .unwrap_or(crate::pool::DEFAULT_POOL_IDLE_LIMIT),
            )),
            modules: Mutex::default(),
            pipelines: Mutex::default(),
            uncaptured: Arc::default(),
            lost: Arc::default(),
        }))
    }

    /// The wgpu device, for interop.
    pub fn device(&self) -> &wgpu::Device {
        &self.0.device
    }
    /// The wgpu queue, for interop.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.0.queue
    }
    /// Name, vendor, backend and driver of the adapter.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.0.info
    }
    /// The features enabled on the device.
    pub fn features(&self) -> wgpu::Features {
        self.0.features
    }
    /// The limits in force on the device (the adapter's own, when wgnn made the device).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.0.limits
    }
    /// Whether f16 arithmetic and storage in shaders is available.
    pub fn supports_f16(&self) -> bool {
        self.0.features.contains(wgpu::Features::SHADER_F16)
    }
    /// Whether kernels with a subgroup variant use it (the adapter has subgroups and the portable
    /// paths were not forced).
    pub fn uses_subgroups(&self) -> bool {
        self.0.features.contains(wgpu::Features::SUBGROUP) && !self.0.portable_only
    }
    /// The most bytes one scratch buffer may take (see [`GpuOptions::scratch_limit_bytes`]).
    pub fn scratch_limit_bytes(&self) -> u64 {
        let binding = self.0.limits.max_storage_buffer_binding_size;
        self.0
            .scratch_limit_bytes
            .map_or(binding, |l| l.min(binding))
    }
    /// Whether GPU timestamps can be taken (see [`crate::GpuTimer`]).
    pub fn supports_timestamps(&self) -> bool {
        self.0.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }
    /// What the buffer pool has done so far.
    pub fn pool_stats(&self) -> PoolStats {
        self.0.pool.stats()
    }
    /// Frees the buffers idling in the pool.
    pub fn trim_pool(&self) {
        self.0.pool.trim()
    }
    /// Sets the most bytes of idle buffers the pool keeps (see
    /// [`GpuOptions::pool_idle_limit_bytes`]) and frees what is past it now.
    pub fn set_pool_idle_limit(&self, bytes: u64) {
        self.0.pool.set_idle_limit(bytes)
    }
    /// Compiled pipelines in the cache.
    pub fn cached_pipelines(&self) -> usize {
        self.0.pipelines.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Whether ops time their candidate kernels ([`crate::tune`]).
    pub fn tuning(&self) -> Tuning {
        self.0.tuner.mode()
    }
    /// The file where this adapter's tuning choices persist, if any.
    pub fn tuning_cache_file(&self) -> Option<&Path> {
        self.0.tuner.file()
    }
    /// The choices known so far (read from the cache file or tuned in this process): shape class
    /// → candidate.
    pub fn tuning_choices(&self) -> BTreeMap<String, String> {
        self.0.tuner.choices()
    }
    /// Forgets every tuning choice, in this process and in the cache file: each class is timed
    /// again on its next use (after a driver change, or choices made while the machine was busy).
    pub fn forget_tuning(&self) {
        self.0.tuner.forget()
    }
    /// The tunings done in this process, with each candidate's time.
    pub fn tuning_records(&self) -> Vec<TuningRecord> {
        self.0.tuner.records()
    }
    /// Pins every selection of `C`'s op family to `candidate` where it fits the shape (else the
    /// family's default runs); `None` returns the family to tuning. For tests and experiments:
    /// `gpu.force_candidate(Some(wgnn::ops::matmul::MatmulCandidate::Gemv))`.
    pub fn force_candidate<C: Candidate>(&self, candidate: Option<C>) {
        self.0.tuner.force(candidate);
    }

    /// Whether two handles share one context (device, caches and pool).
    pub fn same_context(&self, other: &Gpu) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Maps `slice` (of a `MAP_READ` buffer) for reading once the work submitted before is
    /// done: blocks until it is. The caller reads `get_mapped_range` and unmaps.
    pub(crate) fn map_for_reading(&self, slice: &wgpu::BufferSlice) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|e| Error::DeviceLost(format!("readback callback lost: {e}")))?
            .map_err(|e| Error::gpu_caused("readback failed", e))
    }

    /// Blocks until all submitted work is done.
    pub fn wait(&self) -> Result<()> {
        let polled = self.0.device.poll(wgpu::PollType::wait_indefinitely());
        self.take_uncaptured_error()?;
        polled.map_err(|e| Error::DeviceLost(e.to_string()))?;
        Ok(())
    }

    /// An error that wgpu reported outside any error scope, or the device's loss, if either
    /// happened.
    pub(crate) fn take_uncaptured_error(&self) -> Result<()> {
        if let Some(reason) = self.0.lost.lock().ok().and_then(|s| s.clone()) {
            return Err(Error::DeviceLost(reason));
        }
        match self.0.uncaptured.lock().ok().and_then(|mut s| s.take()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Runs `f` inside a validation and out-of-memory error scope and returns what they caught.
    pub(crate) fn scoped<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let oom = self
            .0
            .device
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self
            .0
            .device
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        let validation = pollster::block_on(validation.pop());
        let oom = pollster::block_on(oom.pop());
        match validation.or(oom) {
            Some(e) => Err(e.into()),
            None => Ok(value),
        }
    }

    /// [`Error::DeviceLost`] once the device was lost; every call that makes or fills a buffer
    /// asks first.
    pub(crate) fn check_alive(&self) -> Result<()> {
        match self.0.lost.lock().ok().and_then(|s| s.clone()) {
            Some(reason) => Err(Error::DeviceLost(reason)),
            None => Ok(()),
        }
    }

    pub(crate) fn check_limit(&self, what: &str, requested: u64, limit: u64) -> Result<()> {
        if requested > limit {
            return Err(Error::LimitExceeded {
                what: what.to_string(),
                requested,
                limit,
            });
        }
        Ok(())
    }

    /// The pipeline for `key`, compiled on first use and cached after.
    pub(crate) fn pipeline(&self, key: PipelineKey) -> Result<Pipeline> {
        if let Some(p) = self
            .0
            .pipelines
            .lock()
            .ok()
            .and_then(|c| c.get(&key).cloned())
        {
            return Ok(p);
        }
        if key.dtype == DType::F16 && !self.supports_f16() {
            return Err(Error::UnsupportedFeature {
                feature: "SHADER_F16",
                op: key.kernel.name,
            });
        }
        let subgroups = key.kernel.has_subgroup_variant() && self.uses_subgroups();
        let module = self.module(key.kernel, key.dtype, subgroups)?;
        let constants: Vec<(&str, f64)> =
            key.constants.iter().map(|&(n, v)| (n, v as f64)).collect();
        let pipeline = self.scoped(|| {
            self.0
                .device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(key.kernel.name),
                    layout: None,
                    module: &module,
                    entry_point: Some(key.entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants: &constants,
                        // Every kernel writes its workgroup memory before reading it.
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                })
        })?;
        let layout = pipeline.get_bind_group_layout(0);
        let p = Pipeline(Arc::new(CachedPipeline {
            pipeline,
            layout,
            writes: key.kernel.writes,
            name: key.kernel.name,
            entry: key.entry,
            constants: key.constants.clone(),
        }));
        if let Ok(mut cache) = self.0.pipelines.lock() {
            cache.insert(key, p.clone());
        }
        Ok(p)
    }

    fn module(
        &self,
        kernel: &'static KernelSpec,
        dtype: DType,
        subgroups: bool,
    ) -> Result<wgpu::ShaderModule> {
        let key = (kernel.name, dtype, subgroups);
        if let Some(m) = self
            .0
            .modules
            .lock()
            .ok()
            .and_then(|c| c.get(&key).cloned())
        {
            return Ok(m);
        }
        let source = crate::shaders::source(kernel, dtype, subgroups);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(kernel.name),
            source: wgpu::ShaderSource::Wgsl(source),
        };
        let module = self.scoped(|| {
            if self.0.shader_runtime_checks {
                self.0.device.create_shader_module(desc)
            } else {
                // SAFETY: every wgnn kernel bounds-checks its own indices against the shapes the
                // host validated; the tests run ragged shapes with guard regions after each output.
                unsafe {
                    self.0
                        .device
                        .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
                }
            }
        })?;
        if let Ok(mut cache) = self.0.modules.lock() {
            cache.insert(key, module.clone());
        }
        Ok(module)
    }
}

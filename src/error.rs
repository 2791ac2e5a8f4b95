//! The one error type every fallible wgnn call returns.

use std::fmt;

/// How to get a Vulkan driver on a Linux machine that has no GPU.
pub const SOFTWARE_VULKAN_HINT: &str = "no GPU adapter was found. On Linux without a GPU install \
software Vulkan (lavapipe): `sudo apt-get install mesa-vulkan-drivers`; elsewhere install your GPU's \
Vulkan, Metal or DX12 driver. WGNN_ADAPTER and WGNN_BACKEND (or WGPU_BACKEND) narrow the choice.";

/// Everything that can go wrong in wgnn, as data the caller can match on.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// No adapter matched; the message says how to install software Vulkan.
    NoAdapter {
        /// What was asked for (backend and name filters) and what was found.
        details: String,
    },
    /// The adapter refused to create a device.
    RequestDevice(String),
    /// Operand shapes do not fit together.
    ShapeMismatch {
        /// The op that rejected its input.
        op: &'static str,
        /// What did not fit.
        details: String,
    },
    /// A tensor with no elements (some dimension is zero, or no dimensions given where some are needed).
    EmptyTensor {
        /// The op or constructor that rejected it.
        op: &'static str,
    },
    /// Operand data types differ or are not supported by the op.
    DtypeMismatch {
        /// The op that rejected its input.
        op: &'static str,
        /// What did not fit.
        details: String,
    },
    /// A scalar argument is out of its range (a negative learning rate, a smoothing above 1, ...).
    InvalidArgument {
        /// The op that rejected it.
        op: &'static str,
        /// What is wrong.
        details: String,
    },
    /// A size is past what the adapter allows.
    LimitExceeded {
        /// Which limit.
        what: String,
        /// What the call needed.
        requested: u64,
        /// What the adapter allows.
        limit: u64,
    },
    /// The op needs a device feature this adapter lacks.
    UnsupportedFeature {
        /// The wgpu feature.
        feature: &'static str,
        /// The op that needs it.
        op: &'static str,
    },
    /// Host data does not match the tensor it is meant for.
    DataLength {
        /// Elements the shape holds.
        expected: usize,
        /// Elements given.
        found: usize,
    },
    /// Tensors of different [`crate::Gpu`] contexts met in one op or batch.
    ContextMismatch {
        /// The op or call that rejected them.
        op: &'static str,
    },
    /// An output shares a buffer with an input of the same op.
    Aliasing {
        /// The op that rejected it.
        op: &'static str,
        /// Which tensors alias.
        details: String,
    },
    /// The tensor is written by recorded work that has not been submitted: reading it now would
    /// return stale contents (or, for a host write, overtake the recorded work). Submit the batch.
    PendingWork {
        /// The call that was refused.
        op: &'static str,
    },
    /// The device ran out of memory.
    OutOfMemory(String),
    /// wgpu rejected a call as invalid (a bug in wgnn, or an application-owned device without a
    /// feature or limit the kernel needs).
    Validation(String),
    /// The device was lost (driver reset, GPU removed, watchdog); the context cannot be used again.
    DeviceLost(String),
    /// A model file is truncated, corrupt, or does not match its layers.
    ModelFile {
        /// What is wrong with it.
        details: String,
    },
    /// Reading or writing a file failed.
    Io {
        /// What was being read or written (the path, and what it was for).
        details: String,
        /// The operating system's error, where there was one.
        source: Option<Cause>,
    },
    /// A request was refused because the serving queue is full.
    Overloaded {
        /// The queue's capacity.
        capacity: usize,
    },
    /// A request was not answered before its deadline (the batcher's `request_timeout`, or the
    /// GPU did not finish a replay in the session's `timeout`).
    Timeout {
        /// The call that gave up.
        op: &'static str,
        /// How long it had.
        after: std::time::Duration,
    },
    /// The serving component was shut down; it accepts no more requests.
    ShutDown {
        /// The call that was refused.
        op: &'static str,
    },
    /// The caller cancelled the request before it finished.
    Cancelled {
        /// The call whose request was cancelled.
        op: &'static str,
    },
    /// Communication between the processes of a distributed job failed (`wgnn::distributed`).
    Communication {
        /// Which collective or check failed, and on which rank.
        details: String,
    },
    /// The HTTP server (`wgnn::serve`) could not start or serve: binding its address, its
    /// metrics registry, a model of its repository.
    Serving {
        /// What failed.
        details: String,
        /// The underlying error, where there was one.
        source: Option<Cause>,
    },
    /// A worker thread could not be started.
    Thread {
        /// Which worker.
        what: &'static str,
        /// The operating system's error.
        source: Cause,
    },
    /// Any other error reported by wgpu or the driver (mapping a buffer, an internal error).
    Gpu {
        /// What failed.
        details: String,
        /// wgpu's error, where there was one.
        source: Option<Cause>,
    },
}

/// The underlying error of an [`Error`] (an I/O error, wgpu's error), shared so that `Error`
/// stays `Clone`; two causes compare equal when their messages do.
#[derive(Debug, Clone)]
pub struct Cause(std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>);

impl Cause {
    /// Wraps `error`.
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Cause(std::sync::Arc::new(error))
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Error {
    /// An [`Error::Io`] about `details` caused by `source`.
    pub fn io(details: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            details: details.into(),
            source: Some(Cause::new(source)),
        }
    }

    /// An [`Error::Gpu`] with no underlying error.
    pub fn gpu(details: impl Into<String>) -> Self {
        Error::Gpu {
            details: details.into(),
            source: None,
        }
    }

    /// An [`Error::Gpu`] about `details` caused by `source` (wgpu's error).
    pub fn gpu_caused(
        details: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Gpu {
            details: details.into(),
            source: Some(Cause::new(source)),
        }
    }

    /// An [`Error::Communication`].
    pub fn communication(details: impl Into<String>) -> Self {
        Error::Communication {
            details: details.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoAdapter { details } => write!(f, "{SOFTWARE_VULKAN_HINT} ({details})"),
            Error::RequestDevice(e) => write!(f, "the adapter refused to create a device: {e}"),
            Error::ShapeMismatch { op, details } => write!(f, "{op}: shape mismatch: {details}"),
            Error::EmptyTensor { op } => write!(f, "{op}: tensors must have at least one element"),
            Error::DtypeMismatch { op, details } => write!(f, "{op}: dtype mismatch: {details}"),
            Error::InvalidArgument { op, details } => {
                write!(f, "{op}: invalid argument: {details}")
            }
            Error::LimitExceeded {
                what,
                requested,
                limit,
            } => write!(
                f,
                "{what}: {requested} is past the adapter's limit of {limit}"
            ),
            Error::UnsupportedFeature { feature, op } => {
                write!(
                    f,
                    "{op} needs the adapter feature {feature}, which this adapter lacks"
                )
            }
            Error::DataLength { expected, found } => write!(
                f,
                "data has {found} elements but the shape holds {expected}"
            ),
            Error::ContextMismatch { op } => write!(
                f,
                "{op}: tensors belong to different Gpu contexts (another device)"
            ),
            Error::Aliasing { op, details } => write!(f, "{op}: aliasing: {details}"),
            Error::PendingWork { op } => write!(
                f,
                "{op}: the tensor is written by recorded work that has not been submitted; \
                 submit its batch first"
            ),
            Error::OutOfMemory(e) => write!(f, "the GPU is out of memory: {e}"),
            Error::Validation(e) => write!(f, "wgpu validation error: {e}"),
            Error::DeviceLost(e) => write!(f, "the GPU device was lost: {e}"),
            Error::ModelFile { details } => write!(f, "model file: {details}"),
            Error::Io { details, source } => match source {
                Some(cause) => write!(f, "I/O error: {details}: {cause}"),
                None => write!(f, "I/O error: {details}"),
            },
            Error::Overloaded { capacity } => write!(
                f,
                "the serving queue is full ({capacity} requests waiting): try again later"
            ),
            Error::Timeout { op, after } => {
                write!(f, "{op}: no answer within the deadline of {after:?}")
            }
            Error::ShutDown { op } => write!(f, "{op}: shut down, no more requests are accepted"),
            Error::Cancelled { op } => write!(f, "{op}: cancelled by the caller"),
            Error::Communication { details } => write!(f, "distributed job: {details}"),
            Error::Serving { details, source } => match source {
                Some(cause) => write!(f, "server: {details}: {cause}"),
                None => write!(f, "server: {details}"),
            },
            Error::Thread { what, source } => write!(f, "could not start {what}: {source}"),
            Error::Gpu { details, source } => match source {
                Some(cause) => write!(f, "GPU error: {details}: {cause}"),
                None => write!(f, "GPU error: {details}"),
            },
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let cause = match self {
            Error::Io { source, .. }
            | Error::Serving { source, .. }
            | Error::Gpu { source, .. } => source.as_ref(),
            Error::Thread { source, .. } => Some(source),
            _ => None,
        };
        cause.map(|c| c.0.as_ref() as &(dyn std::error::Error + 'static))
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<wgpu::Error> for Error {
    fn from(e: wgpu::Error) -> Self {
        match e {
            wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory(e.to_string()),
            wgpu::Error::Validation { .. } => Error::Validation(e.to_string()),
            wgpu::Error::Internal { .. } => Error::Gpu {
                details: "wgpu internal error".into(),
                source: Some(Cause::new(e)),
            },
        }
    }
}

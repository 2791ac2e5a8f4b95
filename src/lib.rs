//! # wgnn
//!
//! GPU compute kernels for neural-network training and inference, written in WGSL on wgpu, so they
//! run on any Vulkan, Metal or DX12 GPU, and on software Vulkan where there is no GPU.
//!
//! ```no_run
//! use wgnn::{ops, Batch, Gpu, Tensor};
//! # fn main() -> wgnn::Result<()> {
//! let gpu = Gpu::new()?;
//! let a = Tensor::from_slice(&gpu, &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])?;
//! let b = Tensor::from_slice(&gpu, &[1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0], &[3, 2])?;
//! let mut batch = Batch::new(&gpu);
//! let c = ops::matmul(&mut batch, &a, &b, &Default::default())?; // recorded, not run
//! batch.submit()?; // one submission for everything recorded
//! assert_eq!(c.to_vec::<f32>()?, vec![4.0, 5.0, 10.0, 11.0]);
//! # Ok(()) }
//! ```
//!
//! Layers: [`Gpu`] (adapter, device, pipeline cache, buffer pool) → [`Tensor`] (a pooled buffer with a
//! shape and dtype) → [`ops`] (check shapes, record dispatches into a [`Batch`]) → `shaders/`
//! (one WGSL file per kernel family). [`reference`](mod@reference) holds the same ops on the CPU, the oracle of
//! every test.

#![warn(missing_docs)]

mod batch;
pub mod data;
#[cfg(feature = "mpi")]
pub mod distributed;
mod dtype;
mod error;
pub mod generate;
mod gpu;
pub mod infer;
pub mod nn;
pub mod ops;
mod pool;
pub mod reference;
#[cfg(feature = "serve")]
pub mod serve;
pub mod shaders;
mod tensor;
pub mod tune;

pub use batch::{Batch, DispatchProfile, DispatchTime, GpuTimer, Plan};
pub use dtype::{DType, Element, Precision};
pub use error::{Cause, Error, Result, SOFTWARE_VULKAN_HINT};
pub use gpu::{Gpu, GpuOptions, WANTED_FEATURES};
pub use ops::Activation;
pub use pool::{PoolStats, DEFAULT_POOL_IDLE_LIMIT};
pub use tensor::Tensor;

pub use half::f16;
pub use wgpu;

/// The README's code, compiled as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

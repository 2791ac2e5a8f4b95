//! `wgnn-serve`'s library half: a model repository served over HTTP in the Open Inference Protocol
//! (KServe v2 REST) with its binary tensor extension, Triton's model configuration and generate
//! extensions, Prometheus metrics, limits, a deadline on every read and graceful shutdown. Behind
//! the `serve` cargo feature.
//!
//! A repository is a directory of `<name>/<version>/model.safetensors` (the highest numeric
//! version is served), each with an optional `config.json` beside it ([`ModelConfig`]). A
//! classifier is served through an [`crate::infer::InferenceSession`] and a dynamic
//! [`crate::infer::Batcher`] (a request of n samples is one submission); a language model through
//! a generation [`crate::generate::Engine`].
//!
//! Where to look, from the top: `server` (the routes' table, `serve`), `routes` (health, metadata,
//! config, infer; refusals), `generation` (generate and its stream), `connection` (accepting,
//! read deadlines, graceful shutdown), `state` (what handlers share), `metrics` (`/metrics`),
//! `repository` (the models and their `config.json`), `protocol` (the messages' types, binary
//! tensors), `options` (the server's settings).

mod connection;
mod generation;
mod metrics;
mod options;
mod protocol;
mod repository;
mod routes;
mod server;
mod state;

pub use options::ServerOptions;
pub use protocol::HEADER_LENGTH;
pub use repository::{ModelConfig, WeightPrecision};
pub use server::{router, serve};
pub use state::ServerState;

/// Samples one infer request may carry.
pub const MAX_INFER_SAMPLES: usize = 4096;

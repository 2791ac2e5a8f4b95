//! What every handler shares: the served models, the server's settings, the metrics.

use std::collections::BTreeMap;
use std::path::Path;

use super::metrics::Metrics;
use super::options::ServerOptions;
use super::repository::{load_repository, Served, ServedModel};
use crate::error::Result;
use crate::gpu::Gpu;

/// The models and the server's settings: what every handler reads.
pub struct ServerState {
    pub(crate) models: BTreeMap<String, ServedModel>,
    pub(crate) options: ServerOptions,
    pub(crate) metrics: Metrics,
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState")
            .field("models", &self.models.keys().collect::<Vec<_>>())
            .field("options", &self.options)
            .finish()
    }
}

impl ServerState {
    /// Loads every model of the repository at `dir` on `gpu` (checked, warmed), ready to serve.
    /// An error names the model and its file. A repository with no model directory loads (and
    /// is never ready); [`Self::is_empty`] says so.
    pub fn load(gpu: &Gpu, dir: &Path, options: ServerOptions) -> Result<Self> {
        options.validate()?;
        let models = load_repository(gpu, dir, &options)?;
        Ok(ServerState {
            metrics: Metrics::new(&models)?,
            models,
            options,
        })
    }

    /// Whether the repository held no model (such a server is never ready).
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// One line per model: its name, version, kind, shapes, serving settings and file.
    pub fn describe(&self) -> Vec<String> {
        self.models.values().map(ServedModel::describe).collect()
    }

    /// The settings the server runs with.
    pub fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// Stops every model's batcher and engine: requests they hold are answered or refused.
    pub fn shutdown(&self) {
        for m in self.models.values() {
            match &m.served {
                Served::Classifier { batcher, .. } => {
                    batcher.shutdown();
                }
                Served::Language { engine, .. } => engine.shutdown(),
            }
        }
    }
}

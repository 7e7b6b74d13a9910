//! The model file (`model.file`): a LightGBM text model read at start (a
//! bad file refuses the start), then watched; only a model that parses and
//! names catalogue features only replaces the one in use (a bad one is
//! logged and counted, and the running model stays).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info};

use crate::engine::model::{Model, ModelError};
use crate::engine::Engine;
use crate::telemetry;

/// Reads and checks the model at `path`.
pub fn load_file(path: &Path) -> Result<Model, ModelError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Format {
        file: name.clone(),
        message: format!("cannot read it: {e}"),
    })?;
    Model::parse(&name, &text)
}

fn activate(engine: &Engine, m: Model, path: &Path) {
    info!(
        file = %path.display(),
        sha256 = %m.sha256,
        trees = m.trees(),
        features = m.features.len(),
        "model active"
    );
    if let Some(old) = engine.model() {
        metrics::gauge!(telemetry::MODEL_INFO, "sha256" => old.sha256.clone()).set(0.0);
    }
    metrics::gauge!(telemetry::MODEL_INFO, "sha256" => m.sha256.clone()).set(1.0);
    engine.set_model(Some(m));
    metrics::counter!(telemetry::MODEL_RELOADS, "result" => "ok").increment(1);
}

/// Loads the model at start into `engine`.
pub fn load_at_start(engine: &Engine, path: &Path) -> Result<(), ModelError> {
    activate(engine, load_file(path)?, path);
    Ok(())
}

/// Loads `path` and swaps it in if valid; `false` when it was refused.
pub fn reload(engine: &Engine, path: &Path) -> bool {
    match load_file(path) {
        Ok(m) => {
            activate(engine, m, path);
            true
        }
        Err(e) => {
            error!(error = %e, "model refused; the model in use stays");
            metrics::counter!(telemetry::MODEL_RELOADS, "result" => "refused").increment(1);
            false
        }
    }
}

/// Watches `path` every `every` until the task is aborted.
pub fn spawn_watcher(
    engine: Arc<Engine>,
    path: PathBuf,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    crate::reload::watch(path, every, move |p| {
        reload(&engine, p);
    })
}

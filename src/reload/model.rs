//! The model files: `model.file` (the model the rules read as
//! `model.score`) and `model.shadow_file` (scored beside it and reported in
//! verdicts, never read by the rules). Each is a LightGBM text model read
//! at start (a bad file refuses the start), then watched; only a model that
//! parses and names catalogue features only replaces the one in use in its
//! role (a bad one is logged and counted, and the running model stays).
//! Promoting a shadow model is moving its file to `model.file`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info};

use crate::engine::model::{Model, ModelError};
use crate::engine::Engine;
use crate::telemetry;

/// Which model slot a file feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `model.file`: the rules read it as `model.score`.
    Active,
    /// `model.shadow_file`: reported in verdicts only.
    Shadow,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Shadow => "shadow",
        }
    }

    fn current(self, engine: &Engine) -> Option<Arc<Model>> {
        match self {
            Role::Active => engine.model(),
            Role::Shadow => engine.shadow_model(),
        }
    }

    fn set(self, engine: &Engine, m: Model) {
        match self {
            Role::Active => engine.set_model(Some(m)),
            Role::Shadow => engine.set_shadow_model(Some(m)),
        }
    }
}

/// Reads and checks the model at `path`.
pub fn load_file(path: &Path) -> Result<Model, ModelError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Format {
        file: name.clone(),
        message: format!("cannot read it: {e}"),
    })?;
    Model::parse(&name, &text)
}

fn activate(engine: &Engine, role: Role, m: Model, path: &Path) {
    info!(
        role = role.as_str(),
        file = %path.display(),
        version = %m.version,
        sha256 = %m.sha256,
        trees = m.trees(),
        features = m.features.len(),
        "model in use"
    );
    if let Some(old) = role.current(engine) {
        metrics::gauge!(telemetry::MODEL_INFO, "role" => role.as_str(), "sha256" => old.sha256.clone())
            .set(0.0);
    }
    metrics::gauge!(telemetry::MODEL_INFO, "role" => role.as_str(), "sha256" => m.sha256.clone())
        .set(1.0);
    role.set(engine, m);
    metrics::counter!(telemetry::MODEL_RELOADS, "role" => role.as_str(), "result" => "ok")
        .increment(1);
}

/// Loads the model at start into `engine`, in `role`.
pub fn load_at_start(engine: &Engine, role: Role, path: &Path) -> Result<(), ModelError> {
    activate(engine, role, load_file(path)?, path);
    Ok(())
}

/// Loads `path` and swaps it in if valid; `false` when it was refused.
pub fn reload(engine: &Engine, role: Role, path: &Path) -> bool {
    match load_file(path) {
        Ok(m) => {
            activate(engine, role, m, path);
            true
        }
        Err(e) => {
            error!(role = role.as_str(), error = %e, "model refused; the model in use stays");
            metrics::counter!(telemetry::MODEL_RELOADS, "role" => role.as_str(), "result" => "refused")
                .increment(1);
            false
        }
    }
}

/// Watches `path` every `every` until the task is aborted.
pub fn spawn_watcher(
    engine: Arc<Engine>,
    role: Role,
    path: PathBuf,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    crate::reload::watch(path, every, move |p| {
        reload(&engine, role, p);
    })
}

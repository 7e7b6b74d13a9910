//! Wiring: builds the one [`Engine`], serves HTTP, runs the stream, and
//! drains on shutdown. `shutdown` is an argument (main passes SIGTERM/ctrl-c,
//! tests pass whatever they like).

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::info;

use crate::config::Config;
use crate::engine::rules::reload;
use crate::engine::Engine;
use crate::serve::{self, HttpState};
use crate::stream::{self, StreamParts};
use crate::telemetry::{self, Metrics};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Stream(#[from] stream::StreamError),
    #[error(transparent)]
    Rules(#[from] crate::engine::rules::file::LoadError),
    #[error(transparent)]
    Blocklist(#[from] crate::reload::blocklist::BlocklistFileError),
}

/// Runs the service until `shutdown` resolves and the stream has drained.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()> + Send) -> Result<(), AppError> {
    let handle = telemetry::install();
    let metrics = Metrics::new();
    metrics.register_zeroes();
    let engine = Arc::new(Engine::new(cfg.engine()));
    let _sweeper = engine.spawn_sweeper(std::time::Duration::from_secs(
        cfg.features.sweep_interval_s,
    ));
    let watcher = if cfg.rules.file.is_empty() {
        None
    } else {
        let path = std::path::PathBuf::from(&cfg.rules.file);
        reload::load_at_start(&engine, &path)?;
        Some(reload::spawn_watcher(
            engine.clone(),
            path,
            std::time::Duration::from_millis(cfg.rules.watch_interval_ms),
        ))
    };
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_http_tx, mut stop_http_rx) = watch::channel(false);
    let http = match cfg.http_listen() {
        Some(addr) => {
            let state = HttpState {
                metrics: handle,
                ready: ready.clone(),
            };
            let (bound, task) = serve::spawn(addr, state, async move {
                let _ = stop_http_rx.wait_for(|v| *v).await;
            })
            .await
            .map_err(|source| AppError::Listen { addr, source })?;
            info!(addr = %bound, "serving /metrics, /healthz, /readyz");
            Some(task)
        }
        None => None,
    };
    let list_watcher = if cfg.blocklist.files.is_empty() {
        None
    } else {
        Some(crate::reload::blocklist::start(
            engine.clone(),
            cfg.blocklist.files.iter().map(Into::into).collect(),
            cfg.blocklist.max_bad_lines,
            cfg.blocklist.country_code.clone(),
            std::time::Duration::from_millis(cfg.blocklist.watch_interval_ms),
        )?)
    };
    let parts = StreamParts {
        engine,
        metrics,
        ready,
        applied: Default::default(),
    };
    let result = stream::run(&cfg, parts, shutdown).await;
    if let Some(w) = list_watcher {
        w.abort();
    }
    if let Some(w) = watcher {
        w.abort();
    }
    let _ = stop_http_tx.send(true);
    if let Some(task) = http {
        let _ = task.await;
    }
    result.map_err(Into::into)
}

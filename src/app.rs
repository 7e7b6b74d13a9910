//! Wiring: builds the one [`Engine`], serves HTTP, runs the stream, and
//! drains on shutdown. `shutdown` is an argument (main passes SIGTERM/ctrl-c,
//! tests pass whatever they like).

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::info;

use crate::config::Config;
use crate::engine::Engine;
use crate::reload::rules as reload;
use crate::serve::idempotency::RecentVerdicts;
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
    #[error(transparent)]
    Currencies(#[from] crate::engine::currencies::CurrencyError),
    #[error(transparent)]
    Model(#[from] crate::engine::model::ModelError),
    #[error(transparent)]
    Serve(#[from] serve::ServeError),
    #[error(transparent)]
    State(#[from] crate::state::FollowerError),
    #[error(transparent)]
    Snapshot(#[from] crate::state::snapshot::SnapshotError),
}

/// The addresses the service listens on (useful with port 0).
#[derive(Debug, Clone, Copy, Default)]
pub struct Bound {
    /// `/metrics`, `/healthz`, `/readyz`.
    pub http: Option<std::net::SocketAddr>,
    /// The in-line gRPC API.
    pub grpc: Option<std::net::SocketAddr>,
    /// The in-line HTTP API.
    pub inline_http: Option<std::net::SocketAddr>,
}

/// Runs the service until `shutdown` resolves and the stream has drained.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()> + Send) -> Result<(), AppError> {
    run_with(cfg, shutdown, None).await
}

/// [`run`], reporting the bound addresses on `bound` once every listener is
/// up and the rules and blocklist are loaded.
pub async fn run_with(
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send,
    bound: Option<tokio::sync::oneshot::Sender<Bound>>,
) -> Result<(), AppError> {
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
    let currency_watcher = if cfg.currencies.file.is_empty() {
        None
    } else {
        let path = std::path::PathBuf::from(&cfg.currencies.file);
        crate::reload::currencies::load_at_start(&engine, &path)?;
        Some(crate::reload::currencies::spawn_watcher(
            engine.clone(),
            path,
            std::time::Duration::from_millis(cfg.currencies.watch_interval_ms),
        ))
    };
    let mut model_watchers = Vec::new();
    for (role, file) in [
        (crate::reload::model::Role::Active, &cfg.model.file),
        (crate::reload::model::Role::Shadow, &cfg.model.shadow_file),
    ] {
        if file.is_empty() {
            continue;
        }
        let path = std::path::PathBuf::from(file);
        crate::reload::model::load_at_start(&engine, role, &path)?;
        model_watchers.push(crate::reload::model::spawn_watcher(
            engine.clone(),
            role,
            path,
            std::time::Duration::from_millis(cfg.model.watch_interval_ms),
        ));
    }
    telemetry::register_rules(&engine.rules());
    let ready = Arc::new(serve::ready::Readiness::new(cfg.inline.enabled));
    let (stop_http_tx, mut stop_http_rx) = watch::channel(false);
    let mut addrs = Bound::default();
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
            addrs.http = Some(bound);
            Some(task)
        }
        None => None,
    };
    let list = start_blocklist(&cfg, &engine).await?;
    // The in-line API's recent verdicts: its own, and those of other
    // instances (state log), so a retry on any instance gets the first.
    let recent = cfg
        .inline
        .enabled
        .then(|| Arc::new(RecentVerdicts::new(cfg.inline.idempotency_capacity)));
    // Per payments partition, the next offset not yet in the store: noted
    // by the stream and the follower, read by the snapshot writer.
    let applied: Arc<crate::stream::Applied> = Default::default();
    // The state log: replayed before anything is scored (bounded wait).
    let state = if cfg.kafka.state_topic.is_empty() {
        None
    } else {
        if let Err(e) = crate::state::ensure_topics(&cfg).await {
            tracing::warn!(error = %e, topic = %cfg.kafka.state_topic, "cannot check or create the state topics");
        }
        let origin = crate::state::new_origin();
        let positions = Arc::new(crate::state::Positions::default());
        let follower = crate::state::spawn_follower(
            &cfg,
            engine.clone(),
            origin.clone(),
            positions.clone(),
            recent.clone(),
            applied.clone(),
        )?;
        // The writer role follows payments partition 0, so only a stream
        // instance writes snapshots.
        let snapshots = if cfg.kafka.snapshot_topic.is_empty() || !cfg.stream_enabled() {
            None
        } else {
            Some(crate::state::SnapshotWriter::spawn(
                &cfg,
                engine.clone(),
                positions,
                applied.clone(),
                origin.clone(),
                cfg.kafka.delivery == crate::config::Delivery::ExactlyOnce,
            )?)
        };
        let limit = std::time::Duration::from_millis(cfg.kafka.state_catch_up_ms);
        if !follower.wait_caught_up(limit).await {
            tracing::warn!(
                topic = %cfg.kafka.state_topic,
                "state log not replayed in kafka.state_catch_up_ms; starting with what was read"
            );
        }
        ready.set_state_loaded();
        Some((origin, follower, snapshots))
    };
    if state.is_none() && (!cfg.stream_enabled() || cfg.kafka.warmup_lookback_ms == 0) {
        // Nothing to load (with a warm-up, its first run sets this).
        ready.set_state_loaded();
    }
    // One stop signal for the in-line API, fired by `shutdown` (or by the
    // stream ending on its own).
    let (stop_inline, stop_inline_rx) = watch::channel(false);
    let inline = if cfg.inline.enabled {
        let link = serve::inline::InlineState {
            recent: recent
                .clone()
                .unwrap_or_else(|| Arc::new(RecentVerdicts::new(cfg.inline.idempotency_capacity))),
            sink: state
                .as_ref()
                .map(|(origin, _, _)| serve::audit::StateSink {
                    topic: cfg.kafka.state_topic.clone(),
                    origin: origin.clone(),
                }),
        };
        let servers = serve::inline::start(&cfg, engine.clone(), link, stop_inline_rx).await?;
        addrs.grpc = servers.grpc_addr;
        addrs.inline_http = servers.http_addr;
        ready.set_inline_up();
        Some(servers)
    } else {
        None
    };
    if let Some(tx) = bound {
        let _ = tx.send(addrs);
    }
    let signal = {
        let (stop, ready, inline) = (&stop_inline, ready.clone(), inline.as_ref());
        let delay = std::time::Duration::from_millis(cfg.inline.shutdown_delay_ms);
        async move {
            shutdown.await;
            ready.set_stopping();
            if let Some(i) = inline {
                i.draining().await;
                if !delay.is_zero() {
                    // Still serving: a load balancer polling /readyz sees 503
                    // and stops sending before the listeners close.
                    info!(
                        seconds = delay.as_secs_f64(),
                        "shutting down: not ready, still serving for inline.shutdown_delay_ms"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
            info!("shutting down: draining in-flight calls");
            let _ = stop.send(true);
        }
    };
    let result = if cfg.stream_enabled() {
        let parts = StreamParts {
            engine,
            metrics,
            ready: ready.clone(),
            applied,
            state: state
                .as_ref()
                .map(|(origin, f, snapshots)| stream::StateLink {
                    origin: origin.clone(),
                    follower: f.handle(),
                    snapshots: snapshots.as_ref().map(|s| s.handle()),
                }),
        };
        stream::run(&cfg, parts, signal).await
    } else {
        // In-line only: rules and blocklist are loaded; there is no warm-up.
        info!("in-line only (kafka.payments_topic is empty): ready");
        signal.await;
        Ok(())
    };
    let _ = stop_inline.send(true);
    if let Some(i) = inline {
        i.finish().await;
    }
    list.stop().await;
    if let Some((_, follower, snapshots)) = state {
        let _ = tokio::task::spawn_blocking(move || {
            drop(snapshots);
            drop(follower);
        })
        .await;
    }
    for w in currency_watcher.into_iter().chain(model_watchers) {
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

/// The running blocklist sources; [`ListSources::stop`] ends them.
struct ListSources {
    files: Option<tokio::task::JoinHandle<()>>,
    topic: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

impl ListSources {
    async fn stop(self) {
        if let Some(f) = self.files {
            f.abort();
        }
        if let Some((stop, thread)) = self.topic {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Loads the blocklist files (a bad one refuses the start), starts watching
/// them, and follows the list topic from the beginning, waiting (up to
/// `blocklist.topic_catch_up_ms`) for it to catch up before scoring starts.
async fn start_blocklist(cfg: &Config, engine: &Arc<Engine>) -> Result<ListSources, AppError> {
    use crate::reload::blocklist as bl;
    let b = &cfg.blocklist;
    if b.files.is_empty() && b.topic.is_empty() {
        return Ok(ListSources {
            files: None,
            topic: None,
        });
    }
    let sources = Arc::new(
        bl::Sources::new(
            engine.clone(),
            b.files.iter().map(Into::into).collect(),
            b.max_bad_lines,
            b.country_code.clone(),
        )
        .with_reload_duty(b.reload_duty_cycle),
    );
    // Reading and building a list of millions of entries takes seconds: on
    // a blocking thread, not an async worker (the /metrics and /healthz
    // server shares them).
    {
        let s = sources.clone();
        tokio::task::spawn_blocking(move || s.reload_files())
            .await
            .map_err(|e| {
                AppError::Blocklist(crate::reload::blocklist::BlocklistFileError::Io {
                    file: "(start-up load: the loading thread failed)".into(),
                    source: std::io::Error::other(e.to_string()),
                })
            })??;
    }
    let files = (!b.files.is_empty()).then(|| {
        bl::watch_files(
            sources.clone(),
            std::time::Duration::from_millis(b.watch_interval_ms),
        )
    });
    let topic = if b.topic.is_empty() {
        None
    } else {
        let mut client = stream::base_config(cfg);
        client
            .set(
                "group.id",
                format!("fraudline-{}-blocklist", cfg.kafka.group_id),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest");
        let caught_up = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = bl::follow_topic(
            sources.clone(),
            client,
            b.topic.clone(),
            caught_up.clone(),
            stop.clone(),
        );
        let started = std::time::Instant::now();
        while !caught_up.load(std::sync::atomic::Ordering::SeqCst)
            && started.elapsed() < std::time::Duration::from_millis(b.topic_catch_up_ms)
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if !caught_up.load(std::sync::atomic::Ordering::SeqCst) {
            tracing::warn!(topic = %b.topic, "blocklist topic not caught up in time; scoring starts with what is loaded");
        }
        Some((stop, thread))
    };
    Ok(ListSources { files, topic })
}

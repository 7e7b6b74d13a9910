//! Starts the in-line API (gRPC and/or HTTP listeners on one [`Scorer`]) and
//! stops it: stop accepting, drain in-flight calls, flush the audit trail.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::audit::{self, AuditTask};
use super::auth::{TlsFiles, Tokens};
use super::grpc::GrpcScoring;
use super::idempotency::RecentVerdicts;
use super::scorer::Scorer;
use super::ServeError;
use crate::config::Config;
use crate::engine::Engine;

/// The running in-line API.
pub struct InlineServers {
    pub grpc_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    health: Option<tonic_health::server::HealthReporter>,
    audit: Option<AuditTask>,
    drain: Duration,
    /// Re-reads the bearer-token file when it changes.
    token_watch: Option<tokio::task::JoinHandle<()>>,
}

/// Binds the configured listeners and starts serving. The servers stop
/// accepting when `stop` turns true; [`InlineServers::finish`] then waits
/// for them to drain.
/// What the in-line API shares with the state layer: the recent-verdict
/// cache (the follower adds the in-line verdicts of other instances) and,
/// with a state log, where scored payments go.
pub struct InlineState {
    pub recent: Arc<RecentVerdicts>,
    pub sink: Option<audit::StateSink>,
}

pub async fn start(
    cfg: &Config,
    engine: Arc<Engine>,
    state: InlineState,
    stop: watch::Receiver<bool>,
) -> Result<InlineServers, ServeError> {
    let i = &cfg.inline;
    let tokens = Tokens::load(&i.bearer_tokens_file)?;
    // A rotated token file takes effect within two seconds, no restart.
    let token_watch = tokens
        .clone()
        .map(|t| t.watch(i.bearer_tokens_file.clone(), Duration::from_secs(2)));
    let tls = TlsFiles::load(i)?;
    let drain = Duration::from_millis(i.drain_timeout_ms);
    // One worker for the audit trail and the state log: both off the
    // response path, spilled while Kafka is away.
    let (audit_handle, audit_task) = if i.audit || state.sink.is_some() {
        let mut client = crate::stream::base_config(cfg);
        for (k, v) in &cfg.kafka.producer {
            client.set(k, v);
        }
        let (h, t) = audit::spawn(
            client,
            i.audit.then(|| cfg.kafka.verdicts_topic.clone()),
            state.sink,
            i.audit_buffer,
            std::path::Path::new(&i.audit_spill_dir),
            i.audit_spill_max_bytes,
        )?;
        (Some(h), Some(t))
    } else {
        (None, None)
    };
    let scorer = Arc::new(Scorer::new(
        engine,
        i,
        cfg.limits(),
        cfg.engine.explain_in_verdicts,
        audit_handle,
        state.recent,
    ));
    let mut tasks = Vec::new();
    let mut grpc_addr = None;
    let mut health = None;
    if let Ok(addr) = i.grpc_listen.parse::<SocketAddr>() {
        let incoming = tonic::transport::server::TcpIncoming::bind(addr)
            .map_err(|source| ServeError::Listen { addr, source })?
            .with_nodelay(Some(true));
        let bound = incoming
            .local_addr()
            .map_err(|source| ServeError::Listen { addr, source })?;
        let (reporter, health_service) = tonic_health::server::health_reporter();
        reporter
            .set_serving::<crate::proto::scoring_server::ScoringServer<GrpcScoring>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ServeError::Grpc(e.to_string()))?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| ServeError::Grpc(e.to_string()))?;
        let mut builder = tonic::transport::Server::builder();
        if let Some(t) = &tls {
            builder = builder
                .tls_config(t.tonic_config())
                .map_err(|e| ServeError::Grpc(e.to_string()))?;
        }
        let router = builder
            .layer(tower::util::MapRequestLayer::new(
                super::grpc::stamp_arrival::<tonic::body::Body>,
            ))
            .layer(tower::util::MapResponseLayer::new(
                super::grpc::undecodable_is_invalid_argument::<tonic::body::Body>,
            ))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(
                GrpcScoring::new(scorer.clone(), tokens.clone()).into_server(i.max_request_bytes),
            );
        let mut stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let r = router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "in-line gRPC server stopped");
            }
        }));
        tracing::info!(addr = %bound, tls = tls.is_some(), mtls = !i.tls_client_ca.is_empty(), "in-line gRPC API: fraudline.v1.Scoring/Score, health, reflection");
        grpc_addr = Some(bound);
        health = Some(reporter);
    }
    let mut http_addr = None;
    if let Ok(addr) = i.http_listen.parse::<SocketAddr>() {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Listen { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| ServeError::Listen { addr, source })?;
        let rustls = match &tls {
            Some(t) => Some(t.rustls_config()?),
            None => None,
        };
        let router = super::http_api::router(scorer.clone(), tokens.clone()).merge(
            crate::iso20022::http::router(
                scorer.clone(),
                tokens.clone(),
                crate::iso20022::Answering::from_config(&cfg.iso20022),
            ),
        );
        tasks.push(tokio::spawn(super::http_api::serve(
            listener,
            router,
            rustls,
            stop.clone(),
            drain,
            super::http_api::Bounds {
                max_connections: i.max_connections,
                header_read_timeout: Duration::from_millis(i.header_read_timeout_ms),
            },
        )));
        tracing::info!(addr = %bound, tls = tls.is_some(), "in-line HTTP API: POST /v1/score, POST /v1/iso20022/pacs.008");
        http_addr = Some(bound);
    }
    Ok(InlineServers {
        grpc_addr,
        http_addr,
        tasks,
        health,
        audit: audit_task,
        drain,
        token_watch,
    })
}

impl InlineServers {
    /// Marks the gRPC health service NOT_SERVING (the stop signal follows).
    pub async fn draining(&self) {
        if let Some(h) = &self.health {
            h.set_not_serving::<crate::proto::scoring_server::ScoringServer<GrpcScoring>>()
                .await;
        }
    }

    /// Waits (up to the drain timeout) for the listeners to finish their
    /// calls, then flushes the audit trail.
    pub async fn finish(self) {
        if let Some(w) = &self.token_watch {
            w.abort();
        }
        let deadline = tokio::time::Instant::now() + self.drain;
        for mut t in self.tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                tracing::warn!(
                    "in-line API: calls still open after inline.drain_timeout_ms; closing"
                );
                t.abort();
            }
        }
        if let Some(a) = self.audit {
            a.close(Duration::from_secs(5)).await;
        }
    }
}

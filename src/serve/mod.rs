//! The service's HTTP endpoints: `/metrics` (Prometheus text), `/healthz`
//! (the process is alive) and `/readyz` (it is consuming and may take
//! traffic; false while starting and while draining); and the in-line
//! scoring API for payment switches (`[inline]`):
//!
//! | file | what it owns |
//! | --- | --- |
//! | [`inline`] | starts the gRPC and HTTP listeners on one [`scorer::Scorer`], drains them |
//! | [`scorer`] | validate, replay, admit or shed, score, remember, audit: the one code path |
//! | [`grpc`] | `fraudline.v1.Scoring/Score`, health, reflection |
//! | [`http_api`] | `POST /v1/score`, RFC 9457 problems |
//! | [`admission`] | bounded concurrency and queue, deadlines, shedding |
//! | [`idempotency`] | the bounded recent-verdict cache |
//! | [`audit`] | in-line verdicts to the verdicts topic, with a spill file |
//! | [`auth`] | bearer tokens, TLS and mTLS (rustls) |

pub mod admission;
pub mod audit;
pub mod auth;
pub mod framing;
pub mod grpc;
pub mod http_api;
pub mod idempotency;
pub mod inline;
pub mod proto_json;
pub mod ready;
pub mod scorer;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

/// Why the in-line API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    #[error("gRPC server set-up: {0}")]
    Grpc(String),
}

#[derive(Clone)]
pub struct HttpState {
    pub metrics: PrometheusHandle,
    pub ready: Arc<ready::Readiness>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/readyz/stream", get(readyz_stream))
        .route("/readyz/inline", get(readyz_inline))
        .with_state(state)
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::render(&s.metrics),
    )
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    answer(s.ready.overall())
}

async fn readyz_stream(State(s): State<HttpState>) -> impl IntoResponse {
    answer(s.ready.path(ready::Path::Stream))
}

async fn readyz_inline(State(s): State<HttpState>) -> impl IntoResponse {
    answer(s.ready.path(ready::Path::Inline))
}

fn answer(ready: bool) -> (StatusCode, &'static str) {
    if ready {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Binds `addr` and serves until `shutdown` resolves. Returns the bound
/// address (useful with port 0) and the server task.
pub async fn spawn(
    addr: SocketAddr,
    state: HttpState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let r = axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown)
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "http server stopped");
        }
    });
    Ok((bound, task))
}

//! `POST /v1/score`: the in-line API over HTTP/JSON. The body is a
//! `fraudline.v1.PaymentEvent` in protobuf's JSON mapping (the same JSON as
//! a Kafka JSON event: [`crate::event`]); the answer is the
//! `fraudline.v1.Verdict` in protobuf's canonical JSON ([`super::proto_json`]),
//! or an RFC 9457 problem object (`application/problem+json`) with a stable
//! `code` and, for input errors, the `field` at fault. Every 4xx is a
//! problem object: a wrong method (405), an unknown path (404), and the
//! listener's own framing errors (see [`super::framing`]).
//!
//! Content: `content-type: application/json` (parameter `charset=utf-8`
//! only) or none; anything else is 415. `content-encoding: gzip` is
//! inflated, bounded by the same byte limit after inflating; any other
//! encoding is 415 with `accept-encoding: gzip`.
//!
//! Headers in: `authorization: Bearer <token>` (when tokens are configured),
//! `x-fraudline-timeout-ms` (the caller's budget). Headers out:
//! `fraudline-replay: true` (a retry answered from the cache),
//! `fraudline-degraded: overload|deadline` (the overload policy's answer).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use tokio::sync::watch;

use super::auth::Tokens;
use super::scorer::{Outcome, ScoreError, Scorer};
use crate::event::{self, DecodeError, Format};
use crate::telemetry::InlineMetrics;

/// The budget header: milliseconds the caller will wait.
pub const TIMEOUT_HEADER: &str = "x-fraudline-timeout-ms";

#[derive(Clone)]
struct Api {
    scorer: Arc<Scorer>,
    tokens: Option<Arc<Tokens>>,
    metrics: InlineMetrics,
}

pub fn router(scorer: Arc<Scorer>, tokens: Option<Arc<Tokens>>) -> Router {
    let metrics = InlineMetrics::new("http");
    metrics.register_zeroes();
    Router::new()
        .route(
            "/v1/score",
            post(score).fallback(|| async {
                let mut r = problem(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "the in-line API takes POST /v1/score",
                    None,
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
                r
            }),
        )
        .fallback(|| async {
            problem(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; the in-line API is POST /v1/score (and POST /v1/iso20022/pacs.008)",
                None,
            )
        })
        .with_state(Api {
            scorer,
            tokens,
            metrics,
        })
}

/// An RFC 9457 problem response; `field` names the input at fault.
fn problem(status: StatusCode, code: &str, detail: &str, field: Option<&str>) -> Response {
    problem_at(status, code, detail, field.map(|f| ("field", f)))
}

/// An RFC 9457 problem response (`application/problem+json`) with a stable
/// `code`; `at` is an extension member naming what is at fault (`field`
/// here, the XML `path` on the ISO 20022 endpoint).
pub(crate) fn problem_at(
    status: StatusCode,
    code: &str,
    detail: &str,
    at: Option<(&str, &str)>,
) -> Response {
    let mut body = serde_json::json!({
        "type": format!("urn:fraudline:problem:{code}"),
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "code": code,
        "detail": detail,
    });
    if let Some((k, v)) = at {
        body[k] = v.into();
    }
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}

/// The checks every in-line HTTP endpoint makes before reading a body:
/// 401 without a valid bearer token (when tokens are configured).
pub(crate) fn authorize(tokens: Option<&Tokens>, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(t) = tokens else { return Ok(()) };
    if t.allows(
        headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
    ) {
        return Ok(());
    }
    let mut r = problem(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "a valid bearer token is required (authorization: Bearer <token>)",
        None,
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Err(Box::new(r))
}

/// The caller's budget ([`budget`]), then the body within it
/// ([`read_body`]).
pub(crate) async fn budget_and_body(
    scorer: &Scorer,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Result<(Option<Duration>, axum::body::Bytes), Box<Response>> {
    let budget = budget(headers)?;
    let bytes = read_body(scorer, body, budget, started).await?;
    Ok((budget, bytes))
}

/// The caller's budget from [`TIMEOUT_HEADER`] (`None` without one); 400
/// when it is not a whole number of milliseconds up to 10 minutes.
fn budget(headers: &HeaderMap) -> Result<Option<Duration>, Box<Response>> {
    let Some(v) = headers.get(TIMEOUT_HEADER) else {
        return Ok(None);
    };
    match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
        Some(ms) if ms <= 600_000 => Ok(Some(Duration::from_millis(ms))),
        _ => Err(Box::new(problem(
            StatusCode::BAD_REQUEST,
            "invalid_timeout",
            "x-fraudline-timeout-ms must be an integer number of milliseconds, at most 600000",
            Some(TIMEOUT_HEADER),
        ))),
    }
}

/// The whole body, within `limits.max_message_bytes` (413 past it) and the
/// call's deadline counted from the head's arrival (408 past it): a stalled
/// body gets its answer while the caller still waits for one, instead of
/// holding the connection.
async fn read_body(
    scorer: &Scorer,
    body: Body,
    budget: Option<Duration>,
    started: Instant,
) -> Result<axum::body::Bytes, Box<Response>> {
    let max = scorer.limits().max_message_bytes;
    let left = budget
        .unwrap_or_else(|| scorer.default_budget())
        .saturating_sub(started.elapsed());
    match tokio::time::timeout(left, axum::body::to_bytes(body, max)).await {
        Err(_) => Err(Box::new(problem(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "the request body did not arrive within the call's deadline",
            None,
        ))),
        Ok(Err(_)) => Err(Box::new(problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &format!("the body is over the {max}-byte limit"),
            None,
        ))),
        Ok(Ok(b)) => Ok(b),
    }
}

async fn score(State(api): State<Api>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let call = api.metrics.call(started);
    let r = handle(&api, &headers, body, started).await;
    call.answered(r.status().as_str());
    r
}

fn decode_problem(e: &DecodeError) -> Response {
    let status = match e {
        DecodeError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    problem(status, e.kind(), &e.to_string(), e.field())
}

async fn handle(api: &Api, headers: &HeaderMap, body: Body, started: Instant) -> Response {
    if let Err(r) = authorize(api.tokens.as_deref(), headers) {
        return *r;
    }
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        if !is_json(ct.as_bytes()) {
            return problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON: content-type application/json (charset utf-8, if any)",
                Some("content-type"),
            );
        }
    }
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .map(HeaderValue::as_bytes)
    {
        None => false,
        Some(e) if e.eq_ignore_ascii_case(b"identity") => false,
        Some(e) if e.eq_ignore_ascii_case(b"gzip") || e.eq_ignore_ascii_case(b"x-gzip") => true,
        Some(_) => {
            let mut r = problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                "the body may be sent as is or with content-encoding gzip",
                Some("content-encoding"),
            );
            r.headers_mut()
                .insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
            return r;
        }
    };
    let (budget, bytes) = match budget_and_body(&api.scorer, headers, body, started).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let limits = *api.scorer.limits();
    let bytes = if gzip {
        match gunzip(&bytes, limits.max_message_bytes) {
            Ok(b) => axum::body::Bytes::from(b),
            Err(r) => return *r,
        }
    } else {
        bytes
    };
    let wire = match event::decode_wire(&bytes, Some(Format::Json), &limits) {
        Ok(w) => w,
        Err(e) => return decode_problem(&e),
    };
    match api.scorer.score(wire, started, budget, &api.metrics).await {
        Ok(a) => {
            let body = super::proto_json::verdict(&api.scorer.wire(&a.decided)).to_string();
            let mut r = (StatusCode::OK, body).into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            match a.outcome {
                Outcome::Scored => {}
                Outcome::Replay => {
                    h.insert("fraudline-replay", HeaderValue::from_static("true"));
                }
                Outcome::Degraded(shed) => {
                    h.insert(
                        "fraudline-degraded",
                        HeaderValue::from_static(shed.as_str()),
                    );
                }
            }
            r
        }
        Err(ScoreError::Invalid(e)) => decode_problem(&e),
        Err(e @ ScoreError::Reused(_)) => problem(
            StatusCode::CONFLICT,
            "event_id_reused",
            &e.to_string(),
            Some("event_id"),
        ),
    }
}

/// Whether a content type is the JSON this API reads: `application/json`,
/// with no parameter but `charset=utf-8` (any case, spaces allowed).
fn is_json(ct: &[u8]) -> bool {
    let Ok(ct) = std::str::from_utf8(ct) else {
        return false;
    };
    let mut parts = ct.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return false;
    }
    parts.all(|p| {
        let p = p.trim();
        p.is_empty()
            || p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("charset")
                    && v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
            })
    })
}

/// Inflates a gzip body, refusing one that inflates past `limit` bytes (a
/// small body must not become a large one in memory: a "zip bomb").
fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, Box<Response>> {
    use std::io::Read;
    let mut out = Vec::new();
    let read = flate2::read::GzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut out);
    match read {
        Err(e) => Err(Box::new(problem(
            StatusCode::BAD_REQUEST,
            "bad_encoding",
            &format!("content-encoding gzip: the body does not inflate: {e}"),
            Some("content-encoding"),
        ))),
        Ok(n) if n > limit => Err(Box::new(problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &format!("the body inflates past the {limit}-byte limit"),
            None,
        ))),
        Ok(_) => Ok(out),
    }
}

/// Serves `router` on `listener` (TLS when `tls` is given) until `stop`
/// turns true, then stops accepting and lets in-flight calls finish.
/// The listener's bounds in time and count (see `inline.max_connections`,
/// `inline.header_read_timeout_ms`).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
    bounds: Bounds,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // The head of every request (the first, and each next one on a kept-
    // alive connection) must arrive within the timeout: a client that
    // stalls or idles is cut, and its file descriptor freed.
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.header_read_timeout);
    http.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(bounds.header_read_timeout)
        .keep_alive_timeout(bounds.header_read_timeout);
    let http = Arc::new(http);
    let slots = Arc::new(tokio::sync::Semaphore::new(bounds.max_connections));
    let refused = metrics::counter!(crate::telemetry::INLINE_CONN_REFUSED, "protocol" => "http");
    refused.increment(0);
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "in-line HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        // Past the bound, closed at once: a flood of idle connections costs
        // the callers nothing but this.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.increment(1);
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let svc = TowerToHyperService::new(router.clone());
        let http = http.clone();
        let first_bytes = bounds.header_read_timeout;
        match &acceptor {
            None => {
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    // The HTTP/1-or-2 detection waits for the first bytes
                    // with no timer of its own: a connection that sends
                    // nothing is cut here.
                    let mut b = [0u8; 1];
                    match tokio::time::timeout(first_bytes, tcp.peek(&mut b)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return,
                    }
                    let conn = http
                        .serve_connection_with_upgrades(
                            TokioIo::new(super::framing::FramingProblems::new(tcp)),
                            svc,
                        )
                        .into_owned();
                    let _ = watcher.watch(conn).await;
                    drop(slot);
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(
                        first_bytes.max(Duration::from_secs(1)),
                        acceptor.accept(tcp),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "in-line HTTP TLS handshake refused");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = http
                        .serve_connection_with_upgrades(
                            TokioIo::new(super::framing::FramingProblems::new(tls)),
                            svc,
                        )
                        .into_owned();
                    let _ = watcher.watch(conn).await;
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-line HTTP: calls still open after the drain timeout");
    }
}

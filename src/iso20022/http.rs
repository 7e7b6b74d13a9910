//! `POST /v1/iso20022/pacs.008`: a pacs.008 in, a pacs.002 out. Each
//! `CdtTrfTxInf` goes through the in-line API's one code path
//! ([`Scorer::score`]: idempotency, admission or shedding, engine, audit),
//! exactly as a `POST /v1/score` of the mapped JSON would.
//!
//! The message is checked whole before any transaction is scored: a
//! malformed element anywhere gets an RFC 9457 problem object
//! (`application/problem+json`) naming the XML path and a stable code, and
//! no transaction of that message touches the features. Auth, deadline
//! header and body bound are the JSON endpoint's (`inline.*`).
//!
//! Headers out: `fraudline-replay: true` when every transaction was
//! answered from the recent-verdict cache (a retry), `fraudline-degraded:
//! true` when any got the overload policy's answer.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

use super::{parse_pacs008, write_pacs002, Answering, IsoError, TxAnswer};
use crate::serve::auth::Tokens;
use crate::serve::http_api::{authorize, budget_and_body, problem_at};
use crate::serve::scorer::{Outcome, ScoreError, Scorer};
use crate::telemetry::InlineMetrics;

/// The route.
pub const PATH: &str = "/v1/iso20022/pacs.008";

#[derive(Clone)]
struct Api {
    scorer: Arc<Scorer>,
    tokens: Option<Arc<Tokens>>,
    answering: Arc<Answering>,
    metrics: InlineMetrics,
}

/// The route, to merge into the in-line HTTP router. Its calls count in
/// the in-line HTTP series (`protocol="http"`).
pub fn router(scorer: Arc<Scorer>, tokens: Option<Arc<Tokens>>, answering: Answering) -> Router {
    Router::new().route(PATH, post(pacs008)).with_state(Api {
        scorer,
        tokens,
        answering: Arc::new(answering),
        metrics: InlineMetrics::new("http"),
    })
}

/// An RFC 9457 problem object; `path` is the XML path at fault.
fn problem(status: StatusCode, code: &str, detail: &str, path: Option<&str>) -> Response {
    problem_at(status, code, detail, path.map(|p| ("path", p)))
}

fn iso_problem(e: &IsoError) -> Response {
    let status = match e {
        IsoError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    problem(status, e.code(), &e.to_string(), e.path())
}

async fn pacs008(State(api): State<Api>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let call = api.metrics.call(started);
    let r = handle(&api, &headers, body, started).await;
    call.answered(r.status().as_str());
    r
}

/// `application/xml`, `text/xml`, `application/pacs.008+xml`, ...: any
/// media type that says XML.
fn is_xml(ct: &HeaderValue) -> bool {
    ct.to_str().is_ok_and(|s| {
        s.split(';')
            .next()
            .is_some_and(|m| m.trim().to_ascii_lowercase().ends_with("xml"))
    })
}

async fn handle(api: &Api, headers: &HeaderMap, body: Body, started: Instant) -> Response {
    if let Err(r) = authorize(api.tokens.as_deref(), headers) {
        return *r;
    }
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        if !is_xml(ct) {
            return problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be a pacs.008 XML document (content-type: application/xml)",
                None,
            );
        }
    }
    let (budget, bytes) = match budget_and_body(&api.scorer, headers, body, started).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let limits = *api.scorer.limits();
    let msg = match parse_pacs008(&bytes, &limits) {
        Ok(m) => m,
        Err(e) => return iso_problem(&e),
    };
    // Every transaction is checked before the first is scored: a refused
    // message leaves no trace in the features.
    let now = crate::now_ms();
    for tx in &msg.transactions {
        if let Err(e) = crate::event::validate(tx.event.clone(), &limits, now) {
            return iso_problem(&tx.locate(e));
        }
    }
    let mut decided = Vec::with_capacity(msg.transactions.len());
    let (mut degraded, mut replays) = (false, 0);
    for tx in &msg.transactions {
        match api
            .scorer
            .score(tx.event.clone(), started, budget, &api.metrics)
            .await
        {
            Ok(a) => {
                let shed = matches!(a.outcome, Outcome::Degraded(_));
                degraded |= shed;
                replays += usize::from(a.outcome == Outcome::Replay);
                decided.push((a.decided, shed));
            }
            Err(ScoreError::Invalid(e)) => return iso_problem(&tx.locate(e)),
            Err(e @ ScoreError::Reused(_)) => {
                return problem(
                    StatusCode::CONFLICT,
                    "event_id_reused",
                    &e.to_string(),
                    Some(&tx.id_path()),
                )
            }
        }
    }
    let answers: Vec<TxAnswer<'_>> = decided
        .iter()
        .map(|(d, shed)| TxAnswer {
            decision: d.verdict.decision,
            reasons: &d.verdict.reasons,
            degraded: *shed,
        })
        .collect();
    let body = write_pacs002(&api.answering, &msg, &answers, crate::now_ms());
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml; charset=utf-8"),
    );
    if degraded {
        h.insert("fraudline-degraded", HeaderValue::from_static("true"));
    }
    // As on /v1/score: the whole answer is the first one, given again.
    if replays == decided.len() {
        h.insert("fraudline-replay", HeaderValue::from_static("true"));
    }
    r
}

//! `fraudline.v1.Scoring/Score` over gRPC (tonic), beside the standard
//! `grpc.health.v1.Health` service and server reflection (v1 and v1alpha),
//! so `grpcurl` works without the .proto files.
//!
//! Metadata in: `authorization: Bearer <token>` (when tokens are configured),
//! `grpc-timeout` (the caller's deadline). Metadata out: `fraudline-replay:
//! true`, `fraudline-degraded: overload|deadline`; on errors
//! `fraudline-error-code` (stable code) and `fraudline-field`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};

use super::auth::Tokens;
use super::scorer::{Outcome, ScoreError, Scorer};
use crate::proto::scoring_server::{Scoring, ScoringServer};
use crate::proto::{PaymentEvent, Verdict};
use crate::telemetry::InlineMetrics;

pub struct GrpcScoring {
    scorer: Arc<Scorer>,
    tokens: Option<Arc<Tokens>>,
    metrics: InlineMetrics,
}

impl GrpcScoring {
    pub fn new(scorer: Arc<Scorer>, tokens: Option<Arc<Tokens>>) -> GrpcScoring {
        let metrics = InlineMetrics::new("grpc");
        metrics.register_zeroes();
        GrpcScoring {
            scorer,
            tokens,
            metrics,
        }
    }

    /// The service with the request size limit applied.
    pub fn into_server(self, max_request_bytes: usize) -> ScoringServer<GrpcScoring> {
        ScoringServer::new(self).max_decoding_message_size(max_request_bytes)
    }
}

/// The `code` label: the gRPC code's canonical name.
pub fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "OK",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::Unavailable => "UNAVAILABLE",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        _ => "INTERNAL",
    }
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H M S m u n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn status(code: Code, message: String, err_code: &str, field: Option<&str>) -> Status {
    let mut s = Status::new(code, message);
    if let Ok(v) = MetadataValue::try_from(err_code) {
        s.metadata_mut().insert("fraudline-error-code", v);
    }
    if let Some(Ok(v)) = field.map(MetadataValue::try_from) {
        s.metadata_mut().insert("fraudline-field", v);
    }
    s
}

/// When a gRPC call reached the server, before its message was read and
/// decoded ([`stamp_arrival`] puts it in the request's extensions).
#[derive(Debug, Clone, Copy)]
pub struct Arrival(pub Instant);

/// A tower `map_request` function: stamps [`Arrival`] on every call.
pub fn stamp_arrival<B>(mut req: axum::http::Request<B>) -> axum::http::Request<B> {
    req.extensions_mut().insert(Arrival(Instant::now()));
    req
}

/// A tower `map_response` function: a message tonic could not decode is
/// answered INVALID_ARGUMENT with `fraudline-error-code: undecodable` (the
/// caller's bytes are wrong; INTERNAL would read as a server fault a switch
/// retries), and counted with the calls (the handler never ran).
pub fn undecodable_is_invalid_argument<B>(
    mut res: axum::http::Response<B>,
) -> axum::http::Response<B> {
    let h = res.headers_mut();
    let internal = h.get("grpc-status").is_some_and(|v| v == "13");
    let decode = h.get("grpc-message").is_some_and(|m| {
        let m = m.as_bytes();
        m.starts_with(b"failed to decode") || m.starts_with(b"failed%20to%20decode")
    });
    if internal && decode {
        h.insert("grpc-status", axum::http::HeaderValue::from_static("3"));
        h.insert(
            "fraudline-error-code",
            axum::http::HeaderValue::from_static("undecodable"),
        );
        metrics::counter!(crate::telemetry::INLINE_REQUESTS, "protocol" => "grpc", "code" => "INVALID_ARGUMENT")
            .increment(1);
    }
    res
}

impl GrpcScoring {
    async fn handle(
        &self,
        req: Request<PaymentEvent>,
        started: Instant,
    ) -> Result<Response<Verdict>, Status> {
        if let Some(t) = &self.tokens {
            let auth = req.metadata().get("authorization").map(|v| v.as_bytes());
            if !t.allows(auth) {
                return Err(status(
                    Code::Unauthenticated,
                    "a valid bearer token is required (authorization: Bearer <token>)".into(),
                    "unauthenticated",
                    None,
                ));
            }
        }
        let budget = match req.metadata().get("grpc-timeout") {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(parse_grpc_timeout)
                    .ok_or_else(|| {
                        status(
                            Code::InvalidArgument,
                            "grpc-timeout is malformed".into(),
                            "invalid_timeout",
                            Some("grpc-timeout"),
                        )
                    })?,
            ),
        };
        let answer = self
            .scorer
            .score(req.into_inner(), started, budget, &self.metrics)
            .await
            .map_err(|e| match e {
                ScoreError::Invalid(d) => {
                    status(Code::InvalidArgument, d.to_string(), d.kind(), d.field())
                }
                e @ ScoreError::Reused(_) => status(
                    Code::AlreadyExists,
                    e.to_string(),
                    "event_id_reused",
                    Some("event_id"),
                ),
            })?;
        let mut r = Response::new(self.scorer.wire(&answer.decided));
        match answer.outcome {
            Outcome::Scored => {}
            Outcome::Replay => {
                r.metadata_mut()
                    .insert("fraudline-replay", MetadataValue::from_static("true"));
            }
            Outcome::Degraded(shed) => {
                r.metadata_mut().insert(
                    "fraudline-degraded",
                    MetadataValue::from_static(shed.as_str()),
                );
            }
        }
        Ok(r)
    }
}

#[tonic::async_trait]
impl Scoring for GrpcScoring {
    async fn score(&self, req: Request<PaymentEvent>) -> Result<Response<Verdict>, Status> {
        // The budget counts from the call's arrival (stamped before the
        // body was read and decoded), as the caller's deadline does.
        let started = req
            .extensions()
            .get::<Arrival>()
            .map_or_else(Instant::now, |a| a.0);
        let call = self.metrics.call(started);
        let r = self.handle(req, started).await;
        call.answered(match &r {
            Ok(_) => "OK",
            Err(s) => code_name(s.code()),
        });
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("1S"), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("5"), None);
        assert_eq!(parse_grpc_timeout("123456789m"), None);
        assert_eq!(parse_grpc_timeout("-1m"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
    }
}

//! The in-line API's one code path, shared by gRPC and HTTP: validate,
//! answer a retry from the recent-verdict cache, admit (or shed), score on
//! the shared [`Engine`], remember, audit. The protocol adapters only map
//! their wire forms and errors onto this.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;

use super::admission::{Admission, Deadline, Shed};
use super::audit::{AuditHandle, AuditRecord};
use super::idempotency::{Decided, RecentVerdicts};
use crate::config::{InlineSection, OverloadPolicy};
use crate::engine::{Decision, Engine, Reason, Verdict};
use crate::event::{self, DecodeError, Limits};
use crate::telemetry::{InlineMetrics, Metrics};

/// The reason id of a verdict given by the overload policy.
pub const DEGRADED: &str = "DEGRADED";

/// How an answer came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Scored now.
    Scored,
    /// The first verdict for this event_id, answered again.
    Replay,
    /// The overload policy's answer (reason DEGRADED).
    Degraded(Shed),
}

#[derive(Debug)]
pub struct Answer {
    pub decided: Arc<Decided>,
    pub outcome: Outcome,
}

/// Why a call gets no verdict.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error(transparent)]
    Invalid(#[from] DecodeError),
    #[error("event_id {0:?} was already scored for a different payment")]
    Reused(String),
}

/// Fixed seeds: a fingerprint must not change between two calls.
const FINGERPRINT: ahash::RandomState = ahash::RandomState::with_seeds(
    0x6672_6175_646c_696e,
    0x696e_6c69_6e65_2d31,
    0x7665_7264_6963_742d,
    0x6361_6368_652d_7631,
);

/// The event's protobuf bytes (for the audit record) and a fingerprint that
/// a retry must match. The fingerprint takes the location to 1e-7 degree
/// (about 1 cm): a JSON text does not always carry a float back to the same
/// last bit, and the same payment sent as JSON and as protobuf must match.
pub(crate) fn fingerprint(wire: &mut crate::proto::PaymentEvent) -> (u64, Vec<u8>) {
    use std::hash::{BuildHasher, Hasher};
    let geo = wire.geo.take();
    let without_geo = wire.encode_to_vec();
    let mut h = FINGERPRINT.build_hasher();
    h.write(&without_geo);
    if let Some(g) = geo {
        h.write_i64((g.lat * 1e7).round() as i64);
        h.write_i64((g.lon * 1e7).round() as i64);
    }
    wire.geo = geo;
    let bytes = if geo.is_some() {
        wire.encode_to_vec()
    } else {
        without_geo
    };
    (h.finish(), bytes)
}

pub struct Scorer {
    engine: Arc<Engine>,
    limits: Limits,
    recent: Arc<RecentVerdicts>,
    admission: Admission,
    policy: Decision,
    default_budget: Duration,
    audit: Option<AuditHandle>,
    explain: bool,
    hold: Duration,
    constant: bool,
    metrics: Metrics,
}

impl Scorer {
    /// `recent` is shared with the state-log follower, which fills it with
    /// the in-line verdicts other instances gave.
    pub fn new(
        engine: Arc<Engine>,
        cfg: &InlineSection,
        limits: Limits,
        explain: bool,
        audit: Option<AuditHandle>,
        recent: Arc<RecentVerdicts>,
    ) -> Scorer {
        Scorer {
            engine,
            limits: Limits {
                max_message_bytes: cfg.max_request_bytes,
                ..limits
            },
            recent,
            admission: Admission::new(cfg.max_concurrency, cfg.max_queue),
            policy: match cfg.overload_policy {
                OverloadPolicy::FailOpen => Decision::Allow,
                OverloadPolicy::FailClosed => Decision::Hold,
            },
            default_budget: Duration::from_millis(cfg.default_budget_ms),
            audit,
            explain,
            hold: Duration::from_millis(cfg.debug_hold_ms),
            constant: cfg.constant_verdict,
            metrics: Metrics::new(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The deadline of a call that names none (`inline.default_budget_ms`).
    pub fn default_budget(&self) -> Duration {
        self.default_budget
    }

    /// Scores one wire event. `started` is when the call arrived; `budget`
    /// is the caller's deadline (None: the configured default).
    pub async fn score(
        &self,
        mut wire: crate::proto::PaymentEvent,
        started: Instant,
        budget: Option<Duration>,
        m: &InlineMetrics,
    ) -> Result<Answer, ScoreError> {
        let now = crate::now_ms();
        let (fingerprint, event_bytes) = fingerprint(&mut wire);
        let payment = event::validate(wire, &self.limits, now)?;
        if let Some(first) = self.recent.get(&payment.event_id) {
            return self.replay(first, fingerprint, m);
        }
        self.engine
            .admit(&payment, now, crate::engine::Path::Inline)?;
        let deadline = Deadline::from_budget(started, budget.unwrap_or(self.default_budget));
        let permit = match self.admission.admit(&deadline).await {
            Ok(p) => p,
            Err(shed) => {
                match shed {
                    Shed::Overload => m.shed_overload.increment(1),
                    Shed::Deadline => m.shed_deadline.increment(1),
                }
                let decided = Arc::new(Decided {
                    event_id: payment.event_id.clone(),
                    event_time_ms: payment.event_time_ms,
                    fingerprint,
                    verdict: self.degraded(shed, now),
                });
                self.metrics.verdict(self.policy).increment(1);
                tracing::debug!(event_id = %payment.event_id, reason = shed.as_str(), "shed");
                self.audit(&payment.payer.account, &decided, event_bytes, false);
                return Ok(Answer {
                    decided,
                    outcome: Outcome::Degraded(shed),
                });
            }
        };
        if !self.hold.is_zero() {
            tokio::time::sleep(self.hold).await;
        }
        let verdict = if self.constant {
            Verdict::new(self.engine.rules().version.clone(), 0, now)
        } else {
            let t = Instant::now();
            let v = self.engine.score_at(&payment, now);
            self.metrics
                .engine_latency
                .record(t.elapsed().as_secs_f64());
            v
        };
        drop(permit);
        let decided = Arc::new(Decided {
            event_id: payment.event_id.clone(),
            event_time_ms: payment.event_time_ms,
            fingerprint,
            verdict,
        });
        let kept = self.recent.insert(decided.clone());
        if !Arc::ptr_eq(&kept, &decided) {
            // A concurrent duplicate won the race; the engine's own event_id
            // dedup kept this second pass out of the features.
            return self.replay(kept, fingerprint, m);
        }
        self.metrics.verdict(decided.verdict.decision).increment(1);
        tracing::debug!(
            event_id = %payment.event_id,
            payer = %crate::mask(&payment.payer.account),
            decision = decided.verdict.decision.as_str(),
            score = decided.verdict.score,
            "scored in-line"
        );
        self.audit(&payment.payer.account, &decided, event_bytes, true);
        Ok(Answer {
            decided,
            outcome: Outcome::Scored,
        })
    }

    fn replay(
        &self,
        first: Arc<Decided>,
        fingerprint: u64,
        m: &InlineMetrics,
    ) -> Result<Answer, ScoreError> {
        if first.fingerprint != fingerprint {
            return Err(ScoreError::Reused(first.event_id.clone()));
        }
        m.replays.increment(1);
        Ok(Answer {
            decided: first,
            outcome: Outcome::Replay,
        })
    }

    /// The overload policy's verdict: one reason, rule_id DEGRADED.
    fn degraded(&self, shed: Shed, now: i64) -> Verdict {
        let mut v = Verdict::new(
            self.engine.rules().version.clone(),
            self.engine.blocklist().version(),
            now,
        );
        v.decision = self.policy;
        v.reasons.push(Reason {
            rule_id: Arc::from(DEGRADED),
            reason: Arc::from(match shed {
                Shed::Overload => "not scored: the server is over its concurrency and queue bounds",
                Shed::Deadline => "not scored: the deadline came before a scoring slot",
            }),
            score: 0,
        });
        v
    }

    fn audit(&self, payer: &str, d: &Decided, event: Vec<u8>, scored: bool) {
        if let Some(a) = &self.audit {
            a.publish(AuditRecord {
                key: payer.as_bytes().to_vec(),
                verdict: self.wire(d).encode_to_vec(),
                event,
                decision: d.verdict.decision,
                scored,
            });
        }
    }

    /// The protobuf verdict, as the stream publishes it.
    pub fn wire(&self, d: &Decided) -> crate::proto::Verdict {
        if self.explain {
            d.verdict.to_wire_explained(&d.event_id, d.event_time_ms)
        } else {
            d.verdict.to_wire(&d.event_id, d.event_time_ms)
        }
    }
}

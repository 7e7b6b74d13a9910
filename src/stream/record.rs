//! One input record to one output record: a verdict, or a dead letter.

use prost::Message as _;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::Message;

use crate::engine::{Decision, Engine};
use crate::event::{self, DecodeError, Format, Limits};
use crate::telemetry::Metrics;

pub const HDR_CONTENT_TYPE: &str = "content-type";
pub const HDR_ERROR_KIND: &str = "fraudline.error.kind";
pub const HDR_ERROR: &str = "fraudline.error";
pub const HDR_SOURCE_TOPIC: &str = "fraudline.source.topic";
pub const HDR_SOURCE_PARTITION: &str = "fraudline.source.partition";
pub const HDR_SOURCE_OFFSET: &str = "fraudline.source.offset";
pub const HDR_DECISION: &str = "fraudline.decision";

/// What to produce for one input record.
pub enum Outcome {
    Verdict {
        key: Vec<u8>,
        payload: Vec<u8>,
        headers: OwnedHeaders,
        event_time_ms: i64,
        decision: Decision,
    },
    Dead {
        key: Vec<u8>,
        payload: Vec<u8>,
        headers: OwnedHeaders,
        kind: &'static str,
    },
}

/// How records are turned into verdicts; fixed for the life of the stream.
#[derive(Debug, Clone, Copy)]
pub struct ProcessOptions {
    pub limits: Limits,
    /// Put the feature values into each verdict.
    pub explain: bool,
}

impl ProcessOptions {
    pub fn from_config(cfg: &crate::config::Config) -> ProcessOptions {
        ProcessOptions {
            limits: cfg.limits(),
            explain: cfg.engine.explain_in_verdicts,
        }
    }
}

fn content_type(msg: &BorrowedMessage<'_>) -> Option<Format> {
    let headers = msg.headers()?;
    headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(HDR_CONTENT_TYPE))
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(Format::from_content_type)
}

/// Decodes, scores and encodes one record. Never fails: what cannot be
/// scored becomes a dead letter naming why.
pub fn process(
    msg: &BorrowedMessage<'_>,
    engine: &Engine,
    opts: &ProcessOptions,
    metrics: &Metrics,
) -> Outcome {
    let now = crate::now_ms();
    let bytes = msg.payload().unwrap_or(&[]);
    match event::decode(bytes, content_type(msg), &opts.limits, now) {
        Ok(p) => {
            let started = std::time::Instant::now();
            let v = engine.score_at(&p, now);
            metrics
                .engine_latency
                .record(started.elapsed().as_secs_f64());
            metrics.verdict(v.decision).increment(1);
            let key = msg
                .key()
                .map(<[u8]>::to_vec)
                .unwrap_or_else(|| p.payer.account.clone().into_bytes());
            let wire = if opts.explain {
                v.to_wire_explained(&p.event_id, p.event_time_ms)
            } else {
                v.to_wire(&p.event_id, p.event_time_ms)
            };
            let payload = wire.encode_to_vec();
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: HDR_CONTENT_TYPE,
                    value: Some("application/x-protobuf"),
                })
                .insert(Header {
                    key: HDR_DECISION,
                    value: Some(v.decision.as_str()),
                });
            tracing::debug!(
                event_id = %p.event_id,
                payer = %crate::mask(&p.payer.account),
                decision = v.decision.as_str(),
                score = v.score,
                "scored"
            );
            Outcome::Verdict {
                key,
                payload,
                headers,
                event_time_ms: p.event_time_ms,
                decision: v.decision,
            }
        }
        Err(e) => dead_letter(msg, bytes, &e, now, metrics),
    }
}

fn dead_letter(
    msg: &BorrowedMessage<'_>,
    bytes: &[u8],
    e: &DecodeError,
    now: i64,
    metrics: &Metrics,
) -> Outcome {
    metrics.decode_error(e);
    metrics.dlq(e.kind());
    let error = e.to_string();
    tracing::debug!(
        topic = msg.topic(),
        partition = msg.partition(),
        offset = msg.offset(),
        kind = e.kind(),
        "record refused, sent to the dead-letter topic"
    );
    let key = msg.key().map(<[u8]>::to_vec).unwrap_or_default();
    let dl = crate::proto::DeadLetter {
        error_kind: e.kind().to_string(),
        error: error.clone(),
        source_topic: msg.topic().to_string(),
        source_partition: msg.partition(),
        source_offset: msg.offset(),
        key: key.clone(),
        payload: bytes.to_vec(),
        received_at_ms: now,
    };
    let partition = msg.partition().to_string();
    let offset = msg.offset().to_string();
    let headers = OwnedHeaders::new_with_capacity(6)
        .insert(Header {
            key: HDR_CONTENT_TYPE,
            value: Some("application/x-protobuf; messageType=fraudline.v1.DeadLetter"),
        })
        .insert(Header {
            key: HDR_ERROR_KIND,
            value: Some(e.kind()),
        })
        .insert(Header {
            key: HDR_ERROR,
            value: Some(error.as_str()),
        })
        .insert(Header {
            key: HDR_SOURCE_TOPIC,
            value: Some(msg.topic()),
        })
        .insert(Header {
            key: HDR_SOURCE_PARTITION,
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: HDR_SOURCE_OFFSET,
            value: Some(offset.as_str()),
        });
    Outcome::Dead {
        key,
        payload: dl.encode_to_vec(),
        headers,
        kind: e.kind(),
    }
}

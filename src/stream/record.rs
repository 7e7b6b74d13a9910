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
pub const HDR_PAYLOAD_BYTES: &str = "fraudline.payload.bytes";
pub const HDR_PAYLOAD_SHA256: &str = "fraudline.payload.sha256";
pub const HDR_TRUNCATED: &str = "fraudline.payload.truncated";

/// Longest error text a dead letter carries (the header and the field).
pub const MAX_ERROR_BYTES: usize = 2048;

/// What to produce for one input record.
pub enum Outcome {
    Verdict {
        key: Vec<u8>,
        payload: Vec<u8>,
        headers: OwnedHeaders,
        event_time_ms: i64,
        decision: Decision,
        /// The payment went into a state-log batch (state log on).
        state: bool,
    },
    Dead {
        key: Vec<u8>,
        payload: Vec<u8>,
        headers: OwnedHeaders,
        kind: &'static str,
    },
}

/// How records are turned into verdicts; fixed for the life of the stream.
#[derive(Debug, Clone)]
pub struct ProcessOptions {
    pub limits: Limits,
    /// Put the feature values into each verdict.
    pub explain: bool,
    /// At most this many bytes of a refused value go into its dead letter.
    pub dlq_max_payload_bytes: usize,
}

impl ProcessOptions {
    pub fn from_config(cfg: &crate::config::Config) -> ProcessOptions {
        ProcessOptions {
            limits: cfg.limits(),
            explain: cfg.engine.explain_in_verdicts,
            dlq_max_payload_bytes: cfg.kafka.dlq_max_payload_bytes,
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
/// scored becomes a dead letter naming why. With the state log on, a scored
/// payment is added to `state`'s batch of its partition.
pub(crate) fn process(
    msg: &BorrowedMessage<'_>,
    engine: &Engine,
    opts: &ProcessOptions,
    metrics: &Metrics,
    state: Option<&mut super::state_log::StateBatches>,
) -> Outcome {
    let now = crate::now_ms();
    let bytes = msg.payload().unwrap_or(&[]);
    let key_len = msg.key().map_or(0, <[u8]>::len);
    if key_len > opts.limits.max_key_bytes {
        let e = DecodeError::KeyTooLarge {
            size: key_len,
            limit: opts.limits.max_key_bytes,
        };
        return dead_letter(msg, bytes, &e, now, opts, metrics);
    }
    let format = content_type(msg).unwrap_or_else(|| Format::detect(bytes));
    match event::decode(bytes, Some(format), &opts.limits, now) {
        Ok(p) => {
            let started = std::time::Instant::now();
            let v = engine.score_owned_at(&p, now);
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
            let logged = state.is_some();
            if let Some(batches) = state {
                let (partition, offset) = (msg.partition(), msg.offset());
                if format == Format::Protobuf && bytes.len() <= crate::state::RAW_PAYMENT_MAX {
                    // The input bytes decode to this payment: no second encoding.
                    batches.push(bytes, partition, offset);
                } else {
                    batches.push(&p.to_protobuf(), partition, offset);
                }
            }
            Outcome::Verdict {
                key,
                payload,
                headers,
                event_time_ms: p.event_time_ms,
                decision: v.decision,
                state: logged,
            }
        }
        Err(e) => dead_letter(msg, bytes, &e, now, opts, metrics),
    }
}

fn dead_letter(
    msg: &BorrowedMessage<'_>,
    bytes: &[u8],
    e: &DecodeError,
    now: i64,
    opts: &ProcessOptions,
    metrics: &Metrics,
) -> Outcome {
    metrics.decode_error(e);
    tracing::debug!(
        topic = msg.topic(),
        partition = msg.partition(),
        offset = msg.offset(),
        kind = e.kind(),
        "record refused, sent to the dead-letter topic"
    );
    let source = Source {
        topic: msg.topic(),
        partition: msg.partition(),
        offset: msg.offset(),
    };
    let key = msg.key().unwrap_or_default();
    bounded_dead_letter(
        &source,
        key,
        bytes,
        e,
        now,
        opts.dlq_max_payload_bytes,
        opts.limits.max_key_bytes,
    )
}

/// Where an input record came from.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// The last resort for a record whose own output cannot be produced (the
/// broker refuses it for good): a dead letter with the source coordinates
/// and the error, without the value. Small by construction, so it can be
/// produced whenever the broker can take anything at all.
pub fn last_resort(source: &Source<'_>, key: &[u8], error: &str, max_key_bytes: usize) -> Outcome {
    let e = DecodeError::Unproducible(error.to_string());
    bounded_dead_letter(source, key, &[], &e, crate::now_ms(), 0, max_key_bytes)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char
/// boundary.
fn cut_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A dead letter whose size is bounded whatever the input: the value is cut
/// to `max_payload` bytes and the key to `max_key` bytes; the original
/// value's length and SHA-256 travel in the record and its headers, so the
/// original can be found in the source topic.
fn bounded_dead_letter(
    source: &Source<'_>,
    key: &[u8],
    bytes: &[u8],
    e: &DecodeError,
    now: i64,
    max_payload: usize,
    max_key: usize,
) -> Outcome {
    use sha2::Digest as _;
    let full = e.to_string();
    let error = cut_str(&full, MAX_ERROR_BYTES);
    let payload = &bytes[..bytes.len().min(max_payload)];
    let whole_key = key.len();
    let key = &key[..key.len().min(max_key)];
    let truncated = payload.len() < bytes.len() || key.len() < whole_key;
    let sha = sha2::Sha256::digest(bytes);
    let sha_hex = hex(&sha);
    let dl = crate::proto::DeadLetter {
        error_kind: e.kind().to_string(),
        error: error.to_string(),
        source_topic: cut_str(source.topic, 256).to_string(),
        source_partition: source.partition,
        source_offset: source.offset,
        key: key.to_vec(),
        payload: payload.to_vec(),
        received_at_ms: now,
        payload_bytes: bytes.len() as i64,
        payload_sha256: sha.to_vec(),
        truncated,
    };
    let partition = source.partition.to_string();
    let offset = source.offset.to_string();
    let original = bytes.len().to_string();
    let headers = OwnedHeaders::new_with_capacity(9)
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
            value: Some(error),
        })
        .insert(Header {
            key: HDR_SOURCE_TOPIC,
            value: Some(dl.source_topic.as_str()),
        })
        .insert(Header {
            key: HDR_SOURCE_PARTITION,
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: HDR_SOURCE_OFFSET,
            value: Some(offset.as_str()),
        })
        .insert(Header {
            key: HDR_PAYLOAD_BYTES,
            value: Some(original.as_str()),
        })
        .insert(Header {
            key: HDR_PAYLOAD_SHA256,
            value: Some(sha_hex.as_str()),
        })
        .insert(Header {
            key: HDR_TRUNCATED,
            value: Some(if truncated { "true" } else { "false" }),
        });
    Outcome::Dead {
        key: key.to_vec(),
        payload: dl.encode_to_vec(),
        headers,
        kind: e.kind(),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

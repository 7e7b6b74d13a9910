//! One input record to one output record: a verdict, or a dead letter.

use prost::Message as _;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::Message;

use crate::engine::{Decision, Engine};
use crate::event::{DecodeError, Decoder, Format, Limits};
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
    /// Its headers are built when it is sent ([`verdict_headers`]):
    /// librdkafka takes the ones it is given, and building them once costs
    /// less than building, copying for the send and freeing the original.
    Verdict {
        key: Vec<u8>,
        payload: Vec<u8>,
        event_time_ms: i64,
        decision: Decision,
        /// What goes into the state-log batch of its partition (state
        /// log on): the caller pushes it, in partition order.
        state: Option<StateBytes>,
    },
    Dead {
        key: Vec<u8>,
        payload: Vec<u8>,
        headers: OwnedHeaders,
        kind: &'static str,
    },
}

/// A scored payment's state-log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateBytes {
    /// The input record's own value: protobuf that decodes to this payment
    /// (no second encoding).
    Input,
    /// The payment encoded as protobuf (the input was JSON, or too large).
    Encoded(Vec<u8>),
}

/// One input record as the scoring path reads it: borrowed from a consumed
/// message or from a scoring lane's batch ([`super::lanes`]).
#[derive(Debug, Clone, Copy)]
pub struct RecordIn<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    /// From the record's content-type header, when it names one.
    pub format: Option<Format>,
}

impl<'a> RecordIn<'a> {
    pub fn of<'m: 'a>(msg: &'a BorrowedMessage<'m>) -> RecordIn<'a> {
        RecordIn {
            topic: msg.topic(),
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key(),
            payload: msg.payload().unwrap_or(&[]),
            format: content_type(msg),
        }
    }
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

/// The format a record's content-type header names, if any.
pub(crate) fn content_type(msg: &impl Message) -> Option<Format> {
    let headers = msg.headers()?;
    headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(HDR_CONTENT_TYPE))
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(Format::from_content_type)
}

/// Decodes, scores and encodes one record. Never fails: what cannot be
/// scored becomes a dead letter naming why. With `log_state` (the state log
/// on), a scored payment's verdict says what its state-log entry is.
/// `decoder` is the calling thread's: a protobuf record decodes into its
/// buffers without allocating.
pub(crate) fn process(
    rec: &RecordIn<'_>,
    engine: &Engine,
    opts: &ProcessOptions,
    metrics: &Metrics,
    log_state: bool,
    decoder: &mut Decoder,
) -> Outcome {
    let now = crate::now_ms();
    let bytes = rec.payload;
    let key_len = rec.key.map_or(0, <[u8]>::len);
    if key_len > opts.limits.max_key_bytes {
        let e = DecodeError::KeyTooLarge {
            size: key_len,
            limit: opts.limits.max_key_bytes,
        };
        return dead_letter(rec, &e, now, opts, metrics);
    }
    let format = rec.format.unwrap_or_else(|| Format::detect(bytes));
    match decoder.decode(bytes, Some(format), &opts.limits, now) {
        Ok(p) => {
            if let Err(e) = engine.admit(p, now, crate::engine::Path::Stream) {
                return dead_letter(rec, &e, now, opts, metrics);
            }
            let started = std::time::Instant::now();
            let v = engine.score_owned_at(p, now);
            metrics
                .engine_latency
                .record(started.elapsed().as_secs_f64());
            metrics.verdict(v.decision).increment(1);
            let key = rec
                .key
                .map(<[u8]>::to_vec)
                .unwrap_or_else(|| p.payer.account.clone().into_bytes());
            let payload = if opts.explain {
                v.to_wire_explained(&p.event_id, p.event_time_ms)
                    .encode_to_vec()
            } else {
                v.encode_wire(&p.event_id, p.event_time_ms)
            };
            tracing::debug!(
                event_id = %p.event_id,
                payer = %crate::mask(&p.payer.account),
                decision = v.decision.as_str(),
                score = v.score,
                "scored"
            );
            // A stale payment moved no state: nobody replays it.
            let state = (log_state && !v.is_stale()).then(|| {
                if format == Format::Protobuf && bytes.len() <= crate::state::RAW_PAYMENT_MAX {
                    StateBytes::Input
                } else {
                    StateBytes::Encoded(p.to_protobuf())
                }
            });
            Outcome::Verdict {
                key,
                payload,
                event_time_ms: p.event_time_ms,
                decision: v.decision,
                state,
            }
        }
        Err(e) => dead_letter(rec, &e, now, opts, metrics),
    }
}

/// A verdict record's headers: its content type and decision.
pub(crate) fn verdict_headers(decision: Decision) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(2)
        .insert(Header {
            key: HDR_CONTENT_TYPE,
            value: Some("application/x-protobuf"),
        })
        .insert(Header {
            key: HDR_DECISION,
            value: Some(decision.as_str()),
        })
}

/// An outcome as the delivery loops keep it until it is acknowledged:
/// both loops take it apart the same way ([`Outcome::into_record`]).
pub(crate) struct OutRecord {
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: OutHeaders,
    /// A verdict's event time, for the end-to-end latency histogram.
    pub event_time_ms: Option<i64>,
    /// A dead letter's kind (it goes to the DLQ topic).
    pub dlq_kind: Option<&'static str>,
}

impl Outcome {
    /// The record to send for this outcome.
    pub(crate) fn into_record(self) -> OutRecord {
        match self {
            Outcome::Verdict {
                key,
                payload,
                event_time_ms,
                decision,
                ..
            } => OutRecord {
                key,
                payload,
                headers: OutHeaders::Verdict(decision),
                event_time_ms: Some(event_time_ms),
                dlq_kind: None,
            },
            Outcome::Dead {
                key,
                payload,
                headers,
                kind,
            } => OutRecord {
                key,
                payload,
                headers: OutHeaders::Owned(headers),
                event_time_ms: None,
                dlq_kind: Some(kind),
            },
        }
    }
}

/// An output record's headers as kept until it is sent: a verdict's are
/// built from its decision at each send, a dead letter's kept as made.
pub(crate) enum OutHeaders {
    Verdict(Decision),
    Owned(OwnedHeaders),
}

impl OutHeaders {
    /// The headers to hand to librdkafka for one send.
    pub(crate) fn build(&self) -> OwnedHeaders {
        match self {
            OutHeaders::Verdict(d) => verdict_headers(*d),
            OutHeaders::Owned(h) => h.clone(),
        }
    }
}

/// Pushes a scored payment's state-log entry into its partition's batch;
/// returns whether it did (the offset then awaits the batch's ack too).
pub(crate) fn log_state(
    batches: Option<&mut super::state_log::StateBatches>,
    state: Option<&StateBytes>,
    input: &[u8],
    partition: i32,
    offset: i64,
) -> bool {
    match (batches, state) {
        (Some(b), Some(StateBytes::Input)) => b.push(input, partition, offset),
        (Some(b), Some(StateBytes::Encoded(bytes))) => b.push(bytes, partition, offset),
        _ => return false,
    }
    true
}

fn dead_letter(
    rec: &RecordIn<'_>,
    e: &DecodeError,
    now: i64,
    opts: &ProcessOptions,
    metrics: &Metrics,
) -> Outcome {
    metrics.decode_error(e);
    tracing::debug!(
        topic = rec.topic,
        partition = rec.partition,
        offset = rec.offset,
        kind = e.kind(),
        "record refused, sent to the dead-letter topic"
    );
    let source = Source {
        topic: rec.topic,
        partition: rec.partition,
        offset: rec.offset,
    };
    let key = rec.key.unwrap_or_default();
    bounded_dead_letter(
        &source,
        key,
        rec.payload,
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
    let error = crate::prefix_within(&full, MAX_ERROR_BYTES);
    let payload = &bytes[..bytes.len().min(max_payload)];
    let whole_key = key.len();
    let key = &key[..key.len().min(max_key)];
    let truncated = payload.len() < bytes.len() || key.len() < whole_key;
    let sha = sha2::Sha256::digest(bytes);
    let sha_hex = hex(&sha);
    let dl = crate::proto::DeadLetter {
        error_kind: e.kind().to_string(),
        error: error.to_string(),
        source_topic: crate::prefix_within(source.topic, 256).to_string(),
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

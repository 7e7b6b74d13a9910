//! The state layer: feature state that holds across instances and restarts,
//! built on Kafka (docs/STATE.md has the design and its trade-offs).
//!
//! ```text
//! scorer (stream or in-line, any instance) ──► Engine (applies at once)
//!        └──► state log topic (the payment, in the verdict's transaction)
//!                   └──► follower on every instance ──► Engine (records of other origins)
//! ```
//! Every instance folds the whole state log into its feature store, so a
//! payee, device, phone or IP sees every payment whichever instance scored
//! it, within the follower's propagation lag; payer features are the same
//! everywhere too, which is what an in-line call routed to any instance
//! needs. A process skips the records it wrote itself (it applied them when
//! it scored them): each process start has a random origin id.
//!
//! At start the follower replays the log (from `kafka.warmup_lookback_ms`
//! back) before the service is ready; when the stream is given a partition,
//! scoring of it waits until the follower has read the log to where it ended
//! at that moment, so the state the previous owner built is in place.

mod follower;
pub mod snapshot;

use std::sync::Arc;

use prost::Message as _;

use crate::engine::Verdict;
use crate::event::Payment;
pub use follower::{spawn_follower, Follower, FollowerError, FollowerHandle};
pub use snapshot::{Positions, SnapshotHandle, SnapshotWriter};

/// Header naming the origin of a state record (also in the record), so a
/// follower can skip its own records without decoding them.
pub const HDR_ORIGIN: &str = "fraudline.origin";

/// Creates the state log topic and the snapshot topic if they do not exist
/// (as Kafka Streams creates its internal topics), with the brokers'
/// default replication:
/// - the state log: as many partitions as the payments topic (6 for
///   in-line only), delete policy, retention of the replay lookback plus a
///   day (the tail after a snapshot is minutes long; the lookback is the
///   fallback when no snapshot exists);
/// - the snapshot topic: one partition, compacted, 1 h segments (so the
///   cleaner can compact recent cuts).
///
/// An existing topic is left as it is.
pub async fn ensure_topics(cfg: &crate::config::Config) -> Result<(), String> {
    let k = &cfg.kafka;
    let retention_ms = (k.warmup_lookback_ms + 86_400_000).to_string();
    let partitions = partitions_of(cfg, &k.payments_topic).await?.unwrap_or(6);
    if partitions_of(cfg, &k.state_topic).await?.is_none() {
        create(
            cfg,
            &k.state_topic,
            partitions,
            &[
                ("cleanup.policy", "delete"),
                ("retention.ms", &retention_ms),
            ],
        )
        .await?;
    }
    if !k.snapshot_topic.is_empty() && partitions_of(cfg, &k.snapshot_topic).await?.is_none() {
        create(
            cfg,
            &k.snapshot_topic,
            1,
            &[
                ("cleanup.policy", "compact"),
                ("segment.ms", "3600000"),
                ("min.cleanable.dirty.ratio", "0.2"),
            ],
        )
        .await?;
    }
    Ok(())
}

/// The partition count of `topic`, `None` when it does not exist (or is
/// empty-named).
pub(crate) async fn partitions_of(
    cfg: &crate::config::Config,
    topic: &str,
) -> Result<Option<usize>, String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    if topic.is_empty() {
        return Ok(None);
    }
    let probe: BaseConsumer = crate::stream::base_config(cfg)
        .set("group.id", format!("{}-state-probe", cfg.kafka.group_id))
        .set("allow.auto.create.topics", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        probe
            .fetch_metadata(Some(&topic), std::time::Duration::from_secs(10))
            .ok()
            .and_then(|md| {
                md.topics()
                    .iter()
                    .find(|m| m.name() == topic && m.error().is_none())
                    .map(|m| m.partitions().len())
            })
            .filter(|n| *n > 0)
    })
    .await
    .map_err(|e| e.to_string())
}

async fn create(
    cfg: &crate::config::Config,
    topic: &str,
    partitions: usize,
    configs: &[(&str, &str)],
) -> Result<(), String> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = crate::stream::base_config(cfg)
        .create()
        .map_err(|e| e.to_string())?;
    let mut new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(-1));
    for (k, v) in configs {
        new = new.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10)));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| e.to_string())?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(%topic, partitions, "state topic created"),
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(format!("cannot create {t}: {e}")),
        }
    }
    Ok(())
}

/// A consumer with the stream's group id that never joins the group: it
/// reads the group's committed offsets. `None` in-line only.
pub(crate) fn committed_reader(
    cfg: &crate::config::Config,
) -> Option<rdkafka::consumer::BaseConsumer> {
    if cfg.kafka.payments_topic.is_empty() {
        return None;
    }
    let mut c = crate::stream::base_config(cfg);
    c.set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", "false");
    c.create().ok()
}

/// The stream group's committed offsets on `topic`, for the partitions
/// that have one. Blocking (up to 10 s per call): call it off the async
/// workers.
pub(crate) fn group_committed(
    c: &rdkafka::consumer::BaseConsumer,
    topic: &str,
) -> Result<std::collections::HashMap<i32, i64>, rdkafka::error::KafkaError> {
    use rdkafka::consumer::Consumer;
    let limit = std::time::Duration::from_secs(10);
    let md = c.fetch_metadata(Some(topic), limit)?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for t in md.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            tpl.add_partition(topic, p.id());
        }
    }
    Ok(c.committed_offsets(tpl, limit)?
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

/// A random id for this process start.
pub fn new_origin() -> Arc<str> {
    use rand::Rng as _;
    let id: u64 = rand::thread_rng().gen();
    Arc::from(format!("{id:016x}"))
}

/// Where a scored payment came from.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    Stream { partition: i32, offset: i64 },
    Inline,
}

/// The state record of a scored payment (see proto/fraudline/v1/state.proto).
pub fn encode(p: &Payment, origin: &str, source: Source, verdict: Option<&Verdict>) -> Vec<u8> {
    let (source_partition, source_offset) = match source {
        Source::Stream { partition, offset } => (partition, offset),
        Source::Inline => (-1, -1),
    };
    crate::proto::StateRecord {
        payment: p.to_protobuf(),
        origin: origin.to_string(),
        verdict: verdict.map(|v| v.to_wire(&p.event_id, p.event_time_ms)),
        source_partition,
        source_offset,
    }
    .encode_to_vec()
}

/// The largest protobuf input whose bytes are logged as they came: a
/// payment is a few hundred bytes; past this (unknown fields), the decoded
/// payment is encoded again so the log never carries a bloated record.
pub const RAW_PAYMENT_MAX: usize = 4096;

/// Header on a state-log record that holds a `fraudline.v1.StateBatch`;
/// its value is the number of payments in it (decimal), so a follower
/// counts its own batches without decoding them.
pub const HDR_BATCH: &str = "fraudline.batch";

fn delimited_len(tag: u32, n: usize) -> usize {
    prost::encoding::key_len(tag) + prost::encoding::encoded_len_varint(n as u64) + n
}

/// The encoded length of [`encode_stream_into`]'s record.
fn stream_len(payment: &[u8], origin: &str, partition: i32, offset: i64) -> usize {
    use prost::encoding::{int32, int64};
    // Proto3: zero values are not written (as prost's derived encoder does).
    let nonempty = |n: usize, tag: u32| if n == 0 { 0 } else { delimited_len(tag, n) };
    nonempty(payment.len(), 1)
        + nonempty(origin.len(), 2)
        + if partition == 0 {
            0
        } else {
            int32::encoded_len(4, &partition)
        }
        + if offset == 0 {
            0
        } else {
            int64::encoded_len(5, &offset)
        }
}

/// Appends the state record of a payment scored by the stream to `out`:
/// `payment` is its protobuf encoding (the input bytes themselves when the
/// input was protobuf, which decode to the same payment: decoding is a pure
/// function of the bytes). Equal to [`encode`] of the decoded payment with
/// no verdict, field for field.
fn encode_stream_into(
    out: &mut Vec<u8>,
    payment: &[u8],
    origin: &str,
    partition: i32,
    offset: i64,
) {
    use prost::encoding::{encode_key, encode_varint, int32, int64, WireType};
    if !payment.is_empty() {
        encode_key(1, WireType::LengthDelimited, out);
        encode_varint(payment.len() as u64, out);
        out.extend_from_slice(payment);
    }
    if !origin.is_empty() {
        encode_key(2, WireType::LengthDelimited, out);
        encode_varint(origin.len() as u64, out);
        out.extend_from_slice(origin.as_bytes());
    }
    if partition != 0 {
        int32::encode(4, &partition, out);
    }
    if offset != 0 {
        int64::encode(5, &offset, out);
    }
}

/// A `fraudline.v1.StateBatch` being built: the stream payments of one
/// payments partition, in scoring order, appended as they are scored (no
/// allocation per payment once the buffer has grown).
#[derive(Debug)]
pub struct BatchEncoder {
    buf: Vec<u8>,
    /// The payments' source offsets, in order.
    offsets: Vec<i64>,
    partition: i32,
}

impl BatchEncoder {
    pub fn new(origin: &str, partition: i32) -> BatchEncoder {
        use prost::encoding::{encode_key, encode_varint, WireType};
        let mut buf = Vec::with_capacity(16 * 1024);
        if !origin.is_empty() {
            encode_key(1, WireType::LengthDelimited, &mut buf);
            encode_varint(origin.len() as u64, &mut buf);
            buf.extend_from_slice(origin.as_bytes());
        }
        BatchEncoder {
            buf,
            offsets: Vec::with_capacity(256),
            partition,
        }
    }

    /// Appends one payment (its protobuf bytes) read at `offset`.
    pub fn push(&mut self, payment: &[u8], offset: i64) {
        use prost::encoding::{encode_key, encode_varint, WireType};
        let len = stream_len(payment, "", self.partition, offset);
        encode_key(2, WireType::LengthDelimited, &mut self.buf);
        encode_varint(len as u64, &mut self.buf);
        encode_stream_into(&mut self.buf, payment, "", self.partition, offset);
        self.offsets.push(offset);
    }

    /// Payments in the batch.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Encoded size so far.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The encoded batch and its payments' source offsets.
    pub fn finish(self) -> (Vec<u8>, Vec<i64>) {
        (self.buf, self.offsets)
    }
}

/// The payments of a state-log record, whichever form it has: a
/// `StateBatch` (header [`HDR_BATCH`]) or one `StateRecord`. Each record
/// comes with the origin of its writer.
pub fn decode_log_record(
    bytes: &[u8],
    batch: bool,
) -> Result<(String, Vec<crate::proto::StateRecord>), prost::DecodeError> {
    if batch {
        let b = crate::proto::StateBatch::decode(bytes)?;
        Ok((b.origin, b.records))
    } else {
        let r = crate::proto::StateRecord::decode(bytes)?;
        Ok((r.origin.clone(), vec![r]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_decodes_to_the_records_the_derived_encoder_writes() {
        let mut g = crate::tools::gen::Generator::new(Default::default());
        let payments: Vec<Payment> = (0..5).map(|_| g.next().expect("a payment").0).collect();
        for partition in [0, 3] {
            let mut b = BatchEncoder::new("0123456789abcdef", partition);
            for (i, p) in payments.iter().enumerate() {
                b.push(&p.to_protobuf(), i as i64 * 1_000_000_007);
            }
            assert_eq!(b.len(), 5);
            let (bytes, offsets) = b.finish();
            assert_eq!(
                offsets,
                (0..5).map(|i| i * 1_000_000_007).collect::<Vec<_>>()
            );
            let (origin, records) = decode_log_record(&bytes, true).expect("decodes");
            assert_eq!(origin, "0123456789abcdef");
            assert_eq!(records.len(), 5);
            for (i, (r, p)) in records.iter().zip(&payments).enumerate() {
                let source = Source::Stream {
                    partition,
                    offset: i as i64 * 1_000_000_007,
                };
                let derived =
                    crate::proto::StateRecord::decode(encode(p, "", source, None).as_slice())
                        .expect("derived decodes");
                assert_eq!(r, &derived, "payment {i} of partition {partition}");
            }
        }
    }

    #[test]
    fn a_single_record_still_decodes() {
        let p = crate::tools::gen::Generator::new(Default::default())
            .next()
            .expect("a payment")
            .0;
        let bytes = encode(&p, "abc", Source::Inline, None);
        let (origin, records) = decode_log_record(&bytes, false).expect("decodes");
        assert_eq!(origin, "abc");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].source_partition, -1);
    }
}

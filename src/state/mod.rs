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
async fn partitions_of(cfg: &crate::config::Config, topic: &str) -> Result<Option<usize>, String> {
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

/// The state record of a payment scored by the stream, in one allocation:
/// `payment` is its protobuf encoding (the input bytes themselves when the
/// input was protobuf, which decode to the same payment: decoding is a pure
/// function of the bytes). Equal to [`encode`] of the decoded payment with
/// no verdict, field for field.
pub fn encode_stream(payment: &[u8], origin: &str, partition: i32, offset: i64) -> Vec<u8> {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, int32, int64, WireType};
    let delimited =
        |tag: u32, n: usize| prost::encoding::key_len(tag) + encoded_len_varint(n as u64) + n;
    // Proto3: zero values are not written (as prost's derived encoder does).
    let len = delimited(1, payment.len())
        + if origin.is_empty() {
            0
        } else {
            delimited(2, origin.len())
        }
        + if partition == 0 {
            0
        } else {
            int32::encoded_len(4, &partition)
        }
        + if offset == 0 {
            0
        } else {
            int64::encoded_len(5, &offset)
        };
    let mut out = Vec::with_capacity(len);
    if !payment.is_empty() {
        encode_key(1, WireType::LengthDelimited, &mut out);
        encode_varint(payment.len() as u64, &mut out);
        out.extend_from_slice(payment);
    }
    if !origin.is_empty() {
        encode_key(2, WireType::LengthDelimited, &mut out);
        encode_varint(origin.len() as u64, &mut out);
        out.extend_from_slice(origin.as_bytes());
    }
    if partition != 0 {
        int32::encode(4, &partition, &mut out);
    }
    if offset != 0 {
        int64::encode(5, &offset, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_allocation_encoding_equals_the_derived_one() {
        let p = crate::tools::gen::Generator::new(Default::default())
            .next()
            .expect("a payment")
            .0;
        for (partition, offset) in [(0, 0), (3, 0), (0, 17), (5, 1_234_567_890_123)] {
            let source = Source::Stream { partition, offset };
            let derived = encode(&p, "0123456789abcdef", source, None);
            let direct = encode_stream(&p.to_protobuf(), "0123456789abcdef", partition, offset);
            assert_eq!(direct, derived, "partition {partition} offset {offset}");
        }
    }
}

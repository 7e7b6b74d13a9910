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

use std::sync::Arc;

use prost::Message as _;

use crate::engine::Verdict;
use crate::event::Payment;
pub use follower::{spawn_follower, Follower, FollowerError, FollowerHandle};

/// Header naming the origin of a state record (also in the record), so a
/// follower can skip its own records without decoding them.
pub const HDR_ORIGIN: &str = "fraudline.origin";

/// Creates the state log topic if it does not exist (as Kafka Streams
/// creates its internal topics): as many partitions as the payments topic
/// (6 for in-line only), the brokers' default replication, time retention
/// of at least the replay lookback plus a day. An existing topic is left
/// as it is.
pub async fn ensure_topic(cfg: &crate::config::Config) -> Result<(), String> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let topic = &cfg.kafka.state_topic;
    let timeout = std::time::Duration::from_secs(10);
    let probe: BaseConsumer = crate::stream::base_config(cfg)
        .set("group.id", format!("{}-state-probe", cfg.kafka.group_id))
        .set("allow.auto.create.topics", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let (cfg2, topic2) = (cfg.kafka.payments_topic.clone(), topic.clone());
    let (exists, partitions) = tokio::task::spawn_blocking(move || {
        let count = |t: &str| {
            probe
                .fetch_metadata(Some(t), timeout)
                .ok()
                .and_then(|md| {
                    md.topics()
                        .iter()
                        .find(|m| m.name() == t && m.error().is_none())
                        .map(|m| m.partitions().len())
                })
                .filter(|n| *n > 0)
        };
        let exists = count(&topic2).is_some();
        let partitions = if cfg2.is_empty() { None } else { count(&cfg2) };
        (exists, partitions.unwrap_or(6))
    })
    .await
    .map_err(|e| e.to_string())?;
    if exists {
        return Ok(());
    }
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = crate::stream::base_config(cfg)
        .create()
        .map_err(|e| e.to_string())?;
    let retention_ms = (cfg.kafka.warmup_lookback_ms + 86_400_000).to_string();
    let new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(-1))
        .set("cleanup.policy", "delete")
        .set("retention.ms", &retention_ms);
    let results = admin
        .create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(timeout)),
        )
        .await
        .map_err(|e| e.to_string())?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(%topic, partitions, "state log topic created"),
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(format!("cannot create {t}: {e}")),
        }
    }
    Ok(())
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

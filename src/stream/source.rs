//! The source: the payments consumer, its subscription, and what happens
//! when partitions are assigned (the state catch-up with the state log, or
//! the warm-up replay without it) before they are scored.

use std::sync::Arc;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::TopicPartitionList;

use super::{base_config, SharedConsumer, StreamContext, StreamError};
use crate::config::{Config, Delivery};

/// How often the consumer refreshes the payments topic's metadata (new
/// partitions), in ms; see [`consumer_config`].
const METADATA_REFRESH_MS: u64 = 10_000;

/// The consumer's settings. Offsets are never stored automatically: the
/// delivery loops store (or transact) them once the output is safe.
pub fn consumer_config(cfg: &Config) -> ClientConfig {
    let k = &cfg.kafka;
    let mut c = base_config(cfg);
    c.set("group.id", &k.group_id)
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", &k.auto_offset_reset)
        .set("session.timeout.ms", k.session_timeout_ms.to_string())
        .set("fetch.wait.max.ms", k.fetch_wait_max_ms.to_string())
        .set("fetch.queue.backoff.ms", "10")
        .set("partition.assignment.strategy", "cooperative-sticky")
        // Partitions added to the payments topic at run time are assigned
        // only once the client's metadata shows them. librdkafka's own
        // refresh comes every 5 minutes (the default 300000): until then
        // their payments wait unscored, unless some other metadata request
        // happens to bring the news (the lag measurement's, every
        // statistics_interval_ms, which 0 turns off). The chaos suite's
        // add-partitions case found the 5 minutes (docs/CHAOS.md). A
        // metadata request every 10 s costs the brokers next to nothing;
        // `kafka.consumer` can still set another value.
        .set(
            "topic.metadata.refresh.interval.ms",
            METADATA_REFRESH_MS.to_string(),
        );
    match k.delivery {
        Delivery::AtLeastOnce => {
            c.set("enable.auto.commit", "true")
                .set("auto.commit.interval.ms", k.commit_interval_ms.to_string());
        }
        Delivery::ExactlyOnce => {
            c.set("enable.auto.commit", "false")
                .set("isolation.level", "read_committed");
        }
    }
    for (key, v) in &k.consumer {
        c.set(key, v);
    }
    c
}

/// With the state log: newly assigned partitions (paused by the context)
/// resume once the follower has read the log to where it ends now, so the
/// payments their previous owner scored are in this instance's state. The
/// in-line API's readiness is not touched: a rebalance of the stream does
/// not take it out of service.
pub(super) async fn handoff(
    cfg: Config,
    follower: crate::state::FollowerHandle,
    consumer: SharedConsumer,
    mut assigned: tokio::sync::mpsc::UnboundedReceiver<Vec<i32>>,
    ready: Arc<crate::serve::ready::Readiness>,
) {
    let limit = std::time::Duration::from_millis(cfg.kafka.state_catch_up_ms);
    while let Some(mut partitions) = assigned.recv().await {
        while let Ok(more) = assigned.try_recv() {
            partitions.extend(more);
        }
        ready.set_stream(false);
        let started = std::time::Instant::now();
        if follower.wait_for_end(limit).await {
            tracing::info!(
                ?partitions,
                seconds = started.elapsed().as_secs_f64(),
                "state log read to its end; scoring the new partitions"
            );
        } else {
            tracing::warn!(
                ?partitions,
                "state log not read to its end in kafka.state_catch_up_ms; scoring the new partitions anyway"
            );
        }
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition(&cfg.kafka.payments_topic, *p);
        }
        if let Err(e) = consumer.resume(&tpl) {
            tracing::warn!(error = %e, "cannot resume partitions after the state catch-up");
        }
        ready.set_stream(true);
    }
}

/// The warm-up reader: same brokers and security settings, the group's id
/// (to read its committed offsets; it never joins), committed data only.
pub(super) fn warmup_reader_config(cfg: &Config) -> ClientConfig {
    let mut c = base_config(cfg);
    c.set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("statistics.interval.ms", "0")
        .set(
            "client.id",
            format!("fraudline-{}-warmup", cfg.kafka.group_id),
        );
    for (key, v) in &cfg.kafka.consumer {
        c.set(key, v);
    }
    c
}

pub(super) fn subscribe(
    cfg: &Config,
    consumer: &StreamConsumer<StreamContext>,
) -> Result<(), StreamError> {
    consumer
        .subscribe(&[&cfg.kafka.payments_topic])
        .map_err(|source| StreamError::Subscribe {
            topic: cfg.kafka.payments_topic.clone(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_partitions_are_seen_within_seconds_unless_overridden() {
        let cfg = Config::from_parts(None, None, Vec::new()).unwrap();
        assert_eq!(
            consumer_config(&cfg).get("topic.metadata.refresh.interval.ms"),
            Some("10000")
        );
        let toml = "[kafka.consumer]\n\"topic.metadata.refresh.interval.ms\" = \"60000\"\n";
        let cfg = Config::from_parts(Some(toml), None, Vec::new()).unwrap();
        assert_eq!(
            consumer_config(&cfg).get("topic.metadata.refresh.interval.ms"),
            Some("60000")
        );
    }
}

//! Consumer lag per assigned partition, from the consumer's own positions
//! and the partitions' high watermarks: no extra exporter, and the figure is
//! what this instance has still to read, not what the group last committed.
//!
//! Every `interval` the task reads the assignment, the positions (the next
//! offset the application will get), and for partitions with no position
//! yet the group's committed offset; then asks the broker for each high
//! watermark. The table is replaced whole, so revoked partitions drop out
//! (the rebalance callback also drops them at once).

use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::Offset;

use crate::telemetry;

/// Lag of one partition: `high_watermark - position`, never negative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub high_watermark: i64,
    pub position: i64,
    pub lag: i64,
}

/// Measures every assigned partition. Blocking (broker round trips, each
/// bounded by `timeout`): call it off the async workers. A partition whose
/// position is still unknown (nothing fetched, nothing committed) is left
/// out rather than guessed.
pub fn measure<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    timeout: Duration,
) -> KafkaResult<Vec<PartitionLag>> {
    let assignment = consumer.assignment()?;
    if assignment.count() == 0 {
        return Ok(Vec::new());
    }
    let positions = consumer.position()?;
    let unknown = positions
        .elements()
        .iter()
        .any(|e| offset_value(e.offset()).is_none());
    let committed = if unknown {
        Some(consumer.committed_offsets(assignment.clone(), timeout)?)
    } else {
        None
    };
    let mut out = Vec::with_capacity(assignment.count());
    for e in assignment.elements() {
        let (topic, partition) = (e.topic(), e.partition());
        let position = positions
            .find_partition(topic, partition)
            .and_then(|p| offset_value(p.offset()))
            .or_else(|| {
                committed
                    .as_ref()
                    .and_then(|c| c.find_partition(topic, partition))
                    .and_then(|p| offset_value(p.offset()))
            });
        let Some(position) = position else { continue };
        let (_low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        out.push(PartitionLag {
            topic: topic.to_string(),
            partition,
            high_watermark: high,
            position,
            lag: (high - position).max(0),
        });
    }
    Ok(out)
}

fn offset_value(o: Offset) -> Option<i64> {
    match o {
        Offset::Offset(n) if n >= 0 => Some(n),
        _ => None,
    }
}

/// Refreshes the `fraudline_consumer_lag_messages` table every `interval`
/// until aborted; clears it when dropped with the task.
pub(crate) fn spawn(
    consumer: super::SharedConsumer,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _clear = ClearOnDrop;
        let timeout = interval.clamp(Duration::from_millis(500), Duration::from_secs(5));
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let c = consumer.clone();
            match tokio::task::spawn_blocking(move || measure(&*c, timeout)).await {
                Ok(Ok(lags)) => telemetry::consumer_lag()
                    .replace(lags.into_iter().map(|l| (l.topic, l.partition, l.lag))),
                // Broker away: keep the last figures; librdkafka reconnects.
                Ok(Err(e)) => tracing::debug!(error = %e, "consumer lag not measured this round"),
                Err(_) => return,
            }
        }
    })
}

struct ClearOnDrop;

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        telemetry::consumer_lag().clear();
    }
}

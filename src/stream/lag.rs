//! Consumer lag per assigned partition, from the consumer's own positions
//! and the partitions' high watermarks: no extra exporter, and the figure is
//! what this instance has still to read, not what the group last committed.
//!
//! Every `interval` the task reads the assignment, the positions (the next
//! offset the application will get), and for partitions with no position
//! yet the group's committed offset; then asks the broker for each high
//! watermark. The table is replaced whole, so revoked partitions drop out
//! (the rebalance callback also drops them at once, unless the assignment
//! was lost in an outage: then the last figures stay).
//!
//! The same task is the stream's health probe: brokers reachable, a
//! partition held, positions moving while records wait ([`spawn`]).

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
    measure_or_reset(consumer, timeout, None)
}

/// [`measure`], where a partition with no position and no committed offset
/// starts where the consumer's `auto.offset.reset` will put it:
/// `Some(true)` (earliest) at the low watermark, `Some(false)` (latest) at
/// the high watermark. That is where librdkafka will read from, not a
/// guess, so a stream that has just been given an empty or untouched
/// partition reports its lag at once.
pub fn measure_or_reset<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    timeout: Duration,
    reset_earliest: Option<bool>,
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
        if position.is_none() && reset_earliest.is_none() {
            continue;
        }
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        let position = match (position, reset_earliest) {
            (Some(p), _) => p,
            (None, Some(true)) => low,
            (None, _) => high,
        };
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

/// What the probe found wrong with the stream, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trouble {
    /// The brokers did not answer the watermark requests.
    Unreachable,
    /// The consumer holds no partition.
    Unassigned,
    /// Records wait (lag > 0) and no position moved since the last round.
    Stalled,
}

impl Trouble {
    fn as_str(self) -> &'static str {
        match self {
            Trouble::Unreachable => "brokers unreachable",
            Trouble::Unassigned => "no partition assigned",
            Trouble::Stalled => "no progress with records waiting",
        }
    }
}

/// The stream's health probe, and the consumer-lag table when `publish`
/// (`kafka.statistics_interval_ms` > 0). Every `interval` it measures the
/// lag (broker round trips, off the async workers): a failure sets
/// `fraudline_kafka_connected` to 0 at once, and keeps the last lag figures
/// (an outage must not hide the backlog it builds); no assignment, or no
/// position moving while records wait, is trouble too. Trouble that lasts
/// longer than `grace` turns the stream path not ready (`/readyz/stream`,
/// and `/readyz` without the in-line API), with a log line naming it, until
/// a round finds none. Runs until aborted; clears the lag table when
/// dropped with the task.
pub(crate) fn spawn(
    consumer: super::SharedConsumer,
    topic: String,
    interval: Duration,
    publish: bool,
    ready: std::sync::Arc<crate::serve::ready::Readiness>,
    grace: Duration,
    reset_earliest: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _clear = ClearOnDrop;
        let connected = metrics::gauge!(telemetry::KAFKA_CONNECTED);
        let timeout = interval.clamp(Duration::from_millis(500), Duration::from_secs(5));
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut since: Option<(std::time::Instant, Trouble)> = None;
        let mut reported = false;
        let mut last: Vec<(i32, i64)> = Vec::new();
        loop {
            tick.tick().await;
            let (c, topic) = (consumer.clone(), topic.clone());
            let round = tokio::task::spawn_blocking(move || {
                // Reachability apart from the assignment: a consumer whose
                // assignment was lost in an outage asks the brokers nothing.
                let reachable = c.fetch_metadata(Some(&topic), timeout).is_ok();
                let held = c.assignment().map_or(0, |a| a.count());
                let lags = (reachable && held > 0)
                    .then(|| measure_or_reset(&*c, timeout, Some(reset_earliest)));
                (reachable, held, lags)
            });
            let trouble = match round.await {
                Err(_) => return,
                Ok((false, _, _)) | Ok((true, _, Some(Err(_)))) => {
                    // Broker away: keep the last figures; librdkafka reconnects.
                    connected.set(0.0);
                    Some(Trouble::Unreachable)
                }
                // Keep the last figures too: an assignment lost in an
                // outage leaves the backlog where it was.
                Ok((true, _, None)) => {
                    connected.set(1.0);
                    Some(Trouble::Unassigned)
                }
                Ok((true, _, Some(Ok(lags)))) => {
                    connected.set(1.0);
                    let positions: Vec<(i32, i64)> =
                        lags.iter().map(|l| (l.partition, l.position)).collect();
                    let waiting = lags.iter().any(|l| l.lag > 0);
                    let trouble = if waiting && positions == last && ready.stream_running() {
                        Some(Trouble::Stalled)
                    } else {
                        None
                    };
                    last = positions;
                    if publish {
                        telemetry::consumer_lag()
                            .replace(lags.into_iter().map(|l| (l.topic, l.partition, l.lag)));
                    }
                    trouble
                }
            };
            match (trouble, since) {
                (None, _) => {
                    if reported {
                        tracing::info!("stream healthy again: ready");
                        ready.set_stream_healthy(true);
                    }
                    since = None;
                    reported = false;
                }
                (Some(t), None) => since = Some((std::time::Instant::now(), t)),
                (Some(t), Some((from, _))) => {
                    since = Some((from, t));
                    if !reported && from.elapsed() >= grace {
                        tracing::warn!(
                            trouble = t.as_str(),
                            seconds = from.elapsed().as_secs_f64(),
                            "stream not ready: trouble for longer than kafka.stall_grace_ms"
                        );
                        ready.set_stream_healthy(false);
                        reported = true;
                    }
                }
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

//! Warm-up: when partitions are assigned (at start, or by a rebalance), their
//! feature state is rebuilt before verdicts resume. The context pauses the
//! new partitions; this task replays each one from `now - lookback` (found
//! with offsets-for-times) up to the group's committed offset, feeding the
//! engine without scoring or publishing, then resumes them. Consumption then
//! continues from the committed offset, so no event is counted twice. A
//! partition this process held before (a rebalance that gives it back)
//! replays only from where its own state ends ([`Applied`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{info, warn};

use super::{Applied, StreamContext};
use crate::config::Config;
use crate::engine::Engine;
use crate::event;
use crate::telemetry;

/// What one warm-up did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WarmupReport {
    pub partitions: Vec<i32>,
    pub events: u64,
    pub refused: u64,
}

/// Replays `[now - lookback, committed)` of `partitions` into the engine.
/// Blocking: run it off the async workers.
pub fn replay(
    cfg: &Config,
    reader_cfg: ClientConfig,
    engine: &Engine,
    applied: &Applied,
    partitions: &[i32],
) -> Result<WarmupReport, KafkaError> {
    let topic = &cfg.kafka.payments_topic;
    let timeout = Duration::from_secs(30);
    let mut report = WarmupReport {
        partitions: partitions.to_vec(),
        ..WarmupReport::default()
    };
    let reader: BaseConsumer = reader_cfg.create()?;
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = reader.committed_offsets(tpl, timeout)?;
    let since = crate::now_ms() - cfg.kafka.warmup_lookback_ms as i64;
    let mut times = TopicPartitionList::new();
    for p in partitions {
        times.add_partition_offset(topic, *p, Offset::Offset(since))?;
    }
    let starts = reader.offsets_for_times(times, timeout)?;
    let mut assign = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for c in committed.elements() {
        let Offset::Offset(end) = c.offset() else {
            continue; // nothing committed: consumption starts from auto.offset.reset
        };
        let start = starts
            .find_partition(topic, c.partition())
            .and_then(|s| match s.offset() {
                Offset::Offset(o) => Some(o),
                _ => None, // no record as recent as `since`
            });
        // What this process already holds of the partition is not replayed.
        let start = match (start, applied.next(c.partition())) {
            (Some(s), Some(held)) => Some(s.max(held)),
            (s, _) => s,
        };
        if let Some(start) = start.filter(|s| *s < end) {
            assign.add_partition_offset(topic, c.partition(), Offset::Offset(start))?;
            ends.insert(c.partition(), end);
        }
    }
    if ends.is_empty() {
        return Ok(report);
    }
    reader.assign(&assign)?;
    let limits = cfg.limits();
    let started = Instant::now();
    let limit = Duration::from_millis(cfg.kafka.warmup_timeout_ms);
    while !ends.is_empty() && started.elapsed() < limit {
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let Some(end) = ends.get(&m.partition()).copied() else {
                    continue;
                };
                if m.offset() >= end {
                    ends.remove(&m.partition());
                    continue;
                }
                let bytes = m.payload().unwrap_or(&[]);
                match event::decode(bytes, None, &limits, crate::now_ms()) {
                    Ok(p) => {
                        engine.warm(&p);
                        report.events += 1;
                    }
                    Err(_) => report.refused += 1,
                }
                applied.note(m.partition(), m.offset());
                if m.offset() + 1 >= end {
                    ends.remove(&m.partition());
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                ends.remove(&p);
            }
            Some(Err(e)) => warn!(error = %e, "warm-up read error; retrying"),
            None => {}
        }
    }
    if !ends.is_empty() {
        warn!(partitions = ?ends.keys().collect::<Vec<_>>(), "warm-up timed out; resuming with partial state");
    }
    Ok(report)
}

/// The warm-up task: takes newly assigned (and paused) partitions from the
/// consumer context, replays them, and resumes them. `ready` is false while
/// a warm-up runs.
pub async fn run(
    cfg: Config,
    engine: Arc<Engine>,
    applied: Arc<Applied>,
    consumer: Arc<StreamConsumer<StreamContext>>,
    mut assigned: UnboundedReceiver<Vec<i32>>,
    ready: Arc<crate::serve::ready::Readiness>,
) {
    let events = metrics::counter!(telemetry::WARMUP_EVENTS);
    let duration = metrics::gauge!(telemetry::WARMUP_DURATION);
    while let Some(mut partitions) = assigned.recv().await {
        // Take every assignment that is already waiting in one go.
        while let Ok(more) = assigned.try_recv() {
            partitions.extend(more);
        }
        ready.set_stream(false);
        let started = Instant::now();
        let (c, e, a, p) = (
            cfg.clone(),
            engine.clone(),
            applied.clone(),
            partitions.clone(),
        );
        let reader_cfg = super::source::warmup_reader_config(&cfg);
        let result = tokio::task::spawn_blocking(move || replay(&c, reader_cfg, &e, &a, &p)).await;
        let took = started.elapsed();
        duration.set(took.as_secs_f64());
        match result {
            Ok(Ok(r)) => {
                events.increment(r.events);
                info!(
                    partitions = ?r.partitions,
                    events = r.events,
                    refused = r.refused,
                    seconds = took.as_secs_f64(),
                    "warm-up done; resuming"
                );
            }
            Ok(Err(e)) => warn!(error = %e, ?partitions, "warm-up failed; resuming without it"),
            Err(e) => warn!(error = %e, ?partitions, "warm-up task failed; resuming without it"),
        }
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition(&cfg.kafka.payments_topic, *p);
        }
        if let Err(e) = consumer.resume(&tpl) {
            warn!(error = %e, "cannot resume partitions after warm-up");
        }
        ready.set_stream(true);
        // Without a state log, the first warm-up is what loads feature state.
        ready.set_state_loaded();
    }
}

//! The stream's side of the state log: every payment it scores goes to the
//! log, batched. The payments of one payments partition scored within
//! `kafka.state_batch_ms` (or up to [`MAX_BATCH_BYTES`]) travel as one
//! `fraudline.v1.StateBatch` record, so the log's per-record costs (the
//! producer's queue entry and delivery report, the broker's validation,
//! every follower's fetch and skip) are paid once per batch, not once per
//! payment. A verdict never waits for its batch; its offset does (at-least-
//! once: committed once both are acknowledged; exactly-once: the batch is
//! in the verdict's transaction, flushed before the commit).
//!
//! Batch `n` of payments partition `p` goes to state-log partition
//! `p mod <state partitions>` (keyed by `p` too), so one partition's
//! payments stay in scoring order in the log.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use super::at_least_once::{classify, Failure};
use super::{Stop, StreamContext};
use crate::config::Config;
use crate::state::{BatchEncoder, HDR_BATCH, HDR_ORIGIN};

/// A batch is sent once it holds this many bytes, whatever its age.
pub(crate) const MAX_BATCH_BYTES: usize = 256 * 1024;

/// A closed batch, ready to send (and to re-send as it is).
pub(crate) struct Batch {
    /// The payments partition its payments were read from.
    pub partition: i32,
    /// Their offsets, in scoring order.
    pub offsets: Vec<i64>,
    pub bytes: Vec<u8>,
    /// When its first payment was scored: the record's timestamp, so the
    /// followers' propagation lag includes the time spent batching.
    pub opened_ms: i64,
    /// Failed deliveries that were not a broker outage.
    pub attempts: u32,
}

struct Open {
    enc: BatchEncoder,
    opened_ms: i64,
}

/// The open batches, one per payments partition, and those closed by size
/// and not yet taken.
pub(crate) struct StateBatches {
    origin: Arc<str>,
    topic: String,
    /// The state log's partition count, when known at start.
    log_partitions: Option<i32>,
    max_bytes: usize,
    open: Vec<Open>,
    full: Vec<Batch>,
}

impl StateBatches {
    /// `record_limit`: the producer's record size limit.
    pub(crate) fn new(
        cfg: &Config,
        origin: Arc<str>,
        log_partitions: Option<i32>,
        record_limit: usize,
    ) -> StateBatches {
        StateBatches {
            origin,
            topic: cfg.kafka.state_topic.clone(),
            log_partitions: log_partitions.filter(|n| *n > 0),
            // Room for the batch's last payment (at most RAW_PAYMENT_MAX
            // bytes plus its envelope) and the record's own overhead.
            max_bytes: MAX_BATCH_BYTES
                .min(record_limit.saturating_sub(crate::state::RAW_PAYMENT_MAX + 1024))
                .max(1),
            open: Vec::new(),
            full: Vec::new(),
        }
    }

    /// Adds a scored payment (its protobuf bytes) read at `partition` /
    /// `offset`. A batch that reaches the size bound is closed; take it
    /// with [`StateBatches::take_full`].
    pub(crate) fn push(&mut self, payment: &[u8], partition: i32, offset: i64) {
        let i = match self
            .open
            .iter()
            .position(|o| o.enc.partition() == partition)
        {
            Some(i) => i,
            None => {
                self.open.push(Open {
                    enc: BatchEncoder::new(&self.origin, partition),
                    opened_ms: crate::now_ms(),
                });
                self.open.len() - 1
            }
        };
        self.open[i].enc.push(payment, offset);
        if self.open[i].enc.bytes() >= self.max_bytes {
            let o = self.open.swap_remove(i);
            self.full.push(close(o));
        }
    }

    /// The batches closed by size since the last call.
    pub(crate) fn take_full(&mut self) -> impl Iterator<Item = Batch> + '_ {
        self.full.drain(..)
    }

    /// Closes every open batch and returns them with those closed by size.
    pub(crate) fn take_all(&mut self) -> Vec<Batch> {
        let mut out: Vec<Batch> = self.full.drain(..).collect();
        out.extend(self.open.drain(..).map(close));
        out
    }

    /// Forgets every batch not yet sent (exactly-once: the transaction they
    /// belonged to aborted; its payments are read and scored again).
    pub(crate) fn clear(&mut self) {
        self.open.clear();
        self.full.clear();
    }

    /// The record for `b`.
    fn record<'a>(&'a self, b: &'a Batch, key: &'a [u8; 4]) -> FutureRecord<'a, [u8], [u8]> {
        let count = b.offsets.len().to_string();
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header {
                key: HDR_ORIGIN,
                value: Some(self.origin.as_bytes()),
            })
            .insert(Header {
                key: HDR_BATCH,
                value: Some(count.as_bytes()),
            });
        let mut r = FutureRecord::to(&self.topic)
            .key(key.as_slice())
            .payload(b.bytes.as_slice())
            .headers(headers)
            .timestamp(b.opened_ms);
        if let Some(n) = self.log_partitions {
            r = r.partition(b.partition.rem_euclid(n));
        }
        r
    }
}

fn close(o: Open) -> Batch {
    let partition = o.enc.partition();
    let (bytes, offsets) = o.enc.finish();
    Batch {
        partition,
        offsets,
        bytes,
        opened_ms: o.opened_ms,
        attempts: 0,
    }
}

/// Enqueues `b` with librdkafka, waiting while its queue is full or the
/// broker is away. `None` on shutdown, or when it is refused for good or
/// after `kafka.produce_max_attempts`: the batch's payments then stay in
/// this instance's features only, which is logged and counted
/// (`fraudline_state_unwritten_total`).
pub(crate) async fn enqueue(
    cfg: &Config,
    batches: &StateBatches,
    producer: &FutureProducer<StreamContext>,
    stop: &mut Stop,
    b: &mut Batch,
) -> Option<DeliveryFuture> {
    let key = b.partition.to_be_bytes();
    loop {
        match producer.send_result(batches.record(b, &key)) {
            Ok(f) => return Some(f),
            Err((e, _)) => {
                let class = classify(&e);
                if class != Failure::Outage {
                    b.attempts += 1;
                }
                if class == Failure::Permanent || b.attempts >= cfg.kafka.produce_max_attempts {
                    unwritten(b, &e);
                    return None;
                }
                let wait = if class == Failure::Outage { 1 } else { 100 };
                if stop.pause(Duration::from_millis(wait)).await {
                    return None;
                }
            }
        }
    }
}

/// Enqueues `b` at shutdown, when the stop signal is already given:
/// waits up to a second for room in librdkafka's queue, then gives up
/// (`None`: the batch's offsets stay uncommitted and its payments are read
/// and logged again after the restart).
pub(crate) async fn enqueue_now(
    batches: &StateBatches,
    producer: &FutureProducer<StreamContext>,
    b: &Batch,
) -> Option<DeliveryFuture> {
    let key = b.partition.to_be_bytes();
    for _ in 0..1_000 {
        match producer.send_result(batches.record(b, &key)) {
            Ok(f) => return Some(f),
            Err((e, _)) if classify(&e) == Failure::Outage => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => {
                tracing::warn!(partition = b.partition, error = %e, "state batch not enqueued at shutdown; its payments are read again after the restart");
                return None;
            }
        }
    }
    None
}

/// Logs and counts a batch given up on.
pub(crate) fn unwritten(b: &Batch, e: &rdkafka::error::KafkaError) {
    tracing::warn!(
        partition = b.partition,
        payments = b.offsets.len(),
        error = %e,
        "state batch cannot be written; these payments' features stay on this instance"
    );
    metrics::counter!(crate::telemetry::STATE_UNWRITTEN).increment(b.offsets.len() as u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batches(limit: usize) -> StateBatches {
        let cfg = crate::config::Config::from_parts(None, None, []).expect("defaults");
        StateBatches::new(&cfg, Arc::from("origin"), Some(6), limit)
    }

    #[test]
    fn one_batch_per_partition_in_scoring_order() {
        let mut b = batches(1_000_000);
        for o in 0..10 {
            b.push(b"payment", (o % 2) as i32, o);
        }
        assert_eq!(b.take_full().count(), 0, "nothing closed by size");
        let mut all = b.take_all();
        all.sort_by_key(|b| b.partition);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].offsets, vec![0, 2, 4, 6, 8]);
        assert_eq!(all[1].offsets, vec![1, 3, 5, 7, 9]);
        assert!(b.take_all().is_empty(), "taken once");
    }

    #[test]
    fn a_batch_closes_at_its_size_bound_and_fits_the_record_limit() {
        let limit = 64 * 1024;
        let mut b = batches(limit);
        let payment = vec![7u8; 1000];
        for o in 0..200 {
            b.push(&payment, 0, o);
        }
        let full: Vec<Batch> = b.take_full().collect();
        assert!(!full.is_empty());
        for f in &full {
            assert!(f.bytes.len() < limit, "{} bytes", f.bytes.len());
        }
        let rest = b.take_all();
        let sent: usize = full.iter().chain(&rest).map(|b| b.offsets.len()).sum();
        assert_eq!(sent, 200, "every payment in exactly one batch");
    }

    #[test]
    fn clear_forgets_unsent_batches() {
        let mut b = batches(1_000_000);
        b.push(b"p", 0, 1);
        b.clear();
        assert!(b.take_all().is_empty());
    }
}

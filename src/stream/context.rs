//! The librdkafka client context: rebalances become log lines, and a
//! revoked partition's consumer-lag series is dropped at once.

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use tracing::{info, warn};

use crate::telemetry;

/// `assigned` is set on the consumer's context when warm-up is on: newly
/// assigned partitions are paused and handed to the warm-up task.
#[derive(Clone, Default)]
pub struct StreamContext {
    pub(crate) assigned: Option<tokio::sync::mpsc::UnboundedSender<Vec<i32>>>,
    /// The snapshot writer, whose role is holding partition 0.
    pub(crate) snapshots: Option<crate::state::SnapshotHandle>,
    /// The revoke being handled was a lost assignment (read before the
    /// revoke is applied, when librdkafka still says so).
    pub(crate) lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Revokes of one or more partitions so far. The exactly-once loop
    /// compares it across a transaction: one that saw partitions leave is
    /// aborted, never committed (see `exactly_once`).
    pub(crate) revokes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Whether `tpl` holds partition 0 (the snapshot writer's role).
fn has_partition_zero(tpl: &rdkafka::TopicPartitionList) -> bool {
    tpl.elements().iter().any(|e| e.partition() == 0)
}

impl ClientContext for StreamContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::telemetry::librdkafka_log(level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // Broker down, connection refused: librdkafka retries by itself,
        // and reports each retry: once per 10 s is enough to say so.
        static THROTTLE: crate::telemetry::Throttle = crate::telemetry::Throttle::new(10_000);
        if let Some(held) = THROTTLE.allow() {
            warn!(error = %error, reason, repeats_held_back = held, "kafka client error");
        }
    }
}

impl ConsumerContext for StreamContext {
    fn pre_rebalance(&self, c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.lost
                .store(c.assignment_lost(), std::sync::atomic::Ordering::SeqCst);
            if tpl.count() > 0 {
                self.revokes
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }

    fn post_rebalance(&self, c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                info!(partitions = ?partitions(tpl), "partitions assigned");
                if let Some(s) = &self.snapshots {
                    if has_partition_zero(tpl) {
                        s.set_role(true);
                    }
                }
                if let Some(tx) = &self.assigned {
                    if tpl.count() > 0 {
                        if let Err(e) = c.pause(tpl) {
                            warn!(error = %e, "cannot pause partitions for warm-up");
                        }
                        let list = tpl.elements().iter().map(|e| e.partition()).collect();
                        let _ = tx.send(list);
                    }
                }
            }
            Rebalance::Revoke(tpl) => {
                info!(partitions = ?partitions(tpl), "partitions revoked");
                if let Some(s) = &self.snapshots {
                    if has_partition_zero(tpl) {
                        s.set_role(false);
                    }
                }
                if self.lost.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    // Lost, not handed over (the brokers were away past the
                    // session timeout): the backlog is still ours to show
                    // until the group settles; the next measurement after
                    // it replaces the table whole.
                    warn!("assignment lost (brokers away?): keeping the last consumer-lag figures");
                } else {
                    for e in tpl.elements() {
                        telemetry::consumer_lag().remove(e.topic(), e.partition());
                    }
                }
            }
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }
}

fn partitions(tpl: &rdkafka::TopicPartitionList) -> Vec<String> {
    tpl.elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect()
}

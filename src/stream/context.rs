//! The librdkafka client context: statistics become Prometheus gauges
//! (consumer lag per partition), rebalances become log lines.

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use tracing::{info, warn};

use crate::telemetry;

/// `assigned` is set on the consumer's context when warm-up is on: newly
/// assigned partitions are paused and handed to the warm-up task.
#[derive(Clone, Default)]
pub struct StreamContext {
    pub(crate) assigned: Option<tokio::sync::mpsc::UnboundedSender<Vec<i32>>>,
}

impl ClientContext for StreamContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal "unassigned" partition.
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                metrics::gauge!(
                    telemetry::CONSUMER_LAG,
                    "topic" => topic.clone(),
                    "partition" => partition.to_string()
                )
                .set(p.consumer_lag as f64);
            }
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // Broker down, connection refused: librdkafka retries by itself.
        warn!(error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for StreamContext {
    fn post_rebalance(&self, c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                info!(partitions = ?partitions(tpl), "partitions assigned");
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
                info!(partitions = ?partitions(tpl), "partitions revoked")
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

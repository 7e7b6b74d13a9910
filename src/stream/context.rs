//! The librdkafka client context: statistics become Prometheus gauges
//! (consumer lag per partition), rebalances become log lines.

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use tracing::{info, warn};

use crate::telemetry;

#[derive(Clone, Default)]
pub struct StreamContext;

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
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                info!(partitions = ?partitions(tpl), "partitions assigned")
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

//! The sink: the verdict / dead-letter / state-log producer, its settings,
//! and the output record limit it is sized to (the state-log batches are
//! in [`super::state_log`]).

use rdkafka::config::ClientConfig;

use super::{base_config, ProcessOptions, StreamError};
use crate::config::{Config, Delivery};

/// The producer's settings: idempotent always, transactional in exactly-once.
pub fn producer_config(cfg: &Config) -> ClientConfig {
    let k = &cfg.kafka;
    let mut c = base_config(cfg);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.max.bytes", k.max_record_bytes.to_string())
        .set("linger.ms", k.linger_ms.to_string())
        .set("message.timeout.ms", k.message_timeout_ms.to_string())
        .set(
            "queue.buffering.max.messages",
            (k.max_in_flight * 2).max(100_000).to_string(),
        );
    if k.delivery == Delivery::ExactlyOnce {
        // A transaction begun right after the previous commit finds the
        // broker still writing that commit's markers: its partitions are
        // refused (CONCURRENT_TRANSACTIONS) and re-registered after
        // retry.backoff.ms, which librdkafka defaults to 100 ms, and the
        // whole transaction waits for that. 10 ms takes it out of the
        // commit cycle (measured: commit_transaction 100 ms -> see
        // docs/PERFORMANCE.md).
        c.set("transactional.id", &k.transactional_id)
            .set("transaction.timeout.ms", "60000")
            .set("retry.backoff.ms", "10");
    }
    for (key, v) in &k.producer {
        c.set(key, v);
    }
    c
}

/// The largest record the output topics take: the smallest of
/// `kafka.max_record_bytes` and the verdicts and DLQ topics'
/// `max.message.bytes` (read from the broker). The producer is set to it, so
/// that librdkafka refuses an oversize record itself at enqueue (naming that
/// record) and never builds a batch the broker would refuse as a whole,
/// which would fail every record in it.
pub async fn output_record_limit(cfg: &Config) -> usize {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    let configured = cfg.kafka.max_record_bytes;
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = match base_config(cfg).create()
    {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the output topics' size limits; using kafka.max_record_bytes");
            return configured;
        }
    };
    let topics = [
        ResourceSpecifier::Topic(&cfg.kafka.verdicts_topic),
        ResourceSpecifier::Topic(&cfg.kafka.dlq_topic),
    ];
    let opts = AdminOptions::new().request_timeout(Some(std::time::Duration::from_secs(10)));
    let mut limit = configured;
    match admin.describe_configs(topics.iter(), &opts).await {
        Ok(results) => {
            for r in results.into_iter().flatten() {
                let topic_limit = r
                    .get("max.message.bytes")
                    .and_then(|e| e.value.as_deref())
                    .and_then(|v| v.parse::<usize>().ok());
                if let Some(t) = topic_limit {
                    if t < limit {
                        tracing::info!(
                            resource = ?r.specifier,
                            max_message_bytes = t,
                            "an output topic takes smaller records than kafka.max_record_bytes; producing to its limit"
                        );
                        limit = t;
                    }
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the output topics' size limits; using kafka.max_record_bytes")
        }
    }
    limit
}

/// The process options under the output record limit: the dead-letter
/// payload bound shrinks to fit it (a dead letter must always be
/// producible), or the start is refused if not even an empty one fits.
pub(super) fn options_for(cfg: &Config, limit: usize) -> Result<ProcessOptions, StreamError> {
    let mut opts = ProcessOptions::from_config(cfg);
    let needed = cfg.limits.max_key_bytes + crate::config::DEAD_LETTER_ENVELOPE;
    if limit <= needed {
        return Err(StreamError::RecordLimit { limit, needed });
    }
    if opts.dlq_max_payload_bytes > limit - needed {
        tracing::warn!(
            configured = opts.dlq_max_payload_bytes,
            used = limit - needed,
            "kafka.dlq_max_payload_bytes lowered to fit the output topics' record limit"
        );
        opts.dlq_max_payload_bytes = limit - needed;
    }
    Ok(opts)
}

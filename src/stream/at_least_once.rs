//! At-least-once: verdicts are enqueued in consumption order, their
//! acknowledgements tracked per input partition, and an offset is stored for
//! (auto-)commit only when everything before it is acknowledged. A failed
//! delivery is re-sent, never skipped, so nothing is lost; a crash can repeat
//! verdicts, which carry the same event_id.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Message, Offset, TopicPartitionList};
use tracing::{info, warn};

use super::tracker::OffsetTracker;
use super::{
    clients, process, subscribe, Outcome, ProcessOptions, StreamContext, StreamError, StreamParts,
};
use crate::config::Config;

/// One output record waiting for its acknowledgement. It keeps its bytes so
/// that a failed delivery can be re-sent as it was.
struct Pending {
    partition: i32,
    offset: i64,
    to_dlq: bool,
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: OwnedHeaders,
    /// Event time of a verdict, for the end-to-end latency histogram.
    event_time_ms: Option<i64>,
}

type Acked = Pin<Box<dyn Future<Output = (Pending, Option<OwnedDeliveryResult>)> + Send>>;

struct Loop<'a> {
    cfg: &'a Config,
    parts: &'a StreamParts,
    consumer: super::SharedConsumer,
    producer: FutureProducer<StreamContext>,
    tracker: OffsetTracker,
    inflight: FuturesUnordered<Acked>,
}

pub async fn run(
    cfg: &Config,
    parts: &StreamParts,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StreamError> {
    let (consumer, producer, _warmup) = clients(cfg, parts)?;
    subscribe(cfg, &consumer)?;
    let mut l = Loop {
        cfg,
        parts,
        consumer,
        producer,
        tracker: OffsetTracker::default(),
        inflight: FuturesUnordered::new(),
    };
    parts.ready.store(true, Ordering::SeqCst);
    info!(
        topic = %cfg.kafka.payments_topic,
        group = %cfg.kafka.group_id,
        "stream started (at-least-once)"
    );
    let opts = ProcessOptions::from_config(cfg);
    let max_in_flight = cfg.kafka.max_in_flight;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some((p, r)) = l.inflight.next(), if !l.inflight.is_empty() => l.on_ack(p, r).await?,
            msg = l.consumer.recv(), if l.inflight.len() < max_in_flight => match msg {
                Ok(m) => {
                    parts.metrics.events_consumed.increment(1);
                    let (partition, offset) = (m.partition(), m.offset());
                    parts.applied.note(partition, offset);
                    let pending = match process(&m, &parts.engine, &opts, &parts.metrics) {
                        Outcome::Verdict { key, payload, headers, event_time_ms, .. } => Pending {
                            partition, offset, to_dlq: false, key, payload, headers,
                            event_time_ms: Some(event_time_ms),
                        },
                        Outcome::Dead { key, payload, headers, .. } => Pending {
                            partition, offset, to_dlq: true, key, payload, headers,
                            event_time_ms: None,
                        },
                    };
                    drop(m);
                    l.tracker.start(partition, offset);
                    l.send(pending).await;
                }
                Err(e) => {
                    warn!(error = %e, "consume error; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    l.drain().await
}

impl Loop<'_> {
    fn topic(&self, to_dlq: bool) -> &str {
        if to_dlq {
            &self.cfg.kafka.dlq_topic
        } else {
            &self.cfg.kafka.verdicts_topic
        }
    }

    /// Enqueues a record with librdkafka now (keeping consumption order),
    /// waiting only while its queue is full.
    async fn send(&mut self, p: Pending) {
        let future = loop {
            let record = FutureRecord::to(self.topic(p.to_dlq))
                .key(&p.key)
                .payload(&p.payload)
                .headers(p.headers.clone());
            match self.producer.send_result(record) {
                Ok(f) => break Some(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => {
                    warn!(error = %e, "cannot enqueue record; retrying");
                    self.parts.metrics.delivery_retries.increment(1);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if self.producer.client().fatal_error().is_some() {
                        break None;
                    }
                }
            }
        };
        self.inflight.push(Box::pin(async move {
            let r = match future {
                Some(f) => f.await.ok(),
                None => None,
            };
            (p, r)
        }));
        self.parts.metrics.in_flight.set(self.inflight.len() as f64);
    }

    async fn on_ack(
        &mut self,
        p: Pending,
        r: Option<OwnedDeliveryResult>,
    ) -> Result<(), StreamError> {
        match r {
            Some(Ok(_)) => {
                if let Some(t) = p.event_time_ms {
                    let e2e = (crate::now_ms() - t).max(0) as f64 / 1000.0;
                    self.parts.metrics.end_to_end_latency.record(e2e);
                }
                if let Some(next) = self.tracker.finish(p.partition, p.offset) {
                    // Fails only when the partition was revoked meanwhile; the
                    // new owner re-reads from the last commit (at-least-once).
                    // `store_offsets` stores the offset as given: the next one
                    // to read. (`store_offset` would add one itself.)
                    let mut tpl = TopicPartitionList::new();
                    let topic = &self.cfg.kafka.payments_topic;
                    let stored = tpl
                        .add_partition_offset(topic, p.partition, Offset::Offset(next))
                        .and_then(|()| self.consumer.store_offsets(&tpl));
                    if let Err(e) = stored {
                        tracing::debug!(error = %e, partition = p.partition, "offset not stored");
                    }
                }
                self.parts.metrics.in_flight.set(self.inflight.len() as f64);
                Ok(())
            }
            other => {
                if let Some((_, msg)) = self.producer.client().fatal_error() {
                    return Err(StreamError::FatalProducer(msg));
                }
                let error = match other {
                    Some(Err((e, _))) => e.to_string(),
                    _ => "delivery cancelled".to_string(),
                };
                warn!(
                    error = %error,
                    partition = p.partition,
                    offset = p.offset,
                    "delivery failed; re-sending"
                );
                self.parts.metrics.delivery_retries.increment(1);
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.send(p).await;
                Ok(())
            }
        }
    }

    /// Waits for every record in flight, then commits the final offsets.
    async fn drain(mut self) -> Result<(), StreamError> {
        info!(
            in_flight = self.inflight.len(),
            "draining: waiting for in-flight verdicts"
        );
        while let Some((p, r)) = self.inflight.next().await {
            self.on_ack(p, r).await?;
        }
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => return Err(StreamError::Commit(e)),
        }
        let _ = self.producer.flush(Timeout::After(Duration::from_secs(10)));
        info!(committed = ?self.tracker.committable().collect::<Vec<_>>(), "drained and committed");
        Ok(())
    }
}

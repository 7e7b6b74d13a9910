//! Exactly-once: verdicts, DLQ records and the consumed offsets are written in
//! one Kafka transaction, committed every `commit_interval_ms` or
//! `commit_max_events`. A read_committed reader sees each verdict once, even
//! across a crash: the next instance with the same `transactional_id` fences
//! the old one and aborts its open transaction, and consumption resumes from
//! the offsets committed with the last good transaction.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tracing::{info, warn};

use super::{
    clients, process, subscribe, Outcome, ProcessOptions, StreamContext, StreamError, StreamParts,
};
use crate::config::Config;
use crate::telemetry;

const TXN_TIMEOUT: Duration = Duration::from_secs(30);

struct Txn {
    open: bool,
    started: Instant,
    events: usize,
    /// Next offset to commit, per input partition, for this transaction.
    offsets: HashMap<i32, i64>,
    /// Event times of the verdicts in this transaction (end-to-end latency
    /// is measured when the transaction commits: that is when readers see them).
    event_times: Vec<i64>,
}

pub async fn run(
    cfg: &Config,
    parts: &StreamParts,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StreamError> {
    let (consumer, producer, _warmup) = clients(cfg, parts)?;
    {
        let p = producer.clone();
        blocking(move || p.init_transactions(TXN_TIMEOUT))
            .await
            .map_err(|source| StreamError::Transaction {
                step: "init",
                source,
            })?;
    }
    subscribe(cfg, &consumer)?;
    parts.ready.store(true, Ordering::SeqCst);
    info!(
        topic = %cfg.kafka.payments_topic,
        transactional_id = %cfg.kafka.transactional_id,
        "stream started (exactly-once)"
    );

    let opts = ProcessOptions::from_config(cfg);
    let interval = Duration::from_millis(cfg.kafka.commit_interval_ms);
    let mut ticker = tokio::time::interval(interval.min(Duration::from_millis(50)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut txn = Txn {
        open: false,
        started: Instant::now(),
        events: 0,
        offsets: HashMap::new(),
        event_times: Vec::new(),
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = ticker.tick() => {
                if txn.open && txn.started.elapsed() >= interval {
                    commit(cfg, parts, &consumer, &producer, &mut txn).await?;
                }
            }
            msg = consumer.recv() => match msg {
                Ok(m) => {
                    parts.metrics.events_consumed.increment(1);
                    if !txn.open {
                        producer.begin_transaction().map_err(|source| StreamError::Transaction { step: "begin", source })?;
                        txn.open = true;
                        txn.started = Instant::now();
                    }
                    let (partition, offset) = (m.partition(), m.offset());
                    parts.applied.note(partition, offset);
                    let (topic, key, payload, headers, event_time) = match process(&m, &parts.engine, &opts, &parts.metrics) {
                        Outcome::Verdict { key, payload, headers, event_time_ms, .. } =>
                            (&cfg.kafka.verdicts_topic, key, payload, headers, Some(event_time_ms)),
                        Outcome::Dead { key, payload, headers, .. } =>
                            (&cfg.kafka.dlq_topic, key, payload, headers, None),
                    };
                    drop(m);
                    loop {
                        let record = FutureRecord::to(topic).key(&key).payload(&payload).headers(headers.clone());
                        match producer.send_result(record) {
                            // Delivery is confirmed by commit_transaction, which
                            // flushes: the per-record future is not needed.
                            Ok(_) => break,
                            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                            Err((e, _)) => {
                                warn!(error = %e, "cannot enqueue record in transaction; aborting it");
                                abort(parts, &consumer, &producer, &mut txn).await?;
                                break;
                            }
                        }
                    }
                    if txn.open {
                        txn.offsets.insert(partition, offset + 1);
                        txn.events += 1;
                        if let Some(t) = event_time { txn.event_times.push(t); }
                        if txn.events >= cfg.kafka.commit_max_events {
                            commit(cfg, parts, &consumer, &producer, &mut txn).await?;
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "consume error; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    info!("draining: committing the open transaction");
    if txn.open {
        commit(cfg, parts, &consumer, &producer, &mut txn).await?;
    }
    info!("drained and committed");
    Ok(())
}

/// Runs a blocking librdkafka call off the async worker threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => {
            Err(KafkaError::Canceled).inspect_err(|_| warn!(error = %e, "blocking task failed"))
        }
    }
}

/// Sends the offsets into the transaction and commits it. A retriable
/// failure is retried; one that needs an abort aborts and rewinds the
/// consumer, so the same events are processed again in a new transaction.
async fn commit(
    cfg: &Config,
    parts: &StreamParts,
    consumer: &StreamConsumer<StreamContext>,
    producer: &FutureProducer<StreamContext>,
    txn: &mut Txn,
) -> Result<(), StreamError> {
    let mut tpl = TopicPartitionList::new();
    for (p, o) in &txn.offsets {
        if let Err(e) = tpl.add_partition_offset(&cfg.kafka.payments_topic, *p, Offset::Offset(*o))
        {
            warn!(error = %e, "bad offset in transaction");
        }
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(cgm) = consumer.group_metadata() else {
            warn!("no consumer group metadata; aborting the transaction");
            return abort(parts, consumer, producer, txn).await;
        };
        let p = producer.clone();
        let tpl2 = tpl.clone();
        let r = blocking(move || {
            p.send_offsets_to_transaction(&tpl2, &cgm, TXN_TIMEOUT)?;
            p.commit_transaction(TXN_TIMEOUT)
        })
        .await;
        match r {
            Ok(()) => {
                metrics::counter!(telemetry::TRANSACTIONS, "result" => "committed").increment(1);
                let now = crate::now_ms();
                for t in txn.event_times.drain(..) {
                    parts
                        .metrics
                        .end_to_end_latency
                        .record((now - t).max(0) as f64 / 1000.0);
                }
                txn.open = false;
                txn.events = 0;
                txn.offsets.clear();
                return Ok(());
            }
            Err(e) => {
                let (retriable, needs_abort, fatal) = match &e {
                    KafkaError::Transaction(t) => {
                        (t.is_retriable(), t.txn_requires_abort(), t.is_fatal())
                    }
                    _ => (true, false, false),
                };
                if fatal {
                    return Err(StreamError::Transaction {
                        step: "commit",
                        source: e,
                    });
                }
                if needs_abort || !retriable || attempt >= 10 {
                    warn!(error = %e, "transaction commit failed; aborting and re-processing");
                    return abort(parts, consumer, producer, txn).await;
                }
                warn!(error = %e, attempt, "transaction commit failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Aborts the open transaction and seeks every partition it touched back to
/// its committed offset.
async fn abort(
    parts: &StreamParts,
    consumer: &StreamConsumer<StreamContext>,
    producer: &FutureProducer<StreamContext>,
    txn: &mut Txn,
) -> Result<(), StreamError> {
    let p = producer.clone();
    blocking(move || p.abort_transaction(TXN_TIMEOUT))
        .await
        .map_err(|source| StreamError::Transaction {
            step: "abort",
            source,
        })?;
    metrics::counter!(telemetry::TRANSACTIONS, "result" => "aborted").increment(1);
    let _ = parts;
    txn.open = false;
    txn.events = 0;
    txn.event_times.clear();
    let touched: Vec<i32> = txn.offsets.drain().map(|(p, _)| p).collect();
    if let Ok(assignment) = consumer.assignment() {
        let mut tpl = TopicPartitionList::new();
        for e in assignment.elements() {
            if touched.contains(&e.partition()) {
                tpl.add_partition(e.topic(), e.partition());
            }
        }
        if tpl.count() > 0 {
            match consumer.committed_offsets(tpl, Duration::from_secs(10)) {
                Ok(committed) => {
                    let mut seek = TopicPartitionList::new();
                    for e in committed.elements() {
                        let to = match e.offset() {
                            Offset::Offset(o) => Offset::Offset(o),
                            _ => Offset::Beginning,
                        };
                        let _ = seek.add_partition_offset(e.topic(), e.partition(), to);
                    }
                    if let Err(e) = consumer.seek_partitions(seek, Duration::from_secs(10)) {
                        warn!(error = %e, "seek after abort failed");
                    }
                }
                Err(e) => warn!(error = %e, "cannot read committed offsets after abort"),
            }
        }
    }
    Ok(())
}

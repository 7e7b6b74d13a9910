//! At-least-once: verdicts are enqueued in consumption order, their
//! acknowledgements tracked per input partition, and an offset is stored for
//! (auto-)commit only when everything before it is acknowledged. A delivery
//! that fails for a passing reason (broker away, timeout) is re-sent; a
//! record the broker refuses for good (too large, invalid) is replaced by a
//! minimal dead letter ([`super::record::last_resort`]) so that no record
//! can stop the stream; a crash can repeat verdicts, which carry the same
//! event_id. Every wait also watches the shutdown signal.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt as _;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{error, info, warn};

use super::lanes::{Batch, Lanes};
use super::record::{last_resort, log_state, OutHeaders, OutRecord, RecordIn, Source};
use super::state_log::{self, Batch as StateBatch, StateBatches};
use super::tracker::OffsetTracker;
use super::{clients, subscribe, Outcome, StreamContext, StreamError, StreamParts};
use crate::config::Config;
use crate::telemetry;

/// One output record waiting for its acknowledgement. It keeps its bytes so
/// that a failed delivery can be re-sent as it was.
struct Pending {
    partition: i32,
    offset: i64,
    /// The dead-letter kind, for a DLQ record (counted once acknowledged).
    dlq_kind: Option<&'static str>,
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: OutHeaders,
    /// Event time of a verdict, for the end-to-end latency histogram.
    event_time_ms: Option<i64>,
    /// Failed attempts that were not a broker outage.
    attempts: u32,
    /// Already the minimal dead letter: if this fails for good too, the
    /// record is logged and counted, and the stream moves on.
    last_resort: bool,
    /// Already re-sent alone after the broker refused its batch.
    alone: bool,
}

impl Pending {
    /// A fresh record to send for the input at `partition`/`offset`.
    fn new(partition: i32, offset: i64, outcome: Outcome) -> Pending {
        let OutRecord {
            key,
            payload,
            headers,
            event_time_ms,
            dlq_kind,
        } = outcome.into_record();
        Pending {
            partition,
            offset,
            dlq_kind,
            key,
            payload,
            headers,
            event_time_ms,
            attempts: 0,
            last_resort: false,
            alone: false,
        }
    }
}

/// Records in flight, in the order they were sent. Only the oldest is
/// polled, so only its delivery report wakes the loop: reports arrive about
/// in send order, and those already in behind it are taken in the same
/// turn ([`InFlight::next`] then `now_or_never`). A set of futures polled
/// each on its own wake (`FuturesUnordered`) cost a task allocation, a wake
/// and a poll per record on the consumer task.
#[derive(Default)]
struct InFlight(VecDeque<Acked>);

impl InFlight {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn push(&mut self, a: Acked) {
        self.0.push_back(a);
    }

    /// The oldest record with its delivery report, once it is in; `None`
    /// when nothing is in flight.
    async fn next(&mut self) -> Option<(Pending, Option<OwnedDeliveryResult>)> {
        std::future::poll_fn(|cx| {
            let Some(front) = self.0.front_mut() else {
                return std::task::Poll::Ready(None);
            };
            match Pin::new(front).poll(cx) {
                std::task::Poll::Ready(done) => {
                    self.0.pop_front();
                    std::task::Poll::Ready(Some(done))
                }
                std::task::Poll::Pending => std::task::Poll::Pending,
            }
        })
        .await
    }
}

/// A record in flight: resolves with it and its delivery report (`None`:
/// the producer dropped it, or it never reached the producer). A concrete
/// future, so a record in flight costs no allocation of its own.
struct Acked {
    pending: Option<Pending>,
    delivery: Option<DeliveryFuture>,
}

impl Future for Acked {
    type Output = (Pending, Option<OwnedDeliveryResult>);

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.get_mut();
        let report = match this.delivery.as_mut() {
            Some(f) => match Pin::new(f).poll(cx) {
                std::task::Poll::Ready(r) => r.ok(),
                std::task::Poll::Pending => return std::task::Poll::Pending,
            },
            None => None,
        };
        this.delivery = None;
        match this.pending.take() {
            Some(p) => std::task::Poll::Ready((p, report)),
            // Popped once finished: never polled again.
            None => std::task::Poll::Pending,
        }
    }
}
type BatchAcked = Pin<Box<dyn Future<Output = (StateBatch, Option<OwnedDeliveryResult>)> + Send>>;

/// How a produce error is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The broker will never take this record (too large, invalid): replace
    /// it by its last resort at once.
    Permanent,
    /// The broker is away or slow: wait and re-send, for as long as it takes.
    Outage,
    /// Anything else: re-send up to `kafka.produce_max_attempts` times.
    Other,
}

/// Classifies a produce or delivery error.
pub(crate) fn classify(e: &KafkaError) -> Failure {
    use RDKafkaErrorCode as C;
    let code = match e {
        KafkaError::MessageProduction(c) => *c,
        _ => return Failure::Other,
    };
    match code {
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::InvalidMessage
        | C::InvalidRecord
        | C::InvalidArgument
        | C::InvalidTopic => Failure::Permanent,
        C::MessageTimedOut
        | C::QueueFull
        | C::BrokerTransportFailure
        | C::AllBrokersDown
        | C::NotEnoughReplicas
        | C::NotEnoughReplicasAfterAppend
        | C::LeaderNotAvailable
        | C::NotLeaderForPartition
        | C::RequestTimedOut
        | C::NetworkException => Failure::Outage,
        _ => Failure::Other,
    }
}

struct Loop<'a> {
    cfg: &'a Config,
    parts: &'a StreamParts,
    consumer: super::SharedConsumer,
    producer: FutureProducer<StreamContext>,
    tracker: OffsetTracker,
    inflight: InFlight,
    /// The state-log batches (state log on) and those awaiting their
    /// acknowledgement: a payment's offset is committed once its verdict
    /// and its batch are both acknowledged.
    batches: Option<StateBatches>,
    batch_acks: FuturesUnordered<BatchAcked>,
    stop: super::Stop,
    /// Where records are decoded, scored and encoded.
    lanes: Lanes,
    /// Committable offsets that moved since they were last stored: stored
    /// in one call per loop turn, not one per acknowledgement.
    to_store: Vec<(i32, i64)>,
}

pub async fn run(
    cfg: &Config,
    parts: &StreamParts,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StreamError> {
    let super::Clients {
        consumer,
        producer,
        tasks: _tasks,
        opts,
        batches,
    } = clients(cfg, parts).await?;
    let lanes = super::start_lanes(cfg, parts, opts, batches.is_some())?;
    subscribe(cfg, &consumer)?;
    let (stop, forward) = super::Stop::new(shutdown);
    let mut l = Loop {
        cfg,
        parts,
        consumer,
        producer,
        tracker: OffsetTracker::default(),
        inflight: InFlight::default(),
        batches,
        batch_acks: FuturesUnordered::new(),
        stop,
        lanes,
        to_store: Vec::new(),
    };
    parts.ready.set_stream(true);
    info!(
        topic = %cfg.kafka.payments_topic,
        group = %cfg.kafka.group_id,
        "stream started (at-least-once)"
    );
    tokio::select! {
        r = l.consume() => r?,
        () = forward => {}
    }
    l.drain().await
}

impl Loop<'_> {
    fn stopping(&self) -> bool {
        self.stop.stopping()
    }

    async fn pause(&mut self, d: Duration) -> bool {
        self.stop.pause(d).await
    }

    /// Consumes until shutdown.
    async fn consume(&mut self) -> Result<(), StreamError> {
        let max_in_flight = self.cfg.kafka.max_in_flight;
        let mut stop = self.stop.clone();
        let consumer = self.consumer.clone();
        // State-log batches older than this are sent (an idle stream's
        // timer finds none open).
        let mut flush = tokio::time::interval(Duration::from_millis(self.cfg.kafka.state_batch_ms));
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let logging = self.batches.is_some();
        loop {
            self.store_moved();
            let room = self.inflight.len() + self.lanes.outstanding() < max_in_flight;
            tokio::select! {
                biased;
                () = stop.stopped() => return Ok(()),
                Some((p, r)) = self.inflight.next(), if !self.inflight.is_empty() => {
                    self.on_ack(p, r).await?;
                    // The acknowledgements that came with it, in one go.
                    while let Some(Some((p, r))) = self.inflight.next().now_or_never() {
                        self.on_ack(p, r).await?;
                    }
                }
                Some((b, r)) = self.batch_acks.next(), if !self.batch_acks.is_empty() => self.on_batch_ack(b, r).await,
                Some(b) = self.lanes.next(), if self.lanes.busy() => self.on_scored(b).await?,
                _ = flush.tick(), if logging => self.flush_batches(true).await,
                msg = consumer.recv(), if room => match msg {
                    Ok(m) => {
                        self.take(&RecordIn::of(&m));
                        drop(m);
                        // Whatever else librdkafka already holds goes in the
                        // same lane batches (no wait for more).
                        while self.inflight.len() + self.lanes.outstanding() < max_in_flight {
                            match consumer.recv().now_or_never() {
                                Some(Ok(m)) => self.take(&RecordIn::of(&m)),
                                _ => break,
                            }
                        }
                        self.lanes.flush();
                    }
                    Err(e) => {
                        // Every 100 ms while the brokers are away: once per 10 s.
                        static THROTTLE: crate::telemetry::Throttle = crate::telemetry::Throttle::new(10_000);
                        if let Some(held) = THROTTLE.allow() {
                            warn!(error = %e, repeats_held_back = held, "consume error; retrying");
                        }
                        if self.pause(Duration::from_millis(100)).await {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// A consumed record: into feature state's marks and its lane.
    fn take(&mut self, rec: &RecordIn<'_>) {
        self.parts.metrics.events_consumed.increment(1);
        self.parts.applied.note(rec.partition, rec.offset);
        self.lanes.push(rec);
    }

    /// A lane's batch is scored: its outputs are sent in its order (each
    /// partition's log order), with their state-log entries.
    async fn on_scored(&mut self, mut b: Batch) -> Result<(), StreamError> {
        if b.poisoned() {
            return Err(StreamError::Lane);
        }
        for i in 0..b.len() {
            let Some(s) = b.take(i) else { continue };
            let (partition, offset) = (s.partition, s.offset);
            let logged = match &s.outcome {
                Outcome::Verdict { state, .. } => log_state(
                    self.batches.as_mut(),
                    state.as_ref(),
                    s.input,
                    partition,
                    offset,
                ),
                Outcome::Dead { .. } => false,
            };
            let pending = Pending::new(partition, offset, s.outcome);
            self.tracker.start(partition, offset, 1 + u8::from(logged));
            self.send(pending).await;
            if logged {
                self.flush_batches(false).await;
            }
        }
        self.lanes.recycle(b);
        Ok(())
    }

    fn topic(&self, to_dlq: bool) -> &str {
        if to_dlq {
            &self.cfg.kafka.dlq_topic
        } else {
            &self.cfg.kafka.verdicts_topic
        }
    }

    /// Replaces `p` by its last resort: a minimal dead letter naming its
    /// source and why its own record could not be produced.
    fn to_last_resort(&self, p: Pending, why: &KafkaError) -> Pending {
        let source = Source {
            topic: &self.cfg.kafka.payments_topic,
            partition: p.partition,
            offset: p.offset,
        };
        warn!(
            partition = p.partition,
            offset = p.offset,
            error = %why,
            "record cannot be produced; replacing it by a minimal dead letter"
        );
        let dead = last_resort(
            &source,
            &p.key,
            &why.to_string(),
            self.cfg.limits.max_key_bytes,
        );
        Pending {
            last_resort: true,
            ..Pending::new(p.partition, p.offset, dead)
        }
    }

    /// Gives up on `p`: even its last resort cannot be produced. Logged with
    /// its coordinates and counted; its offset is released so the partition
    /// moves on.
    fn abandon(&mut self, p: Pending, why: &KafkaError) {
        error!(
            topic = %self.cfg.kafka.payments_topic,
            partition = p.partition,
            offset = p.offset,
            error = %why,
            "even a minimal dead letter cannot be produced for this record; it is skipped (see fraudline_dlq_last_resort_total{{outcome=\"unwritable\"}})"
        );
        metrics::counter!(telemetry::LAST_RESORT, "outcome" => "unwritable").increment(1);
        self.finished(p.partition, p.offset);
    }

    /// What to do after a failed attempt: `Some(p)` to send again (maybe as
    /// its last resort), `None` when the record was abandoned.
    fn after_failure(&mut self, mut p: Pending, e: &KafkaError) -> Option<Pending> {
        let kind = classify(e);
        if kind != Failure::Outage {
            p.attempts += 1;
        }
        let give_up =
            kind == Failure::Permanent || p.attempts >= self.cfg.kafka.produce_max_attempts;
        match (give_up, p.last_resort) {
            (false, _) => Some(p),
            (true, false) => Some(self.to_last_resort(p, e)),
            (true, true) => {
                self.abandon(p, e);
                None
            }
        }
    }

    /// Enqueues a record with librdkafka now (keeping consumption order),
    /// waiting only while its queue is full or the broker is away; returns
    /// early on shutdown (the record's offset is then never committed, so it
    /// is read again by the next owner).
    async fn send(&mut self, mut p: Pending) {
        let future = loop {
            let record = FutureRecord::to(self.topic(p.dlq_kind.is_some()))
                .key(&p.key)
                .payload(&p.payload)
                .headers(p.headers.build());
            match self.producer.send_result(record) {
                Ok(f) => break f,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if self.pause(Duration::from_millis(1)).await {
                        return;
                    }
                }
                Err((e, _)) => {
                    if self.producer.client().fatal_error().is_some() {
                        // on_ack reports the fatal error and stops the stream.
                        break_fatal(&mut self.inflight, p);
                        return;
                    }
                    warn!(error = %e, "cannot enqueue record");
                    self.parts.metrics.delivery_retries.increment(1);
                    p = match self.after_failure(p, &e) {
                        Some(p) => p,
                        None => return,
                    };
                    if classify(&e) != Failure::Permanent
                        && self.pause(Duration::from_millis(100)).await
                    {
                        return;
                    }
                }
            }
        };
        self.inflight.push(Acked {
            pending: Some(p),
            delivery: Some(future),
        });
        self.parts.metrics.in_flight.set(self.inflight.len() as f64);
    }

    /// Sends the state-log batches closed by size, and with `all` every
    /// open one too.
    async fn flush_batches(&mut self, all: bool) {
        let Some(batches) = self.batches.as_mut() else {
            return;
        };
        let ready: Vec<StateBatch> = if all {
            batches.take_all()
        } else {
            batches.take_full().collect()
        };
        for b in ready {
            self.send_batch(b).await;
        }
    }

    /// Enqueues a state-log batch; one that cannot be written is given up
    /// (logged and counted) and its payments' offsets released.
    async fn send_batch(&mut self, mut b: StateBatch) {
        let Some(batches) = self.batches.as_ref() else {
            return;
        };
        match state_log::enqueue(self.cfg, batches, &self.producer, &mut self.stop, &mut b).await {
            Some(f) => self
                .batch_acks
                .push(Box::pin(async move { (b, f.await.ok()) })),
            None if self.stopping() => {}
            None => self.finished_many(b.partition, &b.offsets),
        }
    }

    /// A state-log batch acknowledged, or failed: re-sent while the failure
    /// may pass, else given up (its payments' features stay on this
    /// instance, counted).
    async fn on_batch_ack(&mut self, mut b: StateBatch, r: Option<OwnedDeliveryResult>) {
        let e = match r {
            Some(Ok(_)) => return self.finished_many(b.partition, &b.offsets),
            Some(Err((e, _))) => e,
            None => KafkaError::Canceled,
        };
        if self.stopping() {
            // Its offsets stay uncommitted: read and logged again after the restart.
            return;
        }
        let class = classify(&e);
        if class != Failure::Outage {
            b.attempts += 1;
        }
        if class == Failure::Permanent || b.attempts >= self.cfg.kafka.produce_max_attempts {
            state_log::unwritten(&b, &e);
            return self.finished_many(b.partition, &b.offsets);
        }
        warn!(error = %e, partition = b.partition, "state batch delivery failed; re-sending");
        if self.pause(Duration::from_millis(50)).await {
            return;
        }
        self.send_batch(b).await;
    }

    /// Records one acknowledgement for each of `offsets` of `partition`
    /// and stores the partition's committable offset once if it moved.
    fn finished_many(&mut self, partition: i32, offsets: &[i64]) {
        let mut moved = None;
        for o in offsets {
            if let Some(next) = self.tracker.finish(partition, *o) {
                moved = Some(next);
            }
        }
        if let Some(next) = moved {
            self.store(partition, next);
        }
    }

    /// Records one acknowledgement for `partition`/`offset` and stores the
    /// partition's committable offset if it moved.
    fn finished(&mut self, partition: i32, offset: i64) {
        if let Some(next) = self.tracker.finish(partition, offset) {
            self.store(partition, next);
        }
    }

    fn store(&mut self, partition: i32, next: i64) {
        match self.to_store.iter_mut().find(|(p, _)| *p == partition) {
            Some(e) => e.1 = e.1.max(next),
            None => self.to_store.push((partition, next)),
        }
    }

    /// Stores the committable offsets that moved, for the next (auto)commit.
    fn store_moved(&mut self) {
        if self.to_store.is_empty() {
            return;
        }
        // Fails only when a partition was revoked meanwhile; the new
        // owner re-reads from the last commit (at-least-once).
        // `store_offsets` stores the offset as given: the next one to read.
        // (`store_offset` would add one itself.)
        let mut tpl = TopicPartitionList::with_capacity(self.to_store.len());
        let topic = &self.cfg.kafka.payments_topic;
        for (partition, next) in self.to_store.drain(..) {
            if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(next)) {
                tracing::debug!(error = %e, partition, "offset not stored");
            }
        }
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            tracing::debug!(error = %e, "offsets not stored");
        }
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
                if let Some(kind) = p.dlq_kind {
                    // Counted once delivered: outcomes, not attempts.
                    self.parts.metrics.dlq(kind);
                }
                self.finished(p.partition, p.offset);
                self.parts.metrics.in_flight.set(self.inflight.len() as f64);
                Ok(())
            }
            other => {
                if let Some((_, msg)) = self.producer.client().fatal_error() {
                    return Err(StreamError::FatalProducer(msg));
                }
                let e = match other {
                    Some(Err((e, _))) => e,
                    _ => KafkaError::Canceled,
                };
                warn!(
                    error = %e,
                    partition = p.partition,
                    offset = p.offset,
                    "delivery failed"
                );
                self.parts.metrics.delivery_retries.increment(1);
                if self.stopping() {
                    // Not re-sent: its offset stays uncommitted and the
                    // record is read again after the restart.
                    return Ok(());
                }
                let permanent = classify(&e) == Failure::Permanent;
                if permanent && !p.alone {
                    // The broker refuses a whole batch: the record may be
                    // innocent. Sent again alone, it either goes through or
                    // is the one at fault.
                    return self.send_alone(p).await;
                }
                if let Some(p) = self.after_failure(p, &e) {
                    if !permanent && self.pause(Duration::from_millis(50)).await {
                        return Ok(());
                    }
                    self.send(p).await;
                }
                Ok(())
            }
        }
    }

    /// Sends `p` and waits for its acknowledgement before anything else is
    /// sent, so that its batch holds it alone.
    async fn send_alone(&mut self, mut p: Pending) -> Result<(), StreamError> {
        p.alone = true;
        let record = FutureRecord::to(self.topic(p.dlq_kind.is_some()))
            .key(&p.key)
            .payload(&p.payload)
            .headers(p.headers.build());
        let r = match self.producer.send_result(record) {
            Ok(f) => f.await.ok(),
            Err((e, _)) => Some(Err((
                e,
                rdkafka::message::OwnedMessage::new(
                    None,
                    None,
                    String::new(),
                    rdkafka::Timestamp::NotAvailable,
                    0,
                    0,
                    None,
                ),
            ))),
        };
        Box::pin(self.on_ack(p, r)).await
    }

    /// Sends the open state-log batches, waits for every record in flight
    /// (failed ones are not re-sent: their offsets stay uncommitted), then
    /// commits the final offsets.
    async fn drain(mut self) -> Result<(), StreamError> {
        info!(
            in_flight = self.inflight.len(),
            scoring = self.lanes.outstanding(),
            "draining: waiting for in-flight verdicts"
        );
        // What the lanes hold is scored already or about to be: sent like
        // the rest, so its offsets commit now.
        self.lanes.flush();
        while self.lanes.busy() {
            match self.lanes.next().await {
                Some(b) => self.on_scored(b).await?,
                None => break,
            }
        }
        // The shutdown is already signalled: a batch that cannot be
        // enqueued at once keeps its offsets uncommitted (read again after
        // the restart).
        let open = self.batches.as_mut().map(StateBatches::take_all);
        if let (Some(open), Some(batches)) = (open, self.batches.as_ref()) {
            for b in open {
                if let Some(f) = state_log::enqueue_now(batches, &self.producer, &b).await {
                    self.batch_acks
                        .push(Box::pin(async move { (b, f.await.ok()) }));
                }
            }
        }
        while let Some((p, r)) = self.inflight.next().await {
            self.on_ack(p, r).await?;
        }
        while let Some((b, r)) = self.batch_acks.next().await {
            self.on_batch_ack(b, r).await;
        }
        self.store_moved();
        let consumer = self.consumer.clone();
        let producer = self.producer.clone();
        let committed = tokio::task::spawn_blocking(move || {
            let r = consumer.commit_consumer_state(CommitMode::Sync);
            let _ = producer.flush(Timeout::After(Duration::from_secs(10)));
            r
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled));
        match committed {
            Ok(()) => {}
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => return Err(StreamError::Commit(e)),
        }
        info!(committed = ?self.tracker.committable().collect::<Vec<_>>(), "drained and committed");
        Ok(())
    }
}

/// Puts a record whose producer died into flight as a failed delivery, so
/// that [`Loop::on_ack`] reports the fatal error.
fn break_fatal(inflight: &mut InFlight, p: Pending) {
    inflight.push(Acked {
        pending: Some(p),
        delivery: None,
    });
}

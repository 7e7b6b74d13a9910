//! Exactly-once: verdicts, DLQ records and the consumed offsets are written in
//! one Kafka transaction, committed every `commit_interval_ms` or
//! `commit_max_events`. A read_committed reader sees each verdict once, even
//! across a crash: the next instance with the same `transactional_id` fences
//! the old one and aborts its open transaction, and consumption resumes from
//! the offsets committed with the last good transaction.
//!
//! Pipelined: when a transaction commits, its records are sealed (feature
//! state's journal starts a new segment, [`crate::engine::Engine::seal_txn`])
//! and the commit runs in the background while the loop goes on consuming
//! and scoring the next transaction's records; their outputs are held until
//! the commit is known and then produced in the next Kafka transaction. A
//! failed commit aborts both: feature state goes back to the sealed
//! transaction's start and every partition read since is re-read. A due
//! snapshot cut takes one commit without overlap, so the cut sees committed
//! payments only.
//!
//! No record can make the loop abort for ever. A record librdkafka refuses
//! at once (too large) is replaced inside the transaction by a minimal dead
//! letter. A record the broker refuses later fails the commit: the
//! transaction is aborted, the culprit found from its delivery report and
//! marked, and on the re-read it is replaced by its minimal dead letter (or,
//! if that failed too, skipped with a log line and a count). When an abort
//! names no culprit, the aborted range is re-read one event per transaction,
//! which isolates any record that fails again.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tracing::{error, info, warn};

use super::at_least_once::{classify, Failure};
use super::lanes::{Batch, Lanes};
use super::record::{content_type, last_resort, log_state, process, OutHeaders, RecordIn, Source};
use super::state_log::{self, StateBatches};
use super::{
    clients, subscribe, Outcome, ProcessOptions, SharedConsumer, StreamContext, StreamError,
    StreamParts,
};
use crate::config::Config;
use crate::telemetry;

const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// A record sent in the open transaction, kept until it commits so that a
/// failed commit can name the record that caused it.
struct Sent {
    partition: i32,
    offset: i64,
    last_resort: bool,
    /// A state-log batch (`offset` is its first payment's): its failure
    /// names no single record.
    batch: bool,
    delivery: DeliveryFuture,
}

#[derive(Default)]
struct Txn {
    /// The Kafka transaction is begun (at its first output).
    open: bool,
    /// When its first record was consumed (`None`: no record yet).
    started: Option<Instant>,
    /// The consumer's revoke count when its first record was consumed.
    revokes_at_begin: u64,
    events: usize,
    /// Input partitions it consumed from (re-read after an abort).
    consumed: HashSet<i32>,
    /// Next offset to commit, per input partition, for this transaction.
    offsets: HashMap<i32, i64>,
    /// Event times of the verdicts in this transaction (end-to-end latency
    /// is measured when the transaction commits: that is when readers see them).
    event_times: Vec<i64>,
    /// Dead-letter kinds in this transaction, counted when it commits.
    dlq_kinds: Vec<&'static str>,
    sent: Vec<Sent>,
}

impl Txn {
    fn reset(&mut self) {
        self.open = false;
        self.started = None;
        self.events = 0;
        self.consumed.clear();
        self.offsets.clear();
        self.event_times.clear();
        self.dlq_kinds.clear();
        self.sent.clear();
    }
}

/// Records isolated after an abort, by (partition, offset).
#[derive(Default)]
struct Isolation {
    /// Replace by the minimal dead letter when read again.
    replace: HashSet<(i32, i64)>,
    /// Even the minimal dead letter failed: skip (logged and counted).
    skip: HashSet<(i32, i64)>,
    /// After an abort with no culprit: until these offsets are passed,
    /// commit after every event.
    careful_until: HashMap<i32, i64>,
}

impl Isolation {
    fn careful(&self, partition: i32, offset: i64) -> bool {
        self.careful_until
            .get(&partition)
            .is_some_and(|end| offset < *end)
    }

    /// Whether the record at `at` takes the one-at-a-time path (isolated,
    /// or in a range re-read one event per transaction); forgets a careful
    /// range once it is passed.
    fn special(&mut self, (partition, offset): (i32, i64)) -> bool {
        if let Some(end) = self.careful_until.get(&partition) {
            if offset < *end {
                return true;
            }
            self.careful_until.remove(&partition);
        }
        self.skip.contains(&(partition, offset)) || self.replace.contains(&(partition, offset))
    }
}

struct Loop<'a> {
    cfg: &'a Config,
    parts: &'a StreamParts,
    consumer: SharedConsumer,
    producer: FutureProducer<StreamContext>,
    txn: Txn,
    isolation: Isolation,
    /// The state-log batches of the open transaction (state log on): sent
    /// when full and, at the latest, just before the commit.
    batches: Option<StateBatches>,
    stop: super::Stop,
    opts: ProcessOptions,
    /// Where records are decoded, scored and encoded. All of a
    /// transaction's records are back from the lanes before it commits or
    /// aborts, so feature state's transaction holds exactly its payments.
    lanes: Lanes,
    /// `commit_max_events` reached while outputs were being sent.
    commit_due: bool,
    /// The commit running in the background, and its transaction.
    commit_task: Option<tokio::task::JoinHandle<CommitOutcome>>,
    committing: Option<Txn>,
    /// Scored batches of the next transaction, held while one commits.
    held: Vec<Batch>,
    held_records: usize,
    /// Transactions aborted so far.
    aborts: u64,
}

/// How a background commit ended.
enum CommitOutcome {
    Committed,
    /// Abort and re-read (the error, if any, is logged by the task).
    Abort,
    Fatal(KafkaError),
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
    let lanes = super::start_lanes(cfg, parts, opts.clone(), batches.is_some())?;
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
    parts.ready.set_stream(true);
    info!(
        topic = %cfg.kafka.payments_topic,
        transactional_id = %cfg.kafka.transactional_id,
        "stream started (exactly-once)"
    );
    let (stop, forward) = super::Stop::new(shutdown);
    let mut l = Loop {
        cfg,
        parts,
        consumer,
        producer,
        txn: Txn::default(),
        isolation: Isolation::default(),
        batches,
        stop,
        opts,
        lanes,
        commit_due: false,
        commit_task: None,
        committing: None,
        held: Vec::new(),
        held_records: 0,
        aborts: 0,
    };
    tokio::select! {
        r = l.consume() => r?,
        () = forward => {}
    }
    info!("draining: committing the open transaction");
    l.commit().await?;
    info!("drained and committed");
    Ok(())
}

impl Loop<'_> {
    async fn pause(&mut self, d: Duration) -> bool {
        self.stop.pause(d).await
    }

    async fn consume(&mut self) -> Result<(), StreamError> {
        let interval = Duration::from_millis(self.cfg.kafka.commit_interval_ms);
        let max_in_flight = self.cfg.kafka.max_in_flight;
        // A tenth of the interval: a transaction closes at most that late.
        let mut ticker = tokio::time::interval(
            (interval / 10).clamp(Duration::from_millis(1), Duration::from_millis(50)),
        );
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = self.stop.clone();
        let consumer = self.consumer.clone();
        let snapshots = self.parts.state.as_ref().and_then(|s| s.snapshots.clone());
        // The open transaction's deadline, to the millisecond: the ticker
        // alone closed a transaction up to a tenth of the interval late,
        // most of the p99's excess over the interval. Armed once per
        // transaction (`armed_for` is its start), fired at most once.
        let deadline = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(deadline);
        let mut armed_for: Option<Instant> = None;
        let mut fired = false;
        loop {
            if self.commit_due && self.commit_task.is_none() {
                self.commit_point(snapshots.as_ref()).await?;
            }
            if self.txn.started != armed_for {
                armed_for = self.txn.started;
                fired = false;
                if let Some(t) = armed_for {
                    deadline
                        .as_mut()
                        .reset(tokio::time::Instant::from_std(t + interval));
                }
            }
            // While a transaction commits, the next one fills up to its
            // own size bound (double buffering, not an unbounded backlog).
            let cap = if self.commit_task.is_some() {
                max_in_flight.min(self.cfg.kafka.commit_max_events)
            } else {
                max_in_flight
            };
            let room = self.lanes.outstanding() + self.held_records < cap;
            tokio::select! {
                biased;
                () = stop.stopped() => return Ok(()),
                Some(r) = futures::future::OptionFuture::from(self.commit_task.as_mut()) => {
                    self.commit_task = None;
                    self.on_committed(r.unwrap_or(CommitOutcome::Abort)).await?;
                }
                () = &mut deadline, if armed_for.is_some() && !fired && self.commit_task.is_none() => {
                    fired = true;
                    self.commit_point(snapshots.as_ref()).await?;
                }
                _ = ticker.tick() => {
                    let due = self.txn.started.map_or(
                        // Idle: a due cut is taken at once.
                        snapshots.as_ref().is_some_and(|s| s.due()),
                        |t| t.elapsed() >= interval,
                    );
                    if due && self.commit_task.is_none() {
                        self.commit_point(snapshots.as_ref()).await?;
                    }
                }
                Some(b) = self.lanes.next(), if self.lanes.busy() => self.on_scored(b).await?,
                msg = consumer.recv(), if room => match msg {
                    Ok(m) => {
                        let mut special = self.admit(&m);
                        // Whatever else librdkafka already holds goes in the
                        // same lane batches (no wait for more), up to a
                        // record that must go one at a time.
                        while special.is_none() && self.lanes.outstanding() + self.held_records < cap {
                            match consumer.recv().now_or_never() {
                                Some(Ok(m)) => special = self.admit(&m),
                                _ => break,
                            }
                        }
                        self.lanes.flush();
                        if let Some(m) = special {
                            self.one_at_a_time(m).await?;
                        }
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

    /// A consumed record joins the current transaction (feature state's
    /// journal is opened if it is not) and goes to its lane; a record that
    /// must go one at a time (isolation after an abort) is handed back,
    /// detached.
    fn admit(&mut self, m: &BorrowedMessage<'_>) -> Option<OwnedMessage> {
        self.parts.metrics.events_consumed.increment(1);
        self.joined();
        let (partition, offset) = (m.partition(), m.offset());
        self.txn.consumed.insert(partition);
        self.parts.applied.note(partition, offset);
        if self.isolation.special((partition, offset)) {
            return Some(m.detach());
        }
        self.lanes.push(&RecordIn::of(m));
        None
    }

    /// A record is about to be scored for the current transaction: feature
    /// state journals from here (an abort puts it back, so re-scored events
    /// see what they first saw), and the transaction's clock starts.
    fn joined(&mut self) {
        if !self.parts.engine.txn_open() {
            if let Err(e) = self.parts.engine.begin_txn() {
                warn!(error = %e, "feature state cannot join the transaction");
            }
        }
        if self.txn.started.is_none() {
            self.txn.started = Some(Instant::now());
            self.txn.revokes_at_begin = self.revokes();
        }
    }

    /// Begins the Kafka transaction at the current transaction's first output.
    fn ensure_open(&mut self) -> Result<(), StreamError> {
        if !self.txn.open {
            self.producer
                .begin_transaction()
                .map_err(|source| StreamError::Transaction {
                    step: "begin",
                    source,
                })?;
            self.txn.open = true;
        }
        Ok(())
    }

    /// A lane's batch is scored: its outputs go into the open transaction
    /// in its order.
    async fn on_scored(&mut self, mut b: Batch) -> Result<(), StreamError> {
        if b.poisoned() {
            return Err(StreamError::Lane);
        }
        if self.commit_task.is_some() {
            // The next transaction's: produced once this commit is known.
            self.held_records += b.len();
            self.held.push(b);
            return Ok(());
        }
        self.ensure_open()?;
        for i in 0..b.len() {
            let Some(s) = b.take(i) else { continue };
            let (partition, offset) = (s.partition, s.offset);
            if let Outcome::Verdict { state, .. } = &s.outcome {
                log_state(
                    self.batches.as_mut(),
                    state.as_ref(),
                    s.input,
                    partition,
                    offset,
                );
            }
            self.produce(partition, offset, s.outcome, false).await;
            if self.txn.open {
                self.txn.offsets.insert(partition, offset + 1);
                self.txn.events += 1;
                if self.txn.events >= self.cfg.kafka.commit_max_events {
                    self.commit_due = true;
                }
            }
        }
        self.lanes.recycle(b);
        Ok(())
    }

    /// Waits for every record in the lanes; with `send`, their outputs go
    /// into the open transaction, else they are dropped (the transaction is
    /// being aborted: they are read again).
    async fn settle_lanes(&mut self, send: bool) -> Result<(), StreamError> {
        self.lanes.flush();
        while self.lanes.busy() {
            let Some(b) = self.lanes.next().await else {
                break;
            };
            if send {
                self.on_scored(b).await?;
            } else if b.poisoned() {
                return Err(StreamError::Lane);
            } else {
                self.lanes.recycle(b);
            }
        }
        Ok(())
    }

    /// A record isolated after an abort, or in a range re-read one event
    /// per transaction: the lanes are settled first (order), then it is
    /// scored here and, when careful, committed alone.
    async fn one_at_a_time(&mut self, m: OwnedMessage) -> Result<(), StreamError> {
        let aborts = self.aborts;
        self.finish_commit().await?;
        if self.aborts != aborts {
            // The commit before it failed: its partition was rewound, and
            // the record is read again.
            return Ok(());
        }
        self.settle_lanes(true).await?;
        self.joined();
        self.txn.consumed.insert(m.partition());
        self.ensure_open()?;
        let (partition, offset) = (m.partition(), m.offset());
        let at = (partition, offset);
        let outcome = if self.isolation.skip.contains(&at) {
            None
        } else if self.isolation.replace.contains(&at) {
            let source = Source {
                topic: m.topic(),
                partition,
                offset,
            };
            Some(last_resort(
                &source,
                m.key().unwrap_or_default(),
                "the broker refused this record's output in an earlier transaction",
                self.cfg.limits.max_key_bytes,
            ))
        } else {
            let rec = RecordIn {
                topic: m.topic(),
                partition,
                offset,
                key: m.key(),
                payload: m.payload().unwrap_or(&[]),
                format: content_type(&m),
            };
            let o = process(
                &rec,
                &self.parts.engine,
                &self.opts,
                &self.parts.metrics,
                self.batches.is_some(),
                // A rare path (one record after an abort): fresh buffers.
                &mut crate::event::Decoder::default(),
            );
            if let Outcome::Verdict { state, .. } = &o {
                log_state(
                    self.batches.as_mut(),
                    state.as_ref(),
                    rec.payload,
                    partition,
                    offset,
                );
            }
            Some(o)
        };
        if let Some(outcome) = outcome {
            let isolated = self.isolation.replace.contains(&at);
            self.produce(partition, offset, outcome, isolated).await;
        } else {
            error!(
                partition,
                offset,
                "record skipped: neither its output nor its minimal dead letter could be produced"
            );
            metrics::counter!(telemetry::LAST_RESORT, "outcome" => "unwritable").increment(1);
        }
        if self.txn.open {
            self.txn.offsets.insert(partition, offset + 1);
            self.txn.events += 1;
            if self.txn.events >= self.cfg.kafka.commit_max_events
                || self.isolation.careful(partition, offset)
            {
                self.commit().await?;
            }
        }
        Ok(())
    }

    /// Sends one output record in the open transaction. A record librdkafka
    /// refuses for good is replaced by its minimal dead letter; if that is
    /// refused too, the record is skipped (logged and counted).
    async fn produce(&mut self, partition: i32, offset: i64, outcome: Outcome, isolated: bool) {
        self.produce_output(partition, offset, outcome, isolated)
            .await;
        self.send_batches(false).await;
    }

    /// Sends state-log batches in the open transaction (those closed by
    /// size, and with `all` every open one): they commit with the verdicts
    /// and the offsets, so other instances (read_committed) apply the
    /// payments exactly when their verdicts become visible. A batch that
    /// cannot be enqueued is given up (logged and counted); its payments'
    /// verdicts still commit.
    async fn send_batches(&mut self, all: bool) {
        let Some(batches) = self.batches.as_mut() else {
            return;
        };
        let ready: Vec<state_log::Batch> = if all {
            batches.take_all()
        } else {
            batches.take_full().collect()
        };
        for mut b in ready {
            let Some(batches) = self.batches.as_ref() else {
                return;
            };
            let sent =
                state_log::enqueue(self.cfg, batches, &self.producer, &mut self.stop, &mut b).await;
            if let Some(delivery) = sent {
                self.txn.sent.push(Sent {
                    partition: b.partition,
                    offset: b.offsets.first().copied().unwrap_or(-1),
                    last_resort: false,
                    batch: true,
                    delivery,
                });
            }
        }
    }

    async fn produce_output(
        &mut self,
        partition: i32,
        offset: i64,
        outcome: Outcome,
        isolated: bool,
    ) {
        let (mut topic, mut key, mut payload, mut headers, mut event_time, mut kind) =
            split(self.cfg, outcome);
        let mut last = isolated;
        let mut attempts = 0;
        loop {
            let record = FutureRecord::to(topic)
                .key(&key)
                .payload(&payload)
                .headers(headers.build());
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    self.txn.sent.push(Sent {
                        partition,
                        offset,
                        last_resort: last,
                        batch: false,
                        delivery,
                    });
                    if let Some(t) = event_time {
                        self.txn.event_times.push(t);
                    }
                    if let Some(k) = kind {
                        self.txn.dlq_kinds.push(k);
                    }
                    return;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if self.pause(Duration::from_millis(1)).await {
                        return;
                    }
                }
                Err((e, _)) => {
                    let class = classify(&e);
                    if class != Failure::Outage {
                        attempts += 1;
                    }
                    let give_up = class == Failure::Permanent
                        || attempts >= self.cfg.kafka.produce_max_attempts;
                    if give_up && last {
                        error!(partition, offset, error = %e, "even a minimal dead letter cannot be produced for this record; it is skipped");
                        metrics::counter!(telemetry::LAST_RESORT, "outcome" => "unwritable")
                            .increment(1);
                        return;
                    }
                    if give_up {
                        warn!(partition, offset, error = %e, "record cannot be produced; replacing it by a minimal dead letter");
                        let source = Source {
                            topic: &self.cfg.kafka.payments_topic,
                            partition,
                            offset,
                        };
                        let o = last_resort(
                            &source,
                            &key,
                            &e.to_string(),
                            self.cfg.limits.max_key_bytes,
                        );
                        (topic, key, payload, headers, event_time, kind) = split(self.cfg, o);
                        last = true;
                        attempts = 0;
                        continue;
                    }
                    warn!(error = %e, "cannot enqueue record in transaction; retrying");
                    if self.pause(Duration::from_millis(100)).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sends the offsets into the transaction and commits it. A retriable
    /// failure is retried; one that needs an abort aborts and rewinds the
    /// consumer, so the same events are processed again in a new transaction.
    fn revokes(&self) -> u64 {
        self.consumer
            .context()
            .revokes
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A transaction is due (its interval or its size): its commit starts
    /// in the background; when a snapshot cut is due, it commits without
    /// overlap instead and the cut is taken between the two transactions,
    /// so it holds committed payments only.
    async fn commit_point(
        &mut self,
        snapshots: Option<&crate::state::SnapshotHandle>,
    ) -> Result<(), StreamError> {
        match snapshots.filter(|s| s.due()) {
            Some(s) => {
                self.commit().await?;
                if !self.parts.engine.txn_open() {
                    s.at_boundary();
                }
                Ok(())
            }
            None => self.start_commit().await,
        }
    }

    /// Commits the current transaction and waits for it (shutdown, a
    /// snapshot boundary, one-at-a-time isolation).
    async fn commit(&mut self) -> Result<(), StreamError> {
        self.finish_commit().await?;
        self.start_commit().await?;
        self.finish_commit().await
    }

    /// Waits for the commit running in the background, if any.
    async fn finish_commit(&mut self) -> Result<(), StreamError> {
        let Some(task) = self.commit_task.take() else {
            return Ok(());
        };
        let r = task.await.unwrap_or(CommitOutcome::Abort);
        self.on_committed(r).await
    }

    /// Seals the current transaction and starts its commit in the
    /// background (no other commit may be running).
    async fn start_commit(&mut self) -> Result<(), StreamError> {
        self.commit_due = false;
        // Partitions left this instance while the transaction was open
        // (cooperative rebalancing keeps the rest consuming): their new
        // owner has already read their committed offset and is scoring the
        // same events. Committing now would publish a second verdict for
        // each (the offsets would still be accepted: the group metadata is
        // the new generation's). Aborting leaves them to the new owner; the
        // partitions still held are read again from their committed offsets.
        if self.txn.started.is_some() && self.revokes() != self.txn.revokes_at_begin {
            warn!("partitions were revoked while this transaction was open: aborting it; their new owner scores those events");
            return self.abort_with(false).await;
        }
        // Every record of the transaction, out of the lanes and sent.
        self.settle_lanes(true).await?;
        self.commit_due = false;
        if !self.txn.open {
            // Nothing was produced, so nothing was consumed: close feature
            // state's (empty) journal.
            if self.parts.engine.txn_open() {
                if let Err(e) = self.parts.engine.commit_txn() {
                    warn!(error = %e, "feature state transaction not committed");
                }
            }
            self.txn.reset();
            return Ok(());
        }
        // The transaction's payments go to the state log with it.
        self.send_batches(true).await;
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &self.txn.offsets {
            if let Err(e) =
                tpl.add_partition_offset(&self.cfg.kafka.payments_topic, *p, Offset::Offset(*o))
            {
                warn!(error = %e, "bad offset in transaction");
            }
        }
        if let Err(e) = self.parts.engine.seal_txn() {
            warn!(error = %e, "feature state transaction not sealed");
        }
        self.committing = Some(std::mem::take(&mut self.txn));
        self.commit_task = Some(tokio::spawn(commit_kafka(
            self.producer.clone(),
            self.consumer.clone(),
            tpl,
        )));
        Ok(())
    }

    /// The background commit ended: on success the held records go out in
    /// the next transaction; else both are aborted and re-read.
    async fn on_committed(&mut self, r: CommitOutcome) -> Result<(), StreamError> {
        let Some(mut done) = self.committing.take() else {
            return Ok(());
        };
        match r {
            CommitOutcome::Committed => {
                if let Err(e) = self.parts.engine.commit_txn() {
                    warn!(error = %e, "feature state transaction not committed");
                }
                metrics::counter!(telemetry::TRANSACTIONS, "result" => "committed").increment(1);
                let now = crate::now_ms();
                for t in done.event_times.drain(..) {
                    self.parts
                        .metrics
                        .end_to_end_latency
                        .record((now - t).max(0) as f64 / 1000.0);
                }
                for k in done.dlq_kinds.drain(..) {
                    self.parts.metrics.dlq(k);
                }
                let held = std::mem::take(&mut self.held);
                self.held_records = 0;
                for b in held {
                    self.on_scored(b).await?;
                }
                if self.txn.started.is_none() && !self.lanes.busy() && self.parts.engine.txn_open()
                {
                    // Idle: close the next segment, empty, so that a cut
                    // between transactions sees no journal open.
                    if let Err(e) = self.parts.engine.commit_txn() {
                        warn!(error = %e, "feature state transaction not committed");
                    }
                }
                Ok(())
            }
            CommitOutcome::Fatal(source) => Err(StreamError::Transaction {
                step: "commit",
                source,
            }),
            CommitOutcome::Abort => {
                warn!("transaction commit failed; aborting it and the next one, and re-processing");
                // The committed-to-be transaction's records, and the next
                // one's partitions too: both are read again.
                let next = std::mem::take(&mut self.txn);
                done.consumed.extend(next.consumed);
                self.txn = done;
                for b in std::mem::take(&mut self.held) {
                    self.lanes.recycle(b);
                }
                self.held_records = 0;
                self.abort_with(true).await
            }
        }
    }

    /// Aborts the current transaction, marks the records that caused it
    /// (with `isolate`: not after an abort on revoke, where none did), and
    /// seeks every partition it read back to its committed offset.
    async fn abort_with(&mut self, isolate: bool) -> Result<(), StreamError> {
        self.aborts += 1;
        // Nothing may score while feature state is put back.
        self.settle_lanes(false).await?;
        if self.txn.open {
            let p = self.producer.clone();
            blocking(move || p.abort_transaction(TXN_TIMEOUT))
                .await
                .map_err(|source| StreamError::Transaction {
                    step: "abort",
                    source,
                })?;
        }
        metrics::counter!(telemetry::TRANSACTIONS, "result" => "aborted").increment(1);
        if let Some(b) = self.batches.as_mut() {
            // Their payments are read and scored again.
            b.clear();
        }
        let undone = if self.parts.engine.txn_open() {
            self.parts.engine.abort_txn()
        } else {
            Ok(0)
        };
        match undone {
            Ok(reapplied) => info!(
                reapplied,
                "feature state put back to the transaction's start"
            ),
            Err(e) => warn!(error = %e, "feature state could not be put back in full"),
        }
        let sent = std::mem::take(&mut self.txn.sent);
        let touched: Vec<(i32, i64)> = self.txn.offsets.iter().map(|(p, o)| (*p, *o)).collect();
        let partitions: Vec<i32> = self.txn.consumed.iter().copied().collect();
        self.txn.reset();
        if isolate {
            self.find_culprits(sent, &touched).await;
        }
        let topic = self.cfg.kafka.payments_topic.clone();
        let consumer = self.consumer.clone();
        let rewound =
            tokio::task::spawn_blocking(move || rewind(&consumer, &topic, &partitions)).await;
        match rewound {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "rewind after abort failed"),
            Err(e) => warn!(error = %e, "rewind after abort failed"),
        }
        Ok(())
    }

    /// Reads the aborted transaction's delivery reports: a record the broker
    /// refused for good is replaced by its minimal dead letter when read
    /// again (or skipped if it already was that). With no culprit, the
    /// aborted range is re-read one event per transaction.
    async fn find_culprits(&mut self, sent: Vec<Sent>, touched: &[(i32, i64)]) {
        let mut culprits = Vec::new();
        let mut state_batch_refused = false;
        let reports = futures::future::join_all(sent.into_iter().map(|s| async move {
            let r = tokio::time::timeout(Duration::from_secs(5), s.delivery).await;
            (s.partition, s.offset, s.last_resort, s.batch, r)
        }))
        .await;
        for (partition, offset, last, batch, r) in reports {
            let Ok(Ok(Err((e, _)))) = r else { continue };
            if classify(&e) != Failure::Permanent {
                continue;
            }
            if batch {
                warn!(partition, first_offset = offset, error = %e, "the broker refused a state-log batch");
                state_batch_refused = true;
                continue;
            }
            warn!(partition, offset, error = %e, "the broker refused this record's output");
            culprits.push((partition, offset, last));
        }
        // A broker refuses a whole batch: with several records refused, the
        // innocent cannot be told from the guilty, so the range is re-read
        // one event per transaction, where a refusal names one record (a
        // state-log batch then holds one payment too).
        if let ([(partition, offset, last)], false) = (&culprits[..], state_batch_refused) {
            let (partition, offset, last) = (*partition, *offset, *last);
            warn!(
                partition,
                offset, "isolating the record that failed the transaction"
            );
            if last {
                self.isolation.skip.insert((partition, offset));
            } else {
                self.isolation.replace.insert((partition, offset));
            }
        } else {
            for (partition, next) in touched {
                let end = self.isolation.careful_until.entry(*partition).or_insert(0);
                *end = (*end).max(*next);
            }
        }
    }
}

/// Sends the offsets into the open transaction and commits it (in the
/// background). A retriable failure is retried (up to 10 times); one that
/// needs an abort is reported as [`CommitOutcome::Abort`].
async fn commit_kafka(
    producer: FutureProducer<StreamContext>,
    consumer: SharedConsumer,
    tpl: TopicPartitionList,
) -> CommitOutcome {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(cgm) = consumer.group_metadata() else {
            warn!("no consumer group metadata; aborting the transaction");
            return CommitOutcome::Abort;
        };
        let p = producer.clone();
        let tpl2 = tpl.clone();
        // rust-rdkafka's commit_transaction first flushes, and its flush
        // waits on the delivery-report queue that the producer's own
        // polling thread serves every 100 ms: each commit took 100 ms more
        // than librdkafka's (measured with debug=eos). Waiting here for the
        // reports, 1 ms at a time, makes that flush find nothing to do.
        let settled = Instant::now();
        while producer.in_flight_count() > 0 && settled.elapsed() < TXN_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let r = blocking(move || {
            p.send_offsets_to_transaction(&tpl2, &cgm, TXN_TIMEOUT)?;
            p.commit_transaction(TXN_TIMEOUT)
        })
        .await;
        let e = match r {
            Ok(()) => return CommitOutcome::Committed,
            Err(e) => e,
        };
        let (retriable, needs_abort, fatal) = match &e {
            KafkaError::Transaction(t) => (t.is_retriable(), t.txn_requires_abort(), t.is_fatal()),
            _ => (true, false, false),
        };
        if fatal {
            return CommitOutcome::Fatal(e);
        }
        if needs_abort || !retriable || attempt >= 10 {
            warn!(error = %e, "transaction commit failed; aborting and re-processing");
            return CommitOutcome::Abort;
        }
        warn!(error = %e, attempt, "transaction commit failed; retrying");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The fields of an outcome as the loop sends them.
type Parts<'c> = (
    &'c str,
    Vec<u8>,
    Vec<u8>,
    OutHeaders,
    Option<i64>,
    Option<&'static str>,
);

fn split(cfg: &Config, o: Outcome) -> Parts<'_> {
    let r = o.into_record();
    let topic = if r.dlq_kind.is_some() {
        &cfg.kafka.dlq_topic
    } else {
        &cfg.kafka.verdicts_topic
    };
    (
        topic,
        r.key,
        r.payload,
        r.headers,
        r.event_time_ms,
        r.dlq_kind,
    )
}

/// Seeks `partitions` (those still assigned) back to their committed
/// offsets. Blocking.
fn rewind(consumer: &SharedConsumer, topic: &str, partitions: &[i32]) -> Result<(), KafkaError> {
    let assignment = consumer.assignment()?;
    let mut tpl = TopicPartitionList::new();
    for e in assignment.elements() {
        if partitions.contains(&e.partition()) {
            tpl.add_partition(e.topic(), e.partition());
        }
    }
    if tpl.count() == 0 {
        return Ok(());
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    let mut seek = TopicPartitionList::new();
    for e in committed.elements() {
        let to = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        seek.add_partition_offset(topic, e.partition(), to)?;
    }
    consumer.seek_partitions(seek, Duration::from_secs(10))?;
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

//! The follower: a thread that reads every partition of the state log and
//! applies each record of another origin to the engine. It owns a plain
//! librdkafka consumer (assign, no group: every instance reads everything)
//! with `read_committed`, so a payment scored in an exactly-once
//! transaction reaches other instances only if that transaction commits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::snapshot::{self, Positions};
use super::{HDR_BATCH, HDR_ORIGIN};
use crate::config::Config;
use crate::engine::Engine;
use crate::event::{self, Format};
use crate::serve::idempotency::{Decided, RecentVerdicts};
use crate::stream::Applied;
use crate::telemetry;

/// The follower's client context: reaching the end of a partition is the
/// normal state of a follower, not an error worth a log line.
struct Quiet;

impl rdkafka::client::ClientContext for Quiet {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::telemetry::librdkafka_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(
            error,
            KafkaError::PartitionEOF(_)
                | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        );
        static THROTTLE: crate::telemetry::Throttle = crate::telemetry::Throttle::new(10_000);
        if !eof {
            if let Some(held) = THROTTLE.allow() {
                warn!(error = %error, reason, repeats_held_back = held, "state log client error");
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

type Reader = BaseConsumer<Quiet>;

#[derive(Debug, thiserror::Error)]
pub enum FollowerError {
    #[error("cannot create the state-log consumer: {0}")]
    Client(KafkaError),
    #[error("cannot start the state-log follower thread: {0}")]
    Thread(std::io::Error),
}

/// A request to be told when the follower has read the log to where it
/// ends at the time of the request.
type CatchUp = tokio::sync::oneshot::Sender<()>;

struct Shared {
    stop: AtomicBool,
    /// The start-up replay reached the log's end as it was at start.
    caught_up: AtomicBool,
    applied: AtomicU64,
}

/// The running follower; stops its thread when dropped.
pub struct Follower {
    shared: Arc<Shared>,
    requests: mpsc::Sender<CatchUp>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Follower {
    /// Whether the start-up replay is done.
    pub fn caught_up(&self) -> bool {
        self.shared.caught_up.load(Ordering::SeqCst)
    }

    /// Records of other origins applied so far.
    pub fn applied(&self) -> u64 {
        self.shared.applied.load(Ordering::Relaxed)
    }

    /// Waits (up to `limit`) for the start-up replay. Returns whether it ended.
    pub async fn wait_caught_up(&self, limit: Duration) -> bool {
        let started = Instant::now();
        while !self.caught_up() && started.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.caught_up()
    }

    /// Waits (up to `limit`) until the follower has read the log up to
    /// where it ends now. Returns whether it got there.
    pub async fn wait_for_end(&self, limit: Duration) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.requests.send(tx).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(limit, rx).await, Ok(Ok(())))
    }

    /// A handle that can wait for the end from other tasks.
    pub fn handle(&self) -> FollowerHandle {
        FollowerHandle {
            requests: self.requests.clone(),
        }
    }
}

/// Waits on the follower from another task (see [`Follower::wait_for_end`]).
#[derive(Clone)]
pub struct FollowerHandle {
    requests: mpsc::Sender<CatchUp>,
}

impl FollowerHandle {
    pub async fn wait_for_end(&self, limit: Duration) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.requests.send(tx).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(limit, rx).await, Ok(Ok(())))
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn consumer_config(cfg: &Config, origin: &str) -> ClientConfig {
    let mut c = crate::stream::base_config(cfg);
    c.set("group.id", format!("{}-state-{origin}", cfg.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        // A snapshot's cut older than the log's retention: from the start.
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", cfg.kafka.fetch_wait_max_ms.to_string())
        .set("fetch.queue.backoff.ms", "5")
        .set(
            "client.id",
            format!("fraudline-{}-state", cfg.kafka.group_id),
        );
    for (key, v) in &cfg.kafka.consumer {
        if !["group.id", "isolation.level", "auto.offset.reset"].contains(&key.as_str()) {
            c.set(key, v);
        }
    }
    c
}

/// Starts the follower on the state log `cfg.kafka.state_topic`, replaying
/// from `kafka.warmup_lookback_ms` back.
pub fn spawn_follower(
    cfg: &Config,
    engine: Arc<Engine>,
    origin: Arc<str>,
    positions: Arc<Positions>,
    recent: Option<Arc<RecentVerdicts>>,
    applied: Arc<Applied>,
) -> Result<Follower, FollowerError> {
    let consumer: Reader = consumer_config(cfg, &origin)
        .create_with_context(Quiet)
        .map_err(FollowerError::Client)?;
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        caught_up: AtomicBool::new(false),
        applied: AtomicU64::new(0),
    });
    let (tx, rx) = mpsc::channel();
    let committed = super::committed_reader(cfg);
    let run = Run {
        cfg: cfg.clone(),
        recent,
        positions,
        applied,
        committed,
        payments_topic: cfg.kafka.payments_topic.clone(),
        topic: cfg.kafka.state_topic.clone(),
        lookback_ms: cfg.kafka.warmup_lookback_ms as i64,
        limits: cfg.limits(),
        engine,
        origin,
        shared: shared.clone(),
        consumer,
        requests: rx,
    };
    let thread = std::thread::Builder::new()
        .name("state-follower".into())
        .spawn(move || run.run())
        .map_err(FollowerError::Thread)?;
    Ok(Follower {
        shared,
        requests: tx,
        thread: Some(thread),
    })
}

struct Run {
    cfg: Config,
    /// The in-line API's recent verdicts: an in-line payment scored by
    /// another instance is answered from it on a retry here.
    recent: Option<Arc<RecentVerdicts>>,
    /// Shared with the snapshot writer: where the replay has got to.
    positions: Arc<Positions>,
    /// Shared with the stream and the snapshot writer: per payments
    /// partition, the next offset whose payment is not in the store.
    applied: Arc<Applied>,
    /// A consumer with the stream's group id (never joining it), to read
    /// the group's committed offsets at start.
    committed: Option<BaseConsumer>,
    payments_topic: String,
    topic: String,
    lookback_ms: i64,
    limits: event::Limits,
    engine: Arc<Engine>,
    origin: Arc<str>,
    shared: Arc<Shared>,
    consumer: Reader,
    requests: mpsc::Receiver<CatchUp>,
}

/// Which stream payments the start-up replay leaves out: those the stream
/// will read and score again (at or past the group's committed offset).
struct Pending {
    committed: HashMap<i32, i64>,
    /// A partition with no commit is read from its start.
    uncommitted_rescored: bool,
}

impl Pending {
    fn holds(&self, partition: i32, offset: i64) -> bool {
        partition >= 0
            && match self.committed.get(&partition) {
                Some(c) => offset >= *c,
                None => self.uncommitted_rescored,
            }
    }
}

/// A catch-up being waited for: per partition, the offset to reach.
struct Waiter {
    targets: HashMap<i32, i64>,
    created: Instant,
    done: Option<CatchUp>,
}

/// Where the follower is in each partition.
#[derive(Default)]
struct Progress {
    /// Next offset to read, from the start position and the records read.
    next: HashMap<i32, i64>,
    /// The last event of the partition was its end (cleared by a record).
    at_end: HashMap<i32, bool>,
}

/// A partition that has sat at its readable end this long after a wait
/// began has nothing readable below the target: the fetcher (10 ms waits)
/// would have returned it. This covers the offsets that hold no record a
/// reader sees (transaction markers, aborted records, an open transaction
/// of another instance).
const SETTLE: Duration = Duration::from_millis(100);

impl Run {
    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// The topic's partitions, waiting for the topic to exist.
    fn partitions(&self) -> Option<Vec<i32>> {
        let mut warned = false;
        while !self.stopping() {
            match self
                .consumer
                .fetch_metadata(Some(&self.topic), Duration::from_secs(5))
            {
                Ok(md) => {
                    let parts: Vec<i32> = md
                        .topics()
                        .iter()
                        .filter(|t| t.name() == self.topic && t.error().is_none())
                        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                        .collect();
                    if !parts.is_empty() {
                        return Some(parts);
                    }
                }
                Err(e) => debug!(error = %e, "state log metadata"),
            }
            if !warned {
                warn!(topic = %self.topic, "state log topic not found yet; waiting for it");
                warned = true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        None
    }

    /// Where each partition's replay starts: the first record at or after
    /// `now - lookback`, else the end (as a number, so progress is known).
    fn starts(&self, parts: &[i32], cut: &HashMap<i32, i64>) -> TopicPartitionList {
        let since = crate::now_ms() - self.lookback_ms;
        let mut times = TopicPartitionList::new();
        for p in parts {
            let _ = times.add_partition_offset(&self.topic, *p, Offset::Offset(since));
        }
        let found = self
            .consumer
            .offsets_for_times(times, Duration::from_secs(30))
            .ok();
        let mut tpl = TopicPartitionList::new();
        for p in parts {
            if let Some(o) = cut.get(p) {
                // After a snapshot: only the tail since its cut.
                let _ = tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o));
                continue;
            }
            let at = found
                .as_ref()
                .and_then(|f| f.find_partition(&self.topic, *p))
                .map(|e| e.offset())
                .filter(|o| matches!(o, Offset::Offset(_)))
                .or_else(|| {
                    self.consumer
                        .fetch_watermarks(&self.topic, *p, Duration::from_secs(10))
                        .ok()
                        .map(|(_, high)| Offset::Offset(high))
                })
                .unwrap_or(Offset::End);
            let _ = tpl.add_partition_offset(&self.topic, *p, at);
        }
        tpl
    }

    fn waiter(&self, parts: &[i32], done: Option<CatchUp>) -> Waiter {
        let mut targets = HashMap::new();
        for p in parts {
            match self
                .consumer
                .fetch_watermarks(&self.topic, *p, Duration::from_secs(10))
            {
                Ok((_, high)) => {
                    targets.insert(*p, high);
                }
                Err(e) => warn!(error = %e, partition = p, "cannot read the state log's end"),
            }
        }
        Waiter {
            targets,
            created: Instant::now(),
            done,
        }
    }

    fn reached(&self, w: &Waiter, progress: &Progress) -> bool {
        let settled = w.created.elapsed() >= SETTLE;
        w.targets.iter().all(|(p, target)| {
            progress.next.get(p).is_some_and(|n| n >= target)
                || (settled && progress.at_end.get(p).copied().unwrap_or(false))
        })
    }

    /// The stream group's committed offsets on the payments topic. A state
    /// record of a payment at or past them is not replayed at start: its
    /// offset was not committed, so the payment will be read and scored
    /// again (by whichever instance owns its partition) and written again.
    /// Replaying it would make that re-scoring a duplicate that sees no
    /// novelty features.
    ///
    /// A partition with no committed offset is read again from its start
    /// when `kafka.auto_offset_reset` is "earliest": every record of it is
    /// pending then (an instance killed before its first commit of a
    /// partition). `None` when the offsets cannot be read: everything is
    /// replayed (the old behaviour; duplicates over lost state).
    fn committed_offsets(&self) -> Option<Pending> {
        let c = self.committed.as_ref()?;
        match super::group_committed(c, &self.payments_topic) {
            Ok(committed) => Some(Pending {
                committed,
                uncommitted_rescored: self.cfg.kafka.auto_offset_reset == "earliest",
            }),
            Err(e) => {
                warn!(error = %e, "cannot read the stream's committed offsets; replaying every state record");
                None
            }
        }
    }

    fn run(self) {
        let Some(parts) = self.partitions() else {
            return;
        };
        let started = Instant::now();
        let cut = self.load_snapshot();
        let committed = self.committed_offsets();
        let starts = self.starts(&parts, &cut);
        let mut progress = Progress::default();
        for e in starts.elements() {
            if let Offset::Offset(o) = e.offset() {
                progress.next.insert(e.partition(), o);
                self.positions.set(e.partition(), o);
            }
        }
        if let Err(e) = self.consumer.assign(&starts) {
            warn!(error = %e, "cannot assign the state log; state stays local to this instance");
            self.shared.caught_up.store(true, Ordering::SeqCst);
            return;
        }
        let mut initial = Some(self.waiter(&parts, None));
        let mut replayed = 0u64;
        let mut waiters: Vec<Waiter> = Vec::new();
        let lag = metrics::histogram!(telemetry::STATE_PROPAGATION);
        let applied = metrics::counter!(telemetry::STATE_APPLIED, "result" => "applied");
        let refused = metrics::counter!(telemetry::STATE_APPLIED, "result" => "refused");
        let own = metrics::counter!(telemetry::STATE_APPLIED, "result" => "own");
        while !self.stopping() {
            while let Ok(tx) = self.requests.try_recv() {
                waiters.push(self.waiter(&parts, Some(tx)));
            }
            match self.consumer.poll(Duration::from_millis(20)) {
                Some(Ok(m)) => {
                    progress.next.insert(m.partition(), m.offset() + 1);
                    progress.at_end.insert(m.partition(), false);
                    let (mut mine, mut batch) = (false, None);
                    for h in m.headers().iter().flat_map(|h| h.iter()) {
                        if h.key == HDR_ORIGIN {
                            mine = h.value == Some(self.origin.as_bytes());
                        } else if h.key == HDR_BATCH {
                            batch = Some(
                                h.value
                                    .and_then(|v| std::str::from_utf8(v).ok())
                                    .and_then(|v| v.parse::<u64>().ok())
                                    .unwrap_or(0),
                            );
                        }
                    }
                    if mine {
                        own.increment(batch.unwrap_or(1));
                    } else {
                        let skip = if initial.is_some() {
                            committed.as_ref()
                        } else {
                            None
                        };
                        match self.apply(m.payload().unwrap_or_default(), batch.is_some(), skip) {
                            Ok((n, bad)) => {
                                applied.increment(n);
                                self.shared.applied.fetch_add(n, Ordering::Relaxed);
                                if initial.is_some() {
                                    replayed += n;
                                } else if let Some(t) = m.timestamp().to_millis() {
                                    lag.record((crate::now_ms() - t).max(0) as f64 / 1000.0);
                                }
                                if let Some(e) = bad {
                                    refused.increment(1);
                                    warn!(partition = m.partition(), offset = m.offset(), error = %e, "a payment in a state batch refused");
                                }
                            }
                            Err(e) => {
                                refused.increment(batch.unwrap_or(1).max(1));
                                warn!(partition = m.partition(), offset = m.offset(), error = %e, "state record refused");
                            }
                        }
                    }
                    self.positions.set(m.partition(), m.offset() + 1);
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    progress.at_end.insert(p, true);
                }
                Some(Err(e)) => debug!(error = %e, "state log read error; retrying"),
                None => {}
            }
            if let Some(w) = &initial {
                if self.reached(w, &progress) {
                    info!(
                        records = replayed,
                        seconds = started.elapsed().as_secs_f64(),
                        "state log replayed; following"
                    );
                    metrics::gauge!(telemetry::STATE_RESTORE_DURATION)
                        .set(started.elapsed().as_secs_f64());
                    self.shared.caught_up.store(true, Ordering::SeqCst);
                    initial = None;
                }
            }
            if !waiters.is_empty() {
                let mut i = 0;
                while i < waiters.len() {
                    if self.reached(&waiters[i], &progress) {
                        let w = waiters.swap_remove(i);
                        if let Some(tx) = w.done {
                            let _ = tx.send(());
                        }
                    } else {
                        i += 1;
                    }
                }
            }
        }
    }

    /// Loads the snapshot topic (when configured); returns the state-log
    /// offsets its last cut covers (empty: replay the lookback instead).
    fn load_snapshot(&self) -> HashMap<i32, i64> {
        if self.cfg.kafka.snapshot_topic.is_empty() {
            return HashMap::new();
        }
        let limit = Duration::from_millis(self.cfg.kafka.state_catch_up_ms);
        match snapshot::restore(&self.cfg, &self.engine, &self.shared.stop, limit) {
            Ok(r) if !r.offsets.is_empty() => r.offsets,
            Ok(_) => {
                info!(
                    lookback_ms = self.lookback_ms,
                    "no snapshot yet; replaying the state log's lookback"
                );
                HashMap::new()
            }
            Err(e) => {
                warn!(error = %e, lookback_ms = self.lookback_ms, "snapshot not loaded; replaying the state log's lookback");
                HashMap::new()
            }
        }
    }

    /// Applies the payments of one log record (a batch or a single
    /// record). Returns how many were applied, and the first error of a
    /// payment refused inside a batch (the others are applied).
    fn apply(
        &self,
        bytes: &[u8],
        batch: bool,
        skip: Option<&Pending>,
    ) -> Result<(u64, Option<String>), String> {
        let (_, records) = super::decode_log_record(bytes, batch).map_err(|e| e.to_string())?;
        let (mut n, mut bad) = (0, None);
        for rec in &records {
            match self.apply_one(rec, skip) {
                Ok(true) => n += 1,
                Ok(false) => {}
                Err(e) if batch => {
                    bad.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        Ok((n, bad))
    }

    /// Applies one payment; `false` when the start-up replay leaves it out.
    fn apply_one(
        &self,
        rec: &crate::proto::StateRecord,
        skip: Option<&Pending>,
    ) -> Result<bool, String> {
        if skip.is_some_and(|s| s.holds(rec.source_partition, rec.source_offset)) {
            return Ok(false);
        }
        if rec.source_partition >= 0 {
            // Before applying: a snapshot cut that holds this payment reads
            // a mark past it (the writer publishes only committed marks).
            self.applied.note(rec.source_partition, rec.source_offset);
        }
        let p = event::decode(
            &rec.payment,
            Some(Format::Protobuf),
            &self.limits,
            crate::now_ms(),
        )
        .map_err(|e| e.to_string())?;
        // A stale in-line payment was scored without moving state where it
        // was scored; it is here only for its verdict.
        let stale = rec.verdict.as_ref().is_some_and(|v| {
            v.reasons
                .iter()
                .any(|r| r.rule_id == crate::engine::STALE_EVENT)
        });
        if !stale {
            self.engine.warm(&p);
        }
        if let (Some(recent), Some(verdict), true) =
            (&self.recent, &rec.verdict, rec.source_partition < 0)
        {
            // An in-line payment: a retry of it here gets the first verdict.
            let mut wire = crate::proto::PaymentEvent::decode(rec.payment.as_slice())
                .map_err(|e| e.to_string())?;
            let (fingerprint, _) = crate::serve::scorer::fingerprint(&mut wire);
            if let Some(v) = crate::engine::Verdict::from_wire(verdict) {
                recent.insert(Arc::new(Decided {
                    event_id: p.event_id.clone(),
                    event_time_ms: p.event_time_ms,
                    fingerprint,
                    verdict: v,
                }));
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod pending_tests {
    use super::Pending;

    #[test]
    fn a_partition_never_committed_is_all_pending_when_read_from_its_start() {
        let p = Pending {
            committed: [(0, 100)].into_iter().collect(),
            uncommitted_rescored: true,
        };
        assert!(!p.holds(0, 99), "committed: replayed");
        assert!(p.holds(0, 100), "at the committed offset: scored again");
        assert!(
            p.holds(1, 5),
            "no commit, read from the start: scored again"
        );
        assert!(!p.holds(-1, 5), "in-line payments are always replayed");
        let latest = Pending {
            committed: Default::default(),
            uncommitted_rescored: false,
        };
        assert!(
            !latest.holds(1, 5),
            "auto_offset_reset latest: never read again"
        );
    }
}

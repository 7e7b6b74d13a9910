//! Snapshots of the feature store on a compacted topic, so a restart
//! replays only the state log written since the last cut, and the 30-day
//! knowledge (new payee / device / IP, payee age) and every window survive.
//!
//! # Writing
//! One instance writes: the holder of the payments topic's partition 0 (the
//! consumer group elects it; the stream sets [`SnapshotHandle::set_role`]
//! on every rebalance). Every `kafka.snapshot_interval_ms` it takes a
//! consistent cut of its store ([`FeatureStore::begin_snapshot`]: the
//! entities changed since its previous cut, tombstones for those dropped)
//! and writes it, then a [`SnapshotCut`] record naming the state-log
//! offsets it covers, in **one Kafka transaction** with a fixed
//! `transactional.id`: a reader (read_committed) sees whole cuts only, and
//! a writer that lost the role is fenced by the next one's
//! `init_transactions` (Kafka's fencing, not ours).
//!
//! The state-log offsets are the follower's positions read *before* the
//! cut, so every record before them is in the snapshot; a record after
//! them may be too (applied between the read and the cut), and is then
//! recognised on replay by the payer's event ids (the features' dedup).
//!
//! In exactly-once mode the stream takes the cut itself between two of its
//! transactions ([`SnapshotHandle::at_boundary`]), so a snapshot never holds
//! the effect of a payment whose transaction could still abort.
//!
//! In at-least-once mode a payment is in the store from the moment it is
//! scored, its offset committed up to `kafka.commit_interval_ms` later. A
//! cut that held an uncommitted payment, loaded after a crash, would make
//! its re-scoring a duplicate (no novelty features). So the writer reads,
//! after the cut, per payments partition the next offset not yet in the
//! store (the marks, [`crate::stream::Applied`]; every payment in the cut
//! is below them), and publishes the cut only once the stream group's
//! committed offsets have reached them (normally within a commit
//! interval). A cut whose marks are not committed within the snapshot
//! interval is dropped (counted `result="deferred"`); the next cut holds
//! its changes.
//!
//! # Restoring
//! [`restore`] reads the topic from its start to its end (read_committed),
//! loads every entity, and returns the last cut's offsets, from which the
//! follower replays the state log. Without a snapshot the follower falls
//! back to replaying `kafka.warmup_lookback_ms`.
//!
//! [`FeatureStore::begin_snapshot`]: crate::engine::features::FeatureStore::begin_snapshot

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::engine::features::SnapshotCut as Cut;
use crate::engine::Engine;
use crate::proto::SnapshotCut;
use crate::stream::Applied;
use crate::telemetry;

/// The key of the cut record (entity keys are 9 bytes).
pub const CUT_KEY: &[u8] = b"__cut__";

/// How long a snapshot transaction may take to commit.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Per state-log partition, the next offset the follower has not applied
/// (every record before it is in the store, or was written by this process
/// and applied when scored). Written by the follower, read by the writer.
#[derive(Debug, Default)]
pub struct Positions(Mutex<HashMap<i32, i64>>);

impl Positions {
    pub fn set(&self, partition: i32, next: i64) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(partition, next);
    }

    pub fn get(&self) -> HashMap<i32, i64> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot create the snapshot {client}: {source}")]
    Client {
        client: &'static str,
        source: KafkaError,
    },
    #[error("cannot read the snapshot topic {topic}: {source}")]
    Read { topic: String, source: KafkaError },
    #[error("cannot start the snapshot thread: {0}")]
    Thread(std::io::Error),
}

/// What [`restore`] loaded.
#[derive(Debug, Default, Clone)]
pub struct Restored {
    /// The last cut's state-log offsets (empty: no cut was found).
    pub offsets: HashMap<i32, i64>,
    pub entities: u64,
    pub tombstones: u64,
    /// Records that could not be loaded (damaged, or from a newer build).
    pub refused: u64,
    /// When the last cut was taken (ms since the epoch; 0: none).
    pub cut_ms: i64,
    /// Whether the whole topic was read (false: `limit` ran out first).
    pub complete: bool,
}

/// Loads the snapshot topic into `engine`'s feature store. Blocking; reads
/// until every partition's end (as it was when reading began) or `limit`.
pub fn restore(
    cfg: &Config,
    engine: &Engine,
    stop: &AtomicBool,
    limit: Duration,
) -> Result<Restored, SnapshotError> {
    let topic = cfg.kafka.snapshot_topic.clone();
    let started = Instant::now();
    let mut c = crate::stream::base_config(cfg);
    c.set(
        "group.id",
        format!("{}-snapshot-restore", cfg.kafka.group_id),
    )
    .set("enable.auto.commit", "false")
    .set("enable.auto.offset.store", "false")
    .set("enable.partition.eof", "true")
    .set("isolation.level", "read_committed")
    .set("fetch.max.bytes", "104857600")
    .set("max.partition.fetch.bytes", "52428800");
    let consumer: BaseConsumer = c.create().map_err(|source| SnapshotError::Client {
        client: "restore consumer",
        source,
    })?;
    let read = |source| SnapshotError::Read {
        topic: topic.clone(),
        source,
    };
    let md = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .map_err(read)?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut out = Restored::default();
    let mut pending: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        let (low, high) = consumer
            .fetch_watermarks(&topic, *p, Duration::from_secs(10))
            .map_err(read)?;
        if high > low {
            pending.insert(*p, high);
            let _ = tpl.add_partition_offset(&topic, *p, Offset::Beginning);
        }
    }
    if pending.is_empty() {
        out.complete = true;
        return Ok(out);
    }
    consumer.assign(&tpl).map_err(read)?;
    let store = engine.features();
    let mut last_cut: Option<SnapshotCut> = None;
    while !pending.is_empty() && started.elapsed() < limit && !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if pending
                    .get(&m.partition())
                    .is_some_and(|h| m.offset() + 1 >= *h)
                {
                    pending.remove(&m.partition());
                }
                let key = m.key().unwrap_or_default();
                if key == CUT_KEY {
                    match m.payload().map(SnapshotCut::decode) {
                        Some(Ok(cut)) => last_cut = Some(cut),
                        _ => out.refused += 1,
                    }
                    continue;
                }
                match store.apply_snapshot_record(key, m.payload()) {
                    Ok(()) if m.payload().is_some() => out.entities += 1,
                    Ok(()) => out.tombstones += 1,
                    Err(e) => {
                        out.refused += 1;
                        debug!(offset = m.offset(), error = %e, "snapshot record refused");
                    }
                }
            }
            // The readable end: under read_committed, the end of the last
            // committed cut while another is being written.
            Some(Err(KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            Some(Err(e)) => debug!(error = %e, "snapshot read error; retrying"),
            None => {}
        }
    }
    out.complete = pending.is_empty();
    store.finish_restore();
    if let Some(cut) = last_cut {
        out.offsets = cut.state_offsets.into_iter().collect();
        out.cut_ms = cut.cut_ms;
    }
    let secs = started.elapsed().as_secs_f64();
    metrics::gauge!(telemetry::STATE_SNAPSHOT_RESTORED).set(out.entities as f64);
    if out.refused > 0 {
        warn!(
            refused = out.refused,
            "snapshot records could not be loaded (damaged or from a newer build); their entities start empty"
        );
    }
    info!(
        entities = out.entities,
        tombstones = out.tombstones,
        cut_age_s = (crate::now_ms() - out.cut_ms).max(0) / 1000,
        complete = out.complete,
        seconds = secs,
        "snapshot loaded"
    );
    Ok(out)
}

/// The writer's shared state: its role and, in exactly-once mode, the cut
/// handed over by the stream.
struct Shared {
    stop: AtomicBool,
    /// This instance holds the payments topic's partition 0.
    role: AtomicBool,
    /// Cuts are taken by the stream between transactions.
    at_boundary: bool,
    /// A cut is due (the stream takes it at its next boundary).
    want: AtomicBool,
    taken: Mutex<Option<Taken>>,
    engine: Arc<Engine>,
    positions: Arc<Positions>,
    applied: Arc<Applied>,
}

/// A cut and what it covers.
struct Taken {
    /// State-log offsets to replay from.
    offsets: HashMap<i32, i64>,
    cut: Cut,
    /// Per payments partition, an offset past every payment in the cut.
    marks: HashMap<i32, i64>,
}

impl Shared {
    fn cut(&self) -> Taken {
        // Positions first: a record applied after reading them is in the
        // cut and replayed again (recognised), never missing.
        let offsets = self.positions.get();
        let cut = self.engine.features().begin_snapshot();
        // Marks after: a payment is noted before it is applied, and the cut
        // waited for the payments in flight, so the marks are past all of
        // the cut's (and maybe a few later ones: a longer wait, no harm).
        let marks = self.applied.all();
        Taken {
            offsets,
            cut,
            marks,
        }
    }
}

/// What the stream holds of the writer.
#[derive(Clone)]
pub struct SnapshotHandle(Arc<Shared>);

impl SnapshotHandle {
    /// Called on every rebalance: whether this instance now holds the
    /// payments topic's partition 0 (and so writes the snapshots).
    pub fn set_role(&self, writer: bool) {
        if self.0.role.swap(writer, Ordering::SeqCst) != writer {
            info!(writer, "snapshot writer role changed");
        }
    }

    /// Whether a cut is due (exactly-once: the stream then commits without
    /// overlap and calls [`SnapshotHandle::at_boundary`]).
    pub fn due(&self) -> bool {
        self.0.want.load(Ordering::Relaxed)
    }

    /// Exactly-once: called by the stream when no transaction is open.
    /// Takes the cut if one is due (one atomic load otherwise).
    pub fn at_boundary(&self) {
        if self.0.want.load(Ordering::Relaxed) && self.0.want.swap(false, Ordering::AcqRel) {
            let cut = self.0.cut();
            *self.0.taken.lock().unwrap_or_else(PoisonError::into_inner) = Some(cut);
        }
    }
}

/// The running writer; stops its thread when dropped.
pub struct SnapshotWriter {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SnapshotWriter {
    /// Starts the writer thread. `at_boundary`: the stream takes the cuts
    /// (exactly-once mode).
    pub fn spawn(
        cfg: &Config,
        engine: Arc<Engine>,
        positions: Arc<Positions>,
        applied: Arc<Applied>,
        origin: Arc<str>,
        at_boundary: bool,
    ) -> Result<SnapshotWriter, SnapshotError> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            role: AtomicBool::new(false),
            at_boundary,
            want: AtomicBool::new(false),
            taken: Mutex::new(None),
            engine,
            positions,
            applied,
        });
        let w = Writer {
            cfg: cfg.clone(),
            shared: shared.clone(),
            origin,
            producer: None,
            // At-least-once: a cut waits for the group's commits.
            committed: if at_boundary {
                None
            } else {
                super::committed_reader(cfg)
            },
        };
        let thread = std::thread::Builder::new()
            .name("state-snapshots".into())
            .spawn(move || w.run())
            .map_err(SnapshotError::Thread)?;
        Ok(SnapshotWriter {
            shared,
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> SnapshotHandle {
        SnapshotHandle(self.shared.clone())
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Writer {
    cfg: Config,
    shared: Arc<Shared>,
    origin: Arc<str>,
    producer: Option<BaseProducer>,
    /// Reads the stream group's committed offsets (at-least-once).
    committed: Option<BaseConsumer>,
}

impl Writer {
    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// Sleeps up to `d`; false when stopping.
    fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if self.stopping() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
        }
        !self.stopping()
    }

    fn run(mut self) {
        let interval = Duration::from_millis(self.cfg.kafka.snapshot_interval_ms);
        while self.sleep(interval) {
            if !self.shared.role.load(Ordering::SeqCst) {
                // Not the writer (any more): let the holder's producer
                // fence this one's, and start afresh if the role returns.
                self.producer = None;
                continue;
            }
            let Some(taken) = self.take_cut(interval) else {
                continue;
            };
            if !self.wait_committed(&taken.marks, interval.min(Duration::from_secs(30))) {
                metrics::counter!(telemetry::STATE_SNAPSHOTS, "result" => "deferred").increment(1);
                self.shared.engine.features().snapshot_not_delivered();
                debug!("snapshot cut dropped: its payments' offsets were not committed in time; the next cut holds its changes");
                continue;
            }
            let started = Instant::now();
            match self.write(taken.offsets, taken.cut) {
                Ok(n) => {
                    metrics::counter!(telemetry::STATE_SNAPSHOTS, "result" => "written")
                        .increment(1);
                    metrics::gauge!(telemetry::STATE_SNAPSHOT_DURATION)
                        .set(started.elapsed().as_secs_f64());
                    metrics::gauge!(telemetry::STATE_SNAPSHOT_LAST)
                        .set(crate::now_ms() as f64 / 1000.0);
                    debug!(
                        records = n,
                        seconds = started.elapsed().as_secs_f64(),
                        "snapshot written"
                    );
                }
                Err(e) => {
                    metrics::counter!(telemetry::STATE_SNAPSHOTS, "result" => "failed")
                        .increment(1);
                    self.shared.engine.features().snapshot_not_delivered();
                    warn!(error = %e, "snapshot not written; the next cut covers it");
                }
            }
        }
    }

    /// At-least-once: waits (up to `limit`) until the stream group's
    /// committed offsets reach `marks`, so the cut holds no payment that a
    /// crash would make the stream score again. Exactly-once cuts are taken
    /// between transactions: true at once.
    fn wait_committed(&self, marks: &HashMap<i32, i64>, limit: Duration) -> bool {
        let Some(c) = &self.committed else {
            return true;
        };
        let topic = &self.cfg.kafka.payments_topic;
        let started = Instant::now();
        loop {
            match super::group_committed(c, topic) {
                Ok(done) => {
                    let behind = marks
                        .iter()
                        .filter(|(p, m)| done.get(p).is_none_or(|c| c < m))
                        .count();
                    if behind == 0 {
                        return true;
                    }
                }
                Err(e) => debug!(error = %e, "cannot read the group's committed offsets; retrying"),
            }
            if started.elapsed() >= limit || !self.sleep(Duration::from_millis(50)) {
                return false;
            }
        }
    }

    /// The cut: taken here (at-least-once) or by the stream at its next
    /// transaction boundary (exactly-once; waits up to `limit`).
    fn take_cut(&self, limit: Duration) -> Option<Taken> {
        if !self.shared.at_boundary {
            return Some(self.shared.cut());
        }
        self.shared.want.store(true, Ordering::Release);
        let started = Instant::now();
        while started.elapsed() < limit && !self.stopping() {
            if let Some(c) = self
                .shared
                .taken
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                return Some(c);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.shared.want.store(false, Ordering::Release);
        None
    }

    fn new_producer(&self) -> Result<BaseProducer, KafkaError> {
        let id = format!("{}-snapshots", self.cfg.kafka.group_id);
        let mut c = crate::stream::base_config(&self.cfg);
        c.set("transactional.id", &id)
            .set("enable.idempotence", "true")
            .set("linger.ms", "20")
            .set("compression.type", "lz4")
            .set("transaction.timeout.ms", "300000")
            .set(
                "client.id",
                format!("fraudline-{}-snapshots", self.cfg.kafka.group_id),
            );
        let p: BaseProducer = c.create()?;
        p.init_transactions(Duration::from_secs(30))?;
        info!(transactional_id = %id, "snapshot writer ready (fences any earlier writer)");
        Ok(p)
    }

    /// Writes one cut in one transaction; returns the records written.
    fn write(&mut self, offsets: HashMap<i32, i64>, cut: Cut) -> Result<u64, KafkaError> {
        let p = match self.producer.take() {
            Some(p) => p,
            None => self.new_producer()?,
        };
        let r = self.write_with(&p, offsets, cut);
        // Kept unless fenced or broken: the next writer's producer has
        // taken over, or a new one must be initialised.
        if !matches!(&r, Err(e) if is_fatal(e)) {
            self.producer = Some(p);
        }
        r
    }

    fn write_with(
        &self,
        p: &BaseProducer,
        offsets: HashMap<i32, i64>,
        cut: Cut,
    ) -> Result<u64, KafkaError> {
        let topic = &self.cfg.kafka.snapshot_topic;
        p.begin_transaction()?;
        let mut failed: Option<KafkaError> = None;
        let mut sent = 0u64;
        let report = cut.export(self.shared.engine.features(), |key, value| {
            if failed.is_some() {
                return;
            }
            let k = key.to_bytes();
            let mut record = BaseRecord::<[u8], [u8]>::to(topic).key(&k[..]);
            if let Some(v) = value {
                record = record.payload(v);
            }
            match send(p, record) {
                Ok(()) => sent += 1,
                Err(e) => failed = Some(e),
            }
        });
        let report = match (report, failed) {
            (_, Some(e)) => {
                let _ = p.abort_transaction(COMMIT_TIMEOUT);
                return Err(e);
            }
            (Err(e), None) => {
                let _ = p.abort_transaction(COMMIT_TIMEOUT);
                warn!(error = %e, "snapshot cut replaced before it was written");
                return Err(KafkaError::Canceled);
            }
            (Ok(r), None) => r,
        };
        let record = SnapshotCut {
            state_offsets: offsets.into_iter().collect(),
            cut_ms: crate::now_ms(),
            origin: self.origin.to_string(),
            entities: (report.live + report.pre_images) as u64,
            tombstones: report.tombstones as u64,
            full: cut.is_full(),
        }
        .encode_to_vec();
        let committed = send(
            p,
            BaseRecord::<[u8], [u8]>::to(topic)
                .key(CUT_KEY)
                .payload(&record[..]),
        )
        .and_then(|()| p.commit_transaction(COMMIT_TIMEOUT));
        if let Err(e) = committed {
            let _ = p.abort_transaction(COMMIT_TIMEOUT);
            return Err(e);
        }
        metrics::counter!(telemetry::STATE_SNAPSHOT_RECORDS).increment(sent);
        Ok(sent + 1)
    }
}

fn is_fatal(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(t) => t.is_fatal() || !t.is_retriable(),
        _ => false,
    }
}

/// Enqueues one record, waiting while the producer's queue is full.
fn send(p: &BaseProducer, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<(), KafkaError> {
    loop {
        match p.send(record) {
            Ok(()) => return Ok(()),
            Err((
                KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                r,
            )) => {
                record = r;
                p.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

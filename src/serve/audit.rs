//! The audit trail of in-line verdicts: each verdict, with the event it
//! answers, goes to the verdicts topic, off the response path.
//!
//! The response never waits for Kafka. [`AuditHandle::publish`] hands the
//! record to a bounded channel (`inline.audit_buffer`); one task sends it.
//! While Kafka is slow or away, records that fail to deliver (and new ones,
//! until a probe gets through) are appended to a spill file under
//! `inline.audit_spill_dir`, bounded by `inline.audit_spill_max_bytes`, and
//! sent from there when Kafka is back. Records past the bounds are dropped
//! and counted (`fraudline_audit_dropped_records_total`); the backlog
//! (accepted, not yet acknowledged) is `fraudline_audit_backlog_records`.
//!
//! Records on the verdicts topic: key = payer account, value = the
//! fraudline.v1.Verdict (as the stream writes it), headers `content-type`,
//! `fraudline.decision`, `fraudline.source = inline` and `fraudline.event`
//! (the fraudline.v1.PaymentEvent, protobuf). Delivery is at least once: a
//! record in flight when a probe fails may be sent twice; what sits in the
//! spill file survives a restart, what sits in memory at a crash does not.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use prost::Message as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::sync::{mpsc, oneshot};

use crate::engine::Decision;
use crate::telemetry::AuditMetrics;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("inline.audit_spill_dir: cannot use {path:?}: {source}")]
    Spill {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the audit thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot create the audit producer: {0}")]
    Producer(rdkafka::error::KafkaError),
}

/// One audit record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub key: Vec<u8>,
    pub verdict: Vec<u8>,
    pub event: Vec<u8>,
    pub decision: Decision,
    /// The payment was scored (its features moved): it also goes to the
    /// state log, when one is configured. False for the overload policy's
    /// answers, which moved nothing.
    pub scored: bool,
}

/// Spill frames carry `scored` in the decision byte's top bit (frames of
/// earlier builds have it clear).
const SCORED_BIT: u8 = 0x80;

impl AuditRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        let body = 4 + self.key.len() + 4 + self.verdict.len() + 4 + self.event.len() + 1;
        out.extend_from_slice(&(body as u32).to_le_bytes());
        for part in [&self.key, &self.verdict, &self.event] {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        }
        out.push(self.decision as u8 | if self.scored { SCORED_BIT } else { 0 });
    }

    /// Decodes one frame body (after its length).
    fn decode(mut b: &[u8]) -> Option<AuditRecord> {
        let mut part = || -> Option<Vec<u8>> {
            let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
            let p = b.get(4..4 + n)?.to_vec();
            b = &b[4 + n..];
            Some(p)
        };
        let key = part()?;
        let verdict = part()?;
        let event = part()?;
        let byte = *b.first()?;
        let decision = match byte & !SCORED_BIT {
            0 => Decision::Allow,
            1 => Decision::Review,
            _ => Decision::Hold,
        };
        Some(AuditRecord {
            key,
            verdict,
            event,
            decision,
            scored: byte & SCORED_BIT != 0,
        })
    }
}

/// The spill file: length-prefixed frames, written at the end of the last
/// whole frame (`len`) and read from a cursor; emptied when everything has
/// been read back.
struct Spill {
    path: PathBuf,
    file: File,
    read_at: u64,
    len: u64,
    records: usize,
    max_bytes: u64,
}

impl Spill {
    fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Spill> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("audit.spill");
        // Not append mode: a frame is written at `len`, not at the file's
        // end (see `push`).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let len = file.metadata()?.len();
        let mut s = Spill {
            path,
            file,
            read_at: 0,
            len,
            records: 0,
            max_bytes,
        };
        s.records = s.count()?;
        Ok(s)
    }

    /// Counts whole frames left by an earlier run (a torn last frame is cut).
    fn count(&mut self) -> std::io::Result<usize> {
        let mut n = 0;
        let mut at = 0u64;
        let mut len_buf = [0u8; 4];
        loop {
            self.file.seek(SeekFrom::Start(at))?;
            if self.file.read_exact(&mut len_buf).is_err() {
                break;
            }
            let body = u32::from_le_bytes(len_buf) as u64;
            if at + 4 + body > self.len {
                break;
            }
            at += 4 + body;
            n += 1;
        }
        if at < self.len {
            self.file.set_len(at)?;
            self.len = at;
        }
        Ok(n)
    }

    fn pending(&self) -> usize {
        self.records
    }

    /// Appends a record; false when the bound is hit (the record is dropped).
    fn push(&mut self, r: &AuditRecord) -> std::io::Result<bool> {
        let mut buf = Vec::with_capacity(64 + r.verdict.len() + r.event.len());
        r.encode(&mut buf);
        if (self.len - self.read_at) + buf.len() as u64 > self.max_bytes {
            return Ok(false);
        }
        // A write the disk cuts short (ENOSPC) leaves part of a frame past
        // `len`. It is cut off at once, and the next frame is written at
        // `len` anyway: appended after the torn bytes (once space is freed),
        // frames would be read back misaligned, and records lost uncounted.
        let written = self
            .file
            .seek(SeekFrom::Start(self.len))
            .and_then(|_| self.file.write_all(&buf));
        if let Err(e) = written {
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += buf.len() as u64;
        self.records += 1;
        Ok(true)
    }

    /// Reads back up to `n` records, oldest first.
    fn take(&mut self, n: usize) -> std::io::Result<Vec<AuditRecord>> {
        let mut out = Vec::new();
        let mut len_buf = [0u8; 4];
        while out.len() < n && self.read_at < self.len {
            self.file.seek(SeekFrom::Start(self.read_at))?;
            self.file.read_exact(&mut len_buf)?;
            let body = u32::from_le_bytes(len_buf) as usize;
            let mut b = vec![0u8; body];
            self.file.read_exact(&mut b)?;
            self.read_at += 4 + body as u64;
            self.records = self.records.saturating_sub(1);
            if let Some(r) = AuditRecord::decode(&b) {
                out.push(r);
            }
        }
        if self.read_at >= self.len {
            self.file.set_len(0)?;
            self.read_at = 0;
            self.len = 0;
            self.records = 0;
        }
        Ok(out)
    }
}

/// The sending side, cloned into every request handler.
#[derive(Clone)]
pub struct AuditHandle {
    tx: mpsc::Sender<AuditRecord>,
    metrics: AuditMetrics,
}

impl AuditHandle {
    /// Never waits: a full in-memory buffer drops the record (counted).
    pub fn publish(&self, r: AuditRecord) {
        match self.tx.try_send(r) {
            Ok(()) => self.metrics.backlog.increment(1.0),
            Err(_) => self.metrics.dropped.increment(1),
        }
    }
}

/// The running audit task; [`AuditTask::close`] sends what it can and stops.
/// It runs on a thread of its own (a one-thread runtime): its spill file is
/// plain blocking file I/O, which must not hold an async worker the in-line
/// API answers on.
pub struct AuditTask {
    stop: oneshot::Sender<Duration>,
    done: oneshot::Receiver<()>,
}

impl AuditTask {
    /// Stops taking records, gives in-flight ones up to `grace` to be
    /// acknowledged, and spills whatever is left for the next start.
    pub async fn close(self, grace: Duration) {
        let _ = self.stop.send(grace);
        let _ = self.done.await;
    }
}

/// Starts the audit task. `client` carries the brokers and pass-through
/// settings; `topic` is the verdicts topic.
pub fn spawn(
    mut client: ClientConfig,
    topic: Option<String>,
    state: Option<StateSink>,
    buffer: usize,
    spill_dir: &Path,
    spill_max_bytes: u64,
) -> Result<(AuditHandle, AuditTask), AuditError> {
    let spill = Spill::open(spill_dir, spill_max_bytes).map_err(|source| AuditError::Spill {
        path: spill_dir.to_path_buf(),
        source,
    })?;
    client
        // Not idempotent: a message timeout would be fatal to an idempotent
        // producer's sequence, and the spill file re-sends anyway (at least once).
        .set("enable.idempotence", "false")
        .set("acks", "all")
        .set("linger.ms", "5")
        // Deliveries fail fast when the broker is away, so records move to
        // the spill file instead of piling up in librdkafka's queue.
        .set("message.timeout.ms", "5000");
    let producer: FutureProducer = client.create().map_err(AuditError::Producer)?;
    let metrics = AuditMetrics::new();
    metrics.backlog.increment(spill.pending() as f64);
    let (tx, rx) = mpsc::channel(buffer.max(1));
    let (stop_tx, stop_rx) = oneshot::channel();
    let sender = Sender {
        producer,
        topic,
        state,
        spill,
        metrics: metrics.clone(),
        max_in_flight: buffer.max(1),
    };
    let (done_tx, done_rx) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AuditError::Thread)?;
    std::thread::Builder::new()
        .name("inline-audit".into())
        .spawn(move || {
            runtime.block_on(sender.run(rx, stop_rx));
            let _ = done_tx.send(());
        })
        .map_err(AuditError::Thread)?;
    Ok((
        AuditHandle { tx, metrics },
        AuditTask {
            stop: stop_tx,
            done: done_rx,
        },
    ))
}

/// Where scored in-line payments go besides the audit trail: the state log
/// (docs/STATE.md), so other instances and restarts see them and a retry
/// on another instance gets the first verdict.
#[derive(Debug, Clone)]
pub struct StateSink {
    pub topic: String,
    pub origin: std::sync::Arc<str>,
}

struct Sender {
    producer: FutureProducer,
    /// The verdicts topic (audit records), when `inline.audit` is on.
    topic: Option<String>,
    state: Option<StateSink>,
    spill: Spill,
    metrics: AuditMetrics,
    max_in_flight: usize,
}

type Delivery = std::pin::Pin<Box<dyn std::future::Future<Output = (AuditRecord, bool)> + Send>>;

impl Sender {
    /// Enqueues the audit record and, for a scored payment, its state
    /// record; the delivery is good when both are acknowledged (a failure
    /// spills the record and re-sends both: at least once, and a duplicate
    /// state record is a duplicate event_id, which features ignore).
    fn send(&self, r: AuditRecord) -> Result<Delivery, AuditRecord> {
        let audit = match &self.topic {
            Some(topic) => {
                let headers = OwnedHeaders::new_with_capacity(4)
                    .insert(Header {
                        key: crate::stream::HDR_CONTENT_TYPE,
                        value: Some("application/x-protobuf"),
                    })
                    .insert(Header {
                        key: "fraudline.decision",
                        value: Some(r.decision.as_str()),
                    })
                    .insert(Header {
                        key: "fraudline.source",
                        value: Some("inline"),
                    })
                    .insert(Header {
                        key: "fraudline.event",
                        value: Some(&r.event),
                    });
                let rec = FutureRecord::to(topic)
                    .key(&r.key)
                    .payload(&r.verdict)
                    .headers(headers);
                match self.producer.send_result(rec) {
                    Ok(d) => Some(d),
                    Err(_) => return Err(r),
                }
            }
            None => None,
        };
        let state = match (&self.state, r.scored) {
            (Some(sink), true) => {
                let value = crate::proto::StateRecord {
                    payment: r.event.clone(),
                    origin: sink.origin.to_string(),
                    verdict: crate::proto::Verdict::decode(r.verdict.as_slice()).ok(),
                    source_partition: -1,
                    source_offset: -1,
                }
                .encode_to_vec();
                let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
                    key: crate::state::HDR_ORIGIN,
                    value: Some(sink.origin.as_bytes()),
                });
                let rec = FutureRecord::to(&sink.topic)
                    .key(&r.key)
                    .payload(&value)
                    .headers(headers);
                match self.producer.send_result(rec) {
                    Ok(d) => Some(d),
                    Err(_) => return Err(r),
                }
            }
            _ => None,
        };
        Ok(Box::pin(async move {
            let mut ok = true;
            if let Some(d) = audit {
                ok &= matches!(d.await, Ok(Ok(_)));
            }
            if let Some(d) = state {
                ok &= matches!(d.await, Ok(Ok(_)));
            }
            (r, ok)
        }))
    }

    fn spill(&mut self, r: &AuditRecord) {
        match self.spill.push(r) {
            Ok(true) => self.metrics.spilled.increment(1),
            Ok(false) => self.drop_one(),
            Err(e) => {
                tracing::warn!(error = %e, path = %self.spill.path.display(), "cannot write the audit spill file");
                self.drop_one();
            }
        }
    }

    fn drop_one(&self) {
        self.metrics.dropped.increment(1);
        self.metrics.backlog.decrement(1.0);
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<AuditRecord>,
        mut stop: oneshot::Receiver<Duration>,
    ) {
        let mut in_flight: FuturesUnordered<Delivery> = FuturesUnordered::new();
        // Whether the last delivery got through; while not, new records go
        // to the spill file and one probe at a time tests the broker.
        let mut healthy = true;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let grace = loop {
            tokio::select! {
                biased;
                g = &mut stop => break g.unwrap_or(Duration::from_secs(5)),
                Some((r, ok)) = in_flight.next(), if !in_flight.is_empty() => {
                    if ok {
                        if !healthy {
                            tracing::info!(spilled = self.spill.pending(), "audit: Kafka is back; sending the spilled records");
                        }
                        healthy = true;
                        self.metrics.sent.increment(1);
                        self.metrics.backlog.decrement(1.0);
                    } else {
                        if healthy {
                            tracing::warn!("audit: verdict delivery failed; spilling audit records until Kafka answers");
                        }
                        healthy = false;
                        self.spill(&r);
                    }
                }
                r = rx.recv() => match r {
                    Some(r) if healthy && in_flight.len() < self.max_in_flight && self.spill.pending() == 0 => {
                        match self.send(r) {
                            Ok(d) => in_flight.push(d),
                            Err(r) => self.spill(&r),
                        }
                    }
                    Some(r) => self.spill(&r),
                    None => break Duration::from_secs(5),
                },
                _ = tick.tick() => {
                    let room = if healthy {
                        self.max_in_flight.saturating_sub(in_flight.len()).min(1000)
                    } else if in_flight.is_empty() {
                        1 // a probe
                    } else {
                        0
                    };
                    if room > 0 && self.spill.pending() > 0 {
                        match self.spill.take(room) {
                            Ok(batch) => {
                                for r in batch {
                                    match self.send(r) {
                                        Ok(d) => in_flight.push(d),
                                        Err(r) => self.spill(&r),
                                    }
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot read the audit spill file"),
                        }
                    }
                }
            }
        };
        // Shutdown: take what is queued, give deliveries `grace`, spill the rest.
        rx.close();
        while let Ok(r) = rx.try_recv() {
            if healthy && self.spill.pending() == 0 {
                match self.send(r) {
                    Ok(d) => in_flight.push(d),
                    Err(r) => self.spill(&r),
                }
            } else {
                self.spill(&r);
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            match tokio::time::timeout_at(deadline, in_flight.next()).await {
                Ok(Some((r, ok))) => {
                    if ok {
                        self.metrics.sent.increment(1);
                        self.metrics.backlog.decrement(1.0);
                    } else {
                        self.spill(&r);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        in_flight = in_flight.len(),
                        "audit: records still unacknowledged at shutdown (they may be sent twice after a restart)"
                    );
                    break;
                }
            }
        }
        if self.spill.pending() > 0 {
            tracing::warn!(
                records = self.spill.pending(),
                path = %self.spill.path.display(),
                "audit records left in the spill file; they are sent at the next start"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u8) -> AuditRecord {
        AuditRecord {
            key: vec![b'k', i],
            verdict: vec![i; 10],
            event: vec![i; 20],
            decision: Decision::Review,
            // Both values of the flag go through the spill file.
            scored: i % 2 == 0,
        }
    }

    #[test]
    fn spill_round_trip_bound_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spill::open(dir.path(), 1_000).unwrap();
        for i in 0..5 {
            assert!(s.push(&rec(i)).unwrap());
        }
        assert_eq!(s.pending(), 5);
        assert_eq!(s.take(2).unwrap(), vec![rec(0), rec(1)]);
        drop(s);
        // A restart finds what was not read back (and re-reads from the start:
        // at least once).
        let mut s = Spill::open(dir.path(), 1_000).unwrap();
        assert_eq!(s.pending(), 5);
        let all = s.take(100).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all[4], rec(4));
        assert_eq!(s.pending(), 0);
        // The bound: frames of 4 + 6 + 14 + 24 + 1 = 49 bytes; 1000 bytes hold 20.
        let mut stored = 0;
        for i in 0..40 {
            if s.push(&rec(i)).unwrap() {
                stored += 1;
            }
        }
        assert_eq!(stored, 1_000 / 49);
    }

    /// The chaos suite's spill-full case (docs/CHAOS.md): a full disk cut a
    /// frame short; once space was freed, the next frames went after the
    /// torn bytes and were read back misaligned (records lost, uncounted).
    #[test]
    fn frames_after_a_write_cut_short_are_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spill::open(dir.path(), 10_000).unwrap();
        assert!(s.push(&rec(1)).unwrap());
        // What a write cut short by ENOSPC leaves: the start of a frame.
        let mut torn = Vec::new();
        rec(9).encode(&mut torn);
        OpenOptions::new()
            .append(true)
            .open(dir.path().join("audit.spill"))
            .unwrap()
            .write_all(&torn[..torn.len() / 2])
            .unwrap();
        assert!(s.push(&rec(2)).unwrap());
        assert!(s.push(&rec(3)).unwrap());
        assert_eq!(s.take(10).unwrap(), vec![rec(1), rec(2), rec(3)]);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn a_torn_last_frame_is_cut_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spill::open(dir.path(), 1_000).unwrap();
        s.push(&rec(1)).unwrap();
        s.push(&rec(2)).unwrap();
        drop(s);
        let path = dir.path().join("audit.spill");
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 3).unwrap();
        let mut s = Spill::open(dir.path(), 1_000).unwrap();
        assert_eq!(s.pending(), 1);
        assert_eq!(s.take(10).unwrap(), vec![rec(1)]);
    }
}

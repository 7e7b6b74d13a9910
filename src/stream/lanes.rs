//! Scoring lanes: decode, score and encode run on worker threads, one lane
//! each, so that every core scores while the consumer task only reads,
//! sends and tracks acknowledgements.
//!
//! - **Order.** A partition always goes to the same lane (`partition %
//!   lanes`) and a lane works through its batches in order, so each
//!   partition's records, and so each payer's payments (keyed by payer), are
//!   scored in log order, and their outcomes come back in that order.
//! - **No allocation per record** on the way in: the consumer task copies a
//!   record's key and value into its lane's batch arena; batches come back
//!   with their outcomes and go round again (a batch's arena keeps its
//!   capacity, up to [`KEEP_ARENA`]).
//! - **Threads, not tasks**: scoring is CPU work of a few µs per record; on
//!   tokio's workers it would hold up the timers and I/O of the in-line API.
//! - A lane that panics poisons its batch; the delivery loop stops the
//!   stream with [`super::StreamError::Lane`] (the process restarts and the
//!   records are read again), as a panic on the consumer task did.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::Arc;

use super::record::{process, Outcome, ProcessOptions, RecordIn};
use crate::engine::Engine;
use crate::event::{Decoder, Format};
use crate::telemetry::Metrics;

/// A lane batch is sent once it holds this many records (a gather round
/// sends whatever it has anyway).
const BATCH_RECORDS: usize = 256;
/// ... or this many bytes.
const BATCH_BYTES: usize = 1 << 20;
/// A returned batch whose arena grew past this (a few very large records)
/// gives the memory back.
const KEEP_ARENA: usize = 4 << 20;

/// One record in a batch: where its bytes are in the arena and, once the
/// lane has scored it, its outcome.
struct Item {
    partition: i32,
    offset: i64,
    key: Option<(u32, u32)>,
    payload: (u32, u32),
    format: Option<Format>,
    outcome: Option<Outcome>,
}

/// Records for one lane, and back with their outcomes.
pub(crate) struct Batch {
    arena: Vec<u8>,
    items: Vec<Item>,
    /// The lane panicked on this batch.
    poisoned: bool,
}

/// One scored record of a returned batch.
pub(crate) struct Scored<'b> {
    pub partition: i32,
    pub offset: i64,
    pub outcome: Outcome,
    /// The record's value (a state-log entry may be these bytes).
    pub input: &'b [u8],
}

impl Batch {
    fn new() -> Batch {
        Batch {
            arena: Vec::new(),
            items: Vec::with_capacity(BATCH_RECORDS),
            poisoned: false,
        }
    }

    fn push(&mut self, rec: &RecordIn<'_>) {
        let mut put = |bytes: &[u8]| {
            let start = self.arena.len();
            self.arena.extend_from_slice(bytes);
            // Records are bounded far below 4 GiB (limits.max_message_bytes).
            (start as u32, self.arena.len() as u32)
        };
        let key = rec.key.map(&mut put);
        let payload = put(rec.payload);
        self.items.push(Item {
            partition: rec.partition,
            offset: rec.offset,
            key,
            payload,
            format: rec.format,
            outcome: None,
        });
    }

    fn full(&self) -> bool {
        self.items.len() >= BATCH_RECORDS || self.arena.len() >= BATCH_BYTES
    }

    fn bytes(&self, (start, end): (u32, u32)) -> &[u8] {
        &self.arena[start as usize..end as usize]
    }

    /// Whether the lane panicked on this batch.
    pub(crate) fn poisoned(&self) -> bool {
        self.poisoned
    }

    /// Records in the batch.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// The `i`th record's outcome, taken (`None` if already taken or not
    /// scored), with its coordinates and value.
    pub(crate) fn take(&mut self, i: usize) -> Option<Scored<'_>> {
        let item = self.items.get_mut(i)?;
        let outcome = item.outcome.take()?;
        let (partition, offset, payload) = (item.partition, item.offset, item.payload);
        Some(Scored {
            partition,
            offset,
            outcome,
            input: self.bytes(payload),
        })
    }

    fn clear(&mut self) {
        self.items.clear();
        self.arena.clear();
        if self.arena.capacity() > KEEP_ARENA {
            self.arena = Vec::new();
        }
        self.poisoned = false;
    }

    /// Scores every record, in order.
    fn score(
        &mut self,
        topic: &str,
        engine: &Engine,
        opts: &ProcessOptions,
        metrics: &Metrics,
        log_state: bool,
        decoder: &mut Decoder,
    ) {
        let Batch { arena, items, .. } = self;
        for it in items.iter_mut() {
            let rec = RecordIn {
                topic,
                partition: it.partition,
                offset: it.offset,
                key: it.key.map(|(s, e)| &arena[s as usize..e as usize]),
                payload: &arena[it.payload.0 as usize..it.payload.1 as usize],
                format: it.format,
            };
            it.outcome = Some(process(&rec, engine, opts, metrics, log_state, decoder));
        }
    }
}

/// What every lane scores with.
#[derive(Clone)]
pub(crate) struct LaneParts {
    pub engine: Arc<Engine>,
    pub opts: ProcessOptions,
    pub metrics: Metrics,
    pub topic: Arc<str>,
    /// The state log is on: outcomes say what their state-log entry is.
    pub log_state: bool,
}

/// The lanes of one delivery loop; see the module docs. Dropping it ends
/// the threads once they finish the batch in hand.
pub(crate) struct Lanes {
    to: Vec<mpsc::Sender<Batch>>,
    from: tokio::sync::mpsc::UnboundedReceiver<Batch>,
    filling: Vec<Option<Batch>>,
    spare: Vec<Batch>,
    /// Records handed to lanes (sent or filling) and not yet returned.
    outstanding: usize,
    /// Batches sent and not yet returned.
    batches_out: usize,
}

impl Lanes {
    /// Starts `threads` lanes (0: one per core).
    pub(crate) fn start(threads: usize, parts: &LaneParts) -> std::io::Result<Lanes> {
        let n = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let (back, from) = tokio::sync::mpsc::unbounded_channel();
        let mut to = Vec::with_capacity(n);
        for lane in 0..n {
            let (tx, rx) = mpsc::channel::<Batch>();
            let back = back.clone();
            let p = parts.clone();
            std::thread::Builder::new()
                .name(format!("fraudline-lane-{lane}"))
                .spawn(move || {
                    // The lane's decoding buffers, kept from batch to batch.
                    let mut decoder = Decoder::default();
                    while let Ok(mut b) = rx.recv() {
                        let scored = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            b.score(
                                &p.topic,
                                &p.engine,
                                &p.opts,
                                &p.metrics,
                                p.log_state,
                                &mut decoder,
                            )
                        }));
                        if scored.is_err() {
                            tracing::error!(lane, "a scoring lane panicked; stopping the stream");
                            b.poisoned = true;
                        }
                        if back.send(b).is_err() {
                            return;
                        }
                    }
                })?;
            to.push(tx);
        }
        Ok(Lanes {
            to,
            from,
            filling: (0..n).map(|_| None).collect(),
            spare: Vec::new(),
            outstanding: 0,
            batches_out: 0,
        })
    }

    /// Records handed to lanes and not yet returned.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Whether a sent batch is still to come back.
    pub(crate) fn busy(&self) -> bool {
        self.batches_out > 0
    }

    /// Copies `rec` into its lane's batch (sent once full, or at [`Lanes::flush`]).
    pub(crate) fn push(&mut self, rec: &RecordIn<'_>) {
        let lane = rec.partition.unsigned_abs() as usize % self.to.len();
        let b =
            self.filling[lane].get_or_insert_with(|| self.spare.pop().unwrap_or_else(Batch::new));
        b.push(rec);
        self.outstanding += 1;
        if b.full() {
            self.send(lane);
        }
    }

    /// Sends every batch being filled.
    pub(crate) fn flush(&mut self) {
        for lane in 0..self.to.len() {
            self.send(lane);
        }
    }

    fn send(&mut self, lane: usize) {
        if let Some(b) = self.filling[lane].take() {
            if b.items.is_empty() {
                self.spare.push(b);
                return;
            }
            match self.to[lane].send(b) {
                Ok(()) => self.batches_out += 1,
                Err(mpsc::SendError(mut b)) => {
                    // The lane thread is gone (it only ends when this
                    // struct drops): come back poisoned.
                    b.poisoned = true;
                    self.outstanding -= b.items.len();
                    self.spare.push(b);
                }
            }
        }
    }

    /// The next scored batch (wait only while [`Lanes::busy`]). Hand it
    /// back with [`Lanes::recycle`] once its outcomes are taken.
    pub(crate) async fn next(&mut self) -> Option<Batch> {
        let b = self.from.recv().await?;
        self.batches_out -= 1;
        self.outstanding -= b.items.len();
        Some(b)
    }

    /// Returns an emptied batch to the pool.
    pub(crate) fn recycle(&mut self, mut b: Batch) {
        b.clear();
        self.spare.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> LaneParts {
        let engine = Engine::new(crate::engine::EngineConfig::default());
        LaneParts {
            engine: Arc::new(engine),
            opts: ProcessOptions {
                limits: crate::event::Limits::default(),
                explain: false,
                dlq_max_payload_bytes: 1024,
            },
            metrics: Metrics::new(),
            topic: Arc::from("payments"),
            log_state: false,
        }
    }

    fn payments(n: usize) -> Vec<Vec<u8>> {
        crate::tools::gen::Generator::new(crate::tools::gen::GenConfig {
            seed: 7,
            accounts: 200,
            fraud_rate: 0.01,
            start_ms: 1_795_500_000_000,
            events_per_sec: 50.0,
        })
        .take(n)
        .map(|(p, _)| p.to_protobuf())
        .collect()
    }

    /// Every record comes back once, each partition's in offset order, with
    /// a verdict for a payment and a dead letter for garbage.
    #[tokio::test]
    async fn every_record_comes_back_once_in_partition_order() {
        let mut lanes = Lanes::start(3, &parts()).expect("lanes");
        let values = payments(5000);
        let mut sent = 0;
        for offset in 0..1000i64 {
            for partition in 0..5 {
                let value = if offset % 97 == 13 {
                    b"\xff\xffgarbage".to_vec()
                } else {
                    values[(offset * 5 + i64::from(partition)) as usize].clone()
                };
                lanes.push(&RecordIn {
                    topic: "payments",
                    partition,
                    offset,
                    key: Some(b"k"),
                    payload: &value,
                    format: None,
                });
                sent += 1;
            }
            if offset % 10 == 0 {
                lanes.flush();
            }
        }
        lanes.flush();
        assert_eq!(lanes.outstanding(), sent);
        let mut next_offset = [0i64; 5];
        let (mut verdicts, mut dead) = (0, 0);
        while lanes.busy() {
            let mut b = lanes.next().await.expect("batch");
            assert!(!b.poisoned());
            for i in 0..b.len() {
                let s = b.take(i).expect("scored");
                let p = s.partition as usize;
                assert_eq!(s.offset, next_offset[p], "partition {p} out of order");
                next_offset[p] += 1;
                match s.outcome {
                    Outcome::Verdict { .. } => verdicts += 1,
                    Outcome::Dead { .. } => dead += 1,
                }
            }
            lanes.recycle(b);
        }
        assert_eq!(lanes.outstanding(), 0);
        assert_eq!(next_offset, [1000; 5]);
        assert_eq!(dead, 5 * (0..1000).filter(|o| o % 97 == 13).count());
        assert_eq!(verdicts + dead, sent);
    }
}

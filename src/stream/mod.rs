//! Kafka in and out, nothing else: consume payments, hand each to the
//! [`Engine`], produce the verdict (or a dead-letter record), and commit
//! offsets only for what the broker has acknowledged.
//!
//! The shape (vector's): [`source`] (the consumer, its assignment and the
//! restore a new partition waits for), [`record`] (decode, score, encode:
//! the one scoring path, shared with the in-line API through the engine),
//! [`sink`] (the producer, its record limit, the state-log enqueue), and a
//! delivery policy that drives them. The client settings are written once
//! (`base_config`, [`consumer_config`], [`producer_config`]).
//!
//! Two delivery modes (config `kafka.delivery`):
//! - [`at_least_once`]: idempotent producer; a partition's offset is stored
//!   for commit only once every record before it is acknowledged
//!   ([`tracker::OffsetTracker`]). A crash repeats verdicts, never loses one.
//! - [`exactly_once`]: Kafka transactions; verdicts, DLQ records and the
//!   consumed offsets commit atomically every `commit_interval_ms`.

pub mod at_least_once;
mod context;
pub mod exactly_once;
pub mod lag;
mod lanes;
pub mod record;
pub mod sink;
pub mod source;
mod state_log;
pub mod tracker;
pub mod warmup;

use std::future::Future;
use std::sync::Arc;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;

use crate::config::{Config, Delivery};
use crate::engine::Engine;
use crate::telemetry::Metrics;
pub use context::StreamContext;
pub use record::{Outcome, ProcessOptions, HDR_CONTENT_TYPE};
use sink::options_for;
pub use sink::{output_record_limit, producer_config};
pub use source::consumer_config;
use source::{handoff, subscribe};

/// Errors that stop the stream. Anything per-record is a DLQ record instead.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot create the Kafka {client}: {source}")]
    Client {
        client: &'static str,
        source: KafkaError,
    },
    #[error("cannot subscribe to {topic}: {source}")]
    Subscribe { topic: String, source: KafkaError },
    #[error("Kafka transaction {step} failed: {source}")]
    Transaction {
        step: &'static str,
        source: KafkaError,
    },
    #[error("the producer hit a fatal error and must be recreated: {0}")]
    FatalProducer(String),
    #[error("offset commit failed: {0}")]
    Commit(KafkaError),
    #[error("cannot start the scoring lanes: {0}")]
    LaneStart(std::io::Error),
    #[error("a scoring lane panicked (see the log line before this); the stream stops so that the process restarts and reads those records again")]
    Lane,
    #[error("the output topics take records of at most {limit} bytes, but a dead letter needs up to {needed} (limits.max_key_bytes plus envelope): raise the topics' max.message.bytes or lower limits.max_key_bytes")]
    RecordLimit { limit: usize, needed: usize },
}

impl StreamError {
    /// Whether restarting the process could help (always true for Kafka
    /// errors; false for configuration mistakes).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            StreamError::Client { .. } | StreamError::RecordLimit { .. }
        )
    }
}

/// Shared pieces both delivery loops need.
pub struct StreamParts {
    pub engine: Arc<Engine>,
    pub metrics: Metrics,
    pub ready: Arc<crate::serve::ready::Readiness>,
    pub applied: Arc<Applied>,
    /// The state log, when `kafka.state_topic` is set.
    pub state: Option<StateLink>,
}

/// What the stream needs of the state layer: its origin id (stamped on the
/// state records it writes) and the follower (to wait for the log's end
/// before scoring a newly assigned partition).
#[derive(Clone)]
pub struct StateLink {
    pub origin: Arc<str>,
    pub follower: crate::state::FollowerHandle,
    /// The snapshot writer: told on every rebalance whether this instance
    /// holds partition 0 (the writer role); in exactly-once mode it takes
    /// its cuts between two transactions.
    pub snapshots: Option<crate::state::SnapshotHandle>,
}

/// Per partition, the next offset whose event this process has not yet put
/// into feature state (scored live or replayed by a warm-up). A warm-up
/// starts no earlier than this, so a partition that comes back to the same
/// instance after a rebalance is not counted twice: only what another
/// instance processed meanwhile is replayed. With the state log, the
/// follower notes the payments it applies too, and the snapshot writer
/// publishes a cut only once the group's commits reach these marks.
#[derive(Debug, Default)]
pub struct Applied {
    next: dashmap::DashMap<i32, i64, ahash::RandomState>,
}

impl Applied {
    /// Records that the event at `offset` of `partition` is in the state.
    #[inline]
    pub fn note(&self, partition: i32, offset: i64) {
        match self.next.get_mut(&partition) {
            Some(mut n) => *n = (*n).max(offset + 1),
            None => {
                self.next.insert(partition, offset + 1);
            }
        }
    }

    /// The first offset of `partition` not yet in the state, if any was.
    pub fn next(&self, partition: i32) -> Option<i64> {
        self.next.get(&partition).map(|n| *n)
    }

    /// Every partition's first offset not yet in the state.
    pub fn all(&self) -> std::collections::HashMap<i32, i64> {
        self.next.iter().map(|e| (*e.key(), *e.value())).collect()
    }
}

/// Runs the stream until `shutdown` resolves, then drains: every record in
/// flight is acknowledged (or its transaction committed) and its offset
/// committed before this returns.
pub async fn run(
    cfg: &Config,
    parts: StreamParts,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StreamError> {
    let result = match cfg.kafka.delivery {
        Delivery::AtLeastOnce => at_least_once::run(cfg, &parts, shutdown).await,
        Delivery::ExactlyOnce => exactly_once::run(cfg, &parts, shutdown).await,
    };
    parts.ready.set_stream(false);
    result
}

/// The consumer, shared with the warm-up task (which resumes partitions).
type SharedConsumer = Arc<StreamConsumer<StreamContext>>;

/// Aborts the warm-up and lag tasks when the delivery loop returns, so their
/// handles on the consumer go with them and the group is left at once.
struct WarmupGuard(Vec<tokio::task::JoinHandle<()>>);

impl Drop for WarmupGuard {
    fn drop(&mut self) {
        for task in self.0.drain(..) {
            task.abort();
        }
    }
}

/// The stream's clients and the options they run with.
struct Clients {
    consumer: SharedConsumer,
    producer: FutureProducer<StreamContext>,
    tasks: WarmupGuard,
    opts: ProcessOptions,
    /// The state-log batches, when the state log is on.
    batches: Option<state_log::StateBatches>,
}

/// Creates the consumer and the producer; a bad pass-through setting is
/// refused here with librdkafka's message naming the property. With warm-up
/// on, also starts the warm-up task (stopped when the guard drops).
async fn clients(cfg: &Config, parts: &StreamParts) -> Result<Clients, StreamError> {
    let limit = output_record_limit(cfg).await;
    let opts = options_for(cfg, limit)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    // With the state log, state comes from the log (every instance holds it
    // all): a new partition waits for the follower, not for a replay.
    let warm = cfg.kafka.warmup_lookback_ms > 0 && parts.state.is_none();
    let ctx = StreamContext {
        assigned: (warm || parts.state.is_some()).then_some(tx),
        snapshots: parts.state.as_ref().and_then(|s| s.snapshots.clone()),
        ..StreamContext::default()
    };
    let consumer: SharedConsumer = consumer_config(cfg)
        .create_with_context(ctx)
        .map(Arc::new)
        .map_err(|source| StreamError::Client {
            client: "consumer",
            source,
        })?;
    let producer = producer_config(cfg)
        .set("message.max.bytes", limit.to_string())
        .create_with_context(StreamContext::default())
        .map_err(|source| StreamError::Client {
            client: "producer",
            source,
        })?;
    let warmup = if let Some(state) = &parts.state {
        Some(tokio::spawn(handoff(
            cfg.clone(),
            state.follower.clone(),
            consumer.clone(),
            rx,
            parts.ready.clone(),
        )))
    } else {
        warm.then(|| {
            tokio::spawn(warmup::run(
                cfg.clone(),
                parts.engine.clone(),
                parts.applied.clone(),
                consumer.clone(),
                rx,
                parts.ready.clone(),
            ))
        })
    };
    // The health probe always runs; it publishes the lag table only when
    // statistics are on.
    let publish = cfg.kafka.statistics_interval_ms > 0;
    let every = if publish {
        cfg.kafka.statistics_interval_ms
    } else {
        5_000
    };
    let lag = Some(lag::spawn(
        consumer.clone(),
        cfg.kafka.payments_topic.clone(),
        std::time::Duration::from_millis(every),
        publish,
        parts.ready.clone(),
        std::time::Duration::from_millis(cfg.kafka.stall_grace_ms),
        cfg.kafka.auto_offset_reset == "earliest",
    ));
    let batches = match &parts.state {
        Some(s) => {
            let n = crate::state::partitions_of(cfg, &cfg.kafka.state_topic)
                .await
                .ok()
                .flatten();
            Some(state_log::StateBatches::new(
                cfg,
                s.origin.clone(),
                n.and_then(|n| i32::try_from(n).ok()),
                limit,
            ))
        }
        None => None,
    };
    Ok(Clients {
        consumer,
        producer,
        tasks: WarmupGuard(warmup.into_iter().chain(lag).collect()),
        opts,
        batches,
    })
}

/// Starts the delivery loop's scoring lanes (`kafka.scoring_threads`).
fn start_lanes(
    cfg: &Config,
    parts: &StreamParts,
    opts: ProcessOptions,
    log_state: bool,
) -> Result<lanes::Lanes, StreamError> {
    let lp = lanes::LaneParts {
        engine: parts.engine.clone(),
        opts,
        metrics: parts.metrics.clone(),
        topic: Arc::from(cfg.kafka.payments_topic.as_str()),
        log_state,
    };
    lanes::Lanes::start(cfg.kafka.scoring_threads, &lp).map_err(StreamError::LaneStart)
}

/// Settings shared by the consumer and the producer: brokers and the
/// pass-through `kafka.librdkafka` table (TLS, SASL, ...). Consumer lag comes
/// from positions and watermarks ([`lag`]), not librdkafka statistics.
pub(crate) fn base_config(cfg: &Config) -> ClientConfig {
    let k = &cfg.kafka;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set("client.id", format!("fraudline-{}", k.group_id));
    for (key, v) in &k.librdkafka {
        c.set(key, v);
    }
    c
}

/// The shutdown signal as every wait inside a delivery loop sees it: a
/// watch that the loop's retries, full-queue waits and consumes select on,
/// so no single record can hold a SIGTERM.
#[derive(Clone)]
pub(crate) struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    /// The stop watch and the future that fires it when `shutdown`
    /// resolves (it never returns; run it beside the loop in a `select!`).
    pub(crate) fn new(
        shutdown: impl Future<Output = ()> + Send,
    ) -> (Stop, impl Future<Output = ()> + Send) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let forward = async move {
            shutdown.await;
            let _ = tx.send(true);
            std::future::pending::<()>().await;
        };
        (Stop(rx), forward)
    }

    pub(crate) fn stopping(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when shutdown is asked for.
    pub(crate) async fn stopped(&mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }

    /// Sleeps `d`, or less if shutdown comes first; returns whether it did.
    pub(crate) async fn pause(&mut self, d: std::time::Duration) -> bool {
        if self.stopping() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            () = self.stopped() => true,
        }
    }
}

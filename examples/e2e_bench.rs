//! End to end on a real Kafka broker: fraudline's stream pipeline beside a
//! plain consume -> produce pass-through, in the same run, with the same
//! librdkafka settings (the pass-through builds its clients with
//! `fraudline::stream::{consumer_config, producer_config}`).
//!
//! - Throughput: N generated protobuf events (keyed by payer) are produced
//!   to a fresh input topic first; then the system under test is started and
//!   a reader on its output topic times the N outputs. Each system gets its
//!   own copy of the input and fresh topics and group.
//! - Latency: events are produced at a fixed rate with `event_time_ms` set to
//!   the wall-clock send time; a reader records, per output, its read time
//!   minus that send time.
//!
//! `bench/e2e.sh` builds, starts the dev broker and runs this. By hand:
//! ```text
//! cargo run --release --example e2e_bench -- --brokers 127.0.0.1:PORT
//! ```
//! Markdown tables go to stdout, progress to stderr. For a look inside:
//! `E2E_LOG=debug` (the log level) and `E2E_PRODUCER_DEBUG=eos` (librdkafka's
//! `debug` for fraudline's producer).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Parser;
use fraudline::config::Config;
use fraudline::event::Payment;
use fraudline::proto;
use fraudline::tools::gen::{GenConfig, Generator};
use futures::stream::{FuturesUnordered, StreamExt};
use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, FutureProducer, FutureRecord, Producer, ProducerContext,
    ThreadedProducer,
};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

#[derive(Parser, Debug)]
#[command(about = "fraudline beside a plain Kafka pass-through, end to end on a real broker")]
struct Args {
    /// Bootstrap servers of the broker to use.
    #[arg(
        long,
        env = "FRAUDLINE_BENCH_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    brokers: String,
    /// Events pre-produced for each throughput run.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Partitions of every input and output topic.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Latency runs: events produced per second.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// Latency runs: for how many seconds.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Throughput runs per system (each is reported).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Skip the exactly-once runs.
    #[arg(long)]
    no_exactly_once: bool,
    /// Skip the pass-through runs (for profiling fraudline alone).
    #[arg(long)]
    no_pass_through: bool,
    /// Skip the throughput runs.
    #[arg(long)]
    no_throughput: bool,
    /// Skip the latency runs.
    #[arg(long)]
    no_latency: bool,
    /// Pid of the broker, to report its CPU time per run too.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// fraudline's scoring lanes (`kafka.scoring_threads`; 0: one per core).
    #[arg(long, default_value_t = 0)]
    scoring_threads: usize,
    /// A `[kafka]` setting for every system, e.g. `--kafka linger_ms=5`
    /// (the pass-through builds its clients from the same config). Repeatable.
    #[arg(long = "kafka", value_name = "KEY=VALUE")]
    kafka: Vec<String>,
    /// Print only table rows `| LABEL | system | events/s | ratio | p50 | p99 | p99.9 |`
    /// (bench/e2e.sh prints the header once for several runs).
    #[arg(long, value_name = "LABEL")]
    rows: Option<String>,
    /// Print the mean value size of the generated events and exit (the
    /// record size bench/kafka_perf.sh uses).
    #[arg(long)]
    mean_bytes: bool,
}

/// The systems under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    PassThrough,
    AtLeastOnce,
    ExactlyOnce,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::PassThrough => "pass-through (rdkafka consume -> produce)",
            System::AtLeastOnce => "fraudline, at-least-once",
            System::ExactlyOnce => "fraudline, exactly-once",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            System::PassThrough => "pt",
            System::AtLeastOnce => "alo",
            System::ExactlyOnce => "eos",
        }
    }

    fn delivery(self) -> &'static str {
        match self {
            System::ExactlyOnce => "exactly-once",
            _ => "at-least-once",
        }
    }

    /// What the output records are, for the latency reader.
    fn output(self) -> Output {
        match self {
            System::PassThrough => Output::Payment,
            _ => Output::Verdict,
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.mean_bytes {
        let events = generate_throughput_events(10_000);
        let bytes: usize = events.iter().map(|(_, v)| v.len()).sum();
        println!("{}", bytes / events.len());
        return Ok(());
    }
    fraudline::telemetry::init_tracing(
        fraudline::telemetry::LogFormat::Text,
        &std::env::var("E2E_LOG").unwrap_or_else(|_| "warn".into()),
    );
    let mut systems = vec![System::PassThrough, System::AtLeastOnce];
    if args.no_pass_through {
        systems.retain(|s| *s != System::PassThrough);
    }
    if !args.no_exactly_once {
        systems.push(System::ExactlyOnce);
    }
    eprintln!(
        "e2e_bench: brokers {}, {} partitions, cores {}",
        args.brokers,
        args.partitions,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let mut throughput_rows = Vec::new();
    if !args.no_throughput {
        let events = generate_throughput_events(args.events);
        for round in 0..args.repeat {
            for &s in &systems {
                eprintln!(
                    "throughput: {} (round {}/{})",
                    s.name(),
                    round + 1,
                    args.repeat
                );
                // A runtime per run: dropping it ends every task the run left
                // behind. fraudline's warm-up task holds the consumer and outlives
                // `app::run`, so the consumer would otherwise stay in its group.
                let row = in_fresh_runtime(throughput(&args, s, &events))?;
                eprintln!("  {}", row.summary());
                throughput_rows.push(row);
            }
        }
    }
    let mut latency_rows = Vec::new();
    if !args.no_latency {
        for &s in &systems {
            eprintln!(
                "latency: {} at {} events/s for {} s",
                s.name(),
                args.rate,
                args.secs
            );
            let row = in_fresh_runtime(latency(&args, s))?;
            eprintln!("  {}", row.summary());
            latency_rows.push(row);
        }
    }
    print_tables(&args, &throughput_rows, &latency_rows);
    Ok(())
}

fn in_fresh_runtime<T>(f: impl Future<Output = Result<T>>) -> Result<T> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let out = rt.block_on(f);
    rt.shutdown_timeout(Duration::from_secs(10));
    out
}

// ---------------------------------------------------------------- topics --

struct Topics {
    input: String,
    output: String,
    dlq: String,
    group: String,
}

fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("bench-{what}-{}-{nanos}", std::process::id())
}

async fn create_topics(args: &Args, name: &str) -> Result<Topics> {
    let t = Topics {
        input: unique(&format!("{name}-in")),
        output: unique(&format!("{name}-out")),
        dlq: unique(&format!("{name}-dlq")),
        group: unique(&format!("{name}-group")),
    };
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .create()
        .context("admin client")?;
    let new = [
        NewTopic::new(&t.input, args.partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&t.output, args.partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&t.dlq, 1, TopicReplication::Fixed(1)),
    ];
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin
        .create_topics(&new, &opts)
        .await
        .context("create topics")?
    {
        r.map_err(|(topic, e)| anyhow!("create topic {topic}: {e}"))?;
    }
    Ok(t)
}

/// The config the fraudline runs use, and the pass-through's client settings.
fn config(args: &Args, t: &Topics, system: System) -> Result<Config> {
    let mut extra = format!("scoring_threads = {}\n", args.scoring_threads);
    for kv in &args.kafka {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("--kafka {kv}: expected KEY=VALUE"))?;
        extra.push_str(&format!("{} = {}\n", k.trim(), v.trim()));
    }
    if let Ok(d) = std::env::var("E2E_PRODUCER_DEBUG") {
        extra.push_str(&format!("producer = {{ debug = \"{d}\" }}\n"));
    }
    let toml = format!(
        "[kafka]\nbrokers = \"{}\"\ngroup_id = \"{}\"\npayments_topic = \"{}\"\n\
         verdicts_topic = \"{}\"\ndlq_topic = \"{}\"\nstate_topic = \"{}-state\"\ndelivery = \"{}\"\n\
         transactional_id = \"{}-txn\"\n{extra}[http]\nlisten = \"\"\n",
        args.brokers,
        t.group,
        t.input,
        t.output,
        t.dlq,
        t.group,
        system.delivery(),
        t.group
    );
    Config::from_parts(Some(&toml), Some("e2e_bench"), std::iter::empty())
        .map_err(|e| anyhow!("{e}"))
}

// ------------------------------------------------------- system under test --

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
}

fn start(system: System, cfg: Config) -> Running {
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    };
    let task = match system {
        System::PassThrough => tokio::spawn(pass_through(cfg, shutdown)),
        _ => tokio::spawn(async move {
            fraudline::app::run(cfg, shutdown)
                .await
                .map_err(anyhow::Error::from)
        }),
    };
    Running { stop, task }
}

impl Running {
    /// Resolves the shutdown future and waits for the drain; returns how long it took.
    async fn stop(self) -> Result<Duration> {
        let t = Instant::now();
        let _ = self.stop.send(());
        self.task.await.context("system task panicked")??;
        Ok(t.elapsed())
    }
}

/// One forwarded record waiting for its acknowledgement.
struct Pending {
    partition: i32,
    offset: i64,
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
}

type Acked = Pin<Box<dyn Future<Output = (Pending, bool)> + Send>>;

/// The floor: consume, re-produce unchanged, store the offset once the
/// broker has acknowledged the copy, auto-commit. The same loop shape,
/// in-flight bound and client settings as fraudline's at-least-once stream,
/// without decode, score or encode.
async fn pass_through(cfg: Config, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    let consumer: StreamConsumer = fraudline::stream::consumer_config(&cfg)
        .create()
        .context("pass-through consumer")?;
    let producer: FutureProducer = fraudline::stream::producer_config(&cfg)
        .create()
        .context("pass-through producer")?;
    let input = cfg.kafka.payments_topic.as_str();
    let output = cfg.kafka.verdicts_topic.as_str();
    consumer.subscribe(&[input]).context("subscribe")?;
    let mut inflight: FuturesUnordered<Acked> = FuturesUnordered::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some((p, ok)) = inflight.next(), if !inflight.is_empty() => {
                on_ack(&consumer, &producer, input, output, p, ok, &mut inflight).await;
            }
            msg = consumer.recv(), if inflight.len() < cfg.kafka.max_in_flight => match msg {
                Ok(m) => {
                    let p = Pending {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().unwrap_or_default().to_vec(),
                        payload: m.payload().unwrap_or_default().to_vec(),
                        headers: m.headers().map(|h| h.detach()),
                    };
                    drop(m);
                    send(&producer, output, p, &mut inflight).await;
                }
                Err(e) => {
                    eprintln!("pass-through: consume error: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    while let Some((p, ok)) = inflight.next().await {
        on_ack(&consumer, &producer, input, output, p, ok, &mut inflight).await;
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => return Err(e).context("final commit"),
    }
    producer
        .flush(Duration::from_secs(10))
        .context("final flush")?;
    Ok(())
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    p: Pending,
    inflight: &mut FuturesUnordered<Acked>,
) {
    let future = loop {
        let mut record = FutureRecord::to(topic).key(&p.key).payload(&p.payload);
        if let Some(h) = &p.headers {
            record = record.headers(h.clone());
        }
        match producer.send_result(record) {
            Ok(f) => break f,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => {
                eprintln!("pass-through: cannot enqueue: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    inflight.push(Box::pin(async move {
        let ok = matches!(future.await, Ok(Ok(_)));
        (p, ok)
    }));
}

async fn on_ack(
    consumer: &StreamConsumer,
    producer: &FutureProducer,
    input: &str,
    output: &str,
    p: Pending,
    ok: bool,
    inflight: &mut FuturesUnordered<Acked>,
) {
    if ok {
        // The copy keeps the key, so it lands on the same partition number
        // and its acknowledgements come in input order: storing on ack is
        // safe. `store_offset` stores offset + 1.
        let _ = consumer.store_offset(input, p.partition, p.offset);
    } else {
        eprintln!("pass-through: delivery failed; re-sending");
        tokio::time::sleep(Duration::from_millis(50)).await;
        send(producer, output, p, inflight).await;
    }
}

// --------------------------------------------------------------- producing --

/// Counts failed deliveries of the load producers.
#[derive(Clone, Default)]
struct Counting {
    failed: Arc<AtomicU64>,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if r.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn load_producer(brokers: &str, linger_ms: &str) -> Result<(ThreadedProducer<Counting>, Counting)> {
    let ctx = Counting::default();
    let p = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger_ms)
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(ctx.clone())
        .context("load producer")?;
    Ok((p, ctx))
}

fn send_blocking(
    producer: &ThreadedProducer<Counting>,
    topic: &str,
    key: &[u8],
    payload: &[u8],
) -> Result<()> {
    loop {
        match producer.send(BaseRecord::to(topic).key(key).payload(payload)) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => bail!("produce to {topic}: {e}"),
        }
    }
}

/// (key, protobuf bytes) of `n` generated events from one hour ago.
fn generate_throughput_events(n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let events: Vec<(Vec<u8>, Vec<u8>)> = Generator::new(GenConfig {
        seed: 42,
        start_ms: fraudline::now_ms() - 3_600_000,
        ..GenConfig::default()
    })
    .take(n)
    .map(|(p, _)| (p.payer.account.clone().into_bytes(), p.to_protobuf()))
    .collect();
    let bytes: usize = events.iter().map(|(_, v)| v.len()).sum();
    eprintln!(
        "e2e_bench: {n} events, mean value {} bytes",
        bytes / n.max(1)
    );
    events
}

fn preproduce(brokers: &str, topic: &str, events: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
    let (producer, ctx) = load_producer(brokers, "20")?;
    for (k, v) in events {
        send_blocking(&producer, topic, k, v)?;
    }
    producer
        .flush(Duration::from_secs(60))
        .context("flush pre-produced events")?;
    let failed = ctx.failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} pre-produced events failed");
    }
    Ok(())
}

/// Produces `events` at `rate` per second, each stamped with the wall clock
/// at send time, and waits for their acknowledgements. The producer is made
/// once per latency run (linger.ms=0: it adds no wait of its own) and warmed
/// by the warm-up events, so its connection set-up is not timed.
fn produce_paced(
    producer: &ThreadedProducer<Counting>,
    topic: &str,
    events: Vec<Payment>,
    rate: u64,
) -> Result<u64> {
    let started = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut sent = 0u64;
    for mut p in events {
        let due = gap * sent as u32;
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        p.event_time_ms = fraudline::now_ms();
        let bytes = p.to_protobuf();
        send_blocking(producer, topic, p.payer.account.as_bytes(), &bytes)?;
        sent += 1;
    }
    producer.flush(Duration::from_secs(30)).context("flush")?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} paced events failed");
    }
    Ok(sent)
}

// ----------------------------------------------------------------- reading --

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// Count only.
    Count,
    /// Forwarded `PaymentEvent`s (the pass-through).
    Payment,
    /// fraudline `Verdict`s.
    Verdict,
}

/// What a reader saw. Records whose event_id starts with `warmup-` are
/// counted apart and not timed.
#[derive(Debug, Default)]
struct Seen {
    first_at: Option<Instant>,
    target_at: Option<Instant>,
    /// When 10 % and 90 % of the target were read: the steady window
    /// (exactly-once outputs arrive a transaction at a time, so first ->
    /// last would leave out the first transaction's whole cycle).
    tenth_at: Option<Instant>,
    ninetieth_at: Option<Instant>,
    latencies_ms: Vec<i64>,
    undecodable: u64,
}

struct Reader {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    warm: Arc<AtomicU64>,
    seen: Arc<Mutex<Seen>>,
    handle: JoinHandle<()>,
}

impl Reader {
    /// Reads every partition of `topic` from the beginning on its own thread.
    fn spawn(
        brokers: &str,
        topic: &str,
        read_committed: bool,
        output: Output,
        target: u64,
    ) -> Result<Reader> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .set("fetch.queue.backoff.ms", "10")
            .set(
                "isolation.level",
                if read_committed {
                    "read_committed"
                } else {
                    "read_uncommitted"
                },
            )
            .create()
            .context("reader")?;
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .context("reader metadata")?;
        let mut tpl = TopicPartitionList::new();
        for t in md.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
            }
        }
        if tpl.count() == 0 {
            bail!("topic {topic} has no partitions yet");
        }
        consumer.assign(&tpl).context("reader assign")?;
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let warm = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let handle = std::thread::spawn({
            let (stop, count, warm, seen) =
                (stop.clone(), count.clone(), warm.clone(), seen.clone());
            move || {
                let mut local = Seen::default();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match consumer.poll(Duration::from_millis(50)) {
                        Some(Ok(m)) => {
                            let now = Instant::now();
                            match timing(&m, output) {
                                Timing::Warm => {
                                    warm.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                                Timing::Sent(t) => local.latencies_ms.push(fraudline::now_ms() - t),
                                Timing::Untimed => {}
                                Timing::Bad => local.undecodable += 1,
                            }
                            n += 1;
                            local.first_at.get_or_insert(now);
                            if n == target {
                                local.target_at = Some(now);
                            }
                            if n == target.div_ceil(10) {
                                local.tenth_at = Some(now);
                            }
                            if n == target * 9 / 10 {
                                local.ninetieth_at = Some(now);
                            }
                            count.store(n, Ordering::Relaxed);
                        }
                        Some(Err(e)) => eprintln!("reader: {e}"),
                        None => {}
                    }
                }
                if let Ok(mut s) = seen.lock() {
                    *s = local;
                }
            }
        });
        Ok(Reader {
            stop,
            count,
            warm,
            seen,
            handle,
        })
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn warm(&self) -> u64 {
        self.warm.load(Ordering::Relaxed)
    }

    fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
        self.seen
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }
}

enum Timing {
    Warm,
    Sent(i64),
    Untimed,
    Bad,
}

fn timing(m: &BorrowedMessage<'_>, output: Output) -> Timing {
    let bytes = m.payload().unwrap_or_default();
    let (id, t) = match output {
        Output::Count => return Timing::Untimed,
        Output::Payment => match proto::PaymentEvent::decode(bytes) {
            Ok(e) => (e.event_id, e.event_time_ms),
            Err(_) => return Timing::Bad,
        },
        Output::Verdict => match proto::Verdict::decode(bytes) {
            Ok(v) => (v.event_id, v.event_time_ms),
            Err(_) => return Timing::Bad,
        },
    };
    if id.starts_with("warmup-") {
        Timing::Warm
    } else {
        Timing::Sent(t)
    }
}

/// Waits until `done()` holds, checking every 10 ms; fails after `limit`.
async fn wait_until(what: &str, limit: Duration, done: impl Fn() -> bool) -> Result<()> {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

// -------------------------------------------------------------- CPU time --

/// utime + stime of a process, in seconds (Linux /proc; USER_HZ = 100).
fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the whole line.
    let rest = text.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

struct CpuMark {
    own: Option<f64>,
    broker: Option<f64>,
    pid: Option<u32>,
}

impl CpuMark {
    fn now(broker_pid: Option<u32>) -> CpuMark {
        CpuMark {
            own: cpu_secs(None),
            broker: broker_pid.and_then(|p| cpu_secs(Some(p))),
            pid: broker_pid,
        }
    }

    /// (this process, broker) CPU seconds since the mark.
    fn since(&self) -> (Option<f64>, Option<f64>) {
        let own = cpu_secs(None).zip(self.own).map(|(b, a)| b - a);
        let broker = self
            .pid
            .and_then(|p| cpu_secs(Some(p)))
            .zip(self.broker)
            .map(|(b, a)| b - a);
        (own, broker)
    }
}

// -------------------------------------------------------------- throughput --

struct ThroughputRow {
    system: System,
    events: u64,
    /// Start of the system to the N-th output read.
    wall: Duration,
    /// The 10 %-th output read to the 90 %-th.
    steady: Duration,
    drain: Duration,
    read_total: u64,
    cpu_own: Option<f64>,
    cpu_broker: Option<f64>,
}

impl ThroughputRow {
    fn wall_rate(&self) -> f64 {
        self.events as f64 / self.wall.as_secs_f64()
    }

    fn steady_rate(&self) -> f64 {
        let window = self.events * 9 / 10 - self.events.div_ceil(10);
        window as f64 / self.steady.as_secs_f64().max(1e-9)
    }

    fn summary(&self) -> String {
        format!(
            "{} events in {:.2} s from start ({:.0}/s), {:.2} s from the 10 % to the 90 % output ({:.0}/s), drain {:.2} s, read {}",
            self.events,
            self.wall.as_secs_f64(),
            self.wall_rate(),
            self.steady.as_secs_f64(),
            self.steady_rate(),
            self.drain.as_secs_f64(),
            self.read_total
        )
    }
}

async fn throughput(
    args: &Args,
    system: System,
    events: &[(Vec<u8>, Vec<u8>)],
) -> Result<ThroughputRow> {
    let t = create_topics(args, &format!("tp-{}", system.slug())).await?;
    let cfg = config(args, &t, system)?;
    let started = Instant::now();
    preproduce(&args.brokers, &t.input, events)?;
    eprintln!(
        "  pre-produced {} events in {:.1} s",
        events.len(),
        started.elapsed().as_secs_f64()
    );
    let n = events.len() as u64;
    let reader = Reader::spawn(
        &args.brokers,
        &t.output,
        system == System::ExactlyOnce,
        Output::Count,
        n,
    )?;
    let cpu = CpuMark::now(args.broker_pid);
    let started = Instant::now();
    let running = start(system, cfg);
    let waited = wait_until("all outputs", Duration::from_secs(900), || {
        reader.count() >= n
    })
    .await;
    let (cpu_own, cpu_broker) = cpu.since();
    let drain = running.stop().await?;
    // Anything a crash or retry repeated shows up here (at-least-once).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let read_total = reader.count();
    let seen = reader.finish();
    waited.with_context(|| format!("{}: read {read_total} of {n}", system.name()))?;
    let (Some(tenth), Some(ninetieth), Some(last)) =
        (seen.tenth_at, seen.ninetieth_at, seen.target_at)
    else {
        bail!("reader saw too few outputs");
    };
    verify(&args.brokers, &t.output, system, n)?;
    Ok(ThroughputRow {
        system,
        events: n,
        wall: last - started,
        steady: ninetieth - tenth,
        drain,
        read_total,
        cpu_own,
        cpu_broker,
    })
}

/// After a throughput run, outside the timing: the output topic holds one
/// record per input event, each for a different event_id (a verdict for
/// fraudline, the copied payment for the pass-through), so the figure is of
/// N events scored, not of replays or dead letters.
fn verify(brokers: &str, topic: &str, system: System, n: u64) -> Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("verify"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .context("verify reader")?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("verify metadata")?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl).context("verify assign")?;
    let mut ids = std::collections::HashSet::with_capacity(n as usize);
    let mut records = 0u64;
    let mut idle = Instant::now();
    while idle.elapsed() < Duration::from_secs(5) {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.context("verify poll")?;
        idle = Instant::now();
        records += 1;
        let bytes = m.payload().unwrap_or_default();
        let id = match system {
            System::PassThrough => proto::PaymentEvent::decode(bytes).map(|e| e.event_id),
            _ => proto::Verdict::decode(bytes).map(|v| v.event_id),
        }
        .map_err(|e| anyhow!("{}: an output does not decode: {e}", system.name()))?;
        ids.insert(id);
    }
    if records != n || ids.len() as u64 != n {
        bail!(
            "{}: the output holds {records} records for {} distinct event ids, not {n} of each",
            system.name(),
            ids.len()
        );
    }
    eprintln!("  checked: {n} outputs, {n} distinct event ids");
    Ok(())
}

// ----------------------------------------------------------------- latency --

struct LatencyRow {
    system: System,
    sent: u64,
    read: u64,
    p50: i64,
    p99: i64,
    p999: i64,
    max: i64,
    mean: f64,
}

impl LatencyRow {
    fn summary(&self) -> String {
        format!(
            "sent {}, read {}: p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms, mean {:.2} ms",
            self.sent, self.read, self.p50, self.p99, self.p999, self.max, self.mean
        )
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

const WARMUP_EVENTS: u64 = 30;

async fn latency(args: &Args, system: System) -> Result<LatencyRow> {
    let t = create_topics(args, &format!("lat-{}", system.slug())).await?;
    let cfg = config(args, &t, system)?;
    let total = args.rate * args.secs;
    let mut events: Vec<Payment> = Generator::new(GenConfig {
        seed: 11,
        start_ms: fraudline::now_ms(),
        events_per_sec: args.rate as f64,
        ..GenConfig::default()
    })
    .take((total + WARMUP_EVENTS) as usize)
    .map(|(p, _)| p)
    .collect();
    let timed = events.split_off(WARMUP_EVENTS as usize);
    let reader = Reader::spawn(
        &args.brokers,
        &t.output,
        system == System::ExactlyOnce,
        system.output(),
        total,
    )?;
    let running = start(system, cfg);

    // Warm-up: a few events on every partition, until all come out (the
    // group has joined and every client is connected).
    for (i, p) in events.iter_mut().enumerate() {
        p.event_id = format!("warmup-{i}");
        p.payer.account = format!("{:010}", 2_000_000_000u64 + i as u64);
    }
    let (producer, _) = load_producer(&args.brokers, "0")?;
    let (p, input) = (producer.clone(), t.input.clone());
    tokio::task::spawn_blocking(move || produce_paced(&p, &input, events, 1_000))
        .await
        .context("warm-up producer")??;
    wait_until("warm-up outputs", Duration::from_secs(120), || {
        reader.warm() >= WARMUP_EVENTS
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (p, input, rate) = (producer.clone(), t.input.clone(), args.rate);
    let sent = tokio::task::spawn_blocking(move || produce_paced(&p, &input, timed, rate))
        .await
        .context("paced producer")??;
    let waited = wait_until("timed outputs", Duration::from_secs(60), || {
        reader.count() >= sent
    })
    .await;
    running.stop().await?;
    let read = reader.count();
    let seen = reader.finish();
    waited.with_context(|| format!("{}: read {read} of {sent}", system.name()))?;
    if seen.undecodable > 0 {
        bail!("{} outputs did not decode", seen.undecodable);
    }
    let mut l = seen.latencies_ms;
    l.sort_unstable();
    let mean = l.iter().sum::<i64>() as f64 / l.len().max(1) as f64;
    Ok(LatencyRow {
        system,
        sent,
        read,
        p50: percentile(&l, 0.50),
        p99: percentile(&l, 0.99),
        p999: percentile(&l, 0.999),
        max: l.last().copied().unwrap_or(0),
        mean,
    })
}

// ------------------------------------------------------------------ report --

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One row per system for a comparison across settings (`--rows LABEL`).
fn print_rows(label: &str, tp: &[ThroughputRow], lat: &[LatencyRow]) {
    let base = median(
        tp.iter()
            .filter(|r| r.system == System::PassThrough)
            .map(ThroughputRow::steady_rate)
            .collect(),
    );
    let mut systems: Vec<System> = Vec::new();
    for s in tp
        .iter()
        .map(|r| r.system)
        .chain(lat.iter().map(|r| r.system))
    {
        if !systems.contains(&s) {
            systems.push(s);
        }
    }
    for s in systems {
        let rate = median(
            tp.iter()
                .filter(|r| r.system == s)
                .map(ThroughputRow::steady_rate)
                .collect(),
        );
        let ratio = if base > 0.0 && rate > 0.0 {
            format!("{:.2}", rate / base)
        } else {
            "–".into()
        };
        let (p50, p99, p999) = lat
            .iter()
            .find(|r| r.system == s)
            .map_or(("–".into(), "–".into(), "–".into()), |r| {
                (r.p50.to_string(), r.p99.to_string(), r.p999.to_string())
            });
        println!(
            "| {label} | {} | {:.0} | {ratio} | {p50} | {p99} | {p999} |",
            s.name(),
            rate
        );
    }
}

fn print_tables(args: &Args, tp: &[ThroughputRow], lat: &[LatencyRow]) {
    if let Some(label) = &args.rows {
        return print_rows(label, tp, lat);
    }
    if !tp.is_empty() {
        let runs = tp.iter().filter(|r| r.system == tp[0].system).count();
        println!(
            "### Throughput: {} pre-produced protobuf events, {} partitions, median of {runs} run(s) (min-max)\n",
            args.events, args.partitions
        );
        println!(
            "| system | events/s, 10 % -> 90 % of the outputs | ratio to pass-through | events/s, start -> last output | CPU µs/event, this process | CPU µs/event, broker |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
        let of = |s: System, f: &dyn Fn(&ThroughputRow) -> Option<f64>| -> Vec<f64> {
            tp.iter().filter(|r| r.system == s).filter_map(f).collect()
        };
        let base = median(of(System::PassThrough, &|r| Some(r.steady_rate())));
        let mut seen = Vec::new();
        for r in tp {
            if seen.contains(&r.system) {
                continue;
            }
            seen.push(r.system);
            let s = r.system;
            let range = |v: Vec<f64>| {
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(0.0, f64::max);
                format!("{:.0} ({:.0}-{:.0})", median(v), lo, hi)
            };
            let per_event = |v: Vec<f64>| {
                if v.is_empty() {
                    "–".to_string()
                } else {
                    format!("{:.1}", median(v))
                }
            };
            let ratio = if base > 0.0 {
                format!("{:.2}", median(of(s, &|r| Some(r.steady_rate()))) / base)
            } else {
                "–".to_string()
            };
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                s.name(),
                range(of(s, &|r| Some(r.steady_rate()))),
                ratio,
                range(of(s, &|r| Some(r.wall_rate()))),
                per_event(of(s, &|r| r.cpu_own.map(|c| c * 1e6 / r.events as f64))),
                per_event(of(s, &|r| r.cpu_broker.map(|c| c * 1e6 / r.events as f64))),
            );
        }
        println!();
    }
    if !lat.is_empty() {
        println!(
            "### Latency: {} events/s for {} s, send -> output read (ms, 1 ms resolution)\n",
            args.rate, args.secs
        );
        println!("| system | read | p50 | p99 | p99.9 | max | mean |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        for r in lat {
            println!(
                "| {} | {} | {} | {} | {} | {} | {:.2} |",
                r.system.name(),
                r.read,
                r.p50,
                r.p99,
                r.p999,
                r.max,
                r.mean
            );
        }
        println!();
    }
}

//! The state layer's costs on a real Kafka broker, with fraudline processes
//! (the release binary, `run`), as a bank would run them (docs/STATE.md,
//! issue 11). Four measurements, each beside its floor:
//!
//! 1. **Stream throughput with the state layer vs without it**: the same N
//!    pre-produced payments consumed by a fresh group, state log and
//!    snapshots on, then off (ratio; goal >= 0.85).
//! 2. **Memory per instance** with the accounts' state resident (RSS), and
//!    the feature entities it holds.
//! 3. **Start to ready with that state**: a new instance restoring from the
//!    snapshot (plus the log's tail), vs the same instance replaying the
//!    whole state log (`snapshot_topic = ""`, the 24 h replay the snapshot
//!    replaces); floor: a plain consumer reading the snapshot topic's bytes.
//! 4. **Propagation lag** of a payment's state record to another instance
//!    (`fraudline_state_propagation_seconds`, both instances of one group,
//!    paced traffic); floor: a plain produce -> consume of the same records.
//!
//! Each run checks it measured what it claims (all N consumed, no dead
//! letters, the restored instance holds the accounts, the replay applied
//! every record, the propagation histogram counted what was applied).
//!
//! `bench/state.sh` builds and runs it (`--short` for a quick pass). By hand:
//! ```text
//! cargo build --release --bin fraudline --example state_bench
//! target/release/examples/state_bench --brokers 127.0.0.1:PORT --bin target/release/fraudline
//! ```
//! A markdown table goes to stdout, progress to stderr.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Parser;
use fraudline::tools::gen::{GenConfig, Generator};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};

#[derive(Parser, Debug)]
#[command(about = "fraudline's state layer: throughput, memory, restore time, propagation lag")]
struct Args {
    #[arg(
        long,
        env = "FRAUDLINE_BENCH_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    brokers: String,
    /// The fraudline binary (release build).
    #[arg(long, default_value = "target/release/fraudline")]
    bin: PathBuf,
    /// Customers in the generated population.
    #[arg(long, default_value_t = 1_000_000)]
    accounts: u32,
    /// Payments pre-produced (24 h of event time).
    #[arg(long, default_value_t = 2_000_000)]
    payments: usize,
    /// Partitions of the payments topic (and the state log).
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Propagation runs: payments per second, and for how long.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    #[arg(long, default_value_t = 20)]
    secs: u64,
    /// A quick pass (50,000 accounts, 100,000 payments, 5 s of paced traffic).
    #[arg(long)]
    short: bool,
    /// Pid of the broker, to report its CPU time per run too.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// kafka.snapshot_interval_ms of the instances (the production default).
    #[arg(long, default_value_t = 60_000)]
    snapshot_interval_ms: u64,
    /// TOML lines added to every instance's [kafka] section (to try a
    /// setting, e.g. 'linger_ms = 5').
    #[arg(long, default_value = "")]
    kafka_extra: String,
    /// Throughput runs per configuration (median reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

/// CPU seconds (user + system) of a process so far.
fn cpu_secs(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Which parts of the state layer a throughput run has on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    Off,
    Log,
    LogAndSnapshots,
}

impl Layer {
    fn slug(self) -> &'static str {
        match self {
            Layer::Off => "nostate",
            Layer::Log => "logonly",
            Layer::LogAndSnapshots => "state",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Layer::Off => "without the state layer",
            Layer::Log => "state log, no snapshots",
            Layer::LogAndSnapshots => "state log + snapshots",
        }
    }
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.short {
        args.repeat = 1;
        args.accounts = 50_000;
        args.payments = 100_000;
        args.secs = 5;
    }
    if !args.bin.exists() {
        bail!(
            "{}: no such binary (cargo build --release --bin fraudline)",
            args.bin.display()
        );
    }
    let work = tempfile::tempdir().context("temp dir")?;
    let payments = unique("payments");
    create(&args, &payments, args.partitions, &[])?;
    eprintln!(
        "state_bench: generating and producing {} payments of {} accounts",
        args.payments, args.accounts
    );
    let produced = preproduce(&args, &payments)?;

    // 1 and 2: throughput without the state layer, with the log only, and
    // with log and snapshots, `repeat` times in a rotating order (the
    // machine is noisy; the median is reported). Every run has fresh
    // topics and group; the last log + snapshots run's state is what the
    // restores read.
    let layers = [Layer::Off, Layer::Log, Layer::LogAndSnapshots];
    let mut runs: Vec<Throughput> = Vec::new();
    let mut with = None;
    for r in 0..args.repeat.max(1) {
        for k in 0..layers.len() {
            let layer = layers[(k + r) % layers.len()];
            let t = Topics::new(layer.slug());
            if layer != Layer::Off {
                create(
                    &args,
                    &t.state,
                    args.partitions,
                    &[("cleanup.policy", "delete")],
                )?;
            }
            if layer == Layer::LogAndSnapshots {
                create(
                    &args,
                    &t.snapshots,
                    1,
                    &[("cleanup.policy", "compact"), ("segment.ms", "3600000")],
                )?;
            }
            // Only the last state run's cuts are restored: it alone waits
            // for a cut after its last payment.
            let last = r + 1 == args.repeat.max(1);
            runs.push(throughput(&args, &work, &payments, &t, layer, last)?);
            if layer == Layer::LogAndSnapshots {
                with = Some(t);
            }
        }
    }
    let with = with.ok_or_else(|| anyhow!("no state run"))?;
    let median_of = |layer: Layer| -> Throughput {
        let mut rs: Vec<&Throughput> = runs.iter().filter(|r| r.layer == layer).collect();
        rs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        let m = rs[rs.len() / 2];
        Throughput {
            layer,
            rate: m.rate,
            rss_mib: m.rss_mib,
            cpu: m.cpu,
            broker_cpu: m.broker_cpu,
        }
    };
    let all_of = |layer: Layer| -> String {
        runs.iter()
            .filter(|r| r.layer == layer)
            .map(|r| format!("{:.0}", r.rate))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let r_without = median_of(Layer::Off);
    let r_log = median_of(Layer::Log);
    let r_with = median_of(Layer::LogAndSnapshots);

    // 3: restore, from the snapshot, then from the whole log.
    let from_snapshot = restore(&args, &work, &payments, &with, true)?;
    let from_log = restore(&args, &work, &payments, &with, false)?;
    let floor = read_topic(&args, &with.snapshots)?;

    // 4: propagation between two instances of one group.
    let prop = propagation(&args, &work)?;

    println!("## fraudline state layer");
    println!();
    println!(
        "{} accounts, {} payments pre-produced ({} bytes), {} partitions; broker {} (single node, same machine)",
        args.accounts, produced.0, produced.1, args.partitions, args.brokers
    );
    println!();
    println!(
        "| stream run, at-least-once, {} payments | events/s, median (every run) | CPU s per 100k events: fraudline / broker | ratio to without |",
        args.payments
    );
    println!("| --- | ---: | ---: | ---: |");
    for r in [&r_without, &r_log, &r_with] {
        println!(
            "| {} | {:.0} ({}) | {:.2} / {} | {:.2} |",
            r.layer.name(),
            r.rate,
            all_of(r.layer),
            r.cpu * 1e5 / args.payments as f64,
            r.broker_cpu.map_or("–".to_string(), |b| format!(
                "{:.2}",
                b * 1e5 / args.payments as f64
            )),
            r.rate / r_without.rate
        );
    }
    println!();
    println!("| measure | fraudline | floor / comparison | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| RSS of the instance after the run | {:.0} MiB with the state layer | {:.0} MiB without | {:.2} |",
        r_with.rss_mib,
        r_without.rss_mib,
        r_with.rss_mib / r_without.rss_mib
    );
    println!(
        "| RSS of a restored instance | {:.0} MiB ({} accounts, {} devices/phones/IPs) | – | – |",
        from_snapshot.rss_mib, from_snapshot.accounts, from_snapshot.kit
    );
    println!(
        "| start to ready, from the snapshot | {:.1} s ({} entities loaded, {} log records replayed; RSS {:.0} MiB) | raw read of the snapshot topic: {:.1} s ({} records, {} bytes) | {:.1} |",
        from_snapshot.ready_s,
        from_snapshot.entities,
        from_snapshot.replayed,
        from_snapshot.rss_mib,
        floor.secs,
        floor.records,
        floor.bytes,
        from_snapshot.ready_s / floor.secs.max(1e-3)
    );
    println!(
        "| start to ready, replaying the whole state log | {:.1} s ({} records replayed; RSS {:.0} MiB) | from the snapshot: {:.1} s | {:.1} |",
        from_log.ready_s,
        from_log.replayed,
        from_log.rss_mib,
        from_snapshot.ready_s,
        from_log.ready_s / from_snapshot.ready_s.max(1e-3)
    );
    println!(
        "| propagation to the other instance, p50 / p99 | {} / {} ({} records, {} events/s for {} s) | plain produce -> consume: {:.1} / {:.1} ms | – |",
        prop.p50, prop.p99, prop.applied, args.rate, args.secs, prop.floor_p50_ms, prop.floor_p99_ms
    );
    println!();
    println!(
        "Propagation percentiles are read from the histogram's buckets (upper bound of the bucket that holds them). Every instance holds all state: memory per instance does not shrink as instances are added; the deployment's total is instances x the figure above."
    );
    Ok(())
}

// ------------------------------------------------------------------ kafka --

fn unique(what: &str) -> String {
    format!(
        "bench-{what}-{}-{}",
        std::process::id(),
        fraudline::now_ms()
    )
}

struct Topics {
    group: String,
    verdicts: String,
    dlq: String,
    state: String,
    snapshots: String,
}

impl Topics {
    fn new(name: &str) -> Topics {
        Topics {
            group: unique(&format!("{name}-group")),
            verdicts: unique(&format!("{name}-verdicts")),
            dlq: unique(&format!("{name}-dlq")),
            state: unique(&format!("{name}-state")),
            snapshots: unique(&format!("{name}-snapshots")),
        }
    }
}

fn create(args: &Args, topic: &str, partitions: i32, configs: &[(&str, &str)]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .create()
        .context("admin client")?;
    let mut t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in rt.block_on(admin.create_topics([&t], &opts))? {
        r.map_err(|(topic, e)| anyhow!("create topic {topic}: {e}"))?;
    }
    Ok(())
}

#[derive(Default)]
struct Counting {
    failed: AtomicU64,
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

fn producer(args: &Args, linger_ms: &str) -> Result<ThreadedProducer<Counting>> {
    ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("linger.ms", linger_ms)
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "500000")
        .create_with_context(Counting::default())
        .context("producer")
}

fn send(p: &ThreadedProducer<Counting>, topic: &str, key: &[u8], payload: &[u8]) -> Result<()> {
    let mut rec = BaseRecord::to(topic).key(key).payload(payload);
    loop {
        match p.send(rec) {
            Ok(()) => return Ok(()),
            Err((
                KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                r,
            )) => {
                rec = r;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

/// 24 h of event time ending now, keyed by payer. Returns (count, bytes).
fn preproduce(args: &Args, topic: &str) -> Result<(usize, usize)> {
    let p = producer(args, "20")?;
    let gen = Generator::new(GenConfig {
        seed: 11,
        accounts: args.accounts,
        fraud_rate: 0.01,
        start_ms: fraudline::now_ms() - 86_400_000,
        events_per_sec: args.payments as f64 / 86_400.0,
    });
    let mut bytes = 0;
    for (pay, _) in gen.take(args.payments) {
        let v = pay.to_protobuf();
        bytes += v.len();
        send(&p, topic, pay.payer.account.as_bytes(), &v)?;
    }
    p.flush(Duration::from_secs(120)).context("flush")?;
    let failed = p.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} payments not produced");
    }
    Ok((args.payments, bytes))
}

struct Floor {
    secs: f64,
    records: u64,
    bytes: u64,
}

/// Reads `topic` from start to end with a plain consumer (no decoding).
fn read_topic(args: &Args, topic: &str) -> Result<Floor> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", unique("floor"))
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        // The restore's fetch sizes (src/state/snapshot.rs).
        .set("fetch.max.bytes", "104857600")
        .set("max.partition.fetch.bytes", "52428800")
        .create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    let mut pending = std::collections::HashSet::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        pending.insert(p.id());
    }
    let started = Instant::now();
    c.assign(&tpl)?;
    let (mut records, mut bytes) = (0u64, 0u64);
    while !pending.is_empty() && started.elapsed() < Duration::from_secs(600) {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                records += 1;
                bytes += m.payload_len() as u64;
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            _ => {}
        }
    }
    Ok(Floor {
        secs: started.elapsed().as_secs_f64(),
        records,
        bytes,
    })
}

// -------------------------------------------------------------- processes --

struct Instance {
    child: Child,
    log: PathBuf,
    http: String,
}

impl Instance {
    fn start(args: &Args, work: &tempfile::TempDir, name: &str, config: &str) -> Result<Instance> {
        let path = work.path().join(format!("{name}.toml"));
        std::fs::write(&path, config)?;
        let log = work.path().join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(&args.bin)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("start fraudline")?;
        let mut i = Instance {
            child,
            log,
            http: String::new(),
        };
        let started = Instant::now();
        while i.http.is_empty() {
            if started.elapsed() > Duration::from_secs(60) || !i.alive() {
                bail!("{name}: no metrics address; log:\n{}", i.tail());
            }
            let text = std::fs::read_to_string(&i.log).unwrap_or_default();
            if let Some(a) = text
                .lines()
                .find(|l| l.contains("serving /metrics"))
                .and_then(|l| l.split("addr=").nth(1))
                .and_then(|a| a.split(' ').next())
            {
                i.http = a.to_string();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(i)
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = std::net::TcpStream::connect(&self.http).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        let code = body.split(' ').nth(1)?.parse().ok()?;
        let text = body.split_once("\r\n\r\n").map(|x| x.1.to_string())?;
        Some((code, text))
    }

    fn metrics(&self) -> String {
        self.get("/metrics").map(|x| x.1).unwrap_or_default()
    }

    fn rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|k| k.parse::<f64>().ok())
            })
            .map_or(0.0, |kb| kb / 1024.0)
    }

    fn stop(mut self) -> Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let started = Instant::now();
        while self.alive() {
            if started.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                bail!("did not stop on SIGTERM; log:\n{}", self.tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sum of a metric's samples whose line starts with `series`.
fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Per label value of `name{kind="..."}`.
fn by_kind(body: &str, name: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| {
            let kind = l.split("kind=\"").nth(1)?.split('"').next()?.to_string();
            Some((kind, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

fn config(args: &Args, payments: &str, t: &Topics, state: bool, extra: &str) -> String {
    let (state_topic, snapshots) = if state {
        (t.state.as_str(), t.snapshots.as_str())
    } else {
        ("", "")
    };
    format!(
        "[kafka]\nbrokers = \"{}\"\ngroup_id = \"{}\"\npayments_topic = \"{payments}\"\n\
         verdicts_topic = \"{}\"\ndlq_topic = \"{}\"\nstate_topic = \"{state_topic}\"\n\
         snapshot_topic = \"{snapshots}\"\nsnapshot_interval_ms = {}\n\
         warmup_lookback_ms = 86400000\nstate_catch_up_ms = 600000\n{extra}\n\
         [http]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"text\"\nlevel = \"info\"\n",
        args.brokers, t.group, t.verdicts, t.dlq, args.snapshot_interval_ms
    )
}

fn wait(what: &str, limit: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let started = Instant::now();
    while !done()? {
        if started.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

// ----------------------------------------------------------- measurements --

struct Throughput {
    layer: Layer,
    rate: f64,
    rss_mib: f64,
    cpu: f64,
    broker_cpu: Option<f64>,
}

fn throughput(
    args: &Args,
    work: &tempfile::TempDir,
    payments: &str,
    t: &Topics,
    layer: Layer,
    wait_cut: bool,
) -> Result<Throughput> {
    let name = match layer {
        Layer::Off => "without-state",
        Layer::Log => "log-only",
        Layer::LogAndSnapshots => "with-state",
    };
    let state = layer != Layer::Off;
    eprintln!("state_bench: throughput, {name}");
    let mut toml = config(args, payments, t, state, &args.kafka_extra);
    if layer == Layer::Log {
        toml = toml.replace(
            &format!("snapshot_topic = \"{}\"", t.snapshots),
            "snapshot_topic = \"\"",
        );
    }
    let broker_before = args.broker_pid.and_then(cpu_secs);
    let mut i = Instance::start(args, work, name, &toml)?;
    let n = args.payments as f64;
    let consumed = |i: &Instance| metric(&i.metrics(), "fraudline_events_consumed_total");
    let mut first: Option<Instant> = None;
    let limit = Duration::from_secs(1800);
    let started = Instant::now();
    loop {
        if !i.alive() {
            bail!("{name} died; log:\n{}", i.tail());
        }
        let c = consumed(&i);
        if c > 0.0 && first.is_none() {
            first = Some(Instant::now());
        }
        if c >= n {
            break;
        }
        if started.elapsed() > limit {
            bail!("{name}: {c} of {n} consumed in {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    let cpu = cpu_secs(i.child.id()).unwrap_or(0.0);
    let broker_cpu = args
        .broker_pid
        .and_then(cpu_secs)
        .zip(broker_before)
        .map(|(a, b)| a - b);
    let body = i.metrics();
    let dead = metric(&body, "fraudline_dlq_records_total");
    if dead > 0.0 {
        bail!("{name}: {dead} dead letters: the bench measured something else");
    }
    if layer == Layer::LogAndSnapshots && wait_cut {
        // A cut after the last payment, so the restore below has it all.
        let before = metric(&body, "fraudline_state_snapshots_total{result=\"written\"}");
        wait("a snapshot after the run", Duration::from_secs(600), || {
            Ok(metric(
                &i.metrics(),
                "fraudline_state_snapshots_total{result=\"written\"}",
            ) >= before + 2.0)
        })?;
    }
    let rss_mib = i.rss_mib();
    i.stop().with_context(|| name.to_string())?;
    let rate = n / secs.max(1e-3);
    eprintln!("state_bench: {name}: {rate:.0} events/s, RSS {rss_mib:.0} MiB");
    Ok(Throughput {
        layer,
        rate,
        rss_mib,
        cpu,
        broker_cpu,
    })
}

struct Restore {
    ready_s: f64,
    entities: u64,
    replayed: u64,
    rss_mib: f64,
    accounts: f64,
    kit: f64,
}

/// Starts an instance on the filled state (same group: nothing left to
/// consume) and times it to `/readyz` 200.
fn restore(
    args: &Args,
    work: &tempfile::TempDir,
    payments: &str,
    t: &Topics,
    snapshot: bool,
) -> Result<Restore> {
    let name = if snapshot {
        "restore-snapshot"
    } else {
        "restore-log"
    };
    eprintln!("state_bench: {name}");
    // The entity gauges are set by the sweeper: every 2 s here.
    let mut toml = config(args, payments, t, true, "")
        .replace("[http]\n", "[features]\nsweep_interval_s = 2\n[http]\n");
    if !snapshot {
        toml = toml.replace(
            &format!("snapshot_topic = \"{}\"", t.snapshots),
            "snapshot_topic = \"\"",
        );
    }
    let started = Instant::now();
    let mut i = Instance::start(args, work, name, &toml)?;
    loop {
        if !i.alive() {
            bail!("{name} died; log:\n{}", i.tail());
        }
        if matches!(i.get("/readyz"), Some((200, _))) {
            break;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("{name}: not ready in 30 min");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let ready_s = started.elapsed().as_secs_f64();
    let body = i.metrics();
    let entities = metric(&body, "fraudline_state_snapshot_restored_entities") as u64;
    let replayed = metric(&body, "fraudline_state_records_total{result=\"applied\"}") as u64;
    wait("the entity gauges", Duration::from_secs(30), || {
        Ok(by_kind(&i.metrics(), "fraudline_feature_entities")
            .get("account")
            .is_some_and(|n| *n > 0.0))
    })?;
    let kinds = by_kind(&i.metrics(), "fraudline_feature_entities");
    let accounts = kinds.get("account").copied().unwrap_or(0.0);
    let kit = kinds.get("kit").copied().unwrap_or(0.0);
    // What it claims: the accounts are back.
    if accounts < 0.8 * args.accounts as f64 {
        bail!(
            "{name}: only {accounts} accounts restored of ~{}",
            args.accounts
        );
    }
    if !snapshot && (replayed as usize) < args.payments {
        bail!("{name}: replayed {replayed} of {} records", args.payments);
    }
    let rss_mib = i.rss_mib();
    i.stop()?;
    eprintln!("state_bench: {name}: ready in {ready_s:.1} s, {entities} entities, {replayed} replayed, {accounts} accounts, RSS {rss_mib:.0} MiB");
    Ok(Restore {
        ready_s,
        entities,
        replayed,
        rss_mib,
        accounts,
        kit,
    })
}

struct Propagation {
    p50: String,
    p99: String,
    applied: u64,
    floor_p50_ms: f64,
    floor_p99_ms: f64,
}

/// The histogram's cumulative buckets summed over instances.
fn buckets(bodies: &[String], name: &str) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for body in bodies {
        for l in body
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        {
            let Some(le) = l.split("le=\"").nth(1).and_then(|x| x.split('"').next()) else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            let n: f64 = l
                .rsplit(' ')
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0.0);
            match out.iter_mut().find(|(b, _)| *b == le) {
                Some(e) => e.1 += n,
                None => out.push((le, n)),
            }
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

fn quantile(b: &[(f64, f64)], q: f64) -> String {
    let total = b.last().map_or(0.0, |x| x.1);
    match b.iter().find(|(_, n)| *n >= q * total) {
        Some((le, _)) if le.is_finite() => format!("<= {:.0} ms", le * 1000.0),
        _ => "> largest bucket".to_string(),
    }
}

fn propagation(args: &Args, work: &tempfile::TempDir) -> Result<Propagation> {
    eprintln!(
        "state_bench: propagation, 2 instances, {} events/s for {} s",
        args.rate, args.secs
    );
    let payments = unique("prop-payments");
    create(args, &payments, args.partitions, &[])?;
    let t = Topics::new("prop");
    create(
        args,
        &t.state,
        args.partitions,
        &[("cleanup.policy", "delete")],
    )?;
    let a = Instance::start(args, work, "prop-a", &config(args, &payments, &t, true, ""))?;
    let b = Instance::start(args, work, "prop-b", &config(args, &payments, &t, true, ""))?;
    // Both hold partitions before the timed traffic.
    let held = |i: &Instance| {
        i.metrics()
            .lines()
            .filter(|l| l.starts_with("fraudline_consumer_lag_messages{"))
            .count()
    };
    let p = producer(args, "0")?;
    let warm: Vec<_> = Generator::new(GenConfig {
        seed: 3,
        ..GenConfig::default()
    })
    .take(600)
    .collect();
    for (pay, _) in &warm {
        send(
            &p,
            &payments,
            pay.payer.account.as_bytes(),
            &pay.to_protobuf(),
        )?;
    }
    p.flush(Duration::from_secs(30))?;
    wait(
        "both instances hold partitions",
        Duration::from_secs(120),
        || Ok(held(&a) > 0 && held(&b) > 0 && held(&a) + held(&b) == args.partitions as usize),
    )?;
    let before: Vec<Vec<(f64, f64)>> = [&a, &b]
        .iter()
        .map(|i| buckets(&[i.metrics()], "fraudline_state_propagation_seconds"))
        .collect();
    // The floor: a plain consumer of the state log, timing each record from
    // its broker timestamp (as the follower does).
    let floor = std::thread::spawn({
        let brokers = args.brokers.clone();
        let topic = t.state.clone();
        let secs = args.secs;
        move || floor_latency(&brokers, &topic, secs + 5)
    });
    std::thread::sleep(Duration::from_secs(2));
    let n = (args.rate * args.secs) as usize;
    let gap = Duration::from_secs_f64(1.0 / args.rate as f64);
    let started = Instant::now();
    for (k, (mut pay, _)) in Generator::new(GenConfig {
        seed: 4,
        start_ms: fraudline::now_ms(),
        events_per_sec: args.rate as f64,
        ..GenConfig::default()
    })
    .take(n)
    .enumerate()
    {
        if let Some(w) = (gap * k as u32).checked_sub(started.elapsed()) {
            std::thread::sleep(w);
        }
        pay.event_time_ms = fraudline::now_ms();
        send(
            &p,
            &payments,
            pay.payer.account.as_bytes(),
            &pay.to_protobuf(),
        )?;
    }
    p.flush(Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_secs(3));
    let bodies = vec![a.metrics(), b.metrics()];
    let applied = metric(
        &bodies[0],
        "fraudline_state_records_total{result=\"applied\"}",
    ) + metric(
        &bodies[1],
        "fraudline_state_records_total{result=\"applied\"}",
    );
    let mut after = buckets(&bodies, "fraudline_state_propagation_seconds");
    // Only the timed traffic: subtract what the warm-up payments recorded.
    for prior in &before {
        for (le, n) in prior {
            if let Some(e) = after.iter_mut().find(|(b, _)| b == le) {
                e.1 -= n;
            }
        }
    }
    let counted = after.last().map_or(0.0, |x| x.1);
    if counted < 0.4 * n as f64 {
        bail!("propagation: {counted} records timed of {n} payments: each instance should apply the other's half");
    }
    let (floor_p50_ms, floor_p99_ms) = floor
        .join()
        .map_err(|_| anyhow!("floor reader panicked"))??;
    a.stop()?;
    b.stop()?;
    Ok(Propagation {
        p50: quantile(&after, 0.5),
        p99: quantile(&after, 0.99),
        applied: applied as u64,
        floor_p50_ms,
        floor_p99_ms,
    })
}

/// p50 / p99 in ms of (read time - broker timestamp) over `secs`.
fn floor_latency(brokers: &str, topic: &str, secs: u64) -> Result<(f64, f64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("floor-lat"))
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::End)?;
    }
    c.assign(&tpl)?;
    let started = Instant::now();
    let mut lat = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
            if let Some(ts) = m.timestamp().to_millis() {
                lat.push((fraudline::now_ms() - ts) as f64);
            }
        }
    }
    if lat.is_empty() {
        bail!("floor: no records read");
    }
    lat.sort_by(f64::total_cmp);
    let at = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    Ok((at(0.5), at(0.99)))
}

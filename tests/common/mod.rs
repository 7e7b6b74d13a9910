//! Test harness: a real Kafka broker (deploy/kafka/broker.sh), random topic
//! names, a fraudline process per test, and readers for the output topics.
#![allow(dead_code, unreachable_pub)]

pub mod inline;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fraudline::proto;
use fraudline::tools::gen::{GenConfig, Generator};
use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Starts (or reuses) the broker whose state lives in `state_dir` and holds
/// it for this test process only, unless FRAUDLINE_TEST_BROKERS names one
/// already running (that one is never stopped). For a test that runs a broker
/// of its own (to kill and restart it): when this process exits, however it
/// exits, the broker is stopped and its state removed (see [`lease_broker`]).
pub fn start_broker(state_dir: &str) -> String {
    lease_broker(state_dir, false)
}

/// Starts or reuses the broker in `state_dir` through `broker.sh lease`: a
/// lease (a file named by the pid, under `state_dir/leases`) for this
/// process, and, when `for_the_run` and `cargo test` runs this binary, one
/// for that cargo process too.
///
/// Why leases and a reaper, not a guard: Rust runs no destructor of a static
/// at exit, a test binary that panics or is killed (Ctrl-C, SIGKILL, a CI
/// timeout) runs none at all, and several test binaries (and several
/// `cargo test` runs in other worktrees) share one broker. So `broker.sh`
/// starts a reaper in a session of its own that watches the holders' pids;
/// a grace after the last of them is gone it stops the broker and removes its
/// state (keeps the state with FRAUDLINE_KEEP_TEST_BROKER=1). A broker that
/// was running before without a lease (started by hand, by a bench script)
/// is used and never stopped.
pub fn lease_broker(state_dir: &str, for_the_run: bool) -> String {
    if let Ok(b) = std::env::var("FRAUDLINE_TEST_BROKERS") {
        return b;
    }
    let mut holders = vec![std::process::id()];
    if for_the_run {
        holders.extend(cargo_parent());
    }
    let out = Command::new(repo().join("deploy/kafka/broker.sh"))
        .arg("lease")
        .args(holders.iter().map(u32::to_string))
        .env("FRAUDLINE_KAFKA_STATE", state_dir)
        .stderr(Stdio::inherit())
        .output()
        .expect("run deploy/kafka/broker.sh");
    assert!(out.status.success(), "broker.sh lease failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The `cargo` process running this test binary, if cargo runs it: `cargo
/// test` runs the test binaries one after another, so a lease held by cargo
/// keeps the shared broker warm from one binary to the next (a JVM broker
/// takes 10-20 s to start) and lets it go when the run ends. Likewise
/// cargo-nextest, which runs each test as a process of its own.
fn cargo_parent() -> Option<u32> {
    let ppid = std::os::unix::process::parent_id();
    let comm = std::fs::read_to_string(format!("/proc/{ppid}/comm")).ok()?;
    matches!(comm.trim(), "cargo" | "cargo-nextest").then_some(ppid)
}

pub fn broker_cmd(state_dir: &str, cmd: &str) -> String {
    let out = Command::new(repo().join("deploy/kafka/broker.sh"))
        .arg(cmd)
        .env("FRAUDLINE_KAFKA_STATE", state_dir)
        .stderr(Stdio::inherit())
        .output()
        .expect("run deploy/kafka/broker.sh");
    assert!(out.status.success(), "broker.sh {cmd} failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The broker shared by the tests of one test binary, by the test binaries of
/// one `cargo test` run and by concurrent runs on the same machine: held by
/// this process and its `cargo test`, stopped a few seconds after the last
/// holder of any run is gone.
pub fn broker() -> &'static str {
    static B: OnceLock<String> = OnceLock::new();
    B.get_or_init(|| lease_broker("/tmp/fraudline-kafka-it", true))
}

pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("it-{name}-{}-{nanos}", std::process::id())
}

pub struct Topics {
    pub payments: String,
    pub verdicts: String,
    pub dlq: String,
    pub group: String,
    /// The state log (kafka.state_topic).
    pub state: String,
    /// The snapshot topic (kafka.snapshot_topic), created by fraudline.
    pub snapshot: String,
}

pub async fn create_topics(brokers: &str, name: &str, partitions: i32) -> Topics {
    create_topics_with(brokers, name, partitions, &[]).await
}

/// [`create_topics`], with topic settings for the payments topic (e.g.
/// `max.message.bytes`).
pub async fn create_topics_with(
    brokers: &str,
    name: &str,
    partitions: i32,
    payments_config: &[(&str, &str)],
) -> Topics {
    let t = Topics {
        payments: unique(&format!("{name}-payments")),
        verdicts: unique(&format!("{name}-verdicts")),
        dlq: unique(&format!("{name}-dlq")),
        group: unique(&format!("{name}-group")),
        state: unique(&format!("{name}-state")),
        snapshot: unique(&format!("{name}-snapshots")),
    };
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let mut payments = NewTopic::new(&t.payments, partitions, TopicReplication::Fixed(1));
    for (k, v) in payments_config {
        payments = payments.set(k, v);
    }
    let topics = [
        payments,
        NewTopic::new(&t.verdicts, partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&t.dlq, 1, TopicReplication::Fixed(1)),
        NewTopic::new(&t.state, partitions, TopicReplication::Fixed(1)),
    ];
    // A broker that has just started (or restarted) on a loaded 2-core CI
    // machine can time an admin request out; creating again is safe (a topic
    // that already exists from the first try counts as created). A failure
    // after the retries says what the broker logged.
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)));
    let mut last = String::new();
    for attempt in 1..=4 {
        match admin.create_topics(&topics, &opts).await {
            Ok(res) => {
                let failed: Vec<String> =
                    res.into_iter()
                        .filter_map(|r| match r {
                            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))
                            | Ok(_) => None,
                            Err((name, code)) => Some(format!("{name}: {code}")),
                        })
                        .collect();
                if failed.is_empty() {
                    return t;
                }
                last = failed.join(", ");
            }
            Err(e) => last = e.to_string(),
        }
        eprintln!("create_topics attempt {attempt} on {brokers}: {last}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    panic!(
        "could not create topics on {brokers}: {last}\nbroker log:\n{}",
        broker_log_tail(brokers)
    );
}

/// The last lines of the server log of the broker.sh broker that listens on
/// `brokers` (for failure messages).
pub fn broker_log_tail(brokers: &str) -> String {
    let port = brokers.rsplit(':').next().unwrap_or_default().trim();
    let Ok(dirs) = std::fs::read_dir("/tmp") else {
        return String::new();
    };
    for d in dirs.flatten() {
        let dir = d.path();
        let is_broker = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("fraudline-kafka"));
        let same_port = std::fs::read_to_string(dir.join("port")).is_ok_and(|p| p.trim() == port);
        if is_broker && same_port {
            let log = std::fs::read_to_string(dir.join("logs/server.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            return lines[lines.len().saturating_sub(40)..].join("\n");
        }
    }
    format!("(no broker.sh state under /tmp listens on port {port})")
}

/// Where each produced event landed: event_id -> (partition, offset).
pub type Placement = HashMap<String, (i32, i64)>;

/// The `start_ms` of every generated stream [`produce_events`] writes in
/// this test process (ten minutes before its first call): a test that
/// regenerates the same events uses it too, since what the generator draws
/// depends on the hour of day.
pub fn events_start_ms() -> i64 {
    static START: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *START.get_or_init(|| fraudline::now_ms() - 600_000)
}

/// Produces `count` generated events (alternating protobuf and JSON, keyed by
/// payer) and returns where each landed.
pub async fn produce_events(brokers: &str, topic: &str, count: usize, seed: u64) -> Placement {
    produce_events_from(brokers, topic, 0, count, seed).await
}

/// The stream of generated payments [`produce_events`] writes for `seed`.
pub fn generated(seed: u64) -> Generator {
    Generator::new(GenConfig {
        seed,
        start_ms: events_start_ms(),
        events_per_sec: 200.0,
        fraud_rate: 0.05,
        ..GenConfig::default()
    })
}

/// [`produce_events`] for events `skip..skip + count` of the seed's stream:
/// a test that produces a stream in parts (e.g. before and after a kill)
/// gets the same events as one call for the whole.
pub async fn produce_events_from(
    brokers: &str,
    topic: &str,
    skip: usize,
    count: usize,
    seed: u64,
) -> Placement {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let gen = generated(seed);
    let mut futures = Vec::with_capacity(count);
    for (i, (p, _)) in gen.enumerate().skip(skip).take(count) {
        let (payload, ct) = if i % 2 == 0 {
            (p.to_protobuf(), "application/x-protobuf")
        } else {
            (p.to_json().into_bytes(), "application/json")
        };
        // Half the JSON records say what they are, half rely on detection.
        let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
            key: "content-type",
            value: Some(ct),
        });
        let mut rec = FutureRecord::to(topic)
            .key(&p.payer.account)
            .payload(&payload);
        if i % 4 != 1 {
            rec = rec.headers(headers);
        }
        let f = producer.send_result(rec).map_err(|(e, _)| e).unwrap();
        futures.push((p.event_id.clone(), f));
    }
    let mut placement = HashMap::with_capacity(count);
    for (id, f) in futures {
        let d = f.await.unwrap().map_err(|(e, _)| e).unwrap();
        placement.insert(id, (d.partition, d.offset));
    }
    placement
}

/// Produces raw records (key, payload) and returns their offsets.
pub async fn produce_raw(
    brokers: &str,
    topic: &str,
    records: &[(&str, Vec<u8>)],
) -> Vec<(i32, i64)> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let mut out = Vec::new();
    for (k, v) in records {
        let d = producer
            .send(
                FutureRecord::to(topic).key(*k).payload(v),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        out.push((d.partition, d.offset));
    }
    producer.flush(Duration::from_secs(5)).unwrap();
    out
}

/// The fraudline binary the processes run: cargo's own for tests
/// (`CARGO_BIN_EXE_fraudline`, set only when building tests and benches);
/// `FRAUDLINE_BIN` at run time for an example that includes this harness
/// (examples/chaos.rs).
pub fn fraudline_bin() -> PathBuf {
    match (
        option_env!("CARGO_BIN_EXE_fraudline"),
        std::env::var_os("FRAUDLINE_BIN"),
    ) {
        (Some(b), _) => PathBuf::from(b),
        (None, Some(b)) => PathBuf::from(b),
        (None, None) => panic!("FRAUDLINE_BIN names the fraudline binary"),
    }
}

/// A fraudline process running `run` with a generated config file.
pub struct Fraudline {
    pub child: Child,
    pub log: PathBuf,
    /// The address `/metrics`, `/healthz` and `/readyz` answer on.
    pub http: String,
    /// `[http] listen` as configured.
    listen: String,
    _dir: tempfile::TempDir,
    config: PathBuf,
}

/// The `[http] listen` value tests use: port 0, bound by the process
/// itself (a port picked here and released could be taken by any outbound
/// connection before the process binds it). [`Fraudline::http`] is the
/// address it bound, read from its log.
pub const ANY_PORT: &str = "127.0.0.1:0";

/// A port free now, for tools (Prometheus) that need one named up front.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn config_toml(brokers: &str, t: &Topics, delivery: &str, http: &str, extra: &str) -> String {
    format!(
        "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"{}\"\npayments_topic = \"{}\"\nverdicts_topic = \"{}\"\n\
         dlq_topic = \"{}\"\nstate_topic = \"{}\"\nsnapshot_topic = \"{}\"\nsnapshot_interval_ms = 1000\ndelivery = \"{delivery}\"\ntransactional_id = \"{}-txn\"\ncommit_interval_ms = 100\n\
         statistics_interval_ms = 1000\nsession_timeout_ms = 6000\n{extra}\n[http]\nlisten = \"{http}\"\n[log]\nformat = \"text\"\nlevel = \"info\"\n",
        t.group, t.payments, t.verdicts, t.dlq, t.state, t.snapshot, t.group
    )
}

impl Fraudline {
    pub fn start(config: &str) -> Fraudline {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fraudline.toml");
        std::fs::write(&path, config).unwrap();
        let http = config
            .lines()
            .find_map(|l| l.strip_prefix("listen = \""))
            .map(|l| l.trim_end_matches('"').to_string())
            .unwrap_or_default();
        Fraudline::spawn(dir, path, http)
    }

    fn spawn(dir: tempfile::TempDir, config: PathBuf, listen: String) -> Fraudline {
        let (child, log) = Self::launch(dir.path(), &config);
        let mut f = Fraudline {
            child,
            log,
            http: listen.clone(),
            listen,
            _dir: dir,
            config,
        };
        f.resolve_http();
        f
    }

    fn launch(dir: &std::path::Path, config: &std::path::Path) -> (Child, PathBuf) {
        let log = dir.join(format!("fraudline-{}.log", fraudline::now_ms()));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(fraudline_bin())
            .arg("run")
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        (child, log)
    }

    /// With `listen` on port 0, waits (up to 30 s, or until the process
    /// exits) for the log line naming the bound address.
    fn resolve_http(&mut self) {
        if !self.listen.ends_with(":0") {
            return;
        }
        if let Some(addr) = self.logged_addr("serving /metrics") {
            self.http = addr;
        }
    }

    /// The first log line containing `marker`, waiting up to `limit` (or
    /// until the process exits): the log is written as the process goes, so
    /// a line is not there the moment a test looks.
    pub fn wait_log_line(&mut self, marker: &str, limit: Duration) -> Option<String> {
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(l) = text.lines().find(|l| l.contains(marker)) {
                return Some(l.to_string());
            }
            if start.elapsed() >= limit || !self.alive() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address logged on the first line containing `marker` (waits up
    /// to 60 s, or until the process exits).
    pub fn logged_addr(&mut self, marker: &str) -> Option<String> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let found = text
                .lines()
                .filter(|l| l.contains(marker))
                .find_map(|l| {
                    l.split("addr=")
                        .nth(1)
                        .or_else(|| l.split("\"addr\":\"").nth(1))
                })
                .and_then(|a| a.split([' ', '"']).next())
                .map(str::to_string);
            if found.is_some() || !self.alive() {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Starts the same configuration again (after a kill).
    pub fn restart(mut self) -> Fraudline {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, log) = Self::launch(self._dir.path(), &self.config);
        self.child = child;
        self.log = log;
        self.resolve_http();
        self
    }

    pub fn sigkill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit; returns the exit code.
    pub fn sigterm_and_wait(&mut self, limit: Duration) -> Option<i32> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        // Backtrace frames (RUST_BACKTRACE is set in CI) would push the
        // error itself out of the tail: keep everything else.
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                let t = l.trim_start();
                let frame = t
                    .split_once(": ")
                    .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
                !(frame || t.starts_with("at /") || t.starts_with("at ./"))
            })
            .collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Fraudline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A verdict or DLQ record as read back.
#[derive(Debug, Clone)]
pub struct Read {
    pub partition: i32,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// Reads a topic from the beginning, on all partitions.
pub struct Reader {
    consumer: BaseConsumer,
    pub records: Vec<Read>,
}

impl Reader {
    pub fn new(brokers: &str, topic: &str, read_committed: bool) -> Reader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .set(
                "isolation.level",
                if read_committed {
                    "read_committed"
                } else {
                    "read_uncommitted"
                },
            )
            .create()
            .unwrap();
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        Reader {
            consumer,
            records: Vec::new(),
        }
    }

    /// Polls for up to `d`, appending what arrives.
    pub fn poll_for(&mut self, d: Duration) {
        let start = Instant::now();
        while start.elapsed() < d {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_string(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default())
                                            .to_string(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    self.records.push(Read {
                        partition: m.partition(),
                        key: m.key().unwrap_or_default().to_vec(),
                        payload: m.payload().unwrap_or_default().to_vec(),
                        headers,
                    });
                }
                // Transient (a broker restart): the client reconnects by itself.
                Some(Err(e)) => eprintln!("reader: {e}"),
                None => {}
            }
        }
    }

    /// Polls until `done(records)` holds or `limit` passes. Returns whether it held.
    pub fn poll_until(&mut self, limit: Duration, done: impl Fn(&[Read]) -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if done(&self.records) {
                return true;
            }
            self.poll_for(Duration::from_millis(500));
        }
        done(&self.records)
    }
}

pub fn verdict(r: &Read) -> proto::Verdict {
    proto::Verdict::decode(r.payload.as_slice()).expect("verdict decodes")
}

pub fn distinct_ids(records: &[Read]) -> std::collections::HashSet<String> {
    records.iter().map(|r| verdict(r).event_id).collect()
}

/// The group's committed offsets on `topic`, by partition.
pub fn committed(brokers: &str, group: &str, topic: &str) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition(topic, p.id());
    }
    let c = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    c.elements()
        .iter()
        .map(|e| {
            let o = match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            };
            (e.partition(), o)
        })
        .collect()
}

/// The value of one series in a /metrics body (0 when absent).
pub fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

pub fn wait_http(addr: &str, path: &str, limit: Duration) -> Option<(u16, String)> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(r) = http_get(addr, path) {
            return Some(r);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// A plain HTTP/1.1 GET over a real socket.
/// How many payments partitions an instance holds (its per-partition lag
/// series).
pub fn partitions_held(f: &Fraudline) -> usize {
    http_get(&f.http, "/metrics")
        .map(|(_, body)| {
            body.lines()
                .filter(|l| l.starts_with("fraudline_consumer_lag_messages{"))
                .count()
        })
        .unwrap_or(0)
}

/// Waits (up to 90 s) until every instance holds partitions, all
/// `partitions` are held, and that stays so for 3 s (a rebalance meanwhile
/// pauses the moved partitions). Returns whether it settled.
pub async fn wait_settled(group: &[&Fraudline], partitions: usize) -> bool {
    let started = Instant::now();
    let mut stable_since: Option<Instant> = None;
    while started.elapsed() < Duration::from_secs(90) {
        let counts: Vec<usize> = group.iter().map(|f| partitions_held(f)).collect();
        let settled = counts.iter().all(|c| *c > 0) && counts.iter().sum::<usize>() == partitions;
        match (settled, stable_since) {
            (true, None) => stable_since = Some(Instant::now()),
            (true, Some(t)) if t.elapsed() > Duration::from_secs(3) => return true,
            (false, _) => stable_since = None,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    Some((code, body))
}

pub fn _unused(_: &Path) {}

/// fraudline started in this process by `app::run_with`: its bound addresses,
/// the sender that stops it, and its task.
pub type InProcess = (
    fraudline::app::Bound,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), fraudline::app::AppError>>,
);

/// Starts fraudline in this process and waits (up to 30 s) for the
/// addresses it bound.
pub async fn start_in_process(cfg: fraudline::config::Config) -> InProcess {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(fraudline::app::run_with(
        cfg,
        async move {
            let _ = stop_rx.await;
        },
        Some(bound_tx),
    ));
    let bound = tokio::time::timeout(Duration::from_secs(30), bound_rx)
        .await
        .expect("server starts within 30 s")
        .expect("server reports its addresses");
    (bound, stop_tx, task)
}

/// A tool the ops-kit checks run: on PATH or in the project's tool
/// directory (`${FRAUDLINE_TOOLS_DIR:-~/.cache/fraudline-tools}/bin`). When
/// it is missing, deploy/ci/install-tools.sh (the registries only) runs once
/// per test binary; a tool still missing after that fails the test that
/// needs it, naming the tool: a check that did not run never counts as
/// passed.
pub fn tool(name: &str) -> PathBuf {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    let tools_dir = std::env::var_os("FRAUDLINE_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fraudline-tools"))
        })
        .map(|d| d.join("bin"));
    let find = || {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(tools_dir.clone())
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    };
    if let Some(found) = find() {
        return found;
    }
    INSTALLED.get_or_init(|| {
        eprintln!("{name} is not installed: running deploy/ci/install-tools.sh");
        let status = Command::new(repo().join("deploy/ci/install-tools.sh"))
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status();
        eprintln!("deploy/ci/install-tools.sh: {status:?}");
    });
    find().unwrap_or_else(|| {
        panic!(
            "{name} is not installed and deploy/ci/install-tools.sh could not install it: \
             this check did not run (see that script for where the tool comes from)"
        )
    })
}

/// The PYTHONPATH (`dir` under the tools directory) under which python3
/// runs `import` (installing it once with deploy/ci/install-tools.sh);
/// fails when it cannot be had, so a check that needs it never passes
/// unrun.
fn python_site(dir: &str, import: &str, what: &str) -> PathBuf {
    let tools = std::env::var_os("FRAUDLINE_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/fraudline-tools")
        });
    let site = tools.join(dir);
    let works = || {
        Command::new("python3")
            .args(["-c", import])
            .env("PYTHONPATH", &site)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !works() {
        let _ = Command::new(repo().join("deploy/ci/install-tools.sh")).status();
    }
    assert!(
        works(),
        "python3 with {what} is not installed and deploy/ci/install-tools.sh could not install it: this check did not run"
    );
    site
}

/// protobuf's own Python library (tests/proto3_json.py).
pub fn protobuf_site() -> PathBuf {
    python_site(
        "py-proto",
        "from google.protobuf import json_format",
        "protobuf",
    )
}

/// lightgbm and numpy (the model parity tests).
pub fn lightgbm_site() -> PathBuf {
    python_site("py-lgbm", "import lightgbm, numpy", "lightgbm")
}

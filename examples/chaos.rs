//! The chaos suite (issue 12, item 5): faults driven against fraudline
//! processes (the release binary, `run`) on a real Kafka broker, each in
//! both delivery modes with the state log and snapshots on, on fresh random
//! topics. For every case and mode it counts, from the topics themselves,
//! the records that went in, the verdicts and dead letters that came out,
//! the records that got neither (missing) and the outputs beyond the first
//! per record (duplicated; read_committed in exactly-once mode).
//!
//! Goal: 0 missing in every case, 0 duplicated in exactly-once mode
//! (at-least-once duplicates are allowed and reported).
//!
//! Cases (docs/CHAOS.md says more):
//! - `broker-kill`: payments flowing, the broker SIGKILLed, restarted after
//!   an outage;
//! - `fraudline-kill-loop`: two instances in one group, one SIGKILLed and
//!   restarted every few seconds;
//! - `poison`: garbage bytes, truncated protobuf and invalid JSON mixed in;
//! - `oversize`: records of about 1 MB (under the topic's limit) mixed in;
//! - `add-partitions`: the payments topic grows at run time, and payments go
//!   to the new partitions;
//! - `spill-full`: the in-line API with its audit trail while the broker is
//!   away, the spill directory on a 256 KiB filesystem.
//!
//! `bench/chaos.sh` builds it, starts a broker and runs it (`--short` for
//! CI). By hand:
//! ```text
//! cargo build --release --bin fraudline --example chaos
//! FRAUDLINE_KAFKA_STATE=/tmp/fraudline-kafka-chaos deploy/kafka/broker.sh start
//! target/release/examples/chaos --brokers 127.0.0.1:PORT --broker-state /tmp/fraudline-kafka-chaos --short
//! ```
//! A markdown table goes to stdout, progress to stderr; the exit code is 1
//! when any case failed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Parser;
use common::{config_toml, create_topics_with, Fraudline, Reader, Topics, ANY_PORT};
use fraudline::proto;
use fraudline::tools::gen::{GenConfig, Generator};
use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

const CASES: [&str; 6] = [
    "broker-kill",
    "fraudline-kill-loop",
    "poison",
    "oversize",
    "add-partitions",
    "spill-full",
];
const MODES: [&str; 2] = ["at-least-once", "exactly-once"];
/// Just under the broker's default record limit (1,048,588 bytes with the
/// batch overhead): the size tests/poison.rs found stopping the stream.
const OVERSIZE: usize = 1_019_983;

#[derive(Parser, Debug, Clone)]
#[command(
    about = "fraudline chaos suite: faults in both delivery modes, missing and duplicated counted"
)]
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
    /// deploy/kafka/broker.sh's state directory of the broker at --brokers:
    /// broker-kill and spill-full kill and restart it through it (SKIPPED
    /// without it).
    #[arg(long, env = "FRAUDLINE_KAFKA_STATE")]
    broker_state: Option<PathBuf>,
    /// The CI pass: every case in both modes, small (a few minutes).
    #[arg(long)]
    short: bool,
    /// Cases to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// Delivery modes, comma-separated (default: both).
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    /// Payments per second while a case runs.
    #[arg(long)]
    rate: Option<u64>,
    /// Seconds of traffic of a case without a fault schedule of its own.
    #[arg(long)]
    secs: Option<u64>,
    /// fraudline-kill-loop: SIGKILLs (alternating between the instances).
    #[arg(long)]
    kills: Option<u64>,
    /// fraudline-kill-loop: seconds between two SIGKILLs.
    #[arg(long)]
    kill_every: Option<u64>,
    /// broker-kill: seconds the broker stays dead.
    #[arg(long)]
    outage: Option<u64>,
    /// spill-full: in-line calls while the broker is away.
    #[arg(long)]
    calls: Option<u64>,
    /// How long to wait for the last verdicts after the traffic ends.
    #[arg(long)]
    tail: Option<u64>,
    /// `key = value` TOML lines for every instance's [kafka] section,
    /// separated by `;` (a key the harness sets is replaced), e.g.
    /// 'statistics_interval_ms = 0'.
    #[arg(long, default_value = "")]
    kafka_extra: String,
}

/// The sizes of one run (short or long, then the flags).
#[derive(Debug, Clone)]
struct Scale {
    rate: u64,
    secs: u64,
    kills: u64,
    kill_every: u64,
    outage: u64,
    calls: u64,
    tail: u64,
    oversize: usize,
}

impl Scale {
    fn of(a: &Args) -> Scale {
        let base = if a.short {
            Scale {
                rate: 400,
                secs: 8,
                kills: 1,
                kill_every: 4,
                outage: 5,
                calls: 3_000,
                tail: 120,
                oversize: 2,
            }
        } else {
            Scale {
                rate: 800,
                secs: 60,
                kills: 10,
                kill_every: 8,
                outage: 30,
                calls: 20_000,
                tail: 300,
                oversize: 6,
            }
        };
        Scale {
            rate: a.rate.unwrap_or(base.rate),
            secs: a.secs.unwrap_or(base.secs),
            kills: a.kills.unwrap_or(base.kills),
            kill_every: a.kill_every.unwrap_or(base.kill_every),
            outage: a.outage.unwrap_or(base.outage),
            calls: a.calls.unwrap_or(base.calls),
            tail: a.tail.unwrap_or(base.tail),
            oversize: base.oversize,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pass,
    Fail,
    Skipped,
}

/// One line of the result table.
#[derive(Debug, Clone)]
struct Row {
    case: String,
    mode: String,
    status: Status,
    events_in: usize,
    verdicts: usize,
    dead: usize,
    missing: usize,
    duplicated: usize,
    secs: f64,
    note: String,
}

impl Row {
    fn skipped(case: &str, mode: &str, why: String) -> Row {
        Row {
            case: case.into(),
            mode: mode.into(),
            status: Status::Skipped,
            events_in: 0,
            verdicts: 0,
            dead: 0,
            missing: 0,
            duplicated: 0,
            secs: 0.0,
            note: why,
        }
    }

    /// Pass or fail against the goal, unless already failed or skipped.
    fn judge(mut self) -> Row {
        // The in-line audit trail is at least once in both modes (by design,
        // src/serve/audit.rs): spill-full's duplicates are reported only.
        let dup_ok =
            self.mode != "exactly-once" || self.duplicated == 0 || self.case == "spill-full";
        if self.status == Status::Pass {
            self.status = if self.missing == 0 && dup_ok {
                Status::Pass
            } else {
                Status::Fail
            };
        }
        self
    }
}

// ---------------------------------------------------------------- records --

/// What a produced record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Payment,
    Poison(&'static str),
    Oversize,
}

/// A record to produce.
struct Rec {
    kind: Kind,
    /// The payment's event_id (None for what cannot be decoded).
    id: Option<String>,
    key: String,
    payload: Vec<u8>,
    content_type: Option<&'static str>,
    /// An explicit partition (else the key decides).
    partition: Option<i32>,
}

/// A record the broker acknowledged, and where.
#[derive(Debug, Clone)]
struct Placed {
    kind: Kind,
    id: Option<String>,
    partition: i32,
    offset: i64,
}

/// `n` generated payments, alternating protobuf and JSON (half the JSON
/// without a content-type header: detected), event times in the last hour.
fn payments(seed: u64, n: usize) -> Vec<Rec> {
    let gen = Generator::new(GenConfig {
        seed,
        start_ms: fraudline::now_ms() - 3_000_000,
        events_per_sec: (n as f64 / 2_400.0).max(1.0),
        fraud_rate: 0.05,
        ..GenConfig::default()
    });
    gen.take(n)
        .enumerate()
        .map(|(i, (p, _))| {
            let (payload, ct) = if i % 2 == 0 {
                (p.to_protobuf(), Some("application/x-protobuf"))
            } else if i % 4 == 1 {
                (p.to_json().into_bytes(), None)
            } else {
                (p.to_json().into_bytes(), Some("application/json"))
            };
            Rec {
                kind: Kind::Payment,
                id: Some(p.event_id.clone()),
                key: p.payer.account.clone(),
                payload,
                content_type: ct,
                partition: None,
            }
        })
        .collect()
}

/// A record no decoder takes: `i` picks garbage bytes, a truncated
/// protobuf payment, or invalid JSON.
fn poison(i: usize, sample: &[u8]) -> Rec {
    let (kind, payload, ct) = match i % 3 {
        // 0xFF bytes are no protobuf tag (a varint that never ends) and no JSON.
        0 => {
            let mut b = vec![0xFFu8; 16];
            b.extend((0..200u32).map(|x| (x.wrapping_mul(2_654_435_761) >> 13) as u8));
            ("garbage", b, None)
        }
        // Cut inside the event_id string (field 1): the length says more follows.
        1 => (
            "truncated-protobuf",
            sample[..5.min(sample.len())].to_vec(),
            Some("application/x-protobuf"),
        ),
        _ => (
            "invalid-json",
            format!("{{\"event_id\":\"poison-{i}\",\"amount_minor\":").into_bytes(),
            Some("application/json"),
        ),
    };
    Rec {
        kind: Kind::Poison(kind),
        id: None,
        key: format!("poison-{i}"),
        payload,
        content_type: ct,
        partition: None,
    }
}

/// The producer of a case: idempotent (a retry across a broker restart
/// does not write a payment twice), a delivery timeout longer than any
/// outage, records up to 2 MB, and a quick view of new partitions.
fn producer(brokers: &str) -> Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "600000")
        .set("message.max.bytes", "2000000")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()
        .context("producer")
}

/// Sends `recs` at `rate` a second; returns the acknowledged ones and how
/// many were not produced.
async fn produce(
    brokers: String,
    topic: String,
    recs: Vec<Rec>,
    rate: u64,
) -> Result<(Vec<Placed>, usize)> {
    let producer = producer(&brokers)?;
    let per_tick = (rate / 20).max(1) as usize;
    let started = Instant::now();
    let mut pending = Vec::with_capacity(recs.len());
    for (i, r) in recs.iter().enumerate() {
        if i % per_tick == 0 {
            // Paced: tick k starts at k / 20 s.
            let due = Duration::from_millis((i / per_tick) as u64 * 50);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let mut headers = OwnedHeaders::new();
        if let Some(ct) = r.content_type {
            headers = headers.insert(Header {
                key: "content-type",
                value: Some(ct),
            });
        }
        let mut rec = FutureRecord::to(&topic)
            .key(&r.key)
            .payload(&r.payload)
            .headers(headers);
        if let Some(p) = r.partition {
            rec = rec.partition(p);
        }
        // A full queue or a partition the producer has not seen yet (just
        // added): wait and retry, for a minute at most.
        let tried = Instant::now();
        let f = loop {
            match producer.send_result(rec) {
                Ok(f) => break f,
                Err((
                    KafkaError::MessageProduction(
                        RDKafkaErrorCode::QueueFull | RDKafkaErrorCode::UnknownPartition,
                    ),
                    back,
                )) if tried.elapsed() < Duration::from_secs(60) => {
                    rec = back;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err((e, _)) => bail!("enqueue record {i}: {e}"),
            }
        };
        pending.push((i, f));
    }
    let mut placed = Vec::with_capacity(recs.len());
    let mut failed = 0;
    for (i, f) in pending {
        match f.await {
            Ok(Ok(d)) => placed.push(Placed {
                kind: recs[i].kind,
                id: recs[i].id.clone(),
                partition: d.partition,
                offset: d.offset,
            }),
            Ok(Err((e, _))) => {
                failed += 1;
                if failed < 5 {
                    eprintln!("chaos: record {i} not produced: {e}");
                }
            }
            Err(_) => failed += 1,
        }
    }
    Ok((placed, failed))
}

// ---------------------------------------------------------------- counting --

/// What came out, read back from the verdicts and dead-letter topics.
#[derive(Default)]
struct Outputs {
    /// Verdicts per event_id.
    verdicts: HashMap<String, usize>,
    /// Every verdict's (verdicts partition, decided_at_ms), by event_id.
    seen: HashMap<String, Vec<(i32, i64)>>,
    /// Dead letters per source (partition, offset), and their error kind.
    dead: HashMap<(i32, i64), (usize, String)>,
    read_v: usize,
    read_d: usize,
}

impl Outputs {
    fn take(&mut self, v: &Reader, d: &Reader, payments: &str) {
        for r in &v.records[self.read_v..] {
            if let Ok(verdict) = proto::Verdict::decode(r.payload.as_slice()) {
                self.seen
                    .entry(verdict.event_id.clone())
                    .or_default()
                    .push((r.partition, verdict.decided_at_ms));
                *self.verdicts.entry(verdict.event_id).or_default() += 1;
            }
        }
        self.read_v = v.records.len();
        for r in &d.records[self.read_d..] {
            if let Ok(dl) = proto::DeadLetter::decode(r.payload.as_slice()) {
                if dl.source_topic == payments {
                    let e = self
                        .dead
                        .entry((dl.source_partition, dl.source_offset))
                        .or_insert((0, dl.error_kind.clone()));
                    e.0 += 1;
                }
            }
        }
        self.read_d = d.records.len();
    }

    fn covers(&self, p: &Placed) -> bool {
        p.id.as_ref()
            .is_some_and(|id| self.verdicts.contains_key(id))
            || self.dead.contains_key(&(p.partition, p.offset))
    }
}

/// Reads the outputs until every placed record is covered (or `tail`
/// passes), then 3 s more for late duplicates; fills the row's counts.
fn settle(
    brokers: &str,
    t: &Topics,
    mode: &str,
    placed: &[Placed],
    tail: Duration,
    started: Instant,
    row: &mut Row,
) {
    let committed = mode == "exactly-once";
    let mut v = Reader::new(brokers, &t.verdicts, committed);
    let mut d = Reader::new(brokers, &t.dlq, committed);
    let mut out = Outputs::default();
    let until = Instant::now() + tail;
    let mut done_at = None;
    while Instant::now() < until {
        v.poll_for(Duration::from_millis(300));
        d.poll_for(Duration::from_millis(100));
        out.take(&v, &d, &t.payments);
        if placed.iter().all(|p| out.covers(p)) {
            done_at = Some(started.elapsed());
            break;
        }
    }
    v.poll_for(Duration::from_secs(3));
    d.poll_for(Duration::from_secs(1));
    out.take(&v, &d, &t.payments);

    row.events_in = placed.len();
    row.verdicts = placed
        .iter()
        .filter(|p| {
            p.id.as_ref()
                .is_some_and(|id| out.verdicts.contains_key(id))
        })
        .count();
    row.dead = placed
        .iter()
        .filter(|p| out.dead.contains_key(&(p.partition, p.offset)))
        .count();
    let missing: Vec<&Placed> = placed.iter().filter(|p| !out.covers(p)).collect();
    row.missing = missing.len();
    row.duplicated = out.verdicts.values().map(|n| n - 1).sum::<usize>()
        + out.dead.values().map(|(n, _)| n - 1).sum::<usize>();
    row.secs = done_at.unwrap_or(started.elapsed()).as_secs_f64();
    if !missing.is_empty() {
        let mut by_partition: HashMap<i32, usize> = HashMap::new();
        for p in &missing {
            *by_partition.entry(p.partition).or_default() += 1;
        }
        let mut parts: Vec<_> = by_partition.into_iter().collect();
        parts.sort();
        note(row, format!("missing by partition {parts:?}"));
    }
    // Every poison or oversize record is a dead letter of the right kind.
    let mut kinds: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for p in placed {
        let name = match p.kind {
            Kind::Payment => continue,
            Kind::Poison(what) => what,
            Kind::Oversize => "oversize",
        };
        let e = kinds.entry(name).or_default();
        e.0 += 1;
        if out.dead.contains_key(&(p.partition, p.offset)) {
            e.1 += 1;
        }
    }
    for (name, (n, dead)) in kinds {
        note(row, format!("{name}: {dead} of {n} dead-lettered"));
    }
    let mut wrong = 0;
    for p in placed.iter().filter(|p| p.kind != Kind::Payment) {
        match out.dead.get(&(p.partition, p.offset)) {
            Some((_, kind)) if p.kind != Kind::Oversize || kind == "too_large" => {}
            Some(_) => wrong += 1,
            None => {}
        }
    }
    if wrong > 0 {
        row.status = Status::Fail;
        note(
            row,
            format!("{wrong} oversize records dead-lettered as another kind"),
        );
    }
    // The first duplicated payments: where each was read, and where and
    // when (decided_at_ms) each of its verdicts was made.
    if mode == "exactly-once" && row.duplicated > 0 {
        let at: HashMap<&str, (i32, i64)> = placed
            .iter()
            .filter_map(|p| Some((p.id.as_deref()?, (p.partition, p.offset))))
            .collect();
        let mut dups: Vec<(&String, &Vec<(i32, i64)>)> =
            out.seen.iter().filter(|(_, v)| v.len() > 1).collect();
        dups.sort_by_key(|(_, v)| v[0].1);
        for (id, v) in dups.iter().take(8) {
            eprintln!(
                "chaos: {} {mode}: duplicated {id} (payments partition/offset {:?}): verdicts (partition, decided_at_ms) {v:?}",
                row.case,
                at.get(id.as_str())
            );
        }
    }
    let known: HashSet<&str> = placed.iter().filter_map(|p| p.id.as_deref()).collect();
    let stray = out
        .verdicts
        .keys()
        .filter(|id| !known.contains(id.as_str()))
        .count();
    if stray > 0 {
        note(
            row,
            format!("{stray} verdicts for event_ids never produced"),
        );
    }
}

fn note(row: &mut Row, s: String) {
    if !row.note.is_empty() {
        row.note.push_str("; ");
    }
    row.note.push_str(&s);
}

// ------------------------------------------------------------------ helpers --

/// deploy/kafka/broker.sh `cmd` on the broker in `state`.
fn broker_sh(state: &Path, cmd: &str) -> Result<String> {
    let out = Command::new(common::repo().join("deploy/kafka/broker.sh"))
        .arg(cmd)
        .env("FRAUDLINE_KAFKA_STATE", state)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("run deploy/kafka/broker.sh")?;
    if !out.status.success() {
        bail!("broker.sh {cmd} failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The broker's state directory, if the harness may kill and restart it.
fn killable(args: &Args) -> Result<&Path, String> {
    let s = args
        .broker_state
        .as_deref()
        .ok_or("no --broker-state (FRAUDLINE_KAFKA_STATE): cannot kill the broker")?;
    let pid = s.join("pid");
    let port = std::fs::read_to_string(s.join("port")).unwrap_or_default();
    if !pid.exists() || !args.brokers.ends_with(&format!(":{}", port.trim())) {
        return Err(format!(
            "{} is not the broker.sh state of {}",
            s.display(),
            args.brokers
        ));
    }
    Ok(s)
}

/// A config for one instance of a case (the test harness's, which has the
/// state log and snapshots on), with its own transactional id.
fn instance_config(args: &Args, t: &Topics, mode: &str, n: usize, kafka: &str) -> String {
    let c = config_toml(&args.brokers, t, mode, ANY_PORT, "").replace(
        &format!("transactional_id = \"{}-txn\"", t.group),
        &format!("transactional_id = \"{}-txn-{n}\"", t.group),
    );
    with_kafka_lines(&with_kafka_lines(&c, kafka), &args.kafka_extra)
}

/// `key = value` lines (separated by `;`) set in the [kafka] section, each
/// replacing a line of the same key.
fn with_kafka_lines(config: &str, lines: &str) -> String {
    let mut c = config.to_string();
    for line in lines.split(';').map(str::trim).filter(|l| !l.is_empty()) {
        let key = line.split('=').next().unwrap_or_default().trim();
        let kept: Vec<&str> = c
            .lines()
            .filter(|l| l.split('=').next().unwrap_or_default().trim() != key)
            .collect();
        c = kept
            .join("\n")
            .replacen("[kafka]\n", &format!("[kafka]\n{line}\n"), 1)
            + "\n";
    }
    c
}

fn start(config: &str, what: &str) -> Result<Fraudline> {
    let mut f = Fraudline::start(config);
    if !f.alive() || f.http.ends_with(":0") {
        bail!("{what} did not start; log:\n{}", f.log_tail());
    }
    Ok(f)
}

/// SIGTERM every instance; a non-zero exit is noted (and shown).
fn stop_all(instances: Vec<Fraudline>, row: &mut Row) {
    for (i, mut f) in instances.into_iter().enumerate() {
        match f.sigterm_and_wait(Duration::from_secs(60)) {
            Some(0) => {}
            code => {
                eprintln!("chaos: instance {i} exit {code:?}; log:\n{}", f.log_tail());
                note(row, format!("instance {i} exit {code:?} on SIGTERM"));
            }
        }
    }
}

fn new_row(case: &str, mode: &str) -> Row {
    Row {
        case: case.into(),
        mode: mode.into(),
        status: Status::Pass,
        events_in: 0,
        verdicts: 0,
        dead: 0,
        missing: 0,
        duplicated: 0,
        secs: 0.0,
        note: String::new(),
    }
}

fn seed() -> u64 {
    fraudline::now_ms() as u64
}

// -------------------------------------------------------------------- cases --

/// The common shape of the stream cases: topics, `instances` processes,
/// `recs` produced at the rate while `fault` runs, then the outputs counted.
/// The topics and processes of a stream case.
struct Setup<'a> {
    case: &'static str,
    /// Of the payments topic (and the verdicts topic and state log).
    partitions: i32,
    payments_config: &'a [(&'a str, &'a str)],
    instances: usize,
    /// `key = value` lines for the instances' [kafka] section (`;` apart).
    kafka: &'a str,
}

async fn stream_case<F, Fut>(
    args: &Args,
    s: &Scale,
    setup: Setup<'_>,
    mode: &str,
    recs: Vec<Rec>,
    fault: F,
) -> Result<Row>
where
    F: FnOnce(Vec<Fraudline>, Topics) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<Fraudline>, Topics, String)>>,
{
    let case = setup.case;
    let mut row = new_row(case, mode);
    let t = create_topics_with(&args.brokers, case, setup.partitions, setup.payments_config).await;
    let mut instances = Vec::new();
    for n in 0..setup.instances {
        instances.push(start(
            &instance_config(args, &t, mode, n, setup.kafka),
            &format!("instance {n}"),
        )?);
    }
    let started = Instant::now();
    let load = tokio::spawn(produce(
        args.brokers.clone(),
        t.payments.clone(),
        recs,
        s.rate,
    ));
    let (mut instances, t, what) = fault(instances, t).await?;
    let (placed, unproduced) = load.await??;
    if unproduced > 0 {
        note(&mut row, format!("{unproduced} records not produced"));
    }
    if !what.is_empty() {
        note(&mut row, what);
    }
    let tail = Duration::from_secs(s.tail);
    let brokers = args.brokers.clone();
    settle(&brokers, &t, mode, &placed, tail, started, &mut row);
    let failed = row.missing > 0 || (mode == "exactly-once" && row.duplicated > 0);
    if failed {
        let keep =
            std::env::temp_dir().join(format!("fraudline-chaos-logs/{case}-{mode}-{}", seed()));
        if std::fs::create_dir_all(&keep).is_ok() {
            for (i, f) in instances.iter().enumerate() {
                // Every log of the instance (one per start).
                let dir = f.log.parent().map(Path::to_path_buf).unwrap_or_default();
                for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().to_string();
                    if name.ends_with(".log") {
                        let _ = std::fs::copy(e.path(), keep.join(format!("instance-{i}-{name}")));
                    }
                }
            }
            note(&mut row, format!("logs kept in {}", keep.display()));
        }
    }
    if row.missing > 0 {
        for (i, f) in instances.iter_mut().enumerate() {
            eprintln!(
                "chaos: {case} {mode}: instance {i} alive={}; log tail:\n{}",
                f.alive(),
                f.log_tail()
            );
        }
    }
    stop_all(instances, &mut row);
    Ok(row)
}

async fn broker_kill(args: &Args, s: &Scale, mode: &str) -> Result<Row> {
    let state = match killable(args) {
        Ok(st) => st.to_path_buf(),
        Err(why) => return Ok(Row::skipped("broker-kill", mode, why)),
    };
    // Traffic before, during and after the outage.
    let secs = 3 + s.outage + 3;
    let recs = payments(seed(), (s.rate * secs) as usize);
    let outage = s.outage;
    let brokers = args.brokers.clone();
    stream_case(
        args,
        s,
        Setup {
            case: "broker-kill",
            partitions: 3,
            payments_config: &[],
            instances: 1,
            kafka: "",
        },
        mode,
        recs,
        |inst, t| async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            eprintln!("chaos: broker-kill {mode}: SIGKILL the broker for {outage} s");
            broker_sh(&state, "kill")?;
            tokio::time::sleep(Duration::from_secs(outage)).await;
            let back_at = Instant::now();
            let again = broker_sh(&state, "restart")?;
            if again != brokers {
                bail!("the broker came back on {again}, not {brokers}");
            }
            let what = format!(
                "broker dead {outage} s, restart took {:.1} s",
                back_at.elapsed().as_secs_f64()
            );
            Ok((inst, t, what))
        },
    )
    .await
}

async fn kill_loop(args: &Args, s: &Scale, mode: &str) -> Result<Row> {
    let secs = s.kills * s.kill_every + 4;
    let recs = payments(seed(), (s.rate * secs) as usize);
    let (kills, every) = (s.kills, s.kill_every);
    stream_case(
        args,
        s,
        Setup {
            case: "fraudline-kill-loop",
            partitions: 6,
            payments_config: &[],
            instances: 2,
            kafka: "",
        },
        mode,
        recs,
        |mut inst, t| async move {
            for k in 0..kills {
                tokio::time::sleep(Duration::from_secs(every)).await;
                let i = (k % 2) as usize;
                eprintln!(
                    "chaos: fraudline-kill-loop {mode}: SIGKILL instance {i} ({} of {kills})",
                    k + 1
                );
                let mut f = inst.remove(i);
                f.sigkill();
                let f = tokio::task::block_in_place(|| f.restart());
                inst.insert(i, f);
            }
            Ok((inst, t, format!("{kills} SIGKILLs, {every} s apart")))
        },
    )
    .await
}

async fn poison_case(args: &Args, s: &Scale, mode: &str) -> Result<Row> {
    let mut recs = payments(seed(), (s.rate * s.secs) as usize);
    let sample = recs[0].payload.clone();
    // One in 25 is poison, of the three kinds in turn.
    let mut i = 0;
    let mut at = 10;
    while at < recs.len() {
        recs.insert(at, poison(i, &sample));
        i += 1;
        at += 25;
    }
    stream_case(
        args,
        s,
        Setup {
            case: "poison",
            partitions: 3,
            payments_config: &[],
            instances: 1,
            kafka: "",
        },
        mode,
        recs,
        |inst, t| async move { Ok((inst, t, format!("{i} poison records"))) },
    )
    .await
}

async fn oversize_case(args: &Args, s: &Scale, mode: &str) -> Result<Row> {
    let mut recs = payments(seed(), (s.rate * s.secs) as usize);
    let step = recs.len() / (s.oversize + 1);
    for k in (1..=s.oversize).rev() {
        let payload: Vec<u8> = (0..OVERSIZE).map(|i| b'a' + ((i + k) % 26) as u8).collect();
        recs.insert(
            k * step,
            Rec {
                kind: Kind::Oversize,
                id: None,
                key: format!("oversize-{k}"),
                payload,
                content_type: None,
                partition: None,
            },
        );
    }
    let n = s.oversize;
    stream_case(
        args,
        s,
        Setup {
            case: "oversize",
            partitions: 3,
            payments_config: &[("max.message.bytes", "2000000")],
            instances: 1,
            kafka: "",
        },
        mode,
        recs,
        |inst, t| async move { Ok((inst, t, format!("{n} records of {OVERSIZE} bytes"))) },
    )
    .await
}

/// The payments topic grows while payments flow. The instances run with the
/// lag measurement off (`statistics_interval_ms = 0`): its metadata
/// requests would otherwise bring the new partitions to the consumer's
/// notice by the way, and hide whether the consumer's own refresh does.
async fn add_partitions(args: &Args, s: &Scale, mode: &str) -> Result<Row> {
    let (before, after) = (2, 4);
    let mut recs = payments(seed(), (s.rate * s.secs) as usize);
    // The second half: every other payment to a new partition explicitly
    // (the rest by key, which now spreads over all four too).
    let half = recs.len() / 2;
    for (j, r) in recs[half..].iter_mut().enumerate() {
        if j % 2 == 0 {
            r.partition = Some(before + (j / 2) as i32 % (after - before));
        }
    }
    let to_new = recs[half..]
        .iter()
        .filter(|r| r.partition.is_some())
        .count();
    let grow_at = Duration::from_millis(s.secs * 1000 / 4);
    let brokers = args.brokers.clone();
    stream_case(
        args,
        s,
        Setup {
            case: "add-partitions",
            partitions: before,
            payments_config: &[],
            instances: 2,
            kafka: "statistics_interval_ms = 0",
        },
        mode,
        recs,
        |inst, t| async move {
            tokio::time::sleep(grow_at).await;
            eprintln!("chaos: add-partitions {mode}: {} from {before} to {after} partitions", t.payments);
            let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .create()?;
            let grow = NewPartitions::new(&t.payments, after as usize);
            for r in admin
                .create_partitions([&grow], &AdminOptions::new())
                .await?
            {
                r.map_err(|(topic, e)| anyhow!("create partitions of {topic}: {e}"))?;
            }
            Ok((
                inst,
                t,
                format!("{before} -> {after} partitions at {grow_at:?}, {to_new} payments sent to the new ones"),
            ))
        },
    )
    .await
}

/// A tmpfs mounted for the case, unmounted when dropped.
struct Mount(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Mount {
    fn tmpfs(size: &str) -> Result<Mount, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("spill");
        std::fs::create_dir_all(&path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs refused: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Mount(path, dir))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// In-line calls made and answered.
#[derive(Default)]
struct Calls {
    made: usize,
    answered: usize,
    /// Answered with the overload policy's verdict (`fraudline-degraded`).
    degraded: usize,
    ids: Vec<String>,
}

impl Calls {
    /// `n` calls of POST /v1/score, one after another.
    async fn make(
        &mut self,
        http: &reqwest::Client,
        url: &str,
        events: &mut impl Iterator<Item = fraudline::event::Payment>,
        n: u64,
    ) -> Result<()> {
        for _ in 0..n {
            let p = events.next().ok_or_else(|| anyhow!("generator ended"))?;
            self.made += 1;
            self.ids.push(p.event_id.clone());
            match http
                .post(url)
                .header("content-type", "application/json")
                .header("x-fraudline-timeout-ms", "1000")
                .body(p.to_json())
                .send()
                .await
            {
                Ok(r) if r.status() == 200 => {
                    self.answered += 1;
                    if r.headers().contains_key("fraudline-degraded") {
                        self.degraded += 1;
                    }
                }
                Ok(r) => eprintln!("chaos: spill-full: call answered {}", r.status()),
                Err(e) => eprintln!("chaos: spill-full: call failed: {e}"),
            }
        }
        Ok(())
    }
}

/// The in-line API with its audit trail while the broker is away, the
/// spill file on a 256 KiB filesystem. Counts: calls, answers, audit
/// records on the verdicts topic after the broker is back, and records
/// fraudline counted as dropped (fraudline_audit_dropped_records_total).
async fn spill_full(args: &Args, s: &Scale, mode: &str) -> Result<Row> {
    const CASE: &str = "spill-full";
    let state = match killable(args) {
        Ok(st) => st.to_path_buf(),
        Err(why) => return Ok(Row::skipped(CASE, mode, why)),
    };
    let mount = match Mount::tmpfs("256k") {
        Ok(m) => m,
        Err(why) => return Ok(Row::skipped(CASE, mode, why)),
    };
    let mut row = new_row(CASE, mode);
    let t = create_topics_with(&args.brokers, CASE, 1, &[]).await;
    let config = format!(
        "{}[inline]\nenabled = true\ngrpc_listen = \"\"\nhttp_listen = \"127.0.0.1:0\"\n\
         audit = true\naudit_buffer = 200\naudit_spill_dir = \"{}\"\n",
        instance_config(args, &t, mode, 0, ""),
        mount.0.display()
    );
    // Half the filesystem is taken by another file (freed mid-outage).
    std::fs::write(mount.0.join("filler"), vec![0u8; 128 * 1024])?;
    let mut f = start(&config, "the in-line instance")?;
    let url = match f.logged_addr("in-line HTTP API") {
        Some(a) => format!("http://{a}/v1/score"),
        None => bail!("no in-line HTTP address; log:\n{}", f.log_tail()),
    };
    let metrics_of = |f: &Fraudline| {
        common::http_get(&f.http, "/metrics")
            .map(|x| x.1)
            .unwrap_or_default()
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut events = Generator::new(GenConfig {
        seed: seed(),
        start_ms: fraudline::now_ms() - 600_000,
        events_per_sec: 100.0,
        ..GenConfig::default()
    })
    .map(|(p, _)| p);
    let started = Instant::now();
    let mut calls = Calls::default();
    calls.make(&http, &url, &mut events, 100).await?;
    eprintln!(
        "chaos: spill-full {mode}: SIGKILL the broker, {} calls",
        s.calls
    );
    broker_sh(&state, "kill")?;
    let outage_at = Instant::now();
    // Half the calls fill the spill directory (deliveries time out after
    // 5 s and spill; new records spill at once)...
    calls.make(&http, &url, &mut events, s.calls / 2).await?;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let full = metrics_of(&f);
    // ... then the operator frees space, and the other half spills into it.
    std::fs::remove_file(mount.0.join("filler"))?;
    calls
        .make(&http, &url, &mut events, s.calls - s.calls / 2)
        .await?;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let during = metrics_of(&f);
    let spilled = common::metric(&during, "fraudline_audit_spilled_records_total");
    let dropped_full = common::metric(&full, "fraudline_audit_dropped_records_total");
    let dropped_during = common::metric(&during, "fraudline_audit_dropped_records_total");
    let again = broker_sh(&state, "restart")?;
    if again != args.brokers {
        bail!("the broker came back on {again}, not {}", args.brokers);
    }
    let outage = outage_at.elapsed();
    let Calls {
        made: calls,
        answered,
        degraded,
        ids,
    } = calls;

    // The audit records that reach the verdicts topic, until each call is
    // delivered or counted as dropped (or the tail passes).
    let mut v = Reader::new(&args.brokers, &t.verdicts, false);
    let until = Instant::now() + Duration::from_secs(s.tail);
    let mut delivered: HashMap<String, usize> = HashMap::new();
    let mut read = 0;
    let take = |v: &Reader, read: &mut usize, delivered: &mut HashMap<String, usize>| {
        for r in &v.records[*read..] {
            if r.headers.get("fraudline.source").map(String::as_str) == Some("inline") {
                if let Ok(verdict) = proto::Verdict::decode(r.payload.as_slice()) {
                    *delivered.entry(verdict.event_id).or_default() += 1;
                }
            }
        }
        *read = v.records.len();
    };
    let mut dropped;
    let mut backlog;
    // Progress: (delivered, dropped) and when it last changed.
    let mut last = (0, 0.0);
    let mut moved_at = Instant::now();
    loop {
        v.poll_for(Duration::from_millis(500));
        take(&v, &mut read, &mut delivered);
        let m = metrics_of(&f);
        dropped = common::metric(&m, "fraudline_audit_dropped_records_total");
        backlog = common::metric(&m, "fraudline_audit_backlog_records");
        let accounted = delivered.len() as f64 + dropped;
        if (delivered.len(), dropped) != last {
            last = (delivered.len(), dropped);
            moved_at = Instant::now();
        }
        let done = accounted >= calls as f64 && backlog == 0.0;
        // Nothing delivered or dropped for 20 s: what is left will not come.
        let stuck = moved_at.elapsed() > Duration::from_secs(20);
        if done || stuck || Instant::now() > until {
            break;
        }
    }
    v.poll_for(Duration::from_secs(2));
    take(&v, &mut read, &mut delivered);
    let undelivered = ids.iter().filter(|id| !delivered.contains_key(*id)).count();
    let lost_uncounted = undelivered.saturating_sub(dropped as usize);
    row.events_in = calls;
    row.verdicts = answered;
    row.dead = dropped as usize;
    row.missing = (calls - answered) + lost_uncounted;
    row.duplicated = delivered.values().map(|n| n - 1).sum();
    row.secs = started.elapsed().as_secs_f64();
    note(
        &mut row,
        format!(
            "in-line: {answered} of {calls} answered ({degraded} degraded); audit: {} delivered, \
             {} dropped and counted (fraudline_audit_dropped_records_total), {spilled} spilled, \
             {dropped_full} dropped while full, {dropped_during} by the end of the outage, backlog {backlog} at the end; broker away {:.0} s",
            delivered.len(),
            dropped,
            outage.as_secs_f64()
        ),
    );
    let known: HashSet<&String> = ids.iter().collect();
    let stray = delivered.keys().filter(|id| !known.contains(id)).count();
    if stray > 0 {
        note(
            &mut row,
            format!("{stray} audit records for calls never made"),
        );
    }
    if (dropped as usize) > undelivered {
        note(
            &mut row,
            format!(
                "dropped counts {} more than were undelivered",
                dropped as usize - undelivered
            ),
        );
    }
    if row.missing > 0 {
        eprintln!("chaos: spill-full {mode}: log tail:\n{}", f.log_tail());
    }
    stop_all(vec![f], &mut row);
    drop(mount);
    Ok(row)
}

async fn run_case(args: Args, s: Scale, case: String, mode: String) -> Result<Row> {
    let (args, s, mode) = (&args, &s, mode.as_str());
    match case.as_str() {
        "broker-kill" => broker_kill(args, s, mode).await,
        "fraudline-kill-loop" => kill_loop(args, s, mode).await,
        "poison" => poison_case(args, s, mode).await,
        "oversize" => oversize_case(args, s, mode).await,
        "add-partitions" => add_partitions(args, s, mode).await,
        "spill-full" => spill_full(args, s, mode).await,
        other => bail!("unknown case {other} (known: {})", CASES.join(", ")),
    }
}

fn print_row(r: &Row) {
    let status = match r.status {
        Status::Pass => "pass",
        Status::Fail => "**FAIL**",
        Status::Skipped => "SKIPPED",
    };
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {status} | {} |",
        r.case, r.mode, r.events_in, r.verdicts, r.dead, r.missing, r.duplicated, r.secs, r.note
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !args.bin.exists() {
        bail!(
            "{}: no such binary (cargo build --release --bin fraudline)",
            args.bin.display()
        );
    }
    // The test harness's processes run this binary.
    std::env::set_var("FRAUDLINE_BIN", std::fs::canonicalize(&args.bin)?);
    let s = Scale::of(&args);
    let cases: Vec<String> = if args.cases.is_empty() {
        CASES.iter().map(|c| c.to_string()).collect()
    } else {
        args.cases.clone()
    };
    let modes: Vec<String> = if args.modes.is_empty() {
        MODES.iter().map(|c| c.to_string()).collect()
    } else {
        args.modes.clone()
    };
    eprintln!(
        "chaos: {} mode, {s:?}",
        if args.short { "short" } else { "long" }
    );
    println!("| case | mode | events in | verdicts out | dead letters | missing | duplicated | s | result | notes |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---|---|");
    let began = Instant::now();
    let mut rows = Vec::new();
    for case in &cases {
        for mode in &modes {
            eprintln!("chaos: {case} {mode} ...");
            let t0 = Instant::now();
            // A case that panics (a harness assertion) fails, the rest run.
            let run = tokio::spawn(run_case(
                args.clone(),
                s.clone(),
                case.clone(),
                mode.clone(),
            ));
            let row = match run.await {
                Ok(Ok(row)) => row.judge(),
                Ok(Err(e)) => {
                    let mut r = new_row(case, mode);
                    r.status = Status::Fail;
                    r.secs = t0.elapsed().as_secs_f64();
                    r.note = format!("error: {e:#}").replace('\n', " / ");
                    r
                }
                Err(e) => {
                    let mut r = new_row(case, mode);
                    r.status = Status::Fail;
                    r.secs = t0.elapsed().as_secs_f64();
                    r.note = format!("panicked: {e}");
                    r
                }
            };
            eprintln!(
                "chaos: {case} {mode}: {:?} in {:.1} s",
                row.status,
                t0.elapsed().as_secs_f64()
            );
            print_row(&row);
            rows.push(row);
        }
    }
    let count = |st: Status| rows.iter().filter(|r| r.status == st).count();
    let (passed, failed, skipped) = (
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Skipped),
    );
    println!();
    println!(
        "chaos: {passed} passed, {failed} failed, {skipped} skipped, in {:.0} s",
        began.elapsed().as_secs_f64()
    );
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

//! The stream path end to end against a real Kafka broker: every event gets
//! exactly one verdict or one DLQ record, exactly-once survives SIGKILL,
//! at-least-once loses nothing, SIGTERM drains.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use fraudline::proto;
use prost::Message as _;

const EVENTS: usize = 20_000;

/// Malformed or invalid records, each with the DLQ error kind it must get.
fn malformed() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let now = fraudline::now_ms();
    let ev = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = serde_json::json!({
            "event_id": "bad", "event_time_ms": now - 1000,
            "payer": {"account": "1"}, "payee": {"account": "2"},
            "amount_minor": 100, "currency": "VND"
        });
        f(&mut v);
        v.to_string().into_bytes()
    };
    vec![
        ("k1", b"{not json".to_vec(), "bad_json"),
        ("k2", vec![0xff, 0xff, 0xff, 0x01], "bad_protobuf"),
        ("k3", ev(&|v| v["event_id"] = "".into()), "missing_field"),
        (
            "k4",
            ev(&|v| v["amount_minor"] = (-5).into()),
            "invalid_amount",
        ),
        (
            "k5",
            ev(&|v| v["currency"] = "ZZZ".into()),
            "unknown_currency",
        ),
        (
            "k6",
            ev(&|v| v["event_time_ms"] = (now + 86_400_000).into()),
            "future_timestamp",
        ),
        ("k7", Vec::new(), "empty"),
        ("k8", vec![b' '; 70_000], "too_large"),
        (
            "k9",
            [b"{\"event_id\":\"".as_slice(), &[0xc3, 0x28], b"\"}"].concat(),
            "bad_utf8",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_gets_one_verdict_and_malformed_ones_go_to_the_dlq() {
    let brokers = broker();
    let t = create_topics(brokers, "all", 3).await;
    let bad = malformed();
    let raw: Vec<(&str, Vec<u8>)> = bad.iter().map(|(k, v, _)| (*k, v.clone())).collect();
    let bad_offsets = produce_raw(brokers, &t.payments, &raw).await;
    let placement = produce_events(brokers, &t.payments, EVENTS, 1).await;

    let mut f = Fraudline::start(&config_toml(brokers, &t, "at-least-once", ANY_PORT, ""));
    let http = f.http.clone();

    let mut verdicts = Reader::new(brokers, &t.verdicts, false);
    let all = verdicts.poll_until(Duration::from_secs(120), |r| r.len() >= EVENTS);
    assert!(
        all,
        "only {} verdicts; log:\n{}",
        verdicts.records.len(),
        f.log_tail()
    );
    // Anything extra would have arrived by now.
    verdicts.poll_for(Duration::from_secs(2));
    assert_eq!(
        verdicts.records.len(),
        EVENTS,
        "no duplicates without a crash"
    );
    let ids = distinct_ids(&verdicts.records);
    let expected: HashSet<String> = placement.keys().cloned().collect();
    assert_eq!(
        ids, expected,
        "verdict event_ids match the input one to one"
    );

    // Keyed by the payer account, like the input.
    for r in verdicts.records.iter().take(200) {
        let v = verdict(r);
        assert!(!r.key.is_empty());
        assert!(v.decision != proto::Decision::Unspecified as i32);
        assert_eq!(v.rules_version, "builtin-1");
        assert!(v.decided_at_ms >= v.event_time_ms);
    }

    let mut dlq = Reader::new(brokers, &t.dlq, false);
    assert!(dlq.poll_until(Duration::from_secs(30), |r| r.len() >= bad.len()));
    dlq.poll_for(Duration::from_secs(1));
    assert_eq!(
        dlq.records.len(),
        bad.len(),
        "malformed records go to the DLQ and nowhere else"
    );
    let mut kinds_by_offset: HashMap<(i32, i64), String> = HashMap::new();
    for r in &dlq.records {
        let dl = proto::DeadLetter::decode(r.payload.as_slice()).unwrap();
        assert_eq!(r.headers["fraudline.error.kind"], dl.error_kind);
        assert_eq!(r.headers["fraudline.source.topic"], t.payments);
        assert_eq!(
            r.headers["fraudline.source.partition"],
            dl.source_partition.to_string()
        );
        assert_eq!(
            r.headers["fraudline.source.offset"],
            dl.source_offset.to_string()
        );
        assert!(!r.headers["fraudline.error"].is_empty());
        assert_eq!(dl.source_topic, t.payments);
        kinds_by_offset.insert((dl.source_partition, dl.source_offset), dl.error_kind);
    }
    for ((_, _, kind), at) in bad.iter().zip(&bad_offsets) {
        assert_eq!(
            kinds_by_offset.get(at).map(String::as_str),
            Some(*kind),
            "record at {at:?}"
        );
    }

    // The service reports what it did.
    let (code, body) =
        wait_http(&http, "/metrics", Duration::from_secs(5)).expect("/metrics answers");
    assert_eq!(code, 200);
    assert!(body.contains("fraudline_events_consumed_total"), "{body}");
    assert!(
        body.contains("fraudline_verdicts_total{decision=\"ALLOW\"}"),
        "{body}"
    );
    assert!(
        body.contains("fraudline_dlq_records_total{reason=\"bad_json\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("fraudline_engine_latency_seconds_bucket"),
        "{body}"
    );
    assert!(
        body.contains("fraudline_end_to_end_latency_seconds_bucket"),
        "{body}"
    );
    assert_eq!(http_get(&http, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(http_get(&http, "/readyz").map(|r| r.0), Some(200));
    // Lag comes from librdkafka statistics (1 s interval in this test).
    let lag = wait_until(Duration::from_secs(10), || {
        http_get(&http, "/metrics")
            .is_some_and(|(_, b)| b.contains("fraudline_consumer_lag_messages{"))
    });
    assert!(lag, "consumer lag per partition is exported");

    assert_eq!(
        f.sigterm_and_wait(Duration::from_secs(30)),
        Some(0),
        "{}",
        f.log_tail()
    );
}

fn wait_until(limit: Duration, f: impl Fn() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_survives_sigkill_mid_stream() {
    // More events than the others: the stream must still be mid-way when
    // the reader has seen its first 3,000 committed verdicts.
    const EOS_EVENTS: usize = 3 * EVENTS;
    let brokers = broker();
    let t = create_topics(brokers, "eos", 3).await;
    let placement = produce_events(brokers, &t.payments, EOS_EVENTS, 2).await;
    // Small transactions so the kill lands between and inside them.
    let cfg = config_toml(brokers, &t, "exactly-once", "", "commit_max_events = 500\n");
    let mut f = Fraudline::start(&cfg);

    let mut committed = Reader::new(brokers, &t.verdicts, true);
    let some = committed.poll_until(Duration::from_secs(120), |r| r.len() >= 3_000);
    assert!(some, "no progress; log:\n{}", f.log_tail());
    assert!(
        committed.records.len() < EOS_EVENTS,
        "killed too late to prove anything"
    );
    f.sigkill();
    let seen_at_kill = committed.records.len();

    let mut f = f.restart();
    let all = committed.poll_until(Duration::from_secs(180), |r| {
        distinct_ids(r).len() >= EOS_EVENTS
    });
    assert!(
        all,
        "only {} distinct; log:\n{}",
        distinct_ids(&committed.records).len(),
        f.log_tail()
    );
    committed.poll_for(Duration::from_secs(3));
    let ids = distinct_ids(&committed.records);
    let expected: HashSet<String> = placement.keys().cloned().collect();
    assert_eq!(ids, expected);
    assert_eq!(
        committed.records.len(),
        EOS_EVENTS,
        "a read_committed reader sees each event_id exactly once (killed after {seen_at_kill})"
    );
    // The aborted transaction's records are in the log, but hidden from read_committed.
    let mut uncommitted = Reader::new(brokers, &t.verdicts, false);
    uncommitted.poll_until(Duration::from_secs(30), |r| r.len() >= EOS_EVENTS);
    assert!(uncommitted.records.len() >= EOS_EVENTS);
    assert_eq!(
        f.sigterm_and_wait(Duration::from_secs(30)),
        Some(0),
        "{}",
        f.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_loses_nothing_across_sigkill() {
    let brokers = broker();
    let t = create_topics(brokers, "alo", 3).await;
    let placement = produce_events(brokers, &t.payments, EVENTS, 3).await;
    let cfg = config_toml(brokers, &t, "at-least-once", "", "");
    let mut f = Fraudline::start(&cfg);
    let mut verdicts = Reader::new(brokers, &t.verdicts, false);
    let some = verdicts.poll_until(Duration::from_secs(120), |r| r.len() >= 3_000);
    assert!(some, "no progress; log:\n{}", f.log_tail());
    f.sigkill();
    let mut f = f.restart();
    let expected: HashSet<String> = placement.keys().cloned().collect();
    let all = verdicts.poll_until(Duration::from_secs(180), |r| {
        distinct_ids(r).len() >= EVENTS
    });
    assert!(
        all,
        "only {} distinct; log:\n{}",
        distinct_ids(&verdicts.records).len(),
        f.log_tail()
    );
    assert_eq!(distinct_ids(&verdicts.records), expected, "none missing");
    eprintln!(
        "at-least-once: {} verdicts for {EVENTS} events ({} repeated after the kill)",
        verdicts.records.len(),
        verdicts.records.len() - EVENTS
    );
    assert_eq!(
        f.sigterm_and_wait(Duration::from_secs(30)),
        Some(0),
        "{}",
        f.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_commits_only_what_was_delivered() {
    let brokers = broker();
    let t = create_topics(brokers, "drain", 3).await;
    let placement = produce_events(brokers, &t.payments, EVENTS, 4).await;
    let cfg = config_toml(brokers, &t, "at-least-once", "", "");
    let mut f = Fraudline::start(&cfg);
    let mut verdicts = Reader::new(brokers, &t.verdicts, false);
    let some = verdicts.poll_until(Duration::from_secs(120), |r| r.len() >= 2_000);
    assert!(some, "no progress; log:\n{}", f.log_tail());
    assert_eq!(
        f.sigterm_and_wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        f.log_tail()
    );
    let log = std::fs::read_to_string(&f.log).unwrap();
    assert!(log.contains("drained and committed"), "{log}");

    verdicts.poll_for(Duration::from_secs(2));
    let have = distinct_ids(&verdicts.records);
    let committed = committed(brokers, &t.group, &t.payments);
    let committed_total: i64 = committed.values().sum();
    assert!(committed_total > 0, "the drain commits");
    // Every event below a committed offset has its verdict: nothing in
    // flight was lost by the shutdown.
    let mut below = 0;
    let mut missing = Vec::new();
    for (id, (p, o)) in &placement {
        if *o < committed.get(p).copied().unwrap_or(0) {
            below += 1;
            if !have.contains(id) {
                missing.push((p, o));
            }
        }
    }
    missing.sort();
    assert!(
        missing.is_empty(),
        "{} events committed without a verdict (first {:?}); committed {committed:?}, verdicts {}",
        missing.len(),
        &missing[..missing.len().min(5)],
        have.len()
    );
    assert_eq!(below as i64, committed_total);
    // And the drain committed everything it had verdicts for.
    assert_eq!(
        have.len() as i64,
        committed_total,
        "every verdict's offset was committed by the drain"
    );
}

/// Scoring lanes keep each payer's order: with two lanes and six
/// partitions, every payer's `payer.count_1h` counts up 1, 2, 3, ... in the
/// order its payments sit in the log (a lane that scored a payer's payments
/// out of order, or two lanes that split a partition, would show a count
/// out of place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_payers_payments_are_scored_in_log_order_across_lanes() {
    let brokers = broker();
    let t = create_topics(brokers, "lanes", 6).await;
    let gen = fraudline::tools::gen::Generator::new(fraudline::tools::gen::GenConfig {
        seed: 5,
        accounts: 30,
        fraud_rate: 0.0,
        start_ms: events_start_ms(),
        events_per_sec: 50.0,
    });
    let payments: Vec<fraudline::event::Payment> = gen.take(1_800).map(|(p, _)| p).collect();
    let records: Vec<(&str, Vec<u8>)> = payments
        .iter()
        .map(|p| (p.payer.account.as_str(), p.to_protobuf()))
        .collect();
    let placed = produce_raw(brokers, &t.payments, &records).await;
    let cfg = config_toml(brokers, &t, "at-least-once", "", "scoring_threads = 2\n")
        + "[engine]\nexplain_in_verdicts = true\n";
    let mut f = Fraudline::start(&cfg);
    let mut verdicts = Reader::new(brokers, &t.verdicts, false);
    let all = verdicts.poll_until(Duration::from_secs(120), |r| r.len() >= payments.len());
    assert!(
        all,
        "only {} verdicts; log:\n{}",
        verdicts.records.len(),
        f.log_tail()
    );
    let count: HashMap<String, f64> = verdicts
        .records
        .iter()
        .map(verdict)
        .map(|v| {
            let n = v.features.get("payer.count_1h").copied().unwrap_or(-1.0);
            (v.event_id, n)
        })
        .collect();
    // Per payer, in log order (partition, offset).
    type InLog<'a> = Vec<((i32, i64), &'a str)>;
    let mut by_payer: HashMap<&str, InLog> = HashMap::new();
    for (p, at) in payments.iter().zip(&placed) {
        by_payer
            .entry(p.payer.account.as_str())
            .or_default()
            .push((*at, p.event_id.as_str()));
    }
    let mut checked = 0;
    for (payer, mut seq) in by_payer {
        seq.sort();
        assert!(
            seq.windows(2).all(|w| w[0].0 .0 == w[1].0 .0),
            "a payer's payments share one partition"
        );
        let counts: Vec<f64> = seq.iter().map(|(_, id)| count[*id]).collect();
        let expected: Vec<f64> = (1..=seq.len()).map(|n| n as f64).collect();
        assert_eq!(
            counts,
            expected,
            "payer {} scored out of log order",
            fraudline::mask(payer)
        );
        checked += seq.len();
    }
    assert_eq!(checked, payments.len());
    assert_eq!(
        f.sigterm_and_wait(Duration::from_secs(30)),
        Some(0),
        "{}",
        f.log_tail()
    );
}

/// Issue 15 (event-age policy, the stream side): with
/// `stream_max_event_age_ms` set (off by default: the topic is the log of
/// record, and a backfill of history must teach state, as
/// tests/restart_state.rs relies on), a payment two days old in the
/// payments topic is scored without moving state (reason STALE_EVENT; the
/// payer's next payment does not count it), and is dead-lettered with kind
/// `stale_event` under `stale_events = "refuse"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_payments_are_scored_without_moving_state_or_refused() {
    let brokers = broker();
    let now = fraudline::now_ms();
    let ev = |id: &str, t: i64| {
        serde_json::json!({
            "event_id": id, "event_time_ms": t,
            "payer": {"account": "5550001"}, "payee": {"account": "5550002"},
            "amount_minor": 100, "currency": "VND"
        })
        .to_string()
        .into_bytes()
    };
    let records = vec![
        ("5550001", ev("fresh", now - 2_000)),
        ("5550001", ev("stale", now - 2 * 86_400_000)),
        ("5550001", ev("next", now - 1_000)),
    ];

    let t = create_topics(brokers, "stale", 1).await;
    produce_raw(brokers, &t.payments, &records).await;
    let f = Fraudline::start(&config_toml(
        brokers,
        &t,
        "at-least-once",
        ANY_PORT,
        "[engine]\nexplain_in_verdicts = true\n[limits]\nstream_max_event_age_ms = 86400000\n",
    ));
    let mut verdicts = Reader::new(brokers, &t.verdicts, false);
    assert!(
        verdicts.poll_until(Duration::from_secs(60), |r| r.len() >= 3),
        "{}",
        f.log_tail()
    );
    let by_id: HashMap<String, proto::Verdict> = verdicts
        .records
        .iter()
        .map(|r| {
            let v = verdict(r);
            (v.event_id.clone(), v)
        })
        .collect();
    let stale = &by_id["stale"];
    assert!(
        stale.reasons.iter().any(|r| r.rule_id == "STALE_EVENT"),
        "{stale:?}"
    );
    assert_eq!(by_id["next"].features["payer.count_1h"], 2.0);
    assert_eq!(by_id["next"].features["payer.count_24h"], 2.0);
    drop(f);

    let t = create_topics(brokers, "stale-refuse", 1).await;
    produce_raw(brokers, &t.payments, &records).await;
    let f = Fraudline::start(&config_toml(
        brokers,
        &t,
        "at-least-once",
        ANY_PORT,
        "[limits]\nstale_events = \"refuse\"\nstream_max_event_age_ms = 86400000\n",
    ));
    let mut verdicts = Reader::new(brokers, &t.verdicts, false);
    let mut dlq = Reader::new(brokers, &t.dlq, false);
    assert!(
        dlq.poll_until(Duration::from_secs(60), |r| !r.is_empty()),
        "{}",
        f.log_tail()
    );
    assert!(verdicts.poll_until(Duration::from_secs(30), |r| r.len() >= 2));
    let dl = proto::DeadLetter::decode(dlq.records[0].payload.as_slice()).unwrap();
    assert_eq!(dl.error_kind, "stale_event", "{dl:?}");
    let ids: HashSet<String> = verdicts
        .records
        .iter()
        .map(|r| verdict(r).event_id)
        .collect();
    assert_eq!(
        ids,
        HashSet::from(["fresh".to_string(), "next".to_string()])
    );
}

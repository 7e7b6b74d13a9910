//! In-line verdicts reach the verdicts topic even across a Kafka outage:
//! the API keeps answering while the broker is down, audit records wait in
//! memory and the spill file, and are delivered when the broker is back.
//! This test runs its own broker (state in /tmp/fraudline-kafka-inline) so
//! it can kill and restart it; the harness's lease stops it and removes that
//! state when this test binary ends, even if the test fails.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;

use fraudline::config::Config;
use fraudline::tools::gen::{GenConfig, Generator};

const STATE: &str = "/tmp/fraudline-kafka-inline";

fn series(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_are_delivered_after_the_broker_comes_back() {
    assert!(
        std::env::var("FRAUDLINE_TEST_BROKERS").is_err(),
        "this test kills its own broker: unset FRAUDLINE_TEST_BROKERS"
    );
    let brokers = start_broker(STATE);
    let t = create_topics(&brokers, "inline-audit", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[kafka]\nbrokers = \"{brokers}\"\npayments_topic = \"\"\nstate_topic = \"\"\nverdicts_topic = \"{}\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"text\"\nlevel = \"warn\"\n\
         [inline]\nenabled = true\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\
         audit = true\naudit_buffer = 50\naudit_spill_dir = \"{}\"\n",
        t.verdicts,
        dir.path().display()
    );
    let cfg = Config::from_parts(Some(&toml), None, Vec::new()).unwrap();
    let (bound, stop_tx, server) = start_in_process(cfg).await;
    let url = format!("http://{}/v1/score", bound.inline_http.unwrap());
    let metrics_url = format!("http://{}/metrics", bound.http.unwrap());
    let mut grpc = fraudline::proto::scoring_client::ScoringClient::connect(format!(
        "http://{}",
        bound.grpc.unwrap()
    ))
    .await
    .unwrap();
    let mut events = Generator::new(GenConfig {
        seed: std::process::id() as u64,
        start_ms: fraudline::now_ms() - 120_000,
        ..GenConfig::default()
    })
    .map(|(p, _)| p);
    let http = reqwest::Client::new();
    let mut expected = HashSet::new();
    let mut verdicts = Reader::new(&brokers, &t.verdicts, false);

    // Broker up: verdicts arrive.
    for _ in 0..20 {
        let p = events.next().unwrap();
        let r = http.post(&url).body(p.to_json()).send().await.unwrap();
        assert_eq!(r.status(), 200);
        expected.insert(p.event_id);
    }
    assert!(verdicts.poll_until(Duration::from_secs(60), |r| distinct_ids(r).len() >= 20));

    // Broker down: every call is still answered at once, over both protocols.
    broker_cmd(STATE, "kill");
    let mut slowest = Duration::ZERO;
    for i in 0..300 {
        let p = events.next().unwrap();
        let t0 = Instant::now();
        if i % 2 == 0 {
            let r = http.post(&url).body(p.to_json()).send().await.unwrap();
            assert_eq!(r.status(), 200);
        } else {
            grpc.score(p.to_wire()).await.unwrap();
        }
        slowest = slowest.max(t0.elapsed());
        expected.insert(p.event_id);
    }
    assert!(
        slowest < Duration::from_millis(500),
        "a call waited {slowest:?} on the missing broker"
    );
    // Deliveries time out (5 s) and the records go to the spill file.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let m = reqwest::get(&metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let backlog = series(&m, "fraudline_audit_backlog_records");
    assert!(backlog >= 300.0, "backlog {backlog}\n{m}");
    assert!(
        series(&m, "fraudline_audit_spilled_records_total") >= 250.0,
        "{m}"
    );
    assert_eq!(series(&m, "fraudline_audit_dropped_records_total"), 0.0);

    // Broker back: everything is delivered, nothing is lost.
    let again = broker_cmd(STATE, "restart");
    assert_eq!(again, brokers);
    let all = verdicts.poll_until(Duration::from_secs(120), |r| {
        distinct_ids(r).len() >= expected.len()
    });
    assert!(
        all,
        "{} of {} audit records after the broker came back",
        distinct_ids(&verdicts.records).len(),
        expected.len()
    );
    assert_eq!(distinct_ids(&verdicts.records), expected);
    for r in &verdicts.records {
        assert_eq!(
            r.headers.get("fraudline.source").map(String::as_str),
            Some("inline")
        );
        assert!(r.headers.contains_key("fraudline.event"));
        assert!(r.headers.contains_key("fraudline.decision"));
    }
    // The backlog empties.
    let start = Instant::now();
    loop {
        let m = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if series(&m, "fraudline_audit_backlog_records") == 0.0 {
            assert!(series(&m, "fraudline_audit_sent_records_total") >= expected.len() as f64);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "backlog stays:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = stop_tx.send(());
    assert!(server.await.unwrap().is_ok());
    broker_cmd(STATE, "stop");
}

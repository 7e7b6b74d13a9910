//! Stream and in-line API in one process on one Engine: the Kafka stream
//! keeps producing verdicts while the in-line API answers, and in-line
//! verdicts land on the same verdicts topic marked `fraudline.source: inline`.

mod common;

use std::time::Duration;

use common::*;

use fraudline::config::Config;
use fraudline::tools::gen::{GenConfig, Generator};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_and_inline_run_together() {
    let brokers = broker();
    let t = create_topics(brokers, "inline-both", 2).await;
    let produced = produce_events(brokers, &t.payments, 500, 77).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"{}\"\npayments_topic = \"{}\"\nverdicts_topic = \"{}\"\n\
         dlq_topic = \"{}\"\nstate_topic = \"{}\"\nsnapshot_topic = \"{}\"\nwarmup_lookback_ms = 0\n\
         [http]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"text\"\nlevel = \"warn\"\n\
         [inline]\nenabled = true\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\
         audit = true\naudit_spill_dir = \"{}\"\n",
        t.group,
        t.payments,
        t.verdicts,
        t.dlq,
        t.state,
        t.snapshot,
        dir.path().display()
    );
    let cfg = Config::from_parts(Some(&toml), None, Vec::new()).unwrap();
    let (bound, stop_tx, server) = start_in_process(cfg).await;
    let mut verdicts = Reader::new(brokers, &t.verdicts, false);
    assert!(
        verdicts.poll_until(Duration::from_secs(120), |r| r.len() >= produced.len()),
        "stream verdicts: {}",
        verdicts.records.len()
    );
    // The stream is ready, so /readyz says so.
    let ready = reqwest::get(format!("http://{}/readyz", bound.http.unwrap()))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    // In-line calls, both protocols, answered beside the stream.
    let mut events = Generator::new(GenConfig {
        seed: 99,
        start_ms: fraudline::now_ms() - 60_000,
        ..GenConfig::default()
    })
    .map(|(mut p, _)| {
        p.event_id = format!("inline-{}", p.event_id);
        p
    });
    let mut inline_ids = std::collections::HashSet::new();
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/score", bound.inline_http.unwrap());
    let mut grpc = fraudline::proto::scoring_client::ScoringClient::connect(format!(
        "http://{}",
        bound.grpc.unwrap()
    ))
    .await
    .unwrap();
    for i in 0..20 {
        let p = events.next().unwrap();
        if i % 2 == 0 {
            let r = http.post(&url).body(p.to_json()).send().await.unwrap();
            assert_eq!(r.status(), 200);
        } else {
            grpc.score(p.to_wire()).await.unwrap();
        }
        inline_ids.insert(p.event_id);
    }
    assert!(verdicts.poll_until(Duration::from_secs(60), |r| {
        r.iter()
            .filter(|r| r.headers.get("fraudline.source").map(String::as_str) == Some("inline"))
            .count()
            >= 20
    }));
    let audited: std::collections::HashSet<String> = verdicts
        .records
        .iter()
        .filter(|r| r.headers.get("fraudline.source").map(String::as_str) == Some("inline"))
        .map(|r| verdict(r).event_id)
        .collect();
    assert_eq!(audited, inline_ids);
    // Every streamed event has its verdict too, none marked inline.
    let streamed: std::collections::HashSet<String> = verdicts
        .records
        .iter()
        .filter(|r| !r.headers.contains_key("fraudline.source"))
        .map(|r| verdict(r).event_id)
        .collect();
    assert_eq!(streamed, produced.keys().cloned().collect());
    let _ = stop_tx.send(());
    assert!(server.await.unwrap().is_ok());
}

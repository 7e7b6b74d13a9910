//! One scoring path (issue 13): `fraudline backtest --config` gives, for the
//! same events and the same config file, the verdicts the running service
//! gave on a real broker: decision, score and reasons, event for event.
//!
//! The config is not the default one where it matters: its `[features]`
//! night hours make the events' hour (12:00 UTC) night, which the
//! defaults' night (00-06) does not, and its rule file adds a rule on
//! `payer.night_share_24h`; a backtest without the config must therefore
//! differ, which shows the comparison can fail.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use fraudline::tools::gen::{GenConfig, Generator};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// decision, score, reason ids (sorted), per event_id.
type Verdicts = HashMap<String, (String, i64, Vec<String>)>;

fn backtest(config: Option<&std::path::Path>, events: &std::path::Path, out: &std::path::Path) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_fraudline"));
    cmd.arg("backtest")
        .arg("--events")
        .arg(events)
        .arg("--verdicts-out")
        .arg(out)
        .env_remove("RUST_LOG");
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    } else {
        // The same rule file, without the rest of the config.
        cmd.arg("--rules").arg(events.with_file_name("rules.toml"));
    }
    let run = cmd.output().expect("run fraudline backtest");
    assert!(
        run.status.success(),
        "backtest failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
}

fn read_backtest(path: &std::path::Path) -> Verdicts {
    std::fs::read_to_string(path)
        .expect("verdicts written")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON verdict");
            let mut reasons: Vec<String> = v["reasons"]
                .as_array()
                .expect("reasons")
                .iter()
                .map(|r| r.as_str().unwrap_or_default().to_string())
                .collect();
            reasons.sort();
            (
                v["event_id"].as_str().unwrap_or_default().to_string(),
                (
                    v["decision"].as_str().unwrap_or_default().to_string(),
                    v["score"].as_i64().unwrap_or(-1),
                    reasons,
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backtest_with_the_service_config_gives_the_streams_verdicts() {
    let brokers = broker();
    // One partition, produced in event-time order: the stream's order is
    // the backtest's.
    let t = create_topics(brokers, "parity", 1).await;
    let dir = tempfile::tempdir().unwrap();

    // The events happen at 12:00 UTC, the latest one at least 10 minutes
    // ago (never on the wall clock's hour: from 00:00 to 06:00 UTC the
    // defaults' night held the events' hour, the config's night could not,
    // and the night rule never fired). Night in this config is exactly that
    // hour, which the defaults' night (00-06 UTC) does not hold.
    let now = fraudline::now_ms();
    let (day_ms, hour_ms) = (86_400_000, 3_600_000);
    let noon = now - now.rem_euclid(day_ms) + 12 * hour_ms;
    let start_ms = if noon + 600_000 <= now {
        noon
    } else {
        noon - day_ms
    };
    let (night_start, night_end) = (12u8, 13u8);
    let rules = dir.path().join("rules.toml");
    let pack = std::fs::read_to_string(repo().join("deploy/rules/default.toml")).unwrap();
    std::fs::write(
        &rules,
        format!(
            "{pack}\n[[rule]]\nid = \"PARITY_NIGHT\"\nwhen = \"payer.night_share_24h > 0.5\"\n\
             score = 5\nreason = \"most of the payer's day at night\"\n"
        ),
    )
    .unwrap();
    let extra = format!(
        "warmup_lookback_ms = 0\n[rules]\nfile = \"{}\"\n\
         [features]\nutc_offset_minutes = 0\nnight_start_hour = {night_start}\nnight_end_hour = {night_end}\n\
         [engine]\nexplain_in_verdicts = true\n",
        rules.display()
    );
    let toml = config_toml(brokers, &t, "at-least-once", "", &extra);
    let config = dir.path().join("fraudline.toml");
    std::fs::write(&config, &toml).unwrap();

    // The events: written for the backtest, produced for the stream.
    let n = 3_000;
    let events: Vec<_> = Generator::new(GenConfig {
        seed: 4242,
        start_ms,
        events_per_sec: 200.0,
        fraud_rate: 0.05,
        ..GenConfig::default()
    })
    .take(n)
    .collect();
    let file = dir.path().join("events.jsonl");
    let lines: Vec<String> = events
        .iter()
        .map(|(p, label)| {
            let mut j = fraudline::event::JsonEvent::from_wire(&p.to_wire());
            j.label = Some(label.to_string());
            serde_json::to_string(&j).unwrap()
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for (p, _) in &events {
        let bytes = p.to_protobuf();
        let record = FutureRecord::to(&t.payments)
            .key(&p.payer.account)
            .payload(&bytes);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let f = Fraudline::start(&toml);
    let mut reader = Reader::new(brokers, &t.verdicts, false);
    assert!(
        reader.poll_until(Duration::from_secs(120), |r| distinct_ids(r).len() >= n),
        "{} of {n} verdicts\n{}",
        distinct_ids(&reader.records).len(),
        f.log_tail()
    );
    let stream: Verdicts = reader
        .records
        .iter()
        .map(|r| {
            let v = verdict(r);
            let mut reasons: Vec<String> = v.reasons.iter().map(|r| r.rule_id.clone()).collect();
            reasons.sort();
            let decision = fraudline::proto::Decision::try_from(v.decision)
                .map(|d| d.as_str_name().trim_start_matches("DECISION_").to_string())
                .unwrap_or_default();
            (v.event_id, (decision, i64::from(v.score), reasons))
        })
        .collect();

    let with_config = dir.path().join("with-config.jsonl");
    backtest(Some(&config), &file, &with_config);
    let replayed = read_backtest(&with_config);
    assert_eq!(replayed.len(), n, "one backtest verdict per event");
    let differing: Vec<_> = stream
        .iter()
        .filter(|(id, v)| replayed.get(*id) != Some(v))
        .take(5)
        .map(|(id, v)| format!("{id}: stream {v:?}, backtest {:?}", replayed.get(id)))
        .collect();
    assert!(
        differing.is_empty(),
        "backtest --config differs from the stream:\n{}",
        differing.join("\n")
    );
    let flagged = stream.values().filter(|v| v.0 != "ALLOW").count();
    let night = stream
        .values()
        .filter(|v| v.2.iter().any(|r| r == "PARITY_NIGHT"))
        .count();
    eprintln!("{n} events: {flagged} flagged, {night} by the night rule; all equal");
    assert!(flagged > 0 && night > 0, "the comparison saw no rule fire");

    // Without the config (defaults: another night), the same rule file
    // gives other verdicts: the comparison above could fail.
    let without = dir.path().join("without-config.jsonl");
    backtest(None, &file, &without);
    let defaults = read_backtest(&without);
    let changed = stream
        .iter()
        .filter(|(id, v)| defaults.get(*id) != Some(v))
        .count();
    eprintln!("without --config: {changed} of {n} verdicts differ");
    assert!(changed > 0, "the config changed no verdict");
}

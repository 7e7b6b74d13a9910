//! The blocklist file on a running service, on the real broker: an entry
//! added to the file holds the payee's next payment within about two
//! seconds, its removal lets the next one through, and a half-written file
//! is refused while the active list stays.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn payment(id: &str, payee: &str) -> Vec<u8> {
    format!(
        r#"{{"event_id":"{id}","event_time_ms":{},"amount_minor":150000,"currency":"VND",
            "payer":{{"account":"1000000001"}},"payee":{{"account":"{payee}"}},"phone":"0912 345 678"}}"#,
        fraudline::now_ms()
    )
    .into_bytes()
}

fn install(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Sends one payment and returns its verdict's (decision, reason rule ids, blocklist version).
async fn score(
    brokers: &str,
    t: &Topics,
    reader: &mut Reader,
    id: &str,
    payee: &str,
) -> (i32, Vec<String>, u64) {
    produce_raw(brokers, &t.payments, &[("1000000001", payment(id, payee))]).await;
    assert!(
        reader.poll_until(Duration::from_secs(30), |r| r
            .iter()
            .any(|x| verdict(x).event_id == id)),
        "no verdict for {id}"
    );
    let v = reader
        .records
        .iter()
        .map(verdict)
        .find(|v| v.event_id == id)
        .unwrap();
    (
        v.decision,
        v.reasons.iter().map(|r| r.rule_id.clone()).collect(),
        v.blocklist_version,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changes_take_effect_on_live_traffic_and_bad_files_are_refused() {
    let brokers = broker();
    let t = create_topics(brokers, "blocklist", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("list.csv");
    install(
        &path,
        "kind,value,action,reason\ndevice,dev-none,HOLD,placeholder\n",
    );
    let extra = format!(
        "warmup_lookback_ms = 0\n[blocklist]\nfiles = [\"{}\"]\ncountry_code = \"84\"\nwatch_interval_ms = 200\n",
        path.display()
    );
    let mut f = Fraudline::start(&config_toml(brokers, &t, "at-least-once", "", &extra));
    let mut reader = Reader::new(brokers, &t.verdicts, false);
    let allow = fraudline::proto::Decision::Allow as i32;
    let hold = fraudline::proto::Decision::Hold as i32;

    let (d, _, v1) = score(brokers, &t, &mut reader, "b1", "5550001").await;
    assert_eq!(d, allow);
    assert_eq!(v1, 1);

    // Listed: the next payment is held, within about 2 s of the write.
    install(
        &path,
        "kind,value,action,reason\naccount,555-0001,HOLD,reported mule\n",
    );
    let listed_at = Instant::now();
    let mut n = 0;
    let (decision, reasons, v2) = loop {
        n += 1;
        let r = score(brokers, &t, &mut reader, &format!("b2-{n}"), "5550001").await;
        if r.0 == hold || listed_at.elapsed() > Duration::from_secs(10) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(decision, hold, "{}", f.log_tail());
    assert!(
        listed_at.elapsed() < Duration::from_secs(3),
        "took {:?}",
        listed_at.elapsed()
    );
    assert_eq!(reasons, ["BLOCKLIST_ACCOUNT"]);
    assert_eq!(v2, 2);

    // A phone listed in national form matches the payment's other spelling.
    install(
        &path,
        "kind,value,action,reason\nphone,+84912345678,REVIEW,scam calls\n",
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let (d, reasons, v3) = score(brokers, &t, &mut reader, "b3", "5550001").await;
    assert_eq!(d, fraudline::proto::Decision::Review as i32);
    assert_eq!(reasons, ["BLOCKLIST_PHONE"]);
    assert_eq!(v3, 3);

    // Half-written: refused; version 3 keeps deciding.
    install(
        &path,
        "kind,value,action,reason\naccount,5550001,HOLD,mule\naccount,99",
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let (d, _, v) = score(brokers, &t, &mut reader, "b4", "5550001").await;
    assert_eq!((d, v), (fraudline::proto::Decision::Review as i32, 3));
    let log = std::fs::read_to_string(&f.log).unwrap();
    assert!(log.contains("half-written"), "{log}");
    assert_eq!(f.sigterm_and_wait(Duration::from_secs(30)), Some(0));
}

fn entry(kind: &str, value: &str, action: &str) -> Vec<u8> {
    use prost::Message as _;
    fraudline::proto::BlocklistEntry {
        kind: kind.into(),
        value: value.into(),
        action: action.into(),
        reason: "pushed by the central list".into(),
        source: "scheme".into(),
        added_at_ms: fraudline::now_ms(),
        expires_at_ms: 0,
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_pushed_to_the_list_topic_hold_within_two_seconds_and_removals_release() {
    let brokers = broker();
    let t = create_topics(brokers, "bltopic", 1).await;
    let list_topic = create_topics(brokers, "bltopic-list", 1).await.payments;
    // Already on the topic before the start: read from the beginning.
    produce_raw(
        brokers,
        &list_topic,
        &[("device:dev-early", entry("device", "dev-early", "HOLD"))],
    )
    .await;
    let extra = format!(
        "warmup_lookback_ms = 0\n[blocklist]\ntopic = \"{list_topic}\"\ntopic_catch_up_ms = 20000\n"
    );
    let mut f = Fraudline::start(&config_toml(brokers, &t, "at-least-once", "", &extra));
    let mut reader = Reader::new(brokers, &t.verdicts, false);
    let allow = fraudline::proto::Decision::Allow as i32;
    let hold = fraudline::proto::Decision::Hold as i32;

    let (d, _, v0) = score(brokers, &t, &mut reader, "t1", "7770001").await;
    assert_eq!(d, allow, "{}", f.log_tail());
    assert!(v0 >= 1);

    produce_raw(
        brokers,
        &list_topic,
        &[("account:777-0001", entry("account", "777-0001", "HOLD"))],
    )
    .await;
    let pushed = Instant::now();
    let mut n = 0;
    let (d, reasons, v1) = loop {
        n += 1;
        let r = score(brokers, &t, &mut reader, &format!("t2-{n}"), "7770001").await;
        if r.0 == hold || pushed.elapsed() > Duration::from_secs(10) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(d, hold, "{}", f.log_tail());
    assert!(
        pushed.elapsed() < Duration::from_secs(2),
        "took {:?}",
        pushed.elapsed()
    );
    assert_eq!(reasons, ["BLOCKLIST_ACCOUNT"]);
    assert!(v1 > v0, "every swap has a higher version");

    // A tombstone removes it.
    produce_raw(brokers, &list_topic, &[("account:777-0001", Vec::new())]).await;
    let removed = Instant::now();
    let mut n = 0;
    let (d, _, v2) = loop {
        n += 1;
        let r = score(brokers, &t, &mut reader, &format!("t3-{n}"), "7770001").await;
        if r.0 == allow || removed.elapsed() > Duration::from_secs(10) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(d, allow);
    assert!(v2 > v1);
    let log = std::fs::read_to_string(&f.log).unwrap();
    assert!(log.contains("blocklist topic caught up"), "{log}");
    assert_eq!(f.sigterm_and_wait(Duration::from_secs(30)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_reloads_during_a_stream_lose_and_duplicate_nothing() {
    let brokers = broker();
    let t = create_topics(brokers, "blreload", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("list.jsonl");
    install(&path, "{\"kind\":\"device\",\"value\":\"dev-0\"}\n");
    let extra = format!(
        "warmup_lookback_ms = 0\n[blocklist]\nfiles = [\"{}\"]\nwatch_interval_ms = 100\n",
        path.display()
    );
    let mut f = Fraudline::start(&config_toml(brokers, &t, "at-least-once", "", &extra));
    let list = |i: usize| -> String {
        (0..=i * 500)
            .map(|d| {
                format!("{{\"kind\":\"device\",\"value\":\"dev-{d}\",\"action\":\"REVIEW\"}}\n")
            })
            .collect()
    };
    let mut reader = Reader::new(brokers, &t.verdicts, false);
    // First wave: swap only once the stream is scoring it, so the swaps land
    // mid-stream however long the instance took to start.
    let mut placement = produce_events(brokers, &t.payments, 3_000, 41).await;
    assert!(
        reader.poll_until(Duration::from_secs(120), |r| !r.is_empty()),
        "{}",
        f.log_tail()
    );
    for i in 1..=4 {
        install(&path, &list(i));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Second wave: produced once the fourth list is active, and met by four
    // more swaps while it is scored.
    let active = Instant::now();
    while !std::fs::read_to_string(&f.log)
        .unwrap_or_default()
        .lines()
        .any(|l| {
            l.contains("blocklist active")
                && (l.contains("file_entries=2001") || l.contains("\"file_entries\":2001"))
        })
    {
        assert!(
            active.elapsed() < Duration::from_secs(30),
            "{}",
            f.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = tokio::spawn(produce_events(
        brokers,
        t.payments.clone().leak(),
        3_000,
        42,
    ));
    for i in 5..=8 {
        install(&path, &list(i));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    placement.extend(second.await.unwrap());
    assert!(
        reader.poll_until(Duration::from_secs(120), |r| r.len() >= placement.len()),
        "{}",
        f.log_tail()
    );
    reader.poll_for(Duration::from_secs(2));
    let ids = distinct_ids(&reader.records);
    assert_eq!(reader.records.len(), placement.len(), "no duplicates");
    assert_eq!(ids.len(), placement.len(), "none lost");
    let versions: std::collections::BTreeSet<u64> = reader
        .records
        .iter()
        .map(|r| verdict(r).blocklist_version)
        .collect();
    assert!(
        versions.len() >= 2,
        "the list was swapped mid-stream: {versions:?}"
    );
    assert_eq!(f.sigterm_and_wait(Duration::from_secs(30)), Some(0));
}

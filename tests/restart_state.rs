//! Restarting every instance keeps the 30-day knowledge (issue 11): after 7
//! days of event-time history, two instances in one group are killed and
//! started again. Their state comes back from the snapshot topic (the state
//! log's replay lookback is set to 1 s, so the log alone cannot bring the
//! history back), and the payments scored after the restart carry the same
//! feature values as those of an instance that never stopped: new payee /
//! device, payee age, 24 h windows, velocity and amount history.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

const DAY: i64 = 86_400_000;
const PAYERS: usize = 40;
const HISTORY: usize = 480;

fn payment(id: &str, t_ms: i64, payer: &str, payee: &str, device: &str, amount: i64) -> Vec<u8> {
    serde_json::json!({
        "event_id": id, "event_time_ms": t_ms,
        "payer": {"account": payer}, "payee": {"account": payee, "kind": "EWALLET"},
        "amount_minor": amount, "currency": "VND", "device_id": device,
        "channel": "CHANNEL_MOBILE"
    })
    .to_string()
    .into_bytes()
}

fn features(r: &Read) -> (String, BTreeMap<String, String>) {
    let v = verdict(r);
    let f = v
        .features
        .iter()
        .map(|(k, x)| (k.clone(), format!("{x:.6}")))
        .collect();
    (v.event_id, f)
}

fn snapshots_written(f: &Fraudline) -> f64 {
    http_get(&f.http, "/metrics")
        .map(|(_, body)| metric(&body, "fraudline_state_snapshots_total{result=\"written\"}"))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_instances_restarted_after_seven_days_of_history_know_what_a_running_one_knows() {
    let brokers = broker();
    let group = create_topics(brokers, "snap-g", 4).await;
    let reference_own = create_topics(brokers, "snap-r", 4).await;
    let reference = Topics {
        payments: group.payments.clone(),
        ..reference_own
    };
    // The state log's lookback does not reach the history: after the
    // restart only the snapshot holds it.
    let cfg = |t: &Topics| {
        config_toml(
            brokers,
            t,
            "at-least-once",
            ANY_PORT,
            "warmup_lookback_ms = 1000\n",
        ) + "[engine]\nexplain_in_verdicts = true\n"
    };
    let _steady = Fraudline::start(&cfg(&reference));
    let mut two = vec![
        Fraudline::start(&cfg(&group)),
        Fraudline::start(&cfg(&group)),
    ];

    // 7 days of history, oldest first: each payer pays payees of its own
    // (and one shared payee) from one of two devices.
    let now = fraudline::now_ms();
    let step = (7 * DAY - 2 * 3_600_000) / HISTORY as i64;
    let mut history = Vec::new();
    for i in 0..HISTORY {
        let p = i % PAYERS;
        let payer = format!("ACC-H-{p:04}");
        let payee = if (i / PAYERS) % 6 == 5 {
            "EW-SHARED-0001".to_string()
        } else {
            format!("EW-H-{p:04}-{}", (i / PAYERS) % 4)
        };
        let device = format!("DEV-H-{p:04}-{}", (i / PAYERS) % 2);
        let t = now - 7 * DAY + step * i as i64;
        let amount = 100_000 + (i as i64 * 7_919) % 900_000;
        history.push((
            payer.clone(),
            payment(&format!("hist-{i}"), t, &payer, &payee, &device, amount),
        ));
    }
    let raw: Vec<(&str, Vec<u8>)> = history
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    produce_raw(brokers, &group.payments, &raw).await;

    let mut vg = Reader::new(brokers, &group.verdicts, false);
    let mut vr = Reader::new(brokers, &reference.verdicts, false);
    for (reader, name) in [(&mut vg, "group"), (&mut vr, "reference")] {
        assert!(
            reader.poll_until(Duration::from_secs(120), |r| distinct_ids(r).len()
                >= HISTORY),
            "{name}: {} of {HISTORY} history verdicts; log:\n{}",
            distinct_ids(&reader.records).len(),
            two[0].log_tail()
        );
    }
    // Two more snapshot cuts after the whole history was scored: the second
    // was certainly taken after it.
    let before: f64 = two.iter().map(snapshots_written).sum();
    let waited = std::time::Instant::now();
    while two.iter().map(snapshots_written).sum::<f64>() < before + 2.0 {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "no snapshot written; logs:\n{}\n---\n{}",
            two[0].log_tail(),
            two[1].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every instance of the group goes, then comes back.
    for f in &mut two {
        f.sigkill();
    }
    let two: Vec<Fraudline> = two.into_iter().map(Fraudline::restart).collect();
    for f in &two {
        let waited = std::time::Instant::now();
        while http_get(&f.http, "/readyz").map(|r| r.0) != Some(200) {
            assert!(
                waited.elapsed() < Duration::from_secs(60),
                "not ready after restart; log:\n{}",
                f.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (_, body) = wait_http(&f.http, "/metrics", Duration::from_secs(5)).expect("/metrics");
        assert!(
            metric(&body, "fraudline_state_snapshot_restored_entities") > 0.0,
            "no entity restored from the snapshot; log:\n{}",
            f.log_tail()
        );
    }

    // After the restart: each payer pays a payee it paid days ago from a
    // known device, and a new payee from a new device.
    let now = fraudline::now_ms();
    let mut probes = Vec::new();
    for p in 0..PAYERS {
        let payer = format!("ACC-H-{p:04}");
        let known = format!("EW-H-{p:04}-0");
        let device = format!("DEV-H-{p:04}-0");
        probes.push((
            payer.clone(),
            payment(&format!("known-{p}"), now, &payer, &known, &device, 450_000),
        ));
        probes.push((
            payer.clone(),
            payment(
                &format!("new-{p}"),
                now + 1,
                &payer,
                &format!("EW-NEW-{p:04}"),
                &format!("DEV-NEW-{p:04}"),
                450_000,
            ),
        ));
    }
    let raw: Vec<(&str, Vec<u8>)> = probes
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    produce_raw(brokers, &group.payments, &raw).await;
    let want = HISTORY + probes.len();
    for (reader, name) in [(&mut vg, "group"), (&mut vr, "reference")] {
        assert!(
            reader.poll_until(Duration::from_secs(120), |r| distinct_ids(r).len() >= want),
            "{name}: {} of {want} verdicts after the restart; log:\n{}",
            distinct_ids(&reader.records).len(),
            two[0].log_tail()
        );
    }

    let probe = |id: &str| id.starts_with("known-") || id.starts_with("new-");
    let seen_r: BTreeMap<String, BTreeMap<String, String>> = vr
        .records
        .iter()
        .map(features)
        .filter(|(id, _)| probe(id))
        .collect();
    let seen_g: BTreeMap<String, BTreeMap<String, String>> = vg
        .records
        .iter()
        .map(features)
        .filter(|(id, _)| probe(id))
        .collect();
    assert_eq!(seen_r.len(), probes.len());

    // The scenario reaches back days: the reference knows the old payee
    // and device and that the payee is days old.
    let value = |id: &str, k: &str| -> f64 { seen_r[id][k].parse().unwrap() };
    for p in 0..PAYERS {
        let known = format!("known-{p}");
        assert_eq!(value(&known, "payer.new_payee"), 0.0, "{known}");
        assert_eq!(value(&known, "payer.new_device"), 0.0, "{known}");
        assert!(value(&known, "payee.age_secs") > 5.0 * 86_400.0, "{known}");
        assert_eq!(value(&format!("new-{p}"), "payer.new_payee"), 1.0);
    }
    assert!(seen_r.values().any(|f| f["payer.count_24h"] != "0.000000"));

    let mut differ = Vec::new();
    for (id, want) in &seen_r {
        let got = seen_g
            .get(id)
            .unwrap_or_else(|| panic!("{id}: no group verdict"));
        for (k, v) in want {
            if got.get(k) != Some(v) {
                differ.push(format!(
                    "{id} {k}: reference {v}, restarted {:?}",
                    got.get(k)
                ));
            }
        }
    }
    assert!(
        differ.is_empty(),
        "{} feature values differ after the restart, e.g.:\n{}",
        differ.len(),
        differ[..differ.len().min(20)].join("\n")
    );
}

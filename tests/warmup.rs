//! Restart: a killed instance rebuilds its feature state by replaying the
//! state log (every payment it scored before, up to the offsets its group
//! committed) before verdicts resume, so its decisions see the same feature
//! values as an instance that never stopped.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

const EVENTS: usize = 6_000;

fn payer_features(r: &Read) -> (String, Vec<(String, f64)>) {
    let v = verdict(r);
    let mut f: Vec<(String, f64)> = v
        .features
        .into_iter()
        // Payer features that read only the payer's own payments: those are
        // in one partition (the key), so replay order cannot change them.
        // `payer.pass_through_1h` also reads money *into* the payer, which
        // arrives from every partition, in an interleaving no two consumers
        // share (the same holds for payee, device, phone and IP features).
        .filter(|(k, _)| k.starts_with("payer.") && k != "payer.pass_through_1h")
        .collect();
    f.sort_by(|a, b| a.0.cmp(&b.0));
    (v.event_id, f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_warm_up_restores_the_features_of_an_instance_that_never_stopped() {
    let brokers = broker();
    let a = create_topics(brokers, "warm-a", 3).await;
    let b_own = create_topics(brokers, "warm-b", 3).await;
    // Both instances read the same payments; each writes its own verdicts.
    let b = Topics {
        payments: a.payments.clone(),
        ..b_own
    };
    let placement = produce_events(brokers, &a.payments, EVENTS, 21).await;
    let explain = "[engine]\nexplain_in_verdicts = true\n";
    let cfg = |t: &Topics| config_toml(brokers, t, "at-least-once", "", "") + explain;

    let _steady = Fraudline::start(&cfg(&a));
    let mut fb = Fraudline::start(&cfg(&b));
    let mut vb = Reader::new(brokers, &b.verdicts, false);
    assert!(
        vb.poll_until(Duration::from_secs(120), |r| r.len() >= 2_000),
        "no progress; log:\n{}",
        fb.log_tail()
    );
    fb.sigkill();
    let mut fb = fb.restart();

    let mut va = Reader::new(brokers, &a.verdicts, false);
    assert!(
        va.poll_until(Duration::from_secs(120), |r| distinct_ids(r).len()
            >= EVENTS)
    );
    assert!(
        vb.poll_until(Duration::from_secs(180), |r| distinct_ids(r).len()
            >= EVENTS),
        "log:\n{}",
        fb.log_tail()
    );

    let log = std::fs::read_to_string(&fb.log).unwrap();
    let warm = log
        .lines()
        .find(|l| l.contains("state log replayed"))
        .unwrap_or_else(|| panic!("no replay line in:\n{log}"));
    assert!(
        !warm.contains("records=0 "),
        "the restart replayed the state log: {warm}"
    );

    // The last verdict B gave each event (after the restart for everything
    // it re-read) saw the same payer features as A's.
    let steady: HashMap<String, Vec<(String, f64)>> =
        va.records.iter().map(payer_features).collect();
    let restarted: HashMap<String, Vec<(String, f64)>> =
        vb.records.iter().map(payer_features).collect();
    assert_eq!(restarted.len(), placement.len());
    let mut differ = Vec::new();
    for (id, f) in &restarted {
        assert!(!f.is_empty(), "verdicts carry features");
        if steady.get(id) != Some(f) {
            differ.push(id.clone());
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} events saw different payer features after the restart, e.g. {:?}: {:?} vs {:?}",
        differ.len(),
        restarted.len(),
        differ[0],
        restarted.get(&differ[0]),
        steady.get(&differ[0])
    );
    assert_eq!(fb.sigterm_and_wait(Duration::from_secs(30)), Some(0));
}

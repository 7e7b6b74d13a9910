//! Restart: a killed instance rebuilds its feature state by replaying the
//! state log (every payment it scored before, up to the offsets its group
//! committed) before verdicts resume, so its decisions see the same feature
//! values as an instance that never stopped.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

const EVENTS: usize = 6_000;
/// Events produced before the kill; the rest come while the instance is down.
const FIRST: usize = 4_000;

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
    // The first part of the stream is scored by both; B is killed once it
    // has scored all of it (its offsets may or may not be committed: what
    // is not is read again and scored again after the restart).
    let mut placement = produce_events_from(brokers, &a.payments, 0, FIRST, 21).await;
    let explain = "[engine]\nexplain_in_verdicts = true\n";
    let cfg = |t: &Topics| config_toml(brokers, t, "at-least-once", "", "") + explain;

    let _steady = Fraudline::start(&cfg(&a));
    let mut fb = Fraudline::start(&cfg(&b));
    let mut vb = Reader::new(brokers, &b.verdicts, false);
    assert!(
        vb.poll_until(Duration::from_secs(120), |r| distinct_ids(r).len() >= FIRST),
        "no progress; log:\n{}",
        fb.log_tail()
    );
    fb.sigkill();
    // The rest arrives while B is down: only the restarted process scores
    // it, and its payers' earlier payments are in the first part.
    let rest = produce_events_from(brokers, &a.payments, FIRST, EVENTS - FIRST, 21).await;
    // The test means something only if the restarted process scores
    // payments whose payers paid before the kill.
    let before: std::collections::HashSet<String> = generated(21)
        .take(FIRST)
        .map(|(p, _)| p.payer.account)
        .collect();
    let returning = generated(21)
        .skip(FIRST)
        .take(EVENTS - FIRST)
        .filter(|(p, _)| before.contains(&p.payer.account))
        .count();
    assert!(returning >= 100, "only {returning} returning payers");
    placement.extend(rest.clone());
    let mut fb = fb.restart();
    let warm = fb
        .wait_log_line("state log replayed", Duration::from_secs(120))
        .unwrap_or_else(|| panic!("no replay line in:\n{}", fb.log_tail()));
    // What it restored came from the snapshot topic, the state log, or
    // both (a snapshot written after B's last payment leaves no log tail).
    let log = std::fs::read_to_string(&fb.log).unwrap_or_default();
    let loaded = log
        .lines()
        .find(|l| l.contains("snapshot loaded"))
        .is_some_and(|l| !l.contains("entities=0 "));
    assert!(
        loaded || !warm.contains("records=0 "),
        "the restart restored nothing:\n{}",
        fb.log_tail()
    );

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

//! Three instances in one consumer group over six partitions see the same
//! counterparty features as one instance fed the same payments (issue 11).
//! Before the state log, each instance saw only its partitions: a mule paid
//! by 30 payers looked like 11 and 19 to two instances.
//!
//! Scenarios, paced as real traffic (150 ms apart per payee / device) among
//! background payments:
//! - a mule: one new e-wallet receives one payment from each of 30 payers,
//!   whose keys spread over all six partitions;
//! - a shared device: one device used by 12 accounts.
//!
//! Every scenario verdict of the three-instance group carries the same
//! payee / device / phone / IP feature values and the same rule hits as the
//! reference instance's verdict for that payment.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::*;

fn payment(id: &str, payer: &str, payee: &str, device: &str) -> Vec<u8> {
    serde_json::json!({
        "event_id": id, "event_time_ms": fraudline::now_ms(),
        "payer": {"account": payer}, "payee": {"account": payee, "kind": "EWALLET"},
        "amount_minor": 2_500_000, "currency": "VND", "device_id": device,
        "channel": "CHANNEL_MOBILE"
    })
    .to_string()
    .into_bytes()
}

/// What the comparison looks at in one verdict: the counterparty features
/// and the rules that hit.
#[derive(Debug, PartialEq)]
struct Seen {
    features: BTreeMap<String, String>,
    rules: Vec<String>,
}

fn seen(r: &Read) -> (String, Seen) {
    let v = verdict(r);
    let features = v
        .features
        .iter()
        .filter(|(k, _)| {
            ["payee.", "device.", "phone.", "ip."]
                .iter()
                .any(|p| k.starts_with(p))
        })
        .map(|(k, x)| (k.clone(), format!("{x:.6}")))
        .collect();
    let mut rules: Vec<String> = v.reasons.iter().map(|r| r.rule_id.clone()).collect();
    rules.sort();
    (v.event_id, Seen { features, rules })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_see_what_one_instance_sees() {
    let brokers = broker();
    let group = create_topics(brokers, "scale3", 6).await;
    let reference_own = create_topics(brokers, "scale1", 6).await;
    // The reference reads the same payments; it has its own group and
    // output and state topics.
    let reference = Topics {
        payments: group.payments.clone(),
        ..reference_own
    };
    let explain = "[engine]\nexplain_in_verdicts = true\n";
    let cfg = |t: &Topics| config_toml(brokers, t, "at-least-once", ANY_PORT, "") + explain;
    let mut one = Fraudline::start(&cfg(&reference));
    let mut three: Vec<Fraudline> = (0..3).map(|_| Fraudline::start(&cfg(&group))).collect();

    // Background traffic, consumed by all before the scenarios start (the
    // group has settled by then).
    let background = produce_events(brokers, &group.payments, 3_000, 31).await;
    let mut v3 = Reader::new(brokers, &group.verdicts, false);
    let mut v1 = Reader::new(brokers, &reference.verdicts, false);
    assert!(
        v3.poll_until(Duration::from_secs(120), |r| distinct_ids(r).len()
            >= background.len()),
        "group: {} of {} background verdicts; log:\n{}",
        distinct_ids(&v3.records).len(),
        background.len(),
        three[0].log_tail()
    );
    for f in &mut three {
        assert!(f.alive(), "an instance died: {}", f.log_tail());
    }
    // The group has settled: every instance holds partitions, all six are
    // held, and that stays so for 3 s (a late verdict would see later
    // payments).
    assert!(
        wait_settled(&three.iter().collect::<Vec<_>>(), 6).await,
        "the group never settled on 3 x 2 partitions"
    );

    // The scenarios, interleaved and paced.
    let mule = "EW-MULE-0001";
    let device = "DEV-SHARED-42";
    let mut ids = Vec::new();
    let mut partitions = std::collections::HashSet::new();
    for i in 0..30 {
        let payer = format!("VICTIM-{i:04}");
        let id = format!("mule-{i}");
        let placed = produce_raw(
            brokers,
            &group.payments,
            &[(&payer, payment(&id, &payer, &format!("SHOP-{i}"), ""))],
        )
        .await;
        let _ = placed;
        let placed = produce_raw(
            brokers,
            &group.payments,
            &[(
                &payer,
                payment(&format!("{id}-to-mule"), &payer, mule, &format!("DEV-{i}")),
            )],
        )
        .await;
        partitions.insert(placed[0].0);
        ids.push(format!("{id}-to-mule"));
        if i < 12 {
            let acct = format!("SIMFARM-{i:04}");
            let id = format!("dev-{i}");
            produce_raw(
                brokers,
                &group.payments,
                &[(
                    &acct,
                    payment(&id, &acct, &format!("MERCHANT-{}", i % 3), device),
                )],
            )
            .await;
            ids.push(id);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(
        partitions.len(),
        6,
        "the mule's payers span every partition"
    );

    let want = background.len() + 30 * 2 + 12;
    for (name, reader, f) in [("group", &mut v3, &three[0]), ("reference", &mut v1, &one)] {
        assert!(
            reader.poll_until(Duration::from_secs(120), |r| distinct_ids(r).len() >= want),
            "{name}: {} of {want} verdicts; log:\n{}",
            distinct_ids(&reader.records).len(),
            f.log_tail()
        );
    }
    let group_seen: HashMap<String, Seen> = v3.records.iter().map(seen).collect();
    let ref_seen: HashMap<String, Seen> = v1.records.iter().map(seen).collect();
    let mut differ = Vec::new();
    for id in &ids {
        let (g, r) = (&group_seen[id], &ref_seen[id]);
        if g != r {
            differ.push(format!("{id}: group {g:?}\n   reference {r:?}"));
        }
    }
    // The scenarios are what they claim: the mule reached 30 distinct
    // payers, the device 12 accounts.
    let last_mule = &ref_seen["mule-29-to-mule"].features;
    assert_eq!(
        last_mule
            .get("payee.distinct_payers_10m")
            .map(String::as_str),
        Some("30.000000"),
        "{last_mule:?}"
    );
    let last_dev = &ref_seen["dev-11"].features;
    assert_eq!(
        last_dev
            .get("device.distinct_accounts_24h")
            .map(String::as_str),
        Some("12.000000"),
        "{last_dev:?}"
    );
    assert!(
        differ.is_empty(),
        "{} of {} scenario verdicts differ from the single instance:\n{}",
        differ.len(),
        ids.len(),
        differ.join("\n")
    );

    // Each instance scored a share, and applied the others' payments.
    for f in &mut three {
        let (_, body) = wait_http(&f.http, "/metrics", Duration::from_secs(5)).expect("/metrics");
        let applied = metric(&body, "fraudline_state_records_total{result=\"applied\"}");
        assert!(applied > 0.0, "an instance applied nothing from the others");
    }
    for f in &mut three {
        assert_eq!(f.sigterm_and_wait(Duration::from_secs(30)), Some(0));
    }
    assert_eq!(one.sigterm_and_wait(Duration::from_secs(30)), Some(0));
}

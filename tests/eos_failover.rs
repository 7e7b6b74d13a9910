//! One of three exactly-once instances is SIGKILLed under load (issue 11):
//! its partitions move to the other two, its open transaction is aborted by
//! the coordinator, and under read_committed every payment has exactly one
//! verdict. The payer features on every verdict, including those the new
//! owners scored again after the move, equal those of a single instance
//! that read the same payments and never failed: the new owner's state for
//! the moved payers came from the state log, and the aborted transaction's
//! state records never reached it.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::*;
use fraudline::tools::gen::{GenConfig, Generator};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// Payer features that depend only on the payer's own payments (one
/// partition, one order): equal whoever scores them. Pass-through counts
/// money in from other payers' partitions, whose interleaving differs
/// between a group and a single instance.
fn payer_features(r: &Read) -> (String, BTreeMap<String, String>) {
    let v = verdict(r);
    let f = v
        .features
        .iter()
        .filter(|(k, _)| k.starts_with("payer.") && !k.contains("pass_through"))
        .map(|(k, x)| (k.clone(), format!("{x:.6}")))
        .collect();
    (v.event_id, f)
}

/// Produces `count` generated payments in chunks of `chunk`, `gap` apart
/// (one generator, so each payer's event times only move forward).
async fn produce_paced(
    brokers: String,
    topic: String,
    count: usize,
    chunk: usize,
    gap: Duration,
) -> HashMap<String, (i32, i64)> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let events: Vec<_> = Generator::new(GenConfig {
        seed: 77,
        start_ms: fraudline::now_ms() - 600_000,
        events_per_sec: 200.0,
        fraud_rate: 0.05,
        ..GenConfig::default()
    })
    .take(count)
    .map(|(p, _)| (p.event_id.clone(), p.payer.account.clone(), p.to_protobuf()))
    .collect();
    let mut placement = HashMap::with_capacity(count);
    for part in events.chunks(chunk) {
        let mut futures = Vec::with_capacity(part.len());
        for (id, key, payload) in part {
            let f = producer
                .send_result(FutureRecord::to(&topic).key(key).payload(payload))
                .map_err(|(e, _)| e)
                .unwrap();
            futures.push((id.clone(), f));
        }
        for (id, f) in futures {
            let d = f.await.unwrap().map_err(|(e, _)| e).unwrap();
            placement.insert(id, (d.partition, d.offset));
        }
        tokio::time::sleep(gap).await;
    }
    placement
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_one_of_three_exactly_once_instances_loses_and_duplicates_nothing() {
    let brokers = broker();
    let group = create_topics(brokers, "eos-kill3", 6).await;
    let reference_own = create_topics(brokers, "eos-kill1", 6).await;
    let reference = Topics {
        payments: group.payments.clone(),
        ..reference_own
    };
    // The killed producer's open transaction blocks read_committed readers
    // of what it wrote until the coordinator aborts it: a shorter
    // transaction timeout than the default minute (Kafka Streams uses 10 s)
    // keeps the test short; the pass-through is what a bank would set.
    let extra =
        "message_timeout_ms = 10000\n[kafka.producer]\n\"transaction.timeout.ms\" = \"10000\"\n\
                 [engine]\nexplain_in_verdicts = true\n";
    let cfg = |t: &Topics, txn: &str| {
        config_toml(brokers, t, "exactly-once", ANY_PORT, extra).replace(
            &format!("transactional_id = \"{}-txn\"", t.group),
            &format!("transactional_id = \"{}-{txn}\"", t.group),
        )
    };
    let mut one = Fraudline::start(&cfg(&reference, "ref"));
    let mut three: Vec<Fraudline> = (0..3)
        .map(|i| Fraudline::start(&cfg(&group, &format!("txn-{i}"))))
        .collect();
    // Background payments first: every partition has data (the lag series
    // that show who holds what), and the group has settled.
    let background = produce_events(brokers, &group.payments, 600, 5).await;
    let mut v3 = Reader::new(brokers, &group.verdicts, true);
    assert!(
        v3.poll_until(Duration::from_secs(120), |r| distinct_ids(r).len()
            >= background.len()),
        "group: {} of {} background verdicts; log:\n{}",
        distinct_ids(&v3.records).len(),
        background.len(),
        three[0].log_tail()
    );
    assert!(
        wait_settled(&three.iter().collect::<Vec<_>>(), 6).await,
        "the group never settled on 3 x 2 partitions; log:\n{}",
        three[0].log_tail()
    );

    let paced = 8_000;
    let total = paced + background.len();
    let load = tokio::spawn(produce_paced(
        brokers.to_string(),
        group.payments.clone(),
        paced,
        400,
        Duration::from_millis(250),
    ));
    // Kill one instance once the group is scoring (its transactions open
    // and commit every 100 ms, so one is open when the signal lands).
    assert!(
        v3.poll_until(Duration::from_secs(60), |r| r.len()
            >= background.len() + 1_000),
        "the group is not scoring; log:\n{}",
        three[0].log_tail()
    );
    let killed_held = partitions_held(&three[1]);
    assert!(killed_held > 0, "the instance to kill holds partitions");
    three[1].sigkill();
    let killed_at = Instant::now();
    let placement = load.await.unwrap();
    assert_eq!(placement.len(), paced);

    assert!(
        v3.poll_until(Duration::from_secs(180), |r| distinct_ids(r).len() >= total),
        "group: {} of {total} verdicts after the kill; logs:\n{}\n---\n{}",
        distinct_ids(&v3.records).len(),
        three[0].log_tail(),
        three[2].log_tail()
    );
    let recovered = killed_at.elapsed();
    v3.poll_for(Duration::from_secs(3));
    let ids = distinct_ids(&v3.records);
    assert_eq!(ids.len(), total, "none lost");
    assert_eq!(
        v3.records.len(),
        total,
        "no payment has two committed verdicts"
    );
    // The survivors hold all six partitions.
    let survivors = [&three[0], &three[2]];
    assert_eq!(
        survivors.iter().map(|f| partitions_held(f)).sum::<usize>(),
        6,
        "the killed instance's partitions moved"
    );

    let mut v1 = Reader::new(brokers, &reference.verdicts, true);
    assert!(
        v1.poll_until(Duration::from_secs(120), |r| distinct_ids(r).len() >= total),
        "reference: {} of {total}; log:\n{}",
        distinct_ids(&v1.records).len(),
        one.log_tail()
    );
    let reference_seen: HashMap<String, BTreeMap<String, String>> =
        v1.records.iter().map(payer_features).collect();
    let mut differ = Vec::new();
    for r in &v3.records {
        let (id, f) = payer_features(r);
        if reference_seen.get(&id) != Some(&f) {
            differ.push(format!(
                "{id}: group {f:?}\n   reference {:?}",
                reference_seen.get(&id)
            ));
        }
    }
    eprintln!(
        "eos failover: {total} payments, {killed_held} partitions moved, all verdicts committed {:.1} s after the kill, {} differ",
        recovered.as_secs_f64(),
        differ.len()
    );
    assert!(
        differ.is_empty(),
        "{} of {total} verdicts' payer features differ from the single instance:\n{}",
        differ.len(),
        differ[..differ.len().min(10)].join("\n")
    );
    for f in [&mut three[0], &mut one] {
        assert_eq!(f.sigterm_and_wait(Duration::from_secs(30)), Some(0));
    }
    assert_eq!(three[2].sigterm_and_wait(Duration::from_secs(30)), Some(0));
}

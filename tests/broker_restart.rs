//! A broker that goes away and comes back must not need a restart of
//! fraudline: this test runs its own broker (so it can kill it) and checks
//! that every event produced before, during and after the outage gets its
//! verdict from the same fraudline process.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

const STATE: &str = "/tmp/fraudline-kafka-restart";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fraudline_rides_out_a_broker_restart() {
    if std::env::var("FRAUDLINE_TEST_BROKERS").is_ok() {
        eprintln!("skipped: needs its own broker to kill (unset FRAUDLINE_TEST_BROKERS)");
        return;
    }
    let brokers = start_broker(STATE);
    let t = create_topics(&brokers, "restart", 3).await;
    let mut expected: HashSet<String> = produce_events(&brokers, &t.payments, 5_000, 11)
        .await
        .into_keys()
        .collect();
    let mut f = Fraudline::start(&config_toml(&brokers, &t, "at-least-once", "", ""));
    let mut verdicts = Reader::new(&brokers, &t.verdicts, false);
    assert!(
        verdicts.poll_until(Duration::from_secs(120), |r| r.len() >= 1_000),
        "no progress; log:\n{}",
        f.log_tail()
    );

    broker_cmd(STATE, "kill");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        f.alive(),
        "fraudline exited when the broker went away:\n{}",
        f.log_tail()
    );
    let again = broker_cmd(STATE, "restart");
    assert_eq!(again, brokers, "the broker comes back on the same address");

    expected.extend(
        produce_events(&brokers, &t.payments, 5_000, 12)
            .await
            .into_keys(),
    );
    let all = verdicts.poll_until(Duration::from_secs(180), |r| {
        distinct_ids(r).len() >= expected.len()
    });
    assert!(
        all,
        "{} of {} verdicts after the restart; log:\n{}",
        distinct_ids(&verdicts.records).len(),
        expected.len(),
        f.log_tail()
    );
    assert_eq!(distinct_ids(&verdicts.records), expected);
    assert!(f.alive(), "same process throughout");
    assert_eq!(
        f.sigterm_and_wait(Duration::from_secs(30)),
        Some(0),
        "{}",
        f.log_tail()
    );
    broker_cmd(STATE, "stop");
}

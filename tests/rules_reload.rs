//! Hot reload of the rule file under load, on the real broker: a valid new
//! file is swapped in between two events (no verdict is decided by a mix of
//! the two versions, and once the new version appears in a partition the old
//! one never does again), and an invalid file is refused while the active
//! rules keep running.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

fn rules(version: &str, rule: &str, when: &str) -> String {
    format!(
        "version = \"{version}\"\n[thresholds]\nreview = 40\nhold = 80\n\n\
         [[rule]]\nid = \"{rule}\"\nwhen = \"{when}\"\nscore = 10\nreason = \"{rule} hit\"\n\n\
         [[rule]]\nid = \"{rule}_SHADOW\"\nwhen = \"amount >= 1\"\nscore = 90\nmode = \"shadow\"\nreason = \"shadow\"\n"
    )
}

/// Replaces the file in one rename, as editors and config managers do.
fn install(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_rule_file_is_swapped_in_between_events_and_a_bad_one_is_refused() {
    let brokers = broker();
    let t = create_topics(brokers, "reload", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    install(&path, &rules("v1", "R1", "amount >= 1"));
    let http = ANY_PORT;
    let extra = format!(
        "warmup_lookback_ms = 0\n[rules]\nfile = \"{}\"\nwatch_interval_ms = 200\n",
        path.display()
    );
    let mut f = Fraudline::start(&config_toml(brokers, &t, "at-least-once", http, &extra));
    let http = f.http.clone();
    let mut reader = Reader::new(brokers, &t.verdicts, false);

    produce_events(brokers, &t.payments, 2_000, 31).await;
    assert!(
        reader.poll_until(Duration::from_secs(90), |r| r.len() >= 2_000),
        "{}",
        f.log_tail()
    );
    // The swap happens while the next batch is being scored.
    let load = tokio::spawn(produce_events(
        brokers.to_string().leak(),
        t.payments.clone().leak(),
        4_000,
        32,
    ));
    tokio::time::sleep(Duration::from_millis(150)).await;
    install(&path, &rules("v2", "R2", "amount >= 1 && amount > 0"));
    load.await.unwrap();
    assert!(
        reader.poll_until(Duration::from_secs(90), |r| r.len() >= 6_000),
        "{}",
        f.log_tail()
    );
    // An invalid file: refused, v2 keeps deciding.
    install(&path, "version = \"v3\"\n[thresholds]\nreview = 40\nhold = 80\n[[rule]]\nid = \"R3\"\nwhen = \"amount >= \"\nscore = 1\nreason = \"r\"\n");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    produce_events(brokers, &t.payments, 1_000, 33).await;
    assert!(
        reader.poll_until(Duration::from_secs(90), |r| r.len() >= 7_000),
        "{}",
        f.log_tail()
    );
    assert!(f.alive(), "a bad rule file does not stop the service");

    let mut by_version: HashMap<String, usize> = HashMap::new();
    let mut last_in_partition: HashMap<i32, String> = HashMap::new();
    for (i, r) in reader.records.iter().enumerate() {
        let v = verdict(r);
        let ids: Vec<&str> = v.reasons.iter().map(|x| x.rule_id.as_str()).collect();
        let shadow: Vec<&str> = v.shadow_hits.iter().map(|x| x.rule_id.as_str()).collect();
        // Each verdict is wholly one version's.
        match v.rules_version.as_str() {
            "v1" => {
                assert_eq!(
                    (ids.as_slice(), shadow.as_slice()),
                    (&["R1"][..], &["R1_SHADOW"][..])
                );
            }
            "v2" => {
                assert_eq!(
                    (ids.as_slice(), shadow.as_slice()),
                    (&["R2"][..], &["R2_SHADOW"][..])
                );
            }
            other => panic!("verdict {i} decided by rules {other:?}"),
        }
        // Shadow rules (score 90) never decide.
        assert_eq!(v.score, 10);
        if let Some(prev) = last_in_partition.get(&r.partition) {
            assert!(
                !(prev == "v2" && v.rules_version == "v1"),
                "partition {}: v1 after v2 at record {i}",
                r.partition
            );
        }
        last_in_partition.insert(r.partition, v.rules_version.clone());
        *by_version.entry(v.rules_version).or_default() += 1;
        if i < 2_000 {
            assert_eq!(verdict(r).rules_version, "v1", "before the change");
        }
        if i >= 6_000 {
            assert_eq!(verdict(r).rules_version, "v2", "after the refused file");
        }
    }
    assert!(
        by_version["v1"] >= 2_000 && by_version["v2"] >= 1_000,
        "{by_version:?}"
    );

    let (_, metrics) = http_get(&http, "/metrics").expect("metrics");
    let line = |prefix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in metrics"))
            .to_string()
    };
    assert!(line("fraudline_rules_reloads_total{result=\"refused\"}").ends_with(" 1"));
    assert!(line("fraudline_rules_reloads_total{result=\"ok\"}").ends_with(" 2"));
    assert!(line("fraudline_rules_info{version=\"v2\"").ends_with(" 1"));
    let log = std::fs::read_to_string(&f.log).unwrap();
    assert!(
        log.contains("rule file refused; the active rules keep running"),
        "{log}"
    );
    assert_eq!(f.sigterm_and_wait(Duration::from_secs(30)), Some(0));
}

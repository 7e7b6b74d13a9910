//! `fraudline tune` end to end, as an analyst runs it: on generated labelled
//! history, the suggestion meets the target precision, the file it writes
//! passes `rules check`, and a backtest of that file gives exactly the
//! precision and recall tune promised.

use std::path::Path;
use std::process::Command;

fn fraudline(args: &[&str], dir: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fraudline"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("run fraudline");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_suggestion_meets_its_target_and_the_backtest_of_the_written_file_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, history, err) = fraudline(
        &[
            "gen",
            "--count",
            "20000",
            // Ten payments per customer over 11 h of event time: the default
            // pack judges payments against the payer's own history, and
            // `gen` only lets fraud hit customers who have one.
            "--accounts",
            "2000",
            "--events-per-sec",
            "0.5",
            "--fraud-rate",
            "0.02",
            "--seed",
            "11",
            // A fixed start: the pack reads the hour of day, so a stream
            // that starts "now" scores differently at each hour of the run.
            "--start-ms",
            "1795500000000",
        ],
        dir.path(),
    );
    assert!(ok, "{err}");
    std::fs::write(dir.path().join("history.jsonl"), history).unwrap();
    let pack = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rules/default.toml");
    let (ok, out, err) = fraudline(
        &[
            "tune",
            "--rules",
            pack,
            "--events",
            "history.jsonl",
            "--target-precision",
            "0.9",
            "--bound",
            "MULE_PASS_THROUGH_OUT=10..60",
            "--bound",
            "MULE_FAN_IN_NEW_PAYEE=20..60",
            "--write",
            "tuned.toml",
            "--format",
            "json",
        ],
        dir.path(),
    );
    assert!(ok, "tune failed: {err}");
    let s: serde_json::Value = serde_json::from_str(&out).expect("JSON suggestion");
    let suggested = &s["suggested"];
    let current = &s["current"];
    let (p, r) = (
        suggested["precision"].as_f64().unwrap(),
        suggested["recall"].as_f64().unwrap(),
    );
    eprintln!(
        "current precision {:.3} recall {:.3}; suggested {p:.3} / {r:.3}, scores {}",
        current["precision"], current["recall"], s["scores"]
    );
    assert!(p >= 0.9, "suggested precision {p} under the target");
    assert!(
        s["diff"].as_str().unwrap().contains("+review = "),
        "{}",
        s["diff"]
    );

    // The written file is a valid rule file whose own tests pass.
    let (ok, out, err) = fraudline(&["rules", "check", "tuned.toml"], dir.path());
    assert!(ok, "rules check refused the suggestion:\n{out}{err}");

    // A backtest of it gives what tune promised.
    let (ok, out, err) = fraudline(
        &[
            "backtest",
            "--rules",
            "tuned.toml",
            "--events",
            "history.jsonl",
            "--format",
            "json",
        ],
        dir.path(),
    );
    assert!(ok, "{err}");
    let b: serde_json::Value = serde_json::from_str(&out).unwrap();
    let overall = &b["overall"];
    assert!(
        (overall["precision"].as_f64().unwrap() - p).abs() < 1e-9
            && (overall["recall"].as_f64().unwrap() - r).abs() < 1e-9,
        "backtest {overall} vs tune {suggested}"
    );
}

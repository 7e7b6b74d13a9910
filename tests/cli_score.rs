//! `fraudline score` checks only the blocklist it is given (issue 12: it
//! used to load the generator's 50 fake accounts as a HOLD list, so a real
//! account numbered like them was held with no list named).

use std::io::Write as _;
use std::process::{Command, Stdio};

fn score(args: &[&str], input: &str) -> Vec<serde_json::Value> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fraudline"))
        .arg("score")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fraudline score");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON verdict"))
        .collect()
}

#[test]
fn score_checks_only_the_blocklist_it_is_given() {
    // 9000000001 is one of the generator's built-in "blocklisted" accounts.
    let event = serde_json::json!({
        "event_id": "cli-1", "event_time_ms": fraudline::now_ms(),
        "payer": {"account": "1234567890"}, "payee": {"account": "9000000001"},
        "amount_minor": 150_000, "currency": "VND", "channel": "CHANNEL_MOBILE"
    })
    .to_string()
        + "\n";
    let listed = |v: &serde_json::Value| {
        v["reasons"].as_array().is_some_and(|r| {
            r.iter()
                .any(|r| r.to_string().to_lowercase().contains("list"))
        })
    };
    let plain = score(&[], &event);
    assert_eq!(plain.len(), 1);
    assert!(
        !listed(&plain[0]),
        "no list given, none checked: {}",
        plain[0]
    );

    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.csv");
    std::fs::write(
        &list,
        "kind,value,action,reason\naccount,9000000001,HOLD,reported\n",
    )
    .unwrap();
    let held = score(&["--blocklist", list.to_str().unwrap()], &event);
    assert_eq!(held[0]["decision"], "HOLD", "{}", held[0]);
    assert!(listed(&held[0]), "{}", held[0]);
}

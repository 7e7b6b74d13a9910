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
    // Written from another thread: the verdicts fill the stdout pipe while
    // the events are still going in.
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
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

/// `score --model FILE --explain`: each verdict names the model's version
/// and score and the features that moved the score most (at most five,
/// largest first), which add up with the bias to the model's raw score.
#[test]
fn score_explains_the_example_model() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = repo.join("deploy/models/example-model.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    let model =
        fraudline::engine::model::Model::parse("example", &text).expect("the example loads");
    let events: String = fraudline::tools::gen::Generator::new(fraudline::tools::gen::GenConfig {
        seed: 4,
        fraud_rate: 0.05,
        start_ms: fraudline::now_ms() - 600_000,
        events_per_sec: 10.0,
        ..Default::default()
    })
    .take(500)
    .map(|(p, _)| p.to_json() + "\n")
    .collect();
    let verdicts = score(&["--explain", "--model", path.to_str().unwrap()], &events);
    assert_eq!(verdicts.len(), 500);
    for v in &verdicts {
        assert_eq!(v["model"]["version"], *model.version, "{v}");
        let p = v["model"]["score"].as_f64().expect("a score");
        let top = v["model_contributions"]["top"].as_array().expect("explain");
        assert!(!top.is_empty() && top.len() <= 5, "{v}");
        let sizes: Vec<f64> = top
            .iter()
            .map(|c| c["value"].as_f64().unwrap().abs())
            .collect();
        assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "largest first: {v}");
        assert!(top
            .iter()
            .all(|c| model.features.contains(&c["feature"].as_str().unwrap())));
        // The score is the sigmoid of the raw score the bias and all the
        // contributions add up to; the top five alone need not.
        assert!((0.0..=1.0).contains(&p));
    }
}

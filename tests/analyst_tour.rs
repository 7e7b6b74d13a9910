//! The README's analyst walk-through (backtest -> HTML report -> tune ->
//! train a model -> shadow it -> promote it), run as written: the shell
//! block between the `analyst-tour` markers, with `fraudline` the binary
//! under test and every `--count` and `--accounts` divided by 4 (the only
//! change: the same history per customer, 4x fewer customers; at 10x fewer
//! the pack's precision on 2,000 customers is too low for tune to reach
//! 0.9 without breaking the pack's tests), in a
//! scratch directory that sees the repository's deploy/. Then the files
//! each step promises are checked.

mod common;

use std::path::Path;
use std::process::Command;

/// The README's tour block, `--count` / `--accounts N` scaled down to N / 4.
fn tour_script() -> String {
    let readme = std::fs::read_to_string(common::repo().join("README.md")).unwrap();
    let begin = readme
        .find("<!-- analyst-tour:begin -->")
        .expect("README has the analyst-tour markers");
    let end = readme.find("<!-- analyst-tour:end -->").unwrap();
    let block = &readme[begin..end];
    let code = block
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(code, _)| code)
        .expect("a sh code block between the markers");
    let re_count = |line: &str| -> String {
        let mut out = String::new();
        let mut words = line.split(' ').peekable();
        while let Some(w) = words.next() {
            out.push_str(w);
            if w == "--count" || w == "--accounts" {
                if let Some(n) = words.next() {
                    let n: u64 = n.parse().expect("a number");
                    out.push(' ');
                    out.push_str(&(n / 4).to_string());
                }
            }
            if words.peek().is_some() {
                out.push(' ');
            }
        }
        out
    };
    code.lines()
        .map(|l| re_count(l.trim_start()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn read(d: &Path, f: &str) -> String {
    std::fs::read_to_string(d.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"))
}

#[test]
fn the_readme_analyst_tour_runs_as_written() {
    let script = tour_script();
    assert!(script.contains("fraudline tune") && script.contains("--shadow-model"));
    let site = common::lightgbm_site();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::os::unix::fs::symlink(common::repo().join("deploy"), d.join("deploy")).unwrap();
    let bin = d.join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_fraudline"), bin.join("fraudline")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env("PATH", path)
        .env("PYTHONPATH", &site)
        .current_dir(d)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the tour failed:\n{script}\n--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 2: the report is a page with its charts.
    let html = read(d, "report.html");
    assert!(html.contains("<svg") && html.contains("</html>"));
    // 3: tune wrote a rule file that differs from the pack and passed check.
    let tuned = read(d, "tuned.toml");
    assert_ne!(
        tuned,
        read(d, "deploy/rules/default.toml"),
        "tune suggested no change"
    );
    assert!(stdout.contains("against baseline"), "{stdout}");
    // 4: a model fraudline loads, over catalogue features.
    let next = fraudline::engine::model::Model::parse("model-next.txt", &read(d, "model-next.txt"))
        .expect("the trained model loads");
    assert_eq!(next.trees(), 300);
    // 5: both models ranked, the shadow under its own version.
    assert!(
        stdout.contains(&format!("shadow  {}", next.version)),
        "no shadow row for {}:\n{stdout}",
        next.version
    );
    // 6: the promoted file is the trained model.
    assert_eq!(read(d, "live/model.txt"), read(d, "model-next.txt"));
}

//! `backtest --html`: the page an analyst opens renders in a real browser
//! (headless Chromium, Debian's package, installed by
//! deploy/ci/install-tools.sh) with no console error, its script runs (the
//! threshold explorer fills in what the current threshold gives), and it
//! holds every section. A copy of the page with a broken script must be
//! caught by the same check, so the check can fail.

mod common;

use std::path::Path;
use std::process::Command;

/// Renders `page` headless: the DOM after scripts ran, and the browser's
/// log (console messages included).
fn render(chromium: &Path, page: &Path) -> (String, String) {
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
        ])
        .arg(page)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Console errors and uncaught exceptions in a Chromium log.
fn console_errors(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("CONSOLE") && (l.contains("Uncaught") || l.contains("rror")))
        .collect()
}

#[test]
fn the_backtest_report_renders_in_chromium_without_console_errors() {
    let chromium = common::tool("chromium");
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_fraudline");
    let events = dir.path().join("history.jsonl");
    let gen = Command::new(bin)
        .args([
            "gen",
            "--count",
            "20000",
            "--accounts",
            "5000",
            "--events-per-sec",
            "50",
        ])
        .args(["--fraud-rate", "0.02", "--seed", "7"])
        .output()
        .expect("run fraudline gen");
    assert!(gen.status.success());
    std::fs::write(&events, &gen.stdout).unwrap();
    let page = dir.path().join("report.html");
    let rules = common::repo().join("deploy/rules/default.toml");
    let bt = Command::new(bin)
        .arg("backtest")
        .arg("--rules")
        .arg(&rules)
        .arg("--baseline")
        .arg(&rules)
        .arg("--events")
        .arg(&events)
        .arg("--html")
        .arg(&page)
        .output()
        .expect("run fraudline backtest");
    assert!(
        bt.status.success(),
        "{}",
        String::from_utf8_lossy(&bt.stderr)
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page must need no network"
    );

    let (dom, log) = render(&chromium, &page);
    let errors = console_errors(&log);
    assert!(errors.is_empty(), "console errors: {errors:?}");
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page's script did not run to its end"
    );
    // The explorer shows the current review threshold's figures, which are
    // the report's own headline numbers.
    let text = text_of(&dom, "<output id=\"at\">");
    assert!(
        text.starts_with("threshold 40: precision 0."),
        "explorer: {text:?}"
    );
    for section in [
        "<svg id=\"hist\"",
        "<svg id=\"pr-review\"",
        "<svg id=\"pr-hold\"",
        "class=\"now\"",
        "<h2>Rules</h2>",
        "<h2>Money held</h2>",
        "Against baseline",
        "MULE_FAN_IN_NEW_PAYEE",
    ] {
        assert!(dom.contains(section), "{section} missing from the page");
    }

    // The same check on a page whose script throws: caught.
    let broken = dir.path().join("broken.html");
    std::fs::write(
        &broken,
        html.replace(
            "document.body.setAttribute(\"data-ready\", \"1\");",
            "undefinedFunction();",
        ),
    )
    .unwrap();
    let (dom, log) = render(&chromium, &broken);
    assert!(
        !console_errors(&log).is_empty() && !dom.contains("data-ready=\"1\""),
        "a throwing script went unnoticed: the check cannot fail"
    );
}

/// The text of the element that starts with `open`.
fn text_of(dom: &str, open: &str) -> String {
    dom.split_once(open)
        .and_then(|(_, rest)| rest.split_once('<'))
        .map(|(t, _)| t.to_string())
        .unwrap_or_default()
}

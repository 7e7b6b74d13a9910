//! A real Prometheus server (Debian's `prometheus` package) scrapes a running
//! fraudline (`fraudline demo`: generated traffic scored live, no Kafka) on
//! 127.0.0.1, loads deploy/prometheus/alerts.yml, and answers PromQL:
//! - an events rate and an engine-latency p99, both real and non-zero;
//! - every expression of the Grafana dashboard parses and runs;
//! - every alert and recording rule evaluates without error;
//!
//! and `promtool check metrics` lints a live /metrics scrape.
//!
//! prometheus / promtool come from deploy/ci/install-tools.sh (the harness
//! runs it when they are missing); a tool it cannot install fails the test.

mod common;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Kills the child (and waits for it) however the test ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// HTTP/1.0 GET (no chunked replies): status and body.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|x| x.1.to_string())?;
    Some((code, body))
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs an instant query; Err carries Prometheus's error text.
fn query(prom: &str, q: &str) -> Result<serde_json::Value, String> {
    let (code, body) = get(prom, &format!("/api/v1/query?query={}", encode(q)))
        .ok_or_else(|| "no answer".to_string())?;
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("HTTP {code}: {e}: {body}"))?;
    if v["status"] != "success" {
        return Err(format!("HTTP {code}: {}", v["error"]));
    }
    Ok(v["data"]["result"].clone())
}

/// The first sample's value of a vector result.
fn first_value(result: &serde_json::Value) -> Option<f64> {
    result.get(0)?["value"][1].as_str()?.parse().ok()
}

fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    None
}

/// Starts `fraudline demo` with /metrics on a free 127.0.0.1 port.
fn start_demo(dir: &Path) -> (Proc, String) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join("demo.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_fraudline"))
        .args([
            "demo",
            "--rate",
            "3000",
            "--duration",
            "120",
            "--listen",
            &addr,
            // Live traffic from the first second (the metrics are the
            // point here, not the history's habits).
            "--history",
            "0",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start fraudline demo");
    (Proc(child), addr)
}

#[test]
fn prometheus_scrapes_fraudline_and_answers_promql_for_events_and_latency() {
    let (prometheus, promtool) = (common::tool("prometheus"), common::tool("promtool"));
    let dir = tempfile::tempdir().unwrap();
    let (_demo, target) = start_demo(dir.path());
    let scrape = wait_for(Duration::from_secs(30), || {
        get(&target, "/metrics")
            .filter(|(c, b)| *c == 200 && b.contains("fraudline_engine_latency_seconds_bucket"))
    })
    .unwrap_or_else(|| {
        panic!(
            "fraudline demo never served metrics:\n{}",
            std::fs::read_to_string(dir.path().join("demo.log")).unwrap_or_default()
        )
    })
    .1;

    // promtool lints the live scrape (names, types, units, help).
    let mut lint = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lint.stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool check metrics on a live scrape:\n{findings}"
    );
    assert!(scrape.contains(&format!(
        "fraudline_build_info{{version=\"{}\",git_hash=\"",
        env!("CARGO_PKG_VERSION")
    )));

    // A real Prometheus scraping it every second, with the alert rules.
    let alerts = repo().join("deploy/prometheus/alerts.yml");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: fraudline\n    static_configs:\n      - targets: [\"{target}\"]\n",
            alerts.display()
        ),
    )
    .unwrap();
    let prom = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prometheus = Proc(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    let prom_log =
        || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    wait_for(Duration::from_secs(30), || {
        get(&prom, "/-/ready").filter(|(c, _)| *c == 200)
    })
    .unwrap_or_else(|| panic!("prometheus never ready:\n{}", prom_log()));

    // Events per second, from at least two scrapes.
    let rate = wait_for(Duration::from_secs(40), || {
        query(
            &prom,
            "sum(rate(fraudline_events_consumed_total{job=\"fraudline\"}[10s]))",
        )
        .ok()
        .as_ref()
        .and_then(first_value)
        .filter(|v| *v > 0.0)
    })
    .unwrap_or_else(|| panic!("no events rate from Prometheus:\n{}", prom_log()));
    // The demo paces at 3,000/s; a loaded CI machine may fall behind.
    assert!(rate > 100.0 && rate < 10_000.0, "events rate {rate}/s");

    let p99 = wait_for(Duration::from_secs(20), || {
        query(
            &prom,
            "histogram_quantile(0.99, sum by (le) (rate(fraudline_engine_latency_seconds_bucket[10s])))",
        )
        .ok()
        .as_ref()
        .and_then(first_value)
        .filter(|v| v.is_finite() && *v > 0.0)
    })
    .expect("an engine latency p99");
    // Microseconds in release, tens of them in a debug build: under 10 ms.
    assert!(p99 > 0.0 && p99 < 0.01, "engine p99 {p99} s");

    let verdicts = query(&prom, "sum by (decision) (fraudline_verdicts_total)").unwrap();
    let decisions: Vec<&str> = verdicts
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["metric"]["decision"].as_str())
        .collect();
    assert!(
        decisions.contains(&"ALLOW") && decisions.contains(&"HOLD"),
        "{verdicts}"
    );

    // Every dashboard expression parses and runs on this Prometheus.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/fraudline.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dash, &mut exprs);
    assert!(exprs.len() >= 30);
    let mut failed = Vec::new();
    let mut with_data = 0;
    for e in &exprs {
        let q = e
            .replace("$__rate_interval", "10s")
            .replace("$instance", ".*");
        match query(&prom, &q) {
            Ok(r) => with_data += usize::from(r.as_array().is_some_and(|a| !a.is_empty())),
            Err(why) => failed.push(format!("{q}\n    {why}")),
        }
    }
    assert!(
        failed.is_empty(),
        "dashboard queries refused:\n{}",
        failed.join("\n")
    );
    // The demo has no Kafka, lists from files or in-line API: not every
    // panel has data, but the traffic and latency ones do.
    assert!(
        with_data >= 12,
        "only {with_data} of {} dashboard queries returned data",
        exprs.len()
    );

    // Every rule loaded and evaluates without error.
    let rules = wait_for(Duration::from_secs(15), || {
        let (_, body) = get(&prom, "/api/v1/rules")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let rules: Vec<serde_json::Value> = v["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        // Evaluated at least once: health is "ok" or "err", not "unknown".
        rules
            .iter()
            .all(|r| r["health"] != "unknown")
            .then_some(rules)
    })
    .expect("rules evaluated");
    let text = std::fs::read_to_string(&alerts).unwrap();
    let defined = text.matches("- alert: ").count() + text.matches("- record: ").count();
    assert_eq!(rules.len(), defined, "every rule of alerts.yml loaded");
    let bad: Vec<String> = rules
        .iter()
        .filter(|r| r["health"] != "ok")
        .map(|r| format!("{}: {}", r["name"], r["lastError"]))
        .collect();
    assert!(bad.is_empty(), "rules failing:\n{}", bad.join("\n"));
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

//! The operations kit checked against the code and by the real tools:
//! - every metric the Grafana dashboard and the alert rules name is one
//!   fraudline exports (the catalogue in src/telemetry);
//! - docs/METRICS.md lists exactly the catalogue, with the same types and
//!   labels; the catalogue follows Prometheus naming conventions;
//! - `promtool check rules` / `check config`, `hadolint` on the Dockerfile,
//!   `kubernetes-validate --strict` on the manifests (offline schemas);
//! - the Kubernetes ConfigMaps hold a config fraudline accepts and the
//!   default rule pack verbatim; the compose file mounts files that exist.
//!
//! A missing tool is installed by deploy/ci/install-tools.sh (run once by
//! the harness); if it still is missing, the check fails: a check that did
//! not run never counts as passed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use fraudline::telemetry::{MetricKind, CATALOGUE};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every exported base name with its kind: the catalogue.
fn exported() -> BTreeMap<&'static str, MetricKind> {
    CATALOGUE.iter().map(|s| (s.name, s.kind)).collect()
}

/// Resolves a series name as PromQL sees it: a counter or gauge by its name,
/// a histogram by `_bucket`, `_sum` or `_count` (its bare name has no
/// series, so a query on it would show nothing).
fn resolve(name: &str, exported: &BTreeMap<&str, MetricKind>) -> Result<(), String> {
    match exported.get(name) {
        Some(MetricKind::Histogram) => {
            return Err(format!(
                "{name} is a histogram: query {name}_bucket, _sum or _count"
            ))
        }
        Some(_) => return Ok(()),
        None => {}
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if exported.get(base) == Some(&MetricKind::Histogram) {
                return Ok(());
            }
        }
    }
    Err(format!("{name} is not a metric fraudline exports"))
}

/// The `fraudline_*` identifiers in a text (PromQL, YAML, Markdown).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("fraudline_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// Every PromQL expression of the dashboard: panel targets (rows included)
/// and templating queries.
fn dashboard_exprs(d: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        ("query", serde_json::Value::String(s)) if s.contains('(') => {
                            out.push(s.clone())
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(d, &mut out);
    out
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("deploy/grafana/fraudline.json")).expect("dashboard is JSON")
}

#[test]
fn the_name_check_rejects_what_fraudline_does_not_export() {
    let e = exported();
    assert!(resolve("fraudline_events_consumed_total", &e).is_ok());
    assert!(resolve("fraudline_engine_latency_seconds_bucket", &e).is_ok());
    assert!(resolve("fraudline_engine_latency_seconds", &e).is_err());
    assert!(resolve("fraudline_events_consumed", &e).is_err());
    assert!(resolve("fraudline_verdicts_total_bucket", &e).is_err());
    assert_eq!(
        metric_names(
            "rate(fraudline_a_total[5m]) / my_fraudline_b + fraudline_c{x=\"fraudline_d\"}"
        ),
        ["fraudline_a_total", "fraudline_c", "fraudline_d"]
            .map(String::from)
            .into()
    );
}

#[test]
fn dashboard_queries_name_only_exported_metrics() {
    let d = dashboard();
    let exprs = dashboard_exprs(&d);
    assert!(exprs.len() >= 30, "only {} expressions found", exprs.len());
    let e = exported();
    let mut bad = Vec::new();
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        if names.is_empty() {
            bad.push(format!("names no fraudline metric: {expr}"));
        }
        for n in names {
            if let Err(why) = resolve(&n, &e) {
                bad.push(format!("{why}\n    in: {expr}"));
            }
            used.insert(n);
        }
    }
    assert!(bad.is_empty(), "dashboard:\n{}", bad.join("\n"));
    // The panels the issue lists: each family appears in some query.
    for must in [
        "fraudline_events_consumed_total",
        "fraudline_verdicts_total",
        "fraudline_engine_latency_seconds_bucket",
        "fraudline_end_to_end_latency_seconds_bucket",
        "fraudline_consumer_lag_messages",
        "fraudline_dlq_records_total",
        "fraudline_rule_hits_total",
        "fraudline_rules_info",
        "fraudline_rules_reloads_total",
        "fraudline_blocklist_version",
        "fraudline_blocklist_load_failures_total",
        "fraudline_inline_requests_total",
        "fraudline_inline_request_duration_seconds_bucket",
        "fraudline_inline_shed_total",
        "fraudline_feature_entities",
        "fraudline_feature_evictions_total",
        "fraudline_build_info",
    ] {
        assert!(used.contains(must), "no dashboard panel queries {must}");
    }
    // Importable as is: unique panel ids, every panel placed on the 24-column
    // grid, a datasource variable and no hard-wired datasource uid.
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id {}",
            p["id"]
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && g["h"].as_u64().unwrap() > 0,
            "{}: gridPos {g}",
            p["title"]
        );
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
    }
    let text = read("deploy/grafana/fraudline.json");
    assert!(text.contains("\"uid\": \"${datasource}\""));
    assert!(d["uid"].is_string() && d["title"] == "fraudline");
    for p in d["panels"].as_array().unwrap() {
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
}

#[test]
fn alert_rules_name_only_exported_metrics_and_carry_runbooks() {
    let text = read("deploy/prometheus/alerts.yml");
    let e = exported();
    let bad: Vec<String> = metric_names(&text)
        .into_iter()
        .filter_map(|n| resolve(&n, &e).err())
        .collect();
    assert!(bad.is_empty(), "alerts.yml:\n{}", bad.join("\n"));
    let alerts = text.matches("- alert: ").count();
    assert!(alerts >= 10, "{alerts} alerts");
    for key in ["runbook: |", "summary: ", "description: ", "severity: "] {
        assert_eq!(text.matches(key).count(), alerts, "every alert has {key}");
    }
    // The alerts the issue asks for.
    for name in [
        "FraudlineConsumerLagGrowing",
        "FraudlineEngineLatencyP99OverBudget",
        "FraudlineDeadLetterRate",
        "FraudlineRulesReloadRefused",
        "FraudlineBlocklistLoadRefused",
        "FraudlineHoldRateAnomalous",
        "FraudlineNoEvents",
        "FraudlineInlineShedding",
    ] {
        assert!(text.contains(&format!("- alert: {name}\n")), "{name}");
    }
}

#[test]
fn catalogue_follows_prometheus_conventions() {
    let mut seen = BTreeSet::new();
    for m in CATALOGUE {
        assert!(seen.insert(m.name), "{} twice", m.name);
        assert!(m.name.starts_with("fraudline_"), "{}", m.name);
        assert!(
            m.name
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'),
            "{}: snake_case",
            m.name
        );
        assert!(!m.help.is_empty(), "{}: help", m.name);
        match m.kind {
            MetricKind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
            MetricKind::Histogram => assert!(m.name.ends_with("_seconds"), "{}", m.name),
            MetricKind::Gauge => assert!(!m.name.ends_with("_total"), "{}", m.name),
        }
        for unit in ["_milliseconds", "_ms", "_micros", "_bytes_kb", "_minutes"] {
            assert!(!m.name.contains(unit), "{}: base units", m.name);
        }
        for l in m.labels {
            for unbounded in [
                "account", "event_id", "payer", "payee", "phone", "device", "ip",
            ] {
                assert_ne!(*l, unbounded, "{}: unbounded label {l}", m.name);
            }
        }
    }
    let build = fraudline::telemetry::spec_of(fraudline::telemetry::BUILD_INFO).unwrap();
    assert_eq!(build.labels, ["version", "git_hash"]);
}

/// The rows of docs/METRICS.md's tables: name → (type, labels, in-line?).
fn documented() -> BTreeMap<String, (String, Vec<String>)> {
    let text = read("docs/METRICS.md");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `name` | type | `a`, `b` | meaning |
        if cells.len() < 5 || !cells[1].starts_with("`fraudline_") {
            continue;
        }
        let name = cells[1].trim_matches('`').to_string();
        let labels = cells[3]
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_string())
            .filter(|l| !l.is_empty())
            .collect();
        assert!(
            out.insert(name.clone(), (cells[2].to_string(), labels))
                .is_none(),
            "{name} documented twice"
        );
    }
    out
}

#[test]
fn docs_metrics_table_matches_the_catalogue() {
    let docs = documented();
    let mut bad = Vec::new();
    for m in CATALOGUE {
        match docs.get(m.name) {
            None => bad.push(format!("{} is exported but not in docs/METRICS.md", m.name)),
            Some((kind, labels)) => {
                if kind != m.kind.as_str() {
                    bad.push(format!(
                        "{}: docs say {kind}, code {}",
                        m.name,
                        m.kind.as_str()
                    ));
                }
                if labels != m.labels {
                    bad.push(format!(
                        "{}: docs labels {labels:?}, code {:?}",
                        m.name, m.labels
                    ));
                }
            }
        }
    }
    for name in docs.keys() {
        if !CATALOGUE.iter().any(|m| m.name == name) {
            bad.push(format!("{name} is documented but not exported"));
        }
    }
    assert!(
        bad.is_empty(),
        "docs/METRICS.md drifted:\n{}",
        bad.join("\n")
    );
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_alert_rules_and_scrape_configs() {
    let promtool = common::tool("promtool");
    let dir = repo().join("deploy/prometheus");
    let out = run_ok(
        Command::new(&promtool)
            .args(["check", "rules", "alerts.yml"])
            .current_dir(&dir),
    );
    assert!(out.contains("SUCCESS"), "{out}");
    for cfg in ["prometheus.yml", "prometheus-k8s.yml"] {
        run_ok(
            Command::new(&promtool)
                .args(["check", "config", cfg])
                .current_dir(&dir),
        );
    }
    // And it would catch a broken one: the check can fail.
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("broken.yml");
    std::fs::write(
        &broken,
        "groups:\n- name: x\n  rules:\n  - alert: X\n    expr: rate(fraudline_x_total[5m]\n",
    )
    .unwrap();
    let st = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&broken)
        .output()
        .unwrap();
    assert!(
        !st.status.success(),
        "promtool accepted an unbalanced expression"
    );
}

#[test]
fn hadolint_accepts_the_dockerfile() {
    let hadolint = common::tool("hadolint");
    let out = run_ok(Command::new(hadolint).arg(repo().join("deploy/docker/Dockerfile")));
    assert!(out.trim().is_empty(), "hadolint findings:\n{out}");
    let df = read("deploy/docker/Dockerfile");
    assert!(
        df.contains("AS build") && df.contains("USER 10001"),
        "multi-stage, non-root"
    );
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    files.sort();
    files
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    let files = manifests();
    assert!(files.len() >= 6, "{files:?}");
    let kv = common::tool("kubernetes-validate");
    let out = run_ok(Command::new(kv).arg("--strict").args(&files));
    for kind in [
        "deployment/fraudline",
        "service/fraudline",
        "service/fraudline-metrics",
        "poddisruptionbudget/fraudline",
        "configmap/fraudline-rules",
        "configmap/fraudline-blocklist",
        "configmap/fraudline-config",
    ] {
        assert!(
            out.contains(&format!("passed for resource {kind}")),
            "{kind}:\n{out}"
        );
    }
    // Every manifest is listed in the kustomization.
    let k = read("deploy/k8s/kustomization.yaml");
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy();
        assert!(
            k.contains(&format!("- {name}\n")),
            "{name} not in kustomization.yaml"
        );
    }
}

/// The block under `key: |` in a YAML file, unindented.
fn block_scalar(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    let head = lines.next().unwrap_or_else(|| panic!("no {key}: |"));
    let indent = head.len() - head.trim_start().len() + 2;
    let mut out = String::new();
    for l in lines {
        if !l.is_empty() && l.len() - l.trim_start().len() < indent {
            break;
        }
        out.push_str(l.get(indent..).unwrap_or(""));
        out.push('\n');
    }
    out
}

#[test]
fn kubernetes_configmaps_hold_a_valid_config_the_default_rules_and_a_valid_blocklist() {
    let dir = tempfile::tempdir().unwrap();
    // The rules: the default pack, verbatim.
    let rules = block_scalar(&read("deploy/k8s/configmap-rules.yaml"), "rules.toml");
    assert_eq!(
        rules,
        read("deploy/rules/default.toml"),
        "configmap-rules.yaml drifted from deploy/rules/default.toml"
    );
    let rules_path = dir.path().join("rules.toml");
    std::fs::write(&rules_path, &rules).unwrap();
    // The blocklist: loads with no bad line.
    let list = block_scalar(
        &read("deploy/k8s/configmap-blocklist.yaml"),
        "blocklist.csv",
    );
    let list_path = dir.path().join("blocklist.csv");
    std::fs::write(&list_path, list).unwrap();
    let l =
        fraudline::reload::blocklist::load(&list_path, 0).expect("the ConfigMap's blocklist loads");
    assert_eq!(l.entries.len(), 2);
    // The service config, with the mount paths pointing at those files:
    // accepted by fraudline's own loader.
    let cfg = block_scalar(&read("deploy/k8s/configmap-config.yaml"), "fraudline.toml");
    assert!(cfg.contains("\"/etc/fraudline/rules/rules.toml\""));
    assert!(cfg.contains("\"/etc/fraudline/blocklist/blocklist.csv\""));
    let cfg = cfg
        .replace(
            "/etc/fraudline/rules/rules.toml",
            &rules_path.to_string_lossy(),
        )
        .replace(
            "/etc/fraudline/blocklist/blocklist.csv",
            &list_path.to_string_lossy(),
        );
    let path = dir.path().join("fraudline.toml");
    std::fs::write(&path, &cfg).unwrap();
    let c = fraudline::config::Config::load(Some(&path)).expect("the ConfigMap's config loads");
    assert_eq!(c.http_listen().map(|a| a.port()), Some(9464));
    // The Service sends in-line calls: the API is on, and a terminating pod
    // leaves the Service before its listeners close.
    assert!(c.inline.enabled, "the ConfigMap turns the in-line API on");
    assert!(c.inline.shutdown_delay_ms > 0);
    // Ports: metrics/health, in-line gRPC and HTTP on the Deployment and Service.
    for f in ["deploy/k8s/deployment.yaml", "deploy/k8s/service.yaml"] {
        let t = read(f);
        for port in ["9464", "50051", "8080"] {
            assert!(t.contains(port), "{f} lacks port {port}");
        }
    }
    let dep = read("deploy/k8s/deployment.yaml");
    for probe in ["path: /healthz", "path: /readyz", "requests:", "limits:"] {
        assert!(dep.contains(probe), "deployment lacks {probe}");
    }
    assert!(
        !dep.contains("subPath:"),
        "subPath mounts never see ConfigMap updates"
    );
}

#[test]
fn compose_mounts_files_that_exist_and_publishes_the_service_ports() {
    let compose_dir = repo().join("deploy/docker");
    let text = read("deploy/docker/compose.yaml");
    let mut mounts = 0;
    for line in text.lines() {
        let l = line.trim().trim_start_matches("- ");
        if let Some(src) = l.strip_prefix("../").map(|s| s.split(':').next().unwrap()) {
            let p = compose_dir.join("..").join(src);
            assert!(
                Path::new(&p).exists(),
                "compose mounts {src}, which does not exist"
            );
            mounts += 1;
        }
    }
    assert!(mounts >= 4, "{mounts} mounts");
    for port in ["\"9464:9464\"", "\"50051:50051\"", "\"8080:8080\""] {
        assert!(text.contains(port), "compose does not publish {port}");
    }
    assert!(text.contains("dockerfile: deploy/docker/Dockerfile"));
}

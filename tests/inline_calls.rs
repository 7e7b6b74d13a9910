//! In-line calls counted by what happened to them: calls a caller
//! abandons, and a burst from ghz past the concurrency bound under a 100 ms
//! deadline. These tests count exactly and the metrics recorder is
//! process-wide, so they have a binary of their own and take turns.

mod common;

use std::time::Duration;

use common::inline::{payment, post, series, Server};

/// One test at a time: each counts every call of the process.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Issue 12: calls whose caller went away before the answer (deadline
/// passed on the client's side, cancelled, connection closed) were not
/// counted at all (ghz: 153 of 1,000 calls missing from
/// fraudline_inline_requests_total). Every call is counted once, these
/// under code "abandoned".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_the_caller_abandons_are_counted_as_abandoned() {
    let _alone = ALONE.lock().await;
    let s = Server::start("debug_hold_ms = 600\ndefault_budget_ms = 5000\n").await;
    let before = s.metrics().await;
    // gRPC: the client gives up after 100 ms (no grpc-timeout sent, so the
    // server cannot know): the stream is reset and the server's call dropped.
    let mut c = s.client().await;
    let gone = tokio::time::timeout(Duration::from_millis(100), c.score(payment().to_wire())).await;
    assert!(gone.is_err(), "the call was answered within 100 ms");
    // HTTP: a whole request, then the connection closed before the answer.
    let mut raw = tokio::net::TcpStream::connect(s.bound.inline_http.unwrap())
        .await
        .unwrap();
    let body = payment().to_json();
    let req = format!(
        "POST /v1/score HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    use tokio::io::AsyncWriteExt as _;
    raw.write_all(req.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(raw);
    // One answered call of each protocol beside them.
    let mut c = s.client().await;
    c.score(payment().to_wire()).await.expect("answered");
    assert_eq!(post(&s.url(), payment().to_json()).await.status(), 200);

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let m = s.metrics().await;
    let counted = |protocol: &str| -> (f64, f64) {
        let codes = if protocol == "grpc" {
            fraudline::telemetry::INLINE_GRPC_CODES
        } else {
            fraudline::telemetry::INLINE_HTTP_CODES
        };
        let delta = |code: &str| {
            let name = format!(
                "fraudline_inline_requests_total{{protocol=\"{protocol}\",code=\"{code}\"}}"
            );
            series(&m, &name) - series(&before, &name)
        };
        (codes.iter().map(|c| delta(c)).sum(), delta("abandoned"))
    };
    let report = m
        .lines()
        .filter(|l| l.contains("inline_requests_total") || l.contains("inline_in_flight"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(counted("grpc"), (2.0, 1.0), "{report}");
    assert_eq!(counted("http"), (2.0, 1.0), "{report}");
    assert!(
        m.contains("fraudline_inline_in_flight{protocol=\"grpc\"} 0")
            && m.contains("fraudline_inline_in_flight{protocol=\"http\"} 0"),
        "{report}"
    );
    s.shutdown().await;
}

/// Issue 12: under a burst (ghz, 1,000 calls from 200 callers, fail-closed,
/// 100 ms deadline) 218 callers got DeadlineExceeded and 3 Cancelled instead
/// of the policy's DEGRADED answer (the budget counted from after the
/// message was decoded), and 153 calls were missing from
/// fraudline_inline_requests_total. Driven by ghz itself (installed by
/// deploy/ci/install-tools.sh) against a server whose engine is slowed to
/// 10 ms a call with 2 scoring at once (200 calls/s for 1,000 calls), so
/// most calls must be shed on their deadline. Asserted: every caller gets
/// an answer (OK: a verdict or the DEGRADED answer) or stops listening on
/// its own deadline, never another error; most answers are the DEGRADED
/// one; and every call is counted once, answered or abandoned. What the
/// callers saw and when the answers left are printed: in a debug build on
/// 2 cores shared with ghz, the transport and the starved server add 5-30
/// ms, which no server-side margin can promise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ghz_burst_past_the_bound_is_shed_and_every_call_counted() {
    let _alone = ALONE.lock().await;
    let ghz = common::tool("ghz");
    let s = Server::start(
        "max_concurrency = 2\nmax_queue = 1000\ndebug_hold_ms = 10\noverload_policy = \"fail-closed\"\n",
    )
    .await;
    let before = s.metrics().await;
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("ghz.json");
    let now = fraudline::now_ms();
    let data = format!(
        "{{\"event_id\":\"burst-{{{{.RequestNumber}}}}\",\"event_time_ms\":{now},\
         \"payer\":{{\"account\":\"{{{{randomInt 1000000 1100000}}}}\",\"bank_code\":\"MBB\",\"kind\":\"ACCOUNT_KIND_ACCOUNT\"}},\
         \"payee\":{{\"account\":\"{{{{randomInt 1000000 1100000}}}}\",\"bank_code\":\"TPB\",\"kind\":\"ACCOUNT_KIND_ACCOUNT\"}},\
         \"amount_minor\":\"150000\",\"currency\":\"VND\",\"channel\":\"CHANNEL_MOBILE\",\
         \"payment_type\":\"PAYMENT_TYPE_TRANSFER\",\"device_id\":\"dev-1\",\"ip\":\"10.1.2.3\",\"country\":\"VN\"}}"
    );
    let addr = s.grpc().to_string();
    let run = tokio::task::spawn_blocking({
        let out = out.clone();
        move || {
            std::process::Command::new(ghz)
                .args(["--insecure", "--call", "fraudline.v1.Scoring/Score"])
                .args(["-n", "1000", "-c", "200", "--timeout", "100ms"])
                .args(["--format", "json", "--output"])
                .arg(&out)
                .args(["-d", &data, &addr])
                .output()
                .expect("run ghz")
        }
    })
    .await
    .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).unwrap_or_default()).unwrap_or_else(|e| {
            panic!(
                "ghz wrote no report ({e}): {}",
                String::from_utf8_lossy(&run.stderr)
            )
        });
    let codes = &report["statusCodeDistribution"];
    eprintln!("ghz: what the 1,000 callers saw: {codes}");
    let client_ok = codes["OK"].as_f64().unwrap_or(0.0);
    let seen: f64 = codes
        .as_object()
        .map(|o| o.values().filter_map(|v| v.as_f64()).sum())
        .unwrap_or(0.0);
    assert_eq!(seen, 1000.0, "ghz made every call: {codes}");
    for code in codes.as_object().into_iter().flat_map(|o| o.keys()) {
        assert!(
            ["OK", "DeadlineExceeded", "Canceled"].contains(&code.as_str()),
            "a caller got {code}: {codes}"
        );
    }

    // Settle: abandoned calls finish on the server a little later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = s.metrics().await;
    let delta = |name: &str| series(&m, name) - series(&before, name);
    let grpc = |code: &str| {
        delta(&format!(
            "fraudline_inline_requests_total{{protocol=\"grpc\",code=\"{code}\"}}"
        ))
    };
    let counted: f64 = fraudline::telemetry::INLINE_GRPC_CODES
        .iter()
        .map(|c| grpc(c))
        .sum();
    assert_eq!(
        counted,
        1000.0,
        "every call counted once: OK {}, abandoned {}",
        grpc("OK"),
        grpc("abandoned")
    );
    assert!(
        grpc("OK") >= client_ok,
        "the server answered fewer calls than the callers received"
    );
    let shed = delta("fraudline_inline_shed_total{protocol=\"grpc\",reason=\"deadline\"}");
    assert!(
        shed >= 500.0,
        "{shed} DEGRADED answers: the burst did not test the deadline path"
    );
    // When the answers left, counted from each call's arrival: printed,
    // not asserted (a debug build on 2 cores shared with ghz starves the
    // server itself now and then; bench/inline.sh measures the release build).
    let within =
        delta("fraudline_inline_request_duration_seconds_bucket{protocol=\"grpc\",le=\"0.1\"}");
    eprintln!(
        "server: {} answered ({} of them within 100 ms of arrival), {} abandoned, {shed} shed on the deadline",
        grpc("OK"),
        within,
        grpc("abandoned")
    );
    s.shutdown().await;
}

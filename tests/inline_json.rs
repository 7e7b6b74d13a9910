//! Issue 15, the in-line HTTP contract as a switch integrator meets it: the
//! JSON that protobuf's own printer and common JSON libraries write, every
//! 4xx an RFC 9457 problem object (wrong method, framing errors included),
//! content types and encodings exactly as documented, stale payments.
//! In-process server, real sockets; protobuf's own Python library (PyPI)
//! prints the events and parses the answers.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::inline::{json, payment, Server};
use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Sends raw bytes on a fresh connection; returns what came back (the
/// connection closed, or 2 s passed).
async fn raw(s: &Server, bytes: &[u8]) -> String {
    let mut c = tokio::net::TcpStream::connect(s.bound.inline_http.unwrap())
        .await
        .unwrap();
    c.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status and problem object of a raw answer; panics when the body is
/// not a problem object.
fn problem_of(answer: &str) -> (u16, serde_json::Value) {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer: {answer:?}"));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{answer}"
    );
    let status = head[9..12].parse().unwrap();
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(v["status"], status, "{answer}");
    assert!(v["type"]
        .as_str()
        .unwrap()
        .starts_with("urn:fraudline:problem:"));
    (status, v)
}

async fn send(
    s: &Server,
    method: reqwest::Method,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let mut r = reqwest::Client::new().request(method, s.url()).body(body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let h = r.headers().clone();
    (status, h, json(r).await)
}

async fn post_with(
    s: &Server,
    ct: Option<&str>,
    ce: Option<&str>,
    body: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let mut h = Vec::new();
    if let Some(ct) = ct {
        h.push(("content-type", ct));
    }
    if let Some(ce) = ce {
        h.push(("content-encoding", ce));
    }
    send(s, reqwest::Method::POST, &h, body).await
}

/// Posts a payment; asserts 200; the verdict.
async fn score(s: &Server, p: &fraudline::event::Payment) -> serde_json::Value {
    let (status, _, v) =
        post_with(s, Some("application/json"), None, p.to_json().into_bytes()).await;
    assert_eq!(status, 200, "{v}");
    v
}

/// Issue 15: GET or PUT on /v1/score and malformed request lines got an
/// empty-bodied 405 / 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_4xx_is_a_problem_object_framing_errors_and_405_included() {
    let s = Server::start("").await;
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"POST /v1/score HTTP/1.1\r\nhost: x\r\ncontent-length: zz\r\n\r\n",
        b"POST /v1/score HTTP/1.1\r\nhost x\r\n\r\n",
    ] {
        let answer = raw(&s, bad).await;
        let (status, v) = problem_of(&answer);
        assert_eq!(status, 400, "{answer}");
        assert_eq!(v["code"], "bad_request");
    }
    let huge = format!(
        "POST /v1/score HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(512 * 1024)
    );
    let answer = raw(&s, huge.as_bytes()).await;
    let (status, _) = problem_of(&answer);
    assert!(status == 431 || status == 400, "{answer}");

    for m in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let (status, h, v) = send(&s, m.clone(), &[], Vec::new()).await;
        assert_eq!(status, 405, "{m}: {v}");
        assert_eq!(v["code"], "method_not_allowed");
        assert_eq!(h["allow"], "POST");
        assert_eq!(h["content-type"], "application/problem+json");
    }
    let r = reqwest::get(s.url().replace("/v1/score", "/v1/nothing"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(json(r).await["code"], "not_found");
    // The connection that answered a good call is still good afterwards.
    let body = payment().to_json();
    let (status, _, _) = send(
        &s,
        reqwest::Method::POST,
        &[("content-type", "application/json")],
        body.into_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    s.shutdown().await;
}

/// Issue 15: `text/json`, `application/jsonx`, `application/x-ndjson` were
/// accepted though the README promises 415; a gzip body got `bad_utf8`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_types_and_encodings_are_exactly_as_documented() {
    let s = Server::start("").await;
    let post = |ct, ce, body| post_with(&s, ct, ce, body);
    for ct in [
        "text/json",
        "application/jsonx",
        "application/x-ndjson",
        "application/json; charset=latin1",
        "application/x-www-form-urlencoded",
        "application/problem+json",
    ] {
        let (status, _, v) = post(Some(ct), None, payment().to_json().into_bytes()).await;
        assert_eq!(status, 415, "{ct}: {v}");
        assert_eq!(v["code"], "unsupported_media_type", "{ct}");
    }
    for ct in [
        Some("application/json"),
        Some("Application/JSON; charset=\"UTF-8\""),
        Some("application/json;charset=utf-8"),
        None,
    ] {
        let (status, _, v) = post(ct, None, payment().to_json().into_bytes()).await;
        assert_eq!(status, 200, "{ct:?}: {v}");
    }
    let gz = |bytes: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    };
    let p = payment();
    let (status, _, v) = post(
        Some("application/json"),
        Some("gzip"),
        gz(p.to_json().as_bytes()),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["event_id"], p.event_id.as_str());
    // A small body that inflates past the limit (64 KiB) is refused.
    let bomb = gz(&vec![b' '; 4 << 20]);
    assert!(bomb.len() < 10_000);
    let (status, _, v) = post(Some("application/json"), Some("gzip"), bomb).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (413, Some("too_large")),
        "{v}"
    );
    let (status, _, v) = post(Some("application/json"), Some("gzip"), b"not gzip".to_vec()).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("bad_encoding")),
        "{v}"
    );
    let (status, h, v) = post(Some("application/json"), Some("br"), b"{}".to_vec()).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (415, Some("unsupported_encoding")),
        "{v}"
    );
    assert_eq!(h["accept-encoding"], "gzip");
    s.shutdown().await;
}

/// Issue 15: input errors name the field; wrong shapes and duplicate keys
/// are refused with a code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_code_and_the_field() {
    let s = Server::start("").await;
    let base = payment().to_json();
    let cases = [
        (
            base.replacen("\"amount_minor\":", "\"amount_minor\":\"75x\",\"x\":", 1),
            "bad_json",
            Some("amount_minor"),
        ),
        (format!("[{base}]"), "not_an_object", None),
        (
            base.replacen(
                '{',
                r#"{"attributes":{"call_in_progress":"true","call_in_progress":"false"},"#,
                1,
            )
            .replacen("\"attributes\":{}", "", 1),
            "duplicate_key",
            Some("attributes"),
        ),
        (
            base.replacen("\"event_id\":", "\"eventId\":\"other\",\"event_id\":", 1),
            "duplicate_key",
            Some("event_id"),
        ),
    ];
    for (body, code, field) in cases {
        let (status, _, v) = send(
            &s,
            reqwest::Method::POST,
            &[("content-type", "application/json")],
            body.clone().into_bytes(),
        )
        .await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["code"], code, "{body}: {v}");
        assert_eq!(v["field"].as_str(), field, "{body}: {v}");
    }
    s.shutdown().await;
}

/// Issue 15: a payment replayed in-line with an event time 2 days old was
/// counted as current, and the customer's next payment went HOLD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_payment_does_not_count_as_current() {
    let s = Server::start_env("", &[("FRAUDLINE_ENGINE__EXPLAIN_IN_VERDICTS", "true")]).await;
    let fresh = payment();
    let first = score(&s, &fresh).await;
    assert_eq!(first["features"]["payer.count_1h"], 1.0, "{first}");
    let mut old = fresh.clone();
    old.event_id = format!("{}-replayed", fresh.event_id);
    old.event_time_ms -= 2 * 86_400_000;
    let v = score(&s, &old).await;
    let rules: Vec<&str> = v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["rule_id"].as_str())
        .collect();
    assert!(rules.contains(&"STALE_EVENT"), "{v}");
    let mut next = fresh.clone();
    next.event_id = format!("{}-next", fresh.event_id);
    next.event_time_ms += 1_000;
    let v = score(&s, &next).await;
    assert_eq!(
        v["features"]["payer.count_1h"], 2.0,
        "the stale payment is not in the payer's hour: {v}"
    );
    s.shutdown().await;

    // With `stale_events = "refuse"`: 400, code stale_event.
    let s = Server::start_env("", &[("FRAUDLINE_LIMITS__STALE_EVENTS", "refuse")]).await;
    let (status, _, v) = send(
        &s,
        reqwest::Method::POST,
        &[("content-type", "application/json")],
        old.to_json().into_bytes(),
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("stale_event")),
        "{v}"
    );
    assert_eq!(v["field"], "event_time_ms");
    s.shutdown().await;
}

/// Issue 15 item 1: protobuf's own JSON printer (Python `protobuf`, PyPI)
/// prints 300 random PaymentEvents three ways (lowerCamelCase, .proto
/// names, and .proto names with every absent field `null`); each decodes
/// to exactly the event protobuf encodes in binary, and the verdicts of a
/// sample, answered over HTTP, parse strictly (unknown fields refused) as
/// `fraudline.v1.Verdict` with protobuf's own parser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobufs_own_json_printer_and_parser_round_trip() {
    let site = common::protobuf_site();
    let dir = tempfile::tempdir().unwrap();
    let fds = dir.path().join("fraudline.desc");
    std::fs::write(&fds, fraudline::proto::FILE_DESCRIPTOR_SET).unwrap();
    let script = common::repo().join("tests/proto3_json.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&fds)
        .args(["print", "300", "15"])
        .env("PYTHONPATH", &site)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 300);
    let limits = fraudline::event::Limits::default();
    for l in &lines {
        let bin = base64::engine::general_purpose::STANDARD
            .decode(l["binary"].as_str().unwrap())
            .unwrap();
        let want = fraudline::proto::PaymentEvent::decode(bin.as_slice()).unwrap();
        for form in ["camel", "names", "nulls"] {
            let text = l[form].as_str().unwrap();
            let got = fraudline::event::decode_wire(
                text.as_bytes(),
                Some(fraudline::event::Format::Json),
                &limits,
            )
            .unwrap_or_else(|e| panic!("{form}: {e}: {text}"));
            assert_eq!(got, want, "{form}: {text}");
        }
    }

    let s = Server::start("").await;
    let mut verdicts = String::new();
    let mut sent = Vec::new();
    for l in lines.iter().take(40) {
        let text = l["camel"].as_str().unwrap();
        let (status, _, v) = send(
            &s,
            reqwest::Method::POST,
            &[("content-type", "application/json")],
            text.as_bytes().to_vec(),
        )
        .await;
        assert_eq!(status, 200, "{text}: {v}");
        verdicts.push_str(&v.to_string());
        verdicts.push('\n');
        sent.push(v);
    }
    s.shutdown().await;
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(&fds)
        .arg("parse")
        .env("PYTHONPATH", &site)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(verdicts.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "protobuf's parser refused a verdict: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed.len(), sent.len());
    for (p, v) in parsed.iter().zip(&sent) {
        assert_eq!(p["event_id"], v["event_id"]);
        assert_eq!(p["decision"], v["decision"]);
        assert_eq!(p["score"], v["score"]);
        assert_eq!(
            p["decided_at_ms"].to_string(),
            v["decided_at_ms"].as_str().unwrap()
        );
    }
}

//! The in-line scoring API over real sockets on 127.0.0.1: the server runs
//! in-process (`app::run_with`, in-line only, port 0 everywhere), and is
//! called with a real tonic client and a real HTTP client (reqwest).
//! What a payment switch relies on: a verdict, the same verdict on a retry,
//! a defined answer under overload or near the deadline, refusal without
//! credentials, errors that name the field, and a drain on shutdown.

mod common;

use std::time::{Duration, Instant};

use fraudline::config::Config;
use fraudline::proto::scoring_client::ScoringClient;
use fraudline::proto::{self, PaymentEvent};
use tonic::transport::Channel;

use common::inline::{json, payment, payments, post, series, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_scores_and_serves_health_and_reflection() {
    let s = Server::start("").await;
    let mut c = s.client().await;
    let p = payment();
    let r = c.score(p.to_wire()).await.unwrap();
    assert!(r.metadata().get("fraudline-replay").is_none());
    let v = r.into_inner();
    assert_eq!(v.event_id, p.event_id);
    assert_eq!(v.event_time_ms, p.event_time_ms);
    assert_ne!(v.decision, proto::Decision::Unspecified as i32);
    assert!(!v.rules_version.is_empty());
    assert!(v.decided_at_ms > 0);
    assert!(v.reasons.iter().all(|r| r.rule_id != "DEGRADED"));

    // The standard health service.
    let ch = Channel::from_shared(format!("http://{}", s.grpc()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in ["", "fraudline.v1.Scoring"] {
        let h = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            h.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }

    // Reflection lists the service and describes its messages, so grpcurl
    // needs no .proto files.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut refl = ServerReflectionClient::new(ch);
    let reqs = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "fraudline.v1.Scoring".into(),
            )),
        },
    ];
    let mut answers = refl
        .server_reflection_info(futures::stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"fraudline.v1.Scoring"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors")
    };
    assert!(!files.file_descriptor_proto.is_empty());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_scores_the_kafka_json_event_on_the_same_engine() {
    let s = Server::start("").await;
    let p = payment();
    let r = post(&s.url(), p.to_json()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v = json(r).await;
    assert_eq!(v["event_id"], p.event_id.as_str());
    assert!(
        ["DECISION_ALLOW", "DECISION_REVIEW", "DECISION_HOLD"]
            .contains(&v["decision"].as_str().unwrap()),
        "{v}"
    );
    // proto3 JSON: 64-bit integers as decimal strings.
    assert_eq!(v["event_time_ms"], p.event_time_ms.to_string());
    // Same engine and cache behind both protocols: the gRPC retry of the
    // HTTP call is a replay with the same decision and score.
    let mut c = s.client().await;
    let r = c.score(p.to_wire()).await.unwrap();
    assert_eq!(r.metadata().get("fraudline-replay").unwrap(), "true");
    let g = r.into_inner();
    assert_eq!(
        proto::Decision::try_from(g.decision).unwrap().as_str_name(),
        v["decision"].as_str().unwrap()
    );
    assert_eq!(g.score as i64, v["score"].as_i64().unwrap());
    assert_eq!(
        g.decided_at_ms.to_string(),
        v["decided_at_ms"].as_str().unwrap()
    );
    s.shutdown().await;
}

/// Each case: a change to a valid event, and the field the error must name.
type Change = Box<dyn Fn(&mut PaymentEvent)>;

fn bad_cases() -> Vec<(&'static str, Change, &'static str)> {
    vec![
        ("no event_id", Box::new(|e| e.event_id.clear()), "event_id"),
        (
            "no event time",
            Box::new(|e| e.event_time_ms = 0),
            "event_time_ms",
        ),
        (
            "seconds, not ms",
            Box::new(|e| e.event_time_ms = 1_700_000_000),
            "event_time_ms",
        ),
        (
            "an hour ahead",
            Box::new(|e| e.event_time_ms = fraudline::now_ms() + 3_600_000),
            "event_time_ms",
        ),
        ("no payer", Box::new(|e| e.payer = None), "payer"),
        (
            "no payee account",
            Box::new(|e| e.payee.as_mut().unwrap().account.clear()),
            "payee.account",
        ),
        (
            "zero amount",
            Box::new(|e| e.amount_minor = 0),
            "amount_minor",
        ),
        (
            "negative amount",
            Box::new(|e| e.amount_minor = -5),
            "amount_minor",
        ),
        ("no currency", Box::new(|e| e.currency.clear()), "currency"),
        (
            "bad currency",
            Box::new(|e| e.currency = "XYZ".into()),
            "currency",
        ),
        ("bad channel", Box::new(|e| e.channel = 99), "channel"),
        (
            "bad latitude",
            Box::new(|e| {
                e.geo = Some(proto::Geo {
                    lat: 91.0,
                    lon: 0.0,
                })
            }),
            "geo.lat",
        ),
        (
            "long device id",
            Box::new(|e| e.device_id = "d".repeat(300)),
            "device_id",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bad_input_is_invalid_argument_naming_the_field() {
    let s = Server::start("max_request_bytes = 4096\n").await;
    let mut c = s.client().await;
    for (name, change, field) in bad_cases() {
        let mut e = payment().to_wire();
        change(&mut e);
        let err = c.score(e).await.expect_err(name);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}: {err:?}");
        assert_eq!(
            err.metadata()
                .get("fraudline-field")
                .map(|v| v.to_str().unwrap()),
            Some(field),
            "{name}: {err:?}"
        );
        assert!(
            err.metadata().get("fraudline-error-code").is_some(),
            "{name}"
        );
    }
    // Over the size limit: refused by the codec, never scored.
    let mut e = payment().to_wire();
    e.attributes.insert("blob".into(), "x".repeat(10_000));
    let err = c.score(e).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    // A malformed deadline header.
    let mut req = tonic::Request::new(payment().to_wire());
    req.metadata_mut()
        .insert("grpc-timeout", "soon".parse().unwrap());
    let err = c.score(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    // Nothing bad reached the engine: the server still scores.
    assert!(c.score(payment().to_wire()).await.is_ok());
    let m = s.metrics().await;
    assert!(
        series(
            &m,
            "fraudline_inline_requests_total{protocol=\"grpc\",code=\"INVALID_ARGUMENT\"}"
        ) >= bad_cases().len() as f64 + 1.0,
        "{m}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bad_input_is_a_problem_object_naming_the_field() {
    let s = Server::start("max_request_bytes = 4096\n").await;
    let url = s.url();
    for (name, change, field) in bad_cases() {
        if name == "bad channel" {
            continue; // JSON names enums; "unknown channel name" below covers it
        }
        let mut e = payment().to_wire();
        change(&mut e);
        let body = serde_json::to_string(&fraudline::event::JsonEvent::from_wire(&e)).unwrap();
        let r = post(&url, body).await;
        assert_eq!(r.status(), 400, "{name}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let p = json(r).await;
        assert_eq!(p["status"], 400, "{name}: {p}");
        assert_eq!(p["field"], field, "{name}: {p}");
        assert!(p["code"].as_str().is_some_and(|c| !c.is_empty()), "{p}");
        assert!(p["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:fraudline:problem:"));
        assert!(p["detail"].as_str().is_some(), "{p}");
    }
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = {
        let c = reqwest::Client::new();
        vec![
            (
                "not JSON",
                c.post(&url)
                    .header("content-type", "application/json")
                    .body("{not json"),
                400,
                "bad_json",
            ),
            (
                "wrong type",
                c.post(&url)
                    .header("content-type", "application/json")
                    .body(r#"{"event_id": 5}"#),
                400,
                "bad_json",
            ),
            (
                "empty body",
                c.post(&url).header("content-type", "application/json"),
                400,
                "empty",
            ),
            (
                "unknown channel name",
                c.post(&url)
                    .header("content-type", "application/json")
                    .body(
                        payment()
                            .to_json()
                            .replace("\"channel\":\"", "\"channel\":\"PIGEON"),
                    ),
                400,
                "invalid_field",
            ),
            (
                "too large",
                c.post(&url)
                    .header("content-type", "application/json")
                    .body(format!("{{\"event_id\":\"{}\"}}", "x".repeat(8000))),
                413,
                "too_large",
            ),
            (
                "protobuf body",
                c.post(&url)
                    .header("content-type", "application/x-protobuf")
                    .body(payment().to_protobuf()),
                415,
                "unsupported_media_type",
            ),
            (
                "bad timeout header",
                c.post(&url)
                    .header("content-type", "application/json")
                    .header("x-fraudline-timeout-ms", "soon")
                    .body(payment().to_json()),
                400,
                "invalid_timeout",
            ),
            (
                "unknown path",
                c.post(url.replace("/v1/score", "/v1/scores")).body("{}"),
                404,
                "not_found",
            ),
        ]
    };
    for (name, req, status, code) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{name}");
        let p = json(r).await;
        assert_eq!(p["code"], code, "{name}: {p}");
    }
    // Without a content-type the body is taken as JSON.
    let r = reqwest::Client::new()
        .post(&url)
        .body(payment().to_json())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_gets_the_first_verdict_and_features_move_once() {
    let s = Server::start("").await;
    // Three payments by one payer: A, A again (a retry), then B.
    let mut ps = payments(1);
    let a = ps.remove(0);
    let mut b = a.clone();
    b.event_id = format!("{}-b", a.event_id);
    b.event_time_ms = a.event_time_ms + 1_000;
    b.payee.account = format!("{}9", a.payee.account);
    let first = json(post(&s.url(), a.to_json()).await).await;
    let r = post(&s.url(), a.to_json()).await;
    assert_eq!(r.headers()["fraudline-replay"], "true");
    let again = json(r).await;
    assert_eq!(first, again, "a retry returns the first verdict unchanged");
    let mut c = s.client().await;
    let g = c.score(a.to_wire()).await.unwrap();
    assert_eq!(g.metadata().get("fraudline-replay").unwrap(), "true");
    let vb = c.score(b.to_wire()).await.unwrap().into_inner();

    // A reference engine that sees A once, then B, gives B the same verdict:
    // the retries did not count A twice.
    let cfg = Config::from_parts(None, None, Vec::new()).unwrap();
    let reference = fraudline::engine::Engine::new(cfg.engine());
    reference.score(&a);
    let rb = reference.score(&b);
    assert_eq!(vb.score, rb.score);
    assert_eq!(vb.decision, rb.decision.to_wire() as i32);
    let ids = |v: &[proto::Reason]| v.iter().map(|r| r.rule_id.clone()).collect::<Vec<_>>();
    let rids: Vec<String> = rb.reasons.iter().map(|r| r.rule_id.to_string()).collect();
    assert_eq!(ids(&vb.reasons), rids);
    // And one that sees A twice gives the same too (the engine's own dedup),
    // while B differs from what a B-first engine would say only through A.
    let m = s.metrics().await;
    assert!(
        series(
            &m,
            "fraudline_inline_idempotent_replays_total{protocol=\"http\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(
        series(
            &m,
            "fraudline_inline_idempotent_replays_total{protocol=\"grpc\"}"
        ) >= 1.0
    );

    // The same event_id for a different payment is refused, not replayed.
    let mut other = a.clone();
    other.amount_minor += 1;
    let r = post(&s.url(), other.to_json()).await;
    assert_eq!(r.status(), 409);
    assert_eq!(json(r).await["code"], "event_id_reused");
    let err = c.score(other.to_wire()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_queued_past_its_deadline_gets_the_policy_answer_in_time() {
    // One slot, held 600 ms per call: a second call waits in the queue.
    let s = Server::start(
        "max_concurrency = 1\nmax_queue = 10\ndebug_hold_ms = 800\ndefault_budget_ms = 5000\noverload_policy = \"fail-closed\"\n",
    )
    .await;
    let url = s.url();
    let blocker = tokio::spawn({
        let url = url.clone();
        async move { post(&url, payment().to_json()).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    // HTTP with a 200 ms budget: the server gives up at 160 ms (a fifth of
    // the budget left for the answer's way back).
    let http = reqwest::Client::new();
    let t = Instant::now();
    let r = http
        .post(&url)
        .header("x-fraudline-timeout-ms", "200")
        .body(payment().to_json())
        .send()
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["fraudline-degraded"], "deadline");
    // Given up at 160 ms, not after the 800 ms the slot is held. (The upper
    // bound has slack: the test shares 2 cores with the server and the client.)
    assert!(
        took >= Duration::from_millis(155),
        "answered after {took:?}"
    );
    assert!(took < Duration::from_millis(400), "answered after {took:?}");
    let v = json(r).await;
    assert_eq!(v["decision"], "DECISION_HOLD");
    assert_eq!(v["reasons"][0]["rule_id"], "DEGRADED");

    // gRPC with a 200 ms deadline: the answer is a verdict, not
    // DEADLINE_EXCEEDED, given up at 160 ms.
    let mut c = s.client().await;
    let mut req = tonic::Request::new(payment().to_wire());
    req.set_timeout(Duration::from_millis(200));
    let t = Instant::now();
    let r = c.score(req).await.expect("a verdict before the deadline");
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(155), "{took:?}");
    assert!(took < Duration::from_millis(400), "{took:?}");
    assert_eq!(r.metadata().get("fraudline-degraded").unwrap(), "deadline");
    let v = r.into_inner();
    assert_eq!(v.decision, proto::Decision::Hold as i32);
    assert_eq!(v.reasons[0].rule_id, "DEGRADED");

    // A zero budget is past its deadline on arrival.
    let r = http
        .post(&url)
        .header("x-fraudline-timeout-ms", "0")
        .body(payment().to_json())
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["fraudline-degraded"], "deadline");

    // The call that held the slot got its real verdict.
    let b = blocker.await.unwrap();
    assert!(b.headers().get("fraudline-degraded").is_none());
    assert_eq!(b.status(), 200);
    let m = s.metrics().await;
    assert!(
        series(
            &m,
            "fraudline_inline_shed_total{protocol=\"http\",reason=\"deadline\"}"
        ) >= 2.0
    );
    assert!(
        series(
            &m,
            "fraudline_inline_shed_total{protocol=\"grpc\",reason=\"deadline\"}"
        ) >= 1.0
    );
    s.shutdown().await;
}

/// Drives `n` concurrent calls of each protocol past a bound of 2 scoring +
/// 2 queued; every call that is not scored must be the policy's answer.
async fn overload(policy: &str, expect: &str) {
    let s = Server::start(&format!(
        "max_concurrency = 2\nmax_queue = 2\ndebug_hold_ms = 500\ndefault_budget_ms = 10000\noverload_policy = \"{policy}\"\n"
    ))
    .await;
    let n = 24;
    // HTTP.
    let client = reqwest::Client::new();
    let calls = payments(n).into_iter().map(|p| {
        let (client, url) = (client.clone(), s.url());
        tokio::spawn(async move {
            let t = Instant::now();
            let r = client.post(&url).body(p.to_json()).send().await.unwrap();
            let degraded = r
                .headers()
                .get("fraudline-degraded")
                .map(|v| v.to_str().unwrap().to_string());
            let status = r.status().as_u16();
            (status, degraded, json(r).await, t.elapsed())
        })
    });
    let answers = futures::future::join_all(calls).await;
    let mut scored = 0;
    for a in answers {
        let (status, degraded, v, took) = a.unwrap();
        assert_eq!(status, 200, "{v}");
        match degraded {
            None => scored += 1,
            Some(reason) => {
                assert_eq!(reason, "overload");
                assert_eq!(v["decision"], format!("DECISION_{expect}"), "{v}");
                assert_eq!(v["reasons"].as_array().unwrap().len(), 1, "{v}");
                assert_eq!(v["reasons"][0]["rule_id"], "DEGRADED", "{v}");
                assert!(
                    took < Duration::from_millis(400),
                    "a shed call waited {took:?}"
                );
            }
        }
    }
    assert!(
        (2..=4).contains(&scored),
        "{scored} scored past a bound of 2 + 2"
    );

    // gRPC.
    let c = s.client().await;
    let calls = payments(n).into_iter().map(|p| {
        let mut c = c.clone();
        tokio::spawn(async move { c.score(p.to_wire()).await })
    });
    let answers = futures::future::join_all(calls).await;
    let mut scored = 0;
    for a in answers {
        let r = a.unwrap().expect("every call gets a verdict");
        match r.metadata().get("fraudline-degraded") {
            None => scored += 1,
            Some(reason) => {
                assert_eq!(reason, "overload");
                let v = r.into_inner();
                assert_eq!(
                    proto::Decision::try_from(v.decision).unwrap().as_str_name(),
                    format!("DECISION_{expect}")
                );
                assert_eq!(v.reasons.len(), 1);
                assert_eq!(v.reasons[0].rule_id, "DEGRADED");
            }
        }
    }
    assert!(
        (2..=4).contains(&scored),
        "{scored} scored past a bound of 2 + 2"
    );

    let m = s.metrics().await;
    for p in ["http", "grpc"] {
        assert!(
            series(
                &m,
                &format!("fraudline_inline_shed_total{{protocol=\"{p}\",reason=\"overload\"}}")
            ) >= (n - 4) as f64,
            "{m}"
        );
    }
    for name in [
        "fraudline_inline_requests_total{protocol=\"http\",code=\"200\"}",
        "fraudline_inline_requests_total{protocol=\"grpc\",code=\"OK\"}",
        "fraudline_inline_request_duration_seconds_bucket{protocol=\"grpc\",le=\"0.0005\"}",
        "fraudline_inline_in_flight{protocol=\"http\"}",
        "fraudline_verdicts_total{decision=\"",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_fail_closed_answers_hold() {
    overload("fail-closed", "HOLD").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_fail_open_answers_allow() {
    overload("fail-open", "ALLOW").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_valid_token_are_refused_before_scoring() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# switch A\nswitch-a-token\nswitch-b-token\n").unwrap();
    let s = Server::start(&format!("bearer_tokens_file = \"{}\"\n", tokens.display())).await;
    let p = payment();
    // HTTP: no token, a wrong one, the wrong scheme.
    for auth in [None, Some("Bearer nope"), Some("Basic switch-a-token")] {
        let mut req = reqwest::Client::new().post(s.url()).body(p.to_json());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert_eq!(json(r).await["code"], "unauthenticated");
    }
    // gRPC: the same.
    let mut c = s.client().await;
    for auth in [None, Some("Bearer nope")] {
        let mut req = tonic::Request::new(p.to_wire());
        if let Some(a) = auth {
            req.metadata_mut()
                .insert("authorization", a.parse().unwrap());
        }
        let err = c.score(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{auth:?}");
    }
    // With a token the same payment is scored for the first time: the
    // refused calls never reached the engine or the cache.
    let r = reqwest::Client::new()
        .post(s.url())
        .header("authorization", "Bearer switch-a-token")
        .body(p.to_json())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("fraudline-replay").is_none());
    let mut req = tonic::Request::new(p.to_wire());
    req.metadata_mut()
        .insert("authorization", "Bearer switch-b-token".parse().unwrap());
    let r = c.score(req).await.unwrap();
    assert_eq!(r.metadata().get("fraudline-replay").unwrap(), "true");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fraudline test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(vec!["switch-a".into()]).unwrap();
    client_params
        .distinguished_name
        .push(DnType::CommonName, "switch-a");
    let client = client_params.signed_by(&client_key, &ca, &ca_key).unwrap();
    let write = |name: &str, pem: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p.display().to_string()
    };
    let ca_pem = ca.pem();
    let s = Server::start(&format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"\n",
        write("server.pem", server.pem()),
        write("server.key", server_key.serialize_pem()),
        write("ca.pem", ca_pem.clone()),
    ))
    .await;
    let grpc_port = s.grpc().port();
    let http_port = s.bound.inline_http.unwrap().port();
    let p = payment();

    // gRPC with a client certificate: scored.
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca_pem))
        .domain_name("localhost");
    let ch = Channel::from_shared(format!("https://localhost:{grpc_port}"))
        .unwrap()
        .tls_config(
            tls.clone()
                .identity(Identity::from_pem(client.pem(), client_key.serialize_pem())),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let v = ScoringClient::new(ch).score(p.to_wire()).await.unwrap();
    assert_eq!(v.into_inner().event_id, p.event_id);
    // Without one: no connection, no scoring.
    let refused = match Channel::from_shared(format!("https://localhost:{grpc_port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
    {
        Err(_) => true,
        Ok(ch) => ScoringClient::new(ch)
            .score(payment().to_wire())
            .await
            .is_err(),
    };
    assert!(refused, "a call without a client certificate was answered");
    // Plain text to the TLS port fails too.
    let mut plain = ScoringClient::connect(format!("http://127.0.0.1:{grpc_port}"))
        .await
        .unwrap();
    assert!(plain.score(payment().to_wire()).await.is_err());

    // HTTP over TLS with a client certificate: scored (a replay of the gRPC call).
    let mut identity = client.pem();
    identity.push_str(&client_key.serialize_pem());
    let with_cert = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap())
        .resolve("localhost", ([127, 0, 0, 1], http_port).into())
        .build()
        .unwrap();
    let url = format!("https://localhost:{http_port}/v1/score");
    let r = with_cert.post(&url).body(p.to_json()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["fraudline-replay"], "true");
    let without = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .resolve("localhost", ([127, 0, 0, 1], http_port).into())
        .build()
        .unwrap();
    assert!(without
        .post(&url)
        .body(payment().to_json())
        .send()
        .await
        .is_err());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_calls_and_turns_not_ready() {
    let s = Server::start("debug_hold_ms = 700\ndefault_budget_ms = 5000\n").await;
    let ready = format!("http://{}/readyz", s.bound.http.unwrap());
    assert_eq!(reqwest::get(&ready).await.unwrap().status(), 200);
    let url = s.url();
    let p = payment();
    let call = tokio::spawn({
        let (url, body) = (url.clone(), p.to_json());
        async move { reqwest::Client::new().post(&url).body(body).send().await }
    });
    let mut c = s.client().await;
    let g = tokio::spawn({
        let w = payment().to_wire();
        async move { c.score(w).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let Server {
        bound,
        mut stop,
        task,
        _dir,
    } = s;
    let _ = stop.take().unwrap().send(());
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Draining: not ready, and no new connections.
    assert_eq!(reqwest::get(&ready).await.unwrap().status(), 503);
    assert!(
        tokio::net::TcpStream::connect(bound.inline_http.unwrap())
            .await
            .is_err(),
        "the HTTP listener still accepts"
    );
    // The calls in flight finish with real verdicts.
    let r = call
        .await
        .unwrap()
        .expect("the in-flight HTTP call is answered");
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("fraudline-degraded").is_none());
    assert_eq!(json(r).await["event_id"], p.event_id.as_str());
    let r = g
        .await
        .unwrap()
        .expect("the in-flight gRPC call is answered");
    assert!(r.metadata().get("fraudline-degraded").is_none());
    let r = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the server stops after the drain")
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_refuses_bad_inline_keys_by_name() {
    let err = Config::from_parts(
        Some("[kafka]\npayments_topic = \"\"\n[inline]\nenabled = true\nmax_queu = 3\n"),
        Some("f.toml"),
        Vec::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("max_queu"), "{err}");
}

/// Reads until the peer closes (Ok(bytes read)) or `limit` passes (Err).
async fn until_closed(s: &mut tokio::net::TcpStream, limit: Duration) -> Result<Vec<u8>, ()> {
    use tokio::io::AsyncReadExt as _;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return Err(()),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Issue 12: a stalled body got no answer for 15 s despite
/// `x-fraudline-timeout-ms: 100`. Now it gets 408 by its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_answered_by_the_calls_deadline() {
    use tokio::io::AsyncWriteExt as _;
    let s = Server::start("").await;
    let mut c = tokio::net::TcpStream::connect(s.bound.inline_http.unwrap())
        .await
        .unwrap();
    c.write_all(
        b"POST /v1/score HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
          content-length: 200\r\nx-fraudline-timeout-ms: 100\r\n\r\n{\"event_id\":",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), async {
        use tokio::io::AsyncReadExt as _;
        c.read(&mut buf).await
    })
    .await
    .expect("an answer, not a hang")
    .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered after {:?}",
        started.elapsed()
    );
    assert!(s
        .metrics()
        .await
        .contains("fraudline_inline_requests_total{protocol=\"http\",code=\"408\"} 1"));
    s.shutdown().await;
}

/// Issue 12: idle connections stayed open for minutes and, past the file
/// limit, locked every caller out. Now an idle or stalled connection is cut
/// after `header_read_timeout_ms`, connections past `max_connections` are
/// closed at once (counted), and a caller gets in once the idle ones are
/// gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_cut_and_cannot_lock_callers_out() {
    use tokio::io::AsyncWriteExt as _;
    let s = Server::start("max_connections = 8\nheader_read_timeout_ms = 500\n").await;
    let addr = s.bound.inline_http.unwrap();
    // Served before any limit is reached.
    assert_eq!(score_new_payment(&s).await, 200);
    // A kept-alive connection idle after its answer is cut too.
    let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = payments(1)[0].to_json();
    kept.write_all(
        format!(
            "POST /v1/score HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let answered = until_closed(&mut kept, Duration::from_secs(5))
        .await
        .expect("the kept-alive connection is closed after its idle timeout");
    assert!(
        String::from_utf8_lossy(&answered).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answered)
    );
    // Eight idle sockets take every slot; the ninth is closed at once.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut ninth = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = ninth
        .write_all(b"POST /v1/score HTTP/1.1\r\nhost: x\r\n")
        .await;
    let closed = until_closed(&mut ninth, Duration::from_millis(400)).await;
    assert_eq!(
        closed,
        Ok(Vec::new()),
        "the ninth connection is closed at once, unanswered"
    );
    let m = s.metrics().await;
    assert!(
        m.contains("fraudline_inline_connections_refused_total{protocol=\"http\"}"),
        "{m}"
    );
    // The idle ones are cut after the header timeout (with no answer: they
    // sent nothing) ...
    let started = Instant::now();
    for c in &mut idle {
        let r = until_closed(c, Duration::from_secs(5)).await;
        assert!(r.is_ok(), "an idle connection still open after 5 s");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "idle connections cut after {took:?}"
    );
    // ... so a caller gets in again.
    assert_eq!(score_new_payment(&s).await, 200);
    s.shutdown().await;
}

/// Posts one new payment over a new connection; returns the HTTP status.
async fn score_new_payment(s: &Server) -> u16 {
    reqwest::Client::new()
        .post(s.url())
        .body(payments(1)[0].to_json())
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Bytes as they are, for sending what a broken client sends.
#[derive(Clone, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        buf.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf as _;
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// Issue 12: an undecodable gRPC message got INTERNAL (a switch retries that
/// as a server fault) with no error code, and was not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_grpc_message_is_invalid_argument() {
    let s = Server::start("").await;
    let channel = Channel::from_shared(format!("http://{}", s.grpc()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/fraudline.v1.Scoring/Score");
    // Field 1 (event_id, a string) claiming 200 bytes that are not there.
    let garbage = vec![0x0a, 0xc8, 0x01, b'x'];
    let err = grpc
        .unary::<Vec<u8>, Vec<u8>, Raw>(tonic::Request::new(garbage), path, Raw)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert_eq!(
        err.metadata()
            .get("fraudline-error-code")
            .and_then(|v| v.to_str().ok()),
        Some("undecodable"),
        "{err:?}"
    );
    let m = s.metrics().await;
    assert!(
        m.contains(
            "fraudline_inline_requests_total{protocol=\"grpc\",code=\"INVALID_ARGUMENT\"} 1"
        ),
        "{}",
        m.lines()
            .filter(|l| l.contains("inline_requests_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    s.shutdown().await;
}

/// Issue 12: the token file was read once at start. A rotated file takes
/// effect without a restart; a file emptied by mistake leaves the tokens in
/// use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_file_takes_effect_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "old-token\n").unwrap();
    let s = Server::start(&format!("bearer_tokens_file = \"{}\"\n", tokens.display())).await;
    let status = |token: &'static str| {
        let url = s.url();
        async move {
            reqwest::Client::new()
                .post(url)
                .header("authorization", format!("Bearer {token}"))
                .body(payments(1)[0].to_json())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status("old-token").await, 200);
    assert_eq!(status("new-token").await, 401);
    // Rotated: written aside and renamed over, as a secret mount does.
    let aside = dir.path().join("tokens.new");
    std::fs::write(&aside, "# rotated\nnew-token\n").unwrap();
    std::fs::rename(&aside, &tokens).unwrap();
    let started = Instant::now();
    while status("new-token").await != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new token never took effect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status("old-token").await, 401, "the old token is gone");
    // Emptied by mistake: the tokens in use stay.
    std::fs::write(&tokens, "# nothing\n").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status("new-token").await, 200);
    s.shutdown().await;
}

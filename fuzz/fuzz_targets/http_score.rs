//! The in-line HTTP API, `POST /v1/score`: the axum router of
//! `serve::http_api::router` over a real `Scorer` and `Engine` (default rule
//! pack, a small blocklist, bearer tokens on), driven in-process with
//! `tower::ServiceExt::oneshot` on one current-thread runtime.
//!
//! Input: byte 0 picks the request's shape, byte 1 is the length (at most
//! 64) of a header value taken from the input, the rest is the body.
//! - bits 0-1: authorization: the valid token (0, 1), none (2), the input
//!   bytes (3);
//! - bits 2-3: content-type: `application/json` (0), none (1),
//!   `text/plain` (2), the input bytes (3);
//! - bit 4: `x-fraudline-timeout-ms`: the input bytes (or `5` when empty);
//! - bits 5-6: `POST /v1/score` (0, 1), `GET /v1/score` (2),
//!   `POST /v1/other` (3).
//!
//! Asserts: no panic or hang; the status is one the handler documents (200,
//! 400, 401, 404, 405, 408, 409, 413, 415); a valid token is never 401 and
//! no token always is; a 200 is a JSON verdict with a decision; every other
//! answer of the scoring route is an RFC 9457 problem whose `status` is the
//! response's.
#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use fraudline::config::Config;
use fraudline::engine::rules::file;
use fraudline::engine::Engine;
use fraudline::serve::auth::Tokens;
use fraudline::serve::http_api::{self, TIMEOUT_HEADER};
use fraudline::serve::idempotency::RecentVerdicts;
use fraudline::serve::scorer::Scorer;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt as _;

const TOKEN: &str = "fuzz-token-1";

struct Harness {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    engine: Arc<Engine>,
    calls: AtomicU64,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let cfg = Config::from_parts(None, None, Vec::<(String, String)>::new())
            .expect("the embedded defaults load");
        let mut ec = cfg.engine();
        // Bounded state: millions of fuzzed accounts are swept, not kept.
        ec.features.max_accounts = 20_000;
        ec.features.max_kit = 20_000;
        let engine = Arc::new(Engine::new(ec));
        engine.set_rules(
            file::default_pack()
                .expect("the default pack compiles")
                .rules,
        );
        engine.set_blocklist(fraudline_fuzz::sample_blocklist());
        let scorer = Arc::new(Scorer::new(
            engine.clone(),
            &cfg.inline,
            cfg.limits(),
            true,
            None,
            Arc::new(RecentVerdicts::new(4096)),
        ));
        let tokens = Arc::new(Tokens::parse(TOKEN));
        Harness {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a current-thread runtime"),
            router: http_api::router(scorer, Some(tokens)),
            engine,
            calls: AtomicU64::new(0),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let [mode, len, rest @ ..] = data else {
        return;
    };
    let mode = *mode;
    let (seg, body) = rest.split_at(usize::from(*len).min(64).min(rest.len()));
    let h = harness();
    if h.calls.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
        h.engine.features().sweep();
    }

    let (method, path) = match (mode >> 5) & 3 {
        0 | 1 => (Method::POST, "/v1/score"),
        2 => (Method::GET, "/v1/score"),
        _ => (Method::POST, "/v1/other"),
    };
    let mut req = Request::new(Body::from(body.to_vec()));
    *req.method_mut() = method.clone();
    *req.uri_mut() = path.parse().expect("a valid path");
    let from_input = HeaderValue::from_bytes(seg).ok();
    let hs = req.headers_mut();
    let auth = match mode & 3 {
        0 | 1 => Some(HeaderValue::from_static("Bearer fuzz-token-1")),
        2 => None,
        _ => from_input.clone(),
    };
    if let Some(v) = auth.clone() {
        hs.insert(header::AUTHORIZATION, v);
    }
    let ct = match (mode >> 2) & 3 {
        0 => Some(HeaderValue::from_static("application/json")),
        1 => None,
        2 => Some(HeaderValue::from_static("text/plain")),
        _ => from_input.clone(),
    };
    if let Some(v) = ct {
        hs.insert(header::CONTENT_TYPE, v);
    }
    if mode & 0x10 != 0 {
        let v = match &from_input {
            Some(v) if !seg.is_empty() => v.clone(),
            _ => HeaderValue::from_static("5"),
        };
        hs.insert(TIMEOUT_HEADER, v);
    }

    let (status, headers, bytes) = h.rt.block_on(async {
        let r = h
            .router
            .clone()
            .oneshot(req)
            .await
            .unwrap_or_else(|e| match e {});
        let (parts, b) = r.into_parts();
        let bytes = axum::body::to_bytes(b, usize::MAX)
            .await
            .expect("an in-memory response body");
        (parts.status, parts.headers, bytes)
    });

    const DOCUMENTED: [u16; 9] = [200, 400, 401, 404, 405, 408, 409, 413, 415];
    assert!(
        DOCUMENTED.contains(&status.as_u16()),
        "undocumented status {status}"
    );
    let scoring = method == Method::POST && path == "/v1/score";
    if !scoring {
        assert!(
            status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} answered {status}"
        );
        let problem: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{status} without a problem object ({e}): {bytes:?}"));
        assert_eq!(
            problem.get("status").and_then(|s| s.as_u64()),
            Some(u64::from(status.as_u16()))
        );
        return;
    }
    match mode & 3 {
        0 | 1 => assert_ne!(status, StatusCode::UNAUTHORIZED, "a valid token refused"),
        2 => assert_eq!(status, StatusCode::UNAUTHORIZED, "no token, but {status}"),
        _ => {}
    }
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let json: serde_json::Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{status} with a body that is not JSON ({e}): {bytes:?}"));
    if status == StatusCode::OK {
        assert_eq!(ctype, "application/json");
        let d = json.get("decision").and_then(|d| d.as_str()).unwrap_or("");
        assert!(
            ["DECISION_ALLOW", "DECISION_REVIEW", "DECISION_HOLD"].contains(&d),
            "a 200 without a decision: {json}"
        );
    } else {
        assert_eq!(ctype, "application/problem+json");
        assert_eq!(
            json.get("status").and_then(|s| s.as_u64()),
            Some(u64::from(status.as_u16())),
            "problem status is not the response's: {json}"
        );
        assert!(json.get("code").and_then(|c| c.as_str()).is_some());
        assert!(
            !headers.contains_key("fraudline-degraded"),
            "a degraded header on {status}"
        );
    }
});

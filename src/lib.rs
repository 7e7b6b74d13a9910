//! fraudline: real-time transaction fraud scoring.
//!
//! # Data flow
//! ```text
//! payments topic ──► decode ──► features ──► rules ──► blocklist ──► verdict ──► verdicts topic
//! (protobuf/JSON)      │          (state)      │          (lists)        │
//!       malformed ─────┴──► DLQ topic          │                         └──► metrics
//! in-line gRPC / HTTP ──► auth ──► decode ──► recent-verdict cache ──► admission (or DEGRADED)
//!                                                   ──► same Engine ──► response (+ audit to verdicts topic)
//! demo / score / gen ───────────────────────► same Engine
//! ```
//!
//! | stage | module | what it owns |
//! | --- | --- | --- |
//! | wire contracts | [`proto`] (generated from `proto/`) | protobuf types |
//! | decode + validate | [`event`] | [`event::Payment`], [`event::DecodeError`] |
//! | score | [`engine`] | [`engine::Engine::score`], the one hot path: features, rules, blocklist, decision |
//! | Kafka in/out | [`stream`] | consumer group, verdict producer, DLQ, offsets, transactions |
//! | state across instances and restarts | [`state`] | the state log: every scored payment, followed by every instance |
//! | HTTP | [`serve`] | `/metrics`, `/healthz`, `/readyz` (per path: [`serve::ready`]) |
//! | live reloads | [`reload`] | rule file (watch, SIGHUP), blocklist files and topic: every file, signal and Kafka read the engine's tables need |
//! | in-line API | [`serve::inline`], [`serve::scorer`] | gRPC `fraudline.v1.Scoring/Score` (+ health, reflection) and HTTP `POST /v1/score`: auth, idempotency, admission and shedding, audit |
//! | ISO 20022 | [`iso20022`] | pacs.008 in (HTTP `POST /v1/iso20022/pacs.008`, payments-topic XML records), pacs.002 out |
//! | wiring | [`app`] | builds the Engine, runs the stream and/or the in-line API, drains on shutdown |
//! | config | [`config`] | one TOML file + `FRAUDLINE_*` env overrides |
//! | metrics | [`telemetry`] | every metric name, tracing set-up |
//! | analyst tools | [`tools`] | synthetic traffic generator, demo |
//!
//! The engine never touches the outside world: stream, state, serve, reload
//! and tools are adapters around it.

/// The process's allocator, for every binary, bench and test that links
/// fraudline. glibc's malloc cost the at-least-once stream a fifth of its
/// CPU (bench/e2e.sh under perf): buffers allocated on the scoring lanes
/// and freed on the consumer task, the metrics exporter's histogram blocks
/// freed by its upkeep thread; cross-thread frees are mimalloc's common case.
/// Version 2.x (Cargo.toml says why not 3.x).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod app;
pub mod config;
pub mod engine;
pub mod event;
pub mod iso20022;
pub mod reload;
pub mod serve;
pub mod state;
pub mod stream;
pub mod telemetry;
pub mod tools;

/// Types generated from `proto/fraudline/v1/*.proto` by prost at build time.
pub mod proto {
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/fraudline.v1.rs"));

    /// The encoded descriptor set of every .proto file, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/fraudline_descriptor.bin"));
}

/// Masks an identifier (account, phone, card) for logs: keeps the last four
/// characters, so on-call staff can correlate without seeing the number.
pub fn mask(id: &str) -> String {
    let n = id.chars().count();
    if n <= 4 {
        return "*".repeat(n);
    }
    let tail: String = id.chars().skip(n - 4).collect();
    format!("{}{}", "*".repeat(n - 4), tail)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char
/// boundary: for bounding text that goes into a record or a message field.
pub fn prefix_within(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Milliseconds since the Unix epoch, from the wall clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn mask_keeps_only_last_four() {
        assert_eq!(super::mask("0912345678"), "******5678");
        assert_eq!(super::mask("123"), "***");
        assert_eq!(super::mask(""), "");
    }

    #[test]
    fn prefix_within_never_splits_a_char() {
        assert_eq!(super::prefix_within("abc", 5), "abc");
        assert_eq!(super::prefix_within("abc", 2), "ab");
        // "é" is two bytes: a cut inside it keeps the byte before.
        assert_eq!(super::prefix_within("aé", 2), "a");
        assert_eq!(super::prefix_within("aé", 3), "aé");
        assert_eq!(super::prefix_within("€", 0), "");
    }
}

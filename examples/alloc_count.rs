//! The per-record work of a scoring lane (decode into the lane's buffers,
//! score, encode the verdict record), stage by stage, for counting heap
//! allocations from outside: bench/allocs.sh runs it under perf uprobes on
//! the allocator and prints allocations per record per stage.
//!
//! `STAGE` = `none` (set-up only, the baseline), `decode`, `score` (decode
//! and score) or `all` (decode, score and encode: what a lane does).
//! `FORMAT` = `protobuf` (default) or `json`.

use std::hint::black_box;

use fraudline::engine::{Engine, EngineConfig};
use fraudline::event::{Decoder, Format, Limits, Payment};
use fraudline::tools::gen::{GenConfig, Generator};

/// Payments scored before the counted ones, so the feature store holds
/// their payers and payees (new entities allocate, as they must).
const WARM: usize = 100_000;
/// Payments counted.
const COUNTED: usize = 100_000;

fn main() {
    let now = fraudline::now_ms();
    let all: Vec<Payment> = Generator::new(GenConfig {
        seed: 7,
        start_ms: now - 3_600_000,
        ..GenConfig::default()
    })
    .take(WARM + COUNTED)
    .map(|(p, _)| p)
    .collect();
    let engine = Engine::new(EngineConfig::default());
    for p in &all[..WARM] {
        engine.score(p);
    }
    let json = std::env::var("FORMAT").is_ok_and(|f| f == "json");
    let (format, bytes): (Format, Vec<Vec<u8>>) = if json {
        let b = all[WARM..].iter().map(|p| p.to_json().into_bytes());
        (Format::Json, b.collect())
    } else {
        let b = all[WARM..].iter().map(Payment::to_protobuf);
        (Format::Protobuf, b.collect())
    };
    drop(all);
    let stage = std::env::var("STAGE").unwrap_or_default();
    let limits = Limits::default();
    let mut decoder = Decoder::default();
    let (mut scored, mut refused) = (0usize, 0usize);
    if stage != "none" {
        for b in &bytes {
            let Ok(p) = decoder.decode(b, Some(format), &limits, now) else {
                refused += 1;
                continue;
            };
            if stage == "decode" {
                black_box(p);
                continue;
            }
            let v = engine.score_owned_at(p, now);
            scored += 1;
            if stage == "score" {
                black_box(&v);
                continue;
            }
            black_box(v.encode_wire(&p.event_id, p.event_time_ms));
        }
    }
    assert_eq!(refused, 0, "records refused: the count is not of scoring");
    // A replay updates nothing: a count over replays would not be of scoring.
    let dups = engine.features().duplicates_seen();
    assert_eq!(dups, 0, "payments took the duplicate path");
    println!("stage {stage}: {scored} scored, none on the duplicate path");
}

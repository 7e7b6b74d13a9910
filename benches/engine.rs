//! Per-stage benches, each beside its floor:
//!
//! | group | fraudline | baseline (the floor) |
//! | --- | --- | --- |
//! | `decode` | `event::decode` of protobuf and of JSON bytes (parse + validate); a lane's `Decoder` for protobuf | `prost::Message::decode` of `PaymentEvent` only; `serde_json` parse of `JsonEvent` only |
//! | `score` | `Engine::score_at` on a warmed engine | one ahash `HashMap` `get_mut`/insert per entity (payer + payee) |
//! | `decode_and_score` | protobuf bytes -> `Decoder::decode` -> score -> `Verdict::encode_wire` (a lane's work) | — |
//! | `encode_verdict` | `Verdict::encode_wire` | prost: `Verdict::to_wire(..).encode_to_vec()` |
//!
//! Every input is built before the timer starts; the raw bytes go through
//! `black_box`. One iteration is one event (`Throughput::Elements(1)`), so
//! criterion's time is the per-event cost and its throughput is events/s on
//! one core.
//!
//! Run: `cargo bench --bench engine` (a few minutes on 2 cores).

use std::collections::HashMap;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use fraudline::engine::{Blocklist, Engine, EngineConfig};
use fraudline::event::{self, Decoder, JsonEvent, Limits, Payment};
use fraudline::proto::PaymentEvent;
use fraudline::tools::gen::{GenConfig, Generator};
use prost::Message as _;

mod support;
use support::{assert_scored_not_replayed, Rounds};

/// Events scored before measuring, so the feature maps hold a realistic
/// population (the generator's 10,000 customers and their payees).
const WARM: usize = 100_000;
/// Distinct events cycled through while measuring.
const SET: usize = 10_000;

/// `WARM + SET` generated events starting one hour ago, so they validate
/// against the wall clock. Returns (warm-up events, measured events).
fn events() -> (Vec<Payment>, Vec<Payment>) {
    let mut all: Vec<Payment> = Generator::new(GenConfig {
        seed: 7,
        start_ms: fraudline::now_ms() - 3_600_000,
        ..GenConfig::default()
    })
    .take(WARM + SET)
    .map(|(p, _)| p)
    .collect();
    let set = all.split_off(WARM);
    (all, set)
}

/// An engine with the generator's blocklist loaded and `warm` scored.
fn warmed_engine(warm: &[Payment]) -> Engine {
    let engine = Engine::new(EngineConfig::default());
    let gen = Generator::new(GenConfig::default());
    engine.set_blocklist(Blocklist::new(1, gen.blocklist_entries()));
    for p in warm {
        engine.score(p);
    }
    engine
}

/// Cycles through `items` one per call: the index bump is the only work
/// this adds inside the timer.
struct Cycle<'a, T> {
    items: &'a [T],
    i: usize,
}

impl<'a, T> Cycle<'a, T> {
    fn new(items: &'a [T]) -> Self {
        Cycle { items, i: 0 }
    }

    fn next_item(&mut self) -> &'a T {
        if self.i == self.items.len() {
            self.i = 0;
        }
        let item = &self.items[self.i];
        self.i += 1;
        item
    }
}

fn decode(c: &mut Criterion) {
    let (_, set) = events();
    let proto: Vec<Vec<u8>> = set.iter().map(Payment::to_protobuf).collect();
    let json: Vec<Vec<u8>> = set.iter().map(|p| p.to_json().into_bytes()).collect();
    let limits = Limits::default();
    let now = fraudline::now_ms();

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("protobuf/fraudline", |b| {
        let mut it = Cycle::new(&proto);
        b.iter(|| event::decode(black_box(it.next_item()), None, &limits, now))
    });
    // What a scoring lane does: decode into buffers kept across records.
    g.bench_function("protobuf/fraudline_decoder", |b| {
        let mut it = Cycle::new(&proto);
        let mut d = Decoder::default();
        b.iter(|| {
            d.decode(black_box(it.next_item()), None, &limits, now)
                .map(|p| p.amount_minor)
        })
    });
    g.bench_function("protobuf/baseline_prost_only", |b| {
        let mut it = Cycle::new(&proto);
        b.iter(|| PaymentEvent::decode(black_box(it.next_item().as_slice())))
    });
    g.bench_function("json/fraudline", |b| {
        let mut it = Cycle::new(&json);
        b.iter(|| event::decode(black_box(it.next_item()), None, &limits, now))
    });
    g.bench_function("json/baseline_serde_only", |b| {
        let mut it = Cycle::new(&json);
        b.iter(|| serde_json::from_slice::<JsonEvent>(black_box(it.next_item())))
    });
    g.finish();
}

/// Per-entity state of the baseline: about what a feature ring's header holds.
#[derive(Default)]
struct Floor {
    count: u64,
    sum: i64,
    last_ms: i64,
}

fn floor_update(map: &mut HashMap<String, Floor, ahash::RandomState>, key: &str, p: &Payment) {
    match map.get_mut(key) {
        Some(s) => {
            s.count += 1;
            s.sum = s.sum.saturating_add(p.amount_minor);
            s.last_ms = s.last_ms.max(p.event_time_ms);
        }
        None => {
            map.insert(
                key.to_owned(),
                Floor {
                    count: 1,
                    sum: p.amount_minor,
                    last_ms: p.event_time_ms,
                },
            );
        }
    }
}

fn score(c: &mut Criterion) {
    let (warm, set) = events();
    let now = fraudline::now_ms();

    let mut g = c.benchmark_group("score");
    g.throughput(Throughput::Elements(1));
    {
        let engine = warmed_engine(&warm);
        let before = engine.features().duplicates_seen();
        let mut it = Rounds::new(set.clone());
        g.bench_function("fraudline_score_at", |b| {
            b.iter(|| engine.score_at(black_box(it.next_item()), now))
        });
        assert_scored_not_replayed(
            engine.features(),
            before,
            it.handed_out(),
            "score/fraudline_score_at",
        );
    }
    {
        // The same with the default rule pack (35 rules) instead of the
        // three built-in checks.
        let engine = warmed_engine(&warm);
        let pack = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rules/default.toml");
        match fraudline::reload::rules::load_file(std::path::Path::new(pack)) {
            Ok(f) => engine.set_rules(f.rules),
            Err(e) => panic!("{e}"),
        }
        let before = engine.features().duplicates_seen();
        let mut it = Rounds::new(set.clone());
        g.bench_function("fraudline_score_at_default_rules", |b| {
            b.iter(|| engine.score_at(black_box(it.next_item()), now))
        });
        assert_scored_not_replayed(
            engine.features(),
            before,
            it.handed_out(),
            "score/fraudline_score_at_default_rules",
        );
    }
    {
        let mut map: HashMap<String, Floor, ahash::RandomState> =
            HashMap::with_hasher(ahash::RandomState::new());
        for p in &warm {
            floor_update(&mut map, &p.payer.account, p);
            floor_update(&mut map, &p.payee.account, p);
        }
        let mut it = Rounds::new(set);
        g.bench_function("baseline_hashmap_per_entity", |b| {
            b.iter(|| {
                let p = black_box(it.next_item());
                floor_update(&mut map, &p.payer.account, p);
                floor_update(&mut map, &p.payee.account, p);
            })
        });
    }
    g.finish();
}

fn decode_and_score(c: &mut Criterion) {
    let (warm, mut set) = events();
    // Each id ends in a round number of fixed width, so that after decode a
    // round is renamed in place (no allocation) and moved forward in event
    // time, as `Rounds` does: no payment is a replay (checked below).
    for p in &mut set {
        p.event_id.push_str("~r000000");
    }
    let proto: Vec<Vec<u8>> = set.iter().map(Payment::to_protobuf).collect();
    let span_ms = set.last().map_or(0, |p| p.event_time_ms) - set[0].event_time_ms + 1_000;
    let engine = warmed_engine(&warm);
    let before = engine.features().duplicates_seen();
    let limits = Limits::default();

    let mut g = c.benchmark_group("decode_and_score");
    g.throughput(Throughput::Elements(1));
    let mut refused = 0u64;
    // Outside the routine: criterion calls it again for the warm-up and
    // for every sample, and a cycle restarted there replays its payments
    // (earlier versions did, and measured mostly the duplicate path).
    let mut it = Cycle::new(&proto);
    let mut round = 0i64;
    let mut scored = 0u64;
    let mut decoder = Decoder::default();
    g.bench_function("protobuf_to_verdict_bytes", |b| {
        b.iter(|| {
            if it.i == it.items.len() {
                round += 1;
            }
            let bytes = black_box(it.next_item());
            // The per-record work of `stream::process`: clock, decode (into
            // the lane's buffers), score, encode.
            let now = fraudline::now_ms();
            match decoder.decode(bytes, None, &limits, now) {
                Ok(p) => {
                    let digits = round_digits(round);
                    let n = p.event_id.len();
                    p.event_id.replace_range(n - 6.., digits.as_str());
                    p.event_time_ms += round * span_ms;
                    let v = engine.score_owned_at(p, now);
                    scored += 1;
                    v.encode_wire(&p.event_id, p.event_time_ms)
                }
                Err(_) => {
                    refused += 1;
                    Vec::new()
                }
            }
        })
    });
    g.finish();
    assert_eq!(
        refused, 0,
        "payments refused by decode: the figure is not of scoring"
    );
    assert_scored_not_replayed(
        engine.features(),
        before,
        scored,
        "decode_and_score/protobuf_to_verdict_bytes",
    );
}

/// `round` as six digits, on the stack.
fn round_digits(round: i64) -> RoundDigits {
    let mut d = [b'0'; 6];
    let mut r = round.rem_euclid(1_000_000);
    for slot in d.iter_mut().rev() {
        *slot = b'0' + (r % 10) as u8;
        r /= 10;
    }
    RoundDigits(d)
}

struct RoundDigits([u8; 6]);

impl RoundDigits {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("000000")
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(40)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
}

/// The verdict record's bytes: the direct encoder the stream uses beside
/// its floor, prost's encoding of the same wire struct (built per verdict,
/// one allocation per string and reason), on the verdicts of the set.
fn encode(c: &mut Criterion) {
    let (warm, set) = events();
    let engine = warmed_engine(&warm);
    let now = fraudline::now_ms();
    let verdicts: Vec<_> = set
        .iter()
        .map(|p| (engine.score_at(p, now), p.event_id.clone(), p.event_time_ms))
        .collect();
    let with_reasons = verdicts.iter().filter(|v| !v.0.reasons.is_empty()).count();
    assert!(
        with_reasons > 0,
        "no verdict with a reason: not representative"
    );
    let mut g = c.benchmark_group("encode_verdict");
    g.throughput(Throughput::Elements(1));
    let mut it = Cycle::new(&verdicts);
    g.bench_function("fraudline_encode_wire", |b| {
        b.iter(|| {
            let (v, id, t) = it.next_item();
            black_box(v.encode_wire(id, *t))
        })
    });
    let mut it = Cycle::new(&verdicts);
    g.bench_function("baseline_prost_to_wire_encode", |b| {
        b.iter(|| {
            let (v, id, t) = it.next_item();
            black_box(v.to_wire(id, *t).encode_to_vec())
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = decode, score, decode_and_score, encode
}
criterion_main!(benches);

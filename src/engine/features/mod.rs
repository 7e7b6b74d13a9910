//! Per-entity behaviour state that rules read.
//!
//! This first version keeps, per payer and per payee, a fixed ring of the
//! most recent payments (bounded memory, no per-event lists) and derives a
//! few velocity and fan-in features from it. The full catalogue (time-bucket
//! rings, sketches, eviction, dedup, warm-up) replaces it behind the same
//! interface: `update_and_read(&Payment) -> FeatureVector`.

pub mod catalogue;
pub mod distinct;
pub mod window;

use dashmap::DashMap;
use serde::Serialize;

use crate::event::Payment;

/// Recent payments kept per entity. Counts saturate at this value.
pub const RING: usize = 16;

#[derive(Debug, Clone, Default)]
pub struct FeatureConfig {}

/// The named feature values one payment saw, after its own update.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct FeatureVector {
    /// Payments by this payer in the last minute (event time), this one included.
    pub payer_count_1m: u32,
    /// Amount (minor units) sent by this payer in the last minute.
    pub payer_sum_1m: i64,
    /// Payments by this payer in the last 10 minutes.
    pub payer_count_10m: u32,
    /// Seconds since this payer's previous payment; -1 for the first one seen.
    pub payer_secs_since_last: f64,
    /// Incoming payments to this payee in the last 10 minutes.
    pub payee_count_10m: u32,
    /// Distinct payers that paid this payee in the last 10 minutes.
    pub payee_distinct_payers_10m: u32,
}

impl FeatureVector {
    /// Every feature by its rule-language name, for explanations.
    pub fn named(&self) -> [(&'static str, f64); 6] {
        [
            ("payer.count_1m", self.payer_count_1m as f64),
            ("payer.sum_1m", self.payer_sum_1m as f64),
            ("payer.count_10m", self.payer_count_10m as f64),
            ("payer.secs_since_last", self.payer_secs_since_last),
            ("payee.count_10m", self.payee_count_10m as f64),
            (
                "payee.distinct_payers_10m",
                self.payee_distinct_payers_10m as f64,
            ),
        ]
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    time_ms: i64,
    amount: i64,
    other: u64,
}

#[derive(Debug, Clone, Default)]
struct Ring {
    slots: [Slot; RING],
    len: usize,
    next: usize,
    last_ms: Option<i64>,
}

impl Ring {
    fn push(&mut self, s: Slot) {
        self.slots[self.next] = s;
        self.next = (self.next + 1) % RING;
        self.len = (self.len + 1).min(RING);
        self.last_ms = Some(self.last_ms.map_or(s.time_ms, |l| l.max(s.time_ms)));
    }

    fn window(&self, now_ms: i64, span_ms: i64) -> impl Iterator<Item = &Slot> {
        self.slots[..self.len]
            .iter()
            .filter(move |s| s.time_ms > now_ms - span_ms && s.time_ms <= now_ms)
    }
}

/// Concurrent feature state: one sharded map per entity kind, keyed by a
/// 64-bit hash of the identifier (no string keys held or compared).
pub struct FeatureStore {
    payers: DashMap<u64, Ring, ahash::RandomState>,
    payees: DashMap<u64, Ring, ahash::RandomState>,
    hasher: ahash::RandomState,
}

impl FeatureStore {
    pub fn new(_cfg: FeatureConfig) -> FeatureStore {
        FeatureStore {
            payers: DashMap::with_hasher(ahash::RandomState::new()),
            payees: DashMap::with_hasher(ahash::RandomState::new()),
            // Fixed seeds: the same identifier hashes the same in every run.
            hasher: ahash::RandomState::with_seeds(0x5eed, 0xf4a0d, 0x11e, 0xacc7),
        }
    }

    fn key(&self, account: &str) -> u64 {
        self.hasher.hash_one(account)
    }

    /// Updates the payer's and payee's state with this payment and returns
    /// what the rules see. Each entity's update and read happen under its
    /// shard lock together, so concurrent partitions see consistent values.
    pub fn update_and_read(&self, p: &Payment) -> FeatureVector {
        let t = p.event_time_ms;
        let payer_key = self.key(&p.payer.account);
        let payee_key = self.key(&p.payee.account);
        let mut fv = FeatureVector::default();
        {
            let mut ring = self.payers.entry(payer_key).or_default();
            fv.payer_secs_since_last = ring
                .last_ms
                .map_or(-1.0, |l| ((t - l).max(0) as f64) / 1000.0);
            ring.push(Slot {
                time_ms: t,
                amount: p.amount_minor,
                other: payee_key,
            });
            for s in ring.window(t, 60_000) {
                fv.payer_count_1m += 1;
                fv.payer_sum_1m = fv.payer_sum_1m.saturating_add(s.amount);
            }
            fv.payer_count_10m = ring.window(t, 600_000).count() as u32;
        }
        {
            let mut ring = self.payees.entry(payee_key).or_default();
            ring.push(Slot {
                time_ms: t,
                amount: p.amount_minor,
                other: payer_key,
            });
            let mut seen = [0u64; RING];
            let mut n = 0usize;
            for s in ring.window(t, 600_000) {
                fv.payee_count_10m += 1;
                if !seen[..n].contains(&s.other) {
                    seen[n] = s.other;
                    n += 1;
                }
            }
            fv.payee_distinct_payers_10m = n as u32;
        }
        fv
    }

    /// Entities held, by kind: (payers, payees).
    pub fn entity_counts(&self) -> (usize, usize) {
        (self.payers.len(), self.payees.len())
    }
}

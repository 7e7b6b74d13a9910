//! The recent-verdict cache: a retry with the same event_id gets the first
//! verdict back, byte for byte, and the engine does not see the event twice.
//! Bounded: `capacity` entries over 64 shards, each evicting its oldest
//! entry first (FIFO), so memory stays flat whatever the traffic.
//! A shard's lock is held only for a map operation (no I/O, no await).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::engine::Verdict;

const SHARDS: usize = 64;

/// A verdict as first answered, with what a retry must match.
#[derive(Debug)]
pub struct Decided {
    pub event_id: String,
    pub event_time_ms: i64,
    /// Hash of the event's protobuf encoding: a retry must be the same payment.
    pub fingerprint: u64,
    pub verdict: Verdict,
}

struct Shard {
    map: HashMap<Arc<str>, Arc<Decided>, ahash::RandomState>,
    order: VecDeque<Arc<str>>,
}

pub struct RecentVerdicts {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    router: ahash::RandomState,
}

impl RecentVerdicts {
    /// `capacity` 0 turns the cache off (every call is scored).
    pub fn new(capacity: usize) -> RecentVerdicts {
        let per_shard = capacity.div_ceil(SHARDS);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    map: HashMap::with_hasher(ahash::RandomState::new()),
                    order: VecDeque::new(),
                })
            })
            .collect();
        RecentVerdicts {
            shards,
            per_shard,
            router: ahash::RandomState::new(),
        }
    }

    fn shard(&self, id: &str) -> &Mutex<Shard> {
        let i = (self.router.hash_one(id) as usize) % SHARDS;
        &self.shards[i]
    }

    pub fn get(&self, event_id: &str) -> Option<Arc<Decided>> {
        if self.per_shard == 0 {
            return None;
        }
        let shard = self
            .shard(event_id)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        shard.map.get(event_id).cloned()
    }

    /// Inserts `d` unless its event_id is there already; returns the entry
    /// that stays (the first one wins, so concurrent duplicates agree).
    pub fn insert(&self, d: Arc<Decided>) -> Arc<Decided> {
        if self.per_shard == 0 {
            return d;
        }
        let mut shard = self
            .shard(&d.event_id)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(first) = shard.map.get(d.event_id.as_str()) {
            return first.clone();
        }
        while shard.map.len() >= self.per_shard {
            match shard.order.pop_front() {
                Some(old) => {
                    shard.map.remove(&old);
                }
                None => break,
            }
        }
        let key: Arc<str> = Arc::from(d.event_id.as_str());
        shard.order.push_back(key.clone());
        shard.map.insert(key, d.clone());
        d
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).map.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Decision, Verdict};

    fn decided(id: &str, decision: Decision) -> Arc<Decided> {
        let mut verdict = Verdict::new(Arc::from("v1"), 0, 0);
        verdict.decision = decision;
        Arc::new(Decided {
            event_id: id.to_string(),
            event_time_ms: 0,
            fingerprint: 1,
            verdict,
        })
    }

    #[test]
    fn first_verdict_wins_and_is_returned() {
        let c = RecentVerdicts::new(1000);
        let first = c.insert(decided("e1", Decision::Hold));
        let second = c.insert(decided("e1", Decision::Allow));
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(c.get("e1").unwrap().verdict.decision, Decision::Hold);
        assert!(c.get("e2").is_none());
    }

    #[test]
    fn bounded_with_oldest_out_first() {
        let c = RecentVerdicts::new(640);
        for i in 0..10_000 {
            c.insert(decided(&format!("e{i}"), Decision::Allow));
        }
        assert!(c.len() <= 640, "{}", c.len());
        assert!(c.len() >= 500, "{}", c.len());
        assert!(c.get("e9999").is_some(), "the newest stays");
        assert!(c.get("e0").is_none(), "the oldest goes");
    }

    #[test]
    fn capacity_zero_is_off() {
        let c = RecentVerdicts::new(0);
        c.insert(decided("e1", Decision::Hold));
        assert!(c.get("e1").is_none());
    }
}

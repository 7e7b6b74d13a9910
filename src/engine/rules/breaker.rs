//! The safety breaker: a rule that declares `max_hit_rate` is demoted to
//! shadow when its hits pass that share of the events scored over the last
//! five minutes: the classic bad rule that starts holding every payment stops
//! deciding by itself, with a log line, a metric and the demotion visible in
//! verdicts, until the rule file is reloaded (SIGHUP or a file change).
//!
//! Counting is lock-free: ten 30-second buckets of wall-clock time, each an
//! `AtomicU64` holding the bucket's epoch in the high half and its count in
//! the low half, so a stale bucket resets itself on first use.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tracing::warn;

use crate::telemetry;

const BUCKET_MS: i64 = 30_000;
const BUCKETS: usize = 10;
/// The window a hit rate is measured over.
pub const WINDOW_MS: i64 = BUCKET_MS * BUCKETS as i64;

/// Events in the last five minutes, in 30 s buckets.
#[derive(Debug, Default)]
pub struct RateWindow {
    slots: [AtomicU64; BUCKETS],
}

impl RateWindow {
    fn epoch(now_ms: i64) -> u64 {
        (now_ms.max(0) / BUCKET_MS) as u64 & 0xffff_ffff
    }

    /// Counts one at `now_ms`.
    pub fn add(&self, now_ms: i64) {
        let epoch = Self::epoch(now_ms);
        let slot = &self.slots[(epoch % BUCKETS as u64) as usize];
        let cur = slot.load(Ordering::Relaxed);
        if cur >> 32 == epoch {
            slot.fetch_add(1, Ordering::Relaxed);
        } else if slot
            .compare_exchange(cur, (epoch << 32) | 1, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            // Another thread reset it first: count into the new epoch.
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The count over the last [`WINDOW_MS`] at `now_ms`.
    pub fn sum(&self, now_ms: i64) -> u64 {
        let epoch = Self::epoch(now_ms);
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|v| epoch.wrapping_sub(v >> 32) < BUCKETS as u64)
            .map(|v| v & 0xffff_ffff)
            .sum()
    }
}

/// One rule's breaker.
#[derive(Debug)]
pub struct Breaker {
    /// Most hits per event scored over the window, e.g. 0.02.
    pub max_rate: f64,
    /// Events needed in the window before the rate is judged (a quiet
    /// night's three events must not trip it).
    pub min_events: u64,
    hits: RateWindow,
    pub(crate) demoted: AtomicBool,
}

impl Breaker {
    pub fn new(max_rate: f64, min_events: u64) -> Breaker {
        Breaker {
            max_rate,
            min_events,
            hits: RateWindow::default(),
            demoted: AtomicBool::new(false),
        }
    }

    /// Counts a hit and trips when the rate is past the ceiling.
    pub(crate) fn hit(&self, now_ms: i64, events: &RateWindow, rule_id: &str) {
        self.hits.add(now_ms);
        let n = events.sum(now_ms);
        if n < self.min_events {
            return;
        }
        let h = self.hits.sum(now_ms);
        let rate = h as f64 / n as f64;
        if rate > self.max_rate
            && self
                .demoted
                .compare_exchange(false, true, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                rule_id,
                hits = h,
                events = n,
                rate,
                max_hit_rate = self.max_rate,
                "rule demoted to shadow by its hit-rate breaker; reload the rule file to restore it"
            );
            metrics::counter!(telemetry::RULE_DEMOTIONS, "rule_id" => rule_id.to_string())
                .increment(1);
            metrics::gauge!(telemetry::RULE_DEMOTED, "rule_id" => rule_id.to_string()).set(1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_forgets_what_is_older_than_five_minutes() {
        let w = RateWindow::default();
        for i in 0..100 {
            w.add(1_000_000 + i * 1_000);
        }
        assert_eq!(w.sum(1_100_000), 100);
        assert_eq!(w.sum(1_000_000 + WINDOW_MS + 120_000), 0);
    }

    #[test]
    fn trips_past_the_ceiling_only_with_enough_events() {
        let events = RateWindow::default();
        let b = Breaker::new(0.02, 1_000);
        let t = 5_000_000;
        for _ in 0..100 {
            events.add(t);
        }
        for _ in 0..50 {
            b.hit(t, &events, "R");
        }
        assert!(
            !b.demoted.load(Ordering::Relaxed),
            "too few events to judge"
        );
        for _ in 0..2_000 {
            events.add(t);
        }
        b.hit(t, &events, "R");
        assert!(
            b.demoted.load(Ordering::Relaxed),
            "51 hits / 2100 events > 2%"
        );
    }
}

//! `fraudline features-memory`: how much memory feature state takes, measured
//! (process RSS before and after loading it), not estimated.

use std::time::Instant;

use crate::engine::{FeatureStore, FeatureConfig};
use crate::tools::gen::{GenConfig, Generator};

#[derive(Debug, Clone, serde::Serialize)]
pub struct MemoryReport {
    pub payments: u64,
    pub accounts: usize,
    pub other_entities: usize,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    pub rss_per_account_bytes: f64,
    pub load_seconds: f64,
}

/// Resident set size of this process, from /proc (Linux); 0 elsewhere.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Feeds `payments` generated payments from a population of `accounts`
/// customers into a fresh store and reports the RSS it added.
pub fn measure(accounts: u32, payments: u64, cfg: FeatureConfig) -> MemoryReport {
    let before = rss_bytes();
    let store = FeatureStore::new(cfg);
    let gen = Generator::new(GenConfig {
        seed: 7,
        accounts,
        fraud_rate: 0.01,
        start_ms: crate::now_ms() - 86_400_000,
        events_per_sec: payments as f64 / 86_400.0,
    });
    let started = Instant::now();
    for (p, _) in gen.take(payments as usize) {
        store.update_and_read(&p);
    }
    let load_seconds = started.elapsed().as_secs_f64();
    let after = rss_bytes();
    let (accounts_held, others) = store.entity_counts();
    MemoryReport {
        payments,
        accounts: accounts_held,
        other_entities: others,
        rss_before_bytes: before,
        rss_after_bytes: after,
        rss_per_account_bytes: after.saturating_sub(before) as f64 / accounts_held.max(1) as f64,
        load_seconds,
    }
}

//! `fraudline features-memory`: how much memory feature state takes, measured
//! (process RSS before and after loading it), not estimated.

use std::time::Instant;

use crate::engine::features::{FeatureConfig, FeatureStore};
use crate::tools::gen::{GenConfig, Generator};

#[derive(Debug, Clone, serde::Serialize)]
pub struct MemoryReport {
    pub payments: u64,
    pub accounts: usize,
    pub other_entities: usize,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    pub rss_per_account_bytes: f64,
    /// Bytes of state counted by walking every account (no allocator
    /// overhead, no empty map slots), per account.
    pub walked_per_account_bytes: f64,
    pub load_seconds: f64,
    pub payments_per_second: f64,
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

/// Feeds `payments` generated payments (24 h of event time) from a population
/// of `accounts` customers into a fresh store and reports the RSS it added.
/// The generator's customers pay each other, so every account is both payer
/// and payee; the RSS includes the map's empty slots and the allocator's
/// overhead, which the walked figure leaves out.
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
    let (walked, _) = store.state_bytes();
    MemoryReport {
        payments,
        accounts: accounts_held,
        other_entities: others,
        rss_before_bytes: before,
        rss_after_bytes: after,
        rss_per_account_bytes: after.saturating_sub(before) as f64 / accounts_held.max(1) as f64,
        walked_per_account_bytes: walked as f64 / accounts_held.max(1) as f64,
        load_seconds,
        payments_per_second: payments as f64 / load_seconds.max(1e-9),
    }
}

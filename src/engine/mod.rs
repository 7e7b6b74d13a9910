//! The engine: one synchronous, I/O-free function from a payment to a
//! verdict. The Kafka stream, the demo, the benches (and later the in-line
//! API and backtests) all call [`Engine::score`].
//!
//! ```text
//! Payment ──► features (update + read) ──► rules ──► blocklist ──► decision ──► Verdict
//! ```
//! Rules and blocklist sit behind `ArcSwap`: a reload builds a complete new
//! value aside and swaps it in between two events; readers never lock.

pub mod blocklist;
pub mod currencies;
pub mod decision;
pub mod features;
pub mod model;
pub mod rules;

use std::sync::{Arc, PoisonError};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::event::Payment;
pub use blocklist::{Blocklist, ListEntry, ListKind};
pub use decision::{Decision, Reason, Thresholds, Verdict};
pub use features::{FeatureStore, FeatureVector, StateError};
pub use rules::RuleSet;

/// The reason id of a payment whose currency the currency table does not
/// list (forced to REVIEW).
pub const CURRENCY_UNKNOWN: &str = "CURRENCY_UNKNOWN";

/// Builds an [`Engine`]. All fields have working defaults.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    pub thresholds: Thresholds,
    pub builtin: rules::BuiltinParams,
    pub features: features::FeatureConfig,
    /// For in-line calls ([`Engine::score_at`]).
    pub event_age: EventAge,
    /// For the payments stream ([`Engine::score_owned_at`]).
    pub stream_event_age: EventAge,
}

/// Which scoring path a payment came by: each has its own event-age limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// In-line calls (and backtests and tools, which score at the
    /// payment's own time).
    Inline,
    /// The payments topic.
    Stream,
}

/// Reason of a payment scored without moving feature state because its
/// event time is older than `limits.max_event_age_ms` (score 0).
pub const STALE_EVENT: &str = "STALE_EVENT";

/// `limits.max_event_age_ms` and `limits.stale_events`: what becomes of a
/// payment whose event time is older than the limit against the wall clock
/// (a replay, a switch's retry days later, a backlog). Counting it as
/// current would put a two-day-old payment into the payer's last hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventAge {
    /// 0: no limit.
    pub max_ms: i64,
    /// Refuse a stale payment (`stale_event`, a dead letter or a 400)
    /// instead of scoring it against the state as it is, without moving it.
    pub refuse: bool,
}

/// The scoring engine. Cheap to share (`Arc<Engine>`): all state inside is
/// concurrent, so many partitions score at once.
pub struct Engine {
    features: FeatureStore,
    rules: ArcSwap<RuleSet>,
    blocklist: ArcSwap<Blocklist>,
    currencies: ArcSwap<currencies::Currencies>,
    /// The model rules read as `model.score`, when one is loaded.
    model: arc_swap::ArcSwapOption<model::Model>,
    /// A model in shadow mode: scored on every payment and reported in the
    /// verdict, never read by the rules (`model.shadow_file`).
    shadow_model: arc_swap::ArcSwapOption<model::Model>,
    txn: TxnGate,
    event_age: EventAge,
    stream_event_age: EventAge,
}

/// The exactly-once stream's transaction over feature state. While one is
/// open, every payment applied by anyone but the stream (in-line calls, the
/// state-log follower, a warm-up) is also kept here, so that an abort can
/// put them back: the store's abort undoes every change since the
/// transaction began, and only the stream's own payments come back by
/// themselves (it re-consumes them). Foreign payments take the gate's read
/// side around their update, so an abort (the write side) sees each one
/// either wholly applied and kept, or not yet applied.
#[derive(Default)]
struct TxnGate {
    open: std::sync::RwLock<bool>,
    /// Per journal segment (see [`Engine::seal_txn`]), oldest first.
    foreign: std::sync::Mutex<std::collections::VecDeque<Vec<Payment>>>,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Engine {
        Engine {
            features: FeatureStore::new(cfg.features),
            rules: ArcSwap::from_pointee(RuleSet::builtin(cfg.thresholds, &cfg.builtin)),
            blocklist: ArcSwap::from_pointee(Blocklist::empty()),
            currencies: ArcSwap::from_pointee(currencies::Currencies::none()),
            model: arc_swap::ArcSwapOption::empty(),
            shadow_model: arc_swap::ArcSwapOption::empty(),
            txn: TxnGate::default(),
            event_age: cfg.event_age,
            stream_event_age: cfg.stream_event_age,
        }
    }

    fn age(&self, path: Path) -> EventAge {
        match path {
            Path::Inline => self.event_age,
            Path::Stream => self.stream_event_age,
        }
    }

    /// Whether `p` is older than `path`'s limit at `now_ms`
    /// (`limits.max_event_age_ms`, `limits.stream_max_event_age_ms`).
    pub fn is_stale(&self, p: &Payment, now_ms: i64, path: Path) -> bool {
        let max = self.age(path).max_ms;
        max > 0 && now_ms.saturating_sub(p.event_time_ms) > max
    }

    /// The event-age check of the scoring paths (stream and in-line; not
    /// the backtest, which scores history at its own time): a stale
    /// payment is refused when `limits.stale_events = "refuse"`, else it is
    /// scored without moving state (see [`Engine::score_at`]).
    pub fn admit(
        &self,
        p: &Payment,
        now_ms: i64,
        path: Path,
    ) -> Result<(), crate::event::DecodeError> {
        let age = self.age(path);
        if age.refuse && self.is_stale(p, now_ms, path) {
            return Err(crate::event::DecodeError::StaleEvent {
                event_time_ms: p.event_time_ms,
                age_ms: now_ms.saturating_sub(p.event_time_ms),
                limit_ms: age.max_ms,
            });
        }
        Ok(())
    }

    /// Scores one payment: updates the features of the entities in it, runs
    /// the rules and the blocklist, and decides. Never blocks, never does I/O.
    pub fn score(&self, p: &Payment) -> Verdict {
        self.score_at(p, crate::now_ms())
    }

    /// [`Engine::score`] with the wall-clock time given (for deterministic
    /// tests and replays).
    pub fn score_at(&self, p: &Payment, now_ms: i64) -> Verdict {
        let open = self.txn.open.read().unwrap_or_else(PoisonError::into_inner);
        let v = self.score_on(p, now_ms, Path::Inline);
        if *open && !v.is_stale() {
            self.keep_foreign(p);
        }
        v
    }

    /// [`Engine::score_at`] for the stream that owns the open transaction
    /// (or when there is none): its payments are not kept for an abort,
    /// because the stream re-consumes them after one.
    pub fn score_owned_at(&self, p: &Payment, now_ms: i64) -> Verdict {
        self.score_on(p, now_ms, Path::Stream)
    }

    /// Scores `p` with `path`'s event-age limit: a stale payment is scored
    /// against the state as it is and moves none of it (reason
    /// [`STALE_EVENT`]).
    fn score_on(&self, p: &Payment, now_ms: i64, path: Path) -> Verdict {
        let started = Instant::now();
        let home = self.currencies.load().to_home(p.currency, p.amount_minor);
        let stale = self.is_stale(p, now_ms, path);
        let mut fv = if stale {
            self.features.read_in(p, home)
        } else {
            self.features.update_and_read_in(p, home)
        };
        let model = self.model.load_full();
        if let Some(m) = &model {
            fv.set(features::F::ModelScore, m.score(&fv));
        }
        let shadow = self.shadow_model.load_full();
        let shadow_score = shadow.as_ref().map_or(f64::NAN, |m| m.score(&fv));
        let rules = self.rules.load();
        let list = self.blocklist.load();
        let mut v = decide(p, fv, &rules, &list, now_ms);
        v.model_version = model.as_ref().map(|m| m.version.clone());
        v.model = model;
        v.shadow_model_version = shadow.as_ref().map(|m| m.version.clone());
        v.shadow_model_score = shadow_score;
        if home.is_none() {
            // Never a silent mix of currencies: the amount is left out of
            // the features, and a person looks at the payment.
            v.add_hit(
                Reason {
                    rule_id: Arc::from(CURRENCY_UNKNOWN),
                    reason: Arc::from(
                        "no rate for this currency in the currency table: amount features left out",
                    ),
                    score: 0,
                },
                false,
                None,
            );
            // At least REVIEW; a HOLD stays a HOLD.
            if v.decision == Decision::Allow {
                v.decision = Decision::Review;
                v.forced = Some(Decision::Review);
            }
        }
        if stale {
            v.add_hit(
                Reason {
                    rule_id: Arc::from(STALE_EVENT),
                    reason: Arc::from(
                        "event time older than limits.max_event_age_ms: scored on the state as it is, which it did not move",
                    ),
                    score: 0,
                },
                false,
                None,
            );
        }
        v.engine_time_ns = started.elapsed().as_nanos() as u64;
        v
    }

    /// Updates feature state with a payment without scoring it: the warm-up
    /// replay after a restart or a rebalance.
    pub fn warm(&self, p: &Payment) {
        let open = self.txn.open.read().unwrap_or_else(PoisonError::into_inner);
        self.apply(p);
        if *open {
            self.keep_foreign(p);
        }
    }

    /// Puts `p` into feature state with its amount in home units.
    fn apply(&self, p: &Payment) {
        let home = self.currencies.load().to_home(p.currency, p.amount_minor);
        self.features.update_and_read_in(p, home);
    }

    /// Swaps in a model (`None`: rules see no `model.score`).
    pub fn set_model(&self, m: Option<model::Model>) {
        self.model.store(m.map(Arc::new));
    }

    pub fn model(&self) -> Option<Arc<model::Model>> {
        self.model.load_full()
    }

    /// Swaps in the shadow model (`None`: no shadow scoring).
    pub fn set_shadow_model(&self, m: Option<model::Model>) {
        self.shadow_model.store(m.map(Arc::new));
    }

    pub fn shadow_model(&self) -> Option<Arc<model::Model>> {
        self.shadow_model.load_full()
    }

    /// Swaps in a currency table (at start and on each valid reload).
    pub fn set_currencies(&self, c: currencies::Currencies) {
        self.currencies.store(Arc::new(c));
    }

    pub fn currencies(&self) -> Arc<currencies::Currencies> {
        self.currencies.load_full()
    }

    fn keep_foreign(&self, p: &Payment) {
        if let Some(segment) = self
            .txn
            .foreign
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .back_mut()
        {
            segment.push(p.clone());
        }
    }

    /// Opens the exactly-once stream's transaction over feature state (see
    /// [`FeatureStore::begin_txn`]).
    pub fn begin_txn(&self) -> Result<(), StateError> {
        let mut open = self
            .txn
            .open
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.features.begin_txn()?;
        let mut foreign = self
            .txn
            .foreign
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        foreign.clear();
        foreign.push_back(Vec::new());
        *open = true;
        Ok(())
    }

    /// Seals the transaction being committed and opens the next segment,
    /// so the stream scores on while the commit runs (see
    /// [`FeatureStore::seal_txn`]).
    pub fn seal_txn(&self) -> Result<(), StateError> {
        let _open = self
            .txn
            .open
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.features.seal_txn()?;
        self.txn
            .foreign
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(Vec::new());
        Ok(())
    }

    /// Keeps the changes of the oldest open segment (the whole transaction
    /// when it was never sealed).
    pub fn commit_txn(&self) -> Result<(), StateError> {
        let mut open = self
            .txn
            .open
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut foreign = self
            .txn
            .foreign
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        foreign.pop_front();
        let r = self.features.commit_txn().map(|_| ());
        *open = self.features.txn_open();
        if !*open {
            foreign.clear();
        }
        r
    }

    /// Whether a transaction (or a segment of one) is open.
    pub fn txn_open(&self) -> bool {
        self.features.txn_open()
    }

    /// Puts feature state back as it was when the transaction began (its
    /// oldest open segment), then applies again the payments others
    /// applied meanwhile (in-line calls, other instances' state records),
    /// in their order. The stream then re-consumes its own, which see the
    /// state they first saw. Returns how many foreign payments were
    /// applied again.
    pub fn abort_txn(&self) -> Result<usize, StateError> {
        let mut open = self
            .txn
            .open
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *open = false;
        let undone = self.features.abort_txn();
        let foreign = std::mem::take(
            &mut *self
                .txn
                .foreign
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let mut n = 0;
        for p in foreign.iter().flatten() {
            self.apply(p);
            n += 1;
        }
        undone.map(|_| n)
    }

    /// Swaps in a new rule set between two events.
    pub fn set_rules(&self, rules: RuleSet) {
        self.rules.store(Arc::new(rules));
    }

    /// Swaps in a new blocklist between two events.
    pub fn set_blocklist(&self, list: Blocklist) {
        self.blocklist.store(Arc::new(list));
    }

    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.load_full()
    }

    pub fn blocklist(&self) -> Arc<Blocklist> {
        self.blocklist.load_full()
    }

    pub fn features(&self) -> &FeatureStore {
        &self.features
    }

    /// Starts the feature-state sweeper: every `interval` (and at once when
    /// a cap is passed) it drops idle entities and enforces the caps; every
    /// second it publishes the entity gauges. A plain thread, so a sweep
    /// never occupies an async worker; it stops when the guard drops.
    pub fn spawn_sweeper(self: &Arc<Self>, interval: std::time::Duration) -> Sweeper {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (engine, flag) = (self.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("feature-sweeper".into())
            .spawn(move || {
                let tick = std::time::Duration::from_millis(200);
                let mut last = Instant::now();
                let mut gauges = Instant::now();
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    let f = engine.features();
                    if f.needs_sweep() || last.elapsed() >= interval {
                        let r = f.sweep();
                        last = Instant::now();
                        if r != features::SweepReport::default() {
                            tracing::info!(
                                accounts_idle = r.accounts_ttl,
                                accounts_over_cap = r.accounts_cap,
                                kit_idle = r.kit_ttl,
                                kit_over_cap = r.kit_cap,
                                "feature state swept"
                            );
                        }
                    } else if gauges.elapsed() >= std::time::Duration::from_secs(1) {
                        f.publish_gauges();
                        gauges = Instant::now();
                    }
                }
            })
            .ok();
        Sweeper { stop, thread }
    }
}

/// Rules, then blocklist, then thresholds, over features already computed:
/// the second half of [`Engine::score_at`], for tools that run several rule
/// sets over the same features (backtests with a baseline, rule tests).
pub fn decide(
    p: &Payment,
    fv: FeatureVector,
    rules: &RuleSet,
    list: &Blocklist,
    now_ms: i64,
) -> Verdict {
    let mut v = Verdict::new(rules.version.clone(), list.version(), now_ms);
    let ctx = rules::expr::Ctx {
        payment: p,
        features: &fv,
        blocklist: list,
        now_ms,
    };
    rules.evaluate(&ctx, &mut v);
    if let Some(hit) = list.check(p, now_ms) {
        v.add_list_hit(hit);
    }
    v.decide(&rules.thresholds);
    v.features = fv;
    v
}

/// Stops the sweeper thread when dropped.
pub struct Sweeper {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;

//! Per-entity behaviour state that rules read: the risk-feature engine.
//!
//! For every payment, before the rules run, [`FeatureStore::update_and_read`]
//! updates the state of the entities in it (payer account, payee account,
//! device, phone, IP) and returns the fixed, named [`FeatureVector`] the
//! rules see (catalogue in [`catalogue`], listed in docs/FEATURES.md).
//!
//! # Semantics
//! - **Event time.** Windows count by the payment's `event_time_ms`, per
//!   entity, read at the entity's watermark (the latest event time it has
//!   seen). An event behind the watermark by at most `lateness_s` lands in
//!   its own bucket; a later one is counted by arrival (at the watermark) and
//!   in `fraudline_feature_late_events_total{handling="by_arrival"}`; nothing
//!   is dropped. Window edges are bucket-aligned: see [`window`].
//! - **Dedup.** A payment whose `event_id` the payer already saw (same
//!   second) within `dedup_horizon_s` changes no feature: a redelivery after
//!   a crash does not inflate velocity. Its features are read without an
//!   update; the per-event novelty features (new payee/device/IP, z-score,
//!   ratio to max, seconds since last, geo speed) are then absent, because
//!   "new" was decided by the original. Counted in
//!   `fraudline_feature_duplicate_events_total`.
//! - **Memory.** Each entity is a fixed layout: bucket windows (≤ 58
//!   buckets), distinct sets exact up to 32 keys and a 128-register
//!   HyperLogLog beyond, recent-key sets of at most 32. Idle entities go after
//!   a TTL; past a hard cap the least recently active go first; both are
//!   counted in `fraudline_feature_evictions_total`.
//! - **Concurrency.** One sharded table for accounts (payer and payee roles
//!   in one entry, so pass-through reads one lock) and one for devices,
//!   phones and IPs ([`table`]). A payment first prefetches every entity's
//!   slot, so the cache misses overlap; then each entity's update and read
//!   happen under its shard lock together; a payment takes the locks one
//!   after the other, never two at once, so there is no global lock and no
//!   lock order to get wrong.
//! - **Identifiers** are hashed once per payment (64-bit ahash, fixed seeds,
//!   salted by kind); no identifier string is stored or compared.
//! - **Durability** (engine side; Kafka is the stream layer's): each entity
//!   encodes to a compact versioned value ([`codec`], keyed by
//!   [`EntityKey`]); [`FeatureStore::begin_snapshot`] takes a consistent
//!   incremental cut while scoring goes on, [`FeatureStore::restore`] loads
//!   one, and [`FeatureStore::begin_txn`] / [`FeatureStore::abort_txn`]
//!   roll the store back for an aborted Kafka transaction ([`journal`]).
//!   With no cut walking and no transaction open the cost per payment is a
//!   shared gate and one epoch stamp per entity.

pub mod catalogue;
pub mod codec;
pub mod distinct;
pub mod journal;
mod prefetch;
mod table;
pub mod window;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use metrics::{Counter, Gauge};

pub use catalogue::{FeatureVector, F};
pub use codec::{CodecError, EntityKey, EntityKind};
use distinct::{Distinct, RecentSet};
pub use journal::{ExportReport, SnapshotCut, StateError, TxnReport};
use journal::{Meta, Tracker};
use table::{RefMut, Table};
use window::{secs, Arrival, Secs, Span, Window, WindowParams};

use crate::event::Payment;
use crate::telemetry;

pub const DAY_S: u32 = 86_400;

/// Event ids a payer remembers for dedup (the most recent win).
const EVENT_CAP: usize = 32;
/// Devices and IPs a payer remembers for "new device / new IP".
const KIT_CAP: usize = 32;

/// Tunables of the feature store (`[features]` in the config).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureConfig {
    /// How far behind an entity's watermark an event is still counted at its
    /// own time.
    pub lateness_s: u32,
    /// How long a payer remembers event ids for dedup.
    pub dedup_horizon_s: u32,
    /// "New" payee / device / IP: not seen by the payer for this long.
    pub new_within_s: u32,
    /// Local time for night hours: minutes east of UTC.
    pub utc_offset_minutes: i32,
    /// Night is `[night_start_hour, night_end_hour)` local time, wrapping
    /// midnight when start > end.
    pub night_start_hour: u8,
    pub night_end_hour: u8,
    /// An account with no payment in or out for this long (event time) is
    /// dropped; keep it at least `new_within_s` or "new payee" forgets early.
    pub account_ttl_s: u32,
    /// The same for devices, phones and IPs (they only need 24 h).
    pub kit_ttl_s: u32,
    /// Hard cap on accounts held; past it the least recently active go.
    pub max_accounts: usize,
    /// Hard cap on devices + phones + IPs held.
    pub max_kit: usize,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig {
            lateness_s: 120,
            dedup_horizon_s: 3_600,
            new_within_s: 30 * DAY_S,
            utc_offset_minutes: 0,
            night_start_hour: 0,
            night_end_hour: 6,
            account_ttl_s: 31 * DAY_S,
            kit_ttl_s: 2 * DAY_S,
            max_accounts: 5_000_000,
            max_kit: 5_000_000,
        }
    }
}

/// Hash salts: one identifier space per kind.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Salt {
    Account = 1,
    Event = 2,
    Device = 3,
    Phone = 4,
    Ip = 5,
}

/// Both roles of one account, 232 bytes, boxed in the map. Measured with
/// 1 M accounts: inline in the map (320 bytes with the inbound side inline
/// too) was 16 % faster but took 1.2 GB RSS against 0.9 GB boxed, because
/// the map's empty slots are value-sized.
#[derive(Debug)]
struct Account {
    /// Outgoing payments (payer role).
    out: Window,
    /// Payees paid, with 30-day last sightings (new payee, distinct payees).
    payees: Distinct,
    /// Event ids seen as payer (dedup).
    events: RecentSet<EVENT_CAP>,
    /// Devices and IPs used as payer (salted apart).
    kit: RecentSet<KIT_CAP>,
    /// Incoming payments (payee role), only for accounts that received.
    inbound: Option<Box<Inbound>>,
    first_seen_s: Secs,
    /// Latest outgoing event time; 0 = none.
    last_out_s: Secs,
    /// Running amount statistics (Welford) over outgoing payments.
    n: u32,
    mean: f64,
    m2: f64,
    max_amount: i64,
    /// Last located outgoing payment; `geo_s` 0 = none.
    geo_s: Secs,
    geo: [f32; 2],
    /// Snapshot and transaction bookkeeping (see [`journal`]).
    meta: Meta,
}

#[derive(Debug, Default)]
struct Inbound {
    inn: Window,
    payers: Distinct,
}

impl Inbound {
    /// Starts loading its spilled buckets and payers.
    fn prefetch(&self) {
        prefetch::spilled([self.inn.spilled(), self.payers.spilled()]);
    }
}

impl Account {
    fn new(born_s: Secs) -> Account {
        Account {
            out: Window::new(),
            payees: Distinct::new(),
            events: RecentSet::new(),
            kit: RecentSet::new(),
            inbound: None,
            first_seen_s: born_s,
            last_out_s: 0,
            n: 0,
            mean: 0.0,
            m2: 0.0,
            max_amount: 0,
            geo_s: 0,
            geo: [0.0; 2],
            meta: Meta::default(),
        }
    }

    /// Starts loading what a payment reads of its payer beyond the struct.
    fn prefetch_payer(&self) {
        prefetch::spilled([
            self.out.spilled(),
            self.payees.spilled(),
            self.events.spilled(),
            self.kit.spilled(),
        ]);
        // A payer that also receives: its pass-through share reads the
        // inbound window.
        self.prefetch_payee();
    }

    /// Starts loading what a payment reads of its payee beyond the struct.
    fn prefetch_payee(&self) {
        if let Some(ib) = &self.inbound {
            prefetch::lines(
                &**ib as *const Inbound as usize,
                std::mem::size_of::<Inbound>(),
            );
        }
    }

    fn last_active(&self) -> Secs {
        let inn = self.inbound.as_ref().map_or(0, |i| i.inn.watermark());
        self.out.watermark().max(inn).max(self.first_seen_s)
    }

    fn heap_bytes(&self) -> usize {
        self.out.heap_bytes()
            + self.payees.heap_bytes()
            + self.events.heap_bytes()
            + self.kit.heap_bytes()
            + self.inbound.as_ref().map_or(0, |i| {
                std::mem::size_of::<Inbound>() + i.inn.heap_bytes() + i.payers.heap_bytes()
            })
    }
}

/// A device, phone or IP: payments over 1 h, distinct payer accounts over 24 h.
#[derive(Debug, Default)]
struct Kit {
    payments: Window<1>,
    accounts: Distinct,
    meta: Meta,
}

impl Kit {
    /// Starts loading what a payment reads of it beyond its slot.
    fn prefetch(&self) {
        prefetch::spilled([self.payments.spilled(), self.accounts.spilled()]);
    }
}

const KIT_WINDOW: WindowParams = WindowParams {
    lateness_s: 0, // replaced by the configured lateness
    keep: Span::H1,
};

struct FeatureMetrics {
    late_in_window: Counter,
    late_by_arrival: Counter,
    duplicates: Counter,
    key_evictions: [Counter; 5],
    sketches: Counter,
    evicted_ttl: [Counter; 2],
    evicted_cap: [Counter; 2],
    entities: [Gauge; 2],
    sweep: Gauge,
}

#[derive(Clone, Copy)]
enum KeySet {
    Payees = 0,
    Payers = 1,
    Accounts = 2,
    Events = 3,
    DevicesIps = 4,
}

impl FeatureMetrics {
    fn new() -> FeatureMetrics {
        use telemetry::*;
        let key = |set: &'static str| metrics::counter!(FEATURE_KEY_EVICTIONS, "set" => set);
        let ev = |kind: &'static str, reason: &'static str| metrics::counter!(FEATURE_EVICTIONS, "kind" => kind, "reason" => reason);
        FeatureMetrics {
            late_in_window: metrics::counter!(FEATURE_LATE_EVENTS, "handling" => "in_window"),
            late_by_arrival: metrics::counter!(FEATURE_LATE_EVENTS, "handling" => "by_arrival"),
            duplicates: metrics::counter!(FEATURE_DUPLICATES),
            key_evictions: [
                key("payees"),
                key("payers"),
                key("accounts"),
                key("events"),
                key("devices_ips"),
            ],
            sketches: metrics::counter!(FEATURE_SKETCHES),
            evicted_ttl: [ev("account", "ttl"), ev("kit", "ttl")],
            evicted_cap: [ev("account", "cap"), ev("kit", "cap")],
            entities: [
                metrics::gauge!(FEATURE_ENTITIES, "kind" => "account"),
                metrics::gauge!(FEATURE_ENTITIES, "kind" => "kit"),
            ],
            sweep: metrics::gauge!(FEATURE_SWEEP_DURATION),
        }
    }

    #[inline]
    fn arrival(&self, a: Arrival) {
        match a {
            Arrival::InOrder => {}
            Arrival::Late { .. } => self.late_in_window.increment(1),
            Arrival::TooLate { .. } => self.late_by_arrival.increment(1),
        }
    }

    #[inline]
    fn key_evicted(&self, set: KeySet, evicted: bool) {
        if evicted {
            self.key_evictions[set as usize].increment(1);
        }
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub accounts_ttl: usize,
    pub accounts_cap: usize,
    pub kit_ttl: usize,
    pub kit_cap: usize,
}

/// Concurrent feature state; see the module docs.
pub struct FeatureStore {
    cfg: FeatureConfig,
    accounts: Table<Box<Account>>,
    kit: Table<Kit>,
    /// Entries held, kept beside the maps: `Table::len` locks every shard,
    /// which must not happen while an entry is held.
    n_accounts: AtomicUsize,
    n_kit: AtomicUsize,
    /// Set when a cap is passed, so the sweeper runs at once.
    over_cap: AtomicBool,
    /// The latest event time seen by any entity: the sweep's clock, so that
    /// replays and backtests of old data evict by their own time.
    watermark: AtomicU32,
    /// Payments that took the duplicate path (also counted in
    /// `fraudline_feature_duplicate_events_total`), readable without a
    /// metrics recorder: benches assert it did not move, so a figure never
    /// rests on replays that update nothing.
    duplicates_seen: AtomicU64,
    hasher: ahash::RandomState,
    metrics: FeatureMetrics,
    /// Snapshot cuts and the transaction journal.
    tracker: Tracker,
    out_params: WindowParams,
    in_params: WindowParams,
    kit_params: WindowParams,
}

impl FeatureStore {
    /// Payments that took the duplicate path since this store was made.
    pub fn duplicates_seen(&self) -> u64 {
        self.duplicates_seen.load(Ordering::Relaxed)
    }

    pub fn new(cfg: FeatureConfig) -> FeatureStore {
        FeatureStore {
            out_params: WindowParams {
                lateness_s: cfg.lateness_s,
                keep: Span::H24,
            },
            in_params: WindowParams {
                lateness_s: cfg.lateness_s,
                keep: Span::H24,
            },
            kit_params: WindowParams {
                lateness_s: cfg.lateness_s,
                ..KIT_WINDOW
            },
            cfg,
            accounts: Table::new(),
            kit: Table::new(),
            n_accounts: AtomicUsize::new(0),
            n_kit: AtomicUsize::new(0),
            over_cap: AtomicBool::new(false),
            watermark: AtomicU32::new(0),
            duplicates_seen: AtomicU64::new(0),
            // Fixed seeds: the same identifier hashes the same in every run.
            hasher: ahash::RandomState::with_seeds(0x5eed, 0xf4a0d, 0x11e, 0xacc7),
            metrics: FeatureMetrics::new(),
            tracker: Tracker::new(),
        }
    }

    pub fn config(&self) -> &FeatureConfig {
        &self.cfg
    }

    #[inline]
    fn key(&self, salt: Salt, id: &str) -> u64 {
        self.hasher.hash_one((salt as u8, id))
    }

    #[inline]
    fn opt_key(&self, salt: Salt, id: &str) -> Option<u64> {
        (!id.is_empty()).then(|| self.key(salt, id))
    }

    /// One more entity held in a map capped at `cap`.
    fn counted(&self, held: &AtomicUsize, cap: usize) {
        if held.fetch_add(1, Ordering::Relaxed) >= cap {
            self.over_cap.store(true, Ordering::Relaxed);
        }
    }

    /// The account, created (stamped `epoch`, journaled) if new. The caller
    /// calls [`Tracker::touch`] before changing an existing one.
    fn account_mut(&self, key: u64, born_s: Secs, epoch: u32) -> RefMut<'_, Box<Account>> {
        let (a, made) = self.accounts.get_or_insert_with(key, || {
            let mut a = Box::new(Account::new(born_s));
            a.meta.epoch = epoch;
            a
        });
        if made {
            self.counted(&self.n_accounts, self.cfg.max_accounts);
            self.tracker.created(EntityKind::Account, key);
        }
        a
    }

    /// The device, phone or IP, changed now: created or touched.
    fn kit_mut(&self, key: u64, epoch: u32) -> RefMut<'_, Kit> {
        let (mut k, made) = self.kit.get_or_insert_with(key, || Kit {
            meta: Meta {
                epoch,
                exported_in: 0,
            },
            ..Kit::default()
        });
        if made {
            self.counted(&self.n_kit, self.cfg.max_kit);
            self.tracker.created(EntityKind::Kit, key);
        } else {
            self.tracker.touch(key, &mut *k, epoch);
        }
        k
    }

    fn is_night(&self, t: Secs) -> bool {
        let local = i64::from(t) + i64::from(self.cfg.utc_offset_minutes) * 60;
        let hour = (local.rem_euclid(i64::from(DAY_S)) / 3600) as u8;
        let (a, b) = (self.cfg.night_start_hour, self.cfg.night_end_hour);
        if a <= b {
            hour >= a && hour < b
        } else {
            hour >= a || hour < b
        }
    }

    /// Updates the state of every entity in `p` and returns what the rules
    /// see. A duplicate (see the module docs) updates nothing. The amount
    /// counts as it came (one currency).
    pub fn update_and_read(&self, p: &Payment) -> FeatureVector {
        self.update_and_read_in(p, Some(p.amount_minor))
    }

    /// [`FeatureStore::update_and_read`] with the amount in home-currency
    /// minor units (`engine::currencies`); `None` (a currency without a
    /// rate) leaves the payment's amount out of every amount feature while
    /// its counts, counterparties and novelty still count.
    pub fn update_and_read_in(&self, p: &Payment, amount_home: Option<i64>) -> FeatureVector {
        self.run(p, amount_home, true)
    }

    /// What the rules would see for `p` against the state as it is, without
    /// changing any: a stale payment's path (`limits.max_event_age_ms`). As
    /// for a duplicate, the per-event novelty features are absent; unlike
    /// one, nothing is counted as a duplicate and no entity is created.
    pub fn read_in(&self, p: &Payment, amount_home: Option<i64>) -> FeatureVector {
        self.run(p, amount_home, false)
    }

    fn run(&self, p: &Payment, amount_home: Option<i64>, update: bool) -> FeatureVector {
        // Shared with every other payment; a snapshot cut or a transaction
        // boundary waits for it, so each payment is wholly on one side.
        let (_gate, epoch) = self.tracker.enter();
        let mut fv = FeatureVector::default();
        let t = p.event_time_ms;
        let amount = amount_home.unwrap_or(0).max(0);
        if let Some(a) = amount_home {
            fv.set(F::PaymentAmountHome, a as f64);
        }
        let payer = self.key(Salt::Account, &p.payer.account);
        let payee = self.opt_key(Salt::Account, &p.payee.account);
        let event = self.key(Salt::Event, &p.event_id);
        let device = self.opt_key(Salt::Device, &p.device_id);
        let ip = self.opt_key(Salt::Ip, &p.ip);
        let phone = self.opt_key(Salt::Phone, &p.phone);
        // Misses overlap rather than follow one another: every entity's
        // slot is asked for before any is locked (see `table`); then, with
        // the slots on their way, the boxed accounts they point to; then
        // what those point to. Each later round reads what the one before
        // fetched, under a brief read lock.
        self.accounts.prefetch(payer);
        if let Some(k) = payee {
            self.accounts.prefetch(k);
        }
        for k in [device, phone, ip].into_iter().flatten() {
            self.kit.prefetch(k);
        }
        for k in [Some(payer), payee].into_iter().flatten() {
            if let Some(a) = self.accounts.get(&k) {
                prefetch::lines(
                    &**a as *const Account as usize,
                    std::mem::size_of::<Account>(),
                );
            }
        }
        for k in [device, phone, ip].into_iter().flatten() {
            if let Some(k) = self.kit.get(&k) {
                k.prefetch();
            }
        }
        if let Some(a) = self.accounts.get(&payer) {
            a.prefetch_payer();
        }
        if let Some(a) = payee.and_then(|k| self.accounts.get(&k)) {
            a.prefetch_payee();
        }
        let m = &self.metrics;
        let new_since = |now: Secs| now.saturating_sub(self.cfg.new_within_s);

        // Payer: dedup, novelty, velocity, history.
        // Read-only (stale) payments take the duplicate path, uncounted.
        let mut duplicate = !update;
        let held = if update {
            Some(self.account_mut(payer, secs(t), epoch))
        } else {
            self.accounts.get_mut(&payer)
        };
        if let Some(mut held) = held {
            let a: &mut Account = &mut held;
            let st = a.out.stamp(t, self.cfg.lateness_s);
            if update {
                duplicate = a.events.contains_at(event, st.event_s);
            }
            if duplicate {
                if update {
                    m.duplicates.increment(1);
                    self.duplicates_seen.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                self.tracker.touch(payer, a, epoch);
                m.arrival(st.arrival);
                // Read first: the shared line is written only when it moves.
                if st.now_s > self.watermark.load(Ordering::Relaxed) {
                    self.watermark.fetch_max(st.now_s, Ordering::Relaxed);
                }
                if a.last_out_s != 0 {
                    let since = st.event_s.saturating_sub(a.last_out_s);
                    fv.set(F::PayerSecsSinceLast, f64::from(since));
                }
                let x = amount as f64;
                if a.n >= 5 {
                    let sd = (a.m2 / f64::from(a.n - 1)).sqrt().max(1.0);
                    fv.set(F::PayerAmountZscore, (x - a.mean) / sd);
                }
                if a.n > 0 && a.max_amount > 0 {
                    fv.set(F::PayerAmountToMax, x / a.max_amount as f64);
                }
                if let (Some(g), true) = (p.geo, a.geo_s != 0) {
                    let km = haversine_km(f64::from(a.geo[0]), f64::from(a.geo[1]), g.lat, g.lon);
                    let dt = st.event_s.abs_diff(a.geo_s).max(60);
                    fv.set(F::PayerGeoSpeedKmh, km / (f64::from(dt) / 3600.0));
                }

                let st = a.out.add(t, amount, &self.out_params);
                let forget = new_since(st.now_s);
                if let Some(payee) = payee {
                    let s = a.payees.insert(payee, st.at_s, st.now_s, forget);
                    fv.set_bool(F::PayerNewPayee, !s.seen_since(forget));
                    m.key_evicted(KeySet::Payees, s.evicted);
                    if s.to_sketch {
                        m.sketches.increment(1);
                    }
                }
                let r = a.events.insert(
                    event,
                    st.event_s,
                    st.now_s.saturating_sub(self.cfg.dedup_horizon_s),
                );
                m.key_evicted(KeySet::Events, r.evicted);
                for (k, f) in [(device, F::PayerNewDevice), (ip, F::PayerNewIp)] {
                    if let Some(k) = k {
                        let r = a.kit.insert(k, st.at_s, forget);
                        fv.set_bool(f, !r.seen);
                        m.key_evicted(KeySet::DevicesIps, r.evicted);
                    }
                }
                a.n = a.n.saturating_add(1);
                let d = x - a.mean;
                a.mean += d / f64::from(a.n);
                a.m2 += d * (x - a.mean);
                a.max_amount = a.max_amount.max(amount);
                a.last_out_s = a.last_out_s.max(st.event_s);
                a.first_seen_s = a.first_seen_s.min(st.event_s);
                if let Some(g) = p.geo {
                    if st.event_s >= a.geo_s {
                        a.geo_s = st.event_s.max(1);
                        a.geo = [g.lat as f32, g.lon as f32];
                    }
                }
            }
            let now = a.out.watermark();
            // The night-time sum in the same pass over the buckets.
            let (out, night) = a.out.read_picking(Span::H24, |s| self.is_night(s));
            fv.set(F::PayerCount1m, f64::from(out.count(Span::M1)));
            fv.set(F::PayerCount10m, f64::from(out.count(Span::M10)));
            fv.set(F::PayerCount1h, f64::from(out.count(Span::H1)));
            fv.set(F::PayerCount24h, f64::from(out.count(Span::H24)));
            fv.set(F::PayerSum1m, out.sum(Span::M1) as f64);
            fv.set(F::PayerSum10m, out.sum(Span::M10) as f64);
            fv.set(F::PayerSum1h, out.sum(Span::H1) as f64);
            fv.set(F::PayerSum24h, out.sum(Span::H24) as f64);
            let d = a.payees.read(now);
            fv.set(F::PayerDistinctPayees1h, f64::from(d.h1));
            fv.set(F::PayerDistinctPayees24h, f64::from(d.h24));
            let day = out.sum(Span::H24);
            if day > 0 {
                fv.set(F::PayerNightShare24h, night as f64 / day as f64);
            } else {
                fv.set(F::PayerNightShare24h, 0.0);
            }
            if let Some(ib) = &a.inbound {
                let in_1h = ib.inn.read_at(now, Span::H1).sum(Span::H1);
                if in_1h > 0 {
                    let share = out.sum(Span::H1) as f64 / in_1h as f64;
                    fv.set(F::PayerPassThrough1h, share.min(1.0));
                }
            }
        }

        // The payee's inbound box came in with the payer's work; what it
        // points to is asked for now, and arrives while the devices are
        // scored. (The payer's lock is released: the payee may share its
        // shard.)
        if let Some(a) = payee.and_then(|k| self.accounts.get(&k)) {
            if let Some(ib) = &a.inbound {
                ib.prefetch();
            }
        }

        // Device, phone, IP: one device driving many accounts.
        let kits = [
            (device, F::DeviceDistinctAccounts24h, F::DeviceCount1h),
            (phone, F::PhoneDistinctAccounts24h, F::PhoneCount1h),
            (ip, F::IpDistinctAccounts24h, F::IpCount1h),
        ];
        for (key, distinct, count) in kits {
            let Some(key) = key else { continue };
            if duplicate {
                if let Some(k) = self.kit.get(&key) {
                    read_kit(&k, &mut fv, distinct, count);
                }
                continue;
            }
            let mut k = self.kit_mut(key, epoch);
            let st = k.payments.add(t, amount, &self.kit_params);
            let s = k
                .accounts
                .insert(payer, st.at_s, st.now_s, st.now_s.saturating_sub(DAY_S));
            m.key_evicted(KeySet::Accounts, s.evicted);
            if s.to_sketch {
                m.sketches.increment(1);
            }
            read_kit(&k, &mut fv, distinct, count);
        }

        // Payee: the mule signal.
        let held = match payee {
            Some(k) if duplicate => self.accounts.get_mut(&k),
            Some(k) => Some(self.account_mut(k, secs(t), epoch)),
            None => None,
        };
        if let (Some(mut held), Some(payee)) = (held, payee) {
            let a: &mut Account = &mut held;
            if !duplicate {
                self.tracker.touch(payee, a, epoch);
                let ib = a.inbound.get_or_insert_with(Box::default);
                let st = ib.inn.add(t, amount, &self.in_params);
                let s = ib
                    .payers
                    .insert(payer, st.at_s, st.now_s, st.now_s.saturating_sub(DAY_S));
                m.key_evicted(KeySet::Payers, s.evicted);
                if s.to_sketch {
                    m.sketches.increment(1);
                }
                a.first_seen_s = a.first_seen_s.min(st.event_s);
            }
            if let Some(ib) = &a.inbound {
                let now = ib.inn.watermark();
                let inn = ib.inn.read(Span::H24);
                fv.set(F::PayeeInCount10m, f64::from(inn.count(Span::M10)));
                fv.set(F::PayeeInCount1h, f64::from(inn.count(Span::H1)));
                fv.set(F::PayeeInCount24h, f64::from(inn.count(Span::H24)));
                fv.set(F::PayeeInSum10m, inn.sum(Span::M10) as f64);
                fv.set(F::PayeeInSum1h, inn.sum(Span::H1) as f64);
                fv.set(F::PayeeInSum24h, inn.sum(Span::H24) as f64);
                let d = ib.payers.read(now);
                fv.set(F::PayeeDistinctPayers10m, f64::from(d.m10));
                fv.set(F::PayeeDistinctPayers1h, f64::from(d.h1));
                fv.set(F::PayeeDistinctPayers24h, f64::from(d.h24));
                fv.set(
                    F::PayeeAgeSecs,
                    f64::from(now.saturating_sub(a.first_seen_s)),
                );
                let in_1h = inn.sum(Span::H1);
                if in_1h > 0 {
                    let out_1h = a.out.read_at(now, Span::H1).sum(Span::H1);
                    fv.set(
                        F::PayeePassThrough1h,
                        (out_1h as f64 / in_1h as f64).min(1.0),
                    );
                }
            }
        }
        fv
    }

    /// Entities held: (accounts, devices + phones + IPs).
    pub fn entity_counts(&self) -> (usize, usize) {
        (
            self.n_accounts.load(Ordering::Relaxed),
            self.n_kit.load(Ordering::Relaxed),
        )
    }

    /// Bytes of state held, by walking every entity: `size_of` of the map
    /// entries and boxes plus their heap. Excludes the maps' empty slots and
    /// allocator overhead (the RSS measurement has those).
    pub fn state_bytes(&self) -> (usize, usize) {
        let (mut acc, mut kit) = (0, 0);
        self.accounts.for_each(|_, a| {
            acc += std::mem::size_of::<(u64, Box<Account>)>()
                + std::mem::size_of::<Account>()
                + a.heap_bytes();
        });
        self.kit.for_each(|_, k| {
            kit += std::mem::size_of::<(u64, Kit)>()
                + k.payments.heap_bytes()
                + k.accounts.heap_bytes();
        });
        (acc, kit)
    }

    /// Whether a cap was passed since the last sweep.
    pub fn needs_sweep(&self) -> bool {
        self.over_cap.load(Ordering::Relaxed)
    }

    /// Drops idle entities (TTL, by the store's event-time watermark), trims
    /// what the survivors no longer need, and enforces the hard caps by
    /// dropping the least recently active. Holds one shard lock at a time.
    pub fn sweep(&self) -> SweepReport {
        let started = Instant::now();
        self.over_cap.store(false, Ordering::Relaxed);
        let now = self.watermark.load(Ordering::Relaxed);
        let mut r = SweepReport::default();
        let acc_cut = now.saturating_sub(self.cfg.account_ttl_s);
        let forget = now.saturating_sub(self.cfg.new_within_s);
        let dedup = now.saturating_sub(self.cfg.dedup_horizon_s);
        let t = &self.tracker;
        self.accounts.retain(|key, a| {
            if a.last_active() < acc_cut {
                t.removing(*key, &**a);
                r.accounts_ttl += 1;
                return false;
            }
            t.sweeping(*key, &mut **a, |a| {
                // Non-short-circuit `|`: every part is trimmed.
                let mut changed = a.out.expire(now, Span::H24)
                    | a.payees.expire(now, forget)
                    | a.events.expire(dedup)
                    | a.kit.expire(forget);
                if let Some(ib) = &mut a.inbound {
                    changed |= ib.inn.expire(now, Span::H24)
                        | ib.payers.expire(now, now.saturating_sub(DAY_S));
                }
                changed
            });
            true
        });
        let kit_cut = now.saturating_sub(self.cfg.kit_ttl_s);
        self.kit.retain(|key, k| {
            if k.payments.watermark() < kit_cut {
                t.removing(*key, &*k);
                r.kit_ttl += 1;
                return false;
            }
            t.sweeping(*key, k, |k| {
                k.payments.expire(now, Span::H1) | k.accounts.expire(now, now.saturating_sub(DAY_S))
            });
            true
        });
        self.n_accounts.fetch_sub(r.accounts_ttl, Ordering::Relaxed);
        self.n_kit.fetch_sub(r.kit_ttl, Ordering::Relaxed);
        r.accounts_cap = evict_over_cap(
            &self.accounts,
            &self.n_accounts,
            self.cfg.max_accounts,
            |a| a.last_active(),
            |key, a| t.removing(key, &**a),
        );
        r.kit_cap = evict_over_cap(
            &self.kit,
            &self.n_kit,
            self.cfg.max_kit,
            |k| k.payments.watermark(),
            |key, k| t.removing(key, k),
        );
        let m = &self.metrics;
        m.evicted_ttl[0].increment(r.accounts_ttl as u64);
        m.evicted_ttl[1].increment(r.kit_ttl as u64);
        m.evicted_cap[0].increment(r.accounts_cap as u64);
        m.evicted_cap[1].increment(r.kit_cap as u64);
        // Re-base the counters on the maps (they drift by racing inserts).
        self.n_accounts
            .store(self.accounts.len(), Ordering::Relaxed);
        self.n_kit.store(self.kit.len(), Ordering::Relaxed);
        self.publish_gauges();
        m.sweep.set(started.elapsed().as_secs_f64());
        r
    }

    /// Sets the entity gauges.
    pub fn publish_gauges(&self) {
        let (a, k) = self.entity_counts();
        self.metrics.entities[0].set(a as f64);
        self.metrics.entities[1].set(k as f64);
    }
}

fn read_kit(k: &Kit, fv: &mut FeatureVector, distinct: F, count: F) {
    let now = k.payments.watermark();
    fv.set(distinct, f64::from(k.accounts.read(now).h24));
    fv.set(count, f64::from(k.payments.read(Span::H1).count(Span::H1)));
}

/// Past `cap`, drops the least recently active entries down to 90 % of it
/// (room, so that one new entity does not trigger a sweep each). Returns how
/// many went.
fn evict_over_cap<V>(
    map: &Table<V>,
    held: &AtomicUsize,
    cap: usize,
    last_active: impl Fn(&V) -> Secs,
    mut removing: impl FnMut(u64, &V),
) -> usize {
    let len = map.len();
    if len <= cap {
        return 0;
    }
    let target = cap - cap / 10;
    let mut times: Vec<Secs> = Vec::with_capacity(len);
    map.for_each(|_, v| times.push(last_active(v)));
    let excess = times.len().saturating_sub(target);
    if excess == 0 {
        return 0;
    }
    let (_, cut, _) = times.select_nth_unstable(excess - 1);
    let cut = *cut;
    // Everything strictly older goes; ties at the cut go until `excess` is met.
    let mut left_at_cut = excess - times.iter().filter(|t| **t < cut).count();
    let mut removed = 0;
    map.retain(|key, v| {
        let t = last_active(v);
        let drop = t < cut
            || (t == cut && left_at_cut > 0 && {
                left_at_cut -= 1;
                true
            });
        if drop {
            removing(*key, v);
        }
        removed += usize::from(drop);
        !drop
    });
    held.store(map.len(), Ordering::Relaxed);
    removed
}

/// Great-circle distance in km.
fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod state_tests;
#[cfg(test)]
mod tests;

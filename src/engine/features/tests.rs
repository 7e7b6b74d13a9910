//! Store-level tests: every feature against a hand computation, and the
//! windows, distinct counts and dedup against a naive reference that keeps
//! every event (proptest).

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::window::{secs, Span};
use super::*;
use crate::event::{AccountKind, Channel, Currency, Geo, Party, Payment, PaymentType};

/// 2027-01-15 00:00:00 UTC, a whole day.
pub(super) const T0: i64 = 1_799_971_200_000;
pub(super) const MIN: i64 = 60_000;
pub(super) const HOUR: i64 = 3_600_000;

fn party(account: &str) -> Party {
    Party {
        account: account.into(),
        bank_code: "BANK".into(),
        kind: AccountKind::Account,
    }
}

pub(super) fn pay(id: &str, payer: &str, payee: &str, amount: i64, t: i64) -> Payment {
    Payment {
        event_id: id.into(),
        event_time_ms: t,
        payer: party(payer),
        payee: party(payee),
        amount_minor: amount,
        currency: Currency::parse("MYR").expect("known currency"),
        channel: Channel::Mobile,
        payment_type: PaymentType::Transfer,
        device_id: String::new(),
        ip: String::new(),
        phone: String::new(),
        geo: None,
        country: "MY".into(),
        merchant_category: String::new(),
        attributes: Default::default(),
    }
}

pub(super) fn store() -> FeatureStore {
    FeatureStore::new(FeatureConfig::default())
}

#[test]
fn payer_velocity_sums_and_history() {
    let s = store();
    for (i, amount) in [100, 200, 300, 400, 500].into_iter().enumerate() {
        s.update_and_read(&pay(
            &format!("e{i}"),
            "A",
            "B",
            amount,
            T0 + i as i64 * MIN,
        ));
    }
    let f = s.update_and_read(&pay("e5", "A", "C", 10_000, T0 + 5 * MIN + 30_000));
    assert_eq!(f.get(F::PayerCount1m), 1.0);
    assert_eq!(f.get(F::PayerCount10m), 6.0);
    assert_eq!(f.get(F::PayerSum10m), 11_500.0);
    assert_eq!(f.get(F::PayerCount24h), 6.0);
    assert_eq!(f.get(F::PayerSecsSinceLast), 90.0);
    assert_eq!(f.get(F::PayerDistinctPayees1h), 2.0);
    assert_eq!(f.get(F::PayerNewPayee), 1.0);
    // mean 300, sample sd of 100..500 = 158.11
    let z = f.get(F::PayerAmountZscore);
    assert!((z - (10_000.0 - 300.0) / 158.113_883).abs() < 1e-3, "{z}");
    assert_eq!(f.get(F::PayerAmountToMax), 20.0);
    let again = s.update_and_read(&pay("e6", "A", "B", 50, T0 + 6 * MIN));
    assert_eq!(again.get(F::PayerNewPayee), 0.0, "B was paid before");
}

#[test]
fn first_payment_has_no_history_features() {
    let f = store().update_and_read(&pay("e", "A", "B", 100, T0));
    for absent in [
        F::PayerSecsSinceLast,
        F::PayerAmountZscore,
        F::PayerAmountToMax,
        F::PayerGeoSpeedKmh,
        F::PayerNewDevice,
        F::PayerPassThrough1h,
    ] {
        assert!(f.get(absent).is_nan(), "{absent:?}");
    }
    assert_eq!(f.get(F::PayerCount1m), 1.0);
    assert_eq!(f.get(F::PayeeAgeSecs), 0.0);
    assert_eq!(f.get(F::PayerNewPayee), 1.0);
}

#[test]
fn new_payee_means_not_paid_in_30_days() {
    let s = store();
    s.update_and_read(&pay("a", "A", "B", 100, T0));
    let day = 24 * HOUR;
    let f = s.update_and_read(&pay("b", "A", "B", 100, T0 + 29 * day));
    assert_eq!(f.get(F::PayerNewPayee), 0.0);
    let f = s.update_and_read(&pay("c", "A", "B", 100, T0 + 29 * day + 31 * day));
    assert_eq!(f.get(F::PayerNewPayee), 1.0, "31 days after the last time");
}

#[test]
fn new_device_and_ip_and_kit_counts() {
    let s = store();
    let with = |id: &str, payer: &str, dev: &str, ip: &str, t: i64| {
        let mut p = pay(id, payer, "SHOP", 100, t);
        p.device_id = dev.into();
        p.ip = ip.into();
        s.update_and_read(&p)
    };
    let f = with("1", "A", "dev-1", "10.0.0.1", T0);
    assert_eq!(f.get(F::PayerNewDevice), 1.0);
    assert_eq!(f.get(F::PayerNewIp), 1.0);
    let f = with("2", "A", "dev-1", "10.0.0.2", T0 + MIN);
    assert_eq!(f.get(F::PayerNewDevice), 0.0);
    assert_eq!(f.get(F::PayerNewIp), 1.0);
    // One device driving many accounts.
    for (i, acct) in ["B", "C", "D", "E"].iter().enumerate() {
        with(&format!("x{i}"), acct, "dev-1", "", T0 + 2 * MIN);
    }
    let f = with("3", "F", "dev-1", "", T0 + 3 * MIN);
    assert_eq!(f.get(F::DeviceDistinctAccounts24h), 6.0);
    assert_eq!(f.get(F::DeviceCount1h), 7.0);
    assert!(f.get(F::IpCount1h).is_nan(), "no IP on this payment");
    assert!(f.get(F::PhoneDistinctAccounts24h).is_nan());
}

#[test]
fn impossible_travel_speed() {
    let s = store();
    let mut p = pay("1", "A", "B", 100, T0);
    p.geo = Some(Geo {
        lat: 3.139,
        lon: 101.687,
    }); // Kuala Lumpur
    s.update_and_read(&p);
    let mut q = pay("2", "A", "B", 100, T0 + HOUR);
    q.geo = Some(Geo {
        lat: 51.507,
        lon: -0.128,
    }); // London, ~10,560 km
    let f = s.update_and_read(&q);
    let v = f.get(F::PayerGeoSpeedKmh);
    assert!((10_400.0..10_700.0).contains(&v), "{v}");
}

#[test]
fn night_share_uses_local_hours() {
    let s = FeatureStore::new(FeatureConfig {
        utc_offset_minutes: 8 * 60, // 00:00-06:00 local = 16:00-22:00 UTC
        ..FeatureConfig::default()
    });
    s.update_and_read(&pay("1", "A", "B", 300, T0 + 17 * HOUR)); // 01:00 local
    let f = s.update_and_read(&pay("2", "A", "B", 100, T0 + 23 * HOUR)); // 07:00 local
    assert_eq!(f.get(F::PayerNightShare24h), 0.75);
}

#[test]
fn pass_through_of_a_mule() {
    let s = store();
    for i in 0..4 {
        s.update_and_read(&pay(
            &format!("in{i}"),
            &format!("V{i}"),
            "MULE",
            1000,
            T0 + i * MIN,
        ));
    }
    let f = s.update_and_read(&pay("out", "MULE", "BOSS", 3000, T0 + 10 * MIN));
    assert_eq!(f.get(F::PayerPassThrough1h), 0.75);
    let f = s.update_and_read(&pay("in4", "V9", "MULE", 1000, T0 + 11 * MIN));
    assert_eq!(f.get(F::PayeePassThrough1h), 0.6);
    // The 10 m window read at 11:00 starts at 2:00 (whole-minute buckets).
    assert_eq!(f.get(F::PayeeDistinctPayers10m), 3.0, "V2, V3, V9");
    assert_eq!(f.get(F::PayeeDistinctPayers1h), 5.0);
    assert_eq!(f.get(F::PayeeInCount1h), 5.0);
    assert_eq!(f.get(F::PayeeInSum24h), 5000.0);
    assert_eq!(f.get(F::PayeeAgeSecs), 11.0 * 60.0);
}

#[test]
fn a_redelivered_event_changes_nothing() {
    let s = store();
    let p = pay("same", "A", "B", 700, T0);
    let first = s.update_and_read(&p);
    for _ in 0..5 {
        let again = s.update_and_read(&p);
        assert_eq!(again.get(F::PayerCount1m), 1.0);
        assert_eq!(again.get(F::PayerSum24h), 700.0);
        assert_eq!(again.get(F::PayeeInCount10m), 1.0);
        assert!(
            again.get(F::PayerNewPayee).is_nan(),
            "novelty is the original's"
        );
    }
    let next = s.update_and_read(&pay("other", "A", "B", 1, T0 + 1000));
    assert_eq!(next.get(F::PayerCount1m), 2.0);
    assert_eq!(first.get(F::PayerCount1m), 1.0);
}

#[test]
fn late_events_are_counted_by_arrival_not_dropped() {
    let s = store();
    s.update_and_read(&pay("now", "A", "B", 1, T0 + HOUR));
    // 1 minute late: in its own bucket, so out of the last minute.
    let f = s.update_and_read(&pay("late", "A", "B", 1, T0 + HOUR - MIN));
    assert_eq!(f.get(F::PayerCount1m), 1.0);
    assert_eq!(f.get(F::PayerCount10m), 2.0);
    // 50 minutes late: beyond the 120 s lateness, counted now.
    let f = s.update_and_read(&pay("very", "A", "B", 1, T0 + 10 * MIN));
    assert_eq!(f.get(F::PayerCount1m), 2.0);
    assert_eq!(f.get(F::PayerCount24h), 3.0);
}

#[test]
fn bad_input_never_panics_and_stays_bounded() {
    let s = store();
    let mut p = pay("e", "A", "", i64::MAX, i64::MAX);
    let f = s.update_and_read(&p);
    assert!(
        f.get(F::PayeeInCount10m).is_nan(),
        "no payee, no payee features"
    );
    p.event_id = "f".into();
    p.amount_minor = i64::MAX;
    let f = s.update_and_read(&p);
    assert_eq!(f.get(F::PayerSum1m), i64::MAX as f64, "sums saturate");
    for t in [0, -1, i64::MIN, T0] {
        p.event_id = format!("t{t}");
        p.event_time_ms = t;
        s.update_and_read(&p);
    }
    p.amount_minor = -5;
    s.update_and_read(&p);
}

#[test]
fn a_payer_with_200k_distinct_payees_stays_small_and_estimated() {
    let s = store();
    let n = 200_000;
    let mut last = FeatureVector::default();
    for i in 0..n {
        last = s.update_and_read(&pay(&format!("e{i}"), "SPRAY", &format!("P{i}"), 1, T0 + i));
    }
    let est = last.get(F::PayerDistinctPayees1h);
    assert!(
        (est - n as f64).abs() / (n as f64) < 0.3,
        "HLL estimate {est} of {n}"
    );
    let key = s.key(Salt::Account, "SPRAY");
    let a = s.accounts.get(&key).expect("held");
    let bytes = std::mem::size_of::<Account>() + a.heap_bytes();
    assert!(bytes < 8 * 1024, "one payer holds {bytes} bytes");
}

#[test]
fn ttl_sweep_evicts_idle_entities_and_cap_evicts_the_least_recent() {
    let s = FeatureStore::new(FeatureConfig {
        account_ttl_s: 3_600,
        kit_ttl_s: 3_600,
        max_accounts: 100,
        ..FeatureConfig::default()
    });
    let mut p = pay("old", "OLD", "OLDPAYEE", 1, T0);
    p.device_id = "d".into();
    s.update_and_read(&p);
    s.update_and_read(&pay("new", "NEW", "NEWPAYEE", 1, T0 + 2 * HOUR));
    let r = s.sweep();
    assert_eq!(r.accounts_ttl, 2);
    assert_eq!(r.kit_ttl, 1);
    assert_eq!(s.entity_counts(), (2, 0));

    for i in 0..150 {
        s.update_and_read(&pay(
            &format!("c{i}"),
            &format!("C{i}"),
            "NEWPAYEE",
            1,
            T0 + 2 * HOUR + i * 1000,
        ));
    }
    assert!(s.needs_sweep());
    let r = s.sweep();
    assert_eq!(r.accounts_cap, 152 - 90);
    assert_eq!(s.entity_counts().0, 90);
    // The most recent survive.
    assert!(s.accounts.contains_key(&s.key(Salt::Account, "C149")));
    assert!(!s.accounts.contains_key(&s.key(Salt::Account, "C0")));
}

#[test]
fn per_payer_layout_is_small() {
    assert!(
        std::mem::size_of::<Account>() <= 240,
        "{}",
        std::mem::size_of::<Account>()
    );
    assert!(
        std::mem::size_of::<Kit>() <= 80,
        "{}",
        std::mem::size_of::<Kit>()
    );
}

// ---- property test against a reference that keeps every event ----

#[derive(Debug, Clone)]
struct Ev {
    id: u32,
    payer: u8,
    payee: u8,
    device: u8,
    amount: i64,
    t_ms: i64,
}

#[derive(Default)]
struct RefEntity {
    now: Secs,
    /// (counted at, amount, other party)
    events: Vec<(Secs, i64, u8)>,
}

impl RefEntity {
    /// Where an event lands, as the store documents it.
    fn at(&self, event_s: Secs, lateness: u32) -> (Secs, Secs) {
        let now = self.now.max(event_s);
        let at = if now - event_s <= lateness {
            event_s
        } else {
            now
        };
        (at, now)
    }

    fn count(&self, span: Span) -> f64 {
        self.events
            .iter()
            .filter(|e| span.contains(e.0, self.now))
            .count() as f64
    }

    fn sum(&self, span: Span) -> f64 {
        self.events
            .iter()
            .filter(|e| span.contains(e.0, self.now))
            .map(|e| e.1)
            .sum::<i64>() as f64
    }

    fn distinct(&self, span: Span) -> f64 {
        let mut last: HashMap<u8, Secs> = HashMap::new();
        for e in &self.events {
            let t = last.entry(e.2).or_insert(e.0);
            *t = (*t).max(e.0);
        }
        last.values()
            .filter(|t| span.contains(**t, self.now))
            .count() as f64
    }
}

fn events() -> impl Strategy<Value = Vec<Ev>> {
    // Steps: forward 0..900 s, or back 0..300 s (some beyond the lateness);
    // one in ten repeats an earlier event.
    prop::collection::vec(
        (
            0u8..3,
            0u8..4,
            0u8..2,
            1i64..10_000,
            -300_000i64..900_000,
            0u8..10,
            any::<prop::sample::Index>(),
        ),
        1..120,
    )
    .prop_map(|steps| {
        let mut out: Vec<Ev> = Vec::new();
        let mut clock = T0;
        for (i, (payer, payee, device, amount, step, dup, pick)) in steps.into_iter().enumerate() {
            if dup == 0 && !out.is_empty() {
                let e = out[pick.index(out.len())].clone();
                out.push(e);
                continue;
            }
            clock += step;
            out.push(Ev {
                id: i as u32,
                payer,
                payee: payee + 10,
                device,
                amount,
                t_ms: clock,
            });
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn store_agrees_with_a_reference_that_keeps_every_event(evs in events()) {
        let cfg = FeatureConfig::default();
        let s = FeatureStore::new(cfg.clone());
        let lateness = cfg.lateness_s;
        let mut payers: HashMap<u8, RefEntity> = HashMap::new();
        let mut payees: HashMap<u8, RefEntity> = HashMap::new();
        let mut devices: HashMap<u8, RefEntity> = HashMap::new();
        let mut seen: HashSet<(u32, Secs)> = HashSet::new();
        for e in &evs {
            let mut p = pay(&format!("id{}", e.id), &format!("P{}", e.payer), &format!("P{}", e.payee), e.amount, e.t_ms);
            p.device_id = format!("D{}", e.device);
            let f = s.update_and_read(&p);

            let event_s = secs(e.t_ms);
            let payer = payers.entry(e.payer).or_default();
            let horizon = payer.now.saturating_sub(cfg.dedup_horizon_s);
            let dup = seen.contains(&(e.id, event_s)) && event_s >= horizon;
            if !dup {
                seen.insert((e.id, event_s));
                let (at, now) = payer.at(event_s, lateness);
                payer.now = now;
                payer.events.push((at, e.amount, e.payee));
                let payee = payees.entry(e.payee).or_default();
                let (at, now) = payee.at(event_s, lateness);
                payee.now = now;
                payee.events.push((at, e.amount, e.payer));
                let dev = devices.entry(e.device).or_default();
                let (at, now) = dev.at(event_s, lateness);
                dev.now = now;
                dev.events.push((at, e.amount, e.payer));
            }
            let payer = &payers[&e.payer];
            let payee = &payees[&e.payee];
            let dev = &devices[&e.device];
            let ctx = format!("event {e:?} dup={dup}");
            prop_assert_eq!(f.get(F::PayerCount1m), payer.count(Span::M1), "{}", ctx);
            prop_assert_eq!(f.get(F::PayerCount10m), payer.count(Span::M10), "{}", ctx);
            prop_assert_eq!(f.get(F::PayerCount1h), payer.count(Span::H1), "{}", ctx);
            prop_assert_eq!(f.get(F::PayerCount24h), payer.count(Span::H24), "{}", ctx);
            prop_assert_eq!(f.get(F::PayerSum1m), payer.sum(Span::M1), "{}", ctx);
            prop_assert_eq!(f.get(F::PayerSum1h), payer.sum(Span::H1), "{}", ctx);
            prop_assert_eq!(f.get(F::PayerSum24h), payer.sum(Span::H24), "{}", ctx);
            prop_assert_eq!(f.get(F::PayerDistinctPayees1h), payer.distinct(Span::H1), "{}", ctx);
            prop_assert_eq!(f.get(F::PayerDistinctPayees24h), payer.distinct(Span::H24), "{}", ctx);
            prop_assert_eq!(f.get(F::PayeeInCount10m), payee.count(Span::M10), "{}", ctx);
            prop_assert_eq!(f.get(F::PayeeInSum1h), payee.sum(Span::H1), "{}", ctx);
            prop_assert_eq!(f.get(F::PayeeInCount24h), payee.count(Span::H24), "{}", ctx);
            prop_assert_eq!(f.get(F::PayeeDistinctPayers10m), payee.distinct(Span::M10), "{}", ctx);
            prop_assert_eq!(f.get(F::PayeeDistinctPayers24h), payee.distinct(Span::H24), "{}", ctx);
            prop_assert_eq!(f.get(F::DeviceCount1h), dev.count(Span::H1), "{}", ctx);
            prop_assert_eq!(f.get(F::DeviceDistinctAccounts24h), dev.distinct(Span::H24), "{}", ctx);
        }
    }
}

//! Durable-state tests: the entity codec, snapshot cuts (also while another
//! thread scores) and the transaction journal, each checked by what matters
//! downstream: a store rebuilt from the bytes, or rolled back, reads the
//! same features, bit for bit, as a store that never went through it.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::codec::{decode_account, decode_kit, EntityKey};
use super::*;
use crate::event::{Geo, Payment};

use super::tests::{pay, store, HOUR, MIN, T0};

/// A generated payment: small pools so entities repeat; kit and geo
/// sometimes; one in ten a replay of an earlier event.
#[derive(Debug, Clone)]
struct Ev {
    id: u32,
    payer: u8,
    payee: u8,
    device: Option<u8>,
    ip: Option<u8>,
    phone: Option<u8>,
    geo: Option<(i8, i8)>,
    amount: i64,
    t_ms: i64,
}

impl Ev {
    fn payment(&self) -> Payment {
        let mut p = pay(
            &format!("e{}", self.id),
            &format!("A{}", self.payer),
            &format!("A{}", self.payee),
            self.amount,
            self.t_ms,
        );
        p.device_id = self.device.map_or(String::new(), |d| format!("d{d}"));
        p.ip = self.ip.map_or(String::new(), |d| format!("10.0.0.{d}"));
        p.phone = self.phone.map_or(String::new(), |d| format!("+6012{d}"));
        p.geo = self.geo.map(|(a, b)| Geo {
            lat: f64::from(a) * 0.7,
            lon: f64::from(b) * 1.3,
        });
        p
    }
}

fn evs(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec(
        (
            (
                0u8..6,
                0u8..8,
                prop::option::of(0u8..4),
                prop::option::of(0u8..4),
            ),
            (
                prop::option::of(0u8..3),
                prop::option::of((any::<i8>(), any::<i8>())),
            ),
            1i64..100_000,
            prop_oneof![6 => 0i64..120_000, 2 => 0i64..3 * HOUR, 1 => -400_000i64..0],
            0u8..10,
            any::<prop::sample::Index>(),
        ),
        len,
    )
    .prop_map(|steps| {
        let mut out: Vec<Ev> = Vec::new();
        let mut clock = T0 + 2 * HOUR;
        for (i, ((payer, payee, device, ip), (phone, geo), amount, dt, dup, pick)) in
            steps.into_iter().enumerate()
        {
            if dup == 0 && !out.is_empty() {
                let e = out[pick.index(out.len())].clone();
                out.push(e);
                continue;
            }
            clock += dt;
            out.push(Ev {
                id: 1000 + i as u32,
                payer,
                payee,
                device,
                ip,
                phone,
                geo,
                amount,
                t_ms: clock,
            });
        }
        out
    })
}

/// Entities past every exact set: a payer spraying 40 payees, a mule paid
/// by 40 payers, a device and an IP behind 40 accounts (sketches), plus a
/// located payer.
fn spray(s: &FeatureStore) {
    for i in 0..40 {
        let mut p = pay(
            &format!("s{i}"),
            "A0",
            &format!("X{i}"),
            100 + i,
            T0 + i * MIN,
        );
        p.device_id = "d0".into();
        s.update_and_read(&p);
        let mut q = pay(&format!("m{i}"), &format!("Y{i}"), "A1", 1000, T0 + i * MIN);
        q.ip = "10.0.0.0".into();
        s.update_and_read(&q);
    }
}

fn bits(f: &FeatureVector) -> Vec<u64> {
    f.0.iter().map(|v| v.to_bits()).collect()
}

/// Every entity, encoded, by key: equal maps are equal states.
fn state(s: &FeatureStore) -> BTreeMap<EntityKey, Vec<u8>> {
    let mut m = BTreeMap::new();
    for e in s.accounts.iter() {
        let mut v = Vec::new();
        codec::encode_account(e.value(), &mut v);
        m.insert(EntityKey::account(*e.key()), v);
    }
    for e in s.kit.iter() {
        let mut v = Vec::new();
        codec::encode_kit(e.value(), &mut v);
        m.insert(EntityKey::kit(*e.key()), v);
    }
    m
}

type Records = Vec<(EntityKey, Option<Vec<u8>>)>;

fn export(s: &FeatureStore, cut: SnapshotCut) -> (Records, ExportReport) {
    let mut out = Vec::new();
    let r = cut
        .export(s, |k, v| out.push((k, v.map(<[u8]>::to_vec))))
        .expect("current cut");
    (out, r)
}

fn load(s: &FeatureStore, records: &Records) {
    for (k, v) in records {
        s.apply_snapshot_record(&k.to_bytes(), v.as_deref())
            .expect("valid record");
    }
    s.finish_restore();
}

fn feed(s: &FeatureStore, evs: &[Ev]) -> Vec<Vec<u64>> {
    evs.iter()
        .map(|e| bits(&s.update_and_read(&e.payment())))
        .collect()
}

fn same_store(a: &FeatureStore, b: &FeatureStore) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.entity_counts(), b.entity_counts());
    prop_assert_eq!(
        a.watermark.load(Ordering::Relaxed),
        b.watermark.load(Ordering::Relaxed)
    );
    prop_assert!(state(a) == state(b), "states differ");
    Ok(())
}

// ---- codec ----

#[test]
fn entity_keys_are_nine_bytes_and_round_trip() {
    let k = EntityKey::account(0x0102_0304_0506_0708);
    let b = k.to_bytes();
    assert_eq!(b, [1, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(EntityKey::from_bytes(&b), Ok(k));
    assert_eq!(
        EntityKey::from_bytes(&EntityKey::kit(7).to_bytes()),
        Ok(EntityKey::kit(7))
    );
    assert_eq!(
        EntityKey::from_bytes(&b[..8]),
        Err(CodecError::KeyLength(8))
    );
    assert_eq!(
        EntityKey::from_bytes(&[9, 0, 0, 0, 0, 0, 0, 0, 0]),
        Err(CodecError::UnknownKind(9))
    );
}

#[test]
fn values_are_compact_and_errors_say_what_is_wrong() {
    let s = store();
    spray(&s);
    s.update_and_read(&pay("x", "Q", "R", 500, T0 + HOUR));
    let st = state(&s);
    let q = &st[&EntityKey::account(s.key(Salt::Account, "Q"))];
    assert!(q.len() < 80, "a one-payment account is {} bytes", q.len());
    let sprayer = &st[&EntityKey::account(s.key(Salt::Account, "A0"))];
    assert!(
        sprayer.len() < 1200,
        "a sketched account is {} bytes",
        sprayer.len()
    );

    assert_eq!(decode_account(&[]).err(), Some(CodecError::Empty));
    assert_eq!(
        decode_account(&[7, 1]).err(),
        Some(CodecError::UnknownVersion(7))
    );
    assert!(matches!(
        decode_account(&q[..q.len() - 1]),
        Err(CodecError::Truncated { .. })
    ));
    let mut long = q.clone();
    long.push(0);
    assert_eq!(decode_account(&long).err(), Some(CodecError::Trailing(1)));
    let kit = st
        .iter()
        .find(|(k, _)| k.kind == EntityKind::Kit)
        .map(|(_, v)| v);
    let kit = kit.expect("a kit entity");
    assert!(matches!(
        decode_account(kit),
        Err(CodecError::WrongKind { .. })
    ));
    assert!(decode_kit(kit).is_ok());
    // Too many window buckets: the count byte is checked against the cap.
    let mut w = Vec::new();
    codec::put_u32(&mut w, 1000);
    codec::put_u8(&mut w, 200);
    let mut r = codec::Reader::new(&w);
    let e = Window::<3>::decode(&mut r, Span::H24).err();
    assert!(
        matches!(
            e,
            Some(CodecError::TooLong {
                len: 200,
                max: 58,
                ..
            })
        ),
        "{e:?}"
    );
    let msg = e.map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("window buckets"), "{msg}");
}

#[test]
fn a_sketched_entity_round_trips() {
    let a = store();
    spray(&a);
    let st = state(&a);
    let b = store();
    for (k, v) in &st {
        b.restore(*k, v).expect("decodes");
    }
    assert_eq!(state(&b), st);
    assert_eq!(a.entity_counts(), b.entity_counts());
    let p = pay("next", "A0", "X99", 5, T0 + 41 * MIN);
    assert_eq!(bits(&a.update_and_read(&p)), bits(&b.update_and_read(&p)));
    let p = pay("next2", "Y99", "A1", 5, T0 + 41 * MIN);
    assert_eq!(bits(&a.update_and_read(&p)), bits(&b.update_and_read(&p)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Export every entity, load into a fresh store, feed both the same
    /// payments: every feature read is bitwise equal, and so is the state.
    #[test]
    fn codec_round_trip_reads_the_same_features(prefix in evs(0..80), suffix in evs(1..60)) {
        let a = store();
        spray(&a);
        feed(&a, &prefix);
        let b = store();
        let (records, _) = export(&a, a.begin_snapshot());
        load(&b, &records);
        same_store(&a, &b)?;
        prop_assert_eq!(feed(&a, &suffix), feed(&b, &suffix));
        same_store(&a, &b)?;
    }

    /// Random bytes, truncations and bit flips of valid values never panic:
    /// each decodes to an error, or to an entity that takes further
    /// payments and a sweep without panicking.
    #[test]
    fn damaged_values_never_panic(
        prefix in evs(1..40),
        junk in prop::collection::vec(any::<u8>(), 0..200),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4),
        cut in any::<prop::sample::Index>(),
        more in evs(1..20),
    ) {
        let a = store();
        spray(&a);
        feed(&a, &prefix);
        let st = state(&a);
        let mut values: Vec<(EntityKey, Vec<u8>)> = Vec::new();
        for (k, v) in &st {
            values.push((*k, junk.clone()));
            let mut j = vec![codec::VERSION, k.kind as u8];
            j.extend_from_slice(&junk);
            values.push((*k, j));
            values.push((*k, v[..cut.index(v.len())].to_vec()));
            let mut f = v.clone();
            for (i, bit) in &flips {
                let i = i.index(f.len());
                f[i] ^= 1 << bit;
            }
            values.push((*k, f));
        }
        let b = store();
        for (i, (k, v)) in values.iter().enumerate() {
            if b.restore(*k, v).is_err() {
                continue;
            }
            // Whatever decoded must take payments to and from it.
            feed(&b, &more);
            if i % 8 == 0 {
                b.sweep();
            }
        }
        for (k, v) in &st {
            prop_assert!(b.restore(*k, &v[..v.len() - 1]).is_err());
        }
    }
}

// ---- snapshots ----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A cut taken after P and walked after S was scored holds the state
    /// after P: a store loaded from it and fed S reads what A read.
    #[test]
    fn a_cut_is_the_state_at_the_cut(p in evs(1..60), s in evs(1..60)) {
        let a = store();
        spray(&a);
        feed(&a, &p);
        let at_cut = state(&a);
        let cut = a.begin_snapshot();
        let seen = feed(&a, &s);
        let (records, report) = export(&a, cut);
        prop_assert!(cut.is_full());
        prop_assert_eq!(report.live + report.pre_images, at_cut.len());
        let b = store();
        load(&b, &records);
        prop_assert!(state(&b) == at_cut);
        prop_assert_eq!(feed(&b, &s), seen);
        same_store(&a, &b)?;
    }

    /// cut1 (full), more payments and a sweep that evicts, cut2
    /// (incremental, with tombstones): cut1 then cut2 applied to a fresh
    /// store equal the live state, and so do later cuts.
    #[test]
    fn incremental_cuts_add_up_to_the_live_state(
        p in evs(1..50), s1 in evs(1..50), s2 in evs(1..30),
    ) {
        let a = FeatureStore::new(FeatureConfig {
            account_ttl_s: 3 * 3600,
            kit_ttl_s: 3600,
            ..FeatureConfig::default()
        });
        spray(&a);
        feed(&a, &p);
        let (r1, _) = export(&a, a.begin_snapshot());
        feed(&a, &s1);
        // Far ahead: the spray's entities and most others go idle.
        a.update_and_read(&pay("late", "Z", "Z2", 1, T0 + 30 * HOUR));
        let swept = a.sweep();
        let cut2 = a.begin_snapshot();
        prop_assert!(!cut2.is_full());
        let (r2, rep2) = export(&a, cut2);
        let evicted = swept.accounts_ttl + swept.kit_ttl;
        prop_assert!(evicted > 0);
        prop_assert!(rep2.tombstones >= 1);
        let b = store();
        load(&b, &r1);
        load(&b, &r2);
        prop_assert!(state(&b) == state(&a));
        prop_assert_eq!(b.entity_counts(), a.entity_counts());
        // A third cut over more payments, on top.
        feed(&a, &s2);
        let (r3, _) = export(&a, a.begin_snapshot());
        load(&b, &r3);
        same_store(&a, &b)?;
        // Nothing changed since: an empty cut.
        let (r4, rep4) = export(&a, a.begin_snapshot());
        prop_assert!(r4.is_empty(), "{:?}", rep4);
        prop_assert_eq!(feed(&a, &s2), feed(&b, &s2));
    }
}

/// The walk runs while another thread scores S (and sweeps): the cut still
/// holds exactly the state after P.
#[test]
fn a_cut_walked_while_another_thread_scores_is_consistent() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(24));
    let r = runner.run(&(evs(20..80), evs(50..150)), |(p, s)| {
        let a = Arc::new(store());
        spray(&a);
        feed(&a, &p);
        let at_cut = state(&a);
        let cut = a.begin_snapshot();
        let (a2, s2) = (a.clone(), s.clone());
        let scorer = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for (i, e) in s2.iter().enumerate() {
                seen.push(bits(&a2.update_and_read(&e.payment())));
                if i % 40 == 0 {
                    a2.sweep();
                }
            }
            seen
        });
        let (records, _) = export(&a, cut);
        let seen = scorer.join().expect("scorer");
        let b = store();
        load(&b, &records);
        prop_assert!(state(&b) == at_cut);
        // B sweeps where A did, so they read the same.
        let mut got = Vec::new();
        for (i, e) in s.iter().enumerate() {
            got.push(bits(&b.update_and_read(&e.payment())));
            if i % 40 == 0 {
                b.sweep();
            }
        }
        prop_assert_eq!(got, seen);
        Ok(())
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

#[test]
fn a_replaced_cut_is_stale_and_its_range_is_kept() {
    let a = store();
    spray(&a);
    let old = a.begin_snapshot();
    a.update_and_read(&pay("n", "N", "M", 1, T0 + HOUR));
    let new = a.begin_snapshot();
    assert_eq!(old.export(&a, |_, _| {}).err(), Some(StateError::StaleCut));
    let (records, _) = export(&a, new);
    let b = store();
    load(&b, &records);
    assert_eq!(state(&b), state(&a));
    // Not delivered: the next cut covers it again.
    a.snapshot_not_delivered();
    let (again, _) = export(&a, a.begin_snapshot());
    assert_eq!(again.len(), records.len());
}

#[test]
fn a_restored_store_cuts_only_what_changed_and_tombstones_evictions() {
    let a = store();
    spray(&a);
    let (records, _) = export(&a, a.begin_snapshot());
    let b = FeatureStore::new(FeatureConfig {
        account_ttl_s: 3600,
        ..FeatureConfig::default()
    });
    load(&b, &records);
    assert_eq!(b.entity_counts(), a.entity_counts());
    b.update_and_read(&pay("n", "A0", "X0", 1, T0 + 40 * MIN));
    let cut = b.begin_snapshot();
    assert!(!cut.is_full());
    let (r, _) = export(&b, cut);
    let keys: Vec<_> = r.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys.len(), 2, "only the payer and payee changed: {keys:?}");
    // Evict everything idle: tombstones for entities only ever loaded.
    b.update_and_read(&pay("z", "Z", "Z2", 1, T0 + 10 * HOUR));
    let swept = b.sweep();
    assert!(swept.accounts_ttl > 40);
    let (r, rep) = export(&b, b.begin_snapshot());
    assert_eq!(rep.tombstones, swept.accounts_ttl + swept.kit_ttl);
    let c = store();
    load(&c, &records);
    load(&c, &r);
    // c skipped b's first incremental cut, whose entities were evicted.
    assert_eq!(state(&c), state(&b));
}

// ---- transactions ----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// P, begin, T, abort, F reads exactly what P, F reads; the state,
    /// counters and watermark are the reference's.
    #[test]
    fn abort_restores_the_state_at_begin(p in evs(0..50), t in evs(1..50), f in evs(1..40)) {
        let a = store();
        let r = store();
        spray(&a);
        spray(&r);
        feed(&a, &p);
        feed(&r, &p);
        a.begin_txn().expect("none open");
        feed(&a, &t);
        // Entities created in the transaction exist now...
        a.update_and_read(&pay("fresh", "NEW", "NEW2", 1, T0 + 5 * HOUR));
        let rep = a.abort_txn().expect("open");
        prop_assert!(rep.created >= 2);
        // ...and are gone.
        prop_assert!(!a.accounts.contains_key(&a.key(Salt::Account, "NEW")));
        same_store(&a, &r)?;
        prop_assert_eq!(feed(&a, &f), feed(&r, &f));
        same_store(&a, &r)?;
    }

    /// Commit keeps every change.
    #[test]
    fn commit_keeps_the_changes(p in evs(0..40), t in evs(1..40), f in evs(1..30)) {
        let a = store();
        let r = store();
        feed(&a, &p);
        feed(&r, &p);
        a.begin_txn().expect("none open");
        feed(&a, &t);
        feed(&r, &t);
        a.commit_txn().expect("open");
        prop_assert!(!a.txn_open());
        same_store(&a, &r)?;
        prop_assert_eq!(feed(&a, &f), feed(&r, &f));
    }

    /// A pipelined stream seals the transaction it commits and scores the
    /// next one meanwhile: begin, T1, seal, T2; then the first segment
    /// commits and the second aborts, or both abort, or both commit. The
    /// store reads as a reference that saw only what was kept.
    #[test]
    fn sealed_segments_commit_and_abort_apart(
        p in evs(0..40),
        t1 in evs(1..40),
        t2 in evs(1..40),
        f in evs(1..30),
        ending in 0u8..3,
    ) {
        let a = store();
        let r = store();
        feed(&a, &p);
        feed(&r, &p);
        a.begin_txn().expect("none open");
        feed(&a, &t1);
        a.seal_txn().expect("open");
        feed(&a, &t2);
        match ending {
            0 => {
                a.commit_txn().expect("open");
                prop_assert!(a.txn_open(), "the second segment is still open");
                feed(&r, &t1);
                a.abort_txn().expect("open");
            }
            1 => {
                a.abort_txn().expect("open");
            }
            _ => {
                a.commit_txn().expect("open");
                a.commit_txn().expect("open");
                feed(&r, &t1);
                feed(&r, &t2);
            }
        }
        prop_assert!(!a.txn_open());
        prop_assert_eq!(a.seal_txn(), Err(StateError::NoTxn));
        same_store(&a, &r)?;
        prop_assert_eq!(feed(&a, &f), feed(&r, &f));
        same_store(&a, &r)?;
    }

    /// A cut taken inside a transaction holds the state at the cut even if
    /// the transaction then aborts; the next cut carries the rollback.
    #[test]
    fn cuts_and_aborts_interleave(p in evs(1..40), t1 in evs(1..30), t2 in evs(1..30)) {
        let a = store();
        spray(&a);
        feed(&a, &p);
        let (r0, _) = export(&a, a.begin_snapshot());
        let before = state(&a);
        a.begin_txn().expect("none open");
        feed(&a, &t1);
        let at_cut = state(&a);
        let cut = a.begin_snapshot();
        feed(&a, &t2);
        a.abort_txn().expect("open");
        prop_assert!(state(&a) == before);
        let (r1, _) = export(&a, cut);
        let b = store();
        load(&b, &r0);
        load(&b, &r1);
        prop_assert!(state(&b) == at_cut);
        let (r2, _) = export(&a, a.begin_snapshot());
        load(&b, &r2);
        prop_assert!(state(&b) == before);
        same_store(&a, &b)?;
    }
}

#[test]
fn abort_undoes_sweeper_evictions_and_keeps_counters() {
    let a = FeatureStore::new(FeatureConfig {
        account_ttl_s: 3600,
        kit_ttl_s: 3600,
        ..FeatureConfig::default()
    });
    spray(&a);
    let before = state(&a);
    let counts = a.entity_counts();
    a.begin_txn().expect("none open");
    a.update_and_read(&pay("late", "Z", "Z2", 1, T0 + 10 * HOUR));
    let swept = a.sweep();
    assert!(swept.accounts_ttl > 40 && swept.kit_ttl == 2);
    assert_eq!(a.entity_counts(), (2, 0));
    let rep = a.abort_txn().expect("open");
    assert_eq!(rep.created, 2);
    assert_eq!(a.entity_counts(), counts);
    assert_eq!(state(&a), before);
    assert_eq!(a.begin_txn(), Ok(()));
    assert_eq!(a.begin_txn(), Err(StateError::TxnOpen));
    assert!(a.commit_txn().is_ok());
    assert_eq!(a.commit_txn().err(), Some(StateError::NoTxn));
    assert_eq!(a.abort_txn().err(), Some(StateError::NoTxn));
}

/// In-line payments from another thread during a transaction are undone
/// too; fed again after the abort, the store is the reference's.
#[test]
fn abort_undoes_other_threads_and_replays_cleanly() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(16));
    let r = runner.run(
        &(evs(10..40), evs(20..80), evs(20..80)),
        |(p, t, inline)| {
            let a = Arc::new(store());
            let r = store();
            feed(&a, &p);
            feed(&r, &p);
            a.begin_txn().expect("none open");
            let (a2, inl) = (a.clone(), inline.clone());
            let other = std::thread::spawn(move || feed(&a2, &inl));
            feed(&a, &t);
            other.join().expect("in-line thread");
            a.abort_txn().expect("open");
            same_store(&a, &r)?;
            // Fed again in one order, both read the same.
            prop_assert_eq!(feed(&a, &t), feed(&r, &t));
            prop_assert_eq!(feed(&a, &inline), feed(&r, &inline));
            same_store(&a, &r)?;
            Ok(())
        },
    );
    if let Err(e) = r {
        panic!("{e}");
    }
}

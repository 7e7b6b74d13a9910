use super::*;
use crate::engine::features::F;
use crate::event::{AccountKind, Channel, Currency, Party, Payment, PaymentType};

const T0: i64 = 1_800_000_000_000;

fn pay(id: &str, payer: &str, payee: &str, amount: i64, t: i64) -> Payment {
    Payment {
        event_id: id.into(),
        event_time_ms: t,
        payer: Party {
            account: payer.into(),
            bank_code: "VCB".into(),
            kind: AccountKind::Account,
        },
        payee: Party {
            account: payee.into(),
            bank_code: "TCB".into(),
            kind: AccountKind::Account,
        },
        amount_minor: amount,
        currency: Currency::parse("VND").unwrap(),
        channel: Channel::Mobile,
        payment_type: PaymentType::Transfer,
        device_id: "dev".into(),
        ip: String::new(),
        phone: String::new(),
        geo: None,
        country: "VN".into(),
        merchant_category: String::new(),
        attributes: Default::default(),
    }
}

#[test]
fn an_ordinary_payment_is_allowed_with_no_reasons() {
    let e = Engine::new(EngineConfig::default());
    let v = e.score_at(&pay("1", "A", "B", 100_000, T0), T0);
    assert_eq!(v.decision, Decision::Allow);
    assert_eq!(v.score, 0);
    assert!(v.reasons.is_empty());
    assert_eq!(&*v.rules_version, "builtin-1");
}

#[test]
fn a_large_amount_is_reviewed_with_its_reason() {
    let e = Engine::new(EngineConfig::default());
    let v = e.score_at(&pay("1", "A", "B", 60_000_000, T0), T0);
    assert_eq!(v.decision, Decision::Review);
    assert_eq!(v.score, 40);
    assert_eq!(&*v.reasons[0].rule_id, "LARGE_AMOUNT");
}

#[test]
fn fan_in_to_one_payee_plus_large_amount_is_held() {
    let e = Engine::new(EngineConfig::default());
    let mut last = None;
    for i in 0..8 {
        last = Some(e.score_at(
            &pay(
                &format!("{i}"),
                &format!("victim{i}"),
                "MULE",
                60_000_000,
                T0 + i * 10_000,
            ),
            T0,
        ));
    }
    let v = last.unwrap();
    assert_eq!(v.features.get(F::PayeeDistinctPayers10m), 8.0);
    assert_eq!(v.decision, Decision::Hold, "{v:?}");
    let ids: Vec<&str> = v.reasons.iter().map(|r| &*r.rule_id).collect();
    assert_eq!(ids, ["LARGE_AMOUNT", "PAYEE_FAN_IN_10M"]);
}

#[test]
fn velocity_counts_only_the_last_minute_of_event_time() {
    let e = Engine::new(EngineConfig::default());
    for i in 0..4 {
        e.score_at(&pay(&format!("{i}"), "A", "B", 1000, T0 + i * 1000), T0);
    }
    let v = e.score_at(&pay("x", "A", "B", 1000, T0 + 5_000), T0);
    assert_eq!(v.features.get(F::PayerCount1m), 5.0);
    assert_eq!(v.features.get(F::PayerSecsSinceLast), 2.0);
    assert!(v.reasons.iter().any(|r| &*r.rule_id == "PAYER_BURST_1M"));
    let later = e.score_at(&pay("y", "A", "B", 1000, T0 + 120_000), T0);
    assert_eq!(later.features.get(F::PayerCount1m), 1.0);
    assert_eq!(later.features.get(F::PayerCount10m), 6.0);
}

#[test]
fn a_blocklisted_payee_is_held_whatever_the_score() {
    let e = Engine::new(EngineConfig::default());
    e.set_blocklist(Blocklist::new(
        7,
        [ListEntry {
            kind: ListKind::Account,
            value: "99-88 77".into(),
            reason: "Reported mule".into(),
            action: Decision::Hold,
            expires_at_ms: None,
            ..ListEntry::default()
        }],
    ));
    let v = e.score_at(&pay("1", "A", "998877", 1000, T0), T0);
    assert_eq!(v.decision, Decision::Hold);
    assert_eq!(v.blocklist_version, 7);
    assert_eq!(&*v.reasons[0].reason, "Reported mule");
}

#[test]
fn an_expired_entry_stops_matching() {
    let e = Engine::new(EngineConfig::default());
    e.set_blocklist(Blocklist::new(
        1,
        [ListEntry {
            kind: ListKind::Account,
            value: "X1".into(),
            reason: "r".into(),
            action: Decision::Hold,
            expires_at_ms: Some(T0),
            ..ListEntry::default()
        }],
    ));
    assert_eq!(
        e.score_at(&pay("1", "A", "X1", 10, T0), T0 - 1).decision,
        Decision::Hold
    );
    assert_eq!(
        e.score_at(&pay("2", "A", "X1", 10, T0), T0).decision,
        Decision::Allow
    );
}

#[test]
fn shadow_rules_are_listed_but_never_decide() {
    let e = Engine::new(EngineConfig::default());
    let mut rs = RuleSet::builtin(Thresholds::default(), &rules::BuiltinParams::default());
    rs.rules.push(rules::Rule::new(
        "ALWAYS",
        "shadow test",
        500,
        rules::Mode::Shadow,
        |_| true,
    ));
    e.set_rules(rs);
    let v = e.score_at(&pay("1", "A", "B", 10, T0), T0);
    assert_eq!(v.decision, Decision::Allow);
    assert_eq!(v.score, 0);
    assert_eq!(&*v.shadow_hits[0].rule_id, "ALWAYS");
}

#[test]
fn the_wire_verdict_carries_versions_and_reasons() {
    let e = Engine::new(EngineConfig::default());
    let v = e.score_at(&pay("ev-9", "A", "B", 60_000_000, T0), T0);
    let w = v.to_wire("ev-9", T0);
    assert_eq!(w.event_id, "ev-9");
    assert_eq!(w.decision, crate::proto::Decision::Review as i32);
    assert_eq!(w.reasons[0].rule_id, "LARGE_AMOUNT");
    assert_eq!(w.rules_version, "builtin-1");
    assert_eq!(w.event_time_ms, T0);
}

#[test]
fn rules_read_the_live_blocklist_entry_of_the_engines_list() {
    let file = rules::file::compile(
        "t.toml",
        r#"
version = "t-1"
[thresholds]
review = 40
hold = 80
[[rule]]
id = "LISTED_FOR_REVIEW_LARGE"
when = "blocklist_action(payee) == \"REVIEW\" && blocklist_kind(payee) == \"account\" && amount >= 50_000_000"
decision = "HOLD"
reason = "Large payment to a payee listed for review"
"#,
    )
    .unwrap_or_else(|e| panic!("{:?}", e.errors()));
    let e = Engine::new(EngineConfig::default());
    e.set_rules(file.rules);
    e.set_blocklist(Blocklist::new(
        2,
        [ListEntry {
            kind: ListKind::Account,
            value: "X1".into(),
            reason: "r".into(),
            action: Decision::Review,
            expires_at_ms: Some(T0),
            ..ListEntry::default()
        }],
    ));
    let rule_hit = |v: &Verdict| {
        v.reasons
            .iter()
            .any(|r| &*r.rule_id == "LISTED_FOR_REVIEW_LARGE")
    };
    // The entry forces REVIEW; the rule, reading its action, holds large ones.
    let small = e.score_at(&pay("1", "A", "X1", 1_000, T0), T0 - 1);
    assert_eq!(small.decision, Decision::Review);
    assert!(!rule_hit(&small));
    let large = e.score_at(&pay("2", "A", "X1", 60_000_000, T0), T0 - 1);
    assert_eq!(large.decision, Decision::Hold);
    assert!(rule_hit(&large), "{large:?}");
    // Expired: neither the list nor the rule sees it.
    let later = e.score_at(&pay("3", "A", "X1", 60_000_000, T0), T0);
    assert_eq!(later.decision, Decision::Allow, "{later:?}");
}

/// An aborted exactly-once transaction: the stream's payments, scored
/// again, get the verdicts and features they got first, and a payment an
/// in-line call scored meanwhile stays counted (once).
#[test]
fn an_aborted_transaction_rescores_to_the_same_verdicts_and_keeps_foreign_payments() {
    let e = Engine::new(EngineConfig::default());
    e.score_owned_at(&pay("before", "A", "SHOP", 1_000, T0), T0);
    let stream: Vec<Payment> = (0..6)
        .map(|i| {
            pay(
                &format!("s{i}"),
                &format!("P{}", i % 3),
                "MULE",
                5_000,
                T0 + 1_000 * (i + 1),
            )
        })
        .collect();
    e.begin_txn().unwrap();
    let first: Vec<Verdict> = stream.iter().map(|p| e.score_owned_at(p, T0)).collect();
    // In-line, during the transaction: a payment to the same payee.
    let inline = pay("inline-1", "Q", "MULE", 7_000, T0 + 3_500);
    e.score_at(&inline, T0);
    assert_eq!(
        e.abort_txn().unwrap(),
        1,
        "the in-line payment is applied again"
    );

    e.begin_txn().unwrap();
    let again: Vec<Verdict> = stream.iter().map(|p| e.score_owned_at(p, T0)).collect();
    e.commit_txn().unwrap();
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(a.decision, b.decision);
        assert_eq!(a.score, b.score);
        for f in [F::PayerNewPayee, F::PayerCount1h, F::PayerSum24h] {
            assert_eq!(
                a.features.get(f).to_bits(),
                b.features.get(f).to_bits(),
                "{f:?}"
            );
        }
    }
    assert_eq!(
        first[0].features.get(F::PayerNewPayee),
        1.0,
        "novelty seen again, not a duplicate"
    );
    // The payee now holds 6 stream payments and the in-line one, once each.
    let v = e.score_owned_at(&pay("after", "R", "MULE", 1, T0 + 10_000), T0);
    assert_eq!(v.features.get(F::PayeeInCount1h), 8.0);
    assert_eq!(v.features.get(F::PayeeDistinctPayers1h), 5.0);
}

/// Issue 13: amounts were compared in raw minor units across currencies:
/// USD 150,000.00 (15,000,000 cents) counted like 15,000,000 dong, and
/// `payer.sum_1h` added cents and dong. With a currency table, amount
/// features count home minor units; a currency the table does not list is
/// left out of them and the payment goes to REVIEW.
#[test]
fn amount_features_count_home_currency_and_never_mix_an_unknown_one() {
    let e = Engine::new(EngineConfig::default());
    e.set_currencies(
        currencies::Currencies::parse(
            "c.toml",
            "home = \"VND\"\n[rates]\nVND = { digits = 0, rate = 1 }\nUSD = { digits = 2, rate = 25400 }\n",
        )
        .unwrap(),
    );
    let mut usd = pay("u1", "A", "B", 15_000_000, T0);
    usd.currency = Currency::parse("USD").unwrap();
    let v = e.score_at(&usd, T0);
    assert_eq!(v.features.get(F::PaymentAmountHome), 3_810_000_000.0);
    assert_eq!(v.features.get(F::PayerSum1h), 3_810_000_000.0);
    let v = e.score_at(&pay("v1", "A", "C", 15_000_000, T0 + 1_000), T0);
    assert_eq!(v.features.get(F::PaymentAmountHome), 15_000_000.0);
    assert_eq!(
        v.features.get(F::PayerSum1h),
        3_825_000_000.0,
        "dong added to dong, not to cents"
    );
    // A currency without a rate: counted, its amount left out, reviewed.
    let mut eur = pay("e1", "A", "D", 9_999_999, T0 + 2_000);
    eur.currency = Currency::parse("EUR").unwrap();
    let v = e.score_at(&eur, T0);
    assert_eq!(v.features.get(F::PayerCount1h), 3.0);
    assert_eq!(v.features.get(F::PayerSum1h), 3_825_000_000.0);
    assert!(v.features.get(F::PaymentAmountHome).is_nan(), "absent");
    assert_eq!(v.decision, Decision::Review);
    assert!(v.reasons.iter().any(|r| &*r.rule_id == CURRENCY_UNKNOWN));
}

/// Issue 15: a payment replayed with an event time 2 days old was counted
/// as current (the customer's next payment went HOLD instead of ALLOW).
#[test]
fn a_stale_payment_is_scored_without_moving_state() {
    let day = 86_400_000;
    let e = Engine::new(EngineConfig {
        event_age: EventAge {
            max_ms: day,
            refuse: false,
        },
        ..EngineConfig::default()
    });
    let now = T0 + 2 * day;
    e.score_at(&pay("fresh-1", "A", "B", 1_000, now - 60_000), now);
    let stale = e.score_at(&pay("old", "A", "B", 1_000, T0), now);
    assert!(stale.is_stale());
    assert!(stale.reasons.iter().any(|r| &*r.rule_id == STALE_EVENT));
    assert_eq!(
        stale.features.get(F::PayerCount1h),
        1.0,
        "it saw the state as it is"
    );
    assert!(e
        .admit(&pay("old", "A", "B", 1_000, T0), now, Path::Inline)
        .is_ok());
    // The stream's own limit is off by default: the payments topic teaches.
    assert!(!e.is_stale(&pay("old", "A", "B", 1_000, T0), now, Path::Stream));
    let next = e.score_at(&pay("fresh-2", "A", "B", 1_000, now), now);
    assert!(!next.is_stale());
    assert_eq!(
        next.features.get(F::PayerCount1h),
        2.0,
        "the stale payment is not in the payer's hour"
    );
    assert_eq!(next.features.get(F::PayerCount24h), 2.0);
    // A stale payment of a payer never seen creates nothing.
    let (accounts, _) = e.features.entity_counts();
    e.score_at(&pay("old-2", "NEW", "NEW-PAYEE", 1_000, T0), now);
    assert_eq!(e.features.entity_counts().0, accounts);
    // Within the limit, it counts as before.
    let recent = e.score_at(&pay("late", "A", "B", 1_000, now - day + 60_000), now);
    assert!(!recent.is_stale());
}

#[test]
fn a_stale_payment_is_refused_when_configured() {
    let day = 86_400_000;
    let e = Engine::new(EngineConfig {
        event_age: EventAge {
            max_ms: day,
            refuse: true,
        },
        ..EngineConfig::default()
    });
    let err = e
        .admit(&pay("old", "A", "B", 1_000, T0), T0 + 2 * day, Path::Inline)
        .unwrap_err();
    assert_eq!(err.kind(), "stale_event");
    assert_eq!(err.field(), Some("event_time_ms"));
    assert!(e
        .admit(&pay("new", "A", "B", 1_000, T0), T0 + 1_000, Path::Inline)
        .is_ok());
    // 0 is no limit.
    let off = Engine::new(EngineConfig::default());
    assert!(off
        .admit(&pay("old", "A", "B", 1_000, 0), T0, Path::Inline)
        .is_ok());
    assert!(!off
        .score_at(&pay("old", "A", "B", 1_000, T0), T0 * 2)
        .is_stale());
}

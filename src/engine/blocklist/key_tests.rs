use super::*;

fn entry(kind: ListKind, value: &str, action: Decision) -> ListEntry {
    ListEntry {
        kind,
        value: value.into(),
        reason: format!("{} listed", kind.as_str()),
        source: "test".into(),
        action,
        ..ListEntry::default()
    }
}

#[test]
fn lookup_key_is_the_key_of_the_normalised_spelling() {
    let k = Keyer::new("");
    for raw in ["ab-12 cd", "dev-7", "Straße-9", "  +60 12-345 6789 "] {
        assert_eq!(
            k.key(ListKind::Device, raw),
            k.key(ListKind::Device, &normalise(raw)),
            "{raw}"
        );
    }
    assert_ne!(
        k.key(ListKind::Device, "dev-7"),
        k.key(ListKind::Account, "dev-7")
    );
    assert_eq!(
        k.qualified_key(ListKind::Account, "vcb", "1234-5678"),
        k.key(ListKind::Account, "VCB:12345678")
    );
}

#[test]
fn every_kind_normalises_spaces_dashes_and_case() {
    for kind in [
        ListKind::Account,
        ListKind::Ewallet,
        ListKind::Card,
        ListKind::Device,
        ListKind::Ip,
    ] {
        let list = Blocklist::new(1, [entry(kind, "ab-12 cd", Decision::Hold)]);
        for spelling in ["AB12CD", "ab12cd", "a-b 1-2 c-d", " AB-12-CD "] {
            assert!(
                list.lookup(kind, spelling, 0).is_some(),
                "{} {spelling}",
                kind.as_str()
            );
        }
        assert!(list.lookup(kind, "AB12CE", 0).is_none());
        // Another kind with the same value is another entry.
        let other = if kind == ListKind::Device {
            ListKind::Ip
        } else {
            ListKind::Device
        };
        assert!(list.lookup(other, "AB12CD", 0).is_none());
    }
}

#[test]
fn expired_entries_stop_matching_on_time_without_a_reload() {
    let list = Blocklist::new(
        1,
        [ListEntry {
            kind: ListKind::Device,
            value: "dev-9".into(),
            reason: "stolen phone".into(),
            source: "ops".into(),
            action: Decision::Review,
            added_at_ms: Some(500),
            expires_at_ms: Some(1_000),
        }],
    );
    let hit = list.lookup(ListKind::Device, "DEV9", 999).expect("live");
    assert_eq!(
        hit,
        ListedEntry {
            kind: ListKind::Device,
            action: Decision::Review,
            source: "ops",
            reason: "stolen phone",
        }
    );
    assert!(list.lookup(ListKind::Device, "dev-9", 1_000).is_none());
    assert_eq!(std::mem::size_of::<Meta>(), 24);
}

#[test]
fn phones_match_in_e164_whatever_the_spelling() {
    let e = |v: &str| entry(ListKind::Phone, v, Decision::Hold);
    let list = Blocklist::with_country_code(1, "+84", [e("0912 345 678")]);
    for spelling in [
        "+84912345678",
        "0912-345-678",
        "0084 912 345 678",
        "84912345678",
        "+84 (912) 345.678",
    ] {
        assert!(
            list.lookup(ListKind::Phone, spelling, 0).is_some(),
            "{spelling}"
        );
    }
    assert!(list.lookup(ListKind::Phone, "+85912345678", 0).is_none());
    // Without a country code, a national number only matches itself.
    let bare = Blocklist::new(1, [e("0912 345 678")]);
    assert!(bare.lookup(ListKind::Phone, "0912345678", 0).is_some());
    assert!(bare.lookup(ListKind::Phone, "+84912345678", 0).is_none());
}

#[test]
fn bank_qualified_accounts_match_only_at_their_bank() {
    let list = Blocklist::new(
        1,
        [
            entry(ListKind::Account, "VCB:1000-2000", Decision::Hold),
            entry(ListKind::Ewallet, "0912345678", Decision::Review),
        ],
    );
    assert!(list
        .lookup_in(ListKind::Account, "vcb", "10002000", 0)
        .is_some());
    assert!(list
        .lookup_in(ListKind::Account, "TCB", "10002000", 0)
        .is_none());
    assert!(list.lookup(ListKind::Account, "10002000", 0).is_none());
    // Rules see the same: `blocklisted(payee)` passes the payee's bank.
    use crate::engine::rules::expr::ListLookup;
    assert!(list
        .listed_at(ListKind::Account, "VCB", "1000 2000", 0)
        .is_some());
    assert!(list
        .listed_at(ListKind::Account, "TCB", "1000 2000", 0)
        .is_none());
    // A bare entry matches whatever the bank.
    assert!(list
        .lookup_in(ListKind::Ewallet, "MOMO", "0912-345-678", 0)
        .is_some());
}

/// Issue 15: the qualified entry `VCB:5555555555` matched a payee whose
/// account field was literally `VCB:5555555555` at bank TCB (the bare
/// lookup hashed the same spelling). The two key spaces are now apart.
#[test]
fn a_qualified_entry_never_matches_an_account_spelled_like_it_at_another_bank() {
    let list = Blocklist::new(
        1,
        [
            entry(ListKind::Account, "VCB:5555555555", Decision::Hold),
            // A bare entry too, so the bare lookup is made for this kind.
            entry(ListKind::Account, "7777777777", Decision::Review),
        ],
    );
    assert!(list
        .lookup_in(ListKind::Account, "TCB", "VCB:5555555555", 0)
        .is_none());
    assert!(list
        .lookup(ListKind::Account, "VCB:5555555555", 0)
        .is_none());
    assert!(list
        .lookup_in(ListKind::Account, "", "vcb:5555-555-555", 0)
        .is_none());
    assert!(list
        .lookup_in(ListKind::Account, "VCB", "5555555555", 0)
        .is_some());
    assert!(list
        .lookup_in(ListKind::Account, "TCB", "7777777777", 0)
        .is_some());
    let k = Keyer::new("");
    assert_ne!(
        k.bare_key(ListKind::Account, "VCB:5555555555"),
        k.qualified_key(ListKind::Account, "VCB", "5555555555")
    );
    // The whole payment path: the payee at TCB is not held.
    let mut p = crate::event::decode(
        br#"{"event_id":"e","event_time_ms":1795514678561,
             "payer":{"account":"1000003422","bank_code":"VCB"},
             "payee":{"account":"VCB:5555555555","bank_code":"TCB"},
             "amount_minor":1000,"currency":"VND"}"#,
        None,
        &crate::event::Limits::default(),
        1_795_514_678_561,
    )
    .expect("valid");
    assert!(list.check(&p, 0).is_none(), "literal spelling at TCB");
    p.payee.account = "5555555555".into();
    p.payee.bank_code = "VCB".into();
    assert!(list.check(&p, 0).is_some(), "the listed account at VCB");
}

#[test]
fn a_payment_is_checked_on_payee_payer_device_phone_and_ip_strongest_first() {
    use crate::event::{Format, Limits};
    let json = r#"{"event_id":"e","event_time_ms":1795526680451,"amount_minor":100,"currency":"VND",
        "payer":{"account":"1-1","bank_code":"TCB"},"payee":{"account":"2-2","bank_code":"VCB","kind":"EWALLET"},
        "device_id":"dev-1","phone":"0912 000 111","ip":"10.0.0.9"}"#;
    let p = crate::event::decode(
        json.as_bytes(),
        Some(Format::Json),
        &Limits::default(),
        i64::MAX / 4,
    )
    .expect("valid");
    let cases = [
        (ListKind::Ewallet, "VCB:22", "BLOCKLIST_EWALLET"),
        (ListKind::Account, "11", "BLOCKLIST_ACCOUNT"),
        (ListKind::Account, "TCB:11", "BLOCKLIST_ACCOUNT"),
        (ListKind::Device, "DEV1", "BLOCKLIST_DEVICE"),
        (ListKind::Phone, "+84912000111", "BLOCKLIST_PHONE"),
        (ListKind::Ip, "10.0.0.9", "BLOCKLIST_IP"),
    ];
    for (kind, value, rule) in cases {
        let list = Blocklist::with_country_code(1, "84", [entry(kind, value, Decision::Review)]);
        let hit = list.check(&p, 0).unwrap_or_else(|| panic!("{value}"));
        assert_eq!(&*hit.rule_id, rule);
        assert_eq!((&*hit.source, hit.action), ("test", Decision::Review));
    }
    // The payee listed at another bank does not match.
    let other = Blocklist::new(1, [entry(ListKind::Ewallet, "TCB:22", Decision::Hold)]);
    assert!(other.check(&p, 0).is_none());
    // REVIEW on the device and HOLD on the IP: HOLD wins.
    let both = Blocklist::new(
        1,
        [
            entry(ListKind::Device, "dev-1", Decision::Review),
            entry(ListKind::Ip, "10.0.0.9", Decision::Hold),
        ],
    );
    let hit = both.check(&p, 0).expect("hit");
    assert_eq!(
        (&*hit.rule_id, hit.action),
        ("BLOCKLIST_IP", Decision::Hold)
    );
}

#[test]
fn topic_entries_layer_over_files_and_tombstones_reveal_them() {
    let keyer = Keyer::new("");
    let files = Arc::new(Table::from_entries(
        &keyer,
        &[entry(ListKind::Device, "d1", Decision::Review)],
    ));
    let mut topic = TopicState::new(keyer.clone());
    let list = |topic: &TopicState| {
        let (t, d) = topic.tables();
        Blocklist::layered(2, keyer.clone(), files.clone(), t, d)
    };
    let action = |l: &Blocklist, v: &str| l.lookup(ListKind::Device, v, 0).map(|e| e.action);
    topic.apply([(
        ListKind::Device,
        "D-1".to_string(),
        Some(entry(ListKind::Device, "D-1", Decision::Hold)),
    )]);
    assert_eq!(
        action(&list(&topic), "d1"),
        Some(Decision::Hold),
        "topic wins"
    );
    topic.apply([(ListKind::Device, "d1".to_string(), None)]);
    assert_eq!(
        action(&list(&topic), "d1"),
        Some(Decision::Review),
        "the tombstone removes the topic's entry, not the file's"
    );
    // Enough records to fold the delta into a new snapshot: still right.
    topic.apply((0..5000).map(|i| {
        let v = format!("x{i}");
        (
            ListKind::Device,
            v.clone(),
            Some(entry(ListKind::Device, &v, Decision::Hold)),
        )
    }));
    topic.apply([(ListKind::Device, "x7".to_string(), None)]);
    let l = list(&topic);
    assert_eq!(topic.len(), 4999);
    assert_eq!(action(&l, "x8"), Some(Decision::Hold));
    assert_eq!(action(&l, "x7"), None);
    assert_eq!(action(&l, "d1"), Some(Decision::Review));
    assert!(
        topic.tables().1.len() < 10,
        "the delta was folded into the snapshot"
    );
}

#[test]
fn an_expired_topic_entry_falls_through_to_the_file_entry() {
    let keyer = Keyer::new("");
    let files = Arc::new(Table::from_entries(
        &keyer,
        &[entry(ListKind::Ip, "1.2.3.4", Decision::Review)],
    ));
    let mut topic = TopicState::new(keyer.clone());
    let mut e = entry(ListKind::Ip, "1.2.3.4", Decision::Hold);
    e.expires_at_ms = Some(100);
    topic.apply([(ListKind::Ip, "1.2.3.4".to_string(), Some(e))]);
    let (t, d) = topic.tables();
    let l = Blocklist::layered(1, keyer, files, t, d);
    assert_eq!(
        l.lookup(ListKind::Ip, "1.2.3.4", 99).map(|e| e.action),
        Some(Decision::Hold)
    );
    assert_eq!(
        l.lookup(ListKind::Ip, "1.2.3.4", 100).map(|e| e.action),
        Some(Decision::Review)
    );
}

#[test]
fn the_table_grows_past_its_estimate_and_keeps_every_entry() {
    let mut b = TableBuilder::new(Keyer::new(""), 4);
    for i in 0..10_000u32 {
        let v = format!("acct-{i}");
        let e = entry(ListKind::Account, &v, Decision::Hold);
        b.insert(&e.as_ref(), 0, i + 1).expect("no conflict");
    }
    let t = b.finish();
    assert_eq!(t.len(), 10_000);
    let l = Blocklist::layered(
        1,
        Keyer::new(""),
        Arc::new(t),
        Arc::new(Table::empty()),
        Arc::new(Table::empty()),
    );
    for i in 0..10_000u32 {
        assert!(l
            .lookup(ListKind::Account, &format!("ACCT{i}"), 0)
            .is_some());
    }
    assert!(l.lookup(ListKind::Account, "acct-10000", 0).is_none());
}

#[test]
fn within_a_file_a_key_again_with_another_action_conflicts_and_a_later_file_wins() {
    let mut b = TableBuilder::new(Keyer::new(""), 4);
    let hold = entry(ListKind::Account, "12-34", Decision::Hold);
    let review = entry(ListKind::Account, "1234", Decision::Review);
    b.insert(&hold.as_ref(), 0, 2).expect("first");
    assert_eq!(b.insert(&hold.as_ref(), 0, 3), Ok(()), "same action again");
    assert_eq!(
        b.insert(&review.as_ref(), 0, 4),
        Err(Conflict {
            first_line: 2,
            first_action: Decision::Hold
        })
    );
    b.insert(&review.as_ref(), 1, 1).expect("a later file");
    let t = b.finish();
    assert_eq!((t.len(), t.count(ListKind::Account)), (1, 1));
    let l = Blocklist::layered(
        1,
        Keyer::new(""),
        Arc::new(t),
        Arc::new(Table::empty()),
        Arc::new(Table::empty()),
    );
    assert_eq!(
        l.lookup(ListKind::Account, "1234", 0).map(|e| e.action),
        Some(Decision::Review)
    );
}

/// Found by the `blocklist` fuzz target: the short (stack) spelling kept a
/// vertical tab that `normalise`, the long one, drops as white space, so
/// "12\v34" matched "1234" only past 96 bytes, and a topic key
/// "account:1234\v" was stored under another key than its entry "1234".
#[test]
fn a_vertical_tab_is_white_space_however_long_the_value() {
    let k = Keyer::new("");
    for kind in [ListKind::Account, ListKind::Device] {
        assert_eq!(k.key(kind, "12\u{b}34"), k.key(kind, "1234"));
        assert_eq!(k.key(kind, "\u{b}"), k.key(kind, &normalise("\u{b}")));
        let long = format!("{}\u{b}1", "9".repeat(100));
        assert_eq!(
            k.key(kind, &long),
            k.key(kind, &format!("{}1", "9".repeat(100)))
        );
    }
    assert_eq!(
        k.qualified_key(ListKind::Account, "VCB", "12\u{b}34"),
        k.key(ListKind::Account, "VCB:1234")
    );
}

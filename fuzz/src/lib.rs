//! Shared pieces of the fuzz targets: a fixed clock, sample payments,
//! feature vectors and a small blocklist to evaluate rules against, and the
//! decode oracles. Each target (`fuzz_targets/*.rs`) is one input shape; what
//! each asserts is listed in docs/FUZZING.md.

use std::collections::{BTreeMap, HashMap};

use fraudline::engine::blocklist::ListKind;
use fraudline::engine::features::catalogue::{Kind, ALL};
use fraudline::engine::{Blocklist, Decision, FeatureVector, ListEntry};
use fraudline::event::{
    self, AccountKind, Channel, Currency, DecodeError, Format, Geo, Limits, Party, Payment,
    PaymentType,
};

/// The wall clock every target uses (2027-01-15T08:00:00Z), so a run is
/// reproducible: the same input gives the same result on any day. Every
/// seed's event time is before it.
pub const NOW_MS: i64 = 1_800_000_000_000;

/// Limits for re-decoding an encoding the crate produced itself: a valid
/// payment is far below them, so only a real round-trip fault fails.
fn roomy() -> Limits {
    Limits {
        max_message_bytes: 1 << 20,
        ..Limits::default()
    }
}

/// The decode oracle for `data` read as `format`:
/// - `decode` is `validate` after `decode_wire` (same result, same error);
/// - format auto-detection gives what the detected format gives;
/// - a scoring lane's reused [`event::Decoder`] (one per fuzzing thread,
///   kept from input to input) gives what `decode` gives;
/// - every error has a kind from the catalogue (metric label, DLQ header);
/// - a valid payment survives protobuf exactly and JSON up to the last bit
///   of its coordinates (serde_json's default float parsing).
pub fn check_decode(data: &[u8], format: Format) {
    let limits = Limits::default();
    let wire = event::decode_wire(data, Some(format), &limits);
    let full = event::decode(data, Some(format), &limits, NOW_MS);
    match &wire {
        Err(e) => assert_eq!(
            full.as_ref().err(),
            Some(e),
            "decode and decode_wire disagree"
        ),
        Ok(w) => {
            let validated = event::validate(w.clone(), &limits, NOW_MS);
            match (&validated, &full) {
                // A pacs.008's validation error is placed at its XML element
                // (docs/ISO20022.md): the same check, with a path.
                (Err(v), Err(DecodeError::Iso20022 { code, path, .. }))
                    if format == Format::Pacs008 =>
                {
                    assert_eq!(v.kind(), *code, "decode and validate(decode_wire) disagree");
                    assert!(path.starts_with("/Document"), "no XML path: {path}");
                }
                _ => assert_eq!(validated, full, "decode is not validate(decode_wire)"),
            }
        }
    }
    if Format::detect(data) == format {
        assert_eq!(
            event::decode(data, None, &limits, NOW_MS),
            full,
            "auto-detection disagrees with the detected format"
        );
    }
    thread_local! {
        static DECODER: std::cell::RefCell<event::Decoder> = Default::default();
    }
    DECODER.with(|d| {
        let mut d = d.borrow_mut();
        let reused = d.decode(data, Some(format), &limits, NOW_MS).map(|p| p.clone());
        assert_eq!(reused, full, "a reused Decoder disagrees with decode");
    });
    match &full {
        Err(e) => check_error(e),
        Ok(p) => round_trip(p),
    }
}

/// An error's code and field are total and its kind is catalogued.
pub fn check_error(e: &DecodeError) {
    assert!(
        DecodeError::KINDS.contains(&e.kind()),
        "uncatalogued kind {}",
        e.kind()
    );
    let _ = (e.field(), e.to_string());
}

/// A valid payment encodes and decodes back to itself.
pub fn round_trip(p: &Payment) {
    let limits = roomy();
    let pb = p.to_protobuf();
    let back = event::decode(&pb, Some(Format::Protobuf), &limits, NOW_MS)
        .unwrap_or_else(|e| panic!("a valid payment's protobuf is refused: {e}"));
    assert_eq!(&back, p, "protobuf round trip changed the payment");

    let js = p.to_json();
    let mut back = event::decode(js.as_bytes(), Some(Format::Json), &limits, NOW_MS)
        .unwrap_or_else(|e| panic!("a valid payment's JSON is refused: {e}\n{js}"));
    if let (Some(a), Some(b)) = (back.geo, p.geo) {
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * x.abs().max(1.0);
        assert!(
            close(a.lat, b.lat) && close(a.lon, b.lon),
            "JSON round trip moved the location: {a:?} vs {b:?}"
        );
        back.geo = p.geo;
    }
    assert_eq!(&back, p, "JSON round trip changed the payment\n{js}");
}

fn party(account: &str, bank: &str, kind: AccountKind) -> Party {
    Party {
        account: account.into(),
        bank_code: bank.into(),
        kind,
    }
}

/// Three payments that between them fill every field a rule can read, and
/// leave each optional one empty at least once.
pub fn sample_payments() -> Vec<Payment> {
    let vnd = Currency::parse("VND").expect("VND is catalogued");
    let eur = Currency::parse("EUR").expect("EUR is catalogued");
    let full = Payment {
        event_id: "fuzz-1".into(),
        event_time_ms: NOW_MS - 3_600_000,
        payer: party("1000000001", "VCB", AccountKind::Account),
        payee: party("9000000007", "MOMO", AccountKind::Ewallet),
        amount_minor: 5_000_000,
        currency: vnd,
        channel: Channel::Mobile,
        payment_type: PaymentType::Transfer,
        device_id: "dev-7".into(),
        ip: "203.0.113.7".into(),
        phone: "+84900000001".into(),
        geo: Some(Geo {
            lat: 10.776,
            lon: 106.7,
        }),
        country: "US".into(),
        merchant_category: "7995".into(),
        attributes: BTreeMap::from([
            ("merchant_name".to_string(), "Lucky CASINO Ltd".to_string()),
            ("x".to_string(), "1".to_string()),
            ("".to_string(), "".to_string()),
        ]),
    };
    let bare = Payment {
        event_id: "fuzz-2".into(),
        event_time_ms: NOW_MS - 86_400_000 + 1,
        payer: party("2", "", AccountKind::Unspecified),
        payee: party("3", "", AccountKind::Card),
        amount_minor: 1,
        currency: eur,
        channel: Channel::Unspecified,
        payment_type: PaymentType::Unspecified,
        device_id: String::new(),
        ip: String::new(),
        phone: String::new(),
        geo: None,
        country: String::new(),
        merchant_category: String::new(),
        attributes: BTreeMap::new(),
    };
    let other = Payment {
        event_id: "fuzz-3".into(),
        event_time_ms: NOW_MS - 1,
        payer: party("4000 0000 0000 0002", "TCB", AccountKind::Card),
        payee: party("9000000007", "VCB", AccountKind::Account),
        amount_minor: 1_000_000_000_000_000,
        currency: vnd,
        channel: Channel::Api,
        payment_type: PaymentType::CashOut,
        device_id: "DEV-7".into(),
        ip: "2001:db8::1".into(),
        phone: "0900000001".into(),
        geo: Some(Geo {
            lat: -90.0,
            lon: 180.0,
        }),
        country: "vn".into(),
        merchant_category: "5967".into(),
        attributes: BTreeMap::from([("merchant_name".to_string(), "ÉCOLE".to_string())]),
    };
    vec![full, bare, other]
}

/// Feature vectors: all absent, then values chosen by `seed` from a set
/// that reaches the edges (0, negatives, fractions, infinities, absent).
/// Bool features only ever hold 0, 1 or absent, as the store writes them.
pub fn sample_features(seed: u64) -> Vec<FeatureVector> {
    const NUMS: [f64; 10] = [
        0.0,
        1.0,
        -1.0,
        0.5,
        8.0,
        2_000_000.0,
        1e300,
        f64::INFINITY,
        -0.0,
        f64::NAN,
    ];
    const BOOLS: [f64; 3] = [0.0, 1.0, f64::NAN];
    let mut out = vec![FeatureVector::default()];
    let mut s = seed | 1;
    for _ in 0..2 {
        let mut fv = FeatureVector::default();
        for f in ALL {
            // xorshift: cheap, deterministic, covers the sets evenly.
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let v = if f.info().kind == Kind::Bool {
                BOOLS[(s % 3) as usize]
            } else {
                NUMS[(s % 10) as usize]
            };
            fv.set(*f, v);
        }
        out.push(fv);
    }
    out
}

/// A list that holds the first sample payment's payee (REVIEW, with a
/// source), its device (HOLD) and the third payment's phone in national
/// form, with one expired entry and one bank-qualified one.
pub fn sample_blocklist() -> Blocklist {
    let e = |kind, value: &str, action, source: &str, expires_at_ms| ListEntry {
        kind,
        value: value.into(),
        reason: format!("fuzz sample {value}"),
        source: source.into(),
        action,
        added_at_ms: Some(NOW_MS - 1000),
        expires_at_ms,
    };
    Blocklist::with_country_code(
        7,
        "84",
        [
            e(
                ListKind::Ewallet,
                "9000000007",
                Decision::Review,
                "national-scheme",
                None,
            ),
            e(ListKind::Device, "dev-7", Decision::Hold, "", None),
            e(
                ListKind::Phone,
                "+84 900 000 001",
                Decision::Hold,
                "internal",
                None,
            ),
            e(
                ListKind::Account,
                "VCB:9000000007",
                Decision::Hold,
                "internal",
                None,
            ),
            e(
                ListKind::Ip,
                "203.0.113.7",
                Decision::Hold,
                "old",
                Some(NOW_MS - 1),
            ),
        ],
    )
}

/// The named lists of the sample rule environment.
pub fn sample_lists() -> HashMap<String, Vec<String>> {
    HashMap::from([
        (
            "high_risk_mcc".to_string(),
            vec!["7995".to_string(), "5967".to_string()],
        ),
        ("empty".to_string(), Vec::new()),
        (
            "vip".to_string(),
            vec!["1000000001".to_string(), "".to_string()],
        ),
    ])
}

/// A cheap, stable hash of the input, to pick feature values with.
pub fn seed_of(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

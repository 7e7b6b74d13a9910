use super::*;
use crate::proto;

const NOW: i64 = 1_800_000_000_000;

fn good() -> proto::PaymentEvent {
    proto::PaymentEvent {
        event_id: "e-1".into(),
        event_time_ms: NOW - 1_000,
        payer: Some(proto::Party {
            account: "0011002233".into(),
            bank_code: "VCB".into(),
            kind: AccountKind::Account as i32,
        }),
        payee: Some(proto::Party {
            account: "9988776655".into(),
            bank_code: "MOMO".into(),
            kind: AccountKind::Ewallet as i32,
        }),
        amount_minor: 1_500_000,
        currency: "VND".into(),
        channel: Channel::Mobile as i32,
        payment_type: PaymentType::Transfer as i32,
        device_id: "dev-1".into(),
        ip: "10.0.0.1".into(),
        phone: "+84912345678".into(),
        geo: Some(proto::Geo {
            lat: 21.0,
            lon: 105.8,
        }),
        country: "VN".into(),
        merchant_category: String::new(),
        attributes: [("campaign".to_string(), "tet".to_string())].into(),
    }
}

fn decode_pb(ev: &proto::PaymentEvent) -> Result<Payment, DecodeError> {
    decode(&ev.encode_to_vec(), None, &Limits::default(), NOW)
}

fn decode_json(text: &str) -> Result<Payment, DecodeError> {
    decode(text.as_bytes(), None, &Limits::default(), NOW)
}

#[test]
fn protobuf_and_json_decode_to_the_same_payment() {
    let from_pb = decode_pb(&good()).unwrap();
    let json = from_pb.to_json();
    let from_json = decode_json(&json).unwrap();
    assert_eq!(from_pb, from_json);
    assert_eq!(from_pb.currency.as_str(), "VND");
    assert_eq!(from_pb.payee.kind, AccountKind::Ewallet);
    assert_eq!(
        from_pb.attributes.get("campaign").map(String::as_str),
        Some("tet")
    );
}

#[test]
fn json_accepts_enum_spellings_and_ignores_unknown_fields() {
    let p = decode_json(
        r#"{"event_id":"j1","event_time_ms":1799999999000,"payer":{"account":"1","kind":"account"},
            "payee":{"account":"2","kind":"E_WALLET"},"amount_minor":10,"currency":"EUR",
            "channel":"channel_web","payment_type":"bill","future_field":1}"#,
    )
    .unwrap();
    assert_eq!(p.channel, Channel::Web);
    assert_eq!(p.payment_type, PaymentType::Bill);
    assert_eq!(p.payee.kind, AccountKind::Ewallet);
}

#[test]
fn content_type_header_wins_over_detection() {
    let bytes = good().encode_to_vec();
    let err = decode(&bytes, Some(Format::Json), &Limits::default(), NOW).unwrap_err();
    assert!(
        matches!(err, DecodeError::BadUtf8(_) | DecodeError::Json(_)),
        "{err:?}"
    );
    assert_eq!(
        Format::from_content_type("application/json; charset=utf-8"),
        Some(Format::Json)
    );
    assert_eq!(
        Format::from_content_type("application/x-protobuf"),
        Some(Format::Protobuf)
    );
    assert_eq!(Format::from_content_type("text/csv"), None);
}

#[test]
fn missing_event_id() {
    let mut ev = good();
    ev.event_id = "  ".into();
    assert_eq!(
        decode_pb(&ev).unwrap_err(),
        DecodeError::MissingField("event_id")
    );
    let e = decode_json(r#"{"event_time_ms":1799999999000}"#).unwrap_err();
    assert_eq!(e, DecodeError::MissingField("event_id"));
    assert_eq!(e.kind(), "missing_field");
}

#[test]
fn missing_parties_and_accounts() {
    let mut ev = good();
    ev.payee = None;
    assert_eq!(
        decode_pb(&ev).unwrap_err(),
        DecodeError::MissingField("payee")
    );
    let mut ev = good();
    ev.payer.as_mut().unwrap().account.clear();
    assert_eq!(
        decode_pb(&ev).unwrap_err(),
        DecodeError::MissingField("payer.account")
    );
}

#[test]
fn negative_and_zero_and_absurd_amounts() {
    for amount in [-5, 0, i64::MAX] {
        let mut ev = good();
        ev.amount_minor = amount;
        let e = decode_pb(&ev).unwrap_err();
        assert!(
            matches!(e, DecodeError::InvalidAmount { got, .. } if got == amount),
            "{e:?}"
        );
        assert_eq!(e.kind(), "invalid_amount");
    }
}

#[test]
fn unknown_and_missing_currency() {
    let mut ev = good();
    ev.currency = "XYZ".into();
    let e = decode_pb(&ev).unwrap_err();
    assert_eq!(e, DecodeError::UnknownCurrency("XYZ".into()));
    assert!(e.to_string().contains("XYZ"));
    ev.currency.clear();
    assert_eq!(
        decode_pb(&ev).unwrap_err(),
        DecodeError::MissingField("currency")
    );
}

#[test]
fn timestamps_far_in_the_future_or_in_seconds_are_refused() {
    let mut ev = good();
    ev.event_time_ms = NOW + 3_600_000;
    let e = decode_pb(&ev).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::FutureTimestamp {
                ahead_ms: 3_600_000,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.kind(), "future_timestamp");
    // A little ahead (clock skew) is fine.
    ev.event_time_ms = NOW + 1_000;
    assert!(decode_pb(&ev).is_ok());
    // Seconds instead of milliseconds.
    ev.event_time_ms = NOW / 1000;
    assert_eq!(
        decode_pb(&ev).unwrap_err(),
        DecodeError::TimestampTooOld(NOW / 1000)
    );
    ev.event_time_ms = 0;
    assert_eq!(
        decode_pb(&ev).unwrap_err(),
        DecodeError::MissingField("event_time_ms")
    );
}

#[test]
fn oversize_and_empty_messages() {
    let limits = Limits {
        max_message_bytes: 100,
        ..Limits::default()
    };
    let big = vec![b' '; 101];
    assert_eq!(
        decode(&big, None, &limits, NOW).unwrap_err(),
        DecodeError::TooLarge {
            size: 101,
            limit: 100
        }
    );
    assert_eq!(
        decode(&[], None, &limits, NOW).unwrap_err(),
        DecodeError::Empty
    );
}

#[test]
fn bad_utf8_in_json_and_in_protobuf_strings() {
    let mut bytes = br#"{"event_id":"x"#.to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    bytes.extend_from_slice(br#""}"#);
    let e = decode(&bytes, None, &Limits::default(), NOW).unwrap_err();
    assert_eq!(e.kind(), "bad_utf8", "{e:?}");

    // Field 1 (event_id), wire type 2, length 2, invalid UTF-8.
    let pb = [0x0a, 0x02, 0xff, 0xfe];
    let e = decode(&pb, None, &Limits::default(), NOW).unwrap_err();
    assert_eq!(e.kind(), "bad_utf8", "{e:?}");
}

#[test]
fn garbage_is_bad_protobuf_and_broken_json_is_bad_json() {
    let e = decode(&[0x08, 0x96], None, &Limits::default(), NOW).unwrap_err();
    assert_eq!(e.kind(), "bad_protobuf", "{e:?}");
    let e = decode_json(r#"{"event_id": "x", "#).unwrap_err();
    assert_eq!(e.kind(), "bad_json", "{e:?}");
    let e = decode_json(r#"{"event_id": 5}"#).unwrap_err();
    assert_eq!(e.kind(), "bad_json", "{e:?}");
}

#[test]
fn bad_enum_names_and_values_name_the_field() {
    let mut ev = good();
    ev.channel = 99;
    let e = decode_pb(&ev).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::InvalidField {
                field: "channel",
                ..
            }
        ),
        "{e:?}"
    );
    let e = decode_json(r#"{"event_id":"j","event_time_ms":1799999999000,"channel":"pigeon"}"#)
        .unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::InvalidField {
                field: "channel",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn overlong_fields_and_bad_geo() {
    let mut ev = good();
    ev.device_id = "d".repeat(1000);
    let e = decode_pb(&ev).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::FieldTooLong {
                field: "device_id",
                len: 1000,
                ..
            }
        ),
        "{e:?}"
    );
    let mut ev = good();
    ev.geo = Some(proto::Geo {
        lat: 91.0,
        lon: 0.0,
    });
    let e = decode_pb(&ev).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::InvalidField {
                field: "geo.lat",
                ..
            }
        ),
        "{e:?}"
    );
    let mut ev = good();
    ev.geo = Some(proto::Geo {
        lat: 0.0,
        lon: f64::NAN,
    });
    let e = decode_pb(&ev).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::InvalidField {
                field: "geo.lon",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn every_kind_is_listed_for_metrics() {
    let errors = [
        DecodeError::Empty,
        DecodeError::TooLarge { size: 1, limit: 0 },
        DecodeError::BadUtf8(String::new()),
        DecodeError::Json(String::new()),
        DecodeError::Protobuf(String::new()),
        DecodeError::MissingField("x"),
        DecodeError::InvalidAmount { got: 0, max: 1 },
        DecodeError::UnknownCurrency(String::new()),
        DecodeError::FutureTimestamp {
            event_time_ms: 0,
            ahead_ms: 0,
            limit_ms: 0,
        },
        DecodeError::TimestampTooOld(0),
        DecodeError::StaleEvent {
            event_time_ms: 0,
            age_ms: 0,
            limit_ms: 0,
        },
        DecodeError::JsonField {
            field: "x",
            why: String::new(),
        },
        DecodeError::NotAnObject(String::new()),
        DecodeError::DuplicateKey {
            field: "x",
            why: String::new(),
        },
        DecodeError::FieldTooLong {
            field: "x",
            len: 0,
            limit: 0,
        },
        DecodeError::InvalidField {
            field: "x",
            why: String::new(),
        },
        DecodeError::KeyTooLarge { size: 2, limit: 1 },
        DecodeError::Iso20022 {
            code: "bad_xml",
            path: String::new(),
            detail: String::new(),
        },
        DecodeError::Unproducible(String::new()),
    ];
    for e in &errors {
        assert!(
            DecodeError::KINDS.contains(&e.kind()),
            "{} not in KINDS",
            e.kind()
        );
    }
    // JsonField shares `bad_json` with Json.
    assert_eq!(errors.len() - 1, DecodeError::KINDS.len());
}

fn decode_as_json(text: &str) -> Result<Payment, DecodeError> {
    decode(text.as_bytes(), Some(Format::Json), &Limits::default(), NOW)
}

/// What protobuf's own JSON printer writes (lowerCamelCase, int64 as
/// strings, enums by full name) decodes to the same payment as the .proto
/// names; issue 15: it got `missing_field event_id` / `bad_json`.
#[test]
fn protobufs_own_json_decodes_in_both_spellings() {
    let from_pb = decode_pb(&good()).unwrap();
    let t = NOW - 1_000;
    let camel = format!(
        r#"{{"eventId":"e-1","eventTimeMs":"{t}",
            "payer":{{"account":"0011002233","bankCode":"VCB","kind":"ACCOUNT_KIND_ACCOUNT"}},
            "payee":{{"account":"9988776655","bankCode":"MOMO","kind":"ACCOUNT_KIND_EWALLET"}},
            "amountMinor":"1500000","currency":"VND","channel":"CHANNEL_MOBILE",
            "paymentType":"PAYMENT_TYPE_TRANSFER","deviceId":"dev-1","ip":"10.0.0.1",
            "phone":"+84912345678","geo":{{"lat":21.0,"lon":105.8}},"country":"VN",
            "attributes":{{"campaign":"tet"}}}}"#
    );
    assert_eq!(decode_as_json(&camel).unwrap(), from_pb);
    let snake = camel
        .replace("eventId", "event_id")
        .replace("eventTimeMs", "event_time_ms")
        .replace("bankCode", "bank_code")
        .replace("amountMinor", "amount_minor")
        .replace("paymentType", "payment_type")
        .replace("deviceId", "device_id");
    assert_eq!(decode_as_json(&snake).unwrap(), from_pb);
    // Enums by number, doubles as strings.
    let numbers = camel
        .replace("\"CHANNEL_MOBILE\"", "1")
        .replace("\"ACCOUNT_KIND_EWALLET\"", "2")
        .replace("\"lat\":21.0", "\"lat\":\"21\"");
    assert_eq!(decode_as_json(&numbers).unwrap(), from_pb);
}

/// Jackson, System.Text.Json and Go pointer fields write `null` for what is
/// absent; issue 15: `bad_json` for ip, phone, device_id, ... .
#[test]
fn null_is_absent_for_every_field() {
    let t = NOW - 1_000;
    let text = format!(
        r#"{{"event_id":"e-2","event_time_ms":{t},
            "payer":{{"account":"1","bank_code":null,"kind":null}},
            "payee":{{"account":"2","bank_code":null,"kind":null}},
            "amount_minor":100,"currency":"VND","channel":null,"payment_type":null,
            "device_id":null,"ip":null,"phone":null,"geo":null,"country":null,
            "merchant_category":null,"attributes":null,"label":null}}"#
    );
    let p = decode_as_json(&text).unwrap();
    assert_eq!(p.device_id, "");
    assert_eq!(p.ip, "");
    assert_eq!(p.geo, None);
    assert_eq!(p.channel, Channel::Unspecified);
    // A null required field is that field missing, named.
    let e = decode_as_json(&text.replace(r#""event_id":"e-2""#, r#""event_id":null"#));
    assert_eq!(e, Err(DecodeError::MissingField("event_id")));
    let e = decode_as_json(&text.replace(r#""amount_minor":100"#, r#""amount_minor":null"#))
        .unwrap_err();
    assert_eq!(e.field(), Some("amount_minor"));
}

/// Issue 15: every `bad_json` lacked `field` ("expected i64 at line 1
/// column 226").
#[test]
fn type_errors_name_the_field() {
    let base = decode_pb(&good()).unwrap().to_json();
    let cases = [
        (
            r#""amount_minor":1500000"#,
            r#""amount_minor":true"#,
            "amount_minor",
        ),
        (
            r#""amount_minor":1500000"#,
            r#""amount_minor":"75x""#,
            "amount_minor",
        ),
        (
            r#""amount_minor":1500000"#,
            r#""amount_minor":1.5"#,
            "amount_minor",
        ),
        (r#""device_id":"dev-1""#, r#""device_id":7"#, "device_id"),
        (
            r#""bank_code":"VCB""#,
            r#""bank_code":["VCB"]"#,
            "payer.bank_code",
        ),
        (r#""channel":"MOBILE""#, r#""channel":99"#, "channel"),
        (r#""campaign":"tet""#, r#""campaign":1"#, "attributes"),
    ];
    for (from, to, field) in cases {
        assert!(base.contains(from), "{from} in {base}");
        let e = decode_as_json(&base.replacen(from, to, 1)).unwrap_err();
        assert_eq!(e.kind(), "bad_json", "{to}: {e}");
        assert_eq!(e.field(), Some(field), "{to}: {e}");
    }
}

/// Issue 15: a top-level array was scored by position and `geo:[1,2]` was
/// accepted.
#[test]
fn wrong_shapes_are_refused() {
    let t = NOW - 1_000;
    let arr = format!(r#"["e-1",{t},{{"account":"1"}},{{"account":"2"}},100,"VND"]"#);
    let e = decode_as_json(&arr).unwrap_err();
    assert_eq!(e.kind(), "not_an_object", "{e}");
    for body in ["42", "\"x\"", "null", "true"] {
        assert_eq!(decode_as_json(body).unwrap_err().kind(), "not_an_object");
    }
    let base = decode_pb(&good()).unwrap().to_json();
    let geo = base.replacen(r#""geo":{"lat":21.0,"lon":105.8}"#, r#""geo":[1,2]"#, 1);
    assert_ne!(geo, base);
    let e = decode_as_json(&geo).unwrap_err();
    assert_eq!((e.kind(), e.field()), ("bad_json", Some("geo")), "{e}");
    let payer = base.replacen(r#""payer":{"#, r#""payer":["#, 1);
    assert_eq!(decode_as_json(&payer).unwrap_err().field(), Some("payer"));
    let trailing = format!("{base} {{}}");
    assert_eq!(decode_as_json(&trailing).unwrap_err().kind(), "bad_json");
}

/// Issue 15: duplicate keys in `attributes` were accepted, last wins
/// (`call_in_progress` true then false suppressed the scam rule).
#[test]
fn a_key_twice_anywhere_is_refused() {
    let base = decode_pb(&good()).unwrap().to_json();
    let dup_attr = base.replacen(
        r#""campaign":"tet""#,
        r#""call_in_progress":"true","call_in_progress":"false""#,
        1,
    );
    let e = decode_as_json(&dup_attr).unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        ("duplicate_key", Some("attributes")),
        "{e}"
    );
    assert!(e.to_string().contains("call_in_progress"), "{e}");
    // Both spellings of one field.
    let both = base.replacen(
        r#""event_id":"e-1""#,
        r#""event_id":"e-1","eventId":"e-2""#,
        1,
    );
    let e = decode_as_json(&both).unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        ("duplicate_key", Some("event_id")),
        "{e}"
    );
    let party = base.replacen(
        r#""account":"0011002233""#,
        r#""account":"1","account":"2""#,
        1,
    );
    let e = decode_as_json(&party).unwrap_err();
    assert_eq!(e.field(), Some("payer.account"), "{e}");
    // Inside an unknown field's object, too.
    let unknown = base.replacen('{', r#"{"x":{"a":1,"b":{"c":1,"c":2}},"#, 1);
    assert_eq!(
        decode_as_json(&unknown).unwrap_err().kind(),
        "duplicate_key"
    );
    let unknown_twice = base.replacen('{', r#"{"x":1,"x":2,"#, 1);
    assert_eq!(
        decode_as_json(&unknown_twice).unwrap_err().kind(),
        "duplicate_key"
    );
    // Unknown fields alone are still ignored.
    let ok = base.replacen('{', r#"{"x":{"a":[1,{"b":2}]},"y":null,"#, 1);
    assert!(decode_as_json(&ok).is_ok());
}

mod reused_decoder {
    use super::*;
    use proptest::prelude::*;

    fn party() -> impl Strategy<Value = Option<proto::Party>> {
        proptest::option::weighted(
            0.9,
            ("[0-9]{0,12}", "[A-Z]{0,5}", 0i32..5).prop_map(|(account, bank_code, kind)| {
                proto::Party {
                    account,
                    bank_code,
                    kind,
                }
            }),
        )
    }

    fn event() -> impl Strategy<Value = proto::PaymentEvent> {
        (
            (
                prop_oneof![9 => "[a-z0-9-]{1,12}", 1 => Just(String::new())],
                -400_000i64..2_000_000_000,
                party(),
                party(),
            ),
            (
                -5i64..3_000_000,
                prop_oneof!["VND", "USD", "EUR", "[A-Z]{0,4}"],
                0i32..8,
                0i32..7,
            ),
            ("[a-z0-9]{0,10}", "[0-9.]{0,15}", "[+0-9]{0,13}"),
            (
                proptest::option::of((-100.0f64..100.0, -200.0f64..200.0)),
                "[A-Z]{0,2}",
                "[0-9]{0,4}",
                proptest::collection::btree_map("[a-z]{1,4}", "[a-z]{0,4}", 0..3),
            ),
        )
            .prop_map(
                |(
                    (event_id, ago, payer, payee),
                    (amount_minor, currency, channel, payment_type),
                    (device_id, ip, phone),
                    (geo, country, merchant_category, attributes),
                )| proto::PaymentEvent {
                    event_id,
                    event_time_ms: NOW - ago,
                    payer,
                    payee,
                    amount_minor,
                    currency,
                    channel,
                    payment_type,
                    device_id,
                    ip,
                    phone,
                    geo: geo.map(|(lat, lon)| proto::Geo { lat, lon }),
                    country,
                    merchant_category,
                    attributes,
                },
            )
    }

    /// A record as a stream may carry it: whole, cut short, with a byte
    /// changed, or with bytes after it.
    fn record() -> impl Strategy<Value = Vec<u8>> {
        (
            event(),
            0u8..4,
            any::<usize>(),
            any::<u8>(),
            proptest::collection::vec(any::<u8>(), 0..8),
        )
            .prop_map(|(ev, how, at, byte, tail)| {
                let mut b = ev.encode_to_vec();
                match how {
                    1 if !b.is_empty() => b.truncate(at % b.len()),
                    2 if !b.is_empty() => {
                        let i = at % b.len();
                        b[i] ^= byte | 1;
                    }
                    3 => b.extend(tail),
                    _ => {}
                }
                b
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        /// One decoder, reused record after record, answers what a fresh
        /// decode does: the same payment, or the same error. A value left
        /// over from an earlier record (a party, a string, a scalar, an
        /// attribute) would show here as a difference.
        #[test]
        fn a_reused_decoder_decodes_as_a_fresh_decode_does(
            records in proptest::collection::vec(record(), 1..12)
        ) {
            let limits = Limits::default();
            let mut d = Decoder::default();
            for b in &records {
                let fresh = decode(b, Some(Format::Protobuf), &limits, NOW);
                let reused = d.decode(b, Some(Format::Protobuf), &limits, NOW).cloned();
                match (&fresh, &reused) {
                    (Ok(f), Ok(r)) => prop_assert_eq!(f, r),
                    (Err(f), Err(r)) => prop_assert_eq!(f.to_string(), r.to_string()),
                    _ => prop_assert!(false, "fresh {:?} but reused {:?}", fresh, reused),
                }
            }
        }
    }

    #[test]
    fn the_generated_records_are_mostly_accepted() {
        // The property above means something only if many records pass
        // validation: check the strategy's share on a fixed sample.
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let limits = Limits::default();
        let (mut ok, n) = (0, 500);
        for _ in 0..n {
            let ev = event().new_tree(&mut runner).expect("a value").current();
            ok += usize::from(decode(&ev.encode_to_vec(), None, &limits, NOW).is_ok());
        }
        assert!(ok * 10 >= n, "only {ok} of {n} generated events are valid");
    }

    #[test]
    fn a_record_without_a_payer_after_one_with_is_refused_as_missing() {
        let limits = Limits::default();
        let mut d = Decoder::default();
        let with = good().encode_to_vec();
        assert!(d.decode(&with, None, &limits, NOW).is_ok());
        let mut without = good();
        without.payer = None;
        without.geo = None;
        let e = d
            .decode(&without.encode_to_vec(), None, &limits, NOW)
            .expect_err("no payer");
        assert_eq!(
            e.to_string(),
            DecodeError::MissingField("payer").to_string()
        );
        let p = d.decode(&with, None, &limits, NOW).expect("valid again");
        assert_eq!(p.payer.account, "0011002233");
        assert!(p.geo.is_some());
    }
}

#[test]
fn json_enum_names_in_every_accepted_form() {
    use super::json::enum_name;
    use crate::proto::{Channel, PaymentType};
    let channel = |v| enum_name("channel", "CHANNEL_", v, Channel::from_str_name);
    for v in [
        "CHANNEL_MOBILE",
        "MOBILE",
        "mobile",
        " Mobile ",
        "channel_mobile",
    ] {
        assert_eq!(channel(v), Ok(Channel::Mobile), "{v:?}");
    }
    for v in ["cash-out", "CASH OUT", "Cash_Out", "PAYMENT_TYPE_CASH_OUT"] {
        let t = enum_name(
            "payment_type",
            "PAYMENT_TYPE_",
            v,
            PaymentType::from_str_name,
        );
        assert_eq!(t, Ok(PaymentType::CashOut), "{v:?}");
    }
    for v in ["", "MOBILEX", "CHANNEL_", "é", &"x".repeat(80)] {
        let e = channel(v).expect_err(v).to_string();
        assert!(e.contains("unknown value"), "{v:?}: {e}");
    }
}

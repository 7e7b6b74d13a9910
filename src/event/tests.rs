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
    assert_eq!(errors.len(), DecodeError::KINDS.len());
}

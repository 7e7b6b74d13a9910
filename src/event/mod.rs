//! Payment events in, verdicts out: the domain types and their wire forms.
//!
//! [`decode`] turns raw bytes (protobuf or JSON, auto-detected) into a
//! validated [`Payment`], or a typed [`DecodeError`] whose [`DecodeError::kind`]
//! is a stable code for metrics and dead-letter headers.

mod currency;
mod decoder;
mod json;

use std::collections::BTreeMap;

use prost::Message;

pub use crate::proto::{AccountKind, Channel, PaymentType};
pub use currency::Currency;
pub use decoder::Decoder;
pub use json::{JsonEvent, JsonGeo, JsonParty};

/// One side of a payment.
#[derive(Debug, Clone, PartialEq)]
pub struct Party {
    pub account: String,
    pub bank_code: String,
    pub kind: AccountKind,
}

/// A payer location.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geo {
    pub lat: f64,
    pub lon: f64,
}

/// A validated payment event: every field the engine reads has been checked.
/// Optional strings are empty when absent.
#[derive(Debug, Clone, PartialEq)]
pub struct Payment {
    pub event_id: String,
    pub event_time_ms: i64,
    pub payer: Party,
    pub payee: Party,
    pub amount_minor: i64,
    pub currency: Currency,
    pub channel: Channel,
    pub payment_type: PaymentType,
    pub device_id: String,
    pub ip: String,
    pub phone: String,
    pub geo: Option<Geo>,
    pub country: String,
    pub merchant_category: String,
    pub attributes: BTreeMap<String, String>,
}

/// Bounds that input must stay within. Checked at decode, so nothing past
/// them reaches the engine.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted record value, in bytes.
    pub max_message_bytes: usize,
    /// How far in the future an event time may be, against the local clock.
    pub max_future_skew_ms: i64,
    /// Longest accepted identifier or string field, in bytes.
    pub max_field_bytes: usize,
    /// Most entries in `attributes`.
    pub max_attributes: usize,
    /// Largest amount in minor units (absurd amounts are input errors).
    pub max_amount_minor: i64,
    /// Longest accepted record key, in bytes (the key is copied to the
    /// verdict, so an unbounded one could make the verdict unproducible).
    pub max_key_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024,
            max_future_skew_ms: 5 * 60 * 1000,
            max_field_bytes: 256,
            max_attributes: 64,
            max_amount_minor: 1_000_000_000_000_000,
            max_key_bytes: 1024,
        }
    }
}

/// Earliest accepted event time: 2000-01-01T00:00:00Z. Older times are
/// almost always a seconds-vs-milliseconds mistake.
pub const MIN_EVENT_TIME_MS: i64 = 946_684_800_000;

/// Why an input record was refused. Every variant names what is wrong.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("message is empty")]
    Empty,
    #[error("message is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("message is not valid UTF-8: {0}")]
    BadUtf8(String),
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("field `{field}`: {why}")]
    JsonField { field: &'static str, why: String },
    #[error("the body must be one JSON object (a fraudline.v1.PaymentEvent): {0}")]
    NotAnObject(String),
    #[error("a key is given twice: {why}")]
    DuplicateKey { field: &'static str, why: String },
    #[error("invalid protobuf: {0}")]
    Protobuf(String),
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    #[error("amount_minor must be positive and at most {max}, got {got}")]
    InvalidAmount { got: i64, max: i64 },
    #[error("unknown currency code {0:?} (ISO 4217 alphabetic code expected, e.g. \"EUR\")")]
    UnknownCurrency(String),
    #[error("event_time_ms {event_time_ms} is {ahead_ms} ms in the future (limit {limit_ms} ms)")]
    FutureTimestamp {
        event_time_ms: i64,
        ahead_ms: i64,
        limit_ms: i64,
    },
    #[error("event_time_ms {event_time_ms} is {age_ms} ms old, over limits.max_event_age_ms ({limit_ms} ms)")]
    StaleEvent {
        event_time_ms: i64,
        age_ms: i64,
        limit_ms: i64,
    },
    #[error("event_time_ms {0} is before 2000-01-01 (milliseconds since the Unix epoch expected)")]
    TimestampTooOld(i64),
    #[error("field `{field}` is {len} bytes, over the {limit}-byte limit")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("field `{field}`: {why}")]
    InvalidField { field: &'static str, why: String },
    #[error("record key is {size} bytes, over the {limit}-byte limit")]
    KeyTooLarge { size: usize, limit: usize },
    /// An ISO 20022 message refused (`crate::iso20022::IsoError`): `code`
    /// is its problem code, `path` the XML path at fault.
    #[error("ISO 20022 {code} at {path}: {detail}")]
    Iso20022 {
        code: &'static str,
        path: String,
        detail: String,
    },
    /// Not a decoding fault: the verdict of a valid record could not be
    /// produced (e.g. the broker refuses its size), so a minimal dead letter
    /// stands in for it.
    #[error("the verdict could not be produced: {0}")]
    Unproducible(String),
}

impl DecodeError {
    /// The input field at fault, when one field is (for API error replies).
    pub fn field(&self) -> Option<&'static str> {
        match self {
            DecodeError::MissingField(f)
            | DecodeError::FieldTooLong { field: f, .. }
            | DecodeError::JsonField { field: f, .. }
            | DecodeError::InvalidField { field: f, .. } => Some(f),
            DecodeError::DuplicateKey { field, .. } if !field.is_empty() => Some(field),
            DecodeError::InvalidAmount { .. } => Some("amount_minor"),
            DecodeError::UnknownCurrency(_) => Some("currency"),
            DecodeError::FutureTimestamp { .. }
            | DecodeError::StaleEvent { .. }
            | DecodeError::TimestampTooOld(_) => Some("event_time_ms"),
            _ => None,
        }
    }

    /// A stable, low-cardinality code: the metric label and DLQ header value.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::BadUtf8(_) => "bad_utf8",
            DecodeError::Json(_) | DecodeError::JsonField { .. } => "bad_json",
            DecodeError::NotAnObject(_) => "not_an_object",
            DecodeError::DuplicateKey { .. } => "duplicate_key",
            DecodeError::Protobuf(_) => "bad_protobuf",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::InvalidAmount { .. } => "invalid_amount",
            DecodeError::UnknownCurrency(_) => "unknown_currency",
            DecodeError::FutureTimestamp { .. } => "future_timestamp",
            DecodeError::TimestampTooOld(_) => "invalid_timestamp",
            DecodeError::StaleEvent { .. } => "stale_event",
            DecodeError::FieldTooLong { .. } => "field_too_long",
            DecodeError::InvalidField { .. } => "invalid_field",
            DecodeError::KeyTooLarge { .. } => "key_too_large",
            DecodeError::Iso20022 { .. } => "bad_iso20022",
            DecodeError::Unproducible(_) => "unproducible",
        }
    }

    /// Every kind, for registering metric series up front.
    pub const KINDS: &'static [&'static str] = &[
        "empty",
        "too_large",
        "bad_utf8",
        "bad_json",
        "not_an_object",
        "duplicate_key",
        "bad_protobuf",
        "missing_field",
        "invalid_amount",
        "unknown_currency",
        "future_timestamp",
        "invalid_timestamp",
        "stale_event",
        "field_too_long",
        "invalid_field",
        "key_too_large",
        "bad_iso20022",
        "unproducible",
    ];
}

/// The encoding of a record value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Protobuf,
    Json,
    /// An ISO 20022 pacs.008 with one transaction ([`crate::iso20022`]).
    Pacs008,
}

impl Format {
    /// From a `content-type` header value, when the producer sets one.
    pub fn from_content_type(ct: &str) -> Option<Format> {
        let ct = ct.trim().to_ascii_lowercase();
        if ct.contains("json") {
            Some(Format::Json)
        } else if ct
            .split(';')
            .next()
            .is_some_and(|m| m.trim().ends_with("xml"))
        {
            // application/xml, text/xml, application/pacs.008+xml
            Some(Format::Pacs008)
        } else if ct.contains("protobuf") || ct.contains("proto") {
            Some(Format::Protobuf)
        } else {
            None
        }
    }

    /// Guesses from the bytes: a JSON object starts with `{` (after white
    /// space), an XML document with `<`. A protobuf PaymentEvent never
    /// does: 0x7B would be field 15 with the deprecated group wire type,
    /// 0x3C field 7 with the end-group wire type.
    pub fn detect(bytes: &[u8]) -> Format {
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Format::Json,
            Some(b'<') => Format::Pacs008,
            _ => Format::Protobuf,
        }
    }
}

/// Decodes and validates one record value. `format` is the content type when
/// known; otherwise it is detected from the bytes.
pub fn decode(
    bytes: &[u8],
    format: Option<Format>,
    limits: &Limits,
    now_ms: i64,
) -> Result<Payment, DecodeError> {
    let format = format.unwrap_or_else(|| Format::detect(bytes));
    if format == Format::Pacs008 {
        // Validated against the message, so an error names the XML path.
        return crate::iso20022::decode_payment(bytes, limits, now_ms);
    }
    validate(decode_wire(bytes, Some(format), limits)?, limits, now_ms)
}

/// The first half of [`decode`]: bytes to the wire event, not yet validated
/// (the in-line API keeps the wire form for idempotency and audit).
pub fn decode_wire(
    bytes: &[u8],
    format: Option<Format>,
    limits: &Limits,
) -> Result<crate::proto::PaymentEvent, DecodeError> {
    check_size(bytes, limits)?;
    let wire = match format.unwrap_or_else(|| Format::detect(bytes)) {
        Format::Protobuf => crate::proto::PaymentEvent::decode(bytes).map_err(protobuf_error)?,
        Format::Json => {
            let text =
                std::str::from_utf8(bytes).map_err(|e| DecodeError::BadUtf8(e.to_string()))?;
            json::parse(text)?.into_wire()?
        }
        Format::Pacs008 => crate::iso20022::decode_single(bytes, limits)?,
    };
    Ok(wire)
}

/// A record value's size, before any decoding.
fn check_size(bytes: &[u8], limits: &Limits) -> Result<(), DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.len() > limits.max_message_bytes {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit: limits.max_message_bytes,
        });
    }
    Ok(())
}

fn protobuf_error(e: prost::DecodeError) -> DecodeError {
    let msg = e.to_string();
    if msg.contains("UTF-8") {
        DecodeError::BadUtf8(msg)
    } else {
        DecodeError::Protobuf(msg)
    }
}

/// Checks a wire event and turns it into a [`Payment`].
pub fn validate(
    mut ev: crate::proto::PaymentEvent,
    limits: &Limits,
    now_ms: i64,
) -> Result<Payment, DecodeError> {
    let mut p = Payment::placeholder();
    validate_into(&mut ev, limits, now_ms, &mut p)?;
    Ok(p)
}

/// [`validate`] into a payment buffer: on success `out` holds the payment,
/// its strings swapped with the wire event's (no copy, no allocation: the
/// wire event is left with `out`'s old buffers). On an error `out` is
/// partly written and holds no payment.
fn validate_into(
    ev: &mut crate::proto::PaymentEvent,
    limits: &Limits,
    now_ms: i64,
    out: &mut Payment,
) -> Result<(), DecodeError> {
    let check_len = |field: &'static str, s: &str| {
        if s.len() > limits.max_field_bytes {
            Err(DecodeError::FieldTooLong {
                field,
                len: s.len(),
                limit: limits.max_field_bytes,
            })
        } else {
            Ok(())
        }
    };
    if ev.event_id.trim().is_empty() {
        return Err(DecodeError::MissingField("event_id"));
    }
    check_len("event_id", &ev.event_id)?;
    if ev.event_time_ms == 0 {
        return Err(DecodeError::MissingField("event_time_ms"));
    }
    if ev.event_time_ms < MIN_EVENT_TIME_MS {
        return Err(DecodeError::TimestampTooOld(ev.event_time_ms));
    }
    let ahead = ev.event_time_ms.saturating_sub(now_ms);
    if ahead > limits.max_future_skew_ms {
        return Err(DecodeError::FutureTimestamp {
            event_time_ms: ev.event_time_ms,
            ahead_ms: ahead,
            limit_ms: limits.max_future_skew_ms,
        });
    }
    party(
        &mut ev.payer,
        "payer",
        "payer.account",
        &check_len,
        &mut out.payer,
    )?;
    party(
        &mut ev.payee,
        "payee",
        "payee.account",
        &check_len,
        &mut out.payee,
    )?;
    if ev.amount_minor <= 0 || ev.amount_minor > limits.max_amount_minor {
        return Err(DecodeError::InvalidAmount {
            got: ev.amount_minor,
            max: limits.max_amount_minor,
        });
    }
    if ev.currency.is_empty() {
        return Err(DecodeError::MissingField("currency"));
    }
    let currency = Currency::parse(&ev.currency)
        .ok_or_else(|| DecodeError::UnknownCurrency(std::mem::take(&mut ev.currency)))?;
    let channel = Channel::try_from(ev.channel).map_err(|_| DecodeError::InvalidField {
        field: "channel",
        why: format!("unknown enum value {}", ev.channel),
    })?;
    let payment_type =
        PaymentType::try_from(ev.payment_type).map_err(|_| DecodeError::InvalidField {
            field: "payment_type",
            why: format!("unknown enum value {}", ev.payment_type),
        })?;
    check_len("device_id", &ev.device_id)?;
    check_len("ip", &ev.ip)?;
    check_len("phone", &ev.phone)?;
    check_len("country", &ev.country)?;
    check_len("merchant_category", &ev.merchant_category)?;
    let geo = match ev.geo {
        None => None,
        Some(g) => {
            if !(g.lat.is_finite() && (-90.0..=90.0).contains(&g.lat)) {
                return Err(DecodeError::InvalidField {
                    field: "geo.lat",
                    why: format!("{} is not a latitude in [-90, 90]", g.lat),
                });
            }
            if !(g.lon.is_finite() && (-180.0..=180.0).contains(&g.lon)) {
                return Err(DecodeError::InvalidField {
                    field: "geo.lon",
                    why: format!("{} is not a longitude in [-180, 180]", g.lon),
                });
            }
            Some(Geo {
                lat: g.lat,
                lon: g.lon,
            })
        }
    };
    if ev.attributes.len() > limits.max_attributes {
        return Err(DecodeError::InvalidField {
            field: "attributes",
            why: format!(
                "{} entries, over the limit of {}",
                ev.attributes.len(),
                limits.max_attributes
            ),
        });
    }
    for (k, v) in &ev.attributes {
        check_len("attributes", k)?;
        check_len("attributes", v)?;
    }
    use std::mem::swap;
    swap(&mut out.event_id, &mut ev.event_id);
    out.event_time_ms = ev.event_time_ms;
    out.amount_minor = ev.amount_minor;
    out.currency = currency;
    out.channel = channel;
    out.payment_type = payment_type;
    swap(&mut out.device_id, &mut ev.device_id);
    swap(&mut out.ip, &mut ev.ip);
    swap(&mut out.phone, &mut ev.phone);
    out.geo = geo;
    swap(&mut out.country, &mut ev.country);
    swap(&mut out.merchant_category, &mut ev.merchant_category);
    swap(&mut out.attributes, &mut ev.attributes);
    Ok(())
}

fn party(
    p: &mut Option<crate::proto::Party>,
    name: &'static str,
    account_field: &'static str,
    check_len: &dyn Fn(&'static str, &str) -> Result<(), DecodeError>,
    out: &mut Party,
) -> Result<(), DecodeError> {
    let p = p.as_mut().ok_or(DecodeError::MissingField(name))?;
    if p.account.trim().is_empty() {
        return Err(DecodeError::MissingField(account_field));
    }
    check_len(account_field, &p.account)?;
    check_len(name, &p.bank_code)?;
    let kind = AccountKind::try_from(p.kind).map_err(|_| DecodeError::InvalidField {
        field: name,
        why: format!("unknown account kind {}", p.kind),
    })?;
    std::mem::swap(&mut out.account, &mut p.account);
    std::mem::swap(&mut out.bank_code, &mut p.bank_code);
    out.kind = kind;
    Ok(())
}

impl Payment {
    /// A buffer to decode into, holding no payment (empty strings, no
    /// allocation).
    fn placeholder() -> Payment {
        let party = || Party {
            account: String::new(),
            bank_code: String::new(),
            kind: AccountKind::Unspecified,
        };
        Payment {
            event_id: String::new(),
            event_time_ms: 0,
            payer: party(),
            payee: party(),
            amount_minor: 0,
            currency: Currency::NONE,
            channel: Channel::Unspecified,
            payment_type: PaymentType::Unspecified,
            device_id: String::new(),
            ip: String::new(),
            phone: String::new(),
            geo: None,
            country: String::new(),
            merchant_category: String::new(),
            attributes: BTreeMap::new(),
        }
    }

    /// The wire form, for producing events (generator, tests, benches).
    pub fn to_wire(&self) -> crate::proto::PaymentEvent {
        let party = |p: &Party| crate::proto::Party {
            account: p.account.clone(),
            bank_code: p.bank_code.clone(),
            kind: p.kind as i32,
        };
        crate::proto::PaymentEvent {
            event_id: self.event_id.clone(),
            event_time_ms: self.event_time_ms,
            payer: Some(party(&self.payer)),
            payee: Some(party(&self.payee)),
            amount_minor: self.amount_minor,
            currency: self.currency.to_string(),
            channel: self.channel as i32,
            payment_type: self.payment_type as i32,
            device_id: self.device_id.clone(),
            ip: self.ip.clone(),
            phone: self.phone.clone(),
            geo: self.geo.map(|g| crate::proto::Geo {
                lat: g.lat,
                lon: g.lon,
            }),
            country: self.country.clone(),
            merchant_category: self.merchant_category.clone(),
            attributes: self.attributes.clone(),
        }
    }

    /// Protobuf bytes of this event.
    pub fn to_protobuf(&self) -> Vec<u8> {
        self.to_wire().encode_to_vec()
    }

    /// JSON text of this event, with the same field names as the protobuf.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&JsonEvent::from_wire(&self.to_wire()))
            .unwrap_or_else(|_| String::from("{}"))
    }
}

#[cfg(test)]
mod tests;

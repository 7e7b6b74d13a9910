//! The JSON form of a payment event: protobuf's canonical JSON mapping
//! (proto3), read the way its parsers read it, plus a few spellings people
//! write by hand.
//!
//! - Field names: the .proto's (`event_id`) or lowerCamelCase
//!   (`eventId`, what protobuf's printers emit by default); both spellings
//!   of one field in one object are a duplicate.
//! - int64 fields: a JSON number or a decimal string (`"750000"`).
//! - Enums: the full name (`"CHANNEL_MOBILE"`), the short name in any case
//!   (`"MOBILE"`, `"mobile"`) or the number.
//! - `null` is the field's absence.
//! - doubles (`geo`): a number, a numeric string, `"NaN"` / `"Infinity"`.
//!
//! Refused, each with a code and the field at fault: a body that is not an
//! object (an array is not a positional event), an object where another
//! shape is due (`"geo":[1,2]`), a value of the wrong type, and a key twice
//! in any object, `attributes` and unknown fields' objects included
//! (`call_in_progress` true then false must not silently pick one).
//! Unknown fields are otherwise ignored, as protobuf's parsers can.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::DecodeError;
use crate::proto::{self, AccountKind, Channel, PaymentType};

#[derive(Debug, Default, Clone, Serialize)]
pub struct JsonParty {
    #[serde(default)]
    pub account: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bank_code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct JsonGeo {
    pub lat: f64,
    pub lon: f64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct JsonEvent {
    #[serde(default)]
    pub event_id: String,
    #[serde(default)]
    pub event_time_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<JsonParty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payee: Option<JsonParty>,
    #[serde(default)]
    pub amount_minor: i64,
    #[serde(default)]
    pub currency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_type: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ip: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geo: Option<JsonGeo>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub country: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub merchant_category: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// Ground truth for backtests and generated traffic; ignored by scoring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// Parses an enum name: `NAME`, `PREFIX_NAME`, any case.
pub(super) fn enum_name<T>(
    field: &'static str,
    prefix: &str,
    value: &str,
    from: fn(&str) -> Option<T>,
) -> Result<T, DecodeError> {
    // `PREFIX` + the value upper-cased with `-` and ` ` as `_`, built on the
    // stack (this runs for every JSON event's enums); a value too long for
    // the buffer is no enum name.
    let v = value.trim();
    let n = prefix.len() + v.len();
    let mut buf = [0u8; 64];
    let found = buf.get_mut(..n).and_then(|name| {
        let (head, tail) = name.split_at_mut(prefix.len());
        head.copy_from_slice(prefix.as_bytes());
        for (d, c) in tail.iter_mut().zip(v.bytes()) {
            *d = match c {
                b'-' | b' ' => b'_',
                c => c.to_ascii_uppercase(),
            };
        }
        // Only ASCII bytes were changed, to ASCII: still UTF-8.
        let full = std::str::from_utf8(name).ok()?;
        from(&full[prefix.len()..]).or_else(|| from(full))
    });
    found.ok_or_else(|| DecodeError::InvalidField {
        field,
        why: format!("unknown value {value:?}"),
    })
}

fn short_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix).unwrap_or(full).to_string()
}

impl JsonParty {
    fn into_wire(self, field: &'static str) -> Result<proto::Party, DecodeError> {
        let kind = match self.kind.as_deref() {
            None | Some("") => AccountKind::Unspecified,
            Some("EWALLET") | Some("ewallet") | Some("e-wallet") | Some("E_WALLET") => {
                AccountKind::Ewallet
            }
            Some(k) => enum_name(field, "ACCOUNT_KIND_", k, AccountKind::from_str_name)?,
        };
        Ok(proto::Party {
            account: self.account,
            bank_code: self.bank_code,
            kind: kind as i32,
        })
    }

    fn from_wire(p: &proto::Party) -> JsonParty {
        let kind = AccountKind::try_from(p.kind)
            .ok()
            .filter(|k| *k != AccountKind::Unspecified)
            .map(|k| short_name(k.as_str_name(), "ACCOUNT_KIND_"));
        JsonParty {
            account: p.account.clone(),
            bank_code: p.bank_code.clone(),
            kind,
        }
    }
}

impl JsonEvent {
    /// Converts to the wire type; enum names that do not parse are errors
    /// naming the field.
    pub fn into_wire(self) -> Result<proto::PaymentEvent, DecodeError> {
        let channel = match self.channel.as_deref() {
            None | Some("") => Channel::Unspecified,
            Some(c) => enum_name("channel", "CHANNEL_", c, Channel::from_str_name)?,
        };
        let payment_type = match self.payment_type.as_deref() {
            None | Some("") => PaymentType::Unspecified,
            Some(t) => enum_name(
                "payment_type",
                "PAYMENT_TYPE_",
                t,
                PaymentType::from_str_name,
            )?,
        };
        Ok(proto::PaymentEvent {
            event_id: self.event_id,
            event_time_ms: self.event_time_ms,
            payer: self.payer.map(|p| p.into_wire("payer")).transpose()?,
            payee: self.payee.map(|p| p.into_wire("payee")).transpose()?,
            amount_minor: self.amount_minor,
            currency: self.currency,
            channel: channel as i32,
            payment_type: payment_type as i32,
            device_id: self.device_id,
            ip: self.ip,
            phone: self.phone,
            geo: self.geo.map(|g| proto::Geo {
                lat: g.lat,
                lon: g.lon,
            }),
            country: self.country,
            merchant_category: self.merchant_category,
            attributes: self.attributes,
        })
    }

    pub fn from_wire(ev: &proto::PaymentEvent) -> JsonEvent {
        let channel = Channel::try_from(ev.channel)
            .ok()
            .filter(|c| *c != Channel::Unspecified)
            .map(|c| short_name(c.as_str_name(), "CHANNEL_"));
        let payment_type = PaymentType::try_from(ev.payment_type)
            .ok()
            .filter(|t| *t != PaymentType::Unspecified)
            .map(|t| short_name(t.as_str_name(), "PAYMENT_TYPE_"));
        JsonEvent {
            event_id: ev.event_id.clone(),
            event_time_ms: ev.event_time_ms,
            payer: ev.payer.as_ref().map(JsonParty::from_wire),
            payee: ev.payee.as_ref().map(JsonParty::from_wire),
            amount_minor: ev.amount_minor,
            currency: ev.currency.clone(),
            channel,
            payment_type,
            device_id: ev.device_id.clone(),
            ip: ev.ip.clone(),
            phone: ev.phone.clone(),
            geo: ev.geo.map(|g| JsonGeo {
                lat: g.lat,
                lon: g.lon,
            }),
            country: ev.country.clone(),
            merchant_category: ev.merchant_category.clone(),
            attributes: ev.attributes.clone(),
            label: None,
        }
    }
}

/// Parses one JSON payment event; every error names its field where one is
/// at fault (see the module docs).
pub(super) fn parse(text: &str) -> Result<JsonEvent, DecodeError> {
    let trace = Trace::default();
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = EventSeed(&trace)
        .deserialize(&mut de)
        .and_then(|ev| de.end().map(|()| ev));
    parsed.map_err(|e| {
        let at = trace.at.get();
        let why = e.to_string();
        if trace.duplicate.get() {
            DecodeError::DuplicateKey { field: at, why }
        } else if at.is_empty() {
            if e.is_data() {
                DecodeError::NotAnObject(why)
            } else {
                DecodeError::Json(why)
            }
        } else {
            DecodeError::JsonField { field: at, why }
        }
    })
}

impl<'de> Deserialize<'de> for JsonEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EventSeed(&Trace::default()).deserialize(d)
    }
}

/// Where the parser is: the field whose value is being read (its .proto
/// path), so that an error names it; and whether the error is a duplicate.
#[derive(Default)]
struct Trace {
    at: Cell<&'static str>,
    duplicate: Cell<bool>,
}

impl Trace {
    fn duplicate<E: de::Error>(&self, at: &'static str, key: &str) -> E {
        self.at.set(at);
        self.duplicate.set(true);
        E::custom(format_args!("duplicate key {key:?}"))
    }
}

/// A key, borrowed from the text when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Keys already read in one object: known fields by bit, others by name
/// (kept only when an object has unknown keys).
#[derive(Default)]
struct Seen<'de> {
    known: u32,
    other: Vec<Cow<'de, str>>,
}

impl<'de> Seen<'de> {
    /// False when `bit` (a known field) was already set.
    fn known(&mut self, bit: u32) -> bool {
        let fresh = self.known & (1 << bit) == 0;
        self.known |= 1 << bit;
        fresh
    }

    fn other(&mut self, key: Cow<'de, str>) -> bool {
        if self.other.contains(&key) {
            return false;
        }
        self.other.push(key);
        true
    }
}

/// Reads the value of `at` with `seed`, naming `at` in any error, then puts
/// the trace back on `parent`.
fn value<'de, A, S>(
    map: &mut A,
    trace: &Trace,
    at: &'static str,
    parent: &'static str,
    seed: S,
) -> Result<S::Value, A::Error>
where
    A: MapAccess<'de>,
    S: DeserializeSeed<'de>,
{
    trace.at.set(at);
    let v = map.next_value_seed(seed)?;
    trace.at.set(parent);
    Ok(v)
}

/// An unknown field's value, checked for duplicate keys and then dropped.
struct Ignore<'t>(&'t Trace);

impl<'de> DeserializeSeed<'de> for Ignore<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Ignore<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Ignore(self.0))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = Seen::default();
        let at = self.0.at.get();
        while let Some(Key(k)) = map.next_key::<Key>()? {
            if !seen.other(k.clone()) {
                return Err(self.0.duplicate(at, &k));
            }
            map.next_value_seed(Ignore(self.0))?;
        }
        Ok(())
    }
}

/// A string field: a JSON string, or `null` for absent (empty).
struct Str;

impl<'de> DeserializeSeed<'de> for Str {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
    }
}

/// An int64 field: a JSON number (integral) or a decimal string; `null` is 0.
struct I64;

impl<'de> DeserializeSeed<'de> for I64 {
    type Value = i64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<i64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for I64 {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an int64 (a JSON number or a decimal string)")
    }
    fn visit_i64<E>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom(format_args!("{v} is out of the int64 range")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        // proto3 JSON: `1.5e3` is an int64 when it is integral.
        if v.fract() == 0.0 && (-9.223_372_036_854_775e18..9.223_372_036_854_775e18).contains(&v) {
            Ok(v as i64)
        } else {
            Err(E::custom(format_args!("{v} is not an int64")))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        if let Ok(n) = v.parse::<i64>() {
            return Ok(n);
        }
        match v.parse::<f64>() {
            Ok(f)
                if v.bytes()
                    .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
            {
                self.visit_f64(f)
            }
            _ => Err(E::custom(format_args!("{v:?} is not an int64"))),
        }
    }
    fn visit_unit<E>(self) -> Result<i64, E> {
        Ok(0)
    }
}

/// A double: a JSON number, a numeric string, "NaN", "Infinity",
/// "-Infinity"; `null` is 0.
struct F64;

impl<'de> DeserializeSeed<'de> for F64 {
    type Value = f64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<f64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for F64 {
    type Value = f64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a double (a JSON number or a numeric string)")
    }
    fn visit_i64<E>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_u64<E>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_f64<E>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        match v {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            _ => v
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(|| E::custom(format_args!("{v:?} is not a double"))),
        }
    }
    fn visit_unit<E>(self) -> Result<f64, E> {
        Ok(0.0)
    }
}

/// An enum field: a name (full or short, any case) or a number, kept as a
/// name for [`enum_name`]; `null` is absent.
struct Enum {
    /// The name of a number, `None` when the number is not a value.
    name_of: fn(i32) -> Option<&'static str>,
}

impl<'de> DeserializeSeed<'de> for Enum {
    type Value = Option<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Enum {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an enum value's name or number")
    }
    fn visit_str<E>(self, v: &str) -> Result<Option<String>, E> {
        Ok(Some(v.to_owned()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<String>, E> {
        i32::try_from(v)
            .ok()
            .and_then(self.name_of)
            .map(|n| Some(n.to_owned()))
            .ok_or_else(|| E::custom(format_args!("unknown enum value {v}")))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<String>, E> {
        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }
    fn visit_unit<E>(self) -> Result<Option<String>, E> {
        Ok(None)
    }
}

fn channel_name(n: i32) -> Option<&'static str> {
    Channel::try_from(n).ok().map(|c| c.as_str_name())
}

fn payment_type_name(n: i32) -> Option<&'static str> {
    PaymentType::try_from(n).ok().map(|t| t.as_str_name())
}

fn account_kind_name(n: i32) -> Option<&'static str> {
    AccountKind::try_from(n).ok().map(|k| k.as_str_name())
}

/// An object-valued field: `null` is absent, anything but an object is
/// refused (serde would otherwise read `[1, 2]` into a struct by position).
struct Object<V>(V);

impl<'de, V: Visitor<'de>> DeserializeSeed<'de> for Object<V> {
    type Value = Option<V::Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Object<V> {
    type Value = Option<V::Value>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.expecting(f)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self.0).map(Some)
    }
}

/// The .proto paths of one party's fields, for errors.
struct PartyPaths {
    this: &'static str,
    account: &'static str,
    bank_code: &'static str,
    kind: &'static str,
}

const PAYER: PartyPaths = PartyPaths {
    this: "payer",
    account: "payer.account",
    bank_code: "payer.bank_code",
    kind: "payer.kind",
};

const PAYEE: PartyPaths = PartyPaths {
    this: "payee",
    account: "payee.account",
    bank_code: "payee.bank_code",
    kind: "payee.kind",
};

struct PartyVisitor<'t> {
    trace: &'t Trace,
    paths: &'static PartyPaths,
}

impl<'de> Visitor<'de> for PartyVisitor<'_> {
    type Value = JsonParty;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a JSON object (fraudline.v1.Party)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonParty, A::Error> {
        let (t, p) = (self.trace, self.paths);
        let mut out = JsonParty::default();
        let mut seen = Seen::default();
        while let Some(Key(k)) = map.next_key::<Key>()? {
            let (bit, at) = match &*k {
                "account" => (0, p.account),
                "bank_code" | "bankCode" => (1, p.bank_code),
                "kind" => (2, p.kind),
                _ => {
                    if !seen.other(k.clone()) {
                        return Err(t.duplicate(p.this, &k));
                    }
                    map.next_value_seed(Ignore(t))?;
                    continue;
                }
            };
            if !seen.known(bit) {
                return Err(t.duplicate(at, &k));
            }
            match bit {
                0 => out.account = value(&mut map, t, at, p.this, Str)?,
                1 => out.bank_code = value(&mut map, t, at, p.this, Str)?,
                _ => {
                    out.kind = value(
                        &mut map,
                        t,
                        at,
                        p.this,
                        Enum {
                            name_of: account_kind_name,
                        },
                    )?
                }
            }
        }
        Ok(out)
    }
}

struct GeoVisitor<'t>(&'t Trace);

impl<'de> Visitor<'de> for GeoVisitor<'_> {
    type Value = JsonGeo;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object (fraudline.v1.Geo: {\"lat\": .., \"lon\": ..})")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonGeo, A::Error> {
        let t = self.0;
        let mut out = JsonGeo::default();
        let mut seen = Seen::default();
        while let Some(Key(k)) = map.next_key::<Key>()? {
            let (bit, at) = match &*k {
                "lat" => (0, "geo.lat"),
                "lon" => (1, "geo.lon"),
                _ => {
                    if !seen.other(k.clone()) {
                        return Err(t.duplicate("geo", &k));
                    }
                    map.next_value_seed(Ignore(t))?;
                    continue;
                }
            };
            if !seen.known(bit) {
                return Err(t.duplicate(at, &k));
            }
            let v = value(&mut map, t, at, "geo", F64)?;
            if bit == 0 {
                out.lat = v;
            } else {
                out.lon = v;
            }
        }
        Ok(out)
    }
}

struct AttributesVisitor<'t>(&'t Trace);

impl<'de> Visitor<'de> for AttributesVisitor<'_> {
    type Value = BTreeMap<String, String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object of strings (map<string, string>)")
    }
    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> Result<BTreeMap<String, String>, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(self.0.duplicate("attributes", &k));
            }
            let v: String = map.next_value()?;
            out.insert(k, v);
        }
        Ok(out)
    }
}

struct EventSeed<'t>(&'t Trace);

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = JsonEvent;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<JsonEvent, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EventSeed<'_> {
    type Value = JsonEvent;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object (fraudline.v1.PaymentEvent)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonEvent, A::Error> {
        let t = self.0;
        let mut ev = JsonEvent::default();
        let mut seen = Seen::default();
        while let Some(Key(k)) = map.next_key::<Key>()? {
            let (bit, at) = match &*k {
                "event_id" | "eventId" => (0, "event_id"),
                "event_time_ms" | "eventTimeMs" => (1, "event_time_ms"),
                "payer" => (2, "payer"),
                "payee" => (3, "payee"),
                "amount_minor" | "amountMinor" => (4, "amount_minor"),
                "currency" => (5, "currency"),
                "channel" => (6, "channel"),
                "payment_type" | "paymentType" => (7, "payment_type"),
                "device_id" | "deviceId" => (8, "device_id"),
                "ip" => (9, "ip"),
                "phone" => (10, "phone"),
                "geo" => (11, "geo"),
                "country" => (12, "country"),
                "merchant_category" | "merchantCategory" => (13, "merchant_category"),
                "attributes" => (14, "attributes"),
                "label" => (15, "label"),
                _ => {
                    if !seen.other(k.clone()) {
                        return Err(t.duplicate("", &k));
                    }
                    map.next_value_seed(Ignore(t))?;
                    continue;
                }
            };
            if !seen.known(bit) {
                return Err(t.duplicate(at, &k));
            }
            let m = &mut map;
            match bit {
                0 => ev.event_id = value(m, t, at, "", Str)?,
                1 => ev.event_time_ms = value(m, t, at, "", I64)?,
                2 => {
                    ev.payer = value(
                        m,
                        t,
                        at,
                        "",
                        Object(PartyVisitor {
                            trace: t,
                            paths: &PAYER,
                        }),
                    )?
                }
                3 => {
                    ev.payee = value(
                        m,
                        t,
                        at,
                        "",
                        Object(PartyVisitor {
                            trace: t,
                            paths: &PAYEE,
                        }),
                    )?
                }
                4 => ev.amount_minor = value(m, t, at, "", I64)?,
                5 => ev.currency = value(m, t, at, "", Str)?,
                6 => {
                    ev.channel = value(
                        m,
                        t,
                        at,
                        "",
                        Enum {
                            name_of: channel_name,
                        },
                    )?
                }
                7 => {
                    ev.payment_type = value(
                        m,
                        t,
                        at,
                        "",
                        Enum {
                            name_of: payment_type_name,
                        },
                    )?
                }
                8 => ev.device_id = value(m, t, at, "", Str)?,
                9 => ev.ip = value(m, t, at, "", Str)?,
                10 => ev.phone = value(m, t, at, "", Str)?,
                11 => ev.geo = value(m, t, at, "", Object(GeoVisitor(t)))?,
                12 => ev.country = value(m, t, at, "", Str)?,
                13 => ev.merchant_category = value(m, t, at, "", Str)?,
                14 => {
                    ev.attributes =
                        value(m, t, at, "", Object(AttributesVisitor(t)))?.unwrap_or_default()
                }
                _ => {
                    let l = value(m, t, at, "", Str)?;
                    ev.label = (!l.is_empty()).then_some(l);
                }
            }
        }
        Ok(ev)
    }
}

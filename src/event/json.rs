//! The JSON form of a payment event: the protobuf's field names, enums by
//! name (`"MOBILE"`, `"CHANNEL_MOBILE"` and `"mobile"` are all accepted).
//! Unknown fields are ignored, as protobuf ignores them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::DecodeError;
use crate::proto::{self, AccountKind, Channel, PaymentType};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct JsonParty {
    #[serde(default)]
    pub account: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bank_code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub struct JsonGeo {
    pub lat: f64,
    pub lon: f64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
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
fn enum_name<T>(
    field: &'static str,
    prefix: &str,
    value: &str,
    from: fn(&str) -> Option<T>,
) -> Result<T, DecodeError> {
    let up = value.trim().to_ascii_uppercase().replace(['-', ' '], "_");
    from(&up)
        .or_else(|| from(&format!("{prefix}{up}")))
        .ok_or_else(|| DecodeError::InvalidField {
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

//! ISO 20022 in and out: a pacs.008 (FI to FI customer credit transfer) is
//! read into one [`crate::proto::PaymentEvent`] per `CdtTrfTxInf`, scored by
//! the same engine as every other payment, and answered with a pacs.002
//! (FI to FI payment status report) whose `TxSts` and `StsRsnInf` carry the
//! verdict. The field mapping and its decisions are in docs/ISO20022.md.
//!
//! ```text
//! pacs.008 XML ──► parse (quick-xml, streaming, no DTD) ──► PaymentEvent per CdtTrfTxInf
//!                      │ malformed: IsoError naming the XML path   │
//!                      ▼                                           ▼
//!           problem+json / dead letter              Scorer / stream ──► Verdict
//!                                                                   │
//!                                  pacs.002 (TxSts + StsRsnInf) ◄───┘ (HTTP only)
//! ```
//!
//! Adapters: [`http`] serves `POST /v1/iso20022/pacs.008`; the stream reads
//! a payments-topic record whose content type names XML through
//! [`decode_payment`] (one transaction per record; see `single` for why).

mod amount;
pub mod http;
mod pacs002;
mod parse;

pub use pacs002::{write_pacs002, TxAnswer};
pub use parse::{parse_pacs008, Message, Transaction, TX_PATH};

use crate::config::Iso20022Section;
use crate::engine::Decision;
use crate::event::{DecodeError, Limits};

/// The oldest and newest pacs.008 versions whose mapped elements are where
/// this reader looks for them (`pacs.008.001.08` to `.13`: the elements
/// read are unchanged across them; `.07` and older have no UETR and other
/// agent identifications). Others are refused by name.
pub const PACS008_VERSIONS: std::ops::RangeInclusive<u8> = 8..=13;

/// pacs.002 versions the answer can be written in: their
/// `FIToFIPmtStsRpt` has the same elements, in the same order, for what
/// fraudline writes.
pub const PACS002_VERSIONS: std::ops::RangeInclusive<u8> = 10..=12;

/// `ExternalPaymentTransactionStatus1Code`: the codes a `TxSts` may take.
pub const TX_STATUS_CODES: &[&str] = &[
    "ACCC", "ACCP", "ACFC", "ACIS", "ACSC", "ACSP", "ACTC", "ACWC", "ACWP", "BLCK", "CANC", "PART",
    "PATC", "PDNG", "PRES", "RCVD", "RJCT",
];

/// Why an ISO 20022 message was refused. Every variant names the XML path
/// at fault (`/Document/FIToFICstmrCdtTrf/CdtTrfTxInf[2]/IntrBkSttlmAmt/@Ccy`).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IsoError {
    #[error("message is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("not well-formed XML at {path} (byte {position}): {why}")]
    Xml {
        path: String,
        position: u64,
        why: String,
    },
    /// A DTD could declare entities that expand without bound (an XML
    /// bomb) or read files; ISO 20022 messages never carry one.
    #[error("{path}: a DOCTYPE (DTD, entity declarations) is refused in ISO 20022 messages")]
    Doctype { path: String },
    #[error("{path}: {found}; this endpoint takes pacs.008.001.08 to pacs.008.001.13 (namespace urn:iso:std:iso:20022:tech:xsd:pacs.008.001.NN)")]
    Unsupported { path: String, found: String },
    #[error("{path}: required element missing")]
    Missing { path: String },
    #[error("{path}: {why}")]
    Invalid { path: String, why: String },
    #[error("{path}: element repeated; the schema allows it once")]
    Repeated { path: String },
    #[error("{path}: NbOfTxs says {declared}, the message carries {found} CdtTrfTxInf")]
    Count {
        path: String,
        declared: String,
        found: usize,
    },
    /// The mapped payment failed fraudline's own validation (the same as a
    /// JSON or protobuf event's); `path` is the element it came from.
    #[error("{path}: {source}")]
    Event { path: String, source: DecodeError },
    /// The payments topic takes one transaction per record (one record,
    /// one verdict); the HTTP endpoint takes any number.
    #[error("{path}: {count} transactions in one record; a payments-topic record carries one CdtTrfTxInf (POST /v1/iso20022/pacs.008 takes several)")]
    MultipleTransactions { path: String, count: usize },
}

impl IsoError {
    /// A stable, low-cardinality code for the problem object.
    pub fn code(&self) -> &'static str {
        match self {
            IsoError::TooLarge { .. } => "too_large",
            IsoError::Xml { .. } => "bad_xml",
            IsoError::Doctype { .. } => "xml_doctype",
            IsoError::Unsupported { .. } => "unsupported_message",
            IsoError::Missing { .. } => "missing_element",
            IsoError::Invalid { .. } => "invalid_element",
            IsoError::Repeated { .. } => "repeated_element",
            IsoError::Count { .. } => "nb_of_txs_mismatch",
            IsoError::Event { source, .. } => source.kind(),
            IsoError::MultipleTransactions { .. } => "multiple_transactions",
        }
    }

    /// The XML path at fault, when one element is.
    pub fn path(&self) -> Option<&str> {
        match self {
            IsoError::TooLarge { .. } => None,
            IsoError::Xml { path, .. }
            | IsoError::Doctype { path }
            | IsoError::Unsupported { path, .. }
            | IsoError::Missing { path }
            | IsoError::Invalid { path, .. }
            | IsoError::Repeated { path }
            | IsoError::Count { path, .. }
            | IsoError::Event { path, .. }
            | IsoError::MultipleTransactions { path, .. } => Some(path),
        }
    }
}

/// How verdicts are written into a pacs.002, built from `[iso20022]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answering {
    /// `TxSts` for ALLOW, REVIEW, HOLD.
    pub status: [String; 3],
    /// `StsRsnInf/Rsn/Cd` for ALLOW, REVIEW, HOLD ("" for none).
    pub reason: [String; 3],
    /// The pacs.002 version's last two digits (`pacs.002.001.NN`).
    pub pacs002_version: u8,
}

impl Answering {
    pub fn from_config(s: &Iso20022Section) -> Answering {
        Answering {
            status: [
                s.allow_status.clone(),
                s.review_status.clone(),
                s.hold_status.clone(),
            ],
            reason: [
                s.allow_reason.clone(),
                s.review_reason.clone(),
                s.hold_reason.clone(),
            ],
            pacs002_version: pacs002_version(&s.pacs002_version).unwrap_or(10),
        }
    }

    fn slot(d: Decision) -> usize {
        match d {
            Decision::Allow => 0,
            Decision::Review => 1,
            Decision::Hold => 2,
        }
    }

    pub fn status(&self, d: Decision) -> &str {
        &self.status[Self::slot(d)]
    }

    pub fn reason(&self, d: Decision) -> &str {
        &self.reason[Self::slot(d)]
    }
}

impl Default for Answering {
    fn default() -> Self {
        Answering {
            status: ["ACSP".into(), "PDNG".into(), "RJCT".into()],
            reason: [String::new(), "FRAD".into(), "FRAD".into()],
            pacs002_version: 10,
        }
    }
}

/// `"pacs.002.001.10"` -> 10, for the versions fraudline writes.
pub fn pacs002_version(name: &str) -> Option<u8> {
    let v: u8 = name.strip_prefix("pacs.002.001.")?.parse().ok()?;
    PACS002_VERSIONS.contains(&v).then_some(v)
}

/// Checks `[iso20022]`; every problem names its key (config.rs calls this).
pub fn validate_config(s: &Iso20022Section, e: &mut Vec<String>) {
    for (key, v) in [
        ("iso20022.allow_status", &s.allow_status),
        ("iso20022.review_status", &s.review_status),
        ("iso20022.hold_status", &s.hold_status),
    ] {
        if !TX_STATUS_CODES.contains(&v.as_str()) {
            e.push(format!(
                "{key}: {v:?} is not an ISO 20022 transaction status (ExternalPaymentTransactionStatus1Code: {})",
                TX_STATUS_CODES.join(", ")
            ));
        }
    }
    for (key, v) in [
        ("iso20022.allow_reason", &s.allow_reason),
        ("iso20022.review_reason", &s.review_reason),
        ("iso20022.hold_reason", &s.hold_reason),
    ] {
        let ok = v.len() <= 4
            && v.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if !ok {
            e.push(format!(
                "{key}: {v:?} is not an ISO external status reason code (1 to 4 upper-case letters or digits, e.g. \"FRAD\"; \"\" for none)"
            ));
        }
    }
    if pacs002_version(&s.pacs002_version).is_none() {
        e.push(format!(
            "iso20022.pacs002_version: {:?} is not one of pacs.002.001.10, pacs.002.001.11, pacs.002.001.12",
            s.pacs002_version
        ));
    }
}

/// The one transaction of a pacs.008 record on the payments topic. A
/// message with several is refused whole ([`IsoError::MultipleTransactions`]):
/// the stream answers one record with one verdict and commits its offset
/// after that one delivery, and a record split into several verdicts would
/// need a partial-delivery state that nothing else in the stream has.
/// Switches that batch post to the HTTP endpoint or send one transaction
/// per record.
fn single(bytes: &[u8], limits: &Limits) -> Result<Transaction, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let msg = parse_pacs008(bytes, limits).map_err(to_decode_error)?;
    let count = msg.transactions.len();
    match msg.transactions.into_iter().next() {
        Some(tx) if count == 1 => Ok(tx),
        _ => Err(to_decode_error(IsoError::MultipleTransactions {
            path: parse::TX_PATH.to_string(),
            count,
        })),
    }
}

/// [`crate::event::decode_wire`] for a pacs.008 record: the mapped wire
/// event, not yet validated.
pub fn decode_single(
    bytes: &[u8],
    limits: &Limits,
) -> Result<crate::proto::PaymentEvent, DecodeError> {
    single(bytes, limits).map(|tx| tx.event)
}

/// [`crate::event::decode`] for a pacs.008 record: validated like any
/// event, its validation errors placed at the element the field came from
/// (the dead letter then names the XML path, not the mapped field).
pub fn decode_payment(
    bytes: &[u8],
    limits: &Limits,
    now_ms: i64,
) -> Result<crate::event::Payment, DecodeError> {
    let mut tx = single(bytes, limits)?;
    let event = std::mem::take(&mut tx.event);
    crate::event::validate(event, limits, now_ms).map_err(|e| to_decode_error(tx.locate(e)))
}

/// An ISO error as a decode error: the dead-letter kind is `bad_iso20022`,
/// the text says the code, the path and what is wrong.
pub fn to_decode_error(e: IsoError) -> DecodeError {
    match e {
        IsoError::TooLarge { size, limit } => DecodeError::TooLarge { size, limit },
        e => DecodeError::Iso20022 {
            code: e.code(),
            path: e.path().unwrap_or("/").to_string(),
            detail: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests;

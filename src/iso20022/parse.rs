//! pacs.008 XML to wire payment events, with quick-xml's streaming reader:
//! one pass over borrowed bytes, the element path kept in one string, only
//! the mapped elements' text copied. No DTD is read (a DOCTYPE is refused),
//! and entity references other than XML's five and character references
//! are errors, so no input can expand.

use std::collections::BTreeMap;

use quick_xml::events::Event;
use quick_xml::Reader;

use super::amount::{minor_digits, parse_datetime, to_minor};
use super::{IsoError, PACS008_VERSIONS};
use crate::event::{AccountKind, Currency, DecodeError, Limits, PaymentType};
use crate::proto;

/// The path of a transaction, without its index.
pub const TX_PATH: &str = "/Document/FIToFICstmrCdtTrf/CdtTrfTxInf";
const ROOT: &str = "/Document";
const MSG: &str = "/Document/FIToFICstmrCdtTrf";
const MSG_ID: &str = "/Document/FIToFICstmrCdtTrf/GrpHdr/MsgId";
const CRE_DT_TM: &str = "/Document/FIToFICstmrCdtTrf/GrpHdr/CreDtTm";
const NB_OF_TXS: &str = "/Document/FIToFICstmrCdtTrf/GrpHdr/NbOfTxs";
const NAMESPACE: &str = "urn:iso:std:iso:20022:tech:xsd:pacs.008.001.";
/// Deeper than any pacs.008 element (about 12): a guard against inputs
/// built to make the path string grow.
const MAX_DEPTH: usize = 32;

/// The elements read in a `CdtTrfTxInf`, by their path inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum F {
    InstrId,
    EndToEndId,
    TxId,
    Uetr,
    Amount,
    AccptncDtTm,
    DbtrIban,
    DbtrOthr,
    DbtrBic,
    DbtrMmb,
    CdtrIban,
    CdtrOthr,
    CdtrBic,
    CdtrMmb,
    DbtrPhone,
    Purpose,
    CategoryPurpose,
    LocalInstrument,
    ChargeBearer,
    DbtrCountry,
    CdtrCountry,
}
const FIELDS: usize = 21;

const TX_FIELDS: [(&str, F); FIELDS] = [
    ("/PmtId/InstrId", F::InstrId),
    ("/PmtId/EndToEndId", F::EndToEndId),
    ("/PmtId/TxId", F::TxId),
    ("/PmtId/UETR", F::Uetr),
    ("/IntrBkSttlmAmt", F::Amount),
    ("/AccptncDtTm", F::AccptncDtTm),
    ("/DbtrAcct/Id/IBAN", F::DbtrIban),
    ("/DbtrAcct/Id/Othr/Id", F::DbtrOthr),
    ("/DbtrAgt/FinInstnId/BICFI", F::DbtrBic),
    ("/DbtrAgt/FinInstnId/ClrSysMmbId/MmbId", F::DbtrMmb),
    ("/CdtrAcct/Id/IBAN", F::CdtrIban),
    ("/CdtrAcct/Id/Othr/Id", F::CdtrOthr),
    ("/CdtrAgt/FinInstnId/BICFI", F::CdtrBic),
    ("/CdtrAgt/FinInstnId/ClrSysMmbId/MmbId", F::CdtrMmb),
    ("/Dbtr/CtctDtls/MobNb", F::DbtrPhone),
    ("/Purp/Cd", F::Purpose),
    ("/PmtTpInf/CtgyPurp/Cd", F::CategoryPurpose),
    ("/PmtTpInf/LclInstrm/Cd", F::LocalInstrument),
    ("/ChrgBr", F::ChargeBearer),
    ("/Dbtr/PstlAdr/Ctry", F::DbtrCountry),
    ("/Cdtr/PstlAdr/Ctry", F::CdtrCountry),
];

fn rel(f: F) -> &'static str {
    TX_FIELDS[f as usize].0
}

/// Attributes rules can read (`attributes["iso20022.purpose"]`), from
/// the elements that say what kind of payment it is.
const ATTRIBUTES: [(F, &str); 6] = [
    (F::Purpose, "iso20022.purpose"),
    (F::CategoryPurpose, "iso20022.category_purpose"),
    (F::LocalInstrument, "iso20022.local_instrument"),
    (F::ChargeBearer, "iso20022.charge_bearer"),
    (F::DbtrCountry, "iso20022.debtor_country"),
    (F::CdtrCountry, "iso20022.creditor_country"),
];

/// One `CdtTrfTxInf` as read, before mapping.
#[derive(Debug, Default)]
struct RawTx {
    fields: [Option<String>; FIELDS],
    ccy: Option<String>,
}

/// A pacs.008 as read: its group header and one mapped payment per
/// transaction, in document order.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// `pacs.008.001.NN`, from the namespace.
    pub name: String,
    pub msg_id: String,
    /// `GrpHdr/CreDtTm` as written (echoed in the pacs.002).
    pub cre_dt_tm: String,
    pub transactions: Vec<Transaction>,
}

/// Which element an id or a time came from, for error paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdFrom {
    Uetr,
    TxId,
    EndToEndId,
}

/// One transaction and the payment it maps to.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    /// 1-based position among the message's `CdtTrfTxInf`.
    pub index: usize,
    pub instr_id: Option<String>,
    pub end_to_end_id: String,
    pub tx_id: Option<String>,
    pub uetr: Option<String>,
    /// The mapped payment; not yet validated (the scorer validates it).
    pub event: proto::PaymentEvent,
    id_from: IdFrom,
    time_from_tx: bool,
}

impl Transaction {
    /// The path of an element of this transaction (`rel` starts with '/').
    pub fn path(&self, rel: &str) -> String {
        format!("{TX_PATH}[{}]{rel}", self.index)
    }

    /// The element the event id came from.
    pub fn id_path(&self) -> String {
        self.path(match self.id_from {
            IdFrom::Uetr => rel(F::Uetr),
            IdFrom::TxId => rel(F::TxId),
            IdFrom::EndToEndId => rel(F::EndToEndId),
        })
    }

    /// A validation error of the mapped payment, placed at the element
    /// its field came from.
    pub fn locate(&self, e: DecodeError) -> IsoError {
        let path = match e.field() {
            Some("event_id") => self.id_path(),
            Some("event_time_ms") if self.time_from_tx => self.path(rel(F::AccptncDtTm)),
            Some("event_time_ms") => CRE_DT_TM.to_string(),
            Some(f) if f.starts_with("payer") => self.path("/DbtrAcct"),
            Some(f) if f.starts_with("payee") => self.path("/CdtrAcct"),
            Some("amount_minor") => self.path(rel(F::Amount)),
            Some("currency") => self.path("/IntrBkSttlmAmt/@Ccy"),
            Some("phone") => self.path(rel(F::DbtrPhone)),
            _ => self.path(""),
        };
        IsoError::Event { path, source: e }
    }
}

fn xml_error(path: &str, position: u64, e: impl std::fmt::Display) -> IsoError {
    IsoError::Xml {
        path: if path.is_empty() {
            "/".to_string()
        } else {
            path.to_string()
        },
        position,
        why: e.to_string(),
    }
}

/// `path` with the index of the transaction it is in (when it is in one):
/// `/Document/FIToFICstmrCdtTrf/CdtTrfTxInf/X` -> `...CdtTrfTxInf[2]/X`.
fn shown(path: &str, tx_index: usize) -> String {
    match path.strip_prefix(TX_PATH) {
        Some(rest) if tx_index > 0 => format!("{TX_PATH}[{tx_index}]{rest}"),
        _ => path.to_string(),
    }
}

/// Reads a pacs.008 (`pacs.008.001.08` to `.13`). The size bound is
/// `limits.max_message_bytes` (the in-line API's `inline.max_request_bytes`
/// there); every text read is bounded by `limits.max_field_bytes`.
pub fn parse_pacs008(bytes: &[u8], limits: &Limits) -> Result<Message, IsoError> {
    if bytes.len() > limits.max_message_bytes {
        return Err(IsoError::TooLarge {
            size: bytes.len(),
            limit: limits.max_message_bytes,
        });
    }
    let mut reader = Reader::from_reader(bytes);
    reader.config_mut().trim_text(true);
    let mut path = String::with_capacity(128);
    let mut lens: Vec<usize> = Vec::with_capacity(MAX_DEPTH);
    let mut text = String::new();
    let mut name = String::new();
    let (mut msg_id, mut cre_dt_tm, mut nb_of_txs) = (None, None, None);
    let mut txs: Vec<RawTx> = Vec::new();
    loop {
        let position = reader.buffer_position();
        let ev = reader
            .read_event()
            .map_err(|e| xml_error(&shown(&path, txs.len()), position, e))?;
        let (start, empty) = match &ev {
            Event::Start(s) => (Some(s), false),
            Event::Empty(s) => (Some(s), true),
            _ => (None, false),
        };
        if let Some(s) = start {
            let local = std::str::from_utf8(s.local_name().into_inner())
                .map_err(|e| xml_error(&shown(&path, txs.len()), position, e))?;
            if lens.len() >= MAX_DEPTH {
                return Err(IsoError::Invalid {
                    path: shown(&path, txs.len()),
                    why: format!("elements nested deeper than {MAX_DEPTH}"),
                });
            }
            lens.push(path.len());
            path.push('/');
            path.push_str(local);
            text.clear();
            match path.as_str() {
                ROOT => name = namespace_version(s)?,
                MSG => {}
                TX_PATH => txs.push(RawTx::default()),
                p if lens.len() == 1 => {
                    return Err(IsoError::Unsupported {
                        path: p.to_string(),
                        found: format!("root element <{local}>, not <Document>"),
                    })
                }
                p if lens.len() == 2 => {
                    return Err(IsoError::Unsupported {
                        path: p.to_string(),
                        found: format!("<{local}> is not a pacs.008 (FIToFICstmrCdtTrf)"),
                    })
                }
                p => {
                    let n = txs.len();
                    if let (Some(tx), Some(rest)) = (txs.last_mut(), p.strip_prefix(TX_PATH)) {
                        if rest == rel(F::Amount) {
                            tx.ccy = currency_attribute(s, &shown(p, n), limits)?;
                        }
                    }
                }
            }
            if !empty {
                continue;
            }
        }
        match ev {
            Event::Start(_) | Event::End(_) | Event::Empty(_) => {
                // The end of an element (or of an empty one): its text is
                // complete.
                let shown_path = shown(&path, txs.len());
                if text.len() > limits.max_field_bytes {
                    return Err(IsoError::Invalid {
                        path: shown_path,
                        why: format!(
                            "{} bytes of text, over the {}-byte limit",
                            text.len(),
                            limits.max_field_bytes
                        ),
                    });
                }
                let slot = match path.as_str() {
                    MSG_ID => Some(&mut msg_id),
                    CRE_DT_TM => Some(&mut cre_dt_tm),
                    NB_OF_TXS => Some(&mut nb_of_txs),
                    p => match (txs.last_mut(), p.strip_prefix(TX_PATH)) {
                        (Some(tx), Some(rest)) if !rest.is_empty() => TX_FIELDS
                            .iter()
                            .find(|(r, _)| *r == rest)
                            .map(|(_, f)| &mut tx.fields[*f as usize]),
                        _ => None,
                    },
                };
                if let Some(slot) = slot {
                    if slot.is_some() {
                        return Err(IsoError::Repeated { path: shown_path });
                    }
                    *slot = Some(std::mem::take(&mut text));
                }
                text.clear();
                match lens.pop() {
                    Some(l) => path.truncate(l),
                    None => return Err(xml_error("/", position, "end tag without a start")),
                }
            }
            Event::Text(t) => {
                let s = t
                    .decode()
                    .map_err(|e| xml_error(&shown(&path, txs.len()), position, e))?;
                push_bounded(&mut text, &s, limits);
            }
            Event::CData(t) => {
                let s = std::str::from_utf8(t.as_ref())
                    .map_err(|e| xml_error(&shown(&path, txs.len()), position, e))?;
                push_bounded(&mut text, s, limits);
            }
            Event::GeneralRef(r) => {
                let here = shown(&path, txs.len());
                if let Some(c) = r
                    .resolve_char_ref()
                    .map_err(|e| xml_error(&here, position, e))?
                {
                    let mut b = [0u8; 4];
                    push_bounded(&mut text, c.encode_utf8(&mut b), limits);
                } else {
                    let n = r.decode().map_err(|e| xml_error(&here, position, e))?;
                    match quick_xml::escape::resolve_predefined_entity(&n) {
                        Some(v) => push_bounded(&mut text, v, limits),
                        None => {
                            return Err(xml_error(
                                &here,
                                position,
                                format!("undeclared entity &{n}; (only XML's five and character references)"),
                            ))
                        }
                    }
                }
            }
            Event::DocType(_) => {
                return Err(IsoError::Doctype {
                    path: if path.is_empty() { "/".into() } else { path },
                })
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
    if !lens.is_empty() {
        return Err(xml_error(
            &shown(&path, txs.len()),
            reader.buffer_position(),
            "the document ends before this element is closed",
        ));
    }
    if name.is_empty() {
        return Err(IsoError::Missing { path: ROOT.into() });
    }
    let msg_id = msg_id.ok_or_else(|| IsoError::Missing {
        path: MSG_ID.into(),
    })?;
    let cre_dt_tm = cre_dt_tm.ok_or_else(|| IsoError::Missing {
        path: CRE_DT_TM.into(),
    })?;
    let created_ms = parse_datetime(&cre_dt_tm).map_err(|why| IsoError::Invalid {
        path: CRE_DT_TM.into(),
        why,
    })?;
    if txs.is_empty() {
        return Err(IsoError::Missing {
            path: TX_PATH.into(),
        });
    }
    if let Some(n) = nb_of_txs {
        if n.trim().parse::<usize>().ok() != Some(txs.len()) {
            return Err(IsoError::Count {
                path: NB_OF_TXS.into(),
                declared: n,
                found: txs.len(),
            });
        }
    }
    let transactions = txs
        .into_iter()
        .enumerate()
        .map(|(i, raw)| map_tx(i + 1, raw, created_ms))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Message {
        name,
        msg_id,
        cre_dt_tm,
        transactions,
    })
}

/// Appends text, but never past one byte over the field limit: the
/// element is refused at its end, and the copy stays bounded meanwhile.
fn push_bounded(text: &mut String, s: &str, limits: &Limits) {
    if text.len() <= limits.max_field_bytes {
        let room = limits.max_field_bytes + 1 - text.len();
        let mut end = s.len().min(room);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        text.push_str(&s[..end]);
        if end < s.len() {
            // Over the limit: make sure the length says so.
            text.push('…');
        }
    }
}

/// The `pacs.008.001.NN` name from the root's namespace, for the versions
/// the mapping holds for.
fn namespace_version(s: &quick_xml::events::BytesStart<'_>) -> Result<String, IsoError> {
    let prefix = s.name().prefix().map(|p| p.into_inner().to_vec());
    let mut ns = None;
    for a in s.attributes().with_checks(true) {
        let a = a.map_err(|e| xml_error(ROOT, 0, e))?;
        let key = a.key.into_inner();
        let binds = match &prefix {
            None => key == b"xmlns",
            Some(p) => key.strip_prefix(b"xmlns:") == Some(p.as_slice()),
        };
        if binds {
            let v = a.unescape_value().map_err(|e| xml_error(ROOT, 0, e))?;
            ns = Some(v.into_owned());
        }
    }
    let Some(ns) = ns else {
        return Err(IsoError::Unsupported {
            path: ROOT.into(),
            found: "no ISO 20022 namespace on <Document>".into(),
        });
    };
    let version = ns
        .strip_prefix(NAMESPACE)
        .filter(|v| v.len() == 2)
        .and_then(|v| v.parse::<u8>().ok());
    match version {
        Some(v) if PACS008_VERSIONS.contains(&v) => Ok(format!("pacs.008.001.{v:02}")),
        _ => Err(IsoError::Unsupported {
            path: ROOT.into(),
            found: format!("namespace {ns:?}"),
        }),
    }
}

fn currency_attribute(
    s: &quick_xml::events::BytesStart<'_>,
    path: &str,
    limits: &Limits,
) -> Result<Option<String>, IsoError> {
    for a in s.attributes().with_checks(true) {
        let a = a.map_err(|e| xml_error(path, 0, e))?;
        if a.key.local_name().into_inner() == b"Ccy" {
            let v = a
                .unescape_value()
                .map_err(|e| xml_error(&format!("{path}/@Ccy"), 0, e))?;
            if v.len() > limits.max_field_bytes {
                return Err(IsoError::Invalid {
                    path: format!("{path}/@Ccy"),
                    why: "longer than a currency code".into(),
                });
            }
            return Ok(Some(v.into_owned()));
        }
    }
    Ok(None)
}

/// ISO 20022's `+84-912345678` as E.164 `+84912345678` (the form the
/// blocklist matches phones in).
fn phone(p: &str) -> String {
    p.chars()
        .filter(|c| !matches!(c, '-' | ' ' | '(' | ')'))
        .collect()
}

fn map_tx(index: usize, mut raw: RawTx, created_ms: i64) -> Result<Transaction, IsoError> {
    let path = |r: &str| format!("{TX_PATH}[{index}]{r}");
    let ccy = raw.ccy.take();
    let mut take = |f: F| {
        raw.fields[f as usize]
            .take()
            .filter(|s| !s.trim().is_empty())
    };
    let end_to_end_id = take(F::EndToEndId).ok_or_else(|| IsoError::Missing {
        path: path(rel(F::EndToEndId)),
    })?;
    let instr_id = take(F::InstrId);
    let tx_id = take(F::TxId);
    let uetr = take(F::Uetr).map(|u| u.trim().to_ascii_lowercase());
    // The id a retry of the same transfer keeps: the UETR (a UUID unique
    // across banks and retries), else the instructing agent's TxId, else
    // the debtor's EndToEndId ("NOTPROVIDED" is no id).
    let (event_id, id_from) = if let Some(u) = &uetr {
        (u.clone(), IdFrom::Uetr)
    } else if let Some(t) = &tx_id {
        (t.trim().to_string(), IdFrom::TxId)
    } else if end_to_end_id.trim() != "NOTPROVIDED" {
        (end_to_end_id.trim().to_string(), IdFrom::EndToEndId)
    } else {
        return Err(IsoError::Missing {
            path: path(rel(F::Uetr)),
        });
    };
    let amount_text = take(F::Amount).ok_or_else(|| IsoError::Missing {
        path: path(rel(F::Amount)),
    })?;
    let ccy_path = path("/IntrBkSttlmAmt/@Ccy");
    let ccy = ccy.ok_or_else(|| IsoError::Missing {
        path: ccy_path.clone(),
    })?;
    let currency = Currency::parse(ccy.trim()).ok_or_else(|| IsoError::Invalid {
        path: ccy_path,
        why: format!("{ccy:?} is not an ISO 4217 currency code"),
    })?;
    let amount_minor =
        to_minor(&amount_text, minor_digits(currency)).map_err(|why| IsoError::Invalid {
            path: path(rel(F::Amount)),
            why: format!("{why} ({currency})"),
        })?;
    let (event_time_ms, time_from_tx) = match take(F::AccptncDtTm) {
        Some(t) => (
            parse_datetime(&t).map_err(|why| IsoError::Invalid {
                path: path(rel(F::AccptncDtTm)),
                why,
            })?,
            true,
        ),
        None => (created_ms, false),
    };
    let payer_account = take(F::DbtrIban)
        .or_else(|| take(F::DbtrOthr))
        .ok_or_else(|| IsoError::Missing {
            path: path("/DbtrAcct/Id"),
        })?;
    let payee_account = take(F::CdtrIban)
        .or_else(|| take(F::CdtrOthr))
        .ok_or_else(|| IsoError::Missing {
            path: path("/CdtrAcct/Id"),
        })?;
    let payer_bank = take(F::DbtrBic)
        .or_else(|| take(F::DbtrMmb))
        .unwrap_or_default();
    let payee_bank = take(F::CdtrBic)
        .or_else(|| take(F::CdtrMmb))
        .unwrap_or_default();
    let phone = take(F::DbtrPhone).map(|p| phone(&p)).unwrap_or_default();
    let mut attributes = BTreeMap::new();
    for (f, key) in ATTRIBUTES {
        if let Some(v) = take(f) {
            attributes.insert(key.to_string(), v.trim().to_string());
        }
    }
    let party = |account: String, bank: String| proto::Party {
        account: account.trim().to_string(),
        bank_code: bank.trim().to_string(),
        kind: AccountKind::Account as i32,
    };
    Ok(Transaction {
        index,
        instr_id,
        end_to_end_id,
        tx_id,
        uetr,
        event: proto::PaymentEvent {
            event_id,
            event_time_ms,
            payer: Some(party(payer_account, payer_bank)),
            payee: Some(party(payee_account, payee_bank)),
            amount_minor,
            currency: currency.to_string(),
            payment_type: PaymentType::Transfer as i32,
            phone,
            attributes,
            ..Default::default()
        },
        id_from,
        time_from_tx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_table_is_indexed_by_the_enum() {
        for (i, (_, f)) in TX_FIELDS.iter().enumerate() {
            assert_eq!(*f as usize, i, "{f:?}");
        }
    }
}

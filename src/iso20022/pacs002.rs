//! Verdicts as a pacs.002 (FI to FI payment status report): one
//! `TxInfAndSts` per transaction of the pacs.008 it answers, in the same
//! order. Written as text in schema order (a handful of elements; no
//! serializer needed), every value escaped.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use quick_xml::escape::escape;

use super::amount::format_datetime;
use super::{Answering, Message};
use crate::engine::{Decision, Reason};

/// `AddtlInf` is a `Max105Text`.
const ADDTL_INF_MAX: usize = 105;

/// One transaction's verdict, as the pacs.002 reports it.
#[derive(Debug, Clone, Copy)]
pub struct TxAnswer<'a> {
    pub decision: Decision,
    pub reasons: &'a [Reason],
    /// The overload policy's answer (not scored): reported with its reason.
    pub degraded: bool,
}

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A `MsgId` (Max35Text) unique within this process and, by the time in
/// it, across restarts: `FRAUDLINE-<ms hex>-<sequence hex>`.
fn message_id(now_ms: i64) -> String {
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!("FRAUDLINE-{now_ms:x}-{n:x}")
}

/// The pacs.002 answering `msg`; `answers[i]` is the verdict of
/// `msg.transactions[i]`.
pub fn write_pacs002(
    cfg: &Answering,
    msg: &Message,
    answers: &[TxAnswer<'_>],
    now_ms: i64,
) -> String {
    let mut x = String::with_capacity(512 + 400 * answers.len());
    // `write!` into a String cannot fail.
    let _ = write!(
        x,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <Document xmlns=\"urn:iso:std:iso:20022:tech:xsd:pacs.002.001.{:02}\">\n\
         <FIToFIPmtStsRpt>\n\
         <GrpHdr><MsgId>{}</MsgId><CreDtTm>{}</CreDtTm></GrpHdr>\n\
         <OrgnlGrpInfAndSts><OrgnlMsgId>{}</OrgnlMsgId><OrgnlMsgNmId>{}</OrgnlMsgNmId>\
         <OrgnlCreDtTm>{}</OrgnlCreDtTm><OrgnlNbOfTxs>{}</OrgnlNbOfTxs></OrgnlGrpInfAndSts>\n",
        cfg.pacs002_version,
        message_id(now_ms),
        format_datetime(now_ms),
        escape(msg.msg_id.as_str()),
        escape(msg.name.as_str()),
        escape(msg.cre_dt_tm.trim()),
        msg.transactions.len(),
    );
    for (tx, a) in msg.transactions.iter().zip(answers) {
        x.push_str("<TxInfAndSts>");
        if let Some(i) = &tx.instr_id {
            let _ = write!(x, "<OrgnlInstrId>{}</OrgnlInstrId>", escape(i.as_str()));
        }
        let _ = write!(
            x,
            "<OrgnlEndToEndId>{}</OrgnlEndToEndId>",
            escape(tx.end_to_end_id.as_str())
        );
        if let Some(t) = &tx.tx_id {
            let _ = write!(x, "<OrgnlTxId>{}</OrgnlTxId>", escape(t.as_str()));
        }
        if let Some(u) = &tx.uetr {
            let _ = write!(x, "<OrgnlUETR>{}</OrgnlUETR>", escape(u.as_str()));
        }
        let _ = write!(x, "<TxSts>{}</TxSts>", cfg.status(a.decision));
        if a.decision != Decision::Allow || a.degraded {
            x.push_str("<StsRsnInf>");
            let code = cfg.reason(a.decision);
            if !code.is_empty() {
                let _ = write!(x, "<Rsn><Cd>{code}</Cd></Rsn>");
            }
            // One AddtlInf per reason, the rule id first: a reader that
            // keeps only the ids splits at the first ':'.
            for r in a.reasons {
                let line = format!("{}: {}", r.rule_id, r.reason);
                let _ = write!(
                    x,
                    "<AddtlInf>{}</AddtlInf>",
                    escape(crate::prefix_within(&line, ADDTL_INF_MAX))
                );
            }
            x.push_str("</StsRsnInf>");
        }
        x.push_str("</TxInfAndSts>\n");
    }
    x.push_str("</FIToFIPmtStsRpt>\n</Document>\n");
    x
}

//! ISO 20022 end to end, checked by implementations independent of
//! fraudline: the pacs.008 messages are written (and XSD-validated) by the
//! `pacs008` package from PyPI, and fraudline's pacs.002 answers are read
//! back by Prowide ISO 20022 (`pw-iso20022`, Maven Central). Both come from
//! deploy/ci/install-tools.sh; a missing one fails the test (`tool()`).
//!
//! - HTTP: a three-transaction pacs.008 gets ACSP / PDNG / RJCT with FRAD
//!   and the rule ids, as Prowide reads them; a retry gets the same answer;
//!   pacs.008.001.09 to .13 are read too; statuses, reason codes and the
//!   pacs.002 version follow `[iso20022]`.
//! - Malformed messages get a problem object naming the XML path.
//! - Stream: a one-transaction record with `content-type:
//!   application/pacs.008+xml` gets its verdict on the verdicts topic; a
//!   two-transaction one and a malformed one go to the dead-letter topic,
//!   kind `bad_iso20022`, the error naming the XML path.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::inline::Server;
use common::{repo, tool};
use fraudline::config::Config;

const RULES: &str = r#"
version = "iso20022-test"
[thresholds]
review = 40
hold = 80

[[rule]]
id = "BIG_TRANSFER"
when = "amount >= 100_000_000"
score = 50
reason = "Transfer of 100 million or more"

[[rule]]
id = "CASH_PURPOSE"
when = 'attributes["iso20022.category_purpose"] == "CASH"'
score = 5
reason = "Category purpose CASH"

[[rule]]
id = "PAYEE_BLOCKLISTED"
when = "blocklisted(payee)"
decision = "HOLD"
reason = "Payee is in the suspicious-account database"
"#;

const MULE: &str = "VN78ASCB9999000001";

/// Starts the in-line API in-process with the test rules and a blocklist
/// holding [`MULE`]; `inline` lines go into `[inline]`, `extra` after it.
async fn start(inline: &str, extra: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, RULES).unwrap();
    let list = dir.path().join("list.csv");
    std::fs::write(
        &list,
        format!("kind,value,action,reason\naccount,{MULE},HOLD,mule\n"),
    )
    .unwrap();
    let toml = format!(
        "[kafka]\npayments_topic = \"\"\nstate_topic = \"\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [log]\nformat = \"text\"\nlevel = \"warn\"\n\
         [rules]\nfile = \"{}\"\n[blocklist]\nfiles = [\"{}\"]\n\
         [inline]\nenabled = true\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\
         audit = false\naudit_spill_dir = \"{}\"\n{inline}\n{extra}\n",
        rules.display(),
        list.display(),
        dir.path().display()
    );
    let cfg = Config::from_parts(Some(&toml), Some("test.toml"), Vec::new()).unwrap();
    let (bound, stop, task) = common::start_in_process(cfg).await;
    Server {
        bound,
        stop: Some(stop),
        task,
        _dir: dir,
    }
}

fn url(s: &Server) -> String {
    format!(
        "http://{}/v1/iso20022/pacs.008",
        s.bound.inline_http.unwrap()
    )
}

fn now_iso() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A UETR (UUID v4 form) unique to this run.
fn uetr(i: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    format!(
        "{:08x}-{:04x}-4000-8000-{:012x}",
        std::process::id(),
        i,
        nanos & 0xffff_ffff_ffff
    )
}

/// One transaction's row for the `pacs008` package.
fn row(
    n: usize,
    msg_id: &str,
    e2e: &str,
    uetr: &str,
    amount: &str,
    payee: &str,
) -> serde_json::Value {
    serde_json::json!({
        "msg_id": msg_id, "creation_date_time": now_iso(), "nb_of_txs": n.to_string(),
        "settlement_method": "CLRG", "end_to_end_id": e2e, "tx_id": format!("TX-{e2e}"), "uetr": uetr,
        "interbank_settlement_amount": amount, "interbank_settlement_currency": "VND",
        "charge_bearer": "SLEV", "debtor_name": "Nguyen Van A",
        "debtor_account_iban": "VN12VCBB1000003422", "debtor_agent_bic": "BFTVVNVX",
        "creditor_agent_bic": "ASCBVNVX", "creditor_name": "Tran Thi B",
        "creditor_account_iban": payee,
    })
}

/// A pacs.008 written and XSD-validated by the `pacs008` package.
fn generate(version: &str, rows: &[serde_json::Value], dir: &Path) -> String {
    let file = dir.join(format!("rows-{version}-{}.json", rows.len()));
    std::fs::write(&file, serde_json::to_string(rows).unwrap()).unwrap();
    let out = Command::new(tool("pacs008-python"))
        .arg(repo().join("tests/iso20022-check/pacs008_gen.py"))
        .arg(version)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pacs008 refused the rows: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let xml = String::from_utf8(out.stdout).unwrap();
    assert!(xml.contains(&format!("xsd:{version}")), "{xml}");
    xml
}

async fn post(url: &str, content_type: &str, body: String) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// What Prowide read from each answer: its `msg` line and its `tx` lines.
#[derive(Debug)]
struct Read {
    msg: Vec<String>,
    txs: Vec<Vec<String>>,
}

/// Reads pacs.002 files with Prowide (tests/iso20022-check/Pacs002Check.java).
fn prowide(files: &[PathBuf]) -> Vec<Read> {
    let out = Command::new(tool("pw-iso20022-java"))
        .arg(repo().join("tests/iso20022-check/Pacs002Check.java"))
        .args(files)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "Prowide could not read an answer:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut reads: Vec<Read> = Vec::new();
    for line in text.lines() {
        let words = |n: usize| -> Vec<String> { line.splitn(n, ' ').map(str::to_string).collect() };
        if line.starts_with("msg ") {
            reads.push(Read {
                msg: words(6),
                txs: Vec::new(),
            });
        } else if line.starts_with("tx ") {
            reads
                .last_mut()
                .expect("a msg line first")
                .txs
                .push(words(7));
        }
    }
    assert_eq!(reads.len(), files.len(), "{text}");
    reads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pacs008_over_http_answered_with_a_pacs002_prowide_reads() {
    let s = start("", "").await;
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..3).map(uetr).collect();
    let msg_id = format!("MSG-{}", &ids[0][..8]);
    let mut rows = vec![
        row(
            3,
            &msg_id,
            "E2E-OK",
            &ids[0],
            "7216000",
            "VN34ASCB8960134909",
        ),
        row(
            3,
            &msg_id,
            "E2E-BIG",
            &ids[1],
            "150000000.00",
            "VN34ASCB8960134909",
        ),
        row(3, &msg_id, "E2E-MULE", &ids[2], "500000", MULE),
    ];
    rows[1]["pmt_tp_inf_ctgy_purp_cd"] = "CASH".into();
    let xml = generate("pacs.008.001.08", &rows, dir.path());

    let r = post(&url(&s), "application/xml", xml.clone()).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/xml"));
    let first = r.text().await.unwrap();
    // A retry of the same message: the same statuses, from the cache.
    let r = post(&url(&s), "application/pacs.008+xml", xml).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["fraudline-replay"], "true");
    let retry = r.text().await.unwrap();
    let files: Vec<PathBuf> = [&first, &retry]
        .iter()
        .enumerate()
        .map(|(i, body)| {
            let f = dir.path().join(format!("answer-{i}.xml"));
            std::fs::write(&f, body).unwrap();
            f
        })
        .collect();
    let reads = prowide(&files);
    for read in &reads {
        assert_eq!(read.msg[2], "pacs.002.001.10", "{read:?}");
        assert!(read.msg[3].starts_with("FRAUDLINE-"), "{read:?}");
        assert_eq!(read.msg[4], msg_id);
        assert_eq!(read.msg[5], "pacs.008.001.08");
        assert_eq!(read.txs.len(), 3, "{read:?}");
        // tx E2E TxId UETR TxSts Rsn AddtlInf
        let t = &read.txs;
        assert_eq!(
            t[0][1..6],
            ["E2E-OK", "TX-E2E-OK", ids[0].as_str(), "ACSP", "-"]
        );
        assert_eq!(t[0][6], "-", "no reason for ACSP");
        assert_eq!(
            t[1][1..6],
            ["E2E-BIG", "TX-E2E-BIG", ids[1].as_str(), "PDNG", "FRAD"]
        );
        let addtl: Vec<&str> = t[1][6].split('|').collect();
        assert_eq!(
            addtl,
            [
                "BIG_TRANSFER: Transfer of 100 million or more",
                "CASH_PURPOSE: Category purpose CASH"
            ],
            "the rule ids, in evaluation order"
        );
        assert_eq!(
            t[2][1..6],
            ["E2E-MULE", "TX-E2E-MULE", ids[2].as_str(), "RJCT", "FRAD"]
        );
        assert!(
            t[2][6]
                .split('|')
                .any(|a| a.starts_with("PAYEE_BLOCKLISTED: ")),
            "{:?}",
            t[2]
        );
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_versions_and_configured_answers() {
    let s = start(
        "",
        "[iso20022]\nallow_status = \"ACCP\"\nhold_status = \"BLCK\"\nhold_reason = \"FR01\"\n\
         pacs002_version = \"pacs.002.001.12\"\n",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let versions = [
        "pacs.008.001.09",
        "pacs.008.001.10",
        "pacs.008.001.11",
        "pacs.008.001.12",
        "pacs.008.001.13",
    ];
    for (i, v) in versions.iter().enumerate() {
        let id = uetr(10 + i as u64);
        let payee = if i % 2 == 0 {
            "VN34ASCB8960134909"
        } else {
            MULE
        };
        let xml = generate(
            v,
            &[row(
                1,
                &format!("MSG-{i}"),
                &format!("E2E-{i}"),
                &id,
                "1000000",
                payee,
            )],
            dir.path(),
        );
        let r = post(&url(&s), "text/xml", xml).await;
        assert_eq!(r.status(), 200, "{v}");
        let f = dir.path().join(format!("answer-{v}.xml"));
        std::fs::write(&f, r.text().await.unwrap()).unwrap();
        files.push((f, id, payee));
    }
    let paths: Vec<PathBuf> = files.iter().map(|f| f.0.clone()).collect();
    let reads = prowide(&paths);
    for ((read, (_, id, payee)), v) in reads.iter().zip(&files).zip(versions) {
        assert_eq!(read.msg[2], "pacs.002.001.12", "{read:?}");
        assert_eq!(read.msg[5], v);
        let t = &read.txs[0];
        assert_eq!(t[3], *id);
        if *payee == MULE {
            assert_eq!(t[4..6], ["BLCK", "FR01"], "{v}");
        } else {
            assert_eq!(t[4..7], ["ACCP", "-", "-"], "{v}");
        }
    }
    s.shutdown().await;
}

async fn problem(r: reqwest::Response) -> serde_json::Value {
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    common::inline::json(r).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_a_problem_naming_the_xml_path() {
    let s = start("max_request_bytes = 65536", "").await;
    let dir = tempfile::tempdir().unwrap();
    let rows = vec![
        row(
            2,
            "MSG-BAD",
            "E2E-1",
            &uetr(20),
            "1000000",
            "VN34ASCB8960134909",
        ),
        row(
            2,
            "MSG-BAD",
            "E2E-2",
            &uetr(21),
            "2000000",
            "VN34ASCB8960134909",
        ),
    ];
    let good = generate("pacs.008.001.08", &rows, dir.path());
    let at = good.rfind("Ccy=\"VND\"").unwrap();
    let bad_ccy = format!("{}Ccy=\"VNX\"{}", &good[..at], &good[at + 9..]);

    let r = post(&url(&s), "application/xml", bad_ccy).await;
    assert_eq!(r.status(), 400);
    let p = problem(r).await;
    assert_eq!(p["status"], 400);
    assert_eq!(p["code"], "invalid_element");
    assert_eq!(p["type"], "urn:fraudline:problem:invalid_element");
    assert_eq!(
        p["path"],
        "/Document/FIToFICstmrCdtTrf/CdtTrfTxInf[2]/IntrBkSttlmAmt/@Ccy"
    );
    assert!(p["detail"].as_str().unwrap().contains("\"VNX\""), "{p}");

    let cases: Vec<(String, u16, &str, Option<&str>)> = vec![
        (
            good.replace("<DbtrAcct>", "<DbtrAcct><Id>").replacen(
                "</DbtrAcct>",
                "</Id></DbtrAcct>",
                1,
            ),
            400,
            "bad_xml",
            None,
        ),
        (
            good.replace(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
                "<?xml version=\"1.0\"?><!DOCTYPE d [<!ENTITY a \"aaaa\">]>",
            ),
            400,
            "xml_doctype",
            Some("/"),
        ),
        (
            generate("pacs.008.001.07", &rows, dir.path()),
            400,
            "unsupported_message",
            Some("/Document"),
        ),
        (
            good.replace("<NbOfTxs>2</NbOfTxs>", "<NbOfTxs>3</NbOfTxs>"),
            400,
            "nb_of_txs_mismatch",
            Some("/Document/FIToFICstmrCdtTrf/GrpHdr/NbOfTxs"),
        ),
        (
            good.replacen(">1000000<", ">0<", 1),
            400,
            "invalid_amount",
            Some("/Document/FIToFICstmrCdtTrf/CdtTrfTxInf[1]/IntrBkSttlmAmt"),
        ),
        (
            format!("{good}{}", " ".repeat(70_000)),
            413,
            "too_large",
            None,
        ),
    ];
    for (body, status, code, path) in cases {
        let r = post(&url(&s), "application/xml", body).await;
        assert_eq!(r.status(), status, "{code}");
        let p = problem(r).await;
        assert_eq!(p["code"], code, "{p}");
        if let Some(path) = path {
            assert_eq!(p["path"], path, "{p}");
        }
    }
    let r = post(&url(&s), "application/json", good.clone()).await;
    assert_eq!(r.status(), 415);
    // The deadline header is checked as on /v1/score.
    let r = reqwest::Client::new()
        .post(url(&s))
        .header("content-type", "application/xml")
        .header("x-fraudline-timeout-ms", "soon")
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let p = problem(r).await;
    assert_eq!(p["code"], "invalid_timeout", "{p}");
    assert_eq!(p["field"], "x-fraudline-timeout-ms", "{p}");
    // Nothing of a refused message was scored: the good one is scored now,
    // not answered from the cache.
    let r = post(&url(&s), "application/xml", good.clone()).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("fraudline-replay").is_none());
    let r = post(&url(&s), "application/xml", good).await;
    assert_eq!(r.headers()["fraudline-replay"], "true");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_topic_reads_pacs008_records() {
    use common::{broker, config_toml, create_topics, verdict, Fraudline, Reader, ANY_PORT};
    use prost::Message as _;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let brokers = broker();
    let t = create_topics(brokers, "iso", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let one_id = uetr(30);
    let one = generate(
        "pacs.008.001.08",
        &[row(
            1,
            "MSG-S1",
            "E2E-S1",
            &one_id,
            "7216000",
            "VN34ASCB8960134909",
        )],
        dir.path(),
    );
    let two = generate(
        "pacs.008.001.08",
        &[
            row(
                2,
                "MSG-S2",
                "E2E-S2",
                &uetr(31),
                "1000000",
                "VN34ASCB8960134909",
            ),
            row(
                2,
                "MSG-S2",
                "E2E-S3",
                &uetr(32),
                "1000000",
                "VN34ASCB8960134909",
            ),
        ],
        dir.path(),
    );
    let bad = one.replace("Ccy=\"VND\"", "Ccy=\"VNX\"");
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for body in [&one, &two, &bad] {
        producer
            .send(
                FutureRecord::to(&t.payments)
                    .key("VN12VCBB1000003422")
                    .payload(body.as_bytes())
                    .headers(OwnedHeaders::new().insert(Header {
                        key: "content-type",
                        value: Some("application/pacs.008+xml"),
                    })),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let mut f = Fraudline::start(&config_toml(brokers, &t, "at-least-once", ANY_PORT, ""));
    let mut verdicts = Reader::new(brokers, &t.verdicts, false);
    let mut dlq = Reader::new(brokers, &t.dlq, false);
    let got = verdicts.poll_until(Duration::from_secs(60), |r| !r.is_empty())
        && dlq.poll_until(Duration::from_secs(30), |r| r.len() >= 2);
    assert!(got, "no verdict or dead letter; log:\n{}", f.log_tail());
    verdicts.poll_for(Duration::from_secs(1));
    assert_eq!(verdicts.records.len(), 1);
    let v = verdict(&verdicts.records[0]);
    assert_eq!(v.event_id, one_id, "the UETR is the event id");
    assert_eq!(dlq.records.len(), 2);
    let d = &dlq.records[0];
    assert_eq!(d.headers["fraudline.error.kind"], "bad_iso20022");
    assert!(
        d.headers["fraudline.error"].contains("multiple_transactions")
            && d.headers["fraudline.error"].contains("2 transactions"),
        "{:?}",
        d.headers
    );
    let dl = fraudline::proto::DeadLetter::decode(d.payload.as_slice()).unwrap();
    assert_eq!(
        dl.payload,
        two.as_bytes(),
        "the original message travels with it"
    );
    f.sigkill();
}

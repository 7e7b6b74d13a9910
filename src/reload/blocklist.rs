//! Blocklist files: CSV with a header line, or JSON lines (by extension:
//! `.jsonl` / `.ndjson` / `.json`, anything else is CSV).
//!
//! CSV columns (header names, any order; `kind` and `value` required):
//! `kind,value,action,reason,source,expires_at_ms`. JSON lines use the same
//! names. `kind` is one of account, ewallet, card, phone, device, ip;
//! `action` HOLD (the default) or REVIEW; `expires_at_ms` empty for never.
//!
//! A file is read whole and validated before anything is swapped. It is
//! refused, with every bad line's number, when a line does not parse, names
//! an unknown kind or action, repeats a key with a different action, is not
//! UTF-8, or when the file does not end with a newline (caught half-written).
//! With `max_bad_lines = N > 0`, up to N bad lines are skipped and reported
//! and the rest loads; the last-line rule always applies.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use crate::engine::blocklist::{ListEntry, ListKind};
use crate::engine::decision::Decision;

/// One refused line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadLine {
    pub file: String,
    /// 1-based; 0 for the file as a whole.
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// A file read and validated.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub entries: Vec<ListEntry>,
    /// Lines skipped under the tolerance (empty when none were allowed).
    pub skipped: Vec<BadLine>,
    pub by_kind: HashMap<&'static str, usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum BlocklistFileError {
    #[error("cannot read blocklist {file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("blocklist refused, {} bad line(s):\n{}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Refused(Vec<BadLine>),
}

fn kind(s: &str) -> Option<ListKind> {
    Some(match s.trim().to_ascii_lowercase().as_str() {
        "account" => ListKind::Account,
        "ewallet" | "e-wallet" => ListKind::Ewallet,
        "card" => ListKind::Card,
        "phone" => ListKind::Phone,
        "device" => ListKind::Device,
        "ip" => ListKind::Ip,
        _ => return None,
    })
}

fn action(s: &str) -> Option<Decision> {
    match s.trim().to_ascii_uppercase().as_str() {
        "" | "HOLD" => Some(Decision::Hold),
        "REVIEW" => Some(Decision::Review),
        _ => None,
    }
}

/// Fields of one line, before checks.
#[derive(Debug, Default, serde::Deserialize)]
struct Raw {
    kind: String,
    value: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    expires_at_ms: Option<i64>,
}

fn entry(raw: Raw, file_source: &str) -> Result<ListEntry, String> {
    let k = kind(&raw.kind).ok_or_else(|| format!("unknown kind {:?}", raw.kind))?;
    let a = action(&raw.action)
        .ok_or_else(|| format!("action {:?} is not HOLD or REVIEW", raw.action))?;
    if raw.value.trim().is_empty() {
        return Err("empty value".into());
    }
    let source = if raw.source.is_empty() {
        file_source
    } else {
        &raw.source
    };
    let reason = if raw.reason.is_empty() {
        format!("listed by {source}")
    } else {
        raw.reason
    };
    Ok(ListEntry {
        kind: k,
        value: raw.value.trim().to_string(),
        reason,
        action: a,
        expires_at_ms: raw.expires_at_ms,
    })
}

/// Splits one CSV line: commas, with double-quoted fields ("" inside a
/// quoted field is a quote).
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            ('"', true) => quoted = false,
            ('"', false) if cur.is_empty() => quoted = true,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    out.push(cur);
    Ok(out)
}

/// Parses file bytes. `name` names the file in errors and is the default
/// `source` of its entries.
pub fn parse(name: &str, bytes: &[u8], max_bad_lines: usize) -> Result<Loaded, BlocklistFileError> {
    let mut bad = Vec::new();
    let bad_line = |line: usize, message: String| BadLine {
        file: name.to_string(),
        line,
        message,
    };
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        let lines = bytes.iter().filter(|b| **b == b'\n').count() + 1;
        return Err(BlocklistFileError::Refused(vec![bad_line(
            lines,
            "the last line has no newline: the file looks half-written".into(),
        )]));
    }
    let json = [".jsonl", ".ndjson", ".json"]
        .iter()
        .any(|e| name.ends_with(e));
    let mut entries: Vec<ListEntry> = Vec::new();
    let keyer = crate::engine::Blocklist::empty();
    let mut seen: HashMap<u64, (Decision, usize), ahash::RandomState> = HashMap::default();
    let mut header: Option<Vec<String>> = None;
    for (i, raw_line) in bytes.split(|b| *b == b'\n').enumerate() {
        let n = i + 1;
        let Ok(line) = std::str::from_utf8(raw_line) else {
            bad.push(bad_line(n, "not UTF-8".into()));
            continue;
        };
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let raw = if json {
            serde_json::from_str::<Raw>(line).map_err(|e| e.to_string())
        } else if header.is_none() {
            match csv_fields(line) {
                Ok(h) => {
                    let h: Vec<String> = h.iter().map(|s| s.trim().to_ascii_lowercase()).collect();
                    if !h.iter().any(|c| c == "kind") || !h.iter().any(|c| c == "value") {
                        return Err(BlocklistFileError::Refused(vec![bad_line(
                            n,
                            "the CSV header must name at least `kind` and `value`".into(),
                        )]));
                    }
                    header = Some(h);
                }
                Err(e) => bad.push(bad_line(n, e)),
            }
            continue;
        } else {
            let h = header.as_deref().unwrap_or(&[]);
            csv_fields(line).and_then(|f| {
                if f.len() != h.len() {
                    return Err(format!("{} fields, the header has {}", f.len(), h.len()));
                }
                let mut r = Raw::default();
                for (col, v) in h.iter().zip(f) {
                    match col.as_str() {
                        "kind" => r.kind = v,
                        "value" => r.value = v,
                        "action" => r.action = v,
                        "reason" => r.reason = v,
                        "source" => r.source = v,
                        "expires_at_ms" if v.trim().is_empty() => {}
                        "expires_at_ms" => {
                            r.expires_at_ms = Some(v.trim().parse().map_err(|_| {
                                format!("expires_at_ms {v:?} is not a number of ms")
                            })?)
                        }
                        _ => {}
                    }
                }
                Ok(r)
            })
        };
        match raw.and_then(|r| entry(r, name)) {
            Ok(e) => {
                let key = keyer.key_of(e.kind, &e.value);
                match seen.get(&key) {
                    Some((a, first)) if *a != e.action => bad.push(bad_line(
                        n,
                        format!(
                            "{} {:?} is listed again with action {} (line {first} says {})",
                            e.kind.as_str(),
                            e.value,
                            e.action.as_str(),
                            a.as_str()
                        ),
                    )),
                    Some(_) => {} // the same entry twice: harmless
                    None => {
                        seen.insert(key, (e.action, n));
                        entries.push(e);
                    }
                }
            }
            Err(m) => bad.push(bad_line(n, m)),
        }
    }
    if bad.len() > max_bad_lines {
        return Err(BlocklistFileError::Refused(bad));
    }
    let mut by_kind = HashMap::new();
    for e in &entries {
        *by_kind.entry(e.kind.as_str()).or_default() += 1;
    }
    Ok(Loaded {
        entries,
        skipped: bad,
        by_kind,
    })
}

/// Reads and parses a blocklist file.
pub fn load(path: &Path, max_bad_lines: usize) -> Result<Loaded, BlocklistFileError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| BlocklistFileError::Io {
        file: name.clone(),
        source,
    })?;
    parse(&name, &bytes, max_bad_lines)
}

/// Loads every file, merges them (a later file's entry wins over an
/// earlier one's for the same key) and builds the list with `version`.
pub fn build(
    files: &[std::path::PathBuf],
    max_bad_lines: usize,
    country_code: &str,
    version: u64,
) -> Result<(crate::engine::Blocklist, Vec<BadLine>), BlocklistFileError> {
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    for f in files {
        let l = load(f, max_bad_lines)?;
        entries.extend(l.entries);
        skipped.extend(l.skipped);
    }
    Ok((
        crate::engine::Blocklist::with_country_code(version, country_code, entries),
        skipped,
    ))
}

/// Size, modification time and file identity of each file (see
/// [`super::file_id`]).
fn stamps(files: &[std::path::PathBuf]) -> Vec<Option<(u64, std::time::SystemTime, u64)>> {
    files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f).ok()?;
            Some((m.len(), m.modified().ok()?, super::file_id(&m)))
        })
        .collect()
}

/// The blocklist's sources and what each last gave: the list is rebuilt
/// from both on every change, with a version that only grows.
pub struct Sources {
    engine: std::sync::Arc<crate::engine::Engine>,
    files: Vec<std::path::PathBuf>,
    max_bad_lines: usize,
    country_code: String,
    file_entries: std::sync::Mutex<Vec<ListEntry>>,
    topic_entries: std::sync::Mutex<HashMap<String, ListEntry>>,
    version: std::sync::atomic::AtomicU64,
}

impl Sources {
    pub fn new(
        engine: std::sync::Arc<crate::engine::Engine>,
        files: Vec<std::path::PathBuf>,
        max_bad_lines: usize,
        country_code: String,
    ) -> Sources {
        Sources {
            engine,
            files,
            max_bad_lines,
            country_code,
            file_entries: Default::default(),
            topic_entries: Default::default(),
            version: Default::default(),
        }
    }

    /// Reads the files; on success rebuilds the list. A refused file leaves
    /// the active list (and the last good file entries) in place.
    pub fn reload_files(&self) -> Result<(), BlocklistFileError> {
        let mut entries = Vec::new();
        let mut skipped = Vec::new();
        for f in &self.files {
            match load(f, self.max_bad_lines) {
                Ok(l) => {
                    entries.extend(l.entries);
                    skipped.extend(l.skipped);
                }
                Err(e) => {
                    metrics::counter!(crate::telemetry::BLOCKLIST_LOAD_FAILURES).increment(1);
                    tracing::error!(error = %e, active_version = self.engine.blocklist().version(), "blocklist refused; the active list stays");
                    return Err(e);
                }
            }
        }
        for b in &skipped {
            tracing::warn!(line = %b, "blocklist line skipped (within max_bad_lines)");
        }
        if let Ok(mut fe) = self.file_entries.lock() {
            *fe = entries;
        }
        self.rebuild("files");
        Ok(())
    }

    /// Applies topic records: `Some(entry)` lists, `None` removes.
    pub fn apply_topic(&self, updates: impl IntoIterator<Item = (String, Option<ListEntry>)>) {
        if let Ok(mut t) = self.topic_entries.lock() {
            for (k, e) in updates {
                match e {
                    Some(e) => {
                        t.insert(k, e);
                    }
                    None => {
                        t.remove(&k);
                    }
                }
            }
        }
        self.rebuild("topic");
    }

    /// Builds a new list from both sources and swaps it in.
    fn rebuild(&self, cause: &str) {
        use crate::telemetry;
        let started = std::time::Instant::now();
        let mut entries: Vec<ListEntry> = self
            .file_entries
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default();
        if let Ok(t) = self.topic_entries.lock() {
            entries.extend(t.values().cloned());
        }
        let version = self
            .version
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let list =
            crate::engine::Blocklist::with_country_code(version, &self.country_code, entries);
        let mut counts: HashMap<&'static str, usize> =
            ["account", "ewallet", "card", "phone", "device", "ip"]
                .into_iter()
                .map(|k| (k, 0))
                .collect();
        counts.extend(list.counts());
        for (k, n) in &counts {
            metrics::gauge!(telemetry::BLOCKLIST_ENTRIES, "kind" => *k).set(*n as f64);
        }
        metrics::gauge!(telemetry::BLOCKLIST_VERSION).set(version as f64);
        metrics::gauge!(telemetry::BLOCKLIST_LOADED_AT).set(crate::now_ms() as f64 / 1000.0);
        tracing::info!(
            version,
            entries = list.len(),
            cause,
            seconds = started.elapsed().as_secs_f64(),
            "blocklist active"
        );
        self.engine.set_blocklist(list);
    }
}

/// Loads the files at start (a bad file refuses the start), then watches
/// them; a valid change swaps a new list in whole.
pub fn watch_files(
    sources: std::sync::Arc<Sources>,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    // Stamped before the task first runs, so a change in between is seen.
    let mut last = stamps(&sources.files);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let now = stamps(&sources.files);
            if now == last {
                continue;
            }
            last = now;
            let s = sources.clone();
            let _ = tokio::task::spawn_blocking(move || s.reload_files()).await;
        }
    })
}

/// Turns a topic record into an update: key `kind:value`, value a
/// `BlocklistEntry` (protobuf), empty value = removal.
pub fn topic_update(
    key: &[u8],
    value: Option<&[u8]>,
    topic: &str,
) -> Result<(String, Option<ListEntry>), String> {
    use prost::Message as _;
    let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_string())?;
    let (k, v) = key
        .split_once(':')
        // The key may be a bare account or phone: never quote it in clear.
        .ok_or_else(|| format!("key {:?} is not kind:value", crate::mask(key)))?;
    let kind = kind(k).ok_or_else(|| format!("unknown kind {k:?}"))?;
    let canonical = format!(
        "{}:{}",
        kind.as_str(),
        crate::engine::blocklist::normalise(v)
    );
    let Some(bytes) = value.filter(|b| !b.is_empty()) else {
        return Ok((canonical, None));
    };
    let e = crate::proto::BlocklistEntry::decode(bytes).map_err(|e| e.to_string())?;
    let raw = Raw {
        kind: if e.kind.is_empty() {
            k.to_string()
        } else {
            e.kind
        },
        value: if e.value.is_empty() {
            v.to_string()
        } else {
            e.value
        },
        action: e.action,
        reason: e.reason,
        source: e.source,
        expires_at_ms: (e.expires_at_ms > 0).then_some(e.expires_at_ms),
    };
    Ok((canonical, Some(entry(raw, topic)?)))
}

/// Follows the list topic from the beginning on a plain thread: the first
/// catch-up is applied at once, later records within ~100 ms batches.
/// `caught_up` is set when the first catch-up is done.
pub fn follow_topic(
    sources: std::sync::Arc<Sources>,
    client: rdkafka::config::ClientConfig,
    topic: String,
    caught_up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    use std::sync::atomic::Ordering;
    std::thread::spawn(move || {
        let timeout = std::time::Duration::from_secs(10);
        let consumer: BaseConsumer = match client.create() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "blocklist topic: cannot create the consumer");
                return;
            }
        };
        // Assign every partition from the beginning (no group: every
        // instance reads the whole list). Retry until the topic exists.
        let mut ends: HashMap<i32, i64> = HashMap::new();
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match consumer.fetch_metadata(Some(&topic), timeout) {
                Ok(md)
                    if md
                        .topics()
                        .first()
                        .is_some_and(|t| !t.partitions().is_empty()) =>
                {
                    let mut tpl = TopicPartitionList::new();
                    for p in md.topics()[0].partitions() {
                        let _ = tpl.add_partition_offset(&topic, p.id(), Offset::Beginning);
                        if let Ok((_, high)) = consumer.fetch_watermarks(&topic, p.id(), timeout) {
                            if high > 0 {
                                ends.insert(p.id(), high);
                            }
                        }
                    }
                    if let Err(e) = consumer.assign(&tpl) {
                        tracing::error!(error = %e, "blocklist topic: cannot assign");
                        std::thread::sleep(std::time::Duration::from_secs(1));
                        continue;
                    }
                    break;
                }
                Ok(_) | Err(_) => {
                    tracing::warn!(topic, "blocklist topic not found yet; retrying");
                    std::thread::sleep(std::time::Duration::from_secs(2));
                }
            }
        }
        let mut pending: Vec<(String, Option<ListEntry>)> = Vec::new();
        let mut last_flush = std::time::Instant::now();
        if ends.is_empty() {
            sources.apply_topic([]);
            caught_up.store(true, Ordering::SeqCst);
        }
        while !stop.load(Ordering::Relaxed) {
            match consumer.poll(std::time::Duration::from_millis(50)) {
                Some(Ok(m)) => {
                    match topic_update(m.key().unwrap_or_default(), m.payload(), &topic) {
                        Ok(u) => pending.push(u),
                        Err(e) => tracing::warn!(
                            partition = m.partition(),
                            offset = m.offset(),
                            error = %e,
                            "blocklist topic record skipped"
                        ),
                    }
                    if let Some(end) = ends.get(&m.partition()).copied() {
                        if m.offset() + 1 >= end {
                            ends.remove(&m.partition());
                        }
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "blocklist topic read error"),
                None => {}
            }
            let catching_up = !caught_up.load(Ordering::Relaxed);
            let flush = if catching_up {
                ends.is_empty()
            } else {
                !pending.is_empty() && last_flush.elapsed() >= std::time::Duration::from_millis(100)
            };
            if flush {
                sources.apply_topic(std::mem::take(&mut pending));
                last_flush = std::time::Instant::now();
                if catching_up {
                    caught_up.store(true, Ordering::SeqCst);
                    tracing::info!(topic, "blocklist topic caught up");
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(name: &str, text: &[u8]) -> Vec<String> {
        match parse(name, text, 0) {
            Ok(l) => panic!("accepted: {:?}", l.entries),
            Err(BlocklistFileError::Refused(b)) => b.iter().map(ToString::to_string).collect(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn csv_and_json_lines_load_with_defaults() {
        let csv = b"kind,value,action,reason,expires_at_ms\n\
                    account,9704-0000 1234,HOLD,\"mule, reported\",\n\
                    phone,+84912345678,REVIEW,,1900000000000\n\
                    # a comment\n\
                    \n\
                    device,dev-x1,,,\n";
        let l = parse("list.csv", csv, 0).expect("loads");
        assert_eq!(l.entries.len(), 3);
        assert_eq!(l.entries[0].reason, "mule, reported");
        assert_eq!(l.entries[1].action, Decision::Review);
        assert_eq!(l.entries[1].expires_at_ms, Some(1_900_000_000_000));
        assert_eq!(l.entries[2].action, Decision::Hold, "HOLD by default");
        assert_eq!(l.entries[2].reason, "listed by list.csv");
        assert_eq!(l.by_kind["account"], 1);
        let j = b"{\"kind\":\"ewallet\",\"value\":\"MOMO-1\"}\n{\"kind\":\"ip\",\"value\":\"10.0.0.1\",\"action\":\"REVIEW\"}\n";
        let l = parse("list.jsonl", j, 0).expect("loads");
        assert_eq!(l.entries.len(), 2);
    }

    #[test]
    fn bad_files_are_refused_with_line_numbers() {
        assert_eq!(
            refused("l.csv", b"kind,value\naccount,1\naccount,2"),
            ["l.csv:3: the last line has no newline: the file looks half-written"]
        );
        assert_eq!(
            refused("l.csv", b"kind,value\nsatellite,1\naccount,\xff\xfe\n"),
            ["l.csv:2: unknown kind \"satellite\"", "l.csv:3: not UTF-8"]
        );
        assert_eq!(
            refused(
                "l.csv",
                b"kind,value,action\naccount,12-34,HOLD\naccount,1234,REVIEW\n"
            ),
            ["l.csv:3: account \"1234\" is listed again with action REVIEW (line 2 says HOLD)"]
        );
        assert_eq!(
            refused("l.csv", b"value\n1\n"),
            ["l.csv:1: the CSV header must name at least `kind` and `value`"]
        );
        assert_eq!(
            refused("l.jsonl", b"{\"kind\":\"account\"}\n"),
            ["l.jsonl:1: missing field `value` at line 1 column 18"]
        );
    }

    #[test]
    fn a_tolerance_skips_and_reports_bad_lines() {
        let l =
            parse("l.csv", b"kind,value\naccount,1\nplanet,2\naccount,3\n", 1).expect("tolerated");
        assert_eq!(l.entries.len(), 2);
        assert_eq!(l.skipped.len(), 1);
        assert_eq!(l.skipped[0].line, 3);
        assert!(parse("l.csv", b"kind,value\nplanet,1\nplanet,2\n", 1).is_err());
    }
}

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

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::engine::blocklist::{
    EntryRef, Keyer, ListEntry, ListKind, Table, TableBuilder, TopicState,
};
use crate::engine::decision::Decision;
use crate::engine::{Blocklist, Engine};

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

/// A small file read and validated into owned entries (tools and tests;
/// the service builds a [`Table`] directly with [`build`]).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub entries: Vec<ListEntry>,
    /// Lines skipped under the tolerance (empty when none were allowed).
    pub skipped: Vec<BadLine>,
    pub by_kind: HashMap<&'static str, usize>,
}

/// Files read, validated and built into one table.
#[derive(Debug)]
pub struct Built {
    pub table: Table,
    pub keyer: Keyer,
    pub skipped: Vec<BadLine>,
}

impl Built {
    /// The list of these files alone, as `version`.
    pub fn into_list(self, version: u64) -> Blocklist {
        Blocklist::layered(
            version,
            self.keyer,
            Arc::new(self.table),
            Arc::new(Table::empty()),
            Arc::new(Table::empty()),
        )
    }
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

fn action(s: &str) -> Option<Decision> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("HOLD") {
        Some(Decision::Hold)
    } else if s.eq_ignore_ascii_case("REVIEW") {
        Some(Decision::Review)
    } else {
        None
    }
}

/// Fields of one line, before checks, borrowed from the file where they
/// can be (a CSV field with `""` inside, or a JSON string with escapes,
/// is owned).
#[derive(Debug, Default, serde::Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    value: Cow<'a, str>,
    #[serde(default, borrow)]
    action: Cow<'a, str>,
    #[serde(default, borrow)]
    reason: Cow<'a, str>,
    #[serde(default, borrow)]
    source: Cow<'a, str>,
    #[serde(default)]
    added_at_ms: Option<i64>,
    #[serde(default)]
    expires_at_ms: Option<i64>,
}

/// Default reasons, one per source ("listed by <source>"), so that lines
/// without a reason do not allocate one each.
#[derive(Default)]
struct DefaultReasons(HashMap<String, String>);

impl DefaultReasons {
    fn get(&mut self, source: &str) -> &str {
        if !self.0.contains_key(source) {
            self.0
                .insert(source.to_string(), format!("listed by {source}"));
        }
        self.0.get(source).map(String::as_str).unwrap_or("listed")
    }
}

/// Checks a raw line and hands the entry to `f`.
fn entry<R>(
    raw: &Raw<'_>,
    file_source: &str,
    reasons: &mut DefaultReasons,
    f: impl FnOnce(EntryRef<'_>) -> Result<R, String>,
) -> Result<R, String> {
    let kind = ListKind::parse(&raw.kind).ok_or_else(|| format!("unknown kind {:?}", raw.kind))?;
    let a = action(&raw.action)
        .ok_or_else(|| format!("action {:?} is not HOLD or REVIEW", raw.action))?;
    let value = raw.value.trim();
    if value.is_empty() {
        return Err("empty value".into());
    }
    for (name, v) in [
        ("added_at_ms", raw.added_at_ms),
        ("expires_at_ms", raw.expires_at_ms),
    ] {
        if v.is_some_and(|v| v < 0) {
            return Err(format!("{name} {} is negative", v.unwrap_or(0)));
        }
    }
    let source = match raw.source.trim() {
        "" => file_source,
        s => s,
    };
    let reason = match raw.reason.trim() {
        "" => reasons.get(source),
        r => r,
    };
    f(EntryRef {
        kind,
        value,
        reason,
        source,
        action: a,
        added_at_ms: raw.added_at_ms.filter(|v| *v > 0),
        expires_at_ms: raw.expires_at_ms.filter(|v| *v > 0),
    })
}

/// Splits one CSV line into `out`: commas, with double-quoted fields (""
/// inside a quoted field is a quote). Fields borrow from the line unless
/// they hold an escaped quote.
fn csv_fields<'a>(line: &'a str, out: &mut Vec<Cow<'a, str>>) -> Result<(), String> {
    out.clear();
    if !line.contains('"') {
        out.extend(line.split(',').map(Cow::Borrowed));
        return Ok(());
    }
    let b = line.as_bytes();
    let mut i = 0;
    loop {
        if b.get(i) == Some(&b'"') {
            // Quoted: up to the closing quote not followed by another.
            let mut owned: Option<String> = None;
            let start = i + 1;
            let mut j = start;
            loop {
                match b.get(j) {
                    None => return Err("unterminated quoted field".into()),
                    Some(b'"') if b.get(j + 1) == Some(&b'"') => {
                        let o = owned.get_or_insert_with(String::new);
                        if o.is_empty() {
                            o.push_str(&line[start..j]);
                        }
                        o.push('"');
                        j += 2;
                        // Copy on until the next quote.
                        let next = line[j..].find('"').map_or(line.len(), |k| j + k);
                        o.push_str(&line[j..next]);
                        j = next;
                    }
                    Some(b'"') => break,
                    Some(_) => j += 1,
                }
            }
            out.push(match owned {
                Some(o) => Cow::Owned(o),
                None => Cow::Borrowed(&line[start..j]),
            });
            // Text after the closing quote up to the comma is kept, as before.
            let rest_end = line[j + 1..].find(',').map_or(line.len(), |k| j + 1 + k);
            if rest_end > j + 1 {
                if let Some(last) = out.last_mut() {
                    last.to_mut().push_str(&line[j + 1..rest_end]);
                }
            }
            if rest_end >= line.len() {
                return Ok(());
            }
            i = rest_end + 1;
        } else {
            let end = line[i..].find(',').map_or(line.len(), |k| i + k);
            out.push(Cow::Borrowed(&line[i..end]));
            if end >= line.len() {
                return Ok(());
            }
            i = end + 1;
        }
    }
}

/// The CSV columns fraudline reads, by position in the header.
#[derive(Default)]
struct Columns {
    n: usize,
    kind: usize,
    value: usize,
    action: Option<usize>,
    reason: Option<usize>,
    source: Option<usize>,
    added_at_ms: Option<usize>,
    expires_at_ms: Option<usize>,
}

fn header(fields: &[Cow<'_, str>]) -> Option<Columns> {
    let pos = |name: &str| {
        fields
            .iter()
            .position(|f| f.trim().eq_ignore_ascii_case(name))
    };
    Some(Columns {
        n: fields.len(),
        kind: pos("kind")?,
        value: pos("value")?,
        action: pos("action"),
        reason: pos("reason"),
        source: pos("source"),
        added_at_ms: pos("added_at_ms"),
        expires_at_ms: pos("expires_at_ms"),
    })
}

fn ms_field(
    fields: &[Cow<'_, str>],
    col: Option<usize>,
    name: &str,
) -> Result<Option<i64>, String> {
    let Some(v) = col.and_then(|c| fields.get(c)) else {
        return Ok(None);
    };
    let t = v.trim();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse()
        .map(Some)
        .map_err(|_| format!("{name} {v:?} is not a number of ms"))
}

fn is_json(name: &str) -> bool {
    [".jsonl", ".ndjson", ".json"]
        .iter()
        .any(|e| name.ends_with(e))
}

/// Parses one file's bytes, handing each valid entry with its line number
/// to `sink` (whose error is the line's error) and collecting bad lines
/// into `bad`. Returns early, refused, for a half-written file or a bad
/// CSV header.
fn parse_with(
    name: &str,
    bytes: &[u8],
    bad: &mut Vec<BadLine>,
    mut sink: impl FnMut(u32, EntryRef<'_>) -> Result<(), String>,
) -> Result<(), BlocklistFileError> {
    let bad_line = |line: usize, message: String| BadLine {
        file: name.to_string(),
        line,
        message,
    };
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        let lines = memchr::memchr_iter(b'\n', bytes).count() + 1;
        return Err(BlocklistFileError::Refused(vec![bad_line(
            lines,
            "the last line has no newline: the file looks half-written".into(),
        )]));
    }
    let json = is_json(name);
    let mut reasons = DefaultReasons::default();
    let mut cols: Option<Columns> = None;
    let mut fields: Vec<Cow<'_, str>> = Vec::with_capacity(8);
    let mut start = 0usize;
    let mut n: usize = 0;
    for end in memchr::memchr_iter(b'\n', bytes) {
        let raw_line = &bytes[start..end];
        start = end + 1;
        n += 1;
        let Ok(line) = std::str::from_utf8(raw_line) else {
            bad.push(bad_line(n, "not UTF-8".into()));
            continue;
        };
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let line_no = u32::try_from(n).unwrap_or(u32::MAX);
        let result = if json {
            serde_json::from_str::<Raw<'_>>(line)
                .map_err(|e| e.to_string())
                .and_then(|raw| entry(&raw, name, &mut reasons, |e| sink(line_no, e)))
        } else if let Some(c) = &cols {
            csv_fields(line, &mut fields).and_then(|()| {
                if fields.len() != c.n {
                    return Err(format!("{} fields, the header has {}", fields.len(), c.n));
                }
                let get = |i: Option<usize>| -> Cow<'_, str> {
                    i.and_then(|i| fields.get(i))
                        .map(|f| Cow::Borrowed(f.as_ref()))
                        .unwrap_or_default()
                };
                let raw = Raw {
                    kind: get(Some(c.kind)),
                    value: get(Some(c.value)),
                    action: get(c.action),
                    reason: get(c.reason),
                    source: get(c.source),
                    added_at_ms: ms_field(&fields, c.added_at_ms, "added_at_ms")?,
                    expires_at_ms: ms_field(&fields, c.expires_at_ms, "expires_at_ms")?,
                };
                entry(&raw, name, &mut reasons, |e| sink(line_no, e))
            })
        } else {
            match csv_fields(line, &mut fields) {
                Ok(()) => match header(&fields) {
                    Some(h) => cols = Some(h),
                    None => {
                        return Err(BlocklistFileError::Refused(vec![bad_line(
                            n,
                            "the CSV header must name at least `kind` and `value`".into(),
                        )]))
                    }
                },
                Err(e) => bad.push(bad_line(n, e)),
            }
            continue;
        };
        if let Err(m) = result {
            bad.push(bad_line(n, m));
        }
    }
    Ok(())
}

/// The sink that builds a table: a key listed again within the file with
/// another action is the line's error.
fn table_sink<'b>(
    b: &'b mut TableBuilder,
    file_no: u16,
    mut also: impl FnMut(&EntryRef<'_>) + 'b,
) -> impl FnMut(u32, EntryRef<'_>) -> Result<(), String> + 'b {
    move |line, e| {
        b.insert(&e, file_no, line).map_err(|c| {
            format!(
                "{} {:?} is listed again with action {} (line {} says {})",
                e.kind.as_str(),
                e.value,
                e.action.as_str(),
                c.first_line,
                c.first_action.as_str()
            )
        })?;
        also(&e);
        Ok(())
    }
}

/// Parses file bytes into owned entries. `name` names the file in errors
/// and is the default `source` of its entries.
pub fn parse(name: &str, bytes: &[u8], max_bad_lines: usize) -> Result<Loaded, BlocklistFileError> {
    let mut bad = Vec::new();
    let mut entries: Vec<ListEntry> = Vec::new();
    let mut b = TableBuilder::new(Keyer::new(""), 16);
    parse_with(
        name,
        bytes,
        &mut bad,
        table_sink(&mut b, 0, |e| entries.push(e.to_entry())),
    )?;
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

/// Reads and parses a blocklist file into owned entries.
pub fn load(path: &Path, max_bad_lines: usize) -> Result<Loaded, BlocklistFileError> {
    let name = path.display().to_string();
    parse(&name, &read(path)?, max_bad_lines)
}

fn read(path: &Path) -> Result<Vec<u8>, BlocklistFileError> {
    std::fs::read(path).map_err(|source| BlocklistFileError::Io {
        file: path.display().to_string(),
        source,
    })
}

/// Reads every file, validates each whole (up to `max_bad_lines` bad lines
/// a file skipped and reported) and builds one table; a later file's entry
/// wins over an earlier one's for the same key. The table is sized from the
/// files' line count up front, so it is filled without a rehash.
pub fn build(
    files: &[PathBuf],
    max_bad_lines: usize,
    country_code: &str,
) -> Result<Built, BlocklistFileError> {
    build_paced(files, max_bad_lines, country_code, 1.0)
}

/// [`build`] using at most `duty` (0 < duty <= 1) of one core: it works in
/// slices of a few milliseconds and sleeps between them. A reload that runs
/// flat out fills the shared cache and memory bus with its writes and
/// slows the scoring threads; paced, it takes longer and they barely notice.
pub fn build_paced(
    files: &[PathBuf],
    max_bad_lines: usize,
    country_code: &str,
    duty: f64,
) -> Result<Built, BlocklistFileError> {
    let mut pace = Pace::new(duty);
    let mut contents = Vec::with_capacity(files.len());
    for f in files {
        contents.push((f.display().to_string(), read_paced(f, &mut pace)?));
    }
    build_with(&contents, max_bad_lines, country_code, &mut pace)
}

/// Work slices and the sleeps between them (see [`build_paced`]).
struct Pace {
    duty: f64,
    slice: std::time::Instant,
}

impl Pace {
    const SLICE: std::time::Duration = std::time::Duration::from_millis(2);

    fn new(duty: f64) -> Pace {
        Pace {
            duty: duty.clamp(0.01, 1.0),
            slice: std::time::Instant::now(),
        }
    }

    /// Called between small units of work: sleeps once a slice is used up.
    fn tick(&mut self) {
        if self.duty >= 1.0 {
            return;
        }
        let worked = self.slice.elapsed();
        if worked >= Self::SLICE {
            std::thread::sleep(worked.mul_f64((1.0 - self.duty) / self.duty));
            self.slice = std::time::Instant::now();
        }
    }
}

/// Reads a file in 4 MiB chunks, pacing between them.
fn read_paced(path: &Path, pace: &mut Pace) -> Result<Vec<u8>, BlocklistFileError> {
    use std::io::Read as _;
    let io = |source| BlocklistFileError::Io {
        file: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map(|m| m.len() as usize).unwrap_or(0);
    let mut out = Vec::with_capacity(len + 1);
    let mut chunk = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut chunk).map_err(io)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&chunk[..n]);
        pace.tick();
    }
}

/// Entries parsed before they are placed in the table together (see
/// [`TableBuilder::place_batch`]).
const BATCH: usize = 256;

/// Where a parsed entry's value is, for the message of a conflict found
/// when its batch is placed: a range of the file's bytes, or (a CSV field
/// with an escaped quote) its own copy.
enum ValueAt {
    Bytes(usize, usize),
    Owned(Box<str>),
}

impl ValueAt {
    fn of(value: &str, bytes: &[u8]) -> ValueAt {
        let start = (value.as_ptr() as usize).wrapping_sub(bytes.as_ptr() as usize);
        if start <= bytes.len() && value.len() <= bytes.len() - start {
            ValueAt::Bytes(start, value.len())
        } else {
            ValueAt::Owned(value.into())
        }
    }

    fn get<'a>(&'a self, bytes: &'a [u8]) -> std::borrow::Cow<'a, str> {
        match self {
            ValueAt::Bytes(s, n) => String::from_utf8_lossy(bytes.get(*s..*s + *n).unwrap_or(&[])),
            ValueAt::Owned(v) => Cow::Borrowed(v),
        }
    }
}

/// [`build`] over bytes already read: `(name, bytes)` per file.
pub fn build_from(
    files: &[(String, Vec<u8>)],
    max_bad_lines: usize,
    country_code: &str,
) -> Result<Built, BlocklistFileError> {
    build_with(files, max_bad_lines, country_code, &mut Pace::new(1.0))
}

fn build_with(
    files: &[(String, Vec<u8>)],
    max_bad_lines: usize,
    country_code: &str,
    pace: &mut Pace,
) -> Result<Built, BlocklistFileError> {
    use crate::engine::blocklist::Prepared;
    let lines: usize = files
        .iter()
        .map(|(_, b)| memchr::memchr_iter(b'\n', b).count())
        .sum();
    let keyer = Keyer::new(country_code);
    let mut b = TableBuilder::new(keyer.clone(), lines);
    let mut skipped = Vec::new();
    let mut batch: Vec<Prepared> = Vec::with_capacity(BATCH);
    let mut values: Vec<ValueAt> = Vec::with_capacity(BATCH);
    for (i, (name, bytes)) in files.iter().enumerate() {
        let mut bad = Vec::new();
        let mut conflicts = Vec::new();
        let file_no = u16::try_from(i).unwrap_or(u16::MAX - 1);
        let mut flush =
            |b: &mut TableBuilder, batch: &mut Vec<Prepared>, values: &mut Vec<ValueAt>| {
                b.place_batch(batch, |i, c| {
                    let (p, v) = (&batch[i], &values[i]);
                    conflicts.push(BadLine {
                        file: name.clone(),
                        line: p.line() as usize,
                        message: format!(
                            "{} {:?} is listed again with action {} (line {} says {})",
                            p.kind().as_str(),
                            v.get(bytes),
                            p.action().as_str(),
                            c.first_line,
                            c.first_action.as_str()
                        ),
                    });
                });
                batch.clear();
                values.clear();
            };
        parse_with(name, bytes, &mut bad, |line, e| {
            batch.push(b.prepare(&e, file_no, line));
            values.push(ValueAt::of(e.value, bytes));
            if batch.len() == BATCH {
                flush(&mut b, &mut batch, &mut values);
                pace.tick();
            }
            Ok(())
        })?;
        flush(&mut b, &mut batch, &mut values);
        bad.extend(conflicts);
        bad.sort_by_key(|l| l.line);
        if bad.len() > max_bad_lines {
            return Err(BlocklistFileError::Refused(bad));
        }
        skipped.extend(bad);
    }
    Ok(Built {
        table: b.finish(),
        keyer,
        skipped,
    })
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

/// What the list is built from: the file table and the topic's state.
struct State {
    files: Arc<Table>,
    topic: TopicState,
}

/// The blocklist's sources. A file change rebuilds the file table (read
/// and built aside, without the lock); a topic batch rebuilds the topic's
/// small delta table. Either publishes a new [`Blocklist`] over the current
/// tables, with a version that only grows.
pub struct Sources {
    engine: Arc<Engine>,
    files: Vec<PathBuf>,
    max_bad_lines: usize,
    country_code: String,
    state: Mutex<State>,
    version: AtomicU64,
    /// Share of a core a file reload may use (the first load: all of it).
    reload_duty: f64,
    files_loaded: std::sync::atomic::AtomicBool,
}

impl Sources {
    pub fn new(
        engine: Arc<Engine>,
        files: Vec<PathBuf>,
        max_bad_lines: usize,
        country_code: String,
    ) -> Sources {
        let keyer = Keyer::new(&country_code);
        Sources {
            engine,
            files,
            max_bad_lines,
            country_code,
            state: Mutex::new(State {
                files: Arc::new(Table::empty()),
                topic: TopicState::new(keyer),
            }),
            version: AtomicU64::new(0),
            reload_duty: 1.0,
            files_loaded: Default::default(),
        }
    }

    /// Paces file reloads after the first to `duty` of one core (see
    /// [`build_paced`]).
    pub fn with_reload_duty(mut self, duty: f64) -> Sources {
        self.reload_duty = duty;
        self
    }

    /// Reads the files; on success swaps the new file table in. A refused
    /// file leaves the active list in place.
    pub fn reload_files(&self) -> Result<(), BlocklistFileError> {
        let started = std::time::Instant::now();
        let first = !self.files_loaded.load(Ordering::SeqCst);
        let duty = if first { 1.0 } else { self.reload_duty };
        let built = match build_paced(&self.files, self.max_bad_lines, &self.country_code, duty) {
            Ok(b) => b,
            Err(e) => {
                metrics::counter!(crate::telemetry::BLOCKLIST_LOAD_FAILURES).increment(1);
                tracing::error!(error = %e, active_version = self.engine.blocklist().version(), "blocklist refused; the active list stays");
                return Err(e);
            }
        };
        for b in &built.skipped {
            tracing::warn!(line = %b, "blocklist line skipped (within max_bad_lines)");
        }
        let old = {
            let mut st = self.lock_state();
            let old = std::mem::replace(&mut st.files, Arc::new(built.table));
            self.files_loaded.store(true, Ordering::SeqCst);
            self.publish(&st, "files", started);
            old
        };
        retire(old);
        Ok(())
    }

    /// Applies topic records: `Some(entry)` lists, `None` removes.
    pub fn apply_topic(
        &self,
        updates: impl IntoIterator<Item = (ListKind, String, Option<ListEntry>)>,
    ) {
        let started = std::time::Instant::now();
        let mut st = self.lock_state();
        st.topic.apply(updates);
        self.publish(&st, "topic", started);
    }

    /// The tables' lock. A panic while it was held (in a publish) leaves
    /// the tables whole (each is replaced in one move), so the lock is
    /// taken back, and said loudly, rather than dropping every later
    /// reload with no trace (as an earlier build did).
    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| {
            tracing::error!(
                "blocklist tables' lock poisoned by an earlier panic; recovering it (the tables are whole)"
            );
            self.state.clear_poison();
            poisoned.into_inner()
        })
    }

    /// Publishes a list over the current tables with the next version.
    fn publish(&self, st: &State, cause: &str, started: std::time::Instant) {
        use crate::telemetry;
        let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        let (topic, delta) = st.topic.tables();
        let list = Blocklist::layered(
            version,
            Keyer::new(&self.country_code),
            st.files.clone(),
            topic,
            delta,
        );
        for (k, n) in list.counts() {
            metrics::gauge!(telemetry::BLOCKLIST_ENTRIES, "kind" => k).set(n as f64);
        }
        metrics::gauge!(telemetry::BLOCKLIST_VERSION).set(version as f64);
        metrics::gauge!(telemetry::BLOCKLIST_LOADED_AT).set(crate::now_ms() as f64 / 1000.0);
        tracing::info!(
            version,
            file_entries = st.files.len(),
            topic_entries = st.topic.len(),
            cause,
            seconds = started.elapsed().as_secs_f64(),
            "blocklist active"
        );
        self.engine.set_blocklist(list);
    }
}

/// Drops a replaced table here, on the reload thread, once no reader holds
/// it (bounded wait), so that freeing hundreds of megabytes never lands on
/// a scoring thread that happened to hold the last reference.
fn retire(t: Arc<Table>) {
    let started = std::time::Instant::now();
    while Arc::strong_count(&t) > 1 && started.elapsed() < std::time::Duration::from_secs(2) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    drop(t);
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
) -> Result<(ListKind, String, Option<ListEntry>), String> {
    use prost::Message as _;
    let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_string())?;
    // The first colon ends the kind: "account:VCB:123" and "ip:2001:db8::1"
    // keep theirs in the value.
    let (k, v) = key
        .split_once(':')
        // The key may be a bare account or phone: never quote it in clear.
        .ok_or_else(|| format!("key {:?} is not kind:value", crate::mask(key)))?;
    let kind = ListKind::parse(k).ok_or_else(|| format!("unknown kind {k:?}"))?;
    if v.trim().is_empty() {
        return Err(format!("key {key:?} has an empty value"));
    }
    let Some(bytes) = value.filter(|b| !b.is_empty()) else {
        return Ok((kind, v.to_string(), None));
    };
    let e = crate::proto::BlocklistEntry::decode(bytes).map_err(|e| e.to_string())?;
    if !e.kind.is_empty() && ListKind::parse(&e.kind) != Some(kind) {
        return Err(format!(
            "the entry's kind {:?} is not the key's {:?}",
            e.kind, k
        ));
    }
    let raw = Raw {
        kind: Cow::Borrowed(k),
        // The key names the entry: a value in the record that spells it
        // differently would be looked up under another key than removed.
        value: Cow::Borrowed(v),
        action: Cow::Owned(e.action),
        reason: Cow::Owned(e.reason),
        source: Cow::Owned(e.source),
        added_at_ms: (e.added_at_ms > 0).then_some(e.added_at_ms),
        expires_at_ms: (e.expires_at_ms > 0).then_some(e.expires_at_ms),
    };
    let entry = entry(&raw, topic, &mut DefaultReasons::default(), |e| {
        Ok(e.to_entry())
    })?;
    Ok((kind, v.to_string(), Some(entry)))
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
        let mut pending: Vec<(ListKind, String, Option<ListEntry>)> = Vec::new();
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

    #[test]
    fn a_poisoned_lock_does_not_drop_later_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.csv");
        std::fs::write(&path, "kind,value\naccount,111\n").unwrap();
        let engine = Arc::new(Engine::new(Default::default()));
        let sources = Arc::new(Sources::new(
            engine.clone(),
            vec![path.clone()],
            0,
            "84".into(),
        ));
        sources.reload_files().unwrap();
        assert_eq!(engine.blocklist().len(), 1);
        // A panic while the lock is held (as a publish could).
        let s = sources.clone();
        let _ = std::thread::spawn(move || {
            let _held = s.state.lock().unwrap();
            panic!("poisoning the lock on purpose");
        })
        .join();
        assert!(sources.state.is_poisoned());
        std::fs::write(&path, "kind,value\naccount,111\naccount,222\n").unwrap();
        sources.reload_files().unwrap();
        assert_eq!(
            engine.blocklist().len(),
            2,
            "the reload after the panic is active"
        );
    }

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

    #[test]
    fn source_added_at_and_quoted_fields_are_kept() {
        let csv = b"value,kind,source,added_at_ms,reason\n\
                    \"VCB:12,34\",account,national-scheme,1795000000000,\"said \"\"mule\"\"\"\n\
                    dev-1,device,,,\n";
        let l = parse("l.csv", csv, 0).expect("loads");
        assert_eq!(l.entries[0].value, "VCB:12,34");
        assert_eq!(l.entries[0].source, "national-scheme");
        assert_eq!(l.entries[0].added_at_ms, Some(1_795_000_000_000));
        assert_eq!(l.entries[0].reason, "said \"mule\"");
        assert_eq!(
            l.entries[1].source, "l.csv",
            "the file is the default source"
        );
        assert_eq!(l.entries[1].reason, "listed by l.csv");
        assert_eq!(
            refused(
                "l.csv",
                b"kind,value,expires_at_ms\nip,1.2.3.4,-5\nip,1.2.3.5,soon\nip,\"1.2.3.6\n"
            ),
            [
                "l.csv:2: expires_at_ms -5 is negative",
                "l.csv:3: expires_at_ms \"soon\" is not a number of ms",
                "l.csv:4: unterminated quoted field"
            ]
        );
        assert_eq!(
            refused("l.csv", b"kind,value\naccount,  \n"),
            ["l.csv:2: empty value"]
        );
        assert_eq!(
            refused("l.csv", b"kind,value\naccount,1,2\n"),
            ["l.csv:2: 3 fields, the header has 2"]
        );
    }

    #[test]
    fn files_build_one_table_where_a_later_file_wins() {
        let a = (
            "a.csv".to_string(),
            b"kind,value,action\nip,1.1.1.1,HOLD\nip,2.2.2.2,HOLD\n".to_vec(),
        );
        let b = (
            "b.jsonl".to_string(),
            b"{\"kind\":\"ip\",\"value\":\"1.1.1.1\",\"action\":\"REVIEW\"}\n".to_vec(),
        );
        let built = build_from(&[a, b], 0, "").expect("builds");
        assert_eq!(built.table.count(ListKind::Ip), 2);
        let list = built.into_list(3);
        assert_eq!(list.version(), 3);
        assert_eq!(
            list.lookup(ListKind::Ip, "1.1.1.1", 0).map(|e| e.action),
            Some(Decision::Review)
        );
        // A conflict found when a later batch is placed names both lines.
        let mut text = String::from("kind,value,action\n\"12-34\",account,HOLD\n");
        text = text.replace("\"12-34\",account", "account,\"12-34\"");
        for i in 0..600 {
            text.push_str(&format!("device,d{i},REVIEW\n"));
        }
        text.push_str("account,1234,REVIEW\nplanet,9,HOLD\n");
        let refused = build_from(&[("d.csv".to_string(), text.into_bytes())], 0, "")
            .map(|_| ())
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "blocklist refused, 2 bad line(s):\n\
             d.csv:603: account \"1234\" is listed again with action REVIEW (line 2 says HOLD)\n\
             d.csv:604: unknown kind \"planet\""
        );
        let bad = ("c.csv".to_string(), b"kind,value\nplanet,1\n".to_vec());
        assert!(matches!(
            build_from(&[bad], 0, ""),
            Err(BlocklistFileError::Refused(b)) if b[0].to_string() == "c.csv:2: unknown kind \"planet\""
        ));
    }

    #[test]
    fn topic_records_name_their_entry_by_key() {
        use prost::Message as _;
        let entry = crate::proto::BlocklistEntry {
            action: "REVIEW".into(),
            reason: "reported".into(),
            source: "scheme".into(),
            added_at_ms: 7,
            ..Default::default()
        };
        let (kind, value, e) =
            topic_update(b"account:VCB:12-34", Some(&entry.encode_to_vec()), "bl").expect("ok");
        let e = e.expect("listed");
        assert_eq!((kind, value.as_str()), (ListKind::Account, "VCB:12-34"));
        assert_eq!(
            (e.action, e.source.as_str(), e.added_at_ms),
            (Decision::Review, "scheme", Some(7))
        );
        let (_, _, removed) = topic_update(b"ip:2001:db8::1", None, "bl").expect("ok");
        assert!(removed.is_none(), "an empty value removes");
        assert_eq!(
            topic_update(b"planet:1", None, "bl").unwrap_err(),
            "unknown kind \"planet\""
        );
        assert_eq!(
            topic_update(b"0912345678", None, "bl").unwrap_err(),
            "key \"******5678\" is not kind:value"
        );
        let wrong = crate::proto::BlocklistEntry {
            kind: "phone".into(),
            ..Default::default()
        };
        assert!(
            topic_update(b"ip:1.2.3.4", Some(&wrong.encode_to_vec()), "bl")
                .unwrap_err()
                .contains("is not the key's")
        );
    }

    #[test]
    fn a_paced_build_reads_the_same_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l.csv");
        let mut text = String::from("kind,value,action\n");
        for i in 0..50_000 {
            text.push_str(&format!("device,d-{i},{}\n", ["HOLD", "REVIEW"][i % 2]));
        }
        std::fs::write(&path, text).expect("write");
        let files = [path];
        let flat = build(&files, 0, "").expect("flat out");
        let paced = build_paced(&files, 0, "", 0.2).expect("paced");
        assert_eq!(flat.table.count(ListKind::Device), 50_000);
        assert_eq!(paced.table.count(ListKind::Device), 50_000);
        let (a, b) = (flat.into_list(1), paced.into_list(1));
        for v in ["d-0", "d-1", "d-49999"] {
            assert_eq!(
                a.lookup(ListKind::Device, v, 0).map(|e| e.action),
                b.lookup(ListKind::Device, v, 0).map(|e| e.action)
            );
        }
    }
}

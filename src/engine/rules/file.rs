//! Rule files: the analysts' interface. One TOML file (comments allowed)
//! holds a version, the decision thresholds, optional settings and named
//! lists, the rules, and test cases for the rules:
//!
//! ```toml
//! version = "2026-11-24.1"
//!
//! [thresholds]
//! review = 40
//! hold = 80
//!
//! [settings]                 # optional; these are the defaults
//! utc_offset_minutes = 0     # local time for `hour`
//! home_country = ""          # for `cross_border`
//! round_unit_minor = 1000000 # for `round_amount`
//!
//! [lists]
//! high_risk_mcc = ["7995", "5967"]
//!
//! [[rule]]
//! id = "MULE_FAN_IN"
//! description = "A payee collecting from many payers it has never been paid by"
//! when = "payee.distinct_payers_10m >= 8 && amount >= 2_000_000 && payer.new_payee"
//! score = 60                 # or: decision = "HOLD" / "REVIEW" / "ALLOW" (forced)
//! reason = "Payee collects from many new payers"
//! mode = "active"            # or "shadow": evaluated and counted, never decides
//! tags = ["mule"]
//! owner = "fraud-ops"
//! max_hit_rate = 0.02        # breaker: demoted to shadow above 2 % of events over 5 min
//!
//! [[test]]
//! name = "a fan-in payment is held"
//! event = { event_id = "t1", event_time_ms = 1795526680451, amount_minor = 5000000, currency = "VND",
//!           payer = { account = "1" }, payee = { account = "2" } }
//! features = { "payee.distinct_payers_10m" = 9, "payer.new_payee" = 1 }
//! expect = "HOLD"
//! hits = ["MULE_FAN_IN"]
//! ```
//!
//! Loading refuses a bad file as a whole and lists every error as
//! `file:line:column: message`. A forced `ALLOW` whitelists a flow against
//! the score; a stronger forced decision (a blocklist HOLD, a HOLD rule)
//! still wins over it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::Deserialize;
use toml::Spanned;

use super::breaker::Breaker;
use super::expr::{self, Env};
use super::{Mode, Rule, RuleSet};
use crate::engine::decision::{Decision, Thresholds};
use crate::engine::features::catalogue::F;
use crate::event::{self, Format, Limits, Payment};

/// One problem in a rule file, where it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleFileError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for RuleFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Why a rule file was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read rule file {file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("rule file refused, {} error(s):\n{}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<RuleFileError>),
}

impl LoadError {
    /// Every error, located (an I/O error has line 0).
    pub fn errors(&self) -> Vec<RuleFileError> {
        match self {
            LoadError::Io { file, source } => vec![RuleFileError {
                file: file.clone(),
                line: 0,
                column: 0,
                message: format!("cannot read: {source}"),
            }],
            LoadError::Invalid(e) => e.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    version: Spanned<String>,
    thresholds: Spanned<RawThresholds>,
    #[serde(default)]
    settings: RawSettings,
    #[serde(default)]
    lists: HashMap<String, Vec<String>>,
    #[serde(default, rename = "rule")]
    rules: Vec<Spanned<RawRule>>,
    #[serde(default, rename = "test")]
    tests: Vec<Spanned<RawTest>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThresholds {
    review: i32,
    hold: i32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSettings {
    utc_offset_minutes: i32,
    home_country: String,
    round_unit_minor: i64,
}

impl Default for RawSettings {
    fn default() -> Self {
        let e = Env::default();
        RawSettings {
            utc_offset_minutes: e.utc_offset_minutes,
            home_country: e.home_country,
            round_unit_minor: e.round_unit_minor,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    #[serde(default)]
    description: String,
    when: Spanned<String>,
    score: Option<Spanned<i32>>,
    decision: Option<Spanned<String>>,
    reason: Spanned<String>,
    #[serde(default)]
    mode: Option<Spanned<String>>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    owner: String,
    max_hit_rate: Option<Spanned<f64>>,
    #[serde(default = "default_min_events")]
    breaker_min_events: u64,
}

fn default_min_events() -> u64 {
    1_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    name: String,
    event: Spanned<toml::Value>,
    #[serde(default)]
    features: BTreeMap<String, Spanned<f64>>,
    expect: Spanned<String>,
    #[serde(default)]
    hits: Vec<String>,
    /// Shadow hits expected (listed, never deciding).
    #[serde(default)]
    shadow_hits: Vec<String>,
}

/// A test case of the file, ready to run.
#[derive(Debug, Clone)]
pub struct RuleTest {
    pub name: String,
    pub line: usize,
    pub payment: Payment,
    /// Feature values given by the test; `None` computes them from the event
    /// alone (a fresh feature store).
    pub features: Option<Vec<(F, f64)>>,
    pub expect: Decision,
    pub hits: Vec<String>,
    pub shadow_hits: Vec<String>,
}

/// A loaded, compiled rule file.
#[derive(Debug)]
pub struct RuleFile {
    pub rules: RuleSet,
    pub tests: Vec<RuleTest>,
}

/// 1-based line and column of byte `offset` in `src`.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = src.get(..offset.min(src.len())).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

/// Where the text of a TOML string value starts, given the span of the value
/// (quotes included). Escapes inside a basic string shift later columns.
fn string_content_start(src: &str, span_start: usize) -> usize {
    let rest = src.get(span_start..).unwrap_or("");
    if rest.starts_with("\"\"\"") || rest.starts_with("'''") {
        let after = span_start + 3;
        let nl = src.get(after..).unwrap_or("");
        if nl.starts_with("\r\n") {
            after + 2
        } else if nl.starts_with('\n') {
            after + 1
        } else {
            after
        }
    } else {
        span_start + 1
    }
}

/// `sha256:<hex>` of `bytes`: the version of a rule file or a model, as
/// `sha256sum` prints it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(bytes);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The default rule pack (deploy/rules/default.toml), built into the binary
/// for the demo and as a starting point.
pub const DEFAULT_PACK: &str = include_str!("../../../deploy/rules/default.toml");

/// Compiles the built-in default pack.
pub fn default_pack() -> Result<RuleFile, LoadError> {
    compile("deploy/rules/default.toml (built in)", DEFAULT_PACK)
}

/// Compiles rule-file text; `name` is what errors call the file.
pub fn compile(name: &str, src: &str) -> Result<RuleFile, LoadError> {
    let mut errors = Vec::new();
    let err = |errors: &mut Vec<RuleFileError>, offset: usize, message: String| {
        let (line, column) = line_col(src, offset);
        errors.push(RuleFileError {
            file: name.to_string(),
            line,
            column,
            message,
        });
    };
    let raw: RawFile = match toml::from_str(src) {
        Ok(r) => r,
        Err(e) => {
            let at = e.span().map_or(0, |s| s.start);
            err(&mut errors, at, e.message().trim().to_string());
            return Err(LoadError::Invalid(errors));
        }
    };

    if raw.version.get_ref().trim().is_empty() {
        err(
            &mut errors,
            raw.version.span().start,
            "version must not be empty".into(),
        );
    }
    let t = raw.thresholds.get_ref();
    if t.review <= 0 {
        err(
            &mut errors,
            raw.thresholds.span().start,
            format!("thresholds.review must be positive, not {}", t.review),
        );
    }
    if t.hold < t.review {
        err(
            &mut errors,
            raw.thresholds.span().start,
            format!(
                "thresholds.hold ({}) must be at or above thresholds.review ({})",
                t.hold, t.review
            ),
        );
    }
    let env = Env {
        lists: raw.lists.clone(),
        utc_offset_minutes: raw.settings.utc_offset_minutes,
        home_country: raw.settings.home_country.clone(),
        round_unit_minor: raw.settings.round_unit_minor,
    };
    if env.round_unit_minor <= 0 {
        err(
            &mut errors,
            0,
            "settings.round_unit_minor must be positive".into(),
        );
    }

    let mut seen = HashSet::new();
    let mut rules = Vec::new();
    for r in &raw.rules {
        let r = r.get_ref();
        let id = r.id.get_ref().trim();
        let id_at = string_content_start(src, r.id.span().start);
        if id.is_empty()
            || id
                .chars()
                .any(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-'))
        {
            err(
                &mut errors,
                id_at,
                format!("rule id {id:?} must be letters, digits, `_`, `.` or `-`"),
            );
        }
        if !seen.insert(id.to_string()) {
            err(&mut errors, id_at, format!("duplicate rule id {id:?}"));
        }
        let mode = match r.mode.as_ref().map(|m| m.get_ref().as_str()) {
            None | Some("active") => Mode::Active,
            Some("shadow") => Mode::Shadow,
            Some(other) => {
                err(
                    &mut errors,
                    r.mode.as_ref().map_or(0, |m| m.span().start),
                    format!("rule {id}: mode {other:?} is not \"active\" or \"shadow\""),
                );
                Mode::Active
            }
        };
        let force = match &r.decision {
            None => None,
            Some(d) => match d.get_ref().to_ascii_uppercase().as_str() {
                "HOLD" => Some(Decision::Hold),
                "REVIEW" => Some(Decision::Review),
                "ALLOW" => Some(Decision::Allow),
                other => {
                    err(
                        &mut errors,
                        d.span().start,
                        format!("rule {id}: decision {other:?} is not HOLD, REVIEW or ALLOW"),
                    );
                    None
                }
            },
        };
        let score = match (&r.score, &r.decision) {
            (Some(s), None) => {
                let v = *s.get_ref();
                if !(-1000..=1000).contains(&v) {
                    err(
                        &mut errors,
                        s.span().start,
                        format!("rule {id}: score {v} is outside -1000..=1000"),
                    );
                }
                v
            }
            (None, Some(_)) => 0,
            (Some(s), Some(_)) => {
                err(
                    &mut errors,
                    s.span().start,
                    format!("rule {id}: give a score or a decision, not both"),
                );
                0
            }
            (None, None) => {
                err(
                    &mut errors,
                    id_at,
                    format!("rule {id}: needs a score or a decision"),
                );
                0
            }
        };
        if r.reason.get_ref().trim().is_empty() {
            err(
                &mut errors,
                r.reason.span().start,
                format!("rule {id}: reason must not be empty"),
            );
        }
        let breaker = match &r.max_hit_rate {
            Some(m) => {
                let v = *m.get_ref();
                if !(v > 0.0 && v <= 1.0) {
                    err(
                        &mut errors,
                        m.span().start,
                        format!("rule {id}: max_hit_rate {v} is not within (0, 1]"),
                    );
                }
                Some(Breaker::new(v, r.breaker_min_events.max(1)))
            }
            None => None,
        };
        let when_at = string_content_start(src, r.when.span().start);
        match expr::compile(r.when.get_ref(), &env) {
            Ok(cond) => {
                let mut rule =
                    Rule::new(id, r.reason.get_ref(), score, mode, move |c| cond.eval(c));
                rule.force = force;
                rule.description = r.description.clone();
                rule.tags = r.tags.clone();
                rule.owner = r.owner.clone();
                rule.when = r.when.get_ref().clone();
                rule.breaker = breaker;
                rules.push(rule);
            }
            Err(es) => {
                for e in es {
                    // Offsets inside the condition map onto the file when
                    // the condition is on one line or in a multi-line
                    // string (both keep its bytes in place).
                    err(
                        &mut errors,
                        when_at + e.span.start,
                        format!("rule {id}: {}", e.message),
                    );
                }
            }
        }
    }

    let mut tests = Vec::new();
    for t in &raw.tests {
        let at = t.span().start;
        let t = t.get_ref();
        let (line, _) = line_col(src, at);
        let json = match serde_json::to_vec(t.event.get_ref()) {
            Ok(j) => j,
            Err(e) => {
                err(
                    &mut errors,
                    t.event.span().start,
                    format!("test {:?}: event: {e}", t.name),
                );
                continue;
            }
        };
        let payment =
            match event::decode(&json, Some(Format::Json), &Limits::default(), i64::MAX / 2) {
                Ok(p) => p,
                Err(e) => {
                    err(
                        &mut errors,
                        t.event.span().start,
                        format!("test {:?}: event is not a valid payment: {e}", t.name),
                    );
                    continue;
                }
            };
        let features = if t.features.is_empty() {
            None
        } else {
            let mut fs = Vec::new();
            for (k, v) in &t.features {
                match F::by_name(k) {
                    Some(f) => fs.push((f, *v.get_ref())),
                    None => err(
                        &mut errors,
                        v.span().start,
                        format!("test {:?}: unknown feature {k:?}", t.name),
                    ),
                }
            }
            Some(fs)
        };
        let expect = match t.expect.get_ref().to_ascii_uppercase().as_str() {
            "HOLD" => Decision::Hold,
            "REVIEW" => Decision::Review,
            "ALLOW" => Decision::Allow,
            other => {
                err(
                    &mut errors,
                    t.expect.span().start,
                    format!(
                        "test {:?}: expect {other:?} is not HOLD, REVIEW or ALLOW",
                        t.name
                    ),
                );
                continue;
            }
        };
        for h in t.hits.iter().chain(&t.shadow_hits) {
            if !seen.contains(h) && !h.starts_with("BLOCKLIST_") {
                err(
                    &mut errors,
                    at,
                    format!(
                        "test {:?}: expects a hit of {h:?}, which is not a rule of this file",
                        t.name
                    ),
                );
            }
        }
        tests.push(RuleTest {
            name: t.name.clone(),
            line,
            payment,
            features,
            expect,
            hits: t.hits.clone(),
            shadow_hits: t.shadow_hits.clone(),
        });
    }

    if !errors.is_empty() {
        errors.sort_by_key(|e| (e.line, e.column));
        return Err(LoadError::Invalid(errors));
    }
    let thresholds = Thresholds {
        review: t.review,
        hold: t.hold,
    };
    Ok(RuleFile {
        rules: RuleSet::new(
            raw.version.get_ref().trim(),
            &sha256_hex(src.as_bytes()),
            thresholds,
            rules,
        ),
        tests,
    })
}

/// What one rule test did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TestOutcome {
    pub name: String,
    pub line: usize,
    pub passed: bool,
    pub decision: Decision,
    pub hits: Vec<String>,
    pub shadow_hits: Vec<String>,
    /// Why it failed, empty when it passed.
    pub problems: Vec<String>,
}

/// Runs the file's tests: each event alone, with the test's feature values
/// (or those a fresh feature store computes for it), no blocklist.
pub fn run_tests(file: &RuleFile) -> Vec<TestOutcome> {
    use crate::engine::features::{FeatureConfig, FeatureStore, FeatureVector};
    file.tests
        .iter()
        .map(|t| {
            let fv = match &t.features {
                Some(fs) => {
                    let mut fv = FeatureVector::default();
                    for (f, v) in fs {
                        fv.set(*f, *v);
                    }
                    fv
                }
                None => FeatureStore::new(FeatureConfig::default()).update_and_read(&t.payment),
            };
            let list = crate::engine::Blocklist::empty();
            let v =
                crate::engine::decide(&t.payment, fv, &file.rules, &list, t.payment.event_time_ms);
            let hits: Vec<String> = v.reasons.iter().map(|r| r.rule_id.to_string()).collect();
            let shadow: Vec<String> = v
                .shadow_hits
                .iter()
                .map(|r| r.rule_id.to_string())
                .collect();
            let mut problems = Vec::new();
            if v.decision != t.expect {
                problems.push(format!(
                    "decision {} (score {}), expected {}",
                    v.decision.as_str(),
                    v.score,
                    t.expect.as_str()
                ));
            }
            let sorted = |v: &[String]| {
                let mut v = v.to_vec();
                v.sort();
                v
            };
            if sorted(&hits) != sorted(&t.hits) {
                problems.push(format!("hits {hits:?}, expected {:?}", t.hits));
            }
            if sorted(&shadow) != sorted(&t.shadow_hits) {
                problems.push(format!(
                    "shadow hits {shadow:?}, expected {:?}",
                    t.shadow_hits
                ));
            }
            TestOutcome {
                name: t.name.clone(),
                line: t.line,
                passed: problems.is_empty(),
                decision: v.decision,
                hits,
                shadow_hits: shadow,
                problems,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;

//! `fraudline backtest`: replay historical events through the engine offline
//! (the service's own [`Engine`], built from the service's config file when
//! one is given: the `[features]` and `[engine]` sections, its rule file and
//! blocklist files; in event-time order, each scored at its event time) with
//! a rule file, and
//! report decisions, hits per rule and, where events carry a fraud `label`
//! (`gen` output does; anything not starting with `legit` is fraud), precision, recall and
//! F1 overall and per rule, and the money held that was fraud or not. With
//! a baseline rule file, both run over the same features and the verdicts
//! that changed are listed with the rules that made the difference.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::engine::blocklist::Blocklist;
use crate::engine::decision::{Decision, Verdict};
use crate::engine::rules::file;
use crate::engine::Engine;
use crate::event::{self, JsonEvent, Limits, Payment};

#[derive(Debug, Clone)]
pub struct Options {
    /// The service's configuration (`Config::load` of its file): the
    /// engine, features and limits it scores with, and the rule file and
    /// blocklist files it loads unless `rules` / `blocklist` say otherwise.
    /// `None`: the defaults.
    pub config: Option<crate::config::Config>,
    /// The rule file; `None`: the config's `rules.file`, or the service's
    /// built-in rules when that is empty too.
    pub rules: Option<PathBuf>,
    pub baseline: Option<PathBuf>,
    /// A LightGBM model for `model.score` (default: the config's model.file).
    pub model: Option<PathBuf>,
    /// A model scored in shadow beside it (default: the config's
    /// model.shadow_file): reported, never read by the rules.
    pub shadow_model: Option<PathBuf>,
    pub events: PathBuf,
    pub blocklist: Option<PathBuf>,
    pub verdicts_out: Option<PathBuf>,
    /// Write every event's features and its label here (CSV with a header:
    /// event_id, label, fraud, then every feature of the catalogue by name;
    /// an absent feature is an empty cell), for training a model.
    pub features_out: Option<PathBuf>,
    /// Progress on stderr every second.
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Rules(#[from] file::LoadError),
    #[error(transparent)]
    Blocklist(#[from] crate::reload::blocklist::BlocklistFileError),
    #[error(transparent)]
    Currencies(#[from] crate::engine::currencies::CurrencyError),
    #[error(transparent)]
    Model(#[from] crate::engine::model::ModelError),
}

/// Precision, recall and F1 of a predictor against the labels.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Quality {
    pub true_positives: u64,
    pub false_positives: u64,
    pub false_negatives: u64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl Quality {
    fn finish(mut self) -> Quality {
        let tp = self.true_positives as f64;
        let p = tp + self.false_positives as f64;
        let a = tp + self.false_negatives as f64;
        self.precision = if p > 0.0 { tp / p } else { 0.0 };
        self.recall = if a > 0.0 { tp / a } else { 0.0 };
        self.f1 = if self.precision + self.recall > 0.0 {
            2.0 * self.precision * self.recall / (self.precision + self.recall)
        } else {
            0.0
        };
        self
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RuleReport {
    pub rule_id: String,
    pub mode: String,
    pub hits: u64,
    /// The rule's hits as a fraud predictor (labelled events only).
    pub quality: Option<Quality>,
    /// Hits where no other active rule hit the same event.
    pub unique_hits: u64,
    /// The active rule that hit the same events most often, and how often.
    pub overlaps_most_with: Option<(String, u64)>,
}

/// How well a model's score ranks the labelled events (the active model's
/// and the shadow model's, side by side: the evidence for promoting one).
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    /// "active" (model.score, read by the rules) or "shadow".
    pub role: &'static str,
    pub version: String,
    /// Area under the precision-recall curve of the score as a fraud
    /// ranking (average precision; 1 is perfect, the fraud share is
    /// chance).
    pub average_precision: f64,
    /// "Flag when the score is at least the cut", at a few cuts.
    pub cuts: Vec<(f64, Quality)>,
    /// The highest recall at precision >= 0.90, and the lowest cut giving it.
    pub recall_at_precision_90: Option<(f64, f64)>,
}

impl ModelReport {
    fn new(role: &'static str, version: String, mut scored: Vec<(f64, bool)>) -> ModelReport {
        let fraud = scored.iter().filter(|(_, f)| *f).count() as u64;
        let cuts = [0.3, 0.5, 0.7, 0.9]
            .iter()
            .map(|&cut| {
                let mut q = Quality::default();
                for &(s, f) in &scored {
                    match (s >= cut, f) {
                        (true, true) => q.true_positives += 1,
                        (true, false) => q.false_positives += 1,
                        (false, true) => q.false_negatives += 1,
                        (false, false) => {}
                    }
                }
                (cut, q.finish())
            })
            .collect();
        // Highest score first; ties are taken together (one cut).
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        let (mut tp, mut n, mut ap, mut best) = (0u64, 0u64, 0.0, None);
        let mut i = 0;
        while i < scored.len() {
            let cut = scored[i].0;
            let before = tp;
            while i < scored.len() && scored[i].0 == cut {
                tp += u64::from(scored[i].1);
                n += 1;
                i += 1;
            }
            let precision = tp as f64 / n as f64;
            if fraud > 0 {
                ap += (tp - before) as f64 / fraud as f64 * precision;
                if precision >= 0.90 {
                    best = Some((tp as f64 / fraud as f64, cut));
                }
            }
        }
        ModelReport {
            role,
            version,
            average_precision: ap,
            cuts,
            recall_at_precision_90: best,
        }
    }
}

/// Labelled events by score, for curves over the thresholds: per score, the
/// fraud and legit events whose decision the score alone sets (no forcing
/// rule or list hit), and apart those a forcing rule or list hit flagged.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scores {
    /// The rule set's thresholds in this run.
    pub review: i32,
    pub hold: i32,
    /// score -> (fraud, legit), events not forced to REVIEW or HOLD.
    pub unforced_flag: BTreeMap<i32, (u64, u64)>,
    /// (fraud, legit) forced to REVIEW or HOLD whatever the score.
    pub forced_flag: (u64, u64),
    /// score -> (fraud, legit), events not forced to HOLD.
    pub unforced_hold: BTreeMap<i32, (u64, u64)>,
    /// (fraud, legit) forced to HOLD whatever the score.
    pub forced_hold: (u64, u64),
}

/// One point of a precision / recall curve: what a threshold would give.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct CurvePoint {
    pub threshold: i32,
    pub precision: f64,
    pub recall: f64,
    pub flagged: u64,
}

impl Scores {
    fn add(&mut self, v: &Verdict, fraud: bool) {
        let forced = v.forced.unwrap_or(Decision::Allow);
        let bump = |m: &mut BTreeMap<i32, (u64, u64)>| {
            let e = m.entry(v.score).or_default();
            if fraud {
                e.0 += 1
            } else {
                e.1 += 1
            }
        };
        let count = |c: &mut (u64, u64)| {
            if fraud {
                c.0 += 1
            } else {
                c.1 += 1
            }
        };
        if forced >= Decision::Review {
            count(&mut self.forced_flag);
        } else {
            bump(&mut self.unforced_flag);
        }
        if forced == Decision::Hold {
            count(&mut self.forced_hold);
        } else {
            bump(&mut self.unforced_hold);
        }
    }

    /// Precision and recall of "flagged" (`hold` false: REVIEW or HOLD; true:
    /// HOLD) at every threshold from the lowest score seen to one past the
    /// highest, the forced events flagged at any threshold.
    pub fn curve(&self, hold: bool) -> Vec<CurvePoint> {
        let (by_score, forced) = if hold {
            (&self.unforced_hold, self.forced_hold)
        } else {
            (&self.unforced_flag, self.forced_flag)
        };
        let fraud_total = forced.0 + by_score.values().map(|c| c.0).sum::<u64>();
        let (Some(lo), Some(hi)) = (by_score.keys().next(), by_score.keys().next_back()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        // From the top down: the events at or above the threshold.
        let (mut tp, mut fp) = forced;
        let mut at = by_score.iter().rev().peekable();
        for t in (*lo..=hi.saturating_add(1)).rev() {
            while let Some((s, c)) = at.peek() {
                if **s >= t {
                    tp += c.0;
                    fp += c.1;
                    at.next();
                } else {
                    break;
                }
            }
            out.push(CurvePoint {
                threshold: t,
                precision: if tp + fp > 0 {
                    tp as f64 / (tp + fp) as f64
                } else {
                    1.0
                },
                recall: if fraud_total > 0 {
                    tp as f64 / fraud_total as f64
                } else {
                    0.0
                },
                flagged: tp + fp,
            });
        }
        out.reverse();
        out
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Money {
    /// Minor units held (HOLD) on fraud-labelled events, per currency.
    pub held_fraud: BTreeMap<String, i64>,
    /// Minor units held on events labelled legit.
    pub held_legit: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Changed {
    pub event_id: String,
    pub baseline: Decision,
    pub now: Decision,
    pub rules_added: Vec<String>,
    pub rules_removed: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub rules_version: String,
    pub events: u64,
    pub refused: u64,
    pub refused_examples: Vec<String>,
    pub labelled: u64,
    pub fraud: u64,
    pub decisions: BTreeMap<Decision, u64>,
    pub rules: Vec<RuleReport>,
    /// Flagged (REVIEW or HOLD) as the fraud predictor.
    pub overall: Option<Quality>,
    pub by_label: BTreeMap<String, (u64, u64)>,
    pub money: Money,
    /// Labelled events by score (curves over the thresholds).
    pub scores: Scores,
    pub baseline_version: Option<String>,
    pub changed: u64,
    pub transitions: BTreeMap<String, u64>,
    pub changed_examples: Vec<Changed>,
    /// The active and the shadow model's ranking of the labelled events.
    pub models: Vec<ModelReport>,
    pub seconds: f64,
}

fn open(path: &Path) -> Result<Box<dyn BufRead>, BacktestError> {
    let f = std::fs::File::open(path).map_err(|source| BacktestError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let r: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else {
        Box::new(f)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 20, r)))
}

/// A blocklist file for the replay, in the service's formats (CSV with a
/// header, or JSON lines; see `reload::blocklist`), validated the same way.
pub fn load_blocklist(path: &Path) -> Result<Blocklist, BacktestError> {
    Ok(crate::reload::blocklist::build(&[path.to_path_buf()], 0, "")?.into_list(1))
}

/// A label marks fraud unless it is `legit` or starts with it (`gen`'s
/// look-alikes: `legit_new_shop`, `legit_landlord`...).
pub fn is_fraud(label: &str) -> bool {
    crate::tools::gen::is_fraud_label(label)
}

/// What a replay runs over: the service's engine with the rules and list
/// loaded, the baseline rule set, and the events read and sorted by event
/// time (labels beside them).
pub(crate) struct Prepared {
    pub engine: Engine,
    pub baseline: Option<crate::engine::rules::RuleSet>,
    pub events: Vec<(Payment, Option<String>)>,
    pub refused: u64,
    pub refused_examples: Vec<String>,
}

/// Builds the engine from the config (or the defaults), loads the rules and
/// the list, and reads the events; `backtest` and `tune` replay the result.
pub(crate) fn prepare(opts: &Options) -> Result<Prepared, BacktestError> {
    let defaults;
    let cfg = match &opts.config {
        Some(c) => c,
        None => {
            defaults = crate::config::Config::from_parts(None, None, [])
                .expect("the embedded defaults are valid");
            &defaults
        }
    };
    // The service's engine: the same feature store settings, thresholds and
    // built-in rules, so a verdict here is the stream's verdict.
    let engine = Engine::new(cfg.engine());
    let rule_file = opts
        .rules
        .clone()
        .or_else(|| (!cfg.rules.file.is_empty()).then(|| PathBuf::from(&cfg.rules.file)));
    if let Some(path) = &rule_file {
        engine.set_rules(crate::reload::rules::load_file(path)?.rules);
    }
    let model_file = opts
        .model
        .clone()
        .or_else(|| (!cfg.model.file.is_empty()).then(|| PathBuf::from(&cfg.model.file)));
    if let Some(path) = &model_file {
        engine.set_model(Some(crate::reload::model::load_file(path)?));
    }
    let shadow_file = opts.shadow_model.clone().or_else(|| {
        (!cfg.model.shadow_file.is_empty()).then(|| PathBuf::from(&cfg.model.shadow_file))
    });
    if let Some(path) = &shadow_file {
        engine.set_shadow_model(Some(crate::reload::model::load_file(path)?));
    }
    if !cfg.currencies.file.is_empty() {
        engine.set_currencies(crate::reload::currencies::load_file(Path::new(
            &cfg.currencies.file,
        ))?);
    }
    let baseline = match &opts.baseline {
        Some(b) => Some(crate::reload::rules::load_file(b)?.rules),
        None => None,
    };
    let list = match &opts.blocklist {
        Some(b) => load_blocklist(b)?,
        None if !cfg.blocklist.files.is_empty() => {
            let files: Vec<PathBuf> = cfg.blocklist.files.iter().map(PathBuf::from).collect();
            crate::reload::blocklist::build(
                &files,
                cfg.blocklist.max_bad_lines,
                &cfg.blocklist.country_code,
            )?
            .into_list(1)
        }
        None => Blocklist::empty(),
    };
    engine.set_blocklist(list);
    let (mut refused, mut refused_examples) = (0u64, Vec::new());

    // Read everything, then replay in event-time order.
    let limits = if opts.config.is_some() {
        cfg.limits()
    } else {
        Limits::default()
    };
    // History has no "future": the event-time skew check is for live input.
    let now = i64::MAX / 4;
    let mut events: Vec<(Payment, Option<String>)> = Vec::new();
    let name = opts.events.display().to_string();
    for (i, line) in open(&opts.events)?.lines().enumerate() {
        let line = line.map_err(|source| BacktestError::Io {
            path: name.clone(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<JsonEvent>(&line)
            .map_err(|e| event::DecodeError::Json(e.to_string()))
            .and_then(|ev| {
                let label = ev.label.clone();
                let wire = ev.into_wire()?;
                event::validate(wire, &limits, now).map(|p| (p, label))
            });
        match parsed {
            Ok(x) => events.push(x),
            Err(e) => {
                refused += 1;
                if refused_examples.len() < 5 {
                    refused_examples.push(format!("{name}:{}: {e}", i + 1));
                }
            }
        }
    }
    events.sort_by_key(|(p, _)| p.event_time_ms);
    Ok(Prepared {
        engine,
        baseline,
        events,
        refused,
        refused_examples,
    })
}

/// Runs the backtest; writes verdict lines to `opts.verdicts_out` if given.
pub fn run(opts: &Options) -> Result<Report, BacktestError> {
    let started = Instant::now();
    let Prepared {
        engine,
        baseline,
        events,
        refused,
        refused_examples,
    } = prepare(opts)?;
    let rules = engine.rules();
    let list = engine.blocklist();
    let mut report = Report {
        rules_version: rules.version.to_string(),
        baseline_version: baseline.as_ref().map(|b| b.version.to_string()),
        refused,
        refused_examples,
        ..Report::default()
    };

    let create = |p: &PathBuf| {
        std::fs::File::create(p)
            .map(std::io::BufWriter::new)
            .map_err(|source| BacktestError::Io {
                path: p.display().to_string(),
                source,
            })
    };
    let mut out = opts.verdicts_out.as_ref().map(create).transpose()?;
    let mut features_out = opts.features_out.as_ref().map(create).transpose()?;
    if let Some(w) = features_out.as_mut() {
        // Training data: every feature but the model's own output.
        let names: Vec<&str> = crate::engine::features::catalogue::CATALOGUE
            .iter()
            .map(|f| f.name)
            .filter(|n| *n != "model.score")
            .collect();
        writeln!(w, "event_id,label,fraud,{}", names.join(",")).map_err(|source| {
            BacktestError::Io {
                path: "features-out".into(),
                source,
            }
        })?;
    }
    let mut per_rule: Vec<(u64, Quality)> = vec![(0, Quality::default()); rules.rules.len()];
    let index: BTreeMap<&str, usize> = rules
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| (&*r.id, i))
        .collect();
    let mut overall = Quality::default();
    let n_rules = rules.rules.len();
    // co[i * n + j]: events both active rules i and j hit.
    let mut co = vec![0u64; n_rules * n_rules];
    let mut unique = vec![0u64; n_rules];
    let active: Vec<bool> = rules
        .rules
        .iter()
        .map(|r| r.mode == crate::engine::rules::Mode::Active)
        .collect();
    report.scores.review = rules.thresholds.review;
    report.scores.hold = rules.thresholds.hold;
    let total = events.len();
    let mut last_progress = Instant::now();
    let (mut active_scores, mut shadow_scores) = (Vec::new(), Vec::new());
    for (n, (p, label)) in events.iter().enumerate() {
        // Scored as the stream scores it, at the time it happened.
        let v = engine.score_at(p, p.event_time_ms);
        report.events += 1;
        *report.decisions.entry(v.decision).or_default() += 1;
        let fraud = label.as_deref().map(is_fraud);
        let mut hit = vec![false; rules.rules.len()];
        for r in v.reasons.iter().chain(v.shadow_hits.iter()) {
            if let Some(&i) = index.get(&*r.rule_id) {
                hit[i] = true;
            }
        }
        let active_hits: Vec<usize> = (0..n_rules).filter(|i| hit[*i] && active[*i]).collect();
        if let [only] = active_hits[..] {
            unique[only] += 1;
        }
        for &i in &active_hits {
            for &j in &active_hits {
                if i != j {
                    co[i * n_rules + j] += 1;
                }
            }
        }
        for (i, h) in hit.iter().enumerate() {
            if *h {
                per_rule[i].0 += 1;
            }
            if let Some(f) = fraud {
                let q = &mut per_rule[i].1;
                match (*h, f) {
                    (true, true) => q.true_positives += 1,
                    (true, false) => q.false_positives += 1,
                    (false, true) => q.false_negatives += 1,
                    (false, false) => {}
                }
            }
        }
        if let (Some(f), Some(l)) = (fraud, label) {
            if let Some(s) = v.model_score() {
                active_scores.push((s, f));
            }
            if let Some(s) = v.shadow_score() {
                shadow_scores.push((s, f));
            }
            report.scores.add(&v, f);
            report.labelled += 1;
            report.fraud += u64::from(f);
            let flagged = v.decision != Decision::Allow;
            let e = report.by_label.entry(l.clone()).or_default();
            e.0 += u64::from(flagged);
            e.1 += 1;
            match (flagged, f) {
                (true, true) => overall.true_positives += 1,
                (true, false) => overall.false_positives += 1,
                (false, true) => overall.false_negatives += 1,
                (false, false) => {}
            }
            if v.decision == Decision::Hold {
                let m = if f {
                    &mut report.money.held_fraud
                } else {
                    &mut report.money.held_legit
                };
                *m.entry(p.currency.as_str().to_string()).or_default() += p.amount_minor;
            }
        }
        if let Some(base) = &baseline {
            let b = crate::engine::decide(p, v.features, base, &list, p.event_time_ms);
            diff(&mut report, p, &b, &v);
        }
        if let Some(w) = features_out.as_mut() {
            write_features(w, p, label.as_deref(), &v.features).map_err(|source| {
                BacktestError::Io {
                    path: "features-out".into(),
                    source,
                }
            })?;
        }
        if let Some(w) = out.as_mut() {
            let line = serde_json::json!({
                "event_id": p.event_id,
                "decision": v.decision,
                "score": v.score,
                "reasons": v.reasons.iter().map(|r| &*r.rule_id).collect::<Vec<_>>(),
                "shadow_hits": v.shadow_hits.iter().map(|r| &*r.rule_id).collect::<Vec<_>>(),
                "model_score": v.model_score(),
                "shadow_model_score": v.shadow_score(),
            });
            writeln!(w, "{line}").map_err(|source| BacktestError::Io {
                path: "verdicts-out".into(),
                source,
            })?;
        }
        if opts.progress && last_progress.elapsed().as_secs() >= 1 {
            eprint!(
                "\rbacktest: {}/{} events ({:.0}%)",
                n + 1,
                total,
                (n + 1) as f64 * 100.0 / total.max(1) as f64
            );
            last_progress = Instant::now();
        }
    }
    if opts.progress {
        eprintln!("\rbacktest: {total}/{total} events (100%)");
    }
    for w in out.iter_mut().chain(features_out.iter_mut()) {
        w.flush().map_err(|source| BacktestError::Io {
            path: "verdicts-out / features-out".into(),
            source,
        })?;
    }
    let labelled = report.labelled > 0;
    report.overall = labelled.then(|| overall.finish());
    for (role, model, scored) in [
        ("active", engine.model(), active_scores),
        ("shadow", engine.shadow_model(), shadow_scores),
    ] {
        if let Some(m) = model.filter(|_| labelled) {
            report
                .models
                .push(ModelReport::new(role, m.version.to_string(), scored));
        }
    }
    report.rules = rules
        .rules
        .iter()
        .zip(per_rule)
        .enumerate()
        .map(|(i, (r, (hits, q)))| RuleReport {
            unique_hits: unique[i],
            overlaps_most_with: (0..n_rules)
                .filter(|j| co[i * n_rules + j] > 0)
                .max_by_key(|j| co[i * n_rules + j])
                .map(|j| (rules.rules[j].id.to_string(), co[i * n_rules + j])),
            rule_id: r.id.to_string(),
            mode: match r.mode {
                crate::engine::rules::Mode::Active => "active".into(),
                crate::engine::rules::Mode::Shadow => "shadow".into(),
            },
            hits,
            quality: labelled.then(|| q.finish()),
        })
        .collect();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// One CSV row of `--features-out`. Event ids and labels are the CSV's
/// only text: quoted when they hold a comma, a quote or a line break.
fn write_features(
    w: &mut impl Write,
    p: &Payment,
    label: Option<&str>,
    fv: &crate::engine::FeatureVector,
) -> std::io::Result<()> {
    let cell = |s: &str| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let fraud = match label {
        Some(l) => u8::from(is_fraud(l)).to_string(),
        None => String::new(),
    };
    write!(
        w,
        "{},{},{fraud}",
        cell(&p.event_id),
        cell(label.unwrap_or(""))
    )?;
    let skip = crate::engine::features::F::ModelScore as usize;
    for (_, v) in fv.0.iter().enumerate().filter(|(i, _)| *i != skip) {
        if v.is_nan() {
            w.write_all(b",")?;
        } else {
            write!(w, ",{v}")?;
        }
    }
    w.write_all(b"\n")
}

fn diff(report: &mut Report, p: &Payment, base: &Verdict, now: &Verdict) {
    if base.decision == now.decision {
        return;
    }
    report.changed += 1;
    *report
        .transitions
        .entry(format!(
            "{} -> {}",
            base.decision.as_str(),
            now.decision.as_str()
        ))
        .or_default() += 1;
    if report.changed_examples.len() < 20 {
        let ids = |v: &Verdict| -> Vec<String> {
            v.reasons.iter().map(|r| r.rule_id.to_string()).collect()
        };
        let (b, n) = (ids(base), ids(now));
        report.changed_examples.push(Changed {
            event_id: p.event_id.clone(),
            baseline: base.decision,
            now: now.decision,
            rules_added: n.iter().filter(|x| !b.contains(x)).cloned().collect(),
            rules_removed: b.iter().filter(|x| !n.contains(x)).cloned().collect(),
        });
    }
}

/// The report as a readable table.
pub fn render_text(r: &Report) -> String {
    let mut s = String::new();
    let pct = |a: u64, b: u64| a as f64 * 100.0 / b.max(1) as f64;
    s.push_str(&format!(
        "rules {}: {} events replayed in {:.1} s ({} refused)\n",
        r.rules_version, r.events, r.seconds, r.refused
    ));
    for e in &r.refused_examples {
        s.push_str(&format!("  refused: {e}\n"));
    }
    s.push_str("\ndecision   events      share\n");
    for (d, n) in &r.decisions {
        s.push_str(&format!(
            "{:<8} {:>8}  {:>8.2}%\n",
            d.as_str(),
            n,
            pct(*n, r.events)
        ));
    }
    if let Some(q) = &r.overall {
        s.push_str(&format!(
            "\nflagged (REVIEW or HOLD) vs labels: {} labelled, {} fraud\n  precision {:.3}  recall {:.3}  F1 {:.3}  (TP {} FP {} FN {})\n",
            r.labelled, r.fraud, q.precision, q.recall, q.f1, q.true_positives, q.false_positives, q.false_negatives
        ));
        s.push_str("\nlabel                flagged / events\n");
        for (l, (f, n)) in &r.by_label {
            s.push_str(&format!("{l:<20} {f:>7} / {n:<7} ({:.1}%)\n", pct(*f, *n)));
        }
        for (c, v) in &r.money.held_fraud {
            s.push_str(&format!("held, fraud:  {v} {c} (minor units)\n"));
        }
        for (c, v) in &r.money.held_legit {
            s.push_str(&format!("held, legit:  {v} {c} (minor units)\n"));
        }
    }
    s.push_str("\nrule                            mode       hits  precision  recall     F1\n");
    for rule in &r.rules {
        match &rule.quality {
            Some(q) => s.push_str(&format!(
                "{:<31} {:<7} {:>7}  {:>9.3} {:>7.3} {:>6.3}\n",
                rule.rule_id, rule.mode, rule.hits, q.precision, q.recall, q.f1
            )),
            None => s.push_str(&format!(
                "{:<31} {:<7} {:>7}\n",
                rule.rule_id, rule.mode, rule.hits
            )),
        }
    }
    if !r.models.is_empty() {
        s.push_str("\nmodel   version               avg precision  recall@P>=0.90 (cut)   P / R at cut 0.5\n");
    }
    for m in &r.models {
        let at90 = m
            .recall_at_precision_90
            .map_or("-".to_string(), |(rec, cut)| format!("{rec:.3} ({cut:.3})"));
        let half = m
            .cuts
            .iter()
            .find(|(c, _)| *c == 0.5)
            .map_or("-".to_string(), |(_, q)| {
                format!("{:.3} / {:.3}", q.precision, q.recall)
            });
        s.push_str(&format!(
            "{:<7} {:<21} {:>13.3}  {:<21}  {half}\n",
            m.role, m.version, m.average_precision, at90
        ));
    }
    if let Some(b) = &r.baseline_version {
        s.push_str(&format!(
            "\nagainst baseline {b}: {} verdicts changed\n",
            r.changed
        ));
        for (t, n) in &r.transitions {
            s.push_str(&format!("  {t}: {n}\n"));
        }
        for c in &r.changed_examples {
            s.push_str(&format!(
                "  {} {} -> {}: +{:?} -{:?}\n",
                c.event_id,
                c.baseline.as_str(),
                c.now.as_str(),
                c.rules_added,
                c.rules_removed
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
version = "bt-1"
[thresholds]
review = 40
hold = 80
[[rule]]
id = "BIG"
when = "amount >= 1_000_000"
score = 80
reason = "big"
[[rule]]
id = "SECOND"
when = "payer.count_1h >= 2"
score = 40
reason = "second payment within the hour"
[[rule]]
id = "TRIAL"
when = "amount >= 500"
score = 100
mode = "shadow"
reason = "trial"
"#;

    fn line(id: &str, payer: &str, amount: i64, t: i64, label: &str) -> String {
        format!(
            r#"{{"event_id":"{id}","event_time_ms":{t},"amount_minor":{amount},"currency":"VND","payer":{{"account":"{payer}"}},"payee":{{"account":"P"}},"label":"{label}"}}"#
        )
    }

    #[test]
    fn legit_and_its_look_alikes_are_legit_everything_else_is_fraud() {
        for l in [
            "legit",
            "legit_new_shop",
            "legit_landlord",
            "legit_salary_day",
        ] {
            assert!(!is_fraud(l), "{l}");
        }
        for l in ["mule_fan_in", "scam_transfer", "sim_swap", "fraud", ""] {
            assert!(is_fraud(l), "{l}");
        }
        for l in crate::tools::gen::LABELS {
            assert_eq!(is_fraud(l), !l.starts_with("legit"), "{l}");
        }
        // In a replay: a look-alike that is flagged is a false positive.
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = dir.path().join("r.toml");
        std::fs::write(&rules, RULES).expect("write");
        let t0 = 1_795_526_680_000;
        let lines = [
            line("a", "A", 5_000_000, t0, "legit_landlord"),
            line("b", "B", 5_000_000, t0 + 1_000, "scam_transfer"),
        ];
        let events = dir.path().join("e.jsonl");
        std::fs::write(&events, lines.join("\n")).expect("write");
        let r = run(&Options {
            config: None,
            rules: Some(rules),
            baseline: None,
            model: None,
            shadow_model: None,
            events,
            blocklist: None,
            verdicts_out: None,
            features_out: None,
            progress: false,
        })
        .expect("runs");
        let q = r.overall.expect("labelled");
        assert_eq!((r.fraud, q.true_positives, q.false_positives), (1, 1, 1));
        assert_eq!(r.by_label["legit_landlord"], (1, 1));
        assert!(render_text(&r).contains("legit_landlord"));
    }

    /// Six events, in file order not time order, checked by hand:
    /// e1 A 100      t0      legit  -> ALLOW (TRIAL no: 100 < 500)
    /// e2 A 2000     t0+10s  fraud  -> REVIEW (SECOND), TRIAL shadow
    /// e3 B 5000000  t0+20s  fraud  -> HOLD (BIG), TRIAL shadow
    /// e4 C 300      t0+30s  fraud  -> ALLOW (missed)
    /// e5 D 2000000  t0+40s  legit  -> HOLD (BIG: a false positive), TRIAL
    /// e6 A 100      t0+50s  legit  -> REVIEW (SECOND: count_1h = 3), false positive
    /// Flagged: e2 e3 e5 e6; fraud: e2 e3 e4. TP 2, FP 2, FN 1:
    /// precision 0.5, recall 2/3, F1 4/7.
    #[test]
    fn numbers_on_a_small_labelled_file_match_a_hand_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = dir.path().join("r.toml");
        std::fs::write(&rules, RULES).expect("write");
        let t0 = 1_795_526_680_000;
        let lines = [
            line("e3", "B", 5_000_000, t0 + 20_000, "mule_fan_in"),
            line("e1", "A", 100, t0, "legit"),
            line("e2", "A", 2_000, t0 + 10_000, "velocity_burst"),
            line("e6", "A", 100, t0 + 50_000, "legit"),
            line("e4", "C", 300, t0 + 30_000, "card_testing"),
            line("e5", "D", 2_000_000, t0 + 40_000, "legit"),
            "{not json".to_string(),
        ];
        let events = dir.path().join("e.jsonl");
        std::fs::write(&events, lines.join("\n")).expect("write");
        let out = dir.path().join("v.jsonl");
        let r = run(&Options {
            config: None,
            rules: Some(rules.clone()),
            baseline: None,
            model: None,
            shadow_model: None,
            events,
            blocklist: None,
            verdicts_out: Some(out.clone()),
            features_out: None,
            progress: false,
        })
        .expect("runs");
        assert_eq!((r.events, r.refused, r.labelled, r.fraud), (6, 1, 6, 3));
        assert_eq!(r.decisions[&Decision::Allow], 2);
        assert_eq!(r.decisions[&Decision::Review], 2);
        assert_eq!(r.decisions[&Decision::Hold], 2);
        let q = r.overall.expect("labelled");
        assert_eq!(
            (q.true_positives, q.false_positives, q.false_negatives),
            (2, 2, 1)
        );
        assert!((q.precision - 0.5).abs() < 1e-9);
        // The curve over the review threshold passes through the run's own
        // figures at the current threshold (40), and flags more below it.
        let curve = r.scores.curve(false);
        let now = curve
            .iter()
            .find(|p| p.threshold == 40)
            .expect("a point at 40");
        assert!((now.precision - q.precision).abs() < 1e-9, "{now:?}");
        assert!((now.recall - q.recall).abs() < 1e-9, "{now:?}");
        assert_eq!(now.flagged, 4);
        let lowest = curve.first().expect("points");
        assert_eq!((lowest.flagged, lowest.recall), (6, 1.0), "{lowest:?}");
        let html = crate::tools::report_html::render(&r);
        assert!(html.contains("<svg id=\"pr-review\"") && html.contains("class=\"now\""));
        assert!((q.recall - 2.0 / 3.0).abs() < 1e-9);
        assert!((q.f1 - 4.0 / 7.0).abs() < 1e-9);
        let big = &r.rules[0];
        assert_eq!(big.hits, 2);
        let bq = big.quality.expect("labelled");
        assert_eq!(
            (bq.true_positives, bq.false_positives, bq.false_negatives),
            (1, 1, 2)
        );
        let trial = &r.rules[2];
        assert_eq!((trial.mode.as_str(), trial.hits), ("shadow", 3));
        assert_eq!(r.money.held_fraud["VND"], 5_000_000);
        assert_eq!(r.money.held_legit["VND"], 2_000_000);
        let written = std::fs::read_to_string(&out).expect("verdicts");
        let first: serde_json::Value =
            serde_json::from_str(written.lines().next().expect("a line")).expect("json");
        assert_eq!(first["event_id"], "e1", "replayed in event-time order");
        assert_eq!(written.lines().count(), 6);

        // Against itself with the big rule raised: only e5 and e3 can change.
        let stricter = dir.path().join("s.toml");
        std::fs::write(
            &stricter,
            RULES.replace("amount >= 1_000_000", "amount >= 3_000_000"),
        )
        .expect("write");
        let r = run(&Options {
            config: None,
            rules: Some(stricter),
            baseline: Some(rules),
            model: None,
            shadow_model: None,
            events: dir.path().join("e.jsonl"),
            blocklist: None,
            verdicts_out: None,
            features_out: None,
            progress: false,
        })
        .expect("runs");
        assert_eq!(r.changed, 1);
        assert_eq!(r.transitions["HOLD -> ALLOW"], 1);
        assert_eq!(r.changed_examples[0].event_id, "e5");
        assert_eq!(r.changed_examples[0].rules_removed, ["BIG"]);
    }
}

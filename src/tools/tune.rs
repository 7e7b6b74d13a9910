//! `fraudline tune`: on labelled events, searches the review and hold
//! thresholds (and, within bounds the analyst sets, rule scores) for the
//! best recall at a target precision, or for the lowest cost (fraud money
//! let through plus a review cost per flagged payment), and writes the
//! suggestion as a change to the rule file: a unified diff, and the new file
//! if asked. The suggestion is checked the way `rules check` checks a file
//! (it compiles, and the file's own tests pass); a candidate that breaks
//! the file's tests is never suggested.
//!
//! The replay is the backtest's (the service's engine and config, events in
//! event-time order) and runs once: a verdict's score is the sum of the
//! scores of the active rules that hit, and which rules hit does not depend
//! on their scores, so every candidate is scored from the recorded hits.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use super::backtest::{prepare, BacktestError, CurvePoint, Options as ReplayOptions};
use crate::engine::decision::Decision;
use crate::engine::rules::{file, Mode};

/// What to optimise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Objective {
    /// The highest recall of flagged (REVIEW or HOLD) at this precision or
    /// better.
    Precision(f64),
    /// The lowest fraud amount let through (minor units, currencies as
    /// they come) plus this cost per flagged payment.
    Cost { review_cost_minor: f64 },
}

/// A rule whose score the search may move, and how far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    pub rule_id: String,
    pub min: i32,
    pub max: i32,
}

impl std::str::FromStr for Bound {
    type Err = String;

    /// `RULE_ID=MIN..MAX`.
    fn from_str(s: &str) -> Result<Bound, String> {
        let (id, range) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected RULE_ID=MIN..MAX"))?;
        let (lo, hi) = range
            .split_once("..")
            .ok_or_else(|| format!("{s:?}: expected RULE_ID=MIN..MAX"))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<i32>()
                .map_err(|e| format!("{s:?}: {v:?} is not a score: {e}"))
        };
        let (min, max) = (parse(lo)?, parse(hi)?);
        if min > max || id.trim().is_empty() {
            return Err(format!("{s:?}: expected RULE_ID=MIN..MAX with MIN <= MAX"));
        }
        Ok(Bound {
            rule_id: id.trim().to_string(),
            min,
            max,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// The events, config and blocklist as for `backtest`; `replay.rules`
    /// names the rule file to tune (required).
    pub replay: ReplayOptions,
    pub objective: Objective,
    /// The precision the hold threshold is chosen for (HOLD stops money,
    /// so it asks for more certainty than REVIEW).
    pub hold_precision: f64,
    pub bounds: Vec<Bound>,
    /// Score step tried within a bound.
    pub step: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    #[error(transparent)]
    Replay(#[from] BacktestError),
    #[error("tune needs a rule file to change (--rules, or rules.file in the config)")]
    NoRuleFile,
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the events carry no labels: nothing to tune against")]
    Unlabelled,
    #[error("--bound names {0}, which is not an active rule of the file")]
    UnknownRule(String),
    #[error("no candidate passes the rule file's own tests: {0}")]
    NoValidCandidate(String),
}

/// What a setting gives on the labelled events.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Outcome {
    pub review: i32,
    pub hold: i32,
    pub precision: f64,
    pub recall: f64,
    pub flagged: u64,
    pub held: u64,
    /// Fraud money let through (not flagged), minor units summed.
    pub missed_fraud_minor: i64,
    /// Precision of HOLD alone.
    pub hold_precision: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Suggestion {
    pub events: u64,
    pub labelled: u64,
    pub fraud: u64,
    pub current: Outcome,
    pub suggested: Outcome,
    /// (rule id, current score, suggested score), changed ones only.
    pub scores: Vec<(String, i32, i32)>,
    /// Precision / recall of flagged over the review threshold, with the
    /// suggested scores.
    pub curve: Vec<CurvePoint>,
    /// Candidates the file's own tests refused.
    pub refused_by_tests: u64,
    /// The change as a unified diff of the rule file.
    pub diff: String,
    /// The whole suggested file.
    #[serde(skip)]
    pub new_text: String,
}

/// One labelled event as the search sees it.
struct Case {
    /// Indices (into the tunable score table) of the active rules that hit.
    hits: Vec<u16>,
    forced: Decision,
    fraud: bool,
    amount: i64,
}

/// Fraud events, legit events, fraud amount (minor units).
type Counts = (u64, u64, i64);

struct Cases {
    cases: Vec<Case>,
    fraud_total: u64,
    fraud_amount: i64,
}

impl Cases {
    fn score(&self, c: &Case, scores: &[i32]) -> i32 {
        c.hits
            .iter()
            .fold(0i32, |acc, i| acc.saturating_add(scores[*i as usize]))
    }

    /// Per score: (fraud, legit, fraud amount), for the events a forcing
    /// rule or list hit did not already flag (`hold`: hold).
    fn by_score(&self, scores: &[i32], hold: bool) -> (BTreeMap<i32, Counts>, Counts) {
        let mut m: BTreeMap<i32, Counts> = BTreeMap::new();
        let mut forced = (0, 0, 0);
        for c in &self.cases {
            let is_forced = if hold {
                c.forced == Decision::Hold
            } else {
                c.forced >= Decision::Review
            };
            let e = if is_forced {
                &mut forced
            } else {
                m.entry(self.score(c, scores)).or_default()
            };
            if c.fraud {
                e.0 += 1;
                e.2 += c.amount;
            } else {
                e.1 += 1;
            }
        }
        (m, forced)
    }

    /// Every threshold from the lowest score to one past the highest, with
    /// what flagging at it gives: (threshold, tp, fp, fraud amount caught).
    fn sweep(&self, scores: &[i32], hold: bool) -> Vec<(i32, u64, u64, i64)> {
        let (m, forced) = self.by_score(scores, hold);
        let (Some(lo), Some(hi)) = (m.keys().next().copied(), m.keys().next_back().copied()) else {
            return vec![(0, forced.0, forced.1, forced.2)];
        };
        let mut out = Vec::with_capacity((hi - lo + 2) as usize);
        let (mut tp, mut fp, mut caught) = forced;
        let mut it = m.iter().rev().peekable();
        for t in (lo..=hi.saturating_add(1)).rev() {
            while let Some((s, c)) = it.peek() {
                if **s >= t {
                    tp += c.0;
                    fp += c.1;
                    caught += c.2;
                    it.next();
                } else {
                    break;
                }
            }
            out.push((t, tp, fp, caught));
        }
        out.reverse();
        out
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// A point's merit under the objective: higher is better.
fn merit(o: Objective, tp: u64, fp: u64, caught: i64, cases: &Cases) -> (f64, f64) {
    match o {
        Objective::Precision(p) => {
            let precision = if tp + fp == 0 {
                1.0
            } else {
                ratio(tp, tp + fp)
            };
            let recall = ratio(tp, cases.fraud_total);
            if precision + 1e-12 >= p {
                // Meets the target: the most recall, then the fewest flagged.
                (1.0 + recall, -((tp + fp) as f64))
            } else {
                // Misses it: as close as possible.
                (precision - 1.0, recall)
            }
        }
        Objective::Cost { review_cost_minor } => {
            let missed = (cases.fraud_amount - caught) as f64;
            (-(missed + review_cost_minor * (tp + fp) as f64), 0.0)
        }
    }
}

/// The review thresholds, best first, for these scores.
fn ranked_reviews(o: Objective, scores: &[i32], cases: &Cases) -> Vec<(i32, (f64, f64))> {
    let mut v: Vec<(i32, (f64, f64))> = cases
        .sweep(scores, false)
        .into_iter()
        .map(|(t, tp, fp, caught)| (t, merit(o, tp, fp, caught, cases)))
        .collect();
    v.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    v
}

/// The hold threshold at or above `review` with the most fraud held at
/// `precision` or better (the highest sweep point when none reaches it).
fn best_hold(precision: f64, review: i32, scores: &[i32], cases: &Cases) -> i32 {
    let sweep = cases.sweep(scores, true);
    let top = sweep.last().map_or(review, |s| s.0.max(review));
    sweep
        .into_iter()
        .filter(|(t, ..)| *t >= review)
        .filter(|(_, tp, fp, _)| tp + fp > 0 && ratio(*tp, tp + fp) + 1e-12 >= precision)
        .max_by_key(|(t, tp, ..)| (*tp, -(*t as i64)))
        .map_or(top, |(t, ..)| t)
}

fn outcome(review: i32, hold: i32, scores: &[i32], cases: &Cases) -> Outcome {
    let (mut tp, mut fp, mut held_tp, mut held_fp, mut caught) = (0, 0, 0, 0, 0i64);
    for c in &cases.cases {
        let s = cases.score(c, scores);
        let flagged = c.forced >= Decision::Review || s >= review;
        let held = c.forced == Decision::Hold || s >= hold;
        if flagged {
            if c.fraud {
                tp += 1;
                caught += c.amount;
            } else {
                fp += 1;
            }
        }
        if held {
            if c.fraud {
                held_tp += 1;
            } else {
                held_fp += 1;
            }
        }
    }
    Outcome {
        review,
        hold,
        precision: ratio(tp, tp + fp),
        recall: ratio(tp, cases.fraud_total),
        flagged: tp + fp,
        held: held_tp + held_fp,
        missed_fraud_minor: cases.fraud_amount - caught,
        hold_precision: ratio(held_tp, held_tp + held_fp),
    }
}

/// The rule file's text with new thresholds and scores (comments and
/// layout kept), and its version marked as tuned.
fn rewrite(src: &str, review: i32, hold: i32, scores: &BTreeMap<String, i32>) -> String {
    let mut out = String::with_capacity(src.len() + 64);
    let mut section = String::new();
    let mut rule_id: Option<String> = None;
    for line in src.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let key = trimmed
            .split_once('=')
            .map(|(k, _)| k.trim())
            .unwrap_or_default();
        let indent = &line[..line.len() - trimmed.len()];
        let eol = if line.ends_with('\n') { "\n" } else { "" };
        if trimmed.starts_with('[') {
            section = trimmed.trim_end().to_string();
            rule_id = None;
            out.push_str(line);
            continue;
        }
        let value_rest = |v: String| {
            // Keep a trailing comment.
            let comment = trimmed
                .split_once('#')
                .map(|(_, c)| format!("  #{}", c.trim_end()))
                .unwrap_or_default();
            format!("{indent}{key} = {v}{comment}{eol}")
        };
        match (section.as_str(), key) {
            ("", "version") => {
                let old = trimmed
                    .split_once('=')
                    .map(|(_, v)| v.trim().trim_matches('"').to_string())
                    .unwrap_or_default();
                out.push_str(&format!("{indent}version = \"{old}-tuned\"{eol}"));
            }
            ("[thresholds]", "review") => out.push_str(&value_rest(review.to_string())),
            ("[thresholds]", "hold") => out.push_str(&value_rest(hold.to_string())),
            ("[[rule]]", "id") => {
                rule_id = trimmed.split_once('=').map(|(_, v)| {
                    v.split('#')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .trim_matches('"')
                        .to_string()
                });
                out.push_str(line);
            }
            ("[[rule]]", "score") => match rule_id.as_ref().and_then(|id| scores.get(id)) {
                Some(s) => out.push_str(&value_rest(s.to_string())),
                None => out.push_str(line),
            },
            _ => out.push_str(line),
        }
    }
    out
}

/// A unified diff (no context) of two texts with the same number of lines.
fn diff(name: &str, old: &str, new: &str) -> String {
    let mut d = format!("--- {name}\n+++ {name}\n");
    for (i, (a, b)) in old.lines().zip(new.lines()).enumerate() {
        if a != b {
            let _ = write!(d, "@@ -{n} +{n} @@\n-{a}\n+{b}\n", n = i + 1);
        }
    }
    d
}

/// Whether `text` compiles as a rule file and its own tests pass; the
/// failing tests' names otherwise.
fn check(name: &str, text: &str) -> Result<(), String> {
    let f = file::compile(name, text).map_err(|e| e.to_string())?;
    let failed: Vec<String> = file::run_tests(&f)
        .into_iter()
        .filter(|t| !t.passed)
        .map(|t| t.name)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join(", "))
    }
}

/// Runs the search.
pub fn run(opts: &Options) -> Result<Suggestion, TuneError> {
    let path: PathBuf = match (&opts.replay.rules, &opts.replay.config) {
        (Some(p), _) => p.clone(),
        (None, Some(c)) if !c.rules.file.is_empty() => PathBuf::from(&c.rules.file),
        _ => return Err(TuneError::NoRuleFile),
    };
    let mut replay = opts.replay.clone();
    replay.rules = Some(path.clone());
    let src = std::fs::read_to_string(&path).map_err(|source| TuneError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let name = path.display().to_string();
    let prepared = prepare(&replay)?;
    let rules = prepared.engine.rules();
    // The tunable table: every active rule, by id.
    let ids: Vec<String> = rules
        .rules
        .iter()
        .filter(|r| r.mode == Mode::Active)
        .map(|r| r.id.to_string())
        .collect();
    let index: BTreeMap<&str, u16> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i as u16))
        .collect();
    let current_scores: Vec<i32> = rules
        .rules
        .iter()
        .filter(|r| r.mode == Mode::Active)
        .map(|r| r.score)
        .collect();
    for b in &opts.bounds {
        if !index.contains_key(b.rule_id.as_str()) {
            return Err(TuneError::UnknownRule(b.rule_id.clone()));
        }
    }

    let mut cases = Cases {
        cases: Vec::new(),
        fraud_total: 0,
        fraud_amount: 0,
    };
    let events = prepared.events.len() as u64;
    for (p, label) in &prepared.events {
        let v = prepared.engine.score_at(p, p.event_time_ms);
        let Some(label) = label else { continue };
        let fraud = crate::tools::backtest::is_fraud(label);
        let hits = v
            .reasons
            .iter()
            .filter_map(|r| index.get(&*r.rule_id).copied())
            .collect();
        cases.fraud_total += u64::from(fraud);
        if fraud {
            cases.fraud_amount += p.amount_minor;
        }
        cases.cases.push(Case {
            hits,
            forced: v.forced.unwrap_or(Decision::Allow),
            fraud,
            amount: p.amount_minor,
        });
    }
    if cases.cases.is_empty() {
        return Err(TuneError::Unlabelled);
    }
    let th = &rules.thresholds;
    let current = outcome(th.review, th.hold, &current_scores, &cases);

    // Candidate texts are checked like `rules check` does; remember verdicts.
    let mut refused_by_tests = 0u64;
    let mut checked: BTreeMap<(i32, i32, Vec<i32>), bool> = BTreeMap::new();
    let mut valid = |review: i32, hold: i32, scores: &[i32]| -> bool {
        *checked
            .entry((review, hold, scores.to_vec()))
            .or_insert_with(|| {
                let changed: BTreeMap<String, i32> = ids
                    .iter()
                    .zip(scores)
                    .map(|(id, s)| (id.clone(), *s))
                    .collect();
                let ok = check(&name, &rewrite(&src, review, hold, &changed)).is_ok();
                refused_by_tests += u64::from(!ok);
                ok
            })
    };
    // The best valid (review, hold) for a score table, and its merit.
    let mut best_for = |scores: &[i32]| -> Option<(i32, i32, (f64, f64))> {
        for (review, m) in ranked_reviews(opts.objective, scores, &cases)
            .into_iter()
            .take(50)
        {
            let hold = best_hold(opts.hold_precision, review, scores, &cases);
            if valid(review, hold, scores) {
                return Some((review, hold, m));
            }
        }
        None
    };

    let mut scores = current_scores.clone();
    let Some(mut best) = best_for(&scores) else {
        return Err(TuneError::NoValidCandidate(
            check(&name, &src)
                .err()
                .unwrap_or_else(|| "thresholds".into()),
        ));
    };
    // Coordinate descent over the bounded rules' scores.
    let step = opts.step.max(1);
    for _round in 0..3 {
        let mut improved = false;
        for b in &opts.bounds {
            let i = index[b.rule_id.as_str()] as usize;
            let mut v = b.min;
            while v <= b.max {
                if v != scores[i] {
                    let mut trial = scores.clone();
                    trial[i] = v;
                    if let Some(found) = best_for(&trial) {
                        if found.2 > best.2 {
                            best = found;
                            scores = trial;
                            improved = true;
                        }
                    }
                }
                v += step;
            }
        }
        if !improved {
            break;
        }
    }
    let (review, hold, _) = best;
    let suggested = outcome(review, hold, &scores, &cases);
    let changed: Vec<(String, i32, i32)> = ids
        .iter()
        .zip(current_scores.iter().zip(&scores))
        .filter(|(_, (a, b))| a != b)
        .map(|(id, (a, b))| (id.clone(), *a, *b))
        .collect();
    let new_scores: BTreeMap<String, i32> =
        changed.iter().map(|(id, _, s)| (id.clone(), *s)).collect();
    let new_text = rewrite(&src, review, hold, &new_scores);
    let fraud_total = cases.fraud_total;
    let curve = cases
        .sweep(&scores, false)
        .into_iter()
        .map(|(t, tp, fp, _)| CurvePoint {
            threshold: t,
            precision: if tp + fp == 0 {
                1.0
            } else {
                ratio(tp, tp + fp)
            },
            recall: ratio(tp, fraud_total),
            flagged: tp + fp,
        })
        .collect();
    Ok(Suggestion {
        events,
        labelled: cases.cases.len() as u64,
        fraud: fraud_total,
        current,
        suggested,
        scores: changed,
        curve,
        refused_by_tests,
        diff: diff(&name, &src, &new_text),
        new_text,
    })
}

/// The suggestion as text: the curve, the two settings side by side, the
/// diff.
pub fn render_text(s: &Suggestion) -> String {
    let mut out = format!(
        "{} events, {} labelled, {} fraud\n\nreview threshold   precision   recall   flagged\n",
        s.events, s.labelled, s.fraud
    );
    let stride = (s.curve.len() / 25).max(1);
    for (i, p) in s.curve.iter().enumerate() {
        let mark = if p.threshold == s.suggested.review {
            "  <- suggested"
        } else if p.threshold == s.current.review {
            "  <- current"
        } else {
            ""
        };
        if i % stride == 0 || !mark.is_empty() {
            let _ = writeln!(
                out,
                "{:>16}   {:>9.3}   {:>6.3}   {:>7}{mark}",
                p.threshold, p.precision, p.recall, p.flagged
            );
        }
    }
    for (what, o) in [("current", &s.current), ("suggested", &s.suggested)] {
        let _ = writeln!(
            out,
            "\n{what:<9}: review {} hold {}: precision {:.3} recall {:.3}, {} flagged, {} held (hold precision {:.3}), fraud money let through {}",
            o.review, o.hold, o.precision, o.recall, o.flagged, o.held, o.hold_precision, o.missed_fraud_minor
        );
    }
    for (id, a, b) in &s.scores {
        let _ = writeln!(out, "score of {id}: {a} -> {b}");
    }
    if s.refused_by_tests > 0 {
        let _ = writeln!(
            out,
            "{} candidate(s) left out: the rule file's own tests failed with them",
            s.refused_by_tests
        );
    }
    out.push('\n');
    out.push_str(&s.diff);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_parse_and_refuse_nonsense() {
        assert_eq!(
            "MULE=10..60".parse::<Bound>(),
            Ok(Bound {
                rule_id: "MULE".into(),
                min: 10,
                max: 60
            })
        );
        assert!("MULE=60..10".parse::<Bound>().is_err());
        assert!("MULE".parse::<Bound>().is_err());
        assert!("=1..2".parse::<Bound>().is_err());
        assert!("M=a..2".parse::<Bound>().is_err());
    }

    #[test]
    fn rewrite_changes_only_thresholds_scores_and_version() {
        let src = "version = \"v1\"\n[thresholds]\nreview = 40  # flag\nhold = 80\n[[rule]]\nid = \"A\"\nwhen = \"amount > 1\"\nscore = 10\nreason = \"a\"\n[[rule]]\nid = \"B\"\nwhen = \"amount > 2\"\nscore = 20\nreason = \"b\"\n";
        let scores: BTreeMap<String, i32> = [("B".to_string(), 35)].into_iter().collect();
        let out = rewrite(src, 30, 90, &scores);
        assert_eq!(
            out,
            "version = \"v1-tuned\"\n[thresholds]\nreview = 30  # flag\nhold = 90\n[[rule]]\nid = \"A\"\nwhen = \"amount > 1\"\nscore = 10\nreason = \"a\"\n[[rule]]\nid = \"B\"\nwhen = \"amount > 2\"\nscore = 35\nreason = \"b\"\n"
        );
        let d = diff("r.toml", src, &out);
        assert!(
            d.contains("@@ -3 +3 @@\n-review = 40  # flag\n+review = 30  # flag\n"),
            "{d}"
        );
        assert!(
            d.contains("@@ -13 +13 @@\n-score = 20\n+score = 35\n"),
            "{d}"
        );
        assert!(file::compile("r.toml", &out).is_ok());
    }

    fn case(hits: &[u16], fraud: bool, amount: i64) -> Case {
        Case {
            hits: hits.to_vec(),
            forced: Decision::Allow,
            fraud,
            amount,
        }
    }

    /// Rule 0 hits 4 frauds and 1 legit; rule 1 hits 1 fraud and 3 legit.
    /// Scores 50 / 50: at review 50, 5 frauds and 4 legit are flagged
    /// (precision 0.556). At precision >= 0.75 the best review threshold
    /// flags rule 0's events only: recall 0.8.
    #[test]
    fn the_search_finds_the_best_recall_at_the_target_precision() {
        let mut cases = Cases {
            cases: vec![
                case(&[0], true, 100),
                case(&[0], true, 100),
                case(&[0], true, 100),
                case(&[0], true, 100),
                case(&[0], false, 100),
                case(&[1], true, 100),
                case(&[1], false, 100),
                case(&[1], false, 100),
                case(&[1], false, 100),
                case(&[], false, 100),
            ],
            fraud_total: 5,
            fraud_amount: 500,
        };
        cases.fraud_total = cases.cases.iter().filter(|c| c.fraud).count() as u64;
        // Equal scores: no threshold separates the rules.
        let ranked = ranked_reviews(Objective::Precision(0.75), &[50, 50], &cases);
        let o = outcome(ranked[0].0, 1000, &[50, 50], &cases);
        assert!(o.precision < 0.75, "{o:?}");
        // Rule 1 down to 20: review 50 flags rule 0 only.
        let ranked = ranked_reviews(Objective::Precision(0.75), &[50, 20], &cases);
        let o = outcome(ranked[0].0, 1000, &[50, 20], &cases);
        assert_eq!((o.flagged, o.precision, o.recall), (5, 0.8, 0.8), "{o:?}");
        // Cost: a review costs more than the fraud it catches: flag nothing.
        let ranked = ranked_reviews(
            Objective::Cost {
                review_cost_minor: 1_000.0,
            },
            &[50, 20],
            &cases,
        );
        let o = outcome(ranked[0].0, 1000, &[50, 20], &cases);
        assert_eq!(o.flagged, 0, "{o:?}");
    }
}

//! Rules: conditions over the payment and its features, each with a score or
//! a forced decision, active or shadow.
//!
//! This first version holds a small built-in rule set compiled to plain
//! function pointers; the analyst rule language compiles to the same
//! [`Rule`] shape.

pub mod expr;

use std::sync::Arc;

use super::decision::{Decision, Reason, Thresholds, Verdict};
use super::features::{FeatureVector, F};
use crate::event::Payment;

/// Whether a rule's hits count toward the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Active,
    Shadow,
}

/// Tunables of the built-in rules.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltinParams {
    /// An amount (minor units) at or above this is large.
    pub large_amount_minor: i64,
    /// Payments by one payer in a minute at or above this is a burst.
    pub payer_burst_1m: u32,
    /// Distinct payers into one payee in 10 minutes at or above this is fan-in.
    pub payee_fan_in_10m: u32,
}

impl Default for BuiltinParams {
    fn default() -> Self {
        BuiltinParams {
            large_amount_minor: 50_000_000,
            payer_burst_1m: 5,
            payee_fan_in_10m: 8,
        }
    }
}

type Cond = Box<dyn Fn(&Payment, &FeatureVector) -> bool + Send + Sync>;

/// One compiled rule.
pub struct Rule {
    pub id: Arc<str>,
    pub reason: Arc<str>,
    pub score: i32,
    pub force: Option<Decision>,
    pub mode: Mode,
    cond: Cond,
    /// `fraudline_rule_hits_total{rule_id, mode}`, registered once at load.
    hits: metrics::Counter,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("id", &self.id)
            .field("score", &self.score)
            .field("mode", &self.mode)
            .finish()
    }
}

impl Rule {
    pub fn new(
        id: &str,
        reason: &str,
        score: i32,
        mode: Mode,
        cond: impl Fn(&Payment, &FeatureVector) -> bool + Send + Sync + 'static,
    ) -> Rule {
        let mode_label = match mode {
            Mode::Active => "active",
            Mode::Shadow => "shadow",
        };
        Rule {
            hits: metrics::counter!(
                crate::telemetry::RULE_HITS,
                "rule_id" => id.to_string(),
                "mode" => mode_label
            ),
            id: Arc::from(id),
            reason: Arc::from(reason),
            score,
            force: None,
            mode,
            cond: Box::new(cond),
        }
    }
}

/// A complete, validated rule set: swapped in whole.
#[derive(Debug)]
pub struct RuleSet {
    pub version: Arc<str>,
    pub thresholds: Thresholds,
    pub rules: Vec<Rule>,
}

impl RuleSet {
    /// The built-in checks fraudline runs before an analyst rule file is loaded.
    pub fn builtin(thresholds: Thresholds, p: &BuiltinParams) -> RuleSet {
        let large = p.large_amount_minor;
        let burst = p.payer_burst_1m;
        let fan_in = p.payee_fan_in_10m;
        RuleSet {
            version: Arc::from("builtin-1"),
            thresholds,
            rules: vec![
                Rule::new(
                    "LARGE_AMOUNT",
                    "Amount at or above the large-payment limit",
                    40,
                    Mode::Active,
                    move |pay, _| pay.amount_minor >= large,
                ),
                Rule::new(
                    "PAYER_BURST_1M",
                    "Many payments from one payer within a minute",
                    30,
                    Mode::Active,
                    move |_, f| f.get(F::PayerCount1m) >= f64::from(burst),
                ),
                Rule::new(
                    "PAYEE_FAN_IN_10M",
                    "Payee collects from many payers within 10 minutes (mule pattern)",
                    50,
                    Mode::Active,
                    move |_, f| f.get(F::PayeeDistinctPayers10m) >= f64::from(fan_in),
                ),
            ],
        }
    }

    /// Runs every rule; active hits add to the score, shadow hits are listed.
    pub fn evaluate(&self, p: &Payment, f: &FeatureVector, v: &mut Verdict) {
        for r in &self.rules {
            if (r.cond)(p, f) {
                r.hits.increment(1);
                v.add_hit(
                    Reason {
                        rule_id: r.id.clone(),
                        reason: r.reason.clone(),
                        score: r.score,
                    },
                    r.mode == Mode::Shadow,
                    r.force,
                );
            }
        }
    }
}

//! Rules: conditions over the payment and its features, each with a score or
//! a forced decision, active or shadow.
//!
//! Analyst rule files ([`file`]) compile each condition with the rule
//! language ([`expr`]) into the same [`Rule`] shape as the few built-in
//! checks that run when no rule file is configured.

pub mod breaker;
pub mod expr;
pub mod file;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::decision::{Decision, Reason, Thresholds, Verdict};
use super::features::F;
use breaker::{Breaker, RateWindow};
use expr::Ctx;

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

type Cond = Box<dyn Fn(&Ctx<'_>) -> bool + Send + Sync>;

/// One compiled rule.
pub struct Rule {
    pub id: Arc<str>,
    pub reason: Arc<str>,
    pub description: String,
    pub score: i32,
    pub force: Option<Decision>,
    pub mode: Mode,
    pub tags: Vec<String>,
    pub owner: String,
    /// The condition's source, for tools.
    pub when: String,
    cond: Cond,
    /// Hit-rate ceiling, when the rule declares one.
    pub(crate) breaker: Option<Breaker>,
    /// Shown instead of `reason` while the breaker holds the rule in shadow.
    demoted_reason: Arc<str>,
    /// `fraudline_rule_hits_total{rule_id, mode}`: active, shadow, demoted.
    hits: [metrics::Counter; 3],
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("id", &self.id)
            .field("score", &self.score)
            .field("force", &self.force)
            .field("mode", &self.mode)
            .field("when", &self.when)
            .finish()
    }
}

impl Rule {
    pub fn new(
        id: &str,
        reason: &str,
        score: i32,
        mode: Mode,
        cond: impl Fn(&Ctx<'_>) -> bool + Send + Sync + 'static,
    ) -> Rule {
        let counter = |mode: &'static str| {
            metrics::counter!(
                crate::telemetry::RULE_HITS,
                "rule_id" => id.to_string(),
                "mode" => mode
            )
        };
        Rule {
            hits: [counter("active"), counter("shadow"), counter("demoted")],
            id: Arc::from(id),
            reason: Arc::from(reason),
            demoted_reason: Arc::from(format!(
                "[demoted to shadow by its hit-rate breaker] {reason}"
            )),
            description: String::new(),
            score,
            force: None,
            mode,
            tags: Vec::new(),
            owner: String::new(),
            when: String::new(),
            cond: Box::new(cond),
            breaker: None,
        }
    }

    /// Whether the breaker holds this rule in shadow now.
    pub fn is_demoted(&self) -> bool {
        self.breaker
            .as_ref()
            .is_some_and(|b| b.demoted.load(Ordering::Relaxed))
    }
}

/// A complete, validated rule set: swapped in whole.
#[derive(Debug)]
pub struct RuleSet {
    pub version: Arc<str>,
    /// `sha256:<hex>` of the rule file's bytes, or `builtin`.
    pub hash: Arc<str>,
    pub thresholds: Thresholds,
    pub rules: Vec<Rule>,
    /// Events scored, for the breakers' hit rates (only counted when a
    /// rule has a breaker).
    events: RateWindow,
    has_breakers: bool,
}

impl RuleSet {
    pub fn new(version: &str, hash: &str, thresholds: Thresholds, rules: Vec<Rule>) -> RuleSet {
        RuleSet {
            version: Arc::from(version),
            hash: Arc::from(hash),
            thresholds,
            has_breakers: rules.iter().any(|r| r.breaker.is_some()),
            rules,
            events: RateWindow::default(),
        }
    }

    /// The built-in checks fraudline runs when no rule file is configured.
    pub fn builtin(thresholds: Thresholds, p: &BuiltinParams) -> RuleSet {
        let large = p.large_amount_minor;
        let burst = f64::from(p.payer_burst_1m);
        let fan_in = f64::from(p.payee_fan_in_10m);
        RuleSet::new(
            "builtin-1",
            "builtin",
            thresholds,
            vec![
                Rule::new(
                    "LARGE_AMOUNT",
                    "Amount at or above the large-payment limit",
                    40,
                    Mode::Active,
                    move |c| c.payment.amount_minor >= large,
                ),
                Rule::new(
                    "PAYER_BURST_1M",
                    "Many payments from one payer within a minute",
                    30,
                    Mode::Active,
                    move |c| c.features.get(F::PayerCount1m) >= burst,
                ),
                Rule::new(
                    "PAYEE_FAN_IN_10M",
                    "Payee collects from many payers within 10 minutes (mule pattern)",
                    50,
                    Mode::Active,
                    move |c| c.features.get(F::PayeeDistinctPayers10m) >= fan_in,
                ),
            ],
        )
    }

    /// Runs every rule; active hits add to the score, shadow hits (and hits
    /// of rules their breaker demoted) are listed and never decide.
    pub fn evaluate(&self, ctx: &Ctx<'_>, v: &mut Verdict) {
        if self.has_breakers {
            self.events.add(ctx.now_ms);
        }
        for r in &self.rules {
            if !(r.cond)(ctx) {
                continue;
            }
            let demoted = r.is_demoted();
            let shadow = demoted || r.mode == Mode::Shadow;
            let counter = if demoted {
                2
            } else {
                usize::from(r.mode == Mode::Shadow)
            };
            r.hits[counter].increment(1);
            if let (Some(b), false) = (&r.breaker, demoted) {
                b.hit(ctx.now_ms, &self.events, &r.id);
            }
            v.add_hit(
                Reason {
                    rule_id: r.id.clone(),
                    reason: if demoted {
                        r.demoted_reason.clone()
                    } else {
                        r.reason.clone()
                    },
                    score: r.score,
                },
                shadow,
                if shadow { None } else { r.force },
            );
        }
    }
}

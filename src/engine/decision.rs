//! Rule hits + list hits + thresholds -> a decision with its reasons.

use std::sync::Arc;

use smallvec::SmallVec;

use super::blocklist::ListHit;
use super::features::{FeatureVector, F};
use super::model::Model;

/// What the payment switch should do with the payment. Ordered by severity,
/// so the stronger of two decisions is their `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Decision {
    Allow,
    Review,
    Hold,
}

impl Decision {
    pub const ALL: [Decision; 3] = [Decision::Allow, Decision::Review, Decision::Hold];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "ALLOW",
            Decision::Review => "REVIEW",
            Decision::Hold => "HOLD",
        }
    }

    pub fn to_wire(self) -> crate::proto::Decision {
        match self {
            Decision::Allow => crate::proto::Decision::Allow,
            Decision::Review => crate::proto::Decision::Review,
            Decision::Hold => crate::proto::Decision::Hold,
        }
    }
}

/// Score thresholds: a total at or above `review` gives REVIEW, at or above
/// `hold` gives HOLD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub review: i32,
    pub hold: i32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            review: 40,
            hold: 80,
        }
    }
}

/// One contribution to a verdict. Ids and texts are shared with the rule set
/// (`Arc<str>`), so building a reason never allocates.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Reason {
    pub rule_id: Arc<str>,
    pub reason: Arc<str>,
    pub score: i32,
}

/// The engine's answer for one payment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    pub decision: Decision,
    pub score: i32,
    pub reasons: SmallVec<[Reason; 4]>,
    pub shadow_hits: SmallVec<[Reason; 2]>,
    pub rules_version: Arc<str>,
    pub blocklist_version: u64,
    pub decided_at_ms: i64,
    pub engine_time_ns: u64,
    /// A decision forced by a list hit or a forcing rule, beyond the score.
    #[serde(skip)]
    pub forced: Option<Decision>,
    /// The feature values this decision saw (for `--explain`).
    pub features: FeatureVector,
    /// The model that gave `model.score` (its version, shared), and the
    /// shadow model scored beside it with its score (NaN when none).
    pub model_version: Option<Arc<str>>,
    pub shadow_model_version: Option<Arc<str>>,
    pub shadow_model_score: f64,
    /// The model itself, for the explain's contributions (not serialised:
    /// a verdict read back from the wire has only the version).
    #[serde(skip)]
    pub model: Option<Arc<Model>>,
}

/// Contributions the explain lists.
const TOP_CONTRIBUTIONS: usize = 5;

impl Verdict {
    pub(crate) fn new(rules_version: Arc<str>, blocklist_version: u64, now_ms: i64) -> Verdict {
        Verdict {
            decision: Decision::Allow,
            score: 0,
            reasons: SmallVec::new(),
            shadow_hits: SmallVec::new(),
            rules_version,
            blocklist_version,
            decided_at_ms: now_ms,
            engine_time_ns: 0,
            forced: None,
            features: FeatureVector::default(),
            model_version: None,
            shadow_model_version: None,
            shadow_model_score: f64::NAN,
            model: None,
        }
    }

    /// The model's output the rules saw, when a model was loaded.
    pub fn model_score(&self) -> Option<f64> {
        self.model_version
            .as_ref()
            .map(|_| self.features.get(F::ModelScore))
            .filter(|s| !s.is_nan())
    }

    /// The shadow model's output, when one was loaded.
    pub fn shadow_score(&self) -> Option<f64> {
        self.shadow_model_version
            .as_ref()
            .map(|_| self.shadow_model_score)
            .filter(|s| !s.is_nan())
    }

    /// The explain's top contributions of the model (and its bias), when
    /// this verdict was scored here with a model that carries node values.
    pub fn model_contributions(&self) -> Option<(f64, Vec<super::model::Contribution>)> {
        let (bias, mut c) = self.model.as_ref()?.contributions(&self.features)?;
        c.truncate(TOP_CONTRIBUTIONS);
        Some((bias, c))
    }

    /// Whether this payment was scored without moving state because it was
    /// stale ([`super::STALE_EVENT`]): the state log's readers must not
    /// apply it either.
    pub fn is_stale(&self) -> bool {
        self.reasons
            .iter()
            .any(|r| &*r.rule_id == super::STALE_EVENT)
    }

    pub(crate) fn add_hit(&mut self, reason: Reason, shadow: bool, force: Option<Decision>) {
        if shadow {
            self.shadow_hits.push(reason);
            return;
        }
        self.score = self.score.saturating_add(reason.score);
        if let Some(f) = force {
            self.forced = Some(self.forced.map_or(f, |cur| cur.max(f)));
        }
        self.reasons.push(reason);
    }

    pub(crate) fn add_list_hit(&mut self, hit: ListHit) {
        let force = hit.action;
        self.add_hit(
            Reason {
                rule_id: hit.rule_id,
                reason: hit.reason,
                score: 0,
            },
            false,
            Some(force),
        );
    }

    /// Applies thresholds; a forced decision wins over the score.
    pub(crate) fn decide(&mut self, t: &Thresholds) {
        let by_score = if self.score >= t.hold {
            Decision::Hold
        } else if self.score >= t.review {
            Decision::Review
        } else {
            Decision::Allow
        };
        self.decision = match self.forced {
            Some(f) => f,
            None => by_score,
        };
    }

    /// The wire form published to the verdicts topic.
    pub fn to_wire(&self, event_id: &str, event_time_ms: i64) -> crate::proto::Verdict {
        let r = |r: &Reason| crate::proto::Reason {
            rule_id: r.rule_id.to_string(),
            reason: r.reason.to_string(),
            score: r.score,
        };
        crate::proto::Verdict {
            event_id: event_id.to_string(),
            decision: self.decision.to_wire() as i32,
            score: self.score,
            reasons: self.reasons.iter().map(r).collect(),
            shadow_hits: self.shadow_hits.iter().map(r).collect(),
            rules_version: self.rules_version.to_string(),
            blocklist_version: self.blocklist_version,
            decided_at_ms: self.decided_at_ms,
            engine_time_ns: self.engine_time_ns,
            event_time_ms,
            features: Default::default(),
            model_version: self
                .model_version
                .as_deref()
                .unwrap_or_default()
                .to_string(),
            model_score: self.model_score(),
            shadow_model_version: self
                .shadow_model_version
                .as_deref()
                .unwrap_or_default()
                .to_string(),
            shadow_model_score: self.shadow_score(),
            model_contributions: Vec::new(),
            model_bias: None,
        }
    }

    /// The verdict another instance gave, from its wire form (a state
    /// record of an in-line payment), so a retry here answers it. `None`
    /// when the decision is not one this build knows.
    pub fn from_wire(w: &crate::proto::Verdict) -> Option<Verdict> {
        let decision = match crate::proto::Decision::try_from(w.decision).ok()? {
            crate::proto::Decision::Allow => Decision::Allow,
            crate::proto::Decision::Review => Decision::Review,
            crate::proto::Decision::Hold => Decision::Hold,
            _ => return None,
        };
        let r = |r: &crate::proto::Reason| Reason {
            rule_id: Arc::from(r.rule_id.as_str()),
            reason: Arc::from(r.reason.as_str()),
            score: r.score,
        };
        let mut features = FeatureVector::default();
        for (k, v) in &w.features {
            if let Some(f) = super::features::F::by_name(k) {
                features.set(f, *v);
            }
        }
        Some(Verdict {
            decision,
            score: w.score,
            reasons: w.reasons.iter().map(r).collect(),
            shadow_hits: w.shadow_hits.iter().map(r).collect(),
            rules_version: Arc::from(w.rules_version.as_str()),
            blocklist_version: w.blocklist_version,
            decided_at_ms: w.decided_at_ms,
            engine_time_ns: w.engine_time_ns,
            forced: None,
            features,
            model_version: (!w.model_version.is_empty())
                .then(|| Arc::from(w.model_version.as_str())),
            shadow_model_version: (!w.shadow_model_version.is_empty())
                .then(|| Arc::from(w.shadow_model_version.as_str())),
            shadow_model_score: w.shadow_model_score.unwrap_or(f64::NAN),
            model: None,
        })
    }

    /// [`Verdict::to_wire`] with the feature values filled in.
    pub fn to_wire_explained(&self, event_id: &str, event_time_ms: i64) -> crate::proto::Verdict {
        let mut w = self.to_wire(event_id, event_time_ms);
        w.features = self
            .features
            .named()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        if let Some((bias, c)) = self.model_contributions() {
            w.model_bias = Some(bias);
            w.model_contributions = c
                .iter()
                .map(|c| crate::proto::FeatureContribution {
                    feature: c.feature.to_string(),
                    value: c.value,
                })
                .collect();
        }
        w
    }

    /// A JSON object for people and tools (`score`, `demo`).
    pub fn to_json(&self, event_id: &str, explain: bool) -> serde_json::Value {
        let mut v = serde_json::json!({
            "event_id": event_id,
            "decision": self.decision,
            "score": self.score,
            "reasons": self.reasons,
            "shadow_hits": self.shadow_hits,
            "rules_version": self.rules_version,
            "blocklist_version": self.blocklist_version,
            "decided_at_ms": self.decided_at_ms,
            "engine_time_ns": self.engine_time_ns,
        });
        if let Some(version) = &self.model_version {
            v["model"] = serde_json::json!({
                "version": version,
                "score": self.model_score(),
            });
        }
        if let Some(version) = &self.shadow_model_version {
            v["shadow_model"] = serde_json::json!({
                "version": version,
                "score": self.shadow_score(),
            });
        }
        if explain {
            v["features"] = serde_json::to_value(self.features).unwrap_or_default();
            if let Some((bias, c)) = self.model_contributions() {
                v["model_contributions"] = serde_json::json!({ "bias": bias, "top": c });
            }
        }
        v
    }
}

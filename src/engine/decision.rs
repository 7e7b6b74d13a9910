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

    /// [`Verdict::to_wire`]'s protobuf encoding, written straight from the
    /// verdict: the same bytes as `to_wire(..).encode_to_vec()`, in one
    /// allocation instead of one per string and reason (the verdicts topic's
    /// records are built by this on every scored payment).
    pub fn encode_wire(&self, event_id: &str, event_time_ms: i64) -> Vec<u8> {
        use prost::encoding::{encode_key, encode_varint, WireType};
        // Proto3: a field at its default is not written, as prost does.
        fn text(tag: u32, s: &str, out: &mut Vec<u8>) {
            if !s.is_empty() {
                encode_key(tag, WireType::LengthDelimited, out);
                encode_varint(s.len() as u64, out);
                out.extend_from_slice(s.as_bytes());
            }
        }
        fn varint(tag: u32, v: u64, out: &mut Vec<u8>) {
            if v != 0 {
                encode_key(tag, WireType::Varint, out);
                encode_varint(v, out);
            }
        }
        fn double(tag: u32, v: Option<f64>, out: &mut Vec<u8>) {
            // `optional`: present means written, even when 0.
            if let Some(v) = v {
                encode_key(tag, WireType::SixtyFourBit, out);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        // int32 / int64 go on the wire as the 64-bit two's complement.
        let signed = |v: i64| v as u64;
        fn reason(tag: u32, r: &Reason, out: &mut Vec<u8>) {
            let field = |s: &str| {
                if s.is_empty() {
                    0
                } else {
                    1 + prost::encoding::encoded_len_varint(s.len() as u64) + s.len()
                }
            };
            let score = if r.score == 0 {
                0
            } else {
                1 + prost::encoding::encoded_len_varint(i64::from(r.score) as u64)
            };
            let len = field(&r.rule_id) + field(&r.reason) + score;
            encode_key(tag, WireType::LengthDelimited, out);
            encode_varint(len as u64, out);
            text(1, &r.rule_id, out);
            text(2, &r.reason, out);
            varint(3, i64::from(r.score) as u64, out);
        }
        let strings = event_id.len()
            + self.rules_version.len()
            + self.model_version.as_deref().map_or(0, str::len)
            + self.shadow_model_version.as_deref().map_or(0, str::len);
        let reasons: usize = self
            .reasons
            .iter()
            .chain(&self.shadow_hits)
            .map(|r| 40 + r.rule_id.len() + r.reason.len())
            .sum();
        // An upper bound (every key and varint at its longest), so the
        // buffer never grows.
        let mut out = Vec::with_capacity(160 + strings + reasons);
        text(1, event_id, &mut out);
        varint(2, self.decision.to_wire() as i32 as u64, &mut out);
        varint(3, signed(i64::from(self.score)), &mut out);
        for r in &self.reasons {
            reason(4, r, &mut out);
        }
        for r in &self.shadow_hits {
            reason(5, r, &mut out);
        }
        text(6, &self.rules_version, &mut out);
        varint(7, self.blocklist_version, &mut out);
        varint(8, signed(self.decided_at_ms), &mut out);
        varint(9, self.engine_time_ns, &mut out);
        varint(10, signed(event_time_ms), &mut out);
        text(
            12,
            self.model_version.as_deref().unwrap_or_default(),
            &mut out,
        );
        double(13, self.model_score(), &mut out);
        text(
            14,
            self.shadow_model_version.as_deref().unwrap_or_default(),
            &mut out,
        );
        double(15, self.shadow_score(), &mut out);
        out
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message as _;

    fn reason(id: &str, text: &str, score: i32) -> Reason {
        Reason {
            rule_id: Arc::from(id),
            reason: Arc::from(text),
            score,
        }
    }

    proptest! {
        /// The direct encoder writes what prost writes for the wire form,
        /// byte for byte, whatever the verdict holds (defaults, negative
        /// numbers, a NaN model score, empty and multi-byte strings).
        #[test]
        fn encode_wire_is_prosts_encoding_of_to_wire(
            event_id in "[a-zé-]{0,40}",
            event_time_ms in any::<i64>(),
            decision in 0u8..3,
            score in any::<i32>(),
            reasons in proptest::collection::vec(("[A-Z_]{0,12}", "[a-z é]{0,30}", any::<i32>()), 0..6),
            shadow in proptest::collection::vec(("[A-Z_]{0,12}", "[a-z]{0,10}", -100i32..100), 0..3),
            rules_version in "[a-z0-9.]{0,12}",
            blocklist_version in any::<u64>(),
            decided_at_ms in any::<i64>(),
            engine_time_ns in any::<u64>(),
            model in proptest::option::of(("[a-z0-9-]{0,16}", prop_oneof![Just(f64::NAN), Just(0.0), any::<f64>()])),
            shadow_model in proptest::option::of(("[a-z0-9-]{0,16}", prop_oneof![Just(f64::NAN), Just(0.0), any::<f64>()])),
        ) {
            let mut v = Verdict::new(Arc::from(rules_version.as_str()), blocklist_version, decided_at_ms);
            v.decision = [Decision::Allow, Decision::Review, Decision::Hold][usize::from(decision)];
            v.score = score;
            v.engine_time_ns = engine_time_ns;
            v.reasons = reasons.iter().map(|(a, b, s)| reason(a, b, *s)).collect();
            v.shadow_hits = shadow.iter().map(|(a, b, s)| reason(a, b, *s)).collect();
            if let Some((version, score)) = &model {
                v.model_version = Some(Arc::from(version.as_str()));
                v.features.set(F::ModelScore, *score);
            }
            if let Some((version, score)) = &shadow_model {
                v.shadow_model_version = Some(Arc::from(version.as_str()));
                v.shadow_model_score = *score;
            }
            let want = v.to_wire(&event_id, event_time_ms).encode_to_vec();
            let got = v.encode_wire(&event_id, event_time_ms);
            prop_assert_eq!(&got, &want);
            prop_assert!(got.capacity() >= got.len());
        }
    }
}

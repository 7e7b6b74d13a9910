//! The in-line HTTP answer in protobuf's canonical JSON mapping (proto3),
//! so a switch that generated its client from proto/fraudline/v1 parses it
//! with its protobuf library's JSON parser (`JsonFormat.parser()`,
//! `json_format.Parse`, `protojson.Unmarshal`) into a `fraudline.v1.Verdict`,
//! and a plain JSON library reads the same object.
//!
//! As protobuf's printers print with the option to keep the .proto's field
//! names and to print fields without presence even when they hold their
//! default: field names as in the .proto (`event_id`; parsers accept them
//! beside lowerCamelCase), enums by their full name (`"DECISION_HOLD"`),
//! 64-bit integers as decimal strings (JSON numbers lose precision past
//! 2^53 in JavaScript), every non-optional field present, optional ones
//! only when set, non-finite doubles as `"NaN"` / `"Infinity"`.

use serde_json::{json, Map, Value};

use crate::proto;

/// A double as proto3 JSON prints it.
fn double(v: f64) -> Value {
    if v.is_nan() {
        Value::from("NaN")
    } else if v == f64::INFINITY {
        Value::from("Infinity")
    } else if v == f64::NEG_INFINITY {
        Value::from("-Infinity")
    } else {
        Value::from(v)
    }
}

fn reasons(rs: &[proto::Reason]) -> Value {
    Value::Array(
        rs.iter()
            .map(|r| json!({"rule_id": r.rule_id, "reason": r.reason, "score": r.score}))
            .collect(),
    )
}

/// `fraudline.v1.Verdict` as canonical proto3 JSON (see the module docs).
pub fn verdict(w: &proto::Verdict) -> Value {
    let decision = proto::Decision::try_from(w.decision)
        .map(|d| Value::from(d.as_str_name()))
        .unwrap_or_else(|_| Value::from(w.decision));
    let mut m = Map::new();
    m.insert("event_id".into(), w.event_id.clone().into());
    m.insert("decision".into(), decision);
    m.insert("score".into(), w.score.into());
    m.insert("reasons".into(), reasons(&w.reasons));
    m.insert("shadow_hits".into(), reasons(&w.shadow_hits));
    m.insert("rules_version".into(), w.rules_version.clone().into());
    m.insert(
        "blocklist_version".into(),
        w.blocklist_version.to_string().into(),
    );
    m.insert("decided_at_ms".into(), w.decided_at_ms.to_string().into());
    m.insert("engine_time_ns".into(), w.engine_time_ns.to_string().into());
    m.insert("event_time_ms".into(), w.event_time_ms.to_string().into());
    let mut features: Vec<(&String, &f64)> = w.features.iter().collect();
    features.sort_by(|a, b| a.0.cmp(b.0));
    m.insert(
        "features".into(),
        Value::Object(
            features
                .into_iter()
                .map(|(k, v)| (k.clone(), double(*v)))
                .collect(),
        ),
    );
    m.insert("model_version".into(), w.model_version.clone().into());
    if let Some(s) = w.model_score {
        m.insert("model_score".into(), double(s));
    }
    m.insert(
        "shadow_model_version".into(),
        w.shadow_model_version.clone().into(),
    );
    if let Some(s) = w.shadow_model_score {
        m.insert("shadow_model_score".into(), double(s));
    }
    m.insert(
        "model_contributions".into(),
        Value::Array(
            w.model_contributions
                .iter()
                .map(|c| json!({"feature": c.feature, "value": double(c.value)}))
                .collect(),
        ),
    );
    if let Some(b) = w.model_bias {
        m.insert("model_bias".into(), double(b));
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_prints_as_proto3_json() {
        let w = proto::Verdict {
            event_id: "e-1".into(),
            decision: proto::Decision::Hold as i32,
            score: 120,
            reasons: vec![proto::Reason {
                rule_id: "MULE".into(),
                reason: "fan-in".into(),
                score: 120,
            }],
            blocklist_version: 7,
            decided_at_ms: 1_795_514_678_561,
            engine_time_ns: 21_180,
            event_time_ms: 1_795_514_678_000,
            model_score: Some(f64::NAN),
            features: [("payer.count_1h".to_string(), 3.0)].into(),
            ..Default::default()
        };
        let v = verdict(&w);
        assert_eq!(v["decision"], "DECISION_HOLD");
        assert_eq!(v["decided_at_ms"], "1795514678561");
        assert_eq!(v["blocklist_version"], "7");
        assert_eq!(v["reasons"][0]["rule_id"], "MULE");
        assert_eq!(v["model_score"], "NaN");
        assert_eq!(v["features"]["payer.count_1h"], 3.0);
        assert!(v.get("shadow_model_score").is_none(), "unset optional");
        assert_eq!(v["shadow_hits"], json!([]), "repeated, empty, printed");
    }
}

use super::*;
use crate::engine::decision::Verdict;
use crate::engine::features::FeatureVector;

const GOOD: &str = r#"
version = "t-1"

[thresholds]
review = 40
hold = 80

[lists]
high_risk_mcc = ["7995"]

[[rule]]
id = "MULE_FAN_IN"
when = "payee.distinct_payers_10m >= 8 && amount >= 2_000_000 && payer.new_payee"
score = 60
reason = "Payee collects from many new payers"

[[rule]]
id = "BIG"
when = "amount >= 10_000_000"
score = 30
reason = "Large amount"

[[rule]]
id = "CASINO"
when = 'in_list("high_risk_mcc", merchant_category)'
decision = "HOLD"
reason = "Gambling merchant"

[[rule]]
id = "SALARY"
when = 'payer.account == "EMPLOYER"'
decision = "ALLOW"
reason = "Whitelisted payroll"

[[rule]]
id = "TRY_NIGHT"
when = "hour < 6 || amount >= 1"
score = 100
mode = "shadow"
reason = "Night payment (trial)"

[[test]]
name = "fan-in into a new payee is held"
event = { event_id = "t1", event_time_ms = 1795526680451, amount_minor = 12000000, currency = "VND", payer = { account = "1" }, payee = { account = "2" } }
features = { "payee.distinct_payers_10m" = 9, "payer.new_payee" = 1 }
expect = "HOLD"
hits = ["MULE_FAN_IN", "BIG"]
shadow_hits = ["TRY_NIGHT"]
"#;

fn errors(src: &str) -> Vec<String> {
    match compile("rules.toml", src) {
        Ok(_) => vec![],
        Err(e) => e.errors().iter().map(ToString::to_string).collect(),
    }
}

fn payment(amount: i64, payer: &str, mcc: &str) -> Payment {
    let json = format!(
        r#"{{"event_id":"e","event_time_ms":1795526680451,"amount_minor":{amount},"currency":"VND",
            "payer":{{"account":"{payer}"}},"payee":{{"account":"P"}},"merchant_category":"{mcc}"}}"#
    );
    event::decode(
        json.as_bytes(),
        Some(Format::Json),
        &Limits::default(),
        i64::MAX / 2,
    )
    .expect("valid test payment")
}

fn verdict(file: &RuleFile, p: &Payment, fv: FeatureVector) -> Verdict {
    crate::engine::decide(p, fv, &file.rules, &crate::engine::Blocklist::empty(), 0)
}

#[test]
fn a_good_file_loads_with_its_version_hash_and_tests() {
    let f = compile("rules.toml", GOOD).expect("loads");
    assert_eq!(&*f.rules.version, "t-1");
    assert!(f.rules.hash.starts_with("sha256:") && f.rules.hash.len() == 7 + 64);
    assert_eq!(f.rules.rules.len(), 5);
    let outcomes = run_tests(&f);
    assert_eq!(outcomes.len(), 1);
    assert!(outcomes[0].passed, "{:?}", outcomes[0]);
}

#[test]
fn forced_decisions_and_whitelists() {
    let f = compile("rules.toml", GOOD).expect("loads");
    let v = verdict(&f, &payment(100, "A", "7995"), FeatureVector::default());
    assert_eq!(v.decision, Decision::Hold, "forced HOLD with score 0");
    let v = verdict(
        &f,
        &payment(50_000_000, "EMPLOYER", ""),
        FeatureVector::default(),
    );
    assert_eq!(v.score, 30);
    assert_eq!(v.decision, Decision::Allow, "whitelisted flow");
    let v = verdict(
        &f,
        &payment(50_000_000, "EMPLOYER", "7995"),
        FeatureVector::default(),
    );
    assert_eq!(v.decision, Decision::Hold, "HOLD beats a whitelist");
}

#[test]
fn shadow_rules_never_change_the_decision() {
    let with = compile("rules.toml", GOOD).expect("loads");
    let without = compile("rules.toml", &GOOD.replace(
        "[[rule]]\nid = \"TRY_NIGHT\"\nwhen = \"hour < 6 || amount >= 1\"\nscore = 100\nmode = \"shadow\"\nreason = \"Night payment (trial)\"\n",
        "",
    ).replace("shadow_hits = [\"TRY_NIGHT\"]\n", ""))
    .expect("loads");
    assert_eq!(without.rules.rules.len(), 4);
    for amount in [1, 5_000_000, 20_000_000] {
        for fan in [0.0, 9.0] {
            let mut fv = FeatureVector::default();
            fv.set(F::PayeeDistinctPayers10m, fan);
            fv.set(F::PayerNewPayee, 1.0);
            let p = payment(amount, "A", "");
            let a = verdict(&with, &p, fv);
            let b = verdict(&without, &p, fv);
            assert_eq!((a.decision, a.score), (b.decision, b.score));
            assert_eq!(a.shadow_hits.len(), 1, "the night rule is listed");
        }
    }
}

#[test]
fn every_error_is_listed_with_its_place() {
    let src = r#"version = "x"

[thresholds]
review = 50
hold = 40

[[rule]]
id = "A"
when = "payee.distinct_payer_10m >= 8"
score = 10
reason = "r"

[[rule]]
id = "A"
when = "amount >= \"big\""
score = 10
reason = "r"

[[rule]]
id = "C"
when = "amount > 1"
reason = "r"
mode = "loud"
"#;
    assert_eq!(
        errors(src),
        [
            "rules.toml:3:1: thresholds.hold (40) must be at or above thresholds.review (50)",
            "rules.toml:9:9: rule A: unknown name `payee.distinct_payer_10m`; did you mean `payee.distinct_payers_10m`?",
            "rules.toml:14:7: duplicate rule id \"A\"",
            "rules.toml:15:19: rule A: `>=` needs num operands, found string",
            "rules.toml:20:7: rule C: needs a score or a decision",
            "rules.toml:23:8: rule C: mode \"loud\" is not \"active\" or \"shadow\"",
        ]
    );
}

#[test]
fn toml_syntax_errors_and_unknown_keys_are_located() {
    let e = errors("version = \"x\"\n[thresholds]\nreview = 1\nhold = 2\n[[rule]]\nid = \"A\"\nwhen = \"amount > 1\"\nscore = 1\nreason = \"r\"\ncolour = \"red\"\n");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("rules.toml:10:1: unknown field `colour`"),
        "{e:?}"
    );
    let e = errors("version = \"x\"\n[thresholds\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("rules.toml:2:"), "{e:?}");
}

#[test]
fn a_failing_rule_test_says_why() {
    let src = GOOD.replace("expect = \"HOLD\"", "expect = \"ALLOW\"");
    let f = compile("rules.toml", &src).expect("loads");
    let o = run_tests(&f);
    assert!(!o[0].passed);
    assert_eq!(o[0].problems, ["decision HOLD (score 90), expected ALLOW"]);
}

#[test]
fn a_rule_past_its_hit_rate_ceiling_is_demoted_to_shadow_until_reloaded() {
    let src = r#"
version = "b-1"
[thresholds]
review = 40
hold = 80
[[rule]]
id = "EVERYTHING"
when = "amount >= 1"
score = 90
reason = "bad rule"
max_hit_rate = 0.5
breaker_min_events = 100
[[rule]]
id = "BIG"
when = "amount >= 1_000_000"
score = 40
reason = "big"
"#;
    let f = compile("rules.toml", src).expect("loads");
    let p = payment(10, "A", "");
    let t = 1_795_526_680_000;
    let mut decisions = Vec::new();
    for i in 0..150 {
        let v = crate::engine::decide(
            &p,
            FeatureVector::default(),
            &f.rules,
            &crate::engine::Blocklist::empty(),
            t + i,
        );
        decisions.push(v);
    }
    // Judged from the 100th event on: every event hits, 100 % > 50 %.
    assert_eq!(decisions[98].decision, Decision::Hold);
    let last = decisions.last().expect("scored");
    assert_eq!(
        last.decision,
        Decision::Allow,
        "the demoted rule no longer decides"
    );
    assert_eq!(last.score, 0);
    assert!(last.shadow_hits[0]
        .reason
        .starts_with("[demoted to shadow by its hit-rate breaker]"));
    assert!(f.rules.rules[0].is_demoted());
    assert!(!f.rules.rules[1].is_demoted());
    // A reload builds a fresh set: restored.
    let again = compile("rules.toml", src).expect("loads");
    assert!(!again.rules.rules[0].is_demoted());
}

#[test]
fn the_default_pack_loads_has_30_rules_or_more_and_passes_its_tests() {
    let f = default_pack().expect("the default pack compiles");
    assert!(f.rules.rules.len() >= 30, "{}", f.rules.rules.len());
    let failed: Vec<_> = run_tests(&f).into_iter().filter(|t| !t.passed).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(f.tests.len() >= 5);
}

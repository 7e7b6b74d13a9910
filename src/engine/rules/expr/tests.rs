use std::collections::{BTreeMap, HashMap};

use super::*;
use crate::engine::Decision;
use crate::event::{AccountKind, Channel, Currency, Party, PaymentType};

/// 2024-03-01T10:30:00Z
const T0: i64 = 1_709_289_000_000;

fn payment() -> Payment {
    Payment {
        event_id: "e1".into(),
        event_time_ms: T0,
        payer: Party {
            account: "PAYER1".into(),
            bank_code: "VCB".into(),
            kind: AccountKind::Account,
        },
        payee: Party {
            account: "MULE9".into(),
            bank_code: "TCB".into(),
            kind: AccountKind::Ewallet,
        },
        amount_minor: 5_000_000,
        currency: Currency::parse("VND").unwrap(),
        channel: Channel::Mobile,
        payment_type: PaymentType::Transfer,
        device_id: "DEV-1".into(),
        ip: String::new(),
        phone: "+84901234567".into(),
        geo: None,
        country: "VN".into(),
        merchant_category: String::new(),
        attributes: BTreeMap::from([
            ("merchant_name".to_string(), "Lucky CASINO Ltd".to_string()),
            ("empty".to_string(), String::new()),
        ]),
    }
}

fn features() -> FeatureVector {
    let mut f = FeatureVector::default();
    f.set(F::PayeeDistinctPayers10m, 9.0);
    f.set(F::PayerCount1m, 3.0);
    f.set_bool(F::PayerNewPayee, true);
    f.set_bool(F::PayerNewIp, false);
    // PayerAmountZscore, PayerNewDevice and the rest stay absent (NaN).
    f
}

/// One entry of the [`Listed`] stand-in.
#[derive(Debug, Clone, Copy)]
struct Stub {
    action: Decision,
    source: &'static str,
    /// Expired from this time on, as in the engine's list.
    expires_at_ms: Option<i64>,
}

/// A live HOLD entry from the national scheme, no expiry.
const HOLD_NATIONAL: Stub = Stub {
    action: Decision::Hold,
    source: "national-scheme",
    expires_at_ms: None,
};

/// A blocklist stand-in: entries by (kind, exact value), with expiry.
#[derive(Default)]
struct Listed(HashMap<(ListKind, String), Stub>);

impl Listed {
    fn with(mut self, kind: ListKind, value: &str, stub: Stub) -> Self {
        self.0.insert((kind, value.to_string()), stub);
        self
    }
}

impl ListLookup for Listed {
    fn listed(&self, kind: ListKind, value: &str, now_ms: i64) -> Option<ListedEntry<'_>> {
        let s = self.0.get(&(kind, value.to_string()))?;
        if s.expires_at_ms.is_some_and(|t| t <= now_ms) {
            return None;
        }
        Some(ListedEntry {
            kind,
            action: s.action,
            source: s.source,
            reason: "stub",
        })
    }
}

fn env() -> Env {
    Env {
        lists: HashMap::from([
            (
                "vip_payees".to_string(),
                vec!["PAYER1".to_string(), "ACME".to_string()],
            ),
            ("casinos".to_string(), vec!["lucky casino ltd".to_string()]),
        ]),
        utc_offset_minutes: 7 * 60,
        home_country: "VN".into(),
        round_unit_minor: 1_000_000,
    }
}

/// Compiles and interprets `src` against the default payment and
/// features; the two must agree.
fn eval_with(src: &str, p: &Payment, f: &FeatureVector) -> bool {
    let lists = Listed::default().with(ListKind::Ewallet, "MULE9", HOLD_NATIONAL);
    eval_in(src, p, f, &lists)
}

/// [`eval_with`] against a given blocklist, read at `T0`.
fn eval_in(src: &str, p: &Payment, f: &FeatureVector, lists: &dyn ListLookup) -> bool {
    let ctx = Ctx {
        payment: p,
        features: f,
        blocklist: lists,
        now_ms: T0,
    };
    let env = env();
    let c = compile(src, &env).unwrap_or_else(|e| panic!("{src}: {e:?}"));
    let compiled = c.eval(&ctx);
    let interpreted = interpret(src, &env, &ctx).unwrap();
    assert_eq!(
        compiled, interpreted,
        "compiled and interpreted disagree on {src}"
    );
    compiled
}

fn eval(src: &str) -> bool {
    eval_with(src, &payment(), &features())
}

/// The errors as (start, end, message).
fn errors(src: &str) -> Vec<(usize, usize, String)> {
    match compile(src, &env()) {
        Ok(_) => panic!("{src} compiled"),
        Err(es) => es
            .into_iter()
            .map(|e| (e.span.start, e.span.end, e.message))
            .collect(),
    }
}

fn error(src: &str) -> (usize, usize, String) {
    let es = errors(src);
    assert_eq!(es.len(), 1, "{src}: {es:?}");
    es.into_iter().next().unwrap()
}

fn e(start: usize, end: usize, m: &str) -> (usize, usize, String) {
    (start, end, m.to_string())
}

#[test]
fn syntax_errors_point_at_the_offending_text() {
    assert_eq!(
        error("amount >"),
        e(8, 8, "unexpected end of expression, expected a value")
    );
    assert_eq!(
        error("amount = 5"),
        e(
            7,
            8,
            "unexpected `=`, expected an operator or end of expression (use `==` to compare)"
        )
    );
    assert_eq!(
        error("amount > 5 and payer.new_payee"),
        e(
            11,
            14,
            "unexpected `and`, expected an operator or end of expression (use `&&`)"
        )
    );
    assert_eq!(
        error("(amount > 5"),
        e(
            11,
            11,
            "unexpected end of expression, expected an operator or `)`"
        )
    );
    assert_eq!(
        error("amount > 5)"),
        e(
            10,
            11,
            "unexpected `)`, expected an operator or end of expression"
        )
    );
    assert_eq!(
        error(""),
        e(0, 0, "unexpected end of expression, expected a value")
    );
    assert_eq!(
        error("'\\q' == country"),
        e(
            1,
            3,
            "unknown escape `\\q` (known: \\n \\t \\r \\0 \\\\ \\\" \\' \\uXXXX)"
        )
    );
    assert_eq!(
        error("amount >= 1e999"),
        e(10, 15, "`1e999` is not a finite number")
    );
}

#[test]
fn names_are_resolved_with_suggestions() {
    assert_eq!(
        error("payer.count_1n > 3"),
        e(
            0,
            14,
            "unknown name `payer.count_1n`; did you mean `payer.count_1m`?"
        )
    );
    assert_eq!(
        error("amount > 1 && payee.acount == \"x\""),
        e(
            14,
            26,
            "unknown name `payee.acount`; did you mean `payee.account`?"
        )
    );
    assert_eq!(error("zzzzzzzz"), e(0, 8, "unknown name `zzzzzzzz`"));
    assert_eq!(
        error("attributes == \"x\""),
        e(
            0,
            10,
            "`attributes` needs a key: `attributes[\"name\"]` or `attributes.name`"
        )
    );
    assert_eq!(
        error("attributes[1] == \"a\""),
        e(
            11,
            12,
            "the key of `attributes[..]` must be a string literal"
        )
    );
    assert_eq!(
        error("startswith(country, \"V\")"),
        e(
            0,
            10,
            "unknown function `startswith`; did you mean `startsWith`?"
        )
    );
    assert_eq!(
        error("frobnicate(amount)"),
        e(0, 10, "unknown function `frobnicate`")
    );
    assert_eq!(
        error("in_list(\"vip\", payee.account)"),
        e(
            8,
            13,
            "unknown list `vip`; the rule file defines: casinos, vip_payees"
        )
    );
    assert_eq!(
        error("in_list(\"casino\", payee.account)"),
        e(8, 16, "unknown list `casino`; did you mean `casinos`?")
    );
    assert_eq!(
        error("in_list(x, payee.account)"),
        e(
            8,
            9,
            "the first argument of `in_list` must be a list name in quotes"
        )
    );
    assert_eq!(
        error("blocklisted(amount)"),
        e(
            12,
            18,
            "`blocklisted` takes one of: payee, payer, device, phone, ip"
        )
    );
}

#[test]
fn types_are_checked_and_every_error_is_reported() {
    assert_eq!(
        error("amount && true"),
        e(0, 6, "`&&` needs bool operands, found num")
    );
    assert_eq!(
        errors("1 && 2 || country"),
        vec![
            e(0, 1, "`&&` needs bool operands, found num"),
            e(5, 6, "`&&` needs bool operands, found num"),
            e(10, 17, "`||` needs bool operands, found string"),
        ]
    );
    assert_eq!(
        errors("payer.count_1x > 1 && amount + \"a\" > 0 && lower(1) == \"a\""),
        vec![
            e(
                0,
                14,
                "unknown name `payer.count_1x`; did you mean `payer.count_1m`?"
            ),
            e(31, 34, "`+` needs num operands, found string"),
            e(48, 49, "argument 1 of `lower` must be string, found num"),
        ]
    );
    assert_eq!(
        error("\"a\" < 1"),
        e(0, 3, "`<` needs num operands, found string")
    );
    assert_eq!(
        error("amount == \"x\""),
        e(
            0,
            13,
            "`==` needs operands of the same type, found num and string"
        )
    );
    assert_eq!(
        error("amount in 5"),
        e(10, 11, "`in` needs a list literal on the right, found num")
    );
    assert_eq!(
        error("amount in [\"a\"]"),
        e(
            0,
            15,
            "`in` needs an element of the list's type, found num in a list of string"
        )
    );
    assert_eq!(
        error("amount in [1, \"a\"]"),
        e(
            10,
            18,
            "list items must all have one type, found num and string"
        )
    );
    assert_eq!(
        error("amount in [amount]"),
        e(11, 17, "list items must be number or string literals")
    );
    assert_eq!(
        errors("[1] == [1]"),
        vec![
            e(
                0,
                3,
                "a list can only follow `in` or be the argument of `size()`"
            ),
            e(
                7,
                10,
                "a list can only follow `in` or be the argument of `size()`"
            ),
        ]
    );
    assert_eq!(
        error("amount + 1"),
        e(0, 10, "a condition must be bool, found num")
    );
    assert_eq!(
        error("amount > 1 ? \"a\" : 2"),
        e(
            0,
            20,
            "`? :` branches must have the same type, found string and num"
        )
    );
    assert_eq!(
        error("amount ? true : false"),
        e(0, 6, "`? :` needs a bool condition, found num")
    );
    assert_eq!(
        error("-\"a\" == 1"),
        e(1, 4, "unary `-` needs a num operand, found string")
    );
    assert_eq!(
        error("!amount"),
        e(1, 7, "`!` needs a bool operand, found num")
    );
    assert_eq!(
        error("country.startsWith(1)"),
        e(
            19,
            20,
            "argument 1 of `startsWith` must be string, found num"
        )
    );
    assert_eq!(
        error("amount.startsWith(\"1\")"),
        e(
            0,
            6,
            "the receiver of `startsWith` must be string, found num"
        )
    );
}

#[test]
fn argument_counts_are_checked_in_the_style_written() {
    assert_eq!(
        error("country.startsWith()"),
        e(0, 20, "`x.startsWith(..)` takes 1 argument, found 0")
    );
    assert_eq!(
        error("starts_with(country)"),
        e(0, 20, "`starts_with` takes 2 arguments, found 1")
    );
    assert_eq!(
        error("min(1) > 0"),
        e(0, 6, "`min` takes at least 2 arguments, found 1")
    );
    assert_eq!(
        error("country.in_list(\"x\")"),
        e(8, 15, "`in_list` is not a method: write `in_list(..)`")
    );
}

#[test]
fn limits_refuse_pathological_input() {
    let deep = format!("{}true{}", "(".repeat(100), ")".repeat(100));
    assert_eq!(errors(&deep)[0].2, "brackets nest more than 48 deep");
    let long_chain = vec!["true"; 300].join(" && ");
    assert_eq!(
        errors(&long_chain)[0].2,
        "expression nests more than 200 levels deep"
    );
    let nots = format!("{}true", "!".repeat(500));
    assert_eq!(
        errors(&nots)[0].2,
        "expression nests more than 200 levels deep"
    );
    let huge = "a".repeat(20_000);
    assert_eq!(
        errors(&huge)[0].2,
        "expression is 20000 bytes, over the 16384-byte limit"
    );
}

#[test]
fn line_and_column_for_rule_files() {
    let src = "amount > 1 &&\n  payer.count_1n > 3";
    let es = compile(src, &env()).unwrap_err();
    assert_eq!(es[0].line_col(src), (2, 3));
    assert_eq!(
        es[0].to_string(),
        "unknown name `payer.count_1n`; did you mean `payer.count_1m`? (at 16..30)"
    );
    assert_eq!(es[0].kind, ErrorKind::UnknownName);
}

/// (expression, expected) against [`payment`] and [`features`], each checked
/// compiled and interpreted.
fn table(cases: &[(&str, bool)]) {
    for (src, want) in cases {
        assert_eq!(eval(src), *want, "{src}");
    }
}

#[test]
fn literals_arithmetic_and_precedence() {
    table(&[
        ("2_000_000 == 2000000", true),
        ("1.5 * 2 == 3", true),
        ("1e3 == 1_000", true),
        ("7 % 4 == 3", true),
        ("-7 % 4 == -3", true),
        ("10 / 4 == 2.5", true),
        ("-3 < 0", true),
        ("- -3 == 3", true),
        ("1 + 2 * 3 == 7", true),
        ("(1 + 2) * 3 == 9", true),
        ("10 - 2 - 3 == 5", true),
        ("true || false && false", true),
        ("(true || false) && false", false),
        ("!false && true", true),
        ("!true || true", true),
        ("1 < 2 == true", true),
        ("false ? false : true ? true : false", true),
        ("1 > 2 ? false : amount > 0", true),
        ("null == null", true),
        ("\"a\" != \"b\"", true),
        ("'it\\'s' == \"it's\"", true),
        ("\"a\\nb\".contains(\"\\n\")", true),
        ("\"\\u00e9\" == \"é\"", true),
        ("true == true && false != true", true),
    ]);
}

#[test]
fn absent_numbers_compare_false_and_propagate() {
    table(&[
        ("payer.amount_zscore > 0", false),
        ("payer.amount_zscore <= 0", false),
        ("payer.amount_zscore == 0", false),
        ("payer.amount_zscore != 0", false),
        ("!(payer.amount_zscore == 0)", true),
        (
            "payer.amount_zscore + 1 > 0 || payer.amount_zscore + 1 <= 0",
            false,
        ),
        (
            "-payer.amount_zscore < 0 || -payer.amount_zscore >= 0",
            false,
        ),
        ("payer.amount_zscore == null", true),
        ("payer.amount_zscore != null", false),
        ("null == payer.count_1m", false),
        ("present(payer.count_1m)", true),
        ("has(payer.amount_zscore)", false),
        ("amount / 0 > 0 || amount / 0 <= 0", false),
        ("amount % 0 == null", true),
        ("abs(payer.amount_zscore) >= 0", false),
        ("min(payer.amount_zscore, 1) == null", true),
        ("max(1, payer.amount_zscore) == null", true),
        ("payer.amount_zscore in [1, 2]", false),
        ("payer.amount_zscore > 0 ? true : true", true),
    ]);
}

#[test]
fn absent_bools_are_false_in_boolean_context_and_in_comparisons() {
    table(&[
        ("payer.new_payee", true),
        ("payer.new_ip", false),
        ("payer.new_device", false),
        ("!payer.new_device", true),
        ("payer.new_device || true", true),
        ("payer.new_device == false", false),
        ("payer.new_device != true", false),
        ("payer.new_ip == false", true),
        ("payer.new_payee != payer.new_ip", true),
        ("payer.new_device == null", true),
        ("present(payer.new_ip)", true),
        ("present(payer.new_device)", false),
        ("(amount > 0 ? payer.new_device : true) == null", true),
        ("payer.new_payee == (amount > 0)", true),
    ]);
}

#[test]
fn event_fields() {
    table(&[
        ("amount == 5_000_000", true),
        ("hour == 17", true),
        ("round_amount", true),
        ("cross_border", false),
        ("currency == \"VND\"", true),
        ("channel == \"MOBILE\"", true),
        ("\"MOBILE\" == channel", true),
        ("channel != \"WEB\"", true),
        ("payment_type == \"TRANSFER\"", true),
        ("payer.kind == \"ACCOUNT\"", true),
        ("payee.kind == \"EWALLET\"", true),
        ("payer.account == 'PAYER1'", true),
        (
            "payer.bank_code == \"VCB\" && payee.bank_code == \"TCB\"",
            true,
        ),
        ("payee.account == \"MULE9\"", true),
        ("device_id == \"DEV-1\"", true),
        ("phone.startsWith(\"+84\")", true),
        ("ip == null", true),
        ("ip != \"1.2.3.4\"", false),
        ("ip == \"\"", false),
        ("merchant_category == null", true),
        ("!present(merchant_category)", true),
        (
            "attributes[\"merchant_name\"] == \"Lucky CASINO Ltd\"",
            true,
        ),
        ("attributes.merchant_name.contains(\"CASINO\")", true),
        ("attributes.missing == null", true),
        ("attributes.missing != \"x\"", false),
        ("attributes.empty == null", true),
    ]);
}

#[test]
fn environment_fields_follow_the_environment() {
    let mut p = payment();
    let f = features();
    p.country = "us".into();
    assert!(eval_with("cross_border", &p, &f));
    p.country = "vn".into();
    assert!(!eval_with("cross_border", &p, &f), "ASCII case is ignored");
    p.country = String::new();
    assert!(
        !eval_with("cross_border", &p, &f),
        "no country is not cross-border"
    );
    p.amount_minor = 5_500_000;
    assert!(!eval_with("round_amount", &p, &f));
    // Just before midnight UTC is 06:59 at UTC+7; the hour wraps.
    p.event_time_ms = T0 + (13 * 60 + 29) * 60_000;
    assert!(eval_with("hour == 6", &p, &f));
    let neg = Env {
        utc_offset_minutes: -11 * 60,
        ..env()
    };
    let ctx = Ctx {
        payment: &p,
        features: &f,
        blocklist: &NoLists,
        now_ms: T0,
    };
    assert!(compile("hour == 12", &neg).unwrap().eval(&ctx));
    let zero = Env {
        round_unit_minor: 0,
        ..env()
    };
    assert_eq!(
        compile("round_amount", &zero).unwrap_err()[0].message,
        "`round_amount` needs a positive round unit, the environment has 0"
    );
}

#[test]
fn string_functions() {
    table(&[
        (
            "lower(attributes.merchant_name) == \"lucky casino ltd\"",
            true,
        ),
        (
            "attributes.merchant_name.lowerAscii().contains(\"casino\")",
            true,
        ),
        ("attributes.merchant_name.contains(\"casino\")", false),
        ("lower_ascii(\"ÀB\") == \"Àb\"", true),
        ("lower(country) == lower(\"vN\")", true),
        ("country.endsWith(\"N\")", true),
        ("ends_with(country, \"n\")", false),
        ("ends_with(lower(country), \"n\")", true),
        ("starts_with(lower(country), \"v\")", true),
        ("startsWith(country, \"VNX\")", false),
        ("contains(country, \"\")", true),
        ("ip.contains(\"\")", false),
        ("lower(ip) == null", true),
        ("size(country) == 2", true),
        ("country.size() == 2", true),
        ("size(\"héllo\") == 5", true),
        ("size([1, 2, 3]) == 3", true),
        ("size([]) == 0", true),
        ("size(ip) == null", true),
        ("(amount > 1 ? country : \"x\") == \"VN\"", true),
        (
            "(amount < 1 ? country : lower(\"XY\")).startsWith(\"x\")",
            true,
        ),
    ]);
}

#[test]
fn membership() {
    table(&[
        ("channel in [\"MOBILE\", \"WEB\"]", true),
        ("channel in [\"ATM\"]", false),
        ("country in []", false),
        ("amount in []", false),
        ("amount in [1, 5_000_000]", true),
        ("payer.count_1m in [-1, 3.0]", true),
        ("ip in [\"\"]", false),
        ("channel in [\"A\", \"B\", \"C\", \"D\", \"E\", \"F\", \"G\", \"H\", \"I\", \"MOBILE\"]", true),
        ("lower(channel) in [\"A\", \"B\", \"C\", \"D\", \"E\", \"F\", \"G\", \"H\", \"I\", \"mobile\"]", true),
        ("in_list(\"vip_payees\", payer.account)", true),
        ("in_list(\"vip_payees\", payee.account)", false),
        ("in_list(\"casinos\", lower(attributes.merchant_name))", true),
        ("in_list(\"casinos\", attributes.merchant_name)", false),
        ("in_list(\"vip_payees\", ip)", false),
    ]);
}

#[test]
fn numeric_functions() {
    table(&[
        ("abs(-3) == 3", true),
        ("abs(payer.count_1m - 10) == 7", true),
        ("min(payer.count_1m, 10, 2) == 2", true),
        ("max(payer.count_1m, payee.distinct_payers_10m) == 9", true),
        ("max(1, 2, 3, payer.count_1m) == 3", true),
    ]);
}

#[test]
fn blocklist_lookups_use_the_entity_kind() {
    table(&[
        ("blocklisted(payee)", true),
        ("blocklisted(payer)", false),
        ("blocklisted(device)", false),
        ("blocklisted(ip)", false),
        ("blocklisted(phone)", false),
    ]);
    // The payee is listed as an e-wallet; as a bank account it is not.
    let mut p = payment();
    p.payee.kind = AccountKind::Account;
    assert!(!eval_with("blocklisted(payee)", &p, &features()));
}

#[test]
fn blocklist_entry_functions_take_an_entity_like_blocklisted() {
    let entities = "takes one of: payee, payer, device, phone, ip";
    assert_eq!(
        error("blocklist_action(amount) == \"HOLD\""),
        e(17, 23, &format!("`blocklist_action` {entities}"))
    );
    assert_eq!(
        error("blocklist_kind(\"payee\") == \"account\""),
        e(15, 22, &format!("`blocklist_kind` {entities}"))
    );
    assert_eq!(
        error("blocklist_source(payee.account) == \"internal\""),
        e(17, 30, &format!("`blocklist_source` {entities}"))
    );
    assert_eq!(
        error("blocklist_action(merchant) == \"HOLD\""),
        e(17, 25, &format!("`blocklist_action` {entities}"))
    );
    assert_eq!(
        error("payee.blocklist_kind() == \"ewallet\""),
        e(
            6,
            20,
            "`blocklist_kind` is not a method: write `blocklist_kind(..)`"
        )
    );
    assert_eq!(
        error("blocklist_action(payee, device) == \"HOLD\""),
        e(0, 31, "`blocklist_action` takes 1 argument, found 2")
    );
    assert_eq!(
        error("blocklist_source() == \"internal\""),
        e(0, 18, "`blocklist_source` takes 1 argument, found 0")
    );
    assert_eq!(
        error("blocklist_actoin(payee) == \"HOLD\""),
        e(
            0,
            16,
            "unknown function `blocklist_actoin`; did you mean `blocklist_action`?"
        )
    );
    // They are strings: a condition, a number or a bool needs more.
    assert_eq!(
        error("blocklist_action(payee)"),
        e(0, 23, "a condition must be bool, found string")
    );
    assert_eq!(
        error("blocklist_action(payee) == 1"),
        e(
            0,
            28,
            "`==` needs operands of the same type, found string and num"
        )
    );
    assert_eq!(
        error("blocklist_kind(payee) && true"),
        e(0, 21, "`&&` needs bool operands, found string")
    );
    // Both mistakes of one condition are reported.
    assert_eq!(
        errors("blocklist_kind(amount) == \"ip\" || blocklisted(1)"),
        vec![
            e(15, 21, &format!("`blocklist_kind` {entities}")),
            e(46, 47, &format!("`blocklisted` {entities}")),
        ]
    );
}

/// A list with one entry for each entity of [`payment`] (with `ip`
/// "1.2.3.4"): live HOLD/REVIEW entries, one expired, one without a source.
fn every_entity_listed() -> Listed {
    Listed::default()
        .with(ListKind::Ewallet, "MULE9", HOLD_NATIONAL)
        .with(
            ListKind::Account,
            "PAYER1",
            Stub {
                action: Decision::Review,
                source: "internal",
                expires_at_ms: Some(T0 + 1),
            },
        )
        .with(
            ListKind::Device,
            "DEV-1",
            Stub {
                action: Decision::Review,
                source: "internal",
                // Expired at exactly the evaluation time.
                expires_at_ms: Some(T0),
            },
        )
        .with(
            ListKind::Phone,
            "+84901234567",
            Stub {
                action: Decision::Hold,
                source: "",
                expires_at_ms: None,
            },
        )
        .with(
            ListKind::Ip,
            "1.2.3.4",
            Stub {
                action: Decision::Review,
                source: "national-scheme",
                expires_at_ms: None,
            },
        )
}

#[test]
fn blocklist_entry_functions_read_each_entitys_live_entry() {
    let mut p = payment();
    p.ip = "1.2.3.4".into();
    let f = features();
    let lists = every_entity_listed();
    for (src, want) in [
        ("blocklist_action(payee) == \"HOLD\"", true),
        ("blocklist_kind(payee) == \"ewallet\"", true),
        ("blocklist_source(payee) == \"national-scheme\"", true),
        ("blocklist_action(payer) == \"REVIEW\"", true),
        ("blocklist_kind(payer) == \"account\"", true),
        (
            "blocklist_source(payer) == \"internal\" && amount < 10_000_000",
            true,
        ),
        ("blocklist_action(phone) == \"HOLD\"", true),
        ("blocklist_kind(phone) == \"phone\"", true),
        ("blocklist_action(ip) == \"REVIEW\"", true),
        ("blocklist_kind(ip) == \"ip\"", true),
        ("blocklist_action(ip) != \"HOLD\"", true),
        ("blocklist_action(payee) in [\"HOLD\", \"REVIEW\"]", true),
        ("blocklist_kind(payee).startsWith(\"e\")", true),
        ("lower(blocklist_action(payer)) == \"review\"", true),
        ("size(blocklist_source(payee)) == 15", true),
        (
            "(amount > 1 ? blocklist_kind(payee) : \"x\") == \"ewallet\"",
            true,
        ),
        ("blocklist_action(payee) == blocklist_action(phone)", true),
        ("blocklist_action(payee) == blocklist_action(ip)", false),
        // The device's entry expired at T0: gone, like `blocklisted`.
        ("blocklisted(device)", false),
        ("present(blocklist_action(device))", false),
        ("blocklist_kind(device) == null", true),
        // The phone's entry has no source: absent, not "".
        ("blocklist_source(phone) == null", true),
        ("blocklist_source(phone) == \"\"", false),
        ("blocklist_source(phone) != \"internal\"", false),
    ] {
        assert_eq!(eval_in(src, &p, &f, &lists), want, "{src}");
    }
    // The payee's kind picks the entry: as a bank account it is not listed.
    p.payee.kind = AccountKind::Account;
    assert!(eval_in("blocklist_kind(payee) == null", &p, &f, &lists));
    // An entity the payment lacks reads nothing, even if "" were listed.
    p.ip = String::new();
    let empty = Listed::default().with(ListKind::Ip, "", HOLD_NATIONAL);
    assert!(!eval_in("present(blocklist_action(ip))", &p, &f, &empty));
}

#[test]
fn absent_blocklist_entries_compare_false() {
    // `payer` is not listed in the default list; `device` not at all.
    table(&[
        ("blocklist_action(payer) == \"HOLD\"", false),
        ("blocklist_action(payer) != \"HOLD\"", false),
        ("blocklist_action(payer) == \"\"", false),
        ("blocklist_action(payer) in [\"HOLD\", \"REVIEW\"]", false),
        ("blocklist_kind(payer).startsWith(\"\")", false),
        ("blocklist_kind(payer).contains(\"\")", false),
        ("in_list(\"vip_payees\", blocklist_source(payer))", false),
        ("present(blocklist_source(device))", false),
        ("has(blocklist_kind(device))", false),
        ("blocklist_kind(device) == null", true),
        ("blocklist_source(device) != null", false),
        ("size(blocklist_source(device)) == null", true),
        ("lower(blocklist_action(device)) == null", true),
        ("!(blocklist_action(device) == \"REVIEW\")", true),
        ("blocklist_action(payer) == blocklist_action(device)", false),
        // The listed payee, for contrast.
        ("present(blocklist_source(payee))", true),
        ("blocklist_source(payee) != \"internal\"", true),
    ]);
    // Without a blocklist, nothing is listed.
    let (p, f) = (payment(), features());
    assert!(!eval_in(
        "present(blocklist_action(payee))",
        &p,
        &f,
        &NoLists
    ));
}

#[test]
fn blocklist_entry_functions_read_the_engine_blocklist() {
    use crate::engine::{Blocklist, ListEntry};
    let entry = |kind, value: &str, action, expires_at_ms| ListEntry {
        kind,
        value: value.into(),
        reason: "mule".into(),
        action,
        expires_at_ms,
        ..ListEntry::default()
    };
    let list = Blocklist::new(
        3,
        [
            // Stored in its canonical spelling; the payee is "MULE9".
            entry(ListKind::Ewallet, "mule-9", Decision::Review, None),
            entry(ListKind::Device, "dev 1", Decision::Hold, Some(T0 + 1)),
            entry(ListKind::Phone, "+84901234567", Decision::Hold, Some(T0)),
        ],
    );
    let live = list.listed(ListKind::Ewallet, "MULE9", T0).expect("listed");
    assert_eq!(
        live,
        ListedEntry {
            kind: ListKind::Ewallet,
            action: Decision::Review,
            source: "",
            reason: "mule",
        }
    );
    let (p, f) = (payment(), features());
    for (src, want) in [
        ("blocklist_action(payee) == \"REVIEW\"", true),
        ("blocklist_kind(payee) == \"ewallet\"", true),
        // No source is stored yet: it reads as absent.
        ("blocklist_source(payee) == null", true),
        ("blocklist_action(device) == \"HOLD\"", true),
        ("blocklist_kind(device) == \"device\"", true),
        ("blocklisted(phone)", false),
        ("blocklist_action(phone) == null", true),
        ("blocklist_kind(payer) == null", true),
    ] {
        assert_eq!(eval_in(src, &p, &f, &list), want, "{src}");
    }
    // Rules and the engine's own list check agree on when an entry expires.
    let phone = Blocklist::new(
        1,
        [entry(
            ListKind::Phone,
            "+84901234567",
            Decision::Hold,
            Some(T0),
        )],
    );
    let c = compile("blocklist_action(phone) == \"HOLD\"", &env()).unwrap();
    for now in [T0 - 1, T0, T0 + 1] {
        let ctx = Ctx {
            payment: &p,
            features: &f,
            blocklist: &phone,
            now_ms: now,
        };
        let held = phone.check(&p, now).is_some();
        assert_eq!(held, now < T0, "at {now}");
        assert_eq!(c.eval(&ctx), held, "at {now}");
        assert_eq!(phone.is_listed(ListKind::Phone, &p.phone, now), held);
    }
}

#[test]
fn features_read_are_listed_once_in_catalogue_order() {
    let c = compile(
        "payee.distinct_payers_10m >= 8 && payer.count_1m > 1 && payer.new_payee && payer.count_1m < 9",
        &env(),
    )
    .unwrap();
    assert_eq!(
        c.features(),
        vec![F::PayerCount1m, F::PayerNewPayee, F::PayeeDistinctPayers10m]
    );
    assert!(compile("amount > 1", &env()).unwrap().features().is_empty());
}

#[test]
fn constant_subexpressions_fold_to_the_same_answer() {
    // `size([..])`, `lower("..")`, `min(..)` of literals are computed at compile.
    table(&[
        (
            "size([1, 2]) + min(3, 4) == 5 && lower(\"AB\") == \"ab\"",
            true,
        ),
        ("in_list(\"vip_payees\", \"ACME\")", true),
        ("1 / 0 == null", true),
    ]);
}

/// Random well-typed expressions for the differential property test.
mod gen {
    use rand::rngs::SmallRng;
    use rand::Rng;

    pub(super) struct G {
        pub rng: SmallRng,
    }

    const NUM_FEATURES: &[&str] = &[
        "payer.count_1m",
        "payee.distinct_payers_10m",
        "payer.amount_zscore",
        "payer.sum_1m",
    ];
    const BOOL_FEATURES: &[&str] = &["payer.new_payee", "payer.new_device"];
    const STR_FIELDS: &[&str] = &[
        "country",
        "channel",
        "payment_type",
        "device_id",
        "ip",
        "payee.kind",
        "attributes[\"k\"]",
        "attributes.k2",
        "attributes.none",
    ];
    const LIST_FNS: &[&str] = &["blocklist_action", "blocklist_kind", "blocklist_source"];
    const ENTITIES: &[&str] = &["payee", "payer", "device", "phone", "ip"];
    const STR_LITS: &[&str] = &[
        "\"HOLD\"",
        "\"REVIEW\"",
        "\"internal\"",
        "\"ewallet\"",
        "\"device\"",
        "\"VN\"",
        "\"vn\"",
        "\"MOBILE\"",
        "\"\"",
        "'dev-1'",
        "\"Casino\"",
        "\"v\"",
        "\"N\"",
    ];

    impl G {
        fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
            xs[self.rng.gen_range(0..xs.len())]
        }

        pub(super) fn num(&mut self, d: u32) -> String {
            if d == 0 || self.rng.gen_bool(0.3) {
                return match self.rng.gen_range(0..8) {
                    0 => self.rng.gen_range(0..20).to_string(),
                    1 => "2.5".into(),
                    2 => "2_000_000".into(),
                    3 => "amount".into(),
                    4 => "hour".into(),
                    5 => "0".into(),
                    _ => self.pick(NUM_FEATURES).into(),
                };
            }
            let d = d - 1;
            match self.rng.gen_range(0..11) {
                0 => format!("({} + {})", self.num(d), self.num(d)),
                1 => format!("({} - {})", self.num(d), self.num(d)),
                2 => format!("({} * {})", self.num(d), self.num(d)),
                3 => format!("({} / {})", self.num(d), self.num(d)),
                4 => format!("({} % {})", self.num(d), self.num(d)),
                5 => format!("-{}", self.num(d)),
                6 => format!("abs({})", self.num(d)),
                7 => format!("min({}, {})", self.num(d), self.num(d)),
                8 => format!("max({}, {}, {})", self.num(d), self.num(d), self.num(d)),
                9 => format!("size({})", self.string(d)),
                _ => format!("({} ? {} : {})", self.boolean(d), self.num(d), self.num(d)),
            }
        }

        pub(super) fn string(&mut self, d: u32) -> String {
            if d == 0 || self.rng.gen_bool(0.4) {
                return match self.rng.gen_range(0..5) {
                    0 | 1 => self.pick(STR_LITS).into(),
                    2 | 3 => self.pick(STR_FIELDS).into(),
                    _ => format!("{}({})", self.pick(LIST_FNS), self.pick(ENTITIES)),
                };
            }
            let d = d - 1;
            match self.rng.gen_range(0..3) {
                0 => format!("lower({})", self.string(d)),
                1 => format!("{}.lowerAscii()", self.string(d)),
                _ => format!(
                    "({} ? {} : {})",
                    self.boolean(d),
                    self.string(d),
                    self.string(d)
                ),
            }
        }

        fn value(&mut self, d: u32) -> String {
            match self.rng.gen_range(0..3) {
                0 => self.num(d),
                1 => self.string(d),
                _ => self.boolean(d),
            }
        }

        /// A blocklist entry field against values it can take, so that
        /// matches (not only absences) are common.
        fn list_entry_test(&mut self) -> String {
            let (f, values): (&str, &[&str]) = match self.rng.gen_range(0..3) {
                0 => ("blocklist_action", &["\"HOLD\"", "\"REVIEW\""]),
                1 => (
                    "blocklist_kind",
                    &["\"ewallet\"", "\"account\"", "\"device\"", "\"ip\""],
                ),
                _ => (
                    "blocklist_source",
                    &["\"internal\"", "\"national-scheme\"", "\"\""],
                ),
            };
            let x = format!("{f}({})", self.pick(ENTITIES));
            let v = self.pick(values);
            match self.rng.gen_range(0..5) {
                0 => format!("({x} == {v})"),
                1 => format!("({x} != {v})"),
                2 => format!("({x} in [{v}, \"x\"])"),
                3 => format!("{x}.startsWith({v})"),
                _ => format!("({v} == {x})"),
            }
        }

        pub(super) fn boolean(&mut self, d: u32) -> String {
            if d == 0 || self.rng.gen_bool(0.2) {
                return match self.rng.gen_range(0..7) {
                    0 => "true".into(),
                    1 => "false".into(),
                    2 => "round_amount".into(),
                    3 => "cross_border".into(),
                    4 => format!("blocklisted({})", self.pick(ENTITIES)),
                    _ => self.pick(BOOL_FEATURES).into(),
                };
            }
            let d = d - 1;
            let cmp = ["<", "<=", ">", ">=", "==", "!="];
            match self.rng.gen_range(0..20) {
                0 => format!("({} && {})", self.boolean(d), self.boolean(d)),
                1 => format!("({} || {})", self.boolean(d), self.boolean(d)),
                2 => format!("!{}", self.boolean(d)),
                3 | 4 => {
                    let op = self.pick(&cmp);
                    format!("({} {op} {})", self.num(d), self.num(d))
                }
                5 => {
                    let op = self.pick(&["==", "!="]);
                    format!("({} {op} {})", self.string(d), self.string(d))
                }
                6 => {
                    let op = self.pick(&["==", "!="]);
                    format!("({} {op} {})", self.boolean(d), self.boolean(d))
                }
                7 => {
                    let op = self.pick(&["==", "!="]);
                    format!("({} {op} null)", self.value(d))
                }
                8 => format!("present({})", self.value(d)),
                9 => format!("({} in [1, 3, 2_000_000, 9])", self.num(d)),
                10 => format!(
                    "({} in [\"VN\", \"MOBILE\", \"a\", \"b\", \"c\", \"d\", \"e\", \"f\", \"g\", \"casino\"])",
                    self.string(d)
                ),
                11 => format!("({} in [\"vn\", \"WEB\"])", self.string(d)),
                12 => format!("in_list(\"l\", {})", self.string(d)),
                13 => format!("{}.startsWith({})", self.string(d), self.string(d)),
                14 => format!("ends_with({}, {})", self.string(d), self.string(d)),
                15 => format!("contains({}, {})", self.string(d), self.string(d)),
                16 => format!("({} ? {} : {})", self.boolean(d), self.boolean(d), self.boolean(d)),
                17 => format!("has({})", self.value(d)),
                _ => self.list_entry_test(),
            }
        }
    }
}

fn random_case(seed: u64) -> (String, Env, Payment, FeatureVector, Listed) {
    use rand::{Rng, SeedableRng};
    let mut g = gen::G {
        rng: rand::rngs::SmallRng::seed_from_u64(seed),
    };
    let src = g.boolean(4);
    let r = &mut g.rng;
    let env = Env {
        lists: HashMap::from([("l".to_string(), vec!["VN".to_string(), "dev-1".to_string()])]),
        utc_offset_minutes: [-600, 0, 420][r.gen_range(0..3)],
        home_country: ["VN", "vn", ""][r.gen_range(0..3)].into(),
        round_unit_minor: [1, 1_000_000, 3][r.gen_range(0..3)],
    };
    let mut p = payment();
    p.amount_minor = [1, 3, 999_999, 1_000_000, 2_000_000, 5_500_000][r.gen_range(0..6)];
    p.event_time_ms = T0 + r.gen_range(0..2 * 86_400_000);
    p.country = ["", "VN", "vn", "US"][r.gen_range(0..4)].into();
    p.channel = [Channel::Mobile, Channel::Web, Channel::Unspecified][r.gen_range(0..3)];
    p.device_id = ["", "DEV-1", "dev-1"][r.gen_range(0..3)].into();
    p.ip = ["", "1.2.3.4"][r.gen_range(0..2)].into();
    p.payee.kind = [AccountKind::Ewallet, AccountKind::Account][r.gen_range(0..2)];
    p.attributes.clear();
    for (k, v) in [("k", "Casino"), ("k", "VN"), ("k2", ""), ("k2", "dev-1")] {
        if r.gen_bool(0.4) {
            p.attributes.insert(k.into(), v.into());
        }
    }
    let mut f = FeatureVector::default();
    for feat in [
        F::PayerCount1m,
        F::PayeeDistinctPayers10m,
        F::PayerAmountZscore,
        F::PayerSum1m,
    ] {
        let v = match r.gen_range(0..5) {
            0 => f64::NAN,
            1 => 0.0,
            2 => -1.5,
            _ => r.gen_range(0..12) as f64,
        };
        f.set(feat, v);
    }
    for feat in [F::PayerNewPayee, F::PayerNewDevice] {
        f.set(feat, [f64::NAN, 0.0, 1.0][r.gen_range(0..3)]);
    }
    let mut listed = Listed::default();
    for (kind, value) in [
        (ListKind::Ewallet, "MULE9"),
        (ListKind::Account, "PAYER1"),
        (ListKind::Device, "DEV-1"),
        (ListKind::Ip, "1.2.3.4"),
    ] {
        if r.gen_bool(0.6) {
            let stub = Stub {
                action: [Decision::Hold, Decision::Review][r.gen_range(0..2)],
                source: ["internal", "national-scheme", ""][r.gen_range(0..3)],
                expires_at_ms: [None, Some(T0), Some(T0 + 1)][r.gen_range(0..3)],
            };
            listed = listed.with(kind, value, stub);
        }
    }
    (src, env, p, f, listed)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

    /// The compiled closures agree with the tree-walking interpreter on
    /// random well-typed expressions and random (often absent) inputs.
    #[test]
    fn compiled_equals_interpreted(seed in proptest::prelude::any::<u64>()) {
        let (src, env, p, f, listed) = random_case(seed);
        let ctx = Ctx { payment: &p, features: &f, blocklist: &listed, now_ms: T0 };
        let c = compile(&src, &env).map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{src}: {e:?}")))?;
        let want = interpret(&src, &env, &ctx).map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e:?}")))?;
        proptest::prop_assert_eq!(c.eval(&ctx), want, "{}", src);
    }
}

#[test]
fn generated_expressions_exercise_both_outcomes() {
    // Guards the property test against a generator that only makes `false`.
    let (mut t, mut n) = (0, 0);
    for seed in 0..500 {
        let (src, env, p, f, listed) = random_case(seed);
        let ctx = Ctx {
            payment: &p,
            features: &f,
            blocklist: &listed,
            now_ms: T0,
        };
        if compile(&src, &env).unwrap().eval(&ctx) {
            t += 1;
        } else {
            n += 1;
        }
    }
    assert!(t > 100 && n > 100, "true {t}, false {n}");
}

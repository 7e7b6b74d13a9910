//! Inputs that broke fraudline under fuzzing (fuzz/, docs/FUZZING.md),
//! replayed through the public API they broke. Each test failed before its
//! fix; the input is inline (the minimised one, or built as it was).

use std::sync::Arc;

use fraudline::engine::blocklist::{normalise, Keyer, ListKind, Table, TopicState};
use fraudline::engine::rules::expr::{self, Env, ErrorKind};
use fraudline::engine::rules::file;
use fraudline::engine::{Blocklist, Decision};
use fraudline::reload::blocklist::topic_update;
use prost::Message as _;

/// `blocklist` target, minimised input `0b 0b` (mode 3: the key of the
/// value "\v"). The short spelling kept a vertical tab that the long one
/// (`normalise`, and `str::trim`) drops as white space, so a value's key
/// depended on its length, and a topic record keyed `account:1234\v` was
/// stored under another key than the account "1234" its entry names.
#[test]
fn blocklist_vertical_tab_is_white_space_in_every_spelling() {
    let input: &[u8] = b"\x0b\x0b";
    let value = std::str::from_utf8(&input[1..]).expect("UTF-8");
    for cc in ["", "84"] {
        let k = Keyer::new(cc);
        for kind in [
            ListKind::Account,
            ListKind::Ewallet,
            ListKind::Device,
            ListKind::Ip,
        ] {
            assert_eq!(
                k.key(kind, value),
                k.key(kind, &normalise(value)),
                "{cc:?} {kind:?}"
            );
        }
    }

    let record = fraudline::proto::BlocklistEntry {
        action: "HOLD".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let (kind, v, entry) =
        topic_update(b"account:1234\x0b", Some(&record), "list-topic").expect("a valid record");
    let entry = entry.expect("a listing");
    assert_eq!(entry.value, "1234");
    let keyer = Keyer::new("");
    let mut st = TopicState::new(keyer.clone());
    st.apply([(kind, v, Some(entry))]);
    let (snapshot, delta) = st.tables();
    let list = Blocklist::layered(1, keyer, Arc::new(Table::empty()), snapshot, delta);
    assert_eq!(
        list.lookup(ListKind::Account, "1234", 0).map(|e| e.action),
        Some(Decision::Hold),
        "the payment account the entry names"
    );
}

/// `rule_expr` target (input `1?1:` × 4,000 then `1`, 16,001 bytes, under
/// the 16 KiB source limit): conditionals nest to the right without
/// brackets, and the bracket bound did not count them. In a release build
/// pest parsed them (its own stack guard allows it) and the AST builder's
/// recursion then overflowed a 2 MiB stack (a tokio worker's): SIGSEGV,
/// the process loading the rule file dies. In a debug build pest's guard
/// stops first, with the syntax error "expected stack limit reached". Now
/// refused as too complex, before pest runs, by the condition compiler and
/// the rule-file loader.
#[test]
fn rules_deeply_nested_conditionals_are_refused_not_a_stack_overflow() {
    let deep = format!("{}1", "1?1:".repeat(4000));
    assert!(deep.len() <= 16 * 1024);
    let errors = expr::compile(&deep, &Env::default()).expect_err("too deep");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].kind, ErrorKind::TooComplex, "{:?}", errors[0]);
    assert!(
        errors[0].message.contains("conditionals"),
        "{}",
        errors[0].message
    );

    let rule_file = format!(
        "version = \"1\"\n[thresholds]\nreview = 1\nhold = 2\n\n[[rule]]\nid = \"DEEP\"\nwhen = \"{deep}\"\nscore = 1\nreason = \"deep\"\n"
    );
    let refused = file::compile("deep.toml", &rule_file).expect_err("refused");
    assert!(refused.to_string().contains("nest more than"), "{refused}");

    // The deepest accepted nesting (48 brackets around 48 conditionals)
    // still compiles within the same stack.
    let edge = format!(
        "{}{}true{}",
        "(".repeat(48),
        "true ? true : ".repeat(48),
        ")".repeat(48)
    );
    expr::compile(&edge, &Env::default()).expect("48 brackets and 48 conditionals");
    // Sibling conditionals are counted only while their bracket is open.
    let siblings = vec!["(true ? true : false)"; 60].join(" && ");
    expr::compile(&siblings, &Env::default()).expect("60 sibling conditionals");
}

//! Rule files (TOML): `engine::rules::file::compile` (parse, check, compile
//! every condition, decode every test event), then, when the file loads,
//! its own tests (`run_tests`: features, rules, blocklist, decision) and the
//! rule set over the sample payments. Asserts: no panic or hang; a refused
//! file names at least one error, each at a line of the file; a verdict
//! serialises.
#![no_main]

use std::sync::OnceLock;

use fraudline::engine::rules::file;
use fraudline::engine::{self, Blocklist};
use fraudline::event::Payment;
use fraudline_fuzz::{sample_blocklist, sample_features, sample_payments, seed_of, NOW_MS};
use libfuzzer_sys::fuzz_target;

fn samples() -> &'static (Vec<Payment>, Blocklist) {
    static S: OnceLock<(Vec<Payment>, Blocklist)> = OnceLock::new();
    S.get_or_init(|| (sample_payments(), sample_blocklist()))
}

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    match file::compile("fuzz.toml", src) {
        Err(e) => {
            let errors = e.errors();
            assert!(!errors.is_empty(), "a file refused without an error");
            let lines = src.matches('\n').count() + 1;
            for er in &errors {
                assert!(
                    (1..=lines).contains(&er.line) && er.column >= 1,
                    "error outside the file: {er}"
                );
            }
            let _ = e.to_string();
        }
        Ok(f) => {
            let _ = file::run_tests(&f);
            let (payments, list) = samples();
            for p in payments {
                for fv in sample_features(seed_of(data)) {
                    let v = engine::decide(p, fv, &f.rules, list, NOW_MS);
                    let j = v.to_json(&p.event_id, true);
                    assert!(
                        j.get("decision").is_some(),
                        "verdict without a decision: {j}"
                    );
                }
            }
        }
    }
});

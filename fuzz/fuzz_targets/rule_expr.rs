//! Rule conditions alone: `engine::rules::expr::compile` against the
//! reference interpreter (`expr::interpret`), differentially. Asserts: no
//! panic or hang; both accept or both refuse, with the same errors, each
//! span inside the source; an accepted condition evaluates to the same
//! bool compiled and interpreted, for every sample payment (full, bare,
//! odd) and feature vector (absent, edge values), against a blocklist.
#![no_main]

use std::sync::OnceLock;

use fraudline::engine::rules::expr::{self, Ctx, Env};
use fraudline::engine::{Blocklist, FeatureVector};
use fraudline::event::Payment;
use fraudline_fuzz::{
    sample_blocklist, sample_features, sample_lists, sample_payments, seed_of, NOW_MS,
};
use libfuzzer_sys::fuzz_target;

struct Samples {
    env: Env,
    payments: Vec<Payment>,
    list: Blocklist,
}

fn samples() -> &'static Samples {
    static S: OnceLock<Samples> = OnceLock::new();
    S.get_or_init(|| Samples {
        env: Env {
            lists: sample_lists(),
            utc_offset_minutes: 420,
            home_country: "VN".into(),
            round_unit_minor: 1_000_000,
        },
        payments: sample_payments(),
        list: sample_blocklist(),
    })
}

fn ctx<'a>(p: &'a Payment, fv: &'a FeatureVector, list: &'a Blocklist) -> Ctx<'a> {
    Ctx {
        payment: p,
        features: fv,
        blocklist: list,
        now_ms: NOW_MS,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let s = samples();
    let fvs = sample_features(seed_of(data));
    let compiled = expr::compile(src, &s.env);
    let reference = expr::interpret(src, &s.env, &ctx(&s.payments[0], &fvs[0], &s.list));
    match (&compiled, &reference) {
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "compiler and reference refuse differently");
            assert!(!a.is_empty(), "refused without an error");
            for e in a {
                assert!(
                    e.span.start <= e.span.end && e.span.end <= src.len(),
                    "error span {:?} outside a {}-byte source: {e}",
                    e.span,
                    src.len()
                );
                let _ = e.line_col(src);
            }
        }
        (Ok(_), Err(e)) => panic!("compiled, but the reference refuses: {e:?}"),
        (Err(e), Ok(_)) => panic!("the reference accepts, but compile refuses: {e:?}"),
        (Ok(c), Ok(_)) => {
            for p in &s.payments {
                for fv in &fvs {
                    let cx = ctx(p, fv, &s.list);
                    let want = expr::interpret(src, &s.env, &cx)
                        .unwrap_or_else(|e| panic!("reference refused on a second run: {e:?}"));
                    assert_eq!(
                        c.eval(&cx),
                        want,
                        "compiled and reference disagree on {src:?} for {} with features {:?}",
                        p.event_id,
                        fv.0
                    );
                }
            }
        }
    }
});

//! The rule-condition language against its floor:
//!
//! | bench | what runs |
//! | --- | --- |
//! | `rules/compiled` | `Condition::eval` of `payee.distinct_payers_10m >= 8 && amount >= 2_000_000 && payer.new_payee` |
//! | `rules/baseline_rust` | the same condition written in Rust over the same inputs (the floor) |
//! | `rules/compiled_strings` | `channel in ["MOBILE", "WEB"] && lower(attributes.merchant_name).contains("casino")` |
//!
//! Inputs (payments and feature vectors, about a third of them matching) are
//! built before the timer; each iteration evaluates the next one, so branch
//! prediction sees a realistic mix. One iteration is one evaluation.
//!
//! Run: `cargo bench --bench rules`.

use std::collections::BTreeMap;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use fraudline::engine::features::catalogue::{FeatureVector, F};
use fraudline::engine::rules::expr::{compile, Ctx, Env, NoLists};
use fraudline::event::{AccountKind, Channel, Currency, Party, Payment, PaymentType};

const SET: usize = 1024;

fn inputs() -> Vec<(Payment, FeatureVector)> {
    (0..SET)
        .map(|i| {
            let p = Payment {
                event_id: format!("e{i}"),
                event_time_ms: 1_709_289_000_000 + i as i64 * 1000,
                payer: Party {
                    account: format!("PAYER{i}"),
                    bank_code: "VCB".into(),
                    kind: AccountKind::Account,
                },
                payee: Party {
                    account: format!("PAYEE{}", i % 97),
                    bank_code: "TCB".into(),
                    kind: AccountKind::Ewallet,
                },
                amount_minor: [500_000, 2_000_000, 9_000_000][i % 3],
                currency: Currency::parse("VND").expect("VND is ISO 4217"),
                channel: [Channel::Mobile, Channel::Web, Channel::Atm][i % 3],
                payment_type: PaymentType::Transfer,
                device_id: format!("DEV{i}"),
                ip: String::new(),
                phone: String::new(),
                geo: None,
                country: "VN".into(),
                merchant_category: String::new(),
                attributes: BTreeMap::from([(
                    "merchant_name".to_string(),
                    ["Lucky CASINO Ltd", "Corner Shop"][i % 2].to_string(),
                )]),
            };
            let mut f = FeatureVector::default();
            f.set(F::PayeeDistinctPayers10m, (i % 13) as f64);
            if i % 5 != 0 {
                f.set_bool(F::PayerNewPayee, i % 2 == 0);
            }
            (p, f)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let data = inputs();
    let env = Env::default();
    let cond = compile(
        "payee.distinct_payers_10m >= 8 && amount >= 2_000_000 && payer.new_payee",
        &env,
    )
    .expect("the bench condition compiles");
    let strings = compile(
        "channel in [\"MOBILE\", \"WEB\"] && lower(attributes.merchant_name).contains(\"casino\")",
        &env,
    )
    .expect("the bench condition compiles");
    let hits = data
        .iter()
        .filter(|(p, f)| {
            cond.eval(&Ctx {
                payment: p,
                features: f,
                blocklist: &NoLists,
                now_ms: 0,
            })
        })
        .count();
    eprintln!("{hits} of {SET} inputs match the condition");

    let mut g = c.benchmark_group("rules");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(3));

    let mut i = 0usize;
    g.bench_function("compiled", |b| {
        b.iter(|| {
            i = (i + 1) % SET;
            let (p, f) = &data[black_box(i)];
            cond.eval(&Ctx {
                payment: p,
                features: f,
                blocklist: &NoLists,
                now_ms: 0,
            })
        })
    });

    let mut i = 0usize;
    g.bench_function("baseline_rust", |b| {
        b.iter(|| {
            i = (i + 1) % SET;
            let (p, f) = &data[black_box(i)];
            let new_payee = f.get(F::PayerNewPayee);
            f.get(F::PayeeDistinctPayers10m) >= 8.0
                && p.amount_minor >= 2_000_000
                && !new_payee.is_nan()
                && new_payee != 0.0
        })
    });

    let mut i = 0usize;
    g.bench_function("compiled_strings", |b| {
        b.iter(|| {
            i = (i + 1) % SET;
            let (p, f) = &data[black_box(i)];
            strings.eval(&Ctx {
                payment: p,
                features: f,
                blocklist: &NoLists,
                now_ms: 0,
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

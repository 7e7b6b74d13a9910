//! The blocklist at 10,000,000 entries:
//!
//! - load: a 10 M-line CSV file (written to a temp dir before any timer) read,
//!   validated and built into the list, timed once, with process RSS before
//!   and after (bytes per entry);
//! - lookup: `Blocklist::check` of a payment (payee, payer, device, phone: four
//!   lookups) against the 10 M list, hit and miss, in criterion; then 1,000,000
//!   single `check` calls timed with `Instant` for p50 / p99 / p99.9 (the clock
//!   read adds ~20-30 ns).
//!
//! Run: `cargo bench --bench blocklist` (about 2 minutes; needs ~1 GB of /tmp).

use std::io::Write;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, Criterion, Throughput};
use fraudline::engine::Blocklist;
use fraudline::event::{self, Format, Limits, Payment};
use fraudline::reload::blocklist as source;
use fraudline::tools::memory::rss_bytes;

const N: usize = 10_000_000;

fn value(i: usize) -> (&'static str, String) {
    match i % 10 {
        0..=5 => ("account", format!("97040{i:011}")),
        6 | 7 => ("ewallet", format!("MOMO-{i:010}")),
        8 => ("phone", format!("+849{:08}", i / 10)),
        _ => ("device", format!("dev-{i:x}")),
    }
}

fn payment(payee: &str, phone: &str) -> Payment {
    let json = format!(
        r#"{{"event_id":"e","event_time_ms":1795526680451,"amount_minor":100,"currency":"VND",
            "payer":{{"account":"1000000001"}},"payee":{{"account":"{payee}"}},"device_id":"dev-local","phone":"{phone}"}}"#
    );
    event::decode(
        json.as_bytes(),
        Some(Format::Json),
        &Limits::default(),
        i64::MAX / 4,
    )
    .expect("valid payment")
}

fn percentiles(name: &str, mut f: impl FnMut()) {
    let mut ns: Vec<u32> = Vec::with_capacity(1_000_000);
    for _ in 0..1_000_000 {
        let t = Instant::now();
        f();
        ns.push(t.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
    }
    ns.sort_unstable();
    let q = |p: f64| ns[((ns.len() as f64 * p) as usize).min(ns.len() - 1)];
    println!(
        "{name}: p50 {} ns, p99 {} ns, p99.9 {} ns (1,000,000 single calls)",
        q(0.50),
        q(0.99),
        q(0.999)
    );
}

fn blocklist(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("list.csv");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        writeln!(w, "kind,value,action,reason,source").expect("write");
        for i in 0..N {
            let (k, v) = value(i);
            let reason = ["reported mule", "scam calls", "stolen device"][i % 3];
            writeln!(w, "{k},{v},HOLD,{reason},scheme").expect("write");
        }
    }
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let before = rss_bytes();
    let started = Instant::now();
    let loaded = source::load(&path, 0).expect("loads");
    let parsed = started.elapsed();
    let list = Blocklist::with_country_code(1, "84", loaded.entries);
    let built = started.elapsed();
    let after = rss_bytes();
    println!(
        "blocklist load: {N} entries ({:.0} MB CSV) parsed+validated in {:.2} s, built in {:.2} s more, {:.2} s total; \
         RSS +{:.0} MiB after the load = {:.0} bytes per entry (parse buffers freed: the list alone)",
        bytes as f64 / 1e6,
        parsed.as_secs_f64(),
        (built - parsed).as_secs_f64(),
        built.as_secs_f64(),
        after.saturating_sub(before) as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / N as f64,
    );
    assert_eq!(list.len(), N);

    let hits: Vec<Payment> = (0..1000).map(|i| payment(&value(i * 10).1, "")).collect();
    let misses: Vec<Payment> = (0..1000)
        .map(|i| payment(&format!("11111{i:011}"), "0912 000 111"))
        .collect();
    let now = 1_795_526_680_451;
    let mut g = c.benchmark_group("blocklist_10m");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("check_hit", |b| {
        b.iter(|| {
            i = (i + 1) % hits.len();
            black_box(list.check(black_box(&hits[i]), now))
        })
    });
    g.bench_function("check_miss", |b| {
        b.iter(|| {
            i = (i + 1) % misses.len();
            black_box(list.check(black_box(&misses[i]), now))
        })
    });
    g.finish();
    percentiles("blocklist_10m/check_hit", || {
        i = (i + 1) % hits.len();
        black_box(list.check(black_box(&hits[i]), now));
    });
    percentiles("blocklist_10m/check_miss", || {
        i = (i + 1) % misses.len();
        black_box(list.check(black_box(&misses[i]), now));
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = blocklist
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}

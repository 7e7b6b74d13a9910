//! The blocklist at 10,000,000 entries:
//!
//! - load: a 10 M-line CSV file (written to a temp dir before any timer)
//!   read, validated and built into the file table by the service's own
//!   path (`reload::blocklist::build`), timed on one thread, with process
//!   RSS before and after and the table's own bytes per entry;
//! - lookup: one `Blocklist::lookup` (hit and miss) and `Blocklist::check`
//!   of a payment (payee, payer, device, phone) against the 10 M list, in
//!   criterion, then 1,000,000 single calls of each timed with `Instant` for
//!   p50 / p99 / p99.9 (the two clock reads add ~25-40 ns, measured as
//!   `clock_only`). Cold (the figures to quote): the values are 1,000,000
//!   drawn at random from the whole list and 1,000,000 unlisted ones (the
//!   checks: 200,000 payments of each), so every call pays its memory and
//!   TLB misses. Warm: 1,000 values cycled, as earlier versions measured;
//!   their slots stay cached, so those are the best case only;
//! - the memory floor beside the cold figures: random reads of arrays the
//!   size of the table's tag and slot arrays, mapped and advised for huge
//!   pages as the table's are (and with small pages), as a chain of
//!   dependent reads (the latency of one miss) and as 1,000,000 single
//!   reads timed like the lookups; a cold lookup cannot beat one such read;
//! - reload: `Engine::score` with the default rule pack, timed one call at a
//!   time for 4 s with the 10 M list in place, then again while a second
//!   thread reloads the 10 M file through `Sources::reload_files` (read,
//!   validate, build aside, swap, free the old table) paced to each duty
//!   cycle of `FRAUDLINE_BENCH_DUTY` (default `1.0,0.5,0.25,0.1`; `off`
//!   skips this part): the latency histograms side by side and a table of
//!   reload time, p50, p99 and p99 ratio per duty cycle.
//!
//! Run: `cargo bench --bench blocklist` (about 6 minutes; ~1.5 GB of RAM and
//! ~600 MB of /tmp).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, Criterion, Throughput};
use fraudline::engine::{Engine, EngineConfig, ListKind};
use fraudline::event::{self, Format, Limits, Payment};
use fraudline::reload::blocklist as source;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

mod support;
use fraudline::tools::gen::{GenConfig, Generator};
use fraudline::tools::memory::rss_bytes;
use support::{assert_scored_not_replayed, Rounds};

const N: usize = 10_000_000;
/// Values (listed, and as many unlisted) the cold lookups draw from.
const COLD: usize = 1_000_000;
/// Payments (hit, and as many miss) the cold checks draw from.
const COLD_PAYMENTS: usize = 200_000;

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

/// p50 / p99 / p99.9 / max of `ns`, sorted in place.
fn quantiles(ns: &mut [u32]) -> [u32; 4] {
    ns.sort_unstable();
    let q = |p: f64| ns[((ns.len() as f64 * p) as usize).min(ns.len() - 1)];
    [q(0.50), q(0.99), q(0.999), ns[ns.len() - 1]]
}

fn percentiles(name: &str, mut f: impl FnMut()) {
    let mut ns: Vec<u32> = Vec::with_capacity(1_000_000);
    for _ in 0..1_000_000 {
        let t = Instant::now();
        f();
        ns.push(t.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
    }
    let [p50, p99, p999, _] = quantiles(&mut ns);
    println!("{name}: p50 {p50} ns, p99 {p99} ns, p99.9 {p999} ns (1,000,000 single calls)");
}

fn write_list(path: &std::path::Path) {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    writeln!(w, "kind,value,action,reason,source,added_at_ms").expect("write");
    for i in 0..N {
        let (k, v) = value(i);
        let reason = ["reported mule", "scam calls", "stolen device"][i % 3];
        writeln!(w, "{k},{v},HOLD,{reason},scheme,1795000000000").expect("write");
    }
}

fn blocklist(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("list.csv");
    write_list(&path);
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);

    let before = rss_bytes();
    let huge_before = anon_huge_mib();
    let started = Instant::now();
    let built = source::build(std::slice::from_ref(&path), 0, "84").expect("loads");
    let took = started.elapsed();
    let after = rss_bytes();
    let table_bytes = built.table.heap_bytes();
    println!(
        "blocklist load: {N} entries ({:.0} MB CSV) read, validated and built in {:.2} s on one thread; \
         RSS +{:.0} MiB after the load = {:.1} bytes per entry; the table's arrays {:.0} MiB = {:.1} bytes per entry, \
         huge-page backing +{} MiB",
        bytes as f64 / 1e6,
        took.as_secs_f64(),
        after.saturating_sub(before) as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / N as f64,
        table_bytes as f64 / 1048576.0,
        table_bytes as f64 / N as f64,
        anon_huge_mib().saturating_sub(huge_before),
    );
    let list = built.into_list(1);
    assert_eq!(list.len(), N);

    let now = 1_795_526_680_451;
    // Warm: 1,000 values cycled, as earlier versions of this bench measured.
    // Their slots stay in the caches, so these figures are the cached best
    // case. Cold: 1,000,000 values drawn at random from the whole list (and
    // as many unlisted ones), each used once a pass: every call pays the
    // memory (and TLB) misses a live stream of payments pays.
    let warm_hits: Vec<String> = (0..1000).map(|i| value(i * 10).1).collect();
    let warm_misses: Vec<String> = (0..1000).map(|i| format!("11111{i:011}")).collect();
    let mut rng = SmallRng::seed_from_u64(14);
    let cold_hits: Vec<String> = (0..COLD)
        .map(|_| value(rng.gen_range(0..N / 10) * 10 + rng.gen_range(0..6)).1)
        .collect();
    let cold_misses: Vec<String> = (0..COLD)
        .map(|_| format!("11111{:011}", rng.gen_range(0..100_000_000_000u64)))
        .collect();
    // check: payee and phone drawn at random too (the payer and device
    // repeat, so theirs stay cached).
    let hits: Vec<Payment> = (0..COLD_PAYMENTS)
        .map(|i| payment(&cold_hits[i], ""))
        .collect();
    let misses: Vec<Payment> = (0..COLD_PAYMENTS)
        .map(|i| {
            let phone = format!(
                "0912 {:03} {:03}",
                rng.gen_range(0..1000),
                rng.gen_range(0..1000)
            );
            payment(&cold_misses[i], &phone)
        })
        .collect();
    for v in &cold_hits[..1000] {
        assert!(
            list.lookup(ListKind::Account, v, now).is_some(),
            "{v} listed"
        );
    }
    for v in &cold_misses[..1000] {
        assert!(
            list.lookup(ListKind::Account, v, now).is_none(),
            "{v} not listed"
        );
    }
    let mut g = c.benchmark_group("blocklist_10m");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("lookup_hit", |b| {
        b.iter(|| {
            i = (i + 1) % cold_hits.len();
            black_box(list.lookup(ListKind::Account, black_box(&cold_hits[i]), now))
        })
    });
    g.bench_function("lookup_miss", |b| {
        b.iter(|| {
            i = (i + 1) % cold_misses.len();
            black_box(list.lookup(ListKind::Account, black_box(&cold_misses[i]), now))
        })
    });
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
    percentiles("clock_only", || {
        black_box(i);
    });
    percentiles(
        "blocklist_10m/lookup_hit (warm: 1,000 values cycled)",
        || {
            i = (i + 1) % warm_hits.len();
            black_box(list.lookup(ListKind::Account, black_box(&warm_hits[i]), now));
        },
    );
    percentiles(
        "blocklist_10m/lookup_miss (warm: 1,000 values cycled)",
        || {
            i = (i + 1) % warm_misses.len();
            black_box(list.lookup(ListKind::Account, black_box(&warm_misses[i]), now));
        },
    );
    percentiles(
        "blocklist_10m/lookup_hit (cold: 1 M random listed values)",
        || {
            i = (i + 1) % cold_hits.len();
            black_box(list.lookup(ListKind::Account, black_box(&cold_hits[i]), now));
        },
    );
    percentiles(
        "blocklist_10m/lookup_miss (cold: 1 M random unlisted values)",
        || {
            i = (i + 1) % cold_misses.len();
            black_box(list.lookup(ListKind::Account, black_box(&cold_misses[i]), now));
        },
    );
    percentiles("blocklist_10m/check_hit (cold: 200,000 payments)", || {
        i = (i + 1) % hits.len();
        black_box(list.check(black_box(&hits[i]), now));
    });
    percentiles("blocklist_10m/check_miss (cold: 200,000 payments)", || {
        i = (i + 1) % misses.len();
        black_box(list.check(black_box(&misses[i]), now));
    });
    drop((hits, misses, cold_hits, cold_misses));
    // The floor beside the cold figures: one random read of memory, in
    // arrays the size of the table's two, mapped and advised as the table
    // maps its own.
    let tags = table_bytes / 17; // 2 of every 34 bytes a slot
    memory_floor("tag array", tags);
    memory_floor("slot array", table_bytes - tags);
    drop(list);
    let duties = duties();
    if duties.is_empty() {
        println!("reload under load: skipped (FRAUDLINE_BENCH_DUTY=off)");
    } else {
        reload_under_load(&path, &duties);
    }
}

/// Kernel-reported huge-page backing of this process's anonymous memory, in
/// MiB (`AnonHugePages` of /proc/self/smaps_rollup; 0 where unreadable).
fn anon_huge_mib() -> u64 {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("AnonHugePages:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb >> 10)
}

/// The memory floor of a cold lookup: random reads of an anonymous mapping
/// of `bytes`, advised for transparent huge pages as the table's arrays are
/// (`Zeroed` in src/engine/blocklist.rs), and again with small pages. Two
/// figures each: the mean of a chain of dependent reads (each read's
/// address is the value of the one before, so none overlap: the latency of
/// one miss), and 1,000,000 single random reads timed one at a time like
/// the lookups above (p50 / p99 / p99.9).
fn memory_floor(what: &str, bytes: usize) {
    const LINE: usize = 64;
    for (pages, advice) in [
        ("huge pages", memmap2::Advice::HugePage),
        ("small pages", memmap2::Advice::NoHugePage),
    ] {
        let huge_before = anon_huge_mib();
        let mut m = memmap2::MmapMut::map_anon(bytes).expect("map");
        let _ = m.advise(advice);
        let words: &mut [u64] = bytemuck::cast_slice_mut(&mut m[..bytes / 8 * 8]);
        let lines = words.len() / (LINE / 8);
        // A random cycle through every line: line order[i] holds the index
        // of line order[i + 1].
        let mut order: Vec<u32> = (0..lines as u32).collect();
        let mut rng = SmallRng::seed_from_u64(7);
        for i in (1..lines).rev() {
            order.swap(i, rng.gen_range(0..=i));
        }
        for i in 0..lines {
            words[order[i] as usize * (LINE / 8)] = u64::from(order[(i + 1) % lines]);
        }
        drop(order);
        let backed = anon_huge_mib().saturating_sub(huge_before);
        let steps = 4_000_000;
        let mut at = 0u64;
        let started = Instant::now();
        for _ in 0..steps {
            at = words[at as usize * (LINE / 8)];
        }
        let chase = started.elapsed().as_nanos() as f64 / steps as f64;
        black_box(at);
        let picks: Vec<u32> = (0..1_000_000)
            .map(|_| rng.gen_range(0..lines as u32))
            .collect();
        let mut i = 0;
        percentiles(
            &format!(
                "memory floor, {what} ({} MiB, {pages}: {backed} MiB huge-page backed): \
                 dependent reads {chase:.0} ns each; single random read",
                bytes >> 20
            ),
            || {
                i = (i + 1) % picks.len();
                black_box(words[picks[i] as usize * (LINE / 8)]);
            },
        );
    }
}

/// Latency buckets for the side-by-side histogram, in ns.
const EDGES: [u32; 10] = [
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    250_000,
    1_000_000,
    u32::MAX,
];

fn histogram(ns: &[u32]) -> [usize; 10] {
    let mut h = [0usize; 10];
    for v in ns {
        let b = EDGES.iter().position(|e| v <= e).unwrap_or(9);
        h[b] += 1;
    }
    h
}

/// The duty cycles `reload_under_load` paces reloads to:
/// `FRAUDLINE_BENCH_DUTY` (comma-separated, each in (0, 1]; `off` skips the
/// part), by default 1.0, 0.5, 0.25 and 0.1.
fn duties() -> Vec<f64> {
    let spec = std::env::var("FRAUDLINE_BENCH_DUTY").unwrap_or_else(|_| "1.0,0.5,0.25,0.1".into());
    if spec.trim() == "off" {
        return Vec::new();
    }
    spec.split(',')
        .map(|d| {
            let d: f64 = d
                .trim()
                .parse()
                .expect("FRAUDLINE_BENCH_DUTY: numbers in (0, 1]");
            assert!(
                d > 0.0 && d <= 1.0,
                "FRAUDLINE_BENCH_DUTY: {d} is not in (0, 1]"
            );
            d
        })
        .collect()
}

/// Engine p99 with the 10 M list in place, and while it is reloaded at each
/// of `duties` (see [`duties`]).
fn reload_under_load(path: &std::path::Path, duties: &[f64]) {
    let mut events = Generator::new(GenConfig {
        seed: 11,
        start_ms: fraudline::now_ms() - 3_600_000,
        ..GenConfig::default()
    })
    .map(|(p, _)| p);
    let warm: Vec<Payment> = events.by_ref().take(100_000).collect();
    let set: Vec<Payment> = events.take(50_000).collect();
    let engine = Arc::new(Engine::new(EngineConfig::default()));
    let pack = fraudline::engine::rules::file::default_pack().expect("default pack");
    engine.set_rules(pack.rules);
    for p in &warm {
        engine.score(p);
    }
    let replays_before = engine.features().duplicates_seen();
    // Rounds of the set, renamed and later in event time: earlier versions
    // cycled the same ids and times, so every call after the first pass
    // took the duplicate path and updated nothing.
    let mut it = Rounds::new(set);
    let mut run = |until: &dyn Fn(usize) -> bool| {
        let mut ns = Vec::with_capacity(16_000_000);
        while !until(ns.len()) {
            let p = it.next_item();
            let t = Instant::now();
            black_box(engine.score(black_box(p)));
            ns.push(t.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
        }
        ns
    };
    let mut phases: Vec<(String, Vec<u32>)> = Vec::new();
    let mut took_s: Vec<f64> = Vec::new();
    for &duty in duties {
        let sources = Arc::new(
            source::Sources::new(engine.clone(), vec![path.to_path_buf()], 0, "84".into())
                .with_reload_duty(duty),
        );
        sources.reload_files().expect("first load");
        let t0 = Instant::now();
        let before = run(&|_| t0.elapsed() >= Duration::from_secs(4));
        let done = Arc::new(AtomicBool::new(false));
        let (s, d) = (sources.clone(), done.clone());
        let reload_started = Instant::now();
        let reloader = std::thread::spawn(move || {
            s.reload_files().expect("reload");
            d.store(true, Ordering::SeqCst);
        });
        let during = run(&|_| done.load(Ordering::SeqCst));
        let took = reload_started.elapsed();
        let _ = reloader.join();
        assert_eq!(engine.blocklist().version(), 2);
        took_s.push(took.as_secs_f64());
        phases.push((format!("before (duty {duty})"), before));
        phases.push((
            format!("reload, duty {duty}: {:.1} s", took.as_secs_f64()),
            during,
        ));
    }

    assert_scored_not_replayed(
        engine.features(),
        replays_before,
        it.handed_out(),
        "blocklist reload under load",
    );
    println!("engine score (default rules, 10 M list), one thread scoring, the other reloading the list:");
    print!("  {:>12}", "latency");
    for (name, _) in &phases {
        print!(" {name:>26}");
    }
    println!();
    let hs: Vec<[usize; 10]> = phases.iter().map(|(_, ns)| histogram(ns)).collect();
    let mut lo = 0;
    for (k, e) in EDGES.iter().enumerate() {
        let label = if *e == u32::MAX {
            format!("> {} us", lo / 1000)
        } else {
            format!("<= {} us", e / 1000)
        };
        print!("  {label:>12}");
        for h in &hs {
            print!(" {:>26}", h[k]);
        }
        println!();
        lo = *e;
    }
    let qs: Vec<[u32; 4]> = phases.iter_mut().map(|(_, ns)| quantiles(ns)).collect();
    for ((name, ns), q) in phases.iter().zip(&qs) {
        println!(
            "  {name}: p50 {} / p99 {} / p99.9 {} / max {} ns ({} calls)",
            q[0],
            q[1],
            q[2],
            q[3],
            ns.len()
        );
    }
    for k in 0..duties.len() {
        println!(
            "  p99 during / before, {}: {:.2}",
            phases[2 * k + 1].0,
            f64::from(qs[2 * k + 1][1]) / f64::from(qs[2 * k][1].max(1))
        );
    }
    println!();
    println!("| duty | reload s | p50 | p99 | p99 ratio |");
    println!("|---:|---:|---:|---:|---:|");
    for (k, duty) in duties.iter().enumerate() {
        let (before, during) = (qs[2 * k], qs[2 * k + 1]);
        println!(
            "| {duty} | {:.1} | {:.2} µs | {:.2} µs | {:.2}× (before: {:.2} µs) |",
            took_s[k],
            f64::from(during[0]) / 1000.0,
            f64::from(during[1]) / 1000.0,
            f64::from(during[1]) / f64::from(before[1].max(1)),
            f64::from(before[1]) / 1000.0,
        );
    }
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

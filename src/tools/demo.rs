//! `fraudline demo`: the product working in one command, with no Kafka and
//! no config. Generates labelled traffic in-process (event time = now),
//! scores it on the real Engine, prints a live summary and serves /metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{Blocklist, Decision, Engine, EngineConfig};
use crate::telemetry::Metrics;
use crate::tools::gen::{GenConfig, Generator};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Events per second; 0 means as fast as one core goes.
    pub rate: u64,
    /// Stop after this long; None runs until ctrl-c.
    pub duration: Option<Duration>,
    pub seed: u64,
    pub fraud_rate: f64,
    /// Payments of history (event time before now, at the customers'
    /// pace) scored before the live part, so customers have habits the
    /// rules can read (fraud only strikes customers with history). 0: none.
    pub history: u64,
}

/// Customers in the demo's bank.
const CUSTOMERS: u32 = 100_000;
/// Mean seconds of event time between two payments of one customer.
const CUSTOMER_GAP_S: f64 = 4.0 * 3600.0;

/// What the demo saw, for its final line (and tests).
#[derive(Debug, Default, Clone)]
pub struct DemoSummary {
    pub events: u64,
    pub by_decision: [u64; 3],
    pub by_reason: HashMap<String, u64>,
    /// How many events of each generator label ended HOLD or REVIEW.
    pub flagged_by_label: HashMap<&'static str, (u64, u64)>,
}

/// Runs the demo loop on the current thread until `stop` is set or the
/// duration passes. `print` receives each one-second summary line.
pub fn run(opts: &DemoOptions, stop: &AtomicBool, mut print: impl FnMut(&str)) -> DemoSummary {
    let metrics = Metrics::new();
    let engine = std::sync::Arc::new(Engine::new(EngineConfig::default()));
    let _sweeper = engine.spawn_sweeper(std::time::Duration::from_secs(60));
    // Event time runs at a bank's pace for its customers (the pace the
    // default pack was tuned at: each customer pays every few hours),
    // whatever `--rate` plays it at on the wall clock: the live part is a
    // time-lapse of the days after the history.
    let pace = CUSTOMERS as f64 / CUSTOMER_GAP_S;
    let history_ms = (opts.history as f64 / pace * 1000.0) as i64;
    let mut gen = Generator::new(GenConfig {
        seed: opts.seed,
        fraud_rate: opts.fraud_rate,
        start_ms: crate::now_ms() - history_ms,
        events_per_sec: pace,
        accounts: CUSTOMERS,
    });
    engine.set_blocklist(Blocklist::new(1, gen.blocklist_entries()));
    // The default rule pack, as a bank would start.
    match crate::engine::rules::file::default_pack() {
        Ok(f) => engine.set_rules(f.rules),
        Err(e) => {
            tracing::warn!(error = %e, "default rule pack refused; the demo runs the built-in checks")
        }
    }
    if opts.history > 0 {
        // Days of history at a customer's pace, scored as the stream would
        // have scored them (not counted in the live figures or metrics).
        let t = Instant::now();
        let mut n = 0u64;
        while n < opts.history && !stop.load(Ordering::Relaxed) {
            let Some((p, _)) = gen.next() else { break };
            engine.score_at(&p, p.event_time_ms);
            n += 1;
        }
        print(&format!(
            "history: {n} payments of {CUSTOMERS} customers over the last {:.1} days scored in {:.1} s; now live (a time-lapse: event time runs at the customers' pace)",
            history_ms as f64 / 86_400_000.0,
            t.elapsed().as_secs_f64()
        ));
    }
    let started = Instant::now();
    let mut sum = DemoSummary::default();
    let mut last_print = Instant::now();
    let mut last_events = 0u64;
    let mut engine_ns_total = 0u64;
    for (p, label) in gen {
        if stop.load(Ordering::Relaxed) || opts.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        if opts.rate > 0 {
            // Pace by count on the wall clock: `rate` payments a second.
            let due = Duration::from_secs_f64(sum.events as f64 / opts.rate as f64);
            let now = started.elapsed();
            if due > now {
                std::thread::sleep((due - now).min(Duration::from_millis(50)));
            }
        }
        let v = engine.score(&p);
        metrics.events_consumed.increment(1);
        metrics.verdict(v.decision).increment(1);
        metrics.engine_latency.record(v.engine_time_ns as f64 / 1e9);
        engine_ns_total += v.engine_time_ns;
        sum.events += 1;
        sum.by_decision[v.decision as usize] += 1;
        for r in &v.reasons {
            *sum.by_reason.entry(r.rule_id.to_string()).or_default() += 1;
        }
        let e = sum.flagged_by_label.entry(label).or_default();
        e.1 += 1;
        if v.decision != Decision::Allow {
            e.0 += 1;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            let rate = (sum.events - last_events) as f64 / last_print.elapsed().as_secs_f64();
            last_events = sum.events;
            last_print = Instant::now();
            print(&summary_line(&sum, rate, engine_ns_total));
        }
    }
    print(&summary_line(
        &sum,
        sum.events as f64 / started.elapsed().as_secs_f64().max(1e-9),
        engine_ns_total,
    ));
    sum
}

fn summary_line(s: &DemoSummary, rate: f64, engine_ns_total: u64) -> String {
    let mut reasons: Vec<_> = s.by_reason.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let top: Vec<String> = reasons
        .iter()
        .take(4)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "{:>9} events  {:>8.0}/s  ALLOW {}  REVIEW {}  HOLD {}  mean engine {:.2} µs  top reasons: {}",
        s.events,
        rate,
        s.by_decision[0],
        s.by_decision[1],
        s.by_decision[2],
        engine_ns_total as f64 / s.events.max(1) as f64 / 1000.0,
        if top.is_empty() { "-".to_string() } else { top.join(" ") }
    )
}

/// Runs the demo with /metrics served at `listen`, until ctrl-c or the
/// duration. Scoring runs on a blocking thread, the HTTP server on tokio.
pub async fn run_with_metrics(
    opts: DemoOptions,
    listen: Option<std::net::SocketAddr>,
) -> std::io::Result<DemoSummary> {
    let handle = crate::telemetry::install();
    // The demo scores its own events as the stream would: ready at once.
    let ready = Arc::new(crate::serve::ready::Readiness::new(false));
    ready.set_state_loaded();
    ready.set_stream(true);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = match listen {
        Some(addr) => {
            let state = crate::serve::HttpState {
                metrics: handle,
                ready,
            };
            let (bound, task) = crate::serve::spawn(addr, state, async move {
                let _ = rx.await;
            })
            .await?;
            eprintln!("fraudline demo: metrics at http://{bound}/metrics (ctrl-c to stop)");
            Some(task)
        }
        None => None,
    };
    let stop2 = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stop2.store(true, Ordering::SeqCst);
        }
    });
    let summary = tokio::task::spawn_blocking(move || run(&opts, &stop, |line| println!("{line}")))
        .await
        .map_err(std::io::Error::other)?;
    let _ = tx.send(());
    if let Some(t) = server {
        let _ = t.await;
    }
    println!("\ncaught by pattern (flagged / events):");
    let mut labels: Vec<_> = summary.flagged_by_label.iter().collect();
    labels.sort();
    for (label, (flagged, total)) in labels {
        println!(
            "  {label:<18} {flagged:>8} / {total:<8} ({:.1}%)",
            *flagged as f64 * 100.0 / (*total).max(1) as f64
        );
    }
    Ok(summary)
}

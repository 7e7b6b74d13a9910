//! A rolling deploy of 3 instances (stream and in-line API in each) while a
//! switch's calls flow through a load balancer that, like a Kubernetes
//! Service, sends calls only to instances whose `/readyz` answered 200 at
//! its last poll (issue 11): no call is refused, and an instance that is not
//! being replaced never leaves the balancer (the rebalances that each step
//! causes pause the stream's partitions, not the in-line path).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// One instance as the load balancer sees it.
struct Backend {
    name: String,
    readyz: String,
    score: String,
    ready: AtomicBool,
    seen_ready: AtomicBool,
    /// Being replaced: SIGTERM sent (its 503 is expected).
    leaving: AtomicBool,
    /// Times it answered not-ready after having been ready, while not
    /// leaving.
    dropped_out: AtomicU64,
    served: AtomicU64,
}

#[derive(Default)]
struct Balancer {
    backends: Mutex<Vec<Arc<Backend>>>,
    next: AtomicU64,
    ok: AtomicU64,
    no_backend: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Balancer {
    fn pick(&self) -> Option<Arc<Backend>> {
        let all = self.backends.lock().unwrap();
        let ready: Vec<&Arc<Backend>> = all
            .iter()
            .filter(|b| b.ready.load(Ordering::SeqCst))
            .collect();
        if ready.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % ready.len();
        Some(ready[i].clone())
    }

    fn add(&self, name: &str, f: &mut Fraudline) -> Arc<Backend> {
        let inline = f
            .logged_addr("in-line HTTP API")
            .unwrap_or_else(|| panic!("{name}: no in-line HTTP address; log:\n{}", f.log_tail()));
        let b = Arc::new(Backend {
            name: name.to_string(),
            readyz: format!("http://{}/readyz", f.http),
            score: format!("http://{inline}/v1/score"),
            ready: AtomicBool::new(false),
            seen_ready: AtomicBool::new(false),
            leaving: AtomicBool::new(false),
            dropped_out: AtomicU64::new(0),
            served: AtomicU64::new(0),
        });
        self.backends.lock().unwrap().push(b.clone());
        b
    }

    fn remove(&self, b: &Arc<Backend>) {
        self.backends.lock().unwrap().retain(|x| !Arc::ptr_eq(x, b));
    }
}

/// Polls every backend's /readyz every 100 ms (a Kubernetes probe would be
/// slower, which only widens the window this test covers).
async fn poll(lb: Arc<Balancer>, stop: Arc<AtomicBool>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    while !stop.load(Ordering::SeqCst) {
        let all: Vec<Arc<Backend>> = lb.backends.lock().unwrap().clone();
        for b in all {
            let ready = matches!(client.get(&b.readyz).send().await, Ok(r) if r.status() == 200);
            if ready {
                b.seen_ready.store(true, Ordering::SeqCst);
            } else if b.seen_ready.load(Ordering::SeqCst) && !b.leaving.load(Ordering::SeqCst) {
                b.dropped_out.fetch_add(1, Ordering::SeqCst);
            }
            b.ready.store(ready, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A switch: sends payments one after another to a ready backend.
async fn call(lb: Arc<Balancer>, stop: Arc<AtomicBool>, caller: u32) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let Some(b) = lb.pick() else {
            lb.no_backend.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        n += 1;
        let body = serde_json::json!({
            "event_id": format!("roll-{caller}-{n}"),
            "event_time_ms": fraudline::now_ms(),
            "payer": {"account": format!("ACC-ROLL-{:04}", n % 50)},
            "payee": {"account": format!("EW-ROLL-{:03}", n % 7), "kind": "EWALLET"},
            "amount_minor": 150_000, "currency": "VND", "device_id": format!("DEV-ROLL-{}", n % 13),
            "channel": "CHANNEL_MOBILE"
        });
        match client.post(&b.score).json(&body).send().await {
            Ok(r) if r.status() == 200 => {
                lb.ok.fetch_add(1, Ordering::SeqCst);
                b.served.fetch_add(1, Ordering::SeqCst);
            }
            Ok(r) => lb
                .failures
                .lock()
                .unwrap()
                .push(format!("{}: HTTP {}", b.name, r.status())),
            Err(e) => lb
                .failures
                .lock()
                .unwrap()
                .push(format!("{}: {e:?}", b.name)),
        }
    }
}

/// Waits until the balancer has seen `b` ready.
async fn until_ready(b: &Backend, f: &mut Fraudline) {
    let start = Instant::now();
    while !b.ready.load(Ordering::SeqCst) {
        assert!(
            f.alive() && start.elapsed() < Duration::from_secs(90),
            "{} never became ready; log:\n{}",
            b.name,
            f.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_refuses_no_inline_call() {
    let brokers = broker();
    let t = create_topics(brokers, "rolling", 6).await;
    let spills: Vec<tempfile::TempDir> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let config = |spill: &std::path::Path| {
        config_toml(
            brokers,
            &t,
            "at-least-once",
            ANY_PORT,
            &format!(
                "[inline]\nenabled = true\ngrpc_listen = \"\"\nhttp_listen = \"{ANY_PORT}\"\n\
                 shutdown_delay_ms = 1000\naudit = true\naudit_spill_dir = \"{}\"\n",
                spill.display()
            ),
        )
    };
    let lb = Arc::new(Balancer::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut nodes = Vec::new();
    for (i, spill) in spills.iter().take(3).enumerate() {
        let mut f = Fraudline::start(&config(spill.path()));
        let b = lb.add(&format!("old-{i}"), &mut f);
        nodes.push((f, b));
    }
    let poller = tokio::spawn(poll(lb.clone(), stop.clone()));
    for (f, b) in nodes.iter_mut() {
        until_ready(b, f).await;
    }
    // Stream traffic too, so every step rebalances live partitions.
    let load = tokio::spawn(produce_events(brokers, t.payments.clone().leak(), 3_000, 7));
    let callers: Vec<_> = (0..2)
        .map(|c| tokio::spawn(call(lb.clone(), stop.clone(), c)))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The deploy: a new instance first (max surge 1), then the old one goes.
    for i in 0..3 {
        let before = lb.ok.load(Ordering::SeqCst);
        let mut f = Fraudline::start(&config(spills[3 + i].path()));
        let b = lb.add(&format!("new-{i}"), &mut f);
        until_ready(&b, &mut f).await;
        let (old, old_b) = &mut nodes[i];
        old_b.leaving.store(true, Ordering::SeqCst);
        assert_eq!(
            old.sigterm_and_wait(Duration::from_secs(60)),
            Some(0),
            "old-{i}; log:\n{}",
            old.log_tail()
        );
        lb.remove(old_b);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        nodes.push((f, b));
        assert!(
            lb.ok.load(Ordering::SeqCst) > before + 50,
            "calls flowed during step {i}"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for c in callers {
        c.await.unwrap();
    }
    poller.await.unwrap();
    load.await.unwrap();

    let failures = lb.failures.lock().unwrap().clone();
    let ok = lb.ok.load(Ordering::SeqCst);
    eprintln!(
        "rolling restart: {ok} calls answered, {} refused, served per instance: {:?}",
        failures.len(),
        nodes
            .iter()
            .map(|(_, b)| (b.name.clone(), b.served.load(Ordering::SeqCst)))
            .collect::<Vec<_>>()
    );
    assert!(
        failures.is_empty(),
        "{} of {} calls refused: {:?}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(10)]
    );
    assert_eq!(
        lb.no_backend.load(Ordering::SeqCst),
        0,
        "no ready instance at some point"
    );
    for (_, b) in &nodes {
        assert_eq!(
            b.dropped_out.load(Ordering::SeqCst),
            0,
            "{} left the balancer while not being replaced (a rebalance took its in-line path out)",
            b.name
        );
        assert!(b.served.load(Ordering::SeqCst) > 0, "{} took calls", b.name);
    }
    for (f, _) in nodes.iter_mut().skip(3) {
        assert_eq!(f.sigterm_and_wait(Duration::from_secs(60)), Some(0));
    }
}

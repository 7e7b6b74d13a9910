//! Operations checks against a real Kafka broker:
//! - consumer lag per partition is the high watermark minus the consumer's
//!   position, it follows new records, and revoked partitions drop out;
//!   with transactions (exactly-once), it reaches 0 past commit markers;
//! - a running fraudline exports lag for every partition it owns;
//! - no account number or phone reaches fraudline's logs in clear, even at
//!   debug level and through error texts that quote their input.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use fraudline::stream::lag;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn lags(c: &BaseConsumer, topic: &str) -> HashMap<i32, (i64, i64, i64)> {
    lag::measure(c, Duration::from_secs(5))
        .unwrap()
        .into_iter()
        .map(|l| {
            assert_eq!(l.topic, topic);
            (l.partition, (l.lag, l.high_watermark, l.position))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_high_watermark_minus_position_per_partition() {
    let brokers = broker();
    let t = create_topics(brokers, "lag", 2).await;
    let placement = produce_events(brokers, &t.payments, 200, 7).await;
    let mut per_partition: HashMap<i32, i64> = HashMap::new();
    for (p, _) in placement.values() {
        *per_partition.entry(*p).or_default() += 1;
    }
    assert_eq!(per_partition.len(), 2, "events on both partitions");

    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &t.group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    // Nothing assigned: nothing to report.
    assert!(lag::measure(&c, Duration::from_secs(5)).unwrap().is_empty());

    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset(&t.payments, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    // Before the first message: no position and no committed offset, so
    // no figure rather than a guess.
    assert!(lags(&c, &t.payments).is_empty());
    // Read everything: lag 0 everywhere, position = high watermark.
    let mut read = 0;
    let start = Instant::now();
    while read < 200 && start.elapsed() < Duration::from_secs(30) {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            m.unwrap();
            read += 1;
        }
    }
    assert_eq!(read, 200);
    let l = lags(&c, &t.payments);
    for p in 0..2 {
        assert_eq!(
            l[&p],
            (0, per_partition[&p], per_partition[&p]),
            "partition {p}"
        );
    }

    // Seven more on partition 1, not read: its lag is 7, partition 0's 0.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for i in 0..7 {
        producer
            .send(
                FutureRecord::to(&t.payments)
                    .partition(1)
                    .key("k")
                    .payload(&format!("{i}")),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let l = lags(&c, &t.payments);
    assert_eq!(l[&0].0, 0);
    assert_eq!(l[&1], (7, per_partition[&1] + 7, per_partition[&1]));

    // Partition 1 revoked (assignment now partition 0 only): it drops out.
    let mut only0 = TopicPartitionList::new();
    only0
        .add_partition_offset(&t.payments, 0, Offset::Offset(per_partition[&0]))
        .unwrap();
    c.assign(&only0).unwrap();
    let l = lags(&c, &t.payments);
    assert!(!l.contains_key(&1), "{l:?}");
}

/// `fraudline_consumer_lag_messages{topic,partition}` from /metrics.
fn lag_series(metrics: &str, topic: &str) -> HashMap<String, f64> {
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("fraudline_consumer_lag_messages{")?;
            let (labels, value) = rest.split_once("} ")?;
            if !labels.contains(&format!("topic=\"{topic}\"")) {
                return None;
            }
            let p = labels.split("partition=\"").nth(1)?.split('"').next()?;
            Some((p.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_fraudline_exports_lag_per_partition_and_never_logs_an_account_or_phone() {
    let brokers = broker();
    let t = create_topics(brokers, "oplog", 2).await;
    let list_topic = create_topics(brokers, "oplog-list", 1).await.payments;
    let placement = produce_events(brokers, &t.payments, 300, 11).await;
    // Blocklist records whose keys are bare phone numbers: the error texts
    // quote the key (kind, or the whole key), the log must not.
    produce_raw(
        brokers,
        &list_topic,
        &[
            ("0912345678", b"x".to_vec()),
            ("0987654321:x", b"x".to_vec()),
            ("phone:+84911222333", b"\xff\xff".to_vec()),
        ],
    )
    .await;
    let http = ANY_PORT;
    let extra = format!(
        "warmup_lookback_ms = 0\n[blocklist]\ntopic = \"{list_topic}\"\ntopic_catch_up_ms = 20000\n"
    );
    let config = config_toml(brokers, &t, "at-least-once", http, &extra).replace(
        "format = \"text\"\nlevel = \"info\"",
        "format = \"json\"\nlevel = \"info,fraudline=debug\"",
    );
    let mut f = Fraudline::start(&config);
    let http = f.http.clone();

    // Every event scored: lag 0 on both partitions.
    let start = Instant::now();
    let mut last = HashMap::new();
    while start.elapsed() < Duration::from_secs(60) {
        if let Some((_, body)) = http_get(&http, "/metrics") {
            last = lag_series(&body, &t.payments);
            let scored = body
                .lines()
                .find_map(|l| l.strip_prefix("fraudline_events_consumed_total "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            if scored >= 300.0 && last.len() == 2 && last.values().all(|v| *v == 0.0) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(last.len(), 2, "lag series: {last:?}\n{}", f.log_tail());
    assert!(last.values().all(|v| *v == 0.0), "{last:?}");

    assert_eq!(f.sigterm_and_wait(Duration::from_secs(30)), Some(0));
    let log = std::fs::read_to_string(&f.log).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with('{')).collect();
    for l in &lines {
        serde_json::from_str::<serde_json::Value>(l)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"));
    }
    // The paths that carry identifiers did log.
    let scored = lines.iter().filter(|l| l.contains("\"payer\":\"")).count();
    assert!(
        scored >= 300,
        "{scored} per-event debug lines\n{}",
        f.log_tail()
    );
    assert!(
        log.contains("blocklist topic record skipped"),
        "{}",
        f.log_tail()
    );
    // ... and nothing in them is an identifier in clear.
    let gen = fraudline::tools::gen::Generator::new(fraudline::tools::gen::GenConfig {
        // As produce_events generated them (the event_id check below
        // proves it).
        seed: 11,
        start_ms: common::events_start_ms(),
        fraud_rate: 0.05,
        events_per_sec: 200.0,
        ..Default::default()
    });
    let mut clear = Vec::new();
    let mut ids = vec![
        "0912345678".to_string(),
        "0987654321".to_string(),
        "84911222333".to_string(),
    ];
    for (p, _) in gen.take(300) {
        assert!(
            placement.contains_key(&p.event_id),
            "same events as produced"
        );
        ids.push(p.payer.account.clone());
        ids.push(p.payee.account.clone());
        if !p.phone.is_empty() {
            ids.push(p.phone.trim_start_matches('+').to_string());
        }
    }
    for id in &ids {
        if id.len() >= 8 && log.contains(id.as_str()) {
            clear.push(id.clone());
        }
    }
    assert!(clear.is_empty(), "in clear in the log: {clear:?}");
    assert!(
        log.contains("******5678") && log.contains("******4321"),
        "masked keys logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_reaches_zero_past_transaction_markers_for_a_read_committed_consumer() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let brokers = broker();
    let t = create_topics(brokers, "laggtxn", 1).await;
    let topic = t.payments.clone();
    let b = brokers.to_string();
    // Two committed transactions of 5 records: each ends in a commit
    // marker, which takes an offset but is never delivered.
    tokio::task::spawn_blocking(move || {
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .set("transactional.id", unique("lagtxn"))
            .create()
            .unwrap();
        p.init_transactions(Duration::from_secs(30)).unwrap();
        for _ in 0..2 {
            p.begin_transaction().unwrap();
            for i in 0..5 {
                p.send(BaseRecord::to(&topic).key("k").payload(&format!("{i}")))
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
            p.commit_transaction(Duration::from_secs(30)).unwrap();
        }
    })
    .await
    .unwrap();
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &t.group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&t.payments, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut read = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            m.unwrap();
            read += 1;
        } else if read == 10 {
            break;
        }
    }
    assert_eq!(read, 10);
    let l = lags(&c, &t.payments);
    assert_eq!(l[&0].1, 12, "10 records and 2 commit markers");
    assert_eq!(l[&0].0, 0, "lag past the last marker: {:?}", l[&0]);
}

/// The sample lines of `name` in a /metrics body (a histogram's are its
/// `_bucket`, `_sum` and `_count` lines).
fn has_series(body: &str, name: &str) -> bool {
    body.lines().filter(|l| !l.starts_with('#')).any(|l| {
        let series = l.split(['{', ' ']).next().unwrap_or_default();
        series == name
            || series
                .strip_prefix(name)
                .is_some_and(|rest| ["_bucket", "_sum", "_count"].contains(&rest))
    })
}

/// Every metric in the catalogue (docs/METRICS.md) has a series as soon as
/// the service is ready, before the first payment: a dashboard or an alert
/// (`rate(...)`, `absent(...)`) must not wait for the first error. The
/// service runs everything a bank turns on: stream with state log and
/// snapshots, in-line API with audit, a blocklist file and topic, a model
/// and a currency table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_catalogued_metric_exists_before_the_first_payment() {
    let brokers = broker();
    let t = create_topics(brokers, "allmetrics", 2).await;
    let list_topic = create_topics(brokers, "allmetrics-list", 1).await.payments;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.csv");
    std::fs::write(
        &list,
        "kind,value,action,reason\ndevice,dev-none,HOLD,placeholder\n",
    )
    .unwrap();
    let spill = dir.path().join("spill");
    let model = dir.path().join("model.txt");
    std::fs::write(
        &model,
        "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nobjective=binary sigmoid:1\n\
         feature_names=payer_count_1h\n\nTree=0\nnum_leaves=2\nnum_cat=0\nsplit_feature=0\n\
         threshold=2.5\ndecision_type=2\nleft_child=-1\nright_child=-2\nleaf_value=-1 1\n\
         is_linear=0\nshrinkage=1\n\nend of trees\n",
    )
    .unwrap();
    let currencies = dir.path().join("currencies.toml");
    std::fs::write(
        &currencies,
        "home = \"VND\"\n[rates]\nVND = { digits = 0, rate = 1 }\nUSD = { digits = 2, rate = 25400 }\n",
    )
    .unwrap();
    let extra = format!(
        "warmup_lookback_ms = 0\n[blocklist]\nfiles = [\"{}\"]\ncountry_code = \"84\"\ntopic = \"{list_topic}\"\n\
         [inline]\nenabled = true\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\
         audit = true\naudit_spill_dir = \"{}\"\n[model]\nfile = \"{}\"\n[currencies]\nfile = \"{}\"\n",
        list.display(),
        spill.display(),
        model.display(),
        currencies.display()
    );
    let mut f = Fraudline::start(&config_toml(brokers, &t, "at-least-once", ANY_PORT, &extra));
    let http = f.http.clone();
    let started = Instant::now();
    let mut body = String::new();
    while started.elapsed() < Duration::from_secs(60) {
        // Ready, and the lag table published once (it names the assigned
        // partitions, so it exists from the first assignment on).
        if http_get(&http, "/readyz/stream").is_some_and(|(s, _)| s == 200) {
            if let Some((_, b)) = http_get(&http, "/metrics") {
                body = b;
                if has_series(&body, "fraudline_consumer_lag_messages") {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!body.is_empty(), "never ready\n{}", f.log_tail());
    assert!(
        !has_series(&body, "fraudline_verdicts_total")
            || body.contains("fraudline_events_consumed_total 0"),
        "a payment was scored before the scrape: the test would prove nothing"
    );
    let missing: Vec<&str> = fraudline::telemetry::CATALOGUE
        .iter()
        .map(|m| m.name)
        .filter(|n| !has_series(&body, n))
        .collect();
    assert!(
        missing.is_empty(),
        "catalogued metrics with no series at start: {missing:?}"
    );
    assert_eq!(f.sigterm_and_wait(Duration::from_secs(30)), Some(0));
}

//! In-line payments are part of the state log (issue 11): a payment scored
//! in-line on instance A reaches instance B through the log, so a retry
//! that the load balancer sends to B gets A's verdict back (not a second
//! scoring), features move once on both instances, and a restarted A still
//! answers the retry from the log.

mod common;

use std::time::{Duration, Instant};

use common::*;

struct Node {
    f: Fraudline,
    score_url: String,
}

impl Node {
    fn start(config: &str) -> Node {
        let mut f = Fraudline::start(config);
        let addr = f
            .logged_addr("in-line HTTP API")
            .unwrap_or_else(|| panic!("no in-line HTTP address; log:\n{}", f.log_tail()));
        Node {
            score_url: format!("http://{addr}/v1/score"),
            f,
        }
    }

    fn restart(self) -> Node {
        let mut f = self.f.restart();
        let addr = f
            .logged_addr("in-line HTTP API")
            .unwrap_or_else(|| panic!("no in-line HTTP address; log:\n{}", f.log_tail()));
        Node {
            score_url: format!("http://{addr}/v1/score"),
            f,
        }
    }

    /// Posts a payment; returns the body, whether it was a replay, and the
    /// verdict's features.
    async fn score(&self, body: &serde_json::Value) -> (String, bool, serde_json::Value) {
        let r = reqwest::Client::new()
            .post(&self.score_url)
            .json(body)
            .send()
            .await
            .expect("in-line call");
        assert_eq!(r.status(), 200, "in-line call refused");
        let replay = r.headers().get("fraudline-replay").is_some();
        let text = r.text().await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        (text, replay, v["features"].clone())
    }

    fn applied(&self) -> f64 {
        http_get(&self.f.http, "/metrics")
            .map(|(_, b)| metric(&b, "fraudline_state_records_total{result=\"applied\"}"))
            .unwrap_or(0.0)
    }

    /// Waits until this node has applied `n` state records of others.
    async fn wait_applied(&self, n: f64) {
        let start = Instant::now();
        while self.applied() < n {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "state records applied: {} of {n}; log:\n{}",
                self.applied(),
                self.f.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn payment(id: &str, payee: &str) -> serde_json::Value {
    serde_json::json!({
        "event_id": id, "event_time_ms": fraudline::now_ms(),
        "payer": {"account": "ACC-INLINE-0001"},
        "payee": {"account": payee, "kind": "EWALLET"},
        "amount_minor": 1_250_000, "currency": "VND", "device_id": "DEV-INLINE-1",
        "channel": "CHANNEL_MOBILE"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_on_another_instance_gets_the_first_verdict_and_features_move_once() {
    let brokers = broker();
    let t = create_topics(brokers, "inline-state", 2).await;
    let spill_a = tempfile::tempdir().unwrap();
    let spill_b = tempfile::tempdir().unwrap();
    // In-line only (no payments topic), one state log, explain on so the
    // answers carry feature values.
    let config = |spill: &std::path::Path| {
        format!(
            "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"{}\"\npayments_topic = \"\"\n\
             verdicts_topic = \"{}\"\ndlq_topic = \"{}\"\nstate_topic = \"{}\"\nsnapshot_topic = \"\"\n\
             [http]\nlisten = \"{ANY_PORT}\"\n[log]\nformat = \"text\"\nlevel = \"info\"\n\
             [engine]\nexplain_in_verdicts = true\n\
             [inline]\nenabled = true\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\
             audit = true\naudit_spill_dir = \"{}\"\n",
            t.group,
            t.verdicts,
            t.dlq,
            t.state,
            spill.display()
        )
    };
    let a = Node::start(&config(spill_a.path()));
    let b = Node::start(&config(spill_b.path()));

    // Scored on A.
    let first = payment("inline-retry-1", "EW-INLINE-PAYEE");
    let (on_a, replay, fa) = a.score(&first).await;
    assert!(!replay);
    assert_eq!(fa["payer.count_1h"], 1.0, "{on_a}");

    // The load balancer sends the retry to B, once A's state record is there.
    b.wait_applied(1.0).await;
    let (on_b, replay, _) = b.score(&first).await;
    assert!(
        replay,
        "B scored the retry again instead of answering A's verdict: {on_b}"
    );
    assert_eq!(on_b, on_a, "B's answer differs from A's first verdict");

    // Features moved once: the next payment of the payer, on B, sees one
    // earlier payment, not two; on A (after B's payment reached it), two.
    let (_, _, fb) = b.score(&payment("inline-next-2", "EW-INLINE-PAYEE")).await;
    assert_eq!(fb["payer.count_1h"], 2.0, "on B: {fb}");
    assert_eq!(fb["payee.in_count_1h"], 2.0, "on B: {fb}");
    a.wait_applied(1.0).await;
    let (_, _, fa) = a.score(&payment("inline-next-3", "EW-INLINE-PAYEE")).await;
    assert_eq!(fa["payer.count_1h"], 3.0, "on A: {fa}");
    assert_eq!(fa["payee.in_count_1h"], 3.0, "on A: {fa}");

    // A restarted A (a deploy: SIGTERM, which flushes what the in-line
    // path has still to append) replays the log (its earlier life's records
    // are another origin now) and still answers the first retry with the
    // first verdict.
    let mut a = a;
    assert_eq!(a.f.sigterm_and_wait(Duration::from_secs(30)), Some(0));
    let a = a.restart();
    let (again, replay, _) = a.score(&first).await;
    assert!(replay, "restarted A scored the retry again: {again}");
    assert_eq!(again, on_a);
    let (_, _, fa) = a.score(&payment("inline-next-4", "EW-INLINE-PAYEE")).await;
    assert_eq!(fa["payer.count_1h"], 4.0, "after restart: {fa}");
    drop(b);
}

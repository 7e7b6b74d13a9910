//! The in-line API run in-process for tests: in-line only, port 0
//! everywhere (`app::run_with`), with helpers for fresh payments, calls and
//! /metrics series.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fraudline::app::{self, Bound};
use fraudline::config::Config;
use fraudline::event::Payment;
use fraudline::proto::scoring_client::ScoringClient;
use fraudline::tools::gen::{GenConfig, Generator};
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub struct Server {
    pub bound: Bound,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), app::AppError>>,
    pub _dir: tempfile::TempDir,
}

impl Server {
    /// Starts fraudline in-line only; `inline` lines go into `[inline]`.
    pub async fn start(inline: &str) -> Server {
        Server::start_env(inline, &[]).await
    }

    pub async fn start_env(inline: &str, env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            "[kafka]\npayments_topic = \"\"\nstate_topic = \"\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [log]\nformat = \"text\"\nlevel = \"warn\"\n\
             [inline]\nenabled = true\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\
             audit = false\naudit_spill_dir = \"{}\"\n{inline}\n",
            dir.path().display()
        );
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cfg = Config::from_parts(Some(&toml), Some("test.toml"), env).unwrap();
        let (bound, stop_tx, task) = super::start_in_process(cfg).await;
        Server {
            bound,
            stop: Some(stop_tx),
            task,
            _dir: dir,
        }
    }

    pub fn grpc(&self) -> SocketAddr {
        self.bound.grpc.unwrap()
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1/score", self.bound.inline_http.unwrap())
    }

    pub async fn client(&self) -> ScoringClient<Channel> {
        ScoringClient::connect(format!("http://{}", self.grpc()))
            .await
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.bound.http.unwrap()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let r = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("drains within 30 s")
            .unwrap();
        assert!(r.is_ok(), "{r:?}");
    }
}

static SEED: AtomicU64 = AtomicU64::new(1);

/// Fresh, valid payments with unique event ids.
pub fn payments(n: usize) -> Vec<Payment> {
    let seed = SEED.fetch_add(1, Ordering::Relaxed) * 7919 + std::process::id() as u64;
    Generator::new(GenConfig {
        seed,
        start_ms: fraudline::now_ms() - 120_000,
        events_per_sec: 1000.0,
        ..GenConfig::default()
    })
    .take(n)
    .map(|(mut p, _)| {
        p.event_id = format!("{}-{seed}", p.event_id);
        p
    })
    .collect()
}

pub fn payment() -> Payment {
    payments(1).remove(0)
}

pub async fn post(url: &str, body: String) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

pub async fn json(r: reqwest::Response) -> serde_json::Value {
    let text = r.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The value of a Prometheus series (exact label text), 0 when absent.
pub fn series(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

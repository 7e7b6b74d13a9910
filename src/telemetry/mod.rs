//! Every metric name in one place, the Prometheus recorder, and tracing set-up.
//!
//! Names follow Prometheus conventions: `fraudline_` prefix, base units,
//! `_total` for counters. Labels are bounded (decision, error kind, rule id,
//! partition); never an account or event id. Per-event code uses the handles
//! in [`Metrics`], registered once, so the hot path does no name lookup.

mod lag;
mod logs;

use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::engine::Decision;
use crate::event::DecodeError;
pub use lag::{consumer_lag, ConsumerLag};
pub use logs::{mask_line, MaskingWriter, MIN_DIGITS};

pub const EVENTS_CONSUMED: &str = "fraudline_events_consumed_total";
pub const VERDICTS: &str = "fraudline_verdicts_total";
pub const DECODE_ERRORS: &str = "fraudline_decode_errors_total";
pub const DLQ_RECORDS: &str = "fraudline_dlq_records_total";
pub const LAST_RESORT: &str = "fraudline_dlq_last_resort_total";
/// The dead-letter kind of a minimal dead letter (see `DecodeError::Unproducible`).
const UNPRODUCIBLE: &str = "unproducible";
pub const STATE_PROPAGATION: &str = "fraudline_state_propagation_seconds";
pub const STATE_APPLIED: &str = "fraudline_state_records_total";
pub const STATE_UNWRITTEN: &str = "fraudline_state_unwritten_total";
pub const STATE_RESTORE_DURATION: &str = "fraudline_state_restore_duration_seconds";
pub const STATE_SNAPSHOTS: &str = "fraudline_state_snapshots_total";
pub const STATE_SNAPSHOT_RECORDS: &str = "fraudline_state_snapshot_records_total";
pub const STATE_SNAPSHOT_DURATION: &str = "fraudline_state_snapshot_duration_seconds";
pub const STATE_SNAPSHOT_LAST: &str = "fraudline_state_snapshot_last_success_timestamp_seconds";
pub const STATE_SNAPSHOT_RESTORED: &str = "fraudline_state_snapshot_restored_entities";
pub const ENGINE_LATENCY: &str = "fraudline_engine_latency_seconds";
pub const END_TO_END_LATENCY: &str = "fraudline_end_to_end_latency_seconds";
pub const CONSUMER_LAG: &str = "fraudline_consumer_lag_messages";
pub const IN_FLIGHT: &str = "fraudline_in_flight_records";
pub const DELIVERY_RETRIES: &str = "fraudline_delivery_retries_total";
pub const TRANSACTIONS: &str = "fraudline_transactions_total";
pub const RULE_HITS: &str = "fraudline_rule_hits_total";
pub const BLOCKLIST_ENTRIES: &str = "fraudline_blocklist_entries";
pub const BLOCKLIST_LOOKUPS: &str = "fraudline_blocklist_lookups_total";
pub const BLOCKLIST_HITS: &str = "fraudline_blocklist_hits_total";
pub const BLOCKLIST_VERSION: &str = "fraudline_blocklist_version";
pub const BLOCKLIST_LOADED_AT: &str = "fraudline_blocklist_last_load_timestamp_seconds";
pub const BLOCKLIST_LOAD_FAILURES: &str = "fraudline_blocklist_load_failures_total";
pub const RULE_DEMOTIONS: &str = "fraudline_rule_demotions_total";
pub const RULE_DEMOTED: &str = "fraudline_rule_demoted";
pub const RULES_RELOADS: &str = "fraudline_rules_reloads_total";
pub const CURRENCY_RELOADS: &str = "fraudline_currency_reloads_total";
pub const MODEL_RELOADS: &str = "fraudline_model_reloads_total";
pub const MODEL_INFO: &str = "fraudline_model_info";
pub const RULES_INFO: &str = "fraudline_rules_info";
pub const READY: &str = "fraudline_ready";
pub const READY_PATH: &str = "fraudline_ready_path";
pub const KAFKA_CONNECTED: &str = "fraudline_kafka_connected";
pub const INLINE_CONN_REFUSED: &str = "fraudline_inline_connections_refused_total";
pub const WARMUP_EVENTS: &str = "fraudline_warmup_events_total";
pub const WARMUP_DURATION: &str = "fraudline_warmup_duration_seconds";
pub const BUILD_INFO: &str = "fraudline_build_info";
pub const FEATURE_LATE_EVENTS: &str = "fraudline_feature_late_events_total";
pub const FEATURE_DUPLICATES: &str = "fraudline_feature_duplicate_events_total";
pub const FEATURE_ENTITIES: &str = "fraudline_feature_entities";
pub const FEATURE_EVICTIONS: &str = "fraudline_feature_evictions_total";
pub const FEATURE_KEY_EVICTIONS: &str = "fraudline_feature_key_evictions_total";
pub const FEATURE_SKETCHES: &str = "fraudline_feature_sketches_started_total";
pub const FEATURE_SWEEP_DURATION: &str = "fraudline_feature_sweep_duration_seconds";
pub const INLINE_REQUESTS: &str = "fraudline_inline_requests_total";
pub const INLINE_DURATION: &str = "fraudline_inline_request_duration_seconds";
pub const INLINE_IN_FLIGHT: &str = "fraudline_inline_in_flight";
pub const INLINE_SHED: &str = "fraudline_inline_shed_total";
pub const INLINE_REPLAYS: &str = "fraudline_inline_idempotent_replays_total";
pub const AUDIT_BACKLOG: &str = "fraudline_audit_backlog_records";
pub const AUDIT_SPILLED: &str = "fraudline_audit_spilled_records_total";
pub const AUDIT_DROPPED: &str = "fraudline_audit_dropped_records_total";
pub const AUDIT_SENT: &str = "fraudline_audit_sent_records_total";

/// In-line request time, arrival to response written: tens of microseconds
/// to the largest budgets.
const INLINE_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_2, 0.000_3, 0.000_5, 0.000_75, 0.001, 0.002, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 1.0,
];

/// The `code` label values of `fraudline_inline_requests_total`: gRPC code
/// names, and HTTP status codes (a fixed set: the API answers no others).
pub const INLINE_GRPC_CODES: &[&str] = &[
    "OK",
    ABANDONED,
    "INVALID_ARGUMENT",
    "UNAUTHENTICATED",
    "ALREADY_EXISTS",
    "UNAVAILABLE",
    "RESOURCE_EXHAUSTED",
    "INTERNAL",
];
pub const INLINE_HTTP_CODES: &[&str] = &[
    "200", ABANDONED, "400", "401", "408", "409", "413", "415", "503", "500",
];

/// The `code` of an in-line call the caller gave up on before it was
/// answered (its deadline passed, it cancelled, or the connection closed):
/// no answer was written, so it has no gRPC or HTTP code of its own.
pub const ABANDONED: &str = "abandoned";

/// What a metric is, for Prometheus's `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// Lets a repeating log line through at most once per period, counting
/// the ones held back: a broker outage makes librdkafka and the consume
/// loop report the same error every 100 ms, which would bury the lines
/// that say what changed.
#[derive(Debug)]
pub struct Throttle {
    period_ms: i64,
    last_ms: std::sync::atomic::AtomicI64,
    held: std::sync::atomic::AtomicU64,
}

impl Throttle {
    pub const fn new(period_ms: i64) -> Throttle {
        Throttle {
            period_ms,
            last_ms: std::sync::atomic::AtomicI64::new(i64::MIN / 2),
            held: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last one let through)` when this line may
    /// be logged; `None` (counted) otherwise.
    pub fn allow(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let now = crate::now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        if now - last >= self.period_ms
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.held.swap(0, Ordering::Relaxed))
        } else {
            self.held.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// One exported metric: the catalogue entry that `describe()` registers,
/// docs/METRICS.md lists, and the dashboard and alert rules are checked
/// against (tests/ops_kit.rs).
#[derive(Debug, Clone, Copy)]
pub struct MetricSpec {
    pub name: &'static str,
    pub kind: MetricKind,
    /// Label names; every value set is bounded (never an account or event id).
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn spec(
    name: &'static str,
    kind: MetricKind,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricSpec {
    MetricSpec {
        name,
        kind,
        labels,
        help,
    }
}

/// Every metric fraudline exports.
pub const CATALOGUE: &[MetricSpec] = {
    use MetricKind::*;
    &[
        spec(EVENTS_CONSUMED, Counter, &[], "Input records read from the payments topic"),
        spec(VERDICTS, Counter, &["decision"], "Verdicts produced, by decision (ALLOW, REVIEW, HOLD)"),
        spec(DECODE_ERRORS, Counter, &["kind"], "Input records that failed to decode or validate, by kind"),
        spec(DLQ_RECORDS, Counter, &["reason"], "Records written to the dead-letter topic (acknowledged or committed), by reason"),
        spec(LAST_RESORT, Counter, &["outcome"], "Output records the broker refused for good (e.g. too large): replaced by a minimal dead letter (outcome replaced), or skipped and logged when even that was refused (outcome unwritable)"),
        spec(ENGINE_LATENCY, Histogram, &[], "Time inside Engine::score per event"),
        spec(END_TO_END_LATENCY, Histogram, &[], "Event time to verdict acknowledged by the broker (exactly-once: committed)"),
        spec(CONSUMER_LAG, Gauge, &["topic", "partition"], "Messages behind the high watermark per assigned partition: high watermark minus the consumer's position (its committed offset before the first fetch)"),
        spec(IN_FLIGHT, Gauge, &[], "Verdict and DLQ records sent but not yet acknowledged"),
        spec(DELIVERY_RETRIES, Counter, &[], "Verdict or DLQ records re-sent after a failed delivery"),
        spec(TRANSACTIONS, Counter, &["result"], "Kafka transactions, by result (exactly-once mode)"),
        spec(RULE_HITS, Counter, &["rule_id", "mode"], "Rule hits, by rule id and mode (active, shadow, demoted: a rule its breaker holds in shadow)"),
        spec(RULE_DEMOTIONS, Counter, &["rule_id"], "Rules demoted to shadow by their hit-rate breaker, by rule id"),
        spec(RULE_DEMOTED, Gauge, &["rule_id"], "1 while a rule's breaker holds it in shadow (reset by a reload)"),
        spec(RULES_RELOADS, Counter, &["result"], "Rule file load attempts, by result (ok, refused, unchanged)"),
        spec(CURRENCY_RELOADS, Counter, &["result"], "Currency table loads, by result: ok (the table in use was replaced), refused (a bad file; the table in use stays)"),
        spec(MODEL_RELOADS, Counter, &["role", "result"], "Model file loads, by role (active: model.file, shadow: model.shadow_file) and result: ok (the model in use was replaced), refused (a bad or mismatched file; the model in use stays)"),
        spec(MODEL_INFO, Gauge, &["role", "sha256"], "1 for the model in use in each role (active, shadow; its file's sha256), 0 for models it replaced; absent without a model"),
        spec(RULES_INFO, Gauge, &["version", "sha256"], "The active rule set: 1 for the active version and sha256, 0 for earlier ones"),
        spec(BLOCKLIST_ENTRIES, Gauge, &["kind"], "Blocklist entries, by kind"),
        spec(BLOCKLIST_LOOKUPS, Counter, &["kind"], "Blocklist lookups of payment identifiers, by kind (empty identifiers are not looked up)"),
        spec(BLOCKLIST_HITS, Counter, &["kind"], "Blocklist hits, by kind"),
        spec(BLOCKLIST_VERSION, Gauge, &[], "Version of the active blocklist (grows with every swap)"),
        spec(BLOCKLIST_LOADED_AT, Gauge, &[], "Unix time of the last successful blocklist load"),
        spec(BLOCKLIST_LOAD_FAILURES, Counter, &[], "Blocklist loads refused (the active list stayed)"),
        spec(WARMUP_EVENTS, Counter, &[], "Events replayed into feature state by warm-ups"),
        spec(WARMUP_DURATION, Gauge, &[], "Duration of the last warm-up"),
        spec(FEATURE_LATE_EVENTS, Counter, &["handling"], "Events behind an entity's event-time watermark, by handling: in_window (counted at their own time) or by_arrival (beyond the lateness, counted at the watermark)"),
        spec(FEATURE_DUPLICATES, Counter, &[], "Events whose event_id the payer had already seen within the dedup horizon; they changed no feature"),
        spec(FEATURE_ENTITIES, Gauge, &["kind"], "Entities held in feature state, by kind (account; kit: devices, phones and IPs)"),
        spec(FEATURE_EVICTIONS, Counter, &["kind", "reason"], "Entities dropped from feature state, by kind and reason (ttl: idle; cap: over the hard cap)"),
        spec(FEATURE_KEY_EVICTIONS, Counter, &["set"], "Keys an entity had to forget early for lack of room, by set (payees, payers, accounts, events, devices_ips)"),
        spec(FEATURE_SKETCHES, Counter, &[], "Distinct counters that outgrew their exact list and switched to a HyperLogLog estimate"),
        spec(FEATURE_SWEEP_DURATION, Gauge, &[], "Duration of the last feature-state sweep (TTL and cap eviction)"),
        spec(READY, Gauge, &[], "1 when /readyz answers 200: the in-line path when the in-line API is on, else the stream"),
        spec(INLINE_CONN_REFUSED, Counter, &["protocol"], "In-line connections closed at once because inline.max_connections were open"),
        spec(KAFKA_CONNECTED, Gauge, &[], "1 when the stream's last probe reached the brokers (every kafka.statistics_interval_ms, else 5 s), 0 when it did not; the consumer-lag figures keep their last values meanwhile; absent in in-line-only mode (no stream)"),
        spec(READY_PATH, Gauge, &["path"], "1 when a path is ready: stream (partitions held and scored) or inline (listeners up, state loaded); 0 from shutdown on"),
        spec(BUILD_INFO, Gauge, &["version", "git_hash"], "Build information; the value is always 1"),
        spec(INLINE_REQUESTS, Counter, &["protocol", "code"], "In-line scoring calls, by protocol (grpc, http) and code: the gRPC code name or HTTP status of the answer, or abandoned (the caller went away before the answer: deadline passed, cancelled, connection closed)"),
        spec(INLINE_DURATION, Histogram, &["protocol"], "In-line call time inside the server, request decoded to response ready, by protocol"),
        spec(INLINE_IN_FLIGHT, Gauge, &["protocol"], "In-line calls in progress, by protocol"),
        spec(INLINE_SHED, Counter, &["protocol", "reason"], "In-line calls answered with the overload policy (reason DEGRADED), by protocol and reason (overload: bounds full; deadline: the budget ran out while queued)"),
        spec(INLINE_REPLAYS, Counter, &["protocol"], "In-line calls answered from the recent-verdict cache (a retry of an event_id), by protocol"),
        spec(AUDIT_BACKLOG, Gauge, &[], "In-line verdict audit records not yet acknowledged by Kafka (in memory and spilled)"),
        spec(AUDIT_SPILLED, Counter, &[], "In-line verdict audit records written to the local spill file (Kafka slow or away)"),
        spec(AUDIT_DROPPED, Counter, &[], "In-line verdict audit records dropped because the spill bound was hit"),
        spec(AUDIT_SENT, Counter, &[], "In-line verdict audit records acknowledged by Kafka"),
        spec(STATE_PROPAGATION, Histogram, &[], "State log: time from a payment's state record being written by another instance to this instance applying it (after the start-up replay)"),
        spec(STATE_APPLIED, Counter, &["result"], "State log payments read (a stream batch counts its payments), by result: applied (another instance's payment, now in this instance's features), own (written by this process, already applied), refused (undecodable)"),
        spec(STATE_UNWRITTEN, Counter, &[], "Stream payments whose state-log batch could not be written (refused for good, or kafka.produce_max_attempts failures): their features stay on the instance that scored them"),
        spec(STATE_RESTORE_DURATION, Gauge, &[], "Duration of the start-up restore: snapshot load plus state log replay"),
        spec(STATE_SNAPSHOTS, Counter, &["result"], "Snapshot cuts by result: written (committed to the snapshot topic), failed, or deferred (at-least-once: its payments' offsets not committed within the interval); the next cut covers a failed or deferred one; only the holder of payments partition 0 writes"),
        spec(STATE_SNAPSHOT_RECORDS, Counter, &[], "Entity records and tombstones written to the snapshot topic"),
        spec(STATE_SNAPSHOT_DURATION, Gauge, &[], "Duration of the last snapshot cut written, from cut to commit"),
        spec(STATE_SNAPSHOT_LAST, Gauge, &[], "Unix time of the last snapshot cut written by this instance"),
        spec(STATE_SNAPSHOT_RESTORED, Gauge, &[], "Entities loaded from the snapshot topic at start"),
    ]
};

/// The catalogue entry for `name`, if fraudline exports it.
pub fn spec_of(name: &str) -> Option<&'static MetricSpec> {
    CATALOGUE.iter().find(|m| m.name == name)
}

/// Engine time: a few hundred nanoseconds to a few milliseconds.
const ENGINE_BUCKETS: &[f64] = &[
    0.000_000_5,
    0.000_001,
    0.000_002,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.005,
    0.01,
];

/// End to end, event time to verdict acknowledged: milliseconds to minutes.
const E2E_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle
/// (for `/metrics`). Later calls return the same handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(ENGINE_LATENCY.into()), ENGINE_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(END_TO_END_LATENCY.into()), E2E_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(INLINE_DURATION.into()), INLINE_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(STATE_PROPAGATION.into()), E2E_BUCKETS)
                });
            let handle = match builder.and_then(|b| b.install_recorder()) {
                Ok(h) => h,
                // Another recorder is installed (a test harness): render an
                // empty, detached one rather than fail.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            };
            describe();
            spawn_upkeep(handle.clone());
            metrics::gauge!(
                BUILD_INFO,
                "version" => env!("CARGO_PKG_VERSION"),
                "git_hash" => env!("FRAUDLINE_GIT_HASH")
            )
            .set(1.0);
            handle
        })
        .clone()
}

/// Histogram samples accumulate in the recorder until drained; without
/// upkeep a process that nobody scrapes (HTTP off) would grow without bound.
/// A plain thread, so it runs whatever the caller's runtime.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(5));
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
    }
}

/// The /metrics body: the recorder's series, then consumer lag (which is
/// kept outside the recorder so that revoked partitions disappear).
pub fn render(handle: &PrometheusHandle) -> String {
    let mut out = handle.render();
    consumer_lag().render_into(&mut out);
    out
}

fn describe() {
    // Consumer lag is rendered by `lag`, with its own HELP and TYPE.
    for m in CATALOGUE.iter().filter(|m| m.name != CONSUMER_LAG) {
        let unit = m
            .name
            .ends_with("_seconds")
            .then_some(metrics::Unit::Seconds);
        match (m.kind, unit) {
            (MetricKind::Counter, _) => describe_counter!(m.name, m.help),
            (MetricKind::Gauge, Some(u)) => describe_gauge!(m.name, u, m.help),
            (MetricKind::Gauge, None) => describe_gauge!(m.name, m.help),
            (MetricKind::Histogram, Some(u)) => describe_histogram!(m.name, u, m.help),
            (MetricKind::Histogram, None) => describe_histogram!(m.name, m.help),
        }
    }
}

/// Handles for the per-event metrics, registered once.
#[derive(Clone)]
pub struct Metrics {
    pub events_consumed: Counter,
    verdicts: [Counter; 3],
    pub engine_latency: Histogram,
    pub end_to_end_latency: Histogram,
    pub in_flight: Gauge,
    pub delivery_retries: Counter,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            events_consumed: metrics::counter!(EVENTS_CONSUMED),
            verdicts: Decision::ALL.map(|d| metrics::counter!(VERDICTS, "decision" => d.as_str())),
            engine_latency: metrics::histogram!(ENGINE_LATENCY),
            end_to_end_latency: metrics::histogram!(END_TO_END_LATENCY),
            in_flight: metrics::gauge!(IN_FLIGHT),
            delivery_retries: metrics::counter!(DELIVERY_RETRIES),
        }
    }

    pub fn verdict(&self, d: Decision) -> &Counter {
        &self.verdicts[d as usize]
    }

    /// Decode errors are rare: a labelled lookup per error is fine.
    pub fn decode_error(&self, e: &DecodeError) {
        metrics::counter!(DECODE_ERRORS, "kind" => e.kind()).increment(1);
    }

    /// A dead letter delivered (at-least-once) or committed (exactly-once).
    /// A minimal one standing in for an unproducible record is also a
    /// last-resort replacement: counted here, once, as an outcome.
    pub fn dlq(&self, reason: &'static str) {
        metrics::counter!(DLQ_RECORDS, "reason" => reason).increment(1);
        if reason == UNPRODUCIBLE {
            metrics::counter!(LAST_RESORT, "outcome" => "replaced").increment(1);
        }
    }

    /// Registers zero-valued series so dashboards and `rate()` see them
    /// before the first error.
    pub fn register_zeroes(&self) {
        for k in DecodeError::KINDS {
            metrics::counter!(DECODE_ERRORS, "kind" => *k).absolute(0);
            metrics::counter!(DLQ_RECORDS, "reason" => *k).absolute(0);
        }
        for result in ["applied", "own", "refused"] {
            metrics::counter!(STATE_APPLIED, "result" => result).absolute(0);
        }
        metrics::counter!(STATE_UNWRITTEN).absolute(0);
        for result in ["written", "failed", "deferred"] {
            metrics::counter!(STATE_SNAPSHOTS, "result" => result).absolute(0);
        }
        for outcome in ["replaced", "unwritable"] {
            metrics::counter!(LAST_RESORT, "outcome" => outcome).absolute(0);
        }
        // Series that only some paths move (exactly-once, snapshots, the
        // per-partition warm-up, list reloads): present from start.
        for result in ["committed", "aborted"] {
            metrics::counter!(TRANSACTIONS, "result" => result).increment(0);
        }
        metrics::counter!(BLOCKLIST_LOAD_FAILURES).increment(0);
        for result in ["ok", "refused"] {
            metrics::counter!(CURRENCY_RELOADS, "result" => result).increment(0);
            for role in ["active", "shadow"] {
                metrics::counter!(MODEL_RELOADS, "role" => role, "result" => result).increment(0);
            }
        }
        metrics::counter!(WARMUP_EVENTS).increment(0);
        metrics::counter!(STATE_SNAPSHOT_RECORDS).increment(0);
        for g in [
            WARMUP_DURATION,
            STATE_SNAPSHOT_DURATION,
            STATE_SNAPSHOT_LAST,
            STATE_SNAPSHOT_RESTORED,
        ] {
            metrics::gauge!(g).increment(0.0);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Registers the rule-set series of `rules` (the active set): its info
/// gauge, the reload counters, and per rule a zero demotion count and
/// demoted flag, so a dashboard sees every rule before its breaker trips.
pub fn register_rules(rules: &crate::engine::rules::RuleSet) {
    metrics::gauge!(RULES_INFO, "version" => rules.version.to_string(), "sha256" => rules.hash.to_string()).set(1.0);
    for result in ["ok", "unchanged", "refused"] {
        metrics::counter!(RULES_RELOADS, "result" => result).increment(0);
    }
    for r in &rules.rules {
        metrics::counter!(RULE_DEMOTIONS, "rule_id" => r.id.to_string()).increment(0);
        metrics::gauge!(RULE_DEMOTED, "rule_id" => r.id.to_string()).increment(0.0);
    }
}

/// librdkafka's own log lines, through tracing. While a broker is away
/// every client logs a FAIL line per reconnect attempt ("Connection
/// refused", "Disconnected"): warnings and errors go through one shared
/// throttle (once per 10 s, with the count held back), the rest at debug.
pub fn librdkafka_log(level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as L;
    static THROTTLE: Throttle = Throttle::new(10_000);
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error | L::Warning => {
            if let Some(held) = THROTTLE.allow() {
                tracing::warn!(target: "librdkafka", facility = fac, repeats_held_back = held, "{message}");
            }
        }
        _ => tracing::debug!(target: "librdkafka", facility = fac, "{message}"),
    }
}

/// Handles for the in-line API metrics of one protocol, registered once.
#[derive(Clone)]
pub struct InlineMetrics {
    codes: &'static [&'static str],
    requests: Vec<Counter>,
    pub duration: Histogram,
    pub in_flight: Gauge,
    pub shed_overload: Counter,
    pub shed_deadline: Counter,
    pub replays: Counter,
}

impl InlineMetrics {
    /// `protocol` is "grpc" or "http".
    pub fn new(protocol: &'static str) -> InlineMetrics {
        let codes = if protocol == "grpc" {
            INLINE_GRPC_CODES
        } else {
            INLINE_HTTP_CODES
        };
        InlineMetrics {
            codes,
            requests: codes
                .iter()
                .map(|c| metrics::counter!(INLINE_REQUESTS, "protocol" => protocol, "code" => *c))
                .collect(),
            duration: metrics::histogram!(INLINE_DURATION, "protocol" => protocol),
            in_flight: metrics::gauge!(INLINE_IN_FLIGHT, "protocol" => protocol),
            shed_overload: metrics::counter!(INLINE_SHED, "protocol" => protocol, "reason" => "overload"),
            shed_deadline: metrics::counter!(INLINE_SHED, "protocol" => protocol, "reason" => "deadline"),
            replays: metrics::counter!(INLINE_REPLAYS, "protocol" => protocol),
        }
    }

    /// Counts one answered call; `code` is one of this protocol's codes
    /// (anything else counts under the last, INTERNAL / 500).
    pub fn request(&self, code: &str) {
        let i = self
            .codes
            .iter()
            .position(|c| *c == code)
            .unwrap_or(self.codes.len() - 1);
        self.requests[i].increment(1);
    }

    /// Starts counting one call that arrived at `started`: in flight until
    /// the guard drops, then counted once under the code given to
    /// [`InlineCall::answered`], or under `abandoned` if the call's future
    /// was dropped first (the caller went away).
    pub fn call(&self, started: std::time::Instant) -> InlineCall<'_> {
        self.in_flight.increment(1.0);
        InlineCall {
            m: self,
            started,
            answered: false,
        }
    }

    /// Registers zero-valued series for every code and shed reason.
    pub fn register_zeroes(&self) {
        for c in &self.requests {
            c.increment(0);
        }
        self.shed_overload.increment(0);
        self.shed_deadline.increment(0);
        self.replays.increment(0);
        self.in_flight.set(0.0);
    }
}

/// One in-line call being answered (see [`InlineMetrics::call`]).
pub struct InlineCall<'a> {
    m: &'a InlineMetrics,
    started: std::time::Instant,
    answered: bool,
}

impl InlineCall<'_> {
    /// The call is answered with `code`: counted, and its duration recorded.
    pub fn answered(mut self, code: &str) {
        self.answered = true;
        self.m.request(code);
        self.m.duration.record(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for InlineCall<'_> {
    fn drop(&mut self) {
        self.m.in_flight.decrement(1.0);
        if !self.answered {
            self.m.request(ABANDONED);
        }
    }
}

/// Handles for the audit metrics, registered once.
#[derive(Clone)]
pub struct AuditMetrics {
    pub backlog: Gauge,
    pub spilled: Counter,
    pub dropped: Counter,
    pub sent: Counter,
}

impl AuditMetrics {
    pub fn new() -> AuditMetrics {
        let m = AuditMetrics {
            backlog: metrics::gauge!(AUDIT_BACKLOG),
            spilled: metrics::counter!(AUDIT_SPILLED),
            dropped: metrics::counter!(AUDIT_DROPPED),
            sent: metrics::counter!(AUDIT_SENT),
        };
        m.spilled.increment(0);
        m.dropped.increment(0);
        m.sent.increment(0);
        m.backlog.set(0.0);
        m
    }
}

impl Default for AuditMetrics {
    fn default() -> Self {
        AuditMetrics::new()
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    #[default]
    Auto,
    Text,
    Json,
}

/// Sets up tracing: `RUST_LOG` (or `level`) filters, JSON or text to stderr,
/// every line through [`mask_line`] (no account or phone in clear).
pub fn init_tracing(format: LogFormat, level: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && !json)
        .with_writer(MaskingWriter::new(std::io::stderr, json));
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::Throttle;

    #[test]
    fn a_throttle_lets_one_line_through_per_period_and_counts_the_rest() {
        let t = Throttle::new(60_000);
        assert_eq!(t.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(t.allow(), None);
        }
        let t = Throttle::new(0);
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), Some(0), "a zero period lets every line through");
    }
}

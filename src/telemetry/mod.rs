//! Every metric name in one place, the Prometheus recorder, and tracing set-up.
//!
//! Names follow Prometheus conventions: `fraudline_` prefix, base units,
//! `_total` for counters. Labels are bounded (decision, error kind, rule id,
//! partition); never an account or event id. Per-event code uses the handles
//! in [`Metrics`], registered once, so the hot path does no name lookup.

use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::engine::Decision;
use crate::event::DecodeError;

pub const EVENTS_CONSUMED: &str = "fraudline_events_consumed_total";
pub const VERDICTS: &str = "fraudline_verdicts_total";
pub const DECODE_ERRORS: &str = "fraudline_decode_errors_total";
pub const DLQ_RECORDS: &str = "fraudline_dlq_records_total";
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
pub const RULES_INFO: &str = "fraudline_rules_info";
pub const READY: &str = "fraudline_ready";
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
    "INVALID_ARGUMENT",
    "UNAUTHENTICATED",
    "ALREADY_EXISTS",
    "UNAVAILABLE",
    "RESOURCE_EXHAUSTED",
    "INTERNAL",
];
pub const INLINE_HTTP_CODES: &[&str] = &["200", "400", "401", "409", "413", "415", "503", "500"];

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
                });
            let handle = match builder.and_then(|b| b.install_recorder()) {
                Ok(h) => h,
                // Another recorder is installed (a test harness): render an
                // empty, detached one rather than fail.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            };
            describe();
            spawn_upkeep(handle.clone());
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
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

fn describe() {
    describe_counter!(
        EVENTS_CONSUMED,
        "Input records read from the payments topic"
    );
    describe_counter!(VERDICTS, "Verdicts produced, by decision");
    describe_counter!(
        DECODE_ERRORS,
        "Input records that failed to decode or validate, by kind"
    );
    describe_counter!(
        DLQ_RECORDS,
        "Records written to the dead-letter topic, by reason"
    );
    describe_histogram!(
        ENGINE_LATENCY,
        metrics::Unit::Seconds,
        "Time inside Engine::score per event"
    );
    describe_histogram!(
        END_TO_END_LATENCY,
        metrics::Unit::Seconds,
        "Event time to verdict acknowledged by the broker"
    );
    describe_gauge!(
        CONSUMER_LAG,
        "Consumer lag per partition, from librdkafka statistics"
    );
    describe_gauge!(
        IN_FLIGHT,
        "Verdict and DLQ records sent but not yet acknowledged"
    );
    describe_counter!(
        DELIVERY_RETRIES,
        "Verdict or DLQ records re-sent after a failed delivery"
    );
    describe_counter!(
        TRANSACTIONS,
        "Kafka transactions, by result (exactly-once mode)"
    );
    describe_counter!(
        RULE_HITS,
        "Rule hits, by rule id and mode (active, shadow, demoted: a rule its breaker holds in shadow)"
    );
    describe_gauge!(BLOCKLIST_ENTRIES, "Blocklist entries, by kind");
    describe_counter!(
        BLOCKLIST_LOOKUPS,
        "Blocklist lookups of payment identifiers, by kind (empty identifiers are not looked up)"
    );
    describe_counter!(BLOCKLIST_HITS, "Blocklist hits, by kind");
    describe_gauge!(
        BLOCKLIST_VERSION,
        "Version of the active blocklist (grows with every swap)"
    );
    describe_gauge!(
        BLOCKLIST_LOADED_AT,
        "Unix time of the last successful blocklist load"
    );
    describe_counter!(
        BLOCKLIST_LOAD_FAILURES,
        "Blocklist loads refused (the active list stayed)"
    );
    describe_counter!(
        RULE_DEMOTIONS,
        "Rules demoted to shadow by their hit-rate breaker, by rule id"
    );
    describe_gauge!(
        RULE_DEMOTED,
        "1 while a rule's breaker holds it in shadow (reset by a reload)"
    );
    describe_counter!(
        RULES_RELOADS,
        "Rule file load attempts, by result (ok, refused, unchanged)"
    );
    describe_gauge!(
        RULES_INFO,
        "The active rule set: always 1, labelled by version and sha256"
    );
    describe_counter!(
        WARMUP_EVENTS,
        "Events replayed into feature state by warm-ups"
    );
    describe_gauge!(
        WARMUP_DURATION,
        metrics::Unit::Seconds,
        "Duration of the last warm-up"
    );
    describe_counter!(
        FEATURE_LATE_EVENTS,
        "Events behind an entity's event-time watermark, by entity and handling: in_window (counted at their own time) or by_arrival (beyond the lateness, counted at the watermark)"
    );
    describe_counter!(
        FEATURE_DUPLICATES,
        "Events whose event_id the payer had already seen within the dedup horizon; they changed no feature"
    );
    describe_gauge!(
        FEATURE_ENTITIES,
        "Entities held in feature state, by kind (account, device, phone, ip)"
    );
    describe_counter!(
        FEATURE_EVICTIONS,
        "Entities dropped from feature state, by kind and reason (ttl: idle; cap: over the hard cap)"
    );
    describe_counter!(
        FEATURE_KEY_EVICTIONS,
        "Keys an entity had to forget early for lack of room, by set (payees, payers, accounts, events, devices_ips)"
    );
    describe_counter!(
        FEATURE_SKETCHES,
        "Distinct counters that outgrew their exact list and switched to a HyperLogLog estimate"
    );
    describe_gauge!(
        FEATURE_SWEEP_DURATION,
        metrics::Unit::Seconds,
        "Duration of the last feature-state sweep (TTL and cap eviction)"
    );
    describe_gauge!(READY, "1 when the service is ready to take traffic");
    describe_counter!(
        INLINE_REQUESTS,
        "In-line scoring calls answered, by protocol (grpc, http) and code (gRPC code name or HTTP status)"
    );
    describe_histogram!(
        INLINE_DURATION,
        metrics::Unit::Seconds,
        "In-line call time inside the server, request decoded to response ready, by protocol"
    );
    describe_gauge!(INLINE_IN_FLIGHT, "In-line calls in progress, by protocol");
    describe_counter!(
        INLINE_SHED,
        "In-line calls answered with the overload policy (reason DEGRADED), by protocol and reason (overload: bounds full; deadline: the budget ran out while queued)"
    );
    describe_counter!(
        INLINE_REPLAYS,
        "In-line calls answered from the recent-verdict cache (a retry of an event_id), by protocol"
    );
    describe_gauge!(
        AUDIT_BACKLOG,
        "In-line verdict audit records not yet acknowledged by Kafka (in memory and spilled)"
    );
    describe_counter!(
        AUDIT_SPILLED,
        "In-line verdict audit records written to the local spill file (Kafka slow or away)"
    );
    describe_counter!(
        AUDIT_DROPPED,
        "In-line verdict audit records dropped because the spill bound was hit"
    );
    describe_counter!(
        AUDIT_SENT,
        "In-line verdict audit records acknowledged by Kafka"
    );
    describe_gauge!(BUILD_INFO, "Build information; the value is always 1");
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

    pub fn dlq(&self, reason: &'static str) {
        metrics::counter!(DLQ_RECORDS, "reason" => reason).increment(1);
    }

    /// Registers zero-valued series so dashboards and `rate()` see them
    /// before the first error.
    pub fn register_zeroes(&self) {
        for k in DecodeError::KINDS {
            metrics::counter!(DECODE_ERRORS, "kind" => *k).absolute(0);
            metrics::counter!(DLQ_RECORDS, "reason" => *k).absolute(0);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
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

/// Sets up tracing: `RUST_LOG` (or `level`) filters, JSON or text to stderr.
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
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

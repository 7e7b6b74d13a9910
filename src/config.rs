//! One TOML file + `FRAUDLINE_*` environment overrides, validated at start.
//!
//! Layers, later wins: the embedded defaults (`deploy/config/fraudline.toml`),
//! the config file, then `FRAUDLINE_<SECTION>__<KEY>` variables. Unknown keys
//! are refused (`deny_unknown_fields`); [`Config::validate`] then checks
//! across fields and reports every problem at once, each naming its key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::engine::features::FeatureConfig;
use crate::engine::{EngineConfig, Thresholds};
use crate::event::Limits;
use crate::telemetry::LogFormat;

/// Room for a dead letter's fields other than key and payload: error text
/// (bounded by [`crate::stream::record::MAX_ERROR_BYTES`]), source
/// coordinates, hash, headers and Kafka's own record overhead.
pub const DEAD_LETTER_ENVELOPE: usize = 16 * 1024;

/// The defaults, with comments: the reference for every key.
pub const DEFAULTS: &str = include_str!("../deploy/config/fraudline.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    AtLeastOnce,
    ExactlyOnce,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub http: HttpConfig,
    pub limits: LimitsConfig,
    pub engine: EngineSection,
    pub features: FeaturesSection,
    pub rules: RulesSection,
    pub currencies: CurrenciesSection,
    pub model: ModelSection,
    pub blocklist: BlocklistSection,
    pub log: LogConfig,
    pub inline: InlineSection,
    pub iso20022: Iso20022Section,
}

/// `[iso20022]`: how verdicts are answered in a pacs.002
/// (`crate::iso20022`, docs/ISO20022.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Iso20022Section {
    /// `TxSts` per decision (ExternalPaymentTransactionStatus1Code).
    pub allow_status: String,
    pub review_status: String,
    pub hold_status: String,
    /// `StsRsnInf/Rsn/Cd` per decision (ExternalStatusReason1Code; "" for
    /// none).
    pub allow_reason: String,
    pub review_reason: String,
    pub hold_reason: String,
    /// The pacs.002 version answered: pacs.002.001.10 to .12.
    pub pacs002_version: String,
}

/// What the in-line API answers when it sheds a call (overload or deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverloadPolicy {
    /// ALLOW: the payment goes through unscored.
    FailOpen,
    /// HOLD: the payment waits for a person.
    FailClosed,
}

/// `[inline]`: the in-line scoring API (gRPC and HTTP) for payment switches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InlineSection {
    pub enabled: bool,
    pub grpc_listen: String,
    pub http_listen: String,
    pub max_concurrency: usize,
    pub max_queue: usize,
    pub default_budget_ms: u64,
    pub overload_policy: OverloadPolicy,
    pub idempotency_capacity: usize,
    pub max_request_bytes: usize,
    pub tls_cert: String,
    pub tls_key: String,
    pub tls_client_ca: String,
    pub bearer_tokens_file: String,
    pub audit: bool,
    pub audit_buffer: usize,
    pub audit_spill_dir: String,
    pub audit_spill_max_bytes: u64,
    pub drain_timeout_ms: u64,
    /// After SIGTERM, how long `/readyz` answers 503 while calls are still
    /// served, so a load balancer stops sending before the listeners close.
    pub shutdown_delay_ms: u64,
    /// In-line HTTP: connections open at once; past it a new connection is
    /// closed at once (counted).
    pub max_connections: usize,
    /// In-line HTTP: a connection that has not sent a whole request head
    /// this long after it opened, or after its previous answer (idle
    /// keep-alive), is closed.
    pub header_read_timeout_ms: u64,
    /// Testing only: hold each admitted call this long before scoring.
    /// Refused unless built with the `test-knobs` feature.
    #[serde(default)]
    pub debug_hold_ms: u64,
    /// Benchmark only: answer a constant ALLOW without calling the engine.
    /// Refused unless built with the `test-knobs` feature.
    #[serde(default)]
    pub constant_verdict: bool,
}

/// `[blocklist]`: list files and the compacted list topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlocklistSection {
    pub files: Vec<String>,
    pub topic: String,
    pub topic_catch_up_ms: u64,
    pub max_bad_lines: usize,
    pub country_code: String,
    pub watch_interval_ms: u64,
    /// Share of one core a file reload after the first may use (0 < x <= 1;
    /// default 0.5): a 10 M-entry file swaps in after 12-16 s instead of
    /// 5-9 s flat out, and the engine's p99 meanwhile stays within 1.6x of
    /// normal (lower duty cycles did not lower it measurably; see
    /// `deploy/config/fraudline.toml`).
    pub reload_duty_cycle: f64,
}

/// `[currencies]`: the currency table file (minor digits and a rate to the
/// home currency per currency; `engine::currencies`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurrenciesSection {
    pub file: String,
    pub watch_interval_ms: u64,
}

/// `[model]`: a LightGBM text model rules read as `model.score`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub file: String,
    /// A model scored beside `file` and reported in verdicts, never read
    /// by the rules.
    pub shadow_file: String,
    pub watch_interval_ms: u64,
}

/// `[rules]`: the analyst rule file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesSection {
    pub file: String,
    pub watch_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub group_id: String,
    pub payments_topic: String,
    pub verdicts_topic: String,
    pub dlq_topic: String,
    pub delivery: Delivery,
    pub transactional_id: String,
    pub commit_interval_ms: u64,
    pub commit_max_events: usize,
    pub max_in_flight: usize,
    pub scoring_threads: usize,
    pub auto_offset_reset: String,
    pub session_timeout_ms: u64,
    pub fetch_wait_max_ms: u64,
    pub linger_ms: u64,
    pub message_timeout_ms: u64,
    pub statistics_interval_ms: u64,
    pub warmup_lookback_ms: u64,
    pub warmup_timeout_ms: u64,
    pub state_topic: String,
    pub state_catch_up_ms: u64,
    pub state_batch_ms: u64,
    pub stall_grace_ms: u64,
    pub snapshot_topic: String,
    pub snapshot_interval_ms: u64,
    pub max_record_bytes: usize,
    pub dlq_max_payload_bytes: usize,
    pub produce_max_attempts: u32,
    pub librdkafka: BTreeMap<String, String>,
    pub consumer: BTreeMap<String, String>,
    pub producer: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_message_bytes: usize,
    pub max_future_skew_ms: i64,
    pub max_field_bytes: usize,
    pub max_attributes: usize,
    pub max_amount_minor: i64,
    pub max_key_bytes: usize,
    pub max_event_age_ms: i64,
    pub stream_max_event_age_ms: i64,
    pub stale_events: StaleEvents,
}

/// `limits.stale_events`: what a payment older than `max_event_age_ms` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StaleEvents {
    /// Scored against the state as it is, without moving it (reason
    /// `STALE_EVENT`).
    ScoreOnly,
    /// Refused: code `stale_event` (a dead letter, a 400 / INVALID_ARGUMENT).
    Refuse,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    pub review_threshold: i32,
    pub hold_threshold: i32,
    pub large_amount_minor: i64,
    pub payer_burst_1m: u32,
    pub payee_fan_in_10m: u32,
    pub explain_in_verdicts: bool,
}

/// `[features]`: the feature store (see `engine::features`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturesSection {
    pub lateness_s: u32,
    pub dedup_horizon_s: u32,
    pub new_within_days: u32,
    pub utc_offset_minutes: i32,
    pub night_start_hour: u8,
    pub night_end_hour: u8,
    pub account_ttl_days: u32,
    pub kit_ttl_hours: u32,
    pub max_accounts: usize,
    pub max_devices_phones_ips: usize,
    pub sweep_interval_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

type Table = toml::map::Map<String, toml::Value>;

fn parse_table(text: &str, origin: &str) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|e| ConfigError::Parse {
        origin: origin.to_string(),
        message: e.to_string(),
    })
}

/// Overlays `top` on `base`, table by table.
fn merge(base: &mut Table, top: Table) {
    for (k, v) in top {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// The sections whose keys are librdkafka property names (dotted).
const PASS_THROUGH: [&str; 3] = ["librdkafka", "consumer", "producer"];

/// Applies `FRAUDLINE_<SECTION>__<KEY>[__<KEY>]` variables. A value takes the
/// type of the default it replaces, so `FRAUDLINE_KAFKA__GROUP_ID=42` stays a
/// string and `FRAUDLINE_ENGINE__HOLD_THRESHOLD=abc` is an error naming the key.
/// A key with no default (the optional ones) takes the type its value reads
/// as: `true` / `false`, an integer, a number, else a string; a key of a
/// pass-through section (librdkafka properties) is always a string.
fn apply_env(
    table: &mut Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut errors = Vec::new();
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix("FRAUDLINE_") else {
            continue;
        };
        if !rest.contains("__") {
            continue; // FRAUDLINE_CONFIG and friends are not overrides
        }
        let mut path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.len() >= 3 && PASS_THROUGH.contains(&path[1].as_str()) {
            let key = path[2..].join("_").replace('_', ".");
            path.truncate(2);
            path.push(key);
        }
        let key = path.join(".");
        let Some(cur) = section(table, &path[..path.len() - 1]) else {
            errors.push(format!("{name}: `{key}` is not inside a section"));
            continue;
        };
        let last = &path[path.len() - 1];
        let typed = match cur.get(last) {
            Some(toml::Value::Integer(_)) => value
                .trim()
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|_| format!("{name} (key {key}): expected an integer, got {value:?}")),
            Some(toml::Value::Boolean(_)) => value
                .trim()
                .parse::<bool>()
                .map(toml::Value::Boolean)
                .map_err(|_| format!("{name} (key {key}): expected true or false, got {value:?}")),
            Some(toml::Value::Float(_)) => value
                .trim()
                .parse::<f64>()
                .map(toml::Value::Float)
                .map_err(|_| format!("{name} (key {key}): expected a number, got {value:?}")),
            None if !path[..path.len() - 1]
                .iter()
                .any(|s| PASS_THROUGH.contains(&s.as_str())) =>
            {
                Ok(untyped(value))
            }
            _ => Ok(toml::Value::String(value)),
        };
        match typed {
            Ok(v) => {
                cur.insert(last.clone(), v);
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid(errors))
    }
}

/// The TOML value an override of a key with no default stands for.
fn untyped(value: String) -> toml::Value {
    let v = value.trim();
    if let Ok(b) = v.parse::<bool>() {
        toml::Value::Boolean(b)
    } else if let Ok(i) = v.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Some(f) = v.parse::<f64>().ok().filter(|f| f.is_finite()) {
        // "inf" / "nan" stay strings: no key means them.
        toml::Value::Float(f)
    } else {
        toml::Value::String(value)
    }
}

/// The table at `path`, created if missing; None if a scalar is in the way.
fn section<'t>(table: &'t mut Table, path: &[String]) -> Option<&'t mut Table> {
    let mut cur = table;
    for seg in path {
        let entry = cur
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => return None,
        };
    }
    Some(cur)
}

impl Config {
    /// Defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match file {
            Some(p) => Some(std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
                path: p.display().to_string(),
                source: e,
            })?),
            None => None,
        };
        let origin = file.map(|p| p.display().to_string());
        Config::from_parts(text.as_deref(), origin.as_deref(), std::env::vars())
    }

    /// The layering without touching the file system or the real environment.
    pub fn from_parts(
        file_text: Option<&str>,
        origin: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = parse_table(DEFAULTS, "embedded defaults")?;
        if let Some(text) = file_text {
            merge(&mut table, parse_table(text, origin.unwrap_or("config"))?);
        }
        apply_env(&mut table, env)?;
        let cfg: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                origin: origin.unwrap_or("config").to_string(),
                message: e.to_string().trim().to_string(),
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks across fields; every problem is reported, each naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut e = Vec::new();
        let k = &self.kafka;
        if k.brokers.trim().is_empty() {
            e.push("kafka.brokers: must name at least one broker".to_string());
        }
        for (key, v) in [
            ("kafka.group_id", &k.group_id),
            ("kafka.verdicts_topic", &k.verdicts_topic),
            ("kafka.dlq_topic", &k.dlq_topic),
        ] {
            if v.trim().is_empty() {
                e.push(format!("{key}: must not be empty"));
            }
        }
        if k.payments_topic.trim().is_empty() && !self.inline.enabled {
            e.push(
                "kafka.payments_topic: must not be empty (empty means in-line only, which needs inline.enabled = true)"
                    .into(),
            );
        }
        if !(1..=1_000).contains(&k.state_batch_ms) {
            e.push(format!(
                "kafka.state_batch_ms: {} is not between 1 and 1000",
                k.state_batch_ms
            ));
        }
        if k.stall_grace_ms < 1_000 {
            e.push(format!(
                "kafka.stall_grace_ms: {} is under 1000; a broker round trip or a rebalance would turn the stream not ready",
                k.stall_grace_ms
            ));
        }
        if !k.state_topic.is_empty()
            && [&k.payments_topic, &k.verdicts_topic, &k.dlq_topic].contains(&&k.state_topic)
        {
            e.push(
                "kafka.state_topic: must differ from the payments, verdicts and DLQ topics".into(),
            );
        }
        if !k.snapshot_topic.is_empty()
            && [
                &k.payments_topic,
                &k.verdicts_topic,
                &k.dlq_topic,
                &k.state_topic,
            ]
            .contains(&&k.snapshot_topic)
        {
            e.push(
                "kafka.snapshot_topic: must differ from the payments, verdicts, DLQ and state topics"
                    .into(),
            );
        }
        if !k.snapshot_topic.is_empty() && !(1_000..=86_400_000).contains(&k.snapshot_interval_ms) {
            e.push(
                "kafka.snapshot_interval_ms: must be between 1000 (1 s) and 86400000 (1 day)"
                    .into(),
            );
        }
        if k.payments_topic == k.verdicts_topic || k.payments_topic == k.dlq_topic {
            e.push(
                "kafka.verdicts_topic / kafka.dlq_topic: must differ from kafka.payments_topic"
                    .into(),
            );
        }
        if k.delivery == Delivery::ExactlyOnce && k.transactional_id.trim().is_empty() {
            e.push(
                "kafka.transactional_id: required when kafka.delivery = \"exactly-once\"".into(),
            );
        }
        if !(1..=60_000).contains(&k.commit_interval_ms) {
            e.push(format!(
                "kafka.commit_interval_ms: {} is outside 1..=60000",
                k.commit_interval_ms
            ));
        }
        if k.commit_max_events == 0 {
            e.push("kafka.commit_max_events: must be at least 1".into());
        }
        if k.max_in_flight == 0 {
            e.push("kafka.max_in_flight: must be at least 1".into());
        }
        if k.scoring_threads > 256 {
            e.push(format!(
                "kafka.scoring_threads: {} is outside 0..=256 (0: one per core)",
                k.scoring_threads
            ));
        }
        if !["earliest", "latest"].contains(&k.auto_offset_reset.as_str()) {
            e.push(format!(
                "kafka.auto_offset_reset: {:?} is not \"earliest\" or \"latest\"",
                k.auto_offset_reset
            ));
        }
        if k.session_timeout_ms < 1000 {
            e.push("kafka.session_timeout_ms: must be at least 1000".into());
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<SocketAddr>().is_err() {
            e.push(format!(
                "http.listen: {:?} is not an address like 0.0.0.0:9464",
                self.http.listen
            ));
        }
        let l = &self.limits;
        if l.max_message_bytes == 0 {
            e.push("limits.max_message_bytes: must be positive".into());
        }
        if l.max_future_skew_ms < 0 {
            e.push("limits.max_future_skew_ms: must not be negative".into());
        }
        if l.max_event_age_ms < 0 {
            e.push("limits.max_event_age_ms: must not be negative (0: no limit)".into());
        }
        if l.stream_max_event_age_ms < 0 {
            e.push("limits.stream_max_event_age_ms: must not be negative (0: no limit)".into());
        }
        if l.max_field_bytes == 0 {
            e.push("limits.max_field_bytes: must be positive".into());
        }
        if l.max_amount_minor <= 0 {
            e.push("limits.max_amount_minor: must be positive".into());
        }
        if l.max_key_bytes == 0 {
            e.push("limits.max_key_bytes: must be positive".into());
        }
        // A dead letter carries at most the key and dlq_max_payload_bytes of
        // the value plus a bounded envelope; it must always fit the producer.
        let dead_letter_max = k.dlq_max_payload_bytes + l.max_key_bytes + DEAD_LETTER_ENVELOPE;
        if dead_letter_max > k.max_record_bytes {
            e.push(format!(
                "kafka.dlq_max_payload_bytes: {} + limits.max_key_bytes {} + {DEAD_LETTER_ENVELOPE} bytes of envelope exceed kafka.max_record_bytes {} (a dead letter could not be produced)",
                k.dlq_max_payload_bytes, l.max_key_bytes, k.max_record_bytes
            ));
        }
        if k.max_record_bytes < 16 * 1024 {
            e.push(format!(
                "kafka.max_record_bytes: {} is under 16384",
                k.max_record_bytes
            ));
        }
        if k.produce_max_attempts == 0 {
            e.push("kafka.produce_max_attempts: must be at least 1".into());
        }
        for section in ["librdkafka", "producer"] {
            let table = if section == "producer" {
                &k.producer
            } else {
                &k.librdkafka
            };
            if table.contains_key("message.max.bytes") {
                e.push(format!(
                    "kafka.{section}.message.max.bytes: set kafka.max_record_bytes instead (it is checked against the dead-letter bound)"
                ));
            }
        }
        let en = &self.engine;
        if en.review_threshold <= 0 {
            e.push("engine.review_threshold: must be positive".into());
        }
        if en.hold_threshold < en.review_threshold {
            e.push(format!(
                "engine.hold_threshold: {} is below engine.review_threshold {}",
                en.hold_threshold, en.review_threshold
            ));
        }
        let f = &self.features;
        if f.lateness_s > 3_600 {
            e.push(format!(
                "features.lateness_s: {} is over 3600 (the 1 h window could not hold a late event)",
                f.lateness_s
            ));
        }
        if f.dedup_horizon_s > 86_400 {
            e.push(format!(
                "features.dedup_horizon_s: {} is over 86400",
                f.dedup_horizon_s
            ));
        }
        if f.new_within_days == 0 || f.new_within_days > 365 {
            e.push(format!(
                "features.new_within_days: {} is not within 1..=365",
                f.new_within_days
            ));
        }
        if f.utc_offset_minutes.abs() > 14 * 60 {
            e.push(format!(
                "features.utc_offset_minutes: {} is not within -840..=840",
                f.utc_offset_minutes
            ));
        }
        for (key, h) in [
            ("features.night_start_hour", f.night_start_hour),
            ("features.night_end_hour", f.night_end_hour),
        ] {
            if h > 23 {
                e.push(format!("{key}: {h} is not an hour (0..=23)"));
            }
        }
        if f.account_ttl_days < f.new_within_days {
            e.push(format!(
                "features.account_ttl_days: {} is below features.new_within_days {} (new-payee memory would be evicted early)",
                f.account_ttl_days, f.new_within_days
            ));
        }
        if f.kit_ttl_hours < 24 {
            e.push(format!(
                "features.kit_ttl_hours: {} is below 24 (device counts cover 24 h)",
                f.kit_ttl_hours
            ));
        }
        for (key, n) in [
            ("features.max_accounts", f.max_accounts),
            ("features.max_devices_phones_ips", f.max_devices_phones_ips),
        ] {
            if n < 10 {
                e.push(format!("{key}: {n} is below 10"));
            }
        }
        if !self.rules.file.is_empty() && !Path::new(&self.rules.file).is_file() {
            e.push(format!(
                "rules.file: {:?} is not a readable file",
                self.rules.file
            ));
        }
        if !self.currencies.file.is_empty() && !Path::new(&self.currencies.file).is_file() {
            e.push(format!(
                "currencies.file: {:?} is not a readable file",
                self.currencies.file
            ));
        }
        if !self.model.file.is_empty() && !Path::new(&self.model.file).is_file() {
            e.push(format!(
                "model.file: {:?} is not a readable file",
                self.model.file
            ));
        }
        if !self.model.shadow_file.is_empty() && !Path::new(&self.model.shadow_file).is_file() {
            e.push(format!(
                "model.shadow_file: {:?} is not a readable file",
                self.model.shadow_file
            ));
        }
        if self.model.watch_interval_ms == 0 {
            e.push("model.watch_interval_ms: must be above 0".into());
        }
        if self.currencies.watch_interval_ms == 0 {
            e.push("currencies.watch_interval_ms: must be above 0".into());
        }
        for f in &self.blocklist.files {
            if !Path::new(f).is_file() {
                e.push(format!("blocklist.files: {f:?} is not a readable file"));
            }
        }
        if !self
            .blocklist
            .country_code
            .trim_start_matches('+')
            .chars()
            .all(|c| c.is_ascii_digit())
        {
            e.push(format!(
                "blocklist.country_code: {:?} is not a calling code such as \"84\"",
                self.blocklist.country_code
            ));
        }
        if self.blocklist.watch_interval_ms < 100 {
            e.push("blocklist.watch_interval_ms: must be at least 100".into());
        }
        let d = self.blocklist.reload_duty_cycle;
        if !(d > 0.0 && d <= 1.0) {
            e.push(format!(
                "blocklist.reload_duty_cycle: {d} is not in (0, 1]: the share of one core a file reload may use"
            ));
        }
        if self.rules.watch_interval_ms < 100 {
            e.push("rules.watch_interval_ms: must be at least 100".into());
        }
        if f.sweep_interval_s == 0 {
            e.push("features.sweep_interval_s: must be at least 1".into());
        }
        self.validate_inline(&mut e);
        crate::iso20022::validate_config(&self.iso20022, &mut e);
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            e.push(format!(
                "log.level: {:?} is not a valid filter",
                self.log.level
            ));
        }
        if e.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(e))
        }
    }

    fn validate_inline(&self, e: &mut Vec<String>) {
        let i = &self.inline;
        if !i.enabled {
            return;
        }
        for (key, v) in [
            ("inline.grpc_listen", &i.grpc_listen),
            ("inline.http_listen", &i.http_listen),
        ] {
            if !v.is_empty() && v.parse::<SocketAddr>().is_err() {
                e.push(format!(
                    "{key}: {v:?} is not an address like 0.0.0.0:50051 (or \"\" for off)"
                ));
            }
        }
        if i.grpc_listen.is_empty() && i.http_listen.is_empty() {
            e.push("inline.grpc_listen / inline.http_listen: at least one is needed when inline.enabled = true".into());
        }
        if !i.http_listen.is_empty()
            && i.http_listen == self.http.listen
            && !i.http_listen.ends_with(":0")
        {
            e.push(format!(
                "inline.http_listen: {:?} is also http.listen (the metrics port); use another port",
                i.http_listen
            ));
        }
        if !(1..=100_000).contains(&i.max_concurrency) {
            e.push(format!(
                "inline.max_concurrency: {} is outside 1..=100000",
                i.max_concurrency
            ));
        }
        if i.max_queue > 1_000_000 {
            e.push(format!("inline.max_queue: {} is over 1000000", i.max_queue));
        }
        if !(1..=60_000).contains(&i.default_budget_ms) {
            e.push(format!(
                "inline.default_budget_ms: {} is outside 1..=60000",
                i.default_budget_ms
            ));
        }
        if i.idempotency_capacity > 100_000_000 {
            e.push(format!(
                "inline.idempotency_capacity: {} is over 100000000",
                i.idempotency_capacity
            ));
        }
        if !(256..=16 * 1024 * 1024).contains(&i.max_request_bytes) {
            e.push(format!(
                "inline.max_request_bytes: {} is outside 256..=16777216",
                i.max_request_bytes
            ));
        }
        if i.tls_cert.is_empty() != i.tls_key.is_empty() {
            e.push("inline.tls_cert / inline.tls_key: set both or neither".into());
        }
        if !i.tls_client_ca.is_empty() && i.tls_cert.is_empty() {
            e.push(
                "inline.tls_client_ca: needs inline.tls_cert and inline.tls_key (mTLS is TLS)"
                    .into(),
            );
        }
        for (key, f) in [
            ("inline.tls_cert", &i.tls_cert),
            ("inline.tls_key", &i.tls_key),
            ("inline.tls_client_ca", &i.tls_client_ca),
            ("inline.bearer_tokens_file", &i.bearer_tokens_file),
        ] {
            if !f.is_empty() && !Path::new(f).is_file() {
                e.push(format!("{key}: {f:?} is not a readable file"));
            }
        }
        if i.audit {
            if i.audit_buffer == 0 {
                e.push("inline.audit_buffer: must be at least 1".into());
            }
            if i.audit_spill_dir.trim().is_empty() {
                e.push(
                    "inline.audit_spill_dir: must name a directory when inline.audit = true".into(),
                );
            }
        }
        if i.drain_timeout_ms == 0 {
            e.push("inline.drain_timeout_ms: must be at least 1".into());
        }
        if let Some(refused) = test_knobs_refused(i, cfg!(feature = "test-knobs")) {
            e.push(refused);
        }
        if !(1..=1_000_000).contains(&i.max_connections) {
            e.push(format!(
                "inline.max_connections: {} is outside 1..=1000000",
                i.max_connections
            ));
        }
        if !(100..=600_000).contains(&i.header_read_timeout_ms) {
            e.push(format!(
                "inline.header_read_timeout_ms: {} is outside 100..=600000",
                i.header_read_timeout_ms
            ));
        }
        if i.shutdown_delay_ms > 300_000 {
            e.push(format!(
                "inline.shutdown_delay_ms: {} is over 5 minutes; a deploy would wait that long per pod",
                i.shutdown_delay_ms
            ));
        }
    }

    /// Whether the Kafka payments stream runs (false: in-line only).
    pub fn stream_enabled(&self) -> bool {
        !self.kafka.payments_topic.trim().is_empty()
    }

    pub fn limits(&self) -> Limits {
        let l = &self.limits;
        Limits {
            max_message_bytes: l.max_message_bytes,
            max_future_skew_ms: l.max_future_skew_ms,
            max_field_bytes: l.max_field_bytes,
            max_attributes: l.max_attributes,
            max_amount_minor: l.max_amount_minor,
            max_key_bytes: l.max_key_bytes,
        }
    }

    pub fn engine(&self) -> EngineConfig {
        let en = &self.engine;
        EngineConfig {
            thresholds: Thresholds {
                review: en.review_threshold,
                hold: en.hold_threshold,
            },
            builtin: crate::engine::rules::BuiltinParams {
                large_amount_minor: en.large_amount_minor,
                payer_burst_1m: en.payer_burst_1m,
                payee_fan_in_10m: en.payee_fan_in_10m,
            },
            features: self.feature_config(),
            event_age: crate::engine::EventAge {
                max_ms: self.limits.max_event_age_ms,
                refuse: self.limits.stale_events == StaleEvents::Refuse,
            },
            stream_event_age: crate::engine::EventAge {
                max_ms: self.limits.stream_max_event_age_ms,
                refuse: self.limits.stale_events == StaleEvents::Refuse,
            },
        }
    }

    pub fn feature_config(&self) -> FeatureConfig {
        let f = &self.features;
        FeatureConfig {
            lateness_s: f.lateness_s,
            dedup_horizon_s: f.dedup_horizon_s,
            new_within_s: f.new_within_days.saturating_mul(86_400),
            utc_offset_minutes: f.utc_offset_minutes,
            night_start_hour: f.night_start_hour,
            night_end_hour: f.night_end_hour,
            account_ttl_s: f.account_ttl_days.saturating_mul(86_400),
            kit_ttl_s: f.kit_ttl_hours.saturating_mul(3_600),
            max_accounts: f.max_accounts,
            max_kit: f.max_devices_phones_ips,
        }
    }

    /// The HTTP listen address, if enabled.
    pub fn http_listen(&self) -> Option<SocketAddr> {
        self.http.listen.parse().ok()
    }
}

/// The test-only in-line settings are refused unless the build has them
/// (`test-knobs`, which `cargo build --release` and the Dockerfile leave off):
/// a production config cannot make every answer ALLOW with no reason, or
/// slow every call.
fn test_knobs_refused(i: &InlineSection, built_with_knobs: bool) -> Option<String> {
    (!built_with_knobs && (i.debug_hold_ms != 0 || i.constant_verdict)).then(|| {
        "inline.debug_hold_ms / inline.constant_verdict: test-only settings (a slow engine, \
         a constant ALLOW with no reason); this build refuses them (they need the \
         test-knobs feature, which production builds leave off)"
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_production_build_refuses_the_test_knobs() {
        let on = |extra: &str| {
            Config::from_parts(
                Some(&format!("[inline]\nenabled = true\n{extra}")),
                None,
                env(&[]),
            )
            .expect("parses")
            .inline
        };
        for extra in ["constant_verdict = true\n", "debug_hold_ms = 500\n"] {
            let i = on(extra);
            let refused = test_knobs_refused(&i, false).expect("refused without the feature");
            assert!(refused.contains("test-only"), "{refused}");
            assert_eq!(test_knobs_refused(&i, true), None, "{extra}");
        }
        assert_eq!(
            test_knobs_refused(&on(""), false),
            None,
            "the defaults pass"
        );
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_override_of_a_key_without_a_default_is_typed_by_its_value() {
        let c = Config::from_parts(
            None,
            None,
            env(&[
                ("FRAUDLINE_INLINE__CONSTANT_VERDICT", "true"),
                ("FRAUDLINE_INLINE__DEBUG_HOLD_MS", "250"),
                // A librdkafka property with no default stays a string.
                ("FRAUDLINE_KAFKA__CONSUMER__FETCH_MIN_BYTES", "1"),
            ]),
        )
        .expect("typed overrides parse");
        assert!(c.inline.constant_verdict);
        assert_eq!(c.inline.debug_hold_ms, 250);
        assert_eq!(
            c.kafka.consumer.get("fetch.min.bytes").map(String::as_str),
            Some("1")
        );
        // A value of the wrong type still names the key.
        let e = Config::from_parts(
            None,
            None,
            env(&[("FRAUDLINE_INLINE__DEBUG_HOLD_MS", "soon")]),
        )
        .expect_err("a string for an integer");
        assert!(e.to_string().contains("debug_hold_ms"), "{e}");
    }

    #[test]
    fn defaults_load_and_validate() {
        let c = Config::from_parts(None, None, env(&[])).unwrap();
        assert_eq!(c.kafka.delivery, Delivery::AtLeastOnce);
        assert_eq!(c.kafka.payments_topic, "payments");
        assert_eq!(c.http_listen().map(|a| a.port()), Some(9464));
    }

    #[test]
    fn file_then_env_override() {
        let file = "[kafka]\nbrokers = \"a:1\"\ngroup_id = \"g\"\n";
        let c = Config::from_parts(
            Some(file),
            Some("f.toml"),
            env(&[
                ("FRAUDLINE_KAFKA__GROUP_ID", "42"),
                ("FRAUDLINE_KAFKA__DELIVERY", "exactly-once"),
                ("FRAUDLINE_ENGINE__HOLD_THRESHOLD", "90"),
                ("FRAUDLINE_KAFKA__LIBRDKAFKA__SECURITY_PROTOCOL", "SSL"),
                ("FRAUDLINE_CONFIG", "ignored.toml"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "a:1");
        assert_eq!(c.kafka.group_id, "42");
        assert_eq!(c.kafka.delivery, Delivery::ExactlyOnce);
        assert_eq!(c.engine.hold_threshold, 90);
        assert_eq!(
            c.kafka
                .librdkafka
                .get("security.protocol")
                .map(String::as_str),
            Some("SSL")
        );
    }

    #[test]
    fn a_reload_duty_cycle_outside_0_to_1_is_refused_by_name() {
        let c = Config::from_parts(None, None, env(&[])).unwrap();
        assert_eq!(c.blocklist.reload_duty_cycle, 0.5);
        for bad in ["0", "1.5", "-1"] {
            let err = Config::from_parts(
                None,
                None,
                env(&[("FRAUDLINE_BLOCKLIST__RELOAD_DUTY_CYCLE", bad)]),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("blocklist.reload_duty_cycle"), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let err = Config::from_parts(Some("[kafka]\nbrokrs = \"x\"\n"), Some("f.toml"), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("brokrs"), "{err}");
        assert!(err.contains("f.toml"), "{err}");
    }

    #[test]
    fn bad_env_value_names_the_key() {
        let err = Config::from_parts(
            None,
            None,
            env(&[("FRAUDLINE_ENGINE__HOLD_THRESHOLD", "lots")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("engine.hold_threshold"), "{err}");
    }

    #[test]
    fn bad_delivery_mode_is_refused() {
        let err = Config::from_parts(Some("[kafka]\ndelivery = \"maybe-once\"\n"), None, env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("maybe-once"), "{err}");
    }

    #[test]
    fn inline_defaults_env_and_validation() {
        let c = Config::from_parts(None, None, env(&[])).unwrap();
        assert!(!c.inline.enabled);
        assert_eq!(c.inline.overload_policy, OverloadPolicy::FailClosed);
        let c = Config::from_parts(
            Some("[kafka]\npayments_topic = \"\"\n"),
            None,
            env(&[
                ("FRAUDLINE_INLINE__ENABLED", "true"),
                ("FRAUDLINE_INLINE__OVERLOAD_POLICY", "fail-open"),
                ("FRAUDLINE_INLINE__MAX_CONCURRENCY", "7"),
            ]),
        )
        .unwrap();
        assert!(!c.stream_enabled());
        assert_eq!(c.inline.overload_policy, OverloadPolicy::FailOpen);
        assert_eq!(c.inline.max_concurrency, 7);
        // In-line only needs the in-line API on.
        let err = Config::from_parts(Some("[kafka]\npayments_topic = \"\"\n"), None, env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.payments_topic"), "{err}");
        let file = "[inline]\nenabled = true\ngrpc_listen = \"x\"\nmax_concurrency = 0\n\
                    default_budget_ms = 0\ntls_key = \"/nonexistent\"\noverload_policy = \"fail-closed\"\n";
        let ConfigError::Invalid(list) =
            Config::from_parts(Some(file), None, env(&[])).unwrap_err()
        else {
            panic!("expected Invalid")
        };
        let all = list.join("\n");
        for key in [
            "inline.grpc_listen",
            "inline.max_concurrency",
            "inline.default_budget_ms",
            "inline.tls_cert / inline.tls_key",
            "inline.tls_key:",
        ] {
            assert!(all.contains(key), "{key} missing from:\n{all}");
        }
        let err = Config::from_parts(
            Some("[inline]\noverload_policy = \"fail-sideways\"\n"),
            None,
            env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("fail-sideways"), "{err}");
    }

    #[test]
    fn every_cross_field_error_is_reported_at_once() {
        let file = "[kafka]\nverdicts_topic = \"payments\"\ncommit_interval_ms = 0\nauto_offset_reset = \"middle\"\n\
                    [engine]\nreview_threshold = 50\nhold_threshold = 10\n[http]\nlisten = \"nowhere\"\n";
        let err = Config::from_parts(Some(file), None, env(&[])).unwrap_err();
        let ConfigError::Invalid(list) = err else {
            panic!("expected Invalid, got {err}")
        };
        let all = list.join("\n");
        for key in [
            "kafka.verdicts_topic",
            "kafka.commit_interval_ms",
            "kafka.auto_offset_reset",
            "engine.hold_threshold",
            "http.listen",
        ] {
            assert!(all.contains(key), "{key} missing from:\n{all}");
        }
    }
}

//! Consumer lag per assigned partition, rendered beside the recorder's
//! output. It lives outside the `metrics` registry because a partition that
//! is revoked must disappear from /metrics at once (the registry can only
//! set a series, never drop one), or a dashboard would show the last lag of
//! a partition another instance now owns.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use super::{spec_of, CONSUMER_LAG};

/// `(topic, partition)` → messages behind the high watermark.
#[derive(Debug, Default)]
pub struct ConsumerLag {
    by_partition: Mutex<BTreeMap<(String, i32), i64>>,
}

impl ConsumerLag {
    /// Replaces the whole table: partitions not in `lags` are dropped.
    pub fn replace(&self, lags: impl IntoIterator<Item = (String, i32, i64)>) {
        let table = lags.into_iter().map(|(t, p, l)| ((t, p), l)).collect();
        *self.lock() = table;
    }

    /// Drops the series of partitions this instance no longer owns.
    pub fn remove(&self, topic: &str, partition: i32) {
        self.lock().remove(&(topic.to_string(), partition));
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The current table, sorted by topic and partition.
    pub fn snapshot(&self) -> Vec<(String, i32, i64)> {
        self.lock()
            .iter()
            .map(|((t, p), l)| (t.clone(), *p, *l))
            .collect()
    }

    /// Appends the gauge in the Prometheus text format (nothing when empty).
    pub fn render_into(&self, out: &mut String) {
        let table = self.lock();
        if table.is_empty() {
            return;
        }
        let help = spec_of(CONSUMER_LAG).map_or("", |s| s.help);
        let _ = writeln!(out, "# HELP {CONSUMER_LAG} {help}");
        let _ = writeln!(out, "# TYPE {CONSUMER_LAG} gauge");
        for ((topic, partition), lag) in table.iter() {
            let _ = writeln!(
                out,
                "{CONSUMER_LAG}{{topic=\"{}\",partition=\"{partition}\"}} {lag}",
                escape(topic)
            );
        }
        out.push('\n');
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, i32), i64>> {
        // A panic while holding this lock leaves a valid map: keep going.
        self.by_partition
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The process-wide lag table (one consumer per process).
pub fn consumer_lag() -> &'static ConsumerLag {
    static LAG: OnceLock<ConsumerLag> = OnceLock::new();
    LAG.get_or_init(ConsumerLag::default)
}

/// Label values in the text format escape `\`, `"` and newlines.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_drops_partitions_no_longer_listed_and_remove_drops_one() {
        let lag = ConsumerLag::default();
        lag.replace([("payments".into(), 0, 5), ("payments".into(), 1, 7)]);
        let mut out = String::new();
        lag.render_into(&mut out);
        assert!(out.contains("# TYPE fraudline_consumer_lag_messages gauge\n"));
        assert!(
            out.contains("fraudline_consumer_lag_messages{topic=\"payments\",partition=\"1\"} 7\n")
        );
        lag.replace([("payments".into(), 1, 3)]);
        assert_eq!(lag.snapshot(), vec![("payments".to_string(), 1, 3)]);
        lag.remove("payments", 1);
        let mut out = String::new();
        lag.render_into(&mut out);
        assert_eq!(
            out, "",
            "no series (and no header) once every partition is gone"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

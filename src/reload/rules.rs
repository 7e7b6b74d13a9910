//! Hot reload of the rule file: the service polls the file (size, mtime and,
//! when those change, its SHA-256) and reloads on SIGHUP. A valid new file is
//! compiled aside and swapped into the engine in one atomic store, between
//! two events; an invalid one is refused with every error logged, and the
//! rules that were running keep running. Each attempt is counted in
//! `fraudline_rules_reloads_total{result}`; the active version and hash are
//! in `fraudline_rules_info{version, sha256}` and in a log line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info};

use crate::engine::rules::file::{self, LoadError, RuleFile};
use crate::engine::Engine;
use crate::telemetry;

/// Reads and compiles a rule file (the engine compiles text; reading files
/// is this module's).
pub fn load_file(path: &Path) -> Result<RuleFile, LoadError> {
    let name = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        file: name.clone(),
        source,
    })?;
    file::compile(&name, &src)
}

/// What one reload attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// A new rule set is active: (version, hash).
    Swapped(String, String),
    /// The file has the hash of the active set: nothing to do.
    Unchanged,
    /// The file was refused; the active set keeps running.
    Refused(Vec<String>),
}

/// Loads `path` and, if valid and different (or `force`: SIGHUP, which
/// also restores rules their breaker demoted), swaps it into `engine`.
pub fn reload(engine: &Engine, path: &Path, force: bool) -> Reload {
    match load_file(path) {
        Ok(f) => {
            let active = engine.rules();
            if !force && active.hash == f.rules.hash {
                metrics::counter!(telemetry::RULES_RELOADS, "result" => "unchanged").increment(1);
                return Reload::Unchanged;
            }
            let (version, hash) = (f.rules.version.to_string(), f.rules.hash.to_string());
            let rules = f.rules.rules.len();
            engine.set_rules(f.rules);
            metrics::counter!(telemetry::RULES_RELOADS, "result" => "ok").increment(1);
            metrics::gauge!(telemetry::RULES_INFO, "version" => active.version.to_string(), "sha256" => active.hash.to_string()).set(0.0);
            telemetry::register_rules(&engine.rules());
            for r in &active.rules {
                if r.is_demoted() {
                    metrics::gauge!(telemetry::RULE_DEMOTED, "rule_id" => r.id.to_string())
                        .set(0.0);
                }
            }
            info!(
                file = %path.display(),
                version = %version,
                sha256 = %hash,
                rules,
                previous = %active.version,
                "rule set active"
            );
            Reload::Swapped(version, hash)
        }
        Err(e) => {
            metrics::counter!(telemetry::RULES_RELOADS, "result" => "refused").increment(1);
            let errors: Vec<String> = e.errors().iter().map(ToString::to_string).collect();
            error!(
                file = %path.display(),
                errors = %errors.join("; "),
                active_version = %engine.rules().version,
                "rule file refused; the active rules keep running"
            );
            Reload::Refused(errors)
        }
    }
}

/// Loads the rule file at start: a bad file refuses to start the service.
pub fn load_at_start(engine: &Engine, path: &Path) -> Result<(), LoadError> {
    let f = load_file(path)?;
    info!(
        file = %path.display(),
        version = %f.rules.version,
        sha256 = %f.rules.hash,
        rules = f.rules.rules.len(),
        "rule set active"
    );
    metrics::gauge!(telemetry::RULES_INFO, "version" => f.rules.version.to_string(), "sha256" => f.rules.hash.to_string()).set(1.0);
    metrics::counter!(telemetry::RULES_RELOADS, "result" => "ok").increment(1);
    engine.set_rules(f.rules);
    Ok(())
}

use crate::reload::stamp;

/// Watches `path` every `every` and on SIGHUP until the task is aborted.
pub fn spawn_watcher(
    engine: Arc<Engine>,
    path: PathBuf,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    // Stamped before the task first runs, so a change in between is seen.
    let mut last = stamp(&path);
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let hup_recv = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup_recv = std::future::pending::<Option<()>>();
            let forced = tokio::select! {
                _ = tick.tick() => false,
                _ = hup_recv => true,
            };
            let now = stamp(&path);
            if !forced && now == last {
                continue;
            }
            last = now;
            if forced {
                info!(file = %path.display(), "SIGHUP: reloading the rule file");
            }
            let (e, p) = (engine.clone(), path.clone());
            // Compiling is CPU work: off the async workers.
            let _ = tokio::task::spawn_blocking(move || reload(&e, &p, forced)).await;
        }
    })
}

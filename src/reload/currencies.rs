//! The currency table file (`currencies.file`): read at start (a bad file
//! refuses the start), then watched; a file that changes is parsed and
//! validated in full, and only a valid one replaces the table in use (a bad
//! one is logged and counted, and the running table stays).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info};

use crate::engine::currencies::{Currencies, CurrencyError};
use crate::engine::Engine;
use crate::telemetry;

/// Reads and validates the table at `path`.
pub fn load_file(path: &Path) -> Result<Currencies, CurrencyError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| CurrencyError::Syntax {
        file: name.clone(),
        message: format!("cannot read it: {e}"),
    })?;
    Currencies::parse(&name, &text)
}

/// Loads the table at start into `engine`.
pub fn load_at_start(engine: &Engine, path: &Path) -> Result<(), CurrencyError> {
    let t = load_file(path)?;
    info!(file = %path.display(), home = ?t.home().map(|c| c.to_string()), currencies = t.len(), "currency table active");
    engine.set_currencies(t);
    metrics::counter!(telemetry::CURRENCY_RELOADS, "result" => "ok").increment(1);
    Ok(())
}

/// Loads `path` and swaps it in if valid; `false` when it was refused.
pub fn reload(engine: &Engine, path: &Path) -> bool {
    match load_file(path) {
        Ok(t) => {
            info!(file = %path.display(), currencies = t.len(), "currency table reloaded");
            engine.set_currencies(t);
            metrics::counter!(telemetry::CURRENCY_RELOADS, "result" => "ok").increment(1);
            true
        }
        Err(e) => {
            error!(error = %e, "currency table refused; the table in use stays");
            metrics::counter!(telemetry::CURRENCY_RELOADS, "result" => "refused").increment(1);
            false
        }
    }
}

/// Watches `path` every `every` until the task is aborted.
pub fn spawn_watcher(
    engine: Arc<Engine>,
    path: PathBuf,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    crate::reload::watch(path, every, move |p| {
        reload(&engine, p);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_file_never_replaces_a_good_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("currencies.toml");
        std::fs::write(
            &path,
            "home = \"VND\"\n[rates]\nVND = { digits = 0, rate = 1 }\nUSD = { digits = 2, rate = 25400 }\n",
        )
        .expect("write");
        let engine = Engine::new(Default::default());
        load_at_start(&engine, &path).expect("valid");
        let usd = crate::event::Currency::parse("USD").expect("USD");
        assert_eq!(engine.currencies().to_home(usd, 100), Some(25_400));
        std::fs::write(
            &path,
            "home = \"VND\"\n[rates]\nUSD = { digits = 2, rate = 1 }\n",
        )
        .expect("write");
        assert!(!reload(&engine, &path), "refused: no home entry");
        assert_eq!(
            engine.currencies().to_home(usd, 100),
            Some(25_400),
            "old table kept"
        );
        std::fs::write(
            &path,
            "home = \"VND\"\n[rates]\nVND = { digits = 0, rate = 1 }\nUSD = { digits = 2, rate = 26000 }\n",
        )
        .expect("write");
        assert!(reload(&engine, &path));
        assert_eq!(engine.currencies().to_home(usd, 100), Some(26_000));
    }
}

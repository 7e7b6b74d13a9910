//! Sources that replace engine state while it runs: the rule file (read,
//! watched, SIGHUP), the currency table (read, watched) and the blocklist's
//! files and topic. Every file, signal
//! and Kafka read is here; the engine only compiles and swaps what it is
//! given (it does no I/O), so the same engine serves the stream, the
//! in-line API and the backtest.

pub mod blocklist;
pub mod currencies;
pub mod model;
pub mod rules;

/// Calls `on_change` (off the async workers: parsing is CPU work) whenever
/// the file at `path` changes (size, modification time or identity; see
/// [`stamp`]), checking every `every`, until the task is aborted.
pub(crate) fn watch(
    path: std::path::PathBuf,
    every: std::time::Duration,
    on_change: impl Fn(&std::path::Path) + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    let mut last = stamp(&path);
    let on_change = std::sync::Arc::new(on_change);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = stamp(&path);
            if now == last {
                continue;
            }
            last = now;
            let (f, p) = (on_change.clone(), path.clone());
            let _ = tokio::task::spawn_blocking(move || f(&p)).await;
        }
    })
}

/// Size, modification time and file identity (following symlinks). The
/// identity catches a file replaced within the filesystem's timestamp
/// granularity, as a Kubernetes ConfigMap update does (new files behind a
/// swapped `..data` symlink).
pub(crate) fn stamp(path: &std::path::Path) -> Option<(u64, std::time::SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?, file_id(&m)))
}

/// The identity of a file (its inode on Unix, 0 elsewhere), for the file
/// watchers: a file replaced by a new one (an editor's rename, a ConfigMap
/// update) is seen even when size and modification time match.
pub(crate) fn file_id(m: &std::fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = m;
        0
    }
}

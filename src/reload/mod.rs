//! Sources that replace engine state while it runs. The rule file's reload
//! lives beside the rules (`engine::rules::reload`); the blocklist's sources
//! are here: files (CSV with a header, or JSON lines), validated aside and
//! swapped in whole.

pub mod blocklist;

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

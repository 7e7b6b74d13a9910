//! Sources that replace engine state while it runs. The rule file's reload
//! lives beside the rules (`engine::rules::reload`); the blocklist's sources
//! are here: files (CSV with a header, or JSON lines), validated aside and
//! swapped in whole.

pub mod blocklist;

//! Readiness, per path.
//!
//! One instance serves two kinds of traffic with different needs. The
//! stream takes its work from Kafka: a warm-up or a state catch-up after a
//! rebalance pauses its new partitions, and no load balancer is involved.
//! The in-line API takes its work from a load balancer that trusts
//! `/readyz`: it is ready once its listeners are up and feature state is
//! loaded, and must stay ready through every rebalance (each step of a
//! rolling deploy rebalances every other replica). So `/readyz` reports the
//! in-line path when the in-line API is on and the stream path otherwise;
//! `/readyz/stream` and `/readyz/inline` report each path on its own.
//!
//! On shutdown both paths turn not-ready first; the in-line listeners keep
//! answering for `inline.shutdown_delay_ms` so that a load balancer polling
//! `/readyz` stops sending before they close.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::telemetry;

/// The readiness flags of one instance; shared by the stream, the warm-up,
/// the in-line API and the shutdown path. Every change updates the
/// `fraudline_ready` gauges, so an instance that is scraped but never
/// probed still reports them.
#[derive(Debug)]
pub struct Readiness {
    inline_enabled: bool,
    /// The stream holds its partitions and scores them (false before the
    /// first assignment is ready and while a warm-up replays).
    stream: AtomicBool,
    /// The in-line listeners are bound.
    inline_up: AtomicBool,
    /// Feature state is loaded: the state log read to its end, or the first
    /// warm-up done, or nothing to load.
    state_loaded: AtomicBool,
    /// Shutdown began: every path reports not ready.
    stopping: AtomicBool,
    /// The stream's health probe: false once it has been unable to reach
    /// the brokers, unassigned, or stalled behind its lag for longer than
    /// `kafka.stall_grace_ms`.
    stream_healthy: AtomicBool,
}

/// A path whose readiness is reported on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Stream,
    Inline,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::Stream => "stream",
            Path::Inline => "inline",
        }
    }
}

impl Readiness {
    /// Flags for an instance with (or without) the in-line API; all start
    /// false.
    pub fn new(inline_enabled: bool) -> Readiness {
        let r = Readiness {
            inline_enabled,
            stream: AtomicBool::new(false),
            inline_up: AtomicBool::new(false),
            state_loaded: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            stream_healthy: AtomicBool::new(true),
        };
        r.publish();
        r
    }

    /// The stream path: partitions held and scored (or not).
    pub fn set_stream(&self, ready: bool) {
        self.stream.store(ready, Ordering::SeqCst);
        self.publish();
    }

    /// The in-line listeners are bound.
    pub fn set_inline_up(&self) {
        self.inline_up.store(true, Ordering::SeqCst);
        self.publish();
    }

    /// Feature state is loaded (set once; a later rebalance does not unset
    /// it: state for the other partitions stays right).
    pub fn set_state_loaded(&self) {
        self.state_loaded.store(true, Ordering::SeqCst);
        self.publish();
    }

    /// The stream's health probe's finding (see [`crate::stream::lag`]).
    pub fn set_stream_healthy(&self, healthy: bool) {
        self.stream_healthy.store(healthy, Ordering::SeqCst);
        self.publish();
    }

    /// Whether the stream's own flag is up (partitions held, no warm-up),
    /// whatever the probe says: the probe judges progress only then.
    pub fn stream_running(&self) -> bool {
        self.stream.load(Ordering::SeqCst)
    }

    /// Shutdown began: every path is not ready from now on.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.publish();
    }

    /// Whether `path` is ready.
    pub fn path(&self, path: Path) -> bool {
        if self.stopping.load(Ordering::SeqCst) {
            return false;
        }
        match path {
            Path::Stream => {
                self.stream.load(Ordering::SeqCst) && self.stream_healthy.load(Ordering::SeqCst)
            }
            Path::Inline => {
                self.inline_enabled
                    && self.inline_up.load(Ordering::SeqCst)
                    && self.state_loaded.load(Ordering::SeqCst)
            }
        }
    }

    /// What `/readyz` answers: the in-line path when the in-line API is on
    /// (a load balancer sends it calls), the stream path otherwise.
    pub fn overall(&self) -> bool {
        if self.inline_enabled {
            self.path(Path::Inline)
        } else {
            self.path(Path::Stream)
        }
    }

    fn publish(&self) {
        let v = |b: bool| if b { 1.0 } else { 0.0 };
        metrics::gauge!(telemetry::READY).set(v(self.overall()));
        for p in [Path::Stream, Path::Inline] {
            metrics::gauge!(telemetry::READY_PATH, "path" => p.label()).set(v(self.path(p)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebalance_leaves_the_inline_path_ready() {
        let r = Readiness::new(true);
        assert!(!r.overall(), "nothing loaded yet");
        r.set_inline_up();
        assert!(!r.overall(), "listeners up, state not loaded");
        r.set_state_loaded();
        r.set_stream(true);
        assert!(r.overall() && r.path(Path::Stream));
        // A warm-up after a rebalance pauses the stream only.
        r.set_stream(false);
        assert!(r.overall());
        assert!(!r.path(Path::Stream));
        r.set_stream(true);
        r.set_stopping();
        assert!(!r.overall() && !r.path(Path::Stream) && !r.path(Path::Inline));
    }

    #[test]
    fn without_the_inline_api_readyz_is_the_stream() {
        let r = Readiness::new(false);
        r.set_state_loaded();
        assert!(!r.overall());
        r.set_stream(true);
        assert!(r.overall());
        assert!(!r.path(Path::Inline), "no in-line API, never ready");
        r.set_stream(false);
        assert!(!r.overall());
    }

    #[test]
    fn an_unhealthy_stream_is_not_ready_and_the_inline_path_stays() {
        let r = Readiness::new(true);
        r.set_inline_up();
        r.set_state_loaded();
        r.set_stream(true);
        r.set_stream_healthy(false);
        assert!(!r.path(Path::Stream));
        assert!(r.stream_running());
        assert!(r.overall(), "a broker outage does not stop in-line answers");
        r.set_stream_healthy(true);
        assert!(r.path(Path::Stream));
    }
}

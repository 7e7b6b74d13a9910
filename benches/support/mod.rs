//! Shared by the benches that score payments: a set of payments replayed in
//! rounds that are never replays (each round later in event time and
//! renamed), and the check, after a bench, that no payment took the
//! duplicate path, so a figure is of scoring and not of replays that update
//! nothing.

use std::fmt::Write as _;

use fraudline::engine::FeatureStore;
use fraudline::event::Payment;

/// Cycles through a set of payments; each pass is a new round, its payments
/// moved forward in event time by the set's own span and renamed
/// (`<id>~r<round>`). Renaming reuses each id's buffer (room is reserved up
/// front), so a round costs one add and one short write per payment,
/// amortised inside the timer.
pub(crate) struct Rounds {
    set: Vec<Payment>,
    span_ms: i64,
    i: usize,
    round: u64,
    handed_out: u64,
}

impl Rounds {
    pub(crate) fn new(mut set: Vec<Payment>) -> Self {
        let first = set.first().map_or(0, |p| p.event_time_ms);
        let last = set.last().map_or(0, |p| p.event_time_ms);
        for p in &mut set {
            p.event_id.reserve(24);
        }
        Rounds {
            set,
            span_ms: last - first + 1_000,
            i: 0,
            round: 0,
            handed_out: 0,
        }
    }

    pub(crate) fn next_item(&mut self) -> &Payment {
        if self.i == self.set.len() {
            self.i = 0;
            self.round += 1;
            for p in &mut self.set {
                p.event_time_ms += self.span_ms;
                if let Some(cut) = p.event_id.find('~') {
                    p.event_id.truncate(cut);
                }
                let _ = write!(p.event_id, "~r{}", self.round);
            }
        }
        self.i += 1;
        self.handed_out += 1;
        &self.set[self.i - 1]
    }

    /// Payments handed out so far.
    pub(crate) fn handed_out(&self) -> u64 {
        self.handed_out
    }
}

/// Fails the bench when any payment took the duplicate path since `before`
/// (`FeatureStore::duplicates_seen`); prints how many payments the check
/// covers (0: the bench was filtered out and nothing ran).
pub(crate) fn assert_scored_not_replayed(
    store: &FeatureStore,
    before: u64,
    scored: u64,
    what: &str,
) {
    let replays = store.duplicates_seen() - before;
    assert_eq!(
        replays, 0,
        "{what}: {replays} of {scored} payments took the duplicate path: the figure is not of scoring"
    );
    if scored > 0 {
        println!("{what}: checked, none of {scored} payments took the duplicate path");
    }
}

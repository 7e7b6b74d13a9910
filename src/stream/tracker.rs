//! Which offsets are safe to commit. Verdicts of one input partition can be
//! acknowledged out of order (they go to different output partitions), so a
//! partition's committable offset is the one just past the longest prefix of
//! acknowledged records. A record may wait for more than one
//! acknowledgement (its verdict and its payment's state-log batch).

use std::collections::{HashMap, VecDeque};

#[derive(Debug, Default)]
struct Partition {
    /// (offset, acknowledgements still awaited), in consumption order.
    pending: VecDeque<(i64, u8)>,
    /// Next offset to commit, once advanced.
    committable: Option<i64>,
}

/// Per-partition in-flight offsets of one input topic.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<i32, Partition>,
}

impl OffsetTracker {
    /// Records that `offset` was read and its output sent; it is done after
    /// `acks` acknowledgements (at least one).
    pub fn start(&mut self, partition: i32, offset: i64, acks: u8) {
        let p = self.partitions.entry(partition).or_default();
        if p.pending.back().is_some_and(|(last, _)| *last >= offset) {
            // The consumer went back (a seek or a re-assignment): what was
            // pending before is from an earlier life of this partition.
            p.pending.clear();
        }
        p.pending.push_back((offset, acks.max(1)));
    }

    /// Records one acknowledgement for `offset`. Returns the new
    /// committable offset of the partition if it advanced.
    pub fn finish(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&partition)?;
        let i = p.pending.binary_search_by_key(&offset, |(o, _)| *o).ok()?;
        p.pending[i].1 = p.pending[i].1.saturating_sub(1);
        let mut advanced = None;
        while let Some(&(o, 0)) = p.pending.front() {
            p.pending.pop_front();
            advanced = Some(o + 1);
        }
        if advanced.is_some() {
            p.committable = advanced;
        }
        advanced
    }

    /// Records not yet acknowledged, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions
            .values()
            .map(|p| p.pending.iter().filter(|(_, left)| *left > 0).count())
            .sum()
    }

    /// The committable offset of every partition that has one.
    pub fn committable(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.partitions
            .iter()
            .filter_map(|(k, p)| p.committable.map(|o| (*k, o)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn out_of_order_acks_commit_only_the_acked_prefix() {
        let mut t = OffsetTracker::default();
        for o in 10..15 {
            t.start(0, o, 1);
        }
        assert_eq!(t.finish(0, 12), None);
        assert_eq!(t.finish(0, 11), None);
        assert_eq!(t.finish(0, 10), Some(13));
        assert_eq!(t.finish(0, 14), None);
        assert_eq!(t.finish(0, 13), Some(15));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn gaps_in_offsets_are_fine() {
        let mut t = OffsetTracker::default();
        t.start(1, 5, 1);
        t.start(1, 9, 1);
        assert_eq!(t.finish(1, 9), None);
        assert_eq!(t.finish(1, 5), Some(10));
    }

    #[test]
    fn a_seek_back_forgets_the_old_life() {
        let mut t = OffsetTracker::default();
        t.start(0, 100, 1);
        t.start(0, 50, 1);
        assert_eq!(t.finish(0, 100), None);
        assert_eq!(t.finish(0, 50), Some(51));
    }

    #[test]
    fn a_record_waiting_for_two_acks_is_done_after_both() {
        let mut t = OffsetTracker::default();
        t.start(0, 7, 2);
        t.start(0, 8, 1);
        assert_eq!(t.finish(0, 7), None, "verdict acked, batch not yet");
        assert_eq!(t.finish(0, 8), None);
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.finish(0, 7), Some(9), "batch acked");
        assert_eq!(t.in_flight(), 0);
    }

    proptest! {
        /// Whatever the ack order, the committable offset never passes an
        /// unacknowledged record, and reaches the end once all are acked.
        #[test]
        fn never_commits_past_an_unacked_record(order in Just((0i64..40).collect::<Vec<_>>()).prop_shuffle()) {
            let mut t = OffsetTracker::default();
            for o in 0..40 { t.start(3, o, 1); }
            let mut acked = std::collections::HashSet::new();
            for o in order {
                acked.insert(o);
                if let Some(c) = t.finish(3, o) {
                    for below in 0..c { prop_assert!(acked.contains(&below)); }
                }
            }
            prop_assert_eq!(t.committable().collect::<Vec<_>>(), vec![(3, 40)]);
        }
    }
}

//! Event-time count and sum over the 1 m, 10 m, 1 h and 24 h windows of one
//! entity, in a few dozen bytes.
//!
//! # Time
//! Times are whole seconds since 2000-01-01 UTC in a `u32` ([`Secs`]): half
//! the bytes of an `i64` of milliseconds, good until 2136. Milliseconds are
//! floored to the second; times before 2000 clamp to 0 and after 2136 to
//! `u32::MAX` (the decoder rejects both anyway).
//!
//! # Which events are in "the last 1 h"
//! Windows are bucket-aligned, so that a fixed number of buckets holds them
//! exactly. A span has a bucket width `b` and a bucket count `n`
//! ([`Span::bucket_s`], [`Span::buckets`]); read at time `now`, it holds the
//! events counted at a time `t` with
//!
//! ```text
//! floor(now / b) - (n - 1)  <=  floor(t / b)  <=  floor(now / b)
//! ```
//!
//! i.e. the current, partial bucket and the `n - 1` full ones before it:
//!
//! | span | bucket | buckets | really covers |
//! |------|--------|---------|---------------|
//! | 1 m  | 5 s    | 12      | 55–60 s       |
//! | 10 m | 1 min  | 10      | 9–10 min      |
//! | 1 h  | 5 min  | 12      | 55–60 min     |
//! | 24 h | 1 h    | 24      | 23–24 h       |
//!
//! Every window is a suffix of time ending at `now` ([`Span::start`]).
//!
//! # Read time and lateness
//! The read time is the entity's *watermark*: the largest event time it has
//! seen, the current event included. An event behind the watermark by at
//! most the configured lateness is counted at its own time, in its own
//! bucket (so a payment 2 minutes late is in the 10 m window but not in the
//! 1 m one). An event further behind is counted *by arrival*: at the
//! watermark, in the newest bucket, and reported as [`Arrival::TooLate`] so
//! the caller can count it; nothing is dropped silently. A clock that jumps
//! far ahead simply moves the watermark (and empties the windows); one that
//! jumps far back is too late.
//!
//! # Layout
//! A sorted list of buckets at four resolutions (5 s, 1 min, 5 min, 1 h),
//! only the non-empty ones. A bucket is kept at the finest resolution some
//! window still needs: once it leaves the 1 m window it is merged into its
//! minute, once out of the 10 m window into its 5 minutes, and so on. The
//! list is therefore in time order, coarsest (oldest) first, and never longer
//! than 12 + 10 + 12 + 24 = [`MAX_ENTRIES`]; an account paying a few times a
//! day holds one bucket per payment in the last 24 h, inline. Each bucket is
//! 16 bytes: start second (`u32`), level (2 bits) + count (30 bits,
//! saturating), sum (`i64`, saturating).
//!
//! `size_of` (64-bit): `Window` (3 inline buckets, the default) = 64 bytes,
//! `Window<1>` = 32, `Window<2>` = 48; heap only beyond the inline buckets,
//! at most `MAX_ENTRIES * 16` = 928 bytes. See the `sizes` test.

use smallvec::SmallVec;

use super::codec::{put_u32, put_u8, put_varint, put_zigzag, CodecError, Reader};

/// Milliseconds since the Unix epoch of 2000-01-01T00:00:00Z: the zero of
/// [`Secs`].
pub const EPOCH_MS: i64 = 946_684_800_000;

/// Whole seconds since 2000-01-01 UTC.
pub type Secs = u32;

/// Event time in milliseconds since the Unix epoch to [`Secs`], floored and
/// clamped to the `u32` range.
pub fn secs(t_ms: i64) -> Secs {
    let s = t_ms.saturating_sub(EPOCH_MS).div_euclid(1000);
    s.clamp(0, i64::from(u32::MAX)) as Secs
}

/// The windows, from the finest to the widest. Each is also a level of the
/// bucket list: a window's buckets are the resolution its level is kept at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Span {
    M1 = 0,
    M10 = 1,
    H1 = 2,
    H24 = 3,
}

/// Bucket width in seconds, per span.
const BUCKET_S: [u32; 4] = [5, 60, 300, 3600];
/// Buckets per window, per span.
const BUCKETS: [u32; 4] = [12, 10, 12, 24];

/// Most buckets a [`Window`] ever holds: one per bucket of every window.
pub const MAX_ENTRIES: usize = 12 + 10 + 12 + 24;

// Levels nest: a coarser bucket is a whole number of finer ones, and a
// bucket that left a window is out of every narrower window too (the wider
// window minus its partial bucket still covers the narrower one).
const _: () = {
    let mut l = 0;
    while l < 3 {
        assert!(BUCKET_S[l + 1] % BUCKET_S[l] == 0);
        assert!((BUCKETS[l + 1] - 1) * BUCKET_S[l + 1] >= BUCKETS[l] * BUCKET_S[l]);
        l += 1;
    }
    assert!(MAX_ENTRIES == (BUCKETS[0] + BUCKETS[1] + BUCKETS[2] + BUCKETS[3]) as usize);
};

impl Span {
    pub const ALL: [Span; 4] = [Span::M1, Span::M10, Span::H1, Span::H24];

    /// Bucket width in seconds.
    pub const fn bucket_s(self) -> u32 {
        BUCKET_S[self as usize]
    }

    /// Buckets in the window, the current partial one included.
    pub const fn buckets(self) -> u32 {
        BUCKETS[self as usize]
    }

    /// Nominal length in seconds (`bucket_s * buckets`).
    pub const fn len_s(self) -> u32 {
        self.bucket_s() * self.buckets()
    }

    /// The first second in the window read at `now`: the window is
    /// `start(now) ..= now`.
    pub const fn start(self, now: Secs) -> Secs {
        let b = self.bucket_s();
        (now / b).saturating_sub(self.buckets() - 1) * b
    }

    /// Whether an event counted at `t` is in the window read at `now`.
    pub const fn contains(self, t: Secs, now: Secs) -> bool {
        t <= now && t >= self.start(now)
    }

    fn from_level(level: u32) -> Span {
        match level {
            0 => Span::M1,
            1 => Span::M10,
            2 => Span::H1,
            _ => Span::H24,
        }
    }
}

/// Store-wide settings, passed to each call rather than held per entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowParams {
    /// How far behind the watermark an event may be and still be counted at
    /// its own time.
    pub lateness_s: u32,
    /// The widest span this entity needs; older buckets are dropped (a
    /// device that only needs "payments over 1 h" keeps `Span::H1`). Reads
    /// of wider spans return 0.
    pub keep: Span,
}

impl Default for WindowParams {
    fn default() -> Self {
        WindowParams {
            lateness_s: 60,
            keep: Span::H24,
        }
    }
}

/// How an event's time related to the entity's watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// At or after the watermark.
    InOrder,
    /// Behind the watermark by at most the lateness: counted at its own time.
    Late { behind_s: u32 },
    /// Behind by more: counted at the watermark. A metric should count these.
    TooLate { behind_s: u32 },
}

/// Where an event lands: what [`Window::add`] did, or would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The event's own time.
    pub event_s: Secs,
    /// The time it is counted at: `event_s`, or the watermark if too late.
    /// Other per-entity state (distinct counters, recent sets) should use
    /// this too, so every feature agrees.
    pub at_s: Secs,
    /// The watermark after the event: the read time for its features.
    pub now_s: Secs,
    pub arrival: Arrival,
}

/// Count and sum per span, as read at one time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    count: [u32; 4],
    sum: [i64; 4],
}

impl Totals {
    /// Events in the span.
    pub fn count(&self, span: Span) -> u32 {
        self.count[span as usize]
    }

    /// Sum of their amounts (saturating).
    pub fn sum(&self, span: Span) -> i64 {
        self.sum[span as usize]
    }
}

const LEVEL_SHIFT: u32 = 30;
const COUNT_MASK: u32 = (1 << LEVEL_SHIFT) - 1;

/// One non-empty bucket. 16 bytes: the level lives in the top bits of the
/// count so the struct has no padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// First second of the bucket (a multiple of its level's width).
    start: Secs,
    /// Level (2 bits) and event count (30 bits, saturating).
    meta: u32,
    sum: i64,
}

impl Entry {
    fn level(&self) -> u32 {
        self.meta >> LEVEL_SHIFT
    }

    fn count(&self) -> u32 {
        self.meta & COUNT_MASK
    }

    /// Sort key: coarsest level first, then by start. This is also time
    /// order, since coarser buckets only hold older events.
    fn key(&self) -> u64 {
        key(self.level(), self.start)
    }

    fn absorb(&mut self, count: u32, sum: i64) {
        let c = self.count().saturating_add(count).min(COUNT_MASK);
        self.meta = (self.level() << LEVEL_SHIFT) | c;
        self.sum = self.sum.saturating_add(sum);
    }
}

fn key(level: u32, start: Secs) -> u64 {
    (u64::from(3 - level) << 32) | u64::from(start)
}

fn align(t: Secs, level: u32) -> Secs {
    let b = BUCKET_S[level as usize];
    t / b * b
}

/// The finest level whose window, read at `now`, still holds time `t`, or
/// `None` when `t` is out of every kept window (it can never be read again:
/// the watermark only moves forward).
fn level_for(t: Secs, from: u32, now: Secs, keep: Span) -> Option<u32> {
    (from..=keep as u32).find(|&l| t >= Span::from_level(l).start(now))
}

/// Windowed count and sum for one entity; see the module docs. `INLINE`
/// buckets live in the struct, more spill to the heap.
#[derive(Debug, Clone, Default)]
pub struct Window<const INLINE: usize = 3> {
    /// The watermark: the largest event time seen (0 before any).
    now: Secs,
    /// Non-empty buckets, sorted by [`Entry::key`].
    entries: SmallVec<[Entry; INLINE]>,
}

impl<const INLINE: usize> Window<INLINE> {
    pub fn new() -> Self {
        Window {
            now: 0,
            entries: SmallVec::new(),
        }
    }

    /// The watermark: the largest event time seen, 0 before any.
    pub fn watermark(&self) -> Secs {
        self.now
    }

    /// Address and length of the spilled buckets (none while inline), for a
    /// prefetch.
    pub(super) fn spilled(&self) -> Option<(usize, usize)> {
        spilled(&self.entries)
    }

    /// Where an event at `t_ms` would land, without changing anything: lets
    /// the caller check the event id for a replay first.
    pub fn stamp(&self, t_ms: i64, lateness_s: u32) -> Stamp {
        let event_s = secs(t_ms);
        let now_s = self.now.max(event_s);
        let behind_s = now_s - event_s;
        let (at_s, arrival) = if behind_s == 0 {
            (event_s, Arrival::InOrder)
        } else if behind_s <= lateness_s {
            (event_s, Arrival::Late { behind_s })
        } else {
            (now_s, Arrival::TooLate { behind_s })
        };
        Stamp {
            event_s,
            at_s,
            now_s,
            arrival,
        }
    }

    /// Counts an event of `amount` at `t_ms` and says where it landed.
    /// Amounts are positive (the decoder rejects others); a negative one is
    /// counted as 0, so that saturating sums do not depend on order.
    pub fn add(&mut self, t_ms: i64, amount: i64, p: &WindowParams) -> Stamp {
        let s = self.stamp(t_ms, p.lateness_s);
        if s.now_s > self.now {
            let before = self.now;
            self.now = s.now_s;
            // Every bucket width is a multiple of the finest, so no window
            // start moves until the watermark enters a new finest bucket:
            // a busy entity compacts at most once per 5 s of event time.
            if s.now_s / BUCKET_S[0] != before / BUCKET_S[0] {
                self.compact(p.keep);
            }
        }
        if let Some(level) = level_for(s.at_s, 0, self.now, p.keep) {
            self.insert(level, s.at_s, amount.max(0));
        }
        s
    }

    fn insert(&mut self, level: u32, t: Secs, amount: i64) {
        let start = align(t, level);
        let k = key(level, start);
        // The usual case: the newest bucket.
        if let Some(last) = self.entries.last_mut() {
            if last.key() == k {
                last.absorb(1, amount);
                return;
            }
        }
        match self.entries.binary_search_by_key(&k, Entry::key) {
            Ok(i) => self.entries[i].absorb(1, amount),
            Err(i) => {
                if self.entries.len() == self.entries.capacity() {
                    // Grow by half, to at most MAX_ENTRIES: busy entities
                    // are the ones that spill, and doubling wastes most.
                    let len = self.entries.len();
                    let want = (len + len / 2).clamp(4, MAX_ENTRIES);
                    self.entries.reserve_exact(want - self.entries.len());
                }
                self.entries.insert(
                    i,
                    Entry {
                        start,
                        meta: (level << LEVEL_SHIFT) | 1,
                        sum: amount,
                    },
                );
            }
        }
    }

    /// After the watermark moved: moves each bucket to the level it now
    /// needs, merging neighbours, and drops what left every kept window.
    /// One pass: the new levels keep the list sorted.
    fn compact(&mut self, keep: Span) -> bool {
        // Window starts once per compaction, not per bucket: the divisions
        // were most of this function's time on busy entities.
        let lo = Span::ALL.map(|span| span.start(self.now));
        let top = keep as u32;
        let mut w = 0;
        let mut changed = false;
        for r in 0..self.entries.len() {
            let e = self.entries[r];
            let Some(level) = (e.level()..=top).find(|&l| e.start >= lo[l as usize]) else {
                changed = true;
                continue;
            };
            // A bucket keeps its start while it keeps its level (starts are
            // aligned to their level: an invariant `decode` checks too);
            // only a move re-aligns it, which spares a division per bucket.
            let moved = level != e.level();
            let start = if moved {
                align(e.start, level)
            } else {
                e.start
            };
            changed |= moved;
            if w > 0 && self.entries[w - 1].key() == key(level, start) {
                self.entries[w - 1].absorb(e.count(), e.sum);
            } else {
                self.entries[w] = Entry {
                    start,
                    meta: (level << LEVEL_SHIFT) | e.count(),
                    sum: e.sum,
                };
                w += 1;
            }
        }
        self.entries.truncate(w);
        if self.entries.spilled() && (w <= INLINE || w * 4 <= self.entries.capacity()) {
            self.entries.shrink_to_fit();
        }
        changed
    }

    /// Drops what the watermark `now_s` (if later) leaves out of every kept
    /// window: for an eviction sweep over idle entities. Does not move the
    /// watermark. Returns whether anything changed (so that a sweep marks
    /// only changed entities for the next incremental snapshot).
    pub fn expire(&mut self, now_s: Secs, keep: Span) -> bool {
        let saved = self.now;
        if now_s > saved {
            self.now = now_s;
            let changed = self.compact(keep);
            self.now = saved;
            changed
        } else {
            false
        }
    }

    /// Appends the encoding (see [`super::codec`]): the watermark, then each
    /// bucket as its distance behind the watermark, level, count and sum.
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.now);
        // At most MAX_ENTRIES (58) buckets: the decoder checks it.
        put_u8(out, self.entries.len() as u8);
        for e in &self.entries {
            put_varint(out, u64::from(self.now.saturating_sub(e.start)));
            put_u8(out, e.level() as u8);
            put_varint(out, u64::from(e.count()));
            put_zigzag(out, e.sum);
        }
    }

    /// Reads what [`Window::encode`] wrote, for an entity that keeps `keep`,
    /// checking every invariant later updates rely on: at most
    /// [`MAX_ENTRIES`] buckets, in key order, aligned, none after the
    /// watermark, each at least as coarse as its age needs (which is what
    /// bounds the count per level) and within the kept span.
    pub(super) fn decode(r: &mut Reader<'_>, keep: Span) -> Result<Self, CodecError> {
        let now = r.u32("window watermark")?;
        let n = r.len("window buckets", MAX_ENTRIES)?;
        let mut entries: SmallVec<[Entry; INLINE]> = SmallVec::with_capacity(n);
        for _ in 0..n {
            let behind = r.varint_u32("bucket start")?;
            let Some(start) = now.checked_sub(behind) else {
                return Err(r.invalid("bucket start", "before the epoch"));
            };
            let level = u32::from(r.u8("bucket level")?);
            if level > keep as u32 {
                return Err(r.invalid("bucket level", "wider than the entity keeps"));
            }
            if align(start, level) != start {
                return Err(r.invalid("bucket start", "not aligned to its level"));
            }
            match level_for(start, 0, now, keep) {
                Some(need) if need <= level => {}
                Some(_) => return Err(r.invalid("bucket level", "finer than its age allows")),
                None => return Err(r.invalid("bucket start", "outside every kept window")),
            }
            let count = r.varint_u32("bucket count")?;
            if count == 0 || count > COUNT_MASK {
                return Err(r.invalid("bucket count", "zero or over 2^30 - 1"));
            }
            let sum = r.zigzag("bucket sum")?;
            let e = Entry {
                start,
                meta: (level << LEVEL_SHIFT) | count,
                sum,
            };
            if entries.last().is_some_and(|p| p.key() >= e.key()) {
                return Err(r.invalid("window buckets", "not in key order"));
            }
            entries.push(e);
        }
        Ok(Window { now, entries })
    }

    /// Counts and sums read at the watermark.
    pub fn read(&self, keep: Span) -> Totals {
        self.read_at(self.now, keep)
    }

    /// Counts and sums read at `now_s`, or at the watermark if that is
    /// later (an idle entity read at wall-clock time).
    #[inline]
    pub fn read_at(&self, now_s: Secs, keep: Span) -> Totals {
        self.read_at_picking(now_s, keep, |_| false).0
    }

    /// [`Window::read`], and in the same pass the sum of the buckets in the
    /// widest kept window whose start second passes `pick`: e.g. the
    /// night-time amount of the last 24 h, classed by bucket start (hourly
    /// buckets beyond the last hour).
    pub fn read_picking(&self, keep: Span, pick: impl FnMut(Secs) -> bool) -> (Totals, i64) {
        self.read_at_picking(self.now, keep, pick)
    }

    #[inline]
    fn read_at_picking(
        &self,
        now_s: Secs,
        keep: Span,
        mut pick: impl FnMut(Secs) -> bool,
    ) -> (Totals, i64) {
        let now = now_s.max(self.now);
        let top = keep as usize;
        let mut lo = [0; 4];
        for (l, v) in lo.iter_mut().enumerate().take(top + 1) {
            *v = Span::from_level(l as u32).start(now);
        }
        let mut t = Totals::default();
        let mut picked = 0i64;
        for e in &self.entries {
            let from = e.level() as usize;
            // In this window implies in every wider one.
            if let Some(first) = (from..=top).find(|&l| e.start >= lo[l]) {
                for l in first..=top {
                    t.count[l] = t.count[l].saturating_add(e.count());
                    t.sum[l] = t.sum[l].saturating_add(e.sum);
                }
                if pick(e.start) {
                    picked = picked.saturating_add(e.sum);
                }
            }
        }
        (t, picked)
    }

    /// Non-empty buckets held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Heap bytes held beyond `size_of::<Self>()`.
    pub fn heap_bytes(&self) -> usize {
        if self.entries.spilled() {
            self.entries.capacity() * std::mem::size_of::<Entry>()
        } else {
            0
        }
    }

    /// Checks the layout invariants (tests).
    #[cfg(test)]
    fn check(&self, keep: Span) {
        assert!(self.entries.len() <= MAX_ENTRIES);
        for w in self.entries.windows(2) {
            assert!(w[0].key() < w[1].key(), "unsorted {:?}", self.entries);
            assert!(w[0].start <= w[1].start, "not in time order");
        }
        for e in &self.entries {
            assert_eq!(e.start, align(e.start, e.level()));
            assert!(e.level() <= keep as u32);
            let need = level_for(e.start, 0, self.now, keep);
            assert_eq!(need, Some(e.level()), "bucket at the wrong level");
            assert!(e.count() > 0);
        }
        let mut per_level = [0u32; 4];
        for e in &self.entries {
            per_level[e.level() as usize] += 1;
        }
        for (l, n) in per_level.iter().enumerate() {
            assert!(*n <= BUCKETS[l]);
        }
    }
}

/// Address and byte length of a spilled `SmallVec`'s items, for a prefetch.
pub(super) fn spilled<A: smallvec::Array>(v: &SmallVec<A>) -> Option<(usize, usize)> {
    v.spilled()
        .then(|| (v.as_ptr() as usize, std::mem::size_of_val(v.as_slice())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::mem::size_of;

    const DAY: u32 = 86_400;
    /// A time well after the epoch, on no particular boundary.
    const T0: Secs = 20 * 365 * DAY + 12_345;

    fn ms(s: Secs) -> i64 {
        EPOCH_MS + i64::from(s) * 1000
    }

    fn params(lateness_s: u32) -> WindowParams {
        WindowParams {
            lateness_s,
            keep: Span::H24,
        }
    }

    /// The naive reference: every event with the time it is counted at.
    #[derive(Default)]
    struct Naive {
        now: Secs,
        events: Vec<(Secs, i64)>,
    }

    impl Naive {
        fn add(&mut self, t_ms: i64, amount: i64, lateness_s: u32) {
            let t = secs(t_ms);
            self.now = self.now.max(t);
            let at = if self.now - t > lateness_s {
                self.now
            } else {
                t
            };
            self.events.push((at, amount.max(0)));
        }

        fn read(&self, now: Secs, keep: Span) -> Totals {
            let now = now.max(self.now);
            let mut t = Totals::default();
            for s in Span::ALL.into_iter().filter(|s| *s <= keep) {
                // Straight from the definition: bucket index arithmetic.
                let (b, n) = (i64::from(s.bucket_s()), i64::from(s.buckets()));
                for &(at, amount) in &self.events {
                    let (bi, bn) = (i64::from(at) / b, i64::from(now) / b);
                    if bi <= bn && bi >= bn - (n - 1) {
                        t.count[s as usize] += 1;
                        t.sum[s as usize] += amount;
                    }
                }
            }
            t
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(size_of::<Entry>(), 16);
        assert_eq!(size_of::<Window>(), 64);
        assert_eq!(size_of::<Window<1>>(), 32);
        assert_eq!(size_of::<Window<2>>(), 48);
        assert_eq!(size_of::<Stamp>(), 20);
        assert_eq!(size_of::<Totals>(), 48);
    }

    #[test]
    fn secs_clamps_and_floors() {
        assert_eq!(secs(EPOCH_MS), 0);
        assert_eq!(secs(EPOCH_MS + 999), 0);
        assert_eq!(secs(EPOCH_MS + 1000), 1);
        assert_eq!(secs(EPOCH_MS - 1), 0);
        assert_eq!(secs(i64::MIN), 0);
        assert_eq!(secs(i64::MAX), u32::MAX);
    }

    #[test]
    fn span_starts() {
        // now = 10:07:33 on some day.
        let now = 100 * DAY + 10 * 3600 + 7 * 60 + 33;
        assert_eq!(now - Span::M1.start(now), 55 + 3);
        assert_eq!(now - Span::M10.start(now), 9 * 60 + 33);
        assert_eq!(now - Span::H1.start(now), 55 * 60 + 2 * 60 + 33);
        assert_eq!(now - Span::H24.start(now), 23 * 3600 + 7 * 60 + 33);
        // Near the epoch the windows start at 0.
        assert_eq!(Span::H24.start(5), 0);
        assert!(Span::M1.contains(0, 5));
    }

    #[test]
    fn one_event_in_every_window() {
        let mut w: Window = Window::new();
        let s = w.add(ms(T0), 700, &params(60));
        assert_eq!(s.arrival, Arrival::InOrder);
        assert_eq!((s.event_s, s.at_s, s.now_s), (T0, T0, T0));
        let t = w.read(Span::H24);
        for span in Span::ALL {
            assert_eq!((t.count(span), t.sum(span)), (1, 700));
        }
        // Read later: it leaves the windows one by one.
        let t = w.read_at(T0 + 120, Span::H24);
        assert_eq!((t.count(Span::M1), t.count(Span::M10)), (0, 1));
        let t = w.read_at(T0 + 2 * 3600, Span::H24);
        assert_eq!((t.count(Span::H1), t.count(Span::H24)), (0, 1));
        assert_eq!(w.read_at(T0 + 2 * DAY, Span::H24), Totals::default());
    }

    #[test]
    fn window_edge_is_bucket_aligned() {
        let now = 3600 * 500 + 1234; // 20:34 past the hour
        let start = Span::H1.start(now);
        let mut w: Window = Window::new();
        w.add(ms(start - 1), 1, &params(DAY));
        w.add(ms(start), 10, &params(DAY));
        w.add(ms(now), 100, &params(DAY));
        let t = w.read(Span::H24);
        assert_eq!((t.count(Span::H1), t.sum(Span::H1)), (2, 110));
        assert_eq!((t.count(Span::H24), t.sum(Span::H24)), (3, 111));
        w.check(Span::H24);
    }

    #[test]
    fn late_event_lands_in_its_own_bucket() {
        let mut w: Window = Window::new();
        w.add(ms(T0), 1, &params(300));
        let s = w.add(ms(T0 - 120), 10, &params(300));
        assert_eq!(s.arrival, Arrival::Late { behind_s: 120 });
        assert_eq!((s.at_s, s.now_s), (T0 - 120, T0));
        let t = w.read(Span::H24);
        assert_eq!(t.sum(Span::M1), 1, "2 minutes late is outside 1 m");
        assert_eq!(t.sum(Span::M10), 11);
        w.check(Span::H24);
    }

    #[test]
    fn lateness_boundary() {
        let mut w: Window = Window::new();
        w.add(ms(T0), 1, &params(30));
        let s = w.add(ms(T0 - 30), 10, &params(30));
        assert_eq!(s.arrival, Arrival::Late { behind_s: 30 });
        assert_eq!(s.at_s, T0 - 30);
        let s = w.add(ms(T0 - 31), 100, &params(30));
        assert_eq!(s.arrival, Arrival::TooLate { behind_s: 31 });
        assert_eq!(s.at_s, T0, "too late: counted at the watermark");
        // Sub-second lateness does not exist: same second is in order.
        let s = w.add(ms(T0) + 999, 1000, &params(0));
        assert_eq!(s.arrival, Arrival::InOrder);
        assert_eq!(w.read(Span::H24).count(Span::H24), 4);
    }

    #[test]
    fn too_late_is_counted_in_the_newest_bucket() {
        let mut w: Window = Window::new();
        w.add(ms(T0), 1, &params(10));
        // A day late, i.e. would be outside the 1 m window at its own time.
        let s = w.add(ms(T0 - DAY), 5, &params(10));
        assert!(matches!(s.arrival, Arrival::TooLate { behind_s } if behind_s == DAY));
        assert_eq!(w.read(Span::H24).sum(Span::M1), 6);
        assert_eq!(w.len(), 1, "merged into the newest bucket");
    }

    #[test]
    fn stamp_does_not_change_anything() {
        let mut w: Window = Window::new();
        w.add(ms(T0), 1, &params(60));
        let before = w.clone();
        let s = w.stamp(ms(T0 + 500), 60);
        assert_eq!(s.now_s, T0 + 500);
        assert_eq!(w.watermark(), T0);
        assert_eq!(w.entries, before.entries);
        assert_eq!(w.add(ms(T0 + 500), 1, &params(60)), s);
    }

    #[test]
    fn clock_jump_forward_empties_and_frees() {
        let mut w: Window = Window::new();
        for i in 0..2000 {
            w.add(ms(T0 + i * 7), 1, &params(60));
        }
        assert!(w.heap_bytes() > 0);
        // Ten years later.
        w.add(ms(T0 + 3650 * DAY), 5, &params(60));
        assert_eq!(w.len(), 1);
        assert_eq!(w.heap_bytes(), 0, "back inline");
        let t = w.read(Span::H24);
        assert_eq!((t.count(Span::H24), t.sum(Span::H24)), (1, 5));
    }

    #[test]
    fn clock_far_back_and_bad_times() {
        let mut w: Window = Window::new();
        w.add(ms(T0), 1, &params(60));
        for bad in [i64::MIN, -1, 0, EPOCH_MS - 1] {
            let s = w.add(bad, 2, &params(60));
            assert!(matches!(s.arrival, Arrival::TooLate { .. }));
            assert_eq!(s.at_s, T0);
        }
        // The far future clamps to the end of u32 time without overflow.
        let s = w.add(i64::MAX, 4, &params(60));
        assert_eq!(s.now_s, u32::MAX);
        let t = w.read(Span::H24);
        assert_eq!((t.count(Span::M1), t.sum(Span::M1)), (1, 4));
        w.check(Span::H24);
    }

    #[test]
    fn first_event_at_the_epoch() {
        let mut w: Window = Window::new();
        let s = w.add(EPOCH_MS, 3, &params(60));
        assert_eq!(s.arrival, Arrival::InOrder);
        assert_eq!(w.read(Span::H24).count(Span::M1), 1);
    }

    #[test]
    fn busy_entity_stays_bounded() {
        let mut w: Window = Window::new();
        // One payment a second for two days.
        for i in 0..2 * DAY {
            w.add(ms(T0 + i), 100, &params(60));
            if i % 997 == 0 {
                w.check(Span::H24);
            }
        }
        assert!(w.len() <= MAX_ENTRIES);
        assert!(w.heap_bytes() <= MAX_ENTRIES * size_of::<Entry>());
        let t = w.read(Span::H24);
        let now = T0 + 2 * DAY - 1;
        let expect = |s: Span| now - s.start(now) + 1;
        for span in Span::ALL {
            assert_eq!(t.count(span), expect(span), "{span:?}");
        }
    }

    #[test]
    fn keep_limits_what_is_held() {
        let p = WindowParams {
            lateness_s: 60,
            keep: Span::H1,
        };
        let mut w: Window<1> = Window::new();
        for i in 0..24 {
            w.add(ms(T0 + i * 3600), 1, &p);
        }
        assert_eq!(w.len(), 1);
        let t = w.read(Span::H1);
        assert_eq!((t.count(Span::H1), t.count(Span::H24)), (1, 0));
        w.check(Span::H1);
    }

    #[test]
    fn expire_frees_idle_entities() {
        let mut w: Window = Window::new();
        for i in 0..100 {
            w.add(ms(T0 + i * 30), 1, &params(60));
        }
        w.expire(T0 + 3 * DAY, Span::H24);
        assert!(w.is_empty());
        assert_eq!(w.heap_bytes(), 0);
        assert_eq!(w.watermark(), T0 + 99 * 30);
    }

    #[test]
    fn saturating_sums() {
        let mut w: Window = Window::new();
        w.add(ms(T0), i64::MAX, &params(60));
        w.add(ms(T0), i64::MAX, &params(60));
        w.add(ms(T0), -5, &params(60));
        let t = w.read(Span::H24);
        assert_eq!((t.count(Span::M1), t.sum(Span::M1)), (3, i64::MAX));
    }

    /// A stream step: seconds relative to the current watermark, so that
    /// out-of-order, lateness-edge and jump cases all come up often.
    fn step() -> impl Strategy<Value = i64> {
        let dt = prop_oneof![
            4 => 0i64..20,
            2 => -40i64..0,
            2 => 0i64..4000,
            1 => -4000i64..0,
            1 => -200_000i64..200_000,
            1 => Just(0),
        ];
        let sub_ms = 0i64..1000;
        (dt, sub_ms).prop_map(|(dt, m)| dt * 1000 + m)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Counts and sums agree exactly with the naive reference after
        /// every event, read at the watermark and at a later time.
        #[test]
        fn agrees_with_reference(
            lateness in prop_oneof![Just(0u32), 0u32..120, Just(3600)],
            keep in prop_oneof![Just(Span::H24), Just(Span::H1), Just(Span::M1)],
            steps in prop::collection::vec((step(), 1i64..1_000_000, 0u32..3), 1..300),
            later in 0u32..100_000,
        ) {
            let p = WindowParams { lateness_s: lateness, keep };
            let mut w: Window<2> = Window::new();
            let mut naive = Naive::default();
            let mut t_ms = ms(T0);
            for (dt, amount, dup) in steps {
                t_ms = ms(w.watermark().max(T0)) + dt;
                // Duplicates: the same event again, counted again here
                // (dedup is the caller's job, see distinct.rs).
                for _ in 0..=dup {
                    let s = w.add(t_ms, amount, &p);
                    naive.add(t_ms, amount, lateness);
                    prop_assert_eq!(s.now_s, naive.now);
                    prop_assert_eq!(w.read(keep), naive.read(naive.now, keep));
                    // The picked sum is of the widest kept window's buckets:
                    // all of them, or by their start second.
                    let (t, all) = w.read_picking(keep, |_| true);
                    prop_assert_eq!(t, w.read(keep));
                    prop_assert_eq!(all, t.sum(keep));
                    let lo = keep.start(w.watermark());
                    let even = w
                        .entries
                        .iter()
                        .filter(|e| e.start >= lo && (e.start / 60) % 2 == 0)
                        .fold(0i64, |a, e| a.saturating_add(e.sum));
                    prop_assert_eq!(w.read_picking(keep, |s| (s / 60) % 2 == 0).1, even);
                }
                w.check(keep);
            }
            let at = secs(t_ms).saturating_add(later);
            prop_assert_eq!(w.read_at(at, keep), naive.read(at, keep));
        }
    }
}

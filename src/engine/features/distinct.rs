//! Distinct counts over the 10 m, 1 h and 24 h windows, and "seen this key
//! lately?" sets, for one entity, in bounded memory.
//!
//! Keys are 64-bit hashes of identifiers (payee, payer, device, IP, event
//! id); each is kept as a 32-bit fingerprint beside a 32-bit time, 8 bytes
//! a key. Times are [`Secs`]: pass [`Stamp::at_s`] as an event's time and
//! the entity's watermark ([`Stamp::now_s`]) as `now`, so that windows and
//! lateness mean what they mean in [`super::window`].
//!
//! # [`Distinct`]
//! Counts the keys whose latest sighting is in a window, with the same
//! bucket-aligned windows as [`Span`], and remembers each key's last
//! sighting for a retention the caller gives (the 30 days of "new payee").
//! The keys live in a list of at most [`EXACT_MAX`], least recently seen
//! evicted first. Counts are exact while the list holds every key of the
//! last 24 h. When a key of the last 24 h would have to be evicted, a
//! HyperLogLog of 128 registers takes over the counts; each register keeps,
//! per ρ value, the last minute it was hit, so a window's estimate is
//! exactly the HyperLogLog of the keys last seen in that window (tested)
//! and the usual error holds: standard error 1.04/√128 ≈ 9 %, much less
//! below ~300 keys where linear counting applies. ρ is capped at
//! [`RHO_MAX`], so estimates saturate around 128·2¹⁸ ≈ 3·10⁷ keys per
//! window. Once the last key the list lost has left the 24 h window, the
//! list holds every key of the window again: the sketch is dropped and the
//! counts are exact again (so a burst costs a sketch for a day, not for
//! ever).
//!
//! # [`RecentSet`]
//! "Used this device / IP lately?", "replayed event id?": keys with their
//! last sighting, at most `CAP`, least recently seen evicted first (and
//! reported), so an entity with more than `CAP` live keys may see an old key
//! as new again or let an old replay through. Kinds with different horizons
//! may share one set: salt the hashes per kind, insert with the longest
//! horizon, query each kind with its own.
//!
//! # Fingerprints
//! Two keys of one entity share a 32-bit fingerprint with probability
//! 2⁻³²: with `n` keys held, a new key looks known with probability about
//! `n / 2³²` (10⁻⁸ at `n` = 32). For event-id dedup
//! [`RecentSet::contains_at`] also matches the event's second, which takes
//! false replays to practically zero. Sketches hash the fingerprint, so
//! beyond ~10⁸ keys collisions make them undercount by a few per cent.
//!
//! # Sizes (64-bit)
//! | struct | `size_of` | heap |
//! |---|---|---|
//! | `Distinct` | 40 | 0 up to 3 keys, ≤ 256 for 32, + 5,128 with a sketch |
//! | `RecentSet<CAP>` | 32 | 0 up to 3 keys, ≤ 8 × `CAP` |
//!
//! Lists grow to odd capacities (3, 5, 7, 11, 17...): 8 × odd + glibc's
//! 8-byte header fills a 16-byte-aligned chunk.
//!
//! # Bytes per payer
//! `bytes_per_payer_for_a_realistic_mix` simulates 31 days of 1,000 payers
//! (90 % pay 3 a day to 8 payees, 9 % 30 a day to 40, 1 % 500 a day to
//! 5,000) with a `Window`, a `Distinct` of payees, one `RecentSet<32>` for
//! devices + IPs + event ids, 48 bytes of scalars and 16 bytes of map entry,
//! heap rounded as glibc does:
//!
//! | dedup horizon | common | moderate | very active | average |
//! |---|---|---|---|---|
//! | 1 h | 357 | 984 | 6,619 | 476 |
//! | 24 h | 457 | 1,206 | 6,619 | 586 |
//!
//! The very active ones carry a sketch (5 KB). The hash table's empty
//! slots come on top of this (hashbrown stores values inline): boxing the
//! per-payer state keeps them at 16 bytes.

use smallvec::SmallVec;

use super::codec::{put_u32, put_u8, put_varint, CodecError, Reader};

#[cfg(doc)]
use super::window::Stamp;
use super::window::{Secs, Span};

/// Keys a [`Distinct`] holds; counts are exact up to this many keys in the
/// last 24 h.
pub const EXACT_MAX: usize = 32;

/// log2 of the registers of the sketch.
const P: u32 = 7;
/// Registers of the sketch.
const M: usize = 1 << P;
/// Largest ρ the sketch records; larger ones count as this.
pub const RHO_MAX: usize = 20;

/// A key's fingerprint and a time, 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    fp: u32,
    t: Secs,
}

/// Murmur3's 64-bit finalizer: callers' hashes may be weak in some bits,
/// and fingerprints and HyperLogLog need every bit uniform.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn fingerprint(key: u64) -> u32 {
    (mix(key) >> 32) as u32
}

/// Grows `v` by half, to an odd capacity, never past `cap`.
fn grow<const N: usize>(v: &mut SmallVec<[Slot; N]>, cap: usize) {
    if v.len() == v.capacity() {
        let want = ((v.len() + v.len() / 2) | 1)
            .max(5)
            .min(cap.max(v.len() + 1));
        v.reserve_exact(want - v.len());
    }
}

fn shrink<const N: usize>(v: &mut SmallVec<[Slot; N]>) {
    if v.spilled() && (v.len() <= N || v.len() * 4 <= v.capacity()) {
        v.shrink_to_fit();
    }
}

fn spilled_bytes<const N: usize>(v: &SmallVec<[Slot; N]>) -> usize {
    if v.spilled() {
        v.capacity() * std::mem::size_of::<Slot>()
    } else {
        0
    }
}

/// Appends a key list: count, the latest time, then each fingerprint and
/// how long before the latest it was seen (small varints).
fn encode_slots(v: &[Slot], out: &mut Vec<u8>) {
    // Callers hold at most EXACT_MAX or CAP (<= 255) keys; decode checks.
    put_u8(out, v.len() as u8);
    if let Some(latest) = v.iter().map(|s| s.t).max() {
        put_u32(out, latest);
        for s in v {
            put_u32(out, s.fp);
            put_varint(out, u64::from(latest - s.t));
        }
    }
}

fn decode_slots<const N: usize>(
    r: &mut Reader<'_>,
    max: usize,
) -> Result<SmallVec<[Slot; N]>, CodecError> {
    let n = r.len("key list", max)?;
    let mut v = SmallVec::with_capacity(n);
    if n > 0 {
        let latest = r.u32("latest sighting")?;
        for _ in 0..n {
            let fp = r.u32("fingerprint")?;
            let behind = r.varint_u32("sighting")?;
            let Some(t) = latest.checked_sub(behind) else {
                return Err(r.invalid("sighting", "before the epoch"));
            };
            v.push(Slot { fp, t });
        }
    }
    Ok(v)
}

/// Index of the least recently seen slot.
fn oldest(v: &[Slot]) -> Option<usize> {
    v.iter()
        .enumerate()
        .min_by_key(|(_, s)| s.t)
        .map(|(i, _)| i)
}

/// Distinct keys per window read at one time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DistinctCounts {
    pub m10: u32,
    pub h1: u32,
    pub h24: u32,
    /// False when the counts are sketch estimates.
    pub exact: bool,
}

impl DistinctCounts {
    /// The count for a window; the 1 m span is not tracked and reads 0.
    pub fn get(&self, span: Span) -> u32 {
        match span {
            Span::M1 => 0,
            Span::M10 => self.m10,
            Span::H1 => self.h1,
            Span::H24 => self.h24,
        }
    }
}

/// What [`Distinct::insert`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    /// The key's previous last sighting, if still held.
    pub last_seen: Option<Secs>,
    /// This insert started a sketch (for a metric).
    pub to_sketch: bool,
    /// A key that should still be held (seen since `keep_since_s`, or in
    /// the last 24 h) had to go for lack of room.
    pub evicted: bool,
}

impl Sighting {
    /// Whether the key was seen at or after `since_s` before this insert
    /// ("not new").
    pub fn seen_since(&self, since_s: Secs) -> bool {
        self.last_seen.is_some_and(|t| t >= since_s)
    }
}

/// Distinct keys over the 10 m / 1 h / 24 h windows, and each key's last
/// sighting; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct Distinct {
    /// (fingerprint, last seen), unordered, at most `EXACT_MAX`.
    list: SmallVec<[Slot; 3]>,
    /// Present while the list lacks a key of the last 24 h.
    sketch: Option<Box<Sketch>>,
}

impl Distinct {
    pub fn new() -> Distinct {
        Distinct::default()
    }

    /// Address and length of the spilled key list, for a prefetch.
    pub(super) fn spilled(&self) -> Option<(usize, usize)> {
        super::window::spilled(&self.list)
    }

    /// Records `key` seen at `at_s` with the watermark at `now_s`
    /// (`at_s <= now_s`; a later `at_s` is taken as `now_s`). Keys last seen
    /// before `keep_since_s` are forgotten, except those still in the 24 h
    /// window, which counting needs.
    pub fn insert(&mut self, key: u64, at_s: Secs, now_s: Secs, keep_since_s: Secs) -> Sighting {
        let at = at_s.min(now_s);
        let lo = Span::H24.start(now_s);
        let keep = keep_since_s.min(lo);
        let fp = fingerprint(key);
        let mut r = Sighting {
            last_seen: None,
            to_sketch: false,
            evicted: false,
        };
        if self.sketch.as_ref().is_some_and(|s| s.lost_max_s < lo) {
            self.sketch = None;
        }
        self.list.retain(|s| s.t >= keep);
        if let Some(s) = self.list.iter_mut().find(|s| s.fp == fp) {
            r.last_seen = Some(s.t);
            s.t = s.t.max(at);
        } else if at >= keep {
            if self.list.len() >= EXACT_MAX {
                let Some(i) = oldest(&self.list) else {
                    return r; // EXACT_MAX is not 0.
                };
                let victim = self.list[i].t;
                // The key that goes: the least recent of the list and this.
                let lost = victim.min(at);
                r.evicted = lost >= keep;
                if lost >= lo {
                    // A key of the last 24 h leaves the list: the counts
                    // need a sketch until it has left the window.
                    match &mut self.sketch {
                        Some(s) => s.lost_max_s = s.lost_max_s.max(lost),
                        None => {
                            let mut s = Box::new(Sketch::new(now_s, lost));
                            for slot in self.list.iter().filter(|s| s.t >= lo) {
                                s.insert(slot.fp, slot.t);
                            }
                            self.sketch = Some(s);
                            r.to_sketch = true;
                        }
                    }
                }
                if victim <= at {
                    self.list.swap_remove(i);
                }
            }
            if self.list.len() < EXACT_MAX {
                grow(&mut self.list, EXACT_MAX);
                self.list.push(Slot { fp, t: at });
            }
        }
        if at >= lo {
            if let Some(s) = &mut self.sketch {
                s.insert(fp, at);
            }
        }
        shrink(&mut self.list);
        r
    }

    /// Distinct keys per window, read at `now_s` (the watermark, or later).
    pub fn read(&self, now_s: Secs) -> DistinctCounts {
        let lo = [
            Span::M10.start(now_s),
            Span::H1.start(now_s),
            Span::H24.start(now_s),
        ];
        let c = match &self.sketch {
            None => {
                let mut c = [0u32; 3];
                for s in self.list.iter().filter(|s| s.t <= now_s) {
                    for (n, lo) in c.iter_mut().zip(lo) {
                        *n += u32::from(s.t >= lo);
                    }
                }
                c
            }
            Some(s) => s.estimate(lo),
        };
        DistinctCounts {
            m10: c[0],
            h1: c[1],
            h24: c[2],
            exact: self.sketch.is_none(),
        }
    }

    /// Whether `key` was last seen at or after `since_s`.
    pub fn contains(&self, key: u64, since_s: Secs) -> bool {
        let fp = fingerprint(key);
        self.list.iter().any(|s| s.fp == fp && s.t >= since_s)
    }

    /// Forgets what an idle entity no longer needs at `now_s`: keys seen
    /// before `keep_since_s` and out of 24 h, a sketch no longer needed.
    /// For an eviction sweep; returns whether anything went.
    pub fn expire(&mut self, now_s: Secs, keep_since_s: Secs) -> bool {
        let lo = Span::H24.start(now_s);
        let keep = keep_since_s.min(lo);
        let before = self.list.len();
        self.list.retain(|s| s.t >= keep);
        shrink(&mut self.list);
        let mut changed = self.list.len() != before;
        if self.sketch.as_ref().is_some_and(|s| s.lost_max_s < lo) {
            self.sketch = None;
            changed = true;
        }
        changed
    }

    /// Appends the encoding (see [`super::codec`]): the key list, then the
    /// sketch's non-zero cells, if any.
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        encode_slots(&self.list, out);
        match &self.sketch {
            None => put_u8(out, 0),
            Some(s) => {
                put_u8(out, 1);
                s.encode(out);
            }
        }
    }

    /// Reads what [`Distinct::encode`] wrote; at most [`EXACT_MAX`] keys.
    pub(super) fn decode(r: &mut Reader<'_>) -> Result<Distinct, CodecError> {
        let list = decode_slots(r, EXACT_MAX)?;
        let sketch = match r.u8("sketch flag")? {
            0 => None,
            1 => Some(Box::new(Sketch::decode(r)?)),
            _ => return Err(r.invalid("sketch flag", "neither 0 nor 1")),
        };
        Ok(Distinct { list, sketch })
    }

    /// Counts are exact (no sketch).
    pub fn is_exact(&self) -> bool {
        self.sketch.is_none()
    }

    /// Keys held in the list.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Heap bytes held beyond `size_of::<Self>()`.
    pub fn heap_bytes(&self) -> usize {
        spilled_bytes(&self.list)
            + self
                .sketch
                .as_ref()
                .map_or(0, |_| std::mem::size_of::<Sketch>())
    }
}

/// Register and ρ (1..=RHO_MAX) of a fingerprint.
fn register_rho(fp: u32) -> (usize, usize) {
    let h = mix(u64::from(fp));
    let j = (h >> (64 - P)) as usize;
    let rho = ((h << P).leading_zeros() as usize + 1).min(RHO_MAX);
    (j, rho)
}

/// `2^-r` for every register value, so that an estimate does not divide
/// (the same values: each is exact in `f64`).
const INV_POW2: [f64; RHO_MAX + 1] = {
    let mut t = [0.0; RHO_MAX + 1];
    let mut r = 0;
    while r <= RHO_MAX {
        t[r] = 1.0 / (1u32 << r) as f64;
        r += 1;
    }
    t
};

/// The standard HyperLogLog estimate (Flajolet et al. 2007) with linear
/// counting for small cardinalities; 64-bit hashes need no large-range
/// correction.
fn hll_estimate(registers: &[u8; M]) -> u32 {
    let m = M as f64;
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let mut sum = 0.0;
    let mut zeros = 0u32;
    for &r in registers {
        sum += INV_POW2[usize::from(r)];
        zeros += u32::from(r == 0);
    }
    let raw = alpha * m * m / sum;
    let e = if raw <= 2.5 * m && zeros > 0 {
        m * (m / f64::from(zeros)).ln()
    } else {
        raw
    };
    e.round() as u32
}

/// Minutes kept behind the newest before ticks are rebased: the 24 h window
/// plus slack.
const REBASE_KEEP_MIN: u32 = 2 * 1440;

/// A HyperLogLog whose registers remember, per ρ, the last minute they
/// were hit, so that any window ending at the watermark can be read.
/// Minutes are stored as `u16` ticks after `base_min` (0 = never).
#[derive(Debug, Clone)]
struct Sketch {
    base_min: u32,
    /// The latest last-sighting of a key the list lost: once out of the
    /// 24 h window, the list is exact again and the sketch goes.
    lost_max_s: Secs,
    ticks: [[u16; RHO_MAX]; M],
}

impl Sketch {
    fn new(now_s: Secs, lost_s: Secs) -> Sketch {
        Sketch {
            base_min: (now_s / 60).saturating_sub(REBASE_KEEP_MIN),
            lost_max_s: lost_s,
            ticks: [[0; RHO_MAX]; M],
        }
    }

    /// The tick of minute `min`, 0 when before the base.
    fn tick(&self, min: u32) -> u32 {
        if min < self.base_min {
            0
        } else {
            min - self.base_min + 1
        }
    }

    fn insert(&mut self, fp: u32, at_s: Secs) {
        let min = at_s / 60;
        if min < self.base_min {
            return; // Older than the 24 h window.
        }
        if self.tick(min) > u32::from(u16::MAX) {
            self.rebase(min.saturating_sub(REBASE_KEEP_MIN));
        }
        let t = u16::try_from(self.tick(min)).unwrap_or(u16::MAX);
        let (j, rho) = register_rho(fp);
        let cell = &mut self.ticks[j][rho - 1];
        *cell = (*cell).max(t);
    }

    /// Moves the base to `base_min`, forgetting what falls before it.
    fn rebase(&mut self, base_min: u32) {
        let shift = base_min - self.base_min;
        let move_tick = |t: u16| u16::try_from(u32::from(t).saturating_sub(shift)).unwrap_or(0);
        for row in self.ticks.iter_mut() {
            for t in row.iter_mut() {
                *t = move_tick(*t);
            }
        }
        self.base_min = base_min;
    }

    /// Appends `base_min`, `lost_max_s` and the non-zero cells, each as
    /// the gap from the previous one's index and its tick: a sketch over a
    /// few hundred keys is a few hundred cells, not 5 KB.
    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.base_min);
        put_u32(out, self.lost_max_s);
        let cells = self.ticks.as_flattened();
        put_varint(out, cells.iter().filter(|t| **t != 0).count() as u64);
        let mut prev = 0usize;
        for (i, t) in cells.iter().enumerate().filter(|(_, t)| **t != 0) {
            put_varint(out, (i - prev) as u64);
            put_varint(out, u64::from(*t));
            prev = i;
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Sketch, CodecError> {
        let mut s = Sketch {
            base_min: r.u32("sketch base")?,
            lost_max_s: r.u32("sketch lost time")?,
            ticks: [[0; RHO_MAX]; M],
        };
        let cells = s.ticks.as_flattened_mut();
        let at = r.at();
        let n = r.varint("sketch cells")?;
        if n > cells.len() as u64 {
            return Err(CodecError::TooLong {
                at,
                what: "sketch cells",
                len: n,
                max: cells.len() as u64,
            });
        }
        let mut i = 0usize;
        for k in 0..n {
            let gap = r.varint("sketch cell index")?;
            // Cells are strictly increasing: a gap of 0 only for the first.
            let next = usize::try_from(gap)
                .ok()
                .and_then(|g| i.checked_add(g))
                .filter(|&j| j < cells.len() && (k == 0 || j > i));
            let Some(j) = next else {
                return Err(r.invalid("sketch cell index", "out of range or not increasing"));
            };
            let tick = r.varint("sketch tick")?;
            let tick = match u16::try_from(tick) {
                Ok(t) if t != 0 => t,
                _ => return Err(r.invalid("sketch tick", "zero or over 65535")),
            };
            cells[j] = tick;
            i = j;
        }
        Ok(s)
    }

    /// Estimates per window, given the windows' first seconds (widening).
    fn estimate(&self, lo_s: [Secs; 3]) -> [u32; 3] {
        // Window starts are whole minutes, so minute ticks are exact.
        let lo = lo_s.map(|s| self.tick(s / 60).max(1));
        // Each window's register is the largest ρ with a tick in it (`lo` is
        // at least 1, so never-hit cells do not count). Branch-free over the
        // whole row: a busy payee or shared IP reads this every payment, and
        // the early exit it replaced mispredicted row after row (2-3x slower
        // in a stand-alone loop, with `INV_POW2`'s divisions).
        let mut regs = [[0u8; M]; 3];
        for (j, row) in self.ticks.iter().enumerate() {
            let mut best = [0u8; 3];
            for (i, &t) in row.iter().enumerate() {
                let t = u32::from(t);
                for w in 0..3 {
                    if t >= lo[w] {
                        best[w] = i as u8 + 1;
                    }
                }
            }
            for (reg, b) in regs.iter_mut().zip(best) {
                reg[j] = b;
            }
        }
        regs.map(|r| hll_estimate(&r))
    }
}

/// What [`RecentSet::insert`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recent {
    /// The key was held, seen at or after `keep_since_s`, before this insert.
    pub seen: bool,
    /// A key seen since `keep_since_s` had to go (or this one could not
    /// stay) for lack of room.
    pub evicted: bool,
}

/// Keys with their last sighting, at most `CAP` of them, `INLINE` without
/// a heap allocation; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct RecentSet<const CAP: usize, const INLINE: usize = 3> {
    /// (fingerprint, last seen), unordered.
    slots: SmallVec<[Slot; INLINE]>,
}

impl<const CAP: usize, const INLINE: usize> RecentSet<CAP, INLINE> {
    pub fn new() -> Self {
        RecentSet {
            slots: SmallVec::new(),
        }
    }

    /// Address and length of the spilled keys, for a prefetch.
    pub(super) fn spilled(&self) -> Option<(usize, usize)> {
        super::window::spilled(&self.slots)
    }

    /// Whether `key` was last seen at or after `since_s` (e.g. `now` minus
    /// 30 days, saturating).
    pub fn contains(&self, key: u64, since_s: Secs) -> bool {
        let fp = fingerprint(key);
        self.slots.iter().any(|s| s.fp == fp && s.t >= since_s)
    }

    /// Whether `key` was last seen exactly at `at_s`: event-id dedup, where
    /// a replay carries the original's time, so that a false match needs a
    /// fingerprint collision within the same second.
    pub fn contains_at(&self, key: u64, at_s: Secs) -> bool {
        let fp = fingerprint(key);
        self.slots.iter().any(|s| s.fp == fp && s.t == at_s)
    }

    /// Records `key` seen at `at_s`, forgetting keys last seen before
    /// `keep_since_s` (this one too, if it is that old).
    pub fn insert(&mut self, key: u64, at_s: Secs, keep_since_s: Secs) -> Recent {
        let fp = fingerprint(key);
        self.slots.retain(|s| s.t >= keep_since_s);
        let mut r = Recent {
            seen: false,
            evicted: false,
        };
        if let Some(s) = self.slots.iter_mut().find(|s| s.fp == fp) {
            s.t = s.t.max(at_s);
            r.seen = true;
            return r;
        }
        if at_s < keep_since_s || CAP == 0 {
            return r;
        }
        if self.slots.len() >= CAP {
            r.evicted = true;
            match oldest(&self.slots) {
                Some(i) if self.slots[i].t <= at_s => {
                    self.slots.swap_remove(i);
                }
                _ => return r, // This key is the least recent: it goes.
            }
        }
        grow(&mut self.slots, CAP);
        self.slots.push(Slot { fp, t: at_s });
        shrink(&mut self.slots);
        r
    }

    /// Forgets keys last seen before `keep_since_s`: for an eviction sweep;
    /// returns whether any went.
    pub fn expire(&mut self, keep_since_s: Secs) -> bool {
        let before = self.slots.len();
        self.slots.retain(|s| s.t >= keep_since_s);
        shrink(&mut self.slots);
        self.slots.len() != before
    }

    /// Appends the encoding (see [`super::codec`]).
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        encode_slots(&self.slots, out);
    }

    /// Reads what [`RecentSet::encode`] wrote; at most `CAP` keys (and at
    /// most 255, which every set in the store is under).
    pub(super) fn decode(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(RecentSet {
            slots: decode_slots(r, CAP.min(255))?,
        })
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Heap bytes held beyond `size_of::<Self>()`.
    pub fn heap_bytes(&self) -> usize {
        spilled_bytes(&self.slots)
    }
}

#[cfg(test)]
mod tests {
    use super::super::window::{Arrival, Window, WindowParams, EPOCH_MS};
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};
    use std::mem::size_of;

    const DAY: u32 = 86_400;
    const T0: Secs = 20 * 365 * DAY + 12_345;
    const MONTH: u32 = 30 * DAY;

    fn ms(s: Secs) -> i64 {
        EPOCH_MS + i64::from(s) * 1000
    }

    /// A plain HyperLogLog of `keys`, for the reference.
    fn plain_hll(keys: impl Iterator<Item = u64>) -> u32 {
        let mut regs = [0u8; M];
        for k in keys {
            let (j, rho) = register_rho(fingerprint(k));
            regs[j] = regs[j].max(rho as u8);
        }
        hll_estimate(&regs)
    }

    /// The naive reference: every (key, time) inserted.
    #[derive(Default)]
    struct Naive {
        seen: Vec<(u64, Secs)>,
    }

    impl Naive {
        fn last(&self) -> HashMap<u64, Secs> {
            let mut last: HashMap<u64, Secs> = HashMap::new();
            for &(k, t) in &self.seen {
                let e = last.entry(k).or_insert(t);
                *e = (*e).max(t);
            }
            last
        }

        /// Keys whose latest sighting is in the window of `span` at `now`,
        /// straight from the bucket-index definition.
        fn keys(&self, span: Span, now: Secs) -> HashSet<u64> {
            let (b, n) = (i64::from(span.bucket_s()), i64::from(span.buckets()));
            self.last()
                .into_iter()
                .filter(|&(_, t)| {
                    let (bi, bn) = (i64::from(t) / b, i64::from(now) / b);
                    bi <= bn && bi >= bn - (n - 1)
                })
                .map(|(k, _)| k)
                .collect()
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(size_of::<Slot>(), 8);
        assert_eq!(size_of::<Distinct>(), 40);
        assert_eq!(size_of::<RecentSet<64>>(), 32);
        assert_eq!(size_of::<RecentSet<64, 1>>(), 24);
        assert_eq!(size_of::<RecentSet<64, 5>>(), 48);
        assert_eq!(size_of::<Sketch>(), 5128);
        assert_eq!(size_of::<Option<Box<Sketch>>>(), 8);
        assert_eq!(size_of::<DistinctCounts>(), 16);
    }

    #[test]
    fn exact_counts_per_window() {
        let mut d = Distinct::new();
        let now = T0;
        let keep = now - MONTH;
        d.insert(1, now - 20 * 3600, now, keep);
        d.insert(2, now - 30 * 60, now, keep);
        d.insert(3, now - 60, now, keep);
        d.insert(3, now - 120, now, keep); // Older sighting: no change.
        d.insert(4, now, now, keep);
        let s = d.insert(4, now, now, keep);
        assert_eq!(s.last_seen, Some(now));
        let c = d.read(now);
        assert_eq!((c.m10, c.h1, c.h24, c.exact), (2, 3, 4, true));
        // A key seen again moves into the narrow windows.
        d.insert(1, now, now, keep);
        assert_eq!((d.read(now).m10, d.read(now).h24), (3, 4));
        // Older than 24 h but within the retention: remembered, not counted.
        let s = d.insert(9, now - 2 * DAY, now, keep);
        assert_eq!(s.last_seen, None);
        assert_eq!(d.read(now).h24, 4);
        assert!(d.contains(9, keep));
        assert!(d.insert(9, now, now, keep).seen_since(now - 3 * DAY));
        // Read a day later: all out of the windows.
        assert_eq!(d.read(now + 2 * DAY).h24, 0);
    }

    #[test]
    fn new_key_within_the_retention() {
        let mut d = Distinct::new();
        d.insert(7, T0, T0, 0);
        let later = T0 + MONTH;
        let s = d.insert(7, later, later, later - MONTH);
        assert!(s.seen_since(later - MONTH), "exactly 30 days: not new");
        let much_later = later + MONTH + 1;
        let s = d.insert(7, much_later, much_later, much_later - MONTH);
        assert_eq!(s.last_seen, None, "forgotten after 30 days");
    }

    #[test]
    fn goes_to_sketch_and_back() {
        let mut d = Distinct::new();
        let keep = T0 - MONTH;
        for k in 0..EXACT_MAX as u64 {
            assert!(!d.insert(k, T0, T0, keep).to_sketch);
        }
        assert!(d.is_exact());
        assert_eq!(d.read(T0).h24, EXACT_MAX as u32);
        assert!(d.heap_bytes() <= EXACT_MAX * size_of::<Slot>());
        let s = d.insert(1000, T0, T0, keep);
        assert!(s.to_sketch && s.evicted);
        assert!(!d.is_exact());
        let c = d.read(T0);
        assert!(!c.exact);
        // Linear counting at 33 keys in 128 registers: within a few.
        assert!((29..=37).contains(&c.h24), "{c:?}");
        assert_eq!(d.len(), EXACT_MAX, "the list keeps the most recent");
        assert!(d.contains(1000, T0));
        // A day and more of silence: back to exact, memory freed.
        d.expire(T0 + DAY + 3600, T0 + DAY);
        assert!(d.is_exact());
        assert_eq!(d.heap_bytes(), 0);
        assert_eq!(d.read(T0 + DAY + 3600).h24, 0);
        // Same through insert.
        let t = T0 + 2 * DAY;
        for k in 0..100 {
            d.insert(k, t, t, t - MONTH);
        }
        assert!(!d.is_exact());
        let t = T0 + 4 * DAY;
        d.insert(7, t, t, t - MONTH);
        assert!(d.is_exact());
        assert_eq!(d.read(t).h24, 1);
    }

    #[test]
    fn old_keys_make_room_without_a_sketch() {
        // 40 payees over a month, 3 a day: the list turns over, counts stay
        // exact.
        let mut d = Distinct::new();
        for i in 0..90u32 {
            let t = T0 + i * 8 * 3600;
            let s = d.insert(u64::from(i % 40), t, t, t.saturating_sub(MONTH));
            assert!(!s.to_sketch);
        }
        assert!(d.is_exact());
        assert_eq!(d.len(), EXACT_MAX);
        assert_eq!(d.read(T0 + 89 * 8 * 3600).h24, 3);
    }

    #[test]
    fn a_burst_costs_a_sketch_for_a_day_only() {
        let mut d = Distinct::new();
        let month = |t: Secs| t - MONTH;
        for k in 0..100u64 {
            d.insert(k, T0, T0, month(T0));
        }
        assert!(!d.is_exact());
        // Then steady traffic to 5 keys, every 10 minutes, never idle.
        for i in 1..=(2 * DAY / 600) {
            let t = T0 + i * 600;
            d.insert(1000 + u64::from(i % 5), t, t, month(t));
            let c = d.read(t);
            // Exact again once the burst's keys are out of the window.
            assert_eq!(c.exact, Span::H24.start(t) > T0, "at +{} s", t - T0);
        }
        assert_eq!(d.read(T0 + 2 * DAY).h24, 5);
        assert!(d.heap_bytes() <= EXACT_MAX * size_of::<Slot>());
    }

    #[test]
    fn sketch_error_is_within_its_stated_bound() {
        // Deterministic keys; 1.04/sqrt(128) = 9.2 %. Allow 3 sigma.
        for (n, seed) in [(100u64, 1u64), (1_000, 2), (10_000, 3), (200_000, 4)] {
            let mut d = Distinct::new();
            for i in 0..n {
                d.insert(mix(i ^ (seed << 40)), T0, T0, T0);
            }
            let e = f64::from(d.read(T0).h24);
            let err = (e - n as f64).abs() / n as f64;
            assert!(err < 0.28, "n {n}: estimate {e}, error {err}");
        }
    }

    #[test]
    fn a_flood_of_keys_stays_bounded() {
        // Bad input: a payer paying a new payee every 50 ms for 2 days.
        let mut d = Distinct::new();
        let cap = size_of::<Sketch>() + EXACT_MAX * size_of::<Slot>();
        for i in 0..3_456_000u64 {
            let t = T0 + (i / 20) as u32;
            d.insert(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), t, t, t - MONTH);
            if i % 100_000 == 0 {
                assert!(d.heap_bytes() <= cap, "{}", d.heap_bytes());
            }
        }
        assert!(d.heap_bytes() <= cap);
        let c = d.read(T0 + 2 * DAY - 1);
        // The 24 h window holds 23-24 h of keys: ~1.7M distinct.
        assert!(c.h24 > 1_000_000, "{c:?}");
    }

    #[test]
    fn sketch_survives_clock_jumps() {
        let mut d = Distinct::new();
        for k in 0..500 {
            d.insert(k, T0, T0, 0);
        }
        // Far back: not counted.
        d.insert(99_999, 0, T0, 0);
        assert!(d.read(T0).h24 < 560);
        // Ahead by 40 days, beyond the u16 tick range from the base: the
        // old keys are forgotten, the sketch goes back to exact.
        let later = T0 + 40 * DAY;
        d.insert(1, later, later, later - MONTH);
        assert!(d.is_exact());
        assert_eq!(d.read(later).h24, 1);
        // Steady traffic over 60 days forces rebases inside the sketch.
        let mut d = Distinct::new();
        let mut naive = Naive::default();
        for i in 0..60 * 24 * 4u32 {
            let t = T0 + i * 900;
            for k in 0..40u64 {
                let key = u64::from(i % 7) * 1000 + k;
                d.insert(key, t, t, t - MONTH);
                naive.seen.push((key, t));
            }
        }
        assert!(!d.is_exact());
        let now = T0 + (60 * 24 * 4 - 1) * 900;
        let expect = plain_hll(naive.keys(Span::H24, now).into_iter());
        assert_eq!(d.read(now).h24, expect);
    }

    #[test]
    fn recent_set_horizon_boundary() {
        let mut s: RecentSet<8> = RecentSet::new();
        let r = s.insert(5, T0, T0 - 100);
        assert_eq!(
            r,
            Recent {
                seen: false,
                evicted: false
            }
        );
        assert!(s.contains(5, T0));
        assert!(!s.contains(5, T0 + 1));
        assert!(s.contains_at(5, T0) && !s.contains_at(5, T0 - 1));
        assert!(s.insert(5, T0 + 100, T0).seen);
        assert!(!s.insert(5, T0 + 301, T0 + 101).seen);
        // Already forgotten at insert: not stored.
        s.insert(6, T0, T0 + 1);
        assert!(!s.contains(6, 0));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn recent_set_evicts_the_least_recent() {
        let mut s: RecentSet<4> = RecentSet::new();
        for k in 0..4 {
            assert!(!s.insert(k, T0 + k as u32, T0).evicted);
        }
        let r = s.insert(10, T0 + 10, T0);
        assert_eq!(
            r,
            Recent {
                seen: false,
                evicted: true
            }
        );
        assert!(!s.contains(0, T0), "the least recent went");
        assert!(s.contains(1, T0) && s.contains(10, T0));
        // A key older than all others is not let in.
        let r = s.insert(11, T0, T0);
        assert!(r.evicted);
        assert!(!s.contains(11, T0));
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn recent_set_memory_is_capped() {
        let mut s: RecentSet<48> = RecentSet::new();
        for k in 0..1_000_000u64 {
            let t = T0 + (k / 10) as u32;
            s.insert(k, t, t - MONTH);
        }
        assert_eq!(s.len(), 48);
        assert_eq!(s.heap_bytes(), 48 * size_of::<Slot>());
        s.expire(T0 + 1000 * DAY);
        assert!(s.is_empty());
        assert_eq!(s.heap_bytes(), 0);
    }

    /// Keys from small pools, so that repeats are common.
    fn key() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..8, 0u64..40, any::<u64>()]
    }

    /// Seconds relative to the watermark: out of order, late, jumps.
    fn dt() -> impl Strategy<Value = i64> {
        prop_oneof![
            4 => 0i64..30,
            2 => -600i64..0,
            2 => 0i64..5000,
            1 => -100_000i64..100_000,
            1 => -(4 * 86_400i64)..(4 * 86_400),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Exact mode agrees exactly with the naive reference; sketch mode
        /// agrees exactly with a plain HyperLogLog of the keys the reference
        /// puts in each window. Last sightings agree while nothing was
        /// evicted.
        #[test]
        fn distinct_agrees_with_reference(
            steps in prop::collection::vec((dt(), key()), 1..400),
            lateness in 0u32..900,
            retention in prop_oneof![Just(0u32), 0u32..(3 * 86_400)],
        ) {
            let p = WindowParams { lateness_s: lateness, keep: Span::H24 };
            let mut w: Window = Window::new();
            let mut d = Distinct::new();
            let mut naive = Naive::default();
            let mut evicted = false;
            for (dt, k) in steps {
                let t_ms = ms(w.watermark().max(T0)) + dt * 1000;
                let s = w.add(t_ms, 1, &p);
                let keep = s.now_s.saturating_sub(retention);
                let last = naive.last().get(&k).copied().filter(|&t| {
                    t >= keep.min(Span::H24.start(s.now_s))
                });
                let got = d.insert(k, s.at_s, s.now_s, keep);
                evicted |= got.evicted;
                if !evicted {
                    prop_assert_eq!(got.last_seen, last);
                }
                naive.seen.push((k, s.at_s));
                let c = d.read(s.now_s);
                for (span, got) in [(Span::M10, c.m10), (Span::H1, c.h1), (Span::H24, c.h24)] {
                    let keys = naive.keys(span, s.now_s);
                    let want = if c.exact {
                        keys.len() as u32
                    } else {
                        plain_hll(keys.into_iter())
                    };
                    prop_assert_eq!(got, want, "{:?} exact {}", span, c.exact);
                    prop_assert_eq!(c.get(span), got);
                }
            }
        }

        /// RecentSet with room to spare agrees with the naive "seen since"
        /// definition.
        #[test]
        fn recent_set_agrees_with_reference(
            steps in prop::collection::vec((dt(), key(), 1u32..4000), 1..300),
        ) {
            let mut s: RecentSet<1024> = RecentSet::new();
            let mut naive: Vec<(u64, Secs)> = Vec::new();
            let mut now = T0;
            let mut keep_max = 0;
            for (dt, k, horizon) in steps {
                let t = (i64::from(now) + dt).clamp(0, i64::from(u32::MAX)) as Secs;
                now = now.max(t);
                // Forgetting is monotone in a real store: the since only grows.
                let keep = now.saturating_sub(horizon).max(keep_max);
                keep_max = keep;
                let want = naive.iter().any(|&(nk, at)| nk == k && at >= keep);
                prop_assert_eq!(s.contains(k, keep), want);
                let r = s.insert(k, t, keep);
                prop_assert_eq!(r.seen, want);
                prop_assert!(!r.evicted);
                naive.push((k, t));
            }
        }

        /// Replays of an event id within the dedup horizon change no
        /// feature: window + RecentSet against a reference that keeps every
        /// accepted event and decides replays from the definition.
        #[test]
        fn replays_change_nothing(
            steps in prop::collection::vec((dt(), 0u64..30, 1i64..10_000), 1..300),
            horizon in 60u32..20_000,
        ) {
            let p = WindowParams { lateness_s: 120, keep: Span::H24 };
            let mut w: Window = Window::new();
            let mut ids: RecentSet<4096> = RecentSet::new();
            // Each id's first time and amount: a replay repeats them.
            let mut first: HashMap<u64, (i64, i64)> = HashMap::new();
            // Reference: (id, event second, counted at, amount) of every
            // accepted event.
            let mut accepted: Vec<(u64, Secs, Secs, i64)> = Vec::new();
            for (dt, id, amount) in steps {
                let fresh = ms(w.watermark().max(T0)) + dt * 1000;
                let (t_ms, amount) = *first.entry(id).or_insert((fresh, amount));
                let s = w.stamp(t_ms, p.lateness_s);
                let since = s.now_s.saturating_sub(horizon);
                let replay = accepted
                    .iter()
                    .any(|&(i, ev, _, _)| i == id && ev == s.event_s && ev >= since);
                let dup = ids.contains_at(id, s.event_s) && s.event_s >= since;
                prop_assert_eq!(dup, replay);
                if !dup {
                    prop_assert_eq!(w.add(t_ms, amount, &p), s);
                    ids.insert(id, s.event_s, since);
                    accepted.push((id, s.event_s, s.at_s, amount));
                }
                let t = w.read(Span::H24);
                for span in Span::ALL {
                    let (n, sum) = accepted
                        .iter()
                        .filter(|e| span.contains(e.2, w.watermark()))
                        .fold((0, 0), |(n, sum), e| (n + 1, sum + e.3));
                    prop_assert_eq!((t.count(span), t.sum(span)), (n, sum));
                }
            }
        }
    }

    /// What a payer costs for a realistic mix, with the per-payer state the
    /// feature issue needs built from these parts:
    ///
    /// | part | what |
    /// |---|---|
    /// | `Window` (64 B) | count and sum, 1 m … 24 h |
    /// | `Distinct` (40 B) | distinct payees 1 h / 24 h, new payee (30 days) |
    /// | `RecentSet<32>` (32 B) | devices, IPs (30 days) and event ids (dedup), salted |
    /// | 48 B | last time, mean/variance, max amount, last location |
    ///
    /// Heap is counted as glibc allocates it (8-byte header, 16-byte
    /// chunks, 32 bytes minimum), plus 16 bytes per map entry for the key
    /// and hash-table control. Printed with `--nocapture`; the figures are
    /// in the module docs.
    fn payer_bytes(dedup_horizon: u32) -> [usize; 4] {
        #[derive(Default)]
        struct Payer {
            window: Window,
            payees: Distinct,
            seen: RecentSet<32>,
            _scalars: [u64; 6],
        }
        let malloc = |b: usize| {
            if b == 0 {
                0
            } else {
                (b + 8).div_ceil(16).max(2) * 16
            }
        };
        let p = WindowParams::default();
        let payers = 1_000u64;
        let days = 31u32;
        let mut state: Vec<Payer> = (0..payers).map(|_| Payer::default()).collect();
        // 90 % pay ~3 a day to ~8 regular payees from 2 devices and a few
        // IPs; 9 % pay ~30 a day to ~40 payees; 1 % pay ~500 a day to
        // thousands (payout accounts, bots).
        let mut rng = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            rng = mix(rng.wrapping_add(0x9e37_79b9_7f4a_7c15));
            rng
        };
        let mut events = Vec::new();
        for a in 0..payers {
            let (per_day, payees, devices, ips) = match a % 100 {
                0 => (500u64, 5_000u64, 3u64, 50u64),
                1..=9 => (30, 40, 2, 6),
                _ => (3, 8, 2, 4),
            };
            for _ in 0..per_day * u64::from(days) {
                let t = T0 + (next() % u64::from(days * DAY)) as u32;
                events.push((t, a, next() % payees, next() % devices, next() % ips));
            }
        }
        events.sort_unstable();
        for (i, &(t, a, payee, device, ip)) in events.iter().enumerate() {
            let st = &mut state[a as usize];
            let s = st.window.add(ms(t), 1000, &p);
            assert_eq!(s.arrival, Arrival::InOrder);
            let id = (i as u64) | 3 << 62;
            let month = s.now_s.saturating_sub(MONTH);
            if st.seen.contains_at(id, s.event_s) {
                continue;
            }
            st.payees.insert(payee, s.at_s, s.now_s, month);
            st.seen.insert(device | 1 << 62, s.at_s, month);
            st.seen.insert(ip | 2 << 62, s.at_s, month);
            st.seen
                .insert(id, s.event_s, s.now_s.saturating_sub(dedup_horizon));
        }
        let mut total = [0usize; 3]; // common, moderate, very active
        let mut n = [0usize; 3];
        for (a, st) in state.iter().enumerate() {
            let class = match a % 100 {
                0 => 2,
                1..=9 => 1,
                _ => 0,
            };
            total[class] += size_of::<Payer>()
                + 16
                + malloc(st.window.heap_bytes())
                + malloc(st.payees.heap_bytes().min(EXACT_MAX * 8))
                + st.payees
                    .heap_bytes()
                    .saturating_sub(EXACT_MAX * 8)
                    .div_ceil(16)
                    * 16
                + malloc(st.seen.heap_bytes());
            n[class] += 1;
            if a == 5 || a == 50 {
                println!(
                    "payer {a}: window {} buckets {} B, payees {} keys {} B, seen {} keys {} B",
                    st.window.len(),
                    st.window.heap_bytes(),
                    st.payees.len(),
                    st.payees.heap_bytes(),
                    st.seen.len(),
                    st.seen.heap_bytes()
                );
            }
        }
        let avg = total.iter().sum::<usize>() / payers as usize;
        [total[0] / n[0], total[1] / n[1], total[2] / n[2], avg]
    }

    #[test]
    fn bytes_per_payer_for_a_realistic_mix() {
        for horizon in [3600, DAY] {
            let [common, moderate, active, avg] = payer_bytes(horizon);
            println!(
                "dedup horizon {horizon} s: bytes per payer: common {common}, \
                 moderate {moderate}, very active {active}; average {avg}"
            );
            if horizon == 3600 {
                assert!(avg < 512, "average {avg} bytes per payer");
            }
        }
    }
}

//! Durable, replicated state, engine side: consistent incremental snapshots
//! and the transaction journal (undo log). Pure and synchronous: the stream
//! layer decides when to cut, where the bytes go, and when a transaction
//! commits or aborts.
//!
//! # Epochs
//! The store keeps an epoch counter `E` (starts at 1). Every entity carries
//! a `Meta`: the epoch of its last modification and the id of the
//! snapshot cut that last exported it. A cut and a transaction start each
//! close the current epoch (`E += 1`) under a brief store-wide gate that
//! waits for the payments in flight (`update_and_read` holds it shared), so
//! every payment is wholly before or wholly after the boundary. Before a
//! payment changes an entity it calls `Tracker::touch`: when the entity
//! was already changed in this epoch that is one comparison; otherwise, with
//! no cut walking and no transaction open, one relaxed load and a store of
//! the epoch. Only when a cut or a transaction needs it does the slow path
//! encode the entity's pre-image, once per entity per epoch.
//!
//! # Snapshots
//! A cut taken at epoch `hi` holds every entity changed in `[lo, hi]` (`lo`
//! is one past the previous completed cut, or 0 for a full cut) as it was
//! at the cut, plus tombstones for entities removed since the previous cut.
//! The walk ([`SnapshotCut::export`]) runs while scoring goes on: it
//! exports an entity still unchanged since the cut from the live map
//! (taking one shard lock at a time, never while calling back) and marks it
//! exported; a writer about to change an entity the cut still needs (in the
//! range, not yet exported) first saves its pre-image in the cut's side
//! table, which the walk emits at its end, as it does for entities removed
//! after the cut. Removals (sweeper TTL and cap evictions, aborts, `remove`)
//! are recorded, once a snapshot was taken or loaded, for the next cut's
//! tombstones.
//!
//! # Transactions
//! While one is open, the first change of each entity journals its
//! pre-image ("absent" when it creates the entity); abort puts every
//! journaled entity back and removes the ones created since, and resets the
//! store watermark; commit drops the journal. A closed journal costs
//! nothing but the epoch check above.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use thiserror::Error;

use super::codec::{self, CodecError, EntityKey, EntityKind};
use super::table::Table;
use super::{Account, FeatureStore, Kit};

/// A cut is walking.
const CUT: u8 = 1;
/// A transaction is open.
const TXN: u8 = 2;

/// Per-entity bookkeeping, 8 bytes; not part of the encoded value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Meta {
    /// Epoch of the last change (0: loaded from a snapshot, unchanged).
    pub(super) epoch: u32,
    /// Id of the cut that last exported this entity from the live map.
    pub(super) exported_in: u32,
}

/// What the journal needs of an entity.
pub(super) trait Tracked {
    const KIND: EntityKind;
    fn meta(&self) -> Meta;
    fn meta_mut(&mut self) -> &mut Meta;
    fn encode(&self, out: &mut Vec<u8>);
}

impl Tracked for Account {
    const KIND: EntityKind = EntityKind::Account;
    fn meta(&self) -> Meta {
        self.meta
    }
    fn meta_mut(&mut self) -> &mut Meta {
        &mut self.meta
    }
    fn encode(&self, out: &mut Vec<u8>) {
        codec::encode_account(self, out);
    }
}

impl Tracked for Kit {
    const KIND: EntityKind = EntityKind::Kit;
    fn meta(&self) -> Meta {
        self.meta
    }
    fn meta_mut(&mut self) -> &mut Meta {
        &mut self.meta
    }
    fn encode(&self, out: &mut Vec<u8>) {
        codec::encode_kit(self, out);
    }
}

/// Accounts are boxed in their map.
impl<T: Tracked> Tracked for Box<T> {
    const KIND: EntityKind = T::KIND;
    fn meta(&self) -> Meta {
        (**self).meta()
    }
    fn meta_mut(&mut self) -> &mut Meta {
        (**self).meta_mut()
    }
    fn encode(&self, out: &mut Vec<u8>) {
        (**self).encode(out);
    }
}

/// Misuse of the transaction or snapshot API, or a journal that cannot be
/// replayed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StateError {
    #[error("a transaction is already open")]
    TxnOpen,
    #[error("no transaction is open")]
    NoTxn,
    #[error("this snapshot cut is no longer current (a newer cut replaced it, or it is another store's)")]
    StaleCut,
    /// A journaled pre-image did not decode: a bug; the other entities were
    /// restored.
    #[error("{failed} journaled pre-images did not decode (first: {first})")]
    Undo { failed: usize, first: CodecError },
}

/// An in-progress cut: which epochs it holds and what writers saved for it.
struct Cut {
    id: u32,
    lo: u32,
    hi: u32,
    tombstones: Vec<EntityKey>,
    /// Pre-images of entities changed or removed after the cut before the
    /// walk exported them, in `arena`.
    side: Vec<(EntityKey, Range<usize>)>,
    arena: Vec<u8>,
}

/// One segment of an open transaction: from its start epoch until the next
/// [`FeatureStore::seal_txn`] (or the end).
struct Txn {
    start: u32,
    watermark: u32,
    /// Pre-images in first-change order; `None` = created in the segment.
    undo: Vec<(EntityKey, Option<Range<usize>>)>,
    arena: Vec<u8>,
}

/// What the mutex guards: everything that is not on the fast path.
#[derive(Default)]
struct Logs {
    /// Removals are recorded (a snapshot was taken or loaded).
    tracking: bool,
    /// Entities were loaded from a snapshot (so the first cut is not full).
    loaded: bool,
    /// The next incremental cut starts at this epoch.
    next_lo: u32,
    /// The last completed cut's range start and tombstones, to redo them
    /// if its records were not delivered.
    last_lo: u32,
    last_tombstones: Vec<EntityKey>,
    removed: Vec<EntityKey>,
    last_cut_id: u32,
    cut: Option<Cut>,
    /// The open transaction's segments, oldest first (a pipelined stream
    /// seals one and scores into the next while the first commits);
    /// journaling goes to the newest. Empty: no transaction open.
    txn: std::collections::VecDeque<Txn>,
}

impl Logs {
    /// Saves what a cut and an open transaction need of `ent` before it
    /// changes or goes, given its bookkeeping `m`. Under the mutex, so it
    /// re-checks what the lock-free pre-check saw.
    fn save<T: Tracked>(&mut self, key: EntityKey, ent: &T, m: Meta) {
        if let Some(c) = &mut self.cut {
            if (c.lo..=c.hi).contains(&m.epoch) && m.exported_in != c.id {
                let at = c.arena.len();
                ent.encode(&mut c.arena);
                c.side.push((key, at..c.arena.len()));
            }
        }
        if let Some(t) = self.txn.back_mut() {
            if m.epoch < t.start {
                let at = t.arena.len();
                ent.encode(&mut t.arena);
                t.undo.push((key, Some(at..t.arena.len())));
            }
        }
    }
}

/// The snapshot and transaction state of a [`FeatureStore`].
pub(super) struct Tracker {
    /// Shared by each `update_and_read`, exclusive for an instant at a cut
    /// or a transaction boundary.
    gate: RwLock<()>,
    /// The current epoch `E`.
    epoch: AtomicU32,
    /// `CUT | TXN`, and below their parameters, for the lock-free pre-check
    /// (written under the gate and the mutex).
    active: AtomicU8,
    cut_lo: AtomicU32,
    cut_hi: AtomicU32,
    cut_id: AtomicU32,
    txn_start: AtomicU32,
    tracking: AtomicBool,
    logs: Mutex<Logs>,
}

impl Tracker {
    pub(super) fn new() -> Tracker {
        Tracker {
            gate: RwLock::new(()),
            epoch: AtomicU32::new(1),
            active: AtomicU8::new(0),
            cut_lo: AtomicU32::new(0),
            cut_hi: AtomicU32::new(0),
            cut_id: AtomicU32::new(0),
            txn_start: AtomicU32::new(0),
            tracking: AtomicBool::new(false),
            logs: Mutex::new(Logs {
                next_lo: 1,
                ..Logs::default()
            }),
        }
    }

    /// Held (shared) around one payment; returns the epoch its changes
    /// are stamped with, which cannot move while the guard lives.
    #[inline]
    pub(super) fn enter(&self) -> (RwLockReadGuard<'_, ()>, u32) {
        let g = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        (g, self.epoch.load(Ordering::Relaxed))
    }

    fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn logs(&self) -> MutexGuard<'_, Logs> {
        self.logs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Before a payment changes `ent` (under its shard lock and the gate):
    /// stamps the epoch, saving the pre-image first when a cut or a
    /// transaction needs it.
    #[inline]
    pub(super) fn touch<T: Tracked>(&self, key: u64, ent: &mut T, epoch: u32) {
        if ent.meta().epoch != epoch {
            if self.active.load(Ordering::Relaxed) != 0 {
                self.touch_slow(key, ent);
            }
            ent.meta_mut().epoch = epoch;
        }
    }

    #[cold]
    #[inline(never)]
    fn touch_slow<T: Tracked>(&self, key: u64, ent: &T) {
        let m = ent.meta();
        let active = self.active.load(Ordering::Relaxed);
        let cut = active & CUT != 0
            && m.epoch >= self.cut_lo.load(Ordering::Relaxed)
            && m.epoch <= self.cut_hi.load(Ordering::Relaxed)
            && m.exported_in != self.cut_id.load(Ordering::Relaxed);
        let txn = active & TXN != 0 && m.epoch < self.txn_start.load(Ordering::Relaxed);
        if cut || txn {
            let key = EntityKey { kind: T::KIND, key };
            self.logs().save(key, ent, m);
        }
    }

    /// A payment created an entity (stamped `epoch` by the caller): an open
    /// transaction removes it on abort.
    #[inline]
    pub(super) fn created(&self, kind: EntityKind, key: u64) {
        if self.active.load(Ordering::Relaxed) & TXN != 0 {
            if let Some(t) = self.logs().txn.back_mut() {
                t.undo.push((EntityKey { kind, key }, None));
            }
        }
    }

    /// The sweeper is about to remove `ent` (under its shard lock, without
    /// the gate): saves what a cut or transaction needs, and records the
    /// removal for the next cut's tombstones.
    pub(super) fn removing<T: Tracked>(&self, key: u64, ent: &T) {
        let key = EntityKey { kind: T::KIND, key };
        let mut logs = self.logs();
        logs.save(key, ent, ent.meta());
        if logs.tracking {
            logs.removed.push(key);
        }
    }

    /// The sweeper trims `ent` with `f` (which says whether it changed
    /// anything): like a payment's change, but outside the gate. Without a
    /// cut or transaction no lock is taken: the epoch is read (acquire)
    /// before the flags, and a boundary sets the flags before it publishes
    /// the new epoch (release), so a sweeper that missed the flag stamps
    /// the old epoch, and its trim counts as made before the boundary (in
    /// the cut, or in a transaction's pre-image). Otherwise the epoch is
    /// re-read under the mutex and the pre-image kept only if `f` changed
    /// something.
    pub(super) fn sweeping<T: Tracked>(
        &self,
        key: u64,
        ent: &mut T,
        f: impl FnOnce(&mut T) -> bool,
    ) {
        let epoch = self.epoch.load(Ordering::Acquire);
        if ent.meta().epoch == epoch || self.active.load(Ordering::Relaxed) == 0 {
            if f(ent) {
                ent.meta_mut().epoch = epoch;
            }
            return;
        }
        let mut logs = self.logs();
        let epoch = self.epoch.load(Ordering::Relaxed);
        let m = ent.meta();
        if m.epoch == epoch || (logs.cut.is_none() && logs.txn.is_empty()) {
            if f(ent) {
                ent.meta_mut().epoch = epoch;
            }
            return;
        }
        let key = EntityKey { kind: T::KIND, key };
        let marks = (
            logs.cut.as_ref().map(|c| (c.side.len(), c.arena.len())),
            logs.txn.back().map(|t| (t.undo.len(), t.arena.len())),
        );
        logs.save(key, ent, m);
        if f(ent) {
            ent.meta_mut().epoch = epoch;
        } else {
            // Unchanged: forget the pre-images just saved.
            if let (Some(c), Some((n, a))) = (&mut logs.cut, marks.0) {
                c.side.truncate(n);
                c.arena.truncate(a);
            }
            if let (Some(t), Some((n, a))) = (logs.txn.back_mut(), marks.1) {
                t.undo.truncate(n);
                t.arena.truncate(a);
            }
        }
    }

    /// Records removals from now on (after a snapshot was loaded).
    fn track(&self) {
        if !self.tracking.load(Ordering::Relaxed) {
            let mut logs = self.logs();
            logs.tracking = true;
            logs.loaded = true;
            self.tracking.store(true, Ordering::Relaxed);
        }
    }
}

/// A consistent cut of the store, taken by [`FeatureStore::begin_snapshot`]
/// and walked by [`SnapshotCut::export`]. Plain data (`Send`, `'static`):
/// the walk may run on another thread. Dropping it without exporting leaves
/// the cut active (its side table growing) until the next
/// `begin_snapshot`, which replaces it and covers its range too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotCut {
    id: u32,
    lo: u32,
    hi: u32,
    full: bool,
}

/// What one export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Entities written from the live maps.
    pub live: usize,
    /// Entities written from pre-images (changed or removed after the cut
    /// before the walk reached them).
    pub pre_images: usize,
    pub tombstones: usize,
    /// Bytes of values written.
    pub bytes: usize,
}

impl SnapshotCut {
    /// True when this cut holds every entity (the first cut of a fresh
    /// store, or [`FeatureStore::begin_full_snapshot`]).
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// Walks the cut: calls `f(key, Some(value))` for every entity changed
    /// since the previous completed cut, exactly as it was at the cut, and
    /// `f(key, None)` (tombstones, first) for every entity removed since.
    /// A key may come as a tombstone and then a value (removed, then
    /// created again before the cut): apply in order. Scoring goes on
    /// meanwhile; `f` is never called with a lock held, and the walk holds
    /// one shard lock at a time. The cut counts as completed when this
    /// returns `Ok`; if its records then fail to reach the topic, call
    /// [`FeatureStore::snapshot_not_delivered`].
    pub fn export(
        self,
        store: &FeatureStore,
        mut f: impl FnMut(EntityKey, Option<&[u8]>),
    ) -> Result<ExportReport, StateError> {
        let t = &store.tracker;
        let tombstones = match &t.logs().cut {
            Some(c) if c.id == self.id => c.tombstones.clone(),
            _ => return Err(StateError::StaleCut),
        };
        let mut r = ExportReport::default();
        for k in &tombstones {
            f(*k, None);
            r.tombstones += 1;
        }
        let mut buf = Vec::with_capacity(4096);
        self.walk(
            &store.accounts,
            EntityKind::Account,
            &mut buf,
            &mut r,
            &mut f,
        );
        self.walk(&store.kit, EntityKind::Kit, &mut buf, &mut r, &mut f);
        let cut = {
            let mut logs = t.logs();
            match &logs.cut {
                Some(c) if c.id == self.id => {}
                _ => return Err(StateError::StaleCut),
            }
            let cut = logs.cut.take();
            t.active.fetch_and(!CUT, Ordering::Relaxed);
            logs.last_lo = self.lo;
            logs.next_lo = self.hi + 1;
            logs.last_tombstones = tombstones;
            cut
        };
        if let Some(c) = cut {
            for (k, range) in c.side {
                if let Some(v) = c.arena.get(range) {
                    f(k, Some(v));
                    r.pre_images += 1;
                    r.bytes += v.len();
                }
            }
        }
        Ok(r)
    }

    /// Exports the entities of one map still unchanged since the cut. The
    /// keys are collected first (read locks, one shard at a time), then each
    /// entity is encoded under its own lock and handed to `f` after.
    fn walk<V: Tracked>(
        &self,
        map: &Table<V>,
        kind: EntityKind,
        buf: &mut Vec<u8>,
        r: &mut ExportReport,
        f: &mut impl FnMut(EntityKey, Option<&[u8]>),
    ) {
        let in_cut = |m: Meta| (self.lo..=self.hi).contains(&m.epoch) && m.exported_in != self.id;
        let mut keys: Vec<u64> = Vec::new();
        map.for_each(|k, v| {
            if in_cut(v.meta()) {
                keys.push(*k);
            }
        });
        for key in keys {
            buf.clear();
            {
                let Some(mut e) = map.get_mut(&key) else {
                    continue; // Removed since: its pre-image is in the side table.
                };
                if !in_cut(e.meta()) {
                    continue; // Changed since: likewise.
                }
                e.encode(buf);
                e.meta_mut().exported_in = self.id;
            }
            f(EntityKey { kind, key }, Some(buf));
            r.live += 1;
            r.bytes += buf.len();
        }
    }
}

/// What a transaction's end did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxnReport {
    /// Entities journaled (changed at least once during the transaction).
    pub journaled: usize,
    /// Of which created during it.
    pub created: usize,
    pub journal_bytes: usize,
}

impl FeatureStore {
    /// Takes a consistent cut: waits for the payments in flight, closes the
    /// epoch, and returns a handle to walk with [`SnapshotCut::export`].
    /// Incremental: the cut holds what changed since the previous completed
    /// cut (everything, for the first cut of a fresh store; what changed
    /// since loading, for a store restored from a snapshot). If a cut is
    /// still walking it is replaced, and the new one covers its range too.
    /// Thread-safe; the pause is one store-wide exclusive gate, held for a
    /// few instructions.
    pub fn begin_snapshot(&self) -> SnapshotCut {
        self.cut(false)
    }

    /// [`FeatureStore::begin_snapshot`] holding every entity (to rewrite a
    /// topic from scratch), plus the tombstones of the entities removed
    /// since the previous cut.
    pub fn begin_full_snapshot(&self) -> SnapshotCut {
        self.cut(true)
    }

    fn cut(&self, full: bool) -> SnapshotCut {
        let t = &self.tracker;
        let _gate = t.exclusive();
        let mut logs = t.logs();
        let hi = t.epoch.load(Ordering::Relaxed);
        let mut tombstones = std::mem::take(&mut logs.removed);
        let mut lo = logs.next_lo;
        if let Some(old) = logs.cut.take() {
            // Never completed: its range and tombstones are still owed.
            lo = lo.min(old.lo);
            tombstones.extend(old.tombstones);
        }
        if full {
            lo = 0;
        }
        tombstones.sort_unstable();
        tombstones.dedup();
        logs.last_cut_id = logs.last_cut_id.wrapping_add(1).max(1);
        let id = logs.last_cut_id;
        logs.cut = Some(Cut {
            id,
            lo,
            hi,
            tombstones,
            side: Vec::new(),
            arena: Vec::new(),
        });
        logs.tracking = true;
        t.tracking.store(true, Ordering::Relaxed);
        t.cut_lo.store(lo, Ordering::Relaxed);
        t.cut_hi.store(hi, Ordering::Relaxed);
        t.cut_id.store(id, Ordering::Relaxed);
        t.active.fetch_or(CUT, Ordering::Relaxed);
        // After the flag (see `Tracker::sweeping`). Epochs are u32: at one
        // cut or transaction per 100 ms they last 13 years of uptime.
        t.epoch.store(hi + 1, Ordering::Release);
        SnapshotCut {
            id,
            lo,
            hi,
            full: lo == 0 || (lo == 1 && !logs.loaded),
        }
    }

    /// The last exported cut's records did not all reach the topic: the
    /// next cut covers its range and tombstones again.
    pub fn snapshot_not_delivered(&self) {
        let mut logs = self.tracker.logs();
        logs.next_lo = logs.next_lo.min(logs.last_lo);
        let again = std::mem::take(&mut logs.last_tombstones);
        logs.removed.extend(again);
    }

    /// Opens a transaction: from now until [`FeatureStore::commit_txn`] or
    /// [`FeatureStore::abort_txn`], the first change of every entity, by
    /// any thread (stream or in-line), journals its pre-image. The stream
    /// loop owns the transaction; one at a time. Waits for the payments in
    /// flight, so each payment is wholly inside or outside it.
    pub fn begin_txn(&self) -> Result<(), StateError> {
        let t = &self.tracker;
        let _gate = t.exclusive();
        let mut logs = t.logs();
        if !logs.txn.is_empty() {
            return Err(StateError::TxnOpen);
        }
        self.open_segment(&mut logs);
        t.active.fetch_or(TXN, Ordering::Relaxed);
        Ok(())
    }

    /// Closes the current segment of the open transaction and starts the
    /// next: a pipelined stream seals the transaction it is committing and
    /// scores the next one's payments while the commit runs. Then
    /// [`FeatureStore::commit_txn`] keeps the oldest segment's changes (the
    /// committed transaction) and [`FeatureStore::abort_txn`] puts back
    /// every segment's. Waits for the payments in flight.
    pub fn seal_txn(&self) -> Result<(), StateError> {
        let t = &self.tracker;
        let _gate = t.exclusive();
        let mut logs = t.logs();
        if logs.txn.is_empty() {
            return Err(StateError::NoTxn);
        }
        self.open_segment(&mut logs);
        Ok(())
    }

    /// Starts a journal segment at a new epoch (under the gate and the mutex).
    fn open_segment(&self, logs: &mut Logs) {
        let t = &self.tracker;
        let start = t.epoch.load(Ordering::Relaxed) + 1;
        logs.txn.push_back(Txn {
            start,
            watermark: self.watermark.load(Ordering::Relaxed),
            undo: Vec::new(),
            arena: Vec::new(),
        });
        t.txn_start.store(start, Ordering::Relaxed);
        t.epoch.store(start, Ordering::Release);
    }

    /// Whether a transaction is open.
    pub fn txn_open(&self) -> bool {
        self.tracker.active.load(Ordering::Relaxed) & TXN != 0
    }

    /// Keeps every change of the transaction's oldest segment (everything
    /// since [`FeatureStore::begin_txn`] when it was never sealed) and drops
    /// its journal; the transaction stays open while a newer segment does.
    /// Waits for the payments in flight.
    pub fn commit_txn(&self) -> Result<TxnReport, StateError> {
        let t = &self.tracker;
        let _gate = t.exclusive();
        let mut logs = t.logs();
        let Some(txn) = logs.txn.pop_front() else {
            return Err(StateError::NoTxn);
        };
        if logs.txn.is_empty() {
            t.active.fetch_and(!TXN, Ordering::Relaxed);
        }
        Ok(report(&txn))
    }

    /// Puts the store back exactly as it was at [`FeatureStore::begin_txn`]
    /// (or at the oldest segment's start, when segments were committed
    /// since): every entity changed since gets its pre-image back, every
    /// entity created since is removed, and the store watermark is reset.
    /// This undoes *every* payment since then, in-line ones included; the
    /// caller must feed again each one whose effect should stay: the stream
    /// re-consumes from the transaction's start offsets, and in-line
    /// payments come back when their records in the payments topic are
    /// consumed (if those were among the aborted, they are re-consumed with
    /// them). Entity counters stay right. Evictions by the sweeper during
    /// the transaction are undone too. Waits for the payments in flight and
    /// holds them off until done (a pause of about a microsecond per
    /// journaled entity).
    pub fn abort_txn(&self) -> Result<TxnReport, StateError> {
        let t = &self.tracker;
        let _gate = t.exclusive();
        let segments = {
            let mut logs = t.logs();
            if logs.txn.is_empty() {
                return Err(StateError::NoTxn);
            }
            t.active.fetch_and(!TXN, Ordering::Relaxed);
            std::mem::take(&mut logs.txn)
        };
        let epoch = t.epoch.load(Ordering::Relaxed);
        let mut failed = 0;
        let mut first = None;
        let mut total = TxnReport::default();
        // Newest segment first, latest first within one: an entity is
        // journaled once per segment, unless a cut re-marked it; the
        // earliest pre-image must win.
        for txn in segments.iter().rev() {
            for (key, image) in txn.undo.iter().rev() {
                let image = image
                    .as_ref()
                    .map(|r| txn.arena.get(r.clone()).unwrap_or(&[]));
                if let Err(e) = self.put(*key, image, epoch) {
                    failed += 1;
                    first.get_or_insert(e);
                }
            }
            let r = report(txn);
            total.journaled += r.journaled;
            total.created += r.created;
            total.journal_bytes += r.journal_bytes;
        }
        if let Some(oldest) = segments.front() {
            self.watermark.store(oldest.watermark, Ordering::Relaxed);
        }
        match first {
            None => Ok(total),
            Some(first) => Err(StateError::Undo { failed, first }),
        }
    }

    /// Loads one entity of a snapshot (`value`) into the store, replacing
    /// any entity with that key. For a store being restored before it
    /// scores: the entity is not journaled and counts as unchanged for
    /// incremental snapshots (it is already in the topic). Raises the
    /// store watermark to the entity's last activity. Thread-safe.
    pub fn restore(&self, key: EntityKey, value: &[u8]) -> Result<(), CodecError> {
        self.tracker.track();
        self.put(key, Some(value), 0)
    }

    /// Applies a tombstone of a snapshot: removes the entity, if held.
    pub fn remove(&self, key: EntityKey) -> bool {
        self.tracker.track();
        match key.kind {
            EntityKind::Account => self.drop_account(key.key),
            EntityKind::Kit => self.drop_kit(key.key),
        }
    }

    /// One record of the snapshot topic, as read: a 9-byte key and a value,
    /// `None` for a tombstone.
    pub fn apply_snapshot_record(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), CodecError> {
        let key = EntityKey::from_bytes(key)?;
        match value {
            Some(v) => self.restore(key, v),
            None => {
                self.remove(key);
                Ok(())
            }
        }
    }

    /// After loading a snapshot (a full cut and the incremental ones on
    /// top): sets the store watermark to the latest activity of any entity
    /// held, and re-bases the entity counters on the maps. [`restore`] only
    /// raises the watermark, which is right for cuts that only move
    /// forward, but a cut after an aborted transaction can move an entity
    /// back. Walks every entity (one shard lock at a time).
    ///
    /// [`restore`]: FeatureStore::restore
    pub fn finish_restore(&self) {
        let mut wm = 0;
        self.accounts.for_each(|_, a| wm = wm.max(a.last_active()));
        self.kit
            .for_each(|_, k| wm = wm.max(k.payments.watermark()));
        self.watermark.store(wm, Ordering::Relaxed);
        self.n_accounts
            .store(self.accounts.len(), Ordering::Relaxed);
        self.n_kit.store(self.kit.len(), Ordering::Relaxed);
        self.publish_gauges();
    }

    /// Appends the encoding of one entity to `out`; false when not held.
    pub fn encode_entity(&self, key: EntityKey, out: &mut Vec<u8>) -> bool {
        match key.kind {
            EntityKind::Account => self.accounts.get(&key.key).map(|a| a.encode(out)),
            EntityKind::Kit => self.kit.get(&key.key).map(|k| k.encode(out)),
        }
        .is_some()
    }

    /// Sets an entity to `image` (decoded) or removes it (`None`), stamped
    /// `epoch`, keeping counters, watermark and cut right.
    fn put(&self, key: EntityKey, image: Option<&[u8]>, epoch: u32) -> Result<(), CodecError> {
        let Some(bytes) = image else {
            match key.kind {
                EntityKind::Account => self.drop_account(key.key),
                EntityKind::Kit => self.drop_kit(key.key),
            };
            return Ok(());
        };
        match key.kind {
            EntityKind::Account => {
                let mut a = Box::new(codec::decode_account(bytes)?);
                a.meta.epoch = epoch;
                self.watermark.fetch_max(a.last_active(), Ordering::Relaxed);
                replace(&self.tracker, &self.accounts, key.key, a, || {
                    self.counted(&self.n_accounts, self.cfg.max_accounts)
                });
            }
            EntityKind::Kit => {
                let mut k = codec::decode_kit(bytes)?;
                k.meta.epoch = epoch;
                self.watermark
                    .fetch_max(k.payments.watermark(), Ordering::Relaxed);
                replace(&self.tracker, &self.kit, key.key, k, || {
                    self.counted(&self.n_kit, self.cfg.max_kit)
                });
            }
        }
        Ok(())
    }

    fn drop_account(&self, key: u64) -> bool {
        let gone = self
            .accounts
            .remove_if(&key, |k, a| {
                self.tracker.removing(*k, &**a);
                true
            })
            .is_some();
        if gone {
            self.n_accounts.fetch_sub(1, Ordering::Relaxed);
        }
        gone
    }

    fn drop_kit(&self, key: u64) -> bool {
        let gone = self
            .kit
            .remove_if(&key, |k, v| {
                self.tracker.removing(*k, v);
                true
            })
            .is_some();
        if gone {
            self.n_kit.fetch_sub(1, Ordering::Relaxed);
        }
        gone
    }
}

/// Inserts or replaces an entity; a replaced one first gives a cut walking
/// its pre-image. `added` runs when the key was not held.
fn replace<V: Tracked>(t: &Tracker, map: &Table<V>, key: u64, value: V, added: impl FnOnce()) {
    let new = map.put(key, value, |old| {
        if t.active.load(Ordering::Relaxed) != 0 {
            t.logs()
                .save(EntityKey { kind: V::KIND, key }, old, old.meta());
        }
    });
    if new {
        added();
    }
}

fn report(txn: &Txn) -> TxnReport {
    TxnReport {
        journaled: txn.undo.len(),
        created: txn.undo.iter().filter(|(_, i)| i.is_none()).count(),
        journal_bytes: txn.arena.len(),
    }
}

//! The entity table: a sharded open-addressing hash map from a 64-bit entity
//! key (already an ahash of the identifier) to its state, built so that a
//! payment can ask for all of its entities' slots before it touches any.
//!
//! # Why not DashMap
//! A payment touches five entities in five random places of two tables of
//! millions of entries: each lookup is a cache miss, and each entity's lock
//! is an atomic read-modify-write, a full barrier on x86, so with DashMap
//! the misses of one entity cannot overlap the next one's and a payment pays
//! them one after the other. Here the slot of a key is an address computed
//! without a lock ([`Table::prefetch`]: the shard publishes where its array
//! is), so the store prefetches every entity's slot first, then locks them
//! one at a time; the misses are in flight together.
//!
//! # Layout
//! - Shard: the key's top 8 bits; each shard an [`RwLock`] around its own
//!   array, so that a writer blocks one 256th of the table, a grow copies one
//!   256th, and the lock words sit apart (one cache line per shard).
//! - Slot: `Option<(u64, V)>`, linear probing from `key & mask`. Values are
//!   stored in the slot: boxed accounts make a 16-byte slot, four to a cache
//!   line; devices, phones and IPs are inline.
//! - Load at most 7/8; the array doubles past it. Removal shifts the rest of
//!   the probe run back (no tombstones), so a lookup stops at the first empty
//!   slot and a table that churns does not fill with dead slots.
//!
//! The keys are uniform 64-bit hashes, so they are used as they are: no
//! second hash.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

const SHARD_BITS: u32 = 8;
const SHARDS: usize = 1 << SHARD_BITS;
/// First array of a shard that gets an entry.
const MIN_SLOTS: usize = 16;

type Slot<V> = Option<(u64, V)>;

struct Slots<V> {
    slots: Vec<Slot<V>>,
    len: usize,
}

impl<V> Slots<V> {
    #[inline]
    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    /// The index holding `key`, or `Err` with the empty slot where it would go
    /// (`Err(usize::MAX)` when there is no array yet).
    #[inline]
    fn find(&self, key: u64) -> Result<usize, usize> {
        if self.slots.is_empty() {
            return Err(usize::MAX);
        }
        let mask = self.mask();
        let mut i = key as usize & mask;
        loop {
            match &self.slots[i] {
                Some((k, _)) if *k == key => return Ok(i),
                Some(_) => i = (i + 1) & mask,
                None => return Err(i),
            }
        }
    }

    /// Puts an entry known to be absent into an array with room.
    fn place(&mut self, key: u64, value: V) -> usize {
        let mask = self.mask();
        let mut i = key as usize & mask;
        while self.slots[i].is_some() {
            i = (i + 1) & mask;
        }
        self.slots[i] = Some((key, value));
        i
    }

    /// Room for one more entry; true when the array moved.
    fn reserve_one(&mut self) -> bool {
        let cap = self.slots.len();
        if (self.len + 1) * 8 <= cap * 7 {
            return false;
        }
        let new_cap = (cap * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, empty_slots(new_cap));
        for (k, v) in old.into_iter().flatten() {
            self.place(k, v);
        }
        true
    }

    /// Removes the entry at `i`, shifting back the rest of its probe run.
    fn remove_at(&mut self, mut i: usize) -> (u64, V) {
        let mask = self.mask();
        let gone = self.slots[i].take();
        self.len -= 1;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let Some((k, _)) = &self.slots[j] else { break };
            // The entry at j may fill the hole at i when its home is not in
            // the cyclic range (i, j].
            let home = *k as usize & mask;
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(i) & mask) {
                self.slots[i] = self.slots[j].take();
                i = j;
            }
        }
        gone.unwrap_or_else(|| unreachable!("remove_at on an empty slot"))
    }

    /// After slots were emptied in place: moves every entry to where a
    /// lookup finds it. Walking from an empty slot round the array and
    /// re-placing each entry is enough, because an entry never moves past
    /// its old position.
    fn repair(&mut self) {
        let cap = self.slots.len();
        let Some(start) = self.slots.iter().position(Option::is_none) else {
            return;
        };
        for step in 1..cap {
            let i = (start + step) & (cap - 1);
            if let Some((k, v)) = self.slots[i].take() {
                self.place(k, v);
            }
        }
    }
}

fn empty_slots<V>(n: usize) -> Vec<Slot<V>> {
    let mut v = Vec::with_capacity(n);
    v.resize_with(n, || None);
    v
}

/// One shard: the lock, and where its array is for lock-free prefetching
/// (written under the write lock; a stale pair only prefetches a wrong
/// line). A cache line of its own, so neighbouring shards' locks do not
/// bounce together.
#[repr(align(64))]
struct Shard<V> {
    lock: RwLock<Slots<V>>,
    base: AtomicUsize,
    mask: AtomicUsize,
}

impl<V> Shard<V> {
    fn read(&self) -> RwLockReadGuard<'_, Slots<V>> {
        self.lock.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Slots<V>> {
        self.lock.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, s: &Slots<V>) {
        self.base
            .store(s.slots.as_ptr() as usize, Ordering::Relaxed);
        self.mask.store(s.mask(), Ordering::Relaxed);
    }
}

/// See the module docs.
pub(super) struct Table<V> {
    shards: Box<[Shard<V>]>,
}

/// A held entry, read-locked (its shard).
pub(super) struct Ref<'a, V> {
    guard: RwLockReadGuard<'a, Slots<V>>,
    i: usize,
}

/// A held entry, write-locked (its shard).
pub(super) struct RefMut<'a, V> {
    guard: RwLockWriteGuard<'a, Slots<V>>,
    i: usize,
}

impl<V> Ref<'_, V> {
    #[cfg(test)]
    pub(super) fn key(&self) -> &u64 {
        &entry(&self.guard.slots[self.i]).0
    }

    pub(super) fn value(&self) -> &V {
        &entry(&self.guard.slots[self.i]).1
    }
}

impl<V> std::ops::Deref for Ref<'_, V> {
    type Target = V;
    fn deref(&self) -> &V {
        self.value()
    }
}

impl<V> std::ops::Deref for RefMut<'_, V> {
    type Target = V;
    fn deref(&self) -> &V {
        &entry(&self.guard.slots[self.i]).1
    }
}

impl<V> std::ops::DerefMut for RefMut<'_, V> {
    fn deref_mut(&mut self) -> &mut V {
        match &mut self.guard.slots[self.i] {
            Some((_, v)) => v,
            None => unreachable!("a held slot is occupied"),
        }
    }
}

#[inline]
fn entry<V>(s: &Slot<V>) -> &(u64, V) {
    match s {
        Some(e) => e,
        None => unreachable!("a held slot is occupied"),
    }
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table::new()
    }
}

impl<V> Table<V> {
    pub(super) fn new() -> Table<V> {
        let shards = (0..SHARDS)
            .map(|_| Shard {
                lock: RwLock::new(Slots {
                    slots: Vec::new(),
                    len: 0,
                }),
                base: AtomicUsize::new(0),
                mask: AtomicUsize::new(0),
            })
            .collect();
        Table { shards }
    }

    #[inline]
    fn shard(&self, key: u64) -> &Shard<V> {
        &self.shards[(key >> (64 - SHARD_BITS)) as usize]
    }

    /// Asks the CPU to fetch the cache line of `key`'s home slot (and the
    /// next, when a slot spans two), without a lock. A hint only.
    #[inline]
    pub(super) fn prefetch(&self, key: u64) {
        let sh = self.shard(key);
        let base = sh.base.load(Ordering::Relaxed);
        if base == 0 {
            return;
        }
        let size = std::mem::size_of::<Slot<V>>();
        let at = base + (key as usize & sh.mask.load(Ordering::Relaxed)) * size;
        super::prefetch::lines(at, size);
    }

    pub(super) fn get(&self, key: &u64) -> Option<Ref<'_, V>> {
        let guard = self.shard(*key).read();
        let i = guard.find(*key).ok()?;
        Some(Ref { guard, i })
    }

    pub(super) fn get_mut(&self, key: &u64) -> Option<RefMut<'_, V>> {
        let guard = self.shard(*key).write();
        let i = guard.find(*key).ok()?;
        Some(RefMut { guard, i })
    }

    #[cfg(test)]
    pub(super) fn contains_key(&self, key: &u64) -> bool {
        self.shard(*key).read().find(*key).is_ok()
    }

    /// The entry of `key`, made with `make` when absent (the bool: made).
    #[inline]
    pub(super) fn get_or_insert_with(
        &self,
        key: u64,
        make: impl FnOnce() -> V,
    ) -> (RefMut<'_, V>, bool) {
        let sh = self.shard(key);
        let mut guard = sh.write();
        if let Ok(i) = guard.find(key) {
            return (RefMut { guard, i }, false);
        }
        if guard.reserve_one() {
            sh.publish(&guard);
        }
        let i = guard.place(key, make());
        guard.len += 1;
        (RefMut { guard, i }, true)
    }

    /// Sets `key` to `value`; `replacing` sees the value it replaces, and
    /// the result says whether the key was new.
    pub(super) fn put(&self, key: u64, value: V, replacing: impl FnOnce(&V)) -> bool {
        let sh = self.shard(key);
        let mut guard = sh.write();
        match guard.find(key) {
            Ok(i) => {
                if let Some((_, old)) = &mut guard.slots[i] {
                    replacing(old);
                    *old = value;
                }
                false
            }
            Err(_) => {
                if guard.reserve_one() {
                    sh.publish(&guard);
                }
                guard.place(key, value);
                guard.len += 1;
                true
            }
        }
    }

    /// Removes `key` when `f` agrees (under the shard's write lock).
    pub(super) fn remove_if(
        &self,
        key: &u64,
        f: impl FnOnce(&u64, &V) -> bool,
    ) -> Option<(u64, V)> {
        let mut guard = self.shard(*key).write();
        let i = guard.find(*key).ok()?;
        let (k, v) = entry(&guard.slots[i]);
        if !f(k, v) {
            return None;
        }
        Some(guard.remove_at(i))
    }

    /// Keeps the entries for which `f` is true; one shard write-locked at a
    /// time, `f` called once per entry.
    pub(super) fn retain(&self, mut f: impl FnMut(&u64, &mut V) -> bool) {
        for sh in self.shards.iter() {
            let mut guard = sh.write();
            let mut removed = 0;
            for s in guard.slots.iter_mut() {
                if let Some((k, v)) = s {
                    if !f(k, v) {
                        *s = None;
                        removed += 1;
                    }
                }
            }
            if removed > 0 {
                guard.len -= removed;
                guard.repair();
            }
        }
    }

    /// Calls `f` on every entry; one shard read-locked at a time.
    pub(super) fn for_each(&self, mut f: impl FnMut(&u64, &V)) {
        for sh in self.shards.iter() {
            let guard = sh.read();
            for (k, v) in guard.slots.iter().flatten() {
                f(k, v);
            }
        }
    }

    /// Entries held (each shard read-locked in turn).
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len).sum()
    }

    /// Every entry, for tests: locks its shard per entry, so under
    /// concurrent writers an entry can be missed or seen twice.
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = Ref<'_, V>> {
        let mut at = (0usize, 0usize);
        std::iter::from_fn(move || loop {
            let sh = self.shards.get(at.0)?;
            let guard = sh.read();
            if at.1 >= guard.slots.len() {
                at = (at.0 + 1, 0);
                continue;
            }
            let i = at.1;
            at.1 += 1;
            if guard.slots[i].is_some() {
                return Some(Ref { guard, i });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    /// Keys spread over the shards and colliding in their home slots: the
    /// low bits repeat, so probe runs form and wrap round small arrays.
    fn key(i: u64) -> u64 {
        (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) & 0xff00_0000_0000_0000) | (i % 7)
    }

    fn contents(t: &Table<u64>) -> HashMap<u64, u64> {
        let mut m = HashMap::new();
        t.for_each(|k, v| {
            assert!(m.insert(*k, *v).is_none(), "key {k} twice");
        });
        m
    }

    #[test]
    fn insert_get_remove_grow_iterate() {
        let t: Table<u64> = Table::new();
        let mut model = HashMap::new();
        for i in 0..5_000u64 {
            let (mut v, made) = t.get_or_insert_with(key(i), || i);
            assert_eq!(made, !model.contains_key(&key(i)), "{i}");
            *v += 1;
            *model.entry(key(i)).or_insert(i) += 1;
        }
        assert_eq!(t.len(), model.len());
        for (k, v) in &model {
            assert_eq!(*t.get(k).expect("held"), *v);
            assert!(t.contains_key(k));
        }
        // Remove every third key, one by one (backward shift).
        let keys: Vec<u64> = model.keys().copied().collect();
        for k in keys.iter().step_by(3) {
            assert!(t.remove_if(k, |_, _| false).is_none());
            let (rk, rv) = t.remove_if(k, |_, _| true).expect("held");
            assert_eq!((rk, Some(rv)), (*k, model.remove(k)));
            assert!(!t.contains_key(k));
        }
        assert_eq!(contents(&t), model);
        // Retain half of the rest in place (bulk repair).
        t.retain(|_, v| *v % 2 == 0);
        model.retain(|_, v| *v % 2 == 0);
        assert_eq!(contents(&t), model);
        assert_eq!(t.len(), model.len());
        for k in &keys {
            assert_eq!(t.get(k).map(|v| *v), model.get(k).copied());
        }
        // Replace and insert through `put`.
        let held = *model.keys().next().expect("some kept");
        let mut replaced = None;
        assert!(!t.put(held, 7, |old| replaced = Some(*old)));
        assert_eq!(replaced, Some(model[&held]));
        assert!(t.put(42, 9, |_| panic!("42 is new")));
        assert_eq!(*t.get_mut(&42).expect("held"), 9);
        let n = t.iter().count();
        assert_eq!(n, t.len());
        assert!(t
            .iter()
            .all(|e| *e.key() == 42 || model.contains_key(e.key())));
    }

    #[test]
    fn removal_keeps_wrapped_runs_findable() {
        // One shard, keys homed at the last slots so runs wrap round to 0.
        let t: Table<u64> = Table::new();
        let ks: Vec<u64> = (0..12).map(|i| 13 + i % 3 + (i << 20)).collect();
        for (i, k) in ks.iter().enumerate() {
            t.get_or_insert_with(*k, || i as u64);
        }
        for (n, k) in ks.iter().enumerate() {
            t.remove_if(k, |_, _| true).expect("held");
            for (i, other) in ks.iter().enumerate().skip(n + 1) {
                assert_eq!(t.get(other).map(|v| *v), Some(i as u64));
            }
        }
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn concurrent_writers_and_readers() {
        let t: Arc<Table<u64>> = Arc::new(Table::new());
        let threads: Vec<_> = (0..4u64)
            .map(|th| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        // Every thread adds 1 to the same 2,000 keys.
                        let k = (i % 2_000).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                        *t.get_or_insert_with(k, || 0).0 += 1;
                        t.prefetch(key(i + th));
                        if i % 100 == 0 {
                            let _ = t.len();
                        }
                    }
                })
            })
            .collect();
        for h in threads {
            h.join().expect("no panic");
        }
        assert_eq!(t.len(), 2_000);
        t.for_each(|_, v| assert_eq!(*v, 40));
    }
}

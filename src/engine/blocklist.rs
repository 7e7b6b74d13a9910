//! The in-memory list of suspicious accounts, e-wallets, cards, phones,
//! devices and IPs, and its matcher.
//!
//! # Layout
//! A [`Table`] is an immutable open-addressing hash table built once by a
//! [`TableBuilder`] (linear probing at a load of at most 0.7): an array of
//! 32-byte slots, each a 64-bit key (a hash of kind + canonical value) with
//! its [`Meta`] packed beside it, and in front of it an array of 16-bit tags
//! (a few bits of each slot's key; 0 marks an empty slot). A lookup probes
//! the tags (32 to a cache line) and reads a slot only where the tag
//! matches: a miss, the usual case, touches one tag line and with one
//! chance in 65,535 a probe a slot; a hit one tag line and one slot line.
//! At 10 M entries the tags take 27 MiB, about what the last-level cache
//! holds, where the keys alone took 109 MiB. Arrays of 2 MiB and more are mapped on
//! their own and advised for transparent huge pages (`MADV_HUGEPAGE`): with
//! 4 KiB pages a random slot of a 10 M table misses the TLB as well as the
//! caches, and under a hypervisor that page walk costs more than the miss.
//! Reasons and sources are interned per table: a shared list repeats a
//! handful of them millions of times. About 49 bytes an entry at 10 M.
//!
//! A [`Blocklist`] stacks three tables, searched newest first:
//! `topic_delta` (recent topic records, tombstones included) over
//! `topic` (a compacted snapshot of the topic) over `files`. A topic batch
//! rebuilds only the small delta, a file change only the file table, so a
//! pushed entry never costs a rebuild of a 10 M-entry file list.
//!
//! # Keys
//! Values are hashed in their canonical spelling, built in a stack buffer
//! (no allocation per lookup): upper case without spaces or dashes; phones
//! in E.164 (`country_code` turns a national `0…` into `+<cc>…`); accounts,
//! e-wallets and cards either bare (`12345678`: any bank) or qualified by
//! bank code (`VCB:12345678`: that bank only). A payment's account is
//! looked up both ways, but only where the list holds entries of that form.
//!
//! A 64-bit key means two different values could share a key: with 10 M
//! entries the chance that a given unlisted value matches is about 5e-13.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use super::decision::Decision;
pub use crate::engine::rules::expr::ListedEntry;
use crate::event::{AccountKind, Payment};

/// What a list entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ListKind {
    #[default]
    Account,
    Ewallet,
    Phone,
    Device,
    Ip,
    Card,
}

impl ListKind {
    /// Every kind, in discriminant order.
    pub const ALL: [ListKind; 6] = [
        ListKind::Account,
        ListKind::Ewallet,
        ListKind::Phone,
        ListKind::Device,
        ListKind::Ip,
        ListKind::Card,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ListKind::Account => "account",
            ListKind::Ewallet => "ewallet",
            ListKind::Phone => "phone",
            ListKind::Device => "device",
            ListKind::Ip => "ip",
            ListKind::Card => "card",
        }
    }

    /// Parses a kind name as files and topic keys spell it (any case;
    /// `e-wallet` too), without allocating.
    pub fn parse(s: &str) -> Option<ListKind> {
        let s = s.trim();
        let names: [(&str, ListKind); 7] = [
            ("account", ListKind::Account),
            ("ewallet", ListKind::Ewallet),
            ("e-wallet", ListKind::Ewallet),
            ("card", ListKind::Card),
            ("phone", ListKind::Phone),
            ("device", ListKind::Device),
            ("ip", ListKind::Ip),
        ];
        names
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|(_, k)| *k)
    }

    pub(crate) fn for_account(kind: AccountKind) -> ListKind {
        match kind {
            AccountKind::Ewallet => ListKind::Ewallet,
            AccountKind::Card => ListKind::Card,
            AccountKind::Account | AccountKind::Unspecified => ListKind::Account,
        }
    }

    /// Kinds whose values may be qualified by a bank code (`BANK:NUMBER`).
    fn bank_qualified(self) -> bool {
        matches!(self, ListKind::Account | ListKind::Ewallet | ListKind::Card)
    }
}

/// One list entry, owned: what sources produce and tools build lists from.
#[derive(Debug, Clone, PartialEq)]
pub struct ListEntry {
    pub kind: ListKind,
    /// As given; normalised when hashed. `BANK:NUMBER` for a bank-qualified
    /// account, e-wallet or card.
    pub value: String,
    pub reason: String,
    /// Who listed it (the national scheme, an internal team, a file name).
    pub source: String,
    pub action: Decision,
    pub added_at_ms: Option<i64>,
    pub expires_at_ms: Option<i64>,
}

/// An entry as a parser sees it, borrowed from the source's bytes.
#[derive(Debug, Clone, Copy)]
pub struct EntryRef<'a> {
    pub kind: ListKind,
    pub value: &'a str,
    pub reason: &'a str,
    pub source: &'a str,
    pub action: Decision,
    pub added_at_ms: Option<i64>,
    pub expires_at_ms: Option<i64>,
}

impl Default for ListEntry {
    fn default() -> ListEntry {
        ListEntry {
            kind: ListKind::Account,
            value: String::new(),
            reason: String::new(),
            source: String::new(),
            action: Decision::Hold,
            added_at_ms: None,
            expires_at_ms: None,
        }
    }
}

impl EntryRef<'_> {
    pub fn to_entry(&self) -> ListEntry {
        ListEntry {
            kind: self.kind,
            value: self.value.to_string(),
            reason: self.reason.to_string(),
            source: self.source.to_string(),
            action: self.action,
            added_at_ms: self.added_at_ms,
            expires_at_ms: self.expires_at_ms,
        }
    }
}

impl ListEntry {
    pub fn as_ref(&self) -> EntryRef<'_> {
        EntryRef {
            kind: self.kind,
            value: &self.value,
            reason: &self.reason,
            source: &self.source,
            action: self.action,
            added_at_ms: self.added_at_ms,
            expires_at_ms: self.expires_at_ms,
        }
    }
}

/// What a table keeps of an entry besides its key: 24 bytes.
#[derive(Debug, Clone, Copy)]
struct Meta {
    /// 0: never.
    expires_at_ms: i64,
    /// 0: not given.
    added_at_ms: i64,
    reason: u32,
    source: u16,
    kind: ListKind,
    /// [`STATE_REMOVED`] (a topic tombstone in a delta), or the action.
    state: u8,
}

const STATE_REMOVED: u8 = 0;

/// A table slot: the key, then its [`Meta`] packed (see [`Meta::pack`]).
type Slot = [u64; 4];

impl Meta {
    /// `[key, expires_at_ms, added_at_ms, reason | source << 32 | kind << 48
    /// | state << 56]`.
    fn pack(&self, key: u64) -> Slot {
        [
            key,
            self.expires_at_ms as u64,
            self.added_at_ms as u64,
            u64::from(self.reason)
                | (u64::from(self.source) << 32)
                | ((self.kind as u64) << 48)
                | (u64::from(self.state) << 56),
        ]
    }

    #[inline]
    fn unpack(s: &Slot) -> Meta {
        let w = s[3];
        Meta {
            expires_at_ms: s[1] as i64,
            added_at_ms: s[2] as i64,
            reason: w as u32,
            source: (w >> 32) as u16,
            kind: ListKind::ALL
                .get(usize::from((w >> 48) as u8))
                .copied()
                .unwrap_or_default(),
            state: (w >> 56) as u8,
        }
    }
}

/// The tag of a key in the tag array: 16 of its low bits (the home slot
/// comes from its high bits), never 0 (an empty slot).
#[inline]
fn tag(key: u64) -> u16 {
    (key as u16).max(1)
}

/// A zeroed array of the table. From 2 MiB up it is an anonymous mapping of
/// its own advised for transparent huge pages (see the module docs; the
/// advice is a hint: where THP is off it works with small pages); smaller
/// ones live on the heap.
#[derive(Debug)]
enum Zeroed<T> {
    Heap(Box<[T]>),
    Mapped(memmap2::MmapMut, PhantomData<T>),
}

impl<T: bytemuck::Pod> Zeroed<T> {
    const MAP_FROM_BYTES: usize = 2 << 20;

    fn new(n: usize) -> Zeroed<T> {
        let bytes = n.saturating_mul(std::mem::size_of::<T>());
        if bytes >= Self::MAP_FROM_BYTES {
            if let Ok(m) = memmap2::MmapMut::map_anon(bytes) {
                #[cfg(target_os = "linux")]
                let _ = m.advise(memmap2::Advice::HugePage);
                return Zeroed::Mapped(m, PhantomData);
            }
        }
        Zeroed::Heap(vec![T::zeroed(); n].into_boxed_slice())
    }
}

impl<T: bytemuck::Pod> Deref for Zeroed<T> {
    type Target = [T];

    #[inline]
    fn deref(&self) -> &[T] {
        match self {
            Zeroed::Heap(b) => b,
            Zeroed::Mapped(m, _) => bytemuck::cast_slice(m),
        }
    }
}

impl<T: bytemuck::Pod> DerefMut for Zeroed<T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            Zeroed::Heap(b) => b,
            Zeroed::Mapped(m, _) => bytemuck::cast_slice_mut(m),
        }
    }
}

/// The "file number" of entries that always replace an earlier one for the
/// same key (owned entry lists, topic records).
const REPLACE: u16 = u16::MAX;

fn state_of(action: Decision) -> u8 {
    match action {
        Decision::Allow | Decision::Review => 1,
        Decision::Hold => 2,
    }
}

fn action_of(state: u8) -> Decision {
    if state == 2 {
        Decision::Hold
    } else {
        Decision::Review
    }
}

/// Hashes canonical spellings. Every table and every lookup uses the same
/// seeds, so keys built by a parser match keys built at lookup.
#[derive(Debug, Clone)]
pub struct Keyer {
    hasher: ahash::RandomState,
    /// Country calling code (digits) for national phone numbers: with "84",
    /// "0912 345 678" is "+84912345678". Empty: no national numbers.
    country_code: Box<str>,
}

/// The canonical bytes of a value, in a stack buffer.
struct Canon {
    buf: [u8; 96],
    n: usize,
    fits: bool,
}

impl Canon {
    fn new() -> Canon {
        Canon {
            buf: [0; 96],
            n: 0,
            fits: true,
        }
    }

    fn push(&mut self, b: u8) {
        if self.n < self.buf.len() {
            self.buf[self.n] = b;
            self.n += 1;
        } else {
            self.fits = false;
        }
    }

    /// Upper case, no spaces or dashes (ASCII; others go the slow way).
    /// Spaces are what [`normalise`] (and `str::trim`) call white space:
    /// `u8::is_ascii_whitespace` leaves out U+000B (vertical tab), and a
    /// value must hash the same whichever way it goes.
    fn push_plain(&mut self, raw: &str) {
        if !raw.is_ascii() {
            self.fits = false;
            return;
        }
        for c in raw.bytes() {
            if !(c.is_ascii_whitespace() || c == 0x0B) && c != b'-' {
                self.push(c.to_ascii_uppercase());
            }
        }
    }
}

/// Normalises a value for storage and lookup: no spaces or dashes, upper case.
pub fn normalise(value: &str) -> String {
    value
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_uppercase)
        .collect()
}

/// Set in a key's hash domain for bank-qualified keys (kinds are < 0x80).
const QUALIFIED: u8 = 0x80;

impl Keyer {
    pub fn new(country_code: &str) -> Keyer {
        Keyer {
            hasher: ahash::RandomState::with_seeds(0xb10c, 0x1157, 0x5eed, 0xf00d),
            country_code: country_code.trim().trim_start_matches('+').into(),
        }
    }

    fn finish(&self, kind: ListKind, c: &Canon) -> u64 {
        self.finish_in(kind as u8, c)
    }

    /// `domain` is the kind, with [`QUALIFIED`] set for a bank-qualified
    /// key: the two spaces never share a key, whatever the spelling.
    fn finish_in(&self, domain: u8, c: &Canon) -> u64 {
        let h = self.hasher.hash_one((domain, &c.buf[..c.n]));
        // 0 marks an empty slot.
        h.max(1)
    }

    /// The key a listed value is stored under, as a list spells it: for an
    /// account, e-wallet or card, `BANK:NUMBER` is the qualified key of
    /// that bank's number ([`Keyer::qualified_key`]) and anything else the
    /// bare key ([`Keyer::bare_key`]); for the other kinds, the bare key.
    pub fn key(&self, kind: ListKind, raw: &str) -> u64 {
        if kind.bank_qualified() {
            if let Some((bank, account)) = raw.split_once(':') {
                return self.qualified_key(kind, bank, account);
            }
        }
        self.bare_key(kind, raw)
    }

    /// The key a payment's value is looked up under when any bank's entry
    /// may match (see the module docs). Never equal to a qualified key: a
    /// payee whose account field is literally `VCB:5555` at bank TCB does
    /// not match the entry `VCB:5555`.
    pub fn bare_key(&self, kind: ListKind, raw: &str) -> u64 {
        let mut c = Canon::new();
        if kind == ListKind::Phone {
            // E.164: "+", the country code, the national number; "00" is an
            // international prefix, a leading 0 a national one.
            let t = raw.trim();
            let intl_00 = t.starts_with("00");
            let plus = t.starts_with('+');
            let mut digits = t.bytes().filter(u8::is_ascii_digit).peekable();
            c.push(b'+');
            if intl_00 {
                digits.next();
                digits.next();
            } else if !plus && digits.peek() == Some(&b'0') && !self.country_code.is_empty() {
                digits.next();
                for d in self.country_code.bytes() {
                    c.push(d);
                }
            }
            for d in digits {
                c.push(d);
            }
            if c.fits {
                return self.finish(kind, &c);
            }
            let mut s = String::from("+");
            s.extend(raw.chars().filter(char::is_ascii_digit));
            return self.hasher.hash_one((kind as u8, s.as_bytes())).max(1);
        }
        c.push_plain(raw);
        if c.fits {
            return self.finish(kind, &c);
        }
        self.hasher
            .hash_one((kind as u8, normalise(raw).as_bytes()))
            .max(1)
    }

    /// The key of `account` held at `bank`: equal to `key(kind,
    /// "BANK:ACCOUNT")` for the entry spelled that way, and in a space of
    /// its own (never equal to a [`Keyer::bare_key`]).
    pub fn qualified_key(&self, kind: ListKind, bank: &str, account: &str) -> u64 {
        let domain = kind as u8 | QUALIFIED;
        let mut c = Canon::new();
        c.push_plain(bank);
        c.push(b':');
        c.push_plain(account);
        if c.fits {
            return self.finish_in(domain, &c);
        }
        let s = format!("{}:{}", normalise(bank), normalise(account));
        self.hasher.hash_one((domain, s.as_bytes())).max(1)
    }
}

/// Interned strings of one table.
#[derive(Debug, Default)]
struct Strings {
    list: Vec<Arc<str>>,
    index: HashMap<Arc<str>, u32, ahash::RandomState>,
}

impl Strings {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(i) = self.index.get(s) {
            return *i;
        }
        let a: Arc<str> = Arc::from(s);
        let i = u32::try_from(self.list.len()).unwrap_or(u32::MAX);
        self.list.push(a.clone());
        self.index.insert(a, i);
        i
    }

    fn get(&self, i: u32) -> &str {
        self.list.get(i as usize).map(|s| &**s).unwrap_or("")
    }

    fn arc(&self, i: u32) -> Arc<str> {
        self.list
            .get(i as usize)
            .cloned()
            .unwrap_or_else(|| Arc::from("listed"))
    }
}

/// An immutable hash table of entries; see the module docs.
#[derive(Debug)]
pub struct Table {
    /// Per slot: [`tag`] of its key, 0 if empty. Probed first.
    tags: Zeroed<u16>,
    /// Per slot: the key and its meta (see [`Slot`]).
    slots: Zeroed<Slot>,
    len: usize,
    /// Live entries (not tombstones) per kind.
    counts: [usize; 6],
    /// Per kind: whether any value is bank-qualified / bare.
    qualified: [bool; 6],
    bare: [bool; 6],
    reasons: Strings,
    sources: Strings,
}

/// An entry hashed and interned, ready for [`TableBuilder::place_batch`].
#[derive(Debug, Clone, Copy)]
pub struct Prepared {
    key: u64,
    meta: Meta,
    origin: u64,
    qualified: bool,
}

impl Prepared {
    pub fn kind(&self) -> ListKind {
        self.meta.kind
    }

    pub fn action(&self) -> Decision {
        action_of(self.meta.state)
    }

    pub fn line(&self) -> u32 {
        self.origin as u32
    }
}

/// Where a duplicate key was first seen, for "listed again" errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict {
    pub first_line: u32,
    pub first_action: Decision,
}

/// Builds a [`Table`]. Sized up front from the expected number of entries;
/// grows (doubling) past it.
#[derive(Debug)]
pub struct TableBuilder {
    keyer: Keyer,
    t: Table,
    /// Per slot: file number << 32 | line, while building (dropped after).
    origin: Vec<u64>,
    /// What the batch pre-reads load, kept so the loads are not elided.
    touched: u64,
}

fn capacity_for(n: usize) -> usize {
    (n.saturating_mul(10) / 7).max(16) + 1
}

/// Slot of a hash in a table of `cap` slots (Lemire's multiply-shift).
#[inline]
fn home(key: u64, cap: usize) -> usize {
    ((u128::from(key) * cap as u128) >> 64) as usize
}

impl TableBuilder {
    pub fn new(keyer: Keyer, expected: usize) -> TableBuilder {
        let cap = capacity_for(expected);
        TableBuilder {
            keyer,
            t: Table {
                tags: Zeroed::new(cap),
                slots: Zeroed::new(cap),
                ..Table::empty()
            },
            origin: vec![0u64; cap],
            touched: 0,
        }
    }

    pub fn keyer(&self) -> &Keyer {
        &self.keyer
    }

    pub fn len(&self) -> usize {
        self.t.len
    }

    pub fn is_empty(&self) -> bool {
        self.t.len == 0
    }

    fn grow(&mut self) {
        let cap = self.t.tags.len() * 2;
        let old_tags = std::mem::replace(&mut self.t.tags, Zeroed::new(cap));
        let old_slots = std::mem::replace(&mut self.t.slots, Zeroed::new(cap));
        let old_origin = std::mem::replace(&mut self.origin, vec![0u64; cap]);
        for (i, t) in old_tags.iter().enumerate() {
            if *t != 0 {
                let mut s = home(old_slots[i][0], cap);
                while self.t.tags[s] != 0 {
                    s = if s + 1 == cap { 0 } else { s + 1 };
                }
                self.t.tags[s] = *t;
                self.t.slots[s] = old_slots[i];
                self.origin[s] = old_origin[i];
            }
        }
    }

    /// Adds an entry seen on `line` of file number `file`. Within one file
    /// a key listed again with another action is a [`Conflict`] (the first
    /// stays); the same action again is harmless (the first stays); a later
    /// file's entry replaces an earlier file's.
    pub fn insert(&mut self, e: &EntryRef<'_>, file: u16, line: u32) -> Result<(), Conflict> {
        let key = self.keyer.key(e.kind, e.value);
        self.insert_key(key, e, Some(e.action), file, line)
    }

    /// Adds a tombstone: in a delta table, the topic no longer lists `key`.
    fn insert_removed(&mut self, key: u64) {
        let e = EntryRef {
            kind: ListKind::Account,
            value: "",
            reason: "",
            source: "",
            action: Decision::Review,
            added_at_ms: None,
            expires_at_ms: None,
        };
        let _ = self.insert_key(key, &e, None, REPLACE, 0);
    }

    fn insert_key(
        &mut self,
        key: u64,
        e: &EntryRef<'_>,
        action: Option<Decision>,
        file: u16,
        line: u32,
    ) -> Result<(), Conflict> {
        let p = self.prepare_key(key, e, action, file, line);
        self.place(&p)
    }

    /// Hashes and interns an entry without touching the table: the first
    /// half of an insert, for [`TableBuilder::place_batch`].
    pub fn prepare(&mut self, e: &EntryRef<'_>, file: u16, line: u32) -> Prepared {
        let key = self.keyer.key(e.kind, e.value);
        self.prepare_key(key, e, Some(e.action), file, line)
    }

    fn prepare_key(
        &mut self,
        key: u64,
        e: &EntryRef<'_>,
        action: Option<Decision>,
        file: u16,
        line: u32,
    ) -> Prepared {
        Prepared {
            key,
            meta: Meta {
                expires_at_ms: e.expires_at_ms.unwrap_or(0),
                added_at_ms: e.added_at_ms.unwrap_or(0),
                reason: self.t.reasons.intern(e.reason),
                source: u16::try_from(self.t.sources.intern(e.source)).unwrap_or(u16::MAX),
                kind: e.kind,
                state: action.map(state_of).unwrap_or(STATE_REMOVED),
            },
            origin: (u64::from(file) << 32) | u64::from(line),
            qualified: e.kind.bank_qualified() && e.value.contains(':'),
        }
    }

    /// Places prepared entries in order, as [`TableBuilder::insert`] would
    /// one by one, calling `on_conflict` with a refused entry's index. The
    /// home slots of the whole batch are read first: those loads do not
    /// depend on each other, so their cache misses overlap instead of
    /// queueing (a 10 M-entry table is far larger than the caches, and the
    /// build is bound by these misses).
    pub fn place_batch(
        &mut self,
        batch: &[Prepared],
        mut on_conflict: impl FnMut(usize, Conflict),
    ) {
        while (self.t.len + batch.len()) * 10 > self.t.tags.len() * 7 {
            self.grow();
        }
        let cap = self.t.tags.len();
        let mut acc = 0u64;
        for p in batch {
            let s = home(p.key, cap);
            acc ^= u64::from(self.t.tags[s]) ^ self.t.slots[s][0] ^ self.origin[s];
        }
        self.touched = self.touched.wrapping_add(acc);
        for (i, p) in batch.iter().enumerate() {
            if let Err(c) = self.place(p) {
                on_conflict(i, c);
            }
        }
    }

    /// The second half of an insert: finds the key's slot and decides (see
    /// [`TableBuilder::insert`]).
    fn place(&mut self, p: &Prepared) -> Result<(), Conflict> {
        if (self.t.len + 1) * 10 > self.t.tags.len() * 7 {
            self.grow();
        }
        let (key, file) = (p.key, (p.origin >> 32) as u16);
        let tg = tag(key);
        let cap = self.t.tags.len();
        let mut s = home(key, cap);
        loop {
            let t = self.t.tags[s];
            if t == 0 {
                break;
            }
            if t == tg && self.t.slots[s][0] == key {
                let old = Meta::unpack(&self.t.slots[s]);
                let old_file = (self.origin[s] >> 32) as u16;
                if old_file == file && file != REPLACE {
                    return if old.state == p.meta.state {
                        Ok(())
                    } else {
                        Err(Conflict {
                            first_line: self.origin[s] as u32,
                            first_action: action_of(old.state),
                        })
                    };
                }
                // A later file wins: drop the old entry's count.
                if old.state != STATE_REMOVED {
                    self.t.counts[old.kind as usize] -= 1;
                }
                self.t.len -= 1;
                break;
            }
            s = if s + 1 == cap { 0 } else { s + 1 };
        }
        self.t.tags[s] = tg;
        self.t.slots[s] = p.meta.pack(key);
        self.origin[s] = p.origin;
        self.t.len += 1;
        if p.meta.state != STATE_REMOVED {
            let k = p.meta.kind as usize;
            self.t.counts[k] += 1;
            if p.qualified {
                self.t.qualified[k] = true;
            } else {
                self.t.bare[k] = true;
            }
        }
        Ok(())
    }

    pub fn finish(self) -> Table {
        self.t
    }
}

impl Table {
    pub fn empty() -> Table {
        Table {
            tags: Zeroed::Heap(Box::new([])),
            slots: Zeroed::Heap(Box::new([])),
            len: 0,
            counts: [0; 6],
            qualified: [false; 6],
            bare: [false; 6],
            reasons: Strings::default(),
            sources: Strings::default(),
        }
    }

    /// Builds a table from owned entries (later entries win).
    pub fn from_entries<'a>(
        keyer: &Keyer,
        entries: impl IntoIterator<Item = &'a ListEntry>,
    ) -> Table {
        let entries = entries.into_iter();
        let mut b = TableBuilder::new(keyer.clone(), entries.size_hint().0);
        for e in entries {
            let key = b.keyer.key(e.kind, &e.value);
            let _ = b.insert_key(key, &e.as_ref(), Some(e.action), REPLACE, 0);
        }
        b.finish()
    }

    /// Entries (tombstones included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Live entries of `kind`.
    pub fn count(&self, kind: ListKind) -> usize {
        self.counts[kind as usize]
    }

    /// Bytes held by the table's arrays (strings aside).
    pub fn heap_bytes(&self) -> usize {
        self.tags.len() * (std::mem::size_of::<u16>() + std::mem::size_of::<Slot>())
    }

    /// What a probe for `key` reads first: its home slot and that slot's
    /// tag. Not for an empty table.
    #[inline]
    fn first(&self, key: u64) -> Probe {
        let start = home(key, self.tags.len());
        Probe {
            start,
            tag: self.tags[start],
        }
    }

    /// The meta of `key`, probing on from `first` (see [`Table::first`]):
    /// the tags settle a miss; a slot (key and meta) is read only where the
    /// tag matches.
    #[inline]
    fn find_from(&self, key: u64, first: &Probe) -> Option<Meta> {
        if first.tag == 0 {
            return None;
        }
        let tg = tag(key);
        let (tags, slots) = (&*self.tags, &*self.slots);
        let cap = tags.len();
        let mut s = first.start;
        let mut t = first.tag;
        loop {
            if t == tg && slots[s][0] == key {
                return Some(Meta::unpack(&slots[s]));
            }
            s = if s + 1 == cap { 0 } else { s + 1 };
            t = tags[s];
            if t == 0 || s == first.start {
                return None;
            }
        }
    }

    #[inline]
    fn find(&self, key: u64) -> Option<Meta> {
        if self.len == 0 {
            return None;
        }
        self.find_from(key, &self.first(key))
    }
}

/// The first reads of a probe (see [`Table::first`]).
#[derive(Debug, Clone, Copy, Default)]
struct Probe {
    start: usize,
    tag: u16,
}

/// What a layer says of a key.
enum Said<'a> {
    Live(&'a Table, Meta),
    /// Listed there but expired, or removed by the topic: ask below.
    Nothing,
    /// The topic delta removed it: skip the topic snapshot.
    Removed,
}

/// A match of one payment against the list.
#[derive(Debug, Clone)]
pub struct ListHit {
    pub rule_id: Arc<str>,
    pub reason: Arc<str>,
    pub action: Decision,
    /// Who listed it, and when (if the source said): for explanations and
    /// audits, not for the decision.
    pub source: Arc<str>,
    pub added_at_ms: Option<i64>,
}

/// The list the engine reads: three immutable tables (see the module docs)
/// and the version this combination was published under.
#[derive(Debug)]
pub struct Blocklist {
    version: u64,
    files: Arc<Table>,
    topic: Arc<Table>,
    topic_delta: Arc<Table>,
    keyer: Keyer,
    /// Per kind, over all tables: whether to look an account up qualified
    /// by its bank, and bare.
    qualified: [bool; 6],
    bare: [bool; 6],
    rule_ids: [Arc<str>; 6],
    /// `fraudline_blocklist_lookups_total{kind}` / `..._hits_total{kind}`.
    lookups: [metrics::Counter; 6],
    hits: [metrics::Counter; 6],
}

impl Blocklist {
    pub fn empty() -> Blocklist {
        Blocklist::layered(
            0,
            Keyer::new(""),
            Arc::new(Table::empty()),
            Arc::new(Table::empty()),
            Arc::new(Table::empty()),
        )
    }

    /// A list over the given tables, newest first in lookup:
    /// `topic_delta`, `topic`, `files`.
    pub fn layered(
        version: u64,
        keyer: Keyer,
        files: Arc<Table>,
        topic: Arc<Table>,
        topic_delta: Arc<Table>,
    ) -> Blocklist {
        let mut qualified = [false; 6];
        let mut bare = [false; 6];
        for t in [&files, &topic, &topic_delta] {
            for k in 0..6 {
                qualified[k] |= t.qualified[k];
                bare[k] |= t.bare[k];
            }
        }
        Blocklist {
            version,
            files,
            topic,
            topic_delta,
            keyer,
            qualified,
            bare,
            lookups: ListKind::ALL.map(
                |k| metrics::counter!(crate::telemetry::BLOCKLIST_LOOKUPS, "kind" => k.as_str()),
            ),
            hits: ListKind::ALL
                .map(|k| metrics::counter!(crate::telemetry::BLOCKLIST_HITS, "kind" => k.as_str())),
            rule_ids: ListKind::ALL
                .map(|k| Arc::from(format!("BLOCKLIST_{}", k.as_str().to_uppercase()))),
        }
    }

    /// A list of `entries` alone (as if from files), with the country
    /// calling code national phone numbers (leading 0) are read in.
    pub fn with_country_code(
        version: u64,
        country_code: &str,
        entries: impl IntoIterator<Item = ListEntry>,
    ) -> Blocklist {
        let keyer = Keyer::new(country_code);
        let entries: Vec<ListEntry> = entries.into_iter().collect();
        let files = Arc::new(Table::from_entries(&keyer, &entries));
        Blocklist::layered(
            version,
            keyer,
            files,
            Arc::new(Table::empty()),
            Arc::new(Table::empty()),
        )
    }

    pub fn new(version: u64, entries: impl IntoIterator<Item = ListEntry>) -> Blocklist {
        Blocklist::with_country_code(version, "", entries)
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn keyer(&self) -> &Keyer {
        &self.keyer
    }

    pub fn files_table(&self) -> &Arc<Table> {
        &self.files
    }

    pub fn topic_tables(&self) -> (&Arc<Table>, &Arc<Table>) {
        (&self.topic, &self.topic_delta)
    }

    /// Live entries per kind, summed over the file and topic tables (a value
    /// listed by both counts twice).
    pub fn counts(&self) -> HashMap<&'static str, usize> {
        ListKind::ALL
            .iter()
            .map(|k| {
                (
                    k.as_str(),
                    self.files.count(*k) + self.topic.count(*k) + self.topic_delta.count(*k),
                )
            })
            .collect()
    }

    /// Entries in all tables (see [`Blocklist::counts`]).
    pub fn len(&self) -> usize {
        ListKind::ALL
            .iter()
            .map(|k| self.files.count(*k) + self.topic.count(*k) + self.topic_delta.count(*k))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.topic.is_empty() && self.topic_delta.is_empty()
    }

    fn said(t: &Table, m: Option<Meta>, now_ms: i64) -> Said<'_> {
        match m {
            None => Said::Nothing,
            Some(m) if m.state == STATE_REMOVED => Said::Removed,
            Some(m) if m.expires_at_ms != 0 && m.expires_at_ms <= now_ms => Said::Nothing,
            Some(m) => Said::Live(t, m),
        }
    }

    /// The live entry under `key`, newest layer first.
    #[inline]
    fn get(&self, key: u64, now_ms: i64) -> Option<(&Table, Meta)> {
        let mut skip_topic = false;
        if !self.topic_delta.is_empty() {
            match Self::said(&self.topic_delta, self.topic_delta.find(key), now_ms) {
                Said::Live(t, m) => return Some((t, m)),
                Said::Removed => skip_topic = true,
                Said::Nothing => {}
            }
        }
        if !skip_topic && !self.topic.is_empty() {
            if let Said::Live(t, m) = Self::said(&self.topic, self.topic.find(key), now_ms) {
                return Some((t, m));
            }
        }
        match Self::said(&self.files, self.files.find(key), now_ms) {
            Said::Live(t, m) => Some((t, m)),
            _ => None,
        }
    }

    /// The keys a value of `kind` is looked up under: bare and/or qualified
    /// by `bank` (for accounts, e-wallets and cards), as the list needs.
    #[inline]
    fn keys_for(&self, kind: ListKind, bank: &str, raw: &str) -> [Option<u64>; 2] {
        let k = kind as usize;
        let qualified = (kind.bank_qualified() && self.qualified[k] && !bank.is_empty())
            .then(|| self.keyer.qualified_key(kind, bank, raw));
        let bare = (!kind.bank_qualified() || self.bare[k]).then(|| self.keyer.bare_key(kind, raw));
        [qualified, bare]
    }

    fn entry_of<'a>(t: &'a Table, m: &Meta) -> ListedEntry<'a> {
        ListedEntry {
            kind: m.kind,
            action: action_of(m.state),
            source: t.sources.get(u32::from(m.source)),
            reason: t.reasons.get(m.reason),
        }
    }

    /// The live entry for a value of `kind` (bare spelling: any bank).
    pub fn lookup(&self, kind: ListKind, raw: &str, now_ms: i64) -> Option<ListedEntry<'_>> {
        self.lookup_in(kind, "", raw, now_ms)
    }

    /// The live entry for a value of `kind` held at `bank` (the qualified
    /// entry first, then the bare one).
    pub fn lookup_in(
        &self,
        kind: ListKind,
        bank: &str,
        raw: &str,
        now_ms: i64,
    ) -> Option<ListedEntry<'_>> {
        if raw.is_empty() || self.is_empty() {
            return None;
        }
        self.keys_for(kind, bank, raw)
            .into_iter()
            .flatten()
            .find_map(|key| self.get(key, now_ms))
            .map(|(t, m)| Self::entry_of(t, &m))
    }

    /// Checks the payee, payer, device, phone and IP of a payment; returns
    /// the strongest hit. The first slot of every key in the file table is
    /// read before any is compared, so the cache misses of the (up to
    /// seven) lookups overlap instead of queueing.
    pub fn check(&self, p: &Payment, now_ms: i64) -> Option<ListHit> {
        if self.is_empty() {
            return None;
        }
        let payee = ListKind::for_account(p.payee.kind);
        let payer = ListKind::for_account(p.payer.kind);
        let candidates: [(ListKind, &str, &str); 5] = [
            (payee, &p.payee.bank_code, &p.payee.account),
            (payer, &p.payer.bank_code, &p.payer.account),
            (ListKind::Device, "", &p.device_id),
            (ListKind::Phone, "", &p.phone),
            (ListKind::Ip, "", &p.ip),
        ];
        let mut keys = [(ListKind::Account, 0u64); 10];
        let mut n = 0;
        for (kind, bank, raw) in candidates {
            if raw.is_empty() {
                continue;
            }
            self.lookups[kind as usize].increment(1);
            for k in self.keys_for(kind, bank, raw).into_iter().flatten() {
                keys[n] = (kind, k);
                n += 1;
            }
        }
        let keys = &keys[..n];
        // Overlap the misses on the largest table (see above).
        let files = &self.files;
        let mut first = [Probe::default(); 10];
        if !files.is_empty() {
            for (i, (_, k)) in keys.iter().enumerate() {
                first[i] = files.first(*k);
            }
        }
        let mut best: Option<(ListKind, &Table, Meta)> = None;
        for (i, (kind, key)) in keys.iter().enumerate() {
            let found = if self.topic.is_empty() && self.topic_delta.is_empty() {
                if files.is_empty() {
                    None
                } else {
                    match Self::said(files, files.find_from(*key, &first[i]), now_ms) {
                        Said::Live(t, m) => Some((t, m)),
                        _ => None,
                    }
                }
            } else {
                self.get(*key, now_ms)
            };
            if let Some((t, m)) = found {
                self.hits[*kind as usize].increment(1);
                if best.is_none_or(|(_, _, b)| m.state > b.state) {
                    best = Some((*kind, t, m));
                }
            }
        }
        best.map(|(kind, t, m)| ListHit {
            rule_id: self.rule_ids[kind as usize].clone(),
            reason: t.reasons.arc(m.reason),
            action: action_of(m.state),
            source: t.sources.arc(u32::from(m.source)),
            added_at_ms: (m.added_at_ms != 0).then_some(m.added_at_ms),
        })
    }
}

/// Builds the topic's tables: a snapshot of every live topic entry and a
/// delta of the changes since, so a batch of records costs the size of the
/// delta, not of the list. The delta is folded into a new snapshot when it
/// grows past an eighth of the snapshot (at least 4,096 records).
#[derive(Debug)]
pub struct TopicState {
    keyer: Keyer,
    live: HashMap<u64, ListEntry, ahash::RandomState>,
    /// Changes since the snapshot: `None` removes.
    delta: HashMap<u64, Option<ListEntry>, ahash::RandomState>,
    snapshot: Arc<Table>,
    delta_table: Arc<Table>,
}

impl TopicState {
    pub fn new(keyer: Keyer) -> TopicState {
        TopicState {
            keyer,
            live: HashMap::default(),
            delta: HashMap::default(),
            snapshot: Arc::new(Table::empty()),
            delta_table: Arc::new(Table::empty()),
        }
    }

    /// Applies records: `Some(entry)` lists, `None` removes `(kind, value)`.
    pub fn apply(
        &mut self,
        updates: impl IntoIterator<Item = (ListKind, String, Option<ListEntry>)>,
    ) {
        for (kind, value, e) in updates {
            let key = self.keyer.key(kind, &value);
            match e {
                Some(e) => {
                    self.live.insert(key, e.clone());
                    self.delta.insert(key, Some(e));
                }
                None => {
                    self.live.remove(&key);
                    self.delta.insert(key, None);
                }
            }
        }
        if self.delta.len() > (self.snapshot.len() / 8).max(4096) {
            let entries: Vec<&ListEntry> = self.live.values().collect();
            self.snapshot = Arc::new(Table::from_entries(&self.keyer, entries));
            self.delta.clear();
        }
        let mut b = TableBuilder::new(self.keyer.clone(), self.delta.len());
        for (key, e) in &self.delta {
            match e {
                Some(e) => {
                    let _ = b.insert_key(*key, &e.as_ref(), Some(e.action), REPLACE, 0);
                }
                None => b.insert_removed(*key),
            }
        }
        self.delta_table = Arc::new(b.finish());
    }

    /// The snapshot and delta tables, for [`Blocklist::layered`].
    pub fn tables(&self) -> (Arc<Table>, Arc<Table>) {
        (self.snapshot.clone(), self.delta_table.clone())
    }

    /// Live topic entries.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

impl crate::engine::rules::expr::ListLookup for Blocklist {
    fn listed(&self, kind: ListKind, value: &str, now_ms: i64) -> Option<ListedEntry<'_>> {
        self.lookup(kind, value, now_ms)
    }

    fn listed_at(
        &self,
        kind: ListKind,
        bank: &str,
        value: &str,
        now_ms: i64,
    ) -> Option<ListedEntry<'_>> {
        self.lookup_in(kind, bank, value, now_ms)
    }
}

#[cfg(test)]
mod key_tests;

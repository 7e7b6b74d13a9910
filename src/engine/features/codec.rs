//! A compact, versioned binary encoding of one entity's feature state, for
//! snapshots (a compacted Kafka topic) and the transaction journal.
//!
//! # Why our own format
//! The value is written for every changed entity at every snapshot and for
//! every entity a transaction touches, so it must be small and cheap to
//! produce: encoding appends to a caller's `Vec<u8>` and allocates nothing
//! else. It is decoded from bytes that may be damaged or from another
//! build, so decoding never panics: it checks every length against the
//! caps the in-memory structures rely on and every structural invariant
//! whose violation could make a later update panic or grow without bound,
//! and says what is wrong in a [`CodecError`].
//!
//! # Layout (version 1)
//! All fixed-width integers little-endian; `varint` is LEB128 (at most 10
//! bytes, no overlong last byte); `zigzag` a signed varint.
//!
//! ```text
//! value   := version:u8 (= 1) kind:u8 body
//! account := flags:u8 (1 inbound, 2 amount stats, 4 location)
//!            first_seen:u32 last_out:u32
//!            [stats: n:varint mean:f64 m2:f64 max_amount:zigzag]
//!            [location: geo_s:u32 lat:f32 lon:f32]
//!            window(out) distinct(payees) recent(events) recent(kit)
//!            [inbound: window(in) distinct(payers)]
//! kit     := window(payments) distinct(accounts)
//! window  := now:u32 n:u8 { now-start:varint level:u8 count:varint sum:zigzag }*n
//! recent  := n:u8 [ref:u32 { fingerprint:u32 ref-t:varint }*n]
//! distinct:= recent has_sketch:u8
//!            [base_min:u32 lost_max_s:u32 cells:varint { gap:varint tick:varint }*cells]
//! ```
//!
//! A typical account (a few payments a day) is 60-120 bytes; one with a
//! HyperLogLog sketch adds up to a few KB (only non-zero cells are written).
//! The per-entity bookkeeping of snapshots and transactions (`Meta`) is not
//! part of the value.
//!
//! # Entity keys
//! [`EntityKey`] is the identity of an entity in a snapshot: a kind byte and
//! the big-endian 64-bit hash, 9 bytes, usable as a Kafka record key.

use thiserror::Error;

use super::distinct::{Distinct, RecentSet};
use super::window::{Span, Window};
use super::{Account, Inbound, Kit, Meta};

/// The format version written in the first byte of every value.
pub const VERSION: u8 = 1;

const FLAG_INBOUND: u8 = 1;
const FLAG_STATS: u8 = 2;
const FLAG_GEO: u8 = 4;

/// What is wrong with an encoded entity or key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    #[error("empty value")]
    Empty,
    #[error("unknown format version {0} (this build reads version {VERSION})")]
    UnknownVersion(u8),
    #[error("unknown entity kind {0}")]
    UnknownKind(u8),
    #[error("entity kind {found:?} where {expected:?} was expected")]
    WrongKind {
        expected: EntityKind,
        found: EntityKind,
    },
    #[error("truncated at byte {at}: {what} needs more bytes")]
    Truncated { at: usize, what: &'static str },
    #[error("{what} at byte {at}: length {len} is over the limit of {max}")]
    TooLong {
        at: usize,
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("{what} at byte {at}: {why}")]
    Invalid {
        at: usize,
        what: &'static str,
        why: &'static str,
    },
    #[error("{0} bytes left over after the entity")]
    Trailing(usize),
    #[error("an entity key is 9 bytes, not {0}")]
    KeyLength(usize),
}

/// The two maps of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum EntityKind {
    /// A payment account: payer role and, if it received, payee role.
    Account = 1,
    /// A device, phone or IP (salted apart in the key).
    Kit = 2,
}

impl EntityKind {
    fn from_u8(b: u8) -> Result<EntityKind, CodecError> {
        match b {
            1 => Ok(EntityKind::Account),
            2 => Ok(EntityKind::Kit),
            b => Err(CodecError::UnknownKind(b)),
        }
    }
}

/// The identity of one entity: which map, and its 64-bit key there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityKey {
    pub kind: EntityKind,
    pub key: u64,
}

impl EntityKey {
    /// Length of [`EntityKey::to_bytes`].
    pub const LEN: usize = 9;

    pub fn account(key: u64) -> EntityKey {
        EntityKey {
            kind: EntityKind::Account,
            key,
        }
    }

    pub fn kit(key: u64) -> EntityKey {
        EntityKey {
            kind: EntityKind::Kit,
            key,
        }
    }

    /// Kind byte, then the key big-endian: keys of one kind sort together
    /// and in key order, bytewise.
    pub fn to_bytes(self) -> [u8; 9] {
        let mut b = [0u8; 9];
        b[0] = self.kind as u8;
        b[1..].copy_from_slice(&self.key.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Result<EntityKey, CodecError> {
        let Ok(arr) = <[u8; 9]>::try_from(b) else {
            return Err(CodecError::KeyLength(b.len()));
        };
        let kind = EntityKind::from_u8(arr[0])?;
        let mut k = [0u8; 8];
        k.copy_from_slice(&arr[1..]);
        Ok(EntityKey {
            kind,
            key: u64::from_be_bytes(k),
        })
    }
}

// ---- primitives ----

pub(super) fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}

pub(super) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(super) fn put_zigzag(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// A cursor over encoded bytes; every read names what it reads, for the
/// error.
pub(super) struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(b: &'a [u8]) -> Reader<'a> {
        Reader { b, at: 0 }
    }

    pub(super) fn at(&self) -> usize {
        self.at
    }

    pub(super) fn invalid(&self, what: &'static str, why: &'static str) -> CodecError {
        CodecError::Invalid {
            at: self.at,
            what,
            why,
        }
    }

    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], CodecError> {
        let end = self.at.checked_add(N);
        match end.and_then(|e| self.b.get(self.at..e)) {
            Some(s) => {
                let mut a = [0u8; N];
                a.copy_from_slice(s);
                self.at += N;
                Ok(a)
            }
            None => Err(CodecError::Truncated { at: self.at, what }),
        }
    }

    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        Ok(self.take::<1>(what)?[0])
    }

    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.take(what)?))
    }

    pub(super) fn f32(&mut self, what: &'static str) -> Result<f32, CodecError> {
        Ok(f32::from_bits(self.u32(what)?))
    }

    pub(super) fn f64(&mut self, what: &'static str) -> Result<f64, CodecError> {
        Ok(f64::from_bits(u64::from_le_bytes(self.take(what)?)))
    }

    pub(super) fn varint(&mut self, what: &'static str) -> Result<u64, CodecError> {
        let start = self.at;
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8(what)?;
            if i == 9 && b > 1 {
                self.at = start;
                return Err(self.invalid(what, "varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        self.at = start;
        Err(self.invalid(what, "varint longer than 10 bytes"))
    }

    /// A varint that must fit a `u32`.
    pub(super) fn varint_u32(&mut self, what: &'static str) -> Result<u32, CodecError> {
        let at = self.at;
        let v = self.varint(what)?;
        u32::try_from(v).map_err(|_| CodecError::TooLong {
            at,
            what,
            len: v,
            max: u64::from(u32::MAX),
        })
    }

    pub(super) fn zigzag(&mut self, what: &'static str) -> Result<i64, CodecError> {
        let v = self.varint(what)?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// A count byte that must be at most `max`.
    pub(super) fn len(&mut self, what: &'static str, max: usize) -> Result<usize, CodecError> {
        let at = self.at;
        let n = usize::from(self.u8(what)?);
        if n > max {
            return Err(CodecError::TooLong {
                at,
                what,
                len: n as u64,
                max: max as u64,
            });
        }
        Ok(n)
    }

    fn finish(&self) -> Result<(), CodecError> {
        match self.b.len() - self.at {
            0 => Ok(()),
            n => Err(CodecError::Trailing(n)),
        }
    }
}

// ---- entities ----

fn header(r: &mut Reader<'_>, expected: EntityKind) -> Result<(), CodecError> {
    let Some(&v) = r.b.first() else {
        return Err(CodecError::Empty);
    };
    if v != VERSION {
        return Err(CodecError::UnknownVersion(v));
    }
    r.at = 1;
    let found = EntityKind::from_u8(r.u8("kind")?)?;
    if found != expected {
        return Err(CodecError::WrongKind { expected, found });
    }
    Ok(())
}

pub(super) fn encode_account(a: &Account, out: &mut Vec<u8>) {
    put_u8(out, VERSION);
    put_u8(out, EntityKind::Account as u8);
    let stats = a.n != 0 || a.mean != 0.0 || a.m2 != 0.0 || a.max_amount != 0;
    let geo = a.geo_s != 0 || a.geo != [0.0; 2];
    let flags = if a.inbound.is_some() { FLAG_INBOUND } else { 0 }
        | if stats { FLAG_STATS } else { 0 }
        | if geo { FLAG_GEO } else { 0 };
    put_u8(out, flags);
    put_u32(out, a.first_seen_s);
    put_u32(out, a.last_out_s);
    if stats {
        put_varint(out, u64::from(a.n));
        out.extend_from_slice(&a.mean.to_bits().to_le_bytes());
        out.extend_from_slice(&a.m2.to_bits().to_le_bytes());
        put_zigzag(out, a.max_amount);
    }
    if geo {
        put_u32(out, a.geo_s);
        put_u32(out, a.geo[0].to_bits());
        put_u32(out, a.geo[1].to_bits());
    }
    a.out.encode(out);
    a.payees.encode(out);
    a.events.encode(out);
    a.kit.encode(out);
    if let Some(ib) = &a.inbound {
        ib.inn.encode(out);
        ib.payers.encode(out);
    }
}

pub(super) fn decode_account(b: &[u8]) -> Result<Account, CodecError> {
    let mut r = Reader::new(b);
    header(&mut r, EntityKind::Account)?;
    let flags = r.u8("account flags")?;
    if flags & !(FLAG_INBOUND | FLAG_STATS | FLAG_GEO) != 0 {
        return Err(r.invalid("account flags", "unknown flag bits"));
    }
    let first_seen_s = r.u32("first seen")?;
    let last_out_s = r.u32("last outgoing time")?;
    let (mut n, mut mean, mut m2, mut max_amount) = (0, 0.0, 0.0, 0);
    if flags & FLAG_STATS != 0 {
        n = r.varint_u32("payment count")?;
        mean = r.f64("mean amount")?;
        m2 = r.f64("amount variance")?;
        max_amount = r.zigzag("max amount")?;
        if !mean.is_finite() || !m2.is_finite() {
            return Err(r.invalid("amount statistics", "not finite"));
        }
    }
    let (mut geo_s, mut geo) = (0, [0.0; 2]);
    if flags & FLAG_GEO != 0 {
        geo_s = r.u32("location time")?;
        geo = [r.f32("latitude")?, r.f32("longitude")?];
    }
    let out = Window::decode(&mut r, Span::H24)?;
    let payees = Distinct::decode(&mut r)?;
    let events = RecentSet::decode(&mut r)?;
    let kit = RecentSet::decode(&mut r)?;
    let inbound = if flags & FLAG_INBOUND != 0 {
        Some(Box::new(Inbound {
            inn: Window::decode(&mut r, Span::H24)?,
            payers: Distinct::decode(&mut r)?,
        }))
    } else {
        None
    };
    r.finish()?;
    Ok(Account {
        out,
        payees,
        events,
        kit,
        inbound,
        first_seen_s,
        last_out_s,
        n,
        mean,
        m2,
        max_amount,
        geo_s,
        geo,
        meta: Meta::default(),
    })
}

pub(super) fn encode_kit(k: &Kit, out: &mut Vec<u8>) {
    put_u8(out, VERSION);
    put_u8(out, EntityKind::Kit as u8);
    k.payments.encode(out);
    k.accounts.encode(out);
}

pub(super) fn decode_kit(b: &[u8]) -> Result<Kit, CodecError> {
    let mut r = Reader::new(b);
    header(&mut r, EntityKind::Kit)?;
    let payments = Window::decode(&mut r, Span::H1)?;
    let accounts = Distinct::decode(&mut r)?;
    r.finish()?;
    Ok(Kit {
        payments,
        accounts,
        meta: Meta::default(),
    })
}

/// The kind a value says it is, without decoding it.
pub fn value_kind(b: &[u8]) -> Result<EntityKind, CodecError> {
    match b {
        [] => Err(CodecError::Empty),
        [v, ..] if *v != VERSION => Err(CodecError::UnknownVersion(*v)),
        [_] => Err(CodecError::Truncated {
            at: 1,
            what: "kind",
        }),
        [_, k, ..] => EntityKind::from_u8(*k),
    }
}

//! The in-memory list of suspicious accounts, e-wallets, phones, devices and
//! IPs, and its matcher. A list is immutable once built; updates build a new
//! one with a higher version and the engine swaps it in whole.

use std::collections::HashMap;
use std::sync::Arc;

use super::decision::Decision;
use crate::event::{AccountKind, Payment};

/// What a list entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListKind {
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

    fn for_account(kind: AccountKind) -> ListKind {
        match kind {
            AccountKind::Ewallet => ListKind::Ewallet,
            AccountKind::Card => ListKind::Card,
            AccountKind::Account | AccountKind::Unspecified => ListKind::Account,
        }
    }
}

/// One list entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ListEntry {
    pub kind: ListKind,
    pub value: String,
    pub reason: String,
    pub action: Decision,
    pub expires_at_ms: Option<i64>,
}

/// 16 bytes an entry: the reason is an index into the list's table of
/// distinct reasons (a shared list repeats a few reasons millions of times),
/// the rule id is derived from the kind.
#[derive(Debug, Clone, Copy)]
struct Stored {
    kind: ListKind,
    action: Decision,
    reason: u32,
    /// 0: never.
    expires_at_ms: i64,
}

/// A match of one payment against the list.
#[derive(Debug, Clone)]
pub struct ListHit {
    pub rule_id: Arc<str>,
    pub reason: Arc<str>,
    pub action: Decision,
}

/// An immutable list, keyed by a hash of (kind, normalised value).
#[derive(Debug)]
pub struct Blocklist {
    version: u64,
    entries: HashMap<u64, Stored, ahash::RandomState>,
    reasons: Vec<Arc<str>>,
    rule_ids: [Arc<str>; 6],
    /// `fraudline_blocklist_lookups_total{kind}` / `..._hits_total{kind}`.
    lookups: [metrics::Counter; 6],
    hits: [metrics::Counter; 6],
    hasher: ahash::RandomState,
    /// Country calling code (digits) for national phone numbers: with "84",
    /// "0912 345 678" is "+84912345678". Empty: no national numbers.
    country_code: Box<str>,
}

/// Normalises a value for storage and lookup: no spaces or dashes, upper case.
pub fn normalise(value: &str) -> String {
    value
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_uppercase)
        .collect()
}

impl Blocklist {
    fn hasher() -> ahash::RandomState {
        ahash::RandomState::with_seeds(0xb10c, 0x1157, 0x5eed, 0xf00d)
    }

    pub fn empty() -> Blocklist {
        Blocklist {
            version: 0,
            entries: HashMap::with_hasher(ahash::RandomState::new()),
            reasons: Vec::new(),
            lookups: ListKind::ALL.map(
                |k| metrics::counter!(crate::telemetry::BLOCKLIST_LOOKUPS, "kind" => k.as_str()),
            ),
            hits: ListKind::ALL
                .map(|k| metrics::counter!(crate::telemetry::BLOCKLIST_HITS, "kind" => k.as_str())),
            rule_ids: ListKind::ALL
                .map(|k| Arc::from(format!("BLOCKLIST_{}", k.as_str().to_uppercase()))),
            hasher: Self::hasher(),
            country_code: "".into(),
        }
    }

    /// [`Blocklist::new`] with the country calling code that national phone
    /// numbers (leading 0) are read in, on both sides of a match.
    pub fn with_country_code(
        version: u64,
        country_code: &str,
        entries: impl IntoIterator<Item = ListEntry>,
    ) -> Blocklist {
        let empty = Blocklist {
            country_code: country_code.trim_start_matches('+').into(),
            ..Blocklist::empty()
        };
        empty.fill(version, entries)
    }

    pub fn new(version: u64, entries: impl IntoIterator<Item = ListEntry>) -> Blocklist {
        Blocklist::empty().fill(version, entries)
    }

    fn fill(mut self, version: u64, entries: impl IntoIterator<Item = ListEntry>) -> Blocklist {
        self.version = version;
        let entries = entries.into_iter();
        self.entries.reserve(entries.size_hint().0);
        let mut reason_ids: HashMap<Arc<str>, u32> = HashMap::new();
        for e in entries {
            let key = self.key(e.kind, &e.value);
            let reason = match reason_ids.get(e.reason.as_str()) {
                Some(i) => *i,
                None => {
                    let r: Arc<str> = Arc::from(e.reason.as_str());
                    let i = u32::try_from(self.reasons.len()).unwrap_or(u32::MAX);
                    self.reasons.push(r.clone());
                    reason_ids.insert(r, i);
                    i
                }
            };
            self.entries.insert(
                key,
                Stored {
                    kind: e.kind,
                    action: e.action,
                    reason,
                    expires_at_ms: e.expires_at_ms.unwrap_or(0),
                },
            );
        }
        self
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Entries per kind.
    pub fn counts(&self) -> HashMap<&'static str, usize> {
        let mut m = HashMap::new();
        for s in self.entries.values() {
            *m.entry(s.kind.as_str()).or_default() += 1;
        }
        m
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Hashes the canonical spelling of `raw` (see [`normalise`]; phones in
    /// E.164). The canonical bytes are built in a stack buffer and hashed
    /// once: no allocation and one hasher call per lookup. Values whose
    /// canonical form is not ASCII or longer than the buffer take a slower
    /// path that builds a `String`, and hash the same bytes.
    fn key(&self, kind: ListKind, raw: &str) -> u64 {
        let mut buf = [0u8; 96];
        let mut n = 0;
        let mut fits = true;
        let mut push = |b: u8, n: &mut usize| {
            if *n < buf.len() {
                buf[*n] = b;
                *n += 1;
            } else {
                fits = false;
            }
        };
        if kind == ListKind::Phone {
            // E.164: "+", the country code, the national number; "00" is an
            // international prefix, a leading 0 a national one.
            let t = raw.trim();
            let intl_00 = t.starts_with("00");
            let plus = t.starts_with('+');
            let mut digits = t.bytes().filter(u8::is_ascii_digit).peekable();
            push(b'+', &mut n);
            if intl_00 {
                digits.next();
                digits.next();
            } else if !plus && digits.peek() == Some(&b'0') && !self.country_code.is_empty() {
                digits.next();
                for c in self.country_code.bytes() {
                    push(c, &mut n);
                }
            }
            for c in digits {
                push(c, &mut n);
            }
        } else if raw.is_ascii() {
            for c in raw.bytes() {
                if !c.is_ascii_whitespace() && c != b'-' {
                    push(c.to_ascii_uppercase(), &mut n);
                }
            }
        } else {
            fits = false;
        }
        if fits {
            return self.hasher.hash_one((kind as u8, &buf[..n]));
        }
        let canonical = if kind == ListKind::Phone {
            let mut s = String::from("+");
            s.extend(raw.chars().filter(char::is_ascii_digit));
            s
        } else {
            normalise(raw)
        };
        self.hasher.hash_one((kind as u8, canonical.as_bytes()))
    }

    /// The key `raw` is stored and looked up under: for checking a file for
    /// duplicates the way the list will see them.
    pub(crate) fn key_of(&self, kind: ListKind, raw: &str) -> u64 {
        self.key(kind, raw)
    }

    fn lookup(&self, kind: ListKind, raw: &str, now_ms: i64) -> Option<ListHit> {
        if raw.is_empty() || self.entries.is_empty() {
            return None;
        }
        let s = self.entries.get(&self.key(kind, raw))?;
        if s.expires_at_ms != 0 && s.expires_at_ms <= now_ms {
            return None;
        }
        Some(ListHit {
            rule_id: self.rule_ids[s.kind as usize].clone(),
            reason: self
                .reasons
                .get(s.reason as usize)
                .cloned()
                .unwrap_or_else(|| Arc::from("listed")),
            action: s.action,
        })
    }

    /// Checks the payee, payer, device, phone and IP of a payment; returns the
    /// strongest hit.
    pub fn check(&self, p: &Payment, now_ms: i64) -> Option<ListHit> {
        if self.entries.is_empty() {
            return None;
        }
        let candidates = [
            (
                ListKind::for_account(p.payee.kind),
                p.payee.account.as_str(),
            ),
            (
                ListKind::for_account(p.payer.kind),
                p.payer.account.as_str(),
            ),
            (ListKind::Device, p.device_id.as_str()),
            (ListKind::Phone, p.phone.as_str()),
            (ListKind::Ip, p.ip.as_str()),
        ];
        let mut best: Option<ListHit> = None;
        for (kind, raw) in candidates {
            if raw.is_empty() {
                continue;
            }
            self.lookups[kind as usize].increment(1);
            if let Some(hit) = self.lookup(kind, raw, now_ms) {
                self.hits[kind as usize].increment(1);
                if best.as_ref().is_none_or(|b| hit.action > b.action) {
                    best = Some(hit);
                }
            }
        }
        best
    }
}

impl crate::engine::rules::expr::ListLookup for Blocklist {
    /// `lookup`'s liveness test on the stored entry, read in place: the
    /// reason is borrowed from the list's table (a `ListHit` holds clones,
    /// which a borrow cannot outlive), so a rule's read of an entry hashes
    /// once and clones no `Arc`. No source is stored yet: it reads as absent.
    fn listed(
        &self,
        kind: ListKind,
        value: &str,
        now_ms: i64,
    ) -> Option<crate::engine::rules::expr::ListedEntry<'_>> {
        if value.is_empty() || self.entries.is_empty() {
            return None;
        }
        let s = self.entries.get(&self.key(kind, value))?;
        if s.expires_at_ms != 0 && s.expires_at_ms <= now_ms {
            return None;
        }
        Some(crate::engine::rules::expr::ListedEntry {
            kind: s.kind,
            action: s.action,
            source: "",
            reason: self
                .reasons
                .get(s.reason as usize)
                .map_or("listed", |r| &**r),
        })
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn lookup_key_is_the_key_of_the_normalised_spelling() {
        let list = Blocklist::empty();
        for raw in ["ab-12 cd", "dev-7", "Straße-9", "  +60 12-345 6789 "] {
            assert_eq!(
                list.key(ListKind::Device, raw),
                list.key(ListKind::Device, &normalise(raw)),
                "{raw}"
            );
        }
        assert_ne!(
            list.key(ListKind::Device, "dev-7"),
            list.key(ListKind::Account, "dev-7")
        );
    }

    #[test]
    fn expired_entries_stop_matching_on_time_without_a_reload() {
        let list = Blocklist::new(
            1,
            [ListEntry {
                kind: ListKind::Device,
                value: "dev-9".into(),
                reason: "stolen phone".into(),
                action: Decision::Review,
                expires_at_ms: Some(1_000),
            }],
        );
        let hit = list.lookup(ListKind::Device, "DEV9", 999).expect("live");
        assert_eq!(
            (&*hit.rule_id, &*hit.reason),
            ("BLOCKLIST_DEVICE", "stolen phone")
        );
        assert!(list.lookup(ListKind::Device, "dev-9", 1_000).is_none());
        assert_eq!(std::mem::size_of::<Stored>(), 16);
    }

    #[test]
    fn phones_match_in_e164_whatever_the_spelling() {
        let e = |v: &str| ListEntry {
            kind: ListKind::Phone,
            value: v.into(),
            reason: "scam calls".into(),
            action: Decision::Hold,
            expires_at_ms: None,
        };
        let list = Blocklist::with_country_code(1, "+84", [e("0912 345 678")]);
        for spelling in [
            "+84912345678",
            "0912-345-678",
            "0084 912 345 678",
            "84912345678",
        ] {
            assert!(
                list.lookup(ListKind::Phone, spelling, 0).is_some(),
                "{spelling}"
            );
        }
        assert!(list.lookup(ListKind::Phone, "+85912345678", 0).is_none());
        // Without a country code, a national number only matches itself.
        let bare = Blocklist::new(1, [e("0912 345 678")]);
        assert!(bare.lookup(ListKind::Phone, "0912345678", 0).is_some());
        assert!(bare.lookup(ListKind::Phone, "+84912345678", 0).is_none());
    }
}

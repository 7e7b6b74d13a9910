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

#[derive(Debug)]
struct Stored {
    kind: ListKind,
    reason: Arc<str>,
    rule_id: Arc<str>,
    action: Decision,
    expires_at_ms: Option<i64>,
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
        let list = &mut self;
        for e in entries {
            let key = list.key(e.kind, &e.value);
            let rule_id: Arc<str> =
                Arc::from(format!("BLOCKLIST_{}", e.kind.as_str().to_uppercase()));
            list.entries.insert(
                key,
                Stored {
                    kind: e.kind,
                    reason: Arc::from(e.reason.as_str()),
                    rule_id,
                    action: e.action,
                    expires_at_ms: e.expires_at_ms,
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

    /// Hashes `raw` as [`normalise`] would spell it, streaming the chars
    /// into the hasher: the same key for "ab-12 cd" and "AB12CD", and no
    /// String built per lookup on the hot path.
    fn key(&self, kind: ListKind, raw: &str) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.hasher.build_hasher();
        h.write_u8(kind as u8);
        if kind == ListKind::Phone {
            // E.164: "+", the country code, the national number; "00" is an
            // international prefix, a leading 0 a national one.
            let t = raw.trim();
            let intl_00 = t.starts_with("00");
            let plus = t.starts_with('+');
            let mut digits = t.chars().filter(char::is_ascii_digit).peekable();
            h.write_u32('+' as u32);
            if intl_00 {
                digits.next();
                digits.next();
            } else if !plus && digits.peek() == Some(&'0') && !self.country_code.is_empty() {
                digits.next();
                for c in self.country_code.chars() {
                    h.write_u32(c as u32);
                }
            }
            for c in digits {
                h.write_u32(c as u32);
            }
            return h.finish();
        }
        for c in raw.chars().filter(|c| !c.is_whitespace() && *c != '-') {
            for u in c.to_uppercase() {
                h.write_u32(u as u32);
            }
        }
        h.finish()
    }

    fn lookup(&self, kind: ListKind, raw: &str, now_ms: i64) -> Option<ListHit> {
        if raw.is_empty() || self.entries.is_empty() {
            return None;
        }
        let s = self.entries.get(&self.key(kind, raw))?;
        if s.expires_at_ms.is_some_and(|e| e <= now_ms) {
            return None;
        }
        Some(ListHit {
            rule_id: s.rule_id.clone(),
            reason: s.reason.clone(),
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
            if let Some(hit) = self.lookup(kind, raw, now_ms) {
                if best.as_ref().is_none_or(|b| hit.action > b.action) {
                    best = Some(hit);
                }
            }
        }
        best
    }
}

impl crate::engine::rules::expr::ListLookup for Blocklist {
    fn is_listed(&self, kind: ListKind, value: &str, now_ms: i64) -> bool {
        self.lookup(kind, value, now_ms).is_some()
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

//! Blocklists: files (CSV with a header, JSON lines), topic records
//! (`kind:value` key, `fraudline.v1.BlocklistEntry` value) and the keys
//! values are hashed under. The first input byte picks the mode:
//! - `& 3 == 0 | 1`: the rest is a CSV / JSON-lines file, read by
//!   `reload::blocklist::parse` (tools) and `build_from` (the service), with
//!   a tolerance of 0, 1, 3 or any bad lines (`>> 2 & 3`) and country code
//!   "" or "84" (`& 0x10`). Asserts: both give the same verdict on the file
//!   and skip the same lines (same country code); every bad line is a line
//!   of the file; every entry of a loaded file is found, with its action,
//!   kind, reason and source, where a payment spelled like it looks.
//! - `& 3 == 2`: a topic record (next byte: key length, then key, then
//!   value; an empty value removes). Asserts: a listed entry is found under
//!   its key's value as a payment spells it (trimmed), and gone once removed.
//! - `& 3 == 3`: the rest is a value. Asserts: its key is the key of its
//!   canonical spelling (`normalise`), and a bank-qualified account's key
//!   is the key of `BANK:NUMBER` (what a qualified entry is stored under).
#![no_main]

use std::collections::HashSet;
use std::sync::Arc;

use fraudline::engine::blocklist::{normalise, Keyer, ListKind, ListedEntry, Table, TopicState};
use fraudline::engine::Blocklist;
use fraudline::reload::blocklist::{build_from, parse, topic_update, BlocklistFileError};
use libfuzzer_sys::fuzz_target;

const TOLERANCE: [usize; 4] = [0, 1, 3, usize::MAX];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode & 3 {
        0 => file("fuzz.csv", rest, mode),
        1 => file("fuzz.jsonl", rest, mode),
        2 => topic(rest),
        _ => keys(rest, mode),
    }
});

/// What a payment whose account (or device, phone, IP) is spelled `value`
/// finds in `list`; a bank-qualified value (`BANK:NUMBER`, accounts,
/// e-wallets and cards) is looked up as NUMBER held at BANK. `None` when no
/// payment can be spelled so (an empty bank or number), so nothing to check.
fn find<'a>(list: &'a Blocklist, kind: ListKind, value: &str) -> Option<Option<ListedEntry<'a>>> {
    let qualifiable = matches!(kind, ListKind::Account | ListKind::Ewallet | ListKind::Card);
    match value.split_once(':') {
        Some((bank, number)) if qualifiable => {
            if bank.is_empty() || number.trim().is_empty() {
                return None;
            }
            Some(list.lookup_in(kind, bank, number, 0))
        }
        _ if value.trim().is_empty() => None,
        _ => Some(list.lookup(kind, value, 0)),
    }
}

fn file(name: &str, bytes: &[u8], mode: u8) {
    let tolerance = TOLERANCE[usize::from(mode >> 2) & 3];
    let cc = if mode & 0x10 != 0 { "84" } else { "" };
    let parsed = parse(name, bytes, tolerance);
    let built = build_from(&[(name.to_string(), bytes.to_vec())], tolerance, cc);
    let lines = bytes.iter().filter(|b| **b == b'\n').count() + 1;
    for e in [parsed.as_ref().err(), built.as_ref().err()]
        .into_iter()
        .flatten()
    {
        match e {
            BlocklistFileError::Refused(bad) => {
                assert!(!bad.is_empty(), "refused without a bad line");
                for b in bad {
                    assert!(
                        b.line <= lines,
                        "bad line {} of a {lines}-line file",
                        b.line
                    );
                }
            }
            BlocklistFileError::Io { .. } => panic!("an I/O error without I/O"),
        }
        let _ = e.to_string();
    }
    if cc.is_empty() {
        match (&parsed, &built) {
            (Ok(l), Ok(b)) => assert_eq!(l.skipped, b.skipped, "parse and build skip differently"),
            (Err(BlocklistFileError::Refused(a)), Err(BlocklistFileError::Refused(b))) => {
                assert_eq!(a, b, "parse and build refuse differently")
            }
            (a, b) => panic!(
                "parse and build disagree: parse {:?}, build {:?}",
                a.as_ref().err().map(ToString::to_string),
                b.as_ref().err().map(ToString::to_string)
            ),
        }
    }
    let (Ok(loaded), Ok(built)) = (parsed, built) else {
        return;
    };
    let list = built.into_list(1);
    let mut seen = HashSet::new();
    for e in &loaded.entries {
        // Within a file the first line of a key decides.
        if !seen.insert(list.keyer().key(e.kind, &e.value)) {
            continue;
        }
        let Some(found) = find(&list, e.kind, &e.value) else {
            continue;
        };
        let f = found
            .unwrap_or_else(|| panic!("{} {:?} is listed but not found", e.kind.as_str(), e.value));
        assert_eq!(
            (f.kind, f.action, f.reason, f.source),
            (e.kind, e.action, e.reason.as_str(), e.source.as_str()),
            "{} {:?} found with another entry",
            e.kind.as_str(),
            e.value
        );
    }
}

fn layered(keyer: &Keyer, st: &TopicState) -> Blocklist {
    let (snapshot, delta) = st.tables();
    Blocklist::layered(1, keyer.clone(), Arc::new(Table::empty()), snapshot, delta)
}

fn topic(rest: &[u8]) {
    let Some((&klen, rest)) = rest.split_first() else {
        return;
    };
    let (key, value) = rest.split_at(usize::from(klen).min(rest.len()));
    let Ok((kind, v, entry)) = topic_update(key, Some(value), "fuzz-topic") else {
        return;
    };
    let keyer = Keyer::new("");
    let mut st = TopicState::new(keyer.clone());
    st.apply([(kind, v.clone(), entry.clone())]);
    let list = layered(&keyer, &st);
    // A payment carries the value as the key spells it, without the
    // blanks around it (a payment's account is the entry's value).
    let spelled = v.trim();
    match &entry {
        Some(e) => {
            assert_eq!(e.kind, kind, "the entry's kind is not the key's");
            if let Some(found) = find(&list, kind, spelled) {
                let f = found.unwrap_or_else(|| {
                    panic!(
                        "topic entry {} {v:?} is listed but not found",
                        kind.as_str()
                    )
                });
                assert_eq!(f.action, e.action, "topic entry found with another action");
            }
            st.apply([(kind, v.clone(), None)]);
            let list = layered(&keyer, &st);
            if let Some(found) = find(&list, kind, spelled) {
                assert!(found.is_none(), "a removed topic entry is still found");
            }
        }
        None => {
            if let Some(found) = find(&list, kind, spelled) {
                assert!(found.is_none(), "a removal lists an entry");
            }
        }
    }
}

fn keys(rest: &[u8], mode: u8) {
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    let keyer = Keyer::new(if mode & 0x10 != 0 { "84" } else { "" });
    for kind in [
        ListKind::Account,
        ListKind::Ewallet,
        ListKind::Card,
        ListKind::Device,
        ListKind::Ip,
    ] {
        assert_eq!(
            keyer.key(kind, s),
            keyer.key(kind, &normalise(s)),
            "{} {s:?} and its canonical spelling {:?} have different keys",
            kind.as_str(),
            normalise(s)
        );
        let qualifiable = matches!(kind, ListKind::Account | ListKind::Ewallet | ListKind::Card);
        if let (Some((bank, number)), true) = (s.split_once(':'), qualifiable) {
            assert_eq!(
                keyer.qualified_key(kind, bank, number),
                keyer.key(kind, s),
                "qualified key of {s:?} is not the key of its spelling"
            );
            // Issue 15: the bare lookup of a value spelled `BANK:NUMBER`
            // (an account field that literally holds it) is another key.
            assert_ne!(
                keyer.bare_key(kind, s),
                keyer.key(kind, s),
                "the bare spelling {s:?} shares the qualified entry's key"
            );
        } else {
            assert_eq!(keyer.bare_key(kind, s), keyer.key(kind, s));
        }
    }
    let _ = keyer.key(ListKind::Phone, s);
}

//! The last line of defence for personal data in logs: every formatted log
//! line passes through [`mask_line`] before it is written, so an account,
//! card or phone number that reaches a message or a field in clear (an error
//! text that quotes its input, a `Debug` of a key) leaves only its last four
//! digits. Call sites still mask the identifiers they log on purpose
//! (`crate::mask`); this catches the ones nobody meant to log.
//!
//! What counts as an identifier: a run of at least [`MIN_DIGITS`] digits,
//! optionally after a `+` and with single spaces or dashes between digit
//! groups ("0912 345 678"), standing alone (not part of a word, a hex hash or
//! a decimal number). Such a run is masked to `*` but its last four digits.
//! Timestamps in epoch milliseconds are masked too; log lines carry their
//! own RFC 3339 time.

use std::borrow::Cow;
use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// Shortest digit run treated as an identifier. Account numbers run 9 to 19
/// digits, E.164 phones 9 to 15; counts, offsets and ids in logs are shorter.
pub const MIN_DIGITS: usize = 9;

/// Masks identifiers in one formatted log line. `json`: the line is a JSON
/// object, so a masked bare number becomes a string (the line stays JSON).
pub fn mask_line(line: &str, json: bool) -> Cow<'_, str> {
    let b = line.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0; // bytes of `line` already handled into `out`
    let mut in_string = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if json && in_string && c == b'\\' {
            i += 2;
            continue;
        }
        if json && c == b'"' {
            in_string = !in_string;
            i += 1;
            continue;
        }
        let starts =
            c.is_ascii_digit() || (c == b'+' && b.get(i + 1).is_some_and(u8::is_ascii_digit));
        if !starts || prev_is_word(b, i) {
            i += 1;
            continue;
        }
        // The run: digits, with single separators between digit groups.
        let start = i;
        let mut j = if c == b'+' { i + 1 } else { i };
        let mut digits = 0;
        while j < b.len() {
            if b[j].is_ascii_digit() {
                digits += 1;
                j += 1;
            } else if (b[j] == b' ' || b[j] == b'-')
                && j > start
                && b[j - 1].is_ascii_digit()
                && b.get(j + 1).is_some_and(u8::is_ascii_digit)
            {
                j += 1;
            } else {
                break;
            }
        }
        let end = j;
        if digits < MIN_DIGITS || next_is_word(b, end) {
            i = end.max(i + 1);
            continue;
        }
        let o = out.get_or_insert_with(|| String::with_capacity(line.len() + 8));
        o.push_str(&line[copied..start]);
        let quote = json && !in_string;
        if quote {
            o.push('"');
        }
        let mut keep = 4;
        let masked: Vec<u8> = b[start..end]
            .iter()
            .rev()
            .map(|&ch| {
                if ch.is_ascii_digit() {
                    if keep > 0 {
                        keep -= 1;
                        ch
                    } else {
                        b'*'
                    }
                } else {
                    ch
                }
            })
            .collect();
        o.extend(masked.iter().rev().map(|&ch| ch as char));
        if quote {
            o.push('"');
        }
        copied = end;
        i = end;
    }
    match out {
        None => Cow::Borrowed(line),
        Some(mut o) => {
            o.push_str(&line[copied..]);
            Cow::Owned(o)
        }
    }
}

/// Whether the byte before `i` joins the run to a word. The end of an ANSI
/// colour sequence (`ESC [ 2 m`, on a terminal) is a boundary, not a word.
fn prev_is_word(b: &[u8], i: usize) -> bool {
    if i == 0 || !is_word(b[i - 1]) {
        return false;
    }
    // "0.123456789": a decimal; ". 123456789" or "x.123456789": not.
    if b[i - 1] == b'.' {
        return i >= 2 && b[i - 2].is_ascii_digit();
    }
    if b[i - 1] == b'm' {
        let from = i.saturating_sub(10);
        if let Some(esc) = b[from..i - 1].iter().rposition(|&c| c == 0x1b) {
            let seq = &b[from + esc + 1..i - 1];
            if seq.first() == Some(&b'[')
                && seq[1..].iter().all(|c| c.is_ascii_digit() || *c == b';')
            {
                return false;
            }
        }
    }
    true
}

/// Whether the byte at `end` joins the run to a word: a letter, a digit,
/// `_`, or a decimal point (a `.` followed by a digit; a full stop is not).
fn next_is_word(b: &[u8], end: usize) -> bool {
    match b.get(end) {
        Some(b'.') => b.get(end + 1).is_some_and(u8::is_ascii_digit),
        Some(&c) => is_word(c),
        None => false,
    }
}

/// Part of a word, a hash or a decimal: a digit run next to one of these is
/// not an identifier on its own.
fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'.'
}

/// A [`MakeWriter`] whose writers pass every line through [`mask_line`].
#[derive(Debug, Clone)]
pub struct MaskingWriter<M> {
    inner: M,
    json: bool,
}

impl<M> MaskingWriter<M> {
    pub fn new(inner: M, json: bool) -> Self {
        MaskingWriter { inner, json }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for MaskingWriter<M> {
    type Writer = Masked<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        Masked {
            inner: self.inner.make_writer(),
            json: self.json,
        }
    }
}

/// One event's writer. tracing's formatter writes each event whole, in one
/// `write_all`, so a number is never split across two writes.
pub struct Masked<W> {
    inner: W,
    json: bool,
}

impl<W: Write> Write for Masked<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(s) => self.inner.write_all(mask_line(s, self.json).as_bytes())?,
            Err(_) => self.inner.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::mask_line;

    #[test]
    fn accounts_phones_and_cards_keep_only_their_last_four_digits() {
        let cases = [
            ("payer=1000003422 ok", "payer=******3422 ok"),
            ("phone +84912345678.", "phone +*******5678."),
            ("call 0912 345 678 now", "call **** **5 678 now"),
            ("card 4111-1111-1111-1111", "card ****-****-****-1111"),
            (
                "key \"1000003422\" is not kind:value",
                "key \"******3422\" is not kind:value",
            ),
            (
                "\x1b[3mpayer\x1b[0m\x1b[2m=\x1b[0m1000003422",
                "\x1b[3mpayer\x1b[0m\x1b[2m=\x1b[0m******3422",
            ),
        ];
        for (line, want) in cases {
            assert_eq!(mask_line(line, false), want, "{line}");
        }
    }

    #[test]
    fn short_numbers_hashes_decimals_and_times_are_left_alone() {
        for line in [
            "2026-11-24T20:41:36.123456Z  INFO partition=3 offset=12345678 events=20000",
            "sha256=0123456789abcdef seconds=0.123456789 ratio=123456789.5",
            "version 12 rule_id=r_123456789",
        ] {
            assert_eq!(mask_line(line, false), line);
        }
    }

    #[test]
    fn json_lines_stay_json() {
        let line = r#"{"fields":{"message":"key \"0912345678\" bad","offset":1234567890,"n":5}}"#;
        let masked = mask_line(line, true);
        let v: serde_json::Value = serde_json::from_str(&masked).expect("still JSON");
        assert_eq!(v["fields"]["message"], "key \"******5678\" bad");
        assert_eq!(v["fields"]["offset"], "******7890");
        assert_eq!(v["fields"]["n"], 5);
    }
}

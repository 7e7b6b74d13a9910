//! Decimal amounts to minor units, and ISO date-times to epoch
//! milliseconds and back. Small and exact: no floats, no dependency.

use crate::event::Currency;

/// ISO 4217 minor-unit digits (the exponent) of a currency: 2 unless listed
/// here. An ISO 20022 amount (`ActiveCurrencyAndAmount`) may not have more
/// fraction digits than this (the CurrencyAmount rule).
pub(crate) fn minor_digits(c: Currency) -> u32 {
    match c.as_str() {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

/// `"1234.5"` in a currency of `digits` minor digits -> 123450. Refuses a
/// sign, an exponent, an empty part, more fraction digits than the currency
/// has (unless the extra ones are zeros), and an overflow.
pub(crate) fn to_minor(text: &str, digits: u32) -> Result<i64, String> {
    let t = text.trim();
    let (int, frac) = match t.split_once('.') {
        Some((i, f)) => (i, f),
        None => (t, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty()
        || !all_digits(int)
        || !all_digits(frac)
        || (t.contains('.') && frac.is_empty())
    {
        return Err(format!(
            "{t:?} is not a decimal amount (digits, an optional '.' and fraction digits)"
        ));
    }
    let (kept, extra) = frac.split_at(frac.len().min(digits as usize));
    if extra.bytes().any(|b| b != b'0') {
        return Err(format!(
            "{t:?} has {} fraction digits; the currency has {digits}",
            frac.trim_end_matches('0').len()
        ));
    }
    let overflow = || format!("{t:?} is too large");
    let mut v: i64 = 0;
    for b in int.bytes().chain(kept.bytes()) {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(b - b'0')))
            .ok_or_else(overflow)?;
    }
    for _ in kept.len()..digits as usize {
        v = v.checked_mul(10).ok_or_else(overflow)?;
    }
    Ok(v)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// An `ISODateTime` (`2026-12-06T10:30:00`, optional fraction, optional `Z`
/// or `±hh:mm`) in epoch milliseconds. Without an offset the time is read
/// as UTC (docs/ISO20022.md: the schema calls it local time, which a
/// server cannot know; switches send an offset or `Z`).
pub(crate) fn parse_datetime(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let bad = || format!("{t:?} is not an ISO date-time like 2026-12-06T10:30:00Z");
    let b = t.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let s = t.get(r).ok_or_else(bad)?;
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse::<i64>().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let (y, mo, d, h, mi, s) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo)
        || d < 1
        || d > month_days[(mo - 1) as usize]
        || h > 23
        || mi > 59
        || s > 59
    {
        return Err(bad());
    }
    let mut rest = &t[19..];
    let mut ms = 0i64;
    if let Some(f) = rest.strip_prefix('.') {
        let n = f.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return Err(bad());
        }
        let mut scale = 100;
        for c in f[..n].bytes().take(3) {
            ms += i64::from(c - b'0') * scale;
            scale /= 10;
        }
        rest = &f[n..];
    }
    let offset_min = match rest {
        "" | "Z" => 0,
        o if o.len() == 6
            && (o.starts_with('+') || o.starts_with('-'))
            && o.as_bytes()[3] == b':' =>
        {
            let oh = num(t.len() - 5..t.len() - 3)?;
            let om = num(t.len() - 2..t.len())?;
            if oh > 14 || om > 59 {
                return Err(bad());
            }
            let v = oh * 60 + om;
            if o.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + s - offset_min * 60;
    Ok(secs * 1000 + ms)
}

/// Epoch milliseconds as `2026-12-06T10:30:00.123Z`.
pub(crate) fn format_datetime(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        ms.rem_euclid(1000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_to_minor_units() {
        assert_eq!(to_minor("1000.00", 2), Ok(100_000));
        assert_eq!(to_minor("1000", 2), Ok(100_000));
        assert_eq!(to_minor("0.5", 2), Ok(50));
        assert_eq!(to_minor("7216000", 0), Ok(7_216_000));
        assert_eq!(
            to_minor("7216000.00", 0),
            Ok(7_216_000),
            "zeros past the exponent"
        );
        assert_eq!(to_minor("1.234", 3), Ok(1234));
        assert!(to_minor("1.005", 2)
            .unwrap_err()
            .contains("3 fraction digits"));
        assert!(to_minor("-1.00", 2).is_err());
        assert!(to_minor("1e3", 2).is_err());
        assert!(to_minor("1.", 2).is_err());
        assert!(to_minor(".5", 2).is_err());
        assert!(to_minor("", 2).is_err());
        assert!(to_minor("99999999999999999999", 2)
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn minor_digits_follow_iso_4217() {
        let d = |c: &str| minor_digits(Currency::parse(c).unwrap());
        assert_eq!((d("EUR"), d("VND"), d("JPY"), d("KWD")), (2, 0, 0, 3));
    }

    #[test]
    fn datetimes_round_trip() {
        assert_eq!(parse_datetime("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_datetime("2026-12-06T10:30:00.123Z"),
            Ok(1_796_553_000_123)
        );
        assert_eq!(
            parse_datetime("2026-12-06T17:30:00.123+07:00"),
            parse_datetime("2026-12-06T10:30:00.123Z")
        );
        assert_eq!(
            parse_datetime("2026-12-06T10:30:00"),
            parse_datetime("2026-12-06T10:30:00Z"),
            "no offset: UTC"
        );
        assert_eq!(
            format_datetime(1_796_553_000_123),
            "2026-12-06T10:30:00.123Z"
        );
        assert_eq!(parse_datetime("2024-02-29T00:00:00Z").map(|_| ()), Ok(()));
        for bad in [
            "2023-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-12-06 10:30:00",
            "2026-12-06T10:30:00+7",
            "2026-12-06T10:30:00.Z",
            "2026-12-06T10:30:00+0\u{e9}00",
            "2026-12-06T10:30:0\u{e9}",
            "yesterday",
        ] {
            assert!(parse_datetime(bad).is_err(), "{bad}");
        }
    }
}

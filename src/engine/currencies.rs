//! Currencies: each currency's minor digits and its rate to the bank's home
//! currency, so that amount features (`payer.sum_1h`, `payee.in_sum_*`,
//! z-scores, ...) add and compare money in one unit. Without a table the
//! amounts stay in the payment's own minor units (one currency per
//! deployment); with one, a payment in a currency the table does not list
//! is never mixed in: it is scored with its amount left out of the amount
//! features and forced to REVIEW with reason `CURRENCY_UNKNOWN`.
//!
//! The table is a small TOML file (config `currencies.file`), hot-reloaded
//! like the rule file; a bad file never replaces a good one:
//! ```toml
//! home = "VND"
//! [rates]
//! VND = { digits = 0, rate = 1 }
//! USD = { digits = 2, rate = 25_400 }   # home major units per USD
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::event::Currency;

/// Why a currency table was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CurrencyError {
    #[error("{file}: not a currency table: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: {code:?} is not an ISO 4217 currency code")]
    UnknownCode { file: String, code: String },
    #[error("{file}: rates.{code}: digits {digits} is not between 0 and 4")]
    Digits {
        file: String,
        code: String,
        digits: u8,
    },
    #[error("{file}: rates.{code}: rate {rate} must be a positive finite number")]
    Rate {
        file: String,
        code: String,
        rate: f64,
    },
    #[error("{file}: the home currency {home} has no entry under [rates] (its digits are needed, and its rate must be 1)")]
    HomeMissing { file: String, home: String },
    #[error("{file}: rates.{home}: the home currency's rate must be 1, not {rate}")]
    HomeRate {
        file: String,
        home: String,
        rate: f64,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    home: String,
    rates: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    digits: u8,
    rate: f64,
}

/// The table in use: for each listed currency, the factor that turns its
/// minor units into home minor units.
#[derive(Debug, Clone, PartialEq)]
pub struct Currencies {
    /// `None`: no table, amounts stay as they come.
    home: Option<Currency>,
    /// Sorted by currency: (currency, home minor units per minor unit).
    factors: Vec<(Currency, f64)>,
    /// Where it came from (file name), for logs.
    pub source: String,
}

impl Default for Currencies {
    fn default() -> Self {
        Currencies::none()
    }
}

impl Currencies {
    /// No table: every amount counts in its own minor units.
    pub fn none() -> Currencies {
        Currencies {
            home: None,
            factors: Vec::new(),
            source: String::new(),
        }
    }

    /// Parses and validates a table; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Currencies, CurrencyError> {
        let f: FileFormat = toml::from_str(text).map_err(|e| CurrencyError::Syntax {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        let code = |c: &str| {
            Currency::parse(c).ok_or_else(|| CurrencyError::UnknownCode {
                file: file.to_string(),
                code: c.to_string(),
            })
        };
        let home = code(&f.home)?;
        let home_entry = f
            .rates
            .get(&f.home)
            .ok_or_else(|| CurrencyError::HomeMissing {
                file: file.to_string(),
                home: f.home.clone(),
            })?;
        if home_entry.rate != 1.0 {
            return Err(CurrencyError::HomeRate {
                file: file.to_string(),
                home: f.home.clone(),
                rate: home_entry.rate,
            });
        }
        let mut factors = Vec::with_capacity(f.rates.len());
        for (c, e) in &f.rates {
            let cur = code(c)?;
            if e.digits > 4 {
                return Err(CurrencyError::Digits {
                    file: file.to_string(),
                    code: c.clone(),
                    digits: e.digits,
                });
            }
            if !(e.rate.is_finite() && e.rate > 0.0) {
                return Err(CurrencyError::Rate {
                    file: file.to_string(),
                    code: c.clone(),
                    rate: e.rate,
                });
            }
            // minor -> major (10^-digits) -> home major (rate) -> home minor.
            let factor = e.rate * 10f64.powi(i32::from(home_entry.digits) - i32::from(e.digits));
            factors.push((cur, factor));
        }
        factors.sort_by_key(|f| f.0);
        Ok(Currencies {
            home: Some(home),
            factors,
            source: file.to_string(),
        })
    }

    /// The home currency, when a table is in use.
    pub fn home(&self) -> Option<Currency> {
        self.home
    }

    /// Listed currencies.
    pub fn len(&self) -> usize {
        self.factors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.factors.is_empty()
    }

    /// `amount_minor` of `currency` in home minor units (rounded); the
    /// amount itself without a table; `None` for a currency the table does
    /// not list. A binary search over a few entries: no allocation.
    #[inline]
    pub fn to_home(&self, currency: Currency, amount_minor: i64) -> Option<i64> {
        if self.home.is_none() {
            return Some(amount_minor);
        }
        let i = self
            .factors
            .binary_search_by(|(c, _)| c.cmp(&currency))
            .ok()?;
        let v = (amount_minor as f64 * self.factors[i].1).round();
        // `as` saturates at the i64 bounds.
        Some(v as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = r#"
home = "VND"
[rates]
VND = { digits = 0, rate = 1 }
USD = { digits = 2, rate = 25_400 }
JPY = { digits = 0, rate = 170.5 }
"#;

    fn cur(c: &str) -> Currency {
        Currency::parse(c).expect("a code")
    }

    #[test]
    fn amounts_convert_to_home_minor_units() {
        let t = Currencies::parse("c.toml", TABLE).expect("valid");
        assert_eq!(t.home(), Some(cur("VND")));
        // USD 150,000.00 is 15,000,000 cents: 3,810,000,000 dong.
        assert_eq!(t.to_home(cur("USD"), 15_000_000), Some(3_810_000_000));
        // 15,000,000 dong stay 15,000,000 dong: no longer the same money.
        assert_eq!(t.to_home(cur("VND"), 15_000_000), Some(15_000_000));
        assert_eq!(t.to_home(cur("JPY"), 1_000), Some(170_500));
        assert_eq!(t.to_home(cur("EUR"), 100), None, "not listed");
        assert_eq!(Currencies::none().to_home(cur("EUR"), 100), Some(100));
    }

    #[test]
    fn bad_tables_are_refused_naming_what_is_wrong() {
        let bad = |text: &str| Currencies::parse("c.toml", text).unwrap_err().to_string();
        assert!(
            bad("home = \"VND\"\n[rates]\nUSD = { digits = 2, rate = 25400 }\n")
                .contains("the home currency VND has no entry")
        );
        assert!(
            bad("home = \"VND\"\n[rates]\nVND = { digits = 0, rate = 2 }\n")
                .contains("rate must be 1")
        );
        assert!(bad("home = \"VND\"\n[rates]\nVND = { digits = 0, rate = 1 }\nXXX = { digits = 2, rate = 1 }\n")
            .contains("\"XXX\" is not an ISO 4217"));
        assert!(bad("home = \"VND\"\n[rates]\nVND = { digits = 0, rate = 1 }\nUSD = { digits = 9, rate = 1 }\n")
            .contains("digits 9"));
        assert!(bad("home = \"VND\"\n[rates]\nVND = { digits = 0, rate = 1 }\nUSD = { digits = 2, rate = -3 }\n")
            .contains("rates.USD: rate -3"));
        assert!(
            bad("home = \"VND\"\n[rates]\nVND = { digits = 0, rate = 1, typo = 1 }\n")
                .contains("not a currency table")
        );
    }
}

//! The feature catalogue: every feature a rule can read, by stable name.
//!
//! A [`FeatureVector`] is a fixed array indexed by [`F`]; rule files name
//! features as strings, which are resolved to an index once, at load. A
//! feature that does not apply to a payment (no device, no previous
//! payment...) is absent: stored as NaN, and rules treat it as such.
//! docs/FEATURES.md is checked against this list by a test.

use serde::Serialize;

/// What a feature's number means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A count of payments or entities.
    Count,
    /// A sum of amounts, in minor units of the payment currency.
    Amount,
    /// 1 for true, 0 for false.
    Bool,
    /// A duration in seconds.
    Seconds,
    /// A share or a ratio.
    Ratio,
    /// Any other number (z-score, km/h).
    Number,
}

/// One catalogue entry.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FeatureInfo {
    pub name: &'static str,
    pub kind: Kind,
    pub doc: &'static str,
}

macro_rules! catalogue {
    ($( $id:ident = $name:literal, $kind:ident, $doc:literal; )*) => {
        /// Feature index: the position in a [`FeatureVector`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        #[allow(non_camel_case_types)]
        pub enum F { $($id),* }

        /// Every feature, in index order.
        pub const CATALOGUE: &[FeatureInfo] = &[
            $(FeatureInfo { name: $name, kind: Kind::$kind, doc: $doc }),*
        ];

        /// Every feature index, in order.
        pub const ALL: &[F] = &[$(F::$id),*];
    };
}

catalogue! {
    PayerCount1m = "payer.count_1m", Count, "payments by the payer in the last minute (this one included)";
    PayerCount10m = "payer.count_10m", Count, "payments by the payer in the last 10 minutes";
    PayerCount1h = "payer.count_1h", Count, "payments by the payer in the last hour";
    PayerCount24h = "payer.count_24h", Count, "payments by the payer in the last 24 hours";
    PayerSum1m = "payer.sum_1m", Amount, "amount sent by the payer in the last minute";
    PayerSum10m = "payer.sum_10m", Amount, "amount sent by the payer in the last 10 minutes";
    PayerSum1h = "payer.sum_1h", Amount, "amount sent by the payer in the last hour";
    PayerSum24h = "payer.sum_24h", Amount, "amount sent by the payer in the last 24 hours";
    PayerDistinctPayees1h = "payer.distinct_payees_1h", Count, "distinct payees the payer paid in the last hour";
    PayerDistinctPayees24h = "payer.distinct_payees_24h", Count, "distinct payees the payer paid in the last 24 hours";
    PayerNewPayee = "payer.new_payee", Bool, "the payer has not paid this payee in the last 30 days";
    PayerSecsSinceLast = "payer.secs_since_last", Seconds, "seconds since the payer's previous payment (absent for the first)";
    PayerAmountZscore = "payer.amount_zscore", Number, "amount against the payer's own history: (amount - mean) / std dev (absent under 5 payments)";
    PayerAmountToMax = "payer.amount_to_max", Ratio, "amount / the payer's largest earlier payment (absent for the first)";
    PayerNewDevice = "payer.new_device", Bool, "the device was not used by the payer in the last 30 days (absent without a device)";
    PayerNewIp = "payer.new_ip", Bool, "the IP was not used by the payer in the last 30 days (absent without an IP)";
    PayerGeoSpeedKmh = "payer.geo_speed_kmh", Number, "speed implied by the distance from the payer's previous located payment (absent without both)";
    PayerNightShare24h = "payer.night_share_24h", Ratio, "share of the payer's last-24-hour amount sent at night (local hours from config)";
    PayerPassThrough1h = "payer.pass_through_1h", Ratio, "money the payer sent in the last hour as a share of what it received in that hour (capped at 1)";
    PayeeInCount10m = "payee.in_count_10m", Count, "payments into the payee in the last 10 minutes (this one included)";
    PayeeInCount1h = "payee.in_count_1h", Count, "payments into the payee in the last hour";
    PayeeInCount24h = "payee.in_count_24h", Count, "payments into the payee in the last 24 hours";
    PayeeInSum10m = "payee.in_sum_10m", Amount, "amount into the payee in the last 10 minutes";
    PayeeInSum1h = "payee.in_sum_1h", Amount, "amount into the payee in the last hour";
    PayeeInSum24h = "payee.in_sum_24h", Amount, "amount into the payee in the last 24 hours";
    PayeeDistinctPayers10m = "payee.distinct_payers_10m", Count, "distinct payers into the payee in the last 10 minutes (the mule fan-in signal)";
    PayeeDistinctPayers1h = "payee.distinct_payers_1h", Count, "distinct payers into the payee in the last hour";
    PayeeDistinctPayers24h = "payee.distinct_payers_24h", Count, "distinct payers into the payee in the last 24 hours";
    PayeeAgeSecs = "payee.age_secs", Seconds, "seconds since fraudline first saw the payee (0 when first seen now)";
    PayeePassThrough1h = "payee.pass_through_1h", Ratio, "money the payee sent on in the last hour as a share of what it received in that hour (capped at 1)";
    DeviceDistinctAccounts24h = "device.distinct_accounts_24h", Count, "distinct payer accounts on this device in the last 24 hours (absent without a device)";
    DeviceCount1h = "device.count_1h", Count, "payments from this device in the last hour (absent without a device)";
    PhoneDistinctAccounts24h = "phone.distinct_accounts_24h", Count, "distinct payer accounts with this phone in the last 24 hours (absent without a phone)";
    PhoneCount1h = "phone.count_1h", Count, "payments with this phone in the last hour (absent without a phone)";
    IpDistinctAccounts24h = "ip.distinct_accounts_24h", Count, "distinct payer accounts from this IP in the last 24 hours (absent without an IP)";
    IpCount1h = "ip.count_1h", Count, "payments from this IP in the last hour (absent without an IP)";
    PaymentAmountHome = "payment.amount_home", Amount, "the payment's amount in home-currency minor units (the [currencies] table; the amount as it came without one; absent for a currency the table does not list)";
    ModelScore = "model.score", Number, "the model's output for this payment: a fraud probability 0..1 for a binary model ([model] file; absent without a model)";
}

/// How many features there are.
pub const N: usize = CATALOGUE.len();

impl F {
    pub fn info(self) -> &'static FeatureInfo {
        &CATALOGUE[self as usize]
    }

    /// Resolves a rule-file name. Not for the hot path: rules resolve once.
    pub fn by_name(name: &str) -> Option<F> {
        CATALOGUE
            .iter()
            .position(|f| f.name == name)
            .map(|i| ALL[i])
    }
}

/// The feature values one payment saw, after its own update. Absent values
/// are NaN.
#[derive(Clone, Copy, PartialEq)]
pub struct FeatureVector(pub [f64; N]);

impl Default for FeatureVector {
    fn default() -> Self {
        FeatureVector([f64::NAN; N])
    }
}

impl FeatureVector {
    #[inline]
    pub fn get(&self, f: F) -> f64 {
        self.0[f as usize]
    }

    #[inline]
    pub fn set(&mut self, f: F, v: f64) {
        self.0[f as usize] = v;
    }

    #[inline]
    pub fn set_bool(&mut self, f: F, v: bool) {
        self.0[f as usize] = if v { 1.0 } else { 0.0 };
    }

    /// Present features by name, for explanations.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, f64)> + '_ {
        CATALOGUE
            .iter()
            .zip(self.0.iter())
            .filter(|(_, v)| !v.is_nan())
            .map(|(i, v)| (i.name, *v))
    }
}

impl std::fmt::Debug for FeatureVector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.named()).finish()
    }
}

impl Serialize for FeatureVector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.named())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_names_and_discriminants_agree() {
        assert_eq!(ALL.len(), N);
        for (i, f) in ALL.iter().enumerate() {
            assert_eq!(*f as usize, i);
            assert_eq!(F::by_name(f.info().name), Some(*f));
        }
        let names: std::collections::HashSet<_> = CATALOGUE.iter().map(|f| f.name).collect();
        assert_eq!(names.len(), N, "names are unique");
    }

    #[test]
    fn docs_list_every_feature() {
        let doc = include_str!("../../../docs/FEATURES.md");
        for f in CATALOGUE {
            assert!(
                doc.contains(&format!("`{}`", f.name)),
                "docs/FEATURES.md lacks {}",
                f.name
            );
        }
    }
}

//! Labelled synthetic payment traffic: a population of customers, each with
//! their own habits (typical amount, usual payees and billers, device, IP,
//! phone, active hours, payment rate), paying as they usually do; legitimate
//! traffic that looks like fraud; and the fraud schemes banks see, shaped
//! against the victim's own habits. Seeded and reproducible: the same seed
//! and settings give the same events, in event-time order.
//!
//! Labels (on each event): anything starting with `legit` is not fraud
//! ([`is_fraud_label`]); everything else is.
//! - `legit`: a customer pays one of their usual payees or billers an amount
//!   ordinary for them (now and then a new payee, or a second IP).
//! - `legit_new_shop`: a new merchant collects from many first-time
//!   customers within minutes, each paying an ordinary amount for them, from
//!   their usual device.
//! - `legit_phone_upgrade`: a customer's new phone (device), then ordinary
//!   payments to usual payees; the new device stays theirs.
//! - `legit_landlord`: a first large payment (rent, deposit) to a new payee,
//!   several times the customer's usual, on the usual device.
//! - `legit_bill_burst`: several bill payments to the customer's billers
//!   within minutes.
//! - `legit_travel`: a customer paying from abroad: new IP, foreign country
//!   and location, mostly usual payees, sometimes a new one (a hotel).
//! - `legit_salary_day`: a payroll account paying many employees within
//!   minutes.
//! - `mule_fan_in`: many scam victims pay one fresh e-wallet within minutes,
//!   each several times their own usual amount.
//! - `mule_pass_through`: a mule account receives from several victims and
//!   forwards what it got onward within the hour (both sides labelled).
//! - `account_takeover`: a new device (often a new IP, sometimes a new
//!   phone) drains the account in several payments to new payees, sometimes
//!   after a small test payment.
//! - `sim_swap`: the customer's number moved to a fraudster's SIM: a new
//!   device with the same phone number (a telco SIM-change flag on some),
//!   then transfers to new payees.
//! - `scam_transfer`: the victim's own usual device pays a scammer's
//!   account (shared by several victims) several times their usual amount;
//!   sometimes a series of escalating transfers; some during a call.
//! - `card_testing`: many tiny card payments in a minute.
//! - `velocity_burst`: a customer's account sends many payments to new
//!   payees within a minute or two.
//! - `blocklisted`: the payee is on the suspicious-account list.
//!
//! Fraud hits only customers with history (at least [`HISTORY`] earlier
//! payments in the stream), so "new payee", "new device" and the amount
//! z-score mean something; at the start of a stream only ordinary traffic
//! flows until customers have it. Look-alike patterns start as often as
//! fraud patterns (`fraud_rate`).

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::engine::{Decision, ListEntry, ListKind};
use crate::event::{AccountKind, Channel, Currency, Geo, Party, Payment, PaymentType};

mod fraud;
mod lookalike;

/// Generator settings.
#[derive(Debug, Clone)]
pub struct GenConfig {
    pub seed: u64,
    /// Ordinary customers in the population.
    pub accounts: u32,
    /// Share of events that start a fraud pattern (0.0 to 1.0); look-alike
    /// patterns start at the same rate.
    pub fraud_rate: f64,
    /// Event time of the first event, ms since the epoch.
    pub start_ms: i64,
    /// Simulated events per second of event time.
    pub events_per_sec: f64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 42,
            accounts: 10_000,
            fraud_rate: 0.02,
            start_ms: crate::now_ms() - 3_600_000,
            events_per_sec: 1000.0,
        }
    }
}

/// Every label the generator writes.
pub const LABELS: &[&str] = &[
    "legit",
    "legit_new_shop",
    "legit_phone_upgrade",
    "legit_landlord",
    "legit_bill_burst",
    "legit_travel",
    "legit_salary_day",
    "mule_fan_in",
    "mule_pass_through",
    "account_takeover",
    "sim_swap",
    "scam_transfer",
    "card_testing",
    "velocity_burst",
    "blocklisted",
];

/// Whether a label marks fraud: everything but `legit` and `legit_*`.
pub fn is_fraud_label(label: &str) -> bool {
    !label.starts_with("legit")
}

/// Earlier payments a customer has made before fraud or a look-alike
/// pattern may pick them.
pub const HISTORY: u16 = 6;

/// Accounts the generator treats as known-suspicious.
const BLOCKLISTED: u32 = 50;
/// Phones a mule herder drives mule accounts from.
const HERDER_DEVICES: u32 = 12;
/// Devices a fraud farm reuses on several taken-over accounts.
const FARM_DEVICES: u32 = 40;
/// Billers (power, water, telecom, school...) customers pay.
const BILLERS: u32 = 60;
const BANKS: &[&str] = &["VCB", "TCB", "ACB", "BIDV", "MBB", "VPB", "TPB", "MOMO"];
/// Local time offset of the population (Indochina time).
const UTC_OFFSET_MS: i64 = 7 * 3_600_000;

/// A customer's habits, derived from the seed and the customer number.
#[derive(Debug, Clone, Copy)]
struct Habits {
    /// Typical amount, VND: log-uniform over 100x across customers.
    median: f64,
    /// Spread of their amounts (log-normal sigma).
    sigma: f64,
    /// Usual people payees (customer numbers), the first `people` used.
    payees: [u32; 4],
    people: usize,
    /// Usual billers, the first `bills` used.
    billers: [u32; 3],
    bills: usize,
    /// Pays at night too (else rarely between 00:00 and 06:00 local).
    night_owl: bool,
    web: bool,
    /// Share of payments from a second, mobile-network IP.
    mobile_ip_share: f64,
    /// Shares a household device (a tablet) with the customer next to
    /// them, used for some payments.
    household: bool,
}

pub struct Generator {
    cfg: GenConfig,
    rng: StdRng,
    seq: u64,
    clock_ms: f64,
    /// The next ordinary event's time, drawn but not yet emitted.
    pending: Option<i64>,
    /// Pattern events waiting for their event time, by (time, sequence).
    queue: BTreeMap<(i64, u64), (Payment, &'static str)>,
    queued: u64,
    /// Payments each customer has made so far.
    paid: Vec<u16>,
    /// Each customer's current phone (device) generation.
    device_gen: Vec<u8>,
    /// Scammers' collecting accounts still in use: (account, until ms).
    scam_mules: Vec<(String, i64)>,
}

fn account(n: u32) -> String {
    format!("{:010}", 1_000_000_000u64 + n as u64)
}

fn biller(n: u32) -> String {
    format!("5{:09}", n)
}

/// SplitMix64: a customer's habits from (seed, customer, field).
fn mix(seed: u64, c: u32, k: u64) -> u64 {
    let mut z = seed
        .wrapping_add(((c as u64) << 8) | k)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(0x6A09_E667_F3BC_C909);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Rounds an amount to `unit` VND, at least one unit.
fn round_to(x: f64, unit: i64) -> i64 {
    ((x / unit as f64).round() as i64).max(1) * unit
}

impl Generator {
    pub fn new(cfg: GenConfig) -> Generator {
        let n = cfg.accounts.max(2) as usize;
        Generator {
            rng: StdRng::seed_from_u64(cfg.seed),
            clock_ms: cfg.start_ms as f64,
            cfg,
            seq: 0,
            pending: None,
            queue: BTreeMap::new(),
            queued: 0,
            paid: vec![0; n],
            device_gen: vec![0; n],
            scam_mules: Vec::new(),
        }
    }

    /// The accounts the `blocklisted` pattern pays, as list entries.
    pub fn blocklist_entries(&self) -> Vec<ListEntry> {
        (0..BLOCKLISTED)
            .map(|i| ListEntry {
                kind: ListKind::Account,
                value: format!("9{:09}", i),
                reason: "Account reported in the shared suspicious-account database".into(),
                action: Decision::Hold,
                expires_at_ms: None,
                ..ListEntry::default()
            })
            .collect()
    }

    fn n(&self) -> u32 {
        self.cfg.accounts.max(2)
    }

    fn habits(&self, c: u32) -> Habits {
        let s = self.cfg.seed;
        let n = self.n();
        let median = 200_000.0 * 100f64.powf(unit(mix(s, c, 1)));
        let mut payees = [0u32; 4];
        for (j, p) in payees.iter_mut().enumerate() {
            let mut x = (mix(s, c, 10 + j as u64) % n as u64) as u32;
            if x == c {
                x = (x + 1) % n;
            }
            *p = x;
        }
        let mut billers = [0u32; 3];
        for (j, b) in billers.iter_mut().enumerate() {
            *b = (mix(s, c, 20 + j as u64) % BILLERS as u64) as u32;
        }
        let r = mix(s, c, 3);
        Habits {
            median,
            sigma: 0.35 + 0.35 * unit(mix(s, c, 2)),
            payees,
            people: 1 + (r % 4) as usize,
            billers,
            bills: 1 + ((r >> 8) % 3) as usize,
            night_owl: (r >> 16) % 10 == 0,
            web: (r >> 24) % 3 == 0,
            mobile_ip_share: if (r >> 32) % 2 == 0 { 0.0 } else { 0.15 },
            household: mix(s, c & !1, 5) % 12 == 0,
        }
    }

    fn tick(&mut self) -> i64 {
        let mean_gap = 1000.0 / self.cfg.events_per_sec.max(0.001);
        let gap = -mean_gap * (1.0 - self.rng.gen::<f64>()).ln();
        self.clock_ms += gap;
        self.clock_ms as i64
    }

    fn event_id(&mut self) -> String {
        self.seq += 1;
        format!("gen-{}-{}", self.cfg.seed, self.seq)
    }

    /// A customer, the active ones more often: each customer's payment
    /// rate is their own, log-uniform over 20x across customers.
    fn customer(&mut self) -> u32 {
        let n = self.n();
        let mut c = self.rng.gen_range(0..n);
        for _ in 0..16 {
            let rate = 20f64.powf(unit(mix(self.cfg.seed, c, 4)) - 1.0);
            if self.rng.gen::<f64>() < rate {
                break;
            }
            c = self.rng.gen_range(0..n);
        }
        c
    }

    /// A customer awake at local time `t`: night owls at any hour, others
    /// mostly between 06:00 and midnight.
    fn awake_customer(&mut self, t: i64) -> u32 {
        let hour = ((t + UTC_OFFSET_MS).rem_euclid(86_400_000)) / 3_600_000;
        let mut c = self.customer();
        if hour < 6 {
            for _ in 0..4 {
                if self.habits(c).night_owl || self.rng.gen::<f64>() < 0.1 {
                    break;
                }
                c = self.customer();
            }
        }
        c
    }

    /// A customer with history, for fraud and look-alikes; `None` when
    /// none of a few draws has it yet (early in a stream).
    fn seasoned(&mut self) -> Option<u32> {
        for _ in 0..12 {
            let c = self.customer();
            if self.paid[c as usize] >= HISTORY {
                return Some(c);
            }
        }
        None
    }

    fn normal(&mut self) -> f64 {
        // Box-Muller.
        let u1: f64 = 1.0 - self.rng.gen::<f64>();
        let u2: f64 = self.rng.gen();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// An amount ordinary for customer `c`.
    fn usual_amount(&mut self, h: &Habits) -> i64 {
        let z = self.normal().clamp(-3.0, 3.0);
        round_to(h.median * (h.sigma * z).exp(), 1_000)
    }

    /// A customer as a payee: one in eight holds an e-wallet.
    fn customer_party(x: u32) -> Party {
        if x % 8 == 0 {
            Self::party(account(x), 7, AccountKind::Ewallet)
        } else {
            Self::party(account(x), x as usize, AccountKind::Account)
        }
    }

    fn party(n_or_account: String, bank: usize, kind: AccountKind) -> Party {
        Party {
            account: n_or_account,
            bank_code: BANKS[bank % BANKS.len()].to_string(),
            kind,
        }
    }

    fn home(c: u32) -> (f64, f64) {
        // Hanoi or Ho Chi Minh City.
        if c % 2 == 0 {
            (21.03, 105.85)
        } else {
            (10.78, 106.70)
        }
    }

    fn device(&self, c: u32) -> String {
        match self.device_gen[c as usize] {
            0 => format!("dev-{c}"),
            g => format!("dev-{c}-{g}"),
        }
    }

    /// A payment by customer `c` as they usually pay: their device, IP,
    /// phone, channel and location. The amount and payee are the caller's.
    fn payment(&mut self, c: u32, t: i64, payee: Party, amount: i64) -> Payment {
        let h = self.habits(c);
        let ip = if h.mobile_ip_share > 0.0 && self.rng.gen::<f64>() < h.mobile_ip_share {
            format!("100.{}.{}.{}", 64 + c % 60, (c / 60) % 250, c % 250)
        } else {
            format!("10.{}.{}.{}", c % 200, (c / 200) % 250, c % 250)
        };
        self.paid[c as usize] = self.paid[c as usize].saturating_add(1);
        let mut p = self.payment_uncounted(c, &h, t, payee, amount, ip);
        if h.household && self.rng.gen::<f64>() < 0.3 {
            p.device_id = format!("dev-home-{}", c / 2);
        }
        // People pay while on the phone too (a plumber, a relative).
        if self.rng.gen::<f64>() < 0.02 {
            p.attributes
                .insert("call_in_progress".into(), "true".into());
        }
        p
    }

    /// A payment built on `c`'s habits that does not count as `c`'s (the
    /// caller replaces the payer).
    fn payment_uncounted(
        &mut self,
        c: u32,
        h: &Habits,
        t: i64,
        payee: Party,
        amount: i64,
        ip: String,
    ) -> Payment {
        let (lat, lon) = Self::home(c);
        Payment {
            event_id: self.event_id(),
            event_time_ms: t,
            payer: Self::party(account(c), c as usize, AccountKind::Account),
            payee,
            amount_minor: amount,
            currency: Currency::parse("VND").unwrap_or_else(|| unreachable!()),
            channel: if h.web { Channel::Web } else { Channel::Mobile },
            payment_type: PaymentType::Transfer,
            device_id: self.device(c),
            ip,
            phone: format!("+849{:08}", c),
            geo: Some(Geo {
                lat: lat + self.rng.gen_range(-0.01..0.01),
                lon: lon + self.rng.gen_range(-0.01..0.01),
            }),
            country: "VN".into(),
            merchant_category: String::new(),
            attributes: BTreeMap::new(),
        }
    }

    /// A payment by an account outside the customer population (a mule, a
    /// card, a company): `payer` with its own device and IP.
    fn outsider(
        &mut self,
        payer: Party,
        t: i64,
        payee: Party,
        amount: i64,
        dev: &str,
        ip: &str,
    ) -> Payment {
        let h = self.habits(0);
        let mut p = self.payment_uncounted(0, &h, t, payee, amount, ip.to_string());
        p.payer = payer;
        p.device_id = dev.to_string();
        p.phone = String::new();
        p.geo = None;
        p
    }

    /// One of `c`'s usual people payees.
    fn usual_payee(&mut self, h: &Habits) -> Party {
        let p = h.payees[self.rng.gen_range(0..h.people)];
        Self::customer_party(p)
    }

    fn usual_biller(&mut self, h: &Habits) -> Party {
        let b = h.billers[self.rng.gen_range(0..h.bills)];
        Self::party(biller(b), b as usize, AccountKind::Account)
    }

    /// An ordinary payment from customer `c` at `t`.
    fn legit(&mut self, c: u32, t: i64) -> Payment {
        let h = self.habits(c);
        let r: f64 = self.rng.gen();
        if r < 0.25 {
            let payee = self.usual_biller(&h);
            let amount = self.usual_amount(&h);
            let mut p = self.payment(c, t, payee, amount);
            p.payment_type = PaymentType::Bill;
            return p;
        }
        let payee = if r < 0.97 {
            self.usual_payee(&h)
        } else {
            // Now and then someone new, for an ordinary amount.
            let x = self.rng.gen_range(0..self.n());
            Self::customer_party(x)
        };
        let amount = self.usual_amount(&h);
        self.payment(c, t, payee, amount)
    }

    fn enqueue(&mut self, p: Payment, label: &'static str) {
        self.queued += 1;
        self.queue
            .insert((p.event_time_ms, self.queued), (p, label));
    }

    fn fresh(&mut self, prefix: char) -> String {
        format!("{prefix}{:09}", self.rng.gen_range(0..1_000_000_000u32))
    }

    fn foreign_ip(&mut self) -> String {
        format!(
            "185.{}.{}.{}",
            self.rng.gen::<u8>(),
            self.rng.gen::<u8>(),
            self.rng.gen::<u8>()
        )
    }
}

impl Iterator for Generator {
    type Item = (Payment, &'static str);

    /// Events come out in event-time order; patterns interleave with
    /// ordinary traffic as they would on a real switch.
    fn next(&mut self) -> Option<(Payment, &'static str)> {
        let t = match self.pending {
            Some(t) => t,
            None => {
                let t = self.tick();
                if self.rng.gen::<f64>() < self.cfg.fraud_rate {
                    self.start_fraud(t);
                }
                if self.rng.gen::<f64>() < self.cfg.fraud_rate {
                    self.start_lookalike(t);
                }
                self.pending = Some(t);
                t
            }
        };
        // Queued pattern events whose time has come go first.
        if self.queue.first_key_value().is_some_and(|(k, _)| k.0 <= t) {
            if let Some((_, item)) = self.queue.pop_first() {
                return Some(item);
            }
        }
        self.pending = None;
        let c = self.awake_customer(t);
        Some((self.legit(c, t), "legit"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> GenConfig {
        GenConfig {
            start_ms: 1_800_000_000_000,
            ..GenConfig::default()
        }
    }

    #[test]
    fn same_seed_same_events() {
        let a: Vec<_> = Generator::new(cfg())
            .take(2_000)
            .map(|(p, l)| (p.to_json(), l))
            .collect();
        let b: Vec<_> = Generator::new(cfg())
            .take(2_000)
            .map(|(p, l)| (p.to_json(), l))
            .collect();
        assert_eq!(a, b);
        let c: Vec<_> = Generator::new(GenConfig { seed: 43, ..cfg() })
            .take(2_000)
            .map(|(p, l)| (p.to_json(), l))
            .collect();
        assert_ne!(a, c, "another seed, other events");
    }

    #[test]
    fn every_label_shows_up_in_50k_events_in_time_order_and_events_validate() {
        let cfg = GenConfig {
            fraud_rate: 0.02,
            accounts: 5_000,
            events_per_sec: 50.0,
            ..cfg()
        };
        let mut seen = std::collections::HashMap::new();
        let limits = crate::event::Limits::default();
        let mut last = i64::MIN;
        for (p, label) in Generator::new(cfg).take(50_000) {
            *seen.entry(label).or_insert(0u32) += 1;
            assert!(p.event_time_ms >= last, "events in event-time order");
            last = p.event_time_ms;
            let bytes = p.to_protobuf();
            crate::event::decode(&bytes, None, &limits, p.event_time_ms).unwrap();
        }
        for l in LABELS {
            assert!(seen.contains_key(l), "label {l} never generated: {seen:?}");
        }
        assert!(seen.keys().all(|l| LABELS.contains(l)));
    }

    #[test]
    fn legit_labels_are_not_fraud() {
        for l in LABELS {
            assert_eq!(is_fraud_label(l), !l.starts_with("legit_") && *l != "legit");
        }
        assert!(!is_fraud_label("legit"));
        assert!(!is_fraud_label("legit_new_shop"));
        assert!(is_fraud_label("scam_transfer"));
    }

    #[test]
    fn fraud_hits_customers_with_history_and_habits_differ() {
        let mut g = Generator::new(GenConfig {
            fraud_rate: 0.05,
            accounts: 2_000,
            ..cfg()
        });
        let mut victims = 0;
        for _ in 0..30_000 {
            let Some((p, label)) = g.next() else { break };
            if [
                "account_takeover",
                "scam_transfer",
                "sim_swap",
                "velocity_burst",
            ]
            .contains(&label)
            {
                victims += 1;
                let c: u32 = p.payer.account.parse::<u32>().unwrap() - 1_000_000_000;
                assert!(
                    g.paid[c as usize] > HISTORY,
                    "{label} hit a customer without history"
                );
            }
        }
        assert!(victims > 0);
        let medians: Vec<f64> = (0..500).map(|c| g.habits(c).median).collect();
        let lo = medians.iter().cloned().fold(f64::MAX, f64::min);
        let hi = medians.iter().cloned().fold(0.0, f64::max);
        assert!(
            hi / lo > 50.0,
            "typical amounts vary across customers: {lo}..{hi}"
        );
    }
}

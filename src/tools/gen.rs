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

    fn start_fraud(&mut self, t: i64) {
        let pick = self.rng.gen_range(0..8);
        // Card testing needs no victim with history.
        if pick == 3 {
            self.card_testing(t);
            return;
        }
        if pick == 0 {
            self.mule_fan_in(t);
            return;
        }
        if pick == 1 {
            self.mule_pass_through(t);
            return;
        }
        let Some(c) = self.seasoned() else { return };
        let h = self.habits(c);
        match pick {
            2 => self.account_takeover(c, &h, t),
            4 => self.velocity_burst(c, &h, t),
            5 => self.sim_swap(c, &h, t),
            6 => self.scam_transfer(c, &h, t),
            _ => {
                // Blocklisted counterparty, an ordinary amount.
                let payee = Self::party(
                    format!("9{:09}", self.rng.gen_range(0..BLOCKLISTED)),
                    6,
                    AccountKind::Account,
                );
                let amount = self.usual_amount(&h);
                let p = self.payment(c, t, payee, amount);
                self.enqueue(p, "blocklisted");
            }
        }
    }

    /// Victims pay several times their usual amount (a fake investment or
    /// shop, an impersonation) to one fresh e-wallet within minutes.
    fn mule_fan_in(&mut self, t: i64) {
        let mule = self.fresh('8');
        let n = self.rng.gen_range(8..15);
        let mut at = t;
        for _ in 0..n {
            let Some(v) = self.seasoned() else { continue };
            let h = self.habits(v);
            let k = self.rng.gen_range(2.5..8.0);
            let amount = round_to(h.median * k, 100_000);
            let payee = Self::party(mule.clone(), 7, AccountKind::Ewallet);
            let p = self.payment(v, at, payee, amount);
            self.enqueue(p, "mule_fan_in");
            at += self.rng.gen_range(5_000..40_000);
        }
    }

    /// A mule account collects from several victims and forwards what it
    /// got onward, every two or three receipts, within the hour.
    fn mule_pass_through(&mut self, t: i64) {
        let mule = self.fresh('8');
        // A herder drives several mule accounts from a few phones.
        let mule_dev = format!("dev-m{}", self.rng.gen_range(0..HERDER_DEVICES));
        let mule_ip = self.foreign_ip();
        let n = self.rng.gen_range(4..9);
        let mut at = t;
        let mut held = 0i64;
        let mut since_forward = 0;
        let every = self.rng.gen_range(2..4);
        for i in 0..n {
            let Some(v) = self.seasoned() else { continue };
            let h = self.habits(v);
            let k = self.rng.gen_range(2.0..6.0);
            let amount = round_to(h.median * k, 100_000);
            let payee = Self::party(mule.clone(), 4, AccountKind::Account);
            let p = self.payment(v, at, payee, amount);
            self.enqueue(p, "mule_pass_through");
            held += amount;
            since_forward += 1;
            at += self.rng.gen_range(30_000..300_000);
            if since_forward >= every || i + 1 == n {
                let out = round_to(held as f64 * self.rng.gen_range(0.9..0.99), 1_000);
                let next = Self::party(self.fresh('7'), 3, AccountKind::Account);
                let payer = Self::party(mule.clone(), 4, AccountKind::Account);
                let mut f = self.outsider(payer, at, next, out, &mule_dev, &mule_ip);
                f.phone = format!("+847{:08}", self.rng.gen_range(0..100_000_000u32));
                self.enqueue(f, "mule_pass_through");
                held = 0;
                since_forward = 0;
                at += self.rng.gen_range(10_000..120_000);
            }
        }
    }

    /// A fraudster's device (often a new IP, sometimes a new phone) drains
    /// the account to new payees, sometimes after a small test payment.
    fn account_takeover(&mut self, c: u32, h: &Habits, t: i64) {
        // Fraud farms reuse their devices on several victims.
        let dev = if self.rng.gen::<f64>() < 0.5 {
            format!("dev-x{}", self.rng.gen_range(0..FARM_DEVICES))
        } else {
            format!("dev-x{}", self.rng.gen::<u32>())
        };
        let ip = (self.rng.gen::<f64>() < 0.7).then(|| self.foreign_ip());
        let phone = (self.rng.gen::<f64>() < 0.3)
            .then(|| format!("+847{:08}", self.rng.gen_range(0..100_000_000u32)));
        let mut at = t;
        if self.rng.gen::<f64>() < 0.2 {
            let payee = Self::party(self.fresh('7'), 3, AccountKind::Account);
            let amount = round_to(h.median * self.rng.gen_range(0.3..1.0), 1_000);
            let mut p = self.payment(c, at, payee, amount);
            p.device_id = dev.clone();
            if let Some(ip) = &ip {
                p.ip = ip.clone();
            }
            if let Some(ph) = &phone {
                p.phone = ph.clone();
            }
            self.enqueue(p, "account_takeover");
            at += self.rng.gen_range(20_000..120_000);
        }
        let drains = self.rng.gen_range(1..5);
        for _ in 0..drains {
            let payee = Self::party(self.fresh('7'), 3, AccountKind::Account);
            let amount = round_to(h.median * self.rng.gen_range(3.0..20.0), 100_000);
            let mut p = self.payment(c, at, payee, amount);
            p.device_id = dev.clone();
            if let Some(ip) = &ip {
                p.ip = ip.clone();
            }
            if let Some(ph) = &phone {
                p.phone = ph.clone();
            }
            self.enqueue(p, "account_takeover");
            at += self.rng.gen_range(30_000..300_000);
        }
    }

    /// The customer's number now rings a fraudster's SIM: a new device with
    /// the same phone number, then transfers to new payees.
    fn sim_swap(&mut self, c: u32, h: &Habits, t: i64) {
        let dev = format!("dev-s{}", self.rng.gen::<u32>());
        let ip = (self.rng.gen::<f64>() < 0.5).then(|| self.foreign_ip());
        let flagged = self.rng.gen::<f64>() < 0.5;
        let n = self.rng.gen_range(1..4);
        let mut at = t;
        for _ in 0..n {
            let payee = Self::party(self.fresh('7'), 2, AccountKind::Account);
            let amount = round_to(h.median * self.rng.gen_range(3.0..15.0), 100_000);
            let mut p = self.payment(c, at, payee, amount);
            p.device_id = dev.clone();
            if let Some(ip) = &ip {
                p.ip = ip.clone();
            }
            if flagged {
                p.attributes.insert("sim_changed_24h".into(), "true".into());
            }
            self.enqueue(p, "sim_swap");
            at += self.rng.gen_range(30_000..600_000);
        }
    }

    /// The victim, on their own device, pays a scammer's account (shared by
    /// several victims) several times their usual amount; sometimes a
    /// series of escalating transfers; some during a call.
    fn scam_transfer(&mut self, c: u32, h: &Habits, t: i64) {
        self.scam_mules.retain(|(_, until)| *until > t);
        let payee = if !self.scam_mules.is_empty() && self.rng.gen::<f64>() < 0.7 {
            let i = self.rng.gen_range(0..self.scam_mules.len());
            self.scam_mules[i].0.clone()
        } else {
            let m = self.fresh('6');
            let life = self.rng.gen_range(1_800_000..7_200_000);
            self.scam_mules.push((m.clone(), t + life));
            m
        };
        let call = self.rng.gen::<f64>() < 0.4;
        let n = if self.rng.gen::<f64>() < 0.35 {
            self.rng.gen_range(2..4)
        } else {
            1
        };
        let mut k = self.rng.gen_range(3.0..12.0);
        let mut at = t;
        for _ in 0..n {
            let amount = round_to(h.median * k, 500_000);
            let p_to = Self::party(payee.clone(), 5, AccountKind::Account);
            let mut p = self.payment(c, at, p_to, amount);
            if call {
                p.attributes
                    .insert("call_in_progress".into(), "true".into());
            }
            self.enqueue(p, "scam_transfer");
            k *= self.rng.gen_range(1.3..2.0);
            at += self.rng.gen_range(120_000..900_000);
        }
    }

    /// Many tiny card payments to merchants within a minute.
    fn card_testing(&mut self, t: i64) {
        let card = format!("card-{:012}", self.rng.gen::<u32>());
        let bot = format!("dev-b{}", self.rng.gen::<u32>());
        let bot_ip = self.foreign_ip();
        let n = self.rng.gen_range(12..20);
        let mut at = t;
        for i in 0..n {
            let payee = Self::party(format!("m-{:05}", i * 31 % 997), 4, AccountKind::Account);
            let amount = self.rng.gen_range(1_000..5_000);
            let payer = Self::party(card.clone(), 2, AccountKind::Card);
            let mut p = self.outsider(payer, at, payee, amount, &bot, &bot_ip);
            p.payment_type = PaymentType::Merchant;
            p.channel = Channel::Api;
            p.merchant_category = "5999".into();
            self.enqueue(p, "card_testing");
            at += self.rng.gen_range(1_000..4_000);
        }
    }

    /// The account sends many payments to new payees within a minute or two.
    fn velocity_burst(&mut self, c: u32, h: &Habits, t: i64) {
        let n = self.rng.gen_range(6..11);
        let mut at = t;
        for _ in 0..n {
            let x = self.rng.gen_range(0..self.n());
            let payee = Self::customer_party(x);
            let amount = round_to(h.median * self.rng.gen_range(1.0..4.0), 100_000);
            let p = self.payment(c, at, payee, amount);
            self.enqueue(p, "velocity_burst");
            at += self.rng.gen_range(2_000..12_000);
        }
    }

    fn start_lookalike(&mut self, t: i64) {
        match self.rng.gen_range(0..6) {
            0 => self.new_shop(t),
            5 => self.salary_day(t),
            pick => {
                let Some(c) = self.seasoned() else { return };
                let h = self.habits(c);
                match pick {
                    1 => self.phone_upgrade(c, &h, t),
                    2 => self.landlord(c, &h, t),
                    3 => self.bill_burst(c, &h, t),
                    _ => self.travel(c, &h, t),
                }
            }
        }
    }

    /// A new merchant collecting from many first-time customers, each an
    /// ordinary amount for them, on their usual device.
    fn new_shop(&mut self, t: i64) {
        let shop = self.fresh('3');
        // Many small shops take QR payments into an e-wallet.
        let kind = if self.rng.gen::<f64>() < 0.3 {
            AccountKind::Ewallet
        } else {
            AccountKind::Account
        };
        let n = self.rng.gen_range(10..26);
        let mut at = t;
        for _ in 0..n {
            let c = self.awake_customer(at);
            let h = self.habits(c);
            let amount = self.usual_amount(&h);
            let payee = Self::party(shop.clone(), 1, kind);
            let mut p = self.payment(c, at, payee, amount);
            p.payment_type = PaymentType::Merchant;
            p.merchant_category = "5812".into();
            self.enqueue(p, "legit_new_shop");
            at += self.rng.gen_range(3_000..40_000);
        }
    }

    /// A new phone: the customer's device changes for good, then ordinary
    /// payments to usual payees.
    fn phone_upgrade(&mut self, c: u32, h: &Habits, t: i64) {
        let g = &mut self.device_gen[c as usize];
        *g = g.wrapping_add(1).max(1);
        let n = self.rng.gen_range(2..5);
        let mut at = t;
        for _ in 0..n {
            let payee = self.usual_payee(h);
            let amount = self.usual_amount(h);
            let p = self.payment(c, at, payee, amount);
            self.enqueue(p, "legit_phone_upgrade");
            at += self.rng.gen_range(60_000..900_000);
        }
    }

    /// A first large payment to a new payee: rent and deposit to a landlord.
    fn landlord(&mut self, c: u32, h: &Habits, t: i64) {
        let landlord = self.fresh('4');
        let n = if self.rng.gen::<f64>() < 0.25 { 2 } else { 1 };
        let mut at = t;
        for _ in 0..n {
            let amount = round_to(h.median * self.rng.gen_range(3.0..12.0), 500_000);
            let payee = Self::party(landlord.clone(), 0, AccountKind::Account);
            let p = self.payment(c, at, payee, amount);
            self.enqueue(p, "legit_landlord");
            at += self.rng.gen_range(60_000..600_000);
        }
    }

    /// Several bills paid within minutes.
    fn bill_burst(&mut self, c: u32, h: &Habits, t: i64) {
        let n = self.rng.gen_range(3..7);
        let mut at = t;
        for i in 0..n {
            let payee = if i < h.bills {
                let b = h.billers[i];
                Self::party(biller(b), b as usize, AccountKind::Account)
            } else {
                let b = self.rng.gen_range(0..BILLERS);
                Self::party(biller(b), b as usize, AccountKind::Account)
            };
            let amount = round_to(h.median * self.rng.gen_range(0.2..1.2), 1_000);
            let mut p = self.payment(c, at, payee, amount);
            p.payment_type = PaymentType::Bill;
            self.enqueue(p, "legit_bill_burst");
            at += self.rng.gen_range(5_000..60_000);
        }
    }

    /// Paying from abroad: a new IP, a foreign country and location; mostly
    /// usual payees, sometimes a new one (a hotel, a shop).
    fn travel(&mut self, c: u32, h: &Habits, t: i64) {
        let (country, lat, lon) = match self.rng.gen_range(0..4) {
            0 => ("TH", 13.75, 100.50),
            1 => ("SG", 1.29, 103.85),
            2 => ("JP", 35.68, 139.69),
            _ => ("KR", 37.57, 126.98),
        };
        let ip = format!(
            "203.{}.{}.{}",
            self.rng.gen::<u8>(),
            self.rng.gen::<u8>(),
            self.rng.gen::<u8>()
        );
        let n = self.rng.gen_range(2..6);
        let mut at = t + self.rng.gen_range(0..3_600_000);
        for _ in 0..n {
            let (payee, amount) = if self.rng.gen::<f64>() < 0.3 {
                let a = round_to(h.median * self.rng.gen_range(1.0..3.0), 1_000);
                (Self::party(self.fresh('2'), 0, AccountKind::Account), a)
            } else {
                let a = self.usual_amount(h);
                (self.usual_payee(h), a)
            };
            let mut p = self.payment(c, at, payee, amount);
            p.ip = ip.clone();
            p.country = country.into();
            p.geo = Some(Geo { lat, lon });
            self.enqueue(p, "legit_travel");
            at += self.rng.gen_range(300_000..1_800_000);
        }
    }

    /// A payroll account paying its employees within minutes.
    fn salary_day(&mut self, t: i64) {
        let company = self.fresh('1');
        let dev = format!("dev-corp-{}", self.rng.gen::<u32>());
        let ip = format!("10.250.{}.{}", self.rng.gen::<u8>(), self.rng.gen::<u8>());
        let n = self.rng.gen_range(10..31);
        let base = self.rng.gen_range(8_000_000.0..20_000_000.0);
        let mut at = t;
        for _ in 0..n {
            let e = self.rng.gen_range(0..self.n());
            let payee = Self::customer_party(e);
            let amount = round_to(base * self.rng.gen_range(0.6..1.8), 100_000);
            let payer = Self::party(company.clone(), 0, AccountKind::Account);
            let mut p = self.outsider(payer, at, payee, amount, &dev, &ip);
            p.phone = String::new();
            p.channel = Channel::Api;
            self.enqueue(p, "legit_salary_day");
            at += self.rng.gen_range(1_000..6_000);
        }
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

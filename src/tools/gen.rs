//! Labelled synthetic payment traffic: a population of ordinary customers
//! paying their usual payees, with fraud patterns that real schemes show
//! mixed in. Seeded and reproducible: the same seed and settings give the
//! same events.
//!
//! Patterns (the label on each event):
//! - `legit`: a customer pays one of their usual payees, ordinary amount.
//! - `mule_fan_in`: many victims pay one mule account within minutes.
//! - `account_takeover`: new device, new payee, large amount.
//! - `scam_transfer`: first-time payee, large amount, during a call.
//! - `card_testing`: many tiny card payments in a minute.
//! - `velocity_burst`: one payer, many payments in a minute.
//! - `blocklisted`: the payee is on the suspicious-account list.

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
    /// Share of events that start a fraud pattern (0.0 to 1.0).
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

pub const LABELS: &[&str] = &[
    "legit",
    "mule_fan_in",
    "account_takeover",
    "scam_transfer",
    "card_testing",
    "velocity_burst",
    "blocklisted",
];

/// Accounts the generator treats as known-suspicious.
const BLOCKLISTED: u32 = 50;
const BANKS: &[&str] = &["VCB", "TCB", "ACB", "BIDV", "MBB", "VPB", "TPB", "MOMO"];

pub struct Generator {
    cfg: GenConfig,
    rng: StdRng,
    seq: u64,
    clock_ms: f64,
    /// Pattern events waiting for their event time, by (time, sequence).
    queue: BTreeMap<(i64, u64), (Payment, &'static str)>,
    queued: u64,
}

fn account(n: u32) -> String {
    format!("{:010}", 1_000_000_000u64 + n as u64)
}

impl Generator {
    pub fn new(cfg: GenConfig) -> Generator {
        Generator {
            rng: StdRng::seed_from_u64(cfg.seed),
            clock_ms: cfg.start_ms as f64,
            cfg,
            seq: 0,
            queue: BTreeMap::new(),
            queued: 0,
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

    fn customer(&mut self) -> u32 {
        self.rng.gen_range(0..self.cfg.accounts.max(1))
    }

    fn party(n_or_account: String, bank: usize, kind: AccountKind) -> Party {
        Party {
            account: n_or_account,
            bank_code: BANKS[bank % BANKS.len()].to_string(),
            kind,
        }
    }

    /// An ordinary payment from customer `c` to one of their usual payees.
    fn legit(&mut self, c: u32, t: i64) -> Payment {
        let usual = c.wrapping_mul(2_654_435_761) % 7;
        let payee_n = (c + 1 + self.rng.gen_range(0..3) * 97 + usual) % self.cfg.accounts.max(2);
        let amount = (self.rng.gen_range(50u64..3_000) * 1_000) as i64;
        let (lat, lon) = self.home(c);
        Payment {
            event_id: self.event_id(),
            event_time_ms: t,
            payer: Self::party(account(c), c as usize, AccountKind::Account),
            payee: Self::party(account(payee_n), payee_n as usize, AccountKind::Account),
            amount_minor: amount,
            currency: Currency::parse("VND").unwrap_or_else(|| unreachable!()),
            channel: if c % 3 == 0 {
                Channel::Web
            } else {
                Channel::Mobile
            },
            payment_type: PaymentType::Transfer,
            device_id: format!("dev-{c}"),
            ip: format!("10.{}.{}.{}", c % 200, (c / 200) % 250, c % 250),
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

    fn home(&self, c: u32) -> (f64, f64) {
        // Hanoi or Ho Chi Minh City.
        if c % 2 == 0 {
            (21.03, 105.85)
        } else {
            (10.78, 106.70)
        }
    }

    fn enqueue(&mut self, item: (Payment, &'static str)) {
        self.queued += 1;
        self.queue.insert((item.0.event_time_ms, self.queued), item);
    }

    fn start_pattern(&mut self, t: i64) {
        let pick = self.rng.gen_range(0..6);
        match pick {
            0 => {
                // Mule fan-in: 10-14 victims pay one fresh account within ~5 minutes.
                let mule = format!("8{:09}", self.rng.gen_range(0..1_000_000_000u32));
                let n = self.rng.gen_range(10..15);
                let mut at = t;
                for _ in 0..n {
                    let victim = self.customer();
                    let mut p = self.legit(victim, at);
                    p.payee = Self::party(mule.clone(), 7, AccountKind::Ewallet);
                    p.amount_minor = (self.rng.gen_range(2_000u64..20_000) * 1_000) as i64;
                    self.enqueue((p, "mule_fan_in"));
                    at += self.rng.gen_range(2_000..20_000);
                }
            }
            1 => {
                // Account takeover: new device, new payee, large amount.
                let c = self.customer();
                let mut p = self.legit(c, t);
                p.device_id = format!("dev-x{}", self.rng.gen::<u32>());
                p.ip = format!(
                    "185.{}.{}.{}",
                    self.rng.gen::<u8>(),
                    self.rng.gen::<u8>(),
                    self.rng.gen::<u8>()
                );
                p.payee = Self::party(
                    format!("7{:09}", self.rng.gen_range(0..1_000_000_000u32)),
                    3,
                    AccountKind::Account,
                );
                p.amount_minor = (self.rng.gen_range(50_000u64..200_000) * 1_000) as i64;
                self.enqueue((p, "account_takeover"));
            }
            2 => {
                // Scam-induced transfer: first-time payee, large, while the
                // victim is on a call with the scammer.
                let c = self.customer();
                let mut p = self.legit(c, t);
                p.payee = Self::party(
                    format!("6{:09}", self.rng.gen_range(0..1_000_000_000u32)),
                    5,
                    AccountKind::Account,
                );
                p.amount_minor = (self.rng.gen_range(20_000u64..100_000) * 1_000) as i64;
                p.attributes
                    .insert("call_in_progress".into(), "true".into());
                self.enqueue((p, "scam_transfer"));
            }
            3 => {
                // Card testing: 12-20 tiny card payments to merchants in a minute.
                let card = format!("card-{:012}", self.rng.gen::<u32>());
                let n = self.rng.gen_range(12..20);
                let mut at = t;
                for i in 0..n {
                    let c = self.customer();
                    let mut p = self.legit(c, at);
                    p.payer = Self::party(card.clone(), 2, AccountKind::Card);
                    p.payee =
                        Self::party(format!("m-{:05}", i * 31 % 997), 4, AccountKind::Account);
                    p.payment_type = PaymentType::Merchant;
                    p.channel = Channel::Api;
                    p.merchant_category = "5999".into();
                    p.amount_minor = self.rng.gen_range(1_000..5_000);
                    self.enqueue((p, "card_testing"));
                    at += self.rng.gen_range(1_000..4_000);
                }
            }
            4 => {
                // Velocity burst: one payer, 6-10 payments in a minute.
                let c = self.customer();
                let n = self.rng.gen_range(6..11);
                let mut at = t;
                for _ in 0..n {
                    let mut p = self.legit(c, at);
                    let payee = self.customer();
                    p.payee = Self::party(account(payee), payee as usize, AccountKind::Account);
                    p.amount_minor = (self.rng.gen_range(1_000u64..10_000) * 1_000) as i64;
                    self.enqueue((p, "velocity_burst"));
                    at += self.rng.gen_range(2_000..8_000);
                }
            }
            _ => {
                // Blocklisted counterparty.
                let c = self.customer();
                let mut p = self.legit(c, t);
                p.payee = Self::party(
                    format!("9{:09}", self.rng.gen_range(0..BLOCKLISTED)),
                    6,
                    AccountKind::Account,
                );
                self.enqueue((p, "blocklisted"));
            }
        }
    }
}

impl Iterator for Generator {
    type Item = (Payment, &'static str);

    /// Events come out in event-time order within a pattern; patterns
    /// interleave with ordinary traffic as they would on a real switch.
    fn next(&mut self) -> Option<(Payment, &'static str)> {
        let t = self.tick();
        if self.rng.gen::<f64>() < self.cfg.fraud_rate {
            self.start_pattern(t);
        }
        // Release queued pattern events whose time has come.
        if self.queue.first_key_value().is_some_and(|(k, _)| k.0 <= t) {
            if let Some((_, (p, label))) = self.queue.pop_first() {
                return Some((p, label));
            }
        }
        let c = self.customer();
        Some((self.legit(c, t), "legit"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_events() {
        let cfg = GenConfig {
            start_ms: 1_800_000_000_000,
            ..GenConfig::default()
        };
        let a: Vec<_> = Generator::new(cfg.clone())
            .take(500)
            .map(|(p, l)| (p.to_json(), l))
            .collect();
        let b: Vec<_> = Generator::new(cfg)
            .take(500)
            .map(|(p, l)| (p.to_json(), l))
            .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn every_pattern_shows_up_and_events_validate() {
        let cfg = GenConfig {
            fraud_rate: 0.2,
            start_ms: 1_800_000_000_000,
            ..GenConfig::default()
        };
        let mut seen = std::collections::HashSet::new();
        let limits = crate::event::Limits::default();
        for (p, label) in Generator::new(cfg).take(20_000) {
            seen.insert(label);
            let bytes = p.to_protobuf();
            crate::event::decode(&bytes, None, &limits, p.event_time_ms).unwrap();
        }
        for l in LABELS {
            assert!(seen.contains(l), "pattern {l} never generated");
        }
    }
}

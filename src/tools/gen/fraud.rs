//! The fraud patterns, each shaped against the victim's own habits.

use rand::Rng;

use super::{
    round_to, AccountKind, Channel, Generator, Habits, PaymentType, BLOCKLISTED, FARM_DEVICES,
    HERDER_DEVICES,
};

impl Generator {
    pub(super) fn start_fraud(&mut self, t: i64) {
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
    pub(super) fn mule_fan_in(&mut self, t: i64) {
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
    pub(super) fn mule_pass_through(&mut self, t: i64) {
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
    pub(super) fn account_takeover(&mut self, c: u32, h: &Habits, t: i64) {
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
            on_fraud_device(&mut p, &dev, ip.as_deref(), phone.as_deref());
            self.enqueue(p, "account_takeover");
            at += self.rng.gen_range(20_000..120_000);
        }
        let drains = self.rng.gen_range(1..5);
        for _ in 0..drains {
            let payee = Self::party(self.fresh('7'), 3, AccountKind::Account);
            let amount = round_to(h.median * self.rng.gen_range(3.0..20.0), 100_000);
            let mut p = self.payment(c, at, payee, amount);
            on_fraud_device(&mut p, &dev, ip.as_deref(), phone.as_deref());
            self.enqueue(p, "account_takeover");
            at += self.rng.gen_range(30_000..300_000);
        }
    }

    /// The customer's number now rings a fraudster's SIM: a new device with
    /// the same phone number, then transfers to new payees.
    pub(super) fn sim_swap(&mut self, c: u32, h: &Habits, t: i64) {
        let dev = format!("dev-s{}", self.rng.gen::<u32>());
        let ip = (self.rng.gen::<f64>() < 0.5).then(|| self.foreign_ip());
        let flagged = self.rng.gen::<f64>() < 0.5;
        let n = self.rng.gen_range(1..4);
        let mut at = t;
        for _ in 0..n {
            let payee = Self::party(self.fresh('7'), 2, AccountKind::Account);
            let amount = round_to(h.median * self.rng.gen_range(3.0..15.0), 100_000);
            let mut p = self.payment(c, at, payee, amount);
            on_fraud_device(&mut p, &dev, ip.as_deref(), None);
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
    pub(super) fn scam_transfer(&mut self, c: u32, h: &Habits, t: i64) {
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
    pub(super) fn card_testing(&mut self, t: i64) {
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
    pub(super) fn velocity_burst(&mut self, c: u32, h: &Habits, t: i64) {
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
}

/// A payment made from the fraudster's device: its id, and the IP and
/// phone it shows when the scheme brings its own.
fn on_fraud_device(
    p: &mut crate::event::Payment,
    dev: &str,
    ip: Option<&str>,
    phone: Option<&str>,
) {
    p.device_id = dev.to_string();
    if let Some(ip) = ip {
        p.ip = ip.to_string();
    }
    if let Some(ph) = phone {
        p.phone = ph.to_string();
    }
}

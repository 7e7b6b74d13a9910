//! Legitimate traffic that looks like fraud: each pattern labelled `legit_*`.

use rand::Rng;

use super::{biller, round_to, AccountKind, Channel, Generator, Geo, Habits, PaymentType, BILLERS};

impl Generator {
    pub(super) fn start_lookalike(&mut self, t: i64) {
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
    pub(super) fn new_shop(&mut self, t: i64) {
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
    pub(super) fn phone_upgrade(&mut self, c: u32, h: &Habits, t: i64) {
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
    pub(super) fn landlord(&mut self, c: u32, h: &Habits, t: i64) {
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
    pub(super) fn bill_burst(&mut self, c: u32, h: &Habits, t: i64) {
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
    pub(super) fn travel(&mut self, c: u32, h: &Habits, t: i64) {
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
    pub(super) fn salary_day(&mut self, t: i64) {
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

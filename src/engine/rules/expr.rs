//! The analyst rule-condition language: parse, type-check, compile to
//! closures, evaluate in nanoseconds.
//!
//! The syntax is a subset of CEL (the policy language of Kubernetes and
//! Google Cloud), because analysts already read it:
//!
//! ```text
//! payee.distinct_payers_10m >= 8 && amount >= 2_000_000 && payer.new_payee
//! channel in ["MOBILE", "WEB"] && !(country == "VN") ? cross_border : false
//! lower(attributes["merchant_name"]).contains("casino") || blocklisted(device)
//! blocklist_source(payee) == "internal" && amount < 1_000_000
//! ```
//!
//! # Pipeline
//! `parse` (pest grammar in `grammar.pest`) → `check` (names resolved to
//! feature indexes and field accessors, types checked, *every* error
//! collected) → `compile` (a tree of boxed closures, specialised for the
//! common `feature OP constant` shapes, literal-only subexpressions folded).
//! Evaluation never looks a name up by string: features are read by index,
//! event fields through resolved accessors. The one keyed lookup is
//! `attributes["name"]`, a `BTreeMap` lookup with a key built at compile time.
//! Evaluation allocates only in `in_list(..)` on a `lower(..)`ed value (one
//! string, at most as long as the field).
//!
//! # Types
//! `num` (f64; amounts are exact up to 2^53 minor units), `bool`, `string`,
//! `list of num`, `list of string`. Lists are literals of literals, and may
//! appear only after `in` or inside `size()`: rules compare against fixed
//! sets, and constant lists keep evaluation free of allocation.
//!
//! # Absent values
//! Features can be absent (NaN in the [`FeatureVector`]), and so can string
//! fields (an empty field, a missing attribute, an `UNSPECIFIED` enum, a
//! `blocklist_*(..)` of an entity without a live entry). The
//! rules, chosen so that a missing signal never *fires* a rule by accident:
//! - an absent number is NaN; arithmetic with it is absent; so are `x / 0`
//!   and `x % 0`; `min`/`max`/`abs` of an absent value are absent;
//! - any comparison involving an absent value is false, `!=` included
//!   (`payer.amount_zscore != 0` is false when there is no z-score);
//! - an absent bool (a `Kind::Bool` feature that is NaN) is false in a
//!   boolean context: `&&`, `||`, `!`, `? :` and the condition itself. So
//!   `!payer.new_device` is *true* without a device; write
//!   `payer.new_device == false` to require one;
//! - an absent string compares false with everything (`==`, `!=`, `in`,
//!   `startsWith`, `endsWith`, `contains`, `in_list`); `size()` of it is
//!   absent; `lower()` of it is absent;
//! - `present(x)` / `has(x)` is true when `x` is present; `x == null` is the
//!   same as `!present(x)` and `x != null` the same as `present(x)`.
//!   Computed values (comparisons, `&&`...) and literals are always present.
//!
//! # Names
//! Every feature of the catalogue by its name, and these event fields:
//! `amount` (num, minor units), `hour` (num, local hour 0-23 of the event
//! time at [`Env::utc_offset_minutes`]), `round_amount` (bool, the amount is
//! a multiple of [`Env::round_unit_minor`]), `cross_border` (bool, `country`
//! is present and differs, ignoring ASCII case, from [`Env::home_country`]),
//! strings `currency`, `channel`, `payment_type` (short enum names such as
//! `"MOBILE"`, `"TRANSFER"`), `country`, `merchant_category`, `device_id`,
//! `phone`, `ip`, `payer.account`, `payer.bank_code`, `payer.kind`,
//! `payee.account`, `payee.bank_code`, `payee.kind` (`"ACCOUNT"`,
//! `"EWALLET"`, `"CARD"`), and `attributes["name"]` / `attributes.name`.
//!
//! # Functions
//! Method style `x.f(a)` is the same call as `f(x, a)`.
//! `startsWith`/`starts_with`, `endsWith`/`ends_with`, `contains` (string,
//! string → bool; case-sensitive); `lower`/`lowerAscii`/`lower_ascii` (ASCII
//! lower case, as CEL's `lowerAscii`: non-ASCII letters are kept, which is
//! what lets comparisons on a lowered value run without allocating);
//! `size` (characters of a string, length of a list); `abs`; `min`, `max`
//! (two or more nums); `present`/`has`; `in_list("name", x)` (exact match in
//! a named list of the rule file, given in [`Env::lists`]);
//! `blocklisted(payee | payer | device | phone | ip)` (a live entry for that
//! entity in the blocklist, through [`ListLookup`]); and, for the same
//! entities, the strings of that entry: `blocklist_action(..)` (`"HOLD"` or
//! `"REVIEW"`), `blocklist_kind(..)` (`"account"`, `"ewallet"`, `"card"`,
//! `"phone"`, `"device"`, `"ip"`) and `blocklist_source(..)` (where the entry
//! came from, such as `"national-scheme"` or `"internal"`), each absent when
//! the entity is not listed, its entry has expired, or (for the source) the
//! entry has none. So `blocklist_action(device) == "REVIEW"` is false for an
//! unlisted device, and so is `blocklist_action(device) != "HOLD"`. They are
//! read from the list in place, without allocating. `blocklisted` and
//! `blocklist_*` are plain calls, not methods, and take the entity as a bare
//! word.

mod check;
mod compile;
mod parse;
mod reference;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::ops::Range;

use crate::engine::blocklist::ListKind;
use crate::engine::features::catalogue::{FeatureVector, F};
use crate::event::Payment;

pub use reference::interpret;

/// What a rule file gives the compiler besides the expression.
#[derive(Debug, Clone)]
pub struct Env {
    /// Named string lists of the rule file, for `in_list("name", x)`.
    pub lists: HashMap<String, Vec<String>>,
    /// Offset of local time from UTC, for `hour`.
    pub utc_offset_minutes: i32,
    /// ISO 3166-1 alpha-2 code of the bank's own country, for `cross_border`.
    pub home_country: String,
    /// `round_amount` is true when the amount is a multiple of this (minor
    /// units): 1_000_000 suits VND, 100_000 (1,000.00) suits EUR.
    pub round_unit_minor: i64,
}

impl Default for Env {
    fn default() -> Self {
        Env {
            lists: HashMap::new(),
            utc_offset_minutes: 0,
            home_country: String::new(),
            round_unit_minor: 1_000_000,
        }
    }
}

/// What a rule may read of a live blocklist entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListedEntry<'a> {
    pub kind: ListKind,
    pub action: crate::engine::Decision,
    pub source: &'a str,
    pub reason: &'a str,
}

/// A lookup in the shared blocklist, by kind and raw value.
///
/// `Blocklist::lookup` is private, so the engine's blocklist implements this
/// beside it; tests use a small map.
pub trait ListLookup {
    /// The live (unexpired at `now_ms`) entry for `value` of `kind`, if any.
    fn listed(&self, kind: ListKind, value: &str, now_ms: i64) -> Option<ListedEntry<'_>>;
    /// Whether `value` has a live entry of `kind`.
    fn is_listed(&self, kind: ListKind, value: &str, now_ms: i64) -> bool {
        self.listed(kind, value, now_ms).is_some()
    }
    /// [`ListLookup::listed`] for an account held at `bank`: a list that
    /// keeps bank-qualified entries (`VCB:123`) checks those too.
    fn listed_at(
        &self,
        kind: ListKind,
        _bank: &str,
        value: &str,
        now_ms: i64,
    ) -> Option<ListedEntry<'_>> {
        self.listed(kind, value, now_ms)
    }
}

/// A lookup that lists nothing: for tools and tests without a blocklist.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoLists;

impl ListLookup for NoLists {
    fn listed(&self, _: ListKind, _: &str, _: i64) -> Option<ListedEntry<'_>> {
        None
    }
}

/// What one evaluation reads.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub payment: &'a Payment,
    pub features: &'a FeatureVector,
    pub blocklist: &'a dyn ListLookup,
    /// Wall-clock time, for blocklist entry expiry.
    pub now_ms: i64,
}

/// The class of an [`ExprError`], for tools that group or count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Syntax,
    UnknownName,
    UnknownFunction,
    UnknownList,
    ArgumentCount,
    Type,
    /// Over a size or nesting limit.
    TooComplex,
}

/// One problem in a condition, with the byte range of the source it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at {}..{})", span.start, span.end)]
pub struct ExprError {
    pub kind: ErrorKind,
    pub span: Range<usize>,
    pub message: String,
}

impl ExprError {
    pub(crate) fn new(kind: ErrorKind, span: Range<usize>, message: impl Into<String>) -> Self {
        ExprError {
            kind,
            span,
            message: message.into(),
        }
    }

    /// 1-based line and column (in characters) of the start of the span, so
    /// a rule-file loader can print `file:line:col`.
    pub fn line_col(&self, src: &str) -> (usize, usize) {
        let before = src.get(..self.span.start).unwrap_or(src);
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        (line, col)
    }
}

/// The entity `blocklisted(..)` and `blocklist_*(..)` look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Payee,
    Payer,
    Device,
    Phone,
    Ip,
}

impl Entity {
    const ALL: [(&'static str, Entity); 5] = [
        ("payee", Entity::Payee),
        ("payer", Entity::Payer),
        ("device", Entity::Device),
        ("phone", Entity::Phone),
        ("ip", Entity::Ip),
    ];

    /// The list kind, bank code (accounts only) and raw value to look up
    /// for this payment; the value is empty when the payment has none.
    fn key(self, p: &Payment) -> (ListKind, &str, &str) {
        use crate::event::AccountKind;
        let account = |kind: AccountKind| match kind {
            AccountKind::Ewallet => ListKind::Ewallet,
            AccountKind::Card => ListKind::Card,
            AccountKind::Account | AccountKind::Unspecified => ListKind::Account,
        };
        match self {
            Entity::Payee => (account(p.payee.kind), &p.payee.bank_code, &p.payee.account),
            Entity::Payer => (account(p.payer.kind), &p.payer.bank_code, &p.payer.account),
            Entity::Device => (ListKind::Device, "", &p.device_id),
            Entity::Phone => (ListKind::Phone, "", &p.phone),
            Entity::Ip => (ListKind::Ip, "", &p.ip),
        }
    }

    fn is_listed(self, ctx: &Ctx<'_>) -> bool {
        self.listed(ctx).is_some()
    }

    /// The live entry for this payment's entity, borrowed from the list.
    fn listed<'a>(self, ctx: &Ctx<'a>) -> Option<ListedEntry<'a>> {
        let (kind, bank, value) = self.key(ctx.payment);
        if value.is_empty() {
            return None;
        }
        ctx.blocklist.listed_at(kind, bank, value, ctx.now_ms)
    }
}

/// What `blocklist_action/kind/source(..)` read of a live entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryField {
    /// `"HOLD"` or `"REVIEW"`.
    Action,
    /// `"account"`, `"ewallet"`, `"card"`, `"phone"`, `"device"` or `"ip"`.
    Kind,
    /// Where the entry came from, such as `"national-scheme"`.
    Source,
}

impl EntryField {
    /// The field's text, borrowed (action and kind are static). An empty
    /// source reads as absent, like any empty string.
    fn read<'a>(self, e: ListedEntry<'a>) -> &'a str {
        match self {
            EntryField::Action => e.action.as_str(),
            EntryField::Kind => e.kind.as_str(),
            EntryField::Source => e.source,
        }
    }

    /// The field of `entity`'s live entry; `None` when the entity is not
    /// listed, its entry has expired, or the field is empty.
    fn get<'a>(self, entity: Entity, ctx: &Ctx<'a>) -> Option<&'a str> {
        entity
            .listed(ctx)
            .map(|e| self.read(e))
            .filter(|s| !s.is_empty())
    }
}

/// A compiled condition: evaluate it with [`Condition::eval`].
pub struct Condition {
    root: compile::BoolFn,
    features: Vec<F>,
    source: Box<str>,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Condition")
            .field("source", &self.source)
            .field("features", &self.features)
            .finish()
    }
}

impl Condition {
    /// Whether the condition holds for this payment. Never allocates except
    /// for `in_list` on a lowered value; never fails.
    #[inline]
    pub fn eval(&self, ctx: &Ctx<'_>) -> bool {
        (self.root)(ctx)
    }

    /// The features the condition reads, in catalogue order: for rule docs
    /// and for warning when a rule reads a feature that is not computed.
    pub fn features(&self) -> Vec<F> {
        self.features.clone()
    }

    /// The source it was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// Parses, type-checks and compiles a condition, which must be a bool.
/// Returns every error found, each with its span in `src`.
pub fn compile(src: &str, env: &Env) -> Result<Condition, Vec<ExprError>> {
    let ast = parse::parse(src)?;
    let typed = check::check_condition(&ast, env)?;
    let mut features = Vec::new();
    typed.collect_features(&mut features);
    features.sort_by_key(|f| *f as u8);
    features.dedup();
    Ok(Condition {
        root: compile::compile_condition(&typed, env),
        features,
        source: src.into(),
    })
}

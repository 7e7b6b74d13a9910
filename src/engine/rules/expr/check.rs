//! Name resolution and type checking: the untyped AST to a typed tree over
//! feature indexes and field accessors. Every error is collected; an
//! operand that already failed has type [`Ty::Error`] and raises nothing
//! more, so one mistake gives one message.

use std::ops::Range;

use super::parse::{BinOp, Expr, Kind as K, UnOp};
use super::{Entity, EntryField, Env, ErrorKind, ExprError};
use crate::engine::features::catalogue::{Kind as FKind, CATALOGUE, F};
use crate::event::Payment;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ty {
    Num,
    Bool,
    Str,
    NumList,
    StrList,
    Null,
    /// The operand already has an error.
    Error,
}

impl std::fmt::Display for Ty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ty::Num => "num",
            Ty::Bool => "bool",
            Ty::Str => "string",
            Ty::NumList => "list of num",
            Ty::StrList => "list of string",
            Ty::Null => "null",
            Ty::Error => "error",
        })
    }
}

/// An event field a condition can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    Amount,
    Hour,
    RoundAmount,
    CrossBorder,
    Str(StrField),
}

/// A string field; its accessor returns "" when absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StrField {
    Currency,
    Channel,
    PaymentType,
    Country,
    MerchantCategory,
    PayerAccount,
    PayerBankCode,
    PayerKind,
    PayeeAccount,
    PayeeBankCode,
    PayeeKind,
    DeviceId,
    Phone,
    Ip,
}

/// Every field by name, for resolution and suggestions.
const FIELDS: &[(&str, Field)] = &[
    ("amount", Field::Amount),
    ("hour", Field::Hour),
    ("round_amount", Field::RoundAmount),
    ("cross_border", Field::CrossBorder),
    ("currency", Field::Str(StrField::Currency)),
    ("channel", Field::Str(StrField::Channel)),
    ("payment_type", Field::Str(StrField::PaymentType)),
    ("country", Field::Str(StrField::Country)),
    ("merchant_category", Field::Str(StrField::MerchantCategory)),
    ("payer.account", Field::Str(StrField::PayerAccount)),
    ("payer.bank_code", Field::Str(StrField::PayerBankCode)),
    ("payer.kind", Field::Str(StrField::PayerKind)),
    ("payee.account", Field::Str(StrField::PayeeAccount)),
    ("payee.bank_code", Field::Str(StrField::PayeeBankCode)),
    ("payee.kind", Field::Str(StrField::PayeeKind)),
    ("device_id", Field::Str(StrField::DeviceId)),
    ("phone", Field::Str(StrField::Phone)),
    ("ip", Field::Str(StrField::Ip)),
];

fn short<'a>(full: &'a str, prefix: &str) -> &'a str {
    match full.strip_prefix(prefix) {
        Some("UNSPECIFIED") => "",
        Some(s) => s,
        None => full,
    }
}

impl StrField {
    /// The field's text, "" when absent (an `UNSPECIFIED` enum is absent).
    /// A fn pointer, so the compiled tree calls it without a match.
    pub(super) fn accessor(self) -> fn(&Payment) -> &str {
        match self {
            StrField::Currency => |p| p.currency.as_str(),
            StrField::Channel => |p| short(p.channel.as_str_name(), "CHANNEL_"),
            StrField::PaymentType => |p| short(p.payment_type.as_str_name(), "PAYMENT_TYPE_"),
            StrField::Country => |p| &p.country,
            StrField::MerchantCategory => |p| &p.merchant_category,
            StrField::PayerAccount => |p| &p.payer.account,
            StrField::PayerBankCode => |p| &p.payer.bank_code,
            StrField::PayerKind => |p| short(p.payer.kind.as_str_name(), "ACCOUNT_KIND_"),
            StrField::PayeeAccount => |p| &p.payee.account,
            StrField::PayeeBankCode => |p| &p.payee.bank_code,
            StrField::PayeeKind => |p| short(p.payee.kind.as_str_name(), "ACCOUNT_KIND_"),
            StrField::DeviceId => |p| &p.device_id,
            StrField::Phone => |p| &p.phone,
            StrField::Ip => |p| &p.ip,
        }
    }
}

/// The local hour (0-23) of an event time.
pub(super) fn local_hour(event_time_ms: i64, utc_offset_minutes: i32) -> f64 {
    let minutes = event_time_ms.div_euclid(60_000) + i64::from(utc_offset_minutes);
    (minutes.rem_euclid(24 * 60) / 60) as f64
}

/// A typed expression.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct T {
    pub ty: Ty,
    pub node: Node,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StrPred {
    StartsWith,
    EndsWith,
    Contains,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    Num(f64),
    Bool(bool),
    Str(Box<str>),
    Null,
    NumList(Vec<f64>),
    StrList(Vec<Box<str>>),
    Feature(F),
    Field(Field),
    Attr(Box<str>),
    Not(Box<T>),
    Neg(Box<T>),
    Arith(Arith, Box<T>, Box<T>),
    /// Order comparisons on nums; `==`/`!=` on two operands of one type.
    Cmp(Cmp, Box<T>, Box<T>),
    /// `present(x)`, `x != null` (true) and `x == null` (false).
    Present(bool, Box<T>),
    And(Box<T>, Box<T>),
    Or(Box<T>, Box<T>),
    Cond(Box<T>, Box<T>, Box<T>),
    /// Element, then a list literal.
    In(Box<T>, Box<T>),
    InList(Box<str>, Box<T>),
    StrPred(StrPred, Box<T>, Box<T>),
    Lower(Box<T>),
    Size(Box<T>),
    Abs(Box<T>),
    Min(Vec<T>),
    Max(Vec<T>),
    Blocklisted(Entity),
    /// `blocklist_action/kind/source(entity)`: a string, absent when the
    /// entity has no live entry.
    ListEntry(Entity, EntryField),
}

impl T {
    fn new(ty: Ty, node: Node) -> T {
        T { ty, node }
    }

    fn error() -> T {
        T::new(Ty::Error, Node::Null)
    }

    fn children(&self) -> Vec<&T> {
        match &self.node {
            Node::Num(_)
            | Node::Bool(_)
            | Node::Str(_)
            | Node::Null
            | Node::NumList(_)
            | Node::StrList(_)
            | Node::Feature(_)
            | Node::Field(_)
            | Node::Attr(_)
            | Node::Blocklisted(_)
            | Node::ListEntry(..) => Vec::new(),
            Node::Not(a)
            | Node::Neg(a)
            | Node::Present(_, a)
            | Node::InList(_, a)
            | Node::Lower(a)
            | Node::Size(a)
            | Node::Abs(a) => vec![a],
            Node::Arith(_, a, b)
            | Node::Cmp(_, a, b)
            | Node::And(a, b)
            | Node::Or(a, b)
            | Node::In(a, b)
            | Node::StrPred(_, a, b) => vec![a, b],
            Node::Cond(a, b, c) => vec![a, b, c],
            Node::Min(v) | Node::Max(v) => v.iter().collect(),
        }
    }

    /// Whether the value depends on nothing but literals (and the rule
    /// file's named lists), so it can be computed once at compile time.
    pub(super) fn is_const(&self) -> bool {
        !matches!(
            self.node,
            Node::Feature(_)
                | Node::Field(_)
                | Node::Attr(_)
                | Node::Blocklisted(_)
                | Node::ListEntry(..)
        ) && self.children().into_iter().all(T::is_const)
    }

    pub(super) fn is_literal(&self) -> bool {
        matches!(
            self.node,
            Node::Num(_)
                | Node::Bool(_)
                | Node::Str(_)
                | Node::Null
                | Node::NumList(_)
                | Node::StrList(_)
        )
    }

    pub(super) fn collect_features(&self, out: &mut Vec<F>) {
        if let Node::Feature(f) = self.node {
            out.push(f);
        }
        for c in self.children() {
            c.collect_features(out);
        }
    }
}

/// Checks a whole condition: it must type to bool.
pub(super) fn check_condition(e: &Expr, env: &Env) -> Result<T, Vec<ExprError>> {
    let mut c = Checker {
        env,
        errors: Vec::new(),
    };
    let t = c.expr(e);
    match t.ty {
        Ty::Bool | Ty::Error => {}
        other => c.err(
            ErrorKind::Type,
            &e.span,
            format!("a condition must be bool, found {other}"),
        ),
    }
    if c.errors.is_empty() {
        Ok(t)
    } else {
        c.errors.sort_by_key(|e| (e.span.start, e.span.end));
        Err(c.errors)
    }
}

struct Checker<'e> {
    env: &'e Env,
    errors: Vec<ExprError>,
}

/// Function names, canonical first; aliases map to the same [`Func`].
const FUNCS: &[(&str, Func)] = &[
    ("startsWith", Func::StrPred(StrPred::StartsWith)),
    ("starts_with", Func::StrPred(StrPred::StartsWith)),
    ("endsWith", Func::StrPred(StrPred::EndsWith)),
    ("ends_with", Func::StrPred(StrPred::EndsWith)),
    ("contains", Func::StrPred(StrPred::Contains)),
    ("lower", Func::Lower),
    ("lowerAscii", Func::Lower),
    ("lower_ascii", Func::Lower),
    ("size", Func::Size),
    ("abs", Func::Abs),
    ("min", Func::Min),
    ("max", Func::Max),
    ("present", Func::Present),
    ("has", Func::Present),
    ("in_list", Func::InList),
    ("blocklisted", Func::Blocklisted),
    ("blocklist_action", Func::ListEntry(EntryField::Action)),
    ("blocklist_kind", Func::ListEntry(EntryField::Kind)),
    ("blocklist_source", Func::ListEntry(EntryField::Source)),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    StrPred(StrPred),
    Lower,
    Size,
    Abs,
    Min,
    Max,
    Present,
    InList,
    Blocklisted,
    ListEntry(EntryField),
}

impl Func {
    /// Argument count, receiver included: (min, max).
    fn arity(self) -> (usize, usize) {
        match self {
            Func::StrPred(_) | Func::InList => (2, 2),
            Func::Lower
            | Func::Size
            | Func::Abs
            | Func::Present
            | Func::Blocklisted
            | Func::ListEntry(_) => (1, 1),
            Func::Min | Func::Max => (2, usize::MAX),
        }
    }

    /// Whether `x.f(..)` reads naturally; `in_list`, `blocklisted`,
    /// `blocklist_*`, `present`, `min` and `max` are plain calls only.
    fn method_ok(self) -> bool {
        matches!(
            self,
            Func::StrPred(_) | Func::Lower | Func::Size | Func::Abs
        )
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The closest candidate by edit distance, when it is close enough to be
/// what was meant.
fn nearest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(2);
    candidates
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn did_you_mean(s: Option<&str>) -> String {
    s.map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default()
}

impl Checker<'_> {
    fn err(&mut self, kind: ErrorKind, span: &Range<usize>, message: impl Into<String>) {
        self.errors
            .push(ExprError::new(kind, span.clone(), message));
    }

    /// Requires `t` to be of type `want`; reports against `span` otherwise.
    fn want(
        &mut self,
        t: &T,
        want: Ty,
        span: &Range<usize>,
        what: impl FnOnce(Ty) -> String,
    ) -> bool {
        if t.ty == want {
            true
        } else {
            if t.ty != Ty::Error {
                let m = what(t.ty);
                self.err(ErrorKind::Type, span, m);
            }
            false
        }
    }

    fn expr(&mut self, e: &Expr) -> T {
        match &e.kind {
            K::Num(n) => T::new(Ty::Num, Node::Num(*n)),
            K::Bool(b) => T::new(Ty::Bool, Node::Bool(*b)),
            K::Str(s) => T::new(Ty::Str, Node::Str(s.as_str().into())),
            K::Null => T::new(Ty::Null, Node::Null),
            K::List(items) => {
                self.err(
                    ErrorKind::Type,
                    &e.span,
                    "a list can only follow `in` or be the argument of `size()`",
                );
                // Still check non-literal items, for their own errors.
                for it in items
                    .iter()
                    .filter(|it| !matches!(it.kind, K::Num(_) | K::Str(_)))
                {
                    let _ = self.expr(it);
                }
                T::error()
            }
            K::Path(p) => self.path(p, &e.span),
            K::Index(target, key) => self.index(target, key, &e.span),
            K::Call {
                recv,
                name,
                name_span,
                args,
            } => self.call(recv.as_deref(), name, name_span, args, &e.span),
            K::Unary(op, a) => {
                let t = self.expr(a);
                match op {
                    UnOp::Not => {
                        if self.want(&t, Ty::Bool, &a.span, |f| {
                            format!("`!` needs a bool operand, found {f}")
                        }) {
                            T::new(Ty::Bool, Node::Not(Box::new(t)))
                        } else {
                            T::error()
                        }
                    }
                    UnOp::Neg => {
                        if self.want(&t, Ty::Num, &a.span, |f| {
                            format!("unary `-` needs a num operand, found {f}")
                        }) {
                            T::new(Ty::Num, Node::Neg(Box::new(t)))
                        } else {
                            T::error()
                        }
                    }
                }
            }
            K::Binary(op, a, b) => self.binary(*op, a, b, &e.span),
            K::Cond(c, a, b) => {
                let tc = self.expr(c);
                let ta = self.expr(a);
                let tb = self.expr(b);
                let ok_c = self.want(&tc, Ty::Bool, &c.span, |f| {
                    format!("`? :` needs a bool condition, found {f}")
                });
                for (t, x) in [(&ta, a), (&tb, b)] {
                    if t.ty == Ty::Null {
                        self.err(
                            ErrorKind::Type,
                            &x.span,
                            "null can only be compared with `==` or `!=`",
                        );
                    }
                }
                if ta.ty == Ty::Error
                    || tb.ty == Ty::Error
                    || ta.ty == Ty::Null
                    || tb.ty == Ty::Null
                    || !ok_c
                {
                    return T::error();
                }
                if ta.ty != tb.ty {
                    self.err(
                        ErrorKind::Type,
                        &e.span,
                        format!(
                            "`? :` branches must have the same type, found {} and {}",
                            ta.ty, tb.ty
                        ),
                    );
                    return T::error();
                }
                T::new(ta.ty, Node::Cond(Box::new(tc), Box::new(ta), Box::new(tb)))
            }
        }
    }

    /// A list literal: every item a literal of one type (num or string).
    fn list(&mut self, items: &[Expr], span: &Range<usize>) -> T {
        let mut nums = Vec::new();
        let mut strs = Vec::new();
        let mut ok = true;
        for it in items {
            match &it.kind {
                K::Num(n) => nums.push(*n),
                K::Str(s) => strs.push(Box::<str>::from(s.as_str())),
                _ => {
                    let _ = self.expr(it);
                    self.err(
                        ErrorKind::Type,
                        &it.span,
                        "list items must be number or string literals",
                    );
                    ok = false;
                }
            }
        }
        if !ok {
            return T::error();
        }
        if !nums.is_empty() && !strs.is_empty() {
            self.err(
                ErrorKind::Type,
                span,
                "list items must all have one type, found num and string",
            );
            return T::error();
        }
        if nums.is_empty() && !strs.is_empty() {
            T::new(Ty::StrList, Node::StrList(strs))
        } else if strs.is_empty() && !nums.is_empty() {
            T::new(Ty::NumList, Node::NumList(nums))
        } else {
            // `[]`: typed by its use (`in` accepts it for any element).
            T::new(Ty::StrList, Node::StrList(Vec::new()))
        }
    }

    fn path(&mut self, p: &str, span: &Range<usize>) -> T {
        if let Some(f) = F::by_name(p) {
            let ty = if f.info().kind == FKind::Bool {
                Ty::Bool
            } else {
                Ty::Num
            };
            return T::new(ty, Node::Feature(f));
        }
        if let Some((_, field)) = FIELDS.iter().find(|(n, _)| *n == p) {
            let ty = match field {
                Field::Amount | Field::Hour => Ty::Num,
                Field::RoundAmount | Field::CrossBorder => Ty::Bool,
                Field::Str(_) => Ty::Str,
            };
            if *field == Field::RoundAmount && self.env.round_unit_minor <= 0 {
                self.err(
                    ErrorKind::Type,
                    span,
                    format!(
                        "`round_amount` needs a positive round unit, the environment has {}",
                        self.env.round_unit_minor
                    ),
                );
                return T::error();
            }
            return T::new(ty, Node::Field(*field));
        }
        if let Some(key) = p.strip_prefix("attributes.") {
            return T::new(Ty::Str, Node::Attr(key.into()));
        }
        if p == "attributes" {
            self.err(
                ErrorKind::UnknownName,
                span,
                "`attributes` needs a key: `attributes[\"name\"]` or `attributes.name`",
            );
            return T::error();
        }
        let names = CATALOGUE
            .iter()
            .map(|f| f.name)
            .chain(FIELDS.iter().map(|(n, _)| *n))
            .chain(std::iter::once("attributes"));
        let hint = did_you_mean(nearest(p, names));
        self.err(
            ErrorKind::UnknownName,
            span,
            format!("unknown name `{p}`{hint}"),
        );
        T::error()
    }

    fn index(&mut self, target: &Expr, key: &Expr, span: &Range<usize>) -> T {
        match (&target.kind, &key.kind) {
            (K::Path(p), K::Str(k)) if p == "attributes" => {
                T::new(Ty::Str, Node::Attr(k.as_str().into()))
            }
            (K::Path(p), _) if p == "attributes" => {
                let _ = self.expr(key);
                self.err(
                    ErrorKind::Type,
                    &key.span,
                    "the key of `attributes[..]` must be a string literal",
                );
                T::error()
            }
            _ => {
                let t = self.expr(target);
                let _ = self.expr(key);
                if t.ty != Ty::Error {
                    self.err(
                        ErrorKind::Type,
                        span,
                        "only `attributes` can be indexed with `[..]`",
                    );
                }
                T::error()
            }
        }
    }

    fn call(
        &mut self,
        recv: Option<&Expr>,
        name: &str,
        name_span: &Range<usize>,
        args: &[Expr],
        span: &Range<usize>,
    ) -> T {
        let Some((_, func)) = FUNCS.iter().find(|(n, _)| *n == name) else {
            // A bare entity (`payee`) was likely meant for a misspelt
            // `blocklist_*`: no second error for it.
            let is_entity =
                |a: &Expr| matches!(&a.kind, K::Path(p) if Entity::ALL.iter().any(|(n, _)| n == p));
            for a in recv.into_iter().chain(args).filter(|a| !is_entity(a)) {
                let _ = self.expr(a);
            }
            let hint = did_you_mean(nearest(name, FUNCS.iter().map(|(n, _)| *n)));
            self.err(
                ErrorKind::UnknownFunction,
                name_span,
                format!("unknown function `{name}`{hint}"),
            );
            return T::error();
        };
        let func = *func;
        if recv.is_some() && !func.method_ok() {
            self.err(
                ErrorKind::Syntax,
                name_span,
                format!("`{name}` is not a method: write `{name}(..)`"),
            );
            return T::error();
        }
        let all: Vec<&Expr> = recv.into_iter().chain(args).collect();
        let (lo, hi) = func.arity();
        if all.len() < lo || all.len() > hi {
            let shown = |n: usize| {
                if recv.is_some() {
                    n.saturating_sub(1)
                } else {
                    n
                }
            };
            let want = if hi == usize::MAX {
                format!("at least {} argument{}", shown(lo), plural(shown(lo)))
            } else {
                format!("{} argument{}", shown(lo), plural(shown(lo)))
            };
            let call = if recv.is_some() {
                format!("x.{name}(..)")
            } else {
                name.to_string()
            };
            self.err(
                ErrorKind::ArgumentCount,
                span,
                format!("`{call}` takes {want}, found {}", shown(all.len())),
            );
            // An entity (`payee`) is a bare word, not a name to resolve.
            if !matches!(func, Func::Blocklisted | Func::ListEntry(_)) {
                for a in &all {
                    let _ = self.expr(a);
                }
            }
            return T::error();
        }
        match func {
            Func::InList => return self.in_list(all[0], all[1]),
            Func::Blocklisted => {
                return match self.entity(name, all[0]) {
                    Some(e) => T::new(Ty::Bool, Node::Blocklisted(e)),
                    None => T::error(),
                };
            }
            Func::ListEntry(field) => {
                return match self.entity(name, all[0]) {
                    Some(e) => T::new(Ty::Str, Node::ListEntry(e, field)),
                    None => T::error(),
                };
            }
            Func::Size => {
                if let K::List(items) = &all[0].kind {
                    let t = self.list(items, &all[0].span);
                    if t.ty == Ty::Error {
                        return T::error();
                    }
                    return T::new(Ty::Num, Node::Size(Box::new(t)));
                }
            }
            _ => {}
        }
        let ts: Vec<T> = all.iter().map(|a| self.expr(a)).collect();
        let mut ok = true;
        for (i, (t, a)) in ts.iter().zip(&all).enumerate() {
            let want = match func {
                Func::StrPred(_) | Func::Lower => Some(Ty::Str),
                Func::Abs | Func::Min | Func::Max => Some(Ty::Num),
                Func::Size => (t.ty != Ty::NumList && t.ty != Ty::StrList).then_some(Ty::Str),
                Func::Present => {
                    if t.ty == Ty::NumList || t.ty == Ty::StrList || t.ty == Ty::Null {
                        self.err(
                            ErrorKind::Type,
                            &a.span,
                            format!("`{name}` needs a value, found {}", t.ty),
                        );
                        ok = false;
                    }
                    None
                }
                Func::InList | Func::Blocklisted | Func::ListEntry(_) => None,
            };
            if let Some(w) = want {
                let which = if recv.is_some() && i == 0 {
                    "the receiver".to_string()
                } else {
                    format!("argument {}", if recv.is_some() { i } else { i + 1 })
                };
                ok &= self.want(t, w, &a.span, |f| {
                    format!("{which} of `{name}` must be {w}, found {f}")
                });
            }
        }
        if !ok || ts.iter().any(|t| t.ty == Ty::Error) {
            return T::error();
        }
        let mut ts = ts.into_iter();
        let mut next = || Box::new(ts.next().unwrap_or_else(T::error));
        match func {
            Func::StrPred(p) => {
                let a = next();
                let b = next();
                T::new(Ty::Bool, Node::StrPred(p, a, b))
            }
            Func::Lower => T::new(Ty::Str, Node::Lower(next())),
            Func::Size => T::new(Ty::Num, Node::Size(next())),
            Func::Abs => T::new(Ty::Num, Node::Abs(next())),
            Func::Present => T::new(Ty::Bool, Node::Present(true, next())),
            Func::Min => T::new(Ty::Num, Node::Min(ts.collect())),
            Func::Max => T::new(Ty::Num, Node::Max(ts.collect())),
            Func::InList | Func::Blocklisted | Func::ListEntry(_) => T::error(),
        }
    }

    fn in_list(&mut self, name: &Expr, value: &Expr) -> T {
        let v = self.expr(value);
        let K::Str(list) = &name.kind else {
            self.err(
                ErrorKind::Type,
                &name.span,
                "the first argument of `in_list` must be a list name in quotes",
            );
            return T::error();
        };
        let ok = self.want(&v, Ty::Str, &value.span, |f| {
            format!("argument 2 of `in_list` must be string, found {f}")
        });
        if !self.env.lists.contains_key(list.as_str()) {
            let message = if self.env.lists.is_empty() {
                format!("unknown list `{list}`: the rule file defines no lists")
            } else {
                match nearest(list, self.env.lists.keys().map(String::as_str)) {
                    Some(n) => format!("unknown list `{list}`; did you mean `{n}`?"),
                    None => {
                        let mut names: Vec<&str> =
                            self.env.lists.keys().map(String::as_str).collect();
                        names.sort_unstable();
                        format!(
                            "unknown list `{list}`; the rule file defines: {}",
                            names.join(", ")
                        )
                    }
                }
            };
            self.err(ErrorKind::UnknownList, &name.span, message);
            return T::error();
        }
        if !ok {
            return T::error();
        }
        T::new(Ty::Bool, Node::InList(list.as_str().into(), Box::new(v)))
    }

    /// The entity argument of `blocklisted` and `blocklist_*`: a bare name,
    /// not an expression.
    fn entity(&mut self, func: &str, arg: &Expr) -> Option<Entity> {
        if let K::Path(p) = &arg.kind {
            if let Some((_, e)) = Entity::ALL.iter().find(|(n, _)| n == p) {
                return Some(*e);
            }
        }
        self.err(
            ErrorKind::Type,
            &arg.span,
            format!("`{func}` takes one of: payee, payer, device, phone, ip"),
        );
        None
    }

    fn binary(&mut self, op: BinOp, a: &Expr, b: &Expr, span: &Range<usize>) -> T {
        if op == BinOp::In {
            return self.in_op(a, b);
        }
        let ta = self.expr(a);
        let tb = self.expr(b);
        let sym = op.symbol();
        match op {
            BinOp::And | BinOp::Or => {
                let oa = self.want(&ta, Ty::Bool, &a.span, |f| {
                    format!("`{sym}` needs bool operands, found {f}")
                });
                let ob = self.want(&tb, Ty::Bool, &b.span, |f| {
                    format!("`{sym}` needs bool operands, found {f}")
                });
                if !(oa && ob) {
                    return T::error();
                }
                let (ta, tb) = (Box::new(ta), Box::new(tb));
                let node = if op == BinOp::And {
                    Node::And(ta, tb)
                } else {
                    Node::Or(ta, tb)
                };
                T::new(Ty::Bool, node)
            }
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => {
                let oa = self.want(&ta, Ty::Num, &a.span, |f| {
                    format!("`{sym}` needs num operands, found {f}")
                });
                let ob = self.want(&tb, Ty::Num, &b.span, |f| {
                    format!("`{sym}` needs num operands, found {f}")
                });
                if !(oa && ob) {
                    return T::error();
                }
                let ar = match op {
                    BinOp::Add => Arith::Add,
                    BinOp::Sub => Arith::Sub,
                    BinOp::Mul => Arith::Mul,
                    BinOp::Div => Arith::Div,
                    _ => Arith::Rem,
                };
                T::new(Ty::Num, Node::Arith(ar, Box::new(ta), Box::new(tb)))
            }
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                let oa = self.want(&ta, Ty::Num, &a.span, |f| {
                    format!("`{sym}` needs num operands, found {f}")
                });
                let ob = self.want(&tb, Ty::Num, &b.span, |f| {
                    format!("`{sym}` needs num operands, found {f}")
                });
                if !(oa && ob) {
                    return T::error();
                }
                let c = match op {
                    BinOp::Lt => Cmp::Lt,
                    BinOp::Le => Cmp::Le,
                    BinOp::Gt => Cmp::Gt,
                    _ => Cmp::Ge,
                };
                T::new(Ty::Bool, Node::Cmp(c, Box::new(ta), Box::new(tb)))
            }
            BinOp::Eq | BinOp::Ne => {
                if ta.ty == Ty::Error || tb.ty == Ty::Error {
                    return T::error();
                }
                let is_eq = op == BinOp::Eq;
                for (t, x) in [(&ta, a), (&tb, b)] {
                    if matches!(t.ty, Ty::NumList | Ty::StrList) {
                        self.err(
                            ErrorKind::Type,
                            &x.span,
                            format!("`{sym}` is not defined for lists"),
                        );
                        return T::error();
                    }
                }
                match (ta.ty, tb.ty) {
                    (Ty::Null, Ty::Null) => T::new(Ty::Bool, Node::Bool(is_eq)),
                    (Ty::Null, _) => T::new(Ty::Bool, Node::Present(!is_eq, Box::new(tb))),
                    (_, Ty::Null) => T::new(Ty::Bool, Node::Present(!is_eq, Box::new(ta))),
                    (x, y) if x == y => {
                        let c = if is_eq { Cmp::Eq } else { Cmp::Ne };
                        T::new(Ty::Bool, Node::Cmp(c, Box::new(ta), Box::new(tb)))
                    }
                    (x, y) => {
                        self.err(
                            ErrorKind::Type,
                            span,
                            format!("`{sym}` needs operands of the same type, found {x} and {y}"),
                        );
                        T::error()
                    }
                }
            }
            BinOp::In => T::error(),
        }
    }

    fn in_op(&mut self, a: &Expr, b: &Expr) -> T {
        let ta = self.expr(a);
        let tb = match &b.kind {
            K::List(items) => self.list(items, &b.span),
            _ => {
                let t = self.expr(b);
                if t.ty != Ty::Error {
                    self.err(
                        ErrorKind::Type,
                        &b.span,
                        format!("`in` needs a list literal on the right, found {}", t.ty),
                    );
                }
                return T::error();
            }
        };
        if ta.ty == Ty::Error || tb.ty == Ty::Error {
            return T::error();
        }
        let empty = matches!(&tb.node, Node::StrList(v) if v.is_empty());
        let tb = match (ta.ty, tb.ty) {
            (Ty::Num, Ty::NumList) | (Ty::Str, Ty::StrList) => tb,
            (Ty::Num, _) if empty => T::new(Ty::NumList, Node::NumList(Vec::new())),
            (elem, list) => {
                let elem_word = if matches!(elem, Ty::Num | Ty::Str) {
                    format!("{elem}")
                } else {
                    format!("{elem} (lists hold num or string)")
                };
                self.err(
                    ErrorKind::Type,
                    &(a.span.start..b.span.end),
                    format!(
                        "`in` needs an element of the list's type, found {elem_word} in a {list}"
                    ),
                );
                return T::error();
            }
        };
        T::new(Ty::Bool, Node::In(Box::new(ta), Box::new(tb)))
    }
}

//! The typed tree to boxed closures.
//!
//! Each bool or num node becomes one closure that calls its children's; the
//! shapes rules are mostly made of (`feature OP constant`, `amount OP
//! constant`) become a single closure that reads the slot and compares, so
//! `a >= 8 && b >= 2_000_000 && c` is four indirect calls. Strings are not
//! closures but a small enum ([`StrNode`]) evaluated in place, because a
//! closure cannot hand out a borrow of its own captures; string values never
//! leave the comparison that reads them, so they are never copied.

use std::collections::HashSet;
use std::sync::Arc;

use super::check::{local_hour, Arith, Cmp, Field, Node, StrPred, Ty, T};
use super::reference::{self, Value};
use super::{Ctx, Entity, EntryField, Env};
use crate::engine::features::catalogue::F;
use crate::event::Payment;

pub(super) type BoolFn = Box<dyn Fn(&Ctx<'_>) -> bool + Send + Sync>;
/// A bool that may be absent (a NaN bool feature): for `==`, `!=` and
/// `present()`, where absence matters.
type TriFn = Box<dyn Fn(&Ctx<'_>) -> Option<bool> + Send + Sync>;
type NumFn = Box<dyn Fn(&Ctx<'_>) -> f64 + Send + Sync>;
/// A named list of the rule file as a set, shared by every use.
type SharedSet = Arc<HashSet<Box<str>>>;

fn bf(f: impl Fn(&Ctx<'_>) -> bool + Send + Sync + 'static) -> BoolFn {
    Box::new(f)
}

fn tf(f: impl Fn(&Ctx<'_>) -> Option<bool> + Send + Sync + 'static) -> TriFn {
    Box::new(f)
}

fn nf(f: impl Fn(&Ctx<'_>) -> f64 + Send + Sync + 'static) -> NumFn {
    Box::new(f)
}

/// A compiled number, kept open so comparisons and arithmetic can fuse a
/// constant or a direct slot read into their own closure.
enum NumC {
    Const(f64),
    Feature(F),
    Amount,
    Dyn(NumFn),
}

impl NumC {
    fn into_fn(self) -> NumFn {
        match self {
            NumC::Const(k) => nf(move |_| k),
            NumC::Feature(f) => nf(move |c| c.features.get(f)),
            NumC::Amount => nf(|c| c.payment.amount_minor as f64),
            NumC::Dyn(f) => f,
        }
    }
}

/// A string view: the bytes of a present value, and whether it is read as
/// ASCII lower case (`lower(x)` costs nothing until compared).
#[derive(Clone, Copy)]
struct SVal<'a> {
    s: &'a str,
    lower: bool,
}

#[inline]
fn fold(b: u8, lower: bool) -> u8 {
    if lower {
        b.to_ascii_lowercase()
    } else {
        b
    }
}

#[inline]
fn bytes_eq(a: &[u8], la: bool, b: &[u8], lb: bool) -> bool {
    if !la && !lb {
        return a == b;
    }
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| fold(*x, la) == fold(*y, lb))
}

impl SVal<'_> {
    fn eq(self, o: SVal<'_>) -> bool {
        bytes_eq(self.s.as_bytes(), self.lower, o.s.as_bytes(), o.lower)
    }

    /// Byte-wise, which is exact for UTF-8: a byte prefix that is a whole
    /// string is a character prefix.
    fn starts_with(self, o: SVal<'_>) -> bool {
        let (a, b) = (self.s.as_bytes(), o.s.as_bytes());
        a.len() >= b.len() && bytes_eq(&a[..b.len()], self.lower, b, o.lower)
    }

    fn ends_with(self, o: SVal<'_>) -> bool {
        let (a, b) = (self.s.as_bytes(), o.s.as_bytes());
        a.len() >= b.len() && bytes_eq(&a[a.len() - b.len()..], self.lower, b, o.lower)
    }

    /// A naive scan: fields are at most a few hundred bytes (decode limits).
    fn contains(self, o: SVal<'_>) -> bool {
        let (a, b) = (self.s.as_bytes(), o.s.as_bytes());
        b.is_empty()
            || a.windows(b.len())
                .any(|w| bytes_eq(w, self.lower, b, o.lower))
    }

    fn in_set(self, set: &HashSet<Box<str>>) -> bool {
        if !self.lower || !self.s.bytes().any(|b| b.is_ascii_uppercase()) {
            set.contains(self.s)
        } else {
            // The one allocation at evaluation, bounded by the field length.
            set.contains(self.s.to_ascii_lowercase().as_str())
        }
    }
}

/// A compiled string expression, evaluated by [`StrNode::get`].
enum StrNode {
    Const(Option<Box<str>>),
    Field(fn(&Payment) -> &str),
    /// The key is built once here; evaluation is one `BTreeMap` lookup.
    Attr(Box<str>),
    Lower(Box<StrNode>),
    Cond(BoolFn, Box<StrNode>, Box<StrNode>),
    /// A field of the entity's live blocklist entry, borrowed from the list.
    ListEntry(Entity, EntryField),
}

impl StrNode {
    /// The value, `None` when absent (empty field, missing attribute).
    fn get<'r>(&'r self, c: &Ctx<'r>) -> Option<SVal<'r>> {
        let present = |s: &'r str| (!s.is_empty()).then_some(SVal { s, lower: false });
        match self {
            StrNode::Const(s) => s.as_deref().map(|s| SVal { s, lower: false }),
            StrNode::Field(acc) => present(acc(c.payment)),
            StrNode::Attr(k) => c.payment.attributes.get(&**k).and_then(|v| present(v)),
            StrNode::Lower(a) => a.get(c).map(|v| SVal {
                s: v.s,
                lower: true,
            }),
            StrNode::Cond(cond, a, b) => {
                if cond(c) {
                    a.get(c)
                } else {
                    b.get(c)
                }
            }
            StrNode::ListEntry(e, f) => f.get(*e, c).map(|s| SVal { s, lower: false }),
        }
    }
}

/// Compiles a checked condition (type bool).
pub(super) fn compile_condition(t: &T, env: &Env) -> BoolFn {
    Compiler {
        env,
        sets: Vec::new(),
    }
    .bool(t)
}

struct Compiler<'e> {
    env: &'e Env,
    /// Named lists already turned into sets, shared by every use.
    sets: Vec<(Box<str>, SharedSet)>,
}

#[inline(always)]
fn lt(a: f64, b: f64) -> bool {
    a < b
}
#[inline(always)]
fn le(a: f64, b: f64) -> bool {
    a <= b
}
#[inline(always)]
fn gt(a: f64, b: f64) -> bool {
    a > b
}
#[inline(always)]
fn ge(a: f64, b: f64) -> bool {
    a >= b
}
#[inline(always)]
fn eq(a: f64, b: f64) -> bool {
    a == b
}
/// False when either side is absent, unlike IEEE `!=`.
#[inline(always)]
fn ne(a: f64, b: f64) -> bool {
    !a.is_nan() && !b.is_nan() && a != b
}
#[inline(always)]
fn add(a: f64, b: f64) -> f64 {
    a + b
}
#[inline(always)]
fn sub(a: f64, b: f64) -> f64 {
    a - b
}
#[inline(always)]
fn mul(a: f64, b: f64) -> f64 {
    a * b
}
/// Division by zero is absent, not infinity.
#[inline(always)]
fn div(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        f64::NAN
    } else {
        a / b
    }
}
#[inline(always)]
fn rem(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        f64::NAN
    } else {
        a % b
    }
}
#[inline(always)]
fn min2(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if b < a {
        b
    } else {
        a
    }
}
#[inline(always)]
fn max2(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if b > a {
        b
    } else {
        a
    }
}

/// One closure per operator and operand shape, so the operator is inlined.
macro_rules! fuse_cmp {
    ($a:expr, $b:expr, $op:ident) => {
        match ($a, $b) {
            (NumC::Feature(f), NumC::Const(k)) => bf(move |c| $op(c.features.get(f), k)),
            (NumC::Amount, NumC::Const(k)) => bf(move |c| $op(c.payment.amount_minor as f64, k)),
            (NumC::Feature(f), NumC::Feature(g)) => {
                bf(move |c| $op(c.features.get(f), c.features.get(g)))
            }
            (NumC::Const(k), b) => {
                let b = b.into_fn();
                bf(move |c| $op(k, b(c)))
            }
            (a, NumC::Const(k)) => {
                let a = a.into_fn();
                bf(move |c| $op(a(c), k))
            }
            (a, b) => {
                let (a, b) = (a.into_fn(), b.into_fn());
                bf(move |c| $op(a(c), b(c)))
            }
        }
    };
}

macro_rules! fuse_arith {
    ($a:expr, $b:expr, $op:ident) => {
        match ($a, $b) {
            (NumC::Feature(f), NumC::Const(k)) => NumC::Dyn(nf(move |c| $op(c.features.get(f), k))),
            (NumC::Amount, NumC::Const(k)) => {
                NumC::Dyn(nf(move |c| $op(c.payment.amount_minor as f64, k)))
            }
            (NumC::Const(k), b) => {
                let b = b.into_fn();
                NumC::Dyn(nf(move |c| $op(k, b(c))))
            }
            (a, NumC::Const(k)) => {
                let a = a.into_fn();
                NumC::Dyn(nf(move |c| $op(a(c), k)))
            }
            (a, b) => {
                let (a, b) = (a.into_fn(), b.into_fn());
                NumC::Dyn(nf(move |c| $op(a(c), b(c))))
            }
        }
    };
}

/// Whether a subtree is worth folding: constant, but not already a literal.
fn foldable(t: &T) -> bool {
    !t.is_literal() && t.is_const()
}

impl Compiler<'_> {
    fn constant(&self, t: &T) -> Value {
        reference::eval(t, self.env, None)
    }

    fn bool(&mut self, t: &T) -> BoolFn {
        if foldable(t) {
            let v = self.constant(t).truthy();
            return bf(move |_| v);
        }
        match &t.node {
            Node::Bool(b) => {
                let b = *b;
                bf(move |_| b)
            }
            Node::Feature(f) => {
                let f = *f;
                bf(move |c| {
                    let v = c.features.get(f);
                    !v.is_nan() && v != 0.0
                })
            }
            Node::Field(Field::RoundAmount) => {
                // The checker refuses a unit <= 0; max(1) keeps `%` total anyway.
                let unit = self.env.round_unit_minor.max(1);
                bf(move |c| c.payment.amount_minor % unit == 0)
            }
            Node::Field(Field::CrossBorder) => {
                let home: Box<str> = self.env.home_country.as_str().into();
                bf(move |c| {
                    let k = &c.payment.country;
                    !k.is_empty() && !k.eq_ignore_ascii_case(&home)
                })
            }
            Node::Not(a) => {
                let a = self.bool(a);
                bf(move |c| !a(c))
            }
            Node::And(a, b) => {
                let (a, b) = (self.bool(a), self.bool(b));
                bf(move |c| a(c) && b(c))
            }
            Node::Or(a, b) => {
                let (a, b) = (self.bool(a), self.bool(b));
                bf(move |c| a(c) || b(c))
            }
            Node::Cond(k, a, b) => {
                let (k, a, b) = (self.bool(k), self.bool(a), self.bool(b));
                bf(move |c| if k(c) { a(c) } else { b(c) })
            }
            Node::Cmp(op, a, b) => self.cmp(*op, a, b),
            Node::Present(want, a) => {
                let want = *want;
                match a.ty {
                    Ty::Num => {
                        let a = self.num(a).into_fn();
                        bf(move |c| a(c).is_nan() != want)
                    }
                    Ty::Bool => {
                        let a = self.tri(a);
                        bf(move |c| a(c).is_some() == want)
                    }
                    Ty::Str => {
                        let a = self.str(a);
                        bf(move |c| a.get(c).is_some() == want)
                    }
                    _ => bf(move |_| !want),
                }
            }
            Node::In(a, list) => match (&a.ty, &list.node) {
                (Ty::Num, Node::NumList(items)) => {
                    let items = items.clone();
                    match self.num(a) {
                        NumC::Feature(f) => bf(move |c| items.contains(&c.features.get(f))),
                        other => {
                            let a = other.into_fn();
                            bf(move |c| items.contains(&a(c)))
                        }
                    }
                }
                (Ty::Str, Node::StrList(items)) => {
                    let a = self.str(a);
                    if items.len() > 8 {
                        let set: HashSet<Box<str>> = items.iter().cloned().collect();
                        let items = items.clone();
                        bf(move |c| match a.get(c) {
                            Some(v) if !v.lower => set.contains(v.s),
                            Some(v) => items.iter().any(|k| v.eq(SVal { s: k, lower: false })),
                            None => false,
                        })
                    } else {
                        let items = items.clone();
                        bf(move |c| {
                            a.get(c).is_some_and(|v| {
                                items.iter().any(|k| v.eq(SVal { s: k, lower: false }))
                            })
                        })
                    }
                }
                _ => bf(|_| false),
            },
            Node::InList(name, a) => {
                let set = self.set(name);
                let a = self.str(a);
                bf(move |c| a.get(c).is_some_and(|v| v.in_set(&set)))
            }
            Node::StrPred(p, a, b) => {
                let (a, b) = (self.str(a), self.str(b));
                match p {
                    StrPred::StartsWith => bf(move |c| match (a.get(c), b.get(c)) {
                        (Some(x), Some(y)) => x.starts_with(y),
                        _ => false,
                    }),
                    StrPred::EndsWith => bf(move |c| match (a.get(c), b.get(c)) {
                        (Some(x), Some(y)) => x.ends_with(y),
                        _ => false,
                    }),
                    StrPred::Contains => bf(move |c| match (a.get(c), b.get(c)) {
                        (Some(x), Some(y)) => x.contains(y),
                        _ => false,
                    }),
                }
            }
            Node::Blocklisted(e) => {
                let e = *e;
                bf(move |c| e.is_listed(c))
            }
            // Not bool-typed: the checker never asks for these here.
            _ => bf(|_| false),
        }
    }

    fn tri(&mut self, t: &T) -> TriFn {
        if foldable(t) {
            let v = match self.constant(t) {
                Value::Bool(b) => b,
                _ => None,
            };
            return tf(move |_| v);
        }
        match &t.node {
            Node::Feature(f) => {
                let f = *f;
                tf(move |c| {
                    let v = c.features.get(f);
                    (!v.is_nan()).then_some(v != 0.0)
                })
            }
            Node::Cond(k, a, b) => {
                let (k, a, b) = (self.bool(k), self.tri(a), self.tri(b));
                tf(move |c| if k(c) { a(c) } else { b(c) })
            }
            _ => {
                let b = self.bool(t);
                tf(move |c| Some(b(c)))
            }
        }
    }

    fn cmp(&mut self, op: Cmp, a: &T, b: &T) -> BoolFn {
        match a.ty {
            Ty::Num => {
                let (a, b) = (self.num(a), self.num(b));
                match op {
                    Cmp::Lt => fuse_cmp!(a, b, lt),
                    Cmp::Le => fuse_cmp!(a, b, le),
                    Cmp::Gt => fuse_cmp!(a, b, gt),
                    Cmp::Ge => fuse_cmp!(a, b, ge),
                    Cmp::Eq => fuse_cmp!(a, b, eq),
                    Cmp::Ne => fuse_cmp!(a, b, ne),
                }
            }
            Ty::Bool => {
                let (a, b) = (self.tri(a), self.tri(b));
                let want = op == Cmp::Eq;
                bf(move |c| match (a(c), b(c)) {
                    (Some(x), Some(y)) => (x == y) == want,
                    _ => false,
                })
            }
            Ty::Str => {
                let want = op == Cmp::Eq;
                let (a, b) = (self.str(a), self.str(b));
                match (a, b) {
                    // `channel == "MOBILE"`: one accessor call and a memcmp.
                    (StrNode::Field(acc), StrNode::Const(Some(k)))
                    | (StrNode::Const(Some(k)), StrNode::Field(acc)) => bf(move |c| {
                        let s = acc(c.payment);
                        !s.is_empty() && (s == &*k) == want
                    }),
                    (a, b) => bf(move |c| match (a.get(c), b.get(c)) {
                        (Some(x), Some(y)) => x.eq(y) == want,
                        _ => false,
                    }),
                }
            }
            _ => bf(|_| false),
        }
    }

    fn num(&mut self, t: &T) -> NumC {
        if foldable(t) {
            return match self.constant(t) {
                Value::Num(n) => NumC::Const(n),
                _ => NumC::Const(f64::NAN),
            };
        }
        match &t.node {
            Node::Num(n) => NumC::Const(*n),
            Node::Feature(f) => NumC::Feature(*f),
            Node::Field(Field::Amount) => NumC::Amount,
            Node::Field(Field::Hour) => {
                let off = self.env.utc_offset_minutes;
                NumC::Dyn(nf(move |c| local_hour(c.payment.event_time_ms, off)))
            }
            Node::Neg(a) => {
                let a = self.num(a).into_fn();
                NumC::Dyn(nf(move |c| -a(c)))
            }
            Node::Abs(a) => {
                let a = self.num(a).into_fn();
                NumC::Dyn(nf(move |c| a(c).abs()))
            }
            Node::Arith(op, a, b) => {
                let (a, b) = (self.num(a), self.num(b));
                match op {
                    Arith::Add => fuse_arith!(a, b, add),
                    Arith::Sub => fuse_arith!(a, b, sub),
                    Arith::Mul => fuse_arith!(a, b, mul),
                    Arith::Div => fuse_arith!(a, b, div),
                    Arith::Rem => fuse_arith!(a, b, rem),
                }
            }
            Node::Min(v) | Node::Max(v) => {
                let is_min = matches!(t.node, Node::Min(_));
                let mut fs = v.iter().map(|x| self.num(x).into_fn());
                let (Some(first), Some(second)) = (fs.next(), fs.next()) else {
                    return NumC::Const(f64::NAN);
                };
                let rest: Vec<NumFn> = fs.collect();
                let pick: fn(f64, f64) -> f64 = if is_min { min2 } else { max2 };
                if rest.is_empty() {
                    NumC::Dyn(nf(move |c| pick(first(c), second(c))))
                } else {
                    NumC::Dyn(nf(move |c| {
                        rest.iter()
                            .fold(pick(first(c), second(c)), |acc, f| pick(acc, f(c)))
                    }))
                }
            }
            Node::Size(a) if a.ty == Ty::Str => {
                let a = self.str(a);
                NumC::Dyn(nf(move |c| {
                    a.get(c).map_or(f64::NAN, |v| v.s.chars().count() as f64)
                }))
            }
            Node::Cond(k, a, b) => {
                let (k, a, b) = (self.bool(k), self.num(a).into_fn(), self.num(b).into_fn());
                NumC::Dyn(nf(move |c| if k(c) { a(c) } else { b(c) }))
            }
            _ => NumC::Const(f64::NAN),
        }
    }

    fn str(&mut self, t: &T) -> StrNode {
        if foldable(t) {
            return match self.constant(t) {
                Value::Str(s) => StrNode::Const(s.map(String::into_boxed_str)),
                _ => StrNode::Const(None),
            };
        }
        match &t.node {
            Node::Str(s) => StrNode::Const(Some(s.clone())),
            Node::Field(Field::Str(f)) => StrNode::Field(f.accessor()),
            Node::Attr(k) => StrNode::Attr(k.clone()),
            Node::Lower(a) => StrNode::Lower(Box::new(self.str(a))),
            Node::Cond(k, a, b) => {
                StrNode::Cond(self.bool(k), Box::new(self.str(a)), Box::new(self.str(b)))
            }
            Node::ListEntry(e, f) => StrNode::ListEntry(*e, *f),
            _ => StrNode::Const(None),
        }
    }

    fn set(&mut self, name: &str) -> SharedSet {
        if let Some((_, s)) = self.sets.iter().find(|(n, _)| &**n == name) {
            return s.clone();
        }
        let set: SharedSet = Arc::new(
            self.env
                .lists
                .get(name)
                .map(|l| l.iter().map(|s| s.as_str().into()).collect())
                .unwrap_or_default(),
        );
        self.sets.push((name.into(), set.clone()));
        set
    }
}

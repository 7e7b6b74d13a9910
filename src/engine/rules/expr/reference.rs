//! The reference interpreter: walks the typed tree with dynamic values,
//! written for obviousness, not speed. It is the oracle of the property
//! test against the compiled closures, and the compiler's constant folder.

use super::check::{local_hour, Arith, Cmp, Field, Node, StrPred, Ty, T};
use super::{check, parse, Ctx, EntryField, Env, ExprError};

/// A dynamic value. `None` and NaN are absent.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Num(f64),
    Bool(Option<bool>),
    Str(Option<String>),
    NumList(Vec<f64>),
    StrList(Vec<String>),
    Null,
}

impl Value {
    fn num(&self) -> f64 {
        match self {
            Value::Num(n) => *n,
            _ => f64::NAN,
        }
    }

    /// In a boolean context an absent bool is false.
    pub(super) fn truthy(&self) -> bool {
        matches!(self, Value::Bool(Some(true)))
    }

    fn string(&self) -> Option<&str> {
        match self {
            Value::Str(s) => s.as_deref(),
            _ => None,
        }
    }

    fn is_present(&self) -> bool {
        match self {
            Value::Num(n) => !n.is_nan(),
            Value::Bool(b) => b.is_some(),
            Value::Str(s) => s.is_some(),
            Value::NumList(_) | Value::StrList(_) => true,
            Value::Null => false,
        }
    }
}

/// Parses, checks and evaluates `src` by walking the tree: slow, simple,
/// and the definition the compiled form is tested against.
pub fn interpret(src: &str, env: &Env, ctx: &Ctx<'_>) -> Result<bool, Vec<ExprError>> {
    let ast = parse::parse(src)?;
    let t = check::check_condition(&ast, env)?;
    Ok(eval(&t, env, Some(ctx)).truthy())
}

/// Evaluates a typed tree. Without a context (constant folding) every
/// event-dependent read is absent; the folder only calls it on constants.
pub(super) fn eval(t: &T, env: &Env, ctx: Option<&Ctx<'_>>) -> Value {
    let ev = |x: &T| eval(x, env, ctx);
    match &t.node {
        Node::Num(n) => Value::Num(*n),
        Node::Bool(b) => Value::Bool(Some(*b)),
        Node::Str(s) => Value::Str(Some(s.to_string())),
        Node::Null => Value::Null,
        Node::NumList(v) => Value::NumList(v.clone()),
        Node::StrList(v) => Value::StrList(v.iter().map(|s| s.to_string()).collect()),
        Node::Feature(f) => {
            let v = ctx.map_or(f64::NAN, |c| c.features.get(*f));
            if t.ty == Ty::Bool {
                Value::Bool(if v.is_nan() { None } else { Some(v != 0.0) })
            } else {
                Value::Num(v)
            }
        }
        Node::Field(f) => {
            let Some(c) = ctx else {
                return absent(t.ty);
            };
            let p = c.payment;
            match f {
                Field::Amount => Value::Num(p.amount_minor as f64),
                Field::Hour => Value::Num(local_hour(p.event_time_ms, env.utc_offset_minutes)),
                Field::RoundAmount => Value::Bool(Some(
                    env.round_unit_minor > 0 && p.amount_minor % env.round_unit_minor == 0,
                )),
                Field::CrossBorder => Value::Bool(Some(
                    !p.country.is_empty() && !p.country.eq_ignore_ascii_case(&env.home_country),
                )),
                Field::Str(s) => {
                    let text = (s.accessor())(p);
                    Value::Str((!text.is_empty()).then(|| text.to_string()))
                }
            }
        }
        Node::Attr(k) => Value::Str(
            ctx.and_then(|c| c.payment.attributes.get(&**k))
                .filter(|v| !v.is_empty())
                .cloned(),
        ),
        Node::Not(a) => Value::Bool(Some(!ev(a).truthy())),
        Node::Neg(a) => Value::Num(-ev(a).num()),
        Node::Arith(op, a, b) => {
            let (x, y) = (ev(a).num(), ev(b).num());
            Value::Num(match op {
                Arith::Add => x + y,
                Arith::Sub => x - y,
                Arith::Mul => x * y,
                Arith::Div if y == 0.0 => f64::NAN,
                Arith::Div => x / y,
                Arith::Rem if y == 0.0 => f64::NAN,
                Arith::Rem => x % y,
            })
        }
        Node::Cmp(op, a, b) => {
            let (va, vb) = (ev(a), ev(b));
            if !va.is_present() || !vb.is_present() {
                return Value::Bool(Some(false));
            }
            let r = match (va, vb) {
                (Value::Num(x), Value::Num(y)) => match op {
                    Cmp::Eq => x == y,
                    Cmp::Ne => x != y,
                    Cmp::Lt => x < y,
                    Cmp::Le => x <= y,
                    Cmp::Gt => x > y,
                    Cmp::Ge => x >= y,
                },
                (x, y) => match op {
                    Cmp::Eq => x == y,
                    Cmp::Ne => x != y,
                    _ => false,
                },
            };
            Value::Bool(Some(r))
        }
        Node::Present(want, a) => Value::Bool(Some(ev(a).is_present() == *want)),
        Node::And(a, b) => Value::Bool(Some(ev(a).truthy() && ev(b).truthy())),
        Node::Or(a, b) => Value::Bool(Some(ev(a).truthy() || ev(b).truthy())),
        Node::Cond(c, a, b) => {
            if ev(c).truthy() {
                ev(a)
            } else {
                ev(b)
            }
        }
        Node::In(a, list) => {
            let r = match (ev(a), ev(list)) {
                (Value::Num(x), Value::NumList(v)) => v.contains(&x),
                (Value::Str(Some(x)), Value::StrList(v)) => v.contains(&x),
                _ => false,
            };
            Value::Bool(Some(r))
        }
        Node::InList(name, a) => {
            let r = match ev(a).string() {
                Some(x) => env
                    .lists
                    .get(&**name)
                    .is_some_and(|l| l.iter().any(|y| y == x)),
                None => false,
            };
            Value::Bool(Some(r))
        }
        Node::StrPred(p, a, b) => {
            let (va, vb) = (ev(a), ev(b));
            let r = match (va.string(), vb.string()) {
                (Some(x), Some(y)) => match p {
                    StrPred::StartsWith => x.starts_with(y),
                    StrPred::EndsWith => x.ends_with(y),
                    StrPred::Contains => x.contains(y),
                },
                _ => false,
            };
            Value::Bool(Some(r))
        }
        Node::Lower(a) => Value::Str(ev(a).string().map(str::to_ascii_lowercase)),
        Node::Size(a) => Value::Num(match ev(a) {
            Value::Str(Some(s)) => s.chars().count() as f64,
            Value::NumList(v) => v.len() as f64,
            Value::StrList(v) => v.len() as f64,
            _ => f64::NAN,
        }),
        Node::Abs(a) => Value::Num(ev(a).num().abs()),
        Node::Min(v) | Node::Max(v) => {
            let xs: Vec<f64> = v.iter().map(|x| ev(x).num()).collect();
            if xs.iter().any(|x| x.is_nan()) {
                return Value::Num(f64::NAN);
            }
            let is_min = matches!(t.node, Node::Min(_));
            let best = xs.into_iter().reduce(|best, x| {
                if (is_min && x < best) || (!is_min && x > best) {
                    x
                } else {
                    best
                }
            });
            Value::Num(best.unwrap_or(f64::NAN))
        }
        Node::Blocklisted(e) => Value::Bool(Some(ctx.is_some_and(|c| e.is_listed(c)))),
        Node::ListEntry(e, f) => {
            let Some(entry) = ctx.and_then(|c| e.listed(c)) else {
                return Value::Str(None);
            };
            let text = match f {
                EntryField::Action => entry.action.as_str(),
                EntryField::Kind => entry.kind.as_str(),
                EntryField::Source => entry.source,
            };
            Value::Str((!text.is_empty()).then(|| text.to_string()))
        }
    }
}

fn absent(ty: Ty) -> Value {
    match ty {
        Ty::Num => Value::Num(f64::NAN),
        Ty::Bool => Value::Bool(None),
        Ty::Str => Value::Str(None),
        _ => Value::Null,
    }
}

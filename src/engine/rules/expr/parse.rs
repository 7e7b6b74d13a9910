//! Source text to an untyped AST, through the pest grammar in
//! `src/engine/rules/grammar.pest`.
//!
//! pest parses by recursive descent, so nesting is bounded before it runs
//! (brackets, and conditionals, which nest to the right without any) and
//! while the AST is folded (operator chains): a hostile or careless rule
//! file cannot overflow the stack at load.

use std::ops::Range;

use pest::iterators::Pair;
use pest::Parser as _;

use super::{ErrorKind, ExprError};

#[derive(pest_derive::Parser)]
#[grammar = "engine/rules/grammar.pest"]
struct Grammar;

/// Longest accepted condition, in bytes.
pub(super) const MAX_SOURCE: usize = 16 * 1024;
/// Deepest accepted AST (operator chains count one level per operator).
pub(super) const MAX_DEPTH: u32 = 200;
/// Deepest accepted nesting of `(` and `[`.
const MAX_BRACKETS: usize = 48;
/// Deepest accepted nesting of conditionals: `a ? b : c ? d : …` nests
/// each in the last one's `else`, without a bracket.
const MAX_CONDITIONALS: usize = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UnOp {
    Not,
    Neg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl BinOp {
    pub(super) fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::In => "in",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
        }
    }
}

/// An untyped expression with its byte span in the source.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Expr {
    pub span: Range<usize>,
    pub depth: u32,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Kind {
    Num(f64),
    Bool(bool),
    Str(String),
    Null,
    List(Vec<Expr>),
    /// A name, dots included: `amount`, `payer.count_1m`, `attributes.channel_id`.
    Path(String),
    /// `target[key]`.
    Index(Box<Expr>, Box<Expr>),
    /// `name(args)` or, with a receiver, `recv.name(args)`.
    Call {
        recv: Option<Box<Expr>>,
        name: String,
        name_span: Range<usize>,
        args: Vec<Expr>,
    },
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Cond(Box<Expr>, Box<Expr>, Box<Expr>),
}

/// Parses a condition; every error found is returned (a syntax error stops
/// the parse, so there is then just one).
pub(super) fn parse(src: &str) -> Result<Expr, Vec<ExprError>> {
    if src.len() > MAX_SOURCE {
        return Err(vec![ExprError::new(
            ErrorKind::TooComplex,
            0..src.len(),
            format!(
                "expression is {} bytes, over the {MAX_SOURCE}-byte limit",
                src.len()
            ),
        )]);
    }
    check_brackets(src)?;
    let mut pairs = Grammar::parse(Rule::condition, src).map_err(|e| vec![syntax_error(src, e)])?;
    let mut b = Builder { errors: Vec::new() };
    let expr = pairs
        .next()
        .and_then(|cond| cond.into_inner().next())
        .ok_or_else(|| vec![ExprError::new(ErrorKind::Syntax, 0..0, "empty expression")])
        .and_then(|p| b.expr(p).map_err(|e| vec![e]))?;
    if b.errors.is_empty() {
        Ok(expr)
    } else {
        Err(b.errors)
    }
}

/// Rejects nesting deep enough to strain the recursive parser: brackets,
/// and conditionals (the grammar's `expr` calls itself for the `else` of
/// `a ? b : c ? d : …`, so 4,000 of them in a 16 KB condition overflowed a
/// 2 MiB stack). A conditional is counted until the bracket level it is in
/// closes. Brackets and `?` inside strings are counted too, and sibling
/// conditionals (`f(a ? b : c, d ? e : f)`) as if nested: it only ever
/// over-counts.
fn check_brackets(src: &str) -> Result<(), Vec<ExprError>> {
    // The `?` seen at each open bracket level, outermost first, and their sum.
    let mut levels: Vec<usize> = vec![0];
    let mut open_conditionals = 0usize;
    for (i, c) in src.char_indices() {
        let too_deep = match c {
            '(' | '[' => {
                levels.push(0);
                (levels.len() - 1 > MAX_BRACKETS)
                    .then(|| format!("brackets nest more than {MAX_BRACKETS} deep"))
            }
            ')' | ']' => {
                if levels.len() > 1 {
                    open_conditionals -= levels.pop().unwrap_or(0);
                }
                None
            }
            '?' => {
                if let Some(q) = levels.last_mut() {
                    *q += 1;
                }
                open_conditionals += 1;
                (open_conditionals > MAX_CONDITIONALS)
                    .then(|| format!("conditionals (`? :`) nest more than {MAX_CONDITIONALS} deep"))
            }
            _ => None,
        };
        if let Some(message) = too_deep {
            return Err(vec![ExprError::new(
                ErrorKind::TooComplex,
                i..i + 1,
                message,
            )]);
        }
    }
    Ok(())
}

/// A plain message from a pest error: what was found and, when it helps,
/// what the grammar expected there.
fn syntax_error(src: &str, e: pest::error::Error<Rule>) -> ExprError {
    let pos = match e.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    let rest = src.get(pos..).unwrap_or("");
    let found = rest.chars().next();
    let expected = match &e.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            expected_text(positives, unclosed(src.get(..pos).unwrap_or("")))
        }
        pest::error::ErrorVariant::CustomError { message } => message.clone(),
    };
    let word: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let hint = if rest.starts_with('=') && !rest.starts_with("==") {
        Some("use `==` to compare")
    } else if word == "and" {
        Some("use `&&`")
    } else if word == "or" {
        Some("use `||`")
    } else if word == "not" {
        Some("use `!`")
    } else {
        None
    };
    let (mut message, end) = match found {
        None => ("unexpected end of expression".to_string(), pos),
        Some(_) if !word.is_empty() => (format!("unexpected `{word}`"), pos + word.len()),
        Some(c) => (format!("unexpected `{c}`"), pos + c.len_utf8()),
    };
    if !expected.is_empty() {
        message.push_str(&format!(", expected {expected}"));
    }
    if let Some(h) = hint {
        message.push_str(&format!(" ({h})"));
    }
    ExprError::new(ErrorKind::Syntax, pos..end, message)
}

/// Groups the grammar rules pest expected into a few words analysts know.
/// pest names rules, not literal tokens, so a missing closing bracket is
/// worked out from the text before the error.
fn expected_text(positives: &[Rule], closer: Option<char>) -> String {
    let mut words: Vec<String> = Vec::new();
    let mut add = |w: String| {
        if !words.contains(&w) {
            words.push(w);
        }
    };
    let op = positives.iter().any(|r| {
        matches!(
            r,
            Rule::or_op
                | Rule::and_op
                | Rule::rel_op
                | Rule::in_kw
                | Rule::add_op
                | Rule::mul_op
                | Rule::question
                | Rule::method
                | Rule::field
                | Rule::index
        )
    });
    if op {
        add("an operator".into());
    }
    if positives.contains(&Rule::colon) {
        add("`:`".into());
    }
    if let Some(c) = closer.filter(|_| op) {
        add(format!("`{c}`"));
    }
    if positives.contains(&Rule::EOI) {
        add("end of expression".into());
    }
    if positives.contains(&Rule::ident) {
        add("a name".into());
    }
    if positives
        .iter()
        .any(|r| matches!(r, Rule::unary | Rule::expr | Rule::args))
    {
        add("a value".into());
    }
    match words.len() {
        0 => String::new(),
        1 => words[0].clone(),
        n => format!("{} or {}", words[..n - 1].join(", "), words[n - 1]),
    }
}

/// The closing bracket the innermost still-open bracket of `before` needs.
/// Quoted text is skipped.
fn unclosed(before: &str) -> Option<char> {
    let mut stack = Vec::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in before.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '(' => stack.push(')'),
            '[' => stack.push(']'),
            ')' | ']' => {
                stack.pop();
            }
            _ => {}
        }
    }
    stack.pop()
}

struct Builder {
    /// Errors that do not stop the build (bad escapes, bad numbers).
    errors: Vec<ExprError>,
}

fn span_of(p: &Pair<'_, Rule>) -> Range<usize> {
    let s = p.as_span();
    s.start()..s.end()
}

fn node(span: Range<usize>, kind: Kind, child_depth: u32) -> Result<Expr, ExprError> {
    let depth = child_depth + 1;
    if depth > MAX_DEPTH {
        return Err(ExprError::new(
            ErrorKind::TooComplex,
            span,
            format!("expression nests more than {MAX_DEPTH} levels deep"),
        ));
    }
    Ok(Expr { span, depth, kind })
}

fn join(a: &Range<usize>, b: &Range<usize>) -> Range<usize> {
    a.start.min(b.start)..a.end.max(b.end)
}

impl Builder {
    /// Anything that is not a leaf: dispatches on the rule.
    fn expr(&mut self, p: Pair<'_, Rule>) -> Result<Expr, ExprError> {
        match p.as_rule() {
            Rule::expr => self.conditional(p),
            Rule::or_expr | Rule::and_expr | Rule::rel_expr | Rule::add_expr | Rule::mul_expr => {
                self.chain(p)
            }
            Rule::unary => self.unary(p),
            Rule::member => self.member(p),
            _ => self.primary(p),
        }
    }

    fn conditional(&mut self, p: Pair<'_, Rule>) -> Result<Expr, ExprError> {
        let span = span_of(&p);
        let mut it = p
            .into_inner()
            .filter(|q| !matches!(q.as_rule(), Rule::question | Rule::colon));
        let first = it.next().ok_or_else(|| internal(&span))?;
        let cond = self.expr(first)?;
        match (it.next(), it.next()) {
            (Some(a), Some(b)) => {
                let a = self.expr(a)?;
                let b = self.expr(b)?;
                let d = cond.depth.max(a.depth).max(b.depth);
                node(
                    span,
                    Kind::Cond(Box::new(cond), Box::new(a), Box::new(b)),
                    d,
                )
            }
            _ => Ok(cond),
        }
    }

    /// `a op b op c`, folded to the left.
    fn chain(&mut self, p: Pair<'_, Rule>) -> Result<Expr, ExprError> {
        let span = span_of(&p);
        let mut it = p.into_inner();
        let first = it.next().ok_or_else(|| internal(&span))?;
        let mut acc = self.expr(first)?;
        while let Some(op) = it.next() {
            let rhs = it.next().ok_or_else(|| internal(&span))?;
            let rhs = self.expr(rhs)?;
            let op = match op.as_str() {
                "||" => BinOp::Or,
                "&&" => BinOp::And,
                "==" => BinOp::Eq,
                "!=" => BinOp::Ne,
                "<" => BinOp::Lt,
                "<=" => BinOp::Le,
                ">" => BinOp::Gt,
                ">=" => BinOp::Ge,
                "in" => BinOp::In,
                "+" => BinOp::Add,
                "-" => BinOp::Sub,
                "*" => BinOp::Mul,
                "/" => BinOp::Div,
                "%" => BinOp::Rem,
                _ => return Err(internal(&span_of(&op))),
            };
            let s = join(&acc.span, &rhs.span);
            let d = acc.depth.max(rhs.depth);
            acc = node(s, Kind::Binary(op, Box::new(acc), Box::new(rhs)), d)?;
        }
        Ok(acc)
    }

    fn unary(&mut self, p: Pair<'_, Rule>) -> Result<Expr, ExprError> {
        let span = span_of(&p);
        let mut ops = Vec::new();
        let mut operand = None;
        for q in p.into_inner() {
            if q.as_rule() == Rule::unary_op {
                let op = if q.as_str() == "!" {
                    UnOp::Not
                } else {
                    UnOp::Neg
                };
                ops.push((op, span_of(&q).start));
            } else {
                operand = Some(q);
            }
        }
        let operand = operand.ok_or_else(|| internal(&span))?;
        let mut e = self.expr(operand)?;
        for (op, start) in ops.into_iter().rev() {
            let s = start..e.span.end;
            let d = e.depth;
            // A negative number literal is a literal, so lists may hold it.
            e = match (op, e.kind) {
                (UnOp::Neg, Kind::Num(n)) => Expr {
                    span: s,
                    depth: d,
                    kind: Kind::Num(-n),
                },
                (op, kind) => {
                    let inner = Expr {
                        span: e.span,
                        depth: d,
                        kind,
                    };
                    node(s, Kind::Unary(op, Box::new(inner)), d)?
                }
            };
        }
        Ok(e)
    }

    fn member(&mut self, p: Pair<'_, Rule>) -> Result<Expr, ExprError> {
        let span = span_of(&p);
        let mut it = p.into_inner();
        let first = it.next().ok_or_else(|| internal(&span))?;
        let mut acc = self.expr(first)?;
        for post in it {
            let pspan = span_of(&post);
            let whole = acc.span.start..pspan.end;
            match post.as_rule() {
                Rule::field => {
                    let name = post.into_inner().next().ok_or_else(|| internal(&pspan))?;
                    match &mut acc.kind {
                        Kind::Path(path) => {
                            path.push('.');
                            path.push_str(name.as_str());
                            acc.span = whole;
                        }
                        _ => {
                            return Err(ExprError::new(
                                ErrorKind::Syntax,
                                pspan,
                                format!("`.{}` can only follow a name", name.as_str()),
                            ))
                        }
                    }
                }
                Rule::method => {
                    let mut parts = post.into_inner();
                    let name = parts.next().ok_or_else(|| internal(&pspan))?;
                    let args = match parts.next() {
                        Some(a) => self.args(a)?,
                        None => Vec::new(),
                    };
                    let d = args
                        .iter()
                        .map(|a| a.depth)
                        .max()
                        .unwrap_or(0)
                        .max(acc.depth);
                    acc = node(
                        whole,
                        Kind::Call {
                            recv: Some(Box::new(acc)),
                            name: name.as_str().to_string(),
                            name_span: span_of(&name),
                            args,
                        },
                        d,
                    )?;
                }
                Rule::index => {
                    let key = post.into_inner().next().ok_or_else(|| internal(&pspan))?;
                    let key = self.expr(key)?;
                    let d = acc.depth.max(key.depth);
                    acc = node(whole, Kind::Index(Box::new(acc), Box::new(key)), d)?;
                }
                _ => return Err(internal(&pspan)),
            }
        }
        Ok(acc)
    }

    fn args(&mut self, p: Pair<'_, Rule>) -> Result<Vec<Expr>, ExprError> {
        p.into_inner().map(|a| self.expr(a)).collect()
    }

    fn primary(&mut self, p: Pair<'_, Rule>) -> Result<Expr, ExprError> {
        let span = span_of(&p);
        let leaf = |kind| {
            Ok(Expr {
                span: span.clone(),
                depth: 0,
                kind,
            })
        };
        match p.as_rule() {
            Rule::paren => {
                let inner = p.into_inner().next().ok_or_else(|| internal(&span))?;
                let mut e = self.expr(inner)?;
                // The parentheses belong to the span, so messages point at them.
                e.span = span;
                Ok(e)
            }
            Rule::list => {
                let items = p
                    .into_inner()
                    .map(|q| self.expr(q))
                    .collect::<Result<Vec<_>, _>>()?;
                let d = items.iter().map(|e| e.depth).max().unwrap_or(0);
                node(span, Kind::List(items), d)
            }
            Rule::int | Rule::float => {
                let text: String = p.as_str().chars().filter(|c| *c != '_').collect();
                match text.parse::<f64>() {
                    Ok(n) if n.is_finite() => leaf(Kind::Num(n)),
                    _ => {
                        self.errors.push(ExprError::new(
                            ErrorKind::Syntax,
                            span.clone(),
                            format!("`{}` is not a finite number", p.as_str()),
                        ));
                        leaf(Kind::Num(0.0))
                    }
                }
            }
            Rule::string => {
                let s = self.unescape(p.as_str(), span.start);
                leaf(Kind::Str(s))
            }
            Rule::boolean => leaf(Kind::Bool(p.as_str() == "true")),
            Rule::null => leaf(Kind::Null),
            Rule::ident => leaf(Kind::Path(p.as_str().to_string())),
            Rule::call => {
                let mut parts = p.into_inner();
                let name = parts.next().ok_or_else(|| internal(&span))?;
                let args = match parts.next() {
                    Some(a) => self.args(a)?,
                    None => Vec::new(),
                };
                let d = args.iter().map(|a| a.depth).max().unwrap_or(0);
                node(
                    span,
                    Kind::Call {
                        recv: None,
                        name: name.as_str().to_string(),
                        name_span: span_of(&name),
                        args,
                    },
                    d,
                )
            }
            _ => Err(internal(&span)),
        }
    }

    /// The value of a quoted literal (quotes included in `raw`); a bad
    /// escape is recorded as an error pointing at it.
    fn unescape(&mut self, raw: &str, at: usize) -> String {
        let body = raw.get(1..raw.len().saturating_sub(1)).unwrap_or("");
        let mut out = String::with_capacity(body.len());
        let mut it = body.char_indices().peekable();
        while let Some((i, c)) = it.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            let start = at + 1 + i;
            match it.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, 'r')) => out.push('\r'),
                Some((_, '0')) => out.push('\0'),
                Some((_, '\\')) => out.push('\\'),
                Some((_, '"')) => out.push('"'),
                Some((_, '\'')) => out.push('\''),
                Some((_, 'u')) => {
                    let mut hex = String::new();
                    while hex.len() < 4 {
                        match it.peek() {
                            Some((_, h)) if h.is_ascii_hexdigit() => {
                                hex.push(*h);
                                it.next();
                            }
                            _ => break,
                        }
                    }
                    match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                        Some(ch) if hex.len() == 4 => out.push(ch),
                        _ => self.errors.push(ExprError::new(
                            ErrorKind::Syntax,
                            start..start + 2 + hex.len(),
                            "`\\u` needs four hex digits naming a character",
                        )),
                    }
                }
                Some((_, other)) => self.errors.push(ExprError::new(
                    ErrorKind::Syntax,
                    start..start + 1 + other.len_utf8(),
                    format!(
                        "unknown escape `\\{other}` (known: \\n \\t \\r \\0 \\\\ \\\" \\' \\uXXXX)"
                    ),
                )),
                None => {}
            }
        }
        out
    }
}

/// A shape the grammar cannot produce; reported rather than panicking.
fn internal(span: &Range<usize>) -> ExprError {
    ExprError::new(
        ErrorKind::Syntax,
        span.clone(),
        "internal parser error: unexpected parse tree shape",
    )
}

//! The OTTL grammar: statement and condition text → syntax tree, with the byte offset of every
//! node (what error messages turn into a column). Written with `winnow` (see the module docs of
//! `ottl` for why), following the Collector's `pkg/ottl/grammar.go`:
//!
//! ```text
//! statement  := editor ("where" boolean)?
//! editor     := lower_ident "(" args? ")"
//! boolean    := term ("or" term)*          term := factor ("and" factor)*
//! factor     := "not"? ( "(" boolean ")" | comparison | value )
//! comparison := value ("==" | "!=" | "<=" | ">=" | "<" | ">") value
//! value      := math over primaries: nil | true | false | string | number | list | map
//!             | Converter(args)[key]* | ENUM | path
//! path       := ident ("." ident)* ("[" value "]")*
//! args       := arg ("," arg)*             arg := (lower_ident "=")? value
//! ```
//!
//! It parses only; what a path or function means is the compiler's business.

use winnow::combinator::{alt, cut_err, delimited, opt, preceded, repeat, separated, terminated};
use winnow::error::AddContext;
use winnow::error::{ContextError, ErrMode, StrContext, StrContextValue};
use winnow::prelude::*;
use winnow::stream::Stream;
use winnow::stream::{LocatingSlice, Location};
use winnow::token::{any, one_of, take_while};

type In<'a> = LocatingSlice<&'a str>;
type R<T> = winnow::ModalResult<T>;

#[derive(Clone, Debug, PartialEq)]
pub enum Lit {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MathOp {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Lit(Lit, usize),
    /// `SPAN_KIND_SERVER`.
    Enum(String, usize),
    /// `attributes["k"]`, `resource.attributes["k"]`, `status.code`.
    Path(Path),
    /// A converter, possibly indexed: `Split(x, ",")[0]`.
    Call(Call, Vec<Expr>),
    List(Vec<Expr>, usize),
    Map(Vec<(String, Expr)>, usize),
    Math(Box<Expr>, MathOp, Box<Expr>, usize),
}

impl Expr {
    /// Where the expression starts (byte offset).
    pub fn at(&self) -> usize {
        match self {
            Expr::Lit(_, at)
            | Expr::Enum(_, at)
            | Expr::List(_, at)
            | Expr::Map(_, at)
            | Expr::Math(_, _, _, at) => *at,
            Expr::Path(p) => p.at,
            Expr::Call(c, _) => c.at,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Path {
    pub fields: Vec<String>,
    pub keys: Vec<Expr>,
    pub at: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<String>,
    pub value: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub name: String,
    pub args: Vec<Arg>,
    pub at: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Cond {
    Or(Vec<Cond>),
    And(Vec<Cond>),
    Not(Box<Cond>, usize),
    Cmp(Expr, CmpOp, Expr),
    /// A boolean value: `true`, a converter (`IsMatch(…)`), a path.
    Value(Expr),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    pub editor: Call,
    pub condition: Option<Cond>,
}

/// A syntax error: what was expected, and where (byte offset into the text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub at: usize,
    pub message: String,
}

fn ws(i: &mut In<'_>) -> R<()> {
    take_while(0.., [' ', '\t', '\n', '\r'])
        .void()
        .parse_next(i)
}

fn expected(what: &'static str) -> StrContext {
    StrContext::Expected(StrContextValue::Description(what))
}

/// An identifier (letters, digits, `_`), not followed by more of them.
fn ident<'a>(i: &mut In<'a>) -> R<&'a str> {
    (
        one_of(|c: char| c.is_ascii_alphabetic() || c == '_'),
        take_while(0.., |c: char| c.is_ascii_alphanumeric() || c == '_'),
    )
        .take()
        .parse_next(i)
}

/// A keyword: the identifier `word` exactly.
fn keyword<'a>(word: &'static str) -> impl Parser<In<'a>, (), ErrMode<ContextError>> {
    ident.verify(move |s: &str| s == word).void()
}

fn string_lit(i: &mut In<'_>) -> R<String> {
    '"'.parse_next(i)?;
    let mut out = String::new();
    loop {
        match cut_err(any.context(expected("a closing `\"`"))).parse_next(i)? {
            '"' => return Ok(out),
            '\\' => {
                let c = cut_err(any.context(expected("an escaped character"))).parse_next(i)?;
                match c {
                    '"' => out.push('"'),
                    '\\' => out.push('\\'),
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    // Other escapes are kept as written: regular expressions (`\d`, `\.`)
                    // read as their authors meant.
                    other => {
                        out.push('\\');
                        out.push(other);
                    }
                }
            }
            c => out.push(c),
        }
    }
}

fn number(i: &mut In<'_>) -> R<Lit> {
    let text = (
        opt(one_of(['-', '+'])),
        take_while(1.., |c: char| c.is_ascii_digit()),
        opt(('.', take_while(0.., |c: char| c.is_ascii_digit()))),
    )
        .take()
        .parse_next(i)?;
    let lit = if text.contains('.') {
        text.parse().map(Lit::Float).ok()
    } else {
        text.parse().map(Lit::Int).ok()
    };
    match lit {
        Some(l) => Ok(l),
        None => Err(ErrMode::Cut(ContextError::new().add_context(
            i,
            &i.checkpoint(),
            expected("a number that fits in 64 bits"),
        ))),
    }
}

fn list(i: &mut In<'_>) -> R<Expr> {
    let at = i.current_token_start();
    '['.parse_next(i)?;
    ws(i)?;
    let items: Vec<Expr> = separated(0.., terminated(value, ws), (',', ws)).parse_next(i)?;
    cut_err(']'.context(expected("`,` or `]`"))).parse_next(i)?;
    Ok(Expr::List(items, at))
}

fn map(i: &mut In<'_>) -> R<Expr> {
    let at = i.current_token_start();
    '{'.parse_next(i)?;
    ws(i)?;
    let entry = (
        terminated(string_lit, ws),
        preceded((cut_err(':'.context(expected("`:`"))), ws), cut_err(value)),
    );
    let items: Vec<(String, Expr)> =
        separated(0.., terminated(entry, ws), (',', ws)).parse_next(i)?;
    cut_err('}'.context(expected("`,` or `}`"))).parse_next(i)?;
    Ok(Expr::Map(items, at))
}

fn keys(i: &mut In<'_>) -> R<Vec<Expr>> {
    repeat(
        0..,
        delimited(
            ('[', ws),
            cut_err(value),
            (ws, cut_err(']'.context(expected("`]`")))),
        ),
    )
    .parse_next(i)
}

fn args(i: &mut In<'_>) -> R<Vec<Arg>> {
    '('.parse_next(i)?;
    ws(i)?;
    let arg = (
        opt(terminated(
            ident.map(str::to_string),
            (ws, '=', winnow::combinator::not('=')),
        ))
        .map(|n| n.map(|s: String| s)),
        preceded(ws, cut_err(value.context(expected("an argument")))),
    )
        .map(|(name, value)| Arg { name, value });
    let out: Vec<Arg> = separated(0.., terminated(arg, ws), (',', ws)).parse_next(i)?;
    cut_err(')'.context(expected("`,` or `)`"))).parse_next(i)?;
    Ok(out)
}

/// A converter call, an enum, a path or a keyword literal: whatever starts with a letter.
fn named(i: &mut In<'_>) -> R<Expr> {
    let at = i.current_token_start();
    let first = ident.parse_next(i)?;
    match first {
        "nil" => return Ok(Expr::Lit(Lit::Nil, at)),
        "true" => return Ok(Expr::Lit(Lit::Bool(true), at)),
        "false" => return Ok(Expr::Lit(Lit::Bool(false), at)),
        _ => {}
    }
    let upper = first.starts_with(|c: char| c.is_ascii_uppercase());
    if upper {
        let checkpoint = i.checkpoint();
        ws(i)?;
        if i.starts_with('(') {
            let args = args(i)?;
            let idx = keys(i)?;
            let call = Call {
                name: first.to_string(),
                args,
                at,
            };
            return Ok(Expr::Call(call, idx));
        }
        i.reset(&checkpoint);
        if first
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            return Ok(Expr::Enum(first.to_string(), at));
        }
    }
    let mut fields = vec![first.to_string()];
    let rest: Vec<&str> = repeat(
        0..,
        preceded('.', cut_err(ident.context(expected("a field name")))),
    )
    .parse_next(i)?;
    fields.extend(rest.into_iter().map(str::to_string));
    let keys = keys(i)?;
    Ok(Expr::Path(Path { fields, keys, at }))
}

fn primary(i: &mut In<'_>) -> R<Expr> {
    alt((
        string_lit
            .with_span()
            .map(|(s, r)| Expr::Lit(Lit::Str(s), r.start)),
        number.with_span().map(|(n, r)| Expr::Lit(n, r.start)),
        list,
        map,
        named,
        delimited(
            ('(', ws),
            cut_err(value),
            (ws, cut_err(')'.context(expected("`)`")))),
        ),
    ))
    .context(expected("a value"))
    .parse_next(i)
}

fn math_level<'a>(
    ops: [char; 2],
    next: fn(&mut In<'a>) -> R<Expr>,
) -> impl Parser<In<'a>, Expr, ErrMode<ContextError>> {
    move |i: &mut In<'a>| {
        let mut acc = next(i)?;
        loop {
            let checkpoint = i.checkpoint();
            ws(i)?;
            let Ok(op) = one_of::<_, _, ErrMode<ContextError>>(ops).parse_next(i) else {
                i.reset(&checkpoint);
                return Ok(acc);
            };
            ws(i)?;
            let rhs = cut_err(next).parse_next(i)?;
            let op = match op {
                '+' => MathOp::Add,
                '-' => MathOp::Sub,
                '*' => MathOp::Mul,
                _ => MathOp::Div,
            };
            let at = acc.at();
            acc = Expr::Math(Box::new(acc), op, Box::new(rhs), at);
        }
    }
}

fn term(i: &mut In<'_>) -> R<Expr> {
    math_level(['*', '/'], primary).parse_next(i)
}

/// A value, math included.
pub(super) fn value(i: &mut In<'_>) -> R<Expr> {
    math_level(['+', '-'], term).parse_next(i)
}

fn cmp_op(i: &mut In<'_>) -> R<CmpOp> {
    alt((
        "==".value(CmpOp::Eq),
        "!=".value(CmpOp::Ne),
        "<=".value(CmpOp::Le),
        ">=".value(CmpOp::Ge),
        "<".value(CmpOp::Lt),
        ">".value(CmpOp::Gt),
    ))
    .parse_next(i)
}

fn factor(i: &mut In<'_>) -> R<Cond> {
    let at = i.current_token_start();
    if opt(terminated(keyword("not"), ws)).parse_next(i)?.is_some() {
        let inner = cut_err(factor).parse_next(i)?;
        return Ok(Cond::Not(Box::new(inner), at));
    }
    let checkpoint = i.checkpoint();
    if <char as Parser<In<'_>, char, ErrMode<ContextError>>>::parse_next(&mut '(', i).is_ok() {
        // A parenthesised condition, or a parenthesised value in a comparison: try the first.
        ws(i)?;
        if let Ok(c) = terminated(boolean, (ws, ')')).parse_next(i) {
            // Unless a comparison follows: then it was a parenthesised value (`(a + 1) > 2`).
            let after = i.checkpoint();
            ws(i)?;
            if opt(cmp_op).parse_next(i)?.is_none() {
                i.reset(&after);
                return Ok(c);
            }
        }
        i.reset(&checkpoint);
    }
    let lhs = value(i)?;
    let checkpoint = i.checkpoint();
    ws(i)?;
    match opt(cmp_op).parse_next(i)? {
        Some(op) => {
            ws(i)?;
            let rhs = cut_err(value.context(expected("a value to compare with"))).parse_next(i)?;
            Ok(Cond::Cmp(lhs, op, rhs))
        }
        None => {
            i.reset(&checkpoint);
            Ok(Cond::Value(lhs))
        }
    }
}

fn joined(
    word: &'static str,
    next: fn(&mut In<'_>) -> R<Cond>,
    wrap: fn(Vec<Cond>) -> Cond,
) -> impl for<'a> Fn(&mut In<'a>) -> R<Cond> {
    move |i| {
        let mut items = vec![next(i)?];
        loop {
            let checkpoint = i.checkpoint();
            ws(i)?;
            if keyword(word).parse_next(i).is_err() {
                i.reset(&checkpoint);
                break;
            }
            ws(i)?;
            items.push(cut_err(next).parse_next(i)?);
        }
        Ok(if items.len() == 1 {
            items.pop().expect("one item")
        } else {
            wrap(items)
        })
    }
}

fn and_term(i: &mut In<'_>) -> R<Cond> {
    joined("and", factor, Cond::And)(i)
}

fn boolean(i: &mut In<'_>) -> R<Cond> {
    joined("or", and_term, Cond::Or)(i)
}

fn statement(i: &mut In<'_>) -> R<Statement> {
    ws(i)?;
    let at = i.current_token_start();
    let name = ident
        .verify(|s: &str| s.starts_with(|c: char| c.is_ascii_lowercase()))
        .context(expected("an editor such as set(…)"))
        .parse_next(i)?;
    ws(i)?;
    let args = cut_err(args.context(expected("`(`"))).parse_next(i)?;
    ws(i)?;
    let condition = opt(preceded((keyword("where"), ws), cut_err(boolean))).parse_next(i)?;
    ws(i)?;
    Ok(Statement {
        editor: Call {
            name: name.to_string(),
            args,
            at,
        },
        condition,
    })
}

fn to_error(text: &str, e: winnow::error::ParseError<In<'_>, ContextError>) -> SyntaxError {
    let mut wanted: Vec<String> = Vec::new();
    for c in e.inner().context() {
        if let StrContext::Expected(v) = c {
            let s = v.to_string();
            if !wanted.contains(&s) {
                wanted.push(s);
            }
        }
    }
    let at = e.offset();
    let found = match text[at..].chars().next() {
        None => "the end".to_string(),
        Some(_) => {
            let rest: String = text[at..].chars().take(12).collect();
            format!("`{rest}`")
        }
    };
    let message = if wanted.is_empty() {
        format!("unexpected {found}")
    } else {
        format!("expected {}, found {found}", wanted.join(" or "))
    };
    SyntaxError { at, message }
}

/// Parses one statement (`set(…) where …`).
pub fn parse_statement(text: &str) -> Result<Statement, SyntaxError> {
    statement
        .parse(LocatingSlice::new(text))
        .map_err(|e| to_error(text, e))
}

/// Parses one condition (a filter entry, or a statement group's `conditions`).
pub fn parse_condition(text: &str) -> Result<Cond, SyntaxError> {
    delimited(ws, boolean, ws)
        .parse(LocatingSlice::new(text))
        .map_err(|e| to_error(text, e))
}

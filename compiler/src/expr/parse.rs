//! The formula parser: the text syntax of spec files (and, token by token, of the macros).
//!
//! ```text
//! expr    := term (('+' | '-') term)*
//! term    := unary (('*' | '/') unary)*
//! unary   := ('-' | '+') unary | power
//! power   := primary (('^' | '**') unary)?          right associative; -x^2 = -(x^2)
//! primary := number | name | name '(' args ')' | '(' expr ')'
//! ```
//! Names resolve against a [`Scope`]: the input variable, parameters, named sub-expressions
//! (`log_alpha(t)` or just `log_alpha`), tables (`interp(table, x)`), the functions of the
//! primitive table and the constants `pi`, `inf`, `nan`. Errors carry the character column.

use super::primitives::Func;
use super::{Expr, Name, TableFn};

/// The names a formula may use.
#[derive(Clone, Debug)]
pub struct Scope {
    /// The input variable (`t`, or `lambda` in an inverse).
    pub input: Name,
    /// The parameters.
    pub params: Vec<Name>,
    /// The sub-expressions defined before this formula.
    pub defs: Vec<Name>,
    /// The tables.
    pub tables: Vec<Name>,
}

impl Scope {
    /// The scope with `input` alone.
    pub fn new(input: &str) -> Scope {
        Scope {
            input: input.into(),
            params: vec![],
            defs: vec![],
            tables: vec![],
        }
    }

    /// ... and these parameters.
    pub fn with_params(mut self, names: &[&str]) -> Scope {
        self.params.extend(names.iter().map(|n| Name::from(*n)));
        self
    }

    /// ... and these sub-expressions.
    pub fn with_defs(mut self, names: &[&str]) -> Scope {
        self.defs.extend(names.iter().map(|n| Name::from(*n)));
        self
    }

    /// ... and these tables.
    pub fn with_tables(mut self, names: &[&str]) -> Scope {
        self.tables.extend(names.iter().map(|n| Name::from(*n)));
        self
    }

    /// The names a formula here may use, in words: the input, the parameters, the quantities
    /// defined before it, the functions and the constants.
    fn known(&self) -> String {
        let mut parts = vec![format!("the input `{}`", self.input)];
        if !self.params.is_empty() {
            let p: Vec<String> = self.params.iter().map(|n| format!("`{n}`")).collect();
            parts.push(format!("the parameters {}", p.join(", ")));
        }
        if !self.defs.is_empty() {
            let d: Vec<String> = self.defs.iter().map(|n| format!("`{n}`")).collect();
            parts.push(format!("the quantities {}", d.join(", ")));
        }
        let f: Vec<String> = Func::all().map(|f| f.name().to_string()).collect();
        parts.push(format!(
            "the functions {}, interp, interp_slope and the constant pi",
            f.join(", ")
        ));
        format!("the names here are {}", parts.join("; "))
    }

    fn all_names(&self) -> Vec<String> {
        let mut v: Vec<String> = vec![self.input.to_string()];
        v.extend(self.params.iter().map(|n| n.to_string()));
        v.extend(self.defs.iter().map(|n| n.to_string()));
        v.extend(Func::all().map(|f| f.name().to_string()));
        v.extend(["pi", "interp", "interp_slope"].map(String::from));
        v
    }
}

/// A parse error at a character column of the formula (0-based `column`, `len` characters).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("at column {}: {message}", column + 1)]
pub struct ParseError {
    /// Where the error starts (0-based character column).
    pub column: usize,
    /// How many characters it covers.
    pub len: usize,
    /// What is wrong, and what would be right.
    pub message: String,
}

impl ParseError {
    /// The formula with a caret line under the offending characters; a long formula is shown
    /// as the 40 characters either side of them.
    pub fn render(&self, src: &str) -> String {
        const SIDE: usize = 40;
        let chars: Vec<char> = src.chars().collect();
        let len = self.len.clamp(1, 2 * SIDE);
        let (from, to) = if chars.len() <= 2 * SIDE + len {
            (0, chars.len())
        } else {
            let from = self.column.saturating_sub(SIDE);
            (from, (self.column + len + SIDE).min(chars.len()))
        };
        let lead = if from > 0 { "..." } else { "" };
        let tail = if to < chars.len() { "..." } else { "" };
        let shown: String = chars[from..to].iter().collect();
        format!(
            "{}\n  {lead}{shown}{tail}\n  {}{}",
            self,
            " ".repeat(lead.len() + self.column - from),
            "^".repeat(len)
        )
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num { value: f64, integer: bool },
    Ident(String),
    Op(char),
    Pow,
    Comma,
    LParen,
    RParen,
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Num { .. } => "a number".into(),
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Op(c) => format!("`{c}`"),
            Tok::Pow => "`^`".into(),
            Tok::Comma => "`,`".into(),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::End => "the end of the formula".into(),
        }
    }
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    column: usize,
    len: usize,
}

fn err(column: usize, len: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        column,
        len,
        message: message.into(),
    }
}

fn lex(src: &str) -> Result<Vec<Token>, ParseError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let tok = if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let mut integer = true;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            if i < chars.len() && chars[i] == '.' {
                integer = false;
                i += 1;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            }
            if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
                let mut j = i + 1;
                if j < chars.len() && (chars[j] == '+' || chars[j] == '-') {
                    j += 1;
                }
                if j < chars.len() && chars[j].is_ascii_digit() {
                    integer = false;
                    i = j;
                    while i < chars.len() && chars[i].is_ascii_digit() {
                        i += 1;
                    }
                } else {
                    return Err(err(i, j - i, "expected digits after the exponent `e`"));
                }
            }
            let text: String = chars[start..i].iter().collect();
            let value: f64 = text
                .parse()
                .map_err(|_| err(start, i - start, format!("`{text}` is not a number")))?;
            Tok::Num { value, integer }
        } else if c.is_alphabetic() || c == '_' {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            Tok::Ident(chars[start..i].iter().collect())
        } else {
            i += 1;
            match c {
                '+' | '-' | '/' => Tok::Op(c),
                '*' if chars.get(i) == Some(&'*') => {
                    i += 1;
                    Tok::Pow
                }
                '*' => Tok::Op('*'),
                '^' => Tok::Pow,
                ',' => Tok::Comma,
                '(' => Tok::LParen,
                ')' => Tok::RParen,
                _ => {
                    return Err(err(
                        start,
                        1,
                        format!("unexpected character `{c}`: expected a number, a name, an operator or a parenthesis"),
                    ))
                }
            }
        };
        out.push(Token {
            tok,
            column: start,
            len: i - start,
        });
    }
    out.push(Token {
        tok: Tok::End,
        column: chars.len(),
        len: 1,
    });
    Ok(out)
}

/// Edit distance, for "did you mean".
pub fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate within a small edit distance, for "did you mean".
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1) + 1;
    candidates
        .into_iter()
        .map(|c| (levenshtein(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// The deepest expression tree a formula may make: every pass over formulas (printing,
/// simplifying, differentiating, compiling) recurses on the tree, so the depth is bounded here,
/// where the error can point at the text, rather than left to the stack. A chain of operators
/// (`t + t + ... + t`) is as deep as it is long.
pub const MAX_DEPTH: usize = 256;

/// An expression and its depth (a leaf is 1).
type Parsed = (Expr, usize);

struct Parser<'s> {
    toks: Vec<Token>,
    pos: usize,
    scope: &'s Scope,
    /// How many sub-expressions are open (parentheses, unary signs, powers, arguments).
    open: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        &self.toks[self.pos]
    }

    fn next(&mut self) -> Token {
        let t = self.toks[self.pos].clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn expect(&mut self, want: Tok, what: &str) -> Result<Token, ParseError> {
        let t = self.next();
        if t.tok == want {
            Ok(t)
        } else {
            Err(err(
                t.column,
                t.len,
                format!("expected {what}, found {}", t.tok.describe()),
            ))
        }
    }

    /// One level deeper than `d`, at token `at`, or the error that says the formula is too deep.
    fn deeper(d: usize, at: &Token) -> Result<usize, ParseError> {
        if d + 1 > MAX_DEPTH {
            return Err(err(
                at.column,
                at.len,
                format!(
                    "the formula is more than {MAX_DEPTH} levels deep here (every operator is a level, so a chain such as `t + t + ... + t` is as deep as it is long); shorten it or split it into named formulas"
                ),
            ));
        }
        Ok(d + 1)
    }

    fn expr(&mut self) -> Result<Parsed, ParseError> {
        let (mut lhs, mut d) = self.term()?;
        while let Tok::Op(c @ ('+' | '-')) = self.peek().tok {
            let at = self.next();
            let (rhs, dr) = self.term()?;
            d = Self::deeper(d.max(dr), &at)?;
            lhs = if c == '+' {
                Expr::Add(Box::new(lhs), Box::new(rhs))
            } else {
                Expr::Sub(Box::new(lhs), Box::new(rhs))
            };
        }
        Ok((lhs, d))
    }

    fn term(&mut self) -> Result<Parsed, ParseError> {
        let (mut lhs, mut d) = self.unary()?;
        while let Tok::Op(c @ ('*' | '/')) = self.peek().tok {
            let at = self.next();
            let (rhs, dr) = self.unary()?;
            d = Self::deeper(d.max(dr), &at)?;
            lhs = if c == '*' {
                Expr::Mul(Box::new(lhs), Box::new(rhs))
            } else {
                Expr::Div(Box::new(lhs), Box::new(rhs))
            };
        }
        Ok((lhs, d))
    }

    /// Every nested sub-expression passes through here: the parser's own recursion is
    /// bounded by the same depth as the tree (a run of signs folds into one constant, but
    /// still recurses).
    fn unary(&mut self) -> Result<Parsed, ParseError> {
        let at = self.peek().clone();
        self.open += 1;
        if self.open > MAX_DEPTH {
            return Err(err(
                at.column,
                at.len,
                format!(
                    "the formula opens more than {MAX_DEPTH} nested sub-expressions here (parentheses, signs, powers, arguments); shorten it or split it into named formulas"
                ),
            ));
        }
        let r = self.unary_inner(&at);
        self.open -= 1;
        r
    }

    fn unary_inner(&mut self, at: &Token) -> Result<Parsed, ParseError> {
        match self.peek().tok {
            Tok::Op('-') => {
                self.next();
                Ok(match self.unary()? {
                    // A negative literal is a constant, as the printer writes it.
                    (Expr::Const(v), d) => (Expr::Const(-v), d),
                    (e, d) => (Expr::Neg(Box::new(e)), Self::deeper(d, at)?),
                })
            }
            Tok::Op('+') => {
                self.next();
                self.unary()
            }
            _ => self.power(),
        }
    }

    /// An integer literal exponent, possibly negated, makes `Powi`.
    fn integer_exponent(&mut self) -> Option<i32> {
        let mut k = self.pos;
        let mut sign = 1.0;
        while let Tok::Op(c @ ('-' | '+')) = self.toks[k].tok {
            if c == '-' {
                sign = -sign;
            }
            k += 1;
        }
        match self.toks[k].tok {
            Tok::Num {
                value,
                integer: true,
            } if value <= i32::MAX as f64 && self.toks[k + 1].tok != Tok::Pow => {
                self.pos = k + 1;
                Some((sign * value) as i32)
            }
            _ => None,
        }
    }

    fn power(&mut self) -> Result<Parsed, ParseError> {
        let (base, d) = self.primary()?;
        if self.peek().tok == Tok::Pow {
            let at = self.next();
            if let Some(n) = self.integer_exponent() {
                return Ok((Expr::Powi(Box::new(base), n), Self::deeper(d, &at)?));
            }
            let (exponent, de) = self.unary()?;
            let d = Self::deeper(d.max(de), &at)?;
            return Ok((Expr::Pow(Box::new(base), Box::new(exponent)), d));
        }
        Ok((base, d))
    }

    fn args(&mut self, name: &str, column: usize) -> Result<(Vec<Parsed>, Token), ParseError> {
        let mut args = Vec::new();
        if self.peek().tok == Tok::RParen {
            return Ok((args, self.next()));
        }
        loop {
            args.push(self.expr()?);
            let t = self.next();
            match t.tok {
                Tok::Comma => continue,
                Tok::RParen => return Ok((args, t)),
                _ => {
                    return Err(err(
                        t.column,
                        t.len,
                        format!(
                            "expected `,` or `)` in the arguments of `{name}` (opened at column {}), found {}",
                            column + 1,
                            t.tok.describe()
                        ),
                    ))
                }
            }
        }
    }

    fn primary(&mut self) -> Result<Parsed, ParseError> {
        let t = self.next();
        match t.tok {
            Tok::Num { value, .. } => Ok((Expr::Const(value), 1)),
            Tok::LParen => {
                let e = self.expr()?;
                self.expect(Tok::RParen, "`)`")?;
                Ok(e)
            }
            Tok::Ident(name) => self.name(&name, t.column, t.len),
            other => Err(err(
                t.column,
                t.len,
                format!(
                    "expected a number, a name or `(`, found {}",
                    other.describe()
                ),
            )),
        }
    }

    fn name(&mut self, name: &str, column: usize, len: usize) -> Result<Parsed, ParseError> {
        let scope = self.scope;
        let called = self.peek().tok == Tok::LParen;
        if *scope.input == *name || scope.params.iter().any(|p| **p == *name) {
            if called {
                let what = if *scope.input == *name {
                    "the input variable"
                } else {
                    "a parameter"
                };
                return Err(err(
                    column,
                    len,
                    format!("`{name}` is {what}, not a function"),
                ));
            }
            return Ok((Expr::Var(name.into()), 1));
        }
        if let Some(def) = scope.defs.iter().find(|d| ***d == *name) {
            if called {
                self.next();
                let arg = self.next();
                if arg.tok != Tok::Ident(scope.input.to_string()) {
                    return Err(err(
                        arg.column,
                        arg.len,
                        format!(
                            "`{name}` is a named sub-expression and takes only the input variable: write `{name}({})`",
                            scope.input
                        ),
                    ));
                }
                self.expect(Tok::RParen, "`)`")?;
            }
            return Ok((Expr::Def(def.clone()), 1));
        }
        match name {
            "pi" if !called => return Ok((Expr::Const(std::f64::consts::PI), 1)),
            "inf" if !called => return Ok((Expr::Const(f64::INFINITY), 1)),
            "nan" if !called => return Ok((Expr::Const(f64::NAN), 1)),
            _ => {}
        }
        let table_fn = match name {
            "interp" => Some(TableFn::Value),
            "interp_slope" => Some(TableFn::Slope),
            _ => None,
        };
        if let Some(tf) = table_fn {
            self.expect(Tok::LParen, &format!("`(` after `{name}`"))?;
            let tt = self.next();
            let table = match &tt.tok {
                Tok::Ident(tn) => scope.tables.iter().find(|x| ***x == **tn).cloned(),
                _ => None,
            };
            let Some(table) = table else {
                let known: Vec<&str> = scope.tables.iter().map(|s| &**s).collect();
                return Err(err(
                    tt.column,
                    tt.len,
                    format!(
                        "expected a table name as the first argument of `{name}` (known tables: {}), found {}",
                        if known.is_empty() { "none".to_string() } else { known.join(", ") },
                        tt.tok.describe()
                    ),
                ));
            };
            let comma = self.expect(Tok::Comma, "`,`")?;
            let (arg, d) = self.expr()?;
            self.expect(Tok::RParen, "`)`")?;
            return Ok((
                Expr::Table(tf, table, Box::new(arg)),
                Self::deeper(d, &comma)?,
            ));
        }
        if let Some(f) = Func::by_name(name) {
            let arity = f.primitive().arity();
            if !called {
                return Err(err(
                    column,
                    len,
                    format!(
                        "`{name}` is a function: write `{name}(...)` with {arity} argument{}",
                        if arity == 1 { "" } else { "s" }
                    ),
                ));
            }
            self.next();
            let (args, close) = self.args(name, column)?;
            if args.len() != arity {
                return Err(err(
                    column,
                    close.column + 1 - column,
                    format!(
                        "`{name}` takes {arity} argument{}, found {}",
                        if arity == 1 { "" } else { "s" },
                        args.len()
                    ),
                ));
            }
            let d = args.iter().map(|(_, d)| *d).max().unwrap_or(0);
            let at = Token {
                tok: Tok::Ident(name.into()),
                column,
                len,
            };
            let d = Self::deeper(d, &at)?;
            return Ok((Expr::Call(f, args.into_iter().map(|(e, _)| e).collect()), d));
        }
        let names = scope.all_names();
        // A near miss gets its correction; anything else the list of what is allowed here.
        let hint = did_you_mean(name, names.iter().map(|s| s.as_str()))
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_else(|| format!("; {}", scope.known()));
        Err(err(column, len, format!("unknown name `{name}`{hint}")))
    }
}

/// Parses formula text in a scope.
pub fn parse_expr(src: &str, scope: &Scope) -> Result<Expr, ParseError> {
    let toks = lex(src)?;
    let mut p = Parser {
        toks,
        pos: 0,
        scope,
        open: 0,
    };
    if p.peek().tok == Tok::End {
        return Err(err(0, 1, "the formula is empty"));
    }
    let (e, _) = p.expr()?;
    let t = p.peek().clone();
    if t.tok != Tok::End {
        let msg = if t.tok == Tok::RParen {
            "unmatched `)`".to_string()
        } else {
            format!(
                "expected an operator or the end of the formula, found {}",
                t.tok.describe()
            )
        };
        return Err(err(t.column, t.len, msg));
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Scope {
        Scope::new("t")
            .with_params(&["beta_min", "beta_max"])
            .with_defs(&["log_alpha"])
            .with_tables(&["la"])
    }

    fn p(s: &str) -> Result<Expr, ParseError> {
        parse_expr(s, &scope())
    }

    #[test]
    fn precedence_and_associativity() {
        assert_eq!(p("1 + 2 * t").unwrap().to_string(), "1 + 2 * t");
        assert_eq!(p("(1 + 2) * t").unwrap().to_string(), "(1 + 2) * t");
        assert_eq!(p("t - 1 - 2").unwrap().to_string(), "t - 1 - 2");
        assert_eq!(p("t - (1 - 2)").unwrap().to_string(), "t - (1 - 2)");
        assert_eq!(
            p("-t^2").unwrap(),
            Expr::Neg(Box::new(Expr::Powi(Box::new(Expr::var("t")), 2)))
        );
        assert_eq!(p("2^3^2").unwrap().to_string(), "2^3^2");
        assert!(matches!(p("2^3^2").unwrap(), Expr::Pow(_, e) if matches!(*e, Expr::Powi(_, 2))));
        assert_eq!(p("t**2").unwrap(), p("t^2").unwrap());
        assert_eq!(p("t^-1").unwrap(), Expr::Powi(Box::new(Expr::var("t")), -1));
        assert!(matches!(p("t^0.5").unwrap(), Expr::Pow(..)));
        assert!(matches!(p("t^2.0").unwrap(), Expr::Pow(..)));
        assert!(matches!(p("t^beta_min").unwrap(), Expr::Pow(..)));
        assert_eq!(
            p("1e-3 + .5 + 2E+2").unwrap().to_string(),
            "0.001 + 0.5 + 200"
        );
    }

    #[test]
    fn formulas_past_the_depth_limit_get_an_error_not_a_stack_overflow() {
        let deep = [
            format!("{}t{}", "(".repeat(8000), ")".repeat(8000)),
            vec!["t"; 20_000].join("+"),
            format!("-t{}", "^1".repeat(5000)),
            format!("{}1", "-".repeat(100_000)),
            format!("{}t{}", "exp(".repeat(3000), ")".repeat(3000)),
            vec!["t"; 300].join("*"),
        ];
        for f in &deep {
            let e = p(f).unwrap_err();
            assert!(
                e.message.contains(&format!("more than {MAX_DEPTH}")),
                "{}: {}",
                &f[..40.min(f.len())],
                e.message
            );
            // The rendering shows a window of a long formula, with the caret in it.
            let r = e.render(f);
            assert!(r.lines().nth(1).unwrap().len() < 100, "{r}");
        }
        // Just inside the limits: parsed, printed, differentiated and simplified.
        let chain = vec!["t"; MAX_DEPTH].join("+");
        let nested = format!(
            "{}t{}",
            "(".repeat(MAX_DEPTH - 1),
            ")".repeat(MAX_DEPTH - 1)
        );
        for f in [chain, nested] {
            let e = p(&f).unwrap();
            let d = crate::expr::simplify::simplify(&crate::expr::diff::diff_closed(&e, "t"));
            assert!(!format!("{d}").is_empty());
        }
    }

    #[test]
    fn names_resolve() {
        assert_eq!(p("log_alpha(t)").unwrap(), Expr::def("log_alpha"));
        assert_eq!(p("log_alpha").unwrap(), Expr::def("log_alpha"));
        assert_eq!(p("beta_max").unwrap(), Expr::var("beta_max"));
        assert_eq!(p("log(t)").unwrap(), p("ln(t)").unwrap());
        assert!(matches!(
            p("interp(la, t)").unwrap(),
            Expr::Table(TableFn::Value, _, _)
        ));
        assert_eq!(p("pi").unwrap(), Expr::Const(std::f64::consts::PI));
    }

    #[test]
    fn malformed_input_reports_position_and_expectation() {
        let e = p("1 + * t").unwrap_err();
        assert_eq!(e.column, 4);
        assert!(
            e.message.contains("expected a number, a name or `(`"),
            "{e}"
        );

        let e = p("exp(t").unwrap_err();
        assert_eq!(e.column, 5);
        assert!(e.message.contains("expected `,` or `)`"), "{e}");

        let e = p("(t + 1").unwrap_err();
        assert!(e.message.contains("expected `)`"), "{e}");

        let e = p("t + 1)").unwrap_err();
        assert_eq!((e.column, e.message.as_str()), (5, "unmatched `)`"));

        let e = p("beta_mx * t").unwrap_err();
        assert_eq!((e.column, e.len), (0, 7));
        assert!(e.message.contains("did you mean `beta_max`"), "{e}");

        let e = p("sqrt(t, 2)").unwrap_err();
        assert!(
            e.message.contains("`sqrt` takes 1 argument, found 2"),
            "{e}"
        );

        let e = p("min(t)").unwrap_err();
        assert!(
            e.message.contains("`min` takes 2 arguments, found 1"),
            "{e}"
        );

        let e = p("exp + 1").unwrap_err();
        assert!(e.message.contains("is a function"), "{e}");

        let e = p("log_alpha(2 * t)").unwrap_err();
        assert!(e.message.contains("write `log_alpha(t)`"), "{e}");

        let e = p("beta_min(t)").unwrap_err();
        assert!(e.message.contains("is a parameter, not a function"), "{e}");

        let e = p("t $ 2").unwrap_err();
        assert_eq!(e.column, 2);

        let e = p("1e+").unwrap_err();
        assert!(e.message.contains("exponent"), "{e}");

        let e = p("   ").unwrap_err();
        assert!(e.message.contains("empty"), "{e}");

        let e = p("interp(nope, t)").unwrap_err();
        assert!(e.message.contains("known tables: la"), "{e}");

        assert_eq!(
            p("t ** ").unwrap_err().render("t ** "),
            "at column 6: expected a number, a name or `(`, found the end of the formula\n  t ** \n       ^"
        );
    }
}

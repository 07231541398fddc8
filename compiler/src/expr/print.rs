//! The printer: formula text that the parser reads back to the same expression.
//!
//! Parentheses appear only where precedence needs them. Integer powers print as `x^2`, real
//! powers with a real exponent literal (`x^2.0`), so the parser rebuilds the same node.

use std::fmt;

use super::Expr;

const ADD: u8 = 1;
const MUL: u8 = 2;
const NEG: u8 = 3;
const POW: u8 = 4;
const ATOM: u8 = 5;

/// Formats a constant so that it parses back to the same `f64` (shortest round-trip digits).
pub fn format_const(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else if v == 0.0 || (1e-5..1e16).contains(&v.abs()) {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

fn prec(e: &Expr) -> u8 {
    match e {
        Expr::Add(..) | Expr::Sub(..) => ADD,
        Expr::Mul(..) | Expr::Div(..) => MUL,
        Expr::Neg(_) => NEG,
        Expr::Const(v) if v.is_sign_negative() => NEG,
        Expr::Powi(..) | Expr::Pow(..) => POW,
        _ => ATOM,
    }
}

/// Prints an expression, naming the program's input variable in sub-expression references.
pub struct Printer<'a> {
    /// The program's input variable.
    pub input: &'a str,
}

impl Printer<'_> {
    /// `e` as formula text that parses back to it.
    pub fn print(&self, e: &Expr) -> String {
        let mut s = String::new();
        self.write(e, &mut s);
        s
    }

    fn child(&self, e: &Expr, min_prec: u8, out: &mut String) {
        if prec(e) < min_prec {
            out.push('(');
            self.write(e, out);
            out.push(')');
        } else {
            self.write(e, out);
        }
    }

    fn binary(&self, a: &Expr, op: &str, b: &Expr, p: u8, out: &mut String) {
        self.child(a, p, out);
        out.push_str(op);
        self.child(b, p + 1, out);
    }

    fn write(&self, e: &Expr, out: &mut String) {
        match e {
            Expr::Const(v) => out.push_str(&format_const(*v)),
            Expr::Var(n) => out.push_str(n),
            Expr::Def(n) => {
                out.push_str(n);
                out.push('(');
                out.push_str(self.input);
                out.push(')');
            }
            Expr::Neg(a) => {
                out.push('-');
                self.child(a, NEG, out);
            }
            Expr::Add(a, b) => self.binary(a, " + ", b, ADD, out),
            Expr::Sub(a, b) => self.binary(a, " - ", b, ADD, out),
            Expr::Mul(a, b) => self.binary(a, " * ", b, MUL, out),
            Expr::Div(a, b) => self.binary(a, " / ", b, MUL, out),
            Expr::Powi(a, n) => {
                self.child(a, ATOM, out);
                out.push('^');
                out.push_str(&n.to_string());
            }
            Expr::Pow(a, b) => {
                self.child(a, ATOM, out);
                out.push('^');
                match b.as_ref() {
                    Expr::Const(v) if v.is_finite() && *v == v.trunc() => {
                        out.push_str(&format!("{v:.1}"))
                    }
                    // A negated exponent is parenthesised: `x^-2` would read back as `Powi`.
                    b @ Expr::Neg(_) => self.child(b, ATOM, out),
                    // Otherwise the exponent is read as a unary expression (right associative).
                    b => self.child(b, NEG, out),
                }
            }
            Expr::Call(f, args) => {
                out.push_str(f.name());
                out.push('(');
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    self.write(a, out);
                }
                out.push(')');
            }
            Expr::Table(f, name, a) => {
                out.push_str(f.name());
                out.push('(');
                out.push_str(name);
                out.push_str(", ");
                self.write(a, out);
                out.push(')');
            }
        }
    }
}

impl Expr {
    /// Formula text with sub-expression references written as `name(input)`.
    pub fn to_text(&self, input: &str) -> String {
        Printer { input }.print(self)
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text("t"))
    }
}

//! The scalar expression IR shared by the spec loader, the macros and the built-in schedules.
//!
//! An [`Expr`] is a tree over `f64` with variables (the program's input, such as `t`, and named
//! parameters), references to named sub-expressions (`log_alpha(t)`), constants, arithmetic,
//! powers, the primitive functions of [`crate::expr::primitives`] and piecewise-linear tables.

pub mod diff;
pub mod eval;
pub mod parse;
pub mod primitives;
pub mod print;
pub mod simplify;

use std::hash::{Hash, Hasher};
use std::sync::Arc;

pub use primitives::Func;

/// A name: a variable, a named sub-expression or a table.
pub type Name = Arc<str>;

/// A scalar expression.
#[derive(Clone, Debug)]
pub enum Expr {
    /// A number.
    Const(f64),
    /// A variable: the program's input (`t`, or `lambda` for an inverse) or a parameter.
    Var(Name),
    /// A reference to a named sub-expression of the same program, evaluated at the input.
    Def(Name),
    /// -a.
    Neg(Box<Expr>),
    /// a + b.
    Add(Box<Expr>, Box<Expr>),
    /// a - b.
    Sub(Box<Expr>, Box<Expr>),
    /// a * b.
    Mul(Box<Expr>, Box<Expr>),
    /// a / b.
    Div(Box<Expr>, Box<Expr>),
    /// Integer power, evaluated by binary exponentiation (the same algorithm in the interpreter
    /// and the JIT, so both agree to the bit).
    Powi(Box<Expr>, i32),
    /// Real power `a^b`.
    Pow(Box<Expr>, Box<Expr>),
    /// A primitive function of its arguments.
    Call(Func, Vec<Expr>),
    /// A piecewise-linear table evaluated at the argument (`interp(table, x)`), or its slope
    /// (`interp_slope(table, x)`).
    Table(TableFn, Name, Box<Expr>),
}

/// The two functions of a piecewise-linear table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TableFn {
    /// The table's value, linear between its points (`interp`).
    Value,
    /// The table's slope on the segment holding the argument (`interp_slope`).
    Slope,
}

impl TableFn {
    /// The name in formula text.
    pub fn name(self) -> &'static str {
        match self {
            TableFn::Value => "interp",
            TableFn::Slope => "interp_slope",
        }
    }
}

/// A table that cannot be built: why.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct TableError(pub String);

/// A piecewise-linear function through `(xs[i], ys[i])`, `xs` strictly increasing, extended
/// linearly beyond both ends. Its slope is the slope of the segment to the right of x (the
/// last segment at and beyond the last knot).
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    xs: Vec<f64>,
    ys: Vec<f64>,
}

impl Table {
    /// Builds a table; `xs` must be strictly increasing, finite and at least two long.
    pub fn new(xs: Vec<f64>, ys: Vec<f64>) -> Result<Table, TableError> {
        if xs.len() != ys.len() {
            return Err(TableError(format!(
                "table has {} x values but {} y values",
                xs.len(),
                ys.len()
            )));
        }
        if xs.len() < 2 {
            return Err(TableError(format!(
                "table needs at least 2 points, found {}",
                xs.len()
            )));
        }
        if let Some(i) = xs.iter().chain(&ys).position(|v| !v.is_finite()) {
            return Err(TableError(format!(
                "table value {} is not finite",
                i % xs.len()
            )));
        }
        if let Some(i) = xs.windows(2).position(|w| w[1] <= w[0]) {
            return Err(TableError(format!(
                "table x values must increase strictly: x[{}] = {} then x[{}] = {}",
                i,
                xs[i],
                i + 1,
                xs[i + 1]
            )));
        }
        Ok(Table { xs, ys })
    }

    /// The x values, increasing.
    pub fn xs(&self) -> &[f64] {
        &self.xs
    }

    /// The y values, one per x.
    pub fn ys(&self) -> &[f64] {
        &self.ys
    }

    fn segment(&self, x: f64) -> usize {
        // Index i of the segment [xs[i], xs[i+1]) holding x, clamped to the end segments.
        let n = self.xs.len();
        let upper = self.xs.partition_point(|&v| v <= x);
        upper.saturating_sub(1).min(n - 2)
    }

    fn slope_of(&self, i: usize) -> f64 {
        (self.ys[i + 1] - self.ys[i]) / (self.xs[i + 1] - self.xs[i])
    }

    /// The value at `x`, linear between points and extended linearly beyond the ends (NaN at NaN).
    pub fn value(&self, x: f64) -> f64 {
        if x.is_nan() {
            return f64::NAN;
        }
        let i = self.segment(x);
        self.ys[i] + self.slope_of(i) * (x - self.xs[i])
    }

    /// The slope at `x`: that of the segment holding it (the end segments' beyond the ends).
    pub fn slope(&self, x: f64) -> f64 {
        if x.is_nan() {
            return f64::NAN;
        }
        self.slope_of(self.segment(x))
    }

    /// The value or the slope at `x`.
    pub fn eval(&self, f: TableFn, x: f64) -> f64 {
        match f {
            TableFn::Value => self.value(x),
            TableFn::Slope => self.slope(x),
        }
    }
}

impl Expr {
    /// The constant `v`.
    pub fn c(v: f64) -> Expr {
        Expr::Const(v)
    }

    /// The variable `name`.
    pub fn var(name: &str) -> Expr {
        Expr::Var(name.into())
    }

    /// A reference to the sub-expression `name`.
    pub fn def(name: &str) -> Expr {
        Expr::Def(name.into())
    }

    /// The number, if this is a constant.
    pub fn as_const(&self) -> Option<f64> {
        match self {
            Expr::Const(v) => Some(*v),
            _ => None,
        }
    }

    /// The direct children of this node.
    pub fn children(&self) -> Vec<&Expr> {
        match self {
            Expr::Const(_) | Expr::Var(_) | Expr::Def(_) => vec![],
            Expr::Neg(a) | Expr::Powi(a, _) | Expr::Table(_, _, a) => vec![a],
            Expr::Add(a, b)
            | Expr::Sub(a, b)
            | Expr::Mul(a, b)
            | Expr::Div(a, b)
            | Expr::Pow(a, b) => vec![a, b],
            Expr::Call(_, args) => args.iter().collect(),
        }
    }

    /// Visits every node, parents before children.
    pub fn visit(&self, f: &mut dyn FnMut(&Expr)) {
        f(self);
        for c in self.children() {
            c.visit(f);
        }
    }

    /// Names of the sub-expressions this expression refers to directly.
    pub fn def_refs(&self) -> Vec<Name> {
        let mut out: Vec<Name> = Vec::new();
        self.visit(&mut |e| {
            if let Expr::Def(n) = e {
                if !out.contains(n) {
                    out.push(n.clone());
                }
            }
        });
        out
    }

    /// Number of nodes.
    pub fn size(&self) -> usize {
        let mut n = 0;
        self.visit(&mut |_| n += 1);
        n
    }

    /// Rebuilds the tree bottom-up, letting `f` replace each rebuilt node.
    pub fn map_bottom_up(&self, f: &mut dyn FnMut(Expr) -> Expr) -> Expr {
        let b = |e: &Expr, f: &mut dyn FnMut(Expr) -> Expr| Box::new(e.map_bottom_up(f));
        let rebuilt = match self {
            Expr::Const(_) | Expr::Var(_) | Expr::Def(_) => self.clone(),
            Expr::Neg(a) => Expr::Neg(b(a, f)),
            Expr::Add(x, y) => Expr::Add(b(x, f), b(y, f)),
            Expr::Sub(x, y) => Expr::Sub(b(x, f), b(y, f)),
            Expr::Mul(x, y) => Expr::Mul(b(x, f), b(y, f)),
            Expr::Div(x, y) => Expr::Div(b(x, f), b(y, f)),
            Expr::Pow(x, y) => Expr::Pow(b(x, f), b(y, f)),
            Expr::Powi(x, n) => Expr::Powi(b(x, f), *n),
            Expr::Call(func, args) => {
                Expr::Call(*func, args.iter().map(|a| a.map_bottom_up(f)).collect())
            }
            Expr::Table(tf, name, a) => Expr::Table(*tf, name.clone(), b(a, f)),
        };
        f(rebuilt)
    }

    /// Replaces every reference to a sub-expression by what `lookup` gives for it.
    pub fn substitute_defs(&self, lookup: &mut dyn FnMut(&Name) -> Option<Expr>) -> Expr {
        self.map_bottom_up(&mut |e| match &e {
            Expr::Def(n) => lookup(n).unwrap_or(e),
            _ => e,
        })
    }
}

// Structural equality and hashing, with constants compared by bit pattern so that an `Expr`
// can key the JIT's common-subexpression cache.
impl PartialEq for Expr {
    fn eq(&self, other: &Expr) -> bool {
        use Expr::*;
        match (self, other) {
            (Const(a), Const(b)) => a.to_bits() == b.to_bits(),
            (Var(a), Var(b)) | (Def(a), Def(b)) => a == b,
            (Neg(a), Neg(b)) => a == b,
            (Add(a, b), Add(c, d))
            | (Sub(a, b), Sub(c, d))
            | (Mul(a, b), Mul(c, d))
            | (Div(a, b), Div(c, d))
            | (Pow(a, b), Pow(c, d)) => a == c && b == d,
            (Powi(a, n), Powi(b, m)) => a == b && n == m,
            (Call(f, a), Call(g, b)) => f == g && a == b,
            (Table(f, n, a), Table(g, m, b)) => f == g && n == m && a == b,
            _ => false,
        }
    }
}

impl Eq for Expr {}

impl Hash for Expr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Expr::Const(v) => v.to_bits().hash(state),
            Expr::Var(n) | Expr::Def(n) => n.hash(state),
            Expr::Powi(a, n) => {
                a.hash(state);
                n.hash(state)
            }
            Expr::Call(f, args) => {
                f.hash(state);
                args.hash(state)
            }
            Expr::Table(f, n, a) => {
                f.hash(state);
                n.hash(state);
                a.hash(state)
            }
            _ => {
                for c in self.children() {
                    c.hash(state)
                }
            }
        }
    }
}

//! The interpreter: the reference every JIT-compiled function is tested against.

use super::primitives::{libm, powi_f64};
use super::{Expr, Name, Table};

/// What an expression's names evaluate to.
pub trait Env {
    /// The value of the variable `name` (the input or a parameter).
    fn var(&self, name: &str) -> Option<f64>;
    /// The value of the sub-expression `name` at the input.
    fn def(&self, name: &str) -> Option<f64>;
    /// The table `name`.
    fn table(&self, name: &str) -> Option<&Table>;
}

/// A name the environment does not know.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("`{0}` has no value here")]
pub struct UnboundName(pub Name);

/// An environment of variables only (no sub-expressions, no tables).
pub struct Vars<'a>(pub &'a [(&'a str, f64)]);

impl Env for Vars<'_> {
    fn var(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
    fn def(&self, _: &str) -> Option<f64> {
        None
    }
    fn table(&self, _: &str) -> Option<&Table> {
        None
    }
}

impl Expr {
    /// Evaluates the expression.
    pub fn eval(&self, env: &dyn Env) -> Result<f64, UnboundName> {
        let r = |e: &Expr| e.eval(env);
        Ok(match self {
            Expr::Const(v) => *v,
            Expr::Var(n) => env.var(n).ok_or_else(|| UnboundName(n.clone()))?,
            Expr::Def(n) => env.def(n).ok_or_else(|| UnboundName(n.clone()))?,
            Expr::Neg(a) => -r(a)?,
            Expr::Add(a, b) => r(a)? + r(b)?,
            Expr::Sub(a, b) => r(a)? - r(b)?,
            Expr::Mul(a, b) => r(a)? * r(b)?,
            Expr::Div(a, b) => r(a)? / r(b)?,
            Expr::Powi(a, n) => powi_f64(r(a)?, *n),
            // SAFETY: libm pow is defined for every input.
            Expr::Pow(a, b) => unsafe { libm::pow(r(a)?, r(b)?) },
            Expr::Call(f, args) => {
                let mut vals = [0.0; 2];
                for (slot, a) in vals.iter_mut().zip(args) {
                    *slot = r(a)?;
                }
                f.primitive().eval(&vals[..args.len()])
            }
            Expr::Table(tf, name, a) => {
                let x = r(a)?;
                env.table(name)
                    .ok_or_else(|| UnboundName(name.clone()))?
                    .eval(*tf, x)
            }
        })
    }
}

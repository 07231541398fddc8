//! Symbolic differentiation with respect to a variable (the input `t`, or a parameter).
//!
//! The chain rule over the primitive table's `partials`; references to named sub-expressions
//! are differentiated by the caller's `def_derivative`, which in a [`crate::program::Program`]
//! adds (once) a named derivative sub-expression, so derived formulas stay shared.

use super::simplify::{add, call, div, mul, neg, powi, sub};
use super::{Expr, Name, TableFn};
use crate::expr::primitives::Func;

/// d e / d `wrt`. `def_derivative(name)` gives the derivative of the sub-expression `name`.
pub fn diff(e: &Expr, wrt: &str, def_derivative: &mut dyn FnMut(&Name) -> Expr) -> Expr {
    let mut d = |x: &Expr| diff(x, wrt, def_derivative);
    match e {
        Expr::Const(_) => Expr::Const(0.0),
        Expr::Var(n) => Expr::Const(if &**n == wrt { 1.0 } else { 0.0 }),
        Expr::Def(n) => def_derivative(n),
        Expr::Neg(a) => neg(d(a)),
        Expr::Add(a, b) => add(d(a), d(b)),
        Expr::Sub(a, b) => sub(d(a), d(b)),
        Expr::Mul(a, b) => {
            let (da, db) = (d(a), d(b));
            add(mul(da, (**b).clone()), mul((**a).clone(), db))
        }
        Expr::Div(a, b) => {
            // (a/b)' = a'/b - a b' / b^2
            let (da, db) = (d(a), d(b));
            sub(
                div(da, (**b).clone()),
                div(mul((**a).clone(), db), powi((**b).clone(), 2)),
            )
        }
        Expr::Powi(a, n) => {
            let da = d(a);
            mul(mul(Expr::Const(*n as f64), powi((**a).clone(), n - 1)), da)
        }
        Expr::Pow(a, b) => {
            let (da, db) = (d(a), d(b));
            if db.as_const() == Some(0.0) {
                // b a^(b-1) a'
                let p = super::simplify::pow((**a).clone(), sub((**b).clone(), Expr::Const(1.0)));
                mul(mul((**b).clone(), p), da)
            } else {
                // a^b (b' ln a + b a'/a)
                let lna = call(Func::Ln, vec![(**a).clone()]);
                let inner = add(mul(db, lna), div(mul((**b).clone(), da), (**a).clone()));
                mul(e.clone(), inner)
            }
        }
        Expr::Call(f, args) => {
            let partials = (f.primitive().partials)(args);
            let mut total = Expr::Const(0.0);
            for (p, a) in partials.into_iter().zip(args) {
                let da = d(a);
                if da.as_const() != Some(0.0) && p.as_const() != Some(0.0) {
                    total = add(total, mul(p, da));
                }
            }
            total
        }
        Expr::Table(TableFn::Value, name, a) => {
            let da = d(a);
            mul(Expr::Table(TableFn::Slope, name.clone(), a.clone()), da)
        }
        // Piecewise constant: zero almost everywhere.
        Expr::Table(TableFn::Slope, _, _) => Expr::Const(0.0),
    }
}

/// The derivative of an expression without sub-expression references.
pub fn diff_closed(e: &Expr, wrt: &str) -> Expr {
    diff(e, wrt, &mut |n| {
        panic!("diff_closed: `{n}` is a sub-expression reference; differentiate through a Program")
    })
}

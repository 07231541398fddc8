//! Simplifying constructors and the simplifier built on them.
//!
//! Every derived expression is assembled with these constructors, so constant folding and the
//! identities that keep derivatives small apply as the tree is built. The rules only rewrite
//! to expressions with the same value wherever the original is finite (`exp(ln x) -> x` assumes
//! x > 0, which is where `ln x` is finite); floating-point reassociation of constants may change
//! the last bits.

use super::primitives::{powi_f64, Func};
use super::Expr;

fn b(e: Expr) -> Box<Expr> {
    Box::new(e)
}

fn is(e: &Expr, v: f64) -> bool {
    matches!(e, Expr::Const(c) if *c == v)
}

/// -a, folded where a is a constant or a negation.
pub fn neg(a: Expr) -> Expr {
    match a {
        Expr::Const(c) => Expr::Const(-c),
        Expr::Neg(x) => *x,
        Expr::Sub(x, y) => Expr::Sub(y, x),
        Expr::Mul(x, y) if x.as_const().is_some() => mul(Expr::Const(-x.as_const().unwrap()), *y),
        // Push the sign into a constant factor of a numerator.
        Expr::Div(x, y)
            if matches!(*x, Expr::Const(_))
                || matches!(&*x, Expr::Mul(c, _) if c.as_const().is_some()) =>
        {
            div(neg(*x), *y)
        }
        a => Expr::Neg(b(a)),
    }
}

/// x + y, with constants folded and zeros dropped.
pub fn add(x: Expr, y: Expr) -> Expr {
    match (x, y) {
        (Expr::Const(a), Expr::Const(c)) => Expr::Const(a + c),
        (x, y) if is(&x, 0.0) => y,
        (x, y) if is(&y, 0.0) => x,
        (x, Expr::Neg(y)) => sub(x, *y),
        (Expr::Neg(x), y) => sub(y, *x),
        (x, Expr::Const(c)) if c < 0.0 => sub(x, Expr::Const(-c)),
        (x, y) if x == y => mul(Expr::Const(2.0), x),
        (x, y) => Expr::Add(b(x), b(y)),
    }
}

/// x - y, with constants folded and zeros dropped.
pub fn sub(x: Expr, y: Expr) -> Expr {
    match (x, y) {
        (Expr::Const(a), Expr::Const(c)) => Expr::Const(a - c),
        (x, y) if is(&y, 0.0) => x,
        (x, y) if is(&x, 0.0) => neg(y),
        (x, y) if x == y => Expr::Const(0.0),
        (x, Expr::Neg(y)) => add(x, *y),
        (x, Expr::Const(c)) if c < 0.0 => add(x, Expr::Const(-c)),
        (x, y) => Expr::Sub(b(x), b(y)),
    }
}

/// x * y, with constants folded, ones dropped and zeros absorbing.
pub fn mul(x: Expr, y: Expr) -> Expr {
    match (x, y) {
        (Expr::Const(a), Expr::Const(c)) => Expr::Const(a * c),
        (x, y) if is(&x, 0.0) || is(&y, 0.0) => Expr::Const(0.0),
        (x, y) if is(&x, 1.0) => y,
        (x, y) if is(&y, 1.0) => x,
        (x, y) if is(&x, -1.0) => neg(y),
        (x, y) if is(&y, -1.0) => neg(x),
        // Constants to the left, folded together.
        (x, Expr::Const(c)) => mul(Expr::Const(c), x),
        (Expr::Const(a), Expr::Mul(p, q)) if p.as_const().is_some() => {
            mul(Expr::Const(a * p.as_const().unwrap()), *q)
        }
        (Expr::Const(a), Expr::Neg(q)) => mul(Expr::Const(-a), *q),
        (Expr::Neg(p), Expr::Neg(q)) => mul(*p, *q),
        (Expr::Neg(p), q) => neg(mul(*p, q)),
        (p, Expr::Neg(q)) => neg(mul(p, *q)),
        (x, y) if x == y => powi(x, 2),
        (Expr::Powi(p, n), q) if *p == q => powi(q, n + 1),
        (p, Expr::Powi(q, n)) if p == *q => powi(p, n + 1),
        (Expr::Powi(p, n), Expr::Powi(q, m)) if p == q => powi(*p, n + m),
        // A constant numerator joins the product: p * (c / q) = (c p) / q.
        (p, Expr::Div(c, q)) if c.as_const().is_some() => div(mul(*c, p), *q),
        (Expr::Div(c, p), q) if c.as_const().is_some() => div(mul(*c, q), *p),
        (x, y) => Expr::Mul(b(x), b(y)),
    }
}

/// x / y, with constants folded and division by one dropped.
pub fn div(x: Expr, y: Expr) -> Expr {
    match (x, y) {
        (Expr::Const(a), Expr::Const(c)) if c != 0.0 => Expr::Const(a / c),
        (x, y) if is(&x, 0.0) && !is(&y, 0.0) => Expr::Const(0.0),
        (x, y) if is(&y, 1.0) => x,
        (x, y) if is(&y, -1.0) => neg(x),
        (x, y) if x == y && x.as_const().is_none() => Expr::Const(1.0),
        (Expr::Neg(p), q) => neg(div(*p, q)),
        (p, Expr::Neg(q)) => neg(div(p, *q)),
        (p, Expr::Div(q, r)) => div(mul(p, *r), *q),
        (Expr::Div(p, q), r) => div(*p, mul(*q, r)),
        (Expr::Powi(p, n), q) if *p == q => powi(q, n - 1),
        // (a p) / p = a and (a p^n) / p = a p^(n-1), as the product rule leaves them.
        (Expr::Mul(a, p), q) if *p == q => *a,
        (Expr::Mul(a, p), q) if matches!(&*p, Expr::Powi(base, _) if **base == q) => {
            let Expr::Powi(base, n) = *p else {
                unreachable!()
            };
            mul(*a, powi(*base, n - 1))
        }
        (x, y) => Expr::Div(b(x), b(y)),
    }
}

/// x^n for an integer n (0 and 1 folded).
pub fn powi(x: Expr, n: i32) -> Expr {
    match x {
        Expr::Const(a) => Expr::Const(powi_f64(a, n)),
        _ if n == 0 => Expr::Const(1.0),
        x if n == 1 => x,
        Expr::Powi(p, m) => match m.checked_mul(n) {
            Some(k) => powi(*p, k),
            None => Expr::Powi(b(Expr::Powi(p, m)), n),
        },
        Expr::Neg(p) if n % 2 == 0 => powi(*p, n),
        Expr::Neg(p) => neg(powi(*p, n)),
        // exp(a)^n = exp(n a): one call instead of a call and multiplications.
        Expr::Call(Func::Exp, args) => {
            call(Func::Exp, vec![mul(Expr::Const(n as f64), args[0].clone())])
        }
        Expr::Call(Func::Sqrt, args) if n % 2 == 0 => powi(args[0].clone(), n / 2),
        x => Expr::Powi(b(x), n),
    }
}

/// x^y (an integer constant y becomes `powi`).
pub fn pow(x: Expr, y: Expr) -> Expr {
    match (x, y) {
        // SAFETY: libm pow is defined for every input; the interpreter uses the same.
        (Expr::Const(a), Expr::Const(c)) => {
            Expr::Const(unsafe { super::primitives::libm::pow(a, c) })
        }
        (x, Expr::Const(c)) if c == c.trunc() && c.abs() <= 64.0 => powi(x, c as i32),
        (x, Expr::Const(0.5)) => call(Func::Sqrt, vec![x]),
        (x, y) => Expr::Pow(b(x), b(y)),
    }
}

/// f(args), folded when every argument is a constant.
pub fn call(f: Func, args: Vec<Expr>) -> Expr {
    if args.iter().all(|a| a.as_const().is_some()) {
        let vals: Vec<f64> = args.iter().map(|a| a.as_const().unwrap()).collect();
        return Expr::Const(f.primitive().eval(&vals));
    }
    let a0 = &args[0];
    match (f, a0) {
        (Func::Exp, Expr::Call(Func::Ln, inner)) => inner[0].clone(),
        // exp(c ln x) = x^c (x > 0 where ln x is finite): exp(0.5 ln x) = sqrt(x).
        (Func::Exp, Expr::Mul(c, l))
            if c.as_const().is_some() && matches!(&**l, Expr::Call(Func::Ln, _)) =>
        {
            let Expr::Call(_, inner) = &**l else {
                unreachable!()
            };
            pow(inner[0].clone(), (**c).clone())
        }
        (Func::Ln, Expr::Call(Func::Exp, inner)) => inner[0].clone(),
        (Func::Ln, Expr::Call(Func::Sqrt, inner)) => {
            mul(Expr::Const(0.5), call(Func::Ln, vec![inner[0].clone()]))
        }
        (Func::Sqrt, Expr::Powi(inner, 2)) => call(Func::Abs, vec![(**inner).clone()]),
        (Func::Abs, Expr::Call(Func::Abs, _)) => a0.clone(),
        (Func::Abs, Expr::Neg(inner)) => call(Func::Abs, vec![(**inner).clone()]),
        _ => Expr::Call(f, args),
    }
}

/// Rebuilds an expression through the simplifying constructors until it stops shrinking.
pub fn simplify(e: &Expr) -> Expr {
    let mut cur = e.clone();
    for _ in 0..8 {
        let next = cur.map_bottom_up(&mut rebuild);
        if next == cur {
            break;
        }
        cur = next;
    }
    cur
}

/// Re-applies the constructor for one node whose children are already simplified.
fn rebuild(e: Expr) -> Expr {
    match e {
        Expr::Neg(a) => neg(*a),
        Expr::Add(x, y) => add(*x, *y),
        Expr::Sub(x, y) => sub(*x, *y),
        Expr::Mul(x, y) => mul(*x, *y),
        Expr::Div(x, y) => div(*x, *y),
        Expr::Powi(x, n) => powi(*x, n),
        Expr::Pow(x, y) => pow(*x, *y),
        Expr::Call(f, args) => call(f, args),
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::parse::{parse_expr, Scope};

    fn p(s: &str) -> Expr {
        parse_expr(s, &Scope::new("t").with_params(&["a", "b"])).unwrap()
    }

    fn s(text: &str) -> String {
        simplify(&p(text)).to_string()
    }

    #[test]
    fn folds_constants_and_units() {
        assert_eq!(s("2 * 3 + t * 1 + 0"), "6 + t");
        assert_eq!(s("(t - t) * a + b / 1"), "b");
        assert_eq!(s("0 - t"), "-t");
        assert_eq!(s("--t"), "t");
        assert_eq!(s("exp(0) * ln(1) + sqrt(4)"), "2");
        assert_eq!(s("t^1 + t^0"), "t + 1");
    }

    #[test]
    fn collects_powers_and_signs() {
        assert_eq!(s("t * t"), "t^2");
        assert_eq!(s("t^2 * t"), "t^3");
        assert_eq!(s("t^2 * t^3"), "t^5");
        assert_eq!(s("(-t) * (-a)"), "t * a");
        assert_eq!(s("2 * (3 * t)"), "6 * t");
        assert_eq!(s("t * 2"), "2 * t");
        assert_eq!(s("exp(ln(t))"), "t");
        assert_eq!(s("exp(t)^2"), "exp(2 * t)");
        assert_eq!(s("sqrt(t)^2"), "t");
        assert_eq!(s("a - (-b)"), "a + b");
        assert_eq!(s("t + t"), "2 * t");
        assert_eq!(s("a / (b / t)"), "a * t / b");
    }
}

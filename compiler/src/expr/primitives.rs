//! The one table of primitive functions: name, arity, implementation and partial derivatives.
//!
//! The interpreter calls `imp`; the JIT calls the very same `extern "C"` functions as
//! registered trampolines (or a native instruction where cranelift has one, `sqrt` and `abs`);
//! the differentiator uses `partials`. Listing each primitive once keeps the three in step.

use super::simplify::{add, div, mul, neg, powi, sub};
use super::Expr;

/// A primitive function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Func {
    /// e^x.
    Exp,
    /// The natural logarithm (also `log`).
    Ln,
    /// The square root.
    Sqrt,
    /// Sine.
    Sin,
    /// Cosine.
    Cos,
    /// Tangent.
    Tan,
    /// Arctangent.
    Atan,
    /// Arccosine.
    Acos,
    /// Arcsine.
    Asin,
    /// Hyperbolic tangent.
    Tanh,
    /// 1 / (1 + e^-x), stable on both tails.
    Sigmoid,
    /// ln(1 + e^x), stable on both tails.
    Softplus,
    /// e^x - 1, accurate near 0.
    Expm1,
    /// ln(1 + x), accurate near 0 (also `log1p`).
    Ln1p,
    /// |x|.
    Abs,
    /// The smaller of two (NaN if either is).
    Min,
    /// The larger of two (NaN if either is).
    Max,
    /// `sign(x)`: -1, 0 or 1 (the derivative of `abs`).
    Sign,
    /// `step(x)`: 1 for x >= 0, else 0 (the derivative of `min` and `max`).
    Step,
}

/// How a primitive is computed.
#[derive(Clone, Copy, Debug)]
pub enum Imp {
    /// f(x).
    Unary(unsafe extern "C" fn(f64) -> f64),
    /// f(x, y).
    Binary(unsafe extern "C" fn(f64, f64) -> f64),
}

/// A cranelift instruction that computes the primitive exactly as `imp` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Native {
    /// cranelift's `sqrt`.
    Sqrt,
    /// cranelift's `fabs`.
    Abs,
}

/// One row of the primitive table.
pub struct Primitive {
    /// The function.
    pub func: Func,
    /// The name in formula text and in the printer.
    pub name: &'static str,
    /// Other spellings the parser accepts.
    pub aliases: &'static [&'static str],
    /// The implementation the interpreter calls and the JIT imports.
    pub imp: Imp,
    /// The cranelift instruction the JIT uses instead, where there is one.
    pub native: Option<Native>,
    /// The symbol under which the JIT imports `imp`.
    pub symbol: &'static str,
    /// The partial derivatives with respect to each argument, as expressions of the arguments.
    pub partials: fn(&[Expr]) -> Vec<Expr>,
}

impl Primitive {
    /// The number of arguments.
    pub fn arity(&self) -> usize {
        match self.imp {
            Imp::Unary(_) => 1,
            Imp::Binary(_) => 2,
        }
    }

    /// The value at `args` (the same function the JIT calls).
    pub fn eval(&self, args: &[f64]) -> f64 {
        // SAFETY: every implementation is a pure function of its f64 arguments (C's libm or
        // ours), defined for every input.
        unsafe {
            match self.imp {
                Imp::Unary(f) => f(args[0]),
                Imp::Binary(f) => f(args[0], args[1]),
            }
        }
    }
}

fn call(f: Func, a: &Expr) -> Expr {
    Expr::Call(f, vec![a.clone()])
}

fn c(v: f64) -> Expr {
    Expr::Const(v)
}

macro_rules! unary_imp {
    ($name:ident, |$x:ident| $body:expr) => {
        #[doc = concat!("`", stringify!($name), "(x)`, the primitive's implementation.")]
        pub extern "C" fn $name($x: f64) -> f64 {
            $body
        }
    };
}

/// The C library's functions (what `f64::exp` and friends call): the JIT imports them
/// directly, without a wrapper in between, and the interpreter calls the same ones.
pub mod libm {
    extern "C" {
        /// C's `exp`.
        pub fn exp(x: f64) -> f64;
        /// C's `log`.
        pub fn log(x: f64) -> f64;
        /// C's `sin`.
        pub fn sin(x: f64) -> f64;
        /// C's `cos`.
        pub fn cos(x: f64) -> f64;
        /// C's `tan`.
        pub fn tan(x: f64) -> f64;
        /// C's `atan`.
        pub fn atan(x: f64) -> f64;
        /// C's `acos`.
        pub fn acos(x: f64) -> f64;
        /// C's `asin`.
        pub fn asin(x: f64) -> f64;
        /// C's `tanh`.
        pub fn tanh(x: f64) -> f64;
        /// C's `expm1`.
        pub fn expm1(x: f64) -> f64;
        /// C's `log1p`.
        pub fn log1p(x: f64) -> f64;
        /// C's `pow`.
        pub fn pow(x: f64, y: f64) -> f64;
    }
}

/// The implementations of our own, shared by the interpreter and (as trampolines) the JIT.
pub mod imps {
    unary_imp!(sqrt, |x| x.sqrt());
    // Stable on both tails: never forms exp of a large positive number.
    unary_imp!(sigmoid, |x| if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    });
    unary_imp!(softplus, |x| x.max(0.0) + (-x.abs()).exp().ln_1p());
    unary_imp!(abs, |x| x.abs());
    unary_imp!(sign, |x| if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        x * 0.0
    });
    unary_imp!(step, |x| if x >= 0.0 {
        1.0
    } else if x < 0.0 {
        0.0
    } else {
        f64::NAN
    });
    /// `min` with NaN propagation (unlike `f64::min`, which drops a NaN).
    pub extern "C" fn min(a: f64, b: f64) -> f64 {
        if a.is_nan() || b.is_nan() {
            f64::NAN
        } else if b < a {
            b
        } else {
            a
        }
    }
    /// `max` with NaN propagation.
    pub extern "C" fn max(a: f64, b: f64) -> f64 {
        if a.is_nan() || b.is_nan() {
            f64::NAN
        } else if b > a {
            b
        } else {
            a
        }
    }
}

/// The table. Derivatives are written with the simplifying constructors so that derived
/// expressions stay small.
pub static PRIMITIVES: &[Primitive] = &[
    Primitive {
        func: Func::Exp,
        name: "exp",
        aliases: &[],
        imp: Imp::Unary(libm::exp),
        native: None,
        symbol: "adeis_exp",
        partials: |a| vec![call(Func::Exp, &a[0])],
    },
    Primitive {
        func: Func::Ln,
        name: "ln",
        aliases: &["log"],
        imp: Imp::Unary(libm::log),
        native: None,
        symbol: "adeis_ln",
        partials: |a| vec![div(c(1.0), a[0].clone())],
    },
    Primitive {
        func: Func::Sqrt,
        name: "sqrt",
        aliases: &[],
        imp: Imp::Unary(imps::sqrt),
        native: Some(Native::Sqrt),
        symbol: "adeis_sqrt",
        partials: |a| vec![div(c(0.5), call(Func::Sqrt, &a[0]))],
    },
    Primitive {
        func: Func::Sin,
        name: "sin",
        aliases: &[],
        imp: Imp::Unary(libm::sin),
        native: None,
        symbol: "adeis_sin",
        partials: |a| vec![call(Func::Cos, &a[0])],
    },
    Primitive {
        func: Func::Cos,
        name: "cos",
        aliases: &[],
        imp: Imp::Unary(libm::cos),
        native: None,
        symbol: "adeis_cos",
        partials: |a| vec![neg(call(Func::Sin, &a[0]))],
    },
    Primitive {
        func: Func::Tan,
        name: "tan",
        aliases: &[],
        imp: Imp::Unary(libm::tan),
        native: None,
        symbol: "adeis_tan",
        partials: |a| vec![add(c(1.0), powi(call(Func::Tan, &a[0]), 2))],
    },
    Primitive {
        func: Func::Atan,
        name: "atan",
        aliases: &[],
        imp: Imp::Unary(libm::atan),
        native: None,
        symbol: "adeis_atan",
        partials: |a| vec![div(c(1.0), add(c(1.0), powi(a[0].clone(), 2)))],
    },
    Primitive {
        func: Func::Acos,
        name: "acos",
        aliases: &[],
        imp: Imp::Unary(libm::acos),
        native: None,
        symbol: "adeis_acos",
        partials: |a| {
            vec![neg(div(
                c(1.0),
                call(Func::Sqrt, &sub(c(1.0), powi(a[0].clone(), 2))),
            ))]
        },
    },
    Primitive {
        func: Func::Asin,
        name: "asin",
        aliases: &[],
        imp: Imp::Unary(libm::asin),
        native: None,
        symbol: "adeis_asin",
        partials: |a| {
            vec![div(
                c(1.0),
                call(Func::Sqrt, &sub(c(1.0), powi(a[0].clone(), 2))),
            )]
        },
    },
    Primitive {
        func: Func::Tanh,
        name: "tanh",
        aliases: &[],
        imp: Imp::Unary(libm::tanh),
        native: None,
        symbol: "adeis_tanh",
        partials: |a| vec![sub(c(1.0), powi(call(Func::Tanh, &a[0]), 2))],
    },
    Primitive {
        func: Func::Sigmoid,
        name: "sigmoid",
        aliases: &[],
        imp: Imp::Unary(imps::sigmoid),
        native: None,
        symbol: "adeis_sigmoid",
        // sigmoid(x) sigmoid(-x): no cancellation on either tail.
        partials: |a| {
            vec![mul(
                call(Func::Sigmoid, &a[0]),
                call(Func::Sigmoid, &neg(a[0].clone())),
            )]
        },
    },
    Primitive {
        func: Func::Softplus,
        name: "softplus",
        aliases: &[],
        imp: Imp::Unary(imps::softplus),
        native: None,
        symbol: "adeis_softplus",
        partials: |a| vec![call(Func::Sigmoid, &a[0])],
    },
    Primitive {
        func: Func::Expm1,
        name: "expm1",
        aliases: &[],
        imp: Imp::Unary(libm::expm1),
        native: None,
        symbol: "adeis_expm1",
        partials: |a| vec![call(Func::Exp, &a[0])],
    },
    Primitive {
        func: Func::Ln1p,
        name: "ln1p",
        aliases: &["log1p"],
        imp: Imp::Unary(libm::log1p),
        native: None,
        symbol: "adeis_ln1p",
        partials: |a| vec![div(c(1.0), add(c(1.0), a[0].clone()))],
    },
    Primitive {
        func: Func::Abs,
        name: "abs",
        aliases: &[],
        imp: Imp::Unary(imps::abs),
        native: Some(Native::Abs),
        symbol: "adeis_abs",
        partials: |a| vec![call(Func::Sign, &a[0])],
    },
    Primitive {
        func: Func::Min,
        name: "min",
        aliases: &[],
        imp: Imp::Binary(imps::min),
        native: None,
        symbol: "adeis_min",
        partials: |a| {
            let a_wins = call(Func::Step, &sub(a[1].clone(), a[0].clone()));
            vec![a_wins.clone(), sub(c(1.0), a_wins)]
        },
    },
    Primitive {
        func: Func::Max,
        name: "max",
        aliases: &[],
        imp: Imp::Binary(imps::max),
        native: None,
        symbol: "adeis_max",
        partials: |a| {
            let a_wins = call(Func::Step, &sub(a[0].clone(), a[1].clone()));
            vec![a_wins.clone(), sub(c(1.0), a_wins)]
        },
    },
    Primitive {
        func: Func::Sign,
        name: "sign",
        aliases: &[],
        imp: Imp::Unary(imps::sign),
        native: None,
        symbol: "adeis_sign",
        partials: |_| vec![c(0.0)],
    },
    Primitive {
        func: Func::Step,
        name: "step",
        aliases: &[],
        imp: Imp::Unary(imps::step),
        native: None,
        symbol: "adeis_step",
        partials: |_| vec![c(0.0)],
    },
];

impl Func {
    /// This function's row in [`PRIMITIVES`].
    pub fn primitive(self) -> &'static Primitive {
        // The table is ordered like the enum; the assertion guards that invariant.
        let p = &PRIMITIVES[self as usize];
        debug_assert_eq!(p.func, self);
        p
    }

    /// The name in formula text.
    pub fn name(self) -> &'static str {
        self.primitive().name
    }

    /// Looks a function up by its name or an alias.
    pub fn by_name(name: &str) -> Option<Func> {
        PRIMITIVES
            .iter()
            .find(|p| p.name == name || p.aliases.contains(&name))
            .map(|p| p.func)
    }

    /// Every primitive, in the table's order.
    pub fn all() -> impl Iterator<Item = Func> {
        PRIMITIVES.iter().map(|p| p.func)
    }
}

/// The real-power trampoline's symbol (for `Expr::Pow`).
pub const POW_SYMBOL: &str = "adeis_pow";

/// Integer power by binary exponentiation; the JIT emits the same sequence of multiplications.
pub fn powi_f64(x: f64, n: i32) -> f64 {
    let mut base = x;
    let mut e = n.unsigned_abs();
    let mut acc: Option<f64> = None;
    while e > 0 {
        if e & 1 == 1 {
            acc = Some(match acc {
                None => base,
                Some(a) => a * base,
            });
        }
        e >>= 1;
        if e > 0 {
            base *= base;
        }
    }
    let p = acc.unwrap_or(1.0);
    if n < 0 {
        1.0 / p
    } else {
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_ordered_like_the_enum() {
        for (i, p) in PRIMITIVES.iter().enumerate() {
            assert_eq!(p.func as usize, i, "{}", p.name);
        }
    }

    #[test]
    fn powi_matches_std() {
        for &x in &[0.3, -1.7, 2.0, 1e-3, 123.4] {
            for n in -7..=9 {
                let a = powi_f64(x, n);
                let b = x.powi(n);
                assert!(
                    (a - b).abs() <= 1e-14 * b.abs().max(1e-300),
                    "{x}^{n}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn stable_sigmoid_and_softplus() {
        assert_eq!(imps::sigmoid(-800.0), 0.0);
        assert_eq!(imps::sigmoid(800.0), 1.0);
        assert!((imps::softplus(-40.0) - (-40.0f64).exp()).abs() < 1e-30);
        // The libm imports are the functions std calls.
        assert_eq!(unsafe { libm::expm1(-1e-3) }, (-1e-3f64).exp_m1());
        assert_eq!(unsafe { libm::log(3.0) }, 3f64.ln());
        assert_eq!(imps::softplus(800.0), 800.0);
        assert!((imps::softplus(0.0) - 2f64.ln()).abs() < 1e-16);
    }
}

//! Forward-mode derivatives for the coefficients that are computed rather than written as
//! formulas (DEIS's quadrature, UniPC's order conditions): a number with its derivatives in
//! the times of four consecutive grid points and in the schedule's parameters. Every step of
//! every family reads at most the points t-3..t of its end point t, so four time slots
//! suffice.

use std::ops::{Add, Div, Mul, Neg, Sub};

use crate::plan::{GridSens, MAX_DUAL_PARAMS};

/// The grid points a dual number tracks; the parameters' slots follow them.
pub(crate) const TIME_SLOTS: usize = 4;
const SLOTS: usize = TIME_SLOTS + MAX_DUAL_PARAMS;

/// A value and its derivatives in the times of grid points `base..base + TIME_SLOTS` (the base
/// is the caller's; slots before the grid's start are never seeded), then in each schedule
/// parameter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Dual {
    pub v: f64,
    pub d: [f64; SLOTS],
}

impl Dual {
    pub fn constant(v: f64) -> Dual {
        Dual { v, d: [0.0; SLOTS] }
    }

    /// A value that moves with one grid time at rate `slope`.
    pub fn seeded(v: f64, slot: usize, slope: f64) -> Dual {
        let mut d = [0.0; SLOTS];
        d[slot] = slope;
        Dual { v, d }
    }

    fn chain(self, v: f64, dv: f64) -> Dual {
        Dual {
            v,
            d: self.d.map(|x| x * dv),
        }
    }

    pub fn exp(self) -> Dual {
        let e = self.v.exp();
        self.chain(e, e)
    }

    pub fn ln(self) -> Dual {
        self.chain(self.v.ln(), 1.0 / self.v)
    }

    pub fn sqrt(self) -> Dual {
        let r = self.v.sqrt();
        self.chain(r, 0.5 / r)
    }

    pub fn exp_m1(self) -> Dual {
        self.chain(self.v.exp_m1(), self.v.exp())
    }

    pub fn powi(self, n: i32) -> Dual {
        if n == 0 {
            return Dual::constant(1.0);
        }
        self.chain(self.v.powi(n), n as f64 * self.v.powi(n - 1))
    }

    /// The derivatives as sensitivities: time slot k is grid point base + k, parameter slot k
    /// is index n_grid + k.
    pub fn sens(&self, base: isize, n_grid: usize) -> GridSens {
        self.d
            .iter()
            .enumerate()
            .filter(|(_, d)| **d != 0.0)
            .map(|(k, d)| match k {
                k if k < TIME_SLOTS => ((base + k as isize) as usize, *d),
                k => (n_grid + k - TIME_SLOTS, *d),
            })
            .collect()
    }

    /// Sets the derivative in schedule parameter k.
    pub fn with_param(mut self, k: usize, d: f64) -> Dual {
        if k < MAX_DUAL_PARAMS {
            self.d[TIME_SLOTS + k] = d;
        }
        self
    }

    /// The derivative in schedule parameter k.
    pub fn param(&self, k: usize) -> f64 {
        if k < MAX_DUAL_PARAMS {
            self.d[TIME_SLOTS + k]
        } else {
            0.0
        }
    }
}

fn zip(a: [f64; SLOTS], b: [f64; SLOTS], f: impl Fn(f64, f64) -> f64) -> [f64; SLOTS] {
    std::array::from_fn(|k| f(a[k], b[k]))
}

impl Add for Dual {
    type Output = Dual;
    fn add(self, o: Dual) -> Dual {
        Dual {
            v: self.v + o.v,
            d: zip(self.d, o.d, |a, b| a + b),
        }
    }
}

impl Sub for Dual {
    type Output = Dual;
    fn sub(self, o: Dual) -> Dual {
        Dual {
            v: self.v - o.v,
            d: zip(self.d, o.d, |a, b| a - b),
        }
    }
}

// The product and quotient rules mix the operations, as clippy suspects of arithmetic impls.
#[allow(clippy::suspicious_arithmetic_impl)]
impl Mul for Dual {
    type Output = Dual;
    fn mul(self, o: Dual) -> Dual {
        Dual {
            v: self.v * o.v,
            d: zip(self.d, o.d, |a, b| a * o.v + self.v * b),
        }
    }
}

#[allow(clippy::suspicious_arithmetic_impl)]
impl Div for Dual {
    type Output = Dual;
    fn div(self, o: Dual) -> Dual {
        let q = self.v / o.v;
        Dual {
            v: q,
            d: zip(self.d, o.d, |a, b| (a - q * b) / o.v),
        }
    }
}

impl Neg for Dual {
    type Output = Dual;
    fn neg(self) -> Dual {
        Dual {
            v: -self.v,
            d: self.d.map(|x| -x),
        }
    }
}

impl Add<f64> for Dual {
    type Output = Dual;
    fn add(self, o: f64) -> Dual {
        Dual {
            v: self.v + o,
            ..self
        }
    }
}

impl Sub<f64> for Dual {
    type Output = Dual;
    fn sub(self, o: f64) -> Dual {
        Dual {
            v: self.v - o,
            ..self
        }
    }
}

impl Mul<f64> for Dual {
    type Output = Dual;
    fn mul(self, o: f64) -> Dual {
        Dual {
            v: self.v * o,
            d: self.d.map(|x| x * o),
        }
    }
}

impl Div<f64> for Dual {
    type Output = Dual;
    fn div(self, o: f64) -> Dual {
        self * (1.0 / o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dual_arithmetic_matches_finite_differences() {
        let f = |x: Dual, y: Dual| ((x * y).exp_m1() / (y - x * 0.5) + x.powi(3)).exp() - y / 2.0;
        let (x0, y0) = (0.3, 0.7);
        let d = f(Dual::seeded(x0, 0, 1.0), Dual::seeded(y0, 1, 1.0));
        let h = 1e-6;
        let g = |x: f64, y: f64| f(Dual::constant(x), Dual::constant(y)).v;
        let dx = (g(x0 + h, y0) - g(x0 - h, y0)) / (2.0 * h);
        let dy = (g(x0, y0 + h) - g(x0, y0 - h)) / (2.0 * h);
        assert!(
            (d.d[0] - dx).abs() < 1e-8 && (d.d[1] - dy).abs() < 1e-8,
            "{d:?} {dx} {dy}"
        );
    }
}

//! t(lambda): a closed form where the schedule gives one, else a safeguarded Newton iteration.

use crate::program::Program;

/// How t(lambda) is computed.
#[derive(Clone, Debug)]
pub enum Inverse {
    /// A closed form: program with input `lambda` and a sub-expression `t`.
    Closed(Program),
    /// Safeguarded Newton on lambda(t) - lambda* with bisection fallback, bracketed by the range.
    Newton,
}

/// Safeguarded Newton for t with lambda(t) = target, lambda decreasing: the bracket [lo, hi]
/// starts at the t range (widened outwards if the target lies beyond it) and shrinks with
/// every evaluation; a Newton step that leaves it, or a non-negative slope, is replaced by
/// bisection. `eval(t)` returns (lambda(t), d lambda/dt).
pub fn newton_inverse(
    target: f64,
    t_min: f64,
    t_max: f64,
    eval: impl Fn(f64) -> (f64, f64),
) -> f64 {
    if !target.is_finite() {
        return f64::NAN;
    }
    let (mut lo, mut hi) = (t_min, t_max);
    let (mut l_lo, mut l_hi) = (eval(lo).0, eval(hi).0);
    let width = t_max - t_min;
    let mut widen = 0;
    while !(l_lo >= target && target >= l_hi) {
        widen += 1;
        if widen > 60 || !l_lo.is_finite() || !l_hi.is_finite() {
            return f64::NAN;
        }
        let step = width * f64::powi(2.0, widen);
        if target > l_lo {
            hi = lo;
            l_hi = l_lo;
            lo = t_min - step;
            l_lo = eval(lo).0;
        } else {
            lo = hi;
            l_lo = l_hi;
            hi = t_max + step;
            l_hi = eval(hi).0;
        }
    }
    if l_lo == target {
        return lo;
    }
    if l_hi == target {
        return hi;
    }
    // Start from the secant through the bracket's ends.
    let mut t = lo + (l_lo - target) / (l_lo - l_hi) * (hi - lo);
    for _ in 0..200 {
        let (l, dl) = eval(t);
        let g = l - target;
        if g == 0.0 {
            return t;
        }
        if g > 0.0 {
            lo = t;
        } else {
            hi = t;
        }
        let mut next = t - g / dl;
        if !(next > lo && next < hi && next.is_finite()) || dl >= 0.0 {
            next = 0.5 * (lo + hi);
        }
        if (next - t).abs() <= 2.0 * f64::EPSILON * t.abs().max(f64::MIN_POSITIVE)
            || hi - lo <= 2.0 * f64::EPSILON * lo.abs().max(hi.abs())
        {
            return next;
        }
        t = next;
    }
    t
}

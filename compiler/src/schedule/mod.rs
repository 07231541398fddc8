//! Noise schedules (docs/math.md section 1): alpha, sigma, lambda, f, g^2, d lambda/dt and the
//! inverse t(lambda), derived symbolically from two formulas in t and compiled with the JIT.
//!
//! Every schedule, built-in or custom, is a [`ScheduleDef`] ([`def`]): a program with input `t`
//! whose sub-expressions include the [`Quantity`] names, plus an inverse ([`inverse`]: a
//! closed-form program with input `lambda`, or a safeguarded Newton iteration on the compiled
//! lambda and its derivative). The built-in families ([`families`], [`discrete`]) are written as
//! formula text and go through the same derivation as a user's formulas, so there is one path
//! to test. Compiling a definition gives a [`Schedule`]: native code for every quantity.

pub mod def;
pub mod discrete;
pub mod error;
pub mod families;
pub mod inverse;

use std::sync::{Arc, OnceLock};

use crate::jit::JitFn;
use crate::plan::TimeInfo;

pub use def::{AlphaFormula, ScheduleDef, SigmaFormula};

pub use discrete::DiscreteBetas;
pub use error::ScheduleError;
pub use inverse::{newton_inverse, Inverse};

/// A time-only quantity of a schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Quantity {
    /// alpha(t).
    Alpha,
    /// sigma(t).
    Sigma,
    /// lambda(t) = log alpha - log sigma.
    Lambda,
    /// log alpha(t).
    LogAlpha,
    /// log sigma(t).
    LogSigma,
    /// f(t) = d log(alpha)/dt
    F,
    /// g^2(t) = -2 sigma^2 d lambda/dt
    G2,
    /// d lambda/dt.
    DLambdaDt,
    /// d alpha/dt, derived from alpha's own formula: finite where alpha = 0 (a flow's t = 1),
    /// where f alpha is inf * 0.
    DAlphaDt,
    /// d sigma/dt.
    DSigmaDt,
}

impl Quantity {
    /// Every quantity, in the compiled schedule's output order.
    pub const ALL: [Quantity; 10] = [
        Quantity::Alpha,
        Quantity::Sigma,
        Quantity::Lambda,
        Quantity::LogAlpha,
        Quantity::LogSigma,
        Quantity::F,
        Quantity::G2,
        Quantity::DLambdaDt,
        Quantity::DAlphaDt,
        Quantity::DSigmaDt,
    ];

    /// The sub-expression name in the schedule's program.
    pub fn name(self) -> &'static str {
        match self {
            Quantity::Alpha => "alpha",
            Quantity::Sigma => "sigma",
            Quantity::Lambda => "lambda",
            Quantity::LogAlpha => "log_alpha",
            Quantity::LogSigma => "log_sigma",
            Quantity::F => "f",
            Quantity::G2 => "g2",
            Quantity::DLambdaDt => "dlambda_dt",
            Quantity::DAlphaDt => "dalpha_dt",
            Quantity::DSigmaDt => "dsigma_dt",
        }
    }
}

/// All quantities at one time, as the compiled schedule returns them.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct ScheduleValues {
    /// alpha(t).
    pub alpha: f64,
    /// sigma(t).
    pub sigma: f64,
    /// lambda(t).
    pub lambda: f64,
    /// log alpha(t).
    pub log_alpha: f64,
    /// log sigma(t).
    pub log_sigma: f64,
    /// f(t) = d log alpha/dt.
    pub f: f64,
    /// g^2(t) = -2 sigma^2 d lambda/dt.
    pub g2: f64,
    /// d lambda/dt.
    pub dlambda_dt: f64,
    /// d alpha/dt.
    pub dalpha_dt: f64,
    /// d sigma/dt.
    pub dsigma_dt: f64,
}

impl ScheduleValues {
    /// The first quantity that is not finite (alpha, sigma, lambda, d lambda/dt, f, g2), with
    /// its value: where a schedule is invalid at this time. At pure noise (alpha = 0, a flow
    /// schedule's t = 1) lambda, log alpha, f, g2 and d lambda/dt are infinite by definition
    /// and only a NaN is invalid.
    pub fn non_finite(&self) -> Option<(&'static str, f64)> {
        let pure_noise = self.is_pure_noise();
        [
            ("alpha", self.alpha, false),
            ("sigma", self.sigma, false),
            ("d alpha/dt", self.dalpha_dt, false),
            ("d sigma/dt", self.dsigma_dt, false),
            ("lambda", self.lambda, pure_noise),
            ("d lambda/dt", self.dlambda_dt, pure_noise),
            ("f", self.f, pure_noise),
            ("g2", self.g2, pure_noise),
        ]
        .into_iter()
        .find(|(_, x, infinite_ok)| !(x.is_finite() || (*infinite_ok && !x.is_nan())))
        .map(|(name, x, _)| (name, x))
    }

    /// Whether this time is pure noise: alpha = 0 exactly (and sigma > 0), so lambda = -inf.
    pub fn is_pure_noise(&self) -> bool {
        self.alpha == 0.0 && self.sigma > 0.0 && self.lambda == f64::NEG_INFINITY
    }

    fn from_slice(v: &[f64]) -> ScheduleValues {
        ScheduleValues {
            alpha: v[0],
            sigma: v[1],
            lambda: v[2],
            log_alpha: v[3],
            log_sigma: v[4],
            f: v[5],
            g2: v[6],
            dlambda_dt: v[7],
            dalpha_dt: v[8],
            dsigma_dt: v[9],
        }
    }

    /// The quantity `q`.
    pub fn get(&self, q: Quantity) -> f64 {
        match q {
            Quantity::Alpha => self.alpha,
            Quantity::Sigma => self.sigma,
            Quantity::Lambda => self.lambda,
            Quantity::LogAlpha => self.log_alpha,
            Quantity::LogSigma => self.log_sigma,
            Quantity::F => self.f,
            Quantity::G2 => self.g2,
            Quantity::DLambdaDt => self.dlambda_dt,
            Quantity::DAlphaDt => self.dalpha_dt,
            Quantity::DSigmaDt => self.dsigma_dt,
        }
    }
}

/// A compiled schedule: native functions for every quantity and for t(lambda).
#[derive(Clone, Debug)]
pub struct Schedule {
    pub(crate) def: Arc<ScheduleDef>,
    pub(crate) params: Vec<f64>,
    pub(crate) forward: Arc<JitFn>,
    pub(crate) newton: Arc<JitFn>,
    pub(crate) inverse: Option<Arc<JitFn>>,
    /// d(alpha, sigma, lambda)/d(parameter) at fixed t, compiled on first use.
    pub(crate) param_partials: Arc<OnceLock<JitFn>>,
}

/// d alpha, d sigma and d lambda with respect to one schedule parameter, at a fixed time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ParamPartials {
    /// d alpha/dp.
    pub alpha: f64,
    /// d sigma/dp.
    pub sigma: f64,
    /// d lambda/dp.
    pub lambda: f64,
    /// d(model time)/dp: the network told k sigma(t) sees the parameter move its sigma.
    pub model_t: f64,
}

impl Schedule {
    /// The symbolic schedule it was compiled from.
    pub fn def(&self) -> &ScheduleDef {
        &self.def
    }

    /// The parameters' values it was compiled with.
    pub fn params(&self) -> &[f64] {
        &self.params
    }

    /// The smallest time.
    pub fn t_min(&self) -> f64 {
        self.def.t_min
    }

    /// The largest time.
    pub fn t_max(&self) -> f64 {
        self.def.t_max
    }

    /// Every quantity at `t`.
    #[inline]
    pub fn eval(&self, t: f64) -> ScheduleValues {
        let mut out = [0.0; Quantity::ALL.len()];
        self.forward.call(t, &self.params, &mut out);
        ScheduleValues::from_slice(&out)
    }

    /// alpha(t).
    pub fn alpha(&self, t: f64) -> f64 {
        self.eval(t).alpha
    }

    /// sigma(t).
    pub fn sigma(&self, t: f64) -> f64 {
        self.eval(t).sigma
    }

    /// lambda(t).
    pub fn lambda(&self, t: f64) -> f64 {
        let mut out = [0.0; 2];
        self.newton.call(t, &self.params, &mut out);
        out[0]
    }

    /// t(lambda): the closed form where the schedule has one, else compiled Newton.
    pub fn t_of_lambda(&self, lambda: f64) -> f64 {
        match &self.inverse {
            Some(f) => f.call1(lambda, &self.params),
            None => newton_inverse(lambda, self.def.t_min, self.def.t_max, |t| {
                let mut out = [0.0; 2];
                self.newton.call(t, &self.params, &mut out);
                (out[0], out[1])
            }),
        }
    }

    /// Every quantity at each of `ts` (one native call per time).
    pub fn fill(&self, ts: &[f64]) -> Vec<ScheduleValues> {
        let mut flat = vec![0.0; ts.len() * Quantity::ALL.len()];
        self.forward.fill(ts, &self.params, &mut flat);
        flat.chunks_exact(Quantity::ALL.len())
            .map(ScheduleValues::from_slice)
            .collect()
    }

    /// What a model evaluation at `t` needs: t, the network's time input (the train index of
    /// a discrete schedule), alpha and sigma.
    pub fn time_info(&self, t: f64) -> TimeInfo {
        let v = self.eval(t);
        TimeInfo {
            t,
            model_t: self.def.model_time(t, v.sigma),
            alpha: v.alpha,
            sigma: v.sigma,
        }
    }

    /// The names of the schedule's continuous parameters (none for a discrete table).
    pub fn param_names(&self) -> Vec<String> {
        self.def.param_names()
    }

    /// For each parameter, d(alpha, sigma, lambda)/d(parameter) at `t` (t held fixed):
    /// derived symbolically from the schedule's program and compiled on first use.
    pub fn param_partials(&self, t: f64) -> Vec<ParamPartials> {
        let names = self.def.param_names();
        if names.is_empty() {
            return vec![];
        }
        let jit = self.param_partials.get_or_init(|| {
            let mut program = self.def.program().clone();
            let mut outs: Vec<String> = Vec::new();
            for p in &names {
                for q in ["alpha", "sigma", "lambda"] {
                    outs.push(program.derivative(q, p).to_string());
                }
            }
            let refs: Vec<&str> = outs.iter().map(String::as_str).collect();
            // The schedule compiled, so its derivatives do: the same primitives.
            crate::jit::compile(&program, &refs).expect("schedule parameter derivatives compile")
        });
        let mut out = vec![0.0; 3 * names.len()];
        jit.call(t, &self.params, &mut out);
        let scale = self.def.sigma_time_scale().unwrap_or(0.0);
        out.chunks_exact(3)
            .map(|c| ParamPartials {
                alpha: c[0],
                sigma: c[1],
                lambda: c[2],
                model_t: scale * c[1],
            })
            .collect()
    }

    /// The compiled function of every quantity (for benchmarks and table filling).
    pub fn forward_fn(&self) -> &JitFn {
        &self.forward
    }
}

#[cfg(test)]
mod param_tests {
    use super::*;

    #[test]
    fn parameter_partials_match_finite_differences() {
        for def in [
            ScheduleDef::vp_linear(0.1, 20.0).unwrap(),
            ScheduleDef::vp_cosine(0.008).unwrap(),
            ScheduleDef::ve(0.02, 10.0).unwrap(),
            ScheduleDef::edm(0.002, 20.0).unwrap(),
        ] {
            let s = def.compile().unwrap();
            let names = def.param_names();
            let base = def.default_params();
            for t in [0.01, 0.3, 0.9] {
                let pp = s.param_partials(t);
                for (k, name) in names.iter().enumerate() {
                    let h = 1e-6 * base[k].abs().max(1e-3);
                    let at = |v: f64| def.compile_with(&[(name.as_str(), v)]).unwrap().eval(t);
                    let (p, m) = (at(base[k] + h), at(base[k] - h));
                    let fd = [
                        (p.alpha - m.alpha) / (2.0 * h),
                        (p.sigma - m.sigma) / (2.0 * h),
                        (p.lambda - m.lambda) / (2.0 * h),
                    ];
                    let got = [pp[k].alpha, pp[k].sigma, pp[k].lambda];
                    for q in 0..3 {
                        assert!(
                            (got[q] - fd[q]).abs() < 1e-6 * fd[q].abs().max(1.0),
                            "{} t = {t} d/d{name} [{q}]: {} vs {}",
                            def.name(),
                            got[q],
                            fd[q]
                        );
                    }
                }
            }
        }
    }
}

//! A symbolic schedule: two formulas in t, the quantities derived from them, validation on the
//! t range, and compilation to a [`Schedule`].

use std::sync::Arc;

use super::inverse::{newton_inverse, Inverse};
use super::{Quantity, Schedule, ScheduleError, ScheduleValues};
use crate::expr::parse::{parse_expr, Scope};
use crate::expr::simplify::simplify;
use crate::expr::{Expr, Name, Table};
use crate::jit::compile;
use crate::program::Program;

/// The first formula of a schedule: `log_alpha(t)` or `alpha(t)`.
#[derive(Clone, Debug, PartialEq)]
pub enum AlphaFormula {
    /// `log_alpha(t) = ...`.
    LogAlpha(String),
    /// `alpha(t) = ...`.
    Alpha(String),
}

/// The second formula: `sigma(t)` or `log_sigma(t)`.
#[derive(Clone, Debug, PartialEq)]
pub enum SigmaFormula {
    /// `sigma(t) = ...`.
    Sigma(String),
    /// `log_sigma(t) = ...`.
    LogSigma(String),
}

/// A symbolic schedule: formulas, derived quantities, inverse and t range.
#[derive(Clone, Debug)]
pub struct ScheduleDef {
    pub(super) name: String,
    /// For a discrete schedule, the number of train steps N (the network's time input is the
    /// train index (t - 1/N) N).
    pub(super) train_steps: Option<usize>,
    /// Where the network's time input is sigma(t) times this scale rather than t (diffusers'
    /// flow-matching models take timestep = 1000 sigma, the shifted noise level).
    pub(super) sigma_time_scale: Option<f64>,
    pub(super) program: Program,
    pub(super) inverse: Inverse,
    pub(super) t_min: f64,
    pub(super) t_max: f64,
}

/// Points at which a schedule is checked: endpoints and a uniform grid.
const VALIDATION_POINTS: usize = 2049;

/// The definition order of the four named formulas, or the cycle that prevents one.
fn order_formulas(refs: &[(Name, Vec<Name>)]) -> Result<Vec<usize>, ScheduleError> {
    let n = refs.len();
    let mut order = Vec::new();
    let mut state = vec![0u8; n]; // 0 new, 1 on stack, 2 done
    fn visit(
        i: usize,
        refs: &[(Name, Vec<Name>)],
        state: &mut [u8],
        order: &mut Vec<usize>,
        path: &mut Vec<usize>,
    ) -> Result<(), ScheduleError> {
        match state[i] {
            2 => return Ok(()),
            1 => {
                let start = path.iter().position(|&p| p == i).unwrap();
                let mut names: Vec<String> = path[start..]
                    .iter()
                    .map(|&p| refs[p].0.to_string())
                    .collect();
                names.push(refs[i].0.to_string());
                return Err(ScheduleError::Cycle { names });
            }
            _ => {}
        }
        state[i] = 1;
        path.push(i);
        for r in &refs[i].1 {
            if let Some(j) = refs.iter().position(|(n, _)| n == r) {
                visit(j, refs, state, order, path)?;
            }
        }
        path.pop();
        state[i] = 2;
        order.push(i);
        Ok(())
    }
    for i in 0..n {
        visit(i, refs, &mut state, &mut order, &mut vec![])?;
    }
    Ok(order)
}

impl ScheduleDef {
    /// A schedule from two formulas in `t`, with parameters (name, default), tables, a t range
    /// and optionally a closed-form inverse (formula in `lambda`, the same parameters).
    pub fn from_formulas(
        name: &str,
        params: &[(&str, f64)],
        tables: Vec<(&str, Table)>,
        alpha: AlphaFormula,
        sigma: SigmaFormula,
        t_range: [f64; 2],
        inverse: Option<&str>,
    ) -> Result<ScheduleDef, ScheduleError> {
        let mut program = Program::new("t", params);
        for (tname, table) in tables {
            program
                .add_table(tname, table)
                .map_err(|e| ScheduleError::Table {
                    field: tname.to_string(),
                    message: e.to_string(),
                })?;
        }
        let (a_name, a_text, a_other, a_derived) = match &alpha {
            AlphaFormula::LogAlpha(s) => ("log_alpha", s, "alpha", "exp(log_alpha(t))"),
            AlphaFormula::Alpha(s) => ("alpha", s, "log_alpha", "ln(alpha(t))"),
        };
        let (s_name, s_text, s_other, s_derived) = match &sigma {
            SigmaFormula::Sigma(s) => ("sigma", s, "log_sigma", "ln(sigma(t))"),
            SigmaFormula::LogSigma(s) => ("log_sigma", s, "sigma", "exp(log_sigma(t))"),
        };
        let mut scope: Scope = program.scope();
        scope.defs = ["log_alpha", "alpha", "sigma", "log_sigma"]
            .iter()
            .map(|n| Name::from(*n))
            .collect();
        let parse = |field: &str, text: &str| {
            parse_expr(text, &scope).map_err(|error| ScheduleError::Formula {
                field: field.to_string(),
                text: text.to_string(),
                error,
            })
        };
        let formulas: Vec<(Name, Expr)> = vec![
            (a_name.into(), parse(a_name, a_text)?),
            (s_name.into(), parse(s_name, s_text)?),
            (a_other.into(), parse(a_other, a_derived)?),
            (s_other.into(), parse(s_other, s_derived)?),
        ];
        // The derived partner (sigma = exp(log_sigma(t)), say) with the given formula inlined
        // one level, where that simplifies: exp(0.5 ln(x)) becomes sqrt(x), one native
        // instruction instead of two calls.
        let mut formulas = formulas;
        for derived in 2..4 {
            let partner = &formulas[derived - 2];
            let (pname, pexpr) = (partner.0.clone(), partner.1.clone());
            let with_ref = formulas[derived].1.clone();
            let inlined =
                simplify(&with_ref.substitute_defs(&mut |n| (*n == pname).then(|| pexpr.clone())));
            if inlined.size() < with_ref.size() + pexpr.size() - 1 {
                formulas[derived].1 = inlined;
            }
        }
        let refs: Vec<(Name, Vec<Name>)> = formulas
            .iter()
            .map(|(n, e)| (n.clone(), e.def_refs()))
            .collect();
        for i in order_formulas(&refs)? {
            let (n, e) = &formulas[i];
            program
                .define(n, e.clone())
                .expect("formulas defined in dependency order");
        }
        let def = |p: &mut Program, n: &str, text: &str| {
            p.define_text(n, text)
                .expect("derived schedule formulas parse")
        };
        def(&mut program, "lambda", "log_alpha(t) - log_sigma(t)");
        let dla = program.derivative("log_alpha", "t");
        program.define("f", Expr::Def(dla)).unwrap();
        // Named `dlambda_dt` by the derivative convention `d{name}_d{wrt}`.
        let dl = program.derivative("lambda", "t");
        debug_assert_eq!(&*dl, Quantity::DLambdaDt.name());
        def(&mut program, "g2", "-2 * sigma(t)^2 * dlambda_dt(t)");
        // Named `dalpha_dt` and `dsigma_dt` by the same convention.
        program.derivative("alpha", "t");
        program.derivative("sigma", "t");

        let inverse = match inverse {
            Some(text) => {
                let mut inv = Program::new("lambda", params);
                for (tn, t) in program.tables() {
                    inv.add_table(tn, (**t).clone()).unwrap();
                }
                inv.define_text("t", text).map_err(|e| match e {
                    crate::program::ProgramError::Parse { error, .. } => ScheduleError::Formula {
                        field: "inverse".into(),
                        text: text.into(),
                        error,
                    },
                    other => ScheduleError::Table {
                        field: "inverse".into(),
                        message: other.to_string(),
                    },
                })?;
                Inverse::Closed(inv)
            }
            None => Inverse::Newton,
        };
        let def = ScheduleDef {
            name: name.to_string(),
            train_steps: None,
            sigma_time_scale: None,
            program,
            inverse,
            t_min: t_range[0],
            t_max: t_range[1],
        };
        def.validate(&def.default_params())
            .map_err(|e| def.name_params(e, &def.default_params()))?;
        Ok(def)
    }

    /// [`ScheduleDef::validate`] for parameter values other than the defaults: a schedule
    /// that fails its checks (a quantity not positive or not finite, lambda not decreasing,
    /// a closed-form inverse that no longer inverts) is reported with the parameters that
    /// make it fail (each changed parameter tried alone with the others at their defaults).
    pub fn validate_params(&self, params: &[f64]) -> Result<(), ScheduleError> {
        let e = match self.validate(params) {
            Ok(()) => return Ok(()),
            Err(e @ (ScheduleError::Range { .. } | ScheduleError::Param { .. })) => return Err(e),
            Err(e) => e,
        };
        let defaults = self.default_params();
        if self.validate(&defaults).is_err() {
            return Err(self.name_params(e, params));
        }
        let changed: Vec<usize> = (0..params.len())
            .filter(|&i| params[i].to_bits() != defaults[i].to_bits())
            .collect();
        let alone: Vec<usize> = changed
            .iter()
            .copied()
            .filter(|&i| {
                let mut p = defaults.clone();
                p[i] = params[i];
                self.validate(&p).is_err()
            })
            .collect();
        let culprits = if alone.is_empty() { changed } else { alone };
        let names = self.param_names();
        Err(ScheduleError::ParamDomain {
            params: culprits
                .iter()
                .map(|&i| (names[i].clone(), params[i]))
                .collect(),
            defaults_valid: Some(culprits.iter().map(|&i| defaults[i]).collect()),
            cause: Box::new(e),
        })
    }

    /// A failed check of a schedule with parameters, naming them all (no valid defaults to
    /// compare with).
    fn name_params(&self, e: ScheduleError, params: &[f64]) -> ScheduleError {
        match e {
            ScheduleError::Range { .. } | ScheduleError::Param { .. } => e,
            _ if params.is_empty() => e,
            _ => ScheduleError::ParamDomain {
                params: self
                    .param_names()
                    .into_iter()
                    .zip(params.iter().copied())
                    .collect(),
                defaults_valid: None,
                cause: Box::new(e),
            },
        }
    }

    /// The schedule's name (the built-in's, or "custom").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number of train steps of a discrete schedule.
    pub fn train_steps(&self) -> Option<usize> {
        self.train_steps
    }

    /// The time the network is given at t, where sigma(t) = `sigma`: the train index
    /// (t - 1/N) N for a discrete schedule, scale sigma where the network takes its noise
    /// level ([`ScheduleDef::sigma_time_scale`]), t itself otherwise.
    pub fn model_time(&self, t: f64, sigma: f64) -> f64 {
        match (self.sigma_time_scale, self.train_steps) {
            (Some(k), _) => k * sigma,
            (None, Some(n)) => (t - 1.0 / n as f64) * n as f64,
            (None, None) => t,
        }
    }

    /// d(model time)/dt at the time whose schedule values are `v`.
    pub fn model_time_slope(&self, v: &super::ScheduleValues) -> f64 {
        match (self.sigma_time_scale, self.train_steps) {
            (Some(k), _) => k * v.dsigma_dt,
            (None, Some(n)) => n as f64,
            (None, None) => 1.0,
        }
    }

    /// The scale k of a network told k sigma(t) as its time (None: told t or the train
    /// index).
    pub fn sigma_time_scale(&self) -> Option<f64> {
        self.sigma_time_scale
    }

    /// The same schedule with the network told `scale` sigma(t) as its time.
    pub fn with_sigma_time(mut self, scale: f64) -> ScheduleDef {
        self.sigma_time_scale = Some(scale);
        self
    }

    /// Its formulas and derived quantities as a program.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// How t(lambda) is computed.
    pub fn inverse(&self) -> &Inverse {
        &self.inverse
    }

    /// The smallest time.
    pub fn t_min(&self) -> f64 {
        self.t_min
    }

    /// The largest time.
    pub fn t_max(&self) -> f64 {
        self.t_max
    }

    /// The parameters' default values.
    pub fn default_params(&self) -> Vec<f64> {
        self.program.default_params()
    }

    /// The parameters' names.
    pub fn param_names(&self) -> Vec<String> {
        self.program
            .params()
            .iter()
            .map(|(n, _)| n.to_string())
            .collect()
    }

    /// Parameter values with `overrides` applied, checking every name.
    pub fn params_with(&self, overrides: &[(&str, f64)]) -> Result<Vec<f64>, ScheduleError> {
        let mut p = self.default_params();
        for (name, v) in overrides {
            let i = self
                .program
                .param_index(name)
                .ok_or_else(|| ScheduleError::UnknownParam {
                    name: name.to_string(),
                    known: self.param_names(),
                })?;
            p[i] = *v;
        }
        Ok(p)
    }

    /// The symbolic formula of a quantity with every named sub-expression inlined.
    pub fn expression(&self, q: Quantity) -> Expr {
        self.program.inline(&Expr::def(q.name()))
    }

    /// All quantities at `t` by the interpreter (the reference for the JIT).
    pub fn eval_interp(&self, t: f64, params: &[f64]) -> ScheduleValues {
        let names = Quantity::ALL.map(|q| q.name());
        let v = self
            .program
            .eval(&names, t, params)
            .expect("schedule programs are closed");
        ScheduleValues::from_slice(&v)
    }

    /// t(lambda) by the interpreter.
    pub fn t_of_lambda_interp(&self, lambda: f64, params: &[f64]) -> f64 {
        match &self.inverse {
            Inverse::Closed(p) => p.eval(&["t"], lambda, params).expect("closed program")[0],
            Inverse::Newton => newton_inverse(lambda, self.t_min, self.t_max, |t| {
                let v = self
                    .program
                    .eval(&["lambda", "dlambda_dt"], t, params)
                    .expect("closed program");
                (v[0], v[1])
            }),
        }
    }

    /// Checks the range, the parameters and, on a grid over the range, that alpha and sigma
    /// are positive, every quantity finite and lambda strictly decreasing.
    pub fn validate(&self, params: &[f64]) -> Result<(), ScheduleError> {
        let (a, b) = (self.t_min, self.t_max);
        if !a.is_finite() || !b.is_finite() {
            return Err(ScheduleError::Range {
                t_min: a,
                t_max: b,
                why: "not finite",
            });
        }
        if a == b {
            return Err(ScheduleError::Range {
                t_min: a,
                t_max: b,
                why: "empty",
            });
        }
        if a > b {
            return Err(ScheduleError::Range {
                t_min: a,
                t_max: b,
                why: "reversed",
            });
        }
        for ((name, _), v) in self.program.params().iter().zip(params) {
            if !v.is_finite() {
                return Err(ScheduleError::Param {
                    name: name.to_string(),
                    value: *v,
                    allowed: "a finite number".into(),
                });
            }
        }
        let mut prev: Option<(f64, f64)> = None;
        for k in 0..VALIDATION_POINTS {
            let t = if k + 1 == VALIDATION_POINTS {
                b
            } else {
                a + (b - a) * k as f64 / (VALIDATION_POINTS - 1) as f64
            };
            let v = self.eval_interp(t, params);
            // The noisiest end may be pure noise (alpha = 0, lambda = -inf: a flow's t = 1,
            // a zero-terminal-SNR schedule), where the samplers' data forms start exactly.
            let pure_noise_end = k + 1 == VALIDATION_POINTS && v.is_pure_noise();
            for (q, x) in [("alpha", v.alpha), ("sigma", v.sigma)] {
                if x <= 0.0 && !(pure_noise_end && q == "alpha") {
                    return Err(ScheduleError::NotPositive {
                        quantity: q,
                        t,
                        value: x,
                    });
                }
            }
            if pure_noise_end {
                if let Some((quantity, value)) = v.non_finite() {
                    return Err(ScheduleError::NotFinite { quantity, t, value });
                }
            } else {
                for q in Quantity::ALL {
                    let x = v.get(q);
                    if !x.is_finite() {
                        return Err(ScheduleError::NotFinite {
                            quantity: q.name(),
                            t,
                            value: x,
                        });
                    }
                }
            }
            if let Some((t0, l0)) = prev {
                if v.lambda >= l0 {
                    return Err(ScheduleError::LambdaNotDecreasing {
                        t0,
                        t1: t,
                        lambda0: l0,
                        lambda1: v.lambda,
                    });
                }
            }
            prev = Some((t, v.lambda));
            // A closed-form inverse given with the schedule must be the inverse: t(lambda(t))
            // = t at every check point (a wrong one would move every grid time silently).
            if let (Inverse::Closed(_), false) = (&self.inverse, pure_noise_end) {
                let back = self.t_of_lambda_interp(v.lambda, params);
                let tol = 1e-6 * (b - a) + 1e-9 * t.abs();
                if !(back - t).abs().le(&tol) {
                    return Err(ScheduleError::Table {
                        field: "inverse".into(),
                        message: format!(
                            "the inverse is not t(lambda): at t = {t} lambda is {}, and the inverse gives t = {back}",
                            v.lambda
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Compiles the schedule with its default parameters.
    pub fn compile(&self) -> Result<Schedule, ScheduleError> {
        self.compile_with(&[])
    }

    /// Compiles the schedule with some parameters overridden (validated first).
    pub fn compile_with(&self, overrides: &[(&str, f64)]) -> Result<Schedule, ScheduleError> {
        let params = self.params_with(overrides)?;
        self.validate_params(&params)?;
        let names = Quantity::ALL.map(|q| q.name());
        let forward = compile(&self.program, &names).map_err(ScheduleError::Jit)?;
        let newton =
            compile(&self.program, &["lambda", "dlambda_dt"]).map_err(ScheduleError::Jit)?;
        let inverse = match &self.inverse {
            Inverse::Closed(p) => Some(compile(p, &["t"]).map_err(ScheduleError::Jit)?),
            Inverse::Newton => None,
        };
        Ok(Schedule {
            def: Arc::new(self.clone()),
            params,
            forward: Arc::new(forward),
            newton: Arc::new(newton),
            inverse: inverse.map(Arc::new),
            param_partials: Arc::default(),
        })
    }
}

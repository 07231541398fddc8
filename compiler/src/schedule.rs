//! Noise schedules (MATH.md section 1): alpha, sigma, lambda, f, g^2, d lambda/dt and the
//! inverse t(lambda), derived symbolically from two formulas in t and compiled with the JIT.
//!
//! Every schedule, built-in or custom, is a [`ScheduleDef`]: a program with input `t` whose
//! sub-expressions include the [`Quantity`] names, plus an inverse (a closed-form program with
//! input `lambda`, or a safeguarded Newton iteration on the compiled lambda and its derivative).
//! The built-in families are written as formula text and go through the same derivation as a
//! user's formulas, so there is one path to test.

use std::fmt;
use std::sync::Arc;

use crate::expr::parse::{parse_expr, ParseError, Scope};
use crate::expr::simplify::simplify;
use crate::expr::{Expr, Name, Table};
use crate::jit::{compile, JitError, JitFn};
use crate::program::Program;

/// A time-only quantity of a schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Quantity {
    Alpha,
    Sigma,
    Lambda,
    LogAlpha,
    LogSigma,
    /// f(t) = d log(alpha)/dt
    F,
    /// g^2(t) = -2 sigma^2 d lambda/dt
    G2,
    DLambdaDt,
}

impl Quantity {
    pub const ALL: [Quantity; 8] = [
        Quantity::Alpha,
        Quantity::Sigma,
        Quantity::Lambda,
        Quantity::LogAlpha,
        Quantity::LogSigma,
        Quantity::F,
        Quantity::G2,
        Quantity::DLambdaDt,
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
        }
    }
}

/// All quantities at one time, as the compiled schedule returns them.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct ScheduleValues {
    pub alpha: f64,
    pub sigma: f64,
    pub lambda: f64,
    pub log_alpha: f64,
    pub log_sigma: f64,
    pub f: f64,
    pub g2: f64,
    pub dlambda_dt: f64,
}

impl ScheduleValues {
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
        }
    }

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
        }
    }
}

/// What went wrong building or validating a schedule. [`ScheduleError::field`] names the spec
/// key concerned.
#[derive(Clone, Debug, PartialEq)]
pub enum ScheduleError {
    Formula {
        field: String,
        text: String,
        error: ParseError,
    },
    MissingFormula {
        field: &'static str,
        alternatives: &'static str,
    },
    BothFormulas {
        first: &'static str,
        second: &'static str,
    },
    Cycle {
        names: Vec<String>,
    },
    Range {
        t_min: f64,
        t_max: f64,
        why: &'static str,
    },
    Param {
        name: String,
        value: f64,
        allowed: String,
    },
    UnknownParam {
        name: String,
        known: Vec<String>,
    },
    Table {
        field: String,
        message: String,
    },
    NotPositive {
        quantity: &'static str,
        t: f64,
        value: f64,
    },
    NotFinite {
        quantity: &'static str,
        t: f64,
        value: f64,
    },
    LambdaNotDecreasing {
        t0: f64,
        t1: f64,
        lambda0: f64,
        lambda1: f64,
    },
    Jit(JitError),
}

impl ScheduleError {
    /// The spec key this error is about (relative to the `[schedule]` table).
    pub fn field(&self) -> Option<String> {
        match self {
            ScheduleError::Formula { field, .. } | ScheduleError::Table { field, .. } => {
                Some(field.clone())
            }
            ScheduleError::MissingFormula { field, .. } => Some(field.to_string()),
            ScheduleError::BothFormulas { second, .. } => Some(second.to_string()),
            ScheduleError::Range { .. } => Some("t_range".into()),
            ScheduleError::Param { name, .. } | ScheduleError::UnknownParam { name, .. } => {
                Some(name.clone())
            }
            _ => None,
        }
    }
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleError::Formula { text, error, .. } => write!(f, "{}", error.render(text)),
            ScheduleError::MissingFormula { field, alternatives } => {
                write!(f, "missing formula `{field}`: give {alternatives}")
            }
            ScheduleError::BothFormulas { first, second } => write!(
                f,
                "both `{first}` and `{second}` are given: give exactly one of them"
            ),
            ScheduleError::Cycle { names } => write!(
                f,
                "the formulas refer to each other in a cycle: {}",
                names.join(" -> ")
            ),
            ScheduleError::Range { t_min, t_max, why } => {
                write!(f, "t range [{t_min}, {t_max}] is {why}: it must be [t_min, t_max] with finite t_min < t_max")
            }
            ScheduleError::Param {
                name,
                value,
                allowed,
            } => write!(f, "parameter `{name}` = {value} is not allowed: {allowed}"),
            ScheduleError::UnknownParam { name, known } => write!(
                f,
                "unknown parameter `{name}`; this schedule has: {}",
                if known.is_empty() {
                    "no parameters".to_string()
                } else {
                    known.join(", ")
                }
            ),
            ScheduleError::Table { message, .. } => write!(f, "{message}"),
            ScheduleError::NotPositive { quantity, t, value } => write!(
                f,
                "{quantity}(t) must be positive on the t range, but {quantity}({t}) = {value}"
            ),
            ScheduleError::NotFinite { quantity, t, value } => {
                write!(f, "{quantity}({t}) = {value} is not finite")
            }
            ScheduleError::LambdaNotDecreasing {
                t0,
                t1,
                lambda0,
                lambda1,
            } => write!(
                f,
                "lambda(t) = log alpha - log sigma must decrease strictly in t, but on [{t0}, {t1}] it goes from {lambda0} to {lambda1}"
            ),
            ScheduleError::Jit(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ScheduleError {}

/// The first formula of a schedule: `log_alpha(t)` or `alpha(t)`.
#[derive(Clone, Debug, PartialEq)]
pub enum AlphaFormula {
    LogAlpha(String),
    Alpha(String),
}

/// The second formula: `sigma(t)` or `log_sigma(t)`.
#[derive(Clone, Debug, PartialEq)]
pub enum SigmaFormula {
    Sigma(String),
    LogSigma(String),
}

/// How t(lambda) is computed.
#[derive(Clone, Debug)]
pub enum Inverse {
    /// A closed form: program with input `lambda` and a sub-expression `t`.
    Closed(Program),
    /// Safeguarded Newton on lambda(t) - lambda* with bisection fallback, bracketed by the range.
    Newton,
}

/// A symbolic schedule: formulas, derived quantities, inverse and t range.
#[derive(Clone, Debug)]
pub struct ScheduleDef {
    name: String,
    /// For a discrete schedule, the number of train steps N (the network's time input is the
    /// train index (t - 1/N) N).
    train_steps: Option<usize>,
    program: Program,
    inverse: Inverse,
    t_min: f64,
    t_max: f64,
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
            program,
            inverse,
            t_min: t_range[0],
            t_max: t_range[1],
        };
        def.validate(&def.default_params())?;
        Ok(def)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number of train steps of a discrete schedule.
    pub fn train_steps(&self) -> Option<usize> {
        self.train_steps
    }

    /// The time the network is given: the train index (t - 1/N) N for a discrete schedule,
    /// t itself otherwise.
    pub fn model_time(&self, t: f64) -> f64 {
        match self.train_steps {
            Some(n) => (t - 1.0 / n as f64) * n as f64,
            None => t,
        }
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    pub fn inverse(&self) -> &Inverse {
        &self.inverse
    }

    pub fn t_min(&self) -> f64 {
        self.t_min
    }

    pub fn t_max(&self) -> f64 {
        self.t_max
    }

    pub fn default_params(&self) -> Vec<f64> {
        self.program.default_params()
    }

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
            for (q, x) in [("alpha", v.alpha), ("sigma", v.sigma)] {
                if x <= 0.0 {
                    return Err(ScheduleError::NotPositive {
                        quantity: q,
                        t,
                        value: x,
                    });
                }
            }
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
        self.validate(&params)?;
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
        })
    }
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

/// A compiled schedule: native functions for every quantity and for t(lambda).
#[derive(Clone, Debug)]
pub struct Schedule {
    def: Arc<ScheduleDef>,
    params: Vec<f64>,
    forward: Arc<JitFn>,
    newton: Arc<JitFn>,
    inverse: Option<Arc<JitFn>>,
}

impl Schedule {
    pub fn def(&self) -> &ScheduleDef {
        &self.def
    }

    pub fn params(&self) -> &[f64] {
        &self.params
    }

    pub fn t_min(&self) -> f64 {
        self.def.t_min
    }

    pub fn t_max(&self) -> f64 {
        self.def.t_max
    }

    /// Every quantity at `t`.
    #[inline]
    pub fn eval(&self, t: f64) -> ScheduleValues {
        let mut out = [0.0; 8];
        self.forward.call(t, &self.params, &mut out);
        ScheduleValues::from_slice(&out)
    }

    pub fn alpha(&self, t: f64) -> f64 {
        self.eval(t).alpha
    }

    pub fn sigma(&self, t: f64) -> f64 {
        self.eval(t).sigma
    }

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
        let mut flat = vec![0.0; ts.len() * 8];
        self.forward.fill(ts, &self.params, &mut flat);
        flat.chunks_exact(8)
            .map(ScheduleValues::from_slice)
            .collect()
    }

    /// The compiled function of every quantity (for benchmarks and table filling).
    pub fn forward_fn(&self) -> &JitFn {
        &self.forward
    }
}

/// The DDPM beta tables of MATH.md section 1.
#[derive(Clone, Debug, PartialEq)]
pub enum DiscreteBetas {
    Linear { start: f64, end: f64, n: usize },
    ScaledLinear { start: f64, end: f64, n: usize },
    SquaredCosCapV2 { n: usize },
    Betas(Vec<f64>),
    AlphasCumprod(Vec<f64>),
}

fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![a];
    }
    (0..n)
        .map(|i| a + (b - a) * i as f64 / (n - 1) as f64)
        .collect()
}

impl DiscreteBetas {
    /// log alpha_n = 1/2 sum_{k<=n} log(1 - beta_k) for n = 0..N-1.
    pub fn log_alphas(&self, field: &str) -> Result<Vec<f64>, ScheduleError> {
        let table_err = |message: String| ScheduleError::Table {
            field: field.to_string(),
            message,
        };
        let betas: Vec<f64> = match self {
            DiscreteBetas::Linear { start, end, n } => linspace(*start, *end, *n),
            DiscreteBetas::ScaledLinear { start, end, n } => linspace(start.sqrt(), end.sqrt(), *n)
                .into_iter()
                .map(|b| b * b)
                .collect(),
            DiscreteBetas::SquaredCosCapV2 { n } => {
                let abar = |t: f64| {
                    let c = ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos();
                    c * c
                };
                let nf = *n as f64;
                (0..*n)
                    .map(|i| (1.0 - abar((i + 1) as f64 / nf) / abar(i as f64 / nf)).min(0.999))
                    .collect()
            }
            DiscreteBetas::Betas(b) => b.clone(),
            DiscreteBetas::AlphasCumprod(ac) => {
                if ac.len() < 2 {
                    return Err(table_err(format!(
                        "needs at least 2 values, found {}",
                        ac.len()
                    )));
                }
                if let Some((i, v)) = ac
                    .iter()
                    .enumerate()
                    .find(|(_, v)| !(**v > 0.0 && **v <= 1.0))
                {
                    return Err(table_err(format!(
                        "alphas_cumprod[{i}] = {v} is outside (0, 1]"
                    )));
                }
                if let Some(i) = ac.windows(2).position(|w| w[1] >= w[0]) {
                    return Err(table_err(format!(
                        "alphas_cumprod must decrease strictly: [{i}] = {} then [{}] = {}",
                        ac[i],
                        i + 1,
                        ac[i + 1]
                    )));
                }
                return Ok(ac.iter().map(|a| 0.5 * a.ln()).collect());
            }
        };
        if betas.len() < 2 {
            return Err(table_err(format!(
                "needs at least 2 betas (num_train_timesteps >= 2), found {}",
                betas.len()
            )));
        }
        if let Some((i, b)) = betas
            .iter()
            .enumerate()
            .find(|(_, b)| !(**b > 0.0 && **b < 1.0))
        {
            return Err(table_err(format!("beta[{i}] = {b} is outside (0, 1)")));
        }
        let mut acc = 0.0;
        Ok(betas
            .iter()
            .map(|b| {
                acc += 0.5 * (-b).ln_1p();
                acc
            })
            .collect())
    }
}

/// VP's sigma from log alpha without cancellation: sigma^2 = 1 - alpha^2 = -expm1(2 log alpha).
const VP_LOG_SIGMA: &str = "0.5 * ln(-expm1(2 * log_alpha(t)))";

/// The built-in families (MATH.md section 1).
impl ScheduleDef {
    pub fn vp_linear(beta_min: f64, beta_max: f64) -> Result<ScheduleDef, ScheduleError> {
        Self::vp_linear_on(beta_min, beta_max, [1e-3, 1.0])
    }

    pub fn vp_linear_on(
        beta_min: f64,
        beta_max: f64,
        t_range: [f64; 2],
    ) -> Result<ScheduleDef, ScheduleError> {
        for (name, value) in [("beta_min", beta_min), ("beta_max", beta_max)] {
            if !(value >= 0.0 && value.is_finite()) {
                return Err(ScheduleError::Param {
                    name: name.into(),
                    value,
                    allowed: "a finite number >= 0".into(),
                });
            }
        }
        ScheduleDef::from_formulas(
            "vp_linear",
            &[("beta_min", beta_min), ("beta_max", beta_max)],
            vec![],
            AlphaFormula::LogAlpha("-(beta_max - beta_min) / 4 * t^2 - beta_min / 2 * t".into()),
            SigmaFormula::LogSigma(VP_LOG_SIGMA.into()),
            t_range,
            Some(
                "2 * softplus(-2 * lambda) / (beta_min + sqrt(beta_min^2 + 2 * (beta_max - beta_min) * softplus(-2 * lambda)))",
            ),
        )
    }

    pub fn vp_cosine(s: f64) -> Result<ScheduleDef, ScheduleError> {
        Self::vp_cosine_on(s, [1e-3, 0.9946])
    }

    pub fn vp_cosine_on(s: f64, t_range: [f64; 2]) -> Result<ScheduleDef, ScheduleError> {
        if !(s > 0.0 && s.is_finite()) {
            return Err(ScheduleError::Param {
                name: "s".into(),
                value: s,
                allowed: "a finite number > 0".into(),
            });
        }
        // Inverse: cos(theta) = alpha cos(theta0) with theta = (t+s)/(1+s) pi/2; written with
        // atan and sigma^2 = sigmoid(-2 lambda) so it stays accurate as t -> 0 (acos does not).
        ScheduleDef::from_formulas(
            "vp_cosine",
            &[("s", s)],
            vec![],
            // log(cos(theta)/cos(theta0)) with cos(theta) - cos(theta0) written as a product of
            // sines: ln(cos theta) - ln(cos theta0) would lose half the digits of log alpha
            // (and so of sigma) near t_min.
            AlphaFormula::LogAlpha(
                "ln1p(-2 * sin((t + 2 * s) / (1 + s) * pi / 4) * sin(t / (1 + s) * pi / 4) / cos(s / (1 + s) * pi / 2))".into(),
            ),
            SigmaFormula::LogSigma(VP_LOG_SIGMA.into()),
            t_range,
            Some(
                "2 * (1 + s) / pi * atan(sqrt(sin(s / (1 + s) * pi / 2)^2 + cos(s / (1 + s) * pi / 2)^2 * sigmoid(-2 * lambda)) / (cos(s / (1 + s) * pi / 2) * sqrt(sigmoid(2 * lambda)))) - s",
            ),
        )
    }

    /// A discrete-time DDPM schedule: log alpha piecewise-linear through
    /// `t_n = (n+1)/N`, inverted exactly through the same table.
    pub fn discrete(
        betas: &DiscreteBetas,
        t_range: Option<[f64; 2]>,
    ) -> Result<ScheduleDef, ScheduleError> {
        let field = match betas {
            DiscreteBetas::Betas(_) => "betas",
            DiscreteBetas::AlphasCumprod(_) => "alphas_cumprod",
            _ => "beta_schedule",
        };
        let la = betas.log_alphas(field)?;
        let n = la.len();
        let ts: Vec<f64> = (0..n).map(|i| (i + 1) as f64 / n as f64).collect();
        let table = |xs: Vec<f64>, ys: Vec<f64>| {
            Table::new(xs, ys).map_err(|message| ScheduleError::Table {
                field: field.to_string(),
                message,
            })
        };
        let forward = table(ts.clone(), la.clone())?;
        let inverse = table(
            la.iter().rev().copied().collect(),
            ts.iter().rev().copied().collect(),
        )?;
        let mut def = ScheduleDef::from_formulas(
            "discrete",
            &[],
            vec![("log_alpha_table", forward), ("t_of_log_alpha", inverse)],
            AlphaFormula::LogAlpha("interp(log_alpha_table, t)".into()),
            SigmaFormula::LogSigma(VP_LOG_SIGMA.into()),
            t_range.unwrap_or([1.0 / n as f64, 1.0]),
            Some("interp(t_of_log_alpha, -0.5 * softplus(-2 * lambda))"),
        )?;
        def.train_steps = Some(n);
        Ok(def)
    }

    pub fn ve(sigma_min: f64, sigma_max: f64) -> Result<ScheduleDef, ScheduleError> {
        Self::ve_on(sigma_min, sigma_max, [0.0, 1.0])
    }

    pub fn ve_on(
        sigma_min: f64,
        sigma_max: f64,
        t_range: [f64; 2],
    ) -> Result<ScheduleDef, ScheduleError> {
        if !(sigma_min > 0.0 && sigma_min.is_finite()) {
            return Err(ScheduleError::Param {
                name: "sigma_min".into(),
                value: sigma_min,
                allowed: "a finite number > 0".into(),
            });
        }
        if !(sigma_max > sigma_min && sigma_max.is_finite()) {
            return Err(ScheduleError::Param {
                name: "sigma_max".into(),
                value: sigma_max,
                allowed: format!("a finite number > sigma_min = {sigma_min}"),
            });
        }
        ScheduleDef::from_formulas(
            "ve",
            &[("sigma_min", sigma_min), ("sigma_max", sigma_max)],
            vec![],
            AlphaFormula::LogAlpha("0".into()),
            SigmaFormula::LogSigma("ln(sigma_min) + t * ln(sigma_max / sigma_min)".into()),
            t_range,
            Some("(-lambda - ln(sigma_min)) / ln(sigma_max / sigma_min)"),
        )
    }

    /// EDM (Karras et al.): alpha = 1, sigma = t on [sigma_min, sigma_max].
    pub fn edm(sigma_min: f64, sigma_max: f64) -> Result<ScheduleDef, ScheduleError> {
        ScheduleDef::from_formulas(
            "edm",
            &[],
            vec![],
            AlphaFormula::LogAlpha("0".into()),
            SigmaFormula::LogSigma("ln(t)".into()),
            [sigma_min, sigma_max],
            Some("exp(-lambda)"),
        )
    }

    /// The names `adeis schedule` accepts for the built-in schedules (see
    /// [`crate::spec::ScheduleSpec::builtin`]).
    pub const BUILTIN_NAMES: [&'static str; 7] = [
        "vp_linear",
        "vp_cosine",
        "ve",
        "edm",
        "discrete",
        "discrete_scaled_linear",
        "discrete_squaredcos_cap_v2",
    ];
}

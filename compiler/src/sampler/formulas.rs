//! Coefficient formulas: each set is formula text in the step's alpha, sigma and lambda values
//! (input h = l_t - l_s), compiled once by the JIT on first use and evaluated per step. A set's
//! outputs are read by name, never by position.

use std::sync::OnceLock;

use crate::jit::{compile, JitFn};
use crate::program::Program;
use crate::schedule::ScheduleValues;

/// The per-step variables a formula may use: the step runs from s to t; p1 and p2 are the two
/// grid points before s (multistep); u1 and u2 are intermediate points (singlestep).
pub(crate) const VARS: [&str; 13] = [
    "a_s", "s_s", "l_s", "a_t", "s_t", "l_t", "l_p1", "l_p2", "a_p1", "a_u1", "s_u1", "a_u2",
    "s_u2",
];

/// The stand-in for lambda = -inf in the coefficients' partial derivatives (see
/// [`FormulaSet::eval_with_partials`]).
pub(crate) const PURE_NOISE_LAMBDA: f64 = -1e30;

/// Values of [`VARS`] for one step (NaN where the step has no such point).
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepVars {
    pub a_s: f64,
    pub s_s: f64,
    pub l_s: f64,
    pub a_t: f64,
    pub s_t: f64,
    pub l_t: f64,
    pub l_p1: f64,
    pub l_p2: f64,
    pub a_p1: f64,
    pub a_u1: f64,
    pub s_u1: f64,
    pub a_u2: f64,
    pub s_u2: f64,
}

impl Default for StepVars {
    fn default() -> Self {
        StepVars {
            a_s: f64::NAN,
            s_s: f64::NAN,
            l_s: f64::NAN,
            a_t: f64::NAN,
            s_t: f64::NAN,
            l_t: f64::NAN,
            l_p1: f64::NAN,
            l_p2: f64::NAN,
            a_p1: f64::NAN,
            a_u1: f64::NAN,
            s_u1: f64::NAN,
            a_u2: f64::NAN,
            s_u2: f64::NAN,
        }
    }
}

impl StepVars {
    /// A step from s to t (no earlier or intermediate points).
    pub fn between(s: &ScheduleValues, t: &ScheduleValues) -> StepVars {
        StepVars {
            a_s: s.alpha,
            s_s: s.sigma,
            l_s: s.lambda,
            a_t: t.alpha,
            s_t: t.sigma,
            l_t: t.lambda,
            ..StepVars::default()
        }
    }

    fn array(&self) -> [f64; 13] {
        [
            self.a_s, self.s_s, self.l_s, self.a_t, self.s_t, self.l_t, self.l_p1, self.l_p2,
            self.a_p1, self.a_u1, self.s_u1, self.a_u2, self.s_u2,
        ]
    }
}

/// A named set of coefficient formulas: shared definitions, the set's own, and the outputs.
pub struct FormulaSet {
    /// The set's name (in errors and the JIT's symbols).
    pub name: &'static str,
    base: &'static [(&'static str, &'static str)],
    defs: &'static [(&'static str, &'static str)],
    outputs: &'static [&'static str],
    compiled: OnceLock<(Program, JitFn)>,
    /// Each output and its symbolic partial derivatives in h and in every one of [`VARS`]
    /// (compiled on the first gradient with respect to the grid times).
    partials: OnceLock<JitFn>,
}

/// The partial derivatives of one coefficient with respect to the step variables [`VARS`],
/// total in each (the dependence through h = l_t - l_s included).
pub(crate) type VarPartials = [f64; 13];

/// The values of a set's outputs at one step.
#[derive(Clone, Debug)]
pub struct Coefs {
    names: &'static [&'static str],
    values: Vec<f64>,
}

impl Coefs {
    /// The output `name` (a name the set does not have is a bug in the family that asks).
    pub fn get(&self, name: &str) -> f64 {
        self.try_get(name)
            .unwrap_or_else(|| panic!("coefficient `{name}` is not an output of this set"))
    }

    /// The position of output `name` (in the order of the set's outputs).
    pub fn index(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("coefficient `{name}` is not an output of this set"))
    }

    /// The coefficient `name`, if the set has it.
    pub fn try_get(&self, name: &str) -> Option<f64> {
        self.names
            .iter()
            .position(|n| *n == name)
            .map(|i| self.values[i])
    }

    /// B0, B1, ...: the coefficients of the newest model outputs, as many as the set has.
    pub fn outputs(&self) -> Vec<f64> {
        (0..)
            .map_while(|k| self.try_get(&format!("B{k}")))
            .collect()
    }
}

impl FormulaSet {
    /// A set: shared definitions `base`, its own `defs`, and the outputs.
    pub const fn new(
        name: &'static str,
        base: &'static [(&'static str, &'static str)],
        defs: &'static [(&'static str, &'static str)],
        outputs: &'static [&'static str],
    ) -> FormulaSet {
        FormulaSet {
            name,
            base,
            defs,
            outputs,
            compiled: OnceLock::new(),
            partials: OnceLock::new(),
        }
    }

    fn compiled(&self) -> &(Program, JitFn) {
        self.compiled.get_or_init(|| {
            let params: Vec<(&str, f64)> = VARS.iter().map(|v| (*v, 0.0)).collect();
            let mut program = Program::new("h", &params);
            for (name, text) in self.base.iter().chain(self.defs) {
                // The sets are the project's own text: a failure here is a bug, caught by the
                // tests that build every family's plan.
                program
                    .define_text(name, text)
                    .unwrap_or_else(|e| panic!("coefficient formula `{name}`: {e}"));
            }
            let jit = compile(&program, self.outputs).expect("coefficient formulas compile");
            (program, jit)
        })
    }

    /// The outputs at one step.
    pub(crate) fn eval(&self, v: &StepVars) -> Coefs {
        let jit = &self.compiled().1;
        let mut values = vec![0.0; jit.n_outputs()];
        jit.call(v.l_t - v.l_s, &v.array(), &mut values);
        Coefs {
            names: self.outputs,
            values,
        }
    }

    /// The outputs at one step with their partial derivatives in the step variables (for the
    /// gradient with respect to the grid times): derived symbolically from the same text and
    /// compiled once.
    pub(crate) fn eval_with_partials(&self, v: &StepVars) -> (Coefs, Vec<VarPartials>) {
        let jit = self.partials.get_or_init(|| {
            let mut program = self.compiled().0.clone();
            let mut names: Vec<String> = Vec::new();
            for o in self.outputs {
                names.push((*o).to_string());
                names.push(program.derivative(o, "h").to_string());
                for var in VARS {
                    names.push(program.derivative(o, var).to_string());
                }
            }
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            compile(&program, &refs).expect("coefficient derivatives compile")
        });
        let mut flat = vec![0.0; jit.n_outputs()];
        jit.call(v.l_t - v.l_s, &v.array(), &mut flat);
        let stride = 2 + VARS.len();
        // A point at pure noise (lambda = -inf, a flow's t = 1) enters a coefficient through
        // e^lambda and 1 / (lambda' - lambda), whose values are exact at -inf but whose
        // partials are inf / inf there. Their limits are the partials at a lambda so far
        // below every other that those terms are below round-off (1e-30 relative):
        // evaluated there, the values kept from -inf itself.
        let lambdas = [2, 5, 6, 7];
        let mut vars = v.array();
        if lambdas.iter().any(|&k| vars[k] == f64::NEG_INFINITY) {
            for k in lambdas {
                if vars[k] == f64::NEG_INFINITY {
                    vars[k] = PURE_NOISE_LAMBDA;
                }
            }
            let exact: Vec<f64> = flat.chunks_exact(stride).map(|row| row[0]).collect();
            jit.call(vars[5] - vars[2], &vars, &mut flat);
            for (row, value) in flat.chunks_exact_mut(stride).zip(exact) {
                row[0] = value;
            }
        }
        let (l_s, l_t) = (2, 5);
        let mut values = Vec::with_capacity(self.outputs.len());
        let mut partials = Vec::with_capacity(self.outputs.len());
        for row in flat.chunks_exact(stride) {
            values.push(row[0]);
            let mut p: VarPartials = [0.0; 13];
            p.copy_from_slice(&row[2..]);
            // h = l_t - l_s is the formulas' input, a function of two of the variables.
            p[l_t] += row[1];
            p[l_s] -= row[1];
            partials.push(p);
        }
        (
            Coefs {
                names: self.outputs,
                values,
            },
            partials,
        )
    }

    /// The formulas as a program (for `adeis check` and the documentation).
    pub fn program(&self) -> &Program {
        &self.compiled().0
    }
}

/// Definitions shared by the noise-form (eps) exponential integrators.
pub(crate) const NOISE_BASE: &[(&str, &str)] = &[
    ("A", "a_t / a_s"),
    ("phi1", "expm1(h)"),
    ("r0", "(l_s - l_p1) / h"),
    ("r1", "(l_p1 - l_p2) / h"),
];

/// Definitions shared by the data-form (x0) exponential integrators.
pub(crate) const DATA_BASE: &[(&str, &str)] = &[
    ("A", "s_t / s_s"),
    ("phi1", "expm1(-h)"),
    ("r0", "(l_s - l_p1) / h"),
    ("r1", "(l_p1 - l_p2) / h"),
];

/// DDIM / DPM-Solver-1: x_t = (a_t/a_s) x_s - s_t (e^h - 1) eps_s. Also the DDIM re-solve of
/// AdjointDEIS's back-solved states.
pub static NOISE1: FormulaSet =
    FormulaSet::new("noise1", NOISE_BASE, &[("B0", "-s_t * phi1")], &["A", "B0"]);

//! The sampler catalogue: from a `[sampler]` declaration and a compiled schedule to a filled
//! [`Plan`] (MATH.md section 2).
//!
//! The affine coefficients of the exponential integrators (DDIM / DPM-Solver, DPM-Solver++,
//! their SDE forms, singlestep stages) are formulas in the step's alpha, sigma and lambda
//! values, compiled once by the JIT and evaluated per step; DEIS integrates its Lagrange basis
//! by Gauss-Legendre quadrature in lambda, and UniPC solves its small order conditions, both on
//! JIT-evaluated schedule values. Tables are filled once per (schedule, sampler, grid).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use crate::grid::{check_grid, make_grid, train_index_times, GridError, GridKind};
use crate::jit::{compile, JitFn};
use crate::plan::{Operand, Plan, PlanBuilder, Pred};
use crate::program::Program;
use crate::schedule::Schedule;

/// The sampler families (`[sampler] method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Ddim,
    DpmSolver,
    DpmSolverPp,
    Deis,
    Unipc,
    SdeDpmSolver,
    SdeDpmSolverPp,
}

impl Method {
    pub const ALL: [Method; 7] = [
        Method::Ddim,
        Method::DpmSolver,
        Method::DpmSolverPp,
        Method::Deis,
        Method::Unipc,
        Method::SdeDpmSolver,
        Method::SdeDpmSolverPp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Ddim => "ddim",
            Method::DpmSolver => "dpm_solver",
            Method::DpmSolverPp => "dpm_solver_pp",
            Method::Deis => "deis",
            Method::Unipc => "unipc",
            Method::SdeDpmSolver => "sde_dpm_solver",
            Method::SdeDpmSolverPp => "sde_dpm_solver_pp",
        }
    }

    /// The orders this method has (for the ODE; see [`Method::sde_orders`]).
    pub fn orders(self) -> &'static [usize] {
        match self {
            Method::Ddim => &[1],
            Method::DpmSolver | Method::DpmSolverPp | Method::Deis => &[1, 2, 3],
            Method::Unipc => &[1, 2, 3],
            Method::SdeDpmSolver => &[1],
            Method::SdeDpmSolverPp => &[1, 2],
        }
    }

    /// The orders of this method's SDE form (empty: it has none).
    pub fn sde_orders(self) -> &'static [usize] {
        match self {
            Method::Ddim | Method::DpmSolver | Method::SdeDpmSolver => &[1],
            Method::DpmSolverPp | Method::SdeDpmSolverPp => &[1, 2],
            Method::Deis | Method::Unipc => &[],
        }
    }
}

/// ODE (probability flow) or SDE (reverse diffusion).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Equation {
    #[default]
    Ode,
    Sde,
}

/// What the network predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    #[default]
    Eps,
    X0,
    V,
}

/// How a second-order multistep update uses the previous output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SolverType {
    #[default]
    Midpoint,
    Heun,
}

/// UniPC's B(h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnipcVariant {
    Bh1,
    #[default]
    Bh2,
}

/// The third-order multistep coefficients: derived from the Taylor expansion (order 3), or
/// as the DPM-Solver reference code and diffusers write them (order 2; to reproduce them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ThirdOrder {
    #[default]
    Taylor,
    Reference,
}

fn d_true() -> bool {
    true
}
fn d_order() -> usize {
    1
}
fn d_steps() -> usize {
    20
}
fn d_rho() -> f64 {
    7.0
}

/// The `[sampler]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerSpec {
    pub method: Method,
    #[serde(default = "d_order")]
    pub order: usize,
    #[serde(default = "d_steps")]
    pub steps: usize,
    #[serde(default = "default_grid")]
    pub grid: GridKind,
    /// ode or sde; absent: sde for the `sde_*` methods, ode otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equation: Option<Equation>,
    #[serde(default)]
    pub prediction: Prediction,
    /// Multistep (default for dpm_solver_pp, deis, unipc) or singlestep (default for
    /// dpm_solver, whose orders 2 and 3 are DPM-Solver-2 and -3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multistep: Option<bool>,
    #[serde(default)]
    pub solver_type: SolverType,
    #[serde(default)]
    pub third_order: ThirdOrder,
    #[serde(default)]
    pub variant: UnipcVariant,
    /// UniPC's corrector (UniC).
    #[serde(default = "d_true")]
    pub corrector: bool,
    /// Lower the order of the last steps when steps < 15.
    #[serde(default = "d_true")]
    pub lower_order_final: bool,
    /// Return the x0 prediction at the last time (one more model evaluation).
    #[serde(default)]
    pub denoise_to_zero: bool,
    #[serde(default = "d_rho")]
    pub rho: f64,
    /// Explicit times (noisiest first); implies grid = "explicit".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<Vec<f64>>,
    /// Explicit train indices of a discrete schedule (noisiest first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_indices: Option<Vec<usize>>,
}

fn default_grid() -> GridKind {
    GridKind::Logsnr
}

impl SamplerSpec {
    pub fn new(method: Method, order: usize, steps: usize) -> SamplerSpec {
        SamplerSpec {
            method,
            order,
            steps,
            grid: GridKind::Logsnr,
            equation: None,
            prediction: Prediction::Eps,
            multistep: None,
            solver_type: SolverType::Midpoint,
            third_order: ThirdOrder::Taylor,
            variant: UnipcVariant::Bh2,
            corrector: true,
            lower_order_final: true,
            denoise_to_zero: false,
            rho: 7.0,
            times: None,
            train_indices: None,
        }
    }

    /// The equation this sampler solves (the `sde_*` methods always solve the SDE).
    pub fn effective_equation(&self) -> Equation {
        match (self.method, self.equation) {
            (Method::SdeDpmSolver | Method::SdeDpmSolverPp, _) => Equation::Sde,
            (_, e) => e.unwrap_or(Equation::Ode),
        }
    }

    pub fn is_multistep(&self) -> bool {
        self.multistep
            .unwrap_or(!matches!(self.method, Method::DpmSolver))
    }

    /// Checks the choices against each other (not against a schedule).
    pub fn validate(&self) -> Result<(), SamplerError> {
        let err = |field: &'static str, message: String| Err(SamplerError { field, message });
        let sde = self.effective_equation() == Equation::Sde;
        if matches!(self.method, Method::SdeDpmSolver | Method::SdeDpmSolverPp)
            && self.equation == Some(Equation::Ode)
        {
            return err(
                "equation",
                format!(
                    "method `{}` solves the SDE; remove `equation = \"ode\"`",
                    self.method.name()
                ),
            );
        }
        let orders = if sde {
            self.method.sde_orders()
        } else {
            self.method.orders()
        };
        if sde && orders.is_empty() {
            return err(
                "equation",
                format!(
                    "method `{}` has no SDE form; SDE samplers: ddim and dpm_solver (order 1), dpm_solver_pp (orders 1, 2), sde_dpm_solver, sde_dpm_solver_pp",
                    self.method.name()
                ),
            );
        }
        if !orders.contains(&self.order) {
            return err(
                "order",
                format!(
                    "order = {}: method `{}`{} has orders {:?}",
                    self.order,
                    self.method.name(),
                    if sde { " (SDE)" } else { "" },
                    orders
                ),
            );
        }
        if self.steps == 0 && self.times.is_none() && self.train_indices.is_none() {
            return err("steps", "steps = 0: a sampler needs at least 1 step".into());
        }
        if sde && !self.is_multistep() && self.order > 1 {
            return err("multistep", "the SDE samplers are multistep".into());
        }
        if self.method == Method::Unipc && !self.is_multistep() {
            return err("multistep", "unipc is a multistep method".into());
        }
        if self.method == Method::Deis && !self.is_multistep() {
            return err("multistep", "deis (tAB) is a multistep method".into());
        }
        if self.times.is_some() && self.train_indices.is_some() {
            return err(
                "train_indices",
                "give `times` or `train_indices`, not both".into(),
            );
        }
        Ok(())
    }

    /// The grid this sampler runs on.
    pub fn grid_for(&self, schedule: &Schedule) -> Result<Vec<f64>, SamplerError> {
        let map = |e: GridError| SamplerError {
            field: e.field,
            message: e.message,
        };
        let ts = if let Some(ts) = &self.times {
            ts.clone()
        } else if let Some(idx) = &self.train_indices {
            let n_train = schedule.def().train_steps().ok_or_else(|| SamplerError {
                field: "train_indices",
                message: format!(
                    "train_indices need a discrete schedule; this one is `{}`",
                    schedule.def().name()
                ),
            })?;
            if let Some(k) = idx.iter().find(|k| **k >= n_train) {
                return Err(SamplerError {
                    field: "train_indices",
                    message: format!("train index {k} is outside 0..{n_train}"),
                });
            }
            train_index_times(idx, n_train)
        } else {
            return make_grid(
                schedule,
                &self.grid,
                self.steps,
                self.rho,
                schedule.t_max(),
                schedule.t_min(),
            )
            .map_err(map);
        };
        check_grid(schedule, &ts).map_err(map)?;
        Ok(ts)
    }
}

/// A sampler declaration that does not hold together, with the key concerned.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerError {
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for SamplerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SamplerError {}

// ---------------------------------------------------------------------------------------------
// Coefficient formulas, compiled once.

/// The per-step variables the coefficient formulas may use (input: h = l_t - l_s).
const VARS: [&str; 12] = [
    "a_s", "s_s", "l_s", "a_t", "s_t", "l_t", "l_p1", "l_p2", "a_u1", "s_u1", "a_u2", "s_u2",
];

#[derive(Clone, Copy, Debug, Default)]
struct StepVars {
    a_s: f64,
    s_s: f64,
    l_s: f64,
    a_t: f64,
    s_t: f64,
    l_t: f64,
    l_p1: f64,
    l_p2: f64,
    a_u1: f64,
    s_u1: f64,
    a_u2: f64,
    s_u2: f64,
}

impl StepVars {
    fn array(&self) -> [f64; 12] {
        [
            self.a_s, self.s_s, self.l_s, self.a_t, self.s_t, self.l_t, self.l_p1, self.l_p2,
            self.a_u1, self.s_u1, self.a_u2, self.s_u2,
        ]
    }
}

/// A compiled set of coefficient formulas.
pub struct CoefFormulas {
    program: Program,
    jit: JitFn,
}

impl CoefFormulas {
    fn new(defs: &[(&str, &str)], outputs: &[&str]) -> CoefFormulas {
        let params: Vec<(&str, f64)> = VARS.iter().map(|v| (*v, 0.0)).collect();
        let mut program = Program::new("h", &params);
        for (name, text) in defs {
            program
                .define_text(name, text)
                .unwrap_or_else(|e| panic!("coefficient formula `{name}`: {e}"));
        }
        let jit = compile(&program, outputs).expect("coefficient formulas compile");
        CoefFormulas { program, jit }
    }

    fn eval(&self, v: &StepVars) -> Vec<f64> {
        let mut out = vec![0.0; self.jit.n_outputs()];
        self.jit.call(v.l_t - v.l_s, &v.array(), &mut out);
        out
    }

    /// The formulas as text (for `adeis check`).
    pub fn program(&self) -> &Program {
        &self.program
    }
}

/// The formula sets by name, compiled on first use.
fn formulas(name: &'static str) -> Arc<CoefFormulas> {
    static CACHE: OnceLock<Mutex<HashMap<&'static str, Arc<CoefFormulas>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(f) = cache.lock().unwrap().get(name) {
        return f.clone();
    }
    let (defs, outputs) = formula_text(name);
    let f = Arc::new(CoefFormulas::new(&defs, &outputs));
    cache.lock().unwrap().insert(name, f.clone());
    f
}

/// Coefficient formulas of every closed-form update (MATH.md section 2). A = state
/// coefficient, B_k = coefficient of the k-th newest model output, C = noise coefficient.
fn formula_text(name: &str) -> (Vec<(&'static str, &'static str)>, Vec<&'static str>) {
    // Shared definitions.
    let noise = vec![
        ("A", "a_t / a_s"),
        ("phi1", "expm1(h)"),
        ("r0", "(l_s - l_p1) / h"),
        ("r1", "(l_p1 - l_p2) / h"),
    ];
    let data = vec![
        ("A", "s_t / s_s"),
        ("phi1", "expm1(-h)"),
        ("r0", "(l_s - l_p1) / h"),
        ("r1", "(l_p1 - l_p2) / h"),
    ];
    let with = |mut base: Vec<(&'static str, &'static str)>,
                more: &[(&'static str, &'static str)]| {
        base.extend_from_slice(more);
        base
    };
    match name {
        "noise1" => (with(noise, &[("B0", "-s_t * phi1")]), vec!["A", "B0"]),
        "noise2_midpoint" => (
            with(
                noise,
                &[
                    ("B0", "-s_t * phi1 - 0.5 * s_t * phi1 / r0"),
                    ("B1", "0.5 * s_t * phi1 / r0"),
                ],
            ),
            vec!["A", "B0", "B1"],
        ),
        "noise2_heun" => (
            with(
                noise,
                &[
                    ("g", "s_t * (phi1 / h - 1)"),
                    ("B0", "-s_t * phi1 - g(h) / r0"),
                    ("B1", "g(h) / r0"),
                ],
            ),
            vec!["A", "B0", "B1"],
        ),
        "noise3_taylor" | "noise3_reference" => {
            let k = if name.ends_with("taylor") {
                ("k", "2")
            } else {
                ("k", "1")
            };
            (
                with(
                    noise,
                    &[
                        k,
                        ("phi2", "phi1 / h - 1"),
                        ("phi3", "phi2 / h - 0.5"),
                        ("c", "r0 / (r0 + r1)"),
                        ("P", "-s_t * phi2 * (1 + c) - k * s_t * phi3 / (r0 + r1)"),
                        ("Q", "s_t * phi2 * c + k * s_t * phi3 / (r0 + r1)"),
                        ("B0", "-s_t * phi1 + P / r0"),
                        ("B1", "-P / r0 + Q / r1"),
                        ("B2", "-Q / r1"),
                    ],
                ),
                vec!["A", "B0", "B1", "B2"],
            )
        }
        "data1" => (with(data, &[("B0", "-a_t * phi1")]), vec!["A", "B0"]),
        "data2_midpoint" => (
            with(
                data,
                &[
                    ("B0", "-a_t * phi1 - 0.5 * a_t * phi1 / r0"),
                    ("B1", "0.5 * a_t * phi1 / r0"),
                ],
            ),
            vec!["A", "B0", "B1"],
        ),
        "data2_heun" => (
            with(
                data,
                &[
                    ("g", "a_t * (phi1 / h + 1)"),
                    ("B0", "-a_t * phi1 + g / r0"),
                    ("B1", "-g / r0"),
                ],
            ),
            vec!["A", "B0", "B1"],
        ),
        "data3_taylor" | "data3_reference" => {
            let k = if name.ends_with("taylor") {
                ("k", "2")
            } else {
                ("k", "1")
            };
            (
                with(
                    data,
                    &[
                        k,
                        ("phi2", "phi1 / h + 1"),
                        ("phi3", "phi2 / h - 0.5"),
                        ("c", "r0 / (r0 + r1)"),
                        ("P", "a_t * phi2 * (1 + c) - k * a_t * phi3 / (r0 + r1)"),
                        ("Q", "-a_t * phi2 * c + k * a_t * phi3 / (r0 + r1)"),
                        ("B0", "-a_t * phi1 + P / r0"),
                        ("B1", "-P / r0 + Q / r1"),
                        ("B2", "-Q / r1"),
                    ],
                ),
                vec!["A", "B0", "B1", "B2"],
            )
        }
        // SDE-DPM-Solver-1 (noise form) and SDE-DPM-Solver++ 1 / 2M (data form).
        "sde_noise1" => (
            vec![
                ("A", "a_t / a_s"),
                ("B0", "-2 * s_t * expm1(h)"),
                ("C", "s_t * sqrt(expm1(2 * h))"),
            ],
            vec!["A", "B0", "C"],
        ),
        "sde_data1" | "sde_data2" => {
            let mut defs = vec![
                ("A", "s_t / s_s * exp(-h)"),
                ("q", "-a_t * expm1(-2 * h)"),
                ("r0", "(l_s - l_p1) / h"),
                ("C", "s_t * sqrt(-expm1(-2 * h))"),
            ];
            if name == "sde_data1" {
                defs.push(("B0", "q"));
                (defs, vec!["A", "B0", "C"])
            } else {
                defs.push(("B0", "q + 0.5 * q / r0"));
                defs.push(("B1", "-0.5 * q / r0"));
                (defs, vec!["A", "B0", "B1", "C"])
            }
        }
        // Singlestep DPM-Solver-2 and -3 (r1 = 1/2; r1 = 1/3, r2 = 2/3), noise and data forms.
        "single2_noise" => (
            vec![
                ("r1", "0.5"),
                ("Au", "a_u1 / a_s"),
                ("Bu0", "-s_u1 * expm1(r1 * h)"),
                ("A", "a_t / a_s"),
                ("phi1", "expm1(h)"),
                ("B0", "-s_t * phi1 + s_t / (2 * r1) * phi1"),
                ("B1", "-s_t / (2 * r1) * phi1"),
            ],
            vec!["Au", "Bu0", "A", "B0", "B1"],
        ),
        "single2_data" => (
            vec![
                ("r1", "0.5"),
                ("Au", "s_u1 / s_s"),
                ("Bu0", "-a_u1 * expm1(-r1 * h)"),
                ("A", "s_t / s_s"),
                ("phi1", "expm1(-h)"),
                ("B0", "-a_t * phi1 * (1 - 0.5 / r1)"),
                ("B1", "-a_t * phi1 * 0.5 / r1"),
            ],
            vec!["Au", "Bu0", "A", "B0", "B1"],
        ),
        "single3_noise" => (
            vec![
                ("r1", "1 / 3"),
                ("r2", "2 / 3"),
                ("Au1", "a_u1 / a_s"),
                ("Bu1_0", "-s_u1 * expm1(r1 * h)"),
                ("phi12", "expm1(r2 * h)"),
                ("phi22", "expm1(r2 * h) / (r2 * h) - 1"),
                ("Au2", "a_u2 / a_s"),
                ("Bu2_0", "-s_u2 * phi12 + r2 / r1 * s_u2 * phi22"),
                ("Bu2_1", "-(r2 / r1) * s_u2 * phi22"),
                ("A", "a_t / a_s"),
                ("phi1", "expm1(h)"),
                ("phi2", "phi1 / h - 1"),
                ("B0", "-s_t * phi1 + s_t * phi2 / r2"),
                ("B2", "-s_t * phi2 / r2"),
            ],
            vec!["Au1", "Bu1_0", "Au2", "Bu2_0", "Bu2_1", "A", "B0", "B2"],
        ),
        "single3_data" => (
            vec![
                ("r1", "1 / 3"),
                ("r2", "2 / 3"),
                ("Au1", "s_u1 / s_s"),
                ("Bu1_0", "-a_u1 * expm1(-r1 * h)"),
                ("phi12", "expm1(-r2 * h)"),
                ("phi22", "expm1(-r2 * h) / (r2 * h) + 1"),
                ("Au2", "s_u2 / s_s"),
                ("Bu2_0", "-a_u2 * phi12 - r2 / r1 * a_u2 * phi22"),
                ("Bu2_1", "r2 / r1 * a_u2 * phi22"),
                ("A", "s_t / s_s"),
                ("phi1", "expm1(-h)"),
                ("phi2", "phi1 / h + 1"),
                ("B0", "-a_t * phi1 - a_t * phi2 / r2"),
                ("B2", "a_t * phi2 / r2"),
            ],
            vec!["Au1", "Bu1_0", "Au2", "Bu2_0", "Bu2_1", "A", "B0", "B2"],
        ),
        _ => panic!("no coefficient formulas named `{name}`"),
    }
}

/// The formula sets `adeis check` can print, by name.
pub fn coefficient_program(name: &'static str) -> Arc<CoefFormulas> {
    formulas(name)
}

// ---------------------------------------------------------------------------------------------
// Plan construction.

/// Gauss-Legendre nodes and weights on [-1, 1].
fn gauss_legendre(n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut x = vec![0.0; n];
    let mut w = vec![0.0; n];
    for i in 0..n.div_ceil(2) {
        let mut z = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
        let mut dp = 0.0;
        for _ in 0..100 {
            let (mut p0, mut p1) = (1.0, z);
            for k in 2..=n {
                let p2 = ((2 * k - 1) as f64 * z * p1 - (k - 1) as f64 * p0) / k as f64;
                p0 = p1;
                p1 = p2;
            }
            dp = n as f64 * (z * p1 - p0) / (z * z - 1.0);
            let dz = p1 / dp;
            z -= dz;
            if dz.abs() < 1e-16 {
                break;
            }
        }
        x[i] = -z;
        x[n - 1 - i] = z;
        w[i] = 2.0 / ((1.0 - z * z) * dp * dp);
        w[n - 1 - i] = w[i];
    }
    (x, w)
}

/// Lagrange basis polynomial j through `nodes`, at t.
fn lagrange(nodes: &[f64], j: usize, t: f64) -> f64 {
    nodes
        .iter()
        .enumerate()
        .filter(|(k, _)| *k != j)
        .map(|(_, tk)| (t - tk) / (nodes[j] - tk))
        .product()
}

/// Solves a small dense system by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap();
        a.swap(col, piv);
        b.swap(col, piv);
        for row in col + 1..n {
            let f = a[row][col] / a[col][col];
            let pivot_row = a[col].clone();
            for (x, p) in a[row][col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x
}

/// The model-output form a method works in.
fn method_pred(spec: &SamplerSpec) -> Pred {
    match spec.method {
        Method::DpmSolverPp | Method::SdeDpmSolverPp | Method::Unipc => Pred::Data,
        Method::Ddim | Method::DpmSolver | Method::Deis | Method::SdeDpmSolver => Pred::Eps,
    }
}

fn describe(spec: &SamplerSpec, grid: &[f64]) -> String {
    let mut s = format!("{} order {}", spec.method.name(), spec.order);
    if spec.effective_equation() == Equation::Sde {
        s.push_str(" (SDE)");
    }
    if matches!(spec.method, Method::DpmSolver | Method::DpmSolverPp) && spec.order > 1 {
        s.push_str(if spec.is_multistep() {
            " multistep"
        } else {
            " singlestep"
        });
    }
    if spec.method == Method::Unipc {
        s.push_str(&format!(
            " {:?}{}",
            spec.variant,
            if spec.corrector {
                " with corrector"
            } else {
                " predictor only"
            }
        ));
    }
    s.push_str(&format!(
        ", {} grid over [{}, {}]",
        spec.grid,
        grid[grid.len() - 1],
        grid[0]
    ));
    s
}

/// Builds the plan of `spec` on `schedule`.
pub fn build_plan(schedule: &Schedule, spec: &SamplerSpec) -> Result<Plan, SamplerError> {
    spec.validate()?;
    let grid = spec.grid_for(schedule)?;
    Ok(build_plan_on(schedule, spec, grid))
}

/// Builds the plan of a validated `spec` on a given grid.
pub fn build_plan_on(schedule: &Schedule, spec: &SamplerSpec, grid: Vec<f64>) -> Plan {
    let n = grid.len() - 1;
    let vals = schedule.fill(&grid);
    let pred = method_pred(spec);
    let sde = spec.effective_equation() == Equation::Sde;
    let mut b = PlanBuilder::new(grid[0]);
    let mut x = 0usize;
    // Newest last: (output slot, grid index).
    let mut outs: Vec<(usize, usize)> = Vec::new();
    let step_order = |i: usize| {
        let mut o = spec.order.min(i + 1);
        if spec.lower_order_final && n < 15 {
            o = o.min(n - i);
        }
        o.max(1)
    };
    let vars_at = |i: usize| {
        let (s, t) = (&vals[i], &vals[i + 1]);
        StepVars {
            a_s: s.alpha,
            s_s: s.sigma,
            l_s: s.lambda,
            a_t: t.alpha,
            s_t: t.sigma,
            l_t: t.lambda,
            l_p1: if i >= 1 { vals[i - 1].lambda } else { f64::NAN },
            l_p2: if i >= 2 { vals[i - 2].lambda } else { f64::NAN },
            ..StepVars::default()
        }
    };
    let single = !spec.is_multistep() && spec.order > 1;
    let mut last_corrected: Option<(usize, usize, usize)> = None; // (state, grid index, order)
    for i in 0..n {
        b.set_step(i);
        let t_next = grid[i + 1];
        let v = vars_at(i);
        if single {
            let form = if pred == Pred::Eps { "noise" } else { "data" };
            let o_s = b.eval(x, pred);
            let h = v.l_t - v.l_s;
            let at = |lam: f64| {
                let t = schedule.t_of_lambda(lam);
                let e = schedule.eval(t);
                (t, e.alpha, e.sigma)
            };
            if spec.order == 2 {
                let (tu, au, su) = at(v.l_s + 0.5 * h);
                let c = formulas(if form == "noise" {
                    "single2_noise"
                } else {
                    "single2_data"
                })
                .eval(&StepVars {
                    a_u1: au,
                    s_u1: su,
                    ..v
                });
                let u = b.combine(
                    tu,
                    vec![(Operand::State(x), c[0]), (Operand::Out(o_s), c[1])],
                );
                let o_u = b.eval(u, pred);
                x = b.combine(
                    t_next,
                    vec![
                        (Operand::State(x), c[2]),
                        (Operand::Out(o_s), c[3]),
                        (Operand::Out(o_u), c[4]),
                    ],
                );
            } else {
                let (tu1, au1, su1) = at(v.l_s + h / 3.0);
                let (tu2, au2, su2) = at(v.l_s + 2.0 * h / 3.0);
                let c = formulas(if form == "noise" {
                    "single3_noise"
                } else {
                    "single3_data"
                })
                .eval(&StepVars {
                    a_u1: au1,
                    s_u1: su1,
                    a_u2: au2,
                    s_u2: su2,
                    ..v
                });
                let u1 = b.combine(
                    tu1,
                    vec![(Operand::State(x), c[0]), (Operand::Out(o_s), c[1])],
                );
                let o_u1 = b.eval(u1, pred);
                let u2 = b.combine(
                    tu2,
                    vec![
                        (Operand::State(x), c[2]),
                        (Operand::Out(o_s), c[3]),
                        (Operand::Out(o_u1), c[4]),
                    ],
                );
                let o_u2 = b.eval(u2, pred);
                x = b.combine(
                    t_next,
                    vec![
                        (Operand::State(x), c[5]),
                        (Operand::Out(o_s), c[6]),
                        (Operand::Out(o_u2), c[7]),
                    ],
                );
            }
            continue;
        }
        let o = b.eval(x, pred);
        if spec.method == Method::Unipc {
            if let (true, Some((prev_x, prev_i, prev_order))) = (spec.corrector, last_corrected) {
                // UniC: correct x_i from x_{i-1} with the outputs up to m_i (evaluated at the
                // predicted x_i, and kept for the next step).
                let terms = unipc_terms(&vals, &outs, prev_i, i, Some(o), prev_order, spec.variant);
                let mut all = vec![(Operand::State(prev_x), terms.0)];
                all.extend(terms.1);
                x = b.combine(grid[i], all);
            }
        }
        outs.push((o, i));
        let order = step_order(i);
        if spec.method == Method::Unipc {
            last_corrected = Some((x, i, order));
            let terms = unipc_terms(&vals, &outs, i, i + 1, None, order, spec.variant);
            let mut all = vec![(Operand::State(x), terms.0)];
            all.extend(terms.1);
            x = b.combine(t_next, all);
            continue;
        }
        let newest = |k: usize| Operand::Out(outs[outs.len() - 1 - k].0);
        let mut terms = vec![];
        if spec.method == Method::Deis {
            let nodes: Vec<f64> = (0..order).map(|k| grid[i - k]).collect();
            let coefs = deis_coefficients(schedule, &nodes, v.l_s, v.l_t, v.a_t);
            terms.push((Operand::State(x), v.a_t / v.a_s));
            for (k, c) in coefs.into_iter().enumerate() {
                terms.push((newest(k), c));
            }
        } else {
            let name: &'static str = match (sde, pred, order, spec.solver_type, spec.third_order) {
                (true, Pred::Eps, _, _, _) => "sde_noise1",
                (true, Pred::Data, 1, _, _) => "sde_data1",
                (true, Pred::Data, _, _, _) => "sde_data2",
                (false, Pred::Eps, 1, _, _) => "noise1",
                (false, Pred::Eps, 2, SolverType::Midpoint, _) => "noise2_midpoint",
                (false, Pred::Eps, 2, SolverType::Heun, _) => "noise2_heun",
                (false, Pred::Eps, _, _, ThirdOrder::Taylor) => "noise3_taylor",
                (false, Pred::Eps, _, _, ThirdOrder::Reference) => "noise3_reference",
                (false, Pred::Data, 1, _, _) => "data1",
                (false, Pred::Data, 2, SolverType::Midpoint, _) => "data2_midpoint",
                (false, Pred::Data, 2, SolverType::Heun, _) => "data2_heun",
                (false, Pred::Data, _, _, ThirdOrder::Taylor) => "data3_taylor",
                (false, Pred::Data, _, _, ThirdOrder::Reference) => "data3_reference",
            };
            let c = formulas(name).eval(&v);
            terms.push((Operand::State(x), c[0]));
            let n_out = if sde { c.len() - 2 } else { c.len() - 1 };
            for k in 0..n_out {
                terms.push((newest(k), c[1 + k]));
            }
            if sde {
                let xi = b.noise();
                terms.push((Operand::Noise(xi), c[c.len() - 1]));
            }
        }
        x = b.combine(t_next, terms);
    }
    if spec.denoise_to_zero {
        b.set_step(n);
        let o = b.eval(x, Pred::Data);
        x = b.combine(grid[n], vec![(Operand::Out(o), 1.0)]);
    }
    let desc = describe(spec, &grid);
    b.finish(x, grid, desc)
}

/// DEIS tAB: C_j = -alpha_t * integral over [lambda_s, lambda_t] of e^{-lambda} L_j(t(lambda)),
/// the Lagrange basis in t through `nodes` (newest first), by 24-point Gauss-Legendre in lambda
/// (the integrand is smooth in lambda, unlike in t near t = 0).
fn deis_coefficients(schedule: &Schedule, nodes: &[f64], l_s: f64, l_t: f64, a_t: f64) -> Vec<f64> {
    static GL: OnceLock<(Vec<f64>, Vec<f64>)> = OnceLock::new();
    let (xs, ws) = GL.get_or_init(|| gauss_legendre(24));
    let (mid, half) = (0.5 * (l_s + l_t), 0.5 * (l_t - l_s));
    let mut c = vec![0.0; nodes.len()];
    for (x, w) in xs.iter().zip(ws) {
        let lam = mid + half * x;
        let tau = schedule.t_of_lambda(lam);
        let weight = w * half * (-lam).exp();
        for (j, cj) in c.iter_mut().enumerate() {
            *cj += weight * lagrange(nodes, j, tau);
        }
    }
    c.iter().map(|cj| -a_t * cj).collect()
}

/// UniPC (data prediction) from grid point `s` to `t`: the state coefficient and the terms on
/// the model outputs. Predictor (UniP) when `m_t` is None, corrector (UniC) when it is the
/// output at t. `outs` holds (slot, grid index), newest last; its last entry is at `s`.
fn unipc_terms(
    vals: &[crate::schedule::ScheduleValues],
    outs: &[(usize, usize)],
    s: usize,
    t: usize,
    m_t: Option<usize>,
    order: usize,
    variant: UnipcVariant,
) -> (f64, Vec<(Operand, f64)>) {
    let (vs, vt) = (&vals[s], &vals[t]);
    let h = vt.lambda - vs.lambda;
    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let b_h = match variant {
        UnipcVariant::Bh1 => hh,
        UnipcVariant::Bh2 => hh.exp_m1(),
    };
    let m0 = outs[outs.len() - 1];
    // Previous outputs m_1..m_{order-1} and their r_k.
    let prev: Vec<((usize, usize), f64)> = (1..order)
        .map(|k| {
            let m = outs[outs.len() - 1 - k];
            (m, (vals[m.1].lambda - vs.lambda) / h)
        })
        .collect();
    let mut rks: Vec<f64> = prev.iter().map(|p| p.1).collect();
    rks.push(1.0);
    let mut r_rows = Vec::new();
    let mut bs = Vec::new();
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let mut factorial = 1.0;
    for i in 1..=order {
        r_rows.push(
            rks.iter()
                .map(|r| r.powi(i as i32 - 1))
                .collect::<Vec<f64>>(),
        );
        bs.push(h_phi_k * factorial / b_h);
        factorial *= (i + 1) as f64;
        h_phi_k = h_phi_k / hh - 1.0 / factorial;
    }
    let a_t = vt.alpha;
    let state_coef = vt.sigma / vs.sigma;
    let mut m0_coef = -a_t * h_phi_1;
    let mut terms = Vec::new();
    let rhos: Vec<f64> = match m_t {
        None => match order {
            1 => vec![],
            2 => vec![0.5],
            _ => {
                let p = order - 1;
                solve(
                    r_rows[..p].iter().map(|r| r[..p].to_vec()).collect(),
                    bs[..p].to_vec(),
                )
            }
        },
        Some(_) => {
            if order == 1 {
                vec![0.5]
            } else {
                solve(r_rows.clone(), bs.clone())
            }
        }
    };
    for (k, ((m, _), rk)) in prev.iter().enumerate() {
        // - a_t B_h rho_k (m_k - m0) / r_k
        let c = -a_t * b_h * rhos[k] / rk;
        terms.push((Operand::Out(*m), c));
        m0_coef -= c;
    }
    if let Some(mt) = m_t {
        let c = -a_t * b_h * rhos[rhos.len() - 1];
        terms.push((Operand::Out(mt), c));
        m0_coef -= c;
    }
    terms.insert(0, (Operand::Out(m0.0), m0_coef));
    (state_coef, terms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauss_legendre_integrates_polynomials_exactly() {
        let (x, w) = gauss_legendre(24);
        let integral: f64 = x.iter().zip(&w).map(|(x, w)| w * x.powi(46)).sum();
        assert!((integral - 2.0 / 47.0).abs() < 1e-14);
        assert!((w.iter().sum::<f64>() - 2.0).abs() < 1e-14);
    }

    #[test]
    fn small_solve() {
        let x = solve(vec![vec![2.0, 1.0], vec![1.0, 3.0]], vec![3.0, 5.0]);
        assert!((x[0] - 0.8).abs() < 1e-15 && (x[1] - 1.4).abs() < 1e-15);
    }
}

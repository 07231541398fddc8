//! AdjointDEIS-1 / -2M as a plan (docs/math.md section 3.1): the adjoint grid from t_min up to
//! t_max, the time information and the recorded state of every adjoint point, and the
//! coefficients of every step, compiled once per grid like every sampler's. The runtime only
//! forms the affine combinations.
//!
//! An adjoint step runs from a cleaner point s to the next noisier point t (h = l_t - l_s < 0):
//! `a_x(t) = decay a_x(s) + now J_x(s) - prev J_x(p1)`, with `J_x(u) = a_x(u)^T d eps(x_u)/dx`
//! and p1 the point before s (2M only); the conditioning and the parameters gather
//! `cond_weight(u) a_x(u)^T d eps(x_u)/d(z, theta)` at every point u.

use crate::error::FieldError;
use crate::gradient::AdjointOrder;
use crate::plan::{Plan, TimeInfo};
use crate::sampler::formulas::{FormulaSet, StepVars, NOISE1};
use crate::schedule::Schedule;

/// Where a recorded state comes from: a slot of the forward plan, or the linear interpolation
/// in lambda of two grid states (`(1 - u) lo + u hi`) where the adjoint grid differs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RecordedState {
    /// A state slot of the forward plan.
    Slot(usize),
    /// `(1 - u) lo + u hi` of two recorded slots.
    Lerp {
        /// The slot below.
        lo: usize,
        /// The slot above.
        hi: usize,
        /// The weight of `hi`.
        u: f64,
    },
}

/// One point of the adjoint grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdjointPoint {
    /// The point's time.
    pub time: TimeInfo,
    /// The forward state at this point, when states are recorded.
    pub state: RecordedState,
    /// alpha times the quadrature weight of the point: the factor on a_x^T d eps/dz (and on
    /// a_x^T d eps/dtheta) evaluated here.
    pub cond_weight: f64,
}

/// One adjoint step, from point k to point k + 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdjointStep {
    /// The factor on the adjoint state, alpha_s / alpha_t.
    pub decay: f64,
    /// The factor on J_x at the step's start.
    pub now: f64,
    /// The factor on J_x at the point before (0 for AdjointDEIS-1 and for the first step).
    pub prev: f64,
    /// The DDIM re-solve of back-solved states: x(k + 1) = x_coef x(k) + eps_coef eps(x(k)).
    pub x_coef: f64,
    /// The factor on eps(x(k)) in that re-solve.
    pub eps_coef: f64,
}

/// AdjointDEIS compiled for one sampling plan.
#[derive(Clone, Debug, PartialEq)]
pub struct AdjointDeisPlan {
    /// AdjointDEIS-1 or -2M.
    pub order: AdjointOrder,
    /// M + 1 points, t_min up to t_max.
    pub points: Vec<AdjointPoint>,
    /// M steps.
    pub steps: Vec<AdjointStep>,
}

const FIRST_ORDER: &[(&str, &str)] = &[
    ("decay", "a_s / a_t"),
    ("f", "c * s_t / a_t * expm1(h)"),
    ("kx", "c * s_t / (a_t * a_t) * expm1(h)"),
    ("now", "kx * a_s * a_s"),
];

const SECOND_ORDER: &[(&str, &str)] = &[
    ("decay", "a_s / a_t"),
    ("f", "c * s_t / a_t * expm1(h)"),
    ("kx", "c * s_t / (a_t * a_t) * expm1(h)"),
    ("q", "0.5 / ((l_s - l_p1) / h)"),
    ("now", "kx * a_s * a_s * (1 + q)"),
    ("prev", "kx * q * a_p1 * a_p1"),
    ("f_now", "f * (1 + q)"),
    ("f_prev", "f * q"),
];

static ODE1: FormulaSet = FormulaSet::new(
    "adjoint_deis1_ode",
    &[("c", "1")],
    FIRST_ORDER,
    &["decay", "f", "now"],
);
static SDE1: FormulaSet = FormulaSet::new(
    "adjoint_deis1_sde",
    &[("c", "2")],
    FIRST_ORDER,
    &["decay", "f", "now"],
);
static ODE2: FormulaSet = FormulaSet::new(
    "adjoint_deis2_ode",
    &[("c", "1")],
    SECOND_ORDER,
    &["decay", "now", "prev", "f_now", "f_prev"],
);
static SDE2: FormulaSet = FormulaSet::new(
    "adjoint_deis2_sde",
    &[("c", "2")],
    SECOND_ORDER,
    &["decay", "now", "prev", "f_now", "f_prev"],
);

/// The adjoint grid: the sampling grid reversed, or `steps` steps uniform in lambda.
fn adjoint_grid(schedule: &Schedule, plan: &Plan, steps: Option<usize>) -> Vec<f64> {
    let grid = &plan.grid;
    let (t_min, t_max) = (grid[grid.len() - 1], grid[0]);
    match steps {
        None => grid.iter().rev().copied().collect(),
        Some(m) => {
            let (l0, l1) = (schedule.lambda(t_min), schedule.lambda(t_max));
            let mut ts: Vec<f64> = (0..=m)
                .map(|i| schedule.t_of_lambda(l0 + (l1 - l0) * i as f64 / m as f64))
                .collect();
            ts[0] = t_min;
            ts[m] = t_max;
            ts
        }
    }
}

impl AdjointDeisPlan {
    /// AdjointDEIS of `order` for `plan` (a sampling plan: its grid runs from t_max down to
    /// t_min), on its grid or on `steps` steps of its own; `sde` takes the SDE's factor 2.
    pub fn new(
        schedule: &Schedule,
        plan: &Plan,
        order: AdjointOrder,
        steps: Option<usize>,
        sde: bool,
    ) -> Result<AdjointDeisPlan, FieldError> {
        if plan.grid.len() < 2 || plan.grid[0] <= plan.grid[plan.grid.len() - 1] {
            return Err(FieldError::new(
                "method",
                "adjoint_deis differentiates a sampling plan (its grid from t_max down to t_min), not an inversion",
            ));
        }
        if steps == Some(0) {
            return Err(FieldError::value(
                "steps",
                0,
                "the adjoint grid needs at least 1 step",
            ));
        }
        if schedule.eval(plan.grid[0]).is_pure_noise() {
            return Err(FieldError::new(
                "method",
                format!(
                    "adjoint_deis integrates the adjoint ODE in lambda, in its noise form, up to the sampler's t = {}, which is pure noise (alpha = 0, lambda = -inf); the discrete adjoint (method = \"discrete\") is exact there, or end the grid below pure noise (t_range)",
                    plan.grid[0]
                ),
            ));
        }
        let adj = adjoint_grid(schedule, plan, steps);
        let vals = schedule.fill(&adj);
        let m = adj.len() - 1;
        let (first, second) = if sde { (&SDE1, &SDE2) } else { (&ODE1, &ODE2) };
        let mut weight = vec![0.0; m + 1];
        let mut out = Vec::with_capacity(m);
        for k in 0..m {
            let mut v = StepVars::between(&vals[k], &vals[k + 1]);
            let back = NOISE1.eval(&v);
            let (x_coef, eps_coef) = (back.get("A"), back.get("B0"));
            if order == AdjointOrder::TwoM && k >= 1 {
                v.l_p1 = vals[k - 1].lambda;
                v.a_p1 = vals[k - 1].alpha;
                let c = second.eval(&v);
                weight[k] += c.get("f_now");
                weight[k - 1] -= c.get("f_prev");
                out.push(AdjointStep {
                    decay: c.get("decay"),
                    now: c.get("now"),
                    prev: c.get("prev"),
                    x_coef,
                    eps_coef,
                });
            } else {
                let c = first.eval(&v);
                weight[k] += c.get("f");
                out.push(AdjointStep {
                    decay: c.get("decay"),
                    now: c.get("now"),
                    prev: 0.0,
                    x_coef,
                    eps_coef,
                });
            }
        }
        let states = recorded_states(schedule, plan, &adj, steps.is_none());
        let points = adj
            .iter()
            .zip(&vals)
            .zip(states)
            .zip(&weight)
            .map(|(((&t, v), state), w)| AdjointPoint {
                time: TimeInfo {
                    t,
                    model_t: schedule.def().model_time(t, v.sigma),
                    alpha: v.alpha,
                    sigma: v.sigma,
                },
                state,
                cond_weight: v.alpha * w,
            })
            .collect();
        Ok(AdjointDeisPlan {
            order,
            points,
            steps: out,
        })
    }
}

/// The recorded state at each adjoint time: the grid state itself on the sampling grid
/// (`same_grid`), else the interpolation in lambda between the grid states around it.
fn recorded_states(
    schedule: &Schedule,
    plan: &Plan,
    adj: &[f64],
    same_grid: bool,
) -> Vec<RecordedState> {
    let n = plan.grid.len() - 1;
    if same_grid {
        return (0..=n)
            .map(|j| RecordedState::Slot(plan.grid_states[n - j]))
            .collect();
    }
    // Grid lambdas, t_max down: increasing.
    let lambdas: Vec<f64> = plan.grid.iter().map(|&t| schedule.lambda(t)).collect();
    adj.iter()
        .map(|&t| {
            let l = schedule.lambda(t);
            let k = lambdas
                .windows(2)
                .position(|w| w[0] <= l && l <= w[1])
                .unwrap_or(n - 1);
            let u = (l - lambdas[k]) / (lambdas[k + 1] - lambdas[k]);
            let (lo, hi) = (plan.grid_states[k], plan.grid_states[k + 1]);
            if t == plan.grid[k] || u == 0.0 {
                RecordedState::Slot(lo)
            } else if t == plan.grid[k + 1] || u == 1.0 {
                RecordedState::Slot(hi)
            } else {
                RecordedState::Lerp { lo, hi, u }
            }
        })
        .collect()
}

//! The sampler catalogue (docs/math.md section 2): from a `[sampler]` declaration and a compiled
//! schedule to a filled [`Plan`].
//!
//! Each family is one module behind the small [`Family`] trait (its orders, the model-output
//! form it works in, the steps it emits into the plan): [`multistep`] (DDIM, DPM-Solver,
//! DPM-Solver++ and their SDE forms), [`singlestep`] (DPM-Solver-2/-3), [`grid_stages`]
//! (singlestep with its stages on the grid, diffusers' singlestep scheduler), [`deis`] and
//! [`unipc`].
//! A new sampler is a new module plus one line in [`Method::family`]. The affine coefficients
//! are formulas in the step's alpha, sigma and lambda values ([`formulas`]), compiled once by
//! the JIT; DEIS integrates its Lagrange basis by quadrature and UniPC solves its small order
//! conditions, both on JIT-evaluated schedule values. Tables are filled once per (schedule,
//! sampler, grid).

mod deis;
mod dual;
pub mod formulas;
mod grid_stages;
pub use grid_stages::grid_orders;
mod multistep;
mod singlestep;
mod unipc;

use serde::{Deserialize, Serialize};

use crate::error::{first_rise, FieldError};
use crate::grid::{
    check_grid, grid_param_sens, make_grid, spacing_timesteps, train_index_times, GridKind,
    TimestepSpacing,
};
use crate::plan::{GridSens, Instr, Operand, Plan, PlanBuilder, Pred, TimeDerivs};
use crate::schedule::{ParamPartials, Schedule, ScheduleValues};
use dual::Dual;
use formulas::{StepVars, VarPartials};

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
        self.family().orders(self, false)
    }

    /// The orders of this method's SDE form (empty: it has none).
    pub fn sde_orders(self) -> &'static [usize] {
        self.family().orders(self, true)
    }

    /// The family that owns this method: the one module that knows its orders, its form and
    /// its steps (the registration of a new sampler is one line here).
    fn family(self) -> &'static dyn Family {
        match self {
            Method::Ddim
            | Method::DpmSolver
            | Method::DpmSolverPp
            | Method::SdeDpmSolver
            | Method::SdeDpmSolverPp => &multistep::Multistep,
            Method::Deis => &deis::Deis,
            Method::Unipc => &unipc::Unipc,
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
    /// The noise (diffusers' "epsilon").
    #[default]
    #[serde(alias = "epsilon")]
    Eps,
    /// The data (diffusers' "sample").
    #[serde(alias = "sample")]
    X0,
    /// v = alpha eps - sigma x0 (diffusers' "v_prediction").
    #[serde(alias = "v_prediction")]
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

/// The variable DEIS's Lagrange basis is a polynomial in: t (tAB, the DEIS paper's default)
/// or log rho = -lambda (diffusers' `solver_type = "logrho"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeisBasis {
    #[default]
    T,
    LogRho,
}

impl DeisBasis {
    fn is_t(&self) -> bool {
        *self == DeisBasis::T
    }
}

/// Where a singlestep DPM-Solver evaluates the model between its steps' ends: at fractions of
/// each step in lambda (the DPM-Solver paper's DPM-Solver-2 and -3), or at the grid's own
/// points (diffusers' `DPMSolverSinglestepScheduler`: a step of order k spans k grid intervals,
/// one evaluation per grid point, the orders 1, 2, .., k repeating).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Stages {
    #[default]
    Lambda,
    Grid,
}

impl Stages {
    fn is_lambda(&self) -> bool {
        *self == Stages::Lambda
    }
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
fn is_false(b: &bool) -> bool {
    !*b
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
    /// DEIS's interpolation variable.
    #[serde(default, skip_serializing_if = "DeisBasis::is_t")]
    pub deis_basis: DeisBasis,
    /// UniPC's corrector (UniC).
    #[serde(default = "d_true")]
    pub corrector: bool,
    /// UniPC: the steps (counted from 0) after which the corrector is skipped, as diffusers'
    /// `disable_corrector`: with k listed, x_{k+1} keeps its predicted value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disable_corrector: Vec<usize>,
    /// Singlestep DPM-Solver: intermediate points in lambda or at the grid's points.
    #[serde(default, skip_serializing_if = "Stages::is_lambda")]
    pub stages: Stages,
    /// Lower the order of the last steps when steps < 15.
    #[serde(default = "d_true")]
    pub lower_order_final: bool,
    /// Return the x0 prediction at the last time (one more model evaluation).
    #[serde(default)]
    pub denoise_to_zero: bool,
    /// `lower_order_final` counts one step beyond the grid's last, as diffusers counts its
    /// step to sigma = 0 (`final_sigmas_type = "zero"`, adeis's `denoise_to_zero`) and its
    /// zero-length step to a repeated sigma_min: the grid's last step but one may then keep
    /// order 2 where without it only order 1 is left.
    #[serde(default, skip_serializing_if = "is_false")]
    pub count_final_step: bool,
    /// The last step is first order whatever the number of steps (diffusers'
    /// `euler_at_final`), not only below 15 steps as `lower_order_final` lowers it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub euler_at_final: bool,
    #[serde(default = "d_rho")]
    pub rho: f64,
    /// Explicit times (noisiest first); implies grid = "explicit".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<Vec<f64>>,
    /// Explicit train indices of a discrete schedule (noisiest first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_indices: Option<Vec<usize>>,
    /// diffusers' train timesteps for `steps` inference steps on a discrete schedule, then
    /// train index 0 (diffusers' multistep schedulers with `final_sigmas_type =
    /// "sigma_min"`): `steps` steps on those steps + 1 points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestep_spacing: Option<TimestepSpacing>,
    /// diffusers' `steps_offset`, added to the "leading" timesteps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_offset: Option<usize>,
    /// The network's time input at each grid point, in place of the schedule's (for a discrete
    /// schedule, the train index): diffusers' Karras, exponential and uniform-lambda sigmas
    /// are solved at their own noise levels but give the model the nearest whole timestep.
    /// One per point of an explicit grid (`times`); fixed numbers, so `wrt = ["times"]` sees
    /// them as constants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_times: Option<Vec<f64>>,
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
            deis_basis: DeisBasis::T,
            corrector: true,
            disable_corrector: Vec::new(),
            stages: Stages::Lambda,
            lower_order_final: true,
            denoise_to_zero: false,
            count_final_step: false,
            euler_at_final: false,
            rho: 7.0,
            times: None,
            train_indices: None,
            timestep_spacing: None,
            steps_offset: None,
            model_times: None,
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
        self.stages == Stages::Lambda
            && self
                .multistep
                .unwrap_or(!matches!(self.method, Method::DpmSolver))
    }

    /// Checks the choices against each other (not against a schedule).
    pub fn validate(&self) -> Result<(), FieldError> {
        let err = |field: &str, message: String| Err(FieldError::new(field, message));
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
            return Err(FieldError::value(
                "order",
                self.order,
                format!(
                    "method `{}`{} has orders {:?}",
                    self.method.name(),
                    if sde { " (SDE)" } else { "" },
                    orders
                ),
            ));
        }
        crate::grid::check_steps("steps", self.steps)?;
        for (key, n) in [
            ("times", self.times.as_ref().map(Vec::len)),
            ("train_indices", self.train_indices.as_ref().map(Vec::len)),
        ] {
            if let Some(n) = n {
                if n > crate::grid::MAX_STEPS + 1 {
                    return Err(FieldError::new(
                        key,
                        format!(
                            "{n} grid points: at most {} ({} steps)",
                            crate::grid::MAX_STEPS + 1,
                            crate::grid::MAX_STEPS
                        ),
                    ));
                }
            }
        }
        if self.steps == 0 && self.times.is_none() && self.train_indices.is_none() {
            return Err(FieldError::value(
                "steps",
                0,
                "a sampler needs at least 1 step",
            ));
        }
        if self.stages == Stages::Grid {
            if !matches!(
                self.method,
                Method::DpmSolver | Method::DpmSolverPp | Method::SdeDpmSolverPp
            ) {
                return err(
                    "stages",
                    format!(
                        "\"grid\" is singlestep DPM-Solver's (dpm_solver, dpm_solver_pp, sde_dpm_solver_pp); method `{}` has no stages",
                        self.method.name()
                    ),
                );
            }
            if self.multistep == Some(true) {
                return err(
                    "stages",
                    "\"grid\" makes DPM-Solver singlestep; remove `multistep = true`".into(),
                );
            }
        }
        if sde && !self.is_multistep() && self.order > 1 && self.stages == Stages::Lambda {
            return err(
                "multistep",
                "the SDE samplers are multistep (or singlestep with stages = \"grid\")".into(),
            );
        }
        let unipc_corrects = self.method == Method::Unipc && self.corrector;
        if !self.disable_corrector.is_empty() && !unipc_corrects {
            return err(
                "disable_corrector",
                "skips UniPC's corrector after the steps listed; it needs method = \"unipc\" with its corrector on".into(),
            );
        }
        if let (false, Some(why)) = (self.is_multistep(), self.method.family().multistep_only()) {
            return err("multistep", why.into());
        }
        if self.deis_basis != DeisBasis::T && self.method != Method::Deis {
            return err(
                "deis_basis",
                format!(
                    "chooses DEIS's interpolation variable; method `{}` is not deis",
                    self.method.name()
                ),
            );
        }
        if self.count_final_step && !self.lower_order_final {
            return err(
                "count_final_step",
                "counts a step for `lower_order_final`, which is off".into(),
            );
        }
        if self.euler_at_final && !self.is_multistep() && self.order > 1 {
            return err(
                "euler_at_final",
                "lowers the last step of a multistep sampler; a singlestep step has its order from its stages".into(),
            );
        }
        if self.timestep_spacing.is_some() && (self.times.is_some() || self.train_indices.is_some())
        {
            return err(
                "timestep_spacing",
                "chooses the grid's train timesteps, so it goes without `times` and `train_indices`"
                    .into(),
            );
        }
        if self.steps_offset.is_some() && self.timestep_spacing != Some(TimestepSpacing::Leading) {
            return err(
                "steps_offset",
                "shifts the timesteps of `timestep_spacing = \"leading\"` (as in diffusers, the other spacings have none)".into(),
            );
        }
        if let Some(m) = &self.model_times {
            if self.times.is_none() && self.train_indices.is_none() {
                return err(
                    "model_times",
                    "gives the network's time at each point of an explicit grid: it needs `times` or `train_indices`".into(),
                );
            }
            if !self.is_multistep() && self.order > 1 && self.stages == Stages::Lambda {
                return err(
                    "model_times",
                    "a singlestep sampler evaluates the model between the grid points too, where no model time is given".into(),
                );
            }
            if let Some(v) = m.iter().find(|v| !v.is_finite()) {
                return Err(FieldError::value("model_times", v, "finite numbers"));
            }
        }
        if self.times.is_some() && self.train_indices.is_some() {
            return err(
                "train_indices",
                "give `times` or `train_indices`, not both".into(),
            );
        }
        Ok(())
    }

    /// The train indices of `timestep_spacing`: diffusers' timesteps for `steps`, then 0.
    fn spacing_indices(
        &self,
        schedule: &Schedule,
        spacing: TimestepSpacing,
    ) -> Result<Vec<usize>, FieldError> {
        let n_train = schedule.def().train_steps().ok_or_else(|| {
            FieldError::new(
                "timestep_spacing",
                format!(
                    "chooses train timesteps, which a discrete schedule has; this one is `{}`",
                    schedule.def().name()
                ),
            )
        })?;
        let offset = self.steps_offset.unwrap_or(0) as i64;
        let mut idx = spacing_timesteps(spacing, self.steps, n_train, n_train, offset);
        if idx.last() != Some(&0) {
            idx.push(0);
        }
        if let Some(k) = idx.iter().find(|k| **k < 0 || **k >= n_train as i64) {
            return Err(FieldError::value(
                "steps_offset",
                offset,
                format!("it puts train timestep {k} outside 0..{n_train}"),
            ));
        }
        if let Some(w) = idx.windows(2).find(|w| w[1] >= w[0]) {
            return Err(FieldError::value(
                "steps",
                self.steps,
                format!(
                    "timestep_spacing \"{}\" repeats train timestep {} at this many steps (it rounds to whole timesteps of {n_train}); use fewer steps",
                    spacing.name(),
                    w[1]
                ),
            ));
        }
        Ok(idx.into_iter().map(|k| k as usize).collect())
    }

    /// Checks that every key the user wrote (`given`, as spelled in the spec) with a value
    /// other than its default applies to the chosen method, order and grid: an option that
    /// would be ignored is an error that says why. (A default written out, as a spec adeis
    /// itself writes has, changes nothing and passes.)
    pub fn check_given(&self, given: &[&str]) -> Result<(), FieldError> {
        let d = SamplerSpec::new(self.method, self.order, self.steps);
        let differs = |key: &str| match key {
            "variant" => self.variant != d.variant,
            "corrector" => self.corrector != d.corrector,
            "solver_type" => self.solver_type != d.solver_type,
            "third_order" => self.third_order != d.third_order,
            "multistep" => self.multistep.is_some(),
            "lower_order_final" => self.lower_order_final != d.lower_order_final,
            "euler_at_final" => self.euler_at_final,
            "count_final_step" => self.count_final_step,
            "stages" => self.stages != d.stages,
            "rho" => self.rho != d.rho,
            // With an explicit grid, a `steps` that agrees with its length says nothing wrong.
            "steps" => {
                let implied = self
                    .times
                    .as_ref()
                    .map(Vec::len)
                    .or(self.train_indices.as_ref().map(Vec::len))
                    .map(|n| n.saturating_sub(1));
                self.steps != d_steps() && Some(self.steps) != implied
            }
            "grid" => self.grid != d.grid,
            _ => false,
        };
        let given: Vec<&str> = given.iter().copied().filter(|k| differs(k)).collect();
        let m = self.method.name();
        let multistep_dpm = matches!(
            self.method,
            Method::DpmSolver | Method::DpmSolverPp | Method::SdeDpmSolver | Method::SdeDpmSolverPp
        );
        let explicit = self.times.is_some() || self.train_indices.is_some();
        for key in given {
            let why: Option<String> = match key {
                "variant" | "corrector" if self.method != Method::Unipc => {
                    Some(format!("`{key}` is UniPC's; method `{m}` has none"))
                }
                "solver_type" if !multistep_dpm => Some(format!(
                    "`solver_type` (midpoint | heun) is the second-order DPM-Solver update's; method `{m}` has none"
                )),
                "solver_type" if self.order < 2 => Some(format!(
                    "`solver_type` chooses the second-order update; order {} has none",
                    self.order
                )),
                "third_order" if !(multistep_dpm && self.order == 3 && self.is_multistep()) => {
                    Some("`third_order` chooses the third-order multistep DPM-Solver coefficients; it needs a dpm_solver method, order = 3, multistep".into())
                }
                "multistep" if !matches!(self.method, Method::DpmSolver | Method::DpmSolverPp) => {
                    Some(format!(
                        "`multistep` chooses between DPM-Solver's multistep and singlestep forms; method `{m}` has one form"
                    ))
                }
                "stages" if self.order < 2 => Some(
                    "`stages` places a singlestep step's intermediate points; order 1 has none".into(),
                ),
                "lower_order_final" | "euler_at_final" | "count_final_step" if self.order < 2 => {
                    Some(format!("`{key}` lowers the order of the last steps; order 1 has nothing to lower"))
                }
                "rho" if self.grid != GridKind::Karras || explicit => {
                    Some("`rho` shapes the karras grid (grid = \"karras\"); this grid has no rho".into())
                }
                "steps" if explicit => Some(
                    "the grid is given as `times` or `train_indices`, whose length fixes the steps; leave `steps` out".into(),
                ),
                "grid" if explicit && self.grid != GridKind::Explicit => Some(format!(
                    "grid = \"{}\" with explicit `times` or `train_indices`: they are the grid (grid = \"explicit\", or leave `grid` out)",
                    self.grid
                )),
                _ => None,
            };
            if let Some(why) = why {
                return Err(FieldError::new(key, why));
            }
        }
        Ok(())
    }

    /// The grid this sampler runs on.
    pub fn grid_for(&self, schedule: &Schedule) -> Result<Vec<f64>, FieldError> {
        let spaced = self
            .timestep_spacing
            .map(|sp| self.spacing_indices(schedule, sp))
            .transpose()?;
        let ts = if let Some(ts) = &self.times {
            ts.clone()
        } else if let Some(idx) = spaced.as_ref().or(self.train_indices.as_ref()) {
            let n_train = schedule.def().train_steps().ok_or_else(|| {
                FieldError::new(
                    "train_indices",
                    format!(
                        "train_indices need a discrete schedule; this one is `{}`",
                        schedule.def().name()
                    ),
                )
            })?;
            if let Some(k) = idx.iter().find(|k| **k >= n_train) {
                return Err(FieldError::new(
                    "train_indices",
                    format!("train index {k} is outside 0..{n_train}"),
                ));
            }
            if let Some(at) = first_rise(idx) {
                return Err(FieldError::new(
                    "train_indices",
                    format!("train indices must decrease strictly (noisiest first): {at}"),
                ));
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
            );
        };
        check_grid(schedule, &ts)?;
        Ok(ts)
    }
}

/// A sampler family: the orders of its methods, the model-output form it works in, and the
/// steps it emits into the plan.
pub(crate) trait Family: Sync {
    /// The orders of `method` for the probability-flow ODE, or for the SDE (empty: no SDE form).
    fn orders(&self, method: Method, sde: bool) -> &'static [usize];
    /// What the family asks the model for: eps or the data prediction.
    fn form(&self, method: Method) -> Pred;
    /// Why the family has no singlestep form, if it has none.
    fn multistep_only(&self) -> Option<&'static str> {
        None
    }
    /// Emits every step of the plan into `run`.
    fn emit(&self, spec: &SamplerSpec, run: &mut PlanRun);
}

/// Orders 1 to 3 for the probability-flow ODE and no SDE form (DEIS, UniPC).
pub(crate) fn ode_only(sde: bool) -> &'static [usize] {
    if sde {
        &[]
    } else {
        &[1, 2, 3]
    }
}

/// An intermediate point of a singlestep step.
pub(crate) struct Stage {
    pub alpha: f64,
    pub sigma: f64,
    /// How its quantities move with its own time.
    pub derivs: TimeDerivs,
    /// How its time moves with the grid times and the parameters.
    pub time_sens: GridSens,
    /// d(alpha, sigma, lambda)/d(parameter) at its (fixed) time.
    pub params: Vec<ParamPartials>,
}

/// A plan under construction: the grid with its schedule values, the builder, the current state
/// and the model outputs so far (what every family's steps read and write).
pub(crate) struct PlanRun<'a> {
    pub schedule: &'a Schedule,
    pub grid: &'a [f64],
    pub vals: Vec<ScheduleValues>,
    /// The number of steps.
    pub n: usize,
    pub sde: bool,
    pub b: PlanBuilder<'a>,
    /// The current state.
    pub x: usize,
    /// (output slot, grid index) of the multistep history, newest last.
    pub outs: Vec<(usize, usize)>,
    order: usize,
    lower_order_final: bool,
    count_final_step: bool,
    euler_at_final: bool,
}

impl PlanRun<'_> {
    /// The order of step i: limited by the history at the start, and near the end by
    /// `lower_order_final` when the grid is short.
    pub fn step_order(&self, i: usize) -> usize {
        let mut o = self.order.min(i + 1);
        // The steps that count for lowering: the grid's, and one more where diffusers counts
        // a step beyond it.
        let n = self.n + usize::from(self.count_final_step);
        if self.lower_order_final && n < 15 {
            o = o.min(n - i);
        }
        if self.euler_at_final && i + 1 == self.n {
            o = 1;
        }
        o.max(1)
    }

    /// The step variables from grid point i to i + 1.
    pub fn vars_at(&self, i: usize) -> StepVars {
        let before = |k: usize| (i >= k).then(|| &self.vals[i - k]);
        StepVars {
            l_p1: before(1).map_or(f64::NAN, |v| v.lambda),
            l_p2: before(2).map_or(f64::NAN, |v| v.lambda),
            a_p1: before(1).map_or(f64::NAN, |v| v.alpha),
            ..StepVars::between(&self.vals[i], &self.vals[i + 1])
        }
    }

    /// The sensitivity to the grid times of a coefficient of step i (from grid point i to
    /// i + 1, with the earlier points of [`PlanRun::vars_at`] and the intermediate points
    /// `stages`), from its partial derivatives in the step variables.
    pub fn step_sens(&self, i: usize, partials: &VarPartials, stages: &[Stage]) -> GridSens {
        // Where each variable of `formulas::VARS` comes from: a grid point (offset from i)
        // or a stage.
        const OFFSETS: [Option<isize>; 13] = [
            Some(0),
            Some(0),
            Some(0),
            Some(1),
            Some(1),
            Some(1),
            Some(-1),
            Some(-2),
            Some(-1),
            None,
            None,
            None,
            None,
        ];
        let at = OFFSETS.map(|o| o.map(|off| (i as isize + off) as usize));
        self.sens_of(partials, &at, stages)
    }

    /// As [`PlanRun::step_sens`] for a coefficient whose variables all sit at grid points:
    /// `at[k]` is the grid point of variable k of `formulas::VARS` (None: not used).
    pub fn grid_point_sens(&self, partials: &VarPartials, at: &[Option<usize>; 13]) -> GridSens {
        self.sens_of(partials, at, &[])
    }

    /// The sensitivity of a coefficient from its partials in the step variables: variable k
    /// is the quantity its name starts with (alpha, sigma, lambda) at grid point `at[k]`, or,
    /// where `at[k]` is None, at stage 0 (a_u1, s_u1) or 1 (a_u2, s_u2).
    fn sens_of(
        &self,
        partials: &VarPartials,
        at: &[Option<usize>; 13],
        stages: &[Stage],
    ) -> GridSens {
        let n_grid = self.b.grid_len();
        let mut sens: GridSens = Vec::new();
        let mut add = |j: usize, d: f64| match sens.iter_mut().find(|(g, _)| *g == j) {
            Some((_, acc)) => *acc += d,
            None => sens.push((j, d)),
        };
        for (k, name) in formulas::VARS.iter().enumerate() {
            let p = partials[k];
            if p == 0.0 {
                continue;
            }
            let q = name.as_bytes()[0];
            // The variable's partials in the parameters at its (fixed) time.
            let pick = |pp: &ParamPartials| match q {
                b'a' => pp.alpha,
                b's' => pp.sigma,
                _ => pp.lambda,
            };
            match at[k] {
                Some(j) => {
                    let d = self.b.grid_derivs(j);
                    let dv = match q {
                        b'a' => d.alpha,
                        b's' => d.sigma,
                        _ => self.vals[j].dlambda_dt,
                    };
                    add(j, p * dv);
                    for (m, pp) in self.b.grid_params(j).iter().enumerate() {
                        add(n_grid + m, p * pick(pp));
                    }
                }
                None => {
                    let st = &stages[(k - 9) / 2];
                    let dv = if q == b'a' {
                        st.derivs.alpha
                    } else {
                        st.derivs.sigma
                    };
                    for (j, w) in &st.time_sens {
                        add(*j, p * dv * w);
                    }
                    for (m, pp) in st.params.iter().enumerate() {
                        add(n_grid + m, p * pick(pp));
                    }
                }
            }
        }
        sens
    }

    /// lambda, alpha and sigma at grid point j as dual numbers in the times of grid points
    /// base.. (slot j - base).
    pub fn dual_vals(&self, j: usize, base: isize) -> (Dual, Dual, Dual) {
        let slot = (j as isize - base) as usize;
        let (v, d) = (&self.vals[j], self.b.grid_derivs(j));
        let (mut l, mut a, mut s) = (
            Dual::seeded(v.lambda, slot, v.dlambda_dt),
            Dual::seeded(v.alpha, slot, d.alpha),
            Dual::seeded(v.sigma, slot, d.sigma),
        );
        for (k, pp) in self.b.grid_params(j).iter().enumerate() {
            (l, a, s) = (
                l.with_param(k, pp.lambda),
                a.with_param(k, pp.alpha),
                s.with_param(k, pp.sigma),
            );
        }
        (l, a, s)
    }

    /// t(lambda) with its derivatives: lambda(t; p) = lambda gives
    /// dt = (d lambda - d lambda/dp dp) / lambda'(t).
    pub fn t_of_lambda_dual(&self, lambda: Dual) -> Dual {
        let t = self.schedule.t_of_lambda(lambda.v);
        let slope = self.schedule.eval(t).dlambda_dt;
        let mut out = Dual {
            v: t,
            d: lambda.d.map(|x| x / slope),
        };
        for (k, pp) in self.schedule.param_partials(t).iter().enumerate() {
            out = out.with_param(k, (lambda.param(k) - pp.lambda) / slope);
        }
        out
    }

    /// The intermediate point at lambda_s + r (lambda_t - lambda_s) of step i: its time, and
    /// how its time and quantities move with t_i and t_{i+1}.
    pub fn stage(&self, i: usize, r: f64) -> (f64, Stage) {
        let (vs, vt) = (&self.vals[i], &self.vals[i + 1]);
        let t = self
            .schedule
            .t_of_lambda(vs.lambda + r * (vt.lambda - vs.lambda));
        let v = self.schedule.eval(t);
        // lambda(t_u) = (1 - r) lambda(t_i) + r lambda(t_{i+1}), differentiated in the two
        // times and, at fixed times, in each parameter.
        let mut time_sens = vec![
            (i, (1.0 - r) * vs.dlambda_dt / v.dlambda_dt),
            (i + 1, r * vt.dlambda_dt / v.dlambda_dt),
        ];
        let params = self.schedule.param_partials(t);
        let n_grid = self.b.grid_len();
        let (ps, pt) = (self.b.grid_params(i), self.b.grid_params(i + 1));
        for (k, pu) in params.iter().enumerate() {
            let dl = (1.0 - r) * ps[k].lambda + r * pt[k].lambda - pu.lambda;
            time_sens.push((n_grid + k, dl / v.dlambda_dt));
        }
        (
            t,
            Stage {
                alpha: v.alpha,
                sigma: v.sigma,
                derivs: TimeDerivs::of(self.schedule, &v),
                time_sens,
                params,
            },
        )
    }

    /// The k-th newest model output.
    pub fn newest(&self, k: usize) -> Operand {
        Operand::Out(self.outs[self.outs.len() - 1 - k].0)
    }
}

fn describe(spec: &SamplerSpec, grid: &[f64]) -> String {
    let mut s = format!("{} order {}", spec.method.name(), spec.order);
    if spec.effective_equation() == Equation::Sde {
        s.push_str(" (SDE)");
    }
    if matches!(
        spec.method,
        Method::DpmSolver | Method::DpmSolverPp | Method::SdeDpmSolverPp
    ) && spec.order > 1
        && !(spec.method == Method::SdeDpmSolverPp && spec.is_multistep())
    {
        s.push_str(if spec.is_multistep() {
            " multistep"
        } else if spec.stages == Stages::Grid {
            " singlestep on the grid's points"
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
pub fn build_plan(schedule: &Schedule, spec: &SamplerSpec) -> Result<Plan, FieldError> {
    spec.validate()?;
    let grid = spec.grid_for(schedule)?;
    let made =
        spec.times.is_none() && spec.train_indices.is_none() && spec.timestep_spacing.is_none();
    if let Some(m) = &spec.model_times {
        if m.len() != grid.len() {
            return Err(FieldError::new(
                "model_times",
                format!(
                    "{} model times for a grid of {} points: give one per grid point",
                    m.len(),
                    grid.len()
                ),
            ));
        }
    }
    if let Some(k) = spec
        .disable_corrector
        .iter()
        .find(|k| **k >= grid.len() - 1)
    {
        return Err(FieldError::value(
            "disable_corrector",
            k,
            format!("steps of this grid: 0 to {}", grid.len() - 2),
        ));
    }
    let steps = grid.len() - 1 + usize::from(spec.count_final_step);
    if spec.stages == Stages::Grid && !spec.lower_order_final && !steps.is_multiple_of(spec.order) {
        return Err(FieldError::new(
            "lower_order_final",
            format!(
                "false with stages = \"grid\": the {steps} steps{} do not split into groups of order {}; use a multiple of {} steps or lower_order_final = true (diffusers switches it on in this case)",
                if spec.count_final_step { " (the final one counted)" } else { "" },
                spec.order,
                spec.order
            ),
        ));
    }
    let sens = made.then(|| grid_param_sens(schedule, &spec.grid, spec.rho, &grid));
    let mut plan = build_plan_on(schedule, spec, grid);
    if let Some(s) = sens {
        plan.grid_param_sens = s;
    }
    check_finite(&plan)?;
    Ok(plan)
}

/// The schedule is validated on a check grid; the plan is checked where it will actually run:
/// every evaluation's time quantities and every coefficient finite, naming the step and its
/// time (a schedule can be NaN on an interval too narrow for the check grid to see).
fn check_finite(plan: &Plan) -> Result<(), FieldError> {
    let mut t_of_step = vec![f64::NAN; plan.grid.len()];
    for ins in &plan.instrs {
        if let Instr::Eval { time, step, .. } = ins {
            if let Some(slot) = t_of_step.get_mut(*step) {
                if slot.is_nan() {
                    *slot = time.t;
                }
            }
            let q = [
                ("alpha", time.alpha),
                ("sigma", time.sigma),
                ("the model time", time.model_t),
            ];
            if let Some((name, v)) = q.iter().find(|(_, v)| !v.is_finite()) {
                return Err(FieldError::new(
                    "times",
                    format!(
                        "the schedule's {name} is {v} at t = {} (step {step}), where the sampler evaluates the model: the schedule is not finite on the grid that runs",
                        time.t
                    ),
                ));
            }
        }
        if let Instr::Combine { terms, step, .. } = ins {
            if let Some((_, c)) = terms.iter().find(|(_, c)| !c.is_finite()) {
                let at = |i: usize| plan.grid.get(i).copied().unwrap_or(f64::NAN);
                return Err(FieldError::new(
                    "times",
                    format!(
                        "a coefficient of step {step} (t = {} -> {}) is {c}: the schedule is not finite on the grid that runs",
                        at(*step),
                        at(step + 1)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Builds the plan of a validated `spec` on a given grid (any direction: a grid from t_min up
/// to t_max runs the sampler backwards, the ODE inversion).
pub fn build_plan_on(schedule: &Schedule, spec: &SamplerSpec, grid: Vec<f64>) -> Plan {
    let family: &dyn Family = if spec.is_multistep() || spec.order == 1 {
        spec.method.family()
    } else if spec.stages == Stages::Grid {
        &grid_stages::GridStages
    } else {
        &singlestep::Singlestep
    };
    let mut run = PlanRun {
        schedule,
        grid: &grid,
        vals: schedule.fill(&grid),
        n: grid.len() - 1,
        sde: spec.effective_equation() == Equation::Sde,
        b: PlanBuilder::new(schedule, &grid),
        x: 0,
        outs: Vec::new(),
        order: spec.order,
        lower_order_final: spec.lower_order_final,
        count_final_step: spec.count_final_step,
        euler_at_final: spec.euler_at_final,
    };
    if let Some(m) = &spec.model_times {
        run.b.set_model_times(m);
    }
    family.emit(spec, &mut run);
    let mut x = run.x;
    let mut b = run.b;
    if spec.denoise_to_zero {
        b.set_step(run.n);
        x = b.denoise_to_zero(x);
    }
    let desc = describe(spec, &grid);
    b.finish(x, grid.clone(), desc)
}

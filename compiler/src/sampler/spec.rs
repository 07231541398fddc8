//! The `[sampler]` table ([`SamplerSpec`]): every key with its default, declared once (the
//! serde defaults below, which [`SamplerSpec::new`] uses too), and the checks that concern
//! every method. A family's own options are checked by the family (`family.rs`), and whether
//! an option applies to a method at all by the registry (`registry.rs`).

use serde::{Deserialize, Serialize};

use super::options::{
    DeisBasis, Equation, Momentum, Prediction, SolverType, Stages, ThirdOrder, UnipcVariant,
};
use super::registry::Method;
use super::tableau::TableauSpec;
use crate::error::{first_rise, FieldError};
use crate::grid::{
    check_grid, make_grid, spacing_timesteps, train_index_times, GridKind, TimestepSpacing,
};
use crate::plan::Pred;
use crate::schedule::Schedule;

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
fn d_coupling() -> f64 {
    super::rex::DEFAULT_COUPLING
}
fn is_default_coupling(z: &f64) -> bool {
    *z == d_coupling()
}
fn is_false(b: &bool) -> bool {
    !*b
}

/// The `[sampler]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerSpec {
    /// The method (a row of the registry).
    pub method: Method,
    /// Its order.
    #[serde(default = "d_order")]
    pub order: usize,
    /// The number of steps of a made grid.
    #[serde(default = "d_steps")]
    pub steps: usize,
    /// How the grid is made.
    #[serde(default = "default_grid")]
    pub grid: GridKind,
    /// ode or sde; absent: sde for the `sde_*` methods, ode otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equation: Option<Equation>,
    /// What the network predicts.
    #[serde(default)]
    pub prediction: Prediction,
    /// Multistep (default for dpm_solver_pp, deis, unipc) or singlestep (default for
    /// dpm_solver, whose orders 2 and 3 are DPM-Solver-2 and -3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multistep: Option<bool>,
    /// DPM-Solver's second-order update.
    #[serde(default)]
    pub solver_type: SolverType,
    /// DPM-Solver's third-order multistep coefficients.
    #[serde(default)]
    pub third_order: ThirdOrder,
    /// UniPC's B(h).
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
    /// The karras grid's rho.
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
    /// Rex's Butcher tableau: a name (euler, midpoint, heun, ralston3, heun3, rk4) or arrays
    /// `{ c, a, b }`; absent: the default tableau of `order`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tableau: Option<TableauSpec>,
    /// Rex's reversible coupling zeta, in (0, 1].
    #[serde(default = "d_coupling", skip_serializing_if = "is_default_coupling")]
    pub coupling: f64,
    /// Rex's Lawson variables: the data form (gamma = alpha/sigma, the default) or the noise
    /// form (chi = sigma/alpha).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<Pred>,
    /// Momentum on a multistep step's combination of model outputs: hb (heavy ball).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<Momentum>,
    /// The momentum's beta in (0, 1] (1: no momentum), with `momentum`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum_beta: Option<f64>,
    /// BDIA's gamma in (0, 1] (default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gamma: Option<f64>,
    /// EDICT's mixing weight p in (0, 1] (default 0.93).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixing: Option<f64>,
}

fn default_grid() -> GridKind {
    GridKind::Logsnr
}

impl SamplerSpec {
    /// `method` at `order` with `steps` steps, every other key at its default.
    pub fn new(method: Method, order: usize, steps: usize) -> SamplerSpec {
        SamplerSpec {
            method,
            order,
            steps,
            grid: default_grid(),
            equation: None,
            prediction: Prediction::default(),
            multistep: None,
            solver_type: SolverType::default(),
            third_order: ThirdOrder::default(),
            variant: UnipcVariant::default(),
            deis_basis: DeisBasis::default(),
            corrector: d_true(),
            disable_corrector: Vec::new(),
            stages: Stages::default(),
            lower_order_final: d_true(),
            denoise_to_zero: false,
            count_final_step: false,
            euler_at_final: false,
            rho: d_rho(),
            times: None,
            train_indices: None,
            timestep_spacing: None,
            steps_offset: None,
            model_times: None,
            tableau: None,
            coupling: d_coupling(),
            form: None,
            momentum: None,
            momentum_beta: None,
            gamma: None,
            mixing: None,
        }
    }

    /// The equation this sampler solves (the `sde_*` methods always solve the SDE).
    pub fn effective_equation(&self) -> Equation {
        if self.method.entry().sde_only {
            return Equation::Sde;
        }
        self.equation.unwrap_or(Equation::Ode)
    }

    /// Whether the sampler steps with the history of earlier outputs (singlestep: with
    /// intermediate points of its own).
    pub fn is_multistep(&self) -> bool {
        self.stages == Stages::Lambda
            && self
                .multistep
                .unwrap_or(self.method.entry().multistep_by_default)
    }

    /// Checks the choices against each other (not against a schedule).
    pub fn validate(&self) -> Result<(), FieldError> {
        let err = |field: &str, message: String| Err(FieldError::new(field, message));
        let sde = self.effective_equation() == Equation::Sde;
        if self.method.entry().sde_only && self.equation == Some(Equation::Ode) {
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
                    "method `{}` has no SDE form; SDE samplers: {}",
                    self.method.name(),
                    super::registry::sde_forms()
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
        // An option owned by some methods' family, set away from its default, must be one
        // this method has (the registry says which); the family then checks its own rules.
        let owned_set = [
            ("stages", self.stages != Stages::default()),
            ("disable_corrector", !self.disable_corrector.is_empty()),
            ("deis_basis", self.deis_basis != DeisBasis::default()),
            ("tableau", self.tableau.is_some()),
            ("coupling", !is_default_coupling(&self.coupling)),
            ("form", self.form.is_some()),
            ("momentum", self.momentum.is_some()),
            ("momentum_beta", self.momentum_beta.is_some()),
            ("gamma", self.gamma.is_some()),
            ("mixing", self.mixing.is_some()),
        ];
        for (key, set) in owned_set {
            if let (true, Some(why)) = (set, self.method.refuses(key)) {
                return err(key, why);
            }
        }
        self.method.family().validate(self)?;
        if let (false, Some(why)) = (self.is_multistep(), self.method.family().multistep_only()) {
            return err("multistep", why.into());
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
        let explicit = self.times.is_some() || self.train_indices.is_some();
        for key in given {
            let owned = self
                .method
                .refuses(key)
                .or_else(|| self.method.family().check_given(self, key));
            let why: Option<String> = owned.or_else(|| match key {
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
            });
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

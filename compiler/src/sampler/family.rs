//! What every sampler family implements ([`Family`]), and the plan under construction that its
//! steps read and write ([`PlanRun`]). A family owns its methods' options: it checks them
//! against each other and the order ([`Family::validate`], [`Family::check_given`]), adds its
//! words to the plan's description and emits the steps. The methods' orders, forms and which
//! options they take are data in the registry (`registry.rs`).

use super::formulas::StepVars;
use super::SamplerSpec;
use crate::error::FieldError;
use crate::plan::{GridSens, Operand, PlanBuilder, TimeDerivs};
use crate::schedule::{ParamPartials, Schedule, ScheduleValues};

/// A sampler family: the steps its methods emit into the plan, and the rules of its own
/// options.
pub(crate) trait Family: Sync {
    /// Why the family has no singlestep form, if it has none.
    fn multistep_only(&self) -> Option<&'static str> {
        None
    }

    /// Checks the family's own options against each other and the rest of the spec (whether
    /// an option applies to the method at all is the registry's, checked before).
    fn validate(&self, _spec: &SamplerSpec) -> Result<(), FieldError> {
        Ok(())
    }

    /// Why the option `key`, given with a value other than its default, does nothing for
    /// this spec (None: it applies).
    fn check_given(&self, _spec: &SamplerSpec, _key: &str) -> Option<String> {
        None
    }

    /// Checks the spec against the grid it will run on (its schedule values, noisiest first).
    fn check_grid(&self, _spec: &SamplerSpec, _vals: &[ScheduleValues]) -> Result<(), FieldError> {
        Ok(())
    }

    /// Whether its steps push their inverses (a `Reversal`): the `reversible` gradient's
    /// samplers.
    fn reversible(&self) -> bool {
        false
    }

    /// Appends the family's own words (its form, its variant) to the plan's description.
    fn describe(&self, _spec: &SamplerSpec, _out: &mut String) {}

    /// Emits every step of the plan into `run`.
    fn emit(&self, spec: &SamplerSpec, run: &mut PlanRun);
}

/// Checks that a reversible sampler's weight `key` is in (0, 1] (each inverse divides by it);
/// `why` says what it is and its usual value.
pub(crate) fn check_weight(key: &'static str, value: f64, why: &str) -> Result<(), FieldError> {
    if value.is_finite() && value > 0.0 && value <= 1.0 {
        return Ok(());
    }
    Err(FieldError::value(key, value, why))
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

impl<'a> PlanRun<'a> {
    /// A plan of `spec` on `grid` with nothing emitted yet: the state is slot 0, x_T.
    pub fn new(schedule: &'a Schedule, spec: &SamplerSpec, grid: &'a [f64], sde: bool) -> Self {
        PlanRun {
            schedule,
            grid,
            vals: schedule.fill(grid),
            n: grid.len() - 1,
            sde,
            b: PlanBuilder::new(schedule, grid),
            x: 0,
            outs: Vec::new(),
            order: spec.order,
            lower_order_final: spec.lower_order_final,
            count_final_step: spec.count_final_step,
            euler_at_final: spec.euler_at_final,
        }
    }
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

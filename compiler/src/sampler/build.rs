//! From a validated `[sampler]` table and a compiled schedule to a filled [`Plan`]: the grid,
//! the family's steps, the final denoising and the check that every number is finite.

use super::family::PlanRun;
use super::options::{Equation, Stages};
use super::SamplerSpec;
use crate::error::FieldError;
use crate::grid::grid_param_sens;
use crate::plan::{Instr, Plan};
use crate::schedule::Schedule;

/// The plan's description: method, order, the equation, the family's own words, the grid.
fn describe(spec: &SamplerSpec, grid: &[f64]) -> String {
    let mut s = format!("{} order {}", spec.method.name(), spec.order);
    if spec.effective_equation() == Equation::Sde {
        s.push_str(" (SDE)");
    }
    spec.method.family().describe(spec, &mut s);
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
    check_schedule_on(schedule, &grid)?;
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
    spec.method
        .family()
        .check_grid(spec, &schedule.fill(&grid))?;
    let sens = made.then(|| grid_param_sens(schedule, &spec.grid, spec.rho, &grid));
    let mut plan = build_plan_on(schedule, spec, grid);
    if let Some(s) = sens {
        plan.grid_param_sens = s;
    }
    check_finite(&plan, schedule, spec)?;
    Ok(plan)
}

/// The schedule's quantities at every grid point, finite before any step is built from them
/// (a schedule can be NaN exactly at a grid time that its check grid does not hit).
fn check_schedule_on(schedule: &Schedule, grid: &[f64]) -> Result<(), FieldError> {
    for (i, &t) in grid.iter().enumerate() {
        if let Some((name, x)) = schedule.eval(t).non_finite() {
            return Err(FieldError::new(
                "times",
                format!(
                    "the schedule's {name} is {x} at grid point [{i}], t = {t}: the schedule is not finite on the grid that runs"
                ),
            ));
        }
    }
    Ok(())
}

/// The schedule is validated on a check grid; the plan is checked where it will actually run:
/// every evaluation's time quantities and every coefficient finite, naming the step and its
/// time (a schedule can be NaN on an interval too narrow for the check grid to see).
fn check_finite(plan: &Plan, schedule: &Schedule, spec: &SamplerSpec) -> Result<(), FieldError> {
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
                let from = plan.grid.get(*step).map(|t| schedule.eval(*t));
                if from.is_some_and(|v| v.is_pure_noise()) {
                    return Err(FieldError::new(
                        "method",
                        format!(
                            "{} order {}: a coefficient of the step from t = {}, where alpha = 0 (pure noise, lambda = -inf), is {c}: this form of the sampler divides by alpha there; from pure noise use a data-form sampler (dpm_solver_pp, sde_dpm_solver_pp, unipc, or rex in its default data form), or a t_range that ends below pure noise",
                            spec.method.name(),
                            spec.order,
                            at(*step)
                        ),
                    ));
                }
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
    let sde = spec.effective_equation() == Equation::Sde;
    let mut run = PlanRun::new(schedule, spec, &grid, sde);
    if let Some(m) = &spec.model_times {
        run.b.set_model_times(m);
    }
    spec.method.family().emit(spec, &mut run);
    let mut x = run.x;
    let mut b = run.b;
    if spec.denoise_to_zero {
        b.set_step(run.n);
        x = b.denoise_to_zero(x);
    }
    let desc = describe(spec, &grid);
    b.finish(x, grid.clone(), desc)
}

//! `DPMSolverSinglestepScheduler`: singlestep DPM-Solver whose intermediate points are the
//! grid's timesteps (`stages = "grid"`), on "linspace" timesteps (it has no spacing key).

use super::keys::Config;
use super::sigmas::{clipped_count, SigmaMode};
use super::{dpm_solver_type, final_zero, solver_order, Common, Read, SchedulerClass};
use adeis_compiler::sampler::{grid_orders, Stages};
use adeis_compiler::{FieldError, Method, SamplerSpec};

/// The `DPMSolverSinglestepScheduler` reader.
pub(crate) struct DpmSinglestep;

impl SchedulerClass for DpmSinglestep {
    fn sigma_modes(&self) -> &'static [SigmaMode] {
        &[SigmaMode::Karras, SigmaMode::Exponential]
    }

    fn spacings(&self) -> Option<&'static [&'static str]> {
        // Its timesteps are "linspace"'s; a `timestep_spacing` in its config is a key it does
        // not read, and an error here.
        None
    }

    fn read(
        &self,
        c: &mut Config,
        common: &Common,
        sampler: &mut SamplerSpec,
        notes: &mut Vec<String>,
    ) -> Result<Read, FieldError> {
        let steps = common.steps;
        let order = solver_order(c, sampler, 2, false)?;
        let algorithm = c.choice(
            "algorithm_type",
            &["dpmsolver++", "dpmsolver", "sde-dpmsolver++"],
        )?;
        sampler.method = match algorithm {
            "dpmsolver++" => Method::DpmSolverPp,
            "dpmsolver" => Method::DpmSolver,
            _ => Method::SdeDpmSolverPp,
        };
        sampler.stages = Stages::Grid;
        sampler.solver_type = dpm_solver_type(c)?;
        if algorithm == "sde-dpmsolver++" && order == 3 {
            return Err(FieldError::value(
                "solver_order",
                3,
                "1 or 2 with sde-dpmsolver++ (adeis's SDE-DPM-Solver++ has orders 1 and 2)",
            ));
        }
        let final_zero = final_zero(c)?;
        if final_zero && algorithm == "dpmsolver" {
            return Err(FieldError::value(
                "final_sigmas_type",
                "\"zero\"",
                "\"sigma_min\" with algorithm_type \"dpmsolver\" (diffusers refuses this pair too)",
            ));
        }
        if common.thresholding.is_some() && algorithm == "dpmsolver" {
            // Its convert_model_output indexes its alpha table with the timestep it is not
            // given (None), which takes the whole table.
            return Err(FieldError::value(
                "thresholding",
                true,
                "not with algorithm_type \"dpmsolver\": diffusers' singlestep scheduler thresholds that pair with its whole alpha table (the timestep is missing there), so there is no diffusers result to reproduce; use \"dpmsolver++\"",
            ));
        }
        // diffusers switches lower_order_final on when the steps do not split into whole
        // groups and when the last step goes to sigma = 0.
        if !sampler.lower_order_final && (final_zero || !steps.is_multiple_of(order)) {
            sampler.lower_order_final = true;
            notes.push(format!(
                "lower_order_final: diffusers switches it on {}, and so does adeis",
                if final_zero {
                    "with final_sigmas_type \"zero\""
                } else {
                    "when the steps are not a multiple of solver_order"
                }
            ));
        }
        if order > 1 {
            notes.push(format!(
                "DPMSolverSinglestepScheduler: singlestep steps whose intermediate points are the grid's timesteps (stages = \"grid\"), orders {:?}; adeis's own DPM-Solver-2/-3 place them at fractions of each step in lambda (stages = \"lambda\")",
                grid_orders(steps, order, sampler.lower_order_final, false)
            ));
        }
        let clip = c.f64("lambda_min_clipped")?.unwrap_or(f64::NEG_INFINITY);
        let last = common.n_train - clipped_count(&common.schedule, clip)?;
        Ok(Read::Multistep { final_zero, last })
    }
}

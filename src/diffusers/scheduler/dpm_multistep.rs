//! `DPMSolverMultistepScheduler`: DPM-Solver and DPM-Solver++ 1-3 (multistep) and their SDE
//! forms, with diffusers' third-order coefficients, `euler_at_final` and `lambda_min_clipped`.

use super::keys::Config;
use super::sigmas::{clipped_count, SigmaMode};
use super::{dpm_solver_type, final_zero, solver_order, Common, Read, SchedulerClass};
use adeis_compiler::sampler::ThirdOrder;
use adeis_compiler::{FieldError, Method, SamplerSpec};

/// The `DPMSolverMultistepScheduler` reader.
pub(crate) struct DpmMultistep;

impl SchedulerClass for DpmMultistep {
    fn reads_flow_sigmas(&self) -> bool {
        true
    }

    fn sigma_modes(&self) -> &'static [SigmaMode] {
        &[
            SigmaMode::Karras,
            SigmaMode::Exponential,
            SigmaMode::UniformLambda,
        ]
    }

    fn read(
        &self,
        c: &mut Config,
        common: &Common,
        sampler: &mut SamplerSpec,
        notes: &mut Vec<String>,
    ) -> Result<Read, FieldError> {
        let order = solver_order(c, sampler, 2, true)?;
        let algorithm = c.choice(
            "algorithm_type",
            &[
                "dpmsolver++",
                "dpmsolver",
                "sde-dpmsolver++",
                "sde-dpmsolver",
            ],
        )?;
        sampler.method = match algorithm {
            "dpmsolver++" => Method::DpmSolverPp,
            "dpmsolver" => Method::DpmSolver,
            "sde-dpmsolver++" => Method::SdeDpmSolverPp,
            _ => Method::SdeDpmSolver,
        };
        sampler.multistep = Some(true);
        sampler.solver_type = dpm_solver_type(c)?;
        if order == 3 {
            sampler.third_order = ThirdOrder::Reference;
            notes.push("solver_order = 3: diffusers' third-order coefficients are the DPM-Solver reference code's (third_order = \"reference\"); adeis's own, from the Taylor expansion, are third_order = \"taylor\" in an adeis spec".into());
        }
        sampler.euler_at_final = c.bool("euler_at_final")?.unwrap_or(false);
        let final_zero = final_zero(c)?;
        let clip = c.f64("lambda_min_clipped")?.unwrap_or(f64::NEG_INFINITY);
        let last = common.n_train - clipped_count(&common.schedule, clip)?;
        Ok(Read::Multistep { final_zero, last })
    }
}

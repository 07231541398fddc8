//! `UniPCMultistepScheduler`: UniPC bh1/bh2 in the data form, with `disable_corrector`.

use serde_json::Value;

use super::keys::{describe, Config};
use super::sigmas::SigmaMode;
use super::{final_zero, solver_order, Common, Read, SchedulerClass};
use adeis_compiler::sampler::UnipcVariant;
use adeis_compiler::{FieldError, Method, SamplerSpec};

/// The `UniPCMultistepScheduler` reader.
pub(crate) struct Unipc;

impl SchedulerClass for Unipc {
    fn sigma_modes(&self) -> &'static [SigmaMode] {
        &[SigmaMode::Karras]
    }

    fn read(
        &self,
        c: &mut Config,
        common: &Common,
        sampler: &mut SamplerSpec,
        notes: &mut Vec<String>,
    ) -> Result<Read, FieldError> {
        let order = solver_order(c, sampler, 2, true)?;
        sampler.method = Method::Unipc;
        sampler.variant = match c.choice("solver_type", &["bh2", "bh1"])? {
            "bh2" => UnipcVariant::Bh2,
            _ => UnipcVariant::Bh1,
        };
        c.only(
            "predict_x0",
            Value::Bool(true),
            "adeis's UniPC works with the data prediction (predict_x0 = true)",
        )?;
        if let Some(v) = c.take("disable_corrector") {
            let steps_listed: Vec<usize> = serde_json::from_value(v.clone()).map_err(|_| {
                FieldError::value(
                    "disable_corrector",
                    describe(&v),
                    "a list of step indices (whole numbers from 0)",
                )
            })?;
            if !steps_listed.is_empty() {
                notes.push(format!(
                    "disable_corrector: no corrector after steps {steps_listed:?} (disable_corrector in the adeis spec)"
                ));
            }
            sampler.disable_corrector = steps_listed;
        }
        let final_zero = final_zero(c)?;
        // diffusers' UniPC lowers the final orders at any number of steps.
        if sampler.lower_order_final && common.steps >= 15 && order == 3 {
            return Err(FieldError::value(
                "solver_order",
                3,
                "with lower_order_final and 15 or more steps diffusers' UniPC lowers its last steps where adeis lowers them only below 15 steps; use solver_order 2 or fewer steps",
            ));
        }
        Ok(Read::Multistep {
            final_zero,
            last: common.n_train,
        })
    }
}

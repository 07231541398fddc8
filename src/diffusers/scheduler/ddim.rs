//! `DDIMScheduler`: diffusers' DDIM on its own timesteps (N of N spaced points), ending at
//! alpha = 1 (`set_alpha_to_one`, adeis's `denoise_to_zero`) or at the first train timestep.

use super::keys::Config;
use super::{ddim_timesteps, Common, Read, SchedulerClass};
use adeis_compiler::{FieldError, SamplerSpec};

/// The `DDIMScheduler` reader.
pub(crate) struct Ddim;

impl SchedulerClass for Ddim {
    fn refuses_thresholding(&self) -> Option<&'static str> {
        Some("diffusers' DDIM thresholds its x0 but steps with the network's own eps, a step adeis's samplers (one prediction per evaluation) do not take; the DPM-Solver, DEIS and UniPC schedulers' thresholding is read")
    }

    fn spacings(&self) -> Option<&'static [&'static str]> {
        // diffusers' default spacing is "leading" for DDIM.
        Some(&["leading", "linspace", "trailing"])
    }

    fn read(
        &self,
        c: &mut Config,
        common: &Common,
        sampler: &mut SamplerSpec,
        notes: &mut Vec<String>,
    ) -> Result<Read, FieldError> {
        let (steps, n_train, spacing) = (common.steps, common.n_train, common.spacing);
        if c.bool("clip_sample")?.unwrap_or(true) {
            return Err(FieldError::value(
                "clip_sample",
                true,
                "adeis does not clip the data prediction; set `clip_sample` to false (diffusers' default is true; Stable Diffusion's configs set it false)",
            ));
        }
        c.ignore(&["clip_sample_range"]);
        let set_alpha_to_one = c.bool("set_alpha_to_one")?.unwrap_or(true);
        let timesteps = ddim_timesteps(spacing, steps, n_train, common.offset);
        let ratio = (n_train / steps) as i64;
        // diffusers' DDIM steps from t to t - num_train_timesteps // steps, which is the
        // next timestep only for some spacings; adeis runs the chain of timesteps.
        if let Some(w) = timesteps.windows(2).find(|w| w[0] - ratio != w[1]) {
            return Err(FieldError::value(
                "timestep_spacing",
                format!("\"{}\"", spacing.name()),
                format!(
                    "with {steps} steps diffusers' DDIM steps from timestep {} to {} ({} - {n_train} // {steps}) and then evaluates the model at {}, which is not a chain of states adeis can run; use \"leading\" or \"trailing\" with a step count that divides {n_train}",
                    w[0],
                    w[0] - ratio,
                    w[0],
                    w[1]
                ),
            ));
        }
        let mut indices = timesteps.clone();
        let last = timesteps[timesteps.len() - 1] - ratio;
        if last >= 0 {
            indices.push(last);
        } else if set_alpha_to_one {
            sampler.denoise_to_zero = true;
            notes.push("set_alpha_to_one: the last step goes to alpha = 1, the data prediction (denoise_to_zero)".into());
        } else if timesteps[timesteps.len() - 1] != 0 {
            indices.push(0);
        }
        Ok(Read::Grid { timesteps, indices })
    }
}

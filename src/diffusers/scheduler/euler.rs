//! `EulerDiscreteScheduler` (Stable Diffusion XL's default): Euler's method on the
//! probability-flow ODE in diffusers' sigma = sqrt((1 - alphas_cumprod) / alphas_cumprod), on
//! the sample scaled by sqrt(sigma^2 + 1). In adeis's terms each step is DDIM's: x / alpha moves
//! by (sigma' - sigma) eps, which is DDIM's update of x, for every prediction type. What is its
//! own is the grid: "linspace" timesteps are fractional (np.linspace over 0..T-1, not rounded),
//! each with its sigma interpolated linearly between the train timesteps' sigmas, and the
//! network is told the fractional timestep; the last step goes to sigma = 0 (the data
//! prediction, `denoise_to_zero`) or to the first train timestep.

use super::keys::Config;
use super::sigmas::compiled;
use super::{check_timesteps, ddim_timesteps, final_zero, Common, Read, SchedulerClass};
use adeis_compiler::grid::{numpy_linspace, TimestepSpacing};
use adeis_compiler::{FieldError, Method, SamplerSpec};

/// The `EulerDiscreteScheduler` reader.
pub(crate) struct EulerDiscrete;

impl SchedulerClass for EulerDiscrete {
    fn read(
        &self,
        c: &mut Config,
        common: &Common,
        sampler: &mut SamplerSpec,
        notes: &mut Vec<String>,
    ) -> Result<Read, FieldError> {
        let (steps, n_train) = (common.steps, common.n_train);
        c.choice("interpolation_type", &["linear"])?;
        c.choice("timestep_type", &["discrete"])?;
        let final_zero = final_zero(c)?;
        sampler.method = Method::Ddim;
        sampler.order = 1;
        let timesteps: Vec<f64> = match common.spacing {
            TimestepSpacing::Linspace => {
                let mut t = numpy_linspace(0.0, n_train as f64 - 1.0, steps);
                t.reverse();
                t
            }
            spacing => ddim_timesteps(spacing, steps, n_train, common.offset)
                .into_iter()
                .map(|k| k as f64)
                .collect(),
        };
        check_timesteps(&timesteps, n_train, (common.offset, steps), "")?;
        // diffusers' sigma table and its linear interpolation (np.interp) at each timestep;
        // adeis's discrete schedule puts train timestep k at t = (k + 1) / T, and the grid's
        // times are where its e^{-lambda} is each sigma.
        let s = compiled(&common.schedule)?;
        let table: Vec<f64> = (0..n_train)
            .map(|k| (-s.lambda((k + 1) as f64 / n_train as f64)).exp())
            .collect();
        let sigma_at = |k: f64| {
            let lo = (k.floor() as usize).min(n_train - 1);
            let hi = (lo + 1).min(n_train - 1);
            let w = k - lo as f64;
            table[lo] + w * (table[hi] - table[lo])
        };
        let mut times: Vec<f64> = timesteps
            .iter()
            .map(|&k| s.t_of_lambda(-sigma_at(k).ln()))
            .collect();
        let mut model_times = timesteps.clone();
        if final_zero {
            sampler.denoise_to_zero = true;
            notes.push("final_sigmas_type = \"zero\": the last step goes to sigma = 0, the data prediction of the last evaluation (denoise_to_zero)".into());
        } else if timesteps.last() == Some(&0.0) {
            // The final sigma_min repeats the last sigma: diffusers' last step has length zero
            // and, first order, leaves the sample as it is.
            notes.push("final_sigmas_type = \"sigma_min\" repeats the last sigma (timestep 0): diffusers' zero-length last step, which leaves the sample as it is, is left out".into());
        } else {
            times.push(s.t_of_lambda(-table[0].ln()));
            model_times.push(0.0);
        }
        if !final_zero {
            notes.push(format!(
                "final_sigmas_type = \"sigma_min\": diffusers returns its scaled sample x / alpha there, adeis's sample times sqrt(1 + sigma_min^2) = {:.8}",
                (1.0 + table[0].powi(2)).sqrt()
            ));
        }
        notes.push("each Euler step (on x / alpha, in sigma) is DDIM's update of x: method = \"ddim\" on diffusers' sigmas, the network given diffusers' timesteps (model_times); s_churn, a step() argument, is taken at its default 0".into());
        if common.spacing != TimestepSpacing::Leading {
            notes.push(format!(
                "diffusers starts this spacing from x_T * init_noise_sigma = x_T * sigma_max (not sqrt(sigma_max^2 + 1)): to reproduce it, start adeis from x_T times sqrt(1 - alphas_cumprod[{}]) = {:.8}",
                n_train - 1,
                table[n_train - 1] / (1.0 + table[n_train - 1].powi(2)).sqrt()
            ));
        }
        Ok(Read::Times {
            timesteps,
            times,
            model_times,
        })
    }
}

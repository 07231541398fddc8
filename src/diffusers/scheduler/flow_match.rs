//! `FlowMatchEulerDiscreteScheduler` (Stable Diffusion 3, FLUX and the other flow-matching
//! pipelines): Euler's method on x_s = (1 - s) x_0 + s eps in the noise level s, from s = 1
//! (pure noise) to 0, the network predicting the velocity eps - x_0. In adeis's terms that is
//! the `flow` schedule (alpha = 1 - s, sigma = s) and DPM-Solver++ of order 1 (DDIM in its data
//! form): x_t = (s_t / s_s) x_s + (alpha_t - alpha_s s_t / s_s) x0 with x0 = x_s - s_s u is
//! x_s + (s_t - s_s) u, diffusers' step, and it starts at s = 1 exactly, where the noise form
//! would divide by alpha = 0. The last step to s = 0 is the data prediction
//! (`denoise_to_zero`).
//!
//! diffusers shifts its noise levels, and adeis runs them as given: the schedule's own shift
//! is left at 1 (t = s), the grid is diffusers' list of sigmas, computed here as
//! `set_timesteps` computes it (in float64: diffusers' float32 rounding is its own), and the
//! network is told 1000 s as diffusers tells it. The static shift is applied twice for a
//! config without dynamic shifting, once in `__init__` to sigma_min and once to the spaced
//! sigmas, as diffusers does.

use super::keys::Config;
use super::{Common, Read, SchedulerClass, Translated};
use adeis_compiler::grid::{numpy_linspace, GridKind};
use adeis_compiler::spec::ScheduleKind;
use adeis_compiler::{FieldError, Method, Prediction, SamplerSpec, ScheduleSpec, Spec};

/// What a flow-matching pipeline gives `set_timesteps` beside the steps: dynamic shifting's mu,
/// or the image's token count it is computed from.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FlowShiftInputs {
    /// `mu` (`--mu`).
    pub mu: Option<f64>,
    /// The image's sequence length (`--image-seq-len`): latent height x width / patch^2.
    pub image_seq_len: Option<usize>,
}

/// The `FlowMatchEulerDiscreteScheduler` reader.
pub(crate) struct FlowMatchEuler;

impl SchedulerClass for FlowMatchEuler {
    fn read(
        &self,
        _c: &mut Config,
        _common: &Common,
        _sampler: &mut SamplerSpec,
        _notes: &mut Vec<String>,
    ) -> Result<Read, FieldError> {
        unreachable!("a flow-matching config is translated whole (translate_whole)")
    }

    fn translate_whole(
        &self,
        c: &mut Config,
        steps: usize,
        inputs: &FlowShiftInputs,
    ) -> Option<Result<Translated, FieldError>> {
        Some(translate(c, steps, inputs))
    }
}

/// Dynamic shifting's mu: given (`--mu`), or from the image's sequence length as diffusers'
/// flow pipelines compute it (`calculate_shift`: linear between `shifts` at the sequence
/// lengths `lens`).
pub(crate) fn dynamic_mu(
    inputs: &FlowShiftInputs,
    shifts: [f64; 2],
    lens: [f64; 2],
) -> Result<f64, FieldError> {
    let mu = match (inputs.mu, inputs.image_seq_len) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                "mu",
                "give --mu or --image-seq-len, not both: the pipeline computes mu from the sequence length",
            ))
        }
        (Some(mu), None) => mu,
        (None, Some(len)) => {
            let m = (shifts[1] - shifts[0]) / (lens[1] - lens[0]);
            let b = shifts[0] - m * lens[0];
            len as f64 * m + b
        }
        (None, None) => {
            return Err(FieldError::new(
                "use_dynamic_shifting",
                "true: the shift depends on the image, so give --mu M or --image-seq-len L (latent height x width / patch size^2; SD3 at 1024x1024: 4096)",
            ))
        }
    };
    if !mu.is_finite() {
        return Err(FieldError::value("mu", mu, "a finite number"));
    }
    Ok(mu)
}

/// numpy's float64 `1 / t - 1` shifts: exponential e^mu / (e^mu + (1/t - 1)), linear
/// mu / (mu + (1/t - 1)), diffusers' `time_shift` with sigma = 1.
fn time_shift(exponential: bool, mu: f64, t: f64) -> f64 {
    let m = if exponential { mu.exp() } else { mu };
    m / (m + (1.0 / t - 1.0))
}

fn translate(
    c: &mut Config,
    steps: usize,
    inputs: &FlowShiftInputs,
) -> Result<Translated, FieldError> {
    let mut notes = Vec::new();
    let n_train = super::train_timesteps(c)?;
    let shift = c.f64("shift")?.unwrap_or(1.0);
    if !(shift > 0.0 && shift.is_finite()) {
        return Err(FieldError::value(
            "shift",
            shift,
            "a finite number > 0 (1: no shift; SD3 uses 3)",
        ));
    }
    let dynamic = c.bool("use_dynamic_shifting")?.unwrap_or(false);
    let base_shift = c.f64("base_shift")?.unwrap_or(0.5);
    let max_shift = c.f64("max_shift")?.unwrap_or(1.15);
    let base_len = c.usize("base_image_seq_len")?.unwrap_or(256) as f64;
    let max_len = c.usize("max_image_seq_len")?.unwrap_or(4096) as f64;
    let exponential = c.choice("time_shift_type", &["exponential", "linear"])? == "exponential";
    let shift_terminal = c.f64("shift_terminal")?;
    for (key, why) in [
        (
            "invert_sigmas",
            "adeis samples from noise (s = 1) to data (s = 0); inverted sigmas run the other way",
        ),
        (
            "stochastic_sampling",
            "its step replaces all the noise at every step ((1 - s') x0 + s' z), which is no sampler adeis has (sde_dpm_solver_pp keeps part of it)",
        ),
        (
            "use_beta_sigmas",
            "beta sigmas (scipy's beta quantiles) are not read from scheduler configs yet",
        ),
    ] {
        c.only(key, serde_json::Value::Bool(false), why)?;
    }
    let karras = c.bool("use_karras_sigmas")?.unwrap_or(false);
    let exponential_sigmas = c.bool("use_exponential_sigmas")?.unwrap_or(false);
    if karras && exponential_sigmas {
        return Err(FieldError::value(
            "use_exponential_sigmas",
            true,
            "give one sigma spacing, not `use_karras_sigmas` and `use_exponential_sigmas`",
        ));
    }
    c.reject_unknown()?;
    if steps < 2 {
        return Err(FieldError::value(
            "steps",
            steps,
            "one step from s = 1 to 0 is the data prediction at pure noise alone; adeis runs at least 2 steps here",
        ));
    }

    let n = n_train as f64;
    let static_shift = |s: f64| shift * s / (1.0 + (shift - 1.0) * s);
    // __init__: sigmas = linspace(1, N, N)[::-1] / N, shifted unless dynamic.
    let init = |s: f64| if dynamic { s } else { static_shift(s) };
    // The first of linspace(1, N, N)[::-1] / N is N / N = 1 exactly.
    let (sigma_max, sigma_min) = (init(1.0), init(1.0 / n));
    // set_timesteps: N points spaced in timestep between sigma_max N and sigma_min N.
    let mut sigmas: Vec<f64> = numpy_linspace(sigma_max * n, sigma_min * n, steps)
        .into_iter()
        .map(|t| t / n)
        .collect();
    if dynamic {
        let mu = dynamic_mu(inputs, [base_shift, max_shift], [base_len, max_len])?;
        sigmas = sigmas
            .into_iter()
            .map(|s| time_shift(exponential, mu, s))
            .collect();
        notes.push(format!(
            "use_dynamic_shifting: mu = {mu} ({} time shift)",
            if exponential { "exponential" } else { "linear" }
        ));
    } else {
        sigmas = sigmas.into_iter().map(static_shift).collect();
        if inputs.mu.is_some() || inputs.image_seq_len.is_some() {
            return Err(FieldError::new(
                "use_dynamic_shifting",
                "false: --mu and --image-seq-len set dynamic shifting, which this config does not use",
            ));
        }
    }
    if let Some(end) = shift_terminal.filter(|v| *v != 0.0) {
        if !(end > 0.0 && end < 1.0) {
            return Err(FieldError::value(
                "shift_terminal",
                end,
                "a number in (0, 1)",
            ));
        }
        // diffusers' stretch_shift_to_terminal: 1 - s scaled so that the last sigma is `end`.
        let scale = (1.0 - sigmas[steps - 1]) / (1.0 - end);
        sigmas = sigmas
            .into_iter()
            .map(|s| 1.0 - (1.0 - s) / scale)
            .collect();
        notes.push(format!(
            "shift_terminal: the sigmas stretched to end at {end}"
        ));
    }
    let (first, last) = (sigmas[0], sigmas[steps - 1]);
    if karras {
        let rho = 7.0;
        let (lo, hi) = (last.powf(1.0 / rho), first.powf(1.0 / rho));
        sigmas = numpy_linspace(0.0, 1.0, steps)
            .into_iter()
            .map(|r| (hi + r * (lo - hi)).powf(rho))
            .collect();
        notes.push(
            "use_karras_sigmas: Karras's rho = 7 spacing between the shifted sigmas' ends".into(),
        );
    } else if exponential_sigmas {
        sigmas = numpy_linspace(first.ln(), last.ln(), steps)
            .into_iter()
            .map(f64::exp)
            .collect();
        notes.push("use_exponential_sigmas: spaced uniformly in log sigma between the shifted sigmas' ends".into());
    }
    if let Some(w) = sigmas.windows(2).find(|w| w[1] >= w[0] || w[1].is_nan()) {
        return Err(FieldError::value(
            "steps",
            steps,
            format!(
                "diffusers' sigmas for it do not decrease ({} then {}): fewer steps, or another shift",
                w[0], w[1]
            ),
        ));
    }
    // The flow's t is in (0, 1]; a first sigma a rounding above 1 is 1.
    if sigmas[0] > 1.0 && sigmas[0] - 1.0 < 1e-12 {
        sigmas[0] = 1.0;
    }
    if !(sigmas[0] <= 1.0 && sigmas[steps - 1] > 0.0) {
        return Err(FieldError::value(
            "steps",
            steps,
            format!(
                "diffusers' sigmas run from {} to {}, outside the flow's (0, 1]",
                sigmas[0],
                sigmas[steps - 1]
            ),
        ));
    }

    let mut schedule = ScheduleSpec::of_kind(ScheduleKind::Flow);
    schedule.num_train_timesteps = Some(n_train);
    schedule.t_range = Some([sigmas[steps - 1].min(1e-3), 1.0]);
    let mut sampler = SamplerSpec::new(Method::DpmSolverPp, 1, steps);
    sampler.prediction = Prediction::Flow;
    sampler.grid = GridKind::Explicit;
    sampler.steps = steps - 1;
    sampler.denoise_to_zero = true;
    let timesteps: Vec<f64> = sigmas.iter().map(|s| s * n).collect();
    sampler.times = Some(sigmas);
    notes.insert(
        0,
        format!(
            "FlowMatchEulerDiscreteScheduler with {steps} steps: the flow schedule (alpha = 1 - s, sigma = s, the network told {n_train} s), DPM-Solver++ of order 1 on diffusers' sigmas (its Euler step in the velocity), the last step to s = 0 the data prediction (denoise_to_zero)"
        ),
    );
    if !dynamic && shift != 1.0 {
        notes.push(format!(
            "shift = {shift}: applied as diffusers applies it, to sigma_min in __init__ and again to the spaced sigmas; a spec file's `kind = \"flow\"` with `shift` shifts its own t once"
        ));
    }
    Ok(Translated {
        spec: Spec {
            schedule: Some(schedule),
            sampler: Some(sampler),
            gradient: None,
            guidance: None,
            thresholding: None,
        },
        timesteps,
        notes,
    })
}

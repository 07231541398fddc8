//! diffusers' sigma spacings (Karras, exponential, uniform in lambda), solved at their own
//! noise levels with the model told the nearest whole timestep, and `lambda_min_clipped`.

use adeis_compiler::grid::numpy_linspace;
use adeis_compiler::{FieldError, ScheduleSpec};

/// diffusers' sigma spacings (its sigma is adeis's e^{-lambda}).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SigmaMode {
    /// Karras et al.'s rho = 7 spacing between the table's smallest and largest sigma.
    Karras,
    /// Uniform in log sigma (`use_exponential_sigmas`): timesteps truncated, not rounded.
    Exponential,
    /// Uniform in lambda (`use_lu_lambdas`, Lu et al.): timesteps rounded.
    UniformLambda,
}

impl SigmaMode {
    /// How the notes name it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            SigmaMode::Karras => "Karras",
            SigmaMode::Exponential => "exponential",
            SigmaMode::UniformLambda => "uniform-lambda",
        }
    }
}

/// The grid of a sigma spacing: adeis times where the schedule's e^{-lambda} is each sigma,
/// the model times diffusers gives the network there, and those timesteps.
pub(crate) struct SigmaGrid {
    pub times: Vec<f64>,
    pub model_times: Vec<f64>,
    pub timesteps: Vec<i64>,
    /// The last sigma repeats as the final one: a zero-length step adeis leaves out.
    pub repeated: bool,
}

/// The schedule of a config, compiled (its errors name `beta_schedule`).
pub(crate) fn compiled(schedule: &ScheduleSpec) -> Result<adeis_compiler::Schedule, FieldError> {
    let def = schedule
        .to_def()
        .map_err(|e| FieldError::new("beta_schedule", e.to_string()))?;
    def.compile()
        .map_err(|e| FieldError::new("beta_schedule", e.to_string()))
}

/// diffusers' `set_timesteps` for a sigma spacing: the sigmas from the table's largest to its
/// smallest, each sigma's fractional timestep by `_sigma_to_t` (linear in log sigma between
/// train timesteps), rounded (truncated for exponential sigmas and the cosine schedule, as
/// diffusers casts them). A final sigma_min equal to the last sigma is a step of length zero,
/// which adeis leaves out.
pub(crate) fn sigma_grid(
    schedule: &ScheduleSpec,
    mode: SigmaMode,
    steps: usize,
    cosine: bool,
    final_zero: bool,
) -> Result<SigmaGrid, FieldError> {
    let s = compiled(schedule)?;
    let n = s.def().train_steps().unwrap_or(0);
    let table: Vec<f64> = (0..n)
        .map(|k| (-s.lambda((k + 1) as f64 / n as f64)).exp())
        .collect();
    let log_table: Vec<f64> = table.iter().map(|v| v.ln()).collect();
    let (lo, hi) = (table[0], table[n - 1]);
    let ramp = numpy_linspace(0.0, 1.0, steps);
    let sigmas: Vec<f64> = match mode {
        SigmaMode::Karras => {
            let rho = 7.0;
            let (a, b) = (hi.powf(1.0 / rho), lo.powf(1.0 / rho));
            ramp.iter().map(|r| (a + r * (b - a)).powf(rho)).collect()
        }
        SigmaMode::Exponential => numpy_linspace(hi.ln(), lo.ln(), steps)
            .into_iter()
            .map(f64::exp)
            .collect(),
        SigmaMode::UniformLambda => {
            let (a, b) = (log_table[n - 1], log_table[0]);
            ramp.iter().map(|r| (a + r * (b - a)).exp()).collect()
        }
    };
    let to_t = |sigma: f64| {
        let ls = sigma.max(1e-10).ln();
        // numpy: the last index whose log sigma is at most ls, clipped to n - 2.
        let low = log_table
            .iter()
            .rposition(|v| ls - v >= 0.0)
            .unwrap_or(0)
            .min(n - 2);
        let (a, b) = (log_table[low], log_table[low + 1]);
        let w = ((a - ls) / (a - b)).clamp(0.0, 1.0);
        (1.0 - w) * low as f64 + w * (low + 1) as f64
    };
    let truncate = mode == SigmaMode::Exponential || cosine;
    let timesteps: Vec<i64> = sigmas
        .iter()
        .map(|&v| {
            let t = to_t(v);
            if truncate {
                t as i64
            } else {
                t.round_ties_even() as i64
            }
        })
        .collect();
    let mut times: Vec<f64> = sigmas.iter().map(|v| s.t_of_lambda(-v.ln())).collect();
    let mut model_times: Vec<f64> = timesteps.iter().map(|k| *k as f64).collect();
    // diffusers' final sigma_min is the Karras and exponential spacings' last sigma: its step
    // there has length zero and changes nothing, but counts for lower_order_final.
    let repeated = !final_zero && (lo - sigmas[steps - 1]).abs() <= 1e-12 * lo;
    if !final_zero && !repeated {
        times.push(s.t_of_lambda(-lo.ln()));
        model_times.push(0.0);
    }
    Ok(SigmaGrid {
        times,
        model_times,
        timesteps,
        repeated,
    })
}

/// Timesteps, the middle elided when there are many.
pub(crate) fn summary<T: std::fmt::Display>(ts: &[T]) -> String {
    if ts.len() <= 8 {
        let all: Vec<String> = ts.iter().map(T::to_string).collect();
        format!("[{}]", all.join(", "))
    } else {
        format!(
            "[{}, {}, {}, ..., {}, {}]",
            ts[0],
            ts[1],
            ts[2],
            ts[ts.len() - 2],
            ts[ts.len() - 1]
        )
    }
}

/// How many train timesteps `lambda_min_clipped` removes from the end: those whose lambda
/// (log alpha - log sigma) is below it, as diffusers' `searchsorted` counts them.
pub(crate) fn clipped_count(schedule: &ScheduleSpec, clip: f64) -> Result<usize, FieldError> {
    if clip == f64::NEG_INFINITY {
        return Ok(0);
    }
    if !clip.is_finite() {
        return Err(FieldError::value(
            "lambda_min_clipped",
            clip,
            "a number or -Infinity",
        ));
    }
    let s = compiled(schedule)?;
    let n = s.def().train_steps().unwrap_or(0);
    let below = (0..n)
        .filter(|k| s.lambda((k + 1) as f64 / n as f64) < clip)
        .count();
    if below >= n {
        return Err(FieldError::value(
            "lambda_min_clipped",
            clip,
            "it clips every train timestep",
        ));
    }
    Ok(below)
}

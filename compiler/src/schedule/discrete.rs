//! Discrete-time DDPM schedules (docs/math.md section 1): the beta tables of diffusers'
//! schedulers, and the schedule through them (log alpha piecewise-linear in t = (n+1)/N).

use super::def::{AlphaFormula, SigmaFormula};
use super::families::VP_LOG_SIGMA;
use super::{ScheduleDef, ScheduleError};
use crate::error::first_rise;
use crate::expr::Table;

/// The DDPM beta tables of docs/math.md section 1.
#[derive(Clone, Debug, PartialEq)]
pub enum DiscreteBetas {
    /// Betas linear from `start` to `end` over `n` train timesteps.
    Linear {
        /// The first beta.
        start: f64,
        /// The last beta.
        end: f64,
        /// The number of train timesteps.
        n: usize,
    },
    /// Square roots of the betas linear from sqrt(`start`) to sqrt(`end`) (Stable Diffusion's).
    ScaledLinear {
        /// The first beta.
        start: f64,
        /// The last beta.
        end: f64,
        /// The number of train timesteps.
        n: usize,
    },
    /// The cosine alphas_cumprod of `n` train timesteps, betas capped at 0.999.
    SquaredCosCapV2 {
        /// The number of train timesteps.
        n: usize,
    },
    /// An explicit beta table.
    Betas(Vec<f64>),
    /// An explicit alphas_cumprod table.
    AlphasCumprod(Vec<f64>),
}

fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![a];
    }
    (0..n)
        .map(|i| a + (b - a) * i as f64 / (n - 1) as f64)
        .collect()
}

impl DiscreteBetas {
    /// log alpha_n = 1/2 sum_{k<=n} log(1 - beta_k) for n = 0..N-1.
    pub fn log_alphas(&self, field: &str) -> Result<Vec<f64>, ScheduleError> {
        let table_err = |message: String| ScheduleError::Table {
            field: field.to_string(),
            message,
        };
        let betas: Vec<f64> = match self {
            DiscreteBetas::Linear { start, end, n } => linspace(*start, *end, *n),
            DiscreteBetas::ScaledLinear { start, end, n } => linspace(start.sqrt(), end.sqrt(), *n)
                .into_iter()
                .map(|b| b * b)
                .collect(),
            DiscreteBetas::SquaredCosCapV2 { n } => {
                let abar = |t: f64| {
                    let c = ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos();
                    c * c
                };
                let nf = *n as f64;
                (0..*n)
                    .map(|i| (1.0 - abar((i + 1) as f64 / nf) / abar(i as f64 / nf)).min(0.999))
                    .collect()
            }
            DiscreteBetas::Betas(b) => b.clone(),
            DiscreteBetas::AlphasCumprod(ac) => {
                if ac.len() < 2 {
                    return Err(table_err(format!(
                        "needs at least 2 values, found {}",
                        ac.len()
                    )));
                }
                if let Some((i, v)) = ac
                    .iter()
                    .enumerate()
                    .find(|(_, v)| !(**v > 0.0 && **v <= 1.0))
                {
                    return Err(table_err(format!(
                        "alphas_cumprod[{i}] = {v} is outside (0, 1]"
                    )));
                }
                if let Some(at) = first_rise(ac) {
                    return Err(table_err(format!(
                        "alphas_cumprod must decrease strictly: {at}"
                    )));
                }
                return Ok(ac.iter().map(|a| 0.5 * a.ln()).collect());
            }
        };
        if betas.len() < 2 {
            return Err(table_err(format!(
                "needs at least 2 betas (num_train_timesteps >= 2), found {}",
                betas.len()
            )));
        }
        if let Some((i, b)) = betas
            .iter()
            .enumerate()
            .find(|(_, b)| !(**b > 0.0 && **b < 1.0))
        {
            return Err(table_err(format!("beta[{i}] = {b} is outside (0, 1)")));
        }
        let mut acc = 0.0;
        Ok(betas
            .iter()
            .map(|b| {
                acc += 0.5 * (-b).ln_1p();
                acc
            })
            .collect())
    }
}

impl ScheduleDef {
    /// A discrete-time DDPM schedule: log alpha piecewise-linear through
    /// `t_n = (n+1)/N`, inverted exactly through the same table.
    pub fn discrete(
        betas: &DiscreteBetas,
        t_range: Option<[f64; 2]>,
    ) -> Result<ScheduleDef, ScheduleError> {
        let field = match betas {
            DiscreteBetas::Betas(_) => "betas",
            DiscreteBetas::AlphasCumprod(_) => "alphas_cumprod",
            _ => "beta_schedule",
        };
        let la = betas.log_alphas(field)?;
        let n = la.len();
        let ts: Vec<f64> = (0..n).map(|i| (i + 1) as f64 / n as f64).collect();
        let table = |xs: Vec<f64>, ys: Vec<f64>| {
            Table::new(xs, ys).map_err(|e| ScheduleError::Table {
                field: field.to_string(),
                message: e.0,
            })
        };
        let forward = table(ts.clone(), la.clone())?;
        let inverse = table(
            la.iter().rev().copied().collect(),
            ts.iter().rev().copied().collect(),
        )?;
        let mut def = ScheduleDef::from_formulas(
            "discrete",
            &[],
            vec![("log_alpha_table", forward), ("t_of_log_alpha", inverse)],
            AlphaFormula::LogAlpha("interp(log_alpha_table, t)".into()),
            SigmaFormula::LogSigma(VP_LOG_SIGMA.into()),
            t_range.unwrap_or([1.0 / n as f64, 1.0]),
            Some("interp(t_of_log_alpha, -0.5 * softplus(-2 * lambda))"),
        )?;
        def.train_steps = Some(n);
        Ok(def)
    }
}

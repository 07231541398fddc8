//! Time grids for N steps from t_max down to t_min (docs/math.md section 1).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{first_rise, FieldError};
use crate::schedule::Schedule;

/// How the sampling times are spaced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GridKind {
    /// Uniform in lambda (half log-SNR).
    Logsnr,
    /// Uniform in t.
    TimeUniform,
    /// Uniform in sqrt(t).
    TimeQuadratic,
    /// Uniform in (e^{-lambda})^{1/rho} (Karras et al.), rho = 7 by default.
    Karras,
    /// Given times (or train indices of a discrete schedule).
    Explicit,
}

impl fmt::Display for GridKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GridKind::Logsnr => "logsnr",
            GridKind::TimeUniform => "time_uniform",
            GridKind::TimeQuadratic => "time_quadratic",
            GridKind::Karras => "karras",
            GridKind::Explicit => "explicit",
        })
    }
}

/// The most steps a sampler, an adjoint grid or a discrete table may have: plans, tables and
/// recorded states grow with the steps, and a mistyped count (`steps = 1000000000`) should be
/// an error that says so, not an allocation that aborts the process.
pub const MAX_STEPS: usize = 100_000;

/// The error for a step count past [`MAX_STEPS`] (`key` names the option).
pub fn check_steps(key: &str, steps: usize) -> Result<(), FieldError> {
    if steps > MAX_STEPS {
        return Err(FieldError::value(
            key,
            steps,
            format!("at most {MAX_STEPS} steps"),
        ));
    }
    Ok(())
}

/// diffusers' `timestep_spacing`: how its schedulers choose whole train timesteps for N
/// inference steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// diffusers' "linspace": evenly spaced over 0..T-1, rounded.
    Linspace,
    /// diffusers' "leading": whole multiples of the ratio of train to inference steps, plus
    /// `steps_offset`.
    Leading,
    /// diffusers' "trailing": down from T by T / N, rounded, minus one.
    Trailing,
}

impl TimestepSpacing {
    /// The spec's spelling.
    pub fn name(self) -> &'static str {
        match self {
            TimestepSpacing::Linspace => "linspace",
            TimestepSpacing::Leading => "leading",
            TimestepSpacing::Trailing => "trailing",
        }
    }
}

/// numpy's `linspace(start, stop, num)`, computed as numpy computes it (index times step plus
/// start, the last point exactly `stop`), so that rounding its values gives numpy's integers.
pub fn numpy_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// numpy's `arange(start, 0, -step)` for a positive step.
pub fn numpy_arange_down(start: f64, step: f64) -> Vec<f64> {
    let n = (start / step).ceil().max(0.0) as usize;
    (0..n).map(|i| start - i as f64 * step).collect()
}

/// The N inference timesteps (noisiest first) of diffusers' multistep schedulers
/// (DPM-Solver, DEIS, UniPC) for `steps` = N, as their `set_timesteps` computes them: `last` is
/// the number of train timesteps left after `lambda_min_clipped` (`n_train` without it), and
/// `offset` is `steps_offset`, which only "leading" adds. numpy rounds halves to even. They
/// are the N noisiest of N + 1 spaced points (the last, the final point, is not a timestep).
pub fn spacing_timesteps(
    spacing: TimestepSpacing,
    steps: usize,
    n_train: usize,
    last: usize,
    offset: i64,
) -> Vec<i64> {
    spaced_timesteps(spacing, (steps, steps + 1), n_train, last, offset)
}

/// The `steps` noisiest of `points` train timesteps spaced by `spacing` over 0..`last`
/// (noisiest first): diffusers' multistep schedulers take N of N + 1 points
/// ([`spacing_timesteps`]), its DDIM scheduler N of N with `last` = `n_train`. "trailing"
/// steps by n_train / steps down from `last`.
pub fn spaced_timesteps(
    spacing: TimestepSpacing,
    (steps, points): (usize, usize),
    n_train: usize,
    last: usize,
    offset: i64,
) -> Vec<i64> {
    let round = |v: f64| v.round_ties_even() as i64;
    let noisiest = points - steps;
    match spacing {
        TimestepSpacing::Linspace => {
            let mut t: Vec<i64> = numpy_linspace(0.0, last as f64 - 1.0, points)
                .into_iter()
                .map(round)
                .collect();
            t.reverse();
            t.truncate(steps);
            t
        }
        TimestepSpacing::Leading => {
            let ratio = (last / points) as i64;
            (noisiest as i64..points as i64)
                .rev()
                .map(|i| i * ratio + offset)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = n_train as f64 / steps as f64;
            numpy_arange_down(last as f64, ratio)
                .into_iter()
                .map(|v| round(v) - 1)
                .collect()
        }
    }
}

/// N+1 times from `t_start` (noisiest) down to `t_end`.
pub fn make_grid(
    schedule: &Schedule,
    kind: &GridKind,
    steps: usize,
    rho: f64,
    t_start: f64,
    t_end: f64,
) -> Result<Vec<f64>, FieldError> {
    if steps == 0 {
        return Err(FieldError::value(
            "steps",
            0,
            "a sampler needs at least 1 step",
        ));
    }
    if matches!(kind, GridKind::Logsnr | GridKind::Karras) {
        for (end, t) in [("start", t_start), ("end", t_end)] {
            let l = schedule.lambda(t);
            if !l.is_finite() {
                return Err(FieldError::value(
                    "grid",
                    format!("\"{kind}\""),
                    format!(
                        "a {kind} grid is spaced in lambda, which is {l} at its {end} t = {t} (pure noise: a flow's t = 1); use grid = \"time_uniform\" (diffusers' flow sigmas), explicit times, or a t_range that ends below t = {t}"
                    ),
                ));
            }
        }
    }
    let n = steps as f64;
    let frac = |i: usize| i as f64 / n;
    let mut ts: Vec<f64> = match kind {
        GridKind::Logsnr => {
            let (l0, l1) = (schedule.lambda(t_start), schedule.lambda(t_end));
            (0..=steps)
                .map(|i| schedule.t_of_lambda(l0 + (l1 - l0) * frac(i)))
                .collect()
        }
        GridKind::TimeUniform => (0..=steps)
            .map(|i| t_start + (t_end - t_start) * frac(i))
            .collect(),
        GridKind::TimeQuadratic => {
            let (a, b) = (t_start.sqrt(), t_end.sqrt());
            (0..=steps)
                .map(|i| {
                    let r = a + (b - a) * frac(i);
                    r * r
                })
                .collect()
        }
        GridKind::Karras => {
            if !(rho > 0.0 && rho.is_finite()) {
                return Err(FieldError::value("rho", rho, "must be a finite number > 0"));
            }
            let (s0, s1) = (
                (-schedule.lambda(t_start)).exp().powf(1.0 / rho),
                (-schedule.lambda(t_end)).exp().powf(1.0 / rho),
            );
            (0..=steps)
                .map(|i| {
                    let s = (s0 + (s1 - s0) * frac(i)).powf(rho);
                    schedule.t_of_lambda(-s.ln())
                })
                .collect()
        }
        GridKind::Explicit => {
            return Err(FieldError::new(
                "grid",
                "grid = \"explicit\" needs `times` or `train_indices`",
            ))
        }
    };
    // The ends exactly, whatever the inverse's round-off.
    ts[0] = t_start;
    ts[steps] = t_end;
    check_grid(schedule, &ts)?;
    Ok(ts)
}

/// How each time of a grid made by [`make_grid`] moves with each schedule parameter
/// (`[point][parameter]`): the logsnr and karras grids are defined in lambda between
/// lambda(t_start) and lambda(t_end), which move with the parameters, and t_i solves
/// lambda(t_i; p) = lambda_i(p), so dt_i/dp = (d lambda_i/dp - d lambda/dp (t_i)) / lambda'(t_i).
/// The grids uniform in t or sqrt(t), and the end points, do not move.
pub fn grid_param_sens(
    schedule: &Schedule,
    kind: &GridKind,
    rho: f64,
    ts: &[f64],
) -> Vec<Vec<f64>> {
    let n_params = schedule.param_names().len();
    let steps = ts.len() - 1;
    let mut out = vec![vec![0.0; n_params]; ts.len()];
    if n_params == 0 || !matches!(kind, GridKind::Logsnr | GridKind::Karras) {
        return out;
    }
    let (t0, t1) = (ts[0], ts[steps]);
    let (p0, p1) = (schedule.param_partials(t0), schedule.param_partials(t1));
    let (l0, l1) = (schedule.lambda(t0), schedule.lambda(t1));
    for (i, row) in out.iter_mut().enumerate().take(steps).skip(1) {
        let f = i as f64 / steps as f64;
        let v = schedule.eval(ts[i]);
        let pi = schedule.param_partials(ts[i]);
        for k in 0..n_params {
            let dlam_i = match kind {
                GridKind::Logsnr => (1.0 - f) * p0[k].lambda + f * p1[k].lambda,
                // lambda_i = -rho ln S_i, S_i = (1 - f) s0 + f s1, s = e^{-lambda / rho}.
                _ => {
                    let (s0, s1) = ((-l0 / rho).exp(), (-l1 / rho).exp());
                    let si = (1.0 - f) * s0 + f * s1;
                    ((1.0 - f) * s0 * p0[k].lambda + f * s1 * p1[k].lambda) / si
                }
            };
            row[k] = (dlam_i - pi[k].lambda) / v.dlambda_dt;
        }
    }
    out
}

/// Checks a grid: at least two times, strictly decreasing, inside the schedule's t range.
pub fn check_grid(schedule: &Schedule, ts: &[f64]) -> Result<(), FieldError> {
    if ts.len() < 2 {
        return Err(FieldError::new(
            "times",
            format!("a grid needs at least 2 times, found {}", ts.len()),
        ));
    }
    let (a, b) = (schedule.t_min(), schedule.t_max());
    if let Some((i, t)) = ts.iter().enumerate().find(|(_, t)| !(**t >= a && **t <= b)) {
        return Err(FieldError::new(
            "times",
            format!("grid time [{i}] = {t} is outside the schedule's t range [{a}, {b}]"),
        ));
    }
    if let Some(at) = first_rise(ts) {
        return Err(FieldError::new(
            "times",
            format!("grid times must decrease strictly (noisiest first): {at}"),
        ));
    }
    Ok(())
}

/// The times of train indices of a discrete schedule with `n_train` steps: t = (k + 1) / N.
pub fn train_index_times(indices: &[usize], n_train: usize) -> Vec<f64> {
    indices
        .iter()
        .map(|&k| (k + 1) as f64 / n_train as f64)
        .collect()
}

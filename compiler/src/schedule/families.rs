//! The built-in continuous families (docs/math.md section 1): VP linear, VP cosine, VE and EDM,
//! each as formula text through the same derivation as a user's formulas.

use super::{ScheduleDef, ScheduleError};
use crate::schedule::def::{AlphaFormula, SigmaFormula};

/// VP's sigma from log alpha without cancellation: sigma^2 = 1 - alpha^2 = -expm1(2 log alpha).
pub(crate) const VP_LOG_SIGMA: &str = "0.5 * ln(-expm1(2 * log_alpha(t)))";

impl ScheduleDef {
    /// VP with linear beta(t) = beta_min + t (beta_max - beta_min), t in [1e-3, 1].
    pub fn vp_linear(beta_min: f64, beta_max: f64) -> Result<ScheduleDef, ScheduleError> {
        Self::vp_linear_on(beta_min, beta_max, [1e-3, 1.0])
    }

    /// ... on the t range `t_range`.
    pub fn vp_linear_on(
        beta_min: f64,
        beta_max: f64,
        t_range: [f64; 2],
    ) -> Result<ScheduleDef, ScheduleError> {
        for (name, value) in [("beta_min", beta_min), ("beta_max", beta_max)] {
            if !(value >= 0.0 && value.is_finite()) {
                return Err(ScheduleError::Param {
                    name: name.into(),
                    value,
                    allowed: "a finite number >= 0".into(),
                });
            }
        }
        ScheduleDef::from_formulas(
            "vp_linear",
            &[("beta_min", beta_min), ("beta_max", beta_max)],
            vec![],
            AlphaFormula::LogAlpha("-(beta_max - beta_min) / 4 * t^2 - beta_min / 2 * t".into()),
            SigmaFormula::LogSigma(VP_LOG_SIGMA.into()),
            t_range,
            Some(
                "2 * softplus(-2 * lambda) / (beta_min + sqrt(beta_min^2 + 2 * (beta_max - beta_min) * softplus(-2 * lambda)))",
            ),
        )
    }

    /// VP cosine (Nichol and Dhariwal) with offset `s`, t in [1e-3, 0.9946].
    pub fn vp_cosine(s: f64) -> Result<ScheduleDef, ScheduleError> {
        Self::vp_cosine_on(s, [1e-3, 0.9946])
    }

    /// ... on the t range `t_range`.
    pub fn vp_cosine_on(s: f64, t_range: [f64; 2]) -> Result<ScheduleDef, ScheduleError> {
        if !(s > 0.0 && s.is_finite()) {
            return Err(ScheduleError::Param {
                name: "s".into(),
                value: s,
                allowed: "a finite number > 0".into(),
            });
        }
        // Inverse: cos(theta) = alpha cos(theta0) with theta = (t+s)/(1+s) pi/2; written with
        // atan and sigma^2 = sigmoid(-2 lambda) so it stays accurate as t -> 0 (acos does not).
        ScheduleDef::from_formulas(
            "vp_cosine",
            &[("s", s)],
            vec![],
            // log(cos(theta)/cos(theta0)) with cos(theta) - cos(theta0) written as a product of
            // sines: ln(cos theta) - ln(cos theta0) would lose half the digits of log alpha
            // (and so of sigma) near t_min.
            AlphaFormula::LogAlpha(
                "ln1p(-2 * sin((t + 2 * s) / (1 + s) * pi / 4) * sin(t / (1 + s) * pi / 4) / cos(s / (1 + s) * pi / 2))".into(),
            ),
            SigmaFormula::LogSigma(VP_LOG_SIGMA.into()),
            t_range,
            Some(
                "2 * (1 + s) / pi * atan(sqrt(sin(s / (1 + s) * pi / 2)^2 + cos(s / (1 + s) * pi / 2)^2 * sigmoid(-2 * lambda)) / (cos(s / (1 + s) * pi / 2) * sqrt(sigmoid(2 * lambda)))) - s",
            ),
        )
    }

    /// VE: alpha = 1, sigma(t) = sigma_min (sigma_max / sigma_min)^t, t in [0, 1].
    pub fn ve(sigma_min: f64, sigma_max: f64) -> Result<ScheduleDef, ScheduleError> {
        Self::ve_on(sigma_min, sigma_max, [0.0, 1.0])
    }

    /// ... on the t range `t_range`.
    pub fn ve_on(
        sigma_min: f64,
        sigma_max: f64,
        t_range: [f64; 2],
    ) -> Result<ScheduleDef, ScheduleError> {
        if !(sigma_min > 0.0 && sigma_min.is_finite()) {
            return Err(ScheduleError::Param {
                name: "sigma_min".into(),
                value: sigma_min,
                allowed: "a finite number > 0".into(),
            });
        }
        if !(sigma_max > sigma_min && sigma_max.is_finite()) {
            return Err(ScheduleError::Param {
                name: "sigma_max".into(),
                value: sigma_max,
                allowed: format!("a finite number > sigma_min = {sigma_min}"),
            });
        }
        ScheduleDef::from_formulas(
            "ve",
            &[("sigma_min", sigma_min), ("sigma_max", sigma_max)],
            vec![],
            AlphaFormula::LogAlpha("0".into()),
            SigmaFormula::LogSigma("ln(sigma_min) + t * ln(sigma_max / sigma_min)".into()),
            t_range,
            Some("(-lambda - ln(sigma_min)) / ln(sigma_max / sigma_min)"),
        )
    }

    /// EDM (Karras et al.): alpha = 1, sigma = t on [sigma_min, sigma_max].
    pub fn edm(sigma_min: f64, sigma_max: f64) -> Result<ScheduleDef, ScheduleError> {
        ScheduleDef::from_formulas(
            "edm",
            &[],
            vec![],
            AlphaFormula::LogAlpha("0".into()),
            SigmaFormula::LogSigma("ln(t)".into()),
            [sigma_min, sigma_max],
            Some("exp(-lambda)"),
        )
    }

    /// Rectified flow (flow matching): x_t = (1 - s) x_0 + s eps with the noise level
    /// s(t) = shift t / (1 + (shift - 1) t), diffusers' static shift (shift = 1: s = t), so
    /// alpha = 1 - s and sigma = s; t in [1e-3, 1], where t = 1 is pure noise (alpha = 0,
    /// lambda = -inf). The network is told 1000 s, diffusers' flow-matching timestep.
    pub fn flow(shift: f64) -> Result<ScheduleDef, ScheduleError> {
        Self::flow_on(shift, [1e-3, 1.0], 1000.0)
    }

    /// ... on the t range `t_range` (within (0, 1]), the network told `time_scale` s as its
    /// time.
    pub fn flow_on(
        shift: f64,
        t_range: [f64; 2],
        time_scale: f64,
    ) -> Result<ScheduleDef, ScheduleError> {
        if !(shift > 0.0 && shift.is_finite()) {
            return Err(ScheduleError::Param {
                name: "shift".into(),
                value: shift,
                allowed: "a finite number > 0 (1: no shift; SD3 uses 3)".into(),
            });
        }
        if !(time_scale > 0.0 && time_scale.is_finite()) {
            return Err(ScheduleError::Param {
                name: "num_train_timesteps".into(),
                value: time_scale,
                allowed: "a finite number > 0".into(),
            });
        }
        if !(t_range[0] > 0.0 && t_range[1] <= 1.0) {
            return Err(ScheduleError::Range {
                t_min: t_range[0],
                t_max: t_range[1],
                why: "outside (0, 1]: a flow's sigma is 0 at t = 0 and alpha negative past t = 1",
            });
        }
        // alpha and sigma as they are (not their logs): both are exact at the ends, and
        // alpha's own derivative stays finite at t = 1, where log alpha is -inf.
        let def = ScheduleDef::from_formulas(
            "flow",
            &[("shift", shift)],
            vec![],
            AlphaFormula::Alpha("(1 - t) / (1 + (shift - 1) * t)".into()),
            SigmaFormula::Sigma("shift * t / (1 + (shift - 1) * t)".into()),
            t_range,
            // lambda = ln((1 - t) / (shift t)), so t = 1 / (1 + shift e^lambda).
            Some("1 / (1 + shift * exp(lambda))"),
        )?;
        Ok(def.with_sigma_time(time_scale))
    }

    /// The names `adeis schedule` accepts for the built-in schedules (see
    /// [`crate::spec::ScheduleSpec::builtin`]).
    pub const BUILTIN_NAMES: [&'static str; crate::spec::ScheduleSpec::BUILTIN_NAMES.len()] =
        crate::spec::ScheduleSpec::BUILTIN_NAMES;
}

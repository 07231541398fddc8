//! The serde IR of a spec file: what a TOML or JSON file (and, later, the macros) declare.
//! Loading a file is the facade's job; this module turns the declarations into validated
//! compiler objects, with errors that name the key path.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::error::FieldError;
use crate::gradient::GradientSpec;
use crate::sampler::SamplerSpec;
use crate::schedule::{AlphaFormula, DiscreteBetas, ScheduleDef, ScheduleError, SigmaFormula};

/// An error in a spec is a [`FieldError`] whose field is the key path from the spec's root
/// (`schedule.log_alpha`).
fn schedule_error(e: ScheduleError) -> FieldError {
    let path = match e.field() {
        Some(f) => format!("schedule.{f}"),
        None => "schedule".to_string(),
    };
    FieldError::new(path, e.to_string())
}

/// A whole spec file: `[schedule]` (which a model directory may supply instead), and
/// `[sampler]` and `[gradient]` for the commands that sample and differentiate.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// `[schedule]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    /// `[sampler]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<SamplerSpec>,
    /// `[gradient]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradient: Option<GradientSpec>,
    /// `[guidance]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<GuidanceSpec>,
    /// `[thresholding]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholding: Option<ThresholdingSpec>,
}

fn d_quantile() -> f64 {
    0.995
}
fn d_max() -> f64 {
    1.0
}

/// `[thresholding]`: dynamic thresholding of the data prediction (Imagen; diffusers'
/// `thresholding = true`): per sample, s is the `quantile` of |x0| (interpolated), clamped to
/// [1, `max`]; x0 is clipped to [-s, s] and divided by s, and an eps-form sampler gets the eps
/// of that x0. diffusers' names `dynamic_thresholding_ratio` and `sample_max_value` are read
/// as aliases.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ThresholdingSpec {
    /// The quantile of |x0| per sample (diffusers' `dynamic_thresholding_ratio`).
    #[serde(default = "d_quantile", alias = "dynamic_thresholding_ratio")]
    pub quantile: f64,
    /// The cap on s (diffusers' `sample_max_value`).
    #[serde(default = "d_max", alias = "sample_max_value")]
    pub max: f64,
}

impl ThresholdingSpec {
    /// Checks the quantile and the cap.
    pub fn validate(&self) -> Result<(), FieldError> {
        if !(0.0..=1.0).contains(&self.quantile) {
            return Err(FieldError::value(
                "quantile",
                self.quantile,
                "a number from 0 to 1 (diffusers' default dynamic_thresholding_ratio is 0.995)",
            ));
        }
        if !(self.max.is_finite() && self.max >= 1.0) {
            return Err(FieldError::value(
                "max",
                self.max,
                "a finite number of at least 1 (s is clamped to [1, max]; diffusers' sample_max_value)",
            ));
        }
        Ok(())
    }
}

/// `[guidance]`: classifier-free guidance, `uncond + scale (cond - uncond)` (diffusers'
/// `guidance_scale`): scale 1 is the conditional model, 0 the unconditional one. The
/// unconditional output is the model at its null conditioning: the digits model's "no class",
/// or for a class-conditional diffusers UNet the class `null_class` it was trained to read as
/// none (diffusers' UNet2DModel has no fixed one).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GuidanceSpec {
    /// The guidance scale: 1 the conditional model, 0 the unconditional one.
    pub scale: f64,
    /// A class-conditional diffusers UNet's "no class" label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub null_class: Option<usize>,
}

impl GuidanceSpec {
    /// Checks the scale.
    pub fn validate(&self) -> Result<(), FieldError> {
        if !self.scale.is_finite() {
            return Err(FieldError::value(
                "scale",
                self.scale,
                "a finite number (1 is no guidance, 0 the unconditional model; diffusers' pipelines use 1 to 10)",
            ));
        }
        Ok(())
    }
}

impl Spec {
    /// The `[schedule]` table.
    pub fn schedule_spec(&self) -> Result<&ScheduleSpec, FieldError> {
        self.schedule.as_ref().ok_or_else(|| {
            FieldError::new(
                "schedule",
                "the spec has no [schedule] table (and no model directory gives a scheduler_config.json)",
            )
        })
    }

    /// The `[schedule]` table's validated schedule.
    pub fn schedule_def(&self) -> Result<ScheduleDef, FieldError> {
        self.schedule_spec()?.to_def()
    }

    /// The `[gradient]` table, checked on its own and against the sampler.
    pub fn checked_gradient(&self) -> Result<Option<&GradientSpec>, FieldError> {
        let Some(g) = &self.gradient else {
            return Ok(None);
        };
        g.validate().map_err(|e| e.under("gradient"))?;
        if self.sampler.is_none() {
            return Err(FieldError::new(
                "gradient",
                "a [gradient] table needs a [sampler] table",
            ));
        }
        Ok(Some(g))
    }

    /// The `[guidance]` table, checked.
    pub fn checked_guidance(&self) -> Result<Option<&GuidanceSpec>, FieldError> {
        match &self.guidance {
            None => Ok(None),
            Some(g) => {
                g.validate().map_err(|e| e.under("guidance"))?;
                Ok(Some(g))
            }
        }
    }

    /// The `[thresholding]` table, checked.
    pub fn checked_thresholding(&self) -> Result<Option<&ThresholdingSpec>, FieldError> {
        match &self.thresholding {
            None => Ok(None),
            Some(t) => {
                t.validate().map_err(|e| e.under("thresholding"))?;
                Ok(Some(t))
            }
        }
    }

    /// The `[sampler]` table, checked on its own (its grid is checked against the schedule
    /// when the plan is built).
    pub fn checked_sampler(&self) -> Result<Option<&SamplerSpec>, FieldError> {
        match &self.sampler {
            None => Ok(None),
            Some(s) => {
                s.validate().map_err(|e| e.under("sampler"))?;
                Ok(Some(s))
            }
        }
    }
}

/// The DDPM beta tables by name.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// Betas linear in the train index.
    Linear,
    /// Square roots of the betas linear (Stable Diffusion's).
    ScaledLinear,
    /// The cosine alphas_cumprod, betas capped at 0.999.
    SquaredcosCapV2,
}

/// How diffusers' dynamic shifting turns mu into a shift.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimeShiftType {
    /// shift = e^mu.
    Exponential,
    /// shift = mu.
    Linear,
}

/// The schedule families.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// VP with linear beta(t).
    VpLinear,
    /// VP cosine.
    VpCosine,
    /// A DDPM table of train timesteps.
    Discrete,
    /// Variance exploding.
    Ve,
    /// EDM: alpha = 1, sigma = t.
    Edm,
    /// Rectified flow: alpha = 1 - s, sigma = s, s the shifted t.
    Flow,
    /// Formulas in t.
    Custom,
}

/// One schedule family: its spec name, the keys its `[schedule]` table may have besides
/// `kind`, and how its symbolic schedule is built from them (the constructors are in
/// `schedule/families.rs`, `schedule/discrete.rs` and `schedule/def.rs`). Adding a family is a
/// `ScheduleKind` variant, its constructor, its row here (and its keys as fields of
/// [`ScheduleSpec`], which is one flat table).
struct KindEntry {
    kind: ScheduleKind,
    name: &'static str,
    keys: &'static [&'static str],
    build: fn(&ScheduleSpec) -> Result<ScheduleDef, ScheduleError>,
}

/// Every schedule family.
const KINDS: [KindEntry; 7] = [
    KindEntry {
        kind: ScheduleKind::VpLinear,
        name: "vp_linear",
        keys: &["beta_min", "beta_max", "t_range"],
        build: |s| {
            ScheduleDef::vp_linear_on(
                s.beta_min.unwrap_or(0.1),
                s.beta_max.unwrap_or(20.0),
                s.t_range.unwrap_or([1e-3, 1.0]),
            )
        },
    },
    KindEntry {
        kind: ScheduleKind::VpCosine,
        name: "vp_cosine",
        keys: &["s", "t_range"],
        build: |s| {
            ScheduleDef::vp_cosine_on(s.s.unwrap_or(0.008), s.t_range.unwrap_or([1e-3, 0.9946]))
        },
    },
    KindEntry {
        kind: ScheduleKind::Discrete,
        name: "discrete",
        keys: &[
            "beta_schedule",
            "num_train_timesteps",
            "beta_start",
            "beta_end",
            "betas",
            "alphas_cumprod",
            "t_range",
        ],
        build: ScheduleSpec::build_discrete,
    },
    KindEntry {
        kind: ScheduleKind::Ve,
        name: "ve",
        keys: &["sigma_min", "sigma_max", "t_range"],
        build: |s| {
            ScheduleDef::ve_on(
                s.sigma_min.unwrap_or(0.01),
                s.sigma_max.unwrap_or(50.0),
                s.t_range.unwrap_or([0.0, 1.0]),
            )
        },
    },
    KindEntry {
        kind: ScheduleKind::Edm,
        name: "edm",
        keys: &["sigma_min", "sigma_max"],
        build: |s| ScheduleDef::edm(s.sigma_min.unwrap_or(0.002), s.sigma_max.unwrap_or(80.0)),
    },
    KindEntry {
        kind: ScheduleKind::Flow,
        name: "flow",
        keys: &[
            "shift",
            "mu",
            "time_shift_type",
            "image_seq_len",
            "base_shift",
            "max_shift",
            "base_image_seq_len",
            "max_image_seq_len",
            "num_train_timesteps",
            "t_range",
        ],
        build: ScheduleSpec::build_flow,
    },
    KindEntry {
        kind: ScheduleKind::Custom,
        name: "custom",
        keys: &[
            "log_alpha",
            "alpha",
            "sigma",
            "log_sigma",
            "params",
            "t_range",
            "inverse",
        ],
        build: ScheduleSpec::build_custom,
    },
];

/// The built-in schedules by their `adeis schedule` name: a family at its defaults, or a
/// discrete table by its beta schedule.
const BUILTINS: [(&str, ScheduleKind, Option<BetaSchedule>); 8] = [
    ("vp_linear", ScheduleKind::VpLinear, None),
    ("vp_cosine", ScheduleKind::VpCosine, None),
    ("ve", ScheduleKind::Ve, None),
    ("edm", ScheduleKind::Edm, None),
    ("flow", ScheduleKind::Flow, None),
    ("discrete", ScheduleKind::Discrete, None),
    (
        "discrete_scaled_linear",
        ScheduleKind::Discrete,
        Some(BetaSchedule::ScaledLinear),
    ),
    (
        "discrete_squaredcos_cap_v2",
        ScheduleKind::Discrete,
        Some(BetaSchedule::SquaredcosCapV2),
    ),
];

impl ScheduleKind {
    fn entry(self) -> &'static KindEntry {
        const { &KINDS }
            .iter()
            .find(|e| e.kind == self)
            .expect("every schedule kind has its row in KINDS")
    }

    /// The spec's spelling.
    pub fn name(self) -> &'static str {
        self.entry().name
    }

    /// The keys a `[schedule]` table of this kind may have besides `kind`.
    pub fn keys(self) -> &'static [&'static str] {
        self.entry().keys
    }
}

/// The `[schedule]` table: `kind` selects the family, the other keys are that family's
/// parameters (see [`ScheduleKind::keys`]). One flat table rather than a tagged enum, so that
/// serde reports type errors at their key path and line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// The family.
    pub kind: ScheduleKind,
    /// vp_linear's beta at t = 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_min: Option<f64>,
    /// vp_linear's beta at t = 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_max: Option<f64>,
    /// vp_cosine's offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s: Option<f64>,
    /// discrete: diffusers' beta table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_schedule: Option<BetaSchedule>,
    /// discrete: its number of train timesteps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_train_timesteps: Option<usize>,
    /// discrete: its first beta.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_start: Option<f64>,
    /// discrete: its last beta.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_end: Option<f64>,
    /// discrete: an explicit beta table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub betas: Option<Vec<f64>>,
    /// discrete: an explicit alphas_cumprod table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alphas_cumprod: Option<Vec<f64>>,
    /// ve and edm: the smallest sigma.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigma_min: Option<f64>,
    /// ve and edm: the largest sigma.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigma_max: Option<f64>,
    /// custom: `log_alpha(t)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_alpha: Option<String>,
    /// custom: `alpha(t)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<String>,
    /// custom: `sigma(t)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigma: Option<String>,
    /// custom: `log_sigma(t)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_sigma: Option<String>,
    /// custom: the parameters with their values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<BTreeMap<String, f64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "two_numbers"
    )]
    /// [t_min, t_max].
    pub t_range: Option<[f64; 2]>,
    /// flow: diffusers' static shift of the noise level, s' = shift s / (1 + (shift - 1) s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift: Option<f64>,
    /// flow: diffusers' dynamic shifting's mu (the shift is e^mu, or mu itself with
    /// `time_shift_type = "linear"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mu: Option<f64>,
    /// flow: how mu shifts, "exponential" (diffusers' default) or "linear".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_shift_type: Option<TimeShiftType>,
    /// flow: the image's token count, from which mu is interpolated as diffusers' pipelines
    /// do (between `base_shift` at `base_image_seq_len` and `max_shift` at
    /// `max_image_seq_len`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_seq_len: Option<f64>,
    /// flow: mu at `base_image_seq_len` (0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_shift: Option<f64>,
    /// flow: mu at `max_image_seq_len` (1.15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_shift: Option<f64>,
    /// flow: the token count of `base_shift` (256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_image_seq_len: Option<f64>,
    /// flow: the token count of `max_shift` (4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_image_seq_len: Option<f64>,
    /// An optional closed form of t(lambda), in `lambda` and the parameters; without one the
    /// inverse is a safeguarded Newton iteration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inverse: Option<String>,
}

/// `[t_min, t_max]`: exactly two numbers (TOML's reader would otherwise take the first two of
/// a longer array and drop the rest).
fn two_numbers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<[f64; 2]>, D::Error> {
    let v: Vec<f64> = Vec::deserialize(d)?;
    match v.as_slice() {
        [a, b] => Ok(Some([*a, *b])),
        _ => Err(serde::de::Error::invalid_length(
            v.len(),
            &"two numbers [t_min, t_max]",
        )),
    }
}

fn one_of<T: Clone>(
    a: (&'static str, &Option<T>),
    b: (&'static str, &Option<T>),
    alternatives: &'static str,
) -> Result<(&'static str, T), ScheduleError> {
    match (a.1, b.1) {
        (Some(x), None) => Ok((a.0, x.clone())),
        (None, Some(y)) => Ok((b.0, y.clone())),
        (Some(_), Some(_)) => Err(ScheduleError::BothFormulas {
            first: a.0,
            second: b.0,
        }),
        (None, None) => Err(ScheduleError::MissingFormula {
            field: a.0,
            alternatives,
        }),
    }
}

impl ScheduleSpec {
    /// A table of the given kind with every other key left at its default.
    pub fn of_kind(kind: ScheduleKind) -> ScheduleSpec {
        ScheduleSpec {
            kind,
            beta_min: None,
            beta_max: None,
            s: None,
            beta_schedule: None,
            num_train_timesteps: None,
            beta_start: None,
            beta_end: None,
            betas: None,
            alphas_cumprod: None,
            sigma_min: None,
            sigma_max: None,
            log_alpha: None,
            alpha: None,
            sigma: None,
            log_sigma: None,
            params: None,
            t_range: None,
            inverse: None,
            shift: None,
            mu: None,
            time_shift_type: None,
            image_seq_len: None,
            base_shift: None,
            max_shift: None,
            base_image_seq_len: None,
            max_image_seq_len: None,
        }
    }

    /// The keys this table sets, besides `kind`.
    pub fn present_keys(&self) -> Vec<&'static str> {
        let present = [
            ("beta_min", self.beta_min.is_some()),
            ("beta_max", self.beta_max.is_some()),
            ("s", self.s.is_some()),
            ("beta_schedule", self.beta_schedule.is_some()),
            ("num_train_timesteps", self.num_train_timesteps.is_some()),
            ("beta_start", self.beta_start.is_some()),
            ("beta_end", self.beta_end.is_some()),
            ("betas", self.betas.is_some()),
            ("alphas_cumprod", self.alphas_cumprod.is_some()),
            ("sigma_min", self.sigma_min.is_some()),
            ("sigma_max", self.sigma_max.is_some()),
            ("log_alpha", self.log_alpha.is_some()),
            ("alpha", self.alpha.is_some()),
            ("sigma", self.sigma.is_some()),
            ("log_sigma", self.log_sigma.is_some()),
            ("params", self.params.is_some()),
            ("t_range", self.t_range.is_some()),
            ("inverse", self.inverse.is_some()),
            ("shift", self.shift.is_some()),
            ("mu", self.mu.is_some()),
            ("time_shift_type", self.time_shift_type.is_some()),
            ("image_seq_len", self.image_seq_len.is_some()),
            ("base_shift", self.base_shift.is_some()),
            ("max_shift", self.max_shift.is_some()),
            ("base_image_seq_len", self.base_image_seq_len.is_some()),
            ("max_image_seq_len", self.max_image_seq_len.is_some()),
        ];
        present.iter().filter(|p| p.1).map(|p| p.0).collect()
    }

    /// The validated symbolic schedule this table declares.
    pub fn to_def(&self) -> Result<ScheduleDef, FieldError> {
        let allowed = self.kind.keys();
        if let Some(key) = self
            .present_keys()
            .into_iter()
            .find(|k| !allowed.contains(k))
        {
            return Err(FieldError::new(
                format!("schedule.{key}"),
                format!(
                    "`{key}` is not a key of kind `{}`; its keys are: kind, {}",
                    self.kind.name(),
                    allowed.join(", ")
                ),
            ));
        }
        self.build().map_err(schedule_error)
    }

    fn build(&self) -> Result<ScheduleDef, ScheduleError> {
        (self.kind.entry().build)(self)
    }

    fn build_discrete(&self) -> Result<ScheduleDef, ScheduleError> {
        let given = [
            ("beta_schedule", self.beta_schedule.is_some()),
            ("betas", self.betas.is_some()),
            ("alphas_cumprod", self.alphas_cumprod.is_some()),
        ];
        let named: Vec<&str> = given.iter().filter(|g| g.1).map(|g| g.0).collect();
        if named.len() > 1 {
            return Err(ScheduleError::Table {
                field: named[1].into(),
                message: format!(
                    "give one of beta_schedule, betas or alphas_cumprod, not {}",
                    named.join(" and ")
                ),
            });
        }
        let explicit = self.betas.is_some() || self.alphas_cumprod.is_some();
        for (key, present) in [
            ("num_train_timesteps", self.num_train_timesteps.is_some()),
            ("beta_start", self.beta_start.is_some()),
            ("beta_end", self.beta_end.is_some()),
        ] {
            if present && explicit {
                return Err(ScheduleError::Table {
                    field: key.into(),
                    message: format!(
                        "`{key}` goes with `beta_schedule`, not with an explicit table"
                    ),
                });
            }
        }
        let n = self.num_train_timesteps.unwrap_or(1000);
        if !(2..=crate::grid::MAX_STEPS).contains(&n) {
            return Err(ScheduleError::Param {
                name: "num_train_timesteps".into(),
                value: n as f64,
                allowed: format!("an integer from 2 to {}", crate::grid::MAX_STEPS),
            });
        }
        let betas = if let Some(b) = &self.betas {
            DiscreteBetas::Betas(b.clone())
        } else if let Some(ac) = &self.alphas_cumprod {
            DiscreteBetas::AlphasCumprod(ac.clone())
        } else {
            match self.beta_schedule.unwrap_or(BetaSchedule::Linear) {
                BetaSchedule::Linear => DiscreteBetas::Linear {
                    start: self.beta_start.unwrap_or(1e-4),
                    end: self.beta_end.unwrap_or(0.02),
                    n,
                },
                BetaSchedule::ScaledLinear => DiscreteBetas::ScaledLinear {
                    start: self.beta_start.unwrap_or(0.00085),
                    end: self.beta_end.unwrap_or(0.012),
                    n,
                },
                BetaSchedule::SquaredcosCapV2 => {
                    if let Some(key) =
                        [("beta_start", self.beta_start), ("beta_end", self.beta_end)]
                            .iter()
                            .find(|k| k.1.is_some())
                            .map(|k| k.0)
                    {
                        return Err(ScheduleError::Table {
                            field: key.into(),
                            message: "squaredcos_cap_v2 has no beta_start or beta_end".into(),
                        });
                    }
                    DiscreteBetas::SquaredCosCapV2 { n }
                }
            }
        };
        ScheduleDef::discrete(&betas, self.t_range)
    }

    /// The flow schedule's shift: `shift`, or diffusers' dynamic shifting from `mu` (given, or
    /// interpolated from `image_seq_len` as diffusers' flow pipelines compute it).
    pub fn flow_shift(&self) -> Result<f64, ScheduleError> {
        let conflict = |a: &str, b: &str| ScheduleError::Table {
            field: b.into(),
            message: format!("give `{a}` or `{b}`, not both: `{b}` determines the shift"),
        };
        if self.shift.is_some() && self.mu.is_some() {
            return Err(conflict("shift", "mu"));
        }
        if self.shift.is_some() && self.image_seq_len.is_some() {
            return Err(conflict("shift", "image_seq_len"));
        }
        if self.mu.is_some() && self.image_seq_len.is_some() {
            return Err(conflict("mu", "image_seq_len"));
        }
        let interpolation = [
            ("base_shift", self.base_shift),
            ("max_shift", self.max_shift),
            ("base_image_seq_len", self.base_image_seq_len),
            ("max_image_seq_len", self.max_image_seq_len),
        ];
        if self.image_seq_len.is_none() {
            if let Some((key, _)) = interpolation.iter().find(|(_, v)| v.is_some()) {
                return Err(ScheduleError::Table {
                    field: (*key).into(),
                    message: format!("`{key}` goes with `image_seq_len` (it interpolates mu)"),
                });
            }
        }
        if self.time_shift_type.is_some() && self.mu.is_none() && self.image_seq_len.is_none() {
            return Err(ScheduleError::Table {
                field: "time_shift_type".into(),
                message: "`time_shift_type` goes with `mu` or `image_seq_len` (dynamic shifting)"
                    .into(),
            });
        }
        let mu = match (self.mu, self.image_seq_len) {
            (Some(mu), _) => mu,
            (None, Some(len)) => {
                let base = self.base_image_seq_len.unwrap_or(256.0);
                let max = self.max_image_seq_len.unwrap_or(4096.0);
                if !(max != base && base.is_finite() && max.is_finite()) {
                    return Err(ScheduleError::Param {
                        name: "max_image_seq_len".into(),
                        value: max,
                        allowed: format!("a finite number other than base_image_seq_len = {base}"),
                    });
                }
                let (lo, hi) = (
                    self.base_shift.unwrap_or(0.5),
                    self.max_shift.unwrap_or(1.15),
                );
                let m = (hi - lo) / (max - base);
                len * m + (lo - m * base)
            }
            (None, None) => return Ok(self.shift.unwrap_or(1.0)),
        };
        let shift = match self.time_shift_type.unwrap_or(TimeShiftType::Exponential) {
            // exp(mu) / (exp(mu) + (1/s - 1)) = e^mu s / (1 + (e^mu - 1) s).
            TimeShiftType::Exponential => mu.exp(),
            // mu / (mu + (1/s - 1)) = mu s / (1 + (mu - 1) s).
            TimeShiftType::Linear => mu,
        };
        if !(shift > 0.0 && shift.is_finite()) {
            return Err(ScheduleError::Param {
                name: "mu".into(),
                value: mu,
                allowed: "a mu whose shift (e^mu, or mu with time_shift_type = \"linear\") is a finite number > 0".into(),
            });
        }
        Ok(shift)
    }

    fn build_flow(&self) -> Result<ScheduleDef, ScheduleError> {
        let scale = self.num_train_timesteps.unwrap_or(1000);
        ScheduleDef::flow_on(
            self.flow_shift()?,
            self.t_range.unwrap_or([1e-3, 1.0]),
            scale as f64,
        )
    }

    fn build_custom(&self) -> Result<ScheduleDef, ScheduleError> {
        let a = match one_of(
            ("log_alpha", &self.log_alpha),
            ("alpha", &self.alpha),
            "`log_alpha` or `alpha` (a formula in t)",
        )? {
            ("log_alpha", text) => AlphaFormula::LogAlpha(text),
            (_, text) => AlphaFormula::Alpha(text),
        };
        let s = match one_of(
            ("sigma", &self.sigma),
            ("log_sigma", &self.log_sigma),
            "`sigma` or `log_sigma` (a formula in t)",
        )? {
            ("sigma", text) => SigmaFormula::Sigma(text),
            (_, text) => SigmaFormula::LogSigma(text),
        };
        let t_range = self.t_range.ok_or(ScheduleError::MissingFormula {
            field: "t_range",
            alternatives: "`t_range = [t_min, t_max]`",
        })?;
        let params = self.params.clone().unwrap_or_default();
        for (name, value) in &params {
            let reserved = [
                "t",
                "lambda",
                "alpha",
                "log_alpha",
                "sigma",
                "log_sigma",
                "pi",
                "inf",
                "nan",
            ];
            if reserved.contains(&name.as_str()) || crate::Func::by_name(name).is_some() {
                return Err(ScheduleError::Param {
                    name: format!("params.{name}"),
                    value: *value,
                    allowed: format!(
                        "a parameter name that is not `t`, `lambda`, a formula name, a constant or a function (`{name}` is taken)"
                    ),
                });
            }
            if !value.is_finite() {
                return Err(ScheduleError::Param {
                    name: format!("params.{name}"),
                    value: *value,
                    allowed: "a finite number".into(),
                });
            }
        }
        let ps: Vec<(&str, f64)> = params.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        ScheduleDef::from_formulas(
            "custom",
            &ps,
            vec![],
            a,
            s,
            t_range,
            self.inverse.as_deref(),
        )
    }

    /// The table of a built-in schedule by its `adeis schedule` name ("discrete_linear" is
    /// "discrete").
    pub fn builtin(name: &str) -> Option<ScheduleSpec> {
        let name = if name == "discrete_linear" {
            "discrete"
        } else {
            name
        };
        let (_, kind, betas) = BUILTINS.iter().find(|b| b.0 == name)?;
        let mut s = ScheduleSpec::of_kind(*kind);
        s.beta_schedule = *betas;
        Some(s)
    }

    /// The names `adeis schedule` accepts for the built-in schedules.
    pub const BUILTIN_NAMES: [&'static str; BUILTINS.len()] = {
        let mut names = [""; BUILTINS.len()];
        let mut i = 0;
        while i < names.len() {
            names[i] = BUILTINS[i].0;
            i += 1;
        }
        names
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Spec, toml::de::Error> {
        toml::from_str::<Spec>(text)
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_allowed_ones() {
        let e = load("[schedule]\nkind = \"vp_linear\"\nbeta_mx = 3.0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown field `beta_mx`, expected one of `kind`, `beta_min`, `beta_max`"),
            "{e}"
        );
        let spec = load("[schedule]\nkind = \"ve\"\nbeta_max = 3.0\n").unwrap();
        let e = spec.schedule_def().unwrap_err();
        assert_eq!(e.to_string(), "schedule.beta_max: `beta_max` is not a key of kind `ve`; its keys are: kind, sigma_min, sigma_max, t_range");
        let e = load("[schedule]\nkind = \"vp_lin\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown variant `vp_lin`, expected one of `vp_linear`"),
            "{e}"
        );
        let e = load("[schedul]\nkind = \"vp_linear\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "unknown field `schedul`, expected one of `schedule`, `sampler`, `gradient`, `guidance`"
            ),
            "{e}"
        );
    }

    #[test]
    fn custom_errors_name_the_key() {
        let spec = load("[schedule]\nkind = \"custom\"\nlog_alpha = \"-t^2 * b\"\nsigma = \"sqrt(1 - exp(2*log_alpha(t))\"\nparams = { b = 2.0 }\nt_range = [0.01, 1.0]\n").unwrap();
        let e = spec.schedule_def().unwrap_err();
        assert_eq!(e.field(), "schedule.sigma");
        assert!(
            e.message().starts_with("at column 29: expected `,` or `)`"),
            "{e}"
        );

        let spec =
            load("[schedule]\nkind = \"custom\"\nlog_alpha = \"-t^2\"\nt_range = [0.01, 1.0]\n")
                .unwrap();
        let e = spec.schedule_def().unwrap_err();
        assert_eq!(
            e.to_string(),
            "schedule.sigma: missing formula `sigma`: give `sigma` or `log_sigma` (a formula in t)"
        );

        let spec = load("[schedule]\nkind = \"custom\"\nlog_alpha = \"-t^2\"\nalpha = \"1\"\nsigma = \"t\"\nt_range = [0.01, 1.0]\n").unwrap();
        assert_eq!(spec.schedule_def().unwrap_err().field(), "schedule.alpha");

        let spec = load("[schedule]\nkind = \"custom\"\nlog_alpha = \"-t^2\"\nsigma = \"t\"\nt_range = [1.0, 0.01]\n").unwrap();
        assert_eq!(spec.schedule_def().unwrap_err().field(), "schedule.t_range");

        let spec = load("[schedule]\nkind = \"custom\"\nlog_alpha = \"-t^2\"\nsigma = \"t\"\nparams = { exp = 1.0 }\nt_range = [0.01, 1.0]\n").unwrap();
        assert_eq!(
            spec.schedule_def().unwrap_err().field(),
            "schedule.params.exp"
        );

        // A parameter value outside the schedule's domain: the key is the parameter's.
        let spec = load("[schedule]\nkind = \"custom\"\nlog_alpha = \"-sqrt(p) * t^2\"\nsigma = \"sqrt(1 - exp(2 * log_alpha(t)))\"\nparams = { p = -1.0 }\nt_range = [0.001, 1.0]\n").unwrap();
        let e = spec.schedule_def().unwrap_err();
        assert_eq!(e.field(), "schedule.params.p");
        assert_eq!(
            e.to_string(),
            "schedule.params.p: alpha(0.001) = NaN is not finite (with the parameters `p` = -1)"
        );
    }

    #[test]
    fn discrete_table_choices() {
        let spec = load(
            "[schedule]\nkind = \"discrete\"\nbetas = [0.1, 0.2]\nbeta_schedule = \"linear\"\n",
        )
        .unwrap();
        let e = spec.schedule_def().unwrap_err();
        assert_eq!(e.field(), "schedule.betas");
        let spec = load("[schedule]\nkind = \"discrete\"\nbeta_schedule = \"scaled_linear\"\nnum_train_timesteps = 1\n").unwrap();
        assert_eq!(
            spec.schedule_def().unwrap_err().field(),
            "schedule.num_train_timesteps"
        );
        let spec = load("[schedule]\nkind = \"discrete\"\nbetas = [0.1, 0.2, 0.3]\n").unwrap();
        let d = spec.schedule_def().unwrap();
        assert_eq!(d.t_min(), 1.0 / 3.0);
    }
}

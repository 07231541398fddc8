//! diffusers scheduler configs as specs: the `scheduler_config.json` a diffusers user has
//! (`DDIMScheduler`, `DPMSolverMultistepScheduler`, `DPMSolverSinglestepScheduler`,
//! `DEISMultistepScheduler`, `UniPCMultistepScheduler`, `EulerDiscreteScheduler`), read as the
//! adeis spec that computes what diffusers computes with it for a given number of inference
//! steps, step for step.
//!
//! diffusers samples on integer train timesteps chosen by `timestep_spacing`; adeis runs the
//! same discrete schedule (the betas of `beta_schedule`, or `trained_betas`) on those
//! timesteps as `train_indices`. Where diffusers ends at sigma = 0 (`final_sigmas_type =
//! "zero"`, DDIM's `set_alpha_to_one`) its last step is the data prediction of the last model
//! evaluation, which is adeis's `denoise_to_zero`, counted as a step in `lower_order_final` as
//! diffusers counts it (`count_final_step`); where it ends at the first train timestep
//! (`"sigma_min"`) that timestep is the grid's last point. diffusers' third-order multistep
//! coefficients are the DPM-Solver reference code's (`third_order = "reference"`).
//! `DPMSolverSinglestepScheduler`'s intermediate points are grid timesteps (`stages =
//! "grid"`), and its `thresholding` is adeis's `[thresholding]` table.
//!
//! A key adeis does not know, or a value it does not run, is an error naming the key, the
//! value and what is allowed; nothing is silently ignored except keys that only matter for an
//! option that is off (`dynamic_thresholding_ratio` without `thresholding`).

//!
//! One reader per class, each a file implementing `SchedulerClass` and registered in
//! `READERS`: `ddim.rs`, `dpm_multistep.rs`, `dpm_singlestep.rs`, `deis.rs`, `unipc.rs`,
//! `euler.rs`. This
//! module reads what every class shares (the beta schedule, `prediction_type`, thresholding,
//! the sigma spacings, `timestep_spacing`) and ends the multistep classes' grids; the key
//! tracker is `keys.rs`, the sigma spacings `sigmas.rs`, and the train-timestep spacings the
//! compiler's one implementation (`adeis_compiler::grid::spaced_timesteps`).

mod ddim;
mod deis;
mod dpm_multistep;
mod dpm_singlestep;
mod euler;
mod flow_match;
mod keys;
mod sigmas;
mod unipc;

use serde_json::{Map, Value};

use adeis_compiler::grid::{
    numpy_linspace, spaced_timesteps, spacing_timesteps, GridKind, TimestepSpacing,
};
use adeis_compiler::sampler::{grid_orders, SolverType, Stages};
use adeis_compiler::spec::{BetaSchedule, ScheduleKind};
use adeis_compiler::{
    FieldError, Method, Prediction, SamplerSpec, ScheduleSpec, Spec, ThresholdingSpec,
};
pub use flow_match::FlowShiftInputs;
pub(crate) use keys::standard_json;
use keys::{describe, quoted, Config};
use sigmas::{sigma_grid, summary, SigmaMode};

/// A diffusers scheduler class adeis reads: what it shares with the others, as hooks, and its
/// own keys read into the sampler. One file a class, registered in [`READERS`].
pub(crate) trait SchedulerClass: Sync {
    /// Why its `thresholding` is not read (None: it is, as adeis's `[thresholding]`).
    fn refuses_thresholding(&self) -> Option<&'static str> {
        None
    }

    /// The sigma spacings (`use_karras_sigmas`, ...) it reads.
    fn sigma_modes(&self) -> &'static [SigmaMode] {
        &[]
    }

    /// Its `timestep_spacing` values, diffusers' default first (None: it has no such key and
    /// no `steps_offset`; its timesteps are "linspace"'s).
    fn spacings(&self) -> Option<&'static [&'static str]> {
        Some(&["linspace", "leading", "trailing"])
    }

    /// A class on no beta schedule (flow matching) reads all its keys itself and gives the
    /// whole spec (None: the class is read through the shared beta schedule and [`read`]).
    ///
    /// [`read`]: SchedulerClass::read
    fn translate_whole(
        &self,
        _c: &mut Config,
        _steps: usize,
        _inputs: &FlowShiftInputs,
    ) -> Option<Result<Translated, FieldError>> {
        None
    }

    /// Whether it reads `use_flow_sigmas` (with `flow_shift` and dynamic shifting).
    fn reads_flow_sigmas(&self) -> bool {
        false
    }

    /// Whether its flow sigmas end with the last one repeated (DEIS), not at 0.
    fn flow_repeats_last_sigma(&self) -> bool {
        false
    }

    /// Reads its own keys into `sampler` (which has the prediction and `steps` set): the grid
    /// itself (train indices, or times with the model's time at each), or where a multistep
    /// scheduler's grid ends.
    fn read(
        &self,
        c: &mut Config,
        common: &Common,
        sampler: &mut SamplerSpec,
        notes: &mut Vec<String>,
    ) -> Result<Read, FieldError>;
}

/// What every class's reader may use: the keys all classes share, read.
pub(crate) struct Common {
    /// The inference steps asked for.
    pub steps: usize,
    pub n_train: usize,
    /// The discrete schedule.
    pub schedule: ScheduleSpec,
    /// Whether the betas are the cosine table (diffusers truncates its timesteps there).
    pub cosine: bool,
    pub thresholding: Option<ThresholdingSpec>,
    pub spacing: TimestepSpacing,
    /// `steps_offset`.
    pub offset: i64,
}

/// What a class's reader found.
pub(crate) enum Read {
    /// The grid, final: the timesteps the model is evaluated at and the train indices of the
    /// grid (DDIM).
    Grid {
        timesteps: Vec<i64>,
        indices: Vec<i64>,
    },
    /// A multistep scheduler's end: at sigma = 0 (`final_sigmas_type = "zero"`) or not, and
    /// the train timesteps left after `lambda_min_clipped`.
    Multistep { final_zero: bool, last: usize },
    /// The grid as adeis times at diffusers' own noise levels, the network told diffusers'
    /// (possibly fractional) timestep at each point (EulerDiscreteScheduler).
    Times {
        /// The timesteps the model is evaluated at, noisiest first.
        timesteps: Vec<f64>,
        /// The grid's times (one more than `timesteps` when the last point is not sigma = 0).
        times: Vec<f64>,
        /// The network's time input at each grid point.
        model_times: Vec<f64>,
    },
}

/// Every class adeis reads by its diffusers name (`_class_name`), in the order the errors
/// name them: adding a class is its file and its row here.
pub(crate) const READERS: [(&str, &dyn SchedulerClass); 7] = [
    ("DDIMScheduler", &ddim::Ddim),
    ("DPMSolverMultistepScheduler", &dpm_multistep::DpmMultistep),
    (
        "DPMSolverSinglestepScheduler",
        &dpm_singlestep::DpmSinglestep,
    ),
    ("DEISMultistepScheduler", &deis::Deis),
    ("UniPCMultistepScheduler", &unipc::Unipc),
    ("EulerDiscreteScheduler", &euler::EulerDiscrete),
    (
        "FlowMatchEulerDiscreteScheduler",
        &flow_match::FlowMatchEuler,
    ),
];

/// The diffusers scheduler classes adeis reads.
pub const CLASSES: [&str; READERS.len()] = {
    let mut names = [""; READERS.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = READERS[i].0;
        i += 1;
    }
    names
};

/// The keys of the classes adeis reads whose diffusers default is None, so that null is a
/// value there; null anywhere else would make diffusers fail, and is refused.
const NULLABLE: [&str; 6] = [
    "trained_betas",
    "variance_type",
    "sigma_min",
    "sigma_max",
    "shift_terminal",
    "solver_p",
];

/// Keys every diffusers scheduler config has, whatever its class: a file with them and no
/// `_class_name` is a diffusers config that lost its class, not an adeis spec.
pub const COMMON_KEYS: [&str; 5] = [
    "_diffusers_version",
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
];

/// Whether JSON text is a diffusers scheduler config (it names its class).
pub fn is_scheduler_config(text: &str) -> bool {
    serde_json::from_str::<Map<String, Value>>(&standard_json(text))
        .map(|m| m.contains_key("_class_name"))
        .unwrap_or(false)
}

/// DDIM's inference timesteps (it has no step to a final point beyond them).
pub fn ddim_timesteps(
    spacing: TimestepSpacing,
    steps: usize,
    n_train: usize,
    offset: i64,
) -> Vec<i64> {
    spaced_timesteps(spacing, (steps, steps), n_train, n_train, offset)
}

/// A scheduler config read as an adeis spec for a number of inference steps, with what the
/// translation did (for `adeis check`).
#[derive(Clone, Debug)]
pub struct Translated {
    /// The adeis spec: the discrete schedule and the sampler on diffusers' timesteps.
    pub spec: Spec,
    /// The diffusers timesteps the model is evaluated at, noisiest first (whole train
    /// timesteps but for EulerDiscreteScheduler's "linspace", whose are fractional).
    pub timesteps: Vec<f64>,
    /// One line per choice worth knowing: how diffusers' option maps, and where adeis's own
    /// variant differs and how to ask for it.
    pub notes: Vec<String>,
}

/// The spec that runs `text` (a diffusers scheduler config) for `steps` inference steps.
pub fn translate(text: &str, steps: usize) -> Result<Translated, FieldError> {
    translate_with(text, steps, &FlowShiftInputs::default())
}

/// [`translate`] with what a flow-matching pipeline passes beside the steps (dynamic
/// shifting's mu, or the image's sequence length it comes from).
pub fn translate_with(
    text: &str,
    steps: usize,
    inputs: &FlowShiftInputs,
) -> Result<Translated, FieldError> {
    let keys = super::json::read_object(text, "a diffusers scheduler config")
        .map_err(|e| FieldError::new("", e))?;
    if let Some((key, _)) = keys
        .iter()
        .find(|(k, v)| v.is_null() && !NULLABLE.contains(&k.as_str()) && !k.starts_with('_'))
    {
        return Err(FieldError::value(
            key.as_str(),
            "null",
            format!(
                "a value, or no `{key}` at all for diffusers' default (null means \"none\" only where diffusers' default is None: {})",
                quoted(&NULLABLE)
            ),
        ));
    }
    let class_name = match keys.get("_class_name") {
        Some(Value::String(s)) => s.clone(),
        other => {
            return Err(FieldError::value(
                "_class_name",
                other.map(describe).unwrap_or_else(|| "(absent)".into()),
                format!("a diffusers scheduler class: {}", quoted(&CLASSES)),
            ))
        }
    };
    let Some(&(_, class)) = READERS.iter().find(|r| r.0 == class_name) else {
        return Err(FieldError::value(
            "_class_name",
            format!("\"{class_name}\""),
            format!("adeis reads {}", quoted(&CLASSES)),
        ));
    };
    if steps == 0 {
        return Err(FieldError::value(
            "steps",
            0,
            "a scheduler config needs the number of inference steps: --steps N, N at least 1",
        ));
    }
    adeis_compiler::grid::check_steps("steps", steps)?;
    let mut c = Config {
        class: class_name,
        keys,
    };
    c.keys.retain(|k, _| !k.starts_with('_'));
    if let Some(whole) = class.translate_whole(&mut c, steps, inputs) {
        return whole;
    }
    let mut notes = Vec::new();

    // The beta schedule.
    let n_train = train_timesteps(&mut c)?;
    let mut schedule = ScheduleSpec::of_kind(ScheduleKind::Discrete);
    let trained = c.take("trained_betas");
    let beta_schedule = c.choice(
        "beta_schedule",
        &["linear", "scaled_linear", "squaredcos_cap_v2"],
    )?;
    let beta_start = c.f64("beta_start")?.unwrap_or(1e-4);
    let beta_end = c.f64("beta_end")?.unwrap_or(0.02);
    if let Some(t) = trained {
        let betas: Vec<f64> = serde_json::from_value(t.clone())
            .map_err(|_| FieldError::value("trained_betas", describe(&t), "a list of numbers"))?;
        if betas.len() != n_train {
            return Err(FieldError::value(
                "trained_betas",
                format!("{} values", betas.len()),
                format!("one beta per train timestep: num_train_timesteps = {n_train}"),
            ));
        }
        schedule.betas = Some(betas);
    } else {
        schedule.num_train_timesteps = Some(n_train);
        schedule.beta_schedule = Some(match beta_schedule {
            "linear" => BetaSchedule::Linear,
            "scaled_linear" => BetaSchedule::ScaledLinear,
            _ => BetaSchedule::SquaredcosCapV2,
        });
        if beta_schedule != "squaredcos_cap_v2" {
            schedule.beta_start = Some(beta_start);
            schedule.beta_end = Some(beta_end);
        }
    }
    c.only(
        "rescale_betas_zero_snr",
        Value::Bool(false),
        "adeis runs schedules whose signal-to-noise ratio stays positive; zero terminal SNR makes the first timestep pure noise (lambda = -infinity)",
    )?;

    let prediction = match c.choice(
        "prediction_type",
        &["epsilon", "sample", "v_prediction", "flow_prediction"],
    )? {
        "epsilon" => Prediction::Eps,
        "sample" => Prediction::X0,
        "v_prediction" => Prediction::V,
        _ => Prediction::Flow,
    };
    let flow = read_flow_sigmas(&mut c, class, inputs, prediction)?;
    let thresholding = if c.bool("thresholding")?.unwrap_or(false) {
        if let Some(why) = class.refuses_thresholding() {
            return Err(FieldError::value("thresholding", true, why));
        }
        let t = ThresholdingSpec {
            quantile: c.f64("dynamic_thresholding_ratio")?.unwrap_or(0.995),
            max: c.f64("sample_max_value")?.unwrap_or(1.0),
        };
        t.validate().map_err(|e| {
            let key = if e.key == "quantile" {
                "dynamic_thresholding_ratio"
            } else {
                "sample_max_value"
            };
            FieldError {
                key: key.into(),
                ..e
            }
        })?;
        notes.push(format!(
            "thresholding: [thresholding] quantile = {}, max = {} (the data prediction clipped per sample, as diffusers' _threshold_sample)",
            t.quantile, t.max
        ));
        Some(t)
    } else {
        c.ignore(&["dynamic_thresholding_ratio", "sample_max_value"]);
        None
    };
    // The sigma spacings: solved at their own noise levels, the model told the nearest
    // whole timestep (see `sigma_grid`).
    let mut sigma_mode = None;
    for (key, mode) in [
        ("use_karras_sigmas", SigmaMode::Karras),
        ("use_exponential_sigmas", SigmaMode::Exponential),
        ("use_lu_lambdas", SigmaMode::UniformLambda),
    ] {
        if c.bool(key)?.unwrap_or(false) {
            if !class.sigma_modes().contains(&mode) {
                let readers: Vec<&str> = READERS
                    .iter()
                    .filter(|r| r.1.sigma_modes().contains(&mode))
                    .map(|r| r.0)
                    .collect();
                return Err(FieldError::value(
                    key,
                    true,
                    format!("adeis reads it for {}", readers.join(", ")),
                ));
            }
            if let Some(first) = sigma_mode.replace((key, mode)) {
                return Err(FieldError::value(
                    key,
                    true,
                    format!("give one sigma spacing, not `{}` and `{key}`", first.0),
                ));
            }
        }
    }
    c.only(
        "use_beta_sigmas",
        Value::Bool(false),
        "beta sigmas are not read from scheduler configs yet",
    )?;
    if let (Some(_), Some((key, _))) = (&flow, sigma_mode) {
        return Err(FieldError::value(
            key,
            true,
            "with use_flow_sigmas diffusers spaces its VP sigmas and ignores the flow sigmas; give one of them",
        ));
    }
    for key in [
        "sigma_min",
        "sigma_max",
        "shift_terminal",
        "solver_p",
        "variance_type",
    ] {
        if let Some(v) = c.take(key) {
            return Err(FieldError::value(
                key,
                describe(&v),
                "adeis runs this scheduler with it unset (null)",
            ));
        }
    }
    let (spacing, offset) = match class.spacings() {
        None => (TimestepSpacing::Linspace, 0),
        Some(spacings) => (
            match c.choice("timestep_spacing", spacings)? {
                "linspace" => TimestepSpacing::Linspace,
                "leading" => TimestepSpacing::Leading,
                _ => TimestepSpacing::Trailing,
            },
            c.usize("steps_offset")?.unwrap_or(0) as i64,
        ),
    };
    let cosine = beta_schedule == "squaredcos_cap_v2" && schedule.betas.is_none();
    let common = Common {
        steps,
        n_train,
        schedule,
        cosine,
        thresholding,
        spacing,
        offset,
    };
    let mut sampler = SamplerSpec::new(Method::Ddim, 1, steps);
    sampler.prediction = prediction;
    let (timesteps, indices) = match class.read(&mut c, &common, &mut sampler, &mut notes)? {
        Read::Grid { timesteps, indices } => (timesteps, indices),
        Read::Times {
            timesteps,
            times,
            model_times,
        } => {
            c.reject_unknown()?;
            let headline = format!(
                "{} with {steps} steps, timestep_spacing \"{}\": the model is evaluated at timesteps {}",
                c.class,
                spacing.name(),
                summary(&timesteps)
            );
            let grid = ExplicitGrid {
                timesteps,
                times,
                model_times,
            };
            return explicit_grid(common, sampler, grid, headline, notes);
        }
        Read::Multistep { final_zero, last } => {
            if final_zero {
                sampler.denoise_to_zero = true;
                sampler.count_final_step = sampler.lower_order_final;
                notes.push("final_sigmas_type = \"zero\": the last step goes to sigma = 0, the data prediction of the last evaluation (denoise_to_zero, counted as a step: count_final_step)".into());
            }
            if let Some(flow) = flow {
                if !final_zero && class.flow_repeats_last_sigma() {
                    // DEIS ends its flow sigmas with the last one repeated: a zero-length
                    // step, which leaves the sample as it is at order 1.
                    let orders =
                        grid_orders(steps, sampler.order, sampler.lower_order_final, false);
                    if orders.last() != Some(&1) {
                        return Err(FieldError::value(
                            "steps",
                            steps,
                            format!(
                                "with use_flow_sigmas diffusers' last step, to a repeated last sigma, is of order {} here and moves the sample by a zero-length step adeis does not take; use fewer than 15 steps (lower_order_final) or solver_order = 1",
                                orders[orders.len() - 1]
                            ),
                        ));
                    }
                    sampler.count_final_step = sampler.lower_order_final;
                    notes.push("the last flow sigma repeats: diffusers' zero-length last step is left out, and counted for lower_order_final (count_final_step)".into());
                } else if !final_zero {
                    return Err(FieldError::value(
                        "final_sigmas_type",
                        "\"sigma_min\"",
                        "with use_flow_sigmas diffusers ends at the VP schedule's sigma_min, which is no flow noise level; use \"zero\"",
                    ));
                }
                c.ignore(&["timestep_spacing", "steps_offset", "lambda_min_clipped"]);
                c.reject_unknown()?;
                notes.push(flow.note.clone());
                let headline = format!(
                    "{} with {steps} steps on flow sigmas: the flow schedule (alpha = 1 - s, sigma = s), the network told diffusers' whole timesteps (1000 s, truncated)",
                    c.class
                );
                let sigmas = flow.sigmas(steps, n_train);
                let mut schedule = ScheduleSpec::of_kind(ScheduleKind::Flow);
                schedule.num_train_timesteps = Some(n_train);
                schedule.t_range = Some([sigmas[steps - 1].min(1e-3), 1.0]);
                let common = Common { schedule, ..common };
                let n = n_train as f64;
                let whole: Vec<f64> = sigmas.iter().map(|s| (s * n).trunc()).collect();
                let grid = ExplicitGrid {
                    timesteps: whole.clone(),
                    times: sigmas,
                    model_times: whole,
                };
                return explicit_grid(common, sampler, grid, headline, notes);
            }
            if let Some((key, mode)) = sigma_mode {
                let g = sigma_grid(&common.schedule, mode, steps, common.cosine, final_zero)?;
                notes.push(format!(
                    "{key}: solved at diffusers' {} sigmas (times), the model given the timesteps diffusers gives it there (model_times: {})",
                    mode.name(),
                    summary(&g.timesteps)
                ));
                if g.repeated && sampler.stages == Stages::Grid {
                    // The zero-length step to the repeated sigma_min leaves the state as it is
                    // only at first order.
                    let orders =
                        grid_orders(steps, sampler.order, sampler.lower_order_final, false);
                    if orders.last() != Some(&1) {
                        return Err(FieldError::value(
                            "final_sigmas_type",
                            "\"sigma_min\"",
                            format!(
                                "with {key} and {steps} steps diffusers' last step, to a sigma_min that repeats the last sigma, is of order {} and moves the sample by a zero-length step adeis does not take; use final_sigmas_type \"zero\" or a step count whose last order is 1",
                                orders[orders.len() - 1]
                            ),
                        ));
                    }
                }
                if g.repeated && sampler.lower_order_final {
                    sampler.count_final_step = true;
                    notes.push("the final sigma_min repeats the last sigma: diffusers' zero-length step there is left out, and counted for lower_order_final (count_final_step)".into());
                }
                c.ignore(&["timestep_spacing", "steps_offset"]);
                c.reject_unknown()?;
                let headline = format!("{} with {steps} steps and {key}", c.class);
                let grid = ExplicitGrid {
                    timesteps: g.timesteps.iter().map(|k| *k as f64).collect(),
                    times: g.times,
                    model_times: g.model_times,
                };
                return explicit_grid(common, sampler, grid, headline, notes);
            }
            let timesteps = spacing_timesteps(spacing, steps, n_train, last, offset);
            let mut indices = timesteps.clone();
            if !final_zero && timesteps.last() != Some(&0) {
                indices.push(0);
            }
            (timesteps, indices)
        }
    };
    let Common {
        schedule,
        thresholding,
        ..
    } = common;
    c.reject_unknown()?;
    let whole: Vec<f64> = indices.iter().map(|k| *k as f64).collect();
    check_timesteps(
        &whole,
        n_train,
        (offset, steps),
        ": its spacing rounds to whole train timesteps",
    )?;
    if indices.len() < 2 {
        return Err(FieldError::value(
            "steps",
            steps,
            "one step that ends at sigma = 0 is the data prediction at the first timestep alone; adeis runs at least 2 steps here",
        ));
    }
    sampler.grid = GridKind::Explicit;
    sampler.steps = indices.len().saturating_sub(1).max(1);
    sampler.train_indices = Some(indices.iter().map(|k| *k as usize).collect());
    notes.insert(
        0,
        format!(
            "{} with {steps} steps, timestep_spacing \"{}\": the model is evaluated at train timesteps {}",
            c.class,
            spacing.name(),
            summary(&timesteps)
        ),
    );
    let timesteps = timesteps.iter().map(|k| *k as f64).collect();
    Ok(Translated {
        spec: Spec {
            schedule: Some(schedule),
            sampler: Some(sampler),
            gradient: None,
            guidance: None,
            thresholding,
        },
        timesteps,
        notes,
    })
}

/// A multistep scheduler's flow sigmas (`use_flow_sigmas`), noisiest first, and what chose
/// their shift.
struct FlowSigmas {
    shift: f64,
    note: String,
}

impl FlowSigmas {
    /// diffusers' N sigmas for N inference steps on T train timesteps, noisiest first.
    fn sigmas(&self, steps: usize, n_train: usize) -> Vec<f64> {
        let shift = self.shift;
        let mut sigmas: Vec<f64> = numpy_linspace(1.0, 1.0 / n_train as f64, steps + 1)
            .into_iter()
            .map(|a| 1.0 - a)
            .map(|s| shift * s / (1.0 + (shift - 1.0) * s))
            .collect();
        sigmas.reverse();
        sigmas.truncate(steps);
        sigmas
    }
}

/// `use_flow_sigmas`, `flow_shift` and dynamic shifting (`use_dynamic_shifting` with mu) of
/// the multistep classes that read them: diffusers' sigmas 1 - linspace(1, 1/T, N + 1),
/// shifted by flow_shift (e^mu with dynamic shifting), noisiest first, the final 0 dropped.
fn read_flow_sigmas(
    c: &mut Config,
    class: &dyn SchedulerClass,
    inputs: &FlowShiftInputs,
    prediction: Prediction,
) -> Result<Option<FlowSigmas>, FieldError> {
    let on = c.bool("use_flow_sigmas")?.unwrap_or(false);
    let dynamic = c.bool("use_dynamic_shifting")?.unwrap_or(false);
    let shift = c.f64("flow_shift")?.unwrap_or(1.0);
    let exponential = c.choice("time_shift_type", &["exponential", "linear"])? == "exponential";
    let given = *inputs != FlowShiftInputs::default();
    if !on {
        if dynamic {
            return Err(FieldError::value(
                "use_dynamic_shifting",
                true,
                "dynamic shifting shifts flow sigmas: it needs use_flow_sigmas = true",
            ));
        }
        if given {
            return Err(FieldError::new(
                "mu",
                format!(
                    "--mu and --image-seq-len set a flow-matching scheduler's dynamic shifting; this {} config has none",
                    c.class
                ),
            ));
        }
        if prediction == Prediction::Flow {
            return Err(FieldError::value(
                "prediction_type",
                "\"flow_prediction\"",
                "a flow model's output goes with flow sigmas: set use_flow_sigmas = true",
            ));
        }
        return Ok(None);
    }
    if !class.reads_flow_sigmas() {
        return Err(FieldError::value(
            "use_flow_sigmas",
            true,
            format!(
                "adeis reads flow sigmas for {} (and FlowMatchEulerDiscreteScheduler)",
                quoted(
                    &READERS
                        .iter()
                        .filter(|r| r.1.reads_flow_sigmas())
                        .map(|r| r.0)
                        .collect::<Vec<_>>()
                )
            ),
        ));
    }
    if !(shift > 0.0 && shift.is_finite()) {
        return Err(FieldError::value(
            "flow_shift",
            shift,
            "a finite number > 0",
        ));
    }
    let (shift, note) = if dynamic {
        if !exponential {
            return Err(FieldError::value(
                "time_shift_type",
                "\"linear\"",
                "diffusers' multistep schedulers shift by e^mu only (\"exponential\")",
            ));
        }
        // The flow pipelines' defaults of calculate_shift: these configs have no keys for it.
        let mu = flow_match::dynamic_mu(inputs, [0.5, 1.15], [256.0, 4096.0])?;
        (
            mu.exp(),
            format!("use_dynamic_shifting: flow_shift = e^mu = {}", mu.exp()),
        )
    } else {
        if given {
            return Err(FieldError::new(
                "use_dynamic_shifting",
                "false: --mu and --image-seq-len set dynamic shifting, which this config does not use",
            ));
        }
        (shift, format!("use_flow_sigmas: flow_shift = {shift}"))
    };
    Ok(Some(FlowSigmas { shift, note }))
}

/// A grid of adeis times at diffusers' noise levels, with the network's time at each point.
struct ExplicitGrid {
    timesteps: Vec<f64>,
    times: Vec<f64>,
    model_times: Vec<f64>,
}

/// The spec of a sampler on an explicit grid of times (`headline` first among the notes).
fn explicit_grid(
    common: Common,
    mut sampler: SamplerSpec,
    grid: ExplicitGrid,
    headline: String,
    mut notes: Vec<String>,
) -> Result<Translated, FieldError> {
    sampler.grid = GridKind::Explicit;
    sampler.steps = grid.times.len().saturating_sub(1);
    sampler.times = Some(grid.times);
    sampler.model_times = Some(grid.model_times);
    if sampler.steps < 1 {
        return Err(FieldError::value(
            "steps",
            common.steps,
            "one step that ends at sigma = 0 is the data prediction at the first timestep alone; adeis runs at least 2 steps here",
        ));
    }
    notes.insert(0, headline);
    Ok(Translated {
        spec: Spec {
            schedule: Some(common.schedule),
            sampler: Some(sampler),
            gradient: None,
            guidance: None,
            thresholding: common.thresholding,
        },
        timesteps: grid.timesteps,
        notes,
    })
}

/// Refuses timesteps outside 0..`n_train` (naming `steps_offset`, which shifts them there)
/// and timesteps that repeat (naming `steps`; `why` says why they can).
pub(crate) fn check_timesteps(
    timesteps: &[f64],
    n_train: usize,
    (offset, steps): (i64, usize),
    why: &str,
) -> Result<(), FieldError> {
    if let Some(k) = timesteps
        .iter()
        .find(|k| !(0.0..=(n_train - 1) as f64).contains(*k))
    {
        return Err(FieldError::value(
            "steps_offset",
            offset,
            format!("it puts timestep {k} outside 0..{n_train}"),
        ));
    }
    if let Some(w) = timesteps.windows(2).find(|w| w[1] >= w[0]) {
        return Err(FieldError::value(
            "steps",
            steps,
            format!(
                "diffusers' timesteps for it repeat ({} then {}{why}); use fewer steps",
                w[0], w[1]
            ),
        ));
    }
    Ok(())
}

/// `solver_order` (default `default`, 1 to 3) and `lower_order_final` (default
/// `lower_order_final`) of a multistep class, into `sampler`.
pub(crate) fn solver_order(
    c: &mut Config,
    sampler: &mut SamplerSpec,
    default: usize,
    lower_order_final: bool,
) -> Result<usize, FieldError> {
    let order = c.usize("solver_order")?.unwrap_or(default);
    if !(1..=3).contains(&order) {
        return Err(FieldError::value("solver_order", order, "1, 2 or 3"));
    }
    sampler.order = order;
    sampler.lower_order_final = c.bool("lower_order_final")?.unwrap_or(lower_order_final);
    Ok(order)
}

/// `final_sigmas_type`: whether the last step goes to sigma = 0.
/// `num_train_timesteps` (1000 by default), checked.
pub(crate) fn train_timesteps(c: &mut Config) -> Result<usize, FieldError> {
    let n_train = c.usize("num_train_timesteps")?.unwrap_or(1000);
    if !(2..=adeis_compiler::grid::MAX_STEPS).contains(&n_train) {
        return Err(FieldError::value(
            "num_train_timesteps",
            n_train,
            format!("from 2 to {}", adeis_compiler::grid::MAX_STEPS),
        ));
    }
    Ok(n_train)
}

pub(crate) fn final_zero(c: &mut Config) -> Result<bool, FieldError> {
    Ok(c.choice("final_sigmas_type", &["zero", "sigma_min"])? == "zero")
}

/// `solver_type` of the DPM-Solver classes.
pub(crate) fn dpm_solver_type(c: &mut Config) -> Result<SolverType, FieldError> {
    Ok(match c.choice("solver_type", &["midpoint", "heun"])? {
        "midpoint" => SolverType::Midpoint,
        _ => SolverType::Heun,
    })
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_json_floats_become_readable() {
        let text = r#"{"_class_name": "X", "a": -Infinity, "b": "Infinity in a string", "c": NaN}"#;
        let v: Map<String, Value> = serde_json::from_str(&standard_json(text)).unwrap();
        assert_eq!(v["a"], Value::String("-Infinity".into()));
        assert_eq!(v["b"], Value::String("Infinity in a string".into()));
        assert!(is_scheduler_config(text));
        assert!(!is_scheduler_config(r#"{"sampler": {}}"#));
    }

    #[test]
    fn spacings_are_numpy_s() {
        // diffusers 0.42, 1000 train timesteps.
        assert_eq!(
            spacing_timesteps(TimestepSpacing::Linspace, 10, 1000, 1000, 0),
            vec![999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
        );
        assert_eq!(
            spacing_timesteps(TimestepSpacing::Leading, 12, 1000, 1000, 1),
            vec![913, 837, 761, 685, 609, 533, 457, 381, 305, 229, 153, 77]
        );
        assert_eq!(
            spacing_timesteps(TimestepSpacing::Trailing, 3, 1000, 1000, 0),
            vec![999, 666, 332]
        );
        assert_eq!(
            ddim_timesteps(TimestepSpacing::Leading, 10, 1000, 1),
            vec![901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
        );
    }

    #[test]
    fn unknown_keys_and_unsupported_values_are_named() {
        let base = r#""_class_name": "DPMSolverMultistepScheduler""#;
        let e = translate(&format!("{{{base}, \"beta_shedule\": \"linear\"}}"), 10).unwrap_err();
        assert_eq!(e.key, "beta_shedule");
        let e = translate(&format!("{{{base}, \"use_beta_sigmas\": true}}"), 10).unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.value.as_deref()),
            ("use_beta_sigmas", Some("true"))
        );
        let e = translate(
            &format!("{{{base}, \"use_karras_sigmas\": true, \"use_lu_lambdas\": true}}"),
            10,
        )
        .unwrap_err();
        assert!(e.allowed.contains("give one sigma spacing"), "{e}");
        let e = translate(
            r#"{"_class_name": "UniPCMultistepScheduler", "use_lu_lambdas": true}"#,
            10,
        )
        .unwrap_err();
        assert!(
            e.allowed
                .contains("adeis reads it for DPMSolverMultistepScheduler"),
            "{e}"
        );
        let e = translate(
            &format!("{{{base}, \"algorithm_type\": \"dpmsolver+\"}}"),
            10,
        )
        .unwrap_err();
        assert!(e.allowed.contains("\"sde-dpmsolver++\""), "{e}");
        // A class adeis does not read (EulerDiscreteScheduler was this example until it was
        // read).
        let e = translate(r#"{"_class_name": "HeunDiscreteScheduler"}"#, 10).unwrap_err();
        assert_eq!(e.key, "_class_name");
        let e = translate(&format!("{{{base}}}"), 0).unwrap_err();
        assert_eq!(e.key, "steps");
        let e = translate(r#"{"_class_name": "DDIMScheduler"}"#, 10).unwrap_err();
        assert_eq!(e.key, "clip_sample");
        let e = translate(
            r#"{"_class_name": "DDIMScheduler", "clip_sample": false, "timestep_spacing": "linspace"}"#,
            10,
        )
        .unwrap_err();
        assert_eq!(e.key, "timestep_spacing");
        assert!(e.allowed.contains("from timestep 999 to 899"), "{e}");
    }

    /// The singlestep scheduler's and thresholding's refusals: each names the key and says why.
    #[test]
    fn singlestep_and_thresholding_refusals_are_named() {
        let single = r#""_class_name": "DPMSolverSinglestepScheduler""#;
        let refused = |text: String, key: &str, why: &str| {
            let e = translate(&text, 10).unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(e.allowed.contains(why), "{e}");
        };
        refused(
            format!("{{{single}, \"algorithm_type\": \"dpmsolver\"}}"),
            "final_sigmas_type",
            "diffusers refuses this pair too",
        );
        refused(
            format!("{{{single}, \"algorithm_type\": \"sde-dpmsolver++\", \"solver_order\": 3}}"),
            "solver_order",
            "1 or 2 with sde-dpmsolver++",
        );
        refused(
            format!("{{{single}, \"algorithm_type\": \"dpmsolver\", \"final_sigmas_type\": \"sigma_min\", \"thresholding\": true}}"),
            "thresholding",
            "whole alpha table",
        );
        // It has no timestep_spacing: a config that says one is not diffusers' own.
        refused(
            format!("{{{single}, \"timestep_spacing\": \"trailing\"}}"),
            "timestep_spacing",
            "not a key adeis knows for DPMSolverSinglestepScheduler",
        );
        // Karras sigmas ending on a repeated sigma_min with a last step of order 2.
        refused(
            format!(
                "{{{single}, \"use_karras_sigmas\": true, \"final_sigmas_type\": \"sigma_min\"}}"
            ),
            "final_sigmas_type",
            "is of order 2",
        );
        refused(
            r#"{"_class_name": "DDIMScheduler", "clip_sample": false, "thresholding": true}"#
                .into(),
            "thresholding",
            "network's own eps",
        );
        refused(
            r#"{"_class_name": "UniPCMultistepScheduler", "thresholding": true, "dynamic_thresholding_ratio": 1.5}"#.into(),
            "dynamic_thresholding_ratio",
            "from 0 to 1",
        );
        refused(
            r#"{"_class_name": "UniPCMultistepScheduler", "disable_corrector": [1, -2]}"#.into(),
            "disable_corrector",
            "step indices",
        );
        // What is read: the thresholding table and the corrector list.
        let t = translate(
            r#"{"_class_name": "UniPCMultistepScheduler", "thresholding": true, "sample_max_value": 2.5, "disable_corrector": [2]}"#,
            10,
        )
        .unwrap();
        assert_eq!(
            t.spec.thresholding,
            Some(ThresholdingSpec {
                quantile: 0.995,
                max: 2.5
            })
        );
        assert_eq!(t.spec.sampler.unwrap().disable_corrector, vec![2]);
    }

    #[test]
    fn euler_refuses_what_it_does_not_run_by_name() {
        let base = r#""_class_name": "EulerDiscreteScheduler""#;
        let e = translate(&format!("{{{base}, \"use_karras_sigmas\": true}}"), 10).unwrap_err();
        assert_eq!(e.key, "use_karras_sigmas");
        assert!(e.allowed.contains("UniPCMultistepScheduler"), "{e}");
        assert!(!e.allowed.contains("EulerDiscreteScheduler"), "{e}");
        let e = translate(
            &format!("{{{base}, \"interpolation_type\": \"log_linear\"}}"),
            10,
        )
        .unwrap_err();
        assert_eq!(e.key, "interpolation_type");
        let e = translate(
            &format!("{{{base}, \"timestep_type\": \"continuous\"}}"),
            10,
        )
        .unwrap_err();
        assert_eq!(e.key, "timestep_type");
        // Fractional "linspace" timesteps: 999 (T - 1) / (N - 1) apart, the network told them.
        let t = translate(&format!("{{{base}}}"), 20).unwrap();
        assert!(
            (t.timesteps[1] - 999.0 * 18.0 / 19.0).abs() < 1e-9,
            "{:?}",
            t.timesteps
        );
        let sampler = t.spec.sampler.unwrap();
        assert_eq!(sampler.model_times.unwrap()[1], t.timesteps[1]);
        assert!(sampler.denoise_to_zero);
    }
}

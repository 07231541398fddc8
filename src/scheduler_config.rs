//! diffusers scheduler configs as specs: the `scheduler_config.json` a diffusers user has
//! (`DDIMScheduler`, `DPMSolverMultistepScheduler`, `DPMSolverSinglestepScheduler`,
//! `DEISMultistepScheduler`, `UniPCMultistepScheduler`), read as the adeis spec that computes what diffusers computes
//! with it for a given number of inference steps, step for step.
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

use serde_json::{Map, Value};

use adeis_compiler::grid::{
    numpy_arange_down, numpy_linspace, spacing_timesteps, GridKind, TimestepSpacing,
};
use adeis_compiler::sampler::{
    grid_orders, DeisBasis, SolverType, Stages, ThirdOrder, UnipcVariant,
};
use adeis_compiler::spec::{BetaSchedule, ScheduleKind};
use adeis_compiler::{
    FieldError, Method, Prediction, SamplerSpec, ScheduleSpec, Spec, ThresholdingSpec,
};

/// The diffusers scheduler classes adeis reads.
pub const CLASSES: [&str; 5] = [
    "DDIMScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
];

/// Whether JSON text is a diffusers scheduler config (it names its class).
pub fn is_scheduler_config(text: &str) -> bool {
    serde_json::from_str::<Map<String, Value>>(&standard_json(text))
        .map(|m| m.contains_key("_class_name"))
        .unwrap_or(false)
}

/// diffusers writes Python's JSON, which spells the non-finite floats as bare `Infinity`,
/// `-Infinity` and `NaN` (`"lambda_min_clipped": -Infinity`); this turns them into strings,
/// which the readers below take as those numbers.
fn standard_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
        }
        let word = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|w| rest.starts_with(w));
        if let Some(w) = word {
            out.push('"');
            out.push_str(w);
            out.push('"');
            rest = &rest[w.len()..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// A parsed config: its keys, each taken once by the reader that understands it, so that
/// whatever is left is a key adeis does not know.
struct Config {
    class: String,
    keys: Map<String, Value>,
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

impl Config {
    fn take(&mut self, key: &str) -> Option<Value> {
        self.keys.remove(key).filter(|v| !v.is_null())
    }

    fn f64(&mut self, key: &str) -> Result<Option<f64>, FieldError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(Value::String(s)) if s == "Infinity" => Ok(Some(f64::INFINITY)),
            Some(Value::String(s)) if s == "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
            Some(v) => Err(FieldError::value(key, describe(&v), "a number")),
        }
    }

    fn usize(&mut self, key: &str) -> Result<Option<usize>, FieldError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some() => {
                Ok(Some(n.as_u64().unwrap() as usize))
            }
            Some(v) => Err(FieldError::value(
                key,
                describe(&v),
                "a whole number, 0 or more",
            )),
        }
    }

    fn bool(&mut self, key: &str) -> Result<Option<bool>, FieldError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(v) => Err(FieldError::value(key, describe(&v), "true or false")),
        }
    }

    /// A string key, one of `allowed` (the first is diffusers' default when it is absent).
    fn choice(&mut self, key: &str, allowed: &[&'static str]) -> Result<&'static str, FieldError> {
        match self.take(key) {
            None => Ok(allowed[0]),
            Some(Value::String(s)) => allowed.iter().find(|a| **a == s).copied().ok_or_else(|| {
                FieldError::value(
                    key,
                    format!("\"{s}\""),
                    format!("adeis runs {}", quoted(allowed)),
                )
            }),
            Some(v) => Err(FieldError::value(
                key,
                describe(&v),
                format!("one of {}", quoted(allowed)),
            )),
        }
    }

    /// A key adeis runs only at one value (diffusers' default): anything else is an error that
    /// says why.
    fn only(&mut self, key: &str, default: Value, why: &str) -> Result<(), FieldError> {
        match self.take(key) {
            None => Ok(()),
            Some(v) if v == default => Ok(()),
            Some(v) => Err(FieldError::value(key, describe(&v), why.to_string())),
        }
    }

    /// The error for a key no reader took: one adeis does not know for this class.
    fn reject_unknown(&self) -> Result<(), FieldError> {
        match self.keys.keys().next() {
            Some(key) => Err(FieldError::new(
                key.clone(),
                format!("not a key adeis knows for {}", self.class),
            )),
            None => Ok(()),
        }
    }

    /// Drops keys that matter only for an option that is off.
    fn ignore(&mut self, keys: &[&str]) {
        for k in keys {
            self.keys.remove(*k);
        }
    }
}

fn quoted(xs: &[&str]) -> String {
    xs.iter()
        .map(|x| format!("\"{x}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// DDIM's inference timesteps (it has no step to a final point beyond them).
pub fn ddim_timesteps(
    spacing: TimestepSpacing,
    steps: usize,
    n_train: usize,
    offset: i64,
) -> Vec<i64> {
    let round = |v: f64| v.round_ties_even() as i64;
    match spacing {
        TimestepSpacing::Linspace => {
            let mut t: Vec<i64> = numpy_linspace(0.0, n_train as f64 - 1.0, steps)
                .into_iter()
                .map(round)
                .collect();
            t.reverse();
            t
        }
        TimestepSpacing::Leading => {
            let ratio = (n_train / steps) as i64;
            (0..steps as i64)
                .rev()
                .map(|i| i * ratio + offset)
                .collect()
        }
        TimestepSpacing::Trailing => {
            numpy_arange_down(n_train as f64, n_train as f64 / steps as f64)
                .into_iter()
                .map(|v| round(v) - 1)
                .collect()
        }
    }
}

/// A scheduler config read as an adeis spec for a number of inference steps, with what the
/// translation did (for `adeis check`).
#[derive(Clone, Debug)]
pub struct Translated {
    /// The adeis spec: the discrete schedule and the sampler on diffusers' timesteps.
    pub spec: Spec,
    /// The diffusers timesteps the model is evaluated at, noisiest first.
    pub timesteps: Vec<i64>,
    /// One line per choice worth knowing: how diffusers' option maps, and where adeis's own
    /// variant differs and how to ask for it.
    pub notes: Vec<String>,
}

/// The spec that runs `text` (a diffusers scheduler config) for `steps` inference steps.
pub fn translate(text: &str, steps: usize) -> Result<Translated, FieldError> {
    let keys: Map<String, Value> = serde_json::from_str(&standard_json(text))
        .map_err(|e| FieldError::new("", format!("not a JSON object: {e}")))?;
    let class = match keys.get("_class_name") {
        Some(Value::String(s)) => s.clone(),
        other => {
            return Err(FieldError::value(
                "_class_name",
                other.map(describe).unwrap_or_else(|| "(absent)".into()),
                format!("a diffusers scheduler class: {}", quoted(&CLASSES)),
            ))
        }
    };
    if !CLASSES.contains(&class.as_str()) {
        return Err(FieldError::value(
            "_class_name",
            format!("\"{class}\""),
            format!("adeis reads {}", quoted(&CLASSES)),
        ));
    }
    if steps == 0 {
        return Err(FieldError::value(
            "steps",
            0,
            "a scheduler config needs the number of inference steps: --steps N, N at least 1",
        ));
    }
    adeis_compiler::grid::check_steps("steps", steps)?;
    let mut c = Config { class, keys };
    c.keys.retain(|k, _| !k.starts_with('_'));
    let mut notes = Vec::new();

    // The beta schedule.
    let n_train = c.usize("num_train_timesteps")?.unwrap_or(1000);
    if !(2..=adeis_compiler::grid::MAX_STEPS).contains(&n_train) {
        return Err(FieldError::value(
            "num_train_timesteps",
            n_train,
            format!("from 2 to {}", adeis_compiler::grid::MAX_STEPS),
        ));
    }
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

    let prediction = match c.choice("prediction_type", &["epsilon", "sample", "v_prediction"])? {
        "epsilon" => Prediction::Eps,
        "sample" => Prediction::X0,
        _ => Prediction::V,
    };
    let thresholding = if c.bool("thresholding")?.unwrap_or(false) {
        if c.class == "DDIMScheduler" {
            return Err(FieldError::value(
                "thresholding",
                true,
                "diffusers' DDIM thresholds its x0 but steps with the network's own eps, a step adeis's samplers (one prediction per evaluation) do not take; the DPM-Solver, DEIS and UniPC schedulers' thresholding is read",
            ));
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
    let multistep_class = c.class != "DDIMScheduler";
    let mut sigma_mode = None;
    for (key, mode, classes) in [
        (
            "use_karras_sigmas",
            SigmaMode::Karras,
            "DPMSolverMultistepScheduler, DEISMultistepScheduler, UniPCMultistepScheduler",
        ),
        (
            "use_exponential_sigmas",
            SigmaMode::Exponential,
            "DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler",
        ),
        (
            "use_lu_lambdas",
            SigmaMode::UniformLambda,
            "DPMSolverMultistepScheduler",
        ),
    ] {
        if c.bool(key)?.unwrap_or(false) {
            let reads = match mode {
                SigmaMode::Karras => multistep_class,
                SigmaMode::Exponential => c.class.starts_with("DPMSolver"),
                SigmaMode::UniformLambda => c.class == "DPMSolverMultistepScheduler",
            };
            if !reads {
                return Err(FieldError::value(
                    key,
                    true,
                    format!("adeis reads it for {classes}"),
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
    for (key, why) in [
        (
            "use_beta_sigmas",
            "beta sigmas are not read from scheduler configs yet",
        ),
        (
            "use_flow_sigmas",
            "flow-matching schedules are not diffusion schedules adeis runs",
        ),
        (
            "use_dynamic_shifting",
            "dynamic shifting belongs to flow-matching schedules",
        ),
    ] {
        c.only(key, Value::Bool(false), why)?;
    }
    c.ignore(&["flow_shift", "time_shift_type"]);
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
    // diffusers' default spacing is "leading" for DDIM, "linspace" for the others.
    let spacings: &[&'static str] = if c.class == "DDIMScheduler" {
        &["leading", "linspace", "trailing"]
    } else {
        &["linspace", "leading", "trailing"]
    };
    // DPMSolverSinglestepScheduler has no spacing: its timesteps are "linspace"'s (a
    // `timestep_spacing` in its config is a key it does not read, and an error here).
    let singlestep = c.class == "DPMSolverSinglestepScheduler";
    let spacing = match singlestep {
        true => TimestepSpacing::Linspace,
        false => match c.choice("timestep_spacing", spacings)? {
            "linspace" => TimestepSpacing::Linspace,
            "leading" => TimestepSpacing::Leading,
            _ => TimestepSpacing::Trailing,
        },
    };
    let offset = match singlestep {
        true => 0,
        false => c.usize("steps_offset")?.unwrap_or(0) as i64,
    };

    let mut sampler = SamplerSpec::new(Method::Ddim, 1, steps);
    sampler.prediction = prediction;
    let timesteps;
    let mut indices: Vec<i64>;
    match c.class.as_str() {
        "DDIMScheduler" => {
            if c.bool("clip_sample")?.unwrap_or(true) {
                return Err(FieldError::value(
                    "clip_sample",
                    true,
                    "adeis does not clip the data prediction; set `clip_sample` to false (diffusers' default is true; Stable Diffusion's configs set it false)",
                ));
            }
            c.ignore(&["clip_sample_range"]);
            let set_alpha_to_one = c.bool("set_alpha_to_one")?.unwrap_or(true);
            timesteps = ddim_timesteps(spacing, steps, n_train, offset);
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
            indices = timesteps.clone();
            let last = timesteps[timesteps.len() - 1] - ratio;
            if last >= 0 {
                indices.push(last);
            } else if set_alpha_to_one {
                sampler.denoise_to_zero = true;
                notes.push("set_alpha_to_one: the last step goes to alpha = 1, the data prediction (denoise_to_zero)".into());
            } else if timesteps[timesteps.len() - 1] != 0 {
                indices.push(0);
            }
        }
        "DPMSolverMultistepScheduler"
        | "DPMSolverSinglestepScheduler"
        | "DEISMultistepScheduler"
        | "UniPCMultistepScheduler" => {
            let class = c.class.clone();
            let order = c
                .usize("solver_order")?
                .unwrap_or(if class == "DEISMultistepScheduler" {
                    3
                } else {
                    2
                });
            if !(1..=3).contains(&order) {
                return Err(FieldError::value("solver_order", order, "1, 2 or 3"));
            }
            sampler.order = order;
            sampler.lower_order_final = c.bool("lower_order_final")?.unwrap_or(!singlestep);
            let mut final_zero = class != "DEISMultistepScheduler";
            let mut last = n_train;
            match class.as_str() {
                "DPMSolverMultistepScheduler" => {
                    let algorithm = c.choice(
                        "algorithm_type",
                        &[
                            "dpmsolver++",
                            "dpmsolver",
                            "sde-dpmsolver++",
                            "sde-dpmsolver",
                        ],
                    )?;
                    sampler.method = match algorithm {
                        "dpmsolver++" => Method::DpmSolverPp,
                        "dpmsolver" => Method::DpmSolver,
                        "sde-dpmsolver++" => Method::SdeDpmSolverPp,
                        _ => Method::SdeDpmSolver,
                    };
                    sampler.multistep = Some(true);
                    sampler.solver_type = match c.choice("solver_type", &["midpoint", "heun"])? {
                        "midpoint" => SolverType::Midpoint,
                        _ => SolverType::Heun,
                    };
                    if order == 3 {
                        sampler.third_order = ThirdOrder::Reference;
                        notes.push("solver_order = 3: diffusers' third-order coefficients are the DPM-Solver reference code's (third_order = \"reference\"); adeis's own, from the Taylor expansion, are third_order = \"taylor\" in an adeis spec".into());
                    }
                    sampler.euler_at_final = c.bool("euler_at_final")?.unwrap_or(false);
                    final_zero = c.choice("final_sigmas_type", &["zero", "sigma_min"])? == "zero";
                    let clip = c.f64("lambda_min_clipped")?.unwrap_or(f64::NEG_INFINITY);
                    last = n_train - clipped_count(&schedule, clip)?;
                }
                "DPMSolverSinglestepScheduler" => {
                    let algorithm = c.choice(
                        "algorithm_type",
                        &["dpmsolver++", "dpmsolver", "sde-dpmsolver++"],
                    )?;
                    sampler.method = match algorithm {
                        "dpmsolver++" => Method::DpmSolverPp,
                        "dpmsolver" => Method::DpmSolver,
                        _ => Method::SdeDpmSolverPp,
                    };
                    sampler.stages = Stages::Grid;
                    sampler.solver_type = match c.choice("solver_type", &["midpoint", "heun"])? {
                        "midpoint" => SolverType::Midpoint,
                        _ => SolverType::Heun,
                    };
                    if algorithm == "sde-dpmsolver++" && order == 3 {
                        return Err(FieldError::value(
                            "solver_order",
                            3,
                            "1 or 2 with sde-dpmsolver++ (adeis's SDE-DPM-Solver++ has orders 1 and 2)",
                        ));
                    }
                    final_zero = c.choice("final_sigmas_type", &["zero", "sigma_min"])? == "zero";
                    if final_zero && algorithm == "dpmsolver" {
                        return Err(FieldError::value(
                            "final_sigmas_type",
                            "\"zero\"",
                            "\"sigma_min\" with algorithm_type \"dpmsolver\" (diffusers refuses this pair too)",
                        ));
                    }
                    if thresholding.is_some() && algorithm == "dpmsolver" {
                        // Its convert_model_output indexes its alpha table with the timestep
                        // it is not given (None), which takes the whole table.
                        return Err(FieldError::value(
                            "thresholding",
                            true,
                            "not with algorithm_type \"dpmsolver\": diffusers' singlestep scheduler thresholds that pair with its whole alpha table (the timestep is missing there), so there is no diffusers result to reproduce; use \"dpmsolver++\"",
                        ));
                    }
                    // diffusers switches lower_order_final on when the steps do not split
                    // into whole groups and when the last step goes to sigma = 0.
                    if !sampler.lower_order_final && (final_zero || !steps.is_multiple_of(order)) {
                        sampler.lower_order_final = true;
                        notes.push(format!(
                            "lower_order_final: diffusers switches it on {}, and so does adeis",
                            if final_zero {
                                "with final_sigmas_type \"zero\""
                            } else {
                                "when the steps are not a multiple of solver_order"
                            }
                        ));
                    }
                    if order > 1 {
                        notes.push(format!(
                            "DPMSolverSinglestepScheduler: singlestep steps whose intermediate points are the grid's timesteps (stages = \"grid\"), orders {:?}; adeis's own DPM-Solver-2/-3 place them at fractions of each step in lambda (stages = \"lambda\")",
                            grid_orders(steps, order, sampler.lower_order_final, false)
                        ));
                    }
                    let clip = c.f64("lambda_min_clipped")?.unwrap_or(f64::NEG_INFINITY);
                    last = n_train - clipped_count(&schedule, clip)?;
                }
                "DEISMultistepScheduler" => {
                    c.choice("algorithm_type", &["deis"])?;
                    c.choice("solver_type", &["logrho"])?;
                    sampler.method = Method::Deis;
                    sampler.deis_basis = DeisBasis::LogRho;
                    notes.push("DEIS solver_type \"logrho\": the basis is a polynomial in log rho (deis_basis = \"log_rho\"); adeis's own default is the DEIS paper's tAB, in t (deis_basis = \"t\")".into());
                }
                _ => {
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
                        let steps_listed: Vec<usize> =
                            serde_json::from_value(v.clone()).map_err(|_| {
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
                    final_zero = c.choice("final_sigmas_type", &["zero", "sigma_min"])? == "zero";
                    // diffusers' UniPC lowers the final orders at any number of steps.
                    if sampler.lower_order_final && steps >= 15 && order == 3 {
                        return Err(FieldError::value(
                            "solver_order",
                            3,
                            "with lower_order_final and 15 or more steps diffusers' UniPC lowers its last steps where adeis lowers them only below 15 steps; use solver_order 2 or fewer steps",
                        ));
                    }
                }
            }
            if final_zero {
                sampler.denoise_to_zero = true;
                sampler.count_final_step = sampler.lower_order_final;
                notes.push("final_sigmas_type = \"zero\": the last step goes to sigma = 0, the data prediction of the last evaluation (denoise_to_zero, counted as a step: count_final_step)".into());
            }
            if let Some((key, mode)) = sigma_mode {
                let cosine = beta_schedule == "squaredcos_cap_v2" && schedule.betas.is_none();
                let g = sigma_grid(&schedule, mode, steps, cosine, final_zero)?;
                notes.push(format!(
                    "{key}: solved at diffusers' {} sigmas (times), the model given the timesteps diffusers gives it there (model_times: {})",
                    mode.name(),
                    summary(&g.timesteps)
                ));
                if g.repeated && singlestep {
                    // The zero-length step to the repeated sigma_min leaves the state as it is
                    // only at first order.
                    let orders = grid_orders(steps, order, sampler.lower_order_final, false);
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
                sampler.grid = GridKind::Explicit;
                sampler.steps = g.times.len().saturating_sub(1);
                sampler.times = Some(g.times);
                sampler.model_times = Some(g.model_times);
                c.ignore(&["timestep_spacing", "steps_offset"]);
                c.reject_unknown()?;
                if sampler.steps < 1 {
                    return Err(FieldError::value(
                        "steps",
                        steps,
                        "one step that ends at sigma = 0 is the data prediction at the first timestep alone; adeis runs at least 2 steps here",
                    ));
                }
                notes.insert(0, format!("{} with {steps} steps and {key}", c.class));
                return Ok(Translated {
                    spec: Spec {
                        schedule: Some(schedule),
                        sampler: Some(sampler),
                        gradient: None,
                        guidance: None,
                        thresholding,
                    },
                    timesteps: g.timesteps,
                    notes,
                });
            }
            timesteps = spacing_timesteps(spacing, steps, n_train, last, offset);
            indices = timesteps.clone();
            if !final_zero && timesteps.last() != Some(&0) {
                indices.push(0);
            }
        }
        _ => unreachable!("the class was checked against CLASSES"),
    }
    c.reject_unknown()?;
    if let Some(k) = indices.iter().find(|k| **k < 0 || **k >= n_train as i64) {
        return Err(FieldError::value(
            "steps_offset",
            offset,
            format!("it puts timestep {k} outside 0..{n_train}"),
        ));
    }
    if let Some(w) = indices.windows(2).find(|w| w[1] >= w[0]) {
        return Err(FieldError::value(
            "steps",
            steps,
            format!(
                "diffusers' timesteps for it repeat ({} then {}: its spacing rounds to whole train timesteps); use fewer steps",
                w[0], w[1]
            ),
        ));
    }
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

/// diffusers' sigma spacings (its sigma is adeis's e^{-lambda}).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SigmaMode {
    /// Karras et al.'s rho = 7 spacing between the table's smallest and largest sigma.
    Karras,
    /// Uniform in log sigma (`use_exponential_sigmas`): timesteps truncated, not rounded.
    Exponential,
    /// Uniform in lambda (`use_lu_lambdas`, Lu et al.): timesteps rounded.
    UniformLambda,
}

impl SigmaMode {
    fn name(self) -> &'static str {
        match self {
            SigmaMode::Karras => "Karras",
            SigmaMode::Exponential => "exponential",
            SigmaMode::UniformLambda => "uniform-lambda",
        }
    }
}

/// The grid of a sigma spacing: adeis times where the schedule's e^{-lambda} is each sigma,
/// the model times diffusers gives the network there, and those timesteps.
struct SigmaGrid {
    times: Vec<f64>,
    model_times: Vec<f64>,
    timesteps: Vec<i64>,
    /// The last sigma repeats as the final one: a zero-length step adeis leaves out.
    repeated: bool,
}

fn compiled(schedule: &ScheduleSpec) -> Result<adeis_compiler::Schedule, FieldError> {
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
fn sigma_grid(
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

fn summary(ts: &[i64]) -> String {
    if ts.len() <= 8 {
        format!("{ts:?}")
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
fn clipped_count(schedule: &ScheduleSpec, clip: f64) -> Result<usize, FieldError> {
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
        let e = translate(r#"{"_class_name": "EulerDiscreteScheduler"}"#, 10).unwrap_err();
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
}

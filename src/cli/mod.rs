//! The subcommands of the `adeis` program. Every command returns `anyhow::Result`; `main`
//! prints the error in one place.

pub mod bench;
pub mod check;
pub mod demo;
pub mod finetune;
pub mod grad;
pub mod inputs;
pub mod invert;
pub mod learn;
pub mod model;
pub mod morph;
pub mod noise;
pub mod sample;
pub mod schedule;
pub mod train;

use std::path::Path;

use adeis::compiler::FieldError;
use adeis::prelude::*;
use adeis::runtime::optim::OptimizerKind;
use anyhow::{anyhow, bail, Result};

/// A schedule from a built-in name or a spec file.
pub fn schedule_def(arg: &str) -> Result<ScheduleDef> {
    let path = Path::new(arg);
    if path.extension().is_some() || path.exists() {
        let spec = load_spec(path)?;
        return spec.schedule_def().map_err(|e| anyhow!("{arg}: {e}"));
    }
    match ScheduleSpec::builtin(arg) {
        Some(spec) => Ok(spec.to_def()?),
        None => bail!(
            "`{arg}` is neither a built-in schedule ({}) nor a spec file (.toml or .json)",
            ScheduleDef::BUILTIN_NAMES.join(", ")
        ),
    }
}

/// Loads a spec with a [sampler] table (or a diffusers scheduler config, with `steps`) and
/// builds its problem (`command` names the caller in errors, which carry the file's path and
/// the key path). A spec without a [schedule] takes the one the model's directory gives; a
/// scheduler config's `prediction_type` must be what the model predicts.
pub fn load_problem(
    path: &Path,
    (steps, flow): (Option<usize>, &FlowShiftFlags),
    command: &str,
    model: &model::ModelChoice,
) -> Result<(Problem, inputs::SpecModelOptions)> {
    load_problem_wrt(path, (steps, None, flow), command, model)
}

/// What a diffusers flow-matching scheduler config with dynamic shifting takes beside --steps
/// (the pipeline's `mu`, or the image's token count it computes mu from).
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct FlowShiftFlags {
    /// Dynamic shifting's mu, for a FlowMatchEulerDiscreteScheduler config with
    /// use_dynamic_shifting (the pipeline's `mu`).
    #[arg(long)]
    pub mu: Option<f64>,
    /// ... or the image's sequence length, from which mu is computed as diffusers' flow
    /// pipelines compute it (latent height x width / patch size^2; 4096 for 1024x1024 SD3).
    #[arg(long = "image-seq-len")]
    pub image_seq_len: Option<usize>,
}

impl FlowShiftFlags {
    pub fn inputs(&self) -> adeis::scheduler_config::FlowShiftInputs {
        adeis::scheduler_config::FlowShiftInputs {
            mu: self.mu,
            image_seq_len: self.image_seq_len,
        }
    }
}

/// [`load_problem`] with `wrt` (grad's --wrt) in place of the spec's `gradient.wrt`.
pub fn load_problem_wrt(
    path: &Path,
    (steps, wrt, flow): (Option<usize>, Option<&str>, &FlowShiftFlags),
    command: &str,
    model: &model::ModelChoice,
) -> Result<(Problem, inputs::SpecModelOptions)> {
    let loaded = adeis::spec_file::load_spec_file_with(path, steps, &flow.inputs())?;
    let mut spec = loaded.spec;
    if let Some(list) = wrt {
        let keys = list
            .split(',')
            .map(|k| {
                let k = k.trim();
                serde_json::from_value::<adeis::compiler::WrtKey>(serde_json::json!(k)).map_err(
                    |_| {
                        anyhow!(
                            "--wrt: `{k}` is not a gradient target; the targets are x_t, cond, params, times, schedule"
                        )
                    },
                )
            })
            .collect::<Result<Vec<_>>>()?;
        spec.gradient.get_or_insert_with(Default::default).wrt = keys;
    }
    if spec.schedule.is_none() {
        spec.schedule = model.schedule()?;
    }
    if loaded.from_diffusers {
        let declared = spec.sampler.as_ref().map(|s| s.prediction);
        let predicts = model.prediction()?;
        if declared != Some(predicts) {
            bail!(
                "{}: prediction_type says the model predicts {}, but {} predicts {}",
                path.display(),
                model::prediction_name(declared.unwrap_or_default()),
                model.name(),
                model::prediction_name(predicts)
            );
        }
    }
    if spec.sampler.is_none() {
        bail!(
            "{}: no [sampler] table; `adeis {command}` needs one",
            path.display()
        );
    }
    let problem = Problem::from_spec(&spec).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok((
        problem,
        inputs::SpecModelOptions {
            guidance: spec.guidance,
            thresholding: spec.thresholding,
        },
    ))
}

/// Reads a [batch, dim] array.
pub fn read_2d(flag: &str, path: &Path) -> Result<adeis::npy::NpyArray> {
    let a = adeis::npy::read_npy(path).map_err(|e| anyhow!("{flag}: {e}"))?;
    if a.shape.len() != 2 {
        bail!(
            "{flag}: {} has shape {:?}; expected [batch, dim]",
            path.display(),
            a.shape
        );
    }
    Ok(a)
}

/// The precision of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dtype {
    F32,
    F64,
}

/// An option of the digits application with a value it does not allow, as the flag the user
/// typed: `--pairs 0: at least one pair`.
pub(crate) fn option_error(e: FieldError) -> anyhow::Error {
    let flag = format!("--{}", e.key.replace('_', "-"));
    match &e.value {
        Some(v) => anyhow!("{flag} {v}: {}", e.allowed),
        None => anyhow!("{flag}: {}", e.allowed),
    }
}

/// The digits application's errors, with options named as flags.
pub(crate) fn digits_error(e: adeis_digits::Error) -> anyhow::Error {
    match e {
        adeis_digits::Error::Option(fe) => option_error(fe),
        other => anyhow::Error::new(other),
    }
}

/// The optimiser of `adeis morph`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OptimizerArg {
    Sgd,
    Adam,
    Adopt,
    Adan,
}

impl OptimizerArg {
    pub fn kind(self) -> OptimizerKind {
        match self {
            OptimizerArg::Sgd => OptimizerKind::Sgd,
            OptimizerArg::Adam => OptimizerKind::Adam,
            OptimizerArg::Adopt => OptimizerKind::Adopt,
            OptimizerArg::Adan => OptimizerKind::Adan,
        }
    }
}

/// The dataset of `adeis train` and `adeis morph`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DatasetArg {
    /// The 8x8 digits (an MLP denoiser and classifier; the quick path).
    Digits,
    /// Fashion-MNIST at 28x28 (a convolutional UNet2DModel and classifier).
    FashionMnist,
}

//! diffusers model directories: `config.json` (a `UNet2DModel`), its weights
//! `diffusion_pytorch_model.safetensors` by diffusers' tensor names (F32, F16 or BF16, converted
//! on load), and the `scheduler_config.json` beside them, whose beta schedule and
//! `prediction_type` a spec without a `[schedule]` table takes.

use std::path::{Path, PathBuf};

use adeis_compiler::spec::{BetaSchedule, ScheduleKind};
use adeis_compiler::{FieldError, Prediction, ScheduleSpec};
use adeis_runtime::dfdx::prelude::*;
use adeis_runtime::nn::{Float, NnDevice};
use adeis_runtime::unet::{TensorMapSource, UNet2D, UNet2DConfig};
use serde::Deserialize;

use crate::error::Error;

/// The weights file diffusers writes.
pub const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

/// The keys of a diffusers scheduler config that adeis takes from a model directory.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SchedulerConfig {
    /// The scheduler class diffusers saved (`DDPMScheduler`, ...).
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    /// The number of train timesteps.
    #[serde(default)]
    pub num_train_timesteps: Option<usize>,
    /// The first beta of the linear tables.
    #[serde(default)]
    pub beta_start: Option<f64>,
    /// The last beta of the linear tables.
    #[serde(default)]
    pub beta_end: Option<f64>,
    /// linear, scaled_linear or squaredcos_cap_v2.
    #[serde(default)]
    pub beta_schedule: Option<String>,
    /// An explicit beta table.
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    /// epsilon, sample or v_prediction: what the model predicts.
    #[serde(default)]
    pub prediction_type: Option<String>,
}

/// A diffusers model directory, its config read and checked.
#[derive(Clone, Debug)]
pub struct DiffusersDir {
    /// The folder of config.json and the weights (a pipeline's `unet/`).
    pub path: PathBuf,
    /// Where the scheduler config is read from, present or not.
    scheduler_path: PathBuf,
    /// The UNet's config.json, checked.
    pub config: UNet2DConfig,
    /// The scheduler config beside the model, when there is one.
    pub scheduler: Option<SchedulerConfig>,
}

fn invalid(path: &Path, error: FieldError) -> Error {
    Error::Invalid {
        path: path.to_path_buf(),
        error,
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, Error> {
    let text = std::fs::read_to_string(path).map_err(|error| Error::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let mut de = serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| Error::Format {
        path: path.to_path_buf(),
        message: format!("at `{}`: {}", e.path(), e.inner()),
    })
}

fn read_scheduler(path: &Path) -> Result<Option<SchedulerConfig>, Error> {
    if path.exists() {
        Ok(Some(read_json(path)?))
    } else {
        Ok(None)
    }
}

impl DiffusersDir {
    /// Opens `path`: its config.json must describe a `UNet2DModel` adeis runs, and its weights
    /// file must be there (read by [`DiffusersDir::load`]). A pipeline's folder
    /// (`model_index.json` with `unet/` and `scheduler/`) opens its UNet and its scheduler.
    pub fn open(path: &Path) -> Result<DiffusersDir, Error> {
        if !path.join("config.json").exists() && path.join("unet").join("config.json").exists() {
            let mut dir = DiffusersDir::open(&path.join("unet"))?;
            dir.scheduler_path = path.join("scheduler").join("scheduler_config.json");
            dir.scheduler = read_scheduler(&dir.scheduler_path)?;
            return Ok(dir);
        }
        if !path.is_dir() {
            return Err(Error::Usage(format!(
                "{}: not a directory (a diffusers model directory holds config.json and {WEIGHTS})",
                path.display()
            )));
        }
        let config_path = path.join("config.json");
        if !config_path.exists() {
            return Err(Error::Usage(format!(
                "{}: no config.json (a diffusers model directory holds config.json and {WEIGHTS})",
                path.display()
            )));
        }
        let config: UNet2DConfig = read_json(&config_path)?;
        config.validate().map_err(|e| invalid(&config_path, e))?;
        if !path.join(WEIGHTS).exists() {
            let bin = path.join("diffusion_pytorch_model.bin");
            return Err(Error::Usage(format!(
                "{}: no {WEIGHTS}{}",
                path.display(),
                if bin.exists() {
                    " (only safetensors weights are read: save the model with safe_serialization=True)"
                } else {
                    ""
                }
            )));
        }
        let scheduler_path = path.join("scheduler_config.json");
        Ok(DiffusersDir {
            path: path.to_path_buf(),
            scheduler: read_scheduler(&scheduler_path)?,
            scheduler_path,
            config,
        })
    }

    fn scheduler_path(&self) -> PathBuf {
        self.scheduler_path.clone()
    }

    /// What the network predicts: the scheduler config's `prediction_type` (eps without one).
    pub fn prediction(&self) -> Result<Prediction, Error> {
        let Some(p) = self
            .scheduler
            .as_ref()
            .and_then(|s| s.prediction_type.as_deref())
        else {
            return Ok(Prediction::Eps);
        };
        match p {
            "epsilon" => Ok(Prediction::Eps),
            "sample" => Ok(Prediction::X0),
            "v_prediction" => Ok(Prediction::V),
            other => Err(invalid(
                &self.scheduler_path(),
                FieldError::value(
                    "prediction_type",
                    format!("{other:?}"),
                    "supported: epsilon, sample, v_prediction",
                ),
            )),
        }
    }

    /// The discrete schedule of the scheduler config (None without one).
    pub fn schedule(&self) -> Result<Option<ScheduleSpec>, Error> {
        let Some(s) = &self.scheduler else {
            return Ok(None);
        };
        let mut spec = ScheduleSpec::of_kind(ScheduleKind::Discrete);
        if let Some(b) = &s.trained_betas {
            spec.betas = Some(b.clone());
        } else {
            spec.beta_schedule = Some(match s.beta_schedule.as_deref().unwrap_or("linear") {
                "linear" => BetaSchedule::Linear,
                "scaled_linear" => BetaSchedule::ScaledLinear,
                "squaredcos_cap_v2" => BetaSchedule::SquaredcosCapV2,
                other => {
                    return Err(invalid(
                        &self.scheduler_path(),
                        FieldError::value(
                            "beta_schedule",
                            format!("{other:?}"),
                            "supported: linear, scaled_linear, squaredcos_cap_v2",
                        ),
                    ))
                }
            });
            spec.num_train_timesteps = s.num_train_timesteps;
            if spec.beta_schedule != Some(BetaSchedule::SquaredcosCapV2) {
                spec.beta_start = s.beta_start;
                spec.beta_end = s.beta_end;
            }
        }
        spec.to_def()
            .map_err(|e| invalid(&self.scheduler_path(), e))?;
        Ok(Some(spec))
    }

    /// The model, its weights converted to E; an error names missing, extra or mis-shaped
    /// tensors and tensors of another dtype.
    pub fn load<E: Float>(&self, dev: &Cpu) -> Result<UNet2D<E, Cpu>, Error>
    where
        Cpu: NnDevice<E>,
    {
        let weights = self.path.join(WEIGHTS);
        let stored = adeis_io::safetensors::read_stored(&weights)?;
        if let Some((name, t)) = stored
            .iter()
            .find(|(_, t)| !matches!(t.dtype.as_str(), "F32" | "F16" | "BF16"))
        {
            return Err(Error::Usage(format!(
                "{}: tensor `{name}` is {}; model weights are read as F32, F16 or BF16",
                weights.display(),
                t.dtype
            )));
        }
        let mut source = TensorMapSource {
            tensors: stored
                .into_iter()
                .map(|(k, t)| (k, (t.shape, t.values)))
                .collect(),
            origin: weights.display().to_string(),
        };
        let model = UNet2D::new(dev, self.config.clone(), self.prediction()?, &mut source)?;
        source.finish()?;
        Ok(model)
    }
}

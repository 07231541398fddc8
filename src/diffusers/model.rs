//! diffusers model directories: `config.json` (a `UNet2DModel` or a `UNet2DConditionModel`),
//! its weights
//! `diffusion_pytorch_model.safetensors` by diffusers' tensor names (F32, F16 or BF16, converted
//! on load), and the `scheduler_config.json` beside them, whose beta schedule and
//! `prediction_type` a spec without a `[schedule]` table takes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use adeis_compiler::spec::{BetaSchedule, ScheduleKind};
use adeis_compiler::{FieldError, Prediction, ScheduleSpec};
use adeis_runtime::nn::{Float, NnDevice};
use adeis_runtime::unet::config::SampleSize;
use adeis_runtime::unet::{
    DiffusersUNet, TensorMapSource, UNet2D, UNet2DCondition, UNet2DConditionConfig, UNet2DConfig,
};
use serde::Deserialize;

use super::VaeDir;
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

/// The tokens of a CLIP prompt's embeddings, a `UNet2DConditionModel`'s encoder hidden states
/// when a run gives no other number.
pub const CLIP_TOKENS: usize = 77;

/// The UNet classes adeis runs, by their config.
#[derive(Clone, Debug)]
pub enum UNetConfig {
    /// `UNet2DModel` (pixel or latent space, optionally class-conditional).
    Plain(UNet2DConfig),
    /// `UNet2DConditionModel` (Stable Diffusion's: conditioned on encoder hidden states).
    Conditional(UNet2DConditionConfig),
}

impl UNetConfig {
    /// Channels of the UNet's input.
    pub fn in_channels(&self) -> usize {
        match self {
            UNetConfig::Plain(c) => c.in_channels,
            UNetConfig::Conditional(c) => c.in_channels,
        }
    }

    /// The size the UNet was trained at, when the config gives it.
    pub fn sample_size(&self) -> Option<SampleSize> {
        match self {
            UNetConfig::Plain(c) => c.sample_size,
            UNetConfig::Conditional(c) => c.sample_size,
        }
    }

    /// The config's own checks.
    pub fn validate(&self) -> Result<(), FieldError> {
        match self {
            UNetConfig::Plain(c) => c.validate(),
            UNetConfig::Conditional(c) => c.validate(),
        }
    }
}

/// A diffusers model directory, its config read and checked.
#[derive(Clone, Debug)]
pub struct DiffusersDir {
    /// The folder of config.json and the weights (a pipeline's `unet/`).
    pub path: PathBuf,
    /// Where the scheduler config is read from, present or not.
    scheduler_path: PathBuf,
    /// The UNet's config.json, checked.
    pub config: UNetConfig,
    /// The scheduler config beside the model, when there is one.
    pub scheduler: Option<SchedulerConfig>,
    /// The architecture keys config.json leaves out (diffusers' defaults fill them).
    pub defaulted: Vec<&'static str>,
    /// A pipeline folder's VAE (`vae/`): the sample is its decoded image, and a loss is on
    /// that image.
    pub vae: Option<VaeDir>,
    /// For a `UNet2DConditionModel`, the number of tokens of the encoder hidden states a run
    /// gives it (its `--cond`); None: CLIP's 77.
    pub tokens: Option<usize>,
}

fn invalid(path: &Path, error: FieldError) -> Error {
    Error::Invalid {
        path: path.to_path_buf(),
        error,
    }
}

/// A diffusers JSON file read through the reader every diffusers and spec JSON file goes
/// through (`what` says what the file should be), then as T; also the object's keys.
pub(super) fn read_json<T: for<'de> Deserialize<'de>>(
    path: &Path,
    what: &str,
) -> Result<(T, serde_json::Map<String, serde_json::Value>), Error> {
    let text = std::fs::read_to_string(path).map_err(|error| Error::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let format = |message: String| Error::Format {
        path: path.to_path_buf(),
        message,
    };
    let keys = super::json::read_object(&text, what).map_err(format)?;
    let value = serde_json::Value::Object(keys.clone());
    let parsed = serde_path_to_error::deserialize(value)
        .map_err(|e| format(format!("at `{}`: {}", e.path(), e.inner())))?;
    Ok((parsed, keys))
}

/// A JSON value read by [`read_json`] as T; an error names the key path.
fn parse_as<T: for<'de> Deserialize<'de>>(
    path: &Path,
    value: serde_json::Value,
) -> Result<T, Error> {
    serde_path_to_error::deserialize(value).map_err(|e| Error::Format {
        path: path.to_path_buf(),
        message: format!("at `{}`: {}", e.path(), e.inner()),
    })
}

fn read_scheduler(path: &Path) -> Result<Option<SchedulerConfig>, Error> {
    if path.exists() {
        Ok(Some(
            read_json(path, "a diffusers scheduler_config.json")?.0,
        ))
    } else {
        Ok(None)
    }
}

/// The keys that fix a UNet2DModel's architecture, with diffusers' defaults: a config.json
/// without them gets those defaults (as in diffusers), and an error about the model says so.
const ARCHITECTURE_DEFAULTS: [(&str, &str); 7] = [
    ("block_out_channels", "[224, 448, 672, 896]"),
    (
        "down_block_types",
        "[\"DownBlock2D\", \"AttnDownBlock2D\", \"AttnDownBlock2D\", \"AttnDownBlock2D\"]",
    ),
    (
        "up_block_types",
        "[\"AttnUpBlock2D\", \"AttnUpBlock2D\", \"AttnUpBlock2D\", \"UpBlock2D\"]",
    ),
    ("layers_per_block", "2"),
    ("in_channels", "3"),
    ("out_channels", "3"),
    ("norm_num_groups", "32"),
];

/// The files holding a diffusers model's weights in `dir`: `diffusion_pytorch_model.safetensors`;
/// or the shards a `diffusion_pytorch_model.safetensors.index.json` names (diffusers' layout
/// for large models); or the `fp16` variant of either (`diffusion_pytorch_model.fp16.safetensors`,
/// as Hugging Face repositories ship it). An error says what the folder lacks.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    for stem in ["diffusion_pytorch_model", "diffusion_pytorch_model.fp16"] {
        let single = dir.join(format!("{stem}.safetensors"));
        if single.exists() {
            return Ok(vec![single]);
        }
        let index = dir.join(format!("{stem}.safetensors.index.json"));
        if index.exists() {
            return shards(&index, dir);
        }
    }
    let bin = dir.join("diffusion_pytorch_model.bin");
    Err(Error::Usage(format!(
        "{}: no {WEIGHTS} (nor its shards' {WEIGHTS}.index.json, nor the fp16 variant){}",
        dir.display(),
        if bin.exists() {
            " (only safetensors weights are read: save the model with safe_serialization=True)"
        } else {
            ""
        }
    )))
}

/// The shard files of a safetensors index (`{"weight_map": {tensor: file}}`), each a file of
/// `dir` that exists.
fn shards(index: &Path, dir: &Path) -> Result<Vec<PathBuf>, Error> {
    #[derive(Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let (parsed, _): (Index, _) = read_json(index, "a safetensors index (weight_map)")?;
    let files: BTreeSet<&String> = parsed.weight_map.values().collect();
    if files.is_empty() {
        return Err(Error::Format {
            path: index.to_path_buf(),
            message: "weight_map is empty: it names no shard".into(),
        });
    }
    files
        .into_iter()
        .map(|f| {
            // A shard is a file beside the index, never a path elsewhere.
            let plain = Path::new(f).file_name().is_some_and(|n| n == f.as_str());
            let path = dir.join(f);
            if !plain || !path.is_file() {
                return Err(Error::Format {
                    path: index.to_path_buf(),
                    message: format!(
                        "weight_map names the shard {f:?}, which is not a file in {}",
                        dir.display()
                    ),
                });
            }
            Ok(path)
        })
        .collect()
}

/// The tensors of a diffusers model folder's weights (one file or its shards, by
/// [`weight_files`]) by name, checked: F32, F16 or BF16 (widened), each name in one shard only,
/// and finite (a NaN or an infinity is named here, not found as the sampler's NaN).
pub fn read_weights(dir: &Path) -> Result<TensorMapSource, Error> {
    let files = weight_files(dir)?;
    let mut tensors = BTreeMap::new();
    for weights in &files {
        for (name, t) in adeis_io::safetensors::read_stored(weights)? {
            if !matches!(t.dtype.as_str(), "F32" | "F16" | "BF16") {
                return Err(Error::Usage(format!(
                    "{}: tensor `{name}` is {}; model weights are read as F32, F16 or BF16",
                    weights.display(),
                    t.dtype
                )));
            }
            if tensors.contains_key(&name) {
                return Err(Error::Usage(format!(
                    "{}: tensor `{name}` is in two shards; each tensor belongs to one",
                    weights.display()
                )));
            }
            tensors.insert(name, (t.shape, t.values));
        }
    }
    let origin = match &files[..] {
        [one] => one.display().to_string(),
        many => format!("{} ({} shards)", dir.display(), many.len()),
    };
    let source = TensorMapSource { tensors, origin };
    if let Some((name, (shape, values))) = source
        .tensors
        .iter()
        .find(|(_, (_, v))| v.iter().any(|x| !x.is_finite()))
    {
        let bad = values.iter().filter(|x| !x.is_finite()).count();
        let (i, v) = values
            .iter()
            .enumerate()
            .find(|(_, x)| !x.is_finite())
            .expect("found above");
        return Err(Error::Usage(format!(
            "{}: tensor `{name}` {shape:?} holds {v} at flat index {i} ({bad} non-finite value{} in it): the weights must be finite numbers",
            source.origin,
            if bad == 1 { "" } else { "s" }
        )));
    }
    Ok(source)
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
            if path.join("vae").exists() {
                let vae = VaeDir::open(&path.join("vae"))?;
                let (latent, unet_in) = (vae.config.latent_channels, dir.config.in_channels());
                if latent != unet_in {
                    return Err(Error::Usage(format!(
                        "{}: the VAE's latent_channels is {latent} but the UNet's in_channels is {unet_in}: they are not one pipeline's models",
                        path.display()
                    )));
                }
                dir.vae = Some(vae);
            }
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
        let (value, keys): (serde_json::Value, _) =
            read_json(&config_path, "a diffusers model's config.json")?;
        let config = match keys.get("_class_name") {
            None => {
                return Err(Error::Format {
                    path: config_path,
                    message: "no `_class_name`: not a diffusers model config (diffusers writes the model's class there, \"UNet2DModel\" or \"UNet2DConditionModel\" for the models adeis runs)".into(),
                });
            }
            Some(c) if c == "UNet2DConditionModel" => {
                UNetConfig::Conditional(parse_as(&config_path, value)?)
            }
            Some(_) => UNetConfig::Plain(parse_as(&config_path, value)?),
        };
        // The defaults note is UNet2DModel's (whose defaults are a pixel-space model's).
        let defaulted: Vec<&'static str> = match config {
            UNetConfig::Plain(_) => ARCHITECTURE_DEFAULTS
                .iter()
                .filter(|(k, _)| !keys.contains_key(*k))
                .map(|(k, _)| *k)
                .collect(),
            UNetConfig::Conditional(_) => Vec::new(),
        };
        let dir = DiffusersDir {
            path: path.to_path_buf(),
            scheduler_path: path.join("scheduler_config.json"),
            config,
            scheduler: None,
            defaulted,
            vae: None,
            tokens: None,
        };
        dir.config
            .validate()
            .map_err(|e| invalid(&config_path, dir.explain_defaults(e)))?;
        weight_files(path)?;
        Ok(DiffusersDir {
            scheduler: read_scheduler(&dir.scheduler_path)?,
            ..dir
        })
    }

    /// `e` with a note of the architecture keys config.json leaves to diffusers' defaults
    /// (an error about channels or blocks often comes from one of them).
    fn explain_defaults(&self, e: FieldError) -> FieldError {
        let Some(note) = self.defaults_note() else {
            return e;
        };
        let mut e = e;
        e.allowed = format!("{}; {note}", e.allowed);
        e
    }

    /// "config.json does not give ...: diffusers' defaults apply" (None when it gives all).
    fn defaults_note(&self) -> Option<String> {
        if self.defaulted.is_empty() {
            return None;
        }
        let given: Vec<String> = ARCHITECTURE_DEFAULTS
            .iter()
            .filter(|(k, _)| self.defaulted.contains(k))
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        Some(format!(
            "config.json does not give {}, so diffusers' defaults apply: {}",
            self.defaulted
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", "),
            given.join(", ")
        ))
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
            "flow_prediction" => Ok(Prediction::Flow),
            other => Err(invalid(
                &self.scheduler_path(),
                FieldError::value(
                    "prediction_type",
                    format!("{other:?}"),
                    "supported: epsilon, sample, v_prediction, flow_prediction",
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

    /// The folder's UNet, whatever its class, its weights converted to E (a
    /// `UNet2DConditionModel` takes encoder hidden states of [`DiffusersDir::tokens`] tokens,
    /// CLIP's [`CLIP_TOKENS`] without).
    pub fn load_unet<E: Float, D: NnDevice<E>>(
        &self,
        dev: &D,
    ) -> Result<DiffusersUNet<E, D>, Error> {
        Ok(match &self.config {
            UNetConfig::Plain(_) => DiffusersUNet::Plain(self.load(dev)?),
            UNetConfig::Conditional(_) => DiffusersUNet::Conditional(
                self.load_conditional(dev, self.tokens.unwrap_or(CLIP_TOKENS))?,
            ),
        })
    }

    /// The `UNet2DConditionModel`, its weights converted to E, taking encoder hidden states of
    /// `tokens` tokens; an error names missing, extra or mis-shaped tensors and tensors of
    /// another dtype, or says the folder holds a `UNet2DModel`.
    pub fn load_conditional<E: Float, D: NnDevice<E>>(
        &self,
        dev: &D,
        tokens: usize,
    ) -> Result<UNet2DCondition<E, D>, Error> {
        let UNetConfig::Conditional(config) = &self.config else {
            return Err(Error::Usage(format!(
                "{}: a UNet2DModel, not a UNet2DConditionModel",
                self.path.display()
            )));
        };
        let mut source = read_weights(&self.path)?;
        let model = UNet2DCondition::new(dev, config.clone(), self.prediction()?, &mut source)?
            .with_tokens(tokens);
        source.finish()?;
        Ok(model)
    }

    /// The `UNet2DModel`, its weights converted to E; an error names missing, extra or
    /// mis-shaped tensors and tensors of another dtype, or says the folder holds a
    /// `UNet2DConditionModel` ([`DiffusersDir::load_conditional`]).
    pub fn load<E: Float, D: NnDevice<E>>(&self, dev: &D) -> Result<UNet2D<E, D>, Error> {
        let UNetConfig::Plain(config) = &self.config else {
            return Err(Error::Usage(format!(
                "{}: a UNet2DConditionModel (load it with load_conditional)",
                self.path.display()
            )));
        };
        let mut source = read_weights(&self.path)?;
        let model =
            UNet2D::new(dev, config.clone(), self.prediction()?, &mut source).map_err(|e| {
                match self.defaults_note() {
                    Some(note) => Error::Usage(format!("{e}; {note}")),
                    None => e.into(),
                }
            })?;
        source.finish()?;
        Ok(model)
    }
}

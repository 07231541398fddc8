//! The Fashion-MNIST denoiser: a class-conditional diffusers `UNet2DModel` (eps prediction, the
//! linear DDPM schedule of 1000 steps, 10 classes plus a "no class" row for classifier-free
//! guidance), stored in diffusers' layout: `config.json`, `diffusion_pytorch_model.safetensors`
//! and `scheduler_config.json` in one folder, which diffusers' `UNet2DModel.from_pretrained`
//! and `adeis sample --model diffusers:DIR` both open.

use std::path::Path;

use adeis_compiler::spec::{BetaSchedule, ScheduleKind};
use adeis_compiler::{Prediction, Schedule, ScheduleSpec};
use adeis_runtime::dfdx::prelude::Cpu;
use adeis_runtime::unet::{ParamSource, TensorMapSource, UNet2D, UNet2DConfig};

use crate::data::{CLASSES, SIDE};
use crate::params::{bytes_source, file_source, HostParams};
use crate::Error;

/// The class row that means "no class".
pub const NULL_CLASS: usize = CLASSES;
/// The UNet's config file (diffusers' layout).
pub const CONFIG_FILE: &str = "config.json";
/// Its weights file.
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";
/// Its scheduler config.
pub const SCHEDULER_FILE: &str = "scheduler_config.json";
/// Train timesteps of its DDPM schedule.
pub const TRAIN_TIMESTEPS: usize = 1000;
/// The schedule's first beta.
pub const BETA_START: f64 = 1e-4;
/// The schedule's last beta.
pub const BETA_END: f64 = 0.02;

/// The UNet's config.json: three levels (28, 14, 7 pixels) of 32, 64, 64 channels, one resnet
/// per level (two on the way up, as diffusers builds it), self-attention in the 7x7 middle
/// block, GroupNorm in groups of 8 channels, 11 class embeddings.
pub fn config_json() -> serde_json::Value {
    serde_json::json!({
        "_class_name": "UNet2DModel",
        "_diffusers_version": "0.42.1",
        "sample_size": SIDE,
        "in_channels": 1,
        "out_channels": 1,
        "center_input_sample": false,
        "time_embedding_type": "positional",
        "freq_shift": 0,
        "flip_sin_to_cos": true,
        "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D"],
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": ["UpBlock2D", "UpBlock2D", "UpBlock2D"],
        "block_out_channels": [32, 64, 64],
        "layers_per_block": 1,
        "mid_block_scale_factor": 1,
        "downsample_padding": 1,
        "downsample_type": "conv",
        "upsample_type": "conv",
        "dropout": 0.0,
        "act_fn": "silu",
        "attention_head_dim": 32,
        "norm_num_groups": 8,
        "norm_eps": 1e-5,
        "resnet_time_scale_shift": "default",
        "add_attention": true,
        "class_embed_type": null,
        "num_class_embeds": CLASSES + 1,
    })
}

/// diffusers' `DDPMScheduler` config of the training schedule.
pub fn scheduler_json() -> serde_json::Value {
    serde_json::json!({
        "_class_name": "DDPMScheduler",
        "_diffusers_version": "0.42.1",
        "num_train_timesteps": TRAIN_TIMESTEPS,
        "beta_start": BETA_START,
        "beta_end": BETA_END,
        "beta_schedule": "linear",
        "trained_betas": null,
        "variance_type": "fixed_small",
        "clip_sample": false,
        "prediction_type": "epsilon",
        "thresholding": false,
        "timestep_spacing": "leading",
        "steps_offset": 0,
    })
}

/// The UNet's built-in config.
pub fn config() -> UNet2DConfig {
    serde_json::from_value(config_json()).expect("the built-in config parses")
}

/// The discrete linear DDPM schedule the UNet is trained on, as adeis compiles it (the same
/// schedule `--model diffusers:DIR` reads from scheduler_config.json).
pub fn schedule() -> Result<Schedule, Error> {
    let mut spec = ScheduleSpec::of_kind(ScheduleKind::Discrete);
    spec.beta_schedule = Some(BetaSchedule::Linear);
    spec.num_train_timesteps = Some(TRAIN_TIMESTEPS);
    spec.beta_start = Some(BETA_START);
    spec.beta_end = Some(BETA_END);
    let def = spec.to_def().map_err(adeis_compiler::Error::from)?;
    Ok(def.compile().map_err(adeis_compiler::Error::from)?)
}

/// alpha-bar of train index i (diffusers: the cumulative product of 1 - beta, betas linear in
/// the index).
pub fn alphas_cumprod() -> Vec<f64> {
    let n = TRAIN_TIMESTEPS;
    let mut acc = 1.0;
    (0..n)
        .map(|i| {
            let beta = BETA_START + (BETA_END - BETA_START) * i as f64 / (n - 1) as f64;
            acc *= 1.0 - beta;
            acc
        })
        .collect()
}

/// A UNet of the built-in config with parameters from `source`.
pub fn build(dev: &Cpu, source: &mut dyn ParamSource) -> Result<UNet2D<f32, Cpu>, Error> {
    Ok(UNet2D::new(dev, config(), Prediction::Eps, source)?)
}

/// The UNet with the parameters `p`.
pub fn model(dev: &Cpu, p: &HostParams) -> Result<UNet2D<f32, Cpu>, Error> {
    from_source(dev, p.source("training parameters"))
}

/// Writes the UNet with parameters `p` in diffusers' layout into `dir` (its files together).
pub fn save(p: &HostParams, dir: &Path) -> Result<(), Error> {
    let mut files = adeis_io::Outputs::new();
    stage(p, dir, &mut files)?;
    files.commit()?;
    Ok(())
}

/// The files of [`save`], staged in `files` (`dir` is made at the commit).
pub fn stage(p: &HostParams, dir: &Path, files: &mut adeis_io::Outputs) -> Result<(), Error> {
    files.stage_creating_folders(&dir.join(WEIGHTS_FILE), &p.safetensors_bytes())?;
    for (file, json) in [
        (CONFIG_FILE, config_json()),
        (SCHEDULER_FILE, scheduler_json()),
    ] {
        files.stage_creating_folders(
            &dir.join(file),
            serde_json::to_string_pretty(&json).unwrap().as_bytes(),
        )?;
    }
    Ok(())
}

/// The files [`save`] writes into a folder.
pub const FILES: [&str; 3] = [WEIGHTS_FILE, CONFIG_FILE, SCHEDULER_FILE];

/// Opens a UNet saved by [`save`] (the built-in config; its config.json must be
/// that config).
pub fn load(dev: &Cpu, dir: &Path) -> Result<UNet2D<f32, Cpu>, Error> {
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| {
        Error::file(
            &cfg_path,
            format!("{e} (run `adeis train --dataset fashion-mnist` to make the model)"),
        )
    })?;
    let cfg: UNet2DConfig = serde_json::from_str(&text)
        .map_err(|e| Error::file(&cfg_path, format!("not a UNet2DModel config: {e}")))?;
    if cfg != config() {
        return Err(Error::file(
            &cfg_path,
            "not the Fashion-MNIST UNet's config (open other diffusers models with --model diffusers:DIR)",
        ));
    }
    let weights = dir.join(WEIGHTS_FILE);
    from_source(dev, file_source(&weights)?)
}

fn from_source(dev: &Cpu, mut source: TensorMapSource) -> Result<UNet2D<f32, Cpu>, Error> {
    let m = build(dev, &mut source)?;
    source.finish()?;
    Ok(m)
}

/// A UNet from safetensors bytes (weights compiled into the program).
pub fn from_bytes(dev: &Cpu, bytes: &[u8], origin: &Path) -> Result<UNet2D<f32, Cpu>, Error> {
    from_source(dev, bytes_source(bytes, origin)?)
}

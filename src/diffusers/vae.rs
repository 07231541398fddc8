//! A diffusers `AutoencoderKL` folder (a pipeline's `vae/`): `config.json` and
//! `diffusion_pytorch_model.safetensors`, read and checked as the UNet's folder is.

use std::path::{Path, PathBuf};

use adeis_runtime::nn::{Float, NnDevice};
use adeis_runtime::unet::{AutoencoderKL, AutoencoderKLConfig};

use super::model::{read_json, read_weights, weight_files, WEIGHTS};
use crate::error::Error;

/// A diffusers `AutoencoderKL` folder, its config read and checked.
#[derive(Clone, Debug)]
pub struct VaeDir {
    /// The folder of config.json and the weights.
    pub path: PathBuf,
    /// Its config.json, checked.
    pub config: AutoencoderKLConfig,
}

impl VaeDir {
    /// Opens `path`: its config.json must describe an `AutoencoderKL` adeis runs, and its
    /// weights file must be there (read by [`VaeDir::load`]).
    pub fn open(path: &Path) -> Result<VaeDir, Error> {
        let config_path = path.join("config.json");
        if !config_path.exists() {
            return Err(Error::Usage(format!(
                "{}: no config.json (a diffusers VAE folder holds config.json and {WEIGHTS})",
                path.display()
            )));
        }
        let (config, keys): (AutoencoderKLConfig, _) =
            read_json(&config_path, "a diffusers VAE's config.json")?;
        if keys.get("_class_name").is_none() {
            return Err(Error::Format {
                path: config_path,
                message: "no `_class_name`: not a diffusers model config (diffusers writes the model's class there, \"AutoencoderKL\" for the VAEs adeis runs)".into(),
            });
        }
        config.validate().map_err(|error| Error::Invalid {
            path: config_path.clone(),
            error,
        })?;
        weight_files(path)?;
        Ok(VaeDir {
            path: path.to_path_buf(),
            config,
        })
    }

    /// The VAE, its weights converted to E; an error names missing, extra or mis-shaped
    /// tensors and tensors of another dtype.
    pub fn load<E: Float, D: NnDevice<E>>(&self, dev: &D) -> Result<AutoencoderKL<E, D>, Error> {
        let mut source = read_weights(&self.path)?;
        let vae = AutoencoderKL::new(dev, self.config.clone(), &mut source)?;
        source.finish()?;
        Ok(vae)
    }
}

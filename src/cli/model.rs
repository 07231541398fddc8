//! The MODEL argument: `gaussian:mu=1.0,s2=0.3`, `gmm:mixture.json`, or a weights file.

use std::path::Path;

use adeis::runtime::analytic::{GaussianModel, GmmModel};
use adeis::runtime::dfdx::prelude::{Cpu, Device};
use adeis::runtime::Denoiser;

/// A model named on the command line.
#[derive(Clone, Debug)]
pub enum ModelChoice {
    Gaussian { mu: f64, s2: f64 },
    Gmm(GmmModel),
}

const HELP: &str = "MODEL is `gaussian:mu=M,s2=S` (isotropic Gaussian data, dimension from x_t), \
`gmm:FILE.json` (a mixture: {\"weights\": [...], \"means\": [[...], ...], \"variances\": [...]})";

pub fn parse_model(arg: &str) -> Result<ModelChoice, String> {
    if let Some(rest) = arg.strip_prefix("gaussian:") {
        let (mut mu, mut s2) = (0.0, 1.0);
        for kv in rest.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("--model: `{kv}` is not key=value; {HELP}"))?;
            let v: f64 = v
                .trim()
                .parse()
                .map_err(|_| format!("--model: {k} = `{v}` is not a number"))?;
            match k.trim() {
                "mu" => mu = v,
                "s2" => s2 = v,
                other => {
                    return Err(format!(
                        "--model: unknown key `{other}` for gaussian (keys: mu, s2)"
                    ))
                }
            }
        }
        if !(s2 > 0.0 && s2.is_finite() && mu.is_finite()) {
            return Err(format!(
                "--model: gaussian needs a finite mu and s2 > 0, got mu = {mu}, s2 = {s2}"
            ));
        }
        return Ok(ModelChoice::Gaussian { mu, s2 });
    }
    if let Some(file) = arg.strip_prefix("gmm:") {
        let text = std::fs::read_to_string(file).map_err(|e| format!("--model: {file}: {e}"))?;
        let gmm: GmmModel =
            serde_json::from_str(&text).map_err(|e| format!("--model: {file}: {e}"))?;
        gmm.validate()
            .map_err(|e| format!("--model: {file}: {e}"))?;
        return Ok(ModelChoice::Gmm(gmm));
    }
    if Path::new(arg).exists() {
        return Err(format!(
            "--model: {arg}: weights files are not a MODEL here; the trained digits models run in `adeis morph --models DIR` and `adeis train`; {HELP}"
        ));
    }
    Err(format!("--model: `{arg}` is not a model; {HELP}"))
}

impl ModelChoice {
    /// Checks the model against the data dimension.
    pub fn check_dim(&self, dim: usize) -> Result<(), String> {
        match self {
            ModelChoice::Gmm(g) if g.dim_of() != dim => Err(format!(
                "--x-t has dimension {dim} but the mixture's means have dimension {}",
                g.dim_of()
            )),
            _ => Ok(()),
        }
    }

    /// The model as a denoiser on the CPU for data of dimension `dim`.
    pub fn denoiser<E: adeis::runtime::dfdx::dtypes::Dtype>(
        &self,
        dim: usize,
    ) -> Box<dyn Denoiser<E, Cpu>>
    where
        Cpu: Device<E>,
    {
        match self {
            ModelChoice::Gaussian { mu, s2 } => Box::new(GaussianModel {
                mu: *mu,
                s2: *s2,
                dim,
            }),
            ModelChoice::Gmm(g) => Box::new(g.clone()),
        }
    }
}

//! The MODEL argument: `gaussian:mu=1.0,s2=0.3`, `gmm:mixture.json`, or a weights file; and
//! running a command generically over the chosen model.

use std::path::Path;

use adeis::runtime::analytic::{GaussianGrads, GmmModel};
use adeis::runtime::NoParams;
use adeis::safetensors::NamedTensor;
use anyhow::{anyhow, bail, Result};

/// A model named on the command line.
#[derive(Clone, Debug)]
pub enum ModelChoice {
    Gaussian { mu: f64, s2: f64 },
    Gmm(GmmModel),
}

const HELP: &str = "MODEL is `gaussian:mu=M,s2=S` (isotropic Gaussian data, dimension from x_t), \
`gmm:FILE.json` (a mixture: {\"weights\": [...], \"means\": [[...], ...], \"variances\": [...]})";

pub fn parse_model(arg: &str) -> Result<ModelChoice> {
    if let Some(rest) = arg.strip_prefix("gaussian:") {
        let (mut mu, mut s2) = (0.0, 1.0);
        for kv in rest.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| anyhow!("--model: `{kv}` is not key=value; {HELP}"))?;
            let v: f64 = v
                .trim()
                .parse()
                .map_err(|_| anyhow!("--model: {k} = `{v}` is not a number"))?;
            match k.trim() {
                "mu" => mu = v,
                "s2" => s2 = v,
                other => bail!("--model: unknown key `{other}` for gaussian (keys: mu, s2)"),
            }
        }
        if !(s2 > 0.0 && s2.is_finite() && mu.is_finite()) {
            bail!("--model: gaussian needs a finite mu and s2 > 0, got mu = {mu}, s2 = {s2}");
        }
        return Ok(ModelChoice::Gaussian { mu, s2 });
    }
    if let Some(file) = arg.strip_prefix("gmm:") {
        let text = std::fs::read_to_string(file).map_err(|e| anyhow!("--model: {file}: {e}"))?;
        let gmm: GmmModel =
            serde_json::from_str(&text).map_err(|e| anyhow!("--model: {file}: {e}"))?;
        gmm.validate()
            .map_err(|e| anyhow!("--model: {file}: {e}"))?;
        return Ok(ModelChoice::Gmm(gmm));
    }
    if Path::new(arg).exists() {
        bail!(
            "--model: {arg}: weights files are not a MODEL here; the trained digits models run in `adeis morph --models DIR` and `adeis train`; {HELP}"
        );
    }
    bail!("--model: `{arg}` is not a model; {HELP}")
}

impl ModelChoice {
    /// Checks the model against the data dimension.
    pub fn check_dim(&self, dim: usize) -> Result<()> {
        match self {
            ModelChoice::Gmm(g) if g.dim_of() != dim => bail!(
                "--x-t has dimension {dim} but the mixture's means have dimension {}",
                g.dim_of()
            ),
            _ => Ok(()),
        }
    }
}

/// A model's parameter gradients as the tensors `dparams.safetensors` holds (None: the model
/// has no parameters adeis differentiates).
pub trait NamedGrads {
    fn named(&self) -> Option<Vec<NamedTensor>>;
    /// Whether the model has parameters to write.
    fn has_params() -> bool;
}

impl NamedGrads for GaussianGrads {
    fn named(&self) -> Option<Vec<NamedTensor>> {
        Some(vec![NamedTensor {
            name: "s2".into(),
            shape: vec![1],
            data: vec![self.s2],
        }])
    }

    fn has_params() -> bool {
        true
    }
}

impl NamedGrads for NoParams {
    fn named(&self) -> Option<Vec<NamedTensor>> {
        None
    }

    fn has_params() -> bool {
        false
    }
}

/// Runs `$body` with `$m` bound to the chosen model as a concrete denoiser for data of
/// dimension `$dim` (so that each model keeps its own gradient type).
macro_rules! with_model {
    ($choice:expr, $dim:expr, |$m:ident| $body:expr) => {
        match $choice {
            $crate::cli::model::ModelChoice::Gaussian { mu, s2 } => {
                let $m = &adeis::runtime::analytic::GaussianModel {
                    mu: *mu,
                    s2: *s2,
                    dim: $dim,
                };
                $body
            }
            $crate::cli::model::ModelChoice::Gmm(g) => {
                let $m = g;
                $body
            }
        }
    };
}
pub(crate) use with_model;

/// The Gaussian model's conditioning is its mean: the z that fills in when none is given.
pub fn default_cond(choice: &ModelChoice) -> Option<f64> {
    match choice {
        ModelChoice::Gaussian { mu, .. } => Some(*mu),
        ModelChoice::Gmm(_) => None,
    }
}

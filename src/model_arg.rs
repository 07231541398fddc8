//! The closed-form models as a command line or a Python call names them: `gaussian:mu=M,s2=S`
//! and `gmm:FILE.json`. One parser serves the `adeis` command and the Python package, so that
//! the same string is the same model in both.

use std::path::Path;

use adeis_compiler::Prediction;
use adeis_runtime::analytic::GmmModel;

/// The eight-component ring mixture the docs and `adeis learn-steps` use by default.
pub const RING8_PATH: &str = "examples/models/ring8.json";
const RING8_JSON: &str = include_str!("../examples/models/ring8.json");

/// `gaussian:` data N(mu, s2 I) in closed form, as its argument gave it.
#[derive(Clone, Debug, PartialEq)]
pub struct GaussianArg {
    /// The mean (every coordinate).
    pub mu: f64,
    /// The variance.
    pub s2: f64,
    /// What it outputs (`pred=`, eps by default).
    pub prediction: Prediction,
    /// The keys the argument left out, filled with their defaults (mu = 0, s2 = 1).
    pub defaulted: Vec<&'static str>,
}

/// Parses what follows `gaussian:` (`mu=1.0,s2=0.3,pred=eps`; every key optional). The error
/// names the key, the value and what is allowed.
pub fn parse_gaussian(rest: &str) -> Result<GaussianArg, String> {
    let (mut mu, mut s2) = (0.0, 1.0);
    let mut prediction = Prediction::Eps;
    let mut seen: Vec<&str> = Vec::new();
    for kv in rest.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("`{kv}` is not key=value (gaussian's keys: mu, s2, pred)"))?;
        let k = k.trim();
        if seen.contains(&k) {
            return Err(format!(
                "`{k}` is given twice in `gaussian:{rest}`; give each key once"
            ));
        }
        seen.push(k);
        if k == "pred" {
            prediction = match v.trim() {
                "eps" | "epsilon" => Prediction::Eps,
                "x0" | "sample" => Prediction::X0,
                "v" | "v_prediction" => Prediction::V,
                "flow" | "flow_prediction" => Prediction::Flow,
                other => {
                    return Err(format!(
                        "gaussian pred = `{other}`; allowed: eps, x0, v, flow"
                    ))
                }
            };
            continue;
        }
        let v: f64 = v
            .trim()
            .parse()
            .map_err(|_| format!("{k} = `{v}` is not a number"))?;
        match k {
            "mu" => mu = v,
            "s2" => s2 = v,
            other => {
                return Err(format!(
                    "unknown key `{other}` for gaussian (keys: mu, s2, pred)"
                ))
            }
        }
    }
    if !(s2 > 0.0 && s2.is_finite() && mu.is_finite()) {
        return Err(format!(
            "gaussian needs a finite mu and s2 > 0, got mu = {mu}, s2 = {s2}"
        ));
    }
    let defaulted = ["mu", "s2"]
        .into_iter()
        .filter(|k| !seen.contains(k))
        .collect();
    Ok(GaussianArg {
        mu,
        s2,
        prediction,
        defaulted,
    })
}

/// Reads and validates the mixture of `gmm:FILE.json` (`{"weights": [...], "means": [[...],
/// ...], "variances": [...]}`). [`RING8_PATH`] is compiled in, so that the default works from
/// any folder.
pub fn read_gmm(file: &str) -> Result<GmmModel, String> {
    let text = if file == RING8_PATH && !Path::new(file).exists() {
        RING8_JSON.to_string()
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?
    };
    let gmm: GmmModel = serde_json::from_str(&text).map_err(|e| format!("{file}: {e}"))?;
    gmm.validate().map_err(|e| format!("{file}: {e}"))?;
    Ok(gmm)
}

//! Closed-form denoisers for testing (MATH.md section 4): isotropic Gaussian data, and a
//! Gaussian mixture, each with its exact Jacobian.

use adeis_compiler::Prediction;
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

use crate::denoiser::{Batch, Denoiser, ParamGrads, TimeInfo};
use crate::{from_f64, to_f64};

/// Data N(mu, s2 I). eps*(x, t) = sigma (x - alpha mu) / (alpha^2 s2 + sigma^2). The
/// conditioning z, when given, is mu (one row per sample); otherwise `mu` is used.
#[derive(Clone, Debug, PartialEq)]
pub struct GaussianModel {
    pub mu: f64,
    pub s2: f64,
    pub dim: usize,
}

impl GaussianModel {
    /// eps and the two derivative factors at one time: d eps/dx = sigma/v I,
    /// d eps/dmu = -sigma alpha / v I, d eps / d s2 = -sigma alpha^2 (x - alpha mu) / v^2.
    pub fn coefficients(&self, time: &TimeInfo) -> (f64, f64) {
        let v = time.alpha * time.alpha * self.s2 + time.sigma * time.sigma;
        (time.sigma / v, -time.sigma * time.alpha / v)
    }
}

impl<E: Dtype, D: Device<E>> Denoiser<E, D> for GaussianModel {
    fn prediction(&self) -> Prediction {
        Prediction::Eps
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn cond_dim(&self) -> usize {
        self.dim
    }

    fn param_grads(&self) -> ParamGrads<E, D> {
        ParamGrads::Values(vec![0.0])
    }

    fn as_taped(&self) -> Option<&dyn crate::tape::TapedDenoiser<E, D>> {
        Some(self)
    }

    /// theta = [s2]: d eps/d s2 = -sigma alpha^2 (x - alpha mu) / v^2.
    fn vjp(
        &self,
        x: &Batch<E, D>,
        z: Option<&Batch<E, D>>,
        time: &TimeInfo,
        cot: &Batch<E, D>,
        theta: Option<(&mut ParamGrads<E, D>, f64)>,
    ) -> (Batch<E, D>, Option<Batch<E, D>>) {
        let (ax, amu) = self.coefficients(time);
        if let Some((ParamGrads::Values(acc), w)) = theta {
            let (a, s) = (time.alpha, time.sigma);
            let v = a * a * self.s2 + s * s;
            let xs = to_f64(x);
            let mus = z.map(to_f64);
            let cs = to_f64(cot);
            let d: f64 = xs
                .iter()
                .zip(&cs)
                .enumerate()
                .map(|(i, (xi, ci))| {
                    let mu = mus.as_ref().map_or(self.mu, |m| m[i]);
                    ci * (-s * a * a * (xi - a * mu) / (v * v))
                })
                .sum();
            acc[0] += w * d;
        }
        let dx = cot.clone() * crate::e::<E>(ax);
        let dz = z.map(|_| cot.clone() * crate::e::<E>(amu));
        (dx, dz)
    }

    fn forward(&self, x: &Batch<E, D>, z: Option<&Batch<E, D>>, time: &TimeInfo) -> Batch<E, D> {
        let (ax, amu) = self.coefficients(time);
        let (batch, dim) = *x.shape();
        let xs = to_f64(x);
        let mus = z.map(to_f64);
        let out: Vec<f64> = xs
            .iter()
            .enumerate()
            .map(|(i, xi)| ax * xi + amu * mus.as_ref().map_or(self.mu, |m| m[i]))
            .collect();
        from_f64(&x.device().clone(), &out, batch, dim)
    }
}

/// A mixture of isotropic Gaussians, sum_k w_k N(mu_k, s2_k I) (the mixture file format of
/// `adeis sample --model gmm:FILE`, as JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GmmModel {
    pub weights: Vec<f64>,
    pub means: Vec<Vec<f64>>,
    pub variances: Vec<f64>,
}

impl GmmModel {
    /// Checks the mixture: matching lengths, positive weights and variances, one dimension.
    pub fn validate(&self) -> Result<(), String> {
        let k = self.weights.len();
        if k == 0 {
            return Err("weights: a mixture needs at least one component".into());
        }
        if self.means.len() != k || self.variances.len() != k {
            return Err(format!(
                "weights, means and variances must have the same length: {} weights, {} means, {} variances",
                k,
                self.means.len(),
                self.variances.len()
            ));
        }
        if let Some((i, w)) = self
            .weights
            .iter()
            .enumerate()
            .find(|(_, w)| !(**w > 0.0 && w.is_finite()))
        {
            return Err(format!("weights[{i}] = {w}: must be a finite number > 0"));
        }
        if let Some((i, v)) = self
            .variances
            .iter()
            .enumerate()
            .find(|(_, v)| !(**v > 0.0 && v.is_finite()))
        {
            return Err(format!("variances[{i}] = {v}: must be a finite number > 0"));
        }
        let d = self.means[0].len();
        if let Some((i, m)) = self.means.iter().enumerate().find(|(_, m)| m.len() != d) {
            return Err(format!(
                "means[{i}] has dimension {}, means[0] has {d}",
                m.len()
            ));
        }
        Ok(())
    }

    pub fn dim_of(&self) -> usize {
        self.means[0].len()
    }

    /// Responsibilities and per-component scores at one point x of the marginal at time t.
    fn components(&self, x: &[f64], time: &TimeInfo) -> (Vec<f64>, Vec<Vec<f64>>, Vec<f64>) {
        let (a, s) = (time.alpha, time.sigma);
        let d = x.len() as f64;
        let mut logp = Vec::with_capacity(self.weights.len());
        let mut scores = Vec::with_capacity(self.weights.len());
        let mut vs = Vec::with_capacity(self.weights.len());
        for ((w, mu), s2) in self.weights.iter().zip(&self.means).zip(&self.variances) {
            let v = a * a * s2 + s * s;
            let r2: f64 = x.iter().zip(mu).map(|(xi, mi)| (xi - a * mi).powi(2)).sum();
            logp.push(w.ln() - 0.5 * d * v.ln() - 0.5 * r2 / v);
            scores.push(
                x.iter()
                    .zip(mu)
                    .map(|(xi, mi)| -(xi - a * mi) / v)
                    .collect(),
            );
            vs.push(v);
        }
        let m = logp.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = logp.iter().map(|l| (l - m).exp()).sum();
        let resp = logp.iter().map(|l| (l - m).exp() / z).collect();
        (resp, scores, vs)
    }

    /// eps(x, t) = -sigma * score(x, t) for one point.
    pub fn eps_at(&self, x: &[f64], time: &TimeInfo) -> Vec<f64> {
        let (r, scores, _) = self.components(x, time);
        let mut out = vec![0.0; x.len()];
        for (rk, sk) in r.iter().zip(&scores) {
            for (o, s) in out.iter_mut().zip(sk) {
                *o -= time.sigma * rk * s;
            }
        }
        out
    }

    /// cot^T d eps/dx for one point: d score/dx = sum_k r_k s_k s_k^T - sbar sbar^T
    /// - sum_k r_k / v_k I (symmetric).
    pub fn eps_vjp_at(&self, x: &[f64], time: &TimeInfo, cot: &[f64]) -> Vec<f64> {
        let (r, scores, vs) = self.components(x, time);
        let d = x.len();
        let mut sbar = vec![0.0; d];
        for (rk, sk) in r.iter().zip(&scores) {
            for (b, s) in sbar.iter_mut().zip(sk) {
                *b += rk * s;
            }
        }
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let mut out = vec![0.0; d];
        for ((rk, sk), v) in r.iter().zip(&scores).zip(&vs) {
            let c = rk * dot(cot, sk);
            for i in 0..d {
                out[i] += c * sk[i] - rk / v * cot[i];
            }
        }
        let c = dot(cot, &sbar);
        for i in 0..d {
            out[i] -= c * sbar[i];
            out[i] *= -time.sigma;
        }
        out
    }
}

impl<E: Dtype, D: Device<E>> Denoiser<E, D> for GmmModel {
    fn prediction(&self) -> Prediction {
        Prediction::Eps
    }

    fn dim(&self) -> usize {
        self.dim_of()
    }

    fn forward(&self, x: &Batch<E, D>, _z: Option<&Batch<E, D>>, time: &TimeInfo) -> Batch<E, D> {
        let (batch, dim) = *x.shape();
        let xs = to_f64(x);
        let out: Vec<f64> = xs
            .chunks(dim)
            .flat_map(|row| self.eps_at(row, time))
            .collect();
        from_f64(&x.device().clone(), &out, batch, dim)
    }

    fn vjp(
        &self,
        x: &Batch<E, D>,
        _z: Option<&Batch<E, D>>,
        time: &TimeInfo,
        cot: &Batch<E, D>,
        _theta: Option<(&mut ParamGrads<E, D>, f64)>,
    ) -> (Batch<E, D>, Option<Batch<E, D>>) {
        let (batch, dim) = *x.shape();
        let (xs, cs) = (to_f64(x), to_f64(cot));
        let out: Vec<f64> = xs
            .chunks(dim)
            .zip(cs.chunks(dim))
            .flat_map(|(row, c)| self.eps_vjp_at(row, time, c))
            .collect();
        (from_f64(&x.device().clone(), &out, batch, dim), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gmm_vjp_matches_finite_differences() {
        let g = GmmModel {
            weights: vec![0.3, 0.7],
            means: vec![vec![1.0, -0.5], vec![-1.2, 0.8]],
            variances: vec![0.2, 0.5],
        };
        let time = TimeInfo {
            t: 0.5,
            model_t: 0.5,
            alpha: 0.6,
            sigma: 0.8,
        };
        let x = [0.3, -0.1];
        let cot = [0.7, -1.1];
        let vjp = g.eps_vjp_at(&x, &time, &cot);
        for i in 0..2 {
            let h = 1e-6;
            let (mut xp, mut xm) = (x, x);
            xp[i] += h;
            xm[i] -= h;
            let (ep, em) = (g.eps_at(&xp, &time), g.eps_at(&xm, &time));
            let fd: f64 = (0..2).map(|k| cot[k] * (ep[k] - em[k]) / (2.0 * h)).sum();
            assert!((fd - vjp[i]).abs() < 1e-8, "{fd} vs {}", vjp[i]);
        }
    }
}

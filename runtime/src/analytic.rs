//! Closed-form denoisers for testing (docs/math.md section 4): isotropic Gaussian data, and a
//! Gaussian mixture, each with its exact Jacobian.

use adeis_compiler::{FieldError, Prediction, TimeInfo};
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

use crate::denoiser::{check_vector_input, Cotangents, Denoiser, NoParams, TimeCot};
use crate::error::RuntimeError;
use crate::nn::ParamGrads;
use crate::rows_from_f64;
use crate::state::State;
use crate::taped::{Taped, TapedDenoiser, TimeLeaves};

/// Data N(mu, s2 I). eps*(x, t) = sigma (x - alpha mu) / (alpha^2 s2 + sigma^2). The
/// conditioning z, when given, is mu (one row per sample); otherwise `mu` is used.
#[derive(Clone, Debug, PartialEq)]
pub struct GaussianModel {
    /// The mean of every coordinate (used where no conditioning z is given).
    pub mu: f64,
    /// The data's variance s2 (its one differentiable parameter).
    pub s2: f64,
    /// The data's dimension.
    pub dim: usize,
}

/// A number with its partial derivatives in alpha, sigma and s2 (forward mode), for the
/// Gaussian model's coefficients in every parameterisation.
#[derive(Clone, Copy, Debug)]
struct Partials3 {
    v: f64,
    /// d/d alpha, d/d sigma, d/d s2.
    d: [f64; 3],
}

impl Partials3 {
    fn var(v: f64, k: usize) -> Partials3 {
        let mut d = [0.0; 3];
        d[k] = 1.0;
        Partials3 { v, d }
    }
    fn constant(v: f64) -> Partials3 {
        Partials3 { v, d: [0.0; 3] }
    }
    fn zip(self, o: Partials3, v: f64, f: impl Fn(f64, f64) -> f64) -> Partials3 {
        Partials3 {
            v,
            d: std::array::from_fn(|k| f(self.d[k], o.d[k])),
        }
    }
}

impl std::ops::Add for Partials3 {
    type Output = Partials3;
    fn add(self, o: Partials3) -> Partials3 {
        self.zip(o, self.v + o.v, |a, b| a + b)
    }
}
impl std::ops::Sub for Partials3 {
    type Output = Partials3;
    fn sub(self, o: Partials3) -> Partials3 {
        self.zip(o, self.v - o.v, |a, b| a - b)
    }
}
// The product and quotient rules: derivatives mix the operations.
#[allow(clippy::suspicious_arithmetic_impl)]
impl std::ops::Mul for Partials3 {
    type Output = Partials3;
    fn mul(self, o: Partials3) -> Partials3 {
        let (x, y) = (self.v, o.v);
        self.zip(o, x * y, |a, b| a * y + x * b)
    }
}
#[allow(clippy::suspicious_arithmetic_impl)]
impl std::ops::Div for Partials3 {
    type Output = Partials3;
    fn div(self, o: Partials3) -> Partials3 {
        let (x, y) = (self.v, o.v);
        self.zip(o, x / y, |a, b| (a * y - x * b) / (y * y))
    }
}

impl GaussianModel {
    /// eps and the two derivative factors at one time: d eps/dx = sigma/v I,
    /// d eps/dmu = -sigma alpha / v I, d eps / d s2 = -sigma alpha^2 (x - alpha mu) / v^2.
    pub fn coefficients(&self, time: &TimeInfo) -> (f64, f64) {
        let (cx, cmu) = self.coefficient_partials(Prediction::Eps, time);
        (cx.v, cmu.v)
    }

    /// The model's output in the parameterisation `prediction` is cx x + cmu mu, with
    /// v = alpha^2 s2 + sigma^2: eps has (sigma, -alpha sigma) / v and the posterior mean
    /// x0 = E[x0 | x] has (alpha s2, sigma^2) / v (finite at alpha = 0, where it is mu);
    /// v-prediction is alpha eps - sigma x0 and the flow velocity eps - x0. Each with its
    /// partials in alpha, sigma and s2.
    fn coefficient_partials(
        &self,
        prediction: Prediction,
        time: &TimeInfo,
    ) -> (Partials3, Partials3) {
        let a = Partials3::var(time.alpha, 0);
        let s = Partials3::var(time.sigma, 1);
        let s2 = Partials3::var(self.s2, 2);
        let v = a * a * s2 + s * s;
        let zero = Partials3::constant(0.0);
        let eps = (s / v, zero - a * s / v);
        let x0 = (a * s2 / v, s * s / v);
        match prediction {
            Prediction::Eps => eps,
            Prediction::X0 => x0,
            Prediction::V => (a * eps.0 - s * x0.0, a * eps.1 - s * x0.1),
            Prediction::Flow => (eps.0 - x0.0, eps.1 - x0.1),
        }
    }

    /// The model predicting in the parameterisation `prediction` (the same data).
    pub fn predicting(&self, prediction: Prediction) -> PredictingGaussian {
        PredictingGaussian {
            gaussian: self.clone(),
            prediction,
        }
    }
}

/// The Gaussian data model of [`GaussianModel`] giving its exact output in any
/// parameterisation: eps, x0, v or the flow velocity (the model a flow-matching run at pure
/// noise needs: its x0 is finite at alpha = 0, where an eps model's is not).
#[derive(Clone, Debug, PartialEq)]
pub struct PredictingGaussian {
    /// The data.
    pub gaussian: GaussianModel,
    /// What it outputs.
    pub prediction: Prediction,
}

/// The Gaussian model's one parameter gradient: dL/d s2.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GaussianGrads {
    /// dL/d s2.
    pub s2: f64,
}

impl PredictingGaussian {
    fn mus<E: Dtype, D: Device<E>>(&self, x: &State<E, D>, z: Option<&State<E, D>>) -> Vec<f64> {
        match z {
            Some(z) => z.to_f64(),
            None => vec![self.gaussian.mu; x.batch() * x.width()],
        }
    }
}

impl<E: Dtype, D: Device<E>> Denoiser<E, D> for PredictingGaussian {
    type Grads = GaussianGrads;

    fn prediction(&self) -> Prediction {
        self.prediction
    }

    fn check_input(&self, item: &[usize]) -> Result<(), RuntimeError> {
        check_vector_input(item, self.gaussian.dim, "the Gaussian model")
    }

    fn cond_dim(&self) -> usize {
        self.gaussian.dim
    }

    fn zero_grads(&self) -> GaussianGrads {
        GaussianGrads::default()
    }

    fn as_taped(&self) -> Option<&dyn TapedDenoiser<E, D, Grads = GaussianGrads>> {
        Some(self)
    }

    /// theta = `[s2]`; the time cotangents from the coefficients' partials in alpha, sigma.
    fn vjp(
        &self,
        x: &State<E, D>,
        z: Option<&State<E, D>>,
        time: &TimeInfo,
        cot: &State<E, D>,
        theta: Option<(&mut GaussianGrads, f64)>,
    ) -> Cotangents<E, D> {
        let (cx, cmu) = self.gaussian.coefficient_partials(self.prediction, time);
        let (xs, cs, mus) = (x.to_f64(), cot.to_f64(), self.mus(x, z));
        // d = sum_i cot_i (d cx x_i + d cmu mu_i) for each of alpha, sigma, s2.
        let mut d = [0.0; 3];
        for ((xi, ci), mu) in xs.iter().zip(&cs).zip(&mus) {
            for (k, dk) in d.iter_mut().enumerate() {
                *dk += ci * (cx.d[k] * xi + cmu.d[k] * mu);
            }
        }
        if let Some((acc, w)) = theta {
            acc.s2 += w * d[2];
        }
        Cotangents {
            x: cot.clone() * cx.v,
            cond: z.map(|_| cot.clone() * cmu.v),
            time: Some(TimeCot {
                model_t: 0.0,
                alpha: d[0],
                sigma: d[1],
            }),
        }
    }

    fn forward(&self, x: &State<E, D>, z: Option<&State<E, D>>, time: &TimeInfo) -> State<E, D> {
        let (cx, cmu) = self.gaussian.coefficient_partials(self.prediction, time);
        let out: Vec<f64> = x
            .to_f64()
            .iter()
            .zip(self.mus(x, z))
            .map(|(xi, mu)| cx.v * xi + cmu.v * mu)
            .collect();
        x.like(rows_from_f64(&x.device(), &out, x.batch(), x.width()))
    }
}

impl<E: Dtype, D: Device<E>> TapedDenoiser<E, D> for PredictingGaussian {
    fn forward_taped(
        &self,
        x: Taped<E, D>,
        _item: &[usize],
        z: Option<Taped<E, D>>,
        time: &TimeInfo,
        _params: ParamGrads,
    ) -> Taped<E, D> {
        let (cx, cmu) = self.gaussian.coefficient_partials(self.prediction, time);
        match z {
            Some(z) => x * crate::e::<E>(cx.v) + z * crate::e::<E>(cmu.v),
            None => x * crate::e::<E>(cx.v) + crate::e::<E>(cmu.v * self.gaussian.mu),
        }
    }

    /// s2 is a constant of the taped forward pass: the tape has no gradient for it.
    fn grads_from_tape(&self, _grads: &mut Gradients<E, D>) -> Option<GaussianGrads> {
        None
    }

    /// The same coefficients with alpha and sigma on the tape.
    fn forward_taped_in_time(
        &self,
        x: Taped<E, D>,
        _item: &[usize],
        z: Option<Taped<E, D>>,
        leaves: &TimeLeaves<E, D>,
        _params: ParamGrads,
    ) -> Option<Taped<E, D>> {
        let shape = *x.shape();
        let a = || TimeLeaves::rows(&leaves.alpha, shape);
        let s = || TimeLeaves::rows(&leaves.sigma, shape);
        let s2 = crate::e::<E>(self.gaussian.s2);
        let v = || a().square() * s2 + s().square();
        // The coefficients of x and mu, as in `coefficient_partials`, built from the leaves
        // (which may be broadcast any number of times); x and z join once each.
        let eps = || (s() / v(), (a() * s()).negate() / v());
        let x0 = || (a() * s2 / v(), s().square() / v());
        let (cx, cmu) = match self.prediction {
            Prediction::Eps => eps(),
            Prediction::X0 => x0(),
            Prediction::V => {
                let ((ex, em), (xx, xm)) = (eps(), x0());
                (a() * ex - s() * xx, a() * em - s() * xm)
            }
            Prediction::Flow => {
                let ((ex, em), (xx, xm)) = (eps(), x0());
                (ex - xx, em - xm)
            }
        };
        Some(match z {
            Some(z) => cx * x + cmu * z,
            None => cx * x + cmu * crate::e::<E>(self.gaussian.mu),
        })
    }
}

impl<E: Dtype, D: Device<E>> Denoiser<E, D> for GaussianModel {
    type Grads = GaussianGrads;

    fn prediction(&self) -> Prediction {
        Prediction::Eps
    }

    fn check_input(&self, item: &[usize]) -> Result<(), RuntimeError> {
        check_vector_input(item, self.dim, "the Gaussian model")
    }

    fn cond_dim(&self) -> usize {
        self.dim
    }

    fn zero_grads(&self) -> GaussianGrads {
        GaussianGrads::default()
    }

    fn as_taped(&self) -> Option<&dyn TapedDenoiser<E, D, Grads = GaussianGrads>> {
        Some(self)
    }

    fn vjp(
        &self,
        x: &State<E, D>,
        z: Option<&State<E, D>>,
        time: &TimeInfo,
        cot: &State<E, D>,
        theta: Option<(&mut GaussianGrads, f64)>,
    ) -> Cotangents<E, D> {
        self.predicting(Prediction::Eps).vjp(x, z, time, cot, theta)
    }

    fn forward(&self, x: &State<E, D>, z: Option<&State<E, D>>, time: &TimeInfo) -> State<E, D> {
        self.predicting(Prediction::Eps).forward(x, z, time)
    }
}

impl<E: Dtype, D: Device<E>> TapedDenoiser<E, D> for GaussianModel {
    fn forward_taped(
        &self,
        x: Taped<E, D>,
        item: &[usize],
        z: Option<Taped<E, D>>,
        time: &TimeInfo,
        params: ParamGrads,
    ) -> Taped<E, D> {
        self.predicting(Prediction::Eps)
            .forward_taped(x, item, z, time, params)
    }

    fn grads_from_tape(&self, _grads: &mut Gradients<E, D>) -> Option<GaussianGrads> {
        None
    }

    fn forward_taped_in_time(
        &self,
        x: Taped<E, D>,
        item: &[usize],
        z: Option<Taped<E, D>>,
        leaves: &TimeLeaves<E, D>,
        params: ParamGrads,
    ) -> Option<Taped<E, D>> {
        self.predicting(Prediction::Eps)
            .forward_taped_in_time(x, item, z, leaves, params)
    }
}

/// A mixture of isotropic Gaussians, sum_k w_k N(mu_k, s2_k I) (the mixture file format of
/// `adeis sample --model gmm:FILE`, as JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GmmModel {
    /// The components' weights (positive, summing to 1).
    pub weights: Vec<f64>,
    /// The components' means, each of the data's dimension.
    pub means: Vec<Vec<f64>>,
    /// The components' variances s2_k.
    pub variances: Vec<f64>,
}

/// A number as a person reads it: 1e300 rather than its 301 digits.
fn number(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e16 || v.abs() < 1e-5) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// The largest size of a mixture mean's coordinate (see [`GmmModel::validate`]).
pub const MAX_MEAN: f64 = 1e6;
/// The range of a mixture component's variance (see [`GmmModel::validate`]).
pub const MIN_VARIANCE: f64 = 1e-12;
/// See [`MIN_VARIANCE`].
pub const MAX_VARIANCE: f64 = 1e12;

impl GmmModel {
    /// Checks the mixture: matching lengths, positive weights and variances within the range a
    /// closed form in f32 computes, means of a size it squares, one dimension.
    pub fn validate(&self) -> Result<(), FieldError> {
        let k = self.weights.len();
        if k == 0 {
            return Err(FieldError::new(
                "weights",
                "a mixture needs at least one component",
            ));
        }
        if self.means.len() != k || self.variances.len() != k {
            return Err(FieldError::new(
                "means",
                format!(
                    "weights, means and variances must have the same length: {} weights, {} means, {} variances",
                    k,
                    self.means.len(),
                    self.variances.len()
                ),
            ));
        }
        if let Some((i, w)) = self
            .weights
            .iter()
            .enumerate()
            .find(|(_, w)| !(**w > 0.0 && w.is_finite()))
        {
            return Err(FieldError::value(
                format!("weights[{i}]"),
                w,
                "must be a finite number > 0",
            ));
        }
        if let Some((i, v)) = self
            .variances
            .iter()
            .enumerate()
            .find(|(_, v)| !(**v > 0.0 && v.is_finite()))
        {
            return Err(FieldError::value(
                format!("variances[{i}]"),
                v,
                "must be a finite number > 0",
            ));
        }
        // The closed form squares distances and divides by variances in the run's precision
        // (f32 by default): data scales past these bounds overflow or underflow there.
        if let Some((i, v)) = self
            .variances
            .iter()
            .enumerate()
            .find(|(_, v)| !(MIN_VARIANCE..=MAX_VARIANCE).contains(*v))
        {
            return Err(FieldError::value(
                format!("variances[{i}]"),
                number(*v),
                format!("from {MIN_VARIANCE:e} to {MAX_VARIANCE:e} (the closed form divides by it in the run's precision, f32 by default; rescale the data)"),
            ));
        }
        for (i, m) in self.means.iter().enumerate() {
            if let Some((j, v)) = m
                .iter()
                .enumerate()
                .find(|(_, v)| !(v.is_finite() && v.abs() <= MAX_MEAN))
            {
                return Err(FieldError::value(
                    format!("means[{i}][{j}]"),
                    number(*v),
                    format!("a finite number of at most {MAX_MEAN:e} in size (the closed form squares distances in the run's precision, f32 by default; rescale the data)"),
                ));
            }
        }
        let d = self.means[0].len();
        if let Some((i, m)) = self.means.iter().enumerate().find(|(_, m)| m.len() != d) {
            return Err(FieldError::new(
                format!("means[{i}]"),
                format!("means[{i}] has dimension {}, means[0] has {d}", m.len()),
            ));
        }
        Ok(())
    }

    /// The data's dimension (that of the means).
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

    /// (cot^T d eps/d alpha, cot^T d eps/d sigma) for one point. With r_k = x - alpha mu_k,
    /// v_k = alpha^2 s2_k + sigma^2, s_k = -r_k / v_k and responsibilities rho_k:
    /// eps = -sigma sum_k rho_k s_k, d rho_k = rho_k (d logp_k - sum_j rho_j d logp_j).
    pub fn eps_time_partials_at(&self, x: &[f64], time: &TimeInfo, cot: &[f64]) -> (f64, f64) {
        let (rho, scores, vs) = self.components(x, time);
        let (a, s) = (time.alpha, time.sigma);
        let d = x.len() as f64;
        let dot = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(x, y)| x * y).sum::<f64>();
        // Per component and direction (alpha, sigma): d v_k, d logp_k, cot . d s_k.
        let mut dlogp = vec![[0.0; 2]; rho.len()];
        let mut cot_ds = vec![[0.0; 2]; rho.len()];
        for k in 0..rho.len() {
            let (mu, s2, v) = (&self.means[k], self.variances[k], vs[k]);
            let r: Vec<f64> = x.iter().zip(mu).map(|(xi, mi)| xi - a * mi).collect();
            let r2 = dot(&r, &r);
            let dv = [2.0 * a * s2, 2.0 * s];
            let dr2 = [-2.0 * dot(&r, mu), 0.0];
            let cot_r = dot(cot, &r);
            for j in 0..2 {
                dlogp[k][j] = -0.5 * d * dv[j] / v - 0.5 * dr2[j] / v + 0.5 * r2 * dv[j] / (v * v);
                // s_k = -r / v: d s_k = -(d r) / v + r dv / v^2, with d r = -mu (alpha), 0.
                let cot_dr = if j == 0 { -dot(cot, mu) } else { 0.0 };
                cot_ds[k][j] = -cot_dr / v + cot_r * dv[j] / (v * v);
            }
        }
        let mut out = [0.0; 2];
        let cot_sbar: f64 = rho
            .iter()
            .zip(&scores)
            .map(|(r, sk)| r * dot(cot, sk))
            .sum();
        for (j, o) in out.iter_mut().enumerate() {
            let mean_dlogp: f64 = rho.iter().zip(&dlogp).map(|(r, l)| r * l[j]).sum();
            let mut acc = 0.0;
            for k in 0..rho.len() {
                let drho = rho[k] * (dlogp[k][j] - mean_dlogp);
                acc += drho * dot(cot, &scores[k]) + rho[k] * cot_ds[k][j];
            }
            *o = -s * acc;
            if j == 1 {
                *o -= cot_sbar;
            }
        }
        (out[0], out[1])
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
    type Grads = NoParams;

    fn prediction(&self) -> Prediction {
        Prediction::Eps
    }

    fn check_input(&self, item: &[usize]) -> Result<(), RuntimeError> {
        check_vector_input(item, self.dim_of(), "the mixture")
    }

    fn zero_grads(&self) -> NoParams {
        NoParams
    }

    fn forward(&self, x: &State<E, D>, _z: Option<&State<E, D>>, time: &TimeInfo) -> State<E, D> {
        let dim = x.width();
        let out: Vec<f64> = x
            .to_f64()
            .chunks(dim)
            .flat_map(|row| self.eps_at(row, time))
            .collect();
        x.like(rows_from_f64(&x.device(), &out, x.batch(), dim))
    }

    fn vjp(
        &self,
        x: &State<E, D>,
        _z: Option<&State<E, D>>,
        time: &TimeInfo,
        cot: &State<E, D>,
        _theta: Option<(&mut NoParams, f64)>,
    ) -> Cotangents<E, D> {
        let dim = x.width();
        let (xs, cs) = (x.to_f64(), cot.to_f64());
        let out: Vec<f64> = xs
            .chunks(dim)
            .zip(cs.chunks(dim))
            .flat_map(|(row, c)| self.eps_vjp_at(row, time, c))
            .collect();
        let mut tc = TimeCot::default();
        for (row, c) in xs.chunks(dim).zip(cs.chunks(dim)) {
            let (da, ds) = self.eps_time_partials_at(row, time, c);
            tc.alpha += da;
            tc.sigma += ds;
        }
        Cotangents {
            x: x.like(rows_from_f64(&x.device(), &out, x.batch(), dim)),
            cond: None,
            time: Some(tc),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-component mixture and a time to differentiate at.
    fn mixture_at_a_time() -> (GmmModel, TimeInfo) {
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
        (g, time)
    }

    #[test]
    fn gmm_vjp_matches_finite_differences() {
        let (g, time) = mixture_at_a_time();
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

    #[test]
    fn gmm_time_partials_match_finite_differences() {
        let (g, time) = mixture_at_a_time();
        let (x, cot) = ([0.3, -0.1], [0.7, -1.1]);
        let (da, ds) = g.eps_time_partials_at(&x, &time, &cot);
        let h = 1e-6;
        let fd = |dt: TimeInfo, sign: f64| -> f64 {
            let e = g.eps_at(&x, &dt);
            sign * (0..2).map(|k| cot[k] * e[k]).sum::<f64>() / (2.0 * h)
        };
        let fd_a = fd(
            TimeInfo {
                alpha: 0.6 + h,
                ..time
            },
            1.0,
        ) + fd(
            TimeInfo {
                alpha: 0.6 - h,
                ..time
            },
            -1.0,
        );
        let fd_s = fd(
            TimeInfo {
                sigma: 0.8 + h,
                ..time
            },
            1.0,
        ) + fd(
            TimeInfo {
                sigma: 0.8 - h,
                ..time
            },
            -1.0,
        );
        assert!((fd_a - da).abs() < 1e-8, "alpha: {fd_a} vs {da}");
        assert!((fd_s - ds).abs() < 1e-8, "sigma: {fd_s} vs {ds}");
    }
}

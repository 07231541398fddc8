//! The denoiser interface, the conversion between parameterisations, classifier-free guidance
//! and dynamic thresholding.

use adeis_compiler::{Pred, Prediction};
use dfdx::prelude::*;

use crate::{e, from_f64, to_f64};

/// A batch of vectors: shape (batch, dim), both known at run time.
pub type Batch<E, D> = Tensor<(usize, usize), E, D>;

/// The time of a model evaluation: the sampler's t, what the network is given (the train
/// index for a discrete schedule), and the schedule's alpha and sigma there.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimeInfo {
    pub t: f64,
    pub model_t: f64,
    pub alpha: f64,
    pub sigma: f64,
}

/// Accumulated gradients with respect to a model's parameters theta.
#[derive(Clone, Debug)]
pub enum ParamGrads<E: Dtype, D: Device<E>> {
    /// The model has no parameters to differentiate.
    None,
    /// A closed-form model's parameters, in its own order.
    Values(Vec<f64>),
    /// A dfdx module's parameter gradients.
    Dfdx(Gradients<E, D>),
}

/// A network (or closed-form model) evaluated at (x, z, t) in its own parameterisation.
pub trait Denoiser<E: Dtype, D: Device<E>> {
    /// What the output is: eps, x0 or v.
    fn prediction(&self) -> Prediction;
    /// The dimension of x.
    fn dim(&self) -> usize;
    /// The dimension of the conditioning z (0 without conditioning).
    fn cond_dim(&self) -> usize {
        0
    }
    /// The output at (x, z, t).
    fn forward(&self, x: &Batch<E, D>, z: Option<&Batch<E, D>>, time: &TimeInfo) -> Batch<E, D>;

    /// This model on dfdx's tape, where it can run there (the full-tape reference).
    fn as_taped(&self) -> Option<&dyn crate::tape::TapedDenoiser<E, D>> {
        None
    }

    /// A zero accumulator for this model's parameter gradients.
    fn param_grads(&self) -> ParamGrads<E, D> {
        ParamGrads::None
    }

    /// The vector-Jacobian product at (x, z, t) with cotangent `cot` on the output: returns
    /// cot^T d out/dx and, with conditioning, cot^T d out/dz; with `theta = (acc, w)` also adds
    /// w cot^T d out/d theta to `acc`. Memory: one evaluation's activations, freed on return.
    fn vjp(
        &self,
        x: &Batch<E, D>,
        z: Option<&Batch<E, D>>,
        time: &TimeInfo,
        cot: &Batch<E, D>,
        theta: Option<(&mut ParamGrads<E, D>, f64)>,
    ) -> (Batch<E, D>, Option<Batch<E, D>>);
}

/// Classifier-free guidance: `uncond + scale (cond - uncond)`, the unconditional output being
/// the model at the null conditioning `null_cond`.
#[derive(Clone, Debug)]
pub struct Guidance<E: Dtype, D: Device<E>> {
    pub scale: f64,
    pub null_cond: Batch<E, D>,
}

/// Dynamic thresholding of the x0 prediction (Imagen): per sample, s = max(1, the `quantile`
/// of |x0|) capped at `max`; x0 is clipped to [-s, s] and divided by s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Threshold {
    pub quantile: f64,
    pub max: f64,
}

/// A denoiser with the conversions a solver needs: eps or data prediction from any
/// parameterisation, with optional guidance and thresholding.
pub struct ModelFn<'a, E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized> {
    pub model: &'a M,
    pub guidance: Option<Guidance<E, D>>,
    pub threshold: Option<Threshold>,
}

impl<'a, E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized> ModelFn<'a, E, D, M> {
    pub fn new(model: &'a M) -> Self {
        ModelFn {
            model,
            guidance: None,
            threshold: None,
        }
    }

    /// The network output with guidance applied.
    pub fn raw(&self, x: &Batch<E, D>, z: Option<&Batch<E, D>>, time: &TimeInfo) -> Batch<E, D> {
        let cond = self.model.forward(x, z, time);
        match &self.guidance {
            None => cond,
            Some(g) => {
                let uncond = self.model.forward(x, Some(&g.null_cond), time);
                let diff = cond - uncond.clone();
                uncond + diff * e::<E>(g.scale)
            }
        }
    }

    /// The prediction a solver asks for, at (x, z, t).
    pub fn predict(
        &self,
        x: &Batch<E, D>,
        z: Option<&Batch<E, D>>,
        time: &TimeInfo,
        want: Pred,
    ) -> Batch<E, D> {
        let out = self.raw(x, z, time);
        let (a, s) = (time.alpha, time.sigma);
        let data = |out: Batch<E, D>| -> Batch<E, D> {
            match self.model.prediction() {
                Prediction::Eps => (x.clone() - out * e::<E>(s)) * e::<E>(1.0 / a),
                Prediction::X0 => out,
                Prediction::V => x.clone() * e::<E>(a) - out * e::<E>(s),
            }
        };
        if self.threshold.is_none() {
            return match (want, self.model.prediction()) {
                (Pred::Eps, Prediction::Eps) => out,
                (Pred::Eps, Prediction::X0) => (x.clone() - out * e::<E>(a)) * e::<E>(1.0 / s),
                (Pred::Eps, Prediction::V) => x.clone() * e::<E>(s) + out * e::<E>(a),
                (Pred::Data, _) => data(out),
            };
        }
        let x0 = threshold(&data(out), self.threshold.unwrap());
        match want {
            Pred::Data => x0,
            Pred::Eps => (x.clone() - x0 * e::<E>(a)) * e::<E>(1.0 / s),
        }
    }
}

impl<'a, E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized> ModelFn<'a, E, D, M> {
    /// The network VJP with guidance applied: out = (1 - w) model(null) + w model(z).
    fn raw_vjp(
        &self,
        x: &Batch<E, D>,
        z: Option<&Batch<E, D>>,
        time: &TimeInfo,
        cot: &Batch<E, D>,
        mut theta: Option<(&mut ParamGrads<E, D>, f64)>,
    ) -> (Batch<E, D>, Option<Batch<E, D>>) {
        match &self.guidance {
            None => self.model.vjp(x, z, time, cot, theta),
            Some(g) => {
                let w = g.scale;
                let (dx_c, dz) = self.model.vjp(
                    x,
                    z,
                    time,
                    &(cot.clone() * e::<E>(w)),
                    theta.as_mut().map(|(acc, k)| (&mut **acc, *k)),
                );
                let (dx_u, _) = self.model.vjp(
                    x,
                    Some(&g.null_cond),
                    time,
                    &(cot.clone() * e::<E>(1.0 - w)),
                    theta,
                );
                (dx_c + dx_u, dz)
            }
        }
    }

    /// The VJP of [`ModelFn::predict`]: cot^T d pred/dx, cot^T d pred/dz, and (with `theta`)
    /// w cot^T d pred/d theta added to the accumulator. The conversion between
    /// parameterisations and guidance are differentiated exactly; thresholding too, with the
    /// threshold s treated as the function of x0 it is (it moves with the quantile element).
    pub fn vjp(
        &self,
        x: &Batch<E, D>,
        z: Option<&Batch<E, D>>,
        time: &TimeInfo,
        want: Pred,
        cot: &Batch<E, D>,
        theta: Option<(&mut ParamGrads<E, D>, f64)>,
    ) -> (Batch<E, D>, Option<Batch<E, D>>) {
        let (a, s) = (time.alpha, time.sigma);
        // pred = cx * x + co * raw, for the parameterisation pair: (cx, co).
        let linear = |want: Pred| -> (f64, f64) {
            match (want, self.model.prediction()) {
                (Pred::Eps, Prediction::Eps) | (Pred::Data, Prediction::X0) => (0.0, 1.0),
                (Pred::Eps, Prediction::X0) => (1.0 / s, -a / s),
                (Pred::Eps, Prediction::V) => (s, a),
                (Pred::Data, Prediction::Eps) => (1.0 / a, -s / a),
                (Pred::Data, Prediction::V) => (a, -s),
            }
        };
        match self.threshold {
            None => {
                let (cx, co) = linear(want);
                let (dx, dz) = self.raw_vjp(x, z, time, &(cot.clone() * e::<E>(co)), theta);
                let dx = if cx != 0.0 {
                    dx + cot.clone() * e::<E>(cx)
                } else {
                    dx
                };
                (dx, dz)
            }
            Some(th) => {
                // pred = x0_thr (Data) or (x - a x0_thr)/s (Eps); x0 = data(x, raw).
                let (cot_x0_thr, direct) = match want {
                    Pred::Data => (cot.clone(), None),
                    Pred::Eps => (
                        cot.clone() * e::<E>(-a / s),
                        Some(cot.clone() * e::<E>(1.0 / s)),
                    ),
                };
                let x0 = self.predict_unthresholded(x, z, time);
                let cot_x0 = threshold_vjp(&x0, th, &cot_x0_thr);
                let (cx, co) = linear(Pred::Data);
                let (dx, dz) = self.raw_vjp(x, z, time, &(cot_x0.clone() * e::<E>(co)), theta);
                let mut dx = if cx != 0.0 {
                    dx + cot_x0 * e::<E>(cx)
                } else {
                    dx
                };
                if let Some(d) = direct {
                    dx = dx + d;
                }
                (dx, dz)
            }
        }
    }

    fn predict_unthresholded(
        &self,
        x: &Batch<E, D>,
        z: Option<&Batch<E, D>>,
        time: &TimeInfo,
    ) -> Batch<E, D> {
        let plain = ModelFn {
            model: self.model,
            guidance: self.guidance.clone(),
            threshold: None,
        };
        plain.predict(x, z, time, Pred::Data)
    }
}

/// The per-row threshold s and the index of the element it comes from (None when clamped
/// to 1 or to `max`, where s does not move with x0).
fn threshold_of(row: &[f64], th: Threshold) -> (f64, Option<usize>) {
    let dim = row.len();
    let mut idx: Vec<usize> = (0..dim).collect();
    idx.sort_by(|&i, &j| row[i].abs().total_cmp(&row[j].abs()));
    let k = ((th.quantile * (dim as f64 - 1.0)).round() as usize).min(dim - 1);
    let q = row[idx[k]].abs();
    let hi = th.max.max(1.0);
    if q <= 1.0 {
        (1.0, None)
    } else if q >= hi {
        (hi, None)
    } else {
        (q, Some(idx[k]))
    }
}

/// cot^T d threshold(x0)/d x0, per row: y_i = clamp(x_i, -s, s) / s with s = s(x0).
pub fn threshold_vjp<E: Dtype, D: Device<E>>(
    x0: &Batch<E, D>,
    th: Threshold,
    cot: &Batch<E, D>,
) -> Batch<E, D> {
    let (batch, dim) = *x0.shape();
    let xs = to_f64(x0);
    let cs = to_f64(cot);
    let mut out = vec![0.0; batch * dim];
    for r in 0..batch {
        let (row, crow) = (&xs[r * dim..(r + 1) * dim], &cs[r * dim..(r + 1) * dim]);
        let (s, k) = threshold_of(row, th);
        let o = &mut out[r * dim..(r + 1) * dim];
        let mut ds = 0.0; // cot^T dy/ds
        for i in 0..dim {
            if row[i].abs() < s {
                o[i] += crow[i] / s;
                ds += -crow[i] * row[i] / (s * s);
            }
        }
        if let Some(k) = k {
            o[k] += ds * row[k].signum();
        }
    }
    from_f64(&x0.device().clone(), &out, batch, dim)
}

/// Dynamic thresholding, per row.
pub fn threshold<E: Dtype, D: Device<E>>(x0: &Batch<E, D>, th: Threshold) -> Batch<E, D> {
    let (batch, dim) = *x0.shape();
    let mut v = to_f64(x0);
    for row in v.chunks_mut(dim) {
        let (s, _) = threshold_of(row, th);
        for x in row.iter_mut() {
            *x = x.clamp(-s, s) / s;
        }
    }
    from_f64(&x0.device().clone(), &v, batch, dim)
}

//! What a solver asks of a denoiser: the eps or data prediction from any parameterisation,
//! with classifier-free guidance and dynamic thresholding, and its exact VJP.

use adeis_compiler::{Pred, Prediction, TimeInfo};
use dfdx::prelude::*;

use crate::denoiser::{Cotangents, Denoiser, TimeCot};
use crate::state::State;

/// Classifier-free guidance: `uncond + scale (cond - uncond)`, the unconditional output being
/// the model at the null conditioning `null_cond`.
#[derive(Clone, Debug)]
pub struct Guidance<E: Dtype, D: Device<E>> {
    /// The guidance scale S (1: the conditional model, 0: the unconditional one).
    pub scale: f64,
    /// The conditioning that means "no condition", one row per sample.
    pub null_cond: State<E, D>,
}

/// Dynamic thresholding of the x0 prediction (Imagen, and diffusers' `thresholding`): per
/// sample, s = max(1, the `quantile` of |x0|) capped at `max`; x0 is clipped to [-s, s] and
/// divided by s. The quantile interpolates linearly between the sorted |x0| (numpy's and
/// torch's default, as diffusers computes it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Threshold {
    /// The quantile of |x0| per sample (diffusers' `dynamic_thresholding_ratio`).
    pub quantile: f64,
    /// The cap on s (diffusers' `sample_max_value`).
    pub max: f64,
}

/// A denoiser with the conversions a solver needs: eps or data prediction from any
/// parameterisation, with optional guidance and thresholding.
pub struct ModelFn<'a, E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized> {
    /// The denoiser.
    pub model: &'a M,
    /// Classifier-free guidance, when asked for.
    pub guidance: Option<Guidance<E, D>>,
    /// Dynamic thresholding of the x0 prediction, when asked for.
    pub threshold: Option<Threshold>,
}

/// pred = cx * x + co * raw for the pair (what the solver wants, what the model predicts).
fn linear(want: Pred, model: Prediction, time: &TimeInfo) -> (f64, f64) {
    let (a, s) = (time.alpha, time.sigma);
    match (want, model) {
        (Pred::Eps, Prediction::Eps) | (Pred::Data, Prediction::X0) => (0.0, 1.0),
        (Pred::Eps, Prediction::X0) => (1.0 / s, -a / s),
        (Pred::Eps, Prediction::V) => (s, a),
        (Pred::Data, Prediction::Eps) => (1.0 / a, -s / a),
        (Pred::Data, Prediction::V) => (a, -s),
        // x = a x0 + s eps and u = eps - x0 give x0 = (x - s u) / (a + s) and eps =
        // (x + a u) / (a + s): finite at pure noise (a = 0), unlike the eps model's x0.
        (Pred::Eps, Prediction::Flow) => (1.0 / (a + s), a / (a + s)),
        (Pred::Data, Prediction::Flow) => (1.0 / (a + s), -s / (a + s)),
    }
}

/// Whether the model's output converts to `want` at `time` (finite coefficients: not an eps
/// model's x0 at alpha = 0, nor an x0 model's eps at sigma = 0).
pub fn converts(want: Pred, model: Prediction, time: &TimeInfo) -> bool {
    let (cx, co) = linear(want, model, time);
    cx.is_finite() && co.is_finite()
}

/// d(cx, co)/d alpha and d(cx, co)/d sigma of [`linear`]: ((dcx/da, dco/da), (dcx/ds, dco/ds)).
fn linear_slopes(want: Pred, model: Prediction, time: &TimeInfo) -> ((f64, f64), (f64, f64)) {
    let (a, s) = (time.alpha, time.sigma);
    match (want, model) {
        (Pred::Eps, Prediction::Eps) | (Pred::Data, Prediction::X0) => ((0.0, 0.0), (0.0, 0.0)),
        (Pred::Eps, Prediction::X0) => ((0.0, -1.0 / s), (-1.0 / (s * s), a / (s * s))),
        (Pred::Eps, Prediction::V) => ((0.0, 1.0), (1.0, 0.0)),
        (Pred::Data, Prediction::Eps) => ((-1.0 / (a * a), s / (a * a)), (0.0, -1.0 / a)),
        (Pred::Data, Prediction::V) => ((1.0, 0.0), (0.0, -1.0)),
        (Pred::Eps, Prediction::Flow) | (Pred::Data, Prediction::Flow) => {
            let n2 = (a + s) * (a + s);
            ((-1.0 / n2, s / n2), (-1.0 / n2, -a / n2))
        }
    }
}

/// The prediction `want` from the model's raw output (the same arithmetic as the tape's).
pub fn convert<E: Dtype, D: Device<E>>(
    want: Pred,
    model: Prediction,
    time: &TimeInfo,
    x: &State<E, D>,
    raw: State<E, D>,
) -> State<E, D> {
    let (a, s) = (time.alpha, time.sigma);
    match (want, model) {
        (Pred::Eps, Prediction::Eps) | (Pred::Data, Prediction::X0) => raw,
        (Pred::Eps, Prediction::X0) => (x.clone() - raw * a) * (1.0 / s),
        (Pred::Eps, Prediction::V) => x.clone() * s + raw * a,
        (Pred::Data, Prediction::Eps) => (x.clone() - raw * s) * (1.0 / a),
        (Pred::Data, Prediction::V) => x.clone() * a - raw * s,
        (Pred::Eps, Prediction::Flow) => (x.clone() + raw * a) * (1.0 / (a + s)),
        (Pred::Data, Prediction::Flow) => (x.clone() - raw * s) * (1.0 / (a + s)),
    }
}

impl<'a, E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized> ModelFn<'a, E, D, M> {
    /// The bare model: no guidance, no thresholding.
    pub fn new(model: &'a M) -> Self {
        ModelFn {
            model,
            guidance: None,
            threshold: None,
        }
    }

    /// The network output with guidance applied.
    pub fn raw(&self, x: &State<E, D>, z: Option<&State<E, D>>, time: &TimeInfo) -> State<E, D> {
        let cond = self.model.forward(x, z, time);
        match &self.guidance {
            None => cond,
            Some(g) => {
                let uncond = self.model.forward(x, Some(&g.null_cond), time);
                let diff = cond - uncond.clone();
                uncond + diff * g.scale
            }
        }
    }

    /// The prediction a solver asks for, at (x, z, t).
    pub fn predict(
        &self,
        x: &State<E, D>,
        z: Option<&State<E, D>>,
        time: &TimeInfo,
        want: Pred,
    ) -> State<E, D> {
        let out = self.raw(x, z, time);
        let Some(th) = self.threshold else {
            return convert(want, self.model.prediction(), time, x, out);
        };
        let x0 = threshold(
            &convert(Pred::Data, self.model.prediction(), time, x, out),
            th,
        );
        match want {
            Pred::Data => x0,
            Pred::Eps => (x.clone() - x0 * time.alpha) * (1.0 / time.sigma),
        }
    }

    /// The network VJP with guidance applied: out = (1 - w) model(null) + w model(z).
    fn raw_vjp(
        &self,
        x: &State<E, D>,
        z: Option<&State<E, D>>,
        time: &TimeInfo,
        cot: &State<E, D>,
        mut theta: Option<(&mut M::Grads, f64)>,
    ) -> Cotangents<E, D> {
        match &self.guidance {
            None => self.model.vjp(x, z, time, cot, theta),
            Some(g) => {
                let w = g.scale;
                let c = self.model.vjp(
                    x,
                    z,
                    time,
                    &(cot.clone() * w),
                    theta.as_mut().map(|(acc, k)| (&mut **acc, *k)),
                );
                let u = self.model.vjp(
                    x,
                    Some(&g.null_cond),
                    time,
                    &(cot.clone() * (1.0 - w)),
                    theta,
                );
                Cotangents {
                    x: c.x + u.x,
                    cond: c.cond,
                    time: c.time.zip(u.time).map(|(a, b)| a + b),
                }
            }
        }
    }

    /// The VJP of [`ModelFn::predict`]: cot^T d pred/dx, cot^T d pred/dz, and (with `theta`)
    /// w cot^T d pred/d theta added to the accumulator. The conversion between
    /// parameterisations and guidance are differentiated exactly; thresholding too, with the
    /// threshold s treated as the function of x0 it is (it moves with the quantile element).
    /// The time slot is left empty: the conversions' derivatives in alpha and sigma are not
    /// taken here.
    pub fn vjp(
        &self,
        x: &State<E, D>,
        z: Option<&State<E, D>>,
        time: &TimeInfo,
        want: Pred,
        cot: &State<E, D>,
        theta: Option<(&mut M::Grads, f64)>,
    ) -> Cotangents<E, D> {
        let (a, s) = (time.alpha, time.sigma);
        let (cot_x0, direct) = match (self.threshold, want) {
            (None, _) => (None, None),
            // pred = x0_thr (Data) or (x - a x0_thr)/s (Eps); x0 = data(x, raw).
            (Some(th), Pred::Data) => {
                let x0 = self.predict_unthresholded(x, z, time);
                (Some(threshold_vjp(&x0, th, cot)), None)
            }
            (Some(th), Pred::Eps) => {
                let x0 = self.predict_unthresholded(x, z, time);
                (
                    Some(threshold_vjp(&x0, th, &(cot.clone() * (-a / s)))),
                    Some(cot.clone() * (1.0 / s)),
                )
            }
        };
        let (form, cot) = match &cot_x0 {
            None => (want, cot),
            Some(c) => (Pred::Data, c),
        };
        let mut out = self.linear_vjp(x, z, time, form, cot, theta);
        if let Some(d) = direct {
            out.x = out.x + d;
        }
        out.time = None;
        out
    }

    /// The VJP of pred = cx x + co raw (the conversion to `form` without thresholding); the
    /// time slot holds the raw output's (times co).
    fn linear_vjp(
        &self,
        x: &State<E, D>,
        z: Option<&State<E, D>>,
        time: &TimeInfo,
        form: Pred,
        cot: &State<E, D>,
        theta: Option<(&mut M::Grads, f64)>,
    ) -> Cotangents<E, D> {
        let (cx, co) = linear(form, self.model.prediction(), time);
        let mut out = self.raw_vjp(x, z, time, &(cot.clone() * co), theta);
        if cx != 0.0 {
            out.x = out.x + cot.clone() * cx;
        }
        out
    }

    /// [`ModelFn::vjp`] with the time cotangent of the prediction filled in: cot^T d pred /
    /// d(model time, alpha, sigma), the conversion's own dependence on alpha and sigma
    /// included. `(want, pred)` is the form asked for and the prediction in that form at this
    /// point (what the forward pass returned), from which the raw output is recovered without
    /// another network evaluation. The time slot is None where the model does not
    /// differentiate its time dependence, or with thresholding.
    pub fn vjp_with_time(
        &self,
        x: &State<E, D>,
        z: Option<&State<E, D>>,
        time: &TimeInfo,
        (want, pred): (Pred, &State<E, D>),
        cot: &State<E, D>,
        theta: Option<(&mut M::Grads, f64)>,
    ) -> Cotangents<E, D> {
        if self.threshold.is_some() {
            // `vjp` leaves the time slot empty.
            return self.vjp(x, z, time, want, cot, theta);
        }
        let (cx, co) = linear(want, self.model.prediction(), time);
        let mut out = self.linear_vjp(x, z, time, want, cot, theta);
        out.time = out.time.map(|raw| {
            let ((dcx_da, dco_da), (dcx_ds, dco_ds)) =
                linear_slopes(want, self.model.prediction(), time);
            if dcx_da == 0.0 && dco_da == 0.0 && dcx_ds == 0.0 && dco_ds == 0.0 {
                return raw;
            }
            let (cs, xs, ps) = (cot.to_f64(), x.to_f64(), pred.to_f64());
            let (mut cot_x, mut cot_raw) = (0.0, 0.0);
            for ((c, xi), p) in cs.iter().zip(&xs).zip(&ps) {
                cot_x += c * xi;
                cot_raw += c * (p - cx * xi) / co;
            }
            TimeCot {
                model_t: raw.model_t,
                alpha: raw.alpha + dcx_da * cot_x + dco_da * cot_raw,
                sigma: raw.sigma + dcx_ds * cot_x + dco_ds * cot_raw,
            }
        });
        out
    }

    fn predict_unthresholded(
        &self,
        x: &State<E, D>,
        z: Option<&State<E, D>>,
        time: &TimeInfo,
    ) -> State<E, D> {
        convert(
            Pred::Data,
            self.model.prediction(),
            time,
            x,
            self.raw(x, z, time),
        )
    }
}

/// The per-row threshold s and the elements it comes from with their weights ds/d|x_k| (none
/// when it is clamped to 1 or to `max`, where s does not move with x0).
fn threshold_of(row: &[f64], th: Threshold) -> (f64, Vec<(usize, f64)>) {
    let dim = row.len();
    let mut idx: Vec<usize> = (0..dim).collect();
    idx.sort_by(|&i, &j| row[i].abs().total_cmp(&row[j].abs()));
    // torch.quantile's "linear": position q (n - 1) between the two neighbouring order
    // statistics.
    let pos = (th.quantile * (dim as f64 - 1.0)).clamp(0.0, dim as f64 - 1.0);
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(dim - 1);
    let frac = pos - lo as f64;
    let (a, b) = (row[idx[lo]].abs(), row[idx[hi]].abs());
    let q = a + frac * (b - a);
    let cap = th.max.max(1.0);
    if q <= 1.0 {
        (1.0, Vec::new())
    } else if q >= cap {
        (cap, Vec::new())
    } else if hi == lo || frac == 0.0 {
        (q, vec![(idx[lo], 1.0)])
    } else {
        (q, vec![(idx[lo], 1.0 - frac), (idx[hi], frac)])
    }
}

/// cot^T d threshold(x0)/d x0, per item: y_i = clamp(x_i, -s, s) / s with s = s(x0).
pub fn threshold_vjp<E: Dtype, D: Device<E>>(
    x0: &State<E, D>,
    th: Threshold,
    cot: &State<E, D>,
) -> State<E, D> {
    let dim = x0.width();
    let xs = x0.to_f64();
    let cs = cot.to_f64();
    let mut out = vec![0.0; xs.len()];
    for ((row, crow), o) in xs
        .chunks_exact(dim)
        .zip(cs.chunks_exact(dim))
        .zip(out.chunks_exact_mut(dim))
    {
        let (s, from) = threshold_of(row, th);
        let mut ds = 0.0; // cot^T dy/ds
        for i in 0..dim {
            if row[i].abs() < s {
                o[i] += crow[i] / s;
                ds += -crow[i] * row[i] / (s * s);
            }
        }
        for (k, w) in from {
            o[k] += ds * w * row[k].signum();
        }
    }
    x0.like(crate::rows_from_f64(&x0.device(), &out, x0.batch(), dim))
}

/// Dynamic thresholding, per item.
pub fn threshold<E: Dtype, D: Device<E>>(x0: &State<E, D>, th: Threshold) -> State<E, D> {
    let dim = x0.width();
    let mut v = x0.to_f64();
    for row in v.chunks_mut(dim) {
        let (s, _) = threshold_of(row, th);
        for x in row.iter_mut() {
            *x = x.clamp(-s, s) / s;
        }
    }
    x0.like(crate::rows_from_f64(&x0.device(), &v, x0.batch(), dim))
}

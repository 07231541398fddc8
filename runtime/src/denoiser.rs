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

/// Dynamic thresholding, per row.
pub fn threshold<E: Dtype, D: Device<E>>(x0: &Batch<E, D>, th: Threshold) -> Batch<E, D> {
    let (batch, dim) = *x0.shape();
    let mut v = to_f64(x0);
    for row in v.chunks_mut(dim) {
        let mut abs: Vec<f64> = row.iter().map(|x| x.abs()).collect();
        abs.sort_by(f64::total_cmp);
        let k = ((th.quantile * (dim as f64 - 1.0)).round() as usize).min(dim - 1);
        let s = abs[k].clamp(1.0, th.max.max(1.0));
        for x in row.iter_mut() {
            *x = x.clamp(-s, s) / s;
        }
    }
    from_f64(&x0.device().clone(), &v, batch, dim)
}

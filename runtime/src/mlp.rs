//! The adapter from a dfdx module to a [`Denoiser`]: the module maps
//! `[x (D), z (C), sin(w_k t), cos(w_k t)]` (IN = D + C + 2F features) to an output of OUT = D.

use adeis_compiler::Prediction;
use dfdx::prelude::*;

use crate::denoiser::{Batch, Denoiser, TimeInfo};
use crate::e;

/// Sinusoidal time features with frequencies `w_k = exp(linspace(0, ln max_freq, n))`.
#[derive(Clone, Debug, PartialEq)]
pub struct TimeFeatures {
    pub freqs: Vec<f64>,
}

impl TimeFeatures {
    pub fn new(n: usize, max_freq: f64) -> TimeFeatures {
        let freqs = (0..n)
            .map(|k| {
                let u = if n == 1 {
                    0.0
                } else {
                    k as f64 / (n - 1) as f64
                };
                (u * max_freq.ln()).exp()
            })
            .collect();
        TimeFeatures { freqs }
    }

    pub fn len(&self) -> usize {
        2 * self.freqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.freqs.is_empty()
    }

    /// [sin(w_k t)..., cos(w_k t)...]
    pub fn at(&self, t: f64) -> Vec<f64> {
        let mut v: Vec<f64> = self.freqs.iter().map(|w| (w * t).sin()).collect();
        v.extend(self.freqs.iter().map(|w| (w * t).cos()));
        v
    }
}

/// A dfdx module as a denoiser. `IN` must equal dim + cond_dim + time features.
#[derive(Clone, Debug)]
pub struct MlpDenoiser<M, const IN: usize, const OUT: usize> {
    pub module: M,
    pub dim: usize,
    pub cond_dim: usize,
    pub time: TimeFeatures,
    pub prediction: Prediction,
}

impl<M, const IN: usize, const OUT: usize> MlpDenoiser<M, IN, OUT> {
    pub fn new(
        module: M,
        dim: usize,
        cond_dim: usize,
        time: TimeFeatures,
        prediction: Prediction,
    ) -> Self {
        assert_eq!(
            IN,
            dim + cond_dim + time.len(),
            "input width = dim + cond_dim + 2 * frequencies"
        );
        assert_eq!(OUT, dim, "output width = dim");
        MlpDenoiser {
            module,
            dim,
            cond_dim,
            time,
            prediction,
        }
    }

    /// The network's input rows [x, z, time features].
    pub fn input<E: Dtype, D: Device<E>>(
        &self,
        x: &Batch<E, D>,
        z: Option<&Batch<E, D>>,
        model_t: f64,
    ) -> Tensor<(usize, Const<IN>), E, D> {
        let (batch, dim) = *x.shape();
        let xs = x.as_vec();
        let zs = z.map(|z| z.as_vec());
        let feats: Vec<E> = self.time.at(model_t).into_iter().map(e::<E>).collect();
        let mut data = Vec::with_capacity(batch * IN);
        for i in 0..batch {
            data.extend_from_slice(&xs[i * dim..(i + 1) * dim]);
            match &zs {
                Some(z) => data.extend_from_slice(&z[i * self.cond_dim..(i + 1) * self.cond_dim]),
                None => data.extend(std::iter::repeat_n(E::default(), self.cond_dim)),
            }
            data.extend_from_slice(&feats);
        }
        x.device().tensor_from_vec(data, (batch, Const::<IN>))
    }
}

impl<E: Dtype, D: Device<E>, M, const IN: usize, const OUT: usize> Denoiser<E, D>
    for MlpDenoiser<M, IN, OUT>
where
    M: Module<Tensor<(usize, Const<IN>), E, D>, Output = Tensor<(usize, Const<OUT>), E, D>>,
{
    fn prediction(&self) -> Prediction {
        self.prediction
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn cond_dim(&self) -> usize {
        self.cond_dim
    }

    fn forward(&self, x: &Batch<E, D>, z: Option<&Batch<E, D>>, time: &TimeInfo) -> Batch<E, D> {
        let input = self.input(x, z, time.model_t);
        let out = self
            .module
            .try_forward(input)
            .unwrap_or_else(|e| panic!("dfdx forward: {e:?}"));
        let batch = out.shape().0;
        out.reshape_like(&(batch, OUT))
    }
}

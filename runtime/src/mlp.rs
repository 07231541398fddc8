//! The adapter from a dfdx module to a [`Denoiser`]: the module maps
//! `[x (D), z (C), sin(w_k t), cos(w_k t)]` (IN = D + C + 2F features) to an output of OUT = D.

use std::sync::{Arc, Mutex};

use adeis_compiler::Prediction;
use dfdx::prelude::*;

use crate::denoiser::{Batch, Denoiser, ParamGrads, TimeInfo};
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

/// The network's input: one row [x, z, time features] per sample.
pub type InputRows<E, D, const IN: usize> = Tensor<(usize, Const<IN>), E, D>;

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
    M: Module<Tensor<(usize, Const<IN>), E, D>, Output = Tensor<(usize, Const<OUT>), E, D>>
        + Module<
            Tensor<(usize, Const<IN>), E, D, OwnedTape<E, D>>,
            Output = Tensor<(usize, Const<OUT>), E, D, OwnedTape<E, D>>,
        > + ZeroGrads<E, D>,
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
        let out = <M as Module<Tensor<(usize, Const<IN>), E, D>>>::try_forward(&self.module, input)
            .unwrap_or_else(|e| panic!("dfdx forward: {e:?}"));
        let batch = out.shape().0;
        out.reshape_like(&(batch, OUT))
    }

    fn param_grads(&self) -> ParamGrads<E, D> {
        ParamGrads::Dfdx(self.module.alloc_grads())
    }

    fn as_taped(&self) -> Option<&dyn crate::tape::TapedDenoiser<E, D>> {
        Some(self)
    }

    fn vjp(
        &self,
        x: &Batch<E, D>,
        z: Option<&Batch<E, D>>,
        time: &TimeInfo,
        cot: &Batch<E, D>,
        theta: Option<(&mut ParamGrads<E, D>, f64)>,
    ) -> (Batch<E, D>, Option<Batch<E, D>>) {
        let (batch, dim) = *x.shape();
        let input = self.input(x, z, time.model_t);
        // With theta the backward pass accumulates w cot^T d out/d theta into the caller's
        // gradients, whose leaves are the parameters: dfdx drops every other gradient after
        // backward, so memory stays at one step's activations.
        let (mut acc, w) = match theta {
            Some((ParamGrads::Dfdx(acc), w)) if w != 0.0 => (Some(acc), w),
            _ => (None, 1.0),
        };
        let c: Tensor<(usize, Const<OUT>), E, D> = cot.clone().reshape_like(&(batch, Const::<OUT>));
        // The input's gradient is read by a backward op registered on the input's tape before
        // the forward pass: it runs last, before dfdx drops the non-leaf gradients.
        let sink: Arc<Mutex<Option<InputRows<E, D, IN>>>> = Arc::default();
        let grads = match &mut acc {
            Some(a) => std::mem::replace(&mut **a, Gradients::leaky()),
            None => Gradients::leaky(),
        };
        let (traced, mut tape) = input.clone().trace(grads).split_tape();
        let (probe, slot) = (input.clone(), sink.clone());
        tape.add_backward_op(move |g| {
            *slot.lock().unwrap() = Some(g.get(&probe));
            Ok(())
        });
        let out = <M as Module<Tensor<(usize, Const<IN>), E, D, OwnedTape<E, D>>>>::try_forward(
            &self.module,
            traced.put_tape(tape),
        )
        .unwrap_or_else(|e| panic!("dfdx forward: {e:?}"));
        let g = (out * (c * e::<E>(w))).sum().backward();
        if let Some(a) = acc {
            *a = g;
        }
        let d_in = sink
            .lock()
            .unwrap()
            .take()
            .expect("the input's gradient")
            .as_vec();
        let inv = e::<E>(1.0 / w);
        let mut dx = Vec::with_capacity(batch * dim);
        let mut dz = Vec::with_capacity(batch * self.cond_dim);
        for row in d_in.chunks_exact(IN) {
            dx.extend(row[..dim].iter().map(|v| *v * inv));
            dz.extend(row[dim..dim + self.cond_dim].iter().map(|v| *v * inv));
        }
        let dev = x.device();
        let dz = z.map(|_| dev.tensor_from_vec(dz, (batch, self.cond_dim)));
        (dev.tensor_from_vec(dx, (batch, dim)), dz)
    }
}

//! The adapter from a dfdx module to a [`Denoiser`]: the module maps
//! `[x (D), z (C), sin(w_k t), cos(w_k t)]` (IN = D + C + 2F features) to an output of OUT = D.
//! The input rows are assembled on the device (concatenation with the broadcast time
//! features), and the VJP slices the input's gradient there too.

use std::sync::{Arc, Mutex};

use adeis_compiler::{Prediction, TimeInfo};
use dfdx::prelude::*;

use crate::denoiser::{check_vector_input, Cotangents, Denoiser, TimeCot};
use crate::error::RuntimeError;
use crate::nn::ParamGrads;
use crate::state::{Rows, State};
use crate::tape::{Taped, TapedDenoiser, TimeLeaves};
use crate::{e, to_f64};

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

    /// d/dt of [`TimeFeatures::at`]: [w_k cos(w_k t)..., -w_k sin(w_k t)...]
    pub fn slope_at(&self, t: f64) -> Vec<f64> {
        let mut v: Vec<f64> = self.freqs.iter().map(|w| w * (w * t).cos()).collect();
        v.extend(self.freqs.iter().map(|w| -w * (w * t).sin()));
        v
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

    /// The time features at `model_t`, one row broadcast to the batch.
    fn features<E: Dtype, D: Device<E>>(&self, dev: &D, batch: usize, model_t: f64) -> Rows<E, D> {
        let row: Vec<E> = self.time.at(model_t).into_iter().map(e::<E>).collect();
        let row = dev.tensor_from_vec(row, (self.time.len(),));
        row.broadcast_like::<_, Axis<0>>(&(batch, self.time.len()))
    }

    /// The network's input rows [x, z, time features] (z = 0 without conditioning).
    pub fn input<E: Dtype, D: Device<E>>(
        &self,
        x: &State<E, D>,
        z: Option<&State<E, D>>,
        model_t: f64,
    ) -> InputRows<E, D, IN> {
        let batch = x.batch();
        let dev = x.device();
        let zr = match z {
            Some(z) => z.rows().clone(),
            None => dev.zeros_like(&(batch, self.cond_dim)),
        };
        let xz = (x.rows().clone(), zr).concat_along(Axis::<1>);
        (xz, self.features(&dev, batch, model_t))
            .concat_along(Axis::<1>)
            .realize::<(usize, Const<IN>)>()
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
    /// The module's parameter gradients, by tensor (read with `grads.get(&module.weight)`).
    type Grads = Gradients<E, D>;

    fn prediction(&self) -> Prediction {
        self.prediction
    }

    fn check_input(&self, item: &[usize]) -> Result<(), RuntimeError> {
        check_vector_input(item, self.dim, "this MLP")
    }

    fn cond_dim(&self) -> usize {
        self.cond_dim
    }

    fn forward(&self, x: &State<E, D>, z: Option<&State<E, D>>, time: &TimeInfo) -> State<E, D> {
        let input = self.input(x, z, time.model_t);
        let out = <M as Module<Tensor<(usize, Const<IN>), E, D>>>::try_forward(&self.module, input)
            .unwrap_or_else(|e| panic!("dfdx forward: {e:?}"));
        let batch = out.shape().0;
        x.like(out.realize::<(usize, usize)>().reshape_like(&(batch, OUT)))
    }

    fn zero_grads(&self) -> Gradients<E, D> {
        self.module.alloc_grads()
    }

    fn as_taped(&self) -> Option<&dyn TapedDenoiser<E, D, Grads = Gradients<E, D>>> {
        Some(self)
    }

    fn vjp(
        &self,
        x: &State<E, D>,
        z: Option<&State<E, D>>,
        time: &TimeInfo,
        cot: &State<E, D>,
        theta: Option<(&mut Gradients<E, D>, f64)>,
    ) -> Cotangents<E, D> {
        let batch = x.batch();
        let input = self.input(x, z, time.model_t);
        // With theta the backward pass accumulates w cot^T d out/d theta into the caller's
        // gradients, whose leaves are the parameters: dfdx drops every other gradient after
        // backward, so memory stays at one step's activations.
        let (mut acc, w) = match theta {
            Some((acc, w)) if w != 0.0 => (Some(acc), w),
            _ => (None, 1.0),
        };
        let c: Tensor<(usize, Const<OUT>), E, D> =
            cot.rows().clone().reshape_like(&(batch, Const::<OUT>));
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
            .realize::<(usize, usize)>();
        // Undo the weight on the input's gradient (it is w cot^T d out/d input).
        let d_in = if w == 1.0 {
            d_in
        } else {
            d_in * e::<E>(1.0 / w)
        };
        let (dim, cd) = (self.dim, self.cond_dim);
        let dx = d_in.clone().slice((.., 0..dim)).realize::<(usize, usize)>();
        // The time features' columns, contracted with d features/d t and summed over the batch.
        let d_feats = to_f64(
            &d_in
                .clone()
                .slice((.., dim + cd..))
                .realize::<(usize, usize)>()
                .sum::<(usize,), Axis<0>>(),
        );
        let slope = self.time.slope_at(time.model_t);
        let model_t = d_feats.iter().zip(&slope).map(|(g, s)| g * s).sum();
        let dz = z.map(|z| z.like(d_in.slice((.., dim..dim + cd)).realize::<(usize, usize)>()));
        Cotangents {
            x: x.like(dx),
            cond: dz,
            time: Some(TimeCot {
                model_t,
                ..TimeCot::default()
            }),
        }
    }
}

impl<E: Dtype, D: Device<E>, M, const IN: usize, const OUT: usize> TapedDenoiser<E, D>
    for MlpDenoiser<M, IN, OUT>
where
    MlpDenoiser<M, IN, OUT>: Denoiser<E, D, Grads = Gradients<E, D>>,
    M: Module<
        Tensor<(usize, Const<IN>), E, D, OwnedTape<E, D>>,
        Output = Tensor<(usize, Const<OUT>), E, D, OwnedTape<E, D>>,
    >,
{
    fn forward_taped(
        &self,
        x: Taped<E, D>,
        _item: &[usize],
        z: Option<Taped<E, D>>,
        time: &TimeInfo,
        _params: ParamGrads,
    ) -> Taped<E, D> {
        let (batch, _) = *x.shape();
        let feats = self.features::<E, D>(x.device(), batch, time.model_t);
        self.forward_rows_taped(x, z, feats.retaped::<OwnedTape<E, D>>())
    }

    /// The tape's gradients themselves: `tape_gradients` made the parameters its leaves, so
    /// they are all that is left (a copy of everything cost W1's tape 5% at N = 200).
    fn grads_from_tape(&self, grads: &mut Gradients<E, D>) -> Option<Gradients<E, D>> {
        Some(std::mem::replace(grads, Gradients::leaky()))
    }

    /// The parameters as leaves (their gradients zero), or no leaves at all: dfdx drops
    /// every other gradient after the backward pass.
    fn tape_gradients(&self, params: ParamGrads) -> Gradients<E, D> {
        match params {
            ParamGrads::Compute => Denoiser::<E, D>::zero_grads(self),
            ParamGrads::Skip => {
                let mut none = Gradients::leaky();
                none.retain_leafs(&[]);
                none
            }
        }
    }

    /// The time features sin(w t), cos(w t) computed on the tape from the model-time leaf.
    fn forward_taped_in_time(
        &self,
        x: Taped<E, D>,
        _item: &[usize],
        z: Option<Taped<E, D>>,
        leaves: &TimeLeaves<E, D>,
        _params: ParamGrads,
    ) -> Option<Taped<E, D>> {
        let (batch, _) = *x.shape();
        let dev = x.device().clone();
        let n = self.time.freqs.len();
        let w = dev.tensor_from_vec(self.time.freqs.iter().map(|f| e::<E>(*f)).collect(), (n,));
        let arg = leaves.model_t.clone().leaky_trace().broadcast_like(&(n,)) * w;
        let row = (arg.with_empty_tape().sin(), arg.cos()).concat_along(Axis::<0>);
        let feats = row.broadcast_like::<_, Axis<0>>(&(batch, self.time.len()));
        Some(self.forward_rows_taped(x, z, feats))
    }
}

impl<M, const IN: usize, const OUT: usize> MlpDenoiser<M, IN, OUT> {
    /// The module on the rows [x, z (zeros without conditioning), time features], on the tape.
    fn forward_rows_taped<E: Dtype, D: Device<E>>(
        &self,
        x: Taped<E, D>,
        z: Option<Taped<E, D>>,
        feats: Taped<E, D>,
    ) -> Taped<E, D>
    where
        M: Module<
            Tensor<(usize, Const<IN>), E, D, OwnedTape<E, D>>,
            Output = Tensor<(usize, Const<OUT>), E, D, OwnedTape<E, D>>,
        >,
    {
        let (batch, _) = *x.shape();
        let xz = match z {
            Some(z) => (x, z).concat_along(Axis::<1>),
            None => {
                let zeros = feats.device().zeros_like(&(batch, self.cond_dim));
                (x, zeros).concat_along(Axis::<1>)
            }
        };
        let input = (xz, feats)
            .concat_along(Axis::<1>)
            .realize::<(usize, Const<IN>)>();
        self.module.forward(input).realize::<(usize, usize)>()
    }
}

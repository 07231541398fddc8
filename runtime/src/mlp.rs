//! The adapter from a dfdx module to a [`Denoiser`]: the module maps
//! `[x (D), z (C), sin(w_k t), cos(w_k t)]` (IN = D + C + 2F features) to an output of OUT = D.
//! The input rows are assembled on the host where the rows are on the CPU (elsewhere on the
//! device, concatenated with the broadcast time features), and the VJP splits the input's
//! gradient the same way.

use std::sync::{Arc, Mutex};

use adeis_compiler::{Prediction, TimeInfo};
use dfdx::prelude::*;

use crate::denoiser::{check_vector_input, Cotangents, Denoiser, TimeCot};
use crate::error::RuntimeError;
use crate::nn::ParamGrads;
use crate::state::{Rows, State};
use crate::taped::{Taped, TapedDenoiser, TimeLeaves};
use crate::{e, host, to_f64};

/// Sinusoidal time features with frequencies `w_k = exp(linspace(0, ln max_freq, n))`.
#[derive(Clone, Debug, PartialEq)]
pub struct TimeFeatures {
    /// The frequencies w_k.
    pub freqs: Vec<f64>,
}

impl TimeFeatures {
    /// `n` frequencies from 1 to `max_freq`, evenly spaced in log.
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

    /// The number of features (a sine and a cosine per frequency).
    pub fn len(&self) -> usize {
        2 * self.freqs.len()
    }

    /// Whether there are no frequencies.
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

/// The input's gradient split: dx, dz, and the time features' columns summed over the batch.
type InputGradParts<E, D> = (Rows<E, D>, Rows<E, D>, Vec<f64>);

/// A dfdx module as a denoiser. `IN` must equal dim + cond_dim + time features.
#[derive(Clone, Debug)]
pub struct MlpDenoiser<M, const IN: usize, const OUT: usize> {
    /// The dfdx module, mapping rows [x, z, time features] of width `IN` to `OUT`.
    pub module: M,
    /// The dimension of x.
    pub dim: usize,
    /// The width of the conditioning z (0 without).
    pub cond_dim: usize,
    /// The time features appended to each row.
    pub time: TimeFeatures,
    /// What the module's output is: eps, x0 or v.
    pub prediction: Prediction,
}

impl<M, const IN: usize, const OUT: usize> MlpDenoiser<M, IN, OUT> {
    /// The denoiser of `module`; panics unless IN = dim + cond_dim + time features.
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
        self.input_on_host(x, z, model_t)
            .unwrap_or_else(|| self.input_generic(x, z, model_t))
    }

    /// [`MlpDenoiser::input`] in dfdx's operations.
    fn input_generic<E: Dtype, D: Device<E>>(
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

    /// [`MlpDenoiser::input`] written row by row on the host, for rows on the CPU: dfdx's
    /// two concatenations with the broadcast features took 4.3 us of W1's 45 us evaluation.
    fn input_on_host<E: Dtype, D: Device<E>>(
        &self,
        x: &State<E, D>,
        z: Option<&State<E, D>>,
        model_t: f64,
    ) -> Option<InputRows<E, D, IN>> {
        let x_rows = host::as_cpu::<E, _, E, D>(x.rows())?;
        let xs = host::values(x_rows);
        let zs = z.map(|z| host::values(host::as_cpu::<E, _, E, D>(z.rows()).expect("one device")));
        let feats: Vec<E> = self.time.at(model_t).into_iter().map(e::<E>).collect();
        let (dim, cd) = (self.dim, self.cond_dim);
        let mut rows = Vec::with_capacity(x.batch() * IN);
        for b in 0..x.batch() {
            rows.extend_from_slice(&xs[b * dim..(b + 1) * dim]);
            match &zs {
                Some(zs) => rows.extend_from_slice(&zs[b * cd..(b + 1) * cd]),
                None => rows.resize(rows.len() + cd, e::<E>(0.0)),
            }
            rows.extend_from_slice(&feats);
        }
        let rows = x_rows
            .device()
            .tensor_from_vec(rows, (x.batch(), Const::<IN>));
        Some(host::from_cpu(rows))
    }

    /// The input's gradient (batch, IN) split into dx, dz and the time features' columns
    /// summed over the batch (in f64), on the host for rows on the CPU.
    fn split_input_grad<E: Dtype, D: Device<E>>(&self, d_in: &Rows<E, D>) -> InputGradParts<E, D> {
        let (batch, _) = *d_in.shape();
        let (dim, cd) = (self.dim, self.cond_dim);
        if let Some(on_cpu) = host::as_cpu::<E, _, E, D>(d_in) {
            let v = host::values(on_cpu);
            let (mut dx, mut dz) = (
                Vec::with_capacity(batch * dim),
                Vec::with_capacity(batch * cd),
            );
            let mut d_feats = vec![0.0; IN - dim - cd];
            for row in v.chunks_exact(IN) {
                dx.extend_from_slice(&row[..dim]);
                dz.extend_from_slice(&row[dim..dim + cd]);
                for (acc, g) in d_feats.iter_mut().zip(&row[dim + cd..]) {
                    *acc += g.to_f64().expect("a float");
                }
            }
            let dev = on_cpu.device();
            return (
                host::from_cpu(dev.tensor_from_vec(dx, (batch, dim))),
                host::from_cpu(dev.tensor_from_vec(dz, (batch, cd))),
                d_feats,
            );
        }
        self.split_input_grad_generic(d_in)
    }

    /// [`MlpDenoiser::split_input_grad`] in dfdx's operations (the sum in E).
    fn split_input_grad_generic<E: Dtype, D: Device<E>>(
        &self,
        d_in: &Rows<E, D>,
    ) -> InputGradParts<E, D> {
        let (dim, cd) = (self.dim, self.cond_dim);
        let dx = d_in.clone().slice((.., 0..dim)).realize::<(usize, usize)>();
        let d_feats = to_f64(
            &d_in
                .clone()
                .slice((.., dim + cd..))
                .realize::<(usize, usize)>()
                .sum::<(usize,), Axis<0>>(),
        );
        let dz = d_in
            .clone()
            .slice((.., dim..dim + cd))
            .realize::<(usize, usize)>();
        (dx, dz, d_feats)
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
        // x 1 is exact: no operation for the unweighted VJP.
        let c = if w == 1.0 { c } else { c * e::<E>(w) };
        let g = (out * c).sum().backward();
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
        let (dx, dz, d_feats) = self.split_input_grad(&d_in);
        // The time features' columns, contracted with d features/d t.
        let slope = self.time.slope_at(time.model_t);
        let model_t = d_feats.iter().zip(&slope).map(|(g, s)| g * s).sum();
        let dz = z.map(|z| z.like(dz));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::from_f64;
    use crate::noise::normals;

    /// Only the input's layout is under test: no module (IN 13 = 3 + cond_dim + features).
    fn model(cond_dim: usize) -> MlpDenoiser<(), 13, 3> {
        let freqs = TimeFeatures::new((13 - 3 - cond_dim) / 2, 100.0);
        MlpDenoiser::new((), 3, cond_dim, freqs, Prediction::Eps)
    }

    #[test]
    fn the_host_input_rows_equal_dfdx_concatenation() {
        let dev = Cpu::default();
        // With conditioning (3 + 4 + 6) and without (3 + 0 + 10, the zeros' width 0).
        for cond_dim in [4, 0] {
            let m = model(cond_dim);
            let x: State<f32, Cpu> = from_f64(&dev, &normals(1, 0, 5 * 3), 5, 3);
            let z: State<f32, Cpu> = from_f64(&dev, &normals(2, 0, 5 * cond_dim), 5, cond_dim);
            for z in [Some(&z), None] {
                let host = m.input_on_host(&x, z, 0.37).expect("CPU rows").as_vec();
                assert_eq!(host, m.input_generic(&x, z, 0.37).as_vec());
            }
        }
    }

    #[test]
    fn the_host_split_of_the_input_gradient_equals_dfdx_slices() {
        let dev = Cpu::default();
        let m = model(4);
        let g: Rows<f64, Cpu> = crate::rows_from_f64(&dev, &normals(3, 0, 5 * 13), 5, 13);
        let (dx, dz, feats) = m.split_input_grad(&g);
        let (gx, gz, gfeats) = m.split_input_grad_generic(&g);
        assert_eq!(dx.as_vec(), gx.as_vec());
        assert_eq!(dz.as_vec(), gz.as_vec());
        assert_eq!(dx.shape(), gx.shape());
        assert_eq!(dz.shape(), gz.shape());
        for (a, b) in feats.iter().zip(&gfeats) {
            assert!((a - b).abs() <= 1e-15 * b.abs().max(1.0), "{a} {b}");
        }
        assert_eq!(feats.len(), 6);
    }
}

//! The full-tape reference (MATH.md 3.3): the whole sampling loop recorded on dfdx's tape and
//! back-propagated. Exact, and its memory grows with N times the network's activations: it is
//! the reference the discrete adjoint is tested against and the baseline of the benchmarks.

use adeis_compiler::{Instr, Operand, Plan, Pred, Prediction, Schedule};
use dfdx::prelude::*;

use crate::adjoint::{Gradient, Wrt};
use crate::denoiser::{Batch, Denoiser, ParamGrads, TimeInfo};
use crate::e;
use crate::executor::{time_info, RuntimeError};
use crate::mlp::MlpDenoiser;
use crate::noise::NoiseSource;

/// A batch on the tape.
pub type Taped<E, D> = Tensor<(usize, usize), E, D, OwnedTape<E, D>>;

/// A model that can run on dfdx's tape.
pub trait TapedDenoiser<E: Dtype, D: Device<E>>: Denoiser<E, D> {
    fn forward_taped(&self, x: Taped<E, D>, z: Option<Taped<E, D>>, time: &TimeInfo)
        -> Taped<E, D>;
}

impl<E: Dtype, D: Device<E>, M, const IN: usize, const OUT: usize> TapedDenoiser<E, D>
    for MlpDenoiser<M, IN, OUT>
where
    MlpDenoiser<M, IN, OUT>: Denoiser<E, D>,
    M: Module<
        Tensor<(usize, Const<IN>), E, D, OwnedTape<E, D>>,
        Output = Tensor<(usize, Const<OUT>), E, D, OwnedTape<E, D>>,
    >,
{
    fn forward_taped(
        &self,
        x: Taped<E, D>,
        z: Option<Taped<E, D>>,
        time: &TimeInfo,
    ) -> Taped<E, D> {
        let (batch, _) = *x.shape();
        let dev = x.device().clone();
        let feats: Vec<E> = (0..batch)
            .flat_map(|_| self.time.at(time.model_t))
            .map(e::<E>)
            .collect();
        let feats = dev.tensor_from_vec(feats, (batch, self.time.len()));
        let xz = match z {
            Some(z) => (x, z).concat_along(Axis::<1>),
            None => (x, dev.zeros_like(&(batch, self.cond_dim))).concat_along(Axis::<1>),
        };
        let input = (xz, feats)
            .concat_along(Axis::<1>)
            .realize::<(usize, Const<IN>)>();
        let out = self.module.forward(input);
        out.realize::<(usize, usize)>()
    }
}

/// Takes a slot's value: the taped original at its last use, a copy with an empty tape (same
/// tensor id, so gradients meet) before.
fn take<E: Dtype, D: Device<E>>(slot: &mut Option<Taped<E, D>>, last: bool) -> Taped<E, D> {
    if last {
        slot.take().expect("plan order")
    } else {
        slot.as_ref().expect("plan order").with_empty_tape()
    }
}

/// The gradient of L = sum(cot * x0) by back-propagating through the whole taped loop.
/// `cot` is dL/dx_0 given the sample (computed from the untaped sample first).
#[allow(clippy::too_many_arguments)]
pub fn tape_gradient<E: Dtype, D: Device<E>, M: TapedDenoiser<E, D> + ?Sized>(
    plan: &Plan,
    schedule: &Schedule,
    model: &M,
    x_t: &Batch<E, D>,
    z: Option<&Batch<E, D>>,
    noise: &NoiseSource<E, D>,
    wrt: Wrt,
    loss_grad: impl FnOnce(&Batch<E, D>) -> Result<Batch<E, D>, RuntimeError>,
) -> Result<Gradient<E, D>, RuntimeError> {
    if model.dim() != x_t.shape().1 {
        return Err(RuntimeError::Shape(format!(
            "x_t has dimension {} but the model's is {}",
            x_t.shape().1,
            model.dim()
        )));
    }
    let (batch, dim) = *x_t.shape();
    let dev = x_t.device().clone();
    let (last_state, last_out) = plan.last_uses();
    let mut states: Vec<Option<Taped<E, D>>> = (0..plan.n_states).map(|_| None).collect();
    let mut outs: Vec<Option<Taped<E, D>>> = (0..plan.n_outputs).map(|_| None).collect();
    states[0] = Some(x_t.leaky_trace());
    let mut nfe = 0;
    for (k, ins) in plan.instrs.iter().enumerate() {
        match ins {
            Instr::Eval {
                out,
                input,
                t,
                pred,
                ..
            } => {
                let x = take(&mut states[*input], last_state[*input] == k);
                let time = time_info(schedule, *t);
                let (a, s) = (time.alpha, time.sigma);
                // The original (with its tape, at its last use) goes through the network so
                // that no recorded operation is dropped; the conversion uses a copy.
                let x_copy = x.with_empty_tape();
                let raw = model.forward_taped(x, z.map(|z| z.leaky_trace()), &time);
                let x = x_copy;
                nfe += 1;
                let o = match (pred, model.prediction()) {
                    (Pred::Eps, Prediction::Eps) | (Pred::Data, Prediction::X0) => raw,
                    (Pred::Eps, Prediction::X0) => (x - raw * e::<E>(a)) * e::<E>(1.0 / s),
                    (Pred::Eps, Prediction::V) => x * e::<E>(s) + raw * e::<E>(a),
                    (Pred::Data, Prediction::Eps) => (x - raw * e::<E>(s)) * e::<E>(1.0 / a),
                    (Pred::Data, Prediction::V) => x * e::<E>(a) - raw * e::<E>(s),
                };
                outs[*out] = Some(o);
            }
            Instr::Combine { dst, terms, .. } => {
                let mut acc: Option<Taped<E, D>> = None;
                let mut constant: Option<Batch<E, D>> = None;
                for (op, c) in terms {
                    match op {
                        Operand::State(s) => {
                            let v = take(&mut states[*s], last_state[*s] == k) * e::<E>(*c);
                            acc = Some(match acc {
                                None => v,
                                Some(a) => a + v,
                            });
                        }
                        Operand::Out(o) => {
                            let v = take(&mut outs[*o], last_out[*o] == k) * e::<E>(*c);
                            acc = Some(match acc {
                                None => v,
                                Some(a) => a + v,
                            });
                        }
                        Operand::Noise(i) => {
                            let n = noise
                                .get(&dev, *i, batch, dim)
                                .map_err(RuntimeError::Noise)?
                                * e::<E>(*c);
                            constant = Some(match constant {
                                None => n,
                                Some(a) => a + n,
                            });
                        }
                    }
                }
                let mut v = acc.expect("a combination has a state or output term");
                if let Some(cst) = constant {
                    v = v + cst;
                }
                states[*dst] = Some(v);
            }
        }
    }
    let x0_taped = states[plan.output].take().expect("plan output");
    let x0 = x0_taped.retaped::<NoneTape>();
    let cot = loss_grad(&x0)?;
    let g = (x0_taped * cot).sum().backward();
    let dtheta = if wrt.params {
        ParamGrads::Dfdx(g.clone())
    } else {
        ParamGrads::None
    };
    Ok(Gradient {
        x0,
        dx_t: g.get(x_t),
        dz: if wrt.cond { z.map(|z| g.get(z)) } else { None },
        dtheta,
        nfe,
        vjps: 0,
    })
}

impl<E: Dtype, D: Device<E>> TapedDenoiser<E, D> for crate::analytic::GaussianModel {
    fn forward_taped(
        &self,
        x: Taped<E, D>,
        z: Option<Taped<E, D>>,
        time: &TimeInfo,
    ) -> Taped<E, D> {
        let (ax, amu) = self.coefficients(time);
        match z {
            Some(z) => x * e::<E>(ax) + z * e::<E>(amu),
            None => x * e::<E>(ax) + e::<E>(amu * self.mu),
        }
    }
}

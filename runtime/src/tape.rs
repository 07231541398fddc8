//! The full-tape reference (docs/math.md section 3.3): the whole sampling loop recorded on
//! dfdx's tape and back-propagated. Exact, and its memory grows with N times the network's
//! activations: it is the reference the discrete adjoint is tested against and the baseline of
//! the benchmarks.

use adeis_compiler::{Instr, Operand, Plan, Pred, Prediction, TimeInfo, Wrt};
use dfdx::prelude::*;

use crate::adjoint::Gradient;
use crate::denoiser::Denoiser;
use crate::e;
use crate::error::RuntimeError;
use crate::executor::{check_shapes, Input};
use crate::nn::ParamGrads;
use crate::state::{Rows, State};

/// A batch of rows on the tape.
pub type Taped<E, D> = Tensor<(usize, usize), E, D, OwnedTape<E, D>>;

/// A model that can run on dfdx's tape.
pub trait TapedDenoiser<E: Dtype, D: Device<E>>: Denoiser<E, D> {
    /// The output rows at (x, z, t), on the tape; `item` is the shape of one item of x.
    /// `params` says whether the parameters' gradients are wanted (a model may skip the work
    /// of those it would not be asked for).
    fn forward_taped(
        &self,
        x: Taped<E, D>,
        item: &[usize],
        z: Option<Taped<E, D>>,
        time: &TimeInfo,
        params: ParamGrads,
    ) -> Taped<E, D>;

    /// The parameter gradients in the model's layout, read from the tape's gradients (None:
    /// this model's parameters are not on the tape).
    fn grads_from_tape(&self, grads: &mut Gradients<E, D>) -> Option<Self::Grads>;
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

fn add<E: Dtype, D: Device<E>>(acc: Option<Taped<E, D>>, v: Taped<E, D>) -> Taped<E, D> {
    match acc {
        None => v,
        Some(a) => a + v,
    }
}

/// The gradient of L = sum(cot * x0) by back-propagating through the whole taped loop.
/// `cot` is dL/dx_0 given the sample (computed from the untaped sample first).
pub fn tape_gradient<E: Dtype, D: Device<E>, M: TapedDenoiser<E, D> + ?Sized>(
    plan: &Plan,
    model: &M,
    input: &Input<E, D>,
    wrt: Wrt,
    loss_grad: impl FnOnce(&State<E, D>) -> Result<State<E, D>, RuntimeError>,
) -> Result<Gradient<E, D, M::Grads>, RuntimeError> {
    check_shapes(model, input.x_t, input.cond)?;
    let x_t = input.x_t;
    let (last_state, last_out) = plan.last_uses();
    let mut states: Vec<Option<Taped<E, D>>> = (0..plan.n_states).map(|_| None).collect();
    let mut outs: Vec<Option<Taped<E, D>>> = (0..plan.n_outputs).map(|_| None).collect();
    states[0] = Some(x_t.rows().leaky_trace());
    let z = input.cond.map(|z| z.rows());
    let mut nfe = 0;
    for (k, ins) in plan.instrs.iter().enumerate() {
        match ins {
            Instr::Eval {
                out,
                input,
                time,
                pred,
                ..
            } => {
                let x = take(&mut states[*input], last_state[*input] == k);
                let (a, s) = (time.alpha, time.sigma);
                // The original (with its tape, at its last use) goes through the network so
                // that no recorded operation is dropped; the conversion uses a copy.
                let x_copy = x.with_empty_tape();
                let raw = model.forward_taped(
                    x,
                    x_t.item(),
                    z.map(|z| z.leaky_trace()),
                    time,
                    ParamGrads::when(wrt.params),
                );
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
                let mut constant: Option<Rows<E, D>> = None;
                for (op, c) in terms {
                    match op {
                        Operand::State(s) => {
                            let v = take(&mut states[*s], last_state[*s] == k) * e::<E>(*c);
                            acc = Some(add(acc, v));
                        }
                        Operand::Out(o) => {
                            let v = take(&mut outs[*o], last_out[*o] == k) * e::<E>(*c);
                            acc = Some(add(acc, v));
                        }
                        Operand::Noise(i) => {
                            let n = input.noise.get(*i, x_t)?.into_rows() * e::<E>(*c);
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
    let x0 = x_t.like(x0_taped.retaped::<NoneTape>());
    let cot = crate::adjoint::cotangent(&x0, loss_grad)?;
    let mut g = (x0_taped * cot.into_rows()).sum().backward();
    let dtheta = if wrt.params {
        Some(model.grads_from_tape(&mut g).ok_or_else(|| {
            RuntimeError::Invalid(
                "the tape reference has no parameter gradients for this model (its parameters are not on dfdx's tape)".into(),
            )
        })?)
    } else {
        None
    };
    Ok(Gradient {
        dx_t: x_t.like(g.get(x_t.rows())),
        dz: if wrt.cond {
            input.cond.map(|z| z.like(g.get(z.rows())))
        } else {
            None
        },
        x0,
        dtheta,
        dtimes: None,
        dschedule: None,
        nfe,
        vjps: 0,
    })
}

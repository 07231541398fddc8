//! The full-tape reference (docs/math.md section 3.3): the whole sampling loop recorded on
//! dfdx's tape and back-propagated. Exact, and its memory grows with N times the network's
//! activations: it is the reference the discrete adjoint is tested against and the baseline of
//! the benchmarks. With wrt "times" or "schedule", the coefficients that move with the grid and
//! every evaluation's model time, alpha and sigma are leaves of the tape too (section 3.4).

use std::sync::{Arc, Mutex};

use adeis_compiler::{Instr, Operand, Plan, Pred, Prediction, Problem, Wrt};
use dfdx::prelude::*;

use super::{Gradient, GradientMethod};
use crate::denoiser::Denoiser;
use crate::e;
use crate::error::RuntimeError;
use crate::executor::{check_shapes, Input};
use crate::model_fn::ModelFn;
use crate::nn::ParamGrads;
use crate::state::{Rows, State};
use crate::taped::{Taped, TapedDenoiser, TimeLeaves};

/// A tensor's gradient (zeros where nothing used it: a network's alpha, a closed form's time).
fn grad_of<S: Shape, E: Dtype, D: Device<E>>(
    g: &mut Gradients<E, D>,
    t: &Tensor<S, E, D>,
) -> Result<Tensor<S, E, D>, D::Err> {
    g.try_alloc_for(t)?;
    Ok(g.get(t))
}

/// What the reference reads from the backward pass besides the parameters' gradients.
struct Probed<E: Dtype, D: Device<E>> {
    dx_t: Rows<E, D>,
    dz: Option<Rows<E, D>>,
    /// The scalar leaves' gradients, in the order they were made.
    scalars: Vec<f64>,
}

/// The scalar leaves of the time quantities, shared by the loop that makes them and the probe.
type ScalarLeaves<E, D> = Arc<Mutex<Vec<Tensor<Rank0, E, D>>>>;
/// Where the probe leaves what it read.
type ProbeSlot<E, D> = Arc<Mutex<Option<Probed<E, D>>>>;

/// x_T on the tape that starts from `start`, with a backward operation registered before any
/// other: dfdx runs them in reverse, so this one runs last, when every gradient is complete,
/// and before dfdx drops those of everything but `start`'s leaves it reads the gradients of
/// x_T, of z and of every scalar leaf in `leaves` (the list the loop fills as it goes).
fn probed_start<E: Dtype, D: Device<E>>(
    x_t: &Rows<E, D>,
    z: Option<&Rows<E, D>>,
    start: Gradients<E, D>,
    leaves: &ScalarLeaves<E, D>,
) -> (Taped<E, D>, ProbeSlot<E, D>) {
    let slot: ProbeSlot<E, D> = Arc::default();
    let (x, mut tape) = x_t.clone().trace(start).split_tape();
    let (x_t, z) = (x_t.clone(), z.cloned());
    let (leaves, out) = (leaves.clone(), slot.clone());
    tape.add_backward_op(move |g| {
        let dx_t = grad_of(g, &x_t)?;
        let dz = z.as_ref().map(|z| grad_of(g, z)).transpose()?;
        let leaves = leaves.lock().expect("the leaves' list");
        let scalars = leaves
            .iter()
            .map(|l| Ok(crate::to_f64(&grad_of(g, l)?)[0]))
            .collect::<Result<Vec<f64>, D::Err>>()?;
        *out.lock().expect("the probe's slot") = Some(Probed { dx_t, dz, scalars });
        Ok(())
    });
    (x.put_tape(tape), slot)
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
    crate::executor::check_predictions(plan, model.prediction())?;
    let timed = wrt.times || wrt.schedule;
    if timed {
        super::shared::check_sens(plan, wrt)?;
    }
    // The leaves of the time quantities, by their place in `scalar_leaves` (evaluation: its
    // state and its model time, alpha and sigma from there on; coefficient: its instruction,
    // its term and the leaf).
    let scalar_leaves: ScalarLeaves<E, D> = Arc::default();
    let mut eval_leaves: Vec<(usize, usize)> = Vec::new();
    let mut coef_leaves: Vec<(usize, usize, usize)> = Vec::new();
    let x_t = input.x_t;
    let (last_state, last_out) = plan.last_uses();
    let mut states: Vec<Option<Taped<E, D>>> = (0..plan.n_states).map(|_| None).collect();
    let mut outs: Vec<Option<Taped<E, D>>> = (0..plan.n_outputs).map(|_| None).collect();
    let z = input.cond.map(|z| z.rows());
    let start = model.tape_gradients(ParamGrads::when(wrt.params));
    let (x_t_taped, probe) = probed_start(x_t.rows(), z, start, &scalar_leaves);
    states[0] = Some(x_t_taped);
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
                let zt = z.map(|z| z.leaky_trace());
                let params = ParamGrads::when(wrt.params);
                crate::interrupt::check("the taped sampler")?;
                nfe += 1;
                let o = if timed {
                    let leaves = TimeLeaves::at(&x.device().clone(), time);
                    let raw = model
                        .forward_taped_in_time(x, x_t.item(), zt, &leaves, params)
                        .ok_or_else(|| {
                            RuntimeError::Invalid(
                                "wrt \"times\" / \"schedule\" on the tape: this model does not put its time on dfdx's tape".into(),
                            )
                        })?;
                    let shape = *raw.shape();
                    let (ta, ts) = (
                        TimeLeaves::rows(&leaves.alpha, shape),
                        TimeLeaves::rows(&leaves.sigma, shape),
                    );
                    let x = x_copy;
                    let o = match (pred, model.prediction()) {
                        (Pred::Eps, Prediction::Eps) | (Pred::Data, Prediction::X0) => raw,
                        (Pred::Eps, Prediction::X0) => (x - raw * ta) / ts,
                        (Pred::Eps, Prediction::V) => x * ts + raw * ta,
                        (Pred::Data, Prediction::Eps) => (x - raw * ts) / ta,
                        (Pred::Data, Prediction::V) => x * ta - raw * ts,
                        // A leaf used twice is broadcast twice; its two gradients add.
                        (Pred::Eps, Prediction::Flow) => {
                            (x + raw * TimeLeaves::rows(&leaves.alpha, shape)) / (ta + ts)
                        }
                        (Pred::Data, Prediction::Flow) => {
                            (x - raw * TimeLeaves::rows(&leaves.sigma, shape)) / (ta + ts)
                        }
                    };
                    let mut list = scalar_leaves.lock().expect("the leaves' list");
                    eval_leaves.push((*input, list.len()));
                    list.extend([leaves.model_t, leaves.alpha, leaves.sigma]);
                    o
                } else {
                    let raw = model.forward_taped(x, x_t.item(), zt, time, params);
                    let x = x_copy;
                    match (pred, model.prediction()) {
                        (Pred::Eps, Prediction::Eps) | (Pred::Data, Prediction::X0) => raw,
                        (Pred::Eps, Prediction::X0) => (x - raw * e::<E>(a)) * e::<E>(1.0 / s),
                        (Pred::Eps, Prediction::V) => x * e::<E>(s) + raw * e::<E>(a),
                        (Pred::Data, Prediction::Eps) => (x - raw * e::<E>(s)) * e::<E>(1.0 / a),
                        (Pred::Data, Prediction::V) => x * e::<E>(a) - raw * e::<E>(s),
                        (Pred::Eps, Prediction::Flow) => {
                            (x + raw * e::<E>(a)) * e::<E>(1.0 / (a + s))
                        }
                        (Pred::Data, Prediction::Flow) => {
                            (x - raw * e::<E>(s)) * e::<E>(1.0 / (a + s))
                        }
                    }
                };
                outs[*out] = Some(o);
            }
            Instr::Combine { dst, terms, .. } => {
                let mut acc: Option<Taped<E, D>> = None;
                let mut constant: Option<Rows<E, D>> = None;
                for (m, (op, c)) in terms.iter().enumerate() {
                    // A coefficient that moves with the grid or the schedule is a leaf of its
                    // own, when those gradients are asked for.
                    let leaf = match &plan.term_sens {
                        Some(sens) if timed && !sens[k][m].is_empty() => {
                            let l: Tensor<Rank0, E, D> = x_t.device().tensor(e::<E>(*c));
                            let mut list = scalar_leaves.lock().expect("the leaves' list");
                            coef_leaves.push((k, m, list.len()));
                            list.push(l.clone());
                            Some(l)
                        }
                        _ => None,
                    };
                    let scale = |v: Taped<E, D>| match &leaf {
                        Some(l) => {
                            let shape = *v.shape();
                            v * TimeLeaves::rows(l, shape)
                        }
                        None => v * e::<E>(*c),
                    };
                    match op {
                        Operand::State(s) => {
                            let v = scale(take(&mut states[*s], last_state[*s] == k));
                            acc = Some(add(acc, v));
                        }
                        Operand::Out(o) => {
                            let v = scale(take(&mut outs[*o], last_out[*o] == k));
                            acc = Some(add(acc, v));
                        }
                        Operand::Noise(i) if leaf.is_some() => {
                            let n = input
                                .noise
                                .get(*i, x_t)?
                                .into_rows()
                                .retaped::<OwnedTape<E, D>>();
                            acc = Some(add(acc, scale(n)));
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
    let mut x0_taped = states[plan.output].take().expect("plan output");
    // A state no instruction reads (a reversible sampler's last companion) holds the tape of
    // whatever was recorded through it; that tape joins the output's, so that the backward
    // pass has every operation the output depends on.
    for dead in states.iter_mut().filter_map(Option::take) {
        let (_, tape) = dead.split_tape();
        let (x, own) = x0_taped.split_tape();
        x0_taped = x.put_tape(own.merge(tape));
    }
    let x0 = x_t.like(x0_taped.retaped::<NoneTape>());
    let cot = super::shared::cotangent(&x0, loss_grad)?;
    let mut g = (x0_taped * cot.into_rows()).sum().backward();
    let probed = probe
        .lock()
        .expect("the probe's slot")
        .take()
        .expect("the probe runs in the backward pass");
    let dtheta = if wrt.params {
        Some(model.grads_from_tape(&mut g).ok_or_else(|| {
            RuntimeError::Invalid(
                "the tape reference has no parameter gradients for this model (its parameters are not on dfdx's tape)".into(),
            )
        })?)
    } else {
        None
    };
    let (dtimes, dschedule) = if timed {
        let sens = plan.term_sens.as_ref().expect("checked");
        let mut acc = vec![0.0; plan.grid.len() + plan.param_names.len()];
        let d = &probed.scalars;
        for (k, m, leaf) in &coef_leaves {
            for (j, s) in &sens[*k][*m] {
                acc[*j] += d[*leaf] * s;
            }
        }
        for (input, at) in &eval_leaves {
            let tc = crate::denoiser::TimeCot {
                model_t: d[*at],
                alpha: d[at + 1],
                sigma: d[at + 2],
            };
            super::shared::add_eval_sens(plan, *input, &tc, &mut acc);
        }
        super::shared::finish_sens(plan, wrt, acc)
    } else {
        (None, None)
    };
    Ok(Gradient {
        dx_t: x_t.like(probed.dx_t),
        dz: match (wrt.cond, input.cond, probed.dz) {
            (true, Some(z), Some(dz)) => Some(z.like(dz)),
            _ => None,
        },
        x0,
        dtheta,
        dtimes,
        dschedule,
        nfe,
        vjps: 0,
        reconstruction: None,
    })
}

/// The full tape as a [`GradientMethod`] (`[gradient] method = "tape"`): the bare model on
/// dfdx's tape, so a model that runs there ([`Denoiser::as_taped`]).
pub struct FullTape;

impl GradientMethod for FullTape {
    fn check<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
        &self,
        _problem: &Problem,
        model: &ModelFn<E, D, M>,
    ) -> Result<(), RuntimeError> {
        if model.guidance.is_some() || model.threshold.is_some() {
            return Err(RuntimeError::Invalid(
                "the tape reference runs the bare model: no guidance or thresholding".into(),
            ));
        }
        if model.model.as_taped().is_none() {
            return Err(RuntimeError::Invalid("method = \"tape\" needs a model that runs on dfdx's tape (an MLP or the Gaussian model)".into()));
        }
        Ok(())
    }

    fn gradient<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
        &self,
        problem: &Problem,
        model: &ModelFn<E, D, M>,
        input: &Input<E, D>,
        loss_grad: impl FnOnce(&State<E, D>) -> Result<State<E, D>, RuntimeError>,
    ) -> Result<Gradient<E, D, M::Grads>, RuntimeError> {
        let taped = model.model.as_taped().ok_or_else(|| {
            RuntimeError::Invalid("method = \"tape\" needs a model that runs on dfdx's tape".into())
        })?;
        tape_gradient(problem.plan(), taped, input, problem.wrt(), loss_grad)
    }
}

//! The gradient of a reversible sampler (Rex, BDIA) with nothing recorded and nothing recomputed
//! from x_T (docs/math.md section 3.5): one forward sweep keeps only the final states; the
//! backward sweep runs each step's algebraic inverse (the plan's [`Reversal`]) from the
//! states the step carried forward, which defines every state and output the step read, and
//! transposes the step on them at once. Memory is one step's, whatever the number of steps;
//! the cost is the forward sweep, the inverse's evaluations and one VJP per evaluation. In
//! exact arithmetic this is the discrete adjoint's gradient; in floating point the
//! reconstructed states drift by round-off amplified by the inverse (1/zeta per step), and
//! the drift at x_T is reported in [`Gradient::reconstruction`].
//!
//! [`Reversal`]: adeis_compiler::Reversal

use adeis_compiler::{Plan, Problem, Reversal, Wrt};
use dfdx::prelude::*;

use super::discrete::Reverse;
use super::shared::cotangent;
use super::{Gradient, GradientMethod};
use crate::denoiser::Denoiser;
use crate::error::RuntimeError;
use crate::executor::{check_shapes, Exec, Input, Slots};
use crate::model_fn::ModelFn;
use crate::state::State;

/// The reversible gradient as a [`GradientMethod`] (`[gradient] method = "reversible"`).
pub struct Reversible;

/// The plan's reversal, or the error that says the sampler has none.
fn reversal_of(plan: &Plan) -> Result<&Reversal, RuntimeError> {
    plan.reversal.as_ref().ok_or_else(|| {
        RuntimeError::Invalid(format!(
            "method = \"reversible\" differentiates an algebraically reversible sampler (method = {}); this plan is {}: use method = \"discrete\"",
            adeis_compiler::sampler::registry::reversible_methods(),
            plan.description
        ))
    })
}

impl GradientMethod for Reversible {
    fn check<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
        &self,
        problem: &Problem,
        _model: &ModelFn<E, D, M>,
    ) -> Result<(), RuntimeError> {
        reversal_of(problem.plan()).map(|_| ())
    }

    fn gradient<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
        &self,
        problem: &Problem,
        model: &ModelFn<E, D, M>,
        input: &Input<E, D>,
        loss_grad: impl FnOnce(&State<E, D>) -> Result<State<E, D>, RuntimeError>,
    ) -> Result<Gradient<E, D, M::Grads>, RuntimeError> {
        reversible_gradient(problem.plan(), model, input, problem.wrt(), loss_grad)
    }
}

/// The gradient of a reversible plan by its inverse sweep, with respect to `wrt`;
/// `loss_grad` maps the sample x_0 to dL/dx_0. A plan without a [`Reversal`] is refused.
pub fn reversible_gradient<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
    plan: &Plan,
    model: &ModelFn<E, D, M>,
    input: &Input<E, D>,
    wrt: Wrt,
    loss_grad: impl FnOnce(&State<E, D>) -> Result<State<E, D>, RuntimeError>,
) -> Result<Gradient<E, D, M::Grads>, RuntimeError> {
    let reversal = reversal_of(plan)?;
    check_shapes(model.model, input.x_t, input.cond)?;
    crate::executor::check_predictions(plan, model.model.prediction())?;
    let sensitivities = wrt.times || wrt.schedule;
    if sensitivities {
        super::shared::check_sens(plan, wrt)?;
    }
    let mut exec = Exec::new(plan, model, input);
    exec.keep_outputs = sensitivities;
    exec.pin(&reversal.last);
    let mut slots = exec.start();
    exec.run(&mut slots, 0, plan.instrs.len(), false)?;
    let x0 = slots.states[&plan.output].clone();
    keep_only(&mut slots, &reversal.last);
    let mut rev = Reverse::new(plan, model, input, wrt);
    rev.seed(plan.output, cotangent(&x0, loss_grad)?);
    let bounds = plan.step_bounds();
    for seg in (0..bounds.len() - 1).rev() {
        // A segment past the grid's steps (the final denoising) has no inverse: it read the
        // last states, which are there.
        let step = reversal.steps.get(plan.instrs[bounds[seg]].step());
        if let Some(s) = step {
            exec.run_program(&mut slots, &s.inverse)?;
        }
        rev.run(&slots, (bounds[seg], bounds[seg + 1]), model, input.cond)?;
        keep_only(&mut slots, step.map_or(&reversal.last, |s| &s.carried));
    }
    let drift = slots.state(0).map(|x| relative_drift(x, input.x_t));
    let nfe = exec.nfe;
    let mut g = rev.finish(input, x0, nfe);
    g.reconstruction = drift;
    Ok(g)
}

/// Drops every output and every state but `states`.
fn keep_only<E: Dtype, D: Device<E>>(slots: &mut Slots<E, D>, states: &[usize]) {
    slots.states.retain(|k, _| states.contains(k));
    slots.outs.clear();
}

/// max |a - b| / max |b|.
fn relative_drift<E: Dtype, D: Device<E>>(a: &State<E, D>, b: &State<E, D>) -> f64 {
    let (a, b) = (a.to_f64(), b.to_f64());
    let diff = a
        .iter()
        .zip(&b)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f64::max);
    let scale = b.iter().map(|q| q.abs()).fold(0.0, f64::max);
    diff / scale.max(f64::MIN_POSITIVE)
}

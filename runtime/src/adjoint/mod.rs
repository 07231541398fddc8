//! Gradients of a loss on the sample with respect to x_T, the conditioning z and the model's
//! parameters (docs/math.md section 3), by the method the [`Problem`] carries: the exact
//! discrete adjoint of its plan ([`discrete`]), AdjointDEIS-1 / -2M ([`deis`]), or the full
//! tape ([`crate::tape`]). One entry point, [`gradient`].

pub mod deis;
pub mod discrete;

use std::collections::HashMap;

use adeis_compiler::{Adjoint, Problem};
use dfdx::prelude::*;

use crate::denoiser::Denoiser;
use crate::error::RuntimeError;
use crate::executor::Input;
use crate::model_fn::ModelFn;
use crate::state::State;

/// A gradient and what it cost.
#[derive(Debug)]
pub struct Gradient<E: Dtype, D: Device<E>, G> {
    /// The sample x_0 the loss was taken on.
    pub x0: State<E, D>,
    pub dx_t: State<E, D>,
    /// dL/dz, when the gradient is taken with respect to the conditioning.
    pub dz: Option<State<E, D>>,
    /// dL/dtheta in the model's own layout, when taken with respect to the parameters.
    pub dtheta: Option<G>,
    /// dL/dt_i for every time of the sampling grid (in the grid's order), when the gradient
    /// is taken with respect to the times.
    pub dtimes: Option<Vec<f64>>,
    /// dL/d(parameter) for every continuous parameter of the schedule (name, value), the
    /// grid moving with them where it is defined through the schedule.
    pub dschedule: Option<Vec<(String, f64)>>,
    /// Forward model evaluations (recomputation included).
    pub nfe: usize,
    /// Vector-Jacobian products of the model.
    pub vjps: usize,
}

/// The gradient of the loss whose gradient at the sample `loss_grad` gives, by the problem's
/// method, with respect to what the problem says.
pub fn gradient<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
    problem: &Problem,
    model: &ModelFn<E, D, M>,
    input: &Input<E, D>,
    loss_grad: impl FnOnce(&State<E, D>) -> Result<State<E, D>, RuntimeError>,
) -> Result<Gradient<E, D, M::Grads>, RuntimeError> {
    let wrt = problem.wrt();
    if wrt.cond && input.cond.is_none() {
        return Err(RuntimeError::Invalid(
            "wrt includes \"cond\" but the model has no conditioning".into(),
        ));
    }
    if (wrt.times || wrt.schedule) && matches!(problem.adjoint(), Adjoint::AdjointDeis { .. }) {
        return Err(RuntimeError::Invalid(
            "wrt \"times\" and \"schedule\" are computed by the discrete adjoint (method = \"discrete\") and the tape reference".into(),
        ));
    }
    match *problem.adjoint() {
        Adjoint::Discrete { states } => {
            discrete::discrete_adjoint(problem.plan(), model, input, wrt, states, loss_grad)
        }
        Adjoint::AdjointDeis { states, .. } => {
            let deis = problem
                .adjoint_deis()
                .expect("a problem with adjoint_deis carries its compiled plan");
            deis::adjoint_deis(problem.plan(), deis, model, input, (wrt, states), loss_grad)
        }
        Adjoint::Tape => {
            if model.guidance.is_some() || model.threshold.is_some() {
                return Err(RuntimeError::Invalid(
                    "the tape reference runs the bare model: no guidance or thresholding".into(),
                ));
            }
            let taped = model.model.as_taped().ok_or_else(|| {
                RuntimeError::Invalid("method = \"tape\" needs a model that runs on dfdx's tape (an MLP or the Gaussian model)".into())
            })?;
            crate::tape::tape_gradient(problem.plan(), taped, input, wrt, loss_grad)
        }
    }
}

/// dL/d(grid times, then schedule parameters) of an evaluation at state `input` whose time
/// cotangents are `tc`: its time moves with the grid as its state's does, its alpha and sigma
/// also with the parameters at fixed time. Adds into `acc` (indexed like a `GridSens`).
pub(crate) fn add_eval_sens(
    plan: &adeis_compiler::Plan,
    input: usize,
    tc: &crate::denoiser::TimeCot,
    acc: &mut [f64],
) {
    let d = plan.state_derivs[input].dot(tc.model_t, tc.alpha, tc.sigma);
    let sens = plan.state_sens[input].as_ref();
    for (j, w) in sens.expect("checked: every state's time sensitivity") {
        acc[*j] += w * d;
    }
    let n_grid = plan.grid.len();
    for (k, pp) in plan.state_params[input].iter().enumerate() {
        acc[n_grid + k] += tc.alpha * pp.alpha + tc.sigma * pp.sigma;
    }
}

/// Splits the accumulated dL/d(grid times, schedule parameters at fixed times) into dtimes and
/// dschedule as `wrt` asks, the grid's own motion with the parameters added.
#[allow(clippy::type_complexity)]
pub(crate) fn finish_sens(
    plan: &adeis_compiler::Plan,
    wrt: adeis_compiler::Wrt,
    mut acc: Vec<f64>,
) -> (Option<Vec<f64>>, Option<Vec<(String, f64)>>) {
    let dparams = acc.split_off(plan.grid.len());
    let dschedule: Vec<(String, f64)> = plan
        .param_names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let through_grid: f64 = plan
                .grid_param_sens
                .iter()
                .zip(&acc)
                .map(|(row, dt)| row[k] * dt)
                .sum();
            (name.clone(), dparams[k] + through_grid)
        })
        .collect();
    (wrt.times.then_some(acc), wrt.schedule.then_some(dschedule))
}

/// The plan carries what the gradient with respect to its grid and schedule needs: every
/// coefficient's sensitivity and every evaluation's time.
pub(crate) fn check_sens(
    plan: &adeis_compiler::Plan,
    wrt: adeis_compiler::Wrt,
) -> Result<(), RuntimeError> {
    if wrt.schedule && plan.param_names.is_empty() {
        return Err(RuntimeError::Invalid(
            "wrt \"schedule\": this schedule has no continuous parameters (a discrete schedule is a table of betas, edm's sigma is t itself); wrt \"times\" differentiates its grid".into(),
        ));
    }
    if wrt.schedule && !plan.params_differentiated {
        return Err(RuntimeError::Invalid(format!(
            "wrt \"schedule\": the schedule has {} parameters; its gradient is derived for at most {}",
            plan.param_names.len(),
            adeis_compiler::plan::MAX_DUAL_PARAMS
        )));
    }
    let on_grid = plan.instrs.iter().all(|ins| match ins {
        adeis_compiler::Instr::Eval { input, .. } => plan.state_sens[*input].is_some(),
        adeis_compiler::Instr::Combine { .. } => true,
    });
    if plan.term_sens.is_none() || !on_grid {
        return Err(RuntimeError::Invalid(format!(
            "wrt \"times\" / \"schedule\": the sampler's coefficients carry no sensitivities for {}",
            plan.description
        )));
    }
    Ok(())
}

pub(crate) fn add_into<E: Dtype, D: Device<E>>(slot: &mut Option<State<E, D>>, v: State<E, D>) {
    *slot = Some(match slot.take() {
        None => v,
        Some(a) => a + v,
    });
}

/// map[k] += c v (a missing entry is zero), and whether the new entry is finite everywhere.
pub(crate) fn add_at<E: Dtype, D: Device<E>>(
    map: &mut HashMap<usize, State<E, D>>,
    k: usize,
    v: &State<E, D>,
    c: f64,
) -> bool {
    let (new, finite) = match map.remove(&k) {
        None => State::combination(&[(v, c)]),
        Some(a) => State::combination(&[(&a, 1.0), (v, c)]),
    };
    map.insert(k, new);
    finite
}

/// The loss gradient at x_0, checked.
pub(crate) fn cotangent<E: Dtype, D: Device<E>>(
    x0: &State<E, D>,
    loss_grad: impl FnOnce(&State<E, D>) -> Result<State<E, D>, RuntimeError>,
) -> Result<State<E, D>, RuntimeError> {
    let cot = loss_grad(x0)?;
    if !cot.same_shape(x0) {
        return Err(RuntimeError::Shape(format!(
            "the loss gradient has shape {:?}; the sample has {:?}",
            cot.shape(),
            x0.shape()
        )));
    }
    if !cot.is_finite() {
        return Err(RuntimeError::Invalid(
            "the loss or its gradient at the sample is NaN or Inf".into(),
        ));
    }
    Ok(cot)
}

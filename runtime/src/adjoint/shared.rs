//! What the gradient methods share: the accumulation of the time cotangents into dL/d(grid
//! times, schedule parameters) and its split into `dtimes` and `dschedule`, the check that a
//! plan carries those sensitivities, sparse cotangent sums and the checked loss gradient.

use std::collections::HashMap;

use dfdx::prelude::*;

use crate::error::RuntimeError;
use crate::state::State;

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
        acc[n_grid + k] += tc.model_t * pp.model_t + tc.alpha * pp.alpha + tc.sigma * pp.sigma;
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
    for (i, dt) in acc.iter_mut().enumerate() {
        if plan.held_fixed(i) {
            *dt = 0.0;
        }
    }
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

//! AdjointDEIS-1 / -2M (docs/math.md section 3.1) on the compiled [`AdjointDeisPlan`]: the
//! forward pass is the sampling plan; the adjoint runs on its own grid from t_min to t_max with
//! one VJP per adjoint point, every coefficient and time taken from the compiled plan.

use adeis_compiler::adjoint_deis::RecordedState;
use adeis_compiler::{AdjointDeisPlan, ContinuousStates, Plan, Pred, Problem, Wrt};
use dfdx::prelude::*;

use super::shared::{add_into, cotangent};
use super::{Gradient, GradientMethod};
use crate::denoiser::Denoiser;
use crate::error::RuntimeError;
use crate::executor::{check_shapes, Exec, Input, Slots};
use crate::model_fn::ModelFn;
use crate::state::State;

/// The recorded state at an adjoint point.
fn recorded<E: Dtype, D: Device<E>>(slots: &Slots<E, D>, at: RecordedState) -> State<E, D> {
    let slot = |s: usize| slots.state(s).expect("recorded state").clone();
    match at {
        RecordedState::Slot(s) => slot(s),
        RecordedState::Lerp { lo, hi, u } => {
            let (lo, hi) = (slots.state(lo), slots.state(hi));
            let (lo, hi) = (lo.expect("recorded state"), hi.expect("recorded state"));
            State::combination(&[(lo, 1.0 - u), (hi, u)]).0
        }
    }
}

/// AdjointDEIS on `deis`, compiled for `plan`; `how` is what to differentiate and where the
/// states come from (recorded, or back-solved by DDIM from t_min).
pub fn adjoint_deis<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
    plan: &Plan,
    deis: &AdjointDeisPlan,
    model: &ModelFn<E, D, M>,
    input: &Input<E, D>,
    how: (Wrt, ContinuousStates),
    loss_grad: impl FnOnce(&State<E, D>) -> Result<State<E, D>, RuntimeError>,
) -> Result<Gradient<E, D, M::Grads>, RuntimeError> {
    let (wrt, states) = how;
    check_shapes(model.model, input.x_t, input.cond)?;
    crate::executor::check_predictions(plan, model.model.prediction())?;
    let z = input.cond;
    let record = states == ContinuousStates::Record;
    let mut exec = Exec::new(plan, model, input);
    let mut slots = exec.start();
    // With denoise_to_zero the plan ends with the x0 prediction at t_min; the adjoint first
    // differentiates through it, at the last state on the grid.
    let n = plan.instrs.len();
    let split = plan.final_denoise.map_or(n, |d| d.eval);
    exec.run(&mut slots, 0, split, record)?;
    let x_end = slots
        .state(plan.final_denoise.map_or(plan.output, |d| d.input))
        .cloned()
        .expect("live state");
    exec.run(&mut slots, split, n, record)?;
    let x0 = slots.states[&plan.output].clone();
    let mut vjps = 0;
    let mut theta = wrt.params.then(|| model.model.zero_grads());
    let mut a_x = cotangent(&x0, loss_grad)?;
    let mut dz_acc: Option<State<E, D>> = None;
    if plan.final_denoise.is_some() {
        let time = deis.points[0].time;
        let cot = model.vjp(
            &x_end,
            z,
            &time,
            Pred::Data,
            &a_x,
            theta.as_mut().map(|acc| (acc, 1.0)),
        );
        vjps += 1;
        a_x = cot.x;
        if let (true, Some(dz)) = (wrt.cond, cot.cond) {
            add_into(&mut dz_acc, dz);
        }
    }
    if !record {
        // Only the recorded run needs the trajectory.
        slots.states.clear();
    }
    let mut prev_jx: Option<State<E, D>> = None; // a_x^T d eps/dx at the previous point
    let mut x_cur = x_end;
    for (k, step) in deis.steps.iter().enumerate() {
        let point = &deis.points[k];
        let x = if record {
            recorded(&slots, point.state)
        } else {
            x_cur.clone()
        };
        if !record {
            // DDIM re-solve to the next point, with the model's eps at x (one evaluation).
            let eps = model.predict(&x, z, &point.time, Pred::Eps);
            exec.nfe += 1;
            x_cur = x.clone() * step.x_coef + eps * step.eps_coef;
        }
        let w = point.cond_weight;
        let theta_slot = theta.as_mut().filter(|_| w != 0.0).map(|acc| (acc, w));
        let cot = model.vjp(&x, z, &point.time, Pred::Eps, &a_x, theta_slot);
        vjps += 1;
        crate::interrupt::check_with(|| format!("step {k} of the AdjointDEIS adjoint"))?;
        if let (true, Some(jz)) = (wrt.cond, cot.cond) {
            add_into(&mut dz_acc, jz * w);
        }
        let jx = cot.x;
        let prev = prev_jx.take();
        let mut terms = vec![(&a_x, step.decay), (&jx, step.now)];
        if step.prev != 0.0 {
            terms.push((prev.as_ref().expect("the previous point's VJP"), -step.prev));
        }
        let (next, finite) = State::combination(&terms);
        a_x = next;
        if !finite {
            return Err(RuntimeError::NonFinite {
                what: "the adjoint state".into(),
                step: k,
                t: deis.points[k + 1].time.t,
            });
        }
        prev_jx = Some(jx);
    }
    Ok(Gradient {
        x0,
        dx_t: a_x,
        dz: if wrt.cond {
            z.map(|z| dz_acc.unwrap_or_else(|| z.zeros_like()))
        } else {
            None
        },
        dtheta: theta,
        dtimes: None,
        dschedule: None,
        nfe: exec.nfe,
        vjps,
        reconstruction: None,
    })
}

/// AdjointDEIS as a [`GradientMethod`] (`[gradient] method = "adjoint_deis"`): its order
/// and grid are the problem's compiled [`AdjointDeisPlan`].
pub struct AdjointDeis {
    /// Recorded states, or DDIM's back-solve from t_min.
    pub states: ContinuousStates,
}

impl GradientMethod for AdjointDeis {
    fn check<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
        &self,
        problem: &Problem,
        _model: &ModelFn<E, D, M>,
    ) -> Result<(), RuntimeError> {
        let wrt = problem.wrt();
        if wrt.times || wrt.schedule {
            return Err(RuntimeError::Invalid(
                "wrt \"times\" and \"schedule\" are computed by the discrete adjoint (method = \"discrete\") and the tape reference".into(),
            ));
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
        let deis = problem
            .adjoint_deis()
            .expect("a problem with adjoint_deis carries its compiled plan");
        let how = (problem.wrt(), self.states);
        adjoint_deis(problem.plan(), deis, model, input, how, loss_grad)
    }
}

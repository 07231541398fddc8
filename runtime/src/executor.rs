//! The one executor of forward plans: every sampler, ODE or SDE, forward or inverted.

use std::fmt;

use adeis_compiler::{Instr, Operand, Plan, Schedule};
use dfdx::prelude::*;

use crate::denoiser::{Batch, Denoiser, ModelFn, TimeInfo};
use crate::e;
use crate::noise::NoiseSource;

/// A failure while running a plan.
#[derive(Clone, Debug, PartialEq)]
pub enum RuntimeError {
    /// A state or model output stopped being finite.
    NonFinite {
        what: String,
        step: usize,
        t: f64,
    },
    Shape(String),
    Noise(String),
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuntimeError::NonFinite { what, step, t } => write!(
                f,
                "the solver produced NaN or Inf in {what} at step {step} (t = {t})"
            ),
            RuntimeError::Shape(m) | RuntimeError::Noise(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for RuntimeError {}

/// What a sampling run returns.
#[derive(Clone, Debug)]
pub struct SampleOutput<E: Dtype, D: Device<E>> {
    pub x: Batch<E, D>,
    /// The states at every model evaluation (time, state), then the final state, when asked.
    pub trajectory: Option<Vec<(f64, Batch<E, D>)>>,
    /// Model evaluations made (each may be two network passes with guidance).
    pub nfe: usize,
}

/// The time information of the schedule at t.
pub fn time_info(schedule: &Schedule, t: f64) -> TimeInfo {
    let v = schedule.eval(t);
    TimeInfo {
        t,
        model_t: schedule.def().model_time(t),
        alpha: v.alpha,
        sigma: v.sigma,
    }
}

fn finite<E: Dtype, D: Device<E>>(t: &Batch<E, D>) -> bool {
    t.clone().sum::<Rank0, _>().as_vec()[0]
        .to_f64()
        .is_some_and(|v| v.is_finite())
}

/// Runs a forward plan from `x_t` (shape (batch, dim)) with conditioning `z`.
pub fn sample<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
    plan: &Plan,
    schedule: &Schedule,
    model: &ModelFn<E, D, M>,
    x_t: &Batch<E, D>,
    z: Option<&Batch<E, D>>,
    noise: &NoiseSource<E, D>,
    record: bool,
) -> Result<SampleOutput<E, D>, RuntimeError> {
    let (batch, dim) = *x_t.shape();
    if dim != model.model.dim() {
        return Err(RuntimeError::Shape(format!(
            "x_t has dimension {dim} but the model's is {}",
            model.model.dim()
        )));
    }
    if let Some(z) = z {
        if z.shape().0 != batch || z.shape().1 != model.model.cond_dim() {
            return Err(RuntimeError::Shape(format!(
                "the conditioning has shape {:?}; expected ({batch}, {})",
                z.shape(),
                model.model.cond_dim()
            )));
        }
    }
    let dev = x_t.device().clone();
    let (state_last, out_last) = plan.last_uses();
    let mut states: Vec<Option<Batch<E, D>>> = vec![None; plan.n_states];
    let mut outs: Vec<Option<Batch<E, D>>> = vec![None; plan.n_outputs];
    states[0] = Some(x_t.clone());
    let mut trajectory = record.then(Vec::new);
    let mut nfe = 0;
    for (k, ins) in plan.instrs.iter().enumerate() {
        match ins {
            Instr::Eval {
                out,
                input,
                t,
                pred,
                step,
            } => {
                let x = states[*input].as_ref().expect("plan order");
                let time = time_info(schedule, *t);
                let o = model.predict(x, z, &time, *pred);
                nfe += 1;
                if !finite(&o) {
                    return Err(RuntimeError::NonFinite {
                        what: "the model output".into(),
                        step: *step,
                        t: *t,
                    });
                }
                if let Some(tr) = trajectory.as_mut() {
                    tr.push((*t, x.clone()));
                }
                outs[*out] = Some(o);
            }
            Instr::Combine { dst, terms, step } => {
                let mut acc: Option<Batch<E, D>> = None;
                for (op, c) in terms {
                    let v = match op {
                        Operand::State(s) => states[*s].clone().expect("plan order"),
                        Operand::Out(o) => outs[*o].clone().expect("plan order"),
                        Operand::Noise(i) => noise
                            .get(&dev, *i, batch, dim)
                            .map_err(RuntimeError::Noise)?,
                    };
                    let term = v * e::<E>(*c);
                    acc = Some(match acc {
                        None => term,
                        Some(a) => a + term,
                    });
                }
                let new = acc.unwrap_or_else(|| dev.zeros_like(&(batch, dim)));
                if !finite(&new) {
                    return Err(RuntimeError::NonFinite {
                        what: "the state".into(),
                        step: *step,
                        t: plan.state_times[*dst],
                    });
                }
                states[*dst] = Some(new);
            }
        }
        // Free what no later instruction reads (unless it is the output).
        if !record {
            for (s, last) in states.iter_mut().zip(&state_last) {
                if *last == k {
                    *s = None;
                }
            }
        }
        for (o, last) in outs.iter_mut().zip(&out_last) {
            if *last == k {
                *o = None;
            }
        }
    }
    let x = states[plan.output].take().expect("plan output");
    if let Some(tr) = trajectory.as_mut() {
        tr.push((plan.state_times[plan.output], x.clone()));
    }
    Ok(SampleOutput { x, trajectory, nfe })
}

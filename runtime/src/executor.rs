//! The one executor of forward plans: every sampler, ODE or SDE, forward or inverted. The
//! adjoints reuse it to record or recompute the states their VJPs need.

use std::collections::HashMap;
use std::fmt;

use adeis_compiler::{Instr, Operand, Plan, Schedule};
use dfdx::prelude::*;

use crate::denoiser::{Batch, Denoiser, ModelFn, TimeInfo};
use crate::e;
use crate::noise::NoiseSource;

/// A failure while running a plan or its adjoint.
#[derive(Clone, Debug, PartialEq)]
pub enum RuntimeError {
    /// A state, model output or cotangent stopped being finite.
    NonFinite {
        what: String,
        step: usize,
        t: f64,
    },
    Shape(String),
    Noise(String),
    Invalid(String),
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuntimeError::NonFinite { what, step, t } => write!(
                f,
                "the solver produced NaN or Inf in {what} at step {step} (t = {t})"
            ),
            RuntimeError::Shape(m) | RuntimeError::Noise(m) | RuntimeError::Invalid(m) => {
                f.write_str(m)
            }
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

/// Whether every element is finite (one reduction).
pub fn finite<E: Dtype, D: Device<E>>(t: &Batch<E, D>) -> bool {
    t.clone().sum::<Rank0, _>().as_vec()[0]
        .to_f64()
        .is_some_and(|v| v.is_finite())
}

/// Checks x_t and z against the model.
pub fn check_shapes<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
    model: &M,
    x_t: &Batch<E, D>,
    z: Option<&Batch<E, D>>,
) -> Result<(), RuntimeError> {
    let (batch, dim) = *x_t.shape();
    if dim != model.dim() {
        return Err(RuntimeError::Shape(format!(
            "x_t has dimension {dim} but the model's is {}",
            model.dim()
        )));
    }
    if let Some(z) = z {
        if z.shape().0 != batch || z.shape().1 != model.cond_dim() {
            return Err(RuntimeError::Shape(format!(
                "the conditioning has shape {:?}; expected ({batch}, {})",
                z.shape(),
                model.cond_dim()
            )));
        }
    }
    Ok(())
}

/// The live slots of a plan being executed, by slot number: a checkpoint is a clone of it
/// (tensors are shared, not copied), and holds only what is live, not one entry per step.
#[derive(Clone, Debug)]
pub struct Slots<E: Dtype, D: Device<E>> {
    pub states: HashMap<usize, Batch<E, D>>,
    pub outs: HashMap<usize, Batch<E, D>>,
}

impl<E: Dtype, D: Device<E>> Slots<E, D> {
    pub fn state(&self, i: usize) -> Option<&Batch<E, D>> {
        self.states.get(&i)
    }
}

/// Runs the instructions of a plan over a range, on given slots.
pub struct Exec<'p, 'm, E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized> {
    pub plan: &'p Plan,
    pub schedule: &'p Schedule,
    pub model: &'p ModelFn<'m, E, D, M>,
    pub z: Option<&'p Batch<E, D>>,
    pub noise: &'p NoiseSource<E, D>,
    pub nfe: usize,
    shape: (usize, usize),
    dev: D,
    last_state: Vec<usize>,
    last_out: Vec<usize>,
}

impl<'p, 'm, E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized> Exec<'p, 'm, E, D, M> {
    pub fn new(
        plan: &'p Plan,
        schedule: &'p Schedule,
        model: &'p ModelFn<'m, E, D, M>,
        z: Option<&'p Batch<E, D>>,
        noise: &'p NoiseSource<E, D>,
        x_t: &Batch<E, D>,
    ) -> Self {
        let (last_state, last_out) = plan.last_uses();
        Exec {
            plan,
            schedule,
            model,
            z,
            noise,
            nfe: 0,
            shape: *x_t.shape(),
            dev: x_t.device().clone(),
            last_state,
            last_out,
        }
    }

    /// Slots holding only x_T.
    pub fn start(&self, x_t: &Batch<E, D>) -> Slots<E, D> {
        Slots {
            states: HashMap::from([(0, x_t.clone())]),
            outs: HashMap::new(),
        }
    }

    /// Runs instructions `from..to`. With `keep`, no state is freed (a recording run);
    /// otherwise each state is dropped after its last reader. Outputs always are.
    pub fn run(
        &mut self,
        slots: &mut Slots<E, D>,
        from: usize,
        to: usize,
        keep: bool,
    ) -> Result<(), RuntimeError> {
        let (batch, dim) = self.shape;
        for k in from..to {
            match &self.plan.instrs[k] {
                Instr::Eval {
                    out,
                    input,
                    t,
                    pred,
                    step,
                } => {
                    let x = slots.states.get(input).expect("plan order");
                    let time = time_info(self.schedule, *t);
                    let o = self.model.predict(x, self.z, &time, *pred);
                    self.nfe += 1;
                    if !finite(&o) {
                        return Err(RuntimeError::NonFinite {
                            what: "the model output".into(),
                            step: *step,
                            t: *t,
                        });
                    }
                    slots.outs.insert(*out, o);
                }
                Instr::Combine { dst, terms, step } => {
                    let mut acc: Option<Batch<E, D>> = None;
                    for (op, c) in terms {
                        let v = match op {
                            Operand::State(s) => slots.states.get(s).cloned().expect("plan order"),
                            Operand::Out(o) => slots.outs.get(o).cloned().expect("plan order"),
                            Operand::Noise(i) => self
                                .noise
                                .get(&self.dev, *i, batch, dim)
                                .map_err(RuntimeError::Noise)?,
                        };
                        let term = v * e::<E>(*c);
                        acc = Some(match acc {
                            None => term,
                            Some(a) => a + term,
                        });
                    }
                    let new = acc.expect("a combination has at least one term");
                    if !finite(&new) {
                        return Err(RuntimeError::NonFinite {
                            what: "the state".into(),
                            step: *step,
                            t: self.plan.state_times[*dst],
                        });
                    }
                    slots.states.insert(*dst, new);
                }
            }
            // Free what this instruction read for the last time. Model outputs go even when
            // recording: the adjoints need only the states.
            match &self.plan.instrs[k] {
                Instr::Eval { input, .. } => {
                    if !keep && self.last_state[*input] == k {
                        slots.states.remove(input);
                    }
                }
                Instr::Combine { terms, .. } => {
                    for (op, _) in terms {
                        match op {
                            Operand::State(s) if !keep && self.last_state[*s] == k => {
                                slots.states.remove(s);
                            }
                            Operand::Out(o) if self.last_out[*o] == k => {
                                slots.outs.remove(o);
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        Ok(())
    }
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
    check_shapes(model.model, x_t, z)?;
    let mut exec = Exec::new(plan, schedule, model, z, noise, x_t);
    let mut slots = exec.start(x_t);
    exec.run(&mut slots, 0, plan.instrs.len(), record)?;
    let x = slots.states[&plan.output].clone();
    let trajectory = record.then(|| {
        let mut tr: Vec<(f64, Batch<E, D>)> = plan
            .instrs
            .iter()
            .filter_map(|i| match i {
                Instr::Eval { input, t, .. } => Some((*t, slots.states[input].clone())),
                _ => None,
            })
            .collect();
        tr.push((plan.state_times[plan.output], x.clone()));
        tr
    });
    Ok(SampleOutput {
        x,
        trajectory,
        nfe: exec.nfe,
    })
}

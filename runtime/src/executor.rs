//! The one executor of forward plans: every sampler, ODE or SDE, forward or inverted. The
//! adjoints reuse it to record or recompute the states their VJPs need. It reads every time
//! quantity from the plan: the runtime evaluates no schedule formula.

use std::collections::HashMap;

use adeis_compiler::{Instr, Operand, Plan, Pred, Prediction};
use dfdx::prelude::*;

use crate::denoiser::Denoiser;
use crate::error::RuntimeError;
use crate::model_fn::ModelFn;
use crate::noise::NoiseSource;
use crate::state::State;

/// What a run starts from: x_T, the conditioning z (when the model has one) and the SDE
/// samplers' noise.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a, E: Dtype, D: Device<E>> {
    /// The starting state x_T.
    pub x_t: &'a State<E, D>,
    /// The conditioning z, for a model that takes one.
    pub cond: Option<&'a State<E, D>>,
    /// Where the SDE samplers' noises come from.
    pub noise: &'a NoiseSource<E, D>,
}

impl<'a, E: Dtype, D: Device<E>> Input<'a, E, D> {
    /// What a run starts from.
    pub fn new(
        x_t: &'a State<E, D>,
        cond: Option<&'a State<E, D>>,
        noise: &'a NoiseSource<E, D>,
    ) -> Self {
        Input { x_t, cond, noise }
    }
}

/// What a sampling run returns.
#[derive(Clone, Debug)]
pub struct SampleOutput<E: Dtype, D: Device<E>> {
    /// The sample x_0.
    pub x: State<E, D>,
    /// The states at every model evaluation (time, state), then the final state, when asked.
    pub trajectory: Option<Vec<(f64, State<E, D>)>>,
    /// Model evaluations made (each may be two network passes with guidance).
    pub nfe: usize,
    /// A reversible sampler's second state at the end (Rex's x^_0, EDICT's y_0): with x_0, the
    /// pair whose exact inversion returns this run's x_T.
    pub companion: Option<State<E, D>>,
}

/// The final companion state of a reversible plan with one, from the run's slots.
pub(crate) fn final_companion<E: Dtype, D: Device<E>>(
    plan: &Plan,
    slots: &Slots<E, D>,
) -> Option<State<E, D>> {
    let r = plan.reversal.as_ref()?;
    r.companion?;
    slots.states.get(r.last.get(1)?).cloned()
}

/// Checks x_t and z against the model.
pub fn check_shapes<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
    model: &M,
    x_t: &State<E, D>,
    z: Option<&State<E, D>>,
) -> Result<(), RuntimeError> {
    model.check_input(x_t.item())?;
    if let Some(z) = z {
        let want: Vec<usize> = [vec![x_t.batch()], model.cond_shape()].concat();
        if z.shape() != want {
            return Err(RuntimeError::Shape(format!(
                "the conditioning has shape {}; expected {}",
                tuple(&z.shape()),
                tuple(&want)
            )));
        }
    }
    Ok(())
}

/// Every model evaluation of `plan` can give the form its sampler asks of a model predicting
/// `prediction`: at pure noise (alpha = 0, a flow's t = 1) an eps model's x0 and an x0 model's
/// eps are undefined (x0 = (x - sigma eps) / alpha), which would be NaN in every state after.
pub fn check_predictions(plan: &Plan, prediction: Prediction) -> Result<(), RuntimeError> {
    for ins in &plan.instrs {
        let Instr::Eval { time, pred, .. } = ins else {
            continue;
        };
        if !crate::model_fn::converts(*pred, prediction, time) {
            let want = match pred {
                Pred::Data => "data (x0)",
                Pred::Eps => "noise (eps)",
            };
            let have = match prediction {
                Prediction::Eps => "noise (eps)",
                Prediction::X0 => "data (x0)",
                Prediction::V => "v",
                Prediction::Flow => "flow velocity",
            };
            return Err(RuntimeError::Invalid(format!(
                "the sampler asks for the model's {want} prediction at t = {}, where alpha = {} and sigma = {}: a model predicting {have} cannot give it there ({}); a flow (velocity) or v model can, or a grid that ends below pure noise (t_range)",
                time.t,
                time.alpha,
                time.sigma,
                if time.alpha == 0.0 {
                    "alpha = 0, pure noise"
                } else {
                    "sigma = 0, the data"
                }
            )));
        }
    }
    Ok(())
}

/// A shape as a tuple: (4, 77, 768).
fn tuple(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    format!("({})", dims.join(", "))
}

/// The live slots of a plan being executed, by slot number: a checkpoint is a clone of it
/// (tensors are shared, not copied), and holds only what is live, not one entry per step.
#[derive(Clone, Debug)]
pub struct Slots<E: Dtype, D: Device<E>> {
    /// The states by slot.
    pub states: HashMap<usize, State<E, D>>,
    /// The model outputs by slot.
    pub outs: HashMap<usize, State<E, D>>,
}

impl<E: Dtype, D: Device<E>> Slots<E, D> {
    /// The state in slot `i`, if it is live.
    pub fn state(&self, i: usize) -> Option<&State<E, D>> {
        self.states.get(&i)
    }
}

/// Runs the instructions of a plan over a range, on given slots.
pub struct Exec<'p, 'm, E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized> {
    /// The plan run.
    pub plan: &'p Plan,
    /// The model with its conversions.
    pub model: &'p ModelFn<'m, E, D, M>,
    /// The conditioning z.
    pub z: Option<&'p State<E, D>>,
    /// Where the SDE noises come from.
    pub noise: &'p NoiseSource<E, D>,
    /// Model evaluations so far.
    pub nfe: usize,
    /// A recording run keeps the model outputs too (the gradient with respect to the grid
    /// times reads them).
    pub keep_outputs: bool,
    x_t: State<E, D>,
    last_state: Vec<usize>,
    last_out: Vec<usize>,
}

impl<'p, 'm, E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized> Exec<'p, 'm, E, D, M> {
    /// An executor of `plan` on `model` from `input`, before its first instruction.
    pub fn new(plan: &'p Plan, model: &'p ModelFn<'m, E, D, M>, input: &Input<'p, E, D>) -> Self {
        let (last_state, last_out) = plan.last_uses();
        Exec {
            plan,
            model,
            z: input.cond,
            noise: input.noise,
            nfe: 0,
            keep_outputs: false,
            x_t: input.x_t.clone(),
            last_state,
            last_out,
        }
    }

    /// Slots holding only x_T.
    pub fn start(&self) -> Slots<E, D> {
        Slots {
            states: HashMap::from([(0, self.x_t.clone())]),
            outs: HashMap::new(),
        }
    }

    /// Runs the instructions of a program over the plan's slots (a reversible sampler's
    /// inverse step), keeping everything it defines.
    pub fn run_program(
        &mut self,
        slots: &mut Slots<E, D>,
        program: &[Instr],
    ) -> Result<(), RuntimeError> {
        for ins in program {
            self.execute(slots, ins)?;
        }
        Ok(())
    }

    /// Keeps these states whatever their last reader (what a backward sweep starts from).
    pub fn pin(&mut self, states: &[usize]) {
        for s in states {
            self.last_state[*s] = usize::MAX;
        }
    }

    /// One instruction: a model evaluation or an affine combination into its slot.
    fn execute(&mut self, slots: &mut Slots<E, D>, ins: &Instr) -> Result<(), RuntimeError> {
        match ins {
            Instr::Eval {
                out,
                input,
                time,
                pred,
                step,
            } => {
                // Ctrl-C is honoured within one model evaluation, at any number of steps.
                crate::interrupt::check_with(|| format!("step {step} of the sampler"))?;
                let x = slots.states.get(input).expect("plan order");
                let o = self.model.predict(x, self.z, time, *pred);
                self.nfe += 1;
                if !o.is_finite() {
                    return Err(RuntimeError::NonFinite {
                        what: "the model output".into(),
                        step: *step,
                        t: time.t,
                    });
                }
                slots.outs.insert(*out, o);
            }
            Instr::Combine { dst, terms, step } => {
                // The SDE noises are drawn here; the states and outputs are read in place.
                let noises = terms
                    .iter()
                    .filter_map(|(op, _)| match op {
                        Operand::Noise(i) => Some(self.noise.get(*i, &self.x_t)),
                        _ => None,
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let mut noise = noises.iter();
                let operands: Vec<(&State<E, D>, f64)> = terms
                    .iter()
                    .map(|(op, c)| {
                        let v = match op {
                            Operand::State(s) => slots.states.get(s).expect("plan order"),
                            Operand::Out(o) => slots.outs.get(o).expect("plan order"),
                            Operand::Noise(_) => noise.next().expect("drawn above"),
                        };
                        (v, *c)
                    })
                    .collect();
                let (new, finite) = State::combination(&operands);
                if !finite {
                    return Err(RuntimeError::NonFinite {
                        what: "the state".into(),
                        step: *step,
                        t: self.plan.state_time(*dst),
                    });
                }
                slots.states.insert(*dst, new);
            }
        }
        Ok(())
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
        let plan = self.plan;
        for k in from..to {
            self.execute(slots, &plan.instrs[k])?;
            // Free what this instruction read for the last time. Model outputs go even when
            // recording, unless asked for: the adjoints need only the states.
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
                            Operand::Out(o)
                                if self.last_out[*o] == k && !(keep && self.keep_outputs) =>
                            {
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

/// Runs a forward plan from `input`; with `record`, also returns the trajectory.
pub fn sample<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
    plan: &Plan,
    model: &ModelFn<E, D, M>,
    input: &Input<E, D>,
    record: bool,
) -> Result<SampleOutput<E, D>, RuntimeError> {
    check_shapes(model.model, input.x_t, input.cond)?;
    check_predictions(plan, model.model.prediction())?;
    let mut exec = Exec::new(plan, model, input);
    let mut slots = exec.start();
    exec.run(&mut slots, 0, plan.instrs.len(), record)?;
    let x = slots.states[&plan.output].clone();
    let trajectory = record.then(|| {
        let mut tr: Vec<(f64, State<E, D>)> = plan
            .instrs
            .iter()
            .filter_map(|i| match i {
                Instr::Eval { input, time, .. } => Some((time.t, slots.states[input].clone())),
                _ => None,
            })
            .collect();
        tr.push((plan.state_time(plan.output), x.clone()));
        tr
    });
    Ok(SampleOutput {
        x,
        trajectory,
        nfe: exec.nfe,
        companion: final_companion(plan, &slots),
    })
}

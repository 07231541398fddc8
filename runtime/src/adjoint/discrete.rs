//! The exact gradient of the plan that ran (docs/math.md section 3.2): the plan transposed,
//! one VJP per model evaluation, with recorded or binomially checkpointed states.

use std::collections::HashMap;

use adeis_compiler::{DiscreteStates, Instr, Operand, Plan, Problem, Wrt};
use dfdx::prelude::*;

use super::shared::{add_at, add_into, cotangent};
use super::{Gradient, GradientMethod};
use crate::denoiser::Denoiser;
use crate::error::RuntimeError;
use crate::executor::{check_shapes, Exec, Input, Slots};
use crate::model_fn::ModelFn;
use crate::noise::NoiseSource;
use crate::state::State;

/// The transposition of a plan's instructions, with the cotangents pending by slot (shared
/// with the reversible gradient, which runs it on reconstructed states).
pub(super) struct Reverse<'a, E: Dtype, D: Device<E>, G> {
    // Pending cotangents by slot: sparse, so the bookkeeping does not grow with the steps.
    xbar: HashMap<usize, State<E, D>>,
    obar: HashMap<usize, State<E, D>>,
    zbar: Option<State<E, D>>,
    theta: Option<G>,
    wrt: Wrt,
    vjps: usize,
    plan: &'a Plan,
    /// dL/dt_i for every grid time, then dL/dp_k for every schedule parameter at fixed
    /// times (the plan's sensitivity indices), when either is asked for.
    dtimes: Option<Vec<f64>>,
    /// Where the SDE noises come from, and x_T for their shape (the noise terms' coefficients
    /// move with the grid).
    noise: &'a NoiseSource<E, D>,
    x_t: &'a State<E, D>,
}

/// sum_i a_i b_i over every element (f64 accumulation).
fn dot<E: Dtype, D: Device<E>>(a: &State<E, D>, b: &State<E, D>) -> f64 {
    a.to_f64().iter().zip(b.to_f64()).map(|(p, q)| p * q).sum()
}

impl<'a, E: Dtype, D: Device<E>, G> Reverse<'a, E, D, G> {
    /// Nothing transposed yet, for the gradient with respect to `wrt`.
    pub(super) fn new<M: Denoiser<E, D, Grads = G> + ?Sized>(
        plan: &'a Plan,
        model: &ModelFn<E, D, M>,
        input: &Input<'a, E, D>,
        wrt: Wrt,
    ) -> Self {
        let sensitivities = wrt.times || wrt.schedule;
        Reverse {
            xbar: HashMap::new(),
            obar: HashMap::new(),
            zbar: None,
            theta: wrt.params.then(|| model.model.zero_grads()),
            wrt,
            vjps: 0,
            plan,
            dtimes: sensitivities.then(|| vec![0.0; plan.grid.len() + plan.param_names.len()]),
            noise: input.noise,
            x_t: input.x_t,
        }
    }

    /// Seeds the cotangent of the plan's output.
    pub(super) fn seed(&mut self, output: usize, g: State<E, D>) {
        self.xbar.insert(output, g);
    }

    /// The gradient once every instruction is transposed: dL/dx_T is the cotangent of slot 0.
    pub(super) fn finish(
        mut self,
        input: &Input<'_, E, D>,
        x0: State<E, D>,
        nfe: usize,
    ) -> Gradient<E, D, G> {
        let dx_t = self
            .xbar
            .remove(&0)
            .unwrap_or_else(|| input.x_t.zeros_like());
        let (dtimes, dschedule) = match self.dtimes.take() {
            None => (None, None),
            Some(acc) => super::shared::finish_sens(self.plan, self.wrt, acc),
        };
        Gradient {
            x0,
            dx_t,
            dz: if self.wrt.cond {
                input
                    .cond
                    .map(|z| self.zbar.take().unwrap_or_else(|| z.zeros_like()))
            } else {
                None
            },
            dtheta: self.theta,
            dtimes,
            dschedule,
            nfe,
            vjps: self.vjps,
            reconstruction: None,
        }
    }

    /// Transposes instructions `from..to` (in reverse), reading states from `slots`.
    pub(super) fn run<M: Denoiser<E, D, Grads = G> + ?Sized>(
        &mut self,
        slots: &Slots<E, D>,
        span: (usize, usize),
        model: &ModelFn<E, D, M>,
        z: Option<&State<E, D>>,
    ) -> Result<(), RuntimeError> {
        for k in (span.0..span.1).rev() {
            match &self.plan.instrs[k] {
                Instr::Combine { dst, terms, .. } => {
                    let Some(g) = self.xbar.remove(dst) else {
                        continue;
                    };
                    if let (Some(dt), Some(sens)) = (self.dtimes.as_mut(), &self.plan.term_sens) {
                        // dL/dc = <g, operand> for each coefficient c that moves with the grid.
                        for ((op, _), s) in terms.iter().zip(&sens[k]) {
                            if s.is_empty() {
                                continue;
                            }
                            let v = match op {
                                Operand::State(i) => dot(&g, &slots.states[i]),
                                Operand::Out(o) => dot(&g, &slots.outs[o]),
                                Operand::Noise(i) => dot(&g, &self.noise.get(*i, self.x_t)?),
                            };
                            for (j, d) in s {
                                dt[*j] += v * d;
                            }
                        }
                    }
                    for (op, c) in terms {
                        let (pending, slot) = match op {
                            Operand::State(s) => (&mut self.xbar, *s),
                            Operand::Out(o) => (&mut self.obar, *o),
                            Operand::Noise(_) => continue,
                        };
                        // Checked where the cotangent reaches a model evaluation's input.
                        let _finite = add_at(pending, slot, &g, *c);
                    }
                }
                Instr::Eval {
                    out,
                    input,
                    time,
                    pred,
                    step,
                } => {
                    let Some(g) = self.obar.remove(out) else {
                        continue;
                    };
                    let x = slots.states.get(input).expect("recorded state");
                    let theta = self.theta.as_mut().map(|acc| (acc, 1.0));
                    let cot = match self.dtimes.as_mut() {
                        None => model.vjp(x, z, time, *pred, &g, theta),
                        Some(dt) => {
                            let o = slots.outs.get(out).expect("recorded output");
                            let cot = model.vjp_with_time(x, z, time, (*pred, o), &g, theta);
                            let tc = cot.time.ok_or_else(|| {
                                RuntimeError::Invalid(
                                    "wrt \"times\" / \"schedule\": this model does not differentiate its dependence on time (the MLP denoisers and the closed-form models do; thresholding is not differentiated in time)".into(),
                                )
                            })?;
                            super::shared::add_eval_sens(self.plan, *input, &tc, dt);
                            cot
                        }
                    };
                    self.vjps += 1;
                    crate::interrupt::check_with(|| format!("step {step} of the adjoint"))?;
                    // The check covers the VJP and the cotangent it joins in one pass.
                    if !add_at(&mut self.xbar, *input, &cot.x, 1.0) {
                        return Err(RuntimeError::NonFinite {
                            what: "the adjoint state".into(),
                            step: *step,
                            t: time.t,
                        });
                    }
                    if let (true, Some(dz)) = (self.wrt.cond, cot.cond) {
                        add_into(&mut self.zbar, dz);
                    }
                }
            }
        }
        Ok(())
    }
}

fn binomial(n: usize, k: usize) -> usize {
    let mut r: usize = 1;
    for i in 0..k {
        r = r.saturating_mul(n - i) / (i + 1);
    }
    r
}

/// The exact gradient of the plan that ran (its transpose): one VJP per model evaluation.
/// `loss_grad` maps the sample x_0 to dL/dx_0.
pub fn discrete_adjoint<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
    plan: &Plan,
    model: &ModelFn<E, D, M>,
    input: &Input<E, D>,
    wrt: Wrt,
    states: DiscreteStates,
    loss_grad: impl FnOnce(&State<E, D>) -> Result<State<E, D>, RuntimeError>,
) -> Result<Gradient<E, D, M::Grads>, RuntimeError> {
    check_shapes(model.model, input.x_t, input.cond)?;
    crate::executor::check_predictions(plan, model.model.prediction())?;
    let sensitivities = wrt.times || wrt.schedule;
    if sensitivities {
        super::shared::check_sens(plan, wrt)?;
    }
    let mut exec = Exec::new(plan, model, input);
    exec.keep_outputs = sensitivities;
    let start = exec.start();
    let bounds = plan.step_bounds();
    let n_steps = bounds.len() - 1;
    let mut rev = Reverse::new(plan, model, input, wrt);
    let x0 = match states {
        DiscreteStates::Record => {
            let mut slots = start;
            exec.run(&mut slots, 0, plan.instrs.len(), true)?;
            let x0 = slots.states[&plan.output].clone();
            rev.seed(plan.output, cotangent(&x0, loss_grad)?);
            rev.run(&slots, (0, plan.instrs.len()), model, input.cond)?;
            x0
        }
        DiscreteStates::Checkpoint { slots: free } => {
            // One forward sweep for x_0 (keeping nothing), then revolve.
            let mut slots = start.clone();
            exec.run(&mut slots, 0, plan.instrs.len(), false)?;
            let x0 = slots.states[&plan.output].clone();
            drop(slots);
            rev.seed(plan.output, cotangent(&x0, loss_grad)?);
            let mut r = Revolve {
                exec: &mut exec,
                rev: &mut rev,
                bounds: &bounds,
                z: input.cond,
            };
            r.reverse(0, n_steps, start, free)?;
            x0
        }
    };
    Ok(rev.finish(input, x0, exec.nfe))
}

/// Binomial checkpointing over the steps of a plan.
struct Revolve<'r, 'p, 'm, E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized> {
    exec: &'r mut Exec<'p, 'm, E, D, M>,
    rev: &'r mut Reverse<'p, E, D, M::Grads>,
    bounds: &'r [usize],
    z: Option<&'p State<E, D>>,
}

impl<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized> Revolve<'_, '_, '_, E, D, M> {
    /// Reverses steps `a..b` given the slots at the start of step a and `free` checkpoint
    /// slots (Griewank's binomial schedule: the split leaves at most beta(free - 1, t) steps to
    /// the right part, where t is the fewest repetitions with beta(free, t) >= b - a).
    fn reverse(
        &mut self,
        a: usize,
        b: usize,
        at_a: Slots<E, D>,
        free: usize,
    ) -> Result<(), RuntimeError> {
        let bounds = self.bounds;
        let n = b - a;
        if n == 0 {
            return Ok(());
        }
        if n == 1 {
            let mut sl = at_a;
            self.exec.run(&mut sl, bounds[a], bounds[b], true)?;
            return self
                .rev
                .run(&sl, (bounds[a], bounds[b]), self.exec.model, self.z);
        }
        if free == 0 {
            // No slot left: recompute from a for every step, last first.
            for j in (a..b).rev() {
                let mut sl = at_a.clone();
                self.exec.run(&mut sl, bounds[a], bounds[j], false)?;
                self.exec.run(&mut sl, bounds[j], bounds[j + 1], true)?;
                self.rev
                    .run(&sl, (bounds[j], bounds[j + 1]), self.exec.model, self.z)?;
            }
            return Ok(());
        }
        let mut t = 0;
        while binomial(free + t, free) < n {
            t += 1;
        }
        let right_max = binomial(free - 1 + t, free - 1);
        let m = (a + n.saturating_sub(right_max).max(1)).min(b - 1);
        let mut sl = at_a.clone();
        self.exec.run(&mut sl, bounds[a], bounds[m], false)?;
        self.reverse(m, b, sl, free - 1)?;
        self.reverse(a, m, at_a, free)
    }
}

/// The exact discrete adjoint as a [`GradientMethod`] (`[gradient] method = "discrete"`).
pub struct Discrete {
    /// Recorded states, or binomial checkpointing.
    pub states: DiscreteStates,
}

impl GradientMethod for Discrete {
    fn gradient<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
        &self,
        problem: &Problem,
        model: &ModelFn<E, D, M>,
        input: &Input<E, D>,
        loss_grad: impl FnOnce(&State<E, D>) -> Result<State<E, D>, RuntimeError>,
    ) -> Result<Gradient<E, D, M::Grads>, RuntimeError> {
        let wrt = problem.wrt();
        discrete_adjoint(problem.plan(), model, input, wrt, self.states, loss_grad)
    }
}

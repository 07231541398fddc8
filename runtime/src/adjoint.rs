//! Gradients of a loss on the sample with respect to x_T, the conditioning z and the model's
//! parameters (MATH.md section 3): the exact discrete adjoint of any plan (its transpose), with
//! recorded or binomially checkpointed states, and the continuous AdjointDEIS-1 / -2M for the
//! probability-flow ODE and the diffusion SDE.

use std::collections::HashMap;

use adeis_compiler::{Instr, Operand, Plan, Pred, Schedule};
use dfdx::prelude::*;

use crate::denoiser::{Batch, Denoiser, ModelFn, ParamGrads};
use crate::e;
use crate::executor::{check_shapes, finite, time_info, Exec, RuntimeError, Slots};
use crate::noise::NoiseSource;

/// Where the adjoint gets the forward states it differentiates at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateStorage {
    /// Keep every state of the forward pass.
    Record,
    /// Binomial (revolve-style) checkpointing with this many slots; segments are recomputed.
    Checkpoint(usize),
    /// Continuous adjoint only: re-solve x from t_min upwards by DDIM alongside the adjoint.
    Backsolve,
}

/// What the gradient is taken with respect to (x_T always comes with the recursion).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wrt {
    pub cond: bool,
    pub params: bool,
}

/// A gradient and what it cost.
#[derive(Debug)]
pub struct Gradient<E: Dtype, D: Device<E>> {
    /// The sample x_0 the loss was taken on.
    pub x0: Batch<E, D>,
    pub dx_t: Batch<E, D>,
    pub dz: Option<Batch<E, D>>,
    pub dtheta: ParamGrads<E, D>,
    /// Forward model evaluations (recomputation included).
    pub nfe: usize,
    /// Vector-Jacobian products of the model.
    pub vjps: usize,
}

fn add_into<E: Dtype, D: Device<E>>(slot: &mut Option<Batch<E, D>>, v: Batch<E, D>) {
    *slot = Some(match slot.take() {
        None => v,
        Some(a) => a + v,
    });
}

fn add_at<E: Dtype, D: Device<E>>(map: &mut HashMap<usize, Batch<E, D>>, k: usize, v: Batch<E, D>) {
    let new = match map.remove(&k) {
        None => v,
        Some(a) => a + v,
    };
    map.insert(k, new);
}

/// The loss gradient at x_0, checked.
fn cotangent<E: Dtype, D: Device<E>>(
    x0: &Batch<E, D>,
    loss_grad: impl FnOnce(&Batch<E, D>) -> Result<Batch<E, D>, RuntimeError>,
) -> Result<Batch<E, D>, RuntimeError> {
    let cot = loss_grad(x0)?;
    if cot.shape() != x0.shape() {
        return Err(RuntimeError::Shape(format!(
            "the loss gradient has shape {:?}; the sample has {:?}",
            cot.shape(),
            x0.shape()
        )));
    }
    if !finite(&cot) {
        return Err(RuntimeError::Invalid(
            "the loss or its gradient at the sample is NaN or Inf".into(),
        ));
    }
    Ok(cot)
}

struct Reverse<'a, E: Dtype, D: Device<E>> {
    // Pending cotangents by slot: sparse, so the bookkeeping does not grow with the steps.
    xbar: HashMap<usize, Batch<E, D>>,
    obar: HashMap<usize, Batch<E, D>>,
    zbar: Option<Batch<E, D>>,
    theta: ParamGrads<E, D>,
    wrt: Wrt,
    vjps: usize,
    plan: &'a Plan,
}

impl<E: Dtype, D: Device<E>> Reverse<'_, E, D> {
    /// Transposes instructions `from..to` (in reverse), reading states from `slots`.
    fn run<M: Denoiser<E, D> + ?Sized>(
        &mut self,
        slots: &Slots<E, D>,
        from: usize,
        to: usize,
        schedule: &Schedule,
        model: &ModelFn<E, D, M>,
        z: Option<&Batch<E, D>>,
    ) -> Result<(), RuntimeError> {
        for k in (from..to).rev() {
            match &self.plan.instrs[k] {
                Instr::Combine { dst, terms, .. } => {
                    let Some(g) = self.xbar.remove(dst) else {
                        continue;
                    };
                    for (op, c) in terms {
                        match op {
                            Operand::State(s) => add_at(&mut self.xbar, *s, g.clone() * e::<E>(*c)),
                            Operand::Out(o) => add_at(&mut self.obar, *o, g.clone() * e::<E>(*c)),
                            Operand::Noise(_) => {}
                        }
                    }
                }
                Instr::Eval {
                    out,
                    input,
                    t,
                    pred,
                    step,
                } => {
                    let Some(g) = self.obar.remove(out) else {
                        continue;
                    };
                    let x = slots.states.get(input).expect("recorded state");
                    let time = time_info(schedule, *t);
                    let theta = self.wrt.params.then_some((&mut self.theta, 1.0));
                    let (dx, dz) = model.vjp(x, z, &time, *pred, &g, theta);
                    self.vjps += 1;
                    if !finite(&dx) {
                        return Err(RuntimeError::NonFinite {
                            what: "the adjoint state".into(),
                            step: *step,
                            t: *t,
                        });
                    }
                    add_at(&mut self.xbar, *input, dx);
                    if let (true, Some(dz)) = (self.wrt.cond, dz) {
                        add_into(&mut self.zbar, dz);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The first instruction of each step, and the end.
fn step_bounds(plan: &Plan) -> Vec<usize> {
    let mut bounds = vec![0];
    let mut cur = 0;
    for (k, ins) in plan.instrs.iter().enumerate() {
        let s = match ins {
            Instr::Eval { step, .. } | Instr::Combine { step, .. } => *step,
        };
        if s != cur {
            bounds.push(k);
            cur = s;
        }
    }
    bounds.push(plan.instrs.len());
    bounds
}

fn binomial(n: usize, k: usize) -> usize {
    let mut r: usize = 1;
    for i in 0..k {
        r = r.saturating_mul(n - i) / (i + 1);
    }
    r
}

/// The exact gradient of the plan that ran (its transpose, MATH.md 3.2): one VJP per model
/// evaluation. `loss_grad` maps the sample x_0 to dL/dx_0.
#[allow(clippy::too_many_arguments)]
pub fn discrete_adjoint<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
    plan: &Plan,
    schedule: &Schedule,
    model: &ModelFn<E, D, M>,
    x_t: &Batch<E, D>,
    z: Option<&Batch<E, D>>,
    noise: &NoiseSource<E, D>,
    wrt: Wrt,
    storage: StateStorage,
    loss_grad: impl FnOnce(&Batch<E, D>) -> Result<Batch<E, D>, RuntimeError>,
) -> Result<Gradient<E, D>, RuntimeError> {
    check_shapes(model.model, x_t, z)?;
    let mut exec = Exec::new(plan, schedule, model, z, noise, x_t);
    let start = exec.start(x_t);
    let bounds = step_bounds(plan);
    let n_steps = bounds.len() - 1;
    let mut rev = Reverse {
        xbar: HashMap::new(),
        obar: HashMap::new(),
        zbar: None,
        theta: if wrt.params {
            model.model.param_grads()
        } else {
            ParamGrads::None
        },
        wrt,
        vjps: 0,
        plan,
    };
    let x0 = match storage {
        StateStorage::Record => {
            let mut slots = start;
            exec.run(&mut slots, 0, plan.instrs.len(), true)?;
            let x0 = slots.states[&plan.output].clone();
            rev.xbar.insert(plan.output, cotangent(&x0, loss_grad)?);
            rev.run(&slots, 0, plan.instrs.len(), schedule, model, z)?;
            x0
        }
        StateStorage::Checkpoint(free) => {
            // One forward sweep for x_0 (keeping nothing), then revolve.
            let mut slots = start.clone();
            exec.run(&mut slots, 0, plan.instrs.len(), false)?;
            let x0 = slots.states[&plan.output].clone();
            drop(slots);
            rev.xbar.insert(plan.output, cotangent(&x0, loss_grad)?);
            revolve(&mut exec, &mut rev, &bounds, 0, n_steps, start, free, z)?;
            x0
        }
        StateStorage::Backsolve => {
            return Err(RuntimeError::Invalid(
                "states = \"backsolve\" is for the continuous adjoint (adjoint_deis); the discrete adjoint records or checkpoints".into(),
            ))
        }
    };
    let dx_t = rev
        .xbar
        .remove(&0)
        .unwrap_or_else(|| x_t.clone() * e::<E>(0.0));
    Ok(Gradient {
        x0,
        dx_t,
        dz: if wrt.cond {
            z.map(|z| rev.zbar.take().unwrap_or_else(|| z.clone() * e::<E>(0.0)))
        } else {
            None
        },
        dtheta: rev.theta,
        nfe: exec.nfe,
        vjps: rev.vjps,
    })
}

/// Reverses steps `a..b` given the slots at the start of step a and `free` checkpoint slots
/// (Griewank's binomial schedule: the split leaves at most beta(free - 1, t) steps to the
/// right part, where t is the fewest repetitions with beta(free, t) >= b - a).
#[allow(clippy::too_many_arguments)]
fn revolve<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
    exec: &mut Exec<E, D, M>,
    rev: &mut Reverse<E, D>,
    bounds: &[usize],
    a: usize,
    b: usize,
    at_a: Slots<E, D>,
    free: usize,
    z: Option<&Batch<E, D>>,
) -> Result<(), RuntimeError> {
    let n = b - a;
    if n == 0 {
        return Ok(());
    }
    if n == 1 {
        let mut sl = at_a;
        exec.run(&mut sl, bounds[a], bounds[b], true)?;
        return rev.run(&sl, bounds[a], bounds[b], exec.schedule, exec.model, z);
    }
    if free == 0 {
        // No slot left: recompute from a for every step, last first.
        for j in (a..b).rev() {
            let mut sl = at_a.clone();
            exec.run(&mut sl, bounds[a], bounds[j], false)?;
            exec.run(&mut sl, bounds[j], bounds[j + 1], true)?;
            rev.run(&sl, bounds[j], bounds[j + 1], exec.schedule, exec.model, z)?;
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
    exec.run(&mut sl, bounds[a], bounds[m], false)?;
    revolve(exec, rev, bounds, m, b, sl, free - 1, z)?;
    revolve(exec, rev, bounds, a, m, at_a, free, z)
}

/// AdjointDEIS settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdjointDeis {
    /// 1 or 2 (2M).
    pub order: usize,
    /// Adjoint steps M (uniform in lambda over [t_min, t_max]); None: the sampling grid.
    pub steps: Option<usize>,
    /// The diffusion SDE (factor 2, forward noises replayed) instead of the ODE.
    pub sde: bool,
    /// Record (states from the forward trajectory, interpolated in lambda where the grids
    /// differ) or Backsolve (DDIM re-solve of x from t_min).
    pub states: StateStorage,
}

/// AdjointDEIS-1 / -2M (MATH.md 3.1). The forward pass is the plan; the adjoint runs on its
/// own grid from t_min to t_max with one VJP per adjoint point.
#[allow(clippy::too_many_arguments)]
pub fn adjoint_deis<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
    plan: &Plan,
    schedule: &Schedule,
    model: &ModelFn<E, D, M>,
    x_t: &Batch<E, D>,
    z: Option<&Batch<E, D>>,
    noise: &NoiseSource<E, D>,
    wrt: Wrt,
    opts: AdjointDeis,
    loss_grad: impl FnOnce(&Batch<E, D>) -> Result<Batch<E, D>, RuntimeError>,
) -> Result<Gradient<E, D>, RuntimeError> {
    if !(opts.order == 1 || opts.order == 2) {
        return Err(RuntimeError::Invalid(format!(
            "adjoint_deis order = {}: AdjointDEIS has orders 1 and 2",
            opts.order
        )));
    }
    if matches!(opts.states, StateStorage::Checkpoint(_)) {
        return Err(RuntimeError::Invalid(
            "adjoint_deis takes states = \"record\" or \"backsolve\"; checkpointing is for the discrete adjoint".into(),
        ));
    }
    check_shapes(model.model, x_t, z)?;
    let record = opts.states == StateStorage::Record;
    let mut exec = Exec::new(plan, schedule, model, z, noise, x_t);
    let mut slots = exec.start(x_t);
    // With denoise_to_zero the plan ends with the x0 prediction at t_min (an Eval of the data
    // prediction and a copy of it); the adjoint first differentiates through it.
    let n = plan.instrs.len();
    let dtz = match (n >= 2).then(|| (&plan.instrs[n - 2], &plan.instrs[n - 1])) {
        Some((
            Instr::Eval {
                out,
                input,
                pred: Pred::Data,
                ..
            },
            Instr::Combine { terms, .. },
        )) if terms.len() == 1 && terms[0] == (Operand::Out(*out), 1.0) => Some(*input),
        _ => None,
    };
    let split = if dtz.is_some() { n - 2 } else { n };
    exec.run(&mut slots, 0, split, record)?;
    let x_end = slots
        .states
        .get(&dtz.unwrap_or(plan.output))
        .cloned()
        .expect("live state");
    exec.run(&mut slots, split, n, record)?;
    let x0 = slots.states[&plan.output].clone();
    let mut vjps = 0;
    let mut theta = if wrt.params {
        model.model.param_grads()
    } else {
        ParamGrads::None
    };
    let mut a_x = cotangent(&x0, loss_grad)?;
    let mut dz_acc: Option<Batch<E, D>> = None;
    let grid = &plan.grid;
    let (t_min, t_max) = (grid[grid.len() - 1], grid[0]);
    if dtz.is_some() {
        let time = time_info(schedule, t_min);
        let (dx, dz) = model.vjp(
            &x_end,
            z,
            &time,
            Pred::Data,
            &a_x,
            wrt.params.then_some((&mut theta, 1.0)),
        );
        vjps += 1;
        a_x = dx;
        if let (true, Some(dz)) = (wrt.cond, dz) {
            add_into(&mut dz_acc, dz);
        }
    }

    // The adjoint grid, t_min up to t_max.
    let adj: Vec<f64> = match opts.steps {
        None => grid.iter().rev().copied().collect(),
        Some(m) => {
            if m == 0 {
                return Err(RuntimeError::Invalid(
                    "adjoint steps = 0: AdjointDEIS needs at least 1 step".into(),
                ));
            }
            let (l0, l1) = (schedule.lambda(t_min), schedule.lambda(t_max));
            let mut ts: Vec<f64> = (0..=m)
                .map(|i| schedule.t_of_lambda(l0 + (l1 - l0) * i as f64 / m as f64))
                .collect();
            ts[0] = t_min;
            ts[m] = t_max;
            ts
        }
    };
    // Recorded states on the sampling grid (the latest state at each grid time).
    let grid_states: Vec<(f64, f64, Batch<E, D>)> = if record {
        let mut v: Vec<(f64, f64, Batch<E, D>)> = Vec::new();
        for &t in grid.iter() {
            let slot = (0..plan.n_states)
                .rev()
                .find(|&s| plan.state_times[s] == t && slots.states.contains_key(&s));
            if let Some(s) = slot {
                v.push((t, schedule.lambda(t), slots.states[&s].clone()));
            }
        }
        v
    } else {
        vec![]
    };
    drop(slots);
    let state_at = |t: f64| -> Batch<E, D> {
        if let Some(p) = grid_states.iter().find(|p| p.0 == t) {
            return p.2.clone();
        }
        // Linear in lambda between the recorded neighbours (grid_states runs t_max down).
        let l = schedule.lambda(t);
        let k = grid_states
            .windows(2)
            .position(|w| w[0].1 <= l && l <= w[1].1)
            .unwrap_or(grid_states.len() - 2);
        let (p, q) = (&grid_states[k], &grid_states[k + 1]);
        let u = (l - p.1) / (q.1 - p.1);
        p.2.clone() * e::<E>(1.0 - u) + q.2.clone() * e::<E>(u)
    };

    let c = if opts.sde { 2.0 } else { 1.0 };
    let vals = schedule.fill(&adj);
    let m = adj.len() - 1;
    // Weights of V_z(u) = alpha_u a^T d eps/dz (and of theta) at each adjoint point.
    let mut weight = vec![0.0; m + 1];
    let mut rho = vec![f64::NAN; m];
    for k in 0..m {
        let (t, s) = (&vals[k], &vals[k + 1]);
        let h = s.lambda - t.lambda;
        let f = c * (s.sigma / s.alpha) * h.exp_m1();
        if opts.order == 2 && k >= 1 {
            let r = &vals[k - 1];
            rho[k] = (t.lambda - r.lambda) / h;
            weight[k] += f * (1.0 + 1.0 / (2.0 * rho[k]));
            weight[k - 1] -= f / (2.0 * rho[k]);
        } else {
            weight[k] += f;
        }
    }
    let mut prev_jx: Option<Batch<E, D>> = None; // a(r)^T d eps/dx at the previous point
    let mut x_cur = if record {
        state_at(adj[0])
    } else {
        x_end.clone()
    };
    for k in 0..m {
        let (vt, vs) = (&vals[k], &vals[k + 1]);
        let time = time_info(schedule, adj[k]);
        let x = if record {
            state_at(adj[k])
        } else {
            x_cur.clone()
        };
        if !record {
            // DDIM re-solve to the next point, with the model's eps at x (one evaluation).
            let eps = model.predict(&x, z, &time, Pred::Eps);
            exec.nfe += 1;
            let h = vs.lambda - vt.lambda;
            x_cur = x.clone() * e::<E>(vs.alpha / vt.alpha) - eps * e::<E>(vs.sigma * h.exp_m1());
        }
        let w_theta = vt.alpha * weight[k];
        let theta_slot = (wrt.params && w_theta != 0.0).then_some((&mut theta, w_theta));
        let (jx, jz) = model.vjp(&x, z, &time, Pred::Eps, &a_x, theta_slot);
        vjps += 1;
        if let (true, Some(jz)) = (wrt.cond, jz) {
            add_into(&mut dz_acc, jz * e::<E>(vt.alpha * weight[k]));
        }
        let h = vs.lambda - vt.lambda;
        let k_x = c * (vs.sigma / (vs.alpha * vs.alpha)) * h.exp_m1();
        let mut update = jx.clone() * e::<E>(k_x * vt.alpha * vt.alpha);
        if opts.order == 2 && k >= 1 {
            let r = &vals[k - 1];
            let q = 1.0 / (2.0 * rho[k]);
            update = update * e::<E>(1.0 + q)
                - prev_jx.take().unwrap() * e::<E>(k_x * q * r.alpha * r.alpha);
        }
        a_x = a_x * e::<E>(vt.alpha / vs.alpha) + update;
        if !finite(&a_x) {
            return Err(RuntimeError::NonFinite {
                what: "the adjoint state".into(),
                step: k,
                t: adj[k + 1],
            });
        }
        prev_jx = Some(jx);
    }
    Ok(Gradient {
        x0,
        dx_t: a_x,
        dz: if wrt.cond {
            z.map(|z| dz_acc.unwrap_or_else(|| z.clone() * e::<E>(0.0)))
        } else {
            None
        },
        dtheta: theta,
        nfe: exec.nfe,
        vjps,
    })
}

/// Runs the gradient method a `[gradient]` table declares (`sde`: the sampler solves the SDE,
/// so AdjointDEIS takes its factor 2).
#[allow(clippy::too_many_arguments)]
pub fn compute_gradient<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
    plan: &Plan,
    schedule: &Schedule,
    model: &ModelFn<E, D, M>,
    x_t: &Batch<E, D>,
    z: Option<&Batch<E, D>>,
    noise: &NoiseSource<E, D>,
    spec: &adeis_compiler::GradientSpec,
    sde: bool,
    loss_grad: impl FnOnce(&Batch<E, D>) -> Result<Batch<E, D>, RuntimeError>,
) -> Result<Gradient<E, D>, RuntimeError> {
    use adeis_compiler::gradient::States;
    use adeis_compiler::{GradMethod, WrtKey};
    let wrt = Wrt {
        cond: spec.wants(WrtKey::Cond),
        params: spec.wants(WrtKey::Params),
    };
    if wrt.cond && z.is_none() {
        return Err(RuntimeError::Invalid(
            "wrt includes \"cond\" but the model has no conditioning".into(),
        ));
    }
    match spec.method {
        GradMethod::Discrete => {
            let storage = match spec.states {
                States::Checkpoint => StateStorage::Checkpoint(spec.checkpoints.unwrap_or(0)),
                _ => StateStorage::Record,
            };
            discrete_adjoint(
                plan, schedule, model, x_t, z, noise, wrt, storage, loss_grad,
            )
        }
        GradMethod::AdjointDeis => {
            let opts = AdjointDeis {
                order: spec.adjoint_order(),
                steps: spec.steps,
                sde,
                states: if spec.states == States::Backsolve {
                    StateStorage::Backsolve
                } else {
                    StateStorage::Record
                },
            };
            adjoint_deis(plan, schedule, model, x_t, z, noise, wrt, opts, loss_grad)
        }
        GradMethod::Tape => {
            if model.guidance.is_some() || model.threshold.is_some() {
                return Err(RuntimeError::Invalid(
                    "the tape reference runs the bare model: no guidance or thresholding".into(),
                ));
            }
            let taped = model.model.as_taped().ok_or_else(|| {
                RuntimeError::Invalid("method = \"tape\" needs a model that runs on dfdx's tape (an MLP or the Gaussian model)".into())
            })?;
            crate::tape::tape_gradient(plan, schedule, taped, x_t, z, noise, wrt, loss_grad)
        }
    }
}

//! Step plans: every sampler as a straight-line program of model evaluations and affine
//! combinations (docs/math.md section 2). The runtime has one executor for all of them, and the
//! discrete adjoint is this program transposed.
//!
//! Slots are single-assignment: state 0 is x_T, each `Combine` defines a new state, each
//! `Eval` a new model output; `output` names the final state. A plan carries everything the
//! runtime needs about time: each evaluation its t, the network's time input, alpha and sigma;
//! each grid point the state that lives there; a terminal denoising step is marked as such.

use std::fmt;

use crate::schedule::{ParamPartials, Schedule};

/// What a model evaluation returns: the noise prediction or the data (x0) prediction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pred {
    /// The noise prediction.
    Eps,
    /// The data (x0) prediction.
    Data,
}

/// The time of a state or a model evaluation: the sampler's t, what the network is given (the
/// train index for a discrete schedule), and the schedule's alpha and sigma there.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimeInfo {
    /// The sampler's time.
    pub t: f64,
    /// What the network is given as its time.
    pub model_t: f64,
    /// alpha(t).
    pub alpha: f64,
    /// sigma(t).
    pub sigma: f64,
}

/// How the time quantities of a model evaluation at a grid point move with that grid time:
/// d(model_t)/dt, d alpha/dt and d sigma/dt (each derived from its own formula, so finite
/// where alpha = 0 and lambda = -inf).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimeDerivs {
    /// d(model time)/dt.
    pub model_t: f64,
    /// d alpha/dt.
    pub alpha: f64,
    /// d sigma/dt.
    pub sigma: f64,
}

impl TimeDerivs {
    /// At the time whose schedule values are `v`.
    pub fn of(schedule: &Schedule, v: &crate::schedule::ScheduleValues) -> TimeDerivs {
        TimeDerivs {
            model_t: schedule.def().model_time_slope(v),
            alpha: v.dalpha_dt,
            sigma: v.dsigma_dt,
        }
    }

    /// sum of the cotangents times these slopes: d/dt of what the cotangents weigh.
    pub fn dot(&self, model_t: f64, alpha: f64, sigma: f64) -> f64 {
        self.model_t * model_t + self.alpha * alpha + self.sigma * sigma
    }
}

/// The sensitivity of one quantity (a coefficient, a stage's time) to what the grid depends
/// on: (index, derivative) pairs, where an index below the grid's length `n` is the grid time
/// t_index and index n + k is the schedule's parameter k (at fixed grid times).
pub type GridSens = Vec<(usize, f64)>;

/// An operand of an affine combination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// A state slot.
    State(usize),
    /// A model-output slot.
    Out(usize),
    /// The i-th standard normal noise of an SDE sampler (replayable).
    Noise(usize),
}

/// One instruction of a plan.
#[derive(Clone, Debug, PartialEq)]
pub enum Instr {
    /// out = model(state `input`, at `time`) in the form `pred`.
    Eval {
        /// The output slot written.
        out: usize,
        /// The state slot read.
        input: usize,
        /// The evaluation's time.
        time: TimeInfo,
        /// The form asked of the model.
        pred: Pred,
        /// The grid step this evaluation belongs to.
        step: usize,
    },
    /// state `dst` = sum of coefficient * operand.
    Combine {
        /// The state slot written.
        dst: usize,
        /// (operand, coefficient) pairs.
        terms: Vec<(Operand, f64)>,
        /// The grid step the combination belongs to.
        step: usize,
    },
}

impl Instr {
    /// The grid step the instruction belongs to.
    pub fn step(&self) -> usize {
        match self {
            Instr::Eval { step, .. } | Instr::Combine { step, .. } => *step,
        }
    }
}

impl fmt::Display for Instr {
    /// `[step] o1 = Data prediction at (x1, t = ...)` or `[step] x2 = +c x1 +c o1 ...`, with
    /// the coefficients at full precision.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Instr::Eval {
                out,
                input,
                time,
                pred,
                step,
            } => {
                write!(
                    f,
                    "[{step:>3}] o{out} = {pred:?} prediction at (x{input}, t = {:.6})",
                    time.t
                )
            }
            Instr::Combine { dst, terms, step } => {
                write!(f, "[{step:>3}] x{dst} =")?;
                for (op, c) in terms {
                    match op {
                        Operand::State(s) => write!(f, " {c:+.9e} x{s}")?,
                        Operand::Out(o) => write!(f, " {c:+.9e} o{o}")?,
                        Operand::Noise(n) => write!(f, " {c:+.9e} xi{n}")?,
                    }
                }
                Ok(())
            }
        }
    }
}

/// The last two instructions of a plan that returns the data prediction at t_min
/// (`denoise_to_zero`): `eval` is the evaluation at the state `input`, the last state on the
/// grid, and the plan's output is a copy of that prediction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FinalDenoise {
    /// The state the denoising evaluation reads.
    pub input: usize,
    /// The index of the evaluation in `instrs`.
    pub eval: usize,
}

/// A forward plan with its coefficient tables filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The instructions, in order.
    pub instrs: Vec<Instr>,
    /// State slots used.
    pub n_states: usize,
    /// Model-output slots used.
    pub n_outputs: usize,
    /// Noises drawn (SDE samplers).
    pub n_noises: usize,
    /// The slot of the sample the plan returns (a state, or the final denoising's output).
    pub output: usize,
    /// The time of each state (x_T's is the grid's first).
    pub states: Vec<TimeInfo>,
    /// The sampling grid, from t_max down to t_min.
    pub grid: Vec<f64>,
    /// The state that holds at each grid point (the corrected one where a corrector ran).
    pub grid_states: Vec<usize>,
    /// The terminal denoising step, when the plan has one.
    pub final_denoise: Option<FinalDenoise>,
    /// Method, order and grid, for people.
    pub description: String,
    /// How each state's time quantities move with its own time.
    pub state_derivs: Vec<TimeDerivs>,
    /// How each state's time moves with the grid times: (grid index, dt/dt_i); [(i, 1)] for a
    /// state on grid point i, the stage's dependence for an intermediate point; None where
    /// the family does not derive it.
    pub state_sens: Vec<Option<GridSens>>,
    /// For each instruction, each term's sensitivity to the grid times and the schedule's
    /// parameters (empty for an evaluation); None where the family does not derive them (the
    /// gradient with respect to the times then says so).
    pub term_sens: Option<Vec<Vec<GridSens>>>,
    /// The schedule's parameter names (the sensitivities' indices from `grid.len()` on).
    pub param_names: Vec<String>,
    /// For each state, d(alpha, sigma)/d(parameter) at its (fixed) time.
    pub state_params: Vec<Vec<ParamPartials>>,
    /// Whether the sensitivities include the schedule's parameters (a schedule with more
    /// parameters than the families' forward-mode numbers carry has them for the times only).
    pub params_differentiated: bool,
    /// How each grid time moves with each schedule parameter when the grid is defined through
    /// the schedule (logsnr and karras grids: `[point][parameter]`); zeros for given times.
    pub grid_param_sens: Vec<Vec<f64>>,
    /// How a reversible sampler's plan runs backwards, step by step (None: the sampler is not
    /// algebraically reversible).
    pub reversal: Option<Reversal>,
}

/// The algebraic inverse of a reversible sampler's plan (Rex, BDIA, EDICT), step by step:
/// what the reversible gradient runs to reconstruct the states of each step from those of
/// the next, and what exact inversion runs to encode. The plan's slot numbers are kept: an
/// inverse program redefines the slots its step read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reversal {
    /// One entry per grid step, in the plan's order.
    pub steps: Vec<ReverseStep>,
    /// The states that carry the sampler past its last grid step, the sample x_N first, then
    /// its companion: what the backward sweep and exact inversion start from.
    pub last: Vec<usize>,
    /// The slot of the companion at the start: Rex's x^_T and EDICT's y_T (the plan's first
    /// instruction, a copy of x_T), BDIA's x_1 (its first step, plain DDIM). Sampling from a
    /// given pair (x_T and this), as exact inversion returns it, puts the companion there and
    /// starts at `resume_at`, skipping the instructions that defined it.
    pub companion: Option<usize>,
    /// The first instruction a run from a given pair executes.
    pub resume_at: usize,
}

/// The inverse of one grid step.
#[derive(Clone, Debug, PartialEq)]
pub struct ReverseStep {
    /// Instructions that, run on the states the step carried forward (the next step's
    /// `carried`, or [`Reversal::last`]), define every slot the step's own instructions read:
    /// its evaluations' outputs and stage states again, and `carried`.
    pub inverse: Vec<Instr>,
    /// The states the step started from (x_n and its companion; the same slot twice where
    /// they coincide, as at x_T).
    pub carried: Vec<usize>,
}

impl Plan {
    /// Whether grid point `i` is held fixed by the gradient with respect to the times: a
    /// point at pure noise (alpha = 0, lambda = -inf: a flow's t = 1), where x_T ~ N(0, I) is
    /// exact and which cannot move up; a multistep sampler's dependence on it goes as
    /// 1 / (lambda_1 - lambda_0), whose one-sided derivative there is infinite. Its entry of
    /// dL/d(times) is 0.
    pub fn held_fixed(&self, i: usize) -> bool {
        self.grid_states
            .get(i)
            .is_some_and(|&s| self.states[s].alpha == 0.0)
    }

    /// The number of model evaluations.
    pub fn nfe(&self) -> usize {
        self.instrs
            .iter()
            .filter(|i| matches!(i, Instr::Eval { .. }))
            .count()
    }

    /// The model evaluations of the reversal's inverse steps (0 for a plan without one): what
    /// the reversible gradient evaluates beyond the forward sweep.
    pub fn inverse_nfe(&self) -> usize {
        self.reversal.as_ref().map_or(0, |r| {
            r.steps
                .iter()
                .flat_map(|s| &s.inverse)
                .filter(|i| matches!(i, Instr::Eval { .. }))
                .count()
        })
    }

    /// The grid's steps.
    pub fn steps(&self) -> usize {
        self.grid.len() - 1
    }

    /// The time t of state `i`.
    pub fn state_time(&self, i: usize) -> f64 {
        self.states[i].t
    }

    /// For every slot, the index of the last instruction that reads it (states, then outputs),
    /// so an executor can free what is no longer needed.
    pub fn last_uses(&self) -> (Vec<usize>, Vec<usize>) {
        let mut states = vec![0; self.n_states];
        let mut outs = vec![0; self.n_outputs];
        for (k, ins) in self.instrs.iter().enumerate() {
            match ins {
                Instr::Eval { input, .. } => states[*input] = k,
                Instr::Combine { terms, .. } => {
                    for (op, _) in terms {
                        match op {
                            Operand::State(s) => states[*s] = k,
                            Operand::Out(o) => outs[*o] = k,
                            Operand::Noise(_) => {}
                        }
                    }
                }
            }
        }
        states[self.output] = usize::MAX;
        (states, outs)
    }

    /// The first instruction of each grid step, then the end.
    pub fn step_bounds(&self) -> Vec<usize> {
        let mut bounds = vec![0];
        let mut cur = 0;
        for (k, ins) in self.instrs.iter().enumerate() {
            if ins.step() != cur {
                bounds.push(k);
                cur = ins.step();
            }
        }
        bounds.push(self.instrs.len());
        bounds
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} steps, {} NFE",
            self.description,
            self.steps(),
            self.nfe()
        )?;
        for ins in &self.instrs {
            writeln!(f, "  {ins}")?;
        }
        Ok(())
    }
}

/// The most schedule parameters the families' forward-mode numbers carry (DEIS, UniPC).
pub const MAX_DUAL_PARAMS: usize = 8;

/// A new state's time: its information, slopes, sensitivity and parameter partials.
struct StateTime {
    info: TimeInfo,
    derivs: TimeDerivs,
    sens: Option<GridSens>,
    params: Vec<ParamPartials>,
}

/// Builds a plan instruction by instruction, on a grid of a schedule: every state gets its
/// time information as it is defined.
#[derive(Debug)]
pub struct PlanBuilder<'a> {
    schedule: &'a Schedule,
    grid: Vec<TimeInfo>,
    grid_derivs: Vec<TimeDerivs>,
    instrs: Vec<Instr>,
    states: Vec<TimeInfo>,
    state_derivs: Vec<TimeDerivs>,
    state_sens: Vec<Option<GridSens>>,
    state_params: Vec<Vec<ParamPartials>>,
    grid_params: Vec<Vec<ParamPartials>>,
    term_sens: Vec<Vec<GridSens>>,
    /// Some combination came without sensitivities.
    lacks_sens: bool,
    grid_states: Vec<usize>,
    final_denoise: Option<FinalDenoise>,
    n_outputs: usize,
    n_noises: usize,
    step: usize,
    reversal: Option<Reversal>,
}

impl<'a> PlanBuilder<'a> {
    /// A builder on `grid` (noisiest first) whose state 0 (x_T) lives at the grid's first time.
    pub fn new(schedule: &'a Schedule, grid: &[f64]) -> PlanBuilder<'a> {
        let vals = schedule.fill(grid);
        let grid_derivs: Vec<TimeDerivs> =
            vals.iter().map(|v| TimeDerivs::of(schedule, v)).collect();
        let grid_params: Vec<Vec<ParamPartials>> =
            grid.iter().map(|t| schedule.param_partials(*t)).collect();
        let grid: Vec<TimeInfo> = vals
            .iter()
            .zip(grid)
            .map(|(v, &t)| TimeInfo {
                t,
                model_t: schedule.def().model_time(t, v.sigma),
                alpha: v.alpha,
                sigma: v.sigma,
            })
            .collect();
        PlanBuilder {
            schedule,
            state_derivs: vec![grid_derivs[0]],
            state_sens: vec![Some(vec![(0, 1.0)])],
            state_params: vec![grid_params[0].clone()],
            grid_params,
            grid_derivs,
            term_sens: vec![],
            lacks_sens: false,
            states: vec![grid[0]],
            grid_states: vec![0; grid.len()],
            grid,
            instrs: vec![],
            final_denoise: None,
            n_outputs: 0,
            n_noises: 0,
            step: 0,
            reversal: None,
        }
    }

    /// Gives the network these time inputs at the grid points instead of the schedule's
    /// `model_time(t)` (diffusers' Karras steps evaluate the model at rounded timesteps between
    /// their sigmas). They are numbers, fixed: they do not move with the grid times. Call it
    /// before the first step.
    pub fn set_model_times(&mut self, model_times: &[f64]) {
        assert_eq!(
            model_times.len(),
            self.grid.len(),
            "one model time per grid point"
        );
        for (i, &m) in model_times.iter().enumerate() {
            self.grid[i].model_t = m;
            self.grid_derivs[i].model_t = 0.0;
        }
        self.states[0].model_t = model_times[0];
        self.state_derivs[0].model_t = 0.0;
    }

    /// How the time quantities at grid point `i` move with its time.
    pub fn grid_derivs(&self, i: usize) -> TimeDerivs {
        self.grid_derivs[i]
    }

    /// d(alpha, sigma, lambda)/d(parameter) at grid point `i`.
    pub fn grid_params(&self, i: usize) -> &[ParamPartials] {
        &self.grid_params[i]
    }

    /// The number of grid points (the first index of the parameters in a [`GridSens`]).
    pub fn grid_len(&self) -> usize {
        self.grid.len()
    }

    /// The grid step the next instructions belong to.
    pub fn set_step(&mut self, step: usize) {
        self.step = step;
    }

    /// The model's output at state `input`, in the form `pred`.
    pub fn eval(&mut self, input: usize, pred: Pred) -> usize {
        let out = self.n_outputs;
        self.n_outputs += 1;
        self.instrs.push(Instr::Eval {
            out,
            input,
            time: self.states[input],
            pred,
            step: self.step,
        });
        self.term_sens.push(vec![]);
        out
    }

    /// A new noise index.
    pub fn noise(&mut self) -> usize {
        self.n_noises += 1;
        self.n_noises - 1
    }

    fn combine(
        &mut self,
        time: StateTime,
        terms: Vec<(Operand, f64)>,
        sens: Option<Vec<GridSens>>,
    ) -> usize {
        let dst = self.states.len();
        self.states.push(time.info);
        self.state_derivs.push(time.derivs);
        self.state_sens.push(time.sens);
        self.state_params.push(time.params);
        let sens = match sens {
            Some(s) => s,
            None => {
                self.lacks_sens = true;
                vec![vec![]; terms.len()]
            }
        };
        // Terms with a zero coefficient that does not move with the grid are dropped:
        // nothing to compute or differentiate.
        let (terms, sens): (Vec<_>, Vec<_>) = terms
            .into_iter()
            .zip(sens)
            .filter(|((_, c), s)| *c != 0.0 || s.iter().any(|(_, d)| *d != 0.0))
            .unzip();
        self.instrs.push(Instr::Combine {
            dst,
            terms,
            step: self.step,
        });
        self.term_sens.push(sens);
        dst
    }

    /// A new state at grid point `i`: the state that holds there from now on.
    pub fn combine_at_grid(&mut self, i: usize, terms: Vec<(Operand, f64)>) -> usize {
        let dst = self.combine(self.grid_time(i), terms, None);
        self.grid_states[i] = dst;
        dst
    }

    /// As [`PlanBuilder::combine_at_grid`], with each coefficient's sensitivity to the grid
    /// times (one entry per term).
    pub fn combine_at_grid_with_sens(
        &mut self,
        i: usize,
        terms: Vec<(Operand, f64)>,
        sens: Vec<GridSens>,
    ) -> usize {
        assert_eq!(terms.len(), sens.len(), "one sensitivity per term");
        let dst = self.combine(self.grid_time(i), terms, Some(sens));
        self.grid_states[i] = dst;
        dst
    }

    fn grid_time(&self, i: usize) -> StateTime {
        StateTime {
            info: self.grid[i],
            derivs: self.grid_derivs[i],
            sens: Some(vec![(i, 1.0)]),
            params: self.grid_params[i].clone(),
        }
    }

    fn stage_time(&self, t: f64, sens: Option<GridSens>) -> StateTime {
        StateTime {
            info: self.schedule.time_info(t),
            derivs: TimeDerivs::of(self.schedule, &self.schedule.eval(t)),
            sens,
            params: self.schedule.param_partials(t),
        }
    }

    /// As [`PlanBuilder::combine_at_grid_with_sens`] for a state at grid point `i` that is
    /// not the one holding there (a reversible sampler's companion state).
    pub fn combine_beside_grid_with_sens(
        &mut self,
        i: usize,
        terms: Vec<(Operand, f64)>,
        sens: Vec<GridSens>,
    ) -> usize {
        assert_eq!(terms.len(), sens.len(), "one sensitivity per term");
        self.combine(self.grid_time(i), terms, Some(sens))
    }

    /// The companion of x_T (a reversible sampler's second state at the start): a copy of
    /// x_T as the plan's first instruction, which sampling from a given pair replaces.
    pub fn companion_start(&mut self) -> usize {
        assert!(
            self.instrs.is_empty(),
            "the companion is the first instruction"
        );
        let slot =
            self.combine_beside_grid_with_sens(0, vec![(Operand::State(0), 1.0)], vec![vec![]]);
        self.set_companion(slot);
        slot
    }

    /// Marks `slot`, defined by the instructions so far, as the companion at the start (see
    /// [`Reversal::companion`]).
    pub fn set_companion(&mut self, slot: usize) {
        let resume_at = self.instrs.len();
        let r = self.reversal.get_or_insert_with(Reversal::default);
        r.companion = Some(slot);
        r.resume_at = resume_at;
    }

    /// The number of instructions emitted so far.
    pub fn instr_count(&self) -> usize {
        self.instrs.len()
    }

    /// The instructions emitted from index `from` on.
    pub fn instrs_from(&self, from: usize) -> &[Instr] {
        &self.instrs[from..]
    }

    /// Records the inverse of the grid step just emitted (the steps' inverses come in the
    /// plan's order) and, as the states it carried forward, the plan's last ones so far.
    pub fn push_inverse(&mut self, step: ReverseStep, carried_forward: Vec<usize>) {
        let r = self.reversal.get_or_insert_with(Reversal::default);
        r.steps.push(step);
        r.last = carried_forward;
    }

    /// A new intermediate state at time `t` (a singlestep stage), off the grid.
    pub fn combine_at_stage(&mut self, t: f64, terms: Vec<(Operand, f64)>) -> usize {
        let time = self.stage_time(t, None);
        self.combine(time, terms, None)
    }

    /// As [`PlanBuilder::combine_at_stage`], with the stage time's sensitivity to the grid
    /// times and each coefficient's (one entry per term).
    pub fn combine_at_stage_with_sens(
        &mut self,
        t: f64,
        time_sens: GridSens,
        terms: Vec<(Operand, f64)>,
        sens: Vec<GridSens>,
    ) -> usize {
        assert_eq!(terms.len(), sens.len(), "one sensitivity per term");
        let time = self.stage_time(t, Some(time_sens));
        self.combine(time, terms, Some(sens))
    }

    /// Ends the plan with the data prediction at state `x` (the last grid point) as its output.
    pub fn denoise_to_zero(&mut self, x: usize) -> usize {
        let eval = self.instrs.len();
        let o = self.eval(x, Pred::Data);
        self.final_denoise = Some(FinalDenoise { input: x, eval });
        let time = StateTime {
            info: self.states[x],
            derivs: self.state_derivs[x],
            sens: self.state_sens[x].clone(),
            params: self.state_params[x].clone(),
        };
        self.combine(time, vec![(Operand::Out(o), 1.0)], Some(vec![vec![]]))
    }

    /// The plan, returning slot `output` (a state or the final denoising's output).
    pub fn finish(self, output: usize, grid: Vec<f64>, description: String) -> Plan {
        debug_assert_eq!(grid.len(), self.grid_states.len());
        Plan {
            n_states: self.states.len(),
            instrs: self.instrs,
            n_outputs: self.n_outputs,
            n_noises: self.n_noises,
            output,
            states: self.states,
            grid,
            grid_states: self.grid_states,
            final_denoise: self.final_denoise,
            description,
            state_derivs: self.state_derivs,
            state_sens: self.state_sens,
            term_sens: (!self.lacks_sens).then_some(self.term_sens),
            param_names: self.schedule.param_names(),
            state_params: self.state_params,
            params_differentiated: self.schedule.param_names().len() <= MAX_DUAL_PARAMS,
            grid_param_sens: vec![],
            reversal: self.reversal,
        }
    }
}

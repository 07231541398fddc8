//! Step plans: every sampler as a straight-line program of model evaluations and affine
//! combinations (MATH.md section 2). The runtime has one executor for all of them, and the
//! discrete adjoint is this program transposed.
//!
//! Slots are single-assignment: state 0 is x_T, each `Combine` defines a new state, each
//! `Eval` a new model output; `output` names the final state.

use std::fmt;

/// What a model evaluation returns: the noise prediction or the data (x0) prediction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pred {
    Eps,
    Data,
}

/// An operand of an affine combination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    State(usize),
    Out(usize),
    /// The i-th standard normal noise of an SDE sampler (replayable).
    Noise(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Instr {
    /// out = model(state `input`, t) in the form `pred`.
    Eval {
        out: usize,
        input: usize,
        t: f64,
        pred: Pred,
        /// The grid step this evaluation belongs to.
        step: usize,
    },
    /// state `dst` = sum of coefficient * operand.
    Combine {
        dst: usize,
        terms: Vec<(Operand, f64)>,
        step: usize,
    },
}

impl fmt::Display for Instr {
    /// `[step] o1 = Data prediction at (x1, t = ...)` or `[step] x2 = +c x1 +c o1 ...`, with
    /// the coefficients at full precision.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Instr::Eval {
                out,
                input,
                t,
                pred,
                step,
            } => {
                write!(
                    f,
                    "[{step:>3}] o{out} = {pred:?} prediction at (x{input}, t = {t:.6})"
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

/// A forward plan with its coefficient tables filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub instrs: Vec<Instr>,
    pub n_states: usize,
    pub n_outputs: usize,
    pub n_noises: usize,
    pub output: usize,
    /// The time of each state (x_T's is grid[0]).
    pub state_times: Vec<f64>,
    /// The sampling grid, from t_max down to t_min.
    pub grid: Vec<f64>,
    pub description: String,
}

impl Plan {
    /// The number of model evaluations.
    pub fn nfe(&self) -> usize {
        self.instrs
            .iter()
            .filter(|i| matches!(i, Instr::Eval { .. }))
            .count()
    }

    pub fn steps(&self) -> usize {
        self.grid.len() - 1
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

/// Builds a plan instruction by instruction.
#[derive(Debug)]
pub struct PlanBuilder {
    instrs: Vec<Instr>,
    state_times: Vec<f64>,
    n_outputs: usize,
    n_noises: usize,
    step: usize,
}

impl PlanBuilder {
    /// A builder whose state 0 (x_T) lives at `t0`.
    pub fn new(t0: f64) -> PlanBuilder {
        PlanBuilder {
            instrs: vec![],
            state_times: vec![t0],
            n_outputs: 0,
            n_noises: 0,
            step: 0,
        }
    }

    pub fn set_step(&mut self, step: usize) {
        self.step = step;
    }

    pub fn eval(&mut self, input: usize, pred: Pred) -> usize {
        let out = self.n_outputs;
        self.n_outputs += 1;
        self.instrs.push(Instr::Eval {
            out,
            input,
            t: self.state_times[input],
            pred,
            step: self.step,
        });
        out
    }

    pub fn noise(&mut self) -> usize {
        self.n_noises += 1;
        self.n_noises - 1
    }

    /// A new state at time `t`; terms with a zero coefficient are dropped.
    pub fn combine(&mut self, t: f64, terms: Vec<(Operand, f64)>) -> usize {
        let dst = self.state_times.len();
        self.state_times.push(t);
        let terms = terms.into_iter().filter(|(_, c)| *c != 0.0).collect();
        self.instrs.push(Instr::Combine {
            dst,
            terms,
            step: self.step,
        });
        dst
    }

    pub fn finish(self, output: usize, grid: Vec<f64>, description: String) -> Plan {
        Plan {
            n_states: self.state_times.len(),
            instrs: self.instrs,
            n_outputs: self.n_outputs,
            n_noises: self.n_noises,
            output,
            state_times: self.state_times,
            grid,
            description,
        }
    }
}

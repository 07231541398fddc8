//! One problem, built and compiled once: a compiled schedule, a sampler with its plan, the
//! gradient method as a value and what it differentiates with respect to. The runtime's
//! `sample` runs the plan and its `gradient` the method; nothing is rebuilt per call.

use crate::adjoint_deis::AdjointDeisPlan;
use crate::error::{Error, FieldError};
use crate::gradient::{Adjoint, Wrt};
use crate::plan::Plan;
use crate::sampler::{build_plan, build_plan_on, Equation, SamplerSpec};
use crate::schedule::Schedule;
use crate::spec::Spec;

/// A sampler on a schedule with a gradient method.
#[derive(Clone, Debug)]
pub struct Problem {
    schedule: Schedule,
    sampler: SamplerSpec,
    plan: Plan,
    adjoint: Adjoint,
    wrt: Wrt,
    deis: Option<AdjointDeisPlan>,
}

impl Problem {
    /// The sampler's plan on `schedule`, with the default gradient: the discrete adjoint with
    /// recorded states, with respect to x_T.
    pub fn new(schedule: Schedule, sampler: &SamplerSpec) -> Result<Problem, FieldError> {
        let plan = build_plan(&schedule, sampler)?;
        Ok(Problem {
            schedule,
            sampler: sampler.clone(),
            plan,
            adjoint: Adjoint::default(),
            wrt: Wrt::X_T,
            deis: None,
        })
    }

    /// The problem a spec declares: `[schedule]`, `[sampler]` and `[gradient]` (optional).
    /// Errors name the key path from the spec's root.
    pub fn from_spec(spec: &Spec) -> Result<Problem, Error> {
        let sampler = spec
            .checked_sampler()?
            .ok_or_else(|| FieldError::new("sampler", "the spec has no [sampler] table"))?;
        let gradient = spec.checked_gradient()?.cloned().unwrap_or_default();
        let schedule = spec.schedule_def()?.compile()?;
        let problem = Problem::new(schedule, sampler).map_err(|e| e.under("sampler"))?;
        let adjoint = gradient.adjoint().map_err(|e| e.under("gradient"))?;
        Ok(problem
            .with_adjoint(adjoint)
            .map_err(|e| e.under("gradient"))?
            .with_wrt(gradient.wrt_set()))
    }

    /// The same problem with another gradient method (AdjointDEIS is compiled here).
    pub fn with_adjoint(mut self, adjoint: Adjoint) -> Result<Problem, FieldError> {
        if adjoint == Adjoint::Reversible && self.plan.reversal.is_none() {
            return Err(FieldError::value(
                "method",
                "\"reversible\"",
                format!(
                    "the reversible gradient runs an algebraically reversible sampler backwards (sampler method = {}); `{}` is not one: use \"discrete\" (or \"tape\", \"adjoint_deis\")",
                    crate::sampler::registry::reversible_methods(),
                    self.sampler.method.name()
                ),
            ));
        }
        self.deis = match adjoint {
            Adjoint::AdjointDeis { order, steps, .. } => Some(AdjointDeisPlan::new(
                &self.schedule,
                &self.plan,
                order,
                steps.map(|s| s.get()),
                self.is_sde(),
            )?),
            _ => None,
        };
        self.adjoint = adjoint;
        Ok(self)
    }

    /// The same problem differentiated with respect to `wrt`.
    pub fn with_wrt(mut self, wrt: Wrt) -> Problem {
        self.wrt = wrt;
        self
    }

    /// The sampler run backwards, from t_min up to t_max: the ODE inversion that encodes data
    /// into the noise this problem's sampler maps back to it.
    pub fn inversion(&self) -> Plan {
        let mut grid = self.plan.grid.clone();
        grid.reverse();
        build_plan_on(&self.schedule, &self.sampler, grid)
    }

    /// The compiled schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The sampler declaration.
    pub fn sampler(&self) -> &SamplerSpec {
        &self.sampler
    }

    /// The sampler's plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The gradient method.
    pub fn adjoint(&self) -> &Adjoint {
        &self.adjoint
    }

    /// What the gradient is taken with respect to.
    pub fn wrt(&self) -> Wrt {
        self.wrt
    }

    /// The compiled AdjointDEIS, when that is the method.
    pub fn adjoint_deis(&self) -> Option<&AdjointDeisPlan> {
        self.deis.as_ref()
    }

    /// Whether the sampler solves the SDE (its plan draws noises).
    pub fn is_sde(&self) -> bool {
        self.sampler.effective_equation() == Equation::Sde
    }
}

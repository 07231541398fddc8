//! Encoding a sample back into the noise a sampler maps to it: the exact algebraic inverse of
//! a reversible sampler (Rex, EDICT, BDIA), which returns x_T with its companion, and, for every other
//! sampler, the ODE inversion (the sampler run from t_min up to t_max). A pair from exact
//! inversion regenerates the sample to round-off with [`sample_from_pair`].

use adeis_compiler::{Instr, Plan, Problem};
use dfdx::prelude::*;

use crate::denoiser::Denoiser;
use crate::error::RuntimeError;
use crate::executor::{check_shapes, final_companion, sample, Exec, Input, SampleOutput};
use crate::model_fn::ModelFn;
use crate::noise::NoiseSource;
use crate::state::State;

/// What inversion returns.
#[derive(Clone, Debug)]
pub struct Inverted<E: Dtype, D: Device<E>> {
    /// The noise x_T.
    pub x_t: State<E, D>,
    /// Its companion x^_T, for a reversible sampler (sampling from the pair returns the
    /// sample exactly; from x_T alone, only approximately).
    pub companion: Option<State<E, D>>,
    /// Model evaluations.
    pub nfe: usize,
    /// Whether the inversion is the sampler's exact inverse (false: the ODE inversion).
    pub exact: bool,
}

/// The noise that `problem`'s sampler maps to `x0` (with `companion`, a reversible sampler's
/// second state at t_min; absent, x0 itself): the exact inverse for a reversible sampler, the
/// ODE inversion otherwise. A reversible SDE sampler is inverted given its Brownian path,
/// `noise` (the one sampling from the result must use again).
pub fn invert<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
    problem: &Problem,
    model: &ModelFn<E, D, M>,
    x0: &State<E, D>,
    companion: Option<&State<E, D>>,
    cond: Option<&State<E, D>>,
    noise: &NoiseSource<E, D>,
) -> Result<Inverted<E, D>, RuntimeError> {
    let plan = problem.plan();
    check_shapes(model.model, x0, cond)?;
    crate::executor::check_predictions(plan, model.model.prediction())?;
    let Some(reversal) = &plan.reversal else {
        if companion.is_some() {
            return Err(RuntimeError::Invalid(format!(
                "a companion state is for a reversible sampler (rex, edict, bdia); this plan is {}",
                plan.description
            )));
        }
        if problem.is_sde() {
            return Err(RuntimeError::Invalid(format!(
                "inversion runs the probability-flow ODE backwards; {} solves the SDE",
                plan.description
            )));
        }
        let out = sample(
            &problem.inversion(),
            model,
            &Input::new(x0, cond, noise),
            false,
        )?;
        return Ok(Inverted {
            x_t: out.x,
            companion: None,
            nfe: out.nfe,
            exact: false,
        });
    };
    if plan.final_denoise.is_some() {
        return Err(RuntimeError::Invalid(
            "exact inversion starts from the sampler's last state; denoise_to_zero ends with the data prediction, which has no inverse: leave it out".into(),
        ));
    }
    let companion_slot = reversal.companion.ok_or_else(|| {
        RuntimeError::Invalid(format!(
            "exact inversion returns a pair the sampler starts from; {} names none",
            plan.description
        ))
    })?;
    if let Some(c) = companion {
        if c.shape() != x0.shape() {
            return Err(RuntimeError::Shape(format!(
                "the companion has shape {:?}; x_0 has {:?}",
                c.shape(),
                x0.shape()
            )));
        }
    }
    let mut exec = Exec::new(plan, model, &Input::new(x0, cond, noise));
    let mut slots = exec.start();
    slots.states.clear();
    let (last_x, last_companion) = (reversal.last[0], reversal.last[1]);
    slots.states.insert(last_x, x0.clone());
    slots
        .states
        .insert(last_companion, companion.unwrap_or(x0).clone());
    for step in reversal.steps.iter().rev() {
        exec.run_program(&mut slots, &step.inverse)?;
        slots.states.retain(|k, _| step.carried.contains(k));
        slots.outs.clear();
    }
    let take = |slot: usize| {
        slots
            .states
            .get(&slot)
            .cloned()
            .expect("the first step's inverse defines x_T and its companion")
    };
    Ok(Inverted {
        x_t: take(0),
        companion: Some(take(companion_slot)),
        nfe: exec.nfe,
        exact: true,
    })
}

/// Runs a reversible plan from the pair (x_T, x^_T) that exact inversion returned, in place of
/// x^_T = x_T.
pub fn sample_from_pair<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
    plan: &Plan,
    model: &ModelFn<E, D, M>,
    input: &Input<E, D>,
    companion: &State<E, D>,
) -> Result<SampleOutput<E, D>, RuntimeError> {
    check_shapes(model.model, input.x_t, input.cond)?;
    crate::executor::check_predictions(plan, model.model.prediction())?;
    let slot = plan
        .reversal
        .as_ref()
        .and_then(|r| r.companion)
        .ok_or_else(|| {
            RuntimeError::Invalid(format!(
                "a companion state is for a reversible sampler (rex, edict, bdia); this plan is {}",
                plan.description
            ))
        })?;
    let resume_at = plan.reversal.as_ref().map_or(0, |r| r.resume_at);
    debug_assert!(plan.instrs[..resume_at]
        .iter()
        .any(|i| matches!(i, Instr::Combine { dst, .. } if *dst == slot)));
    if companion.shape() != input.x_t.shape() {
        return Err(RuntimeError::Shape(format!(
            "the companion has shape {:?}; x_T has {:?}",
            companion.shape(),
            input.x_t.shape()
        )));
    }
    let mut exec = Exec::new(plan, model, input);
    let mut slots = exec.start();
    slots.states.insert(slot, companion.clone());
    // The instructions before `resume_at` defined the companion (Rex's and EDICT's copy of
    // x_T, BDIA's first DDIM step), which the given one replaces.
    exec.run(&mut slots, resume_at, plan.instrs.len(), false)?;
    Ok(SampleOutput {
        x: slots.states[&plan.output].clone(),
        trajectory: None,
        nfe: exec.nfe,
        companion: final_companion(plan, &slots),
    })
}

//! PLMS (Liu et al., "Pseudo Numerical Methods for Diffusion Models", ICLR 2022, the linear
//! multistep part): the Adams-Bashforth combination of the last k noise predictions with the
//! coefficients of equal steps, moved by DDIM's transfer,
//!
//! x_{n+1} = (alpha_{n+1} / alpha_n) x_n + alpha_{n+1} (chi_{n+1} - chi_n) e',  chi = sigma / alpha,
//!
//! the order lowered to the outputs there are at the start. With the momentum of Wizadwongsa
//! and Suwajanakorn ("Diffusion Sampling with Momentum for Mitigating Divergence Artifacts",
//! ICLR 2024):
//! - `hb`: the heavy ball on the combination, v_n = (1 - beta) v_{n-1} + beta AB_k(eps), e' = v_n;
//! - `ghvb`: the generalised heavy ball, the velocity of the raw outputs v_n = (1 - beta)
//!   v_{n-1} + beta eps_n, and e' the combination of the last k velocities whose coefficients
//!   depend on beta so that the method keeps order k (beta = 1: plain PLMS).
//!
//! Both start with v_0 = eps_0, as the paper's code. The velocities are states of the plan, so
//! the discrete adjoint, the time gradients and the tape cover them unchanged.

use super::dual::Dual;
use super::family::{Family, PlanRun};
use super::options::Momentum;
use super::SamplerSpec;
use crate::error::FieldError;
use crate::plan::{Operand, Pred};

/// The PLMS family.
pub(crate) struct Plms;

/// The coefficients of the generalised heavy ball's combination of the last `order`
/// velocities, newest first (the paper's code's `AdamBmixer(order, ets, b) / b`); at beta = 1,
/// Adams-Bashforth's.
pub(crate) fn ghvb_coefficients(order: usize, beta: f64) -> Vec<f64> {
    let b = beta;
    let (num, den): (Vec<f64>, f64) = match order {
        1 => (vec![b], 1.0),
        2 => (vec![2.0 + b, -(2.0 - b)], 2.0),
        3 => (vec![18.0 + 5.0 * b, -(24.0 - 8.0 * b), 6.0 - b], 12.0),
        4 => (
            vec![
                46.0 + 9.0 * b,
                -(78.0 - 19.0 * b),
                42.0 - 5.0 * b,
                -(10.0 - b),
            ],
            24.0,
        ),
        _ => unreachable!("plms has orders 1 to 4"),
    };
    num.into_iter().map(|c| c / (den * b)).collect()
}

impl Family for Plms {
    fn validate(&self, spec: &SamplerSpec) -> Result<(), FieldError> {
        match (spec.momentum, spec.momentum_beta) {
            (None, Some(_)) => Err(FieldError::new(
                "momentum_beta",
                "goes with `momentum` (\"hb\" or \"ghvb\"), which is not set",
            )),
            (Some(m), None) => Err(FieldError::new(
                "momentum_beta",
                format!(
                    "momentum = \"{}\" needs momentum_beta in (0, 1] (1: no momentum; the paper's runs use values such as 0.8)",
                    m.name()
                ),
            )),
            (Some(_), Some(beta)) if !(beta.is_finite() && beta > 0.0 && beta <= 1.0) => Err(
                FieldError::value("momentum_beta", beta, "a number in (0, 1] (1: no momentum)"),
            ),
            _ => Ok(()),
        }
    }

    fn describe(&self, spec: &SamplerSpec, out: &mut String) {
        if let (Some(m), Some(beta)) = (spec.momentum, spec.momentum_beta) {
            let name = match m {
                Momentum::Hb => "heavy-ball",
                Momentum::Ghvb => "generalised heavy-ball",
            };
            out.push_str(&format!(", {name} momentum beta {beta}"));
        }
    }

    fn emit(&self, spec: &SamplerSpec, run: &mut PlanRun) {
        let beta = spec.momentum_beta.unwrap_or(1.0);
        let n_grid = run.b.grid_len();
        // The outputs (plain and hb) or the velocities (ghvb) the combination reads, newest
        // last; hb's velocity.
        let mut history: Vec<Operand> = Vec::new();
        let mut velocity: Option<usize> = None;
        for i in 0..run.n {
            run.b.set_step(i);
            let base = i as isize;
            let sens = |d: Dual| d.sens(base, n_grid);
            let out = Operand::Out(run.b.eval(run.x, Pred::Eps));
            let order = spec.order.min(i + 1);
            let (l_s, a_s, _) = run.dual_vals(i, base);
            let (l_t, a_t, s_t) = run.dual_vals(i + 1, base);
            // DDIM's transfer: A x + B e'.
            let a = a_t / a_s;
            let b = -(s_t * (l_t - l_s).exp_m1());
            let mut terms = vec![(Operand::State(run.x), a.v)];
            let mut term_sens = vec![sens(a)];
            match spec.momentum {
                None | Some(Momentum::Hb) => {
                    history.push(out);
                    let ab = ghvb_coefficients(order, 1.0);
                    let combination: Vec<(Operand, f64)> = history
                        .iter()
                        .rev()
                        .zip(&ab)
                        .map(|(o, c)| (*o, *c))
                        .collect();
                    if spec.momentum.is_some() {
                        // v_n = (1 - beta) v_{n-1} + beta AB_k (v_0 = eps_0).
                        let mut v_terms: Vec<(Operand, f64)> = Vec::new();
                        let weight = match velocity {
                            Some(prev) => {
                                v_terms.push((Operand::State(prev), 1.0 - beta));
                                beta
                            }
                            None => 1.0,
                        };
                        v_terms.extend(combination.iter().map(|(o, c)| (*o, weight * c)));
                        let n = v_terms.len();
                        let vel = run
                            .b
                            .combine_beside_grid_with_sens(i, v_terms, vec![vec![]; n]);
                        velocity = Some(vel);
                        terms.push((Operand::State(vel), b.v));
                        term_sens.push(sens(b));
                    } else {
                        for (o, c) in combination {
                            terms.push((o, b.v * c));
                            term_sens.push(sens(b * c));
                        }
                    }
                }
                Some(Momentum::Ghvb) => {
                    // v_n = (1 - beta) v_{n-1} + beta eps_n (v_0 = eps_0), then the
                    // beta-dependent combination of the last k velocities.
                    let v_terms = match velocity {
                        Some(prev) => vec![(Operand::State(prev), 1.0 - beta), (out, beta)],
                        None => vec![(out, 1.0)],
                    };
                    let n = v_terms.len();
                    let vel = run
                        .b
                        .combine_beside_grid_with_sens(i, v_terms, vec![vec![]; n]);
                    velocity = Some(vel);
                    history.push(Operand::State(vel));
                    for (o, c) in history.iter().rev().zip(ghvb_coefficients(order, beta)) {
                        terms.push((*o, b.v * c));
                        term_sens.push(sens(b * c));
                    }
                }
            }
            run.x = run.b.combine_at_grid_with_sens(i + 1, terms, term_sens);
        }
    }
}

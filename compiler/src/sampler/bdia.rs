//! BDIA (Zhang et al., "Exact Diffusion Inversion via Bi-directional Integration
//! Approximation", ECCV 2024): DDIM whose step from x_k also subtracts gamma times the DDIM step
//! from x_k back to t_{k-1}, and adds gamma x_{k-1}:
//!
//! x_{k+1} = gamma x_{k-1} + (1 - gamma) x_k + [DDIM(x_k, t_k -> t_{k+1}) - x_k]
//!           - gamma [DDIM(x_k, t_k -> t_{k-1}) - x_k],
//!
//! which is exactly reversible given the last two states (x_{k-1} solves the same line), with
//! one model evaluation per step. The first step is plain DDIM; exact inversion returns x_T
//! with x_1, the pair a run from a given pair starts from. With DDIM(x_k, t_k -> t_j) =
//! (alpha_j / alpha_k) x_k - sigma_j (e^{lambda_j - lambda_k} - 1) eps_k the step is
//! x_{k+1} = gamma x_{k-1} + (A_{k+1} - gamma A_{k-1}) x_k + (B_{k+1} - gamma B_{k-1}) eps_k.

use super::dual::Dual;
use super::family::{check_weight, Family, PlanRun};
use super::SamplerSpec;
use crate::error::FieldError;
use crate::plan::{Instr, Operand, Pred, ReverseStep};

/// The BDIA family.
pub(crate) struct Bdia;

/// BDIA's default gamma (the reference code's).
pub(crate) const DEFAULT_GAMMA: f64 = 0.5;

fn gamma(spec: &SamplerSpec) -> f64 {
    spec.gamma.unwrap_or(DEFAULT_GAMMA)
}

impl Family for Bdia {
    fn reversible(&self) -> bool {
        true
    }

    fn validate(&self, spec: &SamplerSpec) -> Result<(), FieldError> {
        check_weight(
            "gamma",
            gamma(spec),
            "BDIA's gamma is in (0, 1] (the inverse divides by it; the reference code uses 0.5)",
        )
    }

    fn describe(&self, spec: &SamplerSpec, out: &mut String) {
        out.push_str(&format!(", gamma {}", gamma(spec)));
    }

    fn emit(&self, spec: &SamplerSpec, run: &mut PlanRun) {
        let g = gamma(spec);
        let n_grid = run.b.grid_len();
        let mut prev: Option<usize> = None;
        let mut cur = run.x;
        for k in 0..run.n {
            run.b.set_step(k);
            // Duals in the times of grid points k - 1, k, k + 1.
            let base = k as isize - 1;
            let sens = |d: Dual| d.sens(base, n_grid);
            let eval_at = run.b.instr_count();
            let eps = run.b.eval(cur, Pred::Eps);
            let eval = run.b.instrs_from(eval_at).to_vec();
            let (l_k, a_k, _) = run.dual_vals(k, base);
            // DDIM from t_k to t_j: (A_j, B_j).
            let ddim = |j: usize| {
                let (l_j, a_j, s_j) = run.dual_vals(j, base);
                (a_j / a_k, -(s_j * (l_j - l_k).exp_m1()))
            };
            let (a_next, b_next) = ddim(k + 1);
            let Some(p) = prev else {
                let next = run.b.combine_at_grid_with_sens(
                    k + 1,
                    vec![
                        (Operand::State(cur), a_next.v),
                        (Operand::Out(eps), b_next.v),
                    ],
                    vec![sens(a_next), sens(b_next)],
                );
                // The first step is DDIM, with no inverse: the next step's inverse gives x_T
                // back with x_1, and x_1 is the companion a run from a given pair starts with.
                run.b.set_companion(next);
                run.b.push_inverse(
                    ReverseStep {
                        inverse: vec![],
                        carried: vec![cur, next],
                    },
                    vec![next, cur],
                );
                (prev, cur) = (Some(cur), next);
                continue;
            };
            let (a_prev, b_prev) = ddim(k - 1);
            let (ca, cb) = (a_next - a_prev * g, b_next - b_prev * g);
            let next = run.b.combine_at_grid_with_sens(
                k + 1,
                vec![
                    (Operand::State(p), g),
                    (Operand::State(cur), ca.v),
                    (Operand::Out(eps), cb.v),
                ],
                vec![vec![], sens(ca), sens(cb)],
            );
            // x_{k-1} from x_k and x_{k+1}: the same evaluation at x_k, then the line solved.
            let mut inverse = eval;
            inverse.push(Instr::Combine {
                dst: p,
                terms: vec![
                    (Operand::State(next), 1.0 / g),
                    (Operand::State(cur), -ca.v / g),
                    (Operand::Out(eps), -cb.v / g),
                ],
                step: k,
            });
            run.b.push_inverse(
                ReverseStep {
                    inverse,
                    carried: vec![p, cur],
                },
                vec![next, cur],
            );
            (prev, cur) = (Some(cur), next);
        }
        run.x = cur;
    }
}

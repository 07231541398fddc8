//! EDICT (Wallace, Gokul and Naik, "EDICT: Exact Diffusion Inversion via Coupled
//! Transformations", CVPR 2023): two DDIM sequences x and y that take their noise prediction
//! from each other, then mix with weight p:
//!
//! x' = A x_k + B eps(y_k, t_k),   y' = A y_k + B eps(x', t_k),
//! x_{k+1} = p x' + (1 - p) y',    y_{k+1} = p y' + (1 - p) x_{k+1},
//!
//! with A = alpha_{k+1} / alpha_k and B = sigma_{k+1} - A sigma_k (DDIM's coefficients), both
//! evaluations at t_k, two model evaluations per step. Each line solves for what it wrote, so
//! the step has an exact algebraic inverse in the reverse order (docs/math.md section 2.3).
//! Both sequences start at x_T; the sample is x.

use super::dual::Dual;
use super::family::{check_weight, Family, PlanRun};
use super::SamplerSpec;
use crate::error::FieldError;
use crate::plan::{Instr, Operand, Pred, ReverseStep};

/// The EDICT family.
pub(crate) struct Edict;

/// EDICT's default mixing weight (the paper's and the Rex reference code's).
pub(crate) const DEFAULT_MIXING: f64 = 0.93;

fn mixing(spec: &SamplerSpec) -> f64 {
    spec.mixing.unwrap_or(DEFAULT_MIXING)
}

impl Family for Edict {
    fn reversible(&self) -> bool {
        true
    }

    fn validate(&self, spec: &SamplerSpec) -> Result<(), FieldError> {
        check_weight(
            "mixing",
            mixing(spec),
            "EDICT's mixing weight p is in (0, 1] (the inverse divides by it; the paper uses 0.93)",
        )
    }

    fn describe(&self, spec: &SamplerSpec, out: &mut String) {
        out.push_str(&format!(", mixing {}", mixing(spec)));
    }

    fn emit(&self, spec: &SamplerSpec, run: &mut PlanRun) {
        let p = mixing(spec);
        let q = 1.0 - p;
        run.b.set_step(0);
        let (mut x, mut y) = (run.x, run.b.companion_start());
        let n_grid = run.b.grid_len();
        for k in 0..run.n {
            run.b.set_step(k);
            let base = k as isize;
            let sens = |d: Dual| d.sens(base, n_grid);
            let (l_k, a_k, s_k) = run.dual_vals(k, base);
            let (l_n, a_n, s_n) = run.dual_vals(k + 1, base);
            let a = a_n / a_k;
            // sigma_{k+1} - A sigma_k = -sigma_{k+1} (e^{lambda_{k+1} - lambda_k} - 1).
            let b = -(s_n * (l_n - l_k).exp_m1());
            debug_assert!((b.v - (s_n.v - a.v * s_k.v)).abs() <= 1e-9 * (1.0 + b.v.abs()));
            let first_at = run.b.instr_count();
            let e1 = run.b.eval(y, Pred::Eps);
            let first = run.b.instrs_from(first_at).to_vec();
            // x' is evaluated at t_k (both of EDICT's evaluations are at the step's start).
            let x_mid = run.b.combine_beside_grid_with_sens(
                k,
                vec![(Operand::State(x), a.v), (Operand::Out(e1), b.v)],
                vec![sens(a), sens(b)],
            );
            let second_at = run.b.instr_count();
            let e2 = run.b.eval(x_mid, Pred::Eps);
            let second = run.b.instrs_from(second_at).to_vec();
            // y' = A y_k + B e2 enters both new states directly.
            let x_next = run.b.combine_at_grid_with_sens(
                k + 1,
                vec![
                    (Operand::State(x_mid), p),
                    (Operand::State(y), q * a.v),
                    (Operand::Out(e2), q * b.v),
                ],
                vec![vec![], sens(a * q), sens(b * q)],
            );
            let y_next = run.b.combine_beside_grid_with_sens(
                k + 1,
                vec![
                    (Operand::State(y), p * a.v),
                    (Operand::Out(e2), p * b.v),
                    (Operand::State(x_next), q),
                ],
                vec![sens(a * p), sens(b * p), vec![]],
            );
            // The inverse: y' = (y_{k+1} - q x_{k+1}) / p, x' = (x_{k+1} - q y') / p, then
            // e2 at x', y_k = (y' - B e2) / A, e1 at y_k, x_k = (x' - B e1) / A.
            let mut inverse = vec![Instr::Combine {
                dst: x_mid,
                terms: vec![
                    (Operand::State(x_next), 1.0 / p + q * q / (p * p)),
                    (Operand::State(y_next), -q / (p * p)),
                ],
                step: k,
            }];
            inverse.extend(second);
            inverse.push(Instr::Combine {
                dst: y,
                terms: vec![
                    (Operand::State(y_next), 1.0 / (p * a.v)),
                    (Operand::State(x_next), -q / (p * a.v)),
                    (Operand::Out(e2), -b.v / a.v),
                ],
                step: k,
            });
            inverse.extend(first);
            inverse.push(Instr::Combine {
                dst: x,
                terms: vec![
                    (Operand::State(x_mid), 1.0 / a.v),
                    (Operand::Out(e1), -b.v / a.v),
                ],
                step: k,
            });
            run.b.push_inverse(
                ReverseStep {
                    inverse,
                    carried: vec![x, y],
                },
                vec![x_next, y_next],
            );
            (x, y) = (x_next, y_next);
        }
        run.x = x;
    }
}

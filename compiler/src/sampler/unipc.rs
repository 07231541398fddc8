//! UniPC (docs/math.md section 2): the unified predictor (UniP) and corrector (UniC) in the data
//! form, with B(h) = h (bh1) or e^h - 1 (bh2); the coefficients solve small order conditions
//! on JIT-evaluated schedule values.

use super::dual::Dual;
use super::family::{Family, PlanRun};
use super::{SamplerSpec, UnipcVariant};
use crate::error::FieldError;
use crate::plan::{GridSens, Operand, Pred};

/// The UniPC family.
pub(crate) struct Unipc;

impl Family for Unipc {
    fn multistep_only(&self) -> Option<&'static str> {
        Some("unipc is a multistep method")
    }

    fn validate(&self, spec: &SamplerSpec) -> Result<(), FieldError> {
        if !spec.disable_corrector.is_empty() && !spec.corrector {
            return Err(FieldError::new(
                "disable_corrector",
                "skips UniPC's corrector after the steps listed; it needs method = \"unipc\" with its corrector on",
            ));
        }
        Ok(())
    }

    fn describe(&self, spec: &SamplerSpec, out: &mut String) {
        let corrector = if spec.corrector {
            " with corrector"
        } else {
            " predictor only"
        };
        out.push_str(&format!(" {:?}{corrector}", spec.variant));
    }

    fn emit(&self, spec: &SamplerSpec, run: &mut PlanRun) {
        // (state, grid index, order) of the last predictor step, for the corrector.
        let mut last: Option<(usize, usize, usize)> = None;
        for i in 0..run.n {
            run.b.set_step(i);
            let o = run.b.eval(run.x, Pred::Data);
            // diffusers' `disable_corrector`: the corrector after step k is skipped for k listed.
            let corrects = spec.corrector && !spec.disable_corrector.contains(&i.wrapping_sub(1));
            if let (true, Some((prev_x, prev_i, prev_order))) = (corrects, last) {
                // UniC: correct x_i from x_{i-1} with the outputs up to m_i (evaluated at the
                // predicted x_i, and kept for the next step).
                let step = UnipcStep {
                    s: prev_i,
                    t: i,
                    m_t: Some(o),
                    order: prev_order,
                    variant: spec.variant,
                };
                let (terms, sens) = step.terms(run, Operand::State(prev_x));
                run.x = run.b.combine_at_grid_with_sens(i, terms, sens);
            }
            run.outs.push((o, i));
            let order = run.step_order(i);
            last = Some((run.x, i, order));
            let step = UnipcStep {
                s: i,
                t: i + 1,
                m_t: None,
                order,
                variant: spec.variant,
            };
            let (terms, sens) = step.terms(run, Operand::State(run.x));
            run.x = run.b.combine_at_grid_with_sens(i + 1, terms, sens);
        }
    }
}

/// Solves a small dense system by Gaussian elimination with partial pivoting (on the values;
/// the derivatives follow the same operations).
fn solve(mut a: Vec<Vec<Dual>>, mut b: Vec<Dual>) -> Vec<Dual> {
    let n = b.len();
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&i, &j| a[i][col].v.abs().total_cmp(&a[j][col].v.abs()))
            .unwrap();
        a.swap(col, piv);
        b.swap(col, piv);
        for row in col + 1..n {
            let f = a[row][col] / a[col][col];
            let pivot_row = a[col].clone();
            for (x, p) in a[row][col..].iter_mut().zip(&pivot_row[col..]) {
                *x = *x - f * *p;
            }
            b[row] = b[row] - f * b[col];
        }
    }
    let mut x = vec![Dual::constant(0.0); n];
    for row in (0..n).rev() {
        let s = (row + 1..n).fold(Dual::constant(0.0), |acc, k| acc + a[row][k] * x[k]);
        x[row] = (b[row] - s) / a[row][row];
    }
    x
}

/// One UniPC update (data prediction) from grid point `s` to `t`: predictor (UniP) when `m_t`
/// is None, corrector (UniC) when it is the output at t.
struct UnipcStep {
    s: usize,
    t: usize,
    m_t: Option<usize>,
    order: usize,
    variant: UnipcVariant,
}

impl UnipcStep {
    /// The terms on the state `x` and on the model outputs (`run.outs`, newest last, its last
    /// entry at s), with each coefficient's sensitivity to the grid times (computed in dual
    /// numbers over the grid points t-3..=t, every point a step reads).
    fn terms(&self, run: &PlanRun, x: Operand) -> (Vec<(Operand, f64)>, Vec<GridSens>) {
        let base = self.t as isize - 3;
        let outs = &run.outs;
        let (l_s, _, s_s) = run.dual_vals(self.s, base);
        let (l_t, a_t, s_t) = run.dual_vals(self.t, base);
        let h = l_t - l_s;
        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        let b_h = match self.variant {
            UnipcVariant::Bh1 => hh,
            UnipcVariant::Bh2 => hh.exp_m1(),
        };
        let m0 = outs[outs.len() - 1];
        // Previous outputs m_1..m_{order-1} and their r_k.
        let prev: Vec<((usize, usize), Dual)> = (1..self.order)
            .map(|k| {
                let m = outs[outs.len() - 1 - k];
                (m, (run.dual_vals(m.1, base).0 - l_s) / h)
            })
            .collect();
        let mut rks: Vec<Dual> = prev.iter().map(|p| p.1).collect();
        rks.push(Dual::constant(1.0));
        let mut r_rows = Vec::new();
        let mut bs = Vec::new();
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1.0;
        for i in 1..=self.order {
            r_rows.push(
                rks.iter()
                    .map(|r| r.powi(i as i32 - 1))
                    .collect::<Vec<Dual>>(),
            );
            bs.push(h_phi_k * factorial / b_h);
            factorial *= (i + 1) as f64;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        let state_coef = s_t / s_s;
        let mut m0_coef = -(a_t * h_phi_1);
        let mut terms: Vec<(Operand, Dual)> = Vec::new();
        let half = vec![Dual::constant(0.5)];
        let rhos: Vec<Dual> = match self.m_t {
            None => match self.order {
                1 => vec![],
                2 => half,
                _ => {
                    let p = self.order - 1;
                    solve(
                        r_rows[..p].iter().map(|r| r[..p].to_vec()).collect(),
                        bs[..p].to_vec(),
                    )
                }
            },
            Some(_) => {
                if self.order == 1 {
                    half
                } else {
                    solve(r_rows.clone(), bs.clone())
                }
            }
        };
        for (k, ((m, _), rk)) in prev.iter().enumerate() {
            // - a_t B_h rho_k (m_k - m0) / r_k
            let c = -(a_t * b_h * rhos[k] / *rk);
            terms.push((Operand::Out(*m), c));
            m0_coef = m0_coef - c;
        }
        if let Some(mt) = self.m_t {
            let c = -(a_t * b_h * rhos[rhos.len() - 1]);
            terms.push((Operand::Out(mt), c));
            m0_coef = m0_coef - c;
        }
        terms.insert(0, (Operand::Out(m0.0), m0_coef));
        terms.insert(0, (x, state_coef));
        terms
            .into_iter()
            .map(|(op, c)| ((op, c.v), c.sens(base, run.b.grid_len())))
            .unzip()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_solve() {
        let c = Dual::constant;
        let x = solve(
            vec![vec![c(2.0), c(1.0)], vec![c(1.0), c(3.0)]],
            vec![c(3.0), c(5.0)],
        );
        assert!((x[0].v - 0.8).abs() < 1e-15 && (x[1].v - 1.4).abs() < 1e-15);
    }
}

//! UniPC (docs/math.md section 2): the unified predictor (UniP) and corrector (UniC) in the data
//! form, with B(h) = h (bh1) or e^h - 1 (bh2); the coefficients solve small order conditions
//! on JIT-evaluated schedule values.

use super::{ode_only, Family, Method, PlanRun, SamplerSpec, UnipcVariant};
use crate::plan::{Operand, Pred};
use crate::schedule::ScheduleValues;

/// The UniPC family.
pub(crate) struct Unipc;

impl Family for Unipc {
    fn orders(&self, _method: Method, sde: bool) -> &'static [usize] {
        ode_only(sde)
    }

    fn form(&self, _method: Method) -> Pred {
        Pred::Data
    }

    fn multistep_only(&self) -> Option<&'static str> {
        Some("unipc is a multistep method")
    }

    fn emit(&self, spec: &SamplerSpec, run: &mut PlanRun) {
        // (state, grid index, order) of the last predictor step, for the corrector.
        let mut last: Option<(usize, usize, usize)> = None;
        for i in 0..run.n {
            run.b.set_step(i);
            let o = run.b.eval(run.x, Pred::Data);
            if let (true, Some((prev_x, prev_i, prev_order))) = (spec.corrector, last) {
                // UniC: correct x_i from x_{i-1} with the outputs up to m_i (evaluated at the
                // predicted x_i, and kept for the next step).
                let (a, terms) = unipc_terms(
                    &run.vals,
                    &run.outs,
                    prev_i,
                    i,
                    Some(o),
                    prev_order,
                    spec.variant,
                );
                let mut all = vec![(Operand::State(prev_x), a)];
                all.extend(terms);
                run.x = run.b.combine_at_grid(i, all);
            }
            run.outs.push((o, i));
            let order = run.step_order(i);
            last = Some((run.x, i, order));
            let (a, terms) = unipc_terms(&run.vals, &run.outs, i, i + 1, None, order, spec.variant);
            let mut all = vec![(Operand::State(run.x), a)];
            all.extend(terms);
            run.x = run.b.combine_at_grid(i + 1, all);
        }
    }
}

/// Solves a small dense system by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap();
        a.swap(col, piv);
        b.swap(col, piv);
        for row in col + 1..n {
            let f = a[row][col] / a[col][col];
            let pivot_row = a[col].clone();
            for (x, p) in a[row][col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x
}

/// UniPC (data prediction) from grid point `s` to `t`: the state coefficient and the terms on
/// the model outputs. Predictor (UniP) when `m_t` is None, corrector (UniC) when it is the
/// output at t. `outs` holds (slot, grid index), newest last; its last entry is at `s`.
fn unipc_terms(
    vals: &[ScheduleValues],
    outs: &[(usize, usize)],
    s: usize,
    t: usize,
    m_t: Option<usize>,
    order: usize,
    variant: UnipcVariant,
) -> (f64, Vec<(Operand, f64)>) {
    let (vs, vt) = (&vals[s], &vals[t]);
    let h = vt.lambda - vs.lambda;
    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let b_h = match variant {
        UnipcVariant::Bh1 => hh,
        UnipcVariant::Bh2 => hh.exp_m1(),
    };
    let m0 = outs[outs.len() - 1];
    // Previous outputs m_1..m_{order-1} and their r_k.
    let prev: Vec<((usize, usize), f64)> = (1..order)
        .map(|k| {
            let m = outs[outs.len() - 1 - k];
            (m, (vals[m.1].lambda - vs.lambda) / h)
        })
        .collect();
    let mut rks: Vec<f64> = prev.iter().map(|p| p.1).collect();
    rks.push(1.0);
    let mut r_rows = Vec::new();
    let mut bs = Vec::new();
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let mut factorial = 1.0;
    for i in 1..=order {
        r_rows.push(
            rks.iter()
                .map(|r| r.powi(i as i32 - 1))
                .collect::<Vec<f64>>(),
        );
        bs.push(h_phi_k * factorial / b_h);
        factorial *= (i + 1) as f64;
        h_phi_k = h_phi_k / hh - 1.0 / factorial;
    }
    let a_t = vt.alpha;
    let state_coef = vt.sigma / vs.sigma;
    let mut m0_coef = -a_t * h_phi_1;
    let mut terms = Vec::new();
    let rhos: Vec<f64> = match m_t {
        None => match order {
            1 => vec![],
            2 => vec![0.5],
            _ => {
                let p = order - 1;
                solve(
                    r_rows[..p].iter().map(|r| r[..p].to_vec()).collect(),
                    bs[..p].to_vec(),
                )
            }
        },
        Some(_) => {
            if order == 1 {
                vec![0.5]
            } else {
                solve(r_rows.clone(), bs.clone())
            }
        }
    };
    for (k, ((m, _), rk)) in prev.iter().enumerate() {
        // - a_t B_h rho_k (m_k - m0) / r_k
        let c = -a_t * b_h * rhos[k] / rk;
        terms.push((Operand::Out(*m), c));
        m0_coef -= c;
    }
    if let Some(mt) = m_t {
        let c = -a_t * b_h * rhos[rhos.len() - 1];
        terms.push((Operand::Out(mt), c));
        m0_coef -= c;
    }
    terms.insert(0, (Operand::Out(m0.0), m0_coef));
    (state_coef, terms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_solve() {
        let x = solve(vec![vec![2.0, 1.0], vec![1.0, 3.0]], vec![3.0, 5.0]);
        assert!((x[0] - 0.8).abs() < 1e-15 && (x[1] - 1.4).abs() < 1e-15);
    }
}

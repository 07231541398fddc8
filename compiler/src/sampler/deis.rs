//! DEIS tAB (docs/math.md section 2): the eps-form multistep method whose coefficients integrate
//! the Lagrange basis in t through the last outputs' times, by Gauss-Legendre quadrature in
//! lambda on JIT-evaluated schedule values.

use std::sync::OnceLock;

use super::dual::Dual;
use super::family::{Family, PlanRun};
use super::{DeisBasis, SamplerSpec};
use crate::plan::{Operand, Pred};

/// The DEIS family.
pub(crate) struct Deis;

impl Family for Deis {
    fn multistep_only(&self) -> Option<&'static str> {
        Some("deis (tAB) is a multistep method")
    }

    fn emit(&self, spec: &SamplerSpec, run: &mut PlanRun) {
        for i in 0..run.n {
            run.b.set_step(i);
            let o = run.b.eval(run.x, Pred::Eps);
            run.outs.push((o, i));
            let order = run.step_order(i);
            // Dual numbers in the times of grid points i-2..=i+1: the step's end points and
            // the nodes of its Lagrange basis.
            let base = i as isize - 2;
            let nodes: Vec<Dual> = (0..order)
                .map(|k| match spec.deis_basis {
                    DeisBasis::T => Dual::seeded(run.grid[i - k], (2 - k as isize) as usize, 1.0),
                    DeisBasis::LogRho => run.dual_vals(i - k, base).0,
                })
                .collect();
            let ((l_s, a_s, _), (l_t, a_t, _)) =
                (run.dual_vals(i, base), run.dual_vals(i + 1, base));
            let coefs = deis_coefficients(run, spec.deis_basis, &nodes, l_s, l_t, a_t);
            let state = a_t / a_s;
            let mut terms = vec![(Operand::State(run.x), state.v)];
            let mut sens = vec![state.sens(base, run.b.grid_len())];
            for (k, c) in coefs.into_iter().enumerate() {
                terms.push((run.newest(k), c.v));
                sens.push(c.sens(base, run.b.grid_len()));
            }
            run.x = run.b.combine_at_grid_with_sens(i + 1, terms, sens);
        }
    }
}

/// Gauss-Legendre nodes and weights on [-1, 1].
fn gauss_legendre(n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut x = vec![0.0; n];
    let mut w = vec![0.0; n];
    for i in 0..n.div_ceil(2) {
        let mut z = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
        let mut dp = 0.0;
        for _ in 0..100 {
            let (mut p0, mut p1) = (1.0, z);
            for k in 2..=n {
                let p2 = ((2 * k - 1) as f64 * z * p1 - (k - 1) as f64 * p0) / k as f64;
                p0 = p1;
                p1 = p2;
            }
            dp = n as f64 * (z * p1 - p0) / (z * z - 1.0);
            let dz = p1 / dp;
            z -= dz;
            if dz.abs() < 1e-16 {
                break;
            }
        }
        x[i] = -z;
        x[n - 1 - i] = z;
        w[i] = 2.0 / ((1.0 - z * z) * dp * dp);
        w[n - 1 - i] = w[i];
    }
    (x, w)
}

/// Lagrange basis polynomial j through `nodes`, at t.
fn lagrange(nodes: &[Dual], j: usize, t: Dual) -> Dual {
    nodes
        .iter()
        .enumerate()
        .filter(|(k, _)| *k != j)
        .fold(Dual::constant(1.0), |acc, (_, tk)| {
            acc * ((t - *tk) / (nodes[j] - *tk))
        })
}

/// DEIS tAB: C_j = -alpha_t * integral over [lambda_s, lambda_t] of e^{-lambda} L_j(t(lambda)),
/// the Lagrange basis in t through `nodes` (newest first), by 24-point Gauss-Legendre in lambda
/// (the integrand is smooth in lambda, unlike in t near t = 0). In dual numbers: the quadrature
/// that runs is differentiated, end points, nodes and t(lambda) included. With the basis in
/// log rho (= -lambda; `nodes` are then the lambdas of the outputs) the integrand is a
/// polynomial times e^{-lambda}, which the quadrature integrates to round-off.
fn deis_coefficients(
    run: &PlanRun,
    basis: DeisBasis,
    nodes: &[Dual],
    l_s: Dual,
    l_t: Dual,
    a_t: Dual,
) -> Vec<Dual> {
    static GL: OnceLock<(Vec<f64>, Vec<f64>)> = OnceLock::new();
    let (xs, ws) = GL.get_or_init(|| gauss_legendre(24));
    let (mid, half) = ((l_s + l_t) * 0.5, (l_t - l_s) * 0.5);
    let mut c = vec![Dual::constant(0.0); nodes.len()];
    for (x, w) in xs.iter().zip(ws) {
        let lam = mid + half * *x;
        let tau = match basis {
            DeisBasis::T => run.t_of_lambda_dual(lam),
            DeisBasis::LogRho => lam,
        };
        let weight = half * (-lam).exp() * *w;
        for (j, cj) in c.iter_mut().enumerate() {
            *cj = *cj + weight * lagrange(nodes, j, tau);
        }
    }
    c.into_iter().map(|cj| -(a_t * cj)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauss_legendre_integrates_polynomials_exactly() {
        let (x, w) = gauss_legendre(24);
        let integral: f64 = x.iter().zip(&w).map(|(x, w)| w * x.powi(46)).sum();
        assert!((integral - 2.0 / 47.0).abs() < 1e-14);
        assert!((w.iter().sum::<f64>() - 2.0).abs() < 1e-14);
    }
}

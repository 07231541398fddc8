//! DEIS tAB (docs/math.md section 2): the eps-form multistep method whose coefficients integrate
//! the Lagrange basis in t through the last outputs' times, by Gauss-Legendre quadrature in
//! lambda on JIT-evaluated schedule values.

use std::sync::OnceLock;

use super::{ode_only, Family, Method, PlanRun, SamplerSpec};
use crate::plan::{Operand, Pred};
use crate::schedule::Schedule;

/// The DEIS family.
pub(crate) struct Deis;

impl Family for Deis {
    fn orders(&self, _method: Method, sde: bool) -> &'static [usize] {
        ode_only(sde)
    }

    fn form(&self, _method: Method) -> Pred {
        Pred::Eps
    }

    fn multistep_only(&self) -> Option<&'static str> {
        Some("deis (tAB) is a multistep method")
    }

    fn emit(&self, _spec: &SamplerSpec, run: &mut PlanRun) {
        for i in 0..run.n {
            run.b.set_step(i);
            let v = run.vars_at(i);
            let o = run.b.eval(run.x, Pred::Eps);
            run.outs.push((o, i));
            let order = run.step_order(i);
            let nodes: Vec<f64> = (0..order).map(|k| run.grid[i - k]).collect();
            let coefs = deis_coefficients(run.schedule, &nodes, v.l_s, v.l_t, v.a_t);
            let mut terms = vec![(Operand::State(run.x), v.a_t / v.a_s)];
            for (k, c) in coefs.into_iter().enumerate() {
                terms.push((run.newest(k), c));
            }
            run.x = run.b.combine_at_grid(i + 1, terms);
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
fn lagrange(nodes: &[f64], j: usize, t: f64) -> f64 {
    nodes
        .iter()
        .enumerate()
        .filter(|(k, _)| *k != j)
        .map(|(_, tk)| (t - tk) / (nodes[j] - tk))
        .product()
}

/// DEIS tAB: C_j = -alpha_t * integral over [lambda_s, lambda_t] of e^{-lambda} L_j(t(lambda)),
/// the Lagrange basis in t through `nodes` (newest first), by 24-point Gauss-Legendre in lambda
/// (the integrand is smooth in lambda, unlike in t near t = 0).
fn deis_coefficients(schedule: &Schedule, nodes: &[f64], l_s: f64, l_t: f64, a_t: f64) -> Vec<f64> {
    static GL: OnceLock<(Vec<f64>, Vec<f64>)> = OnceLock::new();
    let (xs, ws) = GL.get_or_init(|| gauss_legendre(24));
    let (mid, half) = (0.5 * (l_s + l_t), 0.5 * (l_t - l_s));
    let mut c = vec![0.0; nodes.len()];
    for (x, w) in xs.iter().zip(ws) {
        let lam = mid + half * x;
        let tau = schedule.t_of_lambda(lam);
        let weight = w * half * (-lam).exp();
        for (j, cj) in c.iter_mut().enumerate() {
            *cj += weight * lagrange(nodes, j, tau);
        }
    }
    c.iter().map(|cj| -a_t * cj).collect()
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

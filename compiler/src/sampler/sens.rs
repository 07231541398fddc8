//! How a step's coefficients move with the grid times and the schedule's parameters (the
//! sensitivities that the gradient with respect to `times` and `schedule` reads), from their
//! partial derivatives in the step variables of [`super::formulas`].

use super::dual::Dual;
use super::family::{PlanRun, Stage};
use super::formulas::{self, VarPartials};
use crate::plan::GridSens;
use crate::schedule::ParamPartials;

impl PlanRun<'_> {
    /// The sensitivity to the grid times of a coefficient of step i (from grid point i to
    /// i + 1, with the earlier points of [`PlanRun::vars_at`] and the intermediate points
    /// `stages`), from its partial derivatives in the step variables.
    pub fn step_sens(&self, i: usize, partials: &VarPartials, stages: &[Stage]) -> GridSens {
        // Where each variable of `formulas::VARS` comes from: a grid point (offset from i)
        // or a stage.
        const OFFSETS: [Option<isize>; 13] = [
            Some(0),
            Some(0),
            Some(0),
            Some(1),
            Some(1),
            Some(1),
            Some(-1),
            Some(-2),
            Some(-1),
            None,
            None,
            None,
            None,
        ];
        let at = OFFSETS.map(|o| o.map(|off| (i as isize + off) as usize));
        self.sens_of(partials, &at, stages)
    }

    /// As [`PlanRun::step_sens`] for a coefficient whose variables all sit at grid points:
    /// `at[k]` is the grid point of variable k of `formulas::VARS` (None: not used).
    pub fn grid_point_sens(&self, partials: &VarPartials, at: &[Option<usize>; 13]) -> GridSens {
        self.sens_of(partials, at, &[])
    }

    /// The sensitivity of a coefficient from its partials in the step variables: variable k
    /// is the quantity its name starts with (alpha, sigma, lambda) at grid point `at[k]`, or,
    /// where `at[k]` is None, at stage 0 (a_u1, s_u1) or 1 (a_u2, s_u2).
    fn sens_of(
        &self,
        partials: &VarPartials,
        at: &[Option<usize>; 13],
        stages: &[Stage],
    ) -> GridSens {
        let n_grid = self.b.grid_len();
        let mut sens: GridSens = Vec::new();
        let mut add = |j: usize, d: f64| match sens.iter_mut().find(|(g, _)| *g == j) {
            Some((_, acc)) => *acc += d,
            None => sens.push((j, d)),
        };
        for (k, name) in formulas::VARS.iter().enumerate() {
            let p = partials[k];
            if p == 0.0 {
                continue;
            }
            // A variable of a point before the grid's first (l_p1 at step 0), or of a stage the
            // step does not have, is NaN and unused by the formulas that run there; a NaN
            // partial of it (a coefficient that is not finite either, which the plan's check
            // refuses) has no grid time to go to.
            if at[k].is_some_and(|j| j >= self.vals.len()) {
                continue;
            }
            let q = name.as_bytes()[0];
            // At pure noise (lambda = -inf, a flow's t = 1) a data-form coefficient depends on
            // lambda there through e^lambda and 1 / (lambda_next - lambda) only, whose
            // derivatives vanish; their partials evaluate to inf / inf, and the grid time
            // there is held fixed (see `Plan::held_fixed`).
            if q == b'l' && at[k].is_some_and(|j| self.vals[j].is_pure_noise()) {
                continue;
            }
            // The variable's partials in the parameters at its (fixed) time.
            let pick = |pp: &ParamPartials| match q {
                b'a' => pp.alpha,
                b's' => pp.sigma,
                _ => pp.lambda,
            };
            match at[k] {
                Some(j) => {
                    let d = self.b.grid_derivs(j);
                    let dv = match q {
                        b'a' => d.alpha,
                        b's' => d.sigma,
                        _ => self.vals[j].dlambda_dt,
                    };
                    add(j, p * dv);
                    for (m, pp) in self.b.grid_params(j).iter().enumerate() {
                        add(n_grid + m, p * pick(pp));
                    }
                }
                None => {
                    // A stage the step does not have: as for a point before the grid.
                    let Some(st) = stages.get((k - 9) / 2) else {
                        continue;
                    };
                    let dv = if q == b'a' {
                        st.derivs.alpha
                    } else {
                        st.derivs.sigma
                    };
                    for (j, w) in &st.time_sens {
                        add(*j, p * dv * w);
                    }
                    for (m, pp) in st.params.iter().enumerate() {
                        add(n_grid + m, p * pick(pp));
                    }
                }
            }
        }
        sens
    }

    /// lambda, alpha and sigma at grid point j as dual numbers in the times of grid points
    /// base.. (slot j - base).
    pub fn dual_vals(&self, j: usize, base: isize) -> (Dual, Dual, Dual) {
        let slot = (j as isize - base) as usize;
        let (v, d) = (&self.vals[j], self.b.grid_derivs(j));
        let (mut l, mut a, mut s) = (
            Dual::seeded(v.lambda, slot, v.dlambda_dt),
            Dual::seeded(v.alpha, slot, d.alpha),
            Dual::seeded(v.sigma, slot, d.sigma),
        );
        if v.is_pure_noise() {
            // As in the formulas' partials (`formulas::PURE_NOISE_LAMBDA`): lambda = -inf
            // enters through terms whose derivatives vanish, and the time there is held fixed.
            l = Dual::constant(formulas::PURE_NOISE_LAMBDA);
        }
        for (k, pp) in self.b.grid_params(j).iter().enumerate() {
            let pp_lambda = if v.is_pure_noise() { 0.0 } else { pp.lambda };
            (l, a, s) = (
                l.with_param(k, pp_lambda),
                a.with_param(k, pp.alpha),
                s.with_param(k, pp.sigma),
            );
        }
        (l, a, s)
    }

    /// t(lambda) with its derivatives: lambda(t; p) = lambda gives
    /// dt = (d lambda - d lambda/dp dp) / lambda'(t).
    pub fn t_of_lambda_dual(&self, lambda: Dual) -> Dual {
        let t = self.schedule.t_of_lambda(lambda.v);
        let slope = self.schedule.eval(t).dlambda_dt;
        let mut out = Dual {
            v: t,
            d: lambda.d.map(|x| x / slope),
        };
        for (k, pp) in self.schedule.param_partials(t).iter().enumerate() {
            out = out.with_param(k, (lambda.param(k) - pp.lambda) / slope);
        }
        out
    }
}

//! Rex (Blasingame & Liu, arXiv 2502.08834): an explicit Runge-Kutta tableau in Lawson's
//! exponential variables, wrapped in McCallum and Foster's reversible coupling (arXiv
//! 2410.11648), so that every step has an exact algebraic inverse (docs/math.md section 2.6).
//!
//! In the data form the time variable is gamma = alpha/sigma = e^lambda and the weight
//! w = sigma; in the noise form chi = sigma/alpha = e^-lambda and w = alpha. With y = x / w
//! the probability-flow ODE is dy/dv = (data or noise prediction), and the tableau's step
//! Psi_h(v, x) = h sum_i b_i k_i is taken in y. A step carries the state x and its companion
//! x^ (both x_T at the start), with coupling zeta:
//!
//! x_{n+1} = r (zeta x_n + (1 - zeta) x^_n) + w_{n+1} Psi_h(v_n, x^_n),
//! x^_{n+1} = r x^_n - w_{n+1} Psi_{-h}(v_{n+1}, x_{n+1}), r = w_{n+1} / w_n,
//!
//! and its inverse runs the same two Psi's the other way round. Both are emitted here: the
//! step into the plan (with every coefficient's sensitivity to the grid times and the
//! schedule's parameters, by forward-mode duals) and its inverse into the plan's
//! [`Reversal`](crate::plan::Reversal).

use super::dual::{Dual, TIME_SLOTS};
use super::family::{check_weight, Family, PlanRun};
use super::tableau::Tableau;
use super::SamplerSpec;
use crate::error::FieldError;
use crate::plan::MAX_DUAL_PARAMS;
use crate::plan::{GridSens, Instr, Operand, Pred, ReverseStep, TimeDerivs};

/// The Rex family.
pub(crate) struct Rex;

/// Rex's default coupling (the paper's and the reference code's).
pub(crate) const DEFAULT_COUPLING: f64 = 0.999;

impl Rex {
    /// The spec's tableau, or the default one of its order.
    fn tableau(spec: &SamplerSpec) -> Result<Tableau, FieldError> {
        match &spec.tableau {
            Some(t) => t.resolve(),
            None => Tableau::default_for(spec.order)
                .ok_or_else(|| FieldError::value("order", spec.order, "rex has orders 1 to 4")),
        }
    }

    /// The form whose Lawson variables the steps use: data by default, as Rex's own. The eps
    /// form drifts less in the reversible gradient of some eps networks but can diverge in
    /// sampling (the trained digits model's samples blow up in it); docs/numerics.md.
    fn form(spec: &SamplerSpec) -> Pred {
        spec.form.unwrap_or(Pred::Data)
    }
}

impl Family for Rex {
    fn reversible(&self) -> bool {
        true
    }

    fn validate(&self, spec: &SamplerSpec) -> Result<(), FieldError> {
        let tableau = Rex::tableau(spec)?;
        if tableau.order != spec.order {
            return Err(FieldError::value(
                "order",
                spec.order,
                format!(
                    "tableau `{}` has order {}: set order = {} (or leave `tableau` out for the default tableau of order {})",
                    tableau.name, tableau.order, tableau.order, spec.order
                ),
            ));
        }
        check_weight(
            "coupling",
            spec.coupling,
            "the coupling zeta is in (0, 1] (Rex's default 0.999; the inverse divides by it)",
        )
    }

    fn check_given(&self, _spec: &SamplerSpec, key: &str) -> Option<String> {
        matches!(key, "lower_order_final" | "euler_at_final" | "count_final_step").then(|| {
            format!("`{key}` lowers a multistep sampler's last orders; rex keeps its tableau on every step")
        })
    }

    fn describe(&self, spec: &SamplerSpec, out: &mut String) {
        let name = Rex::tableau(spec).map_or_else(|_| "?".into(), |t| t.name);
        let form = match Rex::form(spec) {
            Pred::Data => "data",
            Pred::Eps => "eps",
        };
        out.push_str(&format!(
            ", tableau {name}, {form} form, coupling {}",
            spec.coupling
        ));
    }

    fn emit(&self, spec: &SamplerSpec, run: &mut PlanRun) {
        let tableau = Rex::tableau(spec).expect("validated");
        let form = Rex::form(spec);
        let zeta = spec.coupling;
        // x^_T is its own slot (a copy of x_T), so that a pair from exact inversion can start
        // the sampler; the copy's transposition adds the companion's cotangent to x_T's.
        run.b.set_step(0);
        let (mut x, mut xh) = (run.x, run.b.companion_start());
        for n in 0..run.n {
            run.b.set_step(n);
            let base = n as isize;
            let n_grid = run.b.grid_len();
            let start = End::at(run, n, base, form);
            let end = End::at(run, n + 1, base, form);
            let sens = |d: Dual| d.sens(base, n_grid);
            let r = end.w / start.w;
            // The forward step: Psi_h from x^_n, the new x, Psi_{-h} from it, the new x^.
            let first_at = run.b.instr_count();
            let k = psi(run, &tableau, form, xh, &start, &end, base);
            let first = run.b.instrs_from(first_at).to_vec();
            let mut terms = vec![
                (Operand::State(x), (r * zeta).v),
                (Operand::State(xh), (r * (1.0 - zeta)).v),
            ];
            let mut term_sens = vec![sens(r * zeta), sens(r * (1.0 - zeta))];
            for (o, c) in k.outs.iter().zip(&k.weights) {
                terms.push((Operand::Out(*o), (end.w * *c).v));
                term_sens.push(sens(end.w * *c));
            }
            let x_next = run.b.combine_at_grid_with_sens(n + 1, terms, term_sens);
            let second_at = run.b.instr_count();
            let k2 = psi(run, &tableau, form, x_next, &end, &start, base);
            let second = run.b.instrs_from(second_at).to_vec();
            // k2's weights are -h b_i: they sum Psi_{-h} itself.
            let mut terms = vec![(Operand::State(xh), r.v)];
            let mut term_sens = vec![sens(r)];
            for (o, c) in k2.outs.iter().zip(&k2.weights) {
                terms.push((Operand::Out(*o), -(end.w * *c).v));
                term_sens.push(sens(-(end.w * *c)));
            }
            let xh_next = run.b.combine_beside_grid_with_sens(n + 1, terms, term_sens);
            // The inverse: Psi_{-h} from x_{n+1} gives x^_n, then Psi_h from it gives x_n.
            let mut inverse = second;
            let mut terms = vec![(Operand::State(xh_next), 1.0 / r.v)];
            for (o, c) in k2.outs.iter().zip(&k2.weights) {
                terms.push((Operand::Out(*o), start.w.v * c.v));
            }
            inverse.push(Instr::Combine {
                dst: xh,
                terms,
                step: n,
            });
            inverse.extend(first);
            let mut terms = vec![
                (Operand::State(x_next), 1.0 / (r.v * zeta)),
                (Operand::State(xh), 1.0 - 1.0 / zeta),
            ];
            for (o, c) in k.outs.iter().zip(&k.weights) {
                terms.push((Operand::Out(*o), -start.w.v * c.v / zeta));
            }
            inverse.push(Instr::Combine {
                dst: x,
                terms,
                step: n,
            });
            run.b.push_inverse(
                ReverseStep {
                    inverse,
                    carried: vec![x, xh],
                },
                vec![x_next, xh_next],
            );
            (x, xh) = (x_next, xh_next);
        }
        run.x = x;
    }
}

/// One end of a step: its grid point, time, weight w and time variable v, as duals in the
/// step's grid times and the schedule's parameters.
struct End {
    grid: usize,
    t: Dual,
    w: Dual,
    v: Dual,
}

impl End {
    fn at(run: &PlanRun, i: usize, base: isize, form: Pred) -> End {
        let (l, a, s) = run.dual_vals(i, base);
        let slot = (i as isize - base) as usize;
        let t = Dual::seeded(run.grid[i], slot, 1.0);
        let (w, v) = weight_and_variable(form, l, a, s);
        End { grid: i, t, w, v }
    }
}

/// w and v of a form: (sigma, e^lambda) for data, (alpha, e^-lambda) for noise.
fn weight_and_variable(form: Pred, l: Dual, a: Dual, s: Dual) -> (Dual, Dual) {
    match form {
        Pred::Data => (s, l.exp()),
        Pred::Eps => (a, (-l).exp()),
    }
}

/// A Psi's evaluations and the coefficient of each in the step's sum, h b_i (a dual).
struct Stages {
    outs: Vec<usize>,
    weights: Vec<Dual>,
}

/// Emits the stages of Psi_h(v_from, x) with h = v_to - v_from: stage i at v_from + c_i h,
/// its state (w_i / w_from) x + w_i h sum_j a_ij k_j, its evaluation k_i.
fn psi(
    run: &mut PlanRun,
    tableau: &Tableau,
    form: Pred,
    x: usize,
    from: &End,
    to: &End,
    base: isize,
) -> Stages {
    let n_grid = run.b.grid_len();
    let h = to.v - from.v;
    let mut outs: Vec<usize> = Vec::new();
    for (i, &c) in tableau.c.iter().enumerate() {
        let row = &tableau.a[i];
        let (t, w) = if c == 0.0 {
            (from.t, from.w)
        } else if c == 1.0 {
            (to.t, to.w)
        } else {
            let v = from.v + h * c;
            let l = match form {
                Pred::Data => v.ln(),
                Pred::Eps => -v.ln(),
            };
            let t = run.t_of_lambda_dual(l);
            let (a, s) = at_time(run, t);
            (t, weight_and_variable(form, l, a, s).0)
        };
        let input = if c == 0.0 && row.iter().all(|a| *a == 0.0) {
            x
        } else {
            let ratio = w / from.w;
            let mut terms = vec![(Operand::State(x), ratio.v)];
            let mut sens: Vec<GridSens> = vec![ratio.sens(base, n_grid)];
            for (j, &a) in row.iter().enumerate().take(i) {
                if a != 0.0 {
                    let coef = w * h * a;
                    terms.push((Operand::Out(outs[j]), coef.v));
                    sens.push(coef.sens(base, n_grid));
                }
            }
            if c == 1.0 {
                run.b.combine_beside_grid_with_sens(to.grid, terms, sens)
            } else if c == 0.0 {
                run.b.combine_beside_grid_with_sens(from.grid, terms, sens)
            } else {
                run.b
                    .combine_at_stage_with_sens(t.v, t.sens(base, n_grid), terms, sens)
            }
        };
        outs.push(run.b.eval(input, form));
    }
    let weights = tableau.b.iter().map(|b| h * *b).collect();
    Stages { outs, weights }
}

/// alpha and sigma at a stage time given as a dual: alpha'(t) dt plus, for each parameter,
/// d alpha/dp at fixed t (and the same for sigma).
fn at_time(run: &PlanRun, t: Dual) -> (Dual, Dual) {
    let vals = run.schedule.eval(t.v);
    let slopes = TimeDerivs::of(run.schedule, &vals);
    let mut a = Dual {
        v: vals.alpha,
        d: t.d.map(|x| x * slopes.alpha),
    };
    let mut s = Dual {
        v: vals.sigma,
        d: t.d.map(|x| x * slopes.sigma),
    };
    for (k, pp) in run.schedule.param_partials(t.v).iter().enumerate() {
        if k < MAX_DUAL_PARAMS {
            a.d[TIME_SLOTS + k] += pp.alpha;
            s.d[TIME_SLOTS + k] += pp.sigma;
        }
    }
    (a, s)
}

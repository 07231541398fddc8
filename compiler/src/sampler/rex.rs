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
//! and its inverse runs the same two Psi's the other way round. For the reverse SDE
//! (`equation = "sde"`) the same coupling wraps a stochastic scheme (Euler-Maruyama or ShARK)
//! in the variables where the SDE has additive noise, dy = k dv + dW(B(v)): data form v =
//! e^{2 lambda}, w = sigma^2 / alpha, B = v; eps form v = e^-lambda, w = alpha, B = v^2 and the
//! drift 2 eps. Both Psi's of a step use the same Brownian increment (W, and H for ShARK),
//! replayed from the plan's noise, the backward one with W negated. Both are emitted here: the
//! step into the plan (with every coefficient's sensitivity to the grid times and the
//! schedule's parameters, by forward-mode duals) and its inverse into the plan's
//! [`Reversal`](crate::plan::Reversal).

use super::dual::{Dual, TIME_SLOTS};
use super::family::{check_weight, Family, PlanRun};
use super::options::Equation;
use super::tableau::{StochasticScheme, Tableau};
use super::SamplerSpec;
use crate::error::FieldError;
use crate::plan::MAX_DUAL_PARAMS;
use crate::plan::{GridSens, Instr, Operand, Pred, ReverseStep, TimeDerivs};
use crate::schedule::ScheduleValues;

/// The Rex family.
pub(crate) struct Rex;

/// The largest growth bound of the eps form's SDE gap a grid may have (see `check_grid`).
const MAX_EPS_SDE_GROWTH: f64 = 1e3;

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

    fn sde(spec: &SamplerSpec) -> bool {
        spec.effective_equation() == Equation::Sde
    }

    /// The steps' scheme: the tableau for the ODE, the stochastic scheme for the SDE.
    fn scheme(spec: &SamplerSpec) -> Result<Scheme, FieldError> {
        if Rex::sde(spec) {
            let s = StochasticScheme::resolve(spec.tableau.as_ref(), spec.order)?;
            return Ok(Scheme {
                name: s.name.into(),
                order: s.order,
                tableau: s.tableau,
                w_in_stage: s.w_in_stage,
                levy_area: s.levy_area,
                sde: true,
            });
        }
        let t = Rex::tableau(spec)?;
        Ok(Scheme {
            name: t.name.clone(),
            order: t.order,
            w_in_stage: vec![0.0; t.stages()],
            tableau: t,
            levy_area: false,
            sde: false,
        })
    }
}

/// The tableau a step runs, with the stochastic scheme's noise terms (none for the ODE).
struct Scheme {
    name: String,
    order: usize,
    tableau: Tableau,
    w_in_stage: Vec<f64>,
    levy_area: bool,
    sde: bool,
}

impl Family for Rex {
    fn reversible(&self) -> bool {
        true
    }

    fn validate(&self, spec: &SamplerSpec) -> Result<(), FieldError> {
        let scheme = Rex::scheme(spec)?;
        if scheme.order != spec.order {
            return Err(FieldError::value(
                "order",
                spec.order,
                format!(
                    "{} `{}` has order {}: set order = {} (or leave `tableau` out for the default of order {})",
                    if scheme.sde { "scheme" } else { "tableau" },
                    scheme.name, scheme.order, scheme.order, spec.order
                ),
            ));
        }
        check_weight(
            "coupling",
            spec.coupling,
            "the coupling zeta is in (0, 1] (Rex's default 0.999; the inverse divides by it)",
        )
    }

    /// The eps form's coupled SDE step: where the data are nearly noise, eps's Jacobian is
    /// up to 1/sigma, and the gap between x and x^ (of the size of the noise increment, not of
    /// the local error as for the ODE) grows by up to r + 2 (e^h - 1) a step, h the step in
    /// lambda: e^{3 h} at the noisy end. Over a VP grid from t = 1 the bound is 1.1e8 at 20
    /// steps (the sample measured off by 1e12 at 80 steps); on a short stretch (an edit from
    /// an intermediate time) it is small. The data
    /// form's factor is below 1. So the eps form's SDE is refused where the bound passes 1e3.
    fn check_grid(&self, spec: &SamplerSpec, vals: &[ScheduleValues]) -> Result<(), FieldError> {
        if !(Rex::sde(spec) && Rex::form(spec) == Pred::Eps) {
            return Ok(());
        }
        let growth: f64 = vals
            .windows(2)
            .map(|v| v[1].alpha / v[0].alpha + 2.0 * (v[1].lambda - v[0].lambda).exp_m1().abs())
            .product();
        if growth > MAX_EPS_SDE_GROWTH {
            return Err(FieldError::new(
                "form",
                format!(
                    "form = \"eps\" with equation = \"sde\" on this grid (lambda {:.2} -> {:.2}): the eps form's coupled SDE step can grow the gap between x and its companion by {growth:.1e} over the grid (bound 1e3; docs/math.md section 2.1); use form = \"data\" (the default), or a grid over a shorter stretch of lambda",
                    vals[0].lambda,
                    vals[vals.len() - 1].lambda
                ),
            ));
        }
        Ok(())
    }

    fn check_given(&self, _spec: &SamplerSpec, key: &str) -> Option<String> {
        matches!(key, "lower_order_final" | "euler_at_final" | "count_final_step").then(|| {
            format!("`{key}` lowers a multistep sampler's last orders; rex keeps its tableau on every step")
        })
    }

    fn describe(&self, spec: &SamplerSpec, out: &mut String) {
        let name = Rex::scheme(spec).map_or_else(|_| "?".into(), |t| t.name);
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
        let scheme = Rex::scheme(spec).expect("validated");
        let vars = Vars {
            form: Rex::form(spec),
            sde: scheme.sde,
        };
        let zeta = spec.coupling;
        // x^_T is its own slot (a copy of x_T), so that a pair from exact inversion can start
        // the sampler; the copy's transposition adds the companion's cotangent to x_T's.
        run.b.set_step(0);
        let (mut x, mut xh) = (run.x, run.b.companion_start());
        for n in 0..run.n {
            run.b.set_step(n);
            let base = n as isize;
            let n_grid = run.b.grid_len();
            let start = End::at(run, n, base, vars);
            let end = End::at(run, n + 1, base, vars);
            let sens = |d: Dual| d.sens(base, n_grid);
            let r = end.w / start.w;
            // The step's Brownian increment: W, and H for ShARK, shared by both Psi's.
            let noise = scheme
                .sde
                .then(|| (run.b.noise(), scheme.levy_area.then(|| run.b.noise())));
            // The forward step: Psi_h from x^_n, the new x, Psi_{-h} from it, the new x^.
            let first_at = run.b.instr_count();
            let k = psi(run, &scheme, vars, xh, &start, &end, base, noise);
            let first = run.b.instrs_from(first_at).to_vec();
            let mut terms = vec![
                (Operand::State(x), (r * zeta).v),
                (Operand::State(xh), (r * (1.0 - zeta)).v),
            ];
            let mut term_sens = vec![sens(r * zeta), sens(r * (1.0 - zeta))];
            for (o, c) in k.terms() {
                terms.push((o, (end.w * c).v));
                term_sens.push(sens(end.w * c));
            }
            let x_next = run.b.combine_at_grid_with_sens(n + 1, terms, term_sens);
            let second_at = run.b.instr_count();
            let k2 = psi(run, &scheme, vars, x_next, &end, &start, base, noise);
            let second = run.b.instrs_from(second_at).to_vec();
            // k2's coefficients are Psi_{-h}'s own (-h b_i, and -W).
            let mut terms = vec![(Operand::State(xh), r.v)];
            let mut term_sens = vec![sens(r)];
            for (o, c) in k2.terms() {
                terms.push((o, -(end.w * c).v));
                term_sens.push(sens(-(end.w * c)));
            }
            let xh_next = run.b.combine_beside_grid_with_sens(n + 1, terms, term_sens);
            // The inverse: Psi_{-h} from x_{n+1} gives x^_n, then Psi_h from it gives x_n.
            let mut inverse = second;
            let mut terms = vec![(Operand::State(xh_next), 1.0 / r.v)];
            for (o, c) in k2.terms() {
                terms.push((o, start.w.v * c.v));
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
            for (o, c) in k.terms() {
                terms.push((o, -start.w.v * c.v / zeta));
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

/// Lawson's variables of a form and equation: the weight w and time variable v with y = x / w,
/// and for the SDE the Brownian motion's clock B(v) and the drift's factor.
#[derive(Clone, Copy)]
struct Vars {
    form: Pred,
    sde: bool,
}

impl Vars {
    /// (w, v) at a time's lambda, alpha and sigma: (sigma, e^lambda) for the data form's ODE,
    /// (sigma^2 / alpha, e^{2 lambda}) for its SDE, (alpha, e^-lambda) for the eps form.
    fn weight_and_variable(self, l: Dual, a: Dual, s: Dual) -> (Dual, Dual) {
        match (self.form, self.sde) {
            (Pred::Data, false) => (s, l.exp()),
            (Pred::Data, true) => (s * (-l).exp(), (l * 2.0).exp()),
            (Pred::Eps, _) => (a, (-l).exp()),
        }
    }

    /// lambda at the time variable v.
    fn lambda_of(self, v: Dual) -> Dual {
        match (self.form, self.sde) {
            (Pred::Data, false) => v.ln(),
            (Pred::Data, true) => v.ln() * 0.5,
            (Pred::Eps, _) => -v.ln(),
        }
    }

    /// The clock whose increments are the noise's variance: v (data), v^2 (eps).
    fn clock(self, v: Dual) -> Dual {
        match self.form {
            Pred::Data => v,
            Pred::Eps => v * v,
        }
    }

    /// The drift's factor on the model output: the eps form's SDE drift is 2 eps.
    fn drift_scale(self) -> f64 {
        if self.sde && self.form == Pred::Eps {
            2.0
        } else {
            1.0
        }
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
    fn at(run: &PlanRun, i: usize, base: isize, vars: Vars) -> End {
        let (l, a, s) = run.dual_vals(i, base);
        let slot = (i as isize - base) as usize;
        let t = Dual::seeded(run.grid[i], slot, 1.0);
        let (w, v) = vars.weight_and_variable(l, a, s);
        End { grid: i, t, w, v }
    }
}

/// A Psi's evaluations with the coefficient of each in the step's sum (h b_i, times the
/// drift's factor), and its noise terms (W's).
struct Stages {
    outs: Vec<usize>,
    weights: Vec<Dual>,
    noise: Vec<(usize, Dual)>,
}

impl Stages {
    /// Every operand of Psi with its coefficient.
    fn terms(&self) -> impl Iterator<Item = (Operand, Dual)> + '_ {
        let outs = self
            .outs
            .iter()
            .zip(&self.weights)
            .map(|(o, c)| (Operand::Out(*o), *c));
        outs.chain(self.noise.iter().map(|(i, c)| (Operand::Noise(*i), *c)))
    }
}

/// Emits the stages of Psi_h(v_from, x) with h = v_to - v_from: stage i at v_from + c_i h,
/// its state (w_i / w_from) x + w_i (h sum_j a_ij k_j + [SDE] s_i W + [ShARK] H), its
/// evaluation k_i. `noise` holds the step's noise indices (W's, and H's for ShARK): W =
/// sign(h) sqrt(|B(v_to) - B(v_from)|) z_W, so the backward Psi (h < 0 for the data form)
/// gets -W from the same normals; H = sqrt(|dB| / 12) z_H is the same both ways (the space-time
/// Levy area is invariant under time reversal).
#[allow(clippy::too_many_arguments)]
fn psi(
    run: &mut PlanRun,
    scheme: &Scheme,
    vars: Vars,
    x: usize,
    from: &End,
    to: &End,
    base: isize,
    noise: Option<(usize, Option<usize>)>,
) -> Stages {
    let n_grid = run.b.grid_len();
    let tableau = &scheme.tableau;
    let h = to.v - from.v;
    let hd = h * vars.drift_scale();
    let increments = noise.map(|(iw, ih)| {
        let db = vars.clock(to.v) - vars.clock(from.v);
        let db = if db.v < 0.0 { -db } else { db };
        let w = if h.v < 0.0 { -db.sqrt() } else { db.sqrt() };
        (iw, w, ih.map(|ih| (ih, (db / 12.0).sqrt())))
    });
    let mut outs: Vec<usize> = Vec::new();
    for (i, &c) in tableau.c.iter().enumerate() {
        let row = &tableau.a[i];
        let (t, w) = if c == 0.0 {
            (from.t, from.w)
        } else if c == 1.0 {
            (to.t, to.w)
        } else {
            let v = from.v + h * c;
            let l = vars.lambda_of(v);
            let t = run.t_of_lambda_dual(l);
            let (a, s) = at_time(run, t);
            (t, vars.weight_and_variable(l, a, s).0)
        };
        let ratio = w / from.w;
        let mut terms = vec![(Operand::State(x), ratio.v)];
        let mut sens: Vec<GridSens> = vec![ratio.sens(base, n_grid)];
        for (j, &a) in row.iter().enumerate().take(i) {
            if a != 0.0 {
                let coef = w * hd * a;
                terms.push((Operand::Out(outs[j]), coef.v));
                sens.push(coef.sens(base, n_grid));
            }
        }
        if let Some((iw, wc, levy)) = increments {
            if scheme.w_in_stage[i] != 0.0 {
                let coef = w * wc * scheme.w_in_stage[i];
                terms.push((Operand::Noise(iw), coef.v));
                sens.push(coef.sens(base, n_grid));
            }
            if let Some((ih, hc)) = levy {
                let coef = w * hc;
                terms.push((Operand::Noise(ih), coef.v));
                sens.push(coef.sens(base, n_grid));
            }
        }
        let input = if c == 0.0 && terms.len() == 1 {
            x
        } else if c == 1.0 {
            run.b.combine_beside_grid_with_sens(to.grid, terms, sens)
        } else if c == 0.0 {
            run.b.combine_beside_grid_with_sens(from.grid, terms, sens)
        } else {
            run.b
                .combine_at_stage_with_sens(t.v, t.sens(base, n_grid), terms, sens)
        };
        outs.push(run.b.eval(input, vars.form));
    }
    let weights = tableau.b.iter().map(|b| hd * *b).collect();
    let noise = increments.map_or_else(Vec::new, |(iw, wc, _)| vec![(iw, wc)]);
    Stages {
        outs,
        weights,
        noise,
    }
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

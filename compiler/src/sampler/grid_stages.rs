//! Singlestep DPM-Solver with its intermediate points on the grid (diffusers'
//! `DPMSolverSinglestepScheduler`, `stages = "grid"`): the grid's steps are grouped by the
//! order list 1, 2, .., k, 1, 2, .., k, ...; a group of order k starts from the state at its
//! first grid point s, and each of its steps goes from s to the next grid point with the model
//! outputs at the group's points so far (first order, then DPM-Solver-2 from two outputs,
//! then DPM-Solver-3 from three), so that every grid point gets one model evaluation
//! (docs/math.md section 2). In the formulas u1 and u2 are the group's second and third grid
//! points, B0, B1, B2 the coefficients of the outputs at s, u1 and u2.

use super::family::PlanRun;
use super::formulas::{FormulaSet, StepVars, NOISE1};
use super::multistep::{DATA1, SDE_DATA1};
use super::{SamplerSpec, SolverType};
use crate::plan::{Operand, Pred};

const DATA_GRID2: &[(&str, &str)] = &[
    ("A", "s_t / s_s"),
    ("phi1", "expm1(-h)"),
    ("r0", "(ln(a_u1 / s_u1) - l_s) / h"),
];

const NOISE_GRID2: &[(&str, &str)] = &[
    ("A", "a_t / a_s"),
    ("phi1", "expm1(h)"),
    ("r0", "(ln(a_u1 / s_u1) - l_s) / h"),
];

/// Order 3: r0 is the newest point's (u2), r1 the older one's (u1).
const DATA_GRID3: &[(&str, &str)] = &[
    ("A", "s_t / s_s"),
    ("phi1", "expm1(-h)"),
    ("r0", "(ln(a_u2 / s_u2) - l_s) / h"),
    ("r1", "(ln(a_u1 / s_u1) - l_s) / h"),
    ("d", "r0 - r1"),
];

const NOISE_GRID3: &[(&str, &str)] = &[
    ("A", "a_t / a_s"),
    ("phi1", "expm1(h)"),
    ("r0", "(ln(a_u2 / s_u2) - l_s) / h"),
    ("r1", "(ln(a_u1 / s_u1) - l_s) / h"),
    ("d", "r0 - r1"),
];

const SDE_GRID2: &[(&str, &str)] = &[
    ("A", "s_t / s_s * exp(-h)"),
    ("q", "-a_t * expm1(-2 * h)"),
    ("r0", "(ln(a_u1 / s_u1) - l_s) / h"),
    ("C", "s_t * sqrt(-expm1(-2 * h))"),
];

static DATA2_MIDPOINT: FormulaSet = FormulaSet::new(
    "grid2_data_midpoint",
    DATA_GRID2,
    &[
        ("B0", "-a_t * phi1 + 0.5 * a_t * phi1 / r0"),
        ("B1", "-0.5 * a_t * phi1 / r0"),
    ],
    &["A", "B0", "B1"],
);

static DATA2_HEUN: FormulaSet = FormulaSet::new(
    "grid2_data_heun",
    DATA_GRID2,
    &[
        ("g", "a_t * (phi1 / h + 1)"),
        ("B0", "-a_t * phi1 - g / r0"),
        ("B1", "g / r0"),
    ],
    &["A", "B0", "B1"],
);

static NOISE2_MIDPOINT: FormulaSet = FormulaSet::new(
    "grid2_noise_midpoint",
    NOISE_GRID2,
    &[
        ("B0", "-s_t * phi1 + 0.5 * s_t * phi1 / r0"),
        ("B1", "-0.5 * s_t * phi1 / r0"),
    ],
    &["A", "B0", "B1"],
);

static NOISE2_HEUN: FormulaSet = FormulaSet::new(
    "grid2_noise_heun",
    NOISE_GRID2,
    &[
        ("g", "s_t * (phi1 / h - 1)"),
        ("B0", "-s_t * phi1 + g / r0"),
        ("B1", "-g / r0"),
    ],
    &["A", "B0", "B1"],
);

// Order 3. With D1_0 = (m_u1 - m_s) / r1 and D1_1 = (m_u2 - m_s) / r0, "midpoint" uses D1_1
// alone; "heun" uses D1 = (r0 D1_0 - r1 D1_1) / d and D2 = 2 (D1_1 - D1_0) / d.

static DATA3_MIDPOINT: FormulaSet = FormulaSet::new(
    "grid3_data_midpoint",
    DATA_GRID3,
    &[
        ("g", "a_t * (phi1 / h + 1)"),
        ("B0", "-a_t * phi1 - g / r0"),
        ("B1", "0"),
        ("B2", "g / r0"),
    ],
    &["A", "B0", "B1", "B2"],
);

static DATA3_HEUN: FormulaSet = FormulaSet::new(
    "grid3_data_heun",
    DATA_GRID3,
    &[
        ("g", "a_t * (phi1 / h + 1)"),
        ("g2", "a_t * ((phi1 + h) / (h * h) - 0.5)"),
        ("B1", "(g * r0 + 2 * g2) / (r1 * d)"),
        ("B2", "-(g * r1 + 2 * g2) / (r0 * d)"),
        ("B0", "-a_t * phi1 - B1 - B2"),
    ],
    &["A", "B0", "B1", "B2"],
);

static NOISE3_MIDPOINT: FormulaSet = FormulaSet::new(
    "grid3_noise_midpoint",
    NOISE_GRID3,
    &[
        ("g", "s_t * (phi1 / h - 1)"),
        ("B0", "-s_t * phi1 + g / r0"),
        ("B1", "0"),
        ("B2", "-g / r0"),
    ],
    &["A", "B0", "B1", "B2"],
);

static NOISE3_HEUN: FormulaSet = FormulaSet::new(
    "grid3_noise_heun",
    NOISE_GRID3,
    &[
        ("g", "s_t * (phi1 / h - 1)"),
        ("g2", "s_t * ((phi1 - h) / (h * h) - 0.5)"),
        ("B1", "(2 * g2 - g * r0) / (r1 * d)"),
        ("B2", "(g * r1 - 2 * g2) / (r0 * d)"),
        ("B0", "-s_t * phi1 - B1 - B2"),
    ],
    &["A", "B0", "B1", "B2"],
);

static SDE2_MIDPOINT: FormulaSet = FormulaSet::new(
    "grid2_sde_midpoint",
    SDE_GRID2,
    &[("B0", "q - 0.5 * q / r0"), ("B1", "0.5 * q / r0")],
    &["A", "B0", "B1", "C"],
);

static SDE2_HEUN: FormulaSet = FormulaSet::new(
    "grid2_sde_heun",
    SDE_GRID2,
    &[
        ("g", "a_t * (expm1(-2 * h) / (2 * h) + 1)"),
        ("B0", "q - g / r0"),
        ("B1", "g / r0"),
    ],
    &["A", "B0", "B1", "C"],
);

fn formulas(sde: bool, pred: Pred, order: usize, solver: SolverType) -> &'static FormulaSet {
    match (sde, pred, order, solver) {
        (true, _, 1, _) => &SDE_DATA1,
        (true, _, _, SolverType::Midpoint) => &SDE2_MIDPOINT,
        (true, _, _, SolverType::Heun) => &SDE2_HEUN,
        (false, Pred::Eps, 1, _) => &NOISE1,
        (false, Pred::Eps, 2, SolverType::Midpoint) => &NOISE2_MIDPOINT,
        (false, Pred::Eps, 2, SolverType::Heun) => &NOISE2_HEUN,
        (false, Pred::Eps, _, SolverType::Midpoint) => &NOISE3_MIDPOINT,
        (false, Pred::Eps, _, SolverType::Heun) => &NOISE3_HEUN,
        (false, Pred::Data, 1, _) => &DATA1,
        (false, Pred::Data, 2, SolverType::Midpoint) => &DATA2_MIDPOINT,
        (false, Pred::Data, 2, SolverType::Heun) => &DATA2_HEUN,
        (false, Pred::Data, _, SolverType::Midpoint) => &DATA3_MIDPOINT,
        (false, Pred::Data, _, SolverType::Heun) => &DATA3_HEUN,
    }
}

/// The order of each grid step, as diffusers' `get_order_list` writes it for `steps` steps:
/// 1, 2, .., `order` repeating; with `lower_order_final` the last group is shortened so that
/// the list ends in a short group (order 3 with steps divisible by 3: .., 1, 2, 1; order 2
/// with an even count: .., 1, 1). With `count_final_step` the list is made for one step more
/// (the step to sigma = 0, first order) and that step left off.
pub fn grid_orders(
    steps: usize,
    order: usize,
    lower_order_final: bool,
    count_final_step: bool,
) -> Vec<usize> {
    let n = steps + usize::from(count_final_step);
    let cycle = |reps: usize| (0..reps).flat_map(move |_| 1..=order);
    let mut orders: Vec<usize> = if !lower_order_final || order == 1 {
        cycle(n / order).collect()
    } else if n.is_multiple_of(order) {
        // The last full group split into a shorter one and a first-order step.
        cycle(n / order - 1)
            .chain(1..order)
            .chain(std::iter::once(1))
            .collect()
    } else {
        cycle(n / order).chain(1..=n % order).collect()
    };
    // Without lowering the count must be a multiple of the order (checked where the plan is
    // built); a short list is filled with first-order steps rather than left short.
    orders.resize(n, 1);
    if count_final_step {
        orders.truncate(steps);
    }
    orders
}

/// Emits every step of a singlestep DPM-Solver whose stages are grid points.
pub(super) fn emit(spec: &SamplerSpec, run: &mut PlanRun) {
    let pred = spec.method.form();
    let sde = run.sde;
    let orders = grid_orders(
        run.n,
        spec.order,
        spec.lower_order_final,
        spec.count_final_step,
    );
    // The group's first grid point, its state, and the outputs at its points so far.
    let (mut start, mut x_start) = (0, run.x);
    let mut outs: Vec<usize> = Vec::new();
    for (i, &order) in orders.iter().enumerate() {
        run.b.set_step(i);
        let o = run.b.eval(run.x, pred);
        if order == 1 {
            (start, x_start) = (i, run.x);
            outs.clear();
        }
        outs.push(o);
        let (u1, u2) = (start + 1, start + 2);
        let mut v = StepVars::between(&run.vals[start], &run.vals[i + 1]);
        let mut at = [None; 13];
        for k in 0..3 {
            at[k] = Some(start);
            at[3 + k] = Some(i + 1);
        }
        if order >= 2 {
            (v.a_u1, v.s_u1) = (run.vals[u1].alpha, run.vals[u1].sigma);
            (at[9], at[10]) = (Some(u1), Some(u1));
        }
        if order >= 3 {
            (v.a_u2, v.s_u2) = (run.vals[u2].alpha, run.vals[u2].sigma);
            (at[11], at[12]) = (Some(u2), Some(u2));
        }
        let set = formulas(sde, pred, order, spec.solver_type);
        let (c, partials) = set.eval_with_partials(&v);
        let sens = |name: &str| run.grid_point_sens(&partials[c.index(name)], &at);
        let mut terms = vec![(Operand::State(x_start), c.get("A"))];
        let mut term_sens = vec![sens("A")];
        for (k, b) in c.outputs().into_iter().enumerate() {
            terms.push((Operand::Out(outs[k]), b));
            term_sens.push(sens(&format!("B{k}")));
        }
        if sde {
            term_sens.push(sens("C"));
            let xi = run.b.noise();
            terms.push((Operand::Noise(xi), c.get("C")));
        }
        run.x = run.b.combine_at_grid_with_sens(i + 1, terms, term_sens);
    }
}

#[cfg(test)]
mod tests {
    use super::grid_orders;

    /// diffusers' `get_order_list`, case by case.
    #[test]
    fn order_lists_are_diffusers() {
        assert_eq!(grid_orders(6, 3, true, false), [1, 2, 3, 1, 2, 1]);
        assert_eq!(grid_orders(7, 3, true, false), [1, 2, 3, 1, 2, 3, 1]);
        assert_eq!(grid_orders(8, 3, true, false), [1, 2, 3, 1, 2, 3, 1, 2]);
        assert_eq!(grid_orders(6, 3, false, false), [1, 2, 3, 1, 2, 3]);
        assert_eq!(grid_orders(6, 2, true, false), [1, 2, 1, 2, 1, 1]);
        assert_eq!(grid_orders(5, 2, true, false), [1, 2, 1, 2, 1]);
        assert_eq!(grid_orders(4, 2, false, false), [1, 2, 1, 2]);
        // Ten steps to sigma = 0: the list of ten with its last step (made first order) left off.
        assert_eq!(grid_orders(9, 2, true, true), [1, 2, 1, 2, 1, 2, 1, 2, 1]);
        assert_eq!(grid_orders(8, 3, true, true), [1, 2, 3, 1, 2, 3, 1, 2]);
    }
}

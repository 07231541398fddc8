//! The multistep exponential integrators (docs/math.md section 2): DDIM (= DPM-Solver-1),
//! DPM-Solver and DPM-Solver++ 2M / 3M in the noise and data forms, and the SDE samplers
//! SDE-DPM-Solver-1 and SDE-DPM-Solver++ 1 / 2M, whose steps add a replayable noise.

use super::family::{Family, PlanRun};
use super::formulas::{FormulaSet, DATA_BASE, NOISE1, NOISE_BASE};
use super::{grid_stages, singlestep};
use super::{Equation, Momentum, SamplerSpec, SolverType, Stages, ThirdOrder};
use crate::error::FieldError;
use crate::plan::{GridSens, Operand, Pred};

/// The family of every closed-form multistep update.
pub(crate) struct Multistep;

static NOISE2_MIDPOINT: FormulaSet = FormulaSet::new(
    "noise2_midpoint",
    NOISE_BASE,
    &[
        ("B0", "-s_t * phi1 - 0.5 * s_t * phi1 / r0"),
        ("B1", "0.5 * s_t * phi1 / r0"),
    ],
    &["A", "B0", "B1"],
);

static NOISE2_HEUN: FormulaSet = FormulaSet::new(
    "noise2_heun",
    NOISE_BASE,
    &[
        ("g", "s_t * (phi1 / h - 1)"),
        ("B0", "-s_t * phi1 - g(h) / r0"),
        ("B1", "g(h) / r0"),
    ],
    &["A", "B0", "B1"],
);

/// The third-order terms, with `k` = 2 (Taylor) or 1 (the reference code's coefficients).
const NOISE3: &[(&str, &str)] = &[
    ("phi2", "phi1 / h - 1"),
    ("phi3", "phi2 / h - 0.5"),
    ("c", "r0 / (r0 + r1)"),
    ("P", "-s_t * phi2 * (1 + c) - k * s_t * phi3 / (r0 + r1)"),
    ("Q", "s_t * phi2 * c + k * s_t * phi3 / (r0 + r1)"),
    ("B0", "-s_t * phi1 + P / r0"),
    ("B1", "-P / r0 + Q / r1"),
    ("B2", "-Q / r1"),
];

const NOISE_BASE_K2: &[(&str, &str)] = &[
    ("A", "a_t / a_s"),
    ("phi1", "expm1(h)"),
    ("r0", "(l_s - l_p1) / h"),
    ("r1", "(l_p1 - l_p2) / h"),
    ("k", "2"),
];

const NOISE_BASE_K1: &[(&str, &str)] = &[
    ("A", "a_t / a_s"),
    ("phi1", "expm1(h)"),
    ("r0", "(l_s - l_p1) / h"),
    ("r1", "(l_p1 - l_p2) / h"),
    ("k", "1"),
];

static NOISE3_TAYLOR: FormulaSet = FormulaSet::new(
    "noise3_taylor",
    NOISE_BASE_K2,
    NOISE3,
    &["A", "B0", "B1", "B2"],
);

static NOISE3_REFERENCE: FormulaSet = FormulaSet::new(
    "noise3_reference",
    NOISE_BASE_K1,
    NOISE3,
    &["A", "B0", "B1", "B2"],
);

pub(super) static DATA1: FormulaSet =
    FormulaSet::new("data1", DATA_BASE, &[("B0", "-a_t * phi1")], &["A", "B0"]);

static DATA2_MIDPOINT: FormulaSet = FormulaSet::new(
    "data2_midpoint",
    DATA_BASE,
    &[
        ("B0", "-a_t * phi1 - 0.5 * a_t * phi1 / r0"),
        ("B1", "0.5 * a_t * phi1 / r0"),
    ],
    &["A", "B0", "B1"],
);

static DATA2_HEUN: FormulaSet = FormulaSet::new(
    "data2_heun",
    DATA_BASE,
    &[
        ("g", "a_t * (phi1 / h + 1)"),
        ("B0", "-a_t * phi1 + g / r0"),
        ("B1", "-g / r0"),
    ],
    &["A", "B0", "B1"],
);

const DATA3: &[(&str, &str)] = &[
    ("phi2", "phi1 / h + 1"),
    ("phi3", "phi2 / h - 0.5"),
    ("c", "r0 / (r0 + r1)"),
    ("P", "a_t * phi2 * (1 + c) - k * a_t * phi3 / (r0 + r1)"),
    ("Q", "-a_t * phi2 * c + k * a_t * phi3 / (r0 + r1)"),
    ("B0", "-a_t * phi1 + P / r0"),
    ("B1", "-P / r0 + Q / r1"),
    ("B2", "-Q / r1"),
];

const DATA_BASE_K2: &[(&str, &str)] = &[
    ("A", "s_t / s_s"),
    ("phi1", "expm1(-h)"),
    ("r0", "(l_s - l_p1) / h"),
    ("r1", "(l_p1 - l_p2) / h"),
    ("k", "2"),
];

const DATA_BASE_K1: &[(&str, &str)] = &[
    ("A", "s_t / s_s"),
    ("phi1", "expm1(-h)"),
    ("r0", "(l_s - l_p1) / h"),
    ("r1", "(l_p1 - l_p2) / h"),
    ("k", "1"),
];

static DATA3_TAYLOR: FormulaSet = FormulaSet::new(
    "data3_taylor",
    DATA_BASE_K2,
    DATA3,
    &["A", "B0", "B1", "B2"],
);

static DATA3_REFERENCE: FormulaSet = FormulaSet::new(
    "data3_reference",
    DATA_BASE_K1,
    DATA3,
    &["A", "B0", "B1", "B2"],
);

/// SDE-DPM-Solver-1 (noise form): C is the noise coefficient.
static SDE_NOISE1: FormulaSet = FormulaSet::new(
    "sde_noise1",
    &[],
    &[
        ("A", "a_t / a_s"),
        ("B0", "-2 * s_t * expm1(h)"),
        ("C", "s_t * sqrt(expm1(2 * h))"),
    ],
    &["A", "B0", "C"],
);

const SDE_DATA_BASE: &[(&str, &str)] = &[
    ("A", "s_t / s_s * exp(-h)"),
    ("q", "-a_t * expm1(-2 * h)"),
    ("r0", "(l_s - l_p1) / h"),
    ("C", "s_t * sqrt(-expm1(-2 * h))"),
];

/// SDE-DPM-Solver++ 1 (data form).
pub(super) static SDE_DATA1: FormulaSet = FormulaSet::new(
    "sde_data1",
    SDE_DATA_BASE,
    &[("B0", "q")],
    &["A", "B0", "C"],
);

/// SDE-DPM-Solver++ 2M (data form).
static SDE_DATA2: FormulaSet = FormulaSet::new(
    "sde_data2",
    SDE_DATA_BASE,
    &[("B0", "q + 0.5 * q / r0"), ("B1", "-0.5 * q / r0")],
    &["A", "B0", "B1", "C"],
);

/// The formula set of a step of the given order.
fn formulas(spec: &SamplerSpec, sde: bool, pred: Pred, order: usize) -> &'static FormulaSet {
    match (sde, pred, order, spec.solver_type, spec.third_order) {
        (true, Pred::Eps, _, _, _) => &SDE_NOISE1,
        (true, Pred::Data, 1, _, _) => &SDE_DATA1,
        (true, Pred::Data, _, _, _) => &SDE_DATA2,
        (false, Pred::Eps, 1, _, _) => &NOISE1,
        (false, Pred::Eps, 2, SolverType::Midpoint, _) => &NOISE2_MIDPOINT,
        (false, Pred::Eps, 2, SolverType::Heun, _) => &NOISE2_HEUN,
        (false, Pred::Eps, _, _, ThirdOrder::Taylor) => &NOISE3_TAYLOR,
        (false, Pred::Eps, _, _, ThirdOrder::Reference) => &NOISE3_REFERENCE,
        (false, Pred::Data, 1, _, _) => &DATA1,
        (false, Pred::Data, 2, SolverType::Midpoint, _) => &DATA2_MIDPOINT,
        (false, Pred::Data, 2, SolverType::Heun, _) => &DATA2_HEUN,
        (false, Pred::Data, _, _, ThirdOrder::Taylor) => &DATA3_TAYLOR,
        (false, Pred::Data, _, _, ThirdOrder::Reference) => &DATA3_REFERENCE,
    }
}

impl Family for Multistep {
    fn validate(&self, spec: &SamplerSpec) -> Result<(), FieldError> {
        if spec.stages == Stages::Grid && spec.multistep == Some(true) {
            return Err(FieldError::new(
                "stages",
                "\"grid\" makes DPM-Solver singlestep; remove `multistep = true`",
            ));
        }
        let sde = spec.effective_equation() == Equation::Sde;
        match (spec.momentum, spec.momentum_beta) {
            (None, Some(_)) => {
                return Err(FieldError::new(
                    "momentum_beta",
                    "goes with `momentum = \"hb\"`, which is not set",
                ))
            }
            (Some(Momentum::Ghvb), _) => {
                return Err(FieldError::value(
                    "momentum",
                    "\"ghvb\"",
                    format!(
                        "the generalised heavy ball combines its velocities with Adams-Bashforth's coefficients of equal steps: use method = \"plms\"; on {} use \"hb\" (heavy ball)",
                        spec.method.name()
                    ),
                ))
            }
            (Some(Momentum::Hb), None) => {
                return Err(FieldError::new(
                    "momentum_beta",
                    "momentum = \"hb\" needs momentum_beta in (0, 1] (1: no momentum; the paper's runs use values such as 0.8)",
                ))
            }
            (Some(Momentum::Hb), Some(beta)) => {
                if !(beta.is_finite() && beta > 0.0 && beta <= 1.0) {
                    return Err(FieldError::value(
                        "momentum_beta",
                        beta,
                        "a number in (0, 1] (1: no momentum)",
                    ));
                }
                if sde {
                    return Err(FieldError::new(
                        "momentum",
                        "acts on the probability-flow ODE's steps; the SDE samplers have none",
                    ));
                }
                if !spec.is_multistep() && spec.order > 1 {
                    return Err(FieldError::new(
                        "momentum",
                        "acts on a multistep sampler's combination of model outputs; this one is singlestep",
                    ));
                }
            }
            (None, None) => {}
        }
        if sde && !spec.is_multistep() && spec.order > 1 && spec.stages == Stages::Lambda {
            return Err(FieldError::new(
                "multistep",
                "the SDE samplers are multistep (or singlestep with stages = \"grid\")",
            ));
        }
        Ok(())
    }

    fn check_given(&self, spec: &SamplerSpec, key: &str) -> Option<String> {
        match key {
            "solver_type" if spec.order < 2 => Some(format!(
                "`solver_type` chooses the second-order update; order {} has none",
                spec.order
            )),
            "third_order" if !(spec.order == 3 && spec.is_multistep()) => spec.method.why_not(key),
            "stages" if spec.order < 2 => Some(
                "`stages` places a singlestep step's intermediate points; order 1 has none".into(),
            ),
            _ => None,
        }
    }

    fn describe(&self, spec: &SamplerSpec, out: &mut String) {
        // A method with both forms says which one runs; SDE-DPM-Solver++, multistep unless
        // its stages are on the grid, says so only then.
        let names_form = spec.method.has_option("multistep")
            || (spec.method.has_option("stages") && !spec.is_multistep());
        if names_form && spec.order > 1 {
            out.push_str(if spec.is_multistep() {
                " multistep"
            } else if spec.stages == Stages::Grid {
                " singlestep on the grid's points"
            } else {
                " singlestep"
            });
        }
        if let (Some(Momentum::Hb), Some(beta)) = (spec.momentum, spec.momentum_beta) {
            out.push_str(&format!(", heavy-ball momentum beta {beta}"));
        }
    }

    fn emit(&self, spec: &SamplerSpec, run: &mut PlanRun) {
        if !spec.is_multistep() && spec.order > 1 {
            return if spec.stages == Stages::Grid {
                grid_stages::emit(spec, run)
            } else {
                singlestep::emit(spec, run)
            };
        }
        let pred = spec.method.form();
        let sde = run.sde;
        // The heavy ball's velocity (a state slot: a combination of model outputs).
        let mut velocity: Option<usize> = None;
        for i in 0..run.n {
            run.b.set_step(i);
            let v = run.vars_at(i);
            let o = run.b.eval(run.x, pred);
            run.outs.push((o, i));
            let order = run.step_order(i);
            let set = formulas(spec, sde, pred, order);
            let (c, partials) = set.eval_with_partials(&v);
            let sens = |name: &str| run.step_sens(i, &partials[c.index(name)], &[]);
            let mut terms = vec![(Operand::State(run.x), c.get("A"))];
            let mut term_sens = vec![sens("A")];
            if let (Some(Momentum::Hb), Some(beta)) = (spec.momentum, spec.momentum_beta) {
                // The step is x_{i+1} = A x_i + phi D_i with phi the first-order update's
                // coefficient and D_i = sum_k (B_k / phi) out_k; the heavy ball steps with
                // v_i = (1 - beta) v_{i-1} + beta D_i instead (v_0 = D_0).
                let first = formulas(spec, sde, pred, 1);
                let (c1, p1) = first.eval_with_partials(&v);
                let phi = c1.get("B0");
                let phi_sens = run.step_sens(i, &p1[c1.index("B0")], &[]);
                let keep = if velocity.is_some() { 1.0 - beta } else { 0.0 };
                let weight = if velocity.is_some() { beta } else { 1.0 };
                let mut v_terms = Vec::new();
                let mut v_sens = Vec::new();
                if let (Some(prev), true) = (velocity, keep != 0.0) {
                    v_terms.push((Operand::State(prev), keep));
                    v_sens.push(vec![]);
                }
                for (k, b) in c.outputs().into_iter().enumerate() {
                    // d(B/phi) = dB/phi - B/phi^2 dphi, times the weight.
                    let b_sens = sens(&format!("B{k}"));
                    let ratio_sens =
                        combine_sens(&b_sens, weight / phi, &phi_sens, -weight * b / (phi * phi));
                    v_terms.push((run.newest(k), weight * b / phi));
                    v_sens.push(ratio_sens);
                }
                let vel = run.b.combine_beside_grid_with_sens(i, v_terms, v_sens);
                velocity = Some(vel);
                terms.push((Operand::State(vel), phi));
                term_sens.push(phi_sens);
                run.x = run.b.combine_at_grid_with_sens(i + 1, terms, term_sens);
                continue;
            }
            for (k, b) in c.outputs().into_iter().enumerate() {
                terms.push((run.newest(k), b));
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
}

/// a sa + b sb, the sensitivities of a linear combination of two coefficients.
fn combine_sens(sa: &GridSens, a: f64, sb: &GridSens, b: f64) -> GridSens {
    let mut out: GridSens = sa.iter().map(|(j, d)| (*j, a * d)).collect();
    for (j, d) in sb {
        match out.iter_mut().find(|(k, _)| k == j) {
            Some((_, acc)) => *acc += b * d,
            None => out.push((*j, b * d)),
        }
    }
    out
}

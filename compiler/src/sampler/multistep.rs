//! The multistep exponential integrators (docs/math.md section 2): DDIM (= DPM-Solver-1),
//! DPM-Solver and DPM-Solver++ 2M / 3M in the noise and data forms, and the SDE samplers
//! SDE-DPM-Solver-1 and SDE-DPM-Solver++ 1 / 2M, whose steps add a replayable noise.

use super::family::{Family, PlanRun};
use super::formulas::{FormulaSet, DATA_BASE, NOISE1, NOISE_BASE};
use super::{grid_stages, singlestep};
use super::{Equation, SamplerSpec, SolverType, Stages, ThirdOrder};
use crate::error::FieldError;
use crate::plan::{Operand, Pred};

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

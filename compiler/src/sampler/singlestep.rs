//! Singlestep DPM-Solver-2 and -3 (docs/math.md section 2): intermediate points at
//! r1 = 1/2 (order 2), r1 = 1/3 and r2 = 2/3 (order 3) of each step in lambda, in the noise
//! form (`dpm_solver`) or the data form (`dpm_solver_pp` with `multistep = false`).

use super::family::PlanRun;
use super::formulas::{FormulaSet, StepVars};
use super::SamplerSpec;
use crate::plan::{GridSens, Operand, Pred};

static SINGLE2_NOISE: FormulaSet = FormulaSet::new(
    "single2_noise",
    &[],
    &[
        ("r1", "0.5"),
        ("Au", "a_u1 / a_s"),
        ("Bu0", "-s_u1 * expm1(r1 * h)"),
        ("A", "a_t / a_s"),
        ("phi1", "expm1(h)"),
        ("B0", "-s_t * phi1 + s_t / (2 * r1) * phi1"),
        ("B1", "-s_t / (2 * r1) * phi1"),
    ],
    &["Au", "Bu0", "A", "B0", "B1"],
);

static SINGLE2_DATA: FormulaSet = FormulaSet::new(
    "single2_data",
    &[],
    &[
        ("r1", "0.5"),
        ("Au", "s_u1 / s_s"),
        ("Bu0", "-a_u1 * expm1(-r1 * h)"),
        ("A", "s_t / s_s"),
        ("phi1", "expm1(-h)"),
        ("B0", "-a_t * phi1 * (1 - 0.5 / r1)"),
        ("B1", "-a_t * phi1 * 0.5 / r1"),
    ],
    &["Au", "Bu0", "A", "B0", "B1"],
);

static SINGLE3_NOISE: FormulaSet = FormulaSet::new(
    "single3_noise",
    &[],
    &[
        ("r1", "1 / 3"),
        ("r2", "2 / 3"),
        ("Au1", "a_u1 / a_s"),
        ("Bu1_0", "-s_u1 * expm1(r1 * h)"),
        ("phi12", "expm1(r2 * h)"),
        ("phi22", "expm1(r2 * h) / (r2 * h) - 1"),
        ("Au2", "a_u2 / a_s"),
        ("Bu2_0", "-s_u2 * phi12 + r2 / r1 * s_u2 * phi22"),
        ("Bu2_1", "-(r2 / r1) * s_u2 * phi22"),
        ("A", "a_t / a_s"),
        ("phi1", "expm1(h)"),
        ("phi2", "phi1 / h - 1"),
        ("B0", "-s_t * phi1 + s_t * phi2 / r2"),
        ("B2", "-s_t * phi2 / r2"),
    ],
    &["Au1", "Bu1_0", "Au2", "Bu2_0", "Bu2_1", "A", "B0", "B2"],
);

static SINGLE3_DATA: FormulaSet = FormulaSet::new(
    "single3_data",
    &[],
    &[
        ("r1", "1 / 3"),
        ("r2", "2 / 3"),
        ("Au1", "s_u1 / s_s"),
        ("Bu1_0", "-a_u1 * expm1(-r1 * h)"),
        ("phi12", "expm1(-r2 * h)"),
        ("phi22", "expm1(-r2 * h) / (r2 * h) + 1"),
        ("Au2", "s_u2 / s_s"),
        ("Bu2_0", "-a_u2 * phi12 - r2 / r1 * a_u2 * phi22"),
        ("Bu2_1", "r2 / r1 * a_u2 * phi22"),
        ("A", "s_t / s_s"),
        ("phi1", "expm1(-h)"),
        ("phi2", "phi1 / h + 1"),
        ("B0", "-a_t * phi1 - a_t * phi2 / r2"),
        ("B2", "a_t * phi2 / r2"),
    ],
    &["Au1", "Bu1_0", "Au2", "Bu2_0", "Bu2_1", "A", "B0", "B2"],
);

/// Emits every step of a singlestep DPM-Solver of order 2 or 3 (stages in lambda).
pub(super) fn emit(spec: &SamplerSpec, run: &mut PlanRun) {
    let pred = spec.method.form();
    for i in 0..run.n {
        run.b.set_step(i);
        let v = run.vars_at(i);
        let x = run.x;
        let o_s = run.b.eval(x, pred);
        if spec.order == 2 {
            let (tu, u1) = run.stage(i, 0.5);
            let set = if pred == Pred::Eps {
                &SINGLE2_NOISE
            } else {
                &SINGLE2_DATA
            };
            let vars = StepVars {
                a_u1: u1.alpha,
                s_u1: u1.sigma,
                ..v
            };
            let (c, partials) = set.eval_with_partials(&vars);
            let stages = [u1];
            let sens = |name: &str| run.step_sens(i, &partials[c.index(name)], &stages);
            let (s_au, s_bu0, s_a, s_b0, s_b1) =
                (sens("Au"), sens("Bu0"), sens("A"), sens("B0"), sens("B1"));
            let u = run.b.combine_at_stage_with_sens(
                tu,
                stages[0].time_sens.clone(),
                vec![
                    (Operand::State(x), c.get("Au")),
                    (Operand::Out(o_s), c.get("Bu0")),
                ],
                vec![s_au, s_bu0],
            );
            let o_u = run.b.eval(u, pred);
            run.x = run.b.combine_at_grid_with_sens(
                i + 1,
                vec![
                    (Operand::State(x), c.get("A")),
                    (Operand::Out(o_s), c.get("B0")),
                    (Operand::Out(o_u), c.get("B1")),
                ],
                vec![s_a, s_b0, s_b1],
            );
        } else {
            let (tu1, u1) = run.stage(i, 1.0 / 3.0);
            let (tu2, u2) = run.stage(i, 2.0 / 3.0);
            let set = if pred == Pred::Eps {
                &SINGLE3_NOISE
            } else {
                &SINGLE3_DATA
            };
            let vars = StepVars {
                a_u1: u1.alpha,
                s_u1: u1.sigma,
                a_u2: u2.alpha,
                s_u2: u2.sigma,
                ..v
            };
            let (c, partials) = set.eval_with_partials(&vars);
            let stages = [u1, u2];
            let sens = |name: &str| run.step_sens(i, &partials[c.index(name)], &stages);
            let names = ["Au1", "Bu1_0", "Au2", "Bu2_0", "Bu2_1", "A", "B0", "B2"];
            let mut s: Vec<GridSens> = names.iter().map(|n| sens(n)).collect();
            let mut take = |k: usize| std::mem::take(&mut s[k]);
            let u1_state = run.b.combine_at_stage_with_sens(
                tu1,
                stages[0].time_sens.clone(),
                vec![
                    (Operand::State(x), c.get("Au1")),
                    (Operand::Out(o_s), c.get("Bu1_0")),
                ],
                vec![take(0), take(1)],
            );
            let o_u1 = run.b.eval(u1_state, pred);
            let u2_state = run.b.combine_at_stage_with_sens(
                tu2,
                stages[1].time_sens.clone(),
                vec![
                    (Operand::State(x), c.get("Au2")),
                    (Operand::Out(o_s), c.get("Bu2_0")),
                    (Operand::Out(o_u1), c.get("Bu2_1")),
                ],
                vec![take(2), take(3), take(4)],
            );
            let o_u2 = run.b.eval(u2_state, pred);
            run.x = run.b.combine_at_grid_with_sens(
                i + 1,
                vec![
                    (Operand::State(x), c.get("A")),
                    (Operand::Out(o_s), c.get("B0")),
                    (Operand::Out(o_u2), c.get("B2")),
                ],
                vec![take(5), take(6), take(7)],
            );
        }
    }
}

//! Flow matching (the `flow` schedule, alpha = 1 - s and sigma = s with s = shift t /
//! (1 + (shift - 1) t), and the velocity prediction eps - x0): the schedule's closed forms, the
//! samplers starting at pure noise (t = 1, alpha = 0, lambda = -inf) converging to the exact
//! flow map of Gaussian data at their orders, and the exact gradients there (x_T, the
//! conditioning, the model's parameter, the grid times and the shift) against the full tape
//! and finite differences, in f64.

use adeis_compiler::grid::GridKind;
use adeis_compiler::{
    build_plan, build_plan_on, DiscreteStates, Method, Prediction, SamplerSpec, Schedule,
    ScheduleDef, Wrt,
};
use adeis_runtime::adjoint::discrete::discrete_adjoint;
use adeis_runtime::analytic::{GaussianModel, PredictingGaussian};
use adeis_runtime::noise::normals;
use adeis_runtime::tape::tape_gradient;
use adeis_runtime::{from_f64, sample, to_f64, Input, ModelFn, NoiseSource, State};
use dfdx::prelude::*;

mod common;
use common::{central4, fitted_order, max_rel_err};

type Dev = Cpu;

fn flow(shift: f64) -> Schedule {
    ScheduleDef::flow(shift).unwrap().compile().unwrap()
}

fn gaussian(prediction: Prediction) -> PredictingGaussian {
    GaussianModel {
        mu: 0.4,
        s2: 0.3,
        dim: 3,
    }
    .predicting(prediction)
}

fn tensor(seed: u64, batch: usize, dim: usize) -> State<f64, Dev> {
    from_f64(&Dev::default(), &normals(seed, 0, batch * dim), batch, dim)
}

fn sampler(method: Method, order: usize, steps: usize) -> SamplerSpec {
    let mut s = SamplerSpec::new(method, order, steps);
    s.lower_order_final = false;
    s.grid = GridKind::TimeUniform;
    s.prediction = Prediction::Flow;
    s
}

#[test]
fn the_flow_schedule_is_its_closed_form_and_pure_noise_at_one() {
    for shift in [1.0, 3.0, 0.5] {
        let s = flow(shift);
        for t in [1e-3, 0.1, 0.5, 0.9, 0.999] {
            let v = s.eval(t);
            let sig = shift * t / (1.0 + (shift - 1.0) * t);
            let dsig = shift / (1.0 + (shift - 1.0) * t).powi(2);
            assert!((v.sigma - sig).abs() < 1e-15, "sigma({t})");
            assert!((v.alpha - (1.0 - sig)).abs() < 1e-15, "alpha({t})");
            assert!((v.dsigma_dt - dsig).abs() < 1e-13 * dsig, "dsigma/dt({t})");
            assert!((v.dalpha_dt + dsig).abs() < 1e-13 * dsig, "dalpha/dt({t})");
            let lambda = ((1.0 - sig) / sig).ln();
            assert!((v.lambda - lambda).abs() < 1e-13 * lambda.abs().max(1.0));
            assert!(
                (s.t_of_lambda(v.lambda) - t).abs() < 1e-13,
                "t(lambda({t}))"
            );
            // The network is told 1000 s, diffusers' flow timestep.
            assert!((s.time_info(t).model_t - 1000.0 * sig).abs() < 1e-11);
        }
        let end = s.eval(1.0);
        assert_eq!(end.alpha, 0.0);
        assert_eq!(end.sigma, 1.0);
        assert_eq!(end.lambda, f64::NEG_INFINITY);
        assert!(end.is_pure_noise());
        assert!(
            (end.dalpha_dt + 1.0 / shift).abs() < 1e-15,
            "{}",
            end.dalpha_dt
        );
        assert!(end.non_finite().is_none());
    }
    // Outside (0, 1], and a shift that is no shift, are refused by name.
    let e = ScheduleDef::flow_on(1.0, [0.0, 1.0], 1000.0).unwrap_err();
    assert!(e.to_string().contains("(0, 1]"), "{e}");
    let e = ScheduleDef::flow(0.0).unwrap_err();
    assert!(e.to_string().contains("shift"), "{e}");
}

/// The data forms start at t = 1 and converge to the exact flow map x0 = mu + sqrt(s2) x_T at
/// their orders; the noise forms, which divide by alpha there, are refused with a message
/// that names the data form.
#[test]
fn data_form_samplers_start_at_pure_noise_and_converge_at_their_order() {
    let s = flow(3.0);
    let g = gaussian(Prediction::Flow);
    let x = tensor(1, 2, 3);
    let exact: Vec<f64> = to_f64(&x)
        .iter()
        .map(|v| g.gaussian.mu + g.gaussian.s2.sqrt() * v)
        .collect();
    // The exact map to t_min (not 0): the Gaussian's marginal scaled, as common's helper.
    let tf = s.time_info(s.t_min());
    let k = (tf.alpha * tf.alpha * g.gaussian.s2 + tf.sigma * tf.sigma).sqrt();
    let exact_tmin: Vec<f64> = to_f64(&x)
        .iter()
        .map(|v| tf.alpha * g.gaussian.mu + k * v)
        .collect();
    assert!(max_rel_err(&exact_tmin, &exact) < 1e-2);
    for (method, order) in [
        (Method::DpmSolverPp, 1),
        (Method::DpmSolverPp, 2),
        (Method::DpmSolverPp, 3),
        (Method::Unipc, 2),
    ] {
        // Time-uniform grids take large lambda steps near t_min: the asymptotic order shows
        // from about 128 steps.
        let ns = [128, 256, 512];
        let errs: Vec<f64> = ns
            .iter()
            .map(|&n| {
                let sp = sampler(method, order, n);
                let plan = build_plan(&s, &sp).unwrap_or_else(|e| panic!("{method:?}: {e}"));
                let out = sample(
                    &plan,
                    &ModelFn::new(&g),
                    &Input::new(&x, None, &NoiseSource::Seeded(0)),
                    false,
                )
                .unwrap_or_else(|e| panic!("{method:?} {order}: {e}"));
                max_rel_err(&to_f64(&out.x), &exact_tmin)
            })
            .collect();
        let p = fitted_order(&ns, &errs);
        assert!(
            p > order as f64 - 0.3,
            "{method:?} order {order}: observed {p:.2} ({errs:?})"
        );
    }
}

#[test]
fn a_noise_form_step_from_pure_noise_is_refused_clearly() {
    let s = flow(1.0);
    let g = gaussian(Prediction::Flow);
    let x = tensor(2, 2, 3);
    let sp = sampler(Method::Ddim, 1, 8);
    let outcome = build_plan(&s, &sp)
        .map_err(|e| e.to_string())
        .and_then(|plan| {
            sample(
                &plan,
                &ModelFn::new(&g),
                &Input::new(&x, None, &NoiseSource::Seeded(0)),
                false,
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        });
    let e = outcome.expect_err("DDIM's noise form divides by alpha = 0 at t = 1");
    assert!(
        e.contains("alpha = 0") && e.contains("dpm_solver_pp"),
        "{e}"
    );
    // Every noise-form sampler, singlestep and multistep, is refused when its plan is built.
    for (method, order) in [
        (Method::DpmSolver, 2),
        (Method::DpmSolver, 3),
        (Method::Deis, 2),
        (Method::Plms, 2),
    ] {
        let e = build_plan(&s, &sampler(method, order, 8))
            .expect_err("a noise form from pure noise")
            .to_string();
        assert!(e.contains("alpha = 0"), "{method:?} {order}: {e}");
    }
    // AdjointDEIS integrates in lambda up to t = 1, where it is -inf: refused, naming the
    // discrete adjoint.
    let plan = build_plan(&s, &sampler(Method::DpmSolverPp, 2, 8)).unwrap();
    let e = adeis_compiler::AdjointDeisPlan::new(
        &s,
        &plan,
        adeis_compiler::AdjointOrder::One,
        None,
        false,
    )
    .expect_err("AdjointDEIS from pure noise")
    .to_string();
    assert!(e.contains("discrete"), "{e}");
    // An eps model cannot give x0 at pure noise: a clear error, not NaN.
    let eps = gaussian(Prediction::Eps);
    let plan = build_plan(&s, &sampler(Method::DpmSolverPp, 2, 8)).unwrap();
    let e = sample(
        &plan,
        &ModelFn::new(&eps),
        &Input::new(&x, None, &NoiseSource::Seeded(0)),
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("alpha = 0"), "{e}");
}

const WRT: Wrt = Wrt {
    x_t: true,
    cond: true,
    params: true,
    times: true,
    schedule: true,
};

/// The discrete adjoint equals the full tape (x_T, the conditioning, s2, every grid time and
/// the shift) from pure noise, and dL/dt_i and dL/dshift equal finite differences.
#[test]
fn gradients_from_pure_noise_equal_the_tape_and_finite_differences() {
    let shift = 2.0;
    let s = flow(shift);
    let g = gaussian(Prediction::Flow);
    let x = tensor(3, 2, 3);
    let z = tensor(4, 2, 3);
    let a0 = tensor(5, 2, 3);
    let av = to_f64(&a0);
    let noise = NoiseSource::Seeded(0);
    let input = Input::new(&x, Some(&z), &noise);
    for (method, order) in [
        (Method::DpmSolverPp, 1),
        (Method::DpmSolverPp, 2),
        (Method::DpmSolverPp, 3),
        (Method::Unipc, 2),
    ] {
        let mut sp = sampler(method, order, 6);
        sp.denoise_to_zero = true;
        let plan = build_plan(&s, &sp).unwrap();
        assert_eq!(plan.grid[0], 1.0);
        let f = ModelFn::new(&g);
        let a = a0.clone();
        let adj = discrete_adjoint(&plan, &f, &input, WRT, DiscreteStates::Record, move |_| {
            Ok(a)
        })
        .unwrap_or_else(|e| panic!("{method:?} {order}: {e}"));
        let a = a0.clone();
        // The Gaussian's s2 is not on dfdx's tape: the tape gives the rest, and dL/ds2 is
        // checked by differences below.
        let on_tape = Wrt {
            params: false,
            ..WRT
        };
        let tape = tape_gradient(&plan, &g, &input, on_tape, move |_| Ok(a)).unwrap();
        let name = format!("{method:?} {order}");
        let close = |what: &str, x: &[f64], y: &[f64]| {
            let e = max_rel_err(x, y);
            assert!(e < 1e-10, "{name} {what}: {e:e}\n{x:?}\n{y:?}");
        };
        close("x_T", &to_f64(&adj.dx_t), &to_f64(&tape.dx_t));
        close(
            "cond",
            &to_f64(adj.dz.as_ref().unwrap()),
            &to_f64(tape.dz.as_ref().unwrap()),
        );
        let ds2 = adj.dtheta.unwrap().s2;
        let dt = adj.dtimes.clone().unwrap();
        assert!(dt.iter().all(|v| v.is_finite()), "{name}: {dt:?}");
        // The pure-noise start is held fixed.
        assert_eq!(dt[0], 0.0, "{name}");
        assert!(plan.held_fixed(0) && !plan.held_fixed(1));
        close("times", &dt, &tape.dtimes.unwrap());
        let ds = adj.dschedule.clone().unwrap();
        assert!(ds[0].1.is_finite(), "{name}: {ds:?}");
        assert_eq!(ds[0].0, "shift");
        close("shift", &[ds[0].1], &[tape.dschedule.unwrap()[0].1]);
        // dL/dt_i by differences (the first, t = 1, cannot move up: one-sided is not
        // compared; the last, with denoise_to_zero, moves the final evaluation).
        let loss = |grid: &[f64]| -> f64 {
            let plan = build_plan_on(&s, &sp, grid.to_vec());
            let out = sample(&plan, &f, &input, false).unwrap();
            to_f64(&out.x).iter().zip(&av).map(|(x, a)| x * a).sum()
        };
        for (i, &dti) in dt.iter().enumerate().skip(1) {
            // A step small against the point's distance from 0 and from its neighbours.
            let h = 1e-3 * plan.grid[i].min(plan.grid[i - 1] - plan.grid[i]);
            let fd = central4(loss, &plan.grid, i, h);
            assert!(
                (dti - fd).abs() < 1e-7 * fd.abs().max(1.0),
                "{name} dL/dt_{i}: {dti} vs {fd}"
            );
        }
        // dL/dshift by differences at the same grid times.
        let at_shift = |v: f64| -> f64 {
            let s = flow(v);
            let plan = build_plan_on(&s, &sp, plan.grid.clone());
            let out = sample(&plan, &f, &input, false).unwrap();
            to_f64(&out.x).iter().zip(&av).map(|(x, a)| x * a).sum()
        };
        let h = 1e-4;
        let fd = (8.0 * (at_shift(shift + h) - at_shift(shift - h))
            - (at_shift(shift + 2.0 * h) - at_shift(shift - 2.0 * h)))
            / (12.0 * h);
        assert!(
            (ds[0].1 - fd).abs() < 1e-7 * fd.abs().max(1.0),
            "{name} dL/dshift: {} vs {fd}",
            ds[0].1
        );
        let at_s2 = |v: f64| -> f64 {
            let mut m = g.clone();
            m.gaussian.s2 = v;
            let out = sample(&plan, &ModelFn::new(&m), &input, false).unwrap();
            to_f64(&out.x).iter().zip(&av).map(|(x, a)| x * a).sum()
        };
        let s2 = g.gaussian.s2;
        let fd = (8.0 * (at_s2(s2 + h) - at_s2(s2 - h))
            - (at_s2(s2 + 2.0 * h) - at_s2(s2 - 2.0 * h)))
            / (12.0 * h);
        assert!(
            (ds2 - fd).abs() < 1e-7 * fd.abs().max(1.0),
            "{name} dL/ds2: {ds2} vs {fd}"
        );
    }
}

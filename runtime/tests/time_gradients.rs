//! The gradient with respect to the sampling grid (wrt "times"): dL/dt_i from the discrete
//! adjoint against central finite differences of the sampled output, for every multistep
//! and singlestep sampler (ODE and SDE, noise and data forms), closed-form and network models, every model
//! parameterisation, guidance, a terminal denoising step, a discrete schedule, and
//! checkpointing against recording.

use adeis_compiler::grid::GridKind;
use adeis_compiler::sampler::{SolverType, Stages, ThirdOrder, UnipcVariant};
use adeis_compiler::schedule::{AlphaFormula, DiscreteBetas, SigmaFormula};
use adeis_compiler::{
    build_plan, build_plan_on, DiscreteStates, Equation, Method, Prediction, SamplerSpec, Schedule,
    ScheduleDef, Wrt,
};
use adeis_runtime::adjoint::discrete::discrete_adjoint;
use adeis_runtime::analytic::{GaussianModel, GmmModel};
use adeis_runtime::mlp::{MlpDenoiser, TimeFeatures};
use adeis_runtime::noise::normals;
use adeis_runtime::{
    from_f64, sample, to_f64, Denoiser, Guidance, Input, ModelFn, NoiseSource, RuntimeError, State,
    Threshold,
};
use dfdx::prelude::*;

mod common;
use common::{central, max_rel_err, spec, vp};

type Dev = Cpu;

const WRT_TIMES: Wrt = Wrt {
    x_t: true,
    cond: false,
    params: false,
    times: true,
    schedule: false,
};

fn tensor(seed: u64, batch: usize, dim: usize) -> State<f64, Dev> {
    from_f64(&Dev::default(), &normals(seed, 0, batch * dim), batch, dim)
}

/// L = sum(a0 x0) on the plan of `sp` run on `grid`.
fn loss_on<M: Denoiser<f64, Dev>>(
    s: &Schedule,
    sp: &SamplerSpec,
    f: &ModelFn<f64, Dev, M>,
    input: &Input<f64, Dev>,
    a0: &[f64],
    grid: &[f64],
) -> f64 {
    let plan = build_plan_on(s, sp, grid.to_vec());
    let out = sample(&plan, f, input, false).unwrap();
    to_f64(&out.x).iter().zip(a0).map(|(x, a)| x * a).sum()
}

/// dL/dt_i by the discrete adjoint, and by central differences of the sampled output.
fn adjoint_and_fd<M: Denoiser<f64, Dev>>(
    s: &Schedule,
    sp: &SamplerSpec,
    f: &ModelFn<f64, Dev, M>,
    input: &Input<f64, Dev>,
    states: DiscreteStates,
) -> (Vec<f64>, Vec<f64>) {
    let plan = build_plan(s, sp).unwrap();
    let a0 = tensor(99, input.x_t.batch(), input.x_t.width());
    let av = to_f64(&a0);
    let g = discrete_adjoint(&plan, f, input, WRT_TIMES, states, move |_| Ok(a0)).unwrap();
    let dt = g.dtimes.expect("wrt times");
    assert_eq!(dt.len(), plan.grid.len());
    let fd: Vec<f64> = (0..plan.grid.len())
        .map(|i| {
            // Steps shrink towards t_min: the difference step is a fraction of the neighbours'
            // spacing, so the perturbed grid stays ordered.
            let gap = (0..plan.grid.len() - 1)
                .map(|k| plan.grid[k] - plan.grid[k + 1])
                .fold(f64::INFINITY, f64::min);
            let h = 1e-4 * gap;
            // Fourth-order central differences (Richardson on two steps): the grid's
            // curvature near t_min makes the plain difference's h^2 term visible at 1e-7.
            let l = |g: &[f64]| loss_on(s, sp, f, input, &av, g);
            (4.0 * central(l, &plan.grid, i, h) - central(l, &plan.grid, i, 2.0 * h)) / 3.0
        })
        .collect();
    (dt, fd)
}

fn every_sampler() -> Vec<(String, SamplerSpec)> {
    let mut out = vec![];
    let mut add = |name: &str, sp: SamplerSpec| out.push((name.to_string(), sp));
    add("ddim", spec(Method::Ddim, 1, 6));
    for order in 1..=3 {
        add(
            &format!("dpm_solver_pp {order}M"),
            spec(Method::DpmSolverPp, order, 6),
        );
        let mut sp = spec(Method::DpmSolver, order, 6);
        sp.multistep = Some(true);
        add(&format!("dpm_solver {order}M"), sp);
    }
    let mut heun = spec(Method::DpmSolverPp, 2, 6);
    heun.solver_type = SolverType::Heun;
    add("dpm_solver_pp 2M heun", heun);
    let mut heun_eps = spec(Method::DpmSolver, 2, 6);
    heun_eps.multistep = Some(true);
    heun_eps.solver_type = SolverType::Heun;
    add("dpm_solver 2M heun", heun_eps);
    let mut reference = spec(Method::DpmSolverPp, 3, 6);
    reference.third_order = ThirdOrder::Reference;
    add("dpm_solver_pp 3M reference", reference);
    let mut lof = SamplerSpec::new(Method::DpmSolverPp, 3, 6);
    lof.denoise_to_zero = true;
    add("dpm_solver_pp 3M lower_order_final denoise_to_zero", lof);
    for order in 2..=3 {
        add(
            &format!("dpm_solver-{order} singlestep"),
            spec(Method::DpmSolver, order, 4),
        );
        let mut data = spec(Method::DpmSolverPp, order, 4);
        data.multistep = Some(false);
        add(&format!("dpm_solver_pp-{order} singlestep"), data);
    }
    // diffusers' DPMSolverSinglestepScheduler: the stages on the grid, orders 1, 2(, 3) in
    // groups (7 steps: 1 2 3 1 2 3 1 at order 3; 1 2 1 2 1 2 1 at order 2).
    for order in 2..=3 {
        for (method, solver) in [
            (Method::DpmSolverPp, SolverType::Midpoint),
            (Method::DpmSolverPp, SolverType::Heun),
            (Method::DpmSolver, SolverType::Midpoint),
            (Method::DpmSolver, SolverType::Heun),
        ] {
            let mut g = spec(method, order, 7);
            g.stages = Stages::Grid;
            g.lower_order_final = true;
            g.solver_type = solver;
            add(
                &format!("{} {order} {solver:?} stages grid", method.name()),
                g,
            );
        }
    }
    let mut sde_grid = spec(Method::SdeDpmSolverPp, 2, 6);
    sde_grid.stages = Stages::Grid;
    add("sde_dpm_solver_pp 2 stages grid", sde_grid);
    let mut skip = spec(Method::Unipc, 2, 6);
    skip.disable_corrector = vec![0, 3];
    add("unipc 2 disable_corrector [0, 3]", skip);
    for order in 1..=3 {
        add(&format!("deis {order}"), spec(Method::Deis, order, 6));
        for variant in [UnipcVariant::Bh1, UnipcVariant::Bh2] {
            for corrector in [true, false] {
                let mut u = spec(Method::Unipc, order, 6);
                u.variant = variant;
                u.corrector = corrector;
                add(
                    &format!("unipc {order} {variant:?} corrector {corrector}"),
                    u,
                );
            }
        }
    }
    add("sde_dpm_solver", spec(Method::SdeDpmSolver, 1, 6));
    add("sde_dpm_solver_pp 1", spec(Method::SdeDpmSolverPp, 1, 6));
    add("sde_dpm_solver_pp 2M", spec(Method::SdeDpmSolverPp, 2, 6));
    let mut ddim_sde = spec(Method::Ddim, 1, 6);
    ddim_sde.equation = Some(Equation::Sde);
    add("ddim sde", ddim_sde);
    out
}

#[test]
fn time_gradients_match_finite_differences_for_every_sampler() {
    let s = vp();
    let gmm = GmmModel {
        weights: vec![0.4, 0.6],
        means: vec![vec![1.0, -0.5, 0.3], vec![-0.8, 0.7, -0.2]],
        variances: vec![0.1, 0.3],
    };
    let dev = Dev::default();
    type Net = (Linear<11, 16>, Tanh, Linear<16, 3>);
    let nets: Vec<(Prediction, MlpDenoiser<_, 11, 3>)> =
        [Prediction::Eps, Prediction::X0, Prediction::V]
            .into_iter()
            .map(|p| {
                let net = dev.build_module::<Net, f64>();
                (
                    p,
                    MlpDenoiser::new(net, 3, 0, TimeFeatures::new(4, 20.0), p),
                )
            })
            .collect();
    let x_t = tensor(1, 2, 3);
    let noise = NoiseSource::Seeded(8);
    let input = Input::new(&x_t, None, &noise);
    let mut failures = vec![];
    for (name, sp) in every_sampler() {
        let mut check = |model: &str, (dt, fd): (Vec<f64>, Vec<f64>)| {
            let err = max_rel_err(&dt, &fd);
            eprintln!("{name} / {model}: max rel err {err:.2e}");
            if err.is_nan() || err >= 1e-6 {
                failures.push(format!(
                    "{name} / {model}: {err:.2e}\n  adjoint {dt:?}\n  fd      {fd:?}"
                ));
            }
        };
        check(
            "gmm",
            adjoint_and_fd(&s, &sp, &ModelFn::new(&gmm), &input, DiscreteStates::Record),
        );
        for (p, net) in &nets {
            check(
                &format!("mlp {p:?}"),
                adjoint_and_fd(&s, &sp, &ModelFn::new(net), &input, DiscreteStates::Record),
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const WRT_SCHEDULE: Wrt = Wrt {
    x_t: false,
    cond: false,
    params: false,
    times: false,
    schedule: true,
};

/// dL/dp for every parameter of `def` by the discrete adjoint, and by fourth-order central
/// differences of the whole pipeline (schedule recompiled, grid remade, plan rebuilt).
fn schedule_adjoint_and_fd<M: Denoiser<f64, Dev>>(
    def: &ScheduleDef,
    sp: &SamplerSpec,
    f: &ModelFn<f64, Dev, M>,
    input: &Input<f64, Dev>,
) -> (Vec<f64>, Vec<f64>) {
    let s = def.compile().unwrap();
    let plan = build_plan(&s, sp).unwrap();
    let a0 = tensor(98, input.x_t.batch(), input.x_t.width());
    let av = to_f64(&a0);
    let g = discrete_adjoint(
        &plan,
        f,
        input,
        WRT_SCHEDULE,
        DiscreteStates::Record,
        move |_| Ok(a0),
    )
    .unwrap();
    let ds = g.dschedule.expect("wrt schedule");
    let names = def.param_names();
    assert_eq!(ds.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), names);
    let base = def.default_params();
    let fd = names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let loss = |p: &[f64]| {
                let s = def.compile_with(&[(name.as_str(), p[k])]).unwrap();
                let plan = build_plan(&s, sp).unwrap();
                let out = sample(&plan, f, input, false).unwrap();
                to_f64(&out.x)
                    .iter()
                    .zip(&av)
                    .map(|(x, a)| x * a)
                    .sum::<f64>()
            };
            let h = 1e-4 * base[k].abs().max(1e-2);
            (4.0 * central(loss, &base, k, h) - central(loss, &base, k, 2.0 * h)) / 3.0
        })
        .collect();
    (ds.into_iter().map(|(_, v)| v).collect(), fd)
}

#[test]
fn schedule_gradients_match_finite_differences_for_every_sampler_and_grid() {
    let gmm = GmmModel {
        weights: vec![0.4, 0.6],
        means: vec![vec![1.0, -0.5, 0.3], vec![-0.8, 0.7, -0.2]],
        variances: vec![0.1, 0.3],
    };
    let dev = Dev::default();
    type Net = (Linear<11, 16>, Tanh, Linear<16, 3>);
    let net = MlpDenoiser::<_, 11, 3>::new(
        dev.build_module::<Net, f64>(),
        3,
        0,
        TimeFeatures::new(4, 20.0),
        Prediction::V,
    );
    let x_t = tensor(1, 2, 3);
    let noise = NoiseSource::Seeded(8);
    let input = Input::new(&x_t, None, &noise);
    let vp = ScheduleDef::vp_linear(0.1, 20.0).unwrap();
    let mut failures = vec![];
    let mut check = |name: String, (ds, fd): (Vec<f64>, Vec<f64>)| {
        let err = max_rel_err(&ds, &fd);
        eprintln!("{name}: max rel err {err:.2e} {ds:?}");
        if err.is_nan() || err >= 1e-6 {
            failures.push(format!(
                "{name}: {err:.2e}\n  adjoint {ds:?}\n  fd      {fd:?}"
            ));
        }
    };
    // Every sampler on the logsnr grid (which moves with beta_min and beta_max).
    for (name, sp) in every_sampler() {
        check(
            format!("vp_linear / {name} / gmm"),
            schedule_adjoint_and_fd(&vp, &sp, &ModelFn::new(&gmm), &input),
        );
        check(
            format!("vp_linear / {name} / mlp"),
            schedule_adjoint_and_fd(&vp, &sp, &ModelFn::new(&net), &input),
        );
    }
    // Each kind of grid, and given times (which do not move).
    for grid in [
        GridKind::TimeUniform,
        GridKind::TimeQuadratic,
        GridKind::Karras,
    ] {
        let label = format!("vp_linear / {grid} grid");
        let mut sp = spec(Method::DpmSolverPp, 2, 6);
        sp.grid = grid;
        check(
            label,
            schedule_adjoint_and_fd(&vp, &sp, &ModelFn::new(&gmm), &input),
        );
    }
    let mut given = spec(Method::Unipc, 2, 4);
    given.times = Some(vec![0.95, 0.6, 0.3, 0.1, 0.01]);
    check(
        "vp_linear / given times".into(),
        schedule_adjoint_and_fd(&vp, &given, &ModelFn::new(&gmm), &input),
    );
    // The other families with parameters, and a custom schedule whose inverse is Newton's.
    let custom = ScheduleDef::from_formulas(
        "custom",
        &[("b1", 0.3), ("b3", 6.0)],
        vec![],
        AlphaFormula::LogAlpha("-(b1 * t + b3 * t^3)".into()),
        SigmaFormula::LogSigma("0.5 * ln(-expm1(-2 * (b1 * t + b3 * t^3)))".into()),
        [1e-3, 1.0],
        None,
    )
    .unwrap();
    for def in [
        ScheduleDef::vp_cosine(0.008).unwrap(),
        ScheduleDef::ve(0.02, 10.0).unwrap(),
        custom,
    ] {
        assert!(!def.param_names().is_empty(), "{}", def.name());
        for sp in [
            spec(Method::DpmSolverPp, 3, 5),
            spec(Method::Deis, 2, 5),
            spec(Method::DpmSolver, 2, 3),
        ] {
            check(
                format!("{} / {}", def.name(), sp.method.name()),
                schedule_adjoint_and_fd(&def, &sp, &ModelFn::new(&gmm), &input),
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn schedules_without_parameters_say_so() {
    let betas = DiscreteBetas::Linear {
        start: 1e-4,
        end: 0.02,
        n: 1000,
    };
    let gmm = GmmModel {
        weights: vec![1.0],
        means: vec![vec![0.5, -0.5]],
        variances: vec![0.2],
    };
    let x_t = tensor(1, 1, 2);
    let noise = NoiseSource::Seeded(1);
    for def in [
        ScheduleDef::discrete(&betas, None).unwrap(),
        ScheduleDef::edm(0.002, 80.0).unwrap(),
    ] {
        let s = def.compile().unwrap();
        let plan = build_plan(&s, &spec(Method::Ddim, 1, 5)).unwrap();
        let err = discrete_adjoint(
            &plan,
            &ModelFn::new(&gmm),
            &Input::new(&x_t, None, &noise),
            WRT_SCHEDULE,
            DiscreteStates::Record,
            |x: &State<f64, Dev>| Ok::<_, RuntimeError>(x.clone()),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("no continuous parameters"),
            "{}: {err}",
            def.name()
        );
    }
}

#[test]
fn time_gradients_with_guidance_on_a_discrete_schedule_and_checkpointed() {
    // DDPM's linear betas: log alpha is piecewise linear between the train times k/1000, so
    // the grid sits between them (a difference across a knot would see two slopes).
    let betas = DiscreteBetas::Linear {
        start: 1e-4,
        end: 0.02,
        n: 1000,
    };
    let s = ScheduleDef::discrete(&betas, None)
        .unwrap()
        .compile()
        .unwrap();
    let dev = Dev::default();
    type Net = (Linear<13, 16>, Tanh, Linear<16, 3>);
    let net = dev.build_module::<Net, f64>();
    // The network's time is the train index (0 to 999): frequencies from 1 down to 1e-3 keep
    // its features smooth on the differences' scale.
    let mlp = MlpDenoiser::<_, 13, 3>::new(net, 3, 2, TimeFeatures::new(4, 1e-3), Prediction::Eps);
    let (x_t, z) = (tensor(2, 2, 3), tensor(3, 2, 2));
    let null = tensor(4, 2, 2);
    let noise = NoiseSource::Seeded(5);
    let input = Input::new(&x_t, Some(&z), &noise);
    let f = ModelFn {
        model: &mlp,
        guidance: Some(Guidance {
            scale: 2.5,
            null_cond: null,
        }),
        threshold: None,
    };
    let mut sp = SamplerSpec::new(Method::DpmSolverPp, 2, 5);
    sp.times = Some(vec![0.9985, 0.7005, 0.4505, 0.2005, 0.0505, 0.0105]);
    let (dt, fd) = adjoint_and_fd(&s, &sp, &f, &input, DiscreteStates::Record);
    let err = max_rel_err(&dt, &fd);
    assert!(
        err < 1e-6,
        "guided, discrete schedule: {err:.2e}\n{dt:?}\n{fd:?}"
    );
    let (ck, _) = adjoint_and_fd(&s, &sp, &f, &input, DiscreteStates::Checkpoint { slots: 1 });
    assert!(
        max_rel_err(&ck, &dt) < 1e-12,
        "checkpointing changes dtimes: {ck:?} vs {dt:?}"
    );
}

#[test]
fn time_gradients_say_where_they_are_not_derived() {
    let s = vp();
    let gmm = GmmModel {
        weights: vec![1.0],
        means: vec![vec![0.5, -0.5]],
        variances: vec![0.2],
    };
    let x_t = tensor(1, 1, 2);
    let noise = NoiseSource::Seeded(1);
    let input = Input::new(&x_t, None, &noise);
    let plan = build_plan(&s, &spec(Method::DpmSolverPp, 2, 5)).unwrap();
    let f = ModelFn {
        model: &gmm,
        guidance: None,
        threshold: Some(Threshold {
            quantile: 0.9,
            max: 2.0,
        }),
    };
    let err = discrete_adjoint(
        &plan,
        &f,
        &input,
        WRT_TIMES,
        DiscreteStates::Record,
        |x: &State<f64, Dev>| Ok::<_, RuntimeError>(x.clone()),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("wrt \"times\"") && msg.contains("thresholding"),
        "{msg}"
    );
}

/// dL/dt_i and dL/dp of one gradient.
type TimeAndSchedule = (Vec<f64>, Vec<f64>);

/// The full tape (the whole loop on dfdx's tape, every moving coefficient and every
/// evaluation's model time, alpha and sigma a leaf) gives the discrete adjoint's dL/dt_i and
/// dL/dp for every sampler, network and closed-form models, to round-off.
#[test]
fn time_and_schedule_gradients_equal_the_full_tape() {
    let dev = Dev::default();
    type Net = (Linear<11, 16>, Tanh, Linear<16, 3>);
    let nets: Vec<MlpDenoiser<_, 11, 3>> = [Prediction::Eps, Prediction::X0, Prediction::V]
        .into_iter()
        .map(|p| {
            MlpDenoiser::new(
                dev.build_module::<Net, f64>(),
                3,
                0,
                TimeFeatures::new(4, 20.0),
                p,
            )
        })
        .collect();
    let gauss = GaussianModel {
        mu: 0.4,
        s2: 0.3,
        dim: 3,
    };
    let s = vp();
    let x_t = tensor(1, 2, 3);
    let noise = NoiseSource::Seeded(8);
    let input = Input::new(&x_t, None, &noise);
    let wrt = Wrt {
        x_t: true,
        cond: false,
        params: false,
        times: true,
        schedule: true,
    };
    let mut worst: f64 = 0.0;
    let mut check = |name: &str, disc: TimeAndSchedule, tape: TimeAndSchedule| {
        let e = max_rel_err(&disc.0, &tape.0).max(max_rel_err(&disc.1, &tape.1));
        worst = worst.max(e);
        assert!(e < 1e-10, "{name}: discrete {disc:?}\n tape {tape:?}");
    };
    fn both<M: adeis_runtime::tape::TapedDenoiser<f64, Dev>>(
        plan: &adeis_compiler::Plan,
        m: &M,
        input: &Input<f64, Dev>,
        wrt: Wrt,
    ) -> (TimeAndSchedule, TimeAndSchedule) {
        let a0 = tensor(97, input.x_t.batch(), input.x_t.width());
        let a1 = a0.clone();
        let d = discrete_adjoint(
            plan,
            &ModelFn::new(m),
            input,
            wrt,
            DiscreteStates::Record,
            move |_| Ok(a0),
        )
        .unwrap();
        let t = adeis_runtime::tape::tape_gradient(plan, m, input, wrt, move |_| Ok(a1)).unwrap();
        let parts = |g: adeis_runtime::Gradient<f64, Dev, M::Grads>| {
            (
                g.dtimes.unwrap(),
                g.dschedule
                    .unwrap()
                    .into_iter()
                    .map(|(_, v)| v)
                    .collect::<Vec<_>>(),
            )
        };
        (parts(d), parts(t))
    }
    for (name, sp) in every_sampler() {
        let plan = build_plan(&s, &sp).unwrap();
        let (d, t) = both(&plan, &gauss, &input, wrt);
        check(&format!("{name} / gaussian"), d, t);
        for net in &nets {
            let (d, t) = both(&plan, net, &input, wrt);
            check(&format!("{name} / mlp {:?}", net.prediction), d, t);
        }
    }
    eprintln!("dL/dt_i and dL/dp, discrete adjoint against the full tape: max rel err {worst:.2e}");
}

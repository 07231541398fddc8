//! The DSL: one schedule written three ways (macro, TOML, built-in) giving the same samples
//! and gradients, and the diffusion! types at work. Its compile-fail cases are the
//! adeis-dsl-ui crate's (macros/ui).

use adeis::prelude::*;
use adeis::runtime::analytic::GaussianModel;
use adeis::runtime::noise::normals;
use adeis::runtime::{from_f64, to_f64};

adeis::schedule! {
    /// VP linear with the built-in's formulas, declared by hand.
    pub DeclaredVp(beta_min = 0.1, beta_max = 20.0) {
        log_alpha(t) = -(beta_max - beta_min) / 4.0 * t^2 - beta_min / 2.0 * t;
        log_sigma(t) = 0.5 * ln(-expm1(2.0 * log_alpha(t)));
        t in [1e-3, 1.0];
    }
}

const TOML: &str = r#"
[schedule]
kind = "custom"
log_alpha = "-(beta_max - beta_min) / 4.0 * t^2 - beta_min / 2.0 * t"
log_sigma = "0.5 * ln(-expm1(2.0 * log_alpha(t)))"
params = { beta_min = 0.1, beta_max = 20.0 }
t_range = [1e-3, 1.0]

[sampler]
method = "sde_dpm_solver_pp"
order = 2
steps = 30
"#;

#[test]
fn macro_toml_and_builtin_give_the_same_samples_and_gradients() {
    let spec = adeis::spec_file::parse_spec(TOML, adeis::spec_file::SpecFormat::Toml).unwrap();
    let from_toml = spec.schedule_def().unwrap().compile().unwrap();
    let from_macro = DeclaredVp::new().compile().unwrap();
    let builtin = ScheduleDef::vp_linear(0.1, 20.0)
        .unwrap()
        .compile()
        .unwrap();
    let sampler = spec.sampler.unwrap();
    let dev = Cpu::default();
    let x_t = from_f64::<f64, Cpu>(&dev, &normals(1, 0, 8), 2, 4);
    let a0 = from_f64::<f64, Cpu>(&dev, &normals(2, 0, 8), 2, 4);
    let model = GaussianModel {
        mu: 0.3,
        s2: 0.4,
        dim: 4,
    };
    let run = |s: &adeis::compiler::Schedule| {
        let problem = Problem::new(s.clone(), &sampler).unwrap().with_wrt(Wrt {
            x_t: true,
            cond: false,
            params: true,
            times: false,
            schedule: false,
        });
        let f = ModelFn::new(&model);
        let noise = NoiseSource::Seeded(7);
        let input = Input::new(&x_t, None, &noise);
        let x0 = sample(problem.plan(), &f, &input, false).unwrap().x;
        let g = gradient(&problem, &f, &input, |_| Ok(a0.clone())).unwrap();
        (to_f64(&x0), to_f64(&g.dx_t))
    };
    let (m, t, b) = (run(&from_macro), run(&from_toml), run(&builtin));
    // The macro and the TOML file are the same program: the same numbers to the bit.
    assert_eq!(m, t);
    // The built-in inverts lambda in closed form, the declared ones by Newton: the grids, and
    // so the samples, agree to round-off.
    for (x, y) in m.0.iter().zip(&b.0).chain(m.1.iter().zip(&b.1)) {
        assert!((x - y).abs() < 1e-12 * y.abs().max(1.0), "{x} vs {y}");
    }
    // Parameters override at run time, and compiled schedules are cached per parameters.
    let a = DeclaredVp::new().beta_max(12.0).compile().unwrap();
    assert!((a.eval(0.5).g2 - (0.1 + 11.9 * 0.5)).abs() < 1e-10);
    assert_eq!(DeclaredVp::PARAMS, ["beta_min", "beta_max"]);
}

fn squared_norm<E: Dtype, D: Device<E>>(
    x0: adeis::runtime::tape::Taped<E, D>,
) -> Tensor<Rank0, E, D, OwnedTape<E, D>> {
    x0.square().sum()
}

adeis::diffusion! {
    /// A problem on the declared schedule type.
    pub OnDeclared {
        schedule: DeclaredVp,
        equation: ode,
        prediction: eps,
        sampler: dpm_solver_pp(order = 2, steps = 15, grid = logsnr),
        gradient: discrete(states = checkpoint, checkpoints = 3),
        wrt: [x_t, cond],
        loss: squared_norm,
    }
}

#[test]
fn diffusion_types_sample_differentiate_and_optimise() {
    let dev = Cpu::default();
    let model = GaussianModel {
        mu: 0.0,
        s2: 0.5,
        dim: 3,
    };
    let x_t = from_f64::<f64, Cpu>(&dev, &normals(4, 0, 6), 2, 3);
    let z = from_f64::<f64, Cpu>(&dev, &[0.2; 6], 2, 3);
    let x0 = OnDeclared::sample(&model, &x_t, Some(&z), 0).unwrap();
    let (value, g) = OnDeclared::gradient(&model, &x_t, Some(&z), 0).unwrap();
    let x0v = to_f64(&x0);
    assert!((value - x0v.iter().map(|v| v * v).sum::<f64>()).abs() < 1e-12);
    assert_eq!(g.vjps, 15);
    assert!(g.nfe > 15, "checkpointing recomputes");
    // The same gradient by hand: the declared sampler and gradient on the declared schedule.
    let s = DeclaredVp::new().compile().unwrap();
    let problem = Problem::new(s, &OnDeclared::sampler())
        .unwrap()
        .with_adjoint(Adjoint::Discrete {
            states: DiscreteStates::Record,
        })
        .unwrap()
        .with_wrt(Wrt {
            x_t: true,
            cond: true,
            params: false,
            times: false,
            schedule: false,
        });
    let cot = from_f64::<f64, Cpu>(&dev, &x0v.iter().map(|v| 2.0 * v).collect::<Vec<_>>(), 2, 3);
    let noise = NoiseSource::Seeded(0);
    let by_hand = gradient(
        &problem,
        &ModelFn::new(&model),
        &Input::new(&x_t, Some(&z), &noise),
        |_| Ok(cot.clone()),
    )
    .unwrap();
    for (a, b) in to_f64(&g.dx_t).iter().zip(to_f64(&by_hand.dx_t)) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
    let (_, _, losses) = OnDeclared::optimize(&model, &x_t, Some(&z), 0, 20, 0.2).unwrap();
    assert!(losses[19] < 0.01 * losses[0], "{losses:?}");
}

adeis::diffusion! {
    /// The learned-samplers gradient declared: the grid times and the schedule's parameters.
    pub OnTheGrid {
        schedule: vp_linear,
        equation: ode,
        prediction: eps,
        sampler: dpm_solver_pp(order = 2, steps = 8),
        gradient: discrete,
        wrt: [x_t, times, schedule],
        loss: squared_norm,
    }
}

#[test]
fn diffusion_types_differentiate_the_grid_and_the_schedule() {
    let dev = Cpu::default();
    let model = GaussianModel {
        mu: 0.0,
        s2: 0.5,
        dim: 3,
    };
    let x_t = from_f64::<f64, Cpu>(&dev, &normals(4, 0, 6), 2, 3);
    let z = from_f64::<f64, Cpu>(&dev, &[0.2; 6], 2, 3);
    let wrt = OnTheGrid::problem().unwrap().wrt();
    assert!(wrt.times && wrt.schedule && !wrt.cond);
    let (_, g) = OnTheGrid::gradient(&model, &x_t, Some(&z), 0).unwrap();
    assert_eq!(g.dtimes.as_ref().map(Vec::len), Some(9));
    let names: Vec<&str> = g
        .dschedule
        .as_ref()
        .unwrap()
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(names, ["beta_min", "beta_max"]);
}

adeis::diffusion! {
    /// A reversible sampler with its exact gradient by the inverse sweep.
    pub Reversing {
        schedule: vp_linear,
        equation: ode,
        prediction: eps,
        sampler: rex(order = 2, tableau = heun, coupling = 0.99, form = eps, steps = 6),
        gradient: reversible,
        wrt: [x_t, times],
        loss: squared_norm,
    }
}

#[test]
fn a_reversible_sampler_and_its_gradient_are_declared() {
    let dev = Cpu::default();
    let model = GaussianModel {
        mu: 0.2,
        s2: 0.5,
        dim: 3,
    };
    let x_t = from_f64::<f64, Cpu>(&dev, &normals(4, 0, 6), 2, 3);
    let sp = Reversing::sampler();
    assert_eq!(sp.coupling, 0.99);
    assert_eq!(sp.form, Some(Pred::Eps));
    let (_, g) = Reversing::gradient(&model, &x_t, None, 0).unwrap();
    assert!(g.reconstruction.unwrap() < 1e-13, "{:?}", g.reconstruction);
    // The discrete adjoint of the same plan: the same gradient.
    let problem = Reversing::problem().unwrap();
    let exact = problem.clone().with_adjoint(Adjoint::default()).unwrap();
    let x0 = to_f64(
        &sample(
            problem.plan(),
            &ModelFn::new(&model),
            &Input::new(&x_t, None, &NoiseSource::Seeded(0)),
            false,
        )
        .unwrap()
        .x,
    );
    let cot = from_f64::<f64, Cpu>(&dev, &x0.iter().map(|v| 2.0 * v).collect::<Vec<_>>(), 2, 3);
    let noise = NoiseSource::Seeded(0);
    let d = gradient(
        &exact,
        &ModelFn::new(&model),
        &Input::new(&x_t, None, &noise),
        |_| Ok(cot.clone()),
    )
    .unwrap();
    for (a, b) in to_f64(&g.dx_t).iter().zip(to_f64(&d.dx_t)) {
        assert!((a - b).abs() < 1e-12 * b.abs().max(1.0), "{a} vs {b}");
    }
    for (a, b) in g.dtimes.unwrap().iter().zip(d.dtimes.unwrap()) {
        assert!((a - b).abs() < 1e-10 * b.abs().max(1.0), "{a} vs {b}");
    }
}

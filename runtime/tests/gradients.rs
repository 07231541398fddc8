//! Gradients: AdjointDEIS against the closed-form Gaussian gradients (orders by refinement),
//! the discrete adjoint against finite differences and against the closed form, checkpointing
//! against recording, VJPs against finite differences.

use adeis_compiler::{
    build_plan, AdjointDeisPlan, AdjointOrder, ContinuousStates, DiscreteStates, Method, Plan,
    Pred, Schedule, Wrt,
};
use adeis_runtime::adjoint::deis::adjoint_deis;
use adeis_runtime::adjoint::discrete::discrete_adjoint;
use adeis_runtime::analytic::GaussianGrads;
use adeis_runtime::analytic::{GaussianModel, GmmModel};
use adeis_runtime::mlp::{MlpDenoiser, TimeFeatures};
use adeis_runtime::noise::normals;
use adeis_runtime::{
    from_f64, sample, to_f64, Denoiser, Gradient, Input, ModelFn, NoiseSource, RuntimeError, State,
};
use dfdx::prelude::*;

mod common;
use common::{fitted_order, rel_err, spec, vp};

type Dev = Cpu;
const DIM: usize = 3;
const BATCH: usize = 2;

fn tensor(seed: u64, batch: usize, dim: usize) -> State<f64, Dev> {
    from_f64(&Dev::default(), &normals(seed, 0, batch * dim), batch, dim)
}

/// L = sum(a0 * x0): the cotangent is a0 whatever x0 is.
fn linear_loss(
    a0: State<f64, Dev>,
) -> impl FnOnce(&State<f64, Dev>) -> Result<State<f64, Dev>, RuntimeError> {
    move |_| Ok(a0)
}

/// The exact gradients of L = sum(a0 x0) for Gaussian data (docs/math.md section 4), mu as z.
struct Exact {
    dx: Vec<f64>,
    dmu: Vec<f64>,
    ds2: f64,
}

fn exact(s: &Schedule, g: &GaussianModel, x_t: &[f64], mu: &[f64], a0: &[f64], sde: bool) -> Exact {
    let (t0, tt) = (s.time_info(s.t_min()), s.time_info(s.t_max()));
    let v = |t: &adeis_runtime::TimeInfo| t.alpha * t.alpha * g.s2 + t.sigma * t.sigma;
    let (v0, vt) = (v(&t0), v(&tt));
    let k = (v0 / vt).sqrt();
    let (kx, kmu) = if sde {
        (
            (tt.alpha / t0.alpha) * (v0 / vt),
            t0.alpha - tt.alpha * tt.alpha * v0 / (t0.alpha * vt),
        )
    } else {
        (k, t0.alpha - tt.alpha * k)
    };
    let dk = 0.5 * k * (t0.alpha * t0.alpha / v0 - tt.alpha * tt.alpha / vt);
    Exact {
        dx: a0.iter().map(|a| kx * a).collect(),
        dmu: a0.iter().map(|a| kmu * a).collect(),
        ds2: a0
            .iter()
            .zip(x_t)
            .zip(mu)
            .map(|((a, x), m)| a * (x - tt.alpha * m) * dk)
            .sum(),
    }
}

fn theta_value(g: &Gradient<f64, Dev, GaussianGrads>) -> f64 {
    g.dtheta.expect("wrt params").s2
}

/// AdjointDEIS's options as the tests vary them.
#[derive(Clone, Copy)]
struct DeisOpts {
    order: usize,
    steps: Option<usize>,
    sde: bool,
    states: ContinuousStates,
}

/// AdjointDEIS compiled for `plan` and run.
fn run_deis<M: Denoiser<f64, Dev>>(
    s: &Schedule,
    plan: &Plan,
    model: &M,
    input: &Input<f64, Dev>,
    wrt: Wrt,
    opts: DeisOpts,
    loss: impl FnOnce(&State<f64, Dev>) -> Result<State<f64, Dev>, RuntimeError>,
) -> Result<Gradient<f64, Dev, M::Grads>, RuntimeError> {
    let order = if opts.order == 2 {
        AdjointOrder::TwoM
    } else {
        AdjointOrder::One
    };
    let deis = AdjointDeisPlan::new(s, plan, order, opts.steps, opts.sde)?;
    adjoint_deis(
        plan,
        &deis,
        &ModelFn::new(model),
        input,
        (wrt, opts.states),
        loss,
    )
}

#[test]
fn adjoint_deis_converges_to_the_exact_gaussian_gradients() {
    let s = vp();
    let g = GaussianModel {
        mu: 0.0,
        s2: 0.3,
        dim: DIM,
    };
    let (x_t, z, a0) = (
        tensor(1, BATCH, DIM),
        tensor(2, BATCH, DIM),
        tensor(3, BATCH, DIM),
    );
    let wrt = Wrt {
        x_t: true,
        cond: true,
        params: true,
        times: false,
        schedule: false,
    };
    let ms = [320, 640, 1280, 2560];
    let mut failures = vec![];
    for sde in [false, true] {
        let ex = exact(&s, &g, &to_f64(&x_t), &to_f64(&z), &to_f64(&a0), sde);
        for order in [1, 2] {
            let mut errs = [vec![], vec![], vec![]];
            for &m in &ms {
                // Forward: an accurate sampler on the same grid (its states feed the adjoint).
                let sp = if sde {
                    spec(Method::SdeDpmSolverPp, 2, m)
                } else {
                    spec(Method::DpmSolverPp, 3, m)
                };
                let plan = build_plan(&s, &sp).unwrap();
                let opts = DeisOpts {
                    order,
                    steps: None,
                    sde,
                    states: ContinuousStates::Record,
                };
                let gr = run_deis(
                    &s,
                    &plan,
                    &g,
                    &Input::new(&x_t, Some(&z), &NoiseSource::Seeded(4)),
                    wrt,
                    opts,
                    linear_loss(a0.clone()),
                )
                .unwrap();
                assert_eq!(gr.vjps, m);
                errs[0].push(rel_err(&to_f64(&gr.dx_t), &ex.dx));
                errs[1].push(rel_err(&to_f64(gr.dz.as_ref().unwrap()), &ex.dmu));
                errs[2].push((theta_value(&gr) - ex.ds2).abs() / ex.ds2.abs());
            }
            for (name, e) in ["a_x", "a_z", "a_theta"].iter().zip(&errs) {
                if sde && *name == "a_theta" {
                    continue; // pathwise d/d s2 of the SDE depends on the noise: no closed form
                }
                let p = fitted_order(&ms, e);
                let shown: Vec<String> = e.iter().map(|x| format!("{x:.2e}")).collect();
                eprintln!(
                    "AdjointDEIS-{order}{} {} {name}: [{}] -> order {p:.2}",
                    if order == 2 { "M" } else { "" },
                    if sde { "SDE" } else { "ODE" },
                    shown.join(", ")
                );
                if (p - order as f64).abs() > 0.3 {
                    failures.push(format!("order {order} sde {sde} {name}: {p:.2}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

fn run_discrete<M: Denoiser<f64, Dev>>(
    model: &M,
    plan: &Plan,
    x_t: &State<f64, Dev>,
    z: Option<&State<f64, Dev>>,
    a0: &State<f64, Dev>,
    storage: DiscreteStates,
) -> Gradient<f64, Dev, M::Grads> {
    let wrt = Wrt {
        x_t: true,
        cond: z.is_some(),
        params: true,
        times: false,
        schedule: false,
    };
    discrete_adjoint(
        plan,
        &ModelFn::new(model),
        &Input::new(x_t, z, &NoiseSource::Seeded(8)),
        wrt,
        storage,
        linear_loss(a0.clone()),
    )
    .unwrap()
}

/// Central finite differences of L = sum(a0 x0) in x_T (a few components).
fn fd_dx<M: Denoiser<f64, Dev>>(
    model: &M,
    plan: &Plan,
    x_t: &State<f64, Dev>,
    z: Option<&State<f64, Dev>>,
    a0: &[f64],
) -> Vec<f64> {
    let base = to_f64(x_t);
    let (b, d) = (x_t.batch(), x_t.width());
    let loss = |x: &[f64]| {
        let xt = from_f64(&Dev::default(), x, b, d);
        let out = sample(
            plan,
            &ModelFn::new(model),
            &Input::new(&xt, z, &NoiseSource::Seeded(8)),
            false,
        )
        .unwrap();
        to_f64(&out.x)
            .iter()
            .zip(a0)
            .map(|(x, a)| x * a)
            .sum::<f64>()
    };
    (0..base.len())
        .map(|i| {
            let h = 1e-5;
            let (mut p, mut m) = (base.clone(), base.clone());
            p[i] += h;
            m[i] -= h;
            (loss(&p) - loss(&m)) / (2.0 * h)
        })
        .collect()
}

#[test]
fn discrete_adjoint_matches_finite_differences_for_every_sampler() {
    let s = vp();
    let gmm = GmmModel {
        weights: vec![0.4, 0.6],
        means: vec![vec![1.0, -0.5, 0.2], vec![-1.2, 0.8, 0.0]],
        variances: vec![0.2, 0.3],
    };
    let (x_t, a0) = (tensor(1, BATCH, DIM), tensor(3, BATCH, DIM));
    let mut cases = vec![];
    for m in [Method::Ddim, Method::Deis] {
        for o in m.orders() {
            cases.push(spec(m, *o, 8));
        }
    }
    for o in [1, 2, 3] {
        cases.push(spec(Method::DpmSolverPp, o, 8));
        let mut single = spec(Method::DpmSolver, o, 6);
        single.multistep = Some(false);
        cases.push(single);
        let mut uni = spec(Method::Unipc, o, 8);
        uni.variant = adeis_compiler::sampler::UnipcVariant::Bh1;
        cases.push(uni);
    }
    cases.push(spec(Method::SdeDpmSolver, 1, 8));
    cases.push(spec(Method::SdeDpmSolverPp, 2, 8));
    let mut dtz = spec(Method::DpmSolverPp, 2, 8);
    dtz.denoise_to_zero = true;
    cases.push(dtz);
    for sp in cases {
        let plan = build_plan(&s, &sp).unwrap();
        let gr = run_discrete(&gmm, &plan, &x_t, None, &a0, DiscreteStates::Record);
        assert_eq!(
            (gr.nfe, gr.vjps),
            (plan.nfe(), plan.nfe()),
            "{}",
            plan.description
        );
        let fd = fd_dx(&gmm, &plan, &x_t, None, &to_f64(&a0));
        let e = rel_err(&to_f64(&gr.dx_t), &fd);
        assert!(
            e < 1e-7,
            "{}: relative error {e:.2e} against finite differences",
            plan.description
        );
    }
}

#[test]
fn checkpointing_equals_recording() {
    let s = vp();
    let g = GaussianModel {
        mu: 0.0,
        s2: 0.3,
        dim: DIM,
    };
    let (x_t, z, a0) = (
        tensor(1, BATCH, DIM),
        tensor(2, BATCH, DIM),
        tensor(3, BATCH, DIM),
    );
    for sp in [
        spec(Method::DpmSolverPp, 3, 30),
        spec(Method::Unipc, 2, 17),
        {
            let mut x = spec(Method::DpmSolver, 3, 9);
            x.multistep = Some(false);
            x
        },
        spec(Method::SdeDpmSolverPp, 2, 20),
    ] {
        let plan = build_plan(&s, &sp).unwrap();
        let rec = run_discrete(&g, &plan, &x_t, Some(&z), &a0, DiscreteStates::Record);
        assert_eq!(
            (rec.nfe, rec.vjps),
            (plan.nfe(), plan.nfe()),
            "N forward + N VJP"
        );
        for slots in [0, 1, 2, 3, 5, 40] {
            let ck = run_discrete(
                &g,
                &plan,
                &x_t,
                Some(&z),
                &a0,
                DiscreteStates::Checkpoint { slots },
            );
            assert_eq!(ck.vjps, plan.nfe());
            assert!(ck.nfe >= 2 * plan.nfe() - 1, "recomputation happened");
            let e = rel_err(&to_f64(&ck.dx_t), &to_f64(&rec.dx_t)).max(rel_err(
                &to_f64(ck.dz.as_ref().unwrap()),
                &to_f64(rec.dz.as_ref().unwrap()),
            ));
            assert!(
                e < 1e-13,
                "{} with {slots} slots: {e:.2e}",
                plan.description
            );
            assert!((theta_value(&ck) - theta_value(&rec)).abs() < 1e-12 * theta_value(&rec).abs());
            eprintln!(
                "{} with {slots} checkpoint slots: {} forward evaluations",
                plan.description, ck.nfe
            );
        }
    }
}

#[test]
fn discrete_adjoint_converges_to_the_exact_gradient_at_the_sampler_order() {
    let s = vp();
    let g = GaussianModel {
        mu: 0.0,
        s2: 0.3,
        dim: DIM,
    };
    let (x_t, z, a0) = (
        tensor(1, BATCH, DIM),
        tensor(2, BATCH, DIM),
        tensor(3, BATCH, DIM),
    );
    let ex = exact(&s, &g, &to_f64(&x_t), &to_f64(&z), &to_f64(&a0), false);
    for (sp, order) in [(Method::Ddim, 1.0), (Method::DpmSolverPp, 2.0)] {
        let ns = [40, 80, 160, 320];
        let errs: Vec<f64> = ns
            .iter()
            .map(|&n| {
                let plan = build_plan(&s, &spec(sp, order as usize, n)).unwrap();
                let gr = run_discrete(&g, &plan, &x_t, Some(&z), &a0, DiscreteStates::Record);
                rel_err(&to_f64(&gr.dx_t), &ex.dx)
                    .max(rel_err(&to_f64(gr.dz.as_ref().unwrap()), &ex.dmu))
            })
            .collect();
        let p = fitted_order(&ns, &errs);
        eprintln!("discrete adjoint of {sp:?}: {errs:?} -> order {p:.2}");
        assert!((p - order).abs() < 0.3, "{sp:?}: {p:.2}");
    }
}

#[test]
fn vjps_match_finite_differences() {
    let dev = Dev::default();
    type Net = (Linear<13, 16>, Tanh, Linear<16, 3>);
    let net = dev.build_module::<Net, f64>();
    let mlp = MlpDenoiser::<_, 13, 3>::new(
        net,
        3,
        2,
        TimeFeatures::new(4, 1000.0),
        adeis_compiler::Prediction::V,
    );
    let x = tensor(5, 2, 3);
    let z = tensor(6, 2, 2);
    let cot = tensor(7, 2, 3);
    let time = adeis_runtime::TimeInfo {
        t: 0.4,
        model_t: 0.4,
        alpha: 0.8,
        sigma: 0.6,
    };
    let gauss = GaussianModel {
        mu: 0.2,
        s2: 0.5,
        dim: 3,
    };
    let zg = tensor(8, 2, 3);
    for want in [Pred::Eps, Pred::Data] {
        check_vjp("mlp", &mlp, [&x, &z, &cot], &time, want);
        let theta = check_vjp("gaussian", &gauss, [&x, &zg, &cot], &time, want);
        let (d, h) = (theta.s2, 1e-6);
        let lp = |s2: f64| {
            let g2 = GaussianModel {
                s2,
                ..gauss.clone()
            };
            let f2 = ModelFn::new(&g2);
            to_f64(&f2.predict(&x, Some(&zg), &time, want))
                .iter()
                .zip(to_f64(&cot))
                .map(|(a, b)| a * b)
                .sum::<f64>()
        };
        let fd = (lp(0.5 + h) - lp(0.5 - h)) / (2.0 * h);
        assert!((fd - d).abs() < 1e-7, "gaussian d/ds2: {fd} vs {d}");
    }
}

/// The VJP of the prediction `want` against central finite differences in x and z; returns
/// the parameter gradients it accumulated.
fn check_vjp<M: Denoiser<f64, Dev>>(
    name: &str,
    model: &M,
    [x, z, cot]: [&State<f64, Dev>; 3],
    time: &adeis_runtime::TimeInfo,
    want: Pred,
) -> M::Grads {
    let dev = Dev::default();
    let f = ModelFn::new(model);
    let mut theta = model.zero_grads();
    let c = f.vjp(x, Some(z), time, want, cot, Some((&mut theta, 1.0)));
    let (dx, dz) = (to_f64(&c.x), to_f64(&c.cond.unwrap()));
    let l = |x: &State<f64, Dev>, z: &State<f64, Dev>| {
        to_f64(&f.predict(x, Some(z), time, want))
            .iter()
            .zip(to_f64(cot))
            .map(|(a, b)| a * b)
            .sum::<f64>()
    };
    let h = 1e-6;
    for i in 0..6 {
        let (mut p, mut m) = (to_f64(x), to_f64(x));
        p[i] += h;
        m[i] -= h;
        let fd = (l(&from_f64(&dev, &p, 2, 3), z) - l(&from_f64(&dev, &m, 2, 3), z)) / (2.0 * h);
        assert!(
            (fd - dx[i]).abs() < 1e-7 * fd.abs().max(1.0),
            "{name} {want:?} dx[{i}]: {fd} vs {}",
            dx[i]
        );
    }
    let zd = z.width();
    for i in 0..2 * zd {
        let (mut p, mut m) = (to_f64(z), to_f64(z));
        p[i] += h;
        m[i] -= h;
        let fd = (l(x, &from_f64(&dev, &p, 2, zd)) - l(x, &from_f64(&dev, &m, 2, zd))) / (2.0 * h);
        assert!(
            (fd - dz[i]).abs() < 1e-7 * fd.abs().max(1.0),
            "{name} {want:?} dz[{i}]: {fd} vs {}",
            dz[i]
        );
    }
    theta
}

mod tape_reference {
    use super::*;
    use adeis_runtime::tape::tape_gradient;

    type Net = (Linear<13, 16>, Tanh, Linear<16, 3>);

    macro_rules! tape_check {
        ($name:ident, $E:ty, $tol:expr) => {
            #[test]
            fn $name() {
                type E = $E;
                let dev = Cpu::seed_from_u64(0);
                let net = dev.build_module::<Net, E>();
                let to64 = |v: Vec<E>| -> Vec<f64> { v.iter().map(|x| *x as f64).collect() };
                let param_err = |a: &Gradients<E, Cpu>, b: &Gradients<E, Cpu>| -> f64 {
                    [
                        rel_err(
                            &to64(a.get(&net.0.weight).as_vec()),
                            &to64(b.get(&net.0.weight).as_vec()),
                        ),
                        rel_err(
                            &to64(a.get(&net.0.bias).as_vec()),
                            &to64(b.get(&net.0.bias).as_vec()),
                        ),
                        rel_err(
                            &to64(a.get(&net.2.weight).as_vec()),
                            &to64(b.get(&net.2.weight).as_vec()),
                        ),
                        rel_err(
                            &to64(a.get(&net.2.bias).as_vec()),
                            &to64(b.get(&net.2.bias).as_vec()),
                        ),
                    ]
                    .into_iter()
                    .fold(0.0, f64::max)
                };
                for prediction in [
                    adeis_compiler::Prediction::Eps,
                    adeis_compiler::Prediction::V,
                ] {
                    let mlp = MlpDenoiser::<_, 13, 3>::new(
                        net.clone(),
                        3,
                        2,
                        TimeFeatures::new(4, 1000.0),
                        prediction,
                    );
                    let s = vp();
                    let x_t: State<E, Cpu> = from_f64(&dev, &normals(1, 0, 12), 4, 3);
                    let z: State<E, Cpu> = from_f64(&dev, &normals(2, 0, 8), 4, 2);
                    let a0: State<E, Cpu> = from_f64(&dev, &normals(3, 0, 12), 4, 3);
                    let mut cases = vec![
                        spec(Method::Ddim, 1, 6),
                        spec(Method::DpmSolverPp, 3, 7),
                        spec(Method::Deis, 2, 5),
                        spec(Method::Unipc, 2, 6),
                        spec(Method::SdeDpmSolverPp, 2, 5),
                    ];
                    let mut single = spec(Method::DpmSolver, 3, 3);
                    single.multistep = Some(false);
                    cases.push(single);
                    for sp in cases {
                        let plan = build_plan(&s, &sp).unwrap();
                        let wrt = Wrt {
                            x_t: true,
                            cond: true,
                            params: true,
                            times: false,
                            schedule: false,
                        };
                        let loss = |a: State<E, Cpu>| {
                            move |_: &State<E, Cpu>| -> Result<State<E, Cpu>, RuntimeError> {
                                Ok(a)
                            }
                        };
                        let noise = NoiseSource::Seeded(5);
                        let tape = tape_gradient(
                            &plan,
                            &mlp,
                            &Input::new(&x_t, Some(&z), &noise),
                            wrt,
                            loss(a0.clone()),
                        )
                        .unwrap();
                        let disc = discrete_adjoint(
                            &plan,
                            &ModelFn::new(&mlp),
                            &Input::new(&x_t, Some(&z), &noise),
                            wrt,
                            DiscreteStates::Record,
                            loss(a0.clone()),
                        )
                        .unwrap();
                        let ex = rel_err(&to_f64(&disc.dx_t), &to_f64(&tape.dx_t));
                        let ez = rel_err(
                            &to_f64(disc.dz.as_ref().unwrap()),
                            &to_f64(tape.dz.as_ref().unwrap()),
                        );
                        let ep =
                            param_err(disc.dtheta.as_ref().unwrap(), tape.dtheta.as_ref().unwrap());
                        eprintln!(
                            "{} ({prediction:?}, {}): x_T {ex:.1e}, z {ez:.1e}, params {ep:.1e}",
                            plan.description,
                            stringify!($E)
                        );
                        assert!(
                            ex < $tol && ez < $tol && ep < $tol,
                            "{}: x_T {ex:.2e}, z {ez:.2e}, params {ep:.2e}",
                            plan.description
                        );
                    }
                }
            }
        };
    }

    tape_check!(discrete_adjoint_equals_the_full_tape_f64, f64, 1e-10);
    tape_check!(discrete_adjoint_equals_the_full_tape_f32, f32, 1e-4);
}

mod conditioning {
    use super::*;
    use adeis_runtime::conditioning::{cycle_sde_encode, PiecewiseCond};

    #[test]
    fn cycle_sde_encoding_reproduces_the_data_point() {
        let s = vp();
        let gmm = GmmModel {
            weights: vec![0.5, 0.5],
            means: vec![vec![1.0, -0.5, 0.2], vec![-1.2, 0.8, 0.0]],
            variances: vec![0.1, 0.1],
        };
        let x0 = tensor(11, BATCH, DIM);
        for sp in [
            spec(Method::SdeDpmSolver, 1, 40),
            spec(Method::SdeDpmSolverPp, 2, 40),
        ] {
            let plan = build_plan(&s, &sp).unwrap();
            let f = ModelFn::new(&gmm);
            let (x_t, noises) = cycle_sde_encode(&plan, &f, &x0, None, 3).unwrap();
            assert_eq!(noises.len(), 40);
            let out = sample(
                &plan,
                &f,
                &Input::new(&x_t, None, &NoiseSource::Given(noises)),
                false,
            )
            .unwrap();
            // The last drawn state: alpha_min x0 + sigma_min n.
            let tmin = s.time_info(s.t_min());
            let n = to_f64(&NoiseSource::<f64, Dev>::Seeded(3).get(40, &x0).unwrap());
            let target: Vec<f64> = to_f64(&x0)
                .iter()
                .zip(&n)
                .map(|(x, n)| tmin.alpha * x + tmin.sigma * n)
                .collect();
            let e = rel_err(&to_f64(&out.x), &target);
            assert!(e < 1e-12, "{}: {e:.2e}", plan.description);
            assert!(rel_err(&to_f64(&out.x), &to_f64(&x0)) < 0.05);
        }
        let ode = build_plan(&s, &spec(Method::Ddim, 1, 10)).unwrap();
        assert!(cycle_sde_encode(&ode, &ModelFn::new(&gmm), &x0, None, 3).is_err());
    }

    #[test]
    fn piecewise_conditioning_gets_one_gradient_per_piece() {
        let s = vp();
        let g = GaussianModel {
            mu: 0.0,
            s2: 0.3,
            dim: DIM,
        };
        let (x_t, z, a0) = (
            tensor(1, BATCH, DIM),
            tensor(2, BATCH, DIM),
            tensor(3, BATCH, DIM),
        );
        let plan = build_plan(&s, &spec(Method::DpmSolverPp, 2, 30)).unwrap();
        let pw = PiecewiseCond {
            model: &g,
            boundaries: vec![1.0, 0.6, 0.2, s.t_min()],
        };
        // The same z in every piece: the pieces' gradients add up to the constant-z gradient.
        let zs: Vec<f64> = (0..BATCH)
            .flat_map(|i| {
                let row = to_f64(&z)[i * DIM..(i + 1) * DIM].to_vec();
                [row.clone(), row.clone(), row].concat()
            })
            .collect();
        let z3 = from_f64(&Dev::default(), &zs, BATCH, 3 * DIM);
        let whole = run_discrete(&g, &plan, &x_t, Some(&z), &a0, DiscreteStates::Record);
        let wrt = Wrt {
            x_t: true,
            cond: true,
            params: false,
            times: false,
            schedule: false,
        };
        let pieces = discrete_adjoint(
            &plan,
            &ModelFn::new(&pw),
            &Input::new(&x_t, Some(&z3), &NoiseSource::Seeded(8)),
            wrt,
            DiscreteStates::Record,
            linear_loss(a0.clone()),
        )
        .unwrap();
        let dz3 = to_f64(pieces.dz.as_ref().unwrap());
        let summed: Vec<f64> = (0..BATCH * DIM)
            .map(|j| {
                let (i, c) = (j / DIM, j % DIM);
                (0..3).map(|k| dz3[i * 3 * DIM + k * DIM + c]).sum()
            })
            .collect();
        assert!(rel_err(&summed, &to_f64(whole.dz.as_ref().unwrap())) < 1e-12);
        // Each piece against finite differences of its own values.
        let loss = |zz: &[f64]| {
            let zt = from_f64(&Dev::default(), zz, BATCH, 3 * DIM);
            let out = sample(
                &plan,
                &ModelFn::new(&pw),
                &Input::new(&x_t, Some(&zt), &NoiseSource::Seeded(8)),
                false,
            )
            .unwrap();
            to_f64(&out.x)
                .iter()
                .zip(to_f64(&a0))
                .map(|(x, a)| x * a)
                .sum::<f64>()
        };
        for j in [0, DIM + 1, 2 * DIM + 2, 3 * DIM + 1] {
            let h = 1e-6;
            let (mut p, mut m) = (zs.clone(), zs.clone());
            p[j] += h;
            m[j] -= h;
            let fd = (loss(&p) - loss(&m)) / (2.0 * h);
            assert!(
                (fd - dz3[j]).abs() < 1e-7,
                "piece entry {j}: {fd} vs {}",
                dz3[j]
            );
        }
        // AdjointDEIS attributes per piece as well: its pieces add up to its constant-z gradient.
        let opts = DeisOpts {
            order: 2,
            steps: None,
            sde: false,
            states: ContinuousStates::Record,
        };
        let ad = run_deis(
            &s,
            &plan,
            &pw,
            &Input::new(&x_t, Some(&z3), &NoiseSource::Seeded(8)),
            wrt,
            opts,
            linear_loss(a0.clone()),
        )
        .unwrap();
        let ad_whole = run_deis(
            &s,
            &plan,
            &g,
            &Input::new(&x_t, Some(&z), &NoiseSource::Seeded(8)),
            wrt,
            opts,
            linear_loss(a0.clone()),
        )
        .unwrap();
        let ad3 = to_f64(ad.dz.as_ref().unwrap());
        let ad_summed: Vec<f64> = (0..BATCH * DIM)
            .map(|j| {
                let (i, c) = (j / DIM, j % DIM);
                (0..3).map(|k| ad3[i * 3 * DIM + k * DIM + c]).sum()
            })
            .collect();
        assert!(rel_err(&ad_summed, &to_f64(ad_whole.dz.as_ref().unwrap())) < 1e-12);
        assert!(
            ad3.iter().all(|v| *v != 0.0),
            "every piece is evaluated by some adjoint step"
        );
    }
}

#[test]
fn adjoint_grid_may_differ_from_the_sampling_grid_and_states_may_be_backsolved() {
    let s = vp();
    let g = GaussianModel {
        mu: 0.0,
        s2: 0.3,
        dim: DIM,
    };
    let (x_t, z, a0) = (
        tensor(1, BATCH, DIM),
        tensor(2, BATCH, DIM),
        tensor(3, BATCH, DIM),
    );
    let ex = exact(&s, &g, &to_f64(&x_t), &to_f64(&z), &to_f64(&a0), false);
    let wrt = Wrt {
        x_t: true,
        cond: true,
        params: true,
        times: false,
        schedule: false,
    };
    // Forward on 160 steps, adjoint on 640 (states interpolated in lambda), against the same
    // adjoint on the forward grid of 640 steps: a_x and a_z do not depend on the states for
    // Gaussian data; a_theta does, through x, and the interpolation costs little.
    let run = |n: usize, m: Option<usize>, states: ContinuousStates| {
        let plan = build_plan(&s, &spec(Method::DpmSolverPp, 3, n)).unwrap();
        let opts = DeisOpts {
            order: 2,
            steps: m,
            sde: false,
            states,
        };
        run_deis(
            &s,
            &plan,
            &g,
            &Input::new(&x_t, Some(&z), &NoiseSource::Seeded(4)),
            wrt,
            opts,
            linear_loss(a0.clone()),
        )
        .unwrap()
    };
    let fine = run(640, None, ContinuousStates::Record);
    let mixed = run(160, Some(640), ContinuousStates::Record);
    assert_eq!(mixed.vjps, 640);
    assert!(rel_err(&to_f64(&mixed.dx_t), &to_f64(&fine.dx_t)) < 1e-12);
    assert!(
        rel_err(
            &to_f64(mixed.dz.as_ref().unwrap()),
            &to_f64(fine.dz.as_ref().unwrap())
        ) < 1e-12
    );
    let e_mixed = (theta_value(&mixed) - ex.ds2).abs() / ex.ds2.abs();
    let e_fine = (theta_value(&fine) - ex.ds2).abs() / ex.ds2.abs();
    assert!(
        e_mixed < 2.0 * e_fine + 1e-4,
        "interpolated states: {e_mixed:.2e} vs {e_fine:.2e}"
    );
    // Back-solved states: one more evaluation per adjoint point, no recorded trajectory.
    let back = run(640, None, ContinuousStates::Backsolve);
    assert_eq!(back.nfe, 640 + 640);
    let e_back = (theta_value(&back) - ex.ds2).abs() / ex.ds2.abs();
    assert!(e_back < 0.05, "back-solved states: {e_back:.2e}");
    assert!(rel_err(&to_f64(&back.dx_t), &to_f64(&fine.dx_t)) < 1e-12);
}

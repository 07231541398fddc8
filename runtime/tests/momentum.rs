//! The heavy-ball momentum samplers (`momentum = "hb"`): the plan against the update written
//! out by hand, beta = 1 against the plain sampler, and the discrete adjoint against the full
//! tape and, in the grid times, against finite differences.

use adeis_compiler::sampler::Momentum;
use adeis_compiler::{build_plan, build_plan_on, DiscreteStates, Method, SamplerSpec, Wrt};
use adeis_runtime::adjoint::discrete::discrete_adjoint;
use adeis_runtime::analytic::GaussianModel;
use adeis_runtime::mlp::{MlpDenoiser, TimeFeatures};
use adeis_runtime::noise::normals;
use adeis_runtime::tape::tape_gradient;
use adeis_runtime::{from_f64, sample, to_f64, Input, ModelFn, NoiseSource, State};
use dfdx::prelude::*;

mod common;
use common::{central, max_rel_err, rel_err, spec, vp};

type Dev = Cpu;

fn hb(method: Method, order: usize, steps: usize, beta: f64) -> SamplerSpec {
    let mut s = spec(method, order, steps);
    s.momentum = Some(Momentum::Hb);
    s.momentum_beta = Some(beta);
    s
}

#[test]
fn heavy_ball_dpm_solver_pp_2m_is_the_update_written_out() {
    let s = vp();
    let g = GaussianModel {
        mu: 0.5,
        s2: 0.3,
        dim: 3,
    };
    let dev = Dev::default();
    let xv = normals(2, 0, 6);
    let x_t: State<f64, Dev> = from_f64(&dev, &xv, 2, 3);
    let noise = NoiseSource::Seeded(0);
    let beta = 0.8;
    let sp = hb(Method::DpmSolverPp, 2, 8, beta);
    let plan = build_plan(&s, &sp).unwrap();
    let got = to_f64(
        &sample(
            &plan,
            &ModelFn::new(&g),
            &Input::new(&x_t, None, &noise),
            false,
        )
        .unwrap()
        .x,
    );
    // By hand: D_i = m_i (first step), (1 + 1/(2 r)) m_i - 1/(2 r) m_{i-1} after;
    // v_0 = D_0, v_i = (1 - beta) v_{i-1} + beta D_i; x_{i+1} = (s_{i+1}/s_i) x_i - a_{i+1}
    // (e^{-h} - 1) v_i.
    let vals = s.fill(&plan.grid);
    let data = |x: &[f64], i: usize| -> Vec<f64> {
        let (a, sg) = (vals[i].alpha, vals[i].sigma);
        let v = a * a * g.s2 + sg * sg;
        // x0* = mu + a s2 (x - a mu) / v for Gaussian data.
        x.iter()
            .map(|x| g.mu + a * g.s2 * (x - a * g.mu) / v)
            .collect()
    };
    let (mut x, mut vel, mut prev): (Vec<f64>, Vec<f64>, Vec<f64>) = (xv.clone(), vec![], vec![]);
    for i in 0..plan.grid.len() - 1 {
        let m = data(&x, i);
        let h = vals[i + 1].lambda - vals[i].lambda;
        let d: Vec<f64> = if i == 0 {
            m.clone()
        } else {
            let r = (vals[i].lambda - vals[i - 1].lambda) / h;
            m.iter()
                .zip(&prev)
                .map(|(a, b)| (1.0 + 0.5 / r) * a - 0.5 / r * b)
                .collect()
        };
        vel = if i == 0 {
            d
        } else {
            vel.iter()
                .zip(&d)
                .map(|(v, d)| (1.0 - beta) * v + beta * d)
                .collect()
        };
        let phi = -vals[i + 1].alpha * (-h).exp_m1();
        x = x
            .iter()
            .zip(&vel)
            .map(|(x, v)| vals[i + 1].sigma / vals[i].sigma * x + phi * v)
            .collect();
        prev = m;
    }
    assert!(max_rel_err(&got, &x) < 1e-12, "{got:?} vs {x:?}");
    // beta = 1 is the plain sampler.
    let plain = build_plan(&s, &spec(Method::DpmSolverPp, 2, 8)).unwrap();
    let one = build_plan(&s, &hb(Method::DpmSolverPp, 2, 8, 1.0)).unwrap();
    let run = |p: &adeis_compiler::Plan| {
        to_f64(
            &sample(p, &ModelFn::new(&g), &Input::new(&x_t, None, &noise), false)
                .unwrap()
                .x,
        )
    };
    assert!(max_rel_err(&run(&one), &run(&plain)) < 1e-13);
    assert!(
        max_rel_err(&got, &run(&plain)) > 1e-6,
        "momentum changes the sample"
    );
}

type Net = (Linear<13, 16>, Tanh, Linear<16, 3>);

#[test]
fn heavy_ball_gradients_are_the_tapes_and_the_grids_finite_differences() {
    let dev = Cpu::seed_from_u64(0);
    let net = dev.build_module::<Net, f64>();
    let mlp = MlpDenoiser::<_, 13, 3>::new(
        net,
        3,
        2,
        TimeFeatures::new(4, 1000.0),
        adeis_compiler::Prediction::Eps,
    );
    let x_t: State<f64, Cpu> = from_f64(&dev, &normals(1, 0, 12), 4, 3);
    let z: State<f64, Cpu> = from_f64(&dev, &normals(2, 0, 8), 4, 2);
    let a0: State<f64, Cpu> = from_f64(&dev, &normals(3, 0, 12), 4, 3);
    let av = to_f64(&a0);
    let noise = NoiseSource::Seeded(0);
    let input = Input::new(&x_t, Some(&z), &noise);
    let s = vp();
    for sp in [
        hb(Method::DpmSolverPp, 2, 7, 0.8),
        hb(Method::DpmSolverPp, 3, 6, 0.6),
        SamplerSpec {
            multistep: Some(true),
            ..hb(Method::DpmSolver, 2, 6, 0.7)
        },
        hb(Method::Ddim, 1, 6, 0.5),
    ] {
        let plan = build_plan(&s, &sp).unwrap();
        let wrt = Wrt {
            x_t: true,
            cond: true,
            params: false,
            times: true,
            schedule: false,
        };
        let a = a0.clone();
        let disc = discrete_adjoint(
            &plan,
            &ModelFn::new(&mlp),
            &input,
            wrt,
            DiscreteStates::Record,
            move |_| Ok(a),
        )
        .unwrap();
        let a = a0.clone();
        let tape = tape_gradient(&plan, &mlp, &input, wrt, move |_| Ok(a)).unwrap();
        let ex = rel_err(&to_f64(&disc.dx_t), &to_f64(&tape.dx_t));
        let ez = rel_err(
            &to_f64(disc.dz.as_ref().unwrap()),
            &to_f64(tape.dz.as_ref().unwrap()),
        );
        let dt = disc.dtimes.unwrap();
        let et = rel_err(&dt, &tape.dtimes.unwrap());
        // dL/dt_i against central differences of the sampled output.
        let loss = |grid: &[f64]| {
            let p = build_plan_on(&s, &sp, grid.to_vec());
            let out = sample(&p, &ModelFn::new(&mlp), &input, false).unwrap();
            to_f64(&out.x)
                .iter()
                .zip(&av)
                .map(|(x, a)| x * a)
                .sum::<f64>()
        };
        let gap = plan
            .grid
            .windows(2)
            .map(|w| w[0] - w[1])
            .fold(f64::INFINITY, f64::min);
        let fd: Vec<f64> = (0..plan.grid.len())
            .map(|i| {
                let h = 1e-4 * gap;
                (4.0 * central(loss, &plan.grid, i, h) - central(loss, &plan.grid, i, 2.0 * h))
                    / 3.0
            })
            .collect();
        let ef = max_rel_err(&dt, &fd);
        eprintln!(
            "{}: tape x_T {ex:.1e}, z {ez:.1e}, times {et:.1e}; times vs differences {ef:.1e}",
            plan.description
        );
        assert!(
            ex < 1e-10 && ez < 1e-10 && et < 1e-10,
            "{}",
            plan.description
        );
        assert!(ef < 1e-6, "{}: {ef:.2e}", plan.description);
    }
}

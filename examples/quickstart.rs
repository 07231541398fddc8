//! The shortest useful program: sample Gaussian data with DPM-Solver++(2M) and take the
//! gradient of a loss on the sample with respect to the starting noise.
//!
//! Run: `cargo run --release --example quickstart`

use adeis::prelude::*;
use adeis::runtime::analytic::GaussianModel;
use adeis::runtime::{from_f64, to_f64};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let schedule = ScheduleDef::vp_linear(0.1, 20.0)?.compile()?;
    // One problem: the sampler's plan and the gradient method (here the exact discrete
    // adjoint with recorded states), built once.
    let problem = Problem::new(schedule, &SamplerSpec::new(Method::DpmSolverPp, 2, 20))?
        .with_adjoint(Adjoint::Discrete {
            states: DiscreteStates::Record,
        })?
        .with_wrt(Wrt::X_T);
    let model = GaussianModel {
        mu: 1.0,
        s2: 0.3,
        dim: 3,
    };
    let x_t = from_f64::<f32, Cpu>(&Cpu::default(), &[0.5, -1.0, 2.0], 1, 3);
    // L = sum(x_0): the cotangent is all ones.
    let ones = from_f64::<f32, Cpu>(&Cpu::default(), &[1.0; 3], 1, 3);
    let noise = NoiseSource::Seeded(0);
    let g = gradient(
        &problem,
        &ModelFn::new(&model),
        &Input::new(&x_t, None, &noise),
        |_| Ok(ones.clone()),
    )?;
    println!("x_0      = {:?}", to_f64(&g.x0));
    println!("dL/dx_T  = {:?}", to_f64(&g.dx_t));
    // The exact flow's gradient (docs/math.md section 4): sqrt(v_0 / v_T),
    // v = alpha^2 s2 + sigma^2.
    let schedule = problem.schedule();
    let v = |t: f64| {
        let q = schedule.eval(t);
        q.alpha * q.alpha * model.s2 + q.sigma * q.sigma
    };
    println!(
        "exact flow: {:.6} (20 steps of a second-order sampler are this close)",
        (v(schedule.t_min()) / v(schedule.t_max())).sqrt()
    );
    Ok(())
}

//! The shortest useful program: sample Gaussian data with DPM-Solver++(2M) and take the
//! gradient of a loss on the sample with respect to the starting noise.
//!
//! Run: `cargo run --release --example quickstart`

use adeis::compiler::{build_plan, Method, SamplerSpec, ScheduleDef};
use adeis::runtime::adjoint::{discrete_adjoint, StateStorage, Wrt};
use adeis::runtime::analytic::GaussianModel;
use adeis::runtime::dfdx::prelude::*;
use adeis::runtime::{from_f64, to_f64, ModelFn, NoiseSource};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let schedule = ScheduleDef::vp_linear(0.1, 20.0)?.compile()?;
    let plan = build_plan(&schedule, &SamplerSpec::new(Method::DpmSolverPp, 2, 20))?;
    let model = GaussianModel {
        mu: 1.0,
        s2: 0.3,
        dim: 3,
    };
    let x_t = from_f64::<f32, Cpu>(&Cpu::default(), &[0.5, -1.0, 2.0], 1, 3);
    // L = sum(x_0): the cotangent is all ones.
    let ones = from_f64::<f32, Cpu>(&Cpu::default(), &[1.0; 3], 1, 3);
    let g = discrete_adjoint(
        &plan,
        &schedule,
        &ModelFn::new(&model),
        &x_t,
        None,
        &NoiseSource::Seeded(0),
        Wrt {
            cond: false,
            params: false,
        },
        StateStorage::Record,
        |_| Ok(ones.clone()),
    )?;
    println!("x_0      = {:?}", to_f64(&g.x0));
    println!("dL/dx_T  = {:?}", to_f64(&g.dx_t));
    // The exact flow's gradient (MATH.md section 4): sqrt(v_0 / v_T), v = alpha^2 s2 + sigma^2.
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

//! Declare a schedule no built-in covers, sample with it and take a gradient through the
//! sampler.
//!
//! Run: `cargo run --release --example custom_schedule`

use adeis::prelude::*;
use adeis::runtime::analytic::GaussianModel;
use adeis::runtime::loss::mse;
use adeis::runtime::noise::normals;
use adeis::runtime::{from_f64, to_f64};

adeis::schedule! {
    /// A variance-preserving schedule whose log-SNR bends: cubic in t.
    pub BentVp(a = 3.0, c = 0.4) {
        alpha(t) = exp(-a * t^3 - c * t);
        sigma(t) = sqrt(-expm1(2.0 * log_alpha(t)));
        t in [1e-3, 1.0];
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let schedule = BentVp::new().a(2.5).compile()?;
    println!(
        "f(t)  = {}",
        BentVp::def().expression(adeis::compiler::Quantity::F)
    );
    // The sampler's plan and the gradient method, built once: the discrete adjoint with
    // recorded states, with respect to x_T, z and the model's parameters.
    let problem = Problem::new(schedule, &SamplerSpec::new(Method::DpmSolverPp, 2, 25))?
        .with_adjoint(Adjoint::default())?
        .with_wrt(Wrt::ALL);
    let plan = problem.plan();
    println!(
        "{}: {} steps, NFE {}",
        plan.description,
        plan.steps(),
        plan.nfe()
    );

    // Gaussian data N(0.5, 0.2 I) in 4 dimensions; its mean is the conditioning z.
    let dev = Cpu::default();
    let model = GaussianModel {
        mu: 0.5,
        s2: 0.2,
        dim: 4,
    };
    let x_t = from_f64::<f32, Cpu>(&dev, &normals(1, 0, 8), 2, 4);
    let z = from_f64::<f32, Cpu>(&dev, &[0.5; 8], 2, 4);
    let f = ModelFn::new(&model);
    let noise = NoiseSource::Seeded(0);
    let input = Input::new(&x_t, Some(&z), &noise);
    let x0 = sample(plan, &f, &input, false)?.x;
    println!("x0 = {:?}", to_f64(&x0));

    // Steer the sample towards a target: dL/dx_T and dL/dz of the mean squared error.
    let target = from_f64::<f32, Cpu>(&dev, &[1.0; 8], 2, 4);
    let g = gradient(&problem, &f, &input, |x0| Ok(mse(x0, &target)?.grad))?;
    println!("dL/dx_T = {:?}", to_f64(&g.dx_t));
    println!("dL/dz   = {:?}", to_f64(g.dz.as_ref().unwrap()));
    println!("{} model evaluations, {} VJPs", g.nfe, g.vjps);
    Ok(())
}

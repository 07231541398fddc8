//! The DSL alone: a schedule of one's own, a problem that sets the schedule's parameter inside
//! `diffusion!`, a loss written as a closure that captures its target, a gradient checked
//! against finite differences, and a sweep over the parameter. It imports `adeis::prelude::*`
//! and nothing else.
//!
//! Run: `cargo run --release --example dsl_sweep`

use adeis::prelude::*;

adeis::schedule! {
    /// A variance-preserving schedule whose log alpha is a power of t: `-c t^p`.
    pub PowerVp(c = 5.0, p = 2.0) {
        log_alpha(t) = -c * t^p;
        sigma(t) = sqrt(-expm1(2.0 * log_alpha(t)));
        t in [1e-3, 1.0];
    }
}

adeis::diffusion! {
    /// Steer a sample towards a target, through 15 steps of DPM-Solver++(2M).
    pub Steer {
        schedule: PowerVp(p = 1.5),     // the declaration's value; c keeps its default 5.0
        sampler: dpm_solver_pp(order = 2, steps = 15),
        gradient: discrete,             // the exact gradient of these 15 steps
        wrt: [x_t, cond],
        // no `loss:`: the loss is a closure given to gradient_with below
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let schedule = Steer::schedule()?;
    println!(
        "PowerVp(p = 1.5): alpha(0.5) = {:.6}, sigma(0.5) = {:.6}, lambda(0.5) = {:.6}, t in [{}, {}]",
        schedule.alpha(0.5),
        schedule.sigma(0.5),
        schedule.lambda(0.5),
        schedule.t_min(),
        schedule.t_max()
    );

    // Gaussian data whose mean is the conditioning z, in 3 dimensions, 2 samples; f64 so
    // that finite differences are meaningful to many digits.
    let model = GaussianModel {
        mu: 0.0,
        s2: 0.3,
        dim: 3,
    };
    let dev = Cpu::default();
    let x_t = from_f64::<f64, Cpu>(&dev, &[0.8, -1.1, 0.3, 1.4, 0.2, -0.6], 2, 3);
    let z = x_t.with_values(&[0.5; 6])?;
    // The target, captured by the closure: a state of x_0's shape from host values.
    let target = x_t.with_values(&[1.0, 0.0, -1.0, 0.5, 0.5, 0.5])?;
    let loss = |x0: Taped<f64, Cpu>| (x0 - &target).square().sum();

    let (value, g) = Steer::gradient_with(&model, &x_t, Some(&z), 0, loss)?;
    println!(
        "L = {value:.6}, {} model evaluations, {} VJPs",
        g.nfe, g.vjps
    );

    // Finite differences of the same loss through the same sampler, for x_T and for z.
    let loss_at = |x_t: &State<f64, Cpu>, z: &State<f64, Cpu>| -> Result<f64, RuntimeError> {
        let x0 = Steer::sample(&model, x_t, Some(z), 0)?.to_f64();
        Ok(x0
            .iter()
            .zip(target.to_f64())
            .map(|(a, b)| (a - b) * (a - b))
            .sum())
    };
    let h = 1e-6;
    let mut worst: f64 = 0.0;
    for (which, exact) in [
        ("x_T", g.dx_t.to_f64()),
        ("z", g.dz.as_ref().unwrap().to_f64()),
    ] {
        for (i, exact_i) in exact.iter().enumerate() {
            let nudged = |d: f64| -> Result<f64, RuntimeError> {
                let (mut xs, mut zs) = (x_t.to_f64(), z.to_f64());
                if which == "x_T" {
                    xs[i] += d;
                } else {
                    zs[i] += d;
                }
                loss_at(&x_t.with_values(&xs)?, &z.with_values(&zs)?)
            };
            let fd = (nudged(h)? - nudged(-h)?) / (2.0 * h);
            worst = worst.max((fd - exact_i).abs() / exact_i.abs().max(1.0));
        }
        println!("dL/d{which} = {:?}", rounded(&exact));
    }
    println!("largest difference from central finite differences: {worst:.1e}");
    if worst > 1e-7 {
        return Err(format!("the gradient differs from finite differences by {worst:.1e}").into());
    }

    // A sweep over p: each value compiles its schedule and plan once (cached per value).
    for p in [1.0, 1.5, 2.0, 3.0] {
        let steer = Steer::problem_with(Steer::declared_schedule().p(p))?;
        let (value, g) = steer.gradient_with(&model, &x_t, Some(&z), 0, |x0| {
            (x0 - &target).square().sum()
        })?;
        let norm = g.dx_t.to_f64().iter().map(|v| v * v).sum::<f64>().sqrt();
        println!("p = {p}: L = {value:.6}, |dL/dx_T| = {norm:.6}");
    }

    // A value outside the schedule's domain is an error naming the parameter.
    let refused = Steer::problem_with(PowerVp::new().p(-1.0)).unwrap_err();
    println!("p = -1: {refused}");
    Ok(())
}

fn rounded(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| (x * 1e6).round() / 1e6).collect()
}

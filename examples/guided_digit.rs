//! Guided generation: make the *unconditional* digits model draw a chosen digit by optimising
//! the starting noise x_T through the sampler against the classifier's cross-entropy.
//!
//! ```sh
//! cargo run --release --example guided_digit -- [DIGIT] [ITERATIONS]   # default: 7, 30
//! ```
//! Writes adeis-out/guided_digit.png (top row: the unconditional samples from the initial
//! noises; bottom row: after optimisation) and prints how sure the classifier is of DIGIT.

use adeis::compiler::{build_plan, GradientSpec};
use adeis::digits::data::{CLASSES, SIDE};
use adeis::digits::nets::{default_models_dir, one_hot, DigitsModels, NULL_CLASS};
use adeis::morph::{Optimizer, Step};
use adeis::runtime::adjoint::compute_gradient;
use adeis::runtime::dfdx::prelude::*;
use adeis::runtime::loss::tape_loss;
use adeis::runtime::{from_f64, sample, to_f64, ModelFn, NoiseSource};

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let digit: usize = args
        .first()
        .map_or(Ok(7), |s| s.parse())
        .map_err(|e| format!("DIGIT: {e}"))?;
    let iters: usize = args
        .get(1)
        .map_or(Ok(30), |s| s.parse())
        .map_err(|e| format!("ITERATIONS: {e}"))?;
    if digit >= CLASSES {
        return Err(format!("DIGIT {digit}: digits are 0 to 9"));
    }
    let models = DigitsModels::load(&default_models_dir())?;
    let dev = models.dev.clone();
    let schedule = adeis::digits::schedule()?;
    let spec = adeis::digits::sampler(serde_json::json!({"method": "ddim", "steps": 20}))?;
    let plan = build_plan(&schedule, &spec).map_err(|e| e.message)?;
    let batch = 8;
    // The unconditional model: every sample gets the "no class" embedding.
    let z = models.cond(&vec![NULL_CLASS; batch]);
    let model = ModelFn::new(&models.denoiser);
    let noise = NoiseSource::Seeded(0);
    let target = dev.tensor_from_vec(one_hot(&vec![digit; batch], CLASSES), (batch, CLASSES));
    // L = cross-entropy of the classifier's logits against DIGIT, on dfdx's tape.
    let loss = |x0: &adeis::runtime::Batch<f32, Cpu>| {
        tape_loss(x0, |x| {
            let logits = models.logits_taped(x);
            cross_entropy_with_logits_loss(logits, target.clone()) * (batch as f32)
        })
    };
    let prob = |x0: &adeis::runtime::Batch<f32, Cpu>| -> Vec<f64> {
        let logits = to_f64(&models.logits_taped(x0.leaky_trace()).retaped::<NoneTape>());
        logits
            .chunks_exact(CLASSES)
            .map(|r| {
                let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = r.iter().map(|v| (v - m).exp()).sum();
                (r[digit] - m).exp() / s
            })
            .collect()
    };
    let generate = |x: &[f64]| {
        sample(
            &plan,
            &schedule,
            &model,
            &from_f64(&dev, x, batch, 64),
            Some(&z),
            &noise,
            false,
        )
        .map(|out| out.x)
        .map_err(|e| e.to_string())
    };
    let mut x = to_f64(&adeis::digits::noise(&dev, 11, batch));
    let first = generate(&x)?;
    // The exact gradient of the DDIM sampler (discrete adjoint), with respect to x_T only.
    let grad_spec = GradientSpec::default();
    let mut opt = Step::new(Optimizer::Adam, 0.05, x.len());
    for k in 0..iters {
        let xt = from_f64(&dev, &x, batch, 64);
        let mut value = 0.0;
        let g = compute_gradient(
            &plan,
            &schedule,
            &model,
            &xt,
            Some(&z),
            &noise,
            &grad_spec,
            false,
            |x0| {
                let l = loss(x0)?;
                value = l.value / batch as f64;
                Ok(l.grad)
            },
        )
        .map_err(|e| e.to_string())?;
        if k % 10 == 0 || k + 1 == iters {
            println!("iteration {k:3}: cross-entropy {value:.4}");
        }
        opt.apply(&mut x, &to_f64(&g.dx_t));
    }
    let last = generate(&x)?;
    let (p0, p1) = (prob(&first), prob(&last));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "classifier's probability of {digit}: {:.3} before, {:.3} after ({iters} iterations)",
        mean(&p0),
        mean(&p1)
    );
    std::fs::create_dir_all("adeis-out").map_err(|e| e.to_string())?;
    let grid = adeis::image::digit_grid(
        &[adeis::digits::rows(&first), adeis::digits::rows(&last)],
        SIDE,
        8,
        4,
    );
    grid.save_png(std::path::Path::new("adeis-out/guided_digit.png"))?;
    println!("wrote adeis-out/guided_digit.png (top: unconditional samples; bottom: guided towards {digit})");
    Ok(())
}

//! Guided generation: make the *unconditional* digits model draw a chosen digit by optimising
//! the starting noise x_T through the sampler against the classifier's cross-entropy.
//!
//! ```sh
//! cargo run --release --example guided_digit -- [DIGIT] [ITERATIONS]   # default: 7, 30
//! ```
//! Writes adeis-out/guided_digit.png (top row: the unconditional samples from the initial
//! noises; bottom row: after optimisation) and prints how sure the classifier is of DIGIT.

use adeis::prelude::*;
use adeis::runtime::loss::tape_loss;
use adeis::runtime::optim::{Optimizer, OptimizerKind};
use adeis::runtime::{from_f64, to_f64};
use adeis_digits::data::{CLASSES, SIDE};
use adeis_digits::nets::{one_hot, DigitsModels, NULL_CLASS};

fn main() -> Result<(), Box<dyn std::error::Error>> {
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
        return Err(format!("DIGIT {digit}: digits are 0 to 9").into());
    }
    let models = DigitsModels::committed()?;
    let dev = models.dev.clone();
    // The exact gradient of the DDIM sampler (the default method: the discrete adjoint), with
    // respect to x_T only.
    let spec = adeis_digits::sampler(serde_json::json!({"method": "ddim", "steps": 20}))?;
    let problem = adeis_digits::generate::problem(&spec)?;
    let batch = 8;
    // The unconditional model: every sample gets the "no class" embedding.
    let z = models.cond(&vec![NULL_CLASS; batch]);
    let model = ModelFn::new(&models.denoiser);
    let noise = NoiseSource::Seeded(0);
    let target = dev.tensor_from_vec(one_hot(&vec![digit; batch], CLASSES), (batch, CLASSES));
    // L = cross-entropy of the classifier's logits against DIGIT, on dfdx's tape.
    let loss = |x0: &State<f32, Cpu>| {
        tape_loss(x0, |x| {
            let logits = models.logits_taped(x);
            cross_entropy_with_logits_loss(logits, target.clone()) * (batch as f32)
        })
    };
    let prob = |x0: &State<f32, Cpu>| -> Vec<f64> {
        let logits = to_f64(
            &models
                .logits_taped(x0.rows().leaky_trace())
                .retaped::<NoneTape>(),
        );
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
        let x_t = from_f64(&dev, x, batch, 64);
        sample(
            problem.plan(),
            &model,
            &Input::new(&x_t, Some(&z), &noise),
            false,
        )
        .map(|out| out.x)
    };
    let mut x = to_f64(&adeis_digits::noise(&dev, 11, batch));
    let first = generate(&x)?;
    let mut opt = Optimizer::new(OptimizerKind::Adam, 0.05, x.len());
    for k in 0..iters {
        let xt = from_f64(&dev, &x, batch, 64);
        let mut value = 0.0;
        let g = gradient(&problem, &model, &Input::new(&xt, Some(&z), &noise), |x0| {
            let l = loss(x0)?;
            value = l.value / batch as f64;
            Ok(l.grad)
        })?;
        if k % 10 == 0 || k + 1 == iters {
            println!("iteration {k:3}: cross-entropy {value:.4}");
        }
        opt.step(&mut x, &to_f64(&g.dx_t));
    }
    let last = generate(&x)?;
    let (p0, p1) = (prob(&first), prob(&last));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "classifier's probability of {digit}: {:.3} before, {:.3} after ({iters} iterations)",
        mean(&p0),
        mean(&p1)
    );
    std::fs::create_dir_all("adeis-out")?;
    let grid = adeis_digits::image::digit_grid(
        &[adeis_digits::rows(&first), adeis_digits::rows(&last)],
        SIDE,
        8,
        4,
    );
    grid.save_png(std::path::Path::new("adeis-out/guided_digit.png"))?;
    println!("wrote adeis-out/guided_digit.png (top: unconditional samples; bottom: guided towards {digit})");
    Ok(())
}

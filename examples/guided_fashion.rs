//! Guided generation at 28x28: make the *unconditional* Fashion-MNIST UNet ("no class") draw a
//! chosen class by optimising the starting noise x_T through the sampler (DDIM, the exact
//! discrete adjoint) against the convolutional classifier's cross-entropy.
//!
//! ```sh
//! cargo run --release --example guided_fashion -- [CLASS] [ITERATIONS]   # default: 9, 20
//! ```
//! CLASS is 0..9 (T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag,
//! Ankle boot). Writes adeis-out/guided_fashion.png (top row: the unconditional samples from
//! the initial noises; bottom row: after optimisation) and prints how sure the classifier is of
//! CLASS before and after.

use adeis::prelude::*;
use adeis::runtime::loss::tape_loss;
use adeis::runtime::optim::{Optimizer, OptimizerKind};
use adeis::runtime::to_f64;
use adeis_digits::nets::one_hot;
use adeis_fashion::data::{CLASSES, CLASS_NAMES};
use adeis_fashion::unet::NULL_CLASS;
use adeis_fashion::FashionModels;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let class: usize = args
        .first()
        .map_or(Ok(9), |s| s.parse())
        .map_err(|e| format!("CLASS: {e}"))?;
    let iters: usize = args
        .get(1)
        .map_or(Ok(20), |s| s.parse())
        .map_err(|e| format!("ITERATIONS: {e}"))?;
    if class >= CLASSES {
        return Err(format!("CLASS {class}: the classes are 0 to 9").into());
    }
    let models = FashionModels::committed()?;
    let dev = models.dev.clone();
    let problem =
        adeis_fashion::generate::problem(serde_json::json!({"method": "ddim", "steps": 10}))?;
    let batch = 8;
    // The unconditional model: every sample gets the "no class" embedding.
    let z = models.unet.class_cond(&vec![NULL_CLASS; batch])?;
    let model = ModelFn::new(&models.unet);
    let noise = NoiseSource::Seeded(0);
    let target = dev.tensor_from_vec(one_hot(&vec![class; batch], CLASSES), (batch, CLASSES));
    // L = cross-entropy of the classifier's logits against CLASS, on dfdx's tape.
    let loss = |x0: &State<f32, Cpu>| {
        tape_loss(x0, |x| {
            let logits = models.classifier.logits_taped(x);
            cross_entropy_with_logits_loss(logits, target.clone()) * (batch as f32)
        })
    };
    let prob = |x0: &State<f32, Cpu>| -> f64 {
        let read = models.classifier.classify(&x0.rows().as_vec());
        read.iter().filter(|c| **c == class).count() as f64 / read.len() as f64
    };
    let generate = |x: &State<f32, Cpu>| {
        sample(
            problem.plan(),
            &model,
            &Input::new(x, Some(&z), &noise),
            false,
        )
        .map(|out| out.x)
    };
    let start = adeis_fashion::generate::noise(&dev, 11, batch)?;
    let first = generate(&start)?;
    let mut x = to_f64(&start);
    let mut opt = Optimizer::new(OptimizerKind::Adam, 0.02, x.len());
    for k in 0..iters {
        let xt = State::from_f64(&dev, &x, &start.shape())?;
        let mut value = 0.0;
        let g = gradient(&problem, &model, &Input::new(&xt, Some(&z), &noise), |x0| {
            let l = loss(x0)?;
            value = l.value / batch as f64;
            Ok(l.grad)
        })?;
        if k % 5 == 0 || k + 1 == iters {
            println!("iteration {k:3}: cross-entropy {value:.4}");
        }
        opt.step(&mut x, &to_f64(&g.dx_t));
    }
    let last = generate(&State::from_f64(&dev, &x, &start.shape())?)?;
    println!(
        "read as {} by the classifier: {:.0}% of the samples before, {:.0}% after ({iters} iterations)",
        CLASS_NAMES[class],
        100.0 * prob(&first),
        100.0 * prob(&last)
    );
    std::fs::create_dir_all("adeis-out")?;
    let mut pixels = first.rows().as_vec();
    pixels.extend(last.rows().as_vec());
    adeis_fashion::generate::save_grid(
        &pixels,
        batch,
        std::path::Path::new("adeis-out/guided_fashion.png"),
    )?;
    println!(
        "wrote adeis-out/guided_fashion.png (top: unconditional samples; bottom: guided towards {})",
        CLASS_NAMES[class]
    );
    Ok(())
}

//! `adeis` without a command: the demo of the main job.

use std::path::PathBuf;

use anyhow::Result;

use super::{digits_error, option_error};
use adeis_digits::morph::{MorphMethod, MorphOptions, PairKind};

/// `adeis` without a command: a short demo of the main job.
pub fn demo() -> Result<()> {
    let out = PathBuf::from("adeis-out/demo");
    println!(
        "adeis demo: morphing pairs of handwritten digits by optimising the starting noise and the"
    );
    println!("conditioning through the sampler, with every gradient method (`adeis --help` lists the commands).\n");
    let opts = MorphOptions {
        out: out.clone(),
        pairs: 8,
        kind: PairKind::DifferentClass,
        iters: 40,
        steps: 20,
        ..MorphOptions::default()
    };
    let r = adeis_digits::morph::run(&opts).map_err(digits_error)?;
    let models = adeis_digits::nets::DigitsModels::committed().map_err(digits_error)?;
    let grid = out.join("samples.png");
    let agree = adeis_digits::sample_grid(&models, 0, &grid).map_err(digits_error)?;
    println!("{}", adeis_digits::morph::table(&r));
    println!(
        "generated digits: {} (row c = class c; the classifier reads {:.0}% as the class asked for)",
        grid.display(),
        100.0 * agree
    );
    println!("morphs: {}", adeis_digits::morph::describe(&out));

    // The same experiment at real size, on the committed Fashion-MNIST UNet and convolutional
    // classifier: fewer pairs, iterations and steps, so the demo stays within seconds.
    let fashion_out = out.join("fashion-mnist");
    println!("\nThe same at 28x28 with the committed convolutional UNet (Fashion-MNIST): 4 pairs, 10 iterations, 10 DDIM steps.\n");
    let opts = MorphOptions {
        out: fashion_out.clone(),
        pairs: 4,
        kind: PairKind::DifferentClass,
        iters: 10,
        steps: 10,
        methods: MorphMethod::parse_list("none,adjoint_deis_1,discrete").map_err(option_error)?,
        ..MorphOptions::default()
    };
    let r = adeis_fashion::models::morph(&opts).map_err(digits_error)?;
    let models = adeis_fashion::FashionModels::committed().map_err(digits_error)?;
    let grid = fashion_out.join("samples.png");
    let agree =
        adeis_fashion::generate::sample_grid(&models.unet, &models.classifier, 3, 1.0, 0, &grid)
            .map_err(digits_error)?;
    println!("{}", adeis_digits::morph::table(&r));
    println!(
        "generated clothing: {} (row c = class c; the classifier reads {:.0}% as the class asked for)",
        grid.display(),
        100.0 * agree
    );
    println!("morphs: {}", adeis_digits::morph::describe(&fashion_out));
    println!("\nThe evaluations of docs/main-job.md: `cargo run --release -- morph --pairs 100` (digits, about 10 seconds) and `cargo run --release -- morph --dataset fashion-mnist --pairs 20 --iters 30 --steps 10` (about 9 minutes).");
    Ok(())
}

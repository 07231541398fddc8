//! `adeis morph`: digit morphs optimised through the sampler, and their evaluation.

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::{digits_error, option_error, DatasetArg, OptimizerArg};
use adeis_digits::morph::{MorphMethod, MorphOptions, PairKind};

/// The options of `adeis morph`.
#[derive(clap::Args)]
pub struct MorphArgs {
    /// The models and held-out images: the 8x8 digits (MLP) or Fashion-MNIST (the UNet and the
    /// convolutional classifier; 1000 committed held-out test images).
    #[arg(long, value_enum, default_value_t = DatasetArg::Digits)]
    pub dataset: DatasetArg,
    /// Number of pairs (held-out images, chosen by --seed).
    #[arg(long, default_value_t = 1)]
    pub pairs: usize,
    /// Morph a digit of class A with one of class B, e.g. `--digits 3,8` (default: random
    /// pairs of different classes).
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub digits: Option<Vec<usize>>,
    /// Pairs of two different digits of the same class instead.
    #[arg(long, conflicts_with = "digits")]
    pub same_class: bool,
    /// Comma-separated: none, adjoint_deis_1, adjoint_deis_1_sde, adjoint_deis_2m,
    /// adjoint_deis_2m_sde, discrete, discrete_sde, tape, tape_sde, rex_reversible (Rex on half
    /// the steps, at DDIM's NFE, by the reversible gradient).
    #[arg(long, default_value = MorphMethod::DEFAULT)]
    pub methods: String,
    /// Optimisation iterations K per method.
    #[arg(long, default_value_t = 50)]
    pub iters: usize,
    /// Sampler steps N (DDIM for the ODE methods, SDE-DPM-Solver++1 for the SDE ones).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Optimiser of x_T and z: SGD, Adam, ADOPT (Taniguchi et al. 2024) or Adan (Xie et al. 2022).
    #[arg(long, value_enum, default_value_t = OptimizerArg::Adam)]
    pub optimizer: OptimizerArg,
    /// Learning rate.
    #[arg(long, default_value_t = 0.05)]
    pub lr: f64,
    /// Seed of the pair choice and of the SDE noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// AdjointDEIS on its own grid of M steps (uniform in lambda; forward states interpolated)
    /// instead of the sampling grid.
    #[arg(long, value_name = "M")]
    pub adjoint_steps: Option<usize>,
    /// Folder with denoiser.safetensors and classifier.safetensors (fashion-mnist: unet/ and
    /// classifier.safetensors) [default: the committed models, trained by `adeis train` and
    /// compiled into the program].
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Output folder.
    #[arg(long, default_value = "adeis-out/morph")]
    pub out: PathBuf,
    /// Write a picture for at most this many pairs.
    #[arg(long, default_value_t = 16)]
    pub max_pair_images: usize,
}

/// `adeis morph`.
pub fn morph(a: MorphArgs) -> Result<()> {
    let kind = match (&a.digits, a.same_class) {
        (Some(d), _) if d.len() == 2 => PairKind::Classes(d[0], d[1]),
        (Some(d), _) => bail!("--digits {d:?}: two digits, A,B (e.g. --digits 3,8)"),
        (None, true) => PairKind::SameClass,
        (None, false) => PairKind::DifferentClass,
    };
    let opts = MorphOptions {
        models: a.models,
        out: a.out,
        pairs: a.pairs,
        kind,
        methods: MorphMethod::parse_list(&a.methods).map_err(option_error)?,
        iters: a.iters,
        steps: a.steps,
        optimizer: a.optimizer.kind(),
        lr: a.lr,
        seed: a.seed,
        adjoint_steps: a.adjoint_steps,
        max_pair_images: a.max_pair_images,
        verbose: true,
    };
    let r = match a.dataset {
        DatasetArg::Digits => adeis_digits::morph::run(&opts),
        DatasetArg::FashionMnist => adeis_fashion::models::morph(&opts),
    }
    .map_err(digits_error)?;
    println!("{}", adeis_digits::morph::table(&r));
    println!(
        "verification: {}; wrote {}",
        adeis_digits::morph::verifier_summary(&r.verifier),
        adeis_digits::morph::describe(&opts.out)
    );
    Ok(())
}

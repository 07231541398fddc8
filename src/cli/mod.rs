//! The subcommands of the `adeis` program. Every command returns `anyhow::Result`; `main`
//! prints the error in one place.

pub mod check;
pub mod grad;
pub mod inputs;
pub mod learn;
pub mod model;
pub mod sample;
pub mod schedule;

use std::path::{Path, PathBuf};

use adeis::compiler::FieldError;
use adeis::prelude::*;
use adeis::runtime::optim::OptimizerKind;
use adeis_digits::morph::{MorphMethod, MorphOptions, PairKind};
use adeis_digits::train::{Network, TrainOptions};
use anyhow::{anyhow, bail, Result};

/// A schedule from a built-in name or a spec file.
pub fn schedule_def(arg: &str) -> Result<ScheduleDef> {
    let path = Path::new(arg);
    if path.extension().is_some() || path.exists() {
        let spec = load_spec(path)?;
        return spec.schedule_def().map_err(|e| anyhow!("{arg}: {e}"));
    }
    match ScheduleSpec::builtin(arg) {
        Some(spec) => Ok(spec.to_def()?),
        None => bail!(
            "`{arg}` is neither a built-in schedule ({}) nor a spec file (.toml or .json)",
            ScheduleDef::BUILTIN_NAMES.join(", ")
        ),
    }
}

/// Loads a spec with a [sampler] table (or a diffusers scheduler config, with `steps`) and
/// builds its problem (`command` names the caller in errors, which carry the file's path and
/// the key path). A spec without a [schedule] takes the one the model's directory gives; a
/// scheduler config's `prediction_type` must be what the model predicts.
pub fn load_problem(
    path: &Path,
    steps: Option<usize>,
    command: &str,
    model: &model::ModelChoice,
) -> Result<(Problem, inputs::SpecModelOptions)> {
    let loaded = adeis::spec_file::load_spec_file(path, steps)?;
    let mut spec = loaded.spec;
    if spec.schedule.is_none() {
        spec.schedule = model.schedule()?;
    }
    if loaded.from_diffusers {
        let declared = spec.sampler.as_ref().map(|s| s.prediction);
        let predicts = model.prediction()?;
        if declared != Some(predicts) {
            bail!(
                "{}: prediction_type says the model predicts {}, but {} predicts {}",
                path.display(),
                model::prediction_name(declared.unwrap_or_default()),
                model.name(),
                model::prediction_name(predicts)
            );
        }
    }
    if spec.sampler.is_none() {
        bail!(
            "{}: no [sampler] table; `adeis {command}` needs one",
            path.display()
        );
    }
    let problem = Problem::from_spec(&spec).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok((
        problem,
        inputs::SpecModelOptions {
            guidance: spec.guidance,
            thresholding: spec.thresholding,
        },
    ))
}

/// Reads a [batch, dim] array.
pub fn read_2d(flag: &str, path: &Path) -> Result<adeis::npy::NpyArray> {
    let a = adeis::npy::read_npy(path).map_err(|e| anyhow!("{flag}: {e}"))?;
    if a.shape.len() != 2 {
        bail!(
            "{flag}: {} has shape {:?}; expected [batch, dim]",
            path.display(),
            a.shape
        );
    }
    Ok(a)
}

/// The precision of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dtype {
    F32,
    F64,
}

/// An option of the digits application with a value it does not allow, as the flag the user
/// typed: `--pairs 0: at least one pair`.
pub(crate) fn option_error(e: FieldError) -> anyhow::Error {
    let flag = format!("--{}", e.key.replace('_', "-"));
    match &e.value {
        Some(v) => anyhow!("{flag} {v}: {}", e.allowed),
        None => anyhow!("{flag}: {}", e.allowed),
    }
}

/// The digits application's errors, with options named as flags.
pub(crate) fn digits_error(e: adeis_digits::Error) -> anyhow::Error {
    match e {
        adeis_digits::Error::Option(fe) => option_error(fe),
        other => anyhow::Error::new(other),
    }
}

/// Which network `adeis train --only` trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnlyNetwork {
    Denoiser,
    Classifier,
}

/// The dataset of `adeis train`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DatasetArg {
    /// The 8x8 digits (an MLP denoiser and classifier; the quick path).
    Digits,
    /// Fashion-MNIST at 28x28 (a convolutional UNet2DModel and classifier).
    FashionMnist,
}

/// The options of `adeis train`.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// What to train on.
    #[arg(long, value_enum, default_value_t = DatasetArg::Digits)]
    pub dataset: DatasetArg,
    /// Output folder [default: adeis-out/digits for digits, adeis-out/fashion-mnist for
    /// fashion-mnist; the committed models are in models/digits and models/fashion-mnist, which
    /// only an explicit --out overwrites].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Optimiser steps of the denoiser (the UNet for fashion-mnist) [default: 30000 for digits,
    /// 2400 for fashion-mnist].
    #[arg(long)]
    pub denoiser_steps: Option<usize>,
    /// Optimiser steps of the classifier [default: 4000 for digits, 1500 for fashion-mnist].
    #[arg(long)]
    pub classifier_steps: Option<usize>,
    /// Images per step [default: 128 for digits, 64 for fashion-mnist].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Peak learning rate (cosine decay to a tenth of it) [default: 1e-3 for digits, 2e-3 for
    /// fashion-mnist].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Seed of the initial weights, the batches, the times and the noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Probability of training an image as "no class" (classifier-free guidance).
    #[arg(long, default_value_t = 0.1)]
    pub cfg_dropout: f64,
    /// Save the weights every this many steps (0: only at the end) [default: 2000 for digits,
    /// 200 for fashion-mnist].
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Skip the grid of generated images at the end.
    #[arg(long)]
    pub no_sample_grid: bool,
    /// Train only this network; the other is loaded from --out.
    #[arg(long, value_enum)]
    pub only: Option<OnlyNetwork>,
    /// fashion-mnist: the folder of the IDX files (Debian's dataset-fashion-mnist package;
    /// scripts/install-fashion-mnist.sh installs it).
    #[arg(long, default_value = adeis_fashion::data::DEFAULT_DIR)]
    pub data: PathBuf,
    /// fashion-mnist: linear warm-up of the learning rate over this many steps.
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// fashion-mnist: the optimiser of both networks.
    #[arg(long, value_enum, default_value_t = OptimizerArg::Adam)]
    pub optimizer: OptimizerArg,
    /// fashion-mnist: decay of the UNet's weight average (EMA).
    #[arg(long, default_value_t = 0.998)]
    pub ema_decay: f64,
    /// fashion-mnist: train on the first this many of the 60,000 training images.
    #[arg(long)]
    pub train_images: Option<usize>,
}

/// `adeis train`.
pub fn train(a: TrainArgs) -> Result<()> {
    if a.dataset == DatasetArg::FashionMnist {
        return train_fashion(a);
    }
    let d = TrainOptions::default();
    let opts = &TrainOptions {
        out: a.out.unwrap_or(d.out),
        denoiser_steps: a.denoiser_steps.unwrap_or(d.denoiser_steps),
        classifier_steps: a.classifier_steps.unwrap_or(d.classifier_steps),
        batch: a.batch.unwrap_or(d.batch),
        lr: a.lr.unwrap_or(d.lr),
        seed: a.seed,
        cfg_dropout: a.cfg_dropout,
        checkpoint_every: a.checkpoint_every.unwrap_or(d.checkpoint_every),
        sample_grid: !a.no_sample_grid,
        only: a.only.map(|n| match n {
            OnlyNetwork::Denoiser => Network::Denoiser,
            OnlyNetwork::Classifier => Network::Classifier,
        }),
    };
    let r = adeis_digits::train::run(opts).map_err(digits_error)?;
    println!(
        "denoiser: {} steps in {:.0} s, loss {:.4} (held-out {:.4}); classifier: {} steps in {:.0} s, held-out accuracy {:.1}%",
        r.denoiser_steps,
        r.denoiser_seconds,
        r.denoiser_final_loss,
        r.denoiser_heldout_loss,
        r.classifier_steps,
        r.classifier_seconds,
        100.0 * r.classifier_heldout_accuracy
    );
    if let Some(a) = r.samples_read_as_asked {
        println!(
            "generated digits read as the class asked for: {:.1}%",
            100.0 * a
        );
    }
    println!(
        "wrote {}/{{denoiser,classifier}}.safetensors, training.json{}",
        opts.out.display(),
        if opts.sample_grid {
            ", samples.png"
        } else {
            ""
        }
    );
    Ok(())
}

/// `adeis train --dataset fashion-mnist`.
fn train_fashion(a: TrainArgs) -> Result<()> {
    use adeis_fashion::train::{Network as FashionNetwork, TrainOptions as FashionOptions};
    let d = FashionOptions::default();
    let opts = &FashionOptions {
        out: a.out.unwrap_or(d.out),
        data: a.data,
        unet_steps: a.denoiser_steps.unwrap_or(d.unet_steps),
        classifier_steps: a.classifier_steps.unwrap_or(d.classifier_steps),
        batch: a.batch.unwrap_or(d.batch),
        lr: a.lr.unwrap_or(d.lr),
        warmup: a.warmup,
        seed: a.seed,
        cfg_dropout: a.cfg_dropout,
        ema_decay: a.ema_decay,
        optimizer: a.optimizer.kind(),
        checkpoint_every: a.checkpoint_every.unwrap_or(d.checkpoint_every),
        sample_grid: !a.no_sample_grid,
        train_images: a.train_images,
        only: a.only.map(|n| match n {
            OnlyNetwork::Denoiser => FashionNetwork::Unet,
            OnlyNetwork::Classifier => FashionNetwork::Classifier,
        }),
    };
    let r = adeis_fashion::train::run(opts).map_err(digits_error)?;
    println!(
        "unet ({} parameters): {} steps in {:.0} s, loss {:.4} (held-out {:.4}); classifier ({} parameters): {} steps in {:.0} s, held-out accuracy {:.1}%",
        r.unet_params,
        r.unet_steps,
        r.unet_seconds,
        r.unet_final_loss,
        r.unet_heldout_loss,
        r.classifier_params,
        r.classifier_steps,
        r.classifier_seconds,
        100.0 * r.classifier_heldout_accuracy
    );
    if let Some(a) = r.samples_read_as_asked {
        println!(
            "generated images read as the class asked for: {:.1}%",
            100.0 * a
        );
    }
    println!(
        "wrote {0}/unet (config.json, diffusion_pytorch_model.safetensors, scheduler_config.json), {0}/classifier.safetensors, training.json, training.log{1}",
        opts.out.display(),
        if opts.sample_grid { ", samples.png" } else { "" }
    );
    Ok(())
}

/// The optimiser of `adeis morph`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OptimizerArg {
    Sgd,
    Adam,
    Adopt,
    Adan,
}

impl OptimizerArg {
    pub fn kind(self) -> OptimizerKind {
        match self {
            OptimizerArg::Sgd => OptimizerKind::Sgd,
            OptimizerArg::Adam => OptimizerKind::Adam,
            OptimizerArg::Adopt => OptimizerKind::Adopt,
            OptimizerArg::Adan => OptimizerKind::Adan,
        }
    }
}

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
    /// adjoint_deis_2m_sde, discrete, discrete_sde, tape, tape_sde.
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
        "verification threshold {:.4} (FMR {:.3}%, FNMR {:.2}%); wrote {}",
        r.verifier.threshold,
        100.0 * r.verifier.fmr,
        100.0 * r.verifier.fnmr,
        adeis_digits::morph::describe(&opts.out)
    );
    Ok(())
}

/// The options of `adeis finetune`.
#[derive(clap::Args)]
pub struct FinetuneArgs {
    /// Folder with unet/ and classifier.safetensors [default: the committed Fashion-MNIST
    /// models].
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Output folder.
    #[arg(long, default_value = "adeis-out/finetune")]
    pub out: PathBuf,
    /// Optimisation iterations.
    #[arg(long, default_value_t = 40)]
    pub iters: usize,
    /// Images per iteration (their classes cycle through 0..9).
    #[arg(long, default_value_t = 10)]
    pub batch: usize,
    /// DDIM steps N of the sampler fine-tuned through.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f64,
    /// Optimiser of the weights.
    #[arg(long, value_enum, default_value_t = OptimizerArg::Adam)]
    pub optimizer: OptimizerArg,
    /// Weight lambda of the proximal penalty (lambda / 2) |theta - theta_0|^2.
    #[arg(long, default_value_t = 10.0)]
    pub penalty: f64,
    /// Held-out seeds per class of the evaluation.
    #[arg(long, default_value_t = 10)]
    pub eval_per_class: usize,
    /// Evaluate on the held-out seeds every this many iterations.
    #[arg(long, default_value_t = 5)]
    pub eval_every: usize,
    /// Seed of the training noises (the held-out seeds are a separate stream).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How the gradient through the sampler is taken: discrete (the exact discrete adjoint,
    /// memory independent of the steps), adjoint_deis (AdjointDEIS-1) or tape (the reference;
    /// memory grows with the steps).
    #[arg(long, default_value_t = adeis::compiler::GradMethod::Discrete)]
    pub gradient: adeis::compiler::GradMethod,
    /// Early stopping: never keep weights whose held-out samples' diversity (within-class RMS
    /// distance) is below this fraction of the trained model's.
    #[arg(long, default_value_t = 0.8)]
    pub min_diversity: f64,
}

/// `adeis finetune`.
pub fn finetune(a: FinetuneArgs) -> Result<()> {
    use adeis_fashion::finetune::FinetuneOptions;
    let opts = FinetuneOptions {
        models: a.models,
        out: a.out,
        iters: a.iters,
        batch: a.batch,
        steps: a.steps,
        lr: a.lr,
        optimizer: a.optimizer.kind(),
        penalty: a.penalty,
        eval_per_class: a.eval_per_class,
        eval_every: a.eval_every,
        seed: a.seed,
        gradient: a.gradient,
        min_diversity: a.min_diversity,
        verbose: true,
    };
    let r = adeis_fashion::finetune::run(&opts).map_err(digits_error)?;
    println!(
        "held-out reward log p(class | x_0): {:.4} before, {:.4} after (weights of iteration {}); read as their class: {:.1}% -> {:.1}%",
        r.heldout_reward_before,
        r.heldout_reward_after,
        r.kept_iteration,
        100.0 * r.heldout_accuracy_before,
        100.0 * r.heldout_accuracy_after
    );
    println!(
        "{:.1} s ({:.2} s per iteration), peak memory {}; wrote {}/report.md, before.png, after.png, reward_curve.png, unet/",
        r.seconds,
        r.seconds_per_iteration,
        r.peak_memory_mib.map_or("unknown".into(), |m| format!("{m:.0} MiB")),
        opts.out.display()
    );
    Ok(())
}

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
    println!("\nThe evaluations in the README: `cargo run --release -- morph --pairs 100` (digits, about 10 seconds) and `cargo run --release -- morph --dataset fashion-mnist --pairs 20 --iters 30 --steps 10` (about 9 minutes).");
    Ok(())
}

/// The options of `adeis bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// w1 (D 64, H 256, batch 16), w2 (D 784, H 2048, batch 64), w3 (the google/ddpm-cifar10-32
    /// UNet, 3x32x32, batch 1; gradient w.r.t. x_T) or tiny (for CI).
    #[arg(long, default_value = "w1")]
    pub workload: String,
    /// cpu, or cuda (a build with the `cuda` feature and an NVIDIA GPU).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// sample, discrete, adjoint_deis or tape.
    #[arg(long, default_value = "discrete")]
    pub method: String,
    /// AdjointDEIS order (1 or 2).
    #[arg(long, default_value_t = 1)]
    pub order: usize,
    /// Sampler steps N (DDIM on a logsnr grid).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Timed runs after one warm-up; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// States of the discrete adjoint: record or checkpoint (sqrt(N) slots).
    #[arg(long, default_value = "record")]
    pub states: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `adeis noise`: standard normals of `shape` from `seed`.
pub fn noise(shape: &[usize], seed: u64, out: &Path, dtype: Dtype) -> Result<()> {
    if shape.is_empty() || shape.contains(&0) {
        bail!("--shape {shape:?}: one or more sizes, each at least 1 (e.g. --shape 1,3,32,32)");
    }
    let n = shape
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(*d))
        .filter(|n| *n <= 1 << 31)
        .ok_or_else(|| anyhow!("--shape {shape:?}: at most 2^31 elements"))?;
    let word = match dtype {
        Dtype::F32 => 4,
        Dtype::F64 => 8,
    };
    adeis::npy::write_npy(
        out,
        shape,
        &adeis::runtime::noise::normals(seed, 0, n),
        word,
    )?;
    println!(
        "wrote {} normals {shape:?} (seed {seed}) -> {}",
        n,
        out.display()
    );
    Ok(())
}

/// `adeis bench`.
pub fn bench(a: BenchArgs) -> Result<()> {
    use adeis::bench::{run, BenchMethod, BenchOptions};
    use adeis::compiler::GradMethod;
    let method = match a.method.as_str() {
        "sample" => BenchMethod::Sample,
        other => match other.parse::<GradMethod>() {
            Ok(m) => BenchMethod::Gradient(m),
            Err(_) => {
                let names: Vec<&str> = GradMethod::ALL.iter().map(|m| m.name()).collect();
                bail!("--method {other}: one of sample, {}", names.join(", "))
            }
        },
    };
    if !(a.order == 1 || a.order == 2) {
        bail!("--order {}: AdjointDEIS has orders 1 and 2", a.order);
    }
    let checkpoint = match a.states.as_str() {
        "record" => false,
        "checkpoint" => true,
        other => bail!("--states {other}: record or checkpoint"),
    };
    if checkpoint && method != BenchMethod::Gradient(GradMethod::Discrete) {
        bail!("--states checkpoint is for --method discrete");
    }
    let r = run(&BenchOptions {
        workload: a.workload,
        device: a.device,
        method,
        order: a.order,
        steps: a.steps,
        repeat: a.repeat,
        checkpoint,
    })
    .map_err(|e| match e {
        adeis::Error::Option(fe) => option_error(fe),
        other => anyhow::Error::new(other),
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&r).unwrap());
    } else {
        println!("{}", r.to_text());
    }
    Ok(())
}

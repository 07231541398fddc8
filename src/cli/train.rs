//! `adeis train`: the digits models, or the Fashion-MNIST UNet and classifier.

use std::path::PathBuf;

use anyhow::Result;

use super::{digits_error, DatasetArg, OptimizerArg};
use adeis_digits::train::{Network, TrainOptions};

/// Which network `adeis train --only` trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnlyNetwork {
    Denoiser,
    Classifier,
    /// Fashion-MNIST's verification embedding (the classifier's network with a CosFace head).
    Verifier,
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
    /// Optimiser steps of Fashion-MNIST's verification embedding [default: 4000].
    #[arg(long)]
    pub verifier_steps: Option<usize>,
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
    if a.verifier_steps.is_some() {
        anyhow::bail!(
            "--verifier-steps: the digits verify with their classifier's features; the verification embedding is Fashion-MNIST's (--dataset fashion-mnist)"
        );
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
        only: match a.only {
            None => None,
            Some(OnlyNetwork::Denoiser) => Some(Network::Denoiser),
            Some(OnlyNetwork::Classifier) => Some(Network::Classifier),
            Some(OnlyNetwork::Verifier) => anyhow::bail!(
                "--only verifier: the digits verify with their classifier's features; the verification embedding is Fashion-MNIST's (--dataset fashion-mnist)"
            ),
        },
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
        verifier_steps: a.verifier_steps.unwrap_or(d.verifier_steps),
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
            OnlyNetwork::Verifier => FashionNetwork::Verifier,
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
    if let Some(v) = &r.verifier {
        let points: Vec<String> = v
            .operating_points
            .iter()
            .map(|p| format!("{:.1}% at FMR {}%", 100.0 * p.gar, 100.0 * p.target_fmr))
            .collect();
        println!(
            "verifier (CosFace): {} steps in {:.0} s, held-out accuracy {:.1}%, genuine accept rate {}",
            v.steps,
            v.seconds,
            100.0 * v.heldout_accuracy,
            points.join(", ")
        );
    }
    println!(
        "wrote {0}/unet (config.json, diffusion_pytorch_model.safetensors, scheduler_config.json), {0}/classifier.safetensors, {0}/verifier.safetensors, training.json, training.log{1}",
        opts.out.display(),
        if opts.sample_grid { ", samples.png" } else { "" }
    );
    Ok(())
}

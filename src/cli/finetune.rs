//! `adeis finetune`: reward fine-tuning of the Fashion-MNIST UNet through the sampler.

use std::path::PathBuf;

use anyhow::Result;

use super::{digits_error, OptimizerArg};

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
    /// memory independent of the steps), adjoint_deis (AdjointDEIS-1), tape (the reference;
    /// memory grows with the steps) or reversible (the sampler becomes Rex on half the steps,
    /// and its inverse gives the gradient without recorded states).
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

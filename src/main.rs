//! The `adeis` command-line program.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use cli::Dtype;

#[derive(Parser)]
#[command(
    name = "adeis",
    version,
    about = "Gradients through diffusion samplers: declare a schedule and a sampler, get compiled coefficients, samples and exact gradients; train and morph the digits models",
    long_about = "adeis derives the time-only quantities of a diffusion schedule (alpha, sigma, lambda, \
f, g^2, the inverse of lambda) and the coefficients of every exponential-integrator sampler \
symbolically, compiles them with cranelift, and samples on dfdx.\n\n\
Run without a command for a short demo: digit morphs optimised through the sampler with \
every gradient method, written to adeis-out/demo."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print a schedule's quantities at chosen times and its derived formulas.
    Schedule {
        /// A built-in schedule (vp_linear, vp_cosine, ve, edm, discrete,
        /// discrete_scaled_linear, discrete_squaredcos_cap_v2) or a spec file (.toml or .json)
        /// with a [schedule] table.
        schedule: String,
        /// Comma-separated times, each inside the schedule's t range (default: 11 evenly
        /// spaced times from t_min to t_max).
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
        at: Option<Vec<f64>>,
        /// Print JSON (an object with one array per quantity) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Validate a spec file and print what adeis derives from it: the schedule's formulas,
    /// the sampler plan (steps, NFE) with the coefficients of its first steps, the gradient
    /// plan (VJP count).
    Check {
        /// Spec file (.toml or .json) or a diffusers scheduler_config.json; optional with
        /// --model.
        spec: Option<PathBuf>,
        /// The spec file, as a flag (the same as the positional argument).
        #[arg(long = "spec", conflicts_with = "spec")]
        spec_flag: Option<PathBuf>,
        /// A model to check and describe (`diffusers:DIR` prints the architecture: parameter
        /// count, blocks, resolutions); a spec without [schedule] takes its scheduler config.
        #[arg(long)]
        model: Option<String>,
        /// The number of sampler steps: a diffusers scheduler config's inference steps (it
        /// has none of its own), or in place of an adeis spec's sampler.steps.
        #[arg(long)]
        steps: Option<usize>,
        /// How many steps of the coefficient table to print.
        #[arg(long, default_value_t = 3)]
        rows: usize,
    },
    /// Sample from x_T with the spec's [schedule] and [sampler] on a model.
    Sample {
        /// Spec file (.toml or .json) with [schedule] and [sampler] tables, or a diffusers
        /// scheduler_config.json (with --steps).
        #[arg(long)]
        spec: PathBuf,
        /// The number of sampler steps: a diffusers scheduler config's inference steps, or in
        /// place of an adeis spec's sampler.steps.
        #[arg(long)]
        steps: Option<usize>,
        /// `gaussian:mu=1.0,s2=0.3` (isotropic Gaussian data, dimension from x_t),
        /// `gmm:mixture.json` (weights, means, variances) or `diffusers:DIR` (a UNet2DModel
        /// directory: config.json, diffusion_pytorch_model.safetensors, scheduler_config.json).
        #[arg(long)]
        model: String,
        /// The starting noise: a .npy array of shape [batch, dim] (f32 or f64), or
        /// [batch, channels, height, width] for a diffusers model.
        #[arg(long = "x-t")]
        x_t: PathBuf,
        /// The conditioning z (.npy, [batch, cond_dim]; [batch, tokens, dim] for a model
        /// conditioned on a sequence): for a class-conditional diffusers model, its
        /// class-embedding vectors.
        #[arg(long)]
        cond: Option<PathBuf>,
        /// Class labels of a class-conditional diffusers model: .npy of integers, [batch], or
        /// the labels inline (`3,1`).
        #[arg(long = "class-labels")]
        class_labels: Option<PathBuf>,
        /// Classifier-free guidance, diffusers' guidance_scale: uncond + S (cond - uncond)
        /// (1: the conditional model, 0: the unconditional one); in place of the spec's
        /// [guidance] scale.
        #[arg(long = "guidance-scale", allow_hyphen_values = true)]
        guidance_scale: Option<f64>,
        /// The class a class-conditional diffusers UNet reads as "no class", for guidance (the
        /// digits model has its own).
        #[arg(long = "null-class")]
        null_class: Option<usize>,
        /// Where to write the samples (.npy, x_T's shape, in the run's precision).
        #[arg(long)]
        out: PathBuf,
        /// Seed of the SDE samplers' noise (replayable: the same seed gives the same noise).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Also write the states at every model evaluation and the final one
        /// (.npy, [points, batch, dim]).
        #[arg(long)]
        trajectory: Option<PathBuf>,
        /// Precision of the run.
        #[arg(long, value_enum, default_value_t = Dtype::F32)]
        dtype: Dtype,
    },
    /// The gradient of a loss on the sample with respect to x_T, the conditioning and the
    /// model's parameters, by the spec's [gradient] method. Prints a JSON summary.
    Grad {
        /// Spec file with [schedule], [sampler] and (optionally) [gradient] tables, or a
        /// diffusers scheduler_config.json (with --steps; the gradient is then the discrete
        /// adjoint with respect to x_T).
        #[arg(long)]
        spec: PathBuf,
        /// The number of sampler steps: a diffusers scheduler config's inference steps, or in
        /// place of an adeis spec's sampler.steps.
        #[arg(long)]
        steps: Option<usize>,
        /// `gaussian:mu=1.0,s2=0.3`, `gmm:mixture.json` or `diffusers:DIR` (see `adeis sample
        /// --help`).
        #[arg(long)]
        model: String,
        /// The starting noise: .npy, [batch, dim] or [batch, channels, height, width].
        #[arg(long = "x-t")]
        x_t: PathBuf,
        /// dL/dx_0 for the batch (.npy, x_T's shape); or use --loss.
        #[arg(long)]
        cot: Option<PathBuf>,
        /// A built-in loss instead of --cot: `mse` (mean squared error to --target).
        #[arg(long)]
        loss: Option<String>,
        /// The target of --loss mse (.npy, x_T's shape).
        #[arg(long)]
        target: Option<PathBuf>,
        /// The conditioning z (.npy, [batch, cond_dim]; [batch, tokens, dim] for a model
        /// conditioned on a sequence); the Gaussian model's conditioning is its mean, which
        /// fills z when this is absent; a class-conditional diffusers model's is
        /// its class-embedding vector (dz.npy is the gradient with respect to it).
        #[arg(long)]
        cond: Option<PathBuf>,
        /// Class labels of a class-conditional diffusers model: .npy of integers, [batch], or
        /// the labels inline (`3,1`).
        #[arg(long = "class-labels")]
        class_labels: Option<PathBuf>,
        /// Classifier-free guidance, diffusers' guidance_scale: uncond + S (cond - uncond)
        /// (1: the conditional model, 0: the unconditional one); in place of the spec's
        /// [guidance] scale.
        #[arg(long = "guidance-scale", allow_hyphen_values = true)]
        guidance_scale: Option<f64>,
        /// The class a class-conditional diffusers UNet reads as "no class", for guidance (the
        /// digits model has its own).
        #[arg(long = "null-class")]
        null_class: Option<usize>,
        /// Where to write dx_t.npy, dz.npy (with conditioning) and dparams.safetensors (when
        /// gradient.wrt includes "params").
        #[arg(long = "out-dir")]
        out_dir: PathBuf,
        #[arg(long, value_enum, default_value_t = Dtype::F32)]
        dtype: Dtype,
        /// Seed of the SDE samplers' noise (replayed by the adjoint).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Train the models of `adeis morph`: the digits ones, or with --dataset fashion-mnist the
    /// UNet and the convolutional classifier.
    ///
    /// Digits: the conditional MLP denoiser (eps prediction on the VP linear schedule, a
    /// learned 16-dim embedding per class with classifier-free dropout) and the classifier
    /// whose penultimate features are the identity features of `adeis morph`; writes
    /// denoiser.safetensors, classifier.safetensors (also as checkpoints while training),
    /// training.json and samples.png (a grid of generated digits, row c = class c).
    /// Fashion-MNIST: a class-conditional diffusers UNet2DModel (eps prediction, the linear
    /// DDPM schedule, EMA, Adam with warm-up and cosine decay) saved in diffusers' layout in
    /// OUT/unet, the convolutional classifier in OUT/classifier.safetensors, training.log,
    /// training.json and samples.png. Deterministic for a seed.
    Train(cli::TrainArgs),
    /// Reward fine-tuning of the Fashion-MNIST UNet's weights through the sampler.
    ///
    /// DRaFT-style: DDIM samples of a batch of classes, the reward log p(class | x_0) of the
    /// classifier, and the exact gradient of the sampler with respect to the UNet's parameters
    /// (the discrete adjoint: one VJP per step, memory independent of the steps), against a
    /// proximal penalty to the trained weights; the held-out reward on fixed seeds picks the
    /// weights kept. Writes OUT/unet (diffusers' layout), before.png, after.png,
    /// reward_curve.png, report.md and report.json.
    Finetune(cli::FinetuneArgs),
    /// Learn an N-step sampling grid against a teacher by the exact gradient with respect to
    /// the grid times.
    ///
    /// The grid's N increments in log-SNR are the softmax of N logits (so it stays ordered
    /// inside the schedule's range), optimised by Adam on the mean squared error between the
    /// student's samples and the teacher's (the same model with DPM-Solver++(2M) on a fine grid)
    /// over training noises; each gradient is one discrete adjoint sweep (one VJP per model
    /// evaluation). Writes OUT/learned.toml (a spec `adeis sample` runs as is), report.md and
    /// report.json (held-out error against the logsnr, time_uniform, time_quadratic and karras
    /// grids; with --model digits also the classifier's accuracy), grids.svg and loss.svg.
    LearnSteps(cli::learn::LearnArgs),
    /// Morph pairs of digits through the sampler; with --pairs N, the MMPMR evaluation.
    ///
    /// The AdjointDEIS paper's face-morphing experiment on the digits models: encode both
    /// digits by DDIM inversion, start from the blend of their noises and class embeddings, and
    /// optimise x_T and z through the sampler against the identity loss d(v, v_a) + d(v, v_b) +
    /// |d(v, v_a) - d(v, v_b)| on the classifier's features, with each gradient method of
    /// --methods. With --pairs N it is the evaluation: MMPMR (morphs accepted as both digits at
    /// a false-match rate of 0.1%) per method, with NFE and seconds, printed and written to
    /// OUT/report.md. Writes pair_NNN_a_b.png, loss_curve.png, report.md and report.json.
    Morph(cli::MorphArgs),
    /// Time a gradient (or a sample) on a fixed workload (the MLPs W1 and W2, the W3 UNet)
    /// against its floor, with the process's peak memory.
    Bench(cli::BenchArgs),
    /// Write standard normal noise of a given shape to a .npy file (a starting x_T, a target,
    /// a cotangent), from a seed.
    Noise {
        /// The array's shape, comma-separated: `1,3,32,32` for one 3x32x32 image.
        #[arg(long, value_delimiter = ',', required = true)]
        shape: Vec<usize>,
        /// Seed of the normals (the same seed gives the same array).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Where to write it (.npy).
        #[arg(long)]
        out: PathBuf,
        /// Precision of the file.
        #[arg(long, value_enum, default_value_t = Dtype::F32)]
        dtype: Dtype,
    },
}

/// Ctrl-C: the first asks the running work to stop at its next step (outputs are written
/// whole, by rename, or not at all); a second one exits at once.
fn install_ctrlc() {
    let _ = ctrlc::set_handler(|| {
        if adeis::runtime::interrupt::request() {
            eprintln!("\ninterrupted again: exiting now");
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: stopping after the current step (Ctrl-C again to exit now)");
    });
}

/// Output to a closed pipe (`adeis check spec.toml | head`) ends the process quietly, as Unix
/// tools do, rather than as a panic in `println!`: Rust ignores SIGPIPE by default.
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring the default action of one signal, before any other thread runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    adeis::allocator::keep_freed_memory();
    quiet_on_closed_pipe();
    // Every subcommand takes negative numbers as values (`--seed -1` is then an invalid value
    // for the seed, said so, rather than an unknown flag `-1`).
    let command = Cli::command().mut_subcommands(|c| c.allow_negative_numbers(true));
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    install_ctrlc();
    // The whole command runs on a worker of rayon's pool, the other workers kept looking for
    // work (src/threads.rs says why).
    let result = adeis::threads::run_with_workers_awake(move || run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The one place errors are printed: the whole chain, outermost first.
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The subcommand, run.
fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Schedule { schedule, at, json }) => cli::schedule::run(&schedule, at, json),
        Some(Command::Check {
            spec,
            spec_flag,
            model,
            steps,
            rows,
        }) => cli::check::run(spec.or(spec_flag).as_deref(), model.as_deref(), steps, rows),
        Some(Command::Sample {
            spec,
            steps,
            model,
            x_t,
            cond,
            class_labels,
            guidance_scale,
            null_class,
            out,
            seed,
            trajectory,
            dtype,
        }) => cli::sample::run(&cli::sample::SampleArgs {
            spec,
            steps,
            guidance_scale,
            null_class,
            model,
            x_t,
            cond,
            class_labels,
            out,
            seed,
            trajectory,
            dtype,
        }),
        Some(Command::Grad {
            spec,
            steps,
            model,
            x_t,
            cot,
            loss,
            target,
            cond,
            class_labels,
            guidance_scale,
            null_class,
            out_dir,
            dtype,
            seed,
        }) => cli::grad::run(&cli::grad::GradArgs {
            spec,
            steps,
            guidance_scale,
            null_class,
            model,
            x_t,
            cot,
            loss,
            target,
            cond,
            class_labels,
            out_dir,
            seed,
            dtype,
        }),
        Some(Command::Bench(args)) => cli::bench(args),
        Some(Command::Noise {
            shape,
            seed,
            out,
            dtype,
        }) => cli::noise(&shape, seed, &out, dtype),
        Some(Command::Train(args)) => cli::train(args),
        Some(Command::Morph(args)) => cli::morph(args),
        Some(Command::Finetune(args)) => cli::finetune(args),
        Some(Command::LearnSteps(args)) => cli::learn::run(&args),
        None => cli::demo(),
    }
}

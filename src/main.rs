//! The `adeis` command-line program.

mod cli;

/// jemalloc, not the system's malloc: glibc serves every block over 32 MiB with its own mmap
/// and gives it back on free, so each such buffer was faulted in page by page and its
/// unmapping interrupted the other core to flush its TLB. jemalloc keeps freed pages for
/// reuse (with the options below).
#[cfg(unix)]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start (the environment's `_RJEM_MALLOC_CONF` still
/// overrides them):
/// - `thp:always`: its memory in transparent huge pages, and, what matters most, a reused
///   block that must be zeros (`calloc`, which `vec![0.0; n]` and every dfdx tensor of zeros
///   is) zeroed with memset. Otherwise jemalloc zeroes a reused block by handing its pages back
///   to the kernel (`madvise(MADV_DONTNEED)`), so the next read maps the shared zero page and
///   the next write copies it and interrupts the other core to flush its TLB: a W4 gradient
///   took 24.7M page faults in 2 minutes, and the thread doing the work spent half its time
///   in the kernel. With it: 28 thousand faults, and 36 -> 19 s per W4 gradient (N = 2).
/// - `oversize_threshold:0`: blocks over 8 MiB (the attention's scores, the feed-forward's
///   activations) in the shared arenas, not in one of their own that returns pages at once.
/// - `dirty_decay_ms`/`muzzy_decay_ms` 30 s: freed pages kept longer than a UNet step.
#[cfg(unix)]
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8] =
    b"thp:always,oversize_threshold:0,dirty_decay_ms:30000,muzzy_decay_ms:30000\0";

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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
    Schedule(cli::schedule::ScheduleArgs),
    /// Validate a spec file and print what adeis derives from it: the schedule's formulas,
    /// the sampler plan (steps, NFE) with the coefficients of its first steps, the gradient
    /// plan (VJP count).
    Check(cli::check::CheckArgs),
    /// Sample from x_T with the spec's [schedule] and [sampler] on a model.
    Sample(cli::sample::SampleArgs),
    /// Encode samples x_0 into the noise x_T the spec's sampler maps to them: the exact
    /// inverse of a reversible sampler (rex, with its companion state), the ODE inversion
    /// otherwise.
    Invert(cli::invert::InvertArgs),
    /// The gradient of a loss on the sample with respect to x_T, the conditioning and the
    /// model's parameters, by the spec's [gradient] method. Prints a JSON summary.
    Grad(cli::grad::GradArgs),
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
    Train(cli::train::TrainArgs),
    /// Reward fine-tuning of the Fashion-MNIST UNet's weights through the sampler.
    ///
    /// DRaFT-style: DDIM samples of a batch of classes, the reward log p(class | x_0) of the
    /// classifier, and the exact gradient of the sampler with respect to the UNet's parameters
    /// (the discrete adjoint: one VJP per step, memory independent of the steps), against a
    /// proximal penalty to the trained weights; the held-out reward on fixed seeds picks the
    /// weights kept. Writes OUT/unet (diffusers' layout), before.png, after.png,
    /// reward_curve.png, report.md and report.json.
    Finetune(cli::finetune::FinetuneArgs),
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
    Morph(cli::morph::MorphArgs),
    /// Time a gradient (or a sample) on a fixed workload (the MLPs W1 and W2, the W3 UNet)
    /// against its floor, with the process's peak memory.
    Bench(cli::bench::BenchArgs),
    /// Write standard normal noise of a given shape to a .npy file (a starting x_T, a target,
    /// a cotangent), from a seed.
    Noise(cli::noise::NoiseArgs),
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
    // glibc's settings (`adeis::allocator::keep_freed_memory`) would only reach C code's
    // allocations here: the command allocates through jemalloc (above).
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
            // Long words (a 5 MB value echoed by a parser) shortened.
            let message = adeis::compiler::error::shorten_long_words(&format!("{e:#}"));
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

/// The subcommand, run.
fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Schedule(args)) => cli::schedule::run(&args.schedule, args.at, args.json),
        Some(Command::Check(args)) => cli::check::run(&args),
        Some(Command::Sample(args)) => cli::sample::run(&args),
        Some(Command::Invert(args)) => cli::invert::run(&args),
        Some(Command::Grad(args)) => cli::grad::run(&args),
        Some(Command::Bench(args)) => cli::bench::bench(args),
        Some(Command::Noise(args)) => cli::noise::noise(&args),
        Some(Command::Train(args)) => cli::train::train(args),
        Some(Command::Morph(args)) => cli::morph::morph(args),
        Some(Command::Finetune(args)) => cli::finetune::finetune(args),
        Some(Command::LearnSteps(args)) => cli::learn::run(&args),
        None => cli::demo::demo(),
    }
}

//! The subcommands of the `adeis` program.

pub mod check;
pub mod grad;
pub mod model;
pub mod sample;
pub mod schedule;

use std::path::{Path, PathBuf};

use adeis::prelude::*;

/// A schedule from a built-in name or a spec file.
pub fn schedule_def(arg: &str) -> Result<ScheduleDef, String> {
    let path = Path::new(arg);
    if path.extension().is_some() || path.exists() {
        let spec = load_spec(path).map_err(|e| e.to_string())?;
        return spec.schedule.to_def().map_err(|e| format!("{arg}: {e}"));
    }
    match ScheduleSpec::builtin(arg) {
        Some(spec) => spec.to_def().map_err(|e| e.to_string()),
        None => Err(format!(
            "`{arg}` is neither a built-in schedule ({}) nor a spec file (.toml or .json)",
            ScheduleDef::BUILTIN_NAMES.join(", ")
        )),
    }
}

/// What a sampling command runs: the spec, its compiled schedule, its sampler and the plan.
pub struct Run {
    pub spec: Spec,
    pub sampler: adeis::compiler::SamplerSpec,
    pub schedule: Schedule,
    pub plan: adeis::compiler::Plan,
}

/// Loads a spec with a [sampler] table and builds its plan (`command` names the caller in
/// errors).
pub fn load_run(path: &Path, command: &str) -> Result<Run, String> {
    let spec = load_spec(path).map_err(|e| e.to_string())?;
    let sampler = spec.sampler.clone().ok_or_else(|| {
        format!(
            "{}: no [sampler] table; `adeis {command}` needs one",
            path.display()
        )
    })?;
    let def = spec.schedule.to_def().map_err(|e| e.to_string())?;
    let schedule = def.compile().map_err(|e| e.to_string())?;
    let plan = adeis::compiler::build_plan(&schedule, &sampler)
        .map_err(|e| format!("{}: sampler.{}: {}", path.display(), e.field, e.message))?;
    Ok(Run {
        spec,
        sampler,
        schedule,
        plan,
    })
}

/// Reads a [batch, dim] array.
pub fn read_2d(flag: &str, path: &Path) -> Result<adeis::npy::NpyArray, String> {
    let a = adeis::npy::read_npy(path).map_err(|e| format!("{flag}: {e}"))?;
    if a.shape.len() != 2 {
        return Err(format!(
            "{flag}: {} has shape {:?}; expected [batch, dim]",
            path.display(),
            a.shape
        ));
    }
    Ok(a)
}

/// The precision of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dtype {
    F32,
    F64,
}

/// The options of `adeis train`.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// Output folder (the committed models are in models/digits).
    #[arg(long, default_value = "models/digits")]
    pub out: PathBuf,
    /// Adam steps of the denoiser.
    #[arg(long, default_value_t = 30_000)]
    pub denoiser_steps: usize,
    /// Adam steps of the classifier.
    #[arg(long, default_value_t = 4_000)]
    pub classifier_steps: usize,
    /// Digits per step.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Peak learning rate (cosine decay to a tenth of it).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Seed of the initial weights, the batches, the times and the noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Probability of training a digit as "no class" (classifier-free guidance).
    #[arg(long, default_value_t = 0.1)]
    pub cfg_dropout: f64,
    /// Save the weights every this many steps (0: only at the end).
    #[arg(long, default_value_t = 2_000)]
    pub checkpoint_every: usize,
    /// Skip the grid of generated digits at the end.
    #[arg(long)]
    pub no_sample_grid: bool,
    /// Train only this network; the other is loaded from --out.
    #[arg(long, value_enum)]
    pub only: Option<adeis::digits::train::Network>,
}

/// `adeis train`.
pub fn train(a: TrainArgs) -> Result<(), String> {
    let opts = &adeis::digits::train::TrainOptions {
        out: a.out,
        denoiser_steps: a.denoiser_steps,
        classifier_steps: a.classifier_steps,
        batch: a.batch,
        lr: a.lr,
        seed: a.seed,
        cfg_dropout: a.cfg_dropout,
        checkpoint_every: a.checkpoint_every,
        sample_grid: !a.no_sample_grid,
        only: a.only,
    };
    let r = adeis::digits::train::run(opts)?;
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

/// The options of `adeis morph`.
#[derive(clap::Args)]
pub struct MorphArgs {
    /// Number of pairs (held-out digits, chosen by --seed).
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
    #[arg(long, default_value = adeis::morph::MorphMethod::DEFAULT)]
    pub methods: String,
    /// Optimisation iterations K per method.
    #[arg(long, default_value_t = 50)]
    pub iters: usize,
    /// Sampler steps N (DDIM for the ODE methods, SDE-DPM-Solver++1 for the SDE ones).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Optimiser of x_T and z.
    #[arg(long, value_enum, default_value_t = adeis::morph::Optimizer::Adam)]
    pub optimizer: adeis::morph::Optimizer,
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
    /// Folder with denoiser.safetensors and classifier.safetensors (default: the committed
    /// models, trained by `adeis train`).
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
pub fn morph(a: MorphArgs) -> Result<(), String> {
    use adeis::morph::{MorphMethod, MorphOptions, PairKind};
    let kind = match (&a.digits, a.same_class) {
        (Some(d), _) if d.len() == 2 => PairKind::Classes(d[0], d[1]),
        (Some(d), _) => {
            return Err(format!(
                "--digits {d:?}: two digits, A,B (e.g. --digits 3,8)"
            ))
        }
        (None, true) => PairKind::SameClass,
        (None, false) => PairKind::DifferentClass,
    };
    let opts = MorphOptions {
        models: a
            .models
            .unwrap_or_else(adeis::digits::nets::default_models_dir),
        out: a.out,
        pairs: a.pairs,
        kind,
        methods: MorphMethod::parse_list(&a.methods)?,
        iters: a.iters,
        steps: a.steps,
        optimizer: a.optimizer,
        lr: a.lr,
        seed: a.seed,
        adjoint_steps: a.adjoint_steps,
        max_pair_images: a.max_pair_images,
        verbose: true,
    };
    let r = adeis::morph::run(&opts)?;
    println!("{}", adeis::morph::table(&r));
    println!(
        "verification threshold {:.4} (FMR {:.3}%, FNMR {:.2}%); wrote {}",
        r.verifier.threshold,
        100.0 * r.verifier.fmr,
        100.0 * r.verifier.fnmr,
        adeis::morph::describe(&opts.out)
    );
    Ok(())
}

/// `adeis` without a command: a short demo of the main job.
pub fn demo() -> Result<(), String> {
    use adeis::morph::{MorphOptions, PairKind};
    let out = std::path::PathBuf::from("adeis-out/demo");
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
    let r = adeis::morph::run(&opts)?;
    let models = adeis::digits::nets::DigitsModels::load(&opts.models)?;
    let grid = out.join("samples.png");
    let agree = adeis::digits::sample_grid(&models, 0, &grid)?;
    println!("{}", adeis::morph::table(&r));
    println!(
        "generated digits: {} (row c = class c; the classifier reads {:.0}% as the class asked for)",
        grid.display(),
        100.0 * agree
    );
    println!("morphs: {}", adeis::morph::describe(&out));
    println!("\nThe evaluation in the README: `cargo run --release -- morph --pairs 100` (about 2 minutes).");
    Ok(())
}

/// `adeis bench`.
#[allow(clippy::too_many_arguments)]
pub fn bench(
    workload: &str,
    device: &str,
    method: &str,
    order: usize,
    steps: usize,
    repeat: usize,
    states: &str,
    json: bool,
) -> Result<(), String> {
    use adeis::bench::{run, BenchMethod};
    use adeis::compiler::gradient::States;
    use adeis::compiler::GradMethod;
    let m = match method {
        "sample" => BenchMethod::Sample,
        "discrete" => BenchMethod::Gradient(GradMethod::Discrete),
        "adjoint_deis" => BenchMethod::Gradient(GradMethod::AdjointDeis),
        "tape" => BenchMethod::Gradient(GradMethod::Tape),
        other => {
            return Err(format!(
                "--method {other}: one of sample, discrete, adjoint_deis, tape"
            ))
        }
    };
    if !(order == 1 || order == 2) {
        return Err(format!("--order {order}: AdjointDEIS has orders 1 and 2"));
    }
    let st = match states {
        "record" => States::Record,
        "checkpoint" => States::Checkpoint,
        other => return Err(format!("--states {other}: record or checkpoint")),
    };
    if st == States::Checkpoint && m != BenchMethod::Gradient(GradMethod::Discrete) {
        return Err("--states checkpoint is for --method discrete".into());
    }
    let r = run(workload, device, m, order, steps, repeat, st)?;
    if json {
        println!("{}", serde_json::to_string(&r).unwrap());
    } else {
        println!("{}", r.to_text());
    }
    Ok(())
}

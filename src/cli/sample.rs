//! `adeis sample`: run a sampler on a model from x_T.

use std::path::PathBuf;
use std::time::Instant;

use adeis::npy::{npy_bytes, NpyArray};
use adeis::prelude::*;
use adeis::runtime::to_f64;
use adeis::Outputs;
use anyhow::Result;

use super::inputs::{
    check_outputs, conditioned_model, read_companion, read_x_t, state, ModelFlags,
};
use super::model::{parse_model, with_model, CommandModel};
use super::Dtype;

/// The options of `adeis sample` (each flag declared here once).
#[derive(clap::Args)]
pub struct SampleArgs {
    /// Spec file (.toml or .json) with [schedule] and [sampler] tables, or a diffusers
    /// scheduler_config.json (with --steps).
    #[arg(long)]
    pub spec: PathBuf,
    /// The number of sampler steps: a diffusers scheduler config's inference steps, or in
    /// place of an adeis spec's sampler.steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// `gaussian:mu=1.0,s2=0.3` (isotropic Gaussian data, dimension from x_t),
    /// `gmm:mixture.json` (weights, means, variances) or `diffusers:DIR` (a UNet2DModel
    /// directory: config.json, diffusion_pytorch_model.safetensors, scheduler_config.json).
    #[arg(long)]
    pub model: String,
    /// The starting noise: a .npy array of shape [batch, dim] (f32 or f64), or
    /// [batch, channels, height, width] for a diffusers model.
    #[arg(long = "x-t")]
    pub x_t: PathBuf,
    /// A reversible sampler's companion x^_T (as `adeis invert` writes it): the sampler
    /// starts from the pair (x_T, x^_T) instead of x^_T = x_T, and regenerates the inverted
    /// samples exactly.
    #[arg(long)]
    pub companion: Option<PathBuf>,
    /// How the model is conditioned and guided.
    #[command(flatten)]
    pub model_flags: ModelFlags,
    /// Where to write the samples (.npy, x_T's shape, in the run's precision).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the SDE samplers' noise (replayable: the same seed gives the same noise).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the states at every model evaluation and the final one
    /// (.npy, [points, batch, dim]).
    #[arg(long)]
    pub trajectory: Option<PathBuf>,
    /// Also write a reversible sampler's final companion (Rex's x^_0, EDICT's y_0; .npy, the
    /// sample's shape): `adeis invert --companion-0` with it returns this run's x_T exactly.
    #[arg(long = "companion-out")]
    pub companion_out: Option<PathBuf>,
    /// Precision of the run.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
}

pub fn run(args: &SampleArgs) -> Result<()> {
    // Every output is checked before the run, so that a bad path fails before anything is
    // written.
    if args.trajectory.as_ref() == Some(&args.out) {
        anyhow::bail!(
            "--trajectory {} is the same file as --out; give them different names",
            args.out.display()
        );
    }
    check_outputs(
        &[
            ("--out", Some(&args.out)),
            ("--trajectory", args.trajectory.as_ref()),
            ("--companion-out", args.companion_out.as_ref()),
        ],
        &[
            Some(&args.x_t),
            Some(&args.spec),
            args.model_flags.cond.as_ref(),
            args.companion.as_ref(),
        ],
    )?;
    let choice = parse_model(&args.model)?;
    let (problem, options) = super::load_problem(&args.spec, args.steps, "sample", &choice)?;
    let x = read_x_t(&choice, &args.x_t)?;
    let word = match args.dtype {
        Dtype::F32 => 4,
        Dtype::F64 => 8,
    };
    super::inputs::check_model_memory(&choice, ("--x-t", &x), word, false)?;
    let companion = read_companion(
        "--companion",
        &choice,
        args.companion.as_ref(),
        (&x, "--x-t"),
    )?;
    if companion.is_some() && problem.plan().reversal.is_none() {
        anyhow::bail!(
            "--companion is a reversible sampler's second state (method = {}); this spec's sampler is {}",
            adeis::compiler::sampler::registry::reversible_methods(),
            problem.plan().description
        );
    }
    let has_companion = problem
        .plan()
        .reversal
        .as_ref()
        .is_some_and(|r| r.companion.is_some());
    if args.companion_out.is_some() && !has_companion {
        anyhow::bail!(
            "--companion-out writes a reversible sampler's second state (method = {}); this spec's sampler is {}",
            adeis::compiler::sampler::registry::reversible_methods(),
            problem.plan().description
        );
    }
    if companion.is_some() && args.trajectory.is_some() {
        anyhow::bail!("--trajectory is not recorded from a pair (--companion); leave one out");
    }
    let dim = x.shape[1];
    match args.dtype {
        Dtype::F32 => with_model!(&choice, f32, dim, |m| run_typed::<f32, _>(
            args,
            &problem,
            &options,
            m,
            (&x, companion.as_ref())
        )),
        Dtype::F64 => with_model!(&choice, f64, dim, |m| run_typed::<f64, _>(
            args,
            &problem,
            &options,
            m,
            (&x, companion.as_ref())
        )),
    }
}

fn run_typed<E: adeis::runtime::dfdx::dtypes::Dtype, M: CommandModel<E>>(
    args: &SampleArgs,
    problem: &Problem,
    model_options: &super::inputs::SpecModelOptions,
    model: &M,
    (x, companion): (&NpyArray, Option<&NpyArray>),
) -> Result<()>
where
    Cpu: Device<E>,
{
    let word = std::mem::size_of::<E>();
    let x_t = state::<E>(x)?;
    let (z, model_fn) = conditioned_model(
        model,
        &x_t,
        &args.model_flags.cond_args(),
        model_options,
        &args.model_flags.guidance_args(),
    )?;
    if args.trajectory.is_some() {
        // The states on the device, their f64 copy and the file's bytes.
        super::inputs::check_memory(
            "--trajectory",
            problem.plan().grid.len(),
            x.data.len() * (2 * word + 8),
            "sample without --trajectory, or with fewer steps",
        )?;
    }
    let start = Instant::now();
    let noise = NoiseSource::Seeded(args.seed);
    let input = Input::new(&x_t, z.as_ref(), &noise);
    let out = match companion.map(state::<E>).transpose()? {
        Some(c) => adeis::runtime::sample_from_pair(problem.plan(), &model_fn, &input, &c)?,
        None => sample(problem.plan(), &model_fn, &input, args.trajectory.is_some())?,
    };
    let secs = start.elapsed().as_secs_f64();
    // The sample and its trajectory appear together or not at all.
    let mut files = Outputs::new();
    files.stage(&args.out, &npy_bytes(&out.x.shape(), &to_f64(&out.x), word))?;
    if let (Some(path), Some(traj)) = (&args.trajectory, &out.trajectory) {
        let data: Vec<f64> = traj.iter().flat_map(|(_, s)| to_f64(s)).collect();
        let mut shape = vec![traj.len()];
        shape.extend(out.x.shape());
        files.stage(path, &npy_bytes(&shape, &data, word))?;
    }
    if let (Some(path), Some(c)) = (&args.companion_out, &out.companion) {
        files.stage(path, &npy_bytes(&c.shape(), &to_f64(c), word))?;
    }
    files.commit()?;
    let item: Vec<String> = x_t.item().iter().map(|d| d.to_string()).collect();
    println!(
        "sampled {} x {} with {}: NFE {}, {secs:.3} s -> {}",
        x_t.batch(),
        item.join(" x "),
        problem.plan().description,
        out.nfe,
        args.out.display()
    );
    Ok(())
}

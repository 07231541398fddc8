//! `adeis sample`: run a sampler on a model from x_T.

use std::path::PathBuf;
use std::time::Instant;

use adeis::diffusers::VaeDir;
use adeis::npy::{npy_bytes, NpyArray};
use adeis::prelude::*;
use adeis::runtime::nn::{Float, NnDevice};
use adeis::runtime::to_f64;
use adeis::runtime::unet::VaeMap;
use adeis::Outputs;
use adeis_digits::image::image_row;
use anyhow::Result;

use super::inputs::{
    adopt_cond_tokens, check_outputs, conditioned_model, pipeline_vae, read_companion, read_x_t,
    state, ModelFlags,
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
    /// Dynamic shifting of a flow-matching scheduler config.
    #[command(flatten)]
    pub flow_shift: super::FlowShiftFlags,
    /// `gaussian:mu=1.0,s2=0.3` (isotropic Gaussian data, dimension from x_t),
    /// `gmm:mixture.json` (weights, means, variances) or `diffusers:DIR` (a UNet2DModel or
    /// UNet2DConditionModel directory: config.json, diffusion_pytorch_model.safetensors,
    /// scheduler_config.json; or a pipeline folder with unet/, scheduler/ and vae/, whose VAE
    /// decodes the sample).
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
    /// Where to write the samples (.npy, x_T's shape, in the run's precision); with a
    /// pipeline folder's VAE, the decoded images [batch, channels, height, width].
    #[arg(long)]
    pub out: PathBuf,
    /// With a pipeline folder's VAE: also write the sampled latents (.npy, x_T's shape),
    /// which the VAE decodes into --out.
    #[arg(long = "latents-out")]
    pub latents_out: Option<PathBuf>,
    /// Also write the samples as a PNG picture, side by side (images of 1 or 3 channels,
    /// values in [-1, 1] shown as a diffusers pipeline shows them: (v + 1) / 2).
    #[arg(long)]
    pub png: Option<PathBuf>,
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
            ("--latents-out", args.latents_out.as_ref()),
            ("--png", args.png.as_ref()),
        ],
        &[
            Some(&args.x_t),
            Some(&args.spec),
            args.model_flags.cond.as_ref(),
            args.companion.as_ref(),
        ],
    )?;
    let mut choice = parse_model(&args.model)?;
    adopt_cond_tokens(&mut choice, args.model_flags.cond.as_ref())?;
    if args.latents_out.is_some() && pipeline_vae(&choice).is_none() {
        anyhow::bail!(
            "--latents-out writes a pipeline's latents before its VAE decodes them; {} has no VAE (give a pipeline folder with vae/, or leave --latents-out out: --out holds the sample)",
            args.model
        );
    }
    if args.png.is_some() && !choice.takes_images() {
        anyhow::bail!(
            "--png draws images; {} samples vectors (a diffusers model or pipeline samples images)",
            args.model
        );
    }
    let (problem, options) = super::load_problem(
        &args.spec,
        (args.steps, &args.flow_shift),
        "sample",
        &choice,
    )?;
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
    let vae = pipeline_vae(&choice);
    match args.dtype {
        Dtype::F32 => with_model!(&choice, f32, dim, |m| run_typed::<f32, _>(
            args,
            &problem,
            &options,
            (m, vae),
            (&x, companion.as_ref())
        )),
        Dtype::F64 => with_model!(&choice, f64, dim, |m| run_typed::<f64, _>(
            args,
            &problem,
            &options,
            (m, vae),
            (&x, companion.as_ref())
        )),
    }
}

fn run_typed<E: Float, M: CommandModel<E>>(
    args: &SampleArgs,
    problem: &Problem,
    model_options: &super::inputs::SpecModelOptions,
    (model, vae_dir): (&M, Option<&VaeDir>),
    (x, companion): (&NpyArray, Option<&NpyArray>),
) -> Result<()>
where
    Cpu: NnDevice<E>,
{
    let word = std::mem::size_of::<E>();
    let vae = vae_dir
        .map(|d| d.load::<E, _>(&Cpu::default()))
        .transpose()?;
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
    // A pipeline's sample is its VAE's image of the latents.
    let decoded = match &vae {
        Some(v) => Some(v.apply_state(VaeMap::DecodeLatents, &out.x)?),
        None => None,
    };
    let secs = start.elapsed().as_secs_f64();
    let sample = decoded.as_ref().unwrap_or(&out.x);
    // The sample and its trajectory appear together or not at all.
    let mut files = Outputs::new();
    files.stage(
        &args.out,
        &npy_bytes(&sample.shape(), &to_f64(sample), word),
    )?;
    if let Some(path) = &args.latents_out {
        files.stage(path, &npy_bytes(&out.x.shape(), &to_f64(&out.x), word))?;
    }
    if let Some(path) = &args.png {
        let item = sample.item();
        let values = to_f64(sample);
        let images: Vec<Vec<f64>> = values.chunks(sample.width()).map(|c| c.to_vec()).collect();
        let canvas = image_row(&images, (item[0], item[1], item[2]), 2).ok_or_else(|| {
            anyhow::anyhow!(
                "--png draws images of 1 or 3 channels; these have {} (write --out and show it another way)",
                item[0]
            )
        })?;
        files.stage(path, &canvas.png_bytes()?)?;
    }
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
    let dims = |s: &[usize]| -> String {
        s.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(" x ")
    };
    let decoded_note = match (&decoded, vae_dir) {
        (Some(d), Some(dir)) => format!(
            ", decoded by the VAE of {} to {}",
            dir.path.display(),
            dims(&d.shape())
        ),
        _ => String::new(),
    };
    println!(
        "sampled {} with {}: NFE {}{decoded_note}, {secs:.3} s -> {}",
        dims(&x_t.shape()),
        problem.plan().description,
        out.nfe,
        args.out.display()
    );
    Ok(())
}

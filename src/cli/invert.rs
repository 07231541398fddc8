//! `adeis invert`: encode samples x_0 into the noise x_T the spec's sampler maps to them (the
//! exact inverse of a reversible sampler, with its companion written beside x_T; the ODE
//! inversion otherwise).

use std::path::{Path, PathBuf};
use std::time::Instant;

use adeis::diffusers::VaeDir;
use adeis::npy::{npy_bytes, NpyArray};
use adeis::prelude::*;
use adeis::runtime::nn::{Float, NnDevice};
use adeis::runtime::unet::VaeMap;
use adeis::runtime::{invert, to_f64};
use adeis::Outputs;
use anyhow::Result;

use super::inputs::{
    adopt_cond_tokens, check_outputs, conditioned_model, pipeline_vae, read_companion, read_state,
    state, ModelFlags,
};
use super::model::{parse_model, with_model, CommandModel};
use super::Dtype;

/// The options of `adeis invert`.
#[derive(clap::Args)]
pub struct InvertArgs {
    /// Spec file (.toml or .json) with [schedule] and [sampler] tables, or a diffusers
    /// scheduler_config.json (with --steps).
    #[arg(long)]
    pub spec: PathBuf,
    /// The number of sampler steps, in place of the spec's.
    #[arg(long)]
    pub steps: Option<usize>,
    /// The model, as for `adeis sample`.
    #[arg(long)]
    pub model: String,
    /// The samples to encode: .npy, [batch, dim], or [batch, channels, height, width] for a
    /// diffusers model; for a pipeline folder with a VAE, images, which its encoder maps to
    /// latents (the mean, scaled) before the inversion.
    #[arg(long = "x-0")]
    pub x_0: PathBuf,
    /// A reversible sampler's companion at t_min (default: x_0 itself).
    #[arg(long = "companion-0")]
    pub companion_0: Option<PathBuf>,
    /// How the model is conditioned and guided.
    #[command(flatten)]
    pub model_flags: ModelFlags,
    /// Where to write x_T (.npy, x_0's shape). A reversible sampler's companion x^_T goes
    /// beside it, as NAME_companion.npy (or --companion-out): `adeis sample --companion`
    /// regenerates x_0 from the pair exactly.
    #[arg(long)]
    pub out: PathBuf,
    /// Where to write the companion, in place of NAME_companion.npy.
    #[arg(long = "companion-out")]
    pub companion_out: Option<PathBuf>,
    /// Seed of a reversible SDE sampler's noise: the inverse runs the Brownian path of this
    /// seed, and `adeis sample --seed` with the same seed regenerates x_0.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Precision of the run.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
}

/// NAME_companion.npy beside NAME.npy.
fn companion_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}_companion.npy"))
}

pub fn run(args: &InvertArgs) -> Result<()> {
    let companion_out = args
        .companion_out
        .clone()
        .unwrap_or_else(|| companion_path(&args.out));
    check_outputs(
        &[
            ("--out", Some(&args.out)),
            ("--companion-out", Some(&companion_out)),
        ],
        &[
            Some(&args.x_0),
            Some(&args.spec),
            args.model_flags.cond.as_ref(),
            args.companion_0.as_ref(),
        ],
    )?;
    if companion_out == args.out {
        anyhow::bail!("--companion-out is the same file as --out; give them different names");
    }
    let mut choice = parse_model(&args.model)?;
    adopt_cond_tokens(&mut choice, args.model_flags.cond.as_ref())?;
    let (problem, options) = super::load_problem(
        &args.spec,
        (args.steps, &super::FlowShiftFlags::default()),
        "invert",
        &choice,
    )?;
    let x = read_state("--x-0", &choice, &args.x_0)?;
    let word = match args.dtype {
        Dtype::F32 => 4,
        Dtype::F64 => 8,
    };
    let vae = pipeline_vae(&choice);
    if let Some(v) = vae {
        if args.companion_0.is_some() {
            anyhow::bail!(
                "--companion-0 is a reversible sampler's second state in latent space, and with a pipeline's VAE --x-0 is an image; to regenerate a sample exactly, invert its latents (adeis sample --latents-out) with --model diffusers:{}",
                v.path.display()
            );
        }
        // The UNet runs on the latents the encoder makes: 2^(levels - 1) times smaller.
        let f = v.config.downscale();
        let mut latents = x.clone();
        latents.shape = vec![
            x.shape[0],
            v.config.latent_channels,
            x.shape[2] / f,
            x.shape[3] / f,
        ];
        super::inputs::check_model_memory(&choice, ("--x-0", &latents), word, false)?;
    } else {
        super::inputs::check_model_memory(&choice, ("--x-0", &x), word, false)?;
    }
    let companion = read_companion(
        "--companion-0",
        &choice,
        args.companion_0.as_ref(),
        (&x, "--x-0"),
    )?;
    let dim = x.shape[1];
    let files = (args.out.as_path(), companion_out.as_path());
    match args.dtype {
        Dtype::F32 => with_model!(&choice, f32, dim, |m| run_typed::<f32, _>(
            args,
            &problem,
            &options,
            (m, vae),
            (&x, companion.as_ref()),
            files
        )),
        Dtype::F64 => with_model!(&choice, f64, dim, |m| run_typed::<f64, _>(
            args,
            &problem,
            &options,
            (m, vae),
            (&x, companion.as_ref()),
            files
        )),
    }
}

fn run_typed<E: Float, M: CommandModel<E>>(
    args: &InvertArgs,
    problem: &Problem,
    model_options: &super::inputs::SpecModelOptions,
    (model, vae_dir): (&M, Option<&VaeDir>),
    (x, companion): (&NpyArray, Option<&NpyArray>),
    (out, companion_out): (&Path, &Path),
) -> Result<()>
where
    Cpu: NnDevice<E>,
{
    let word = std::mem::size_of::<E>();
    let x0 = match vae_dir {
        Some(dir) => dir
            .load::<E, _>(&Cpu::default())?
            .apply_state(VaeMap::EncodeLatents, &state::<E>(x)?)
            .map_err(|e| anyhow::anyhow!("--x-0: {e}"))?,
        None => state::<E>(x)?,
    };
    let companion = companion.map(state::<E>).transpose()?;
    let (z, model_fn) = conditioned_model(
        model,
        &x0,
        &args.model_flags.cond_args(),
        model_options,
        &args.model_flags.guidance_args(),
    )?;
    let start = Instant::now();
    let noise = adeis::runtime::NoiseSource::Seeded(args.seed);
    let inv = invert(
        problem,
        &model_fn,
        &x0,
        companion.as_ref(),
        z.as_ref(),
        &noise,
    )?;
    let secs = start.elapsed().as_secs_f64();
    // x_T and its companion appear together or not at all.
    let mut files = Outputs::new();
    files.stage(out, &npy_bytes(&inv.x_t.shape(), &to_f64(&inv.x_t), word))?;
    if let Some(c) = &inv.companion {
        files.stage(companion_out, &npy_bytes(&c.shape(), &to_f64(c), word))?;
    }
    files.commit()?;
    println!(
        "{} {} samples with {}: NFE {}, {secs:.3} s -> {}{}",
        if inv.exact {
            "inverted exactly"
        } else {
            "ODE-inverted"
        },
        x0.batch(),
        problem.plan().description,
        inv.nfe,
        out.display(),
        if inv.companion.is_some() {
            format!(
                " and its companion {} (adeis sample --x-t {} --companion {}{} regenerates x_0)",
                companion_out.display(),
                out.display(),
                companion_out.display(),
                if problem.is_sde() {
                    format!(" --seed {}", args.seed)
                } else {
                    String::new()
                }
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

//! `adeis sample`: run a sampler on a model from x_T.

use std::path::PathBuf;
use std::time::Instant;

use adeis::npy::{npy_bytes, NpyArray};
use adeis::prelude::*;
use adeis::runtime::dfdx::prelude::*;
use adeis::runtime::to_f64;
use adeis::Outputs;
use anyhow::Result;

use super::inputs::{conditioned_model, read_x_t, state, CondArgs, GuidanceArgs};
use super::model::{parse_model, with_model, CommandModel};
use super::Dtype;

pub struct SampleArgs {
    pub spec: PathBuf,
    pub steps: Option<usize>,
    pub guidance_scale: Option<f64>,
    pub null_class: Option<usize>,
    pub model: String,
    pub x_t: PathBuf,
    pub cond: Option<PathBuf>,
    pub class_labels: Option<PathBuf>,
    pub out: PathBuf,
    pub seed: u64,
    pub trajectory: Option<PathBuf>,
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
    for (flag, p) in [
        ("--out", Some(&args.out)),
        ("--trajectory", args.trajectory.as_ref()),
    ] {
        let Some(p) = p else { continue };
        if [&args.x_t, &args.spec].contains(&p) || args.cond.as_ref() == Some(p) {
            anyhow::bail!(
                "{flag} {} is one of the inputs; give the output another name",
                p.display()
            );
        }
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                anyhow::bail!(
                    "{flag} {}: the folder {} does not exist",
                    p.display(),
                    dir.display()
                );
            }
        }
    }
    let choice = parse_model(&args.model)?;
    let (problem, options) = super::load_problem(&args.spec, args.steps, "sample", &choice)?;
    let x = read_x_t(&choice, &args.x_t)?;
    let dim = x.shape[1];
    match args.dtype {
        Dtype::F32 => with_model!(&choice, f32, dim, |m| run_typed::<f32, _>(
            args, &problem, &options, m, &x
        )),
        Dtype::F64 => with_model!(&choice, f64, dim, |m| run_typed::<f64, _>(
            args, &problem, &options, m, &x
        )),
    }
}

fn run_typed<E: adeis::runtime::dfdx::dtypes::Dtype, M: CommandModel<E>>(
    args: &SampleArgs,
    problem: &Problem,
    model_options: &super::inputs::SpecModelOptions,
    model: &M,
    x: &NpyArray,
) -> Result<()>
where
    Cpu: Device<E>,
{
    let word = std::mem::size_of::<E>();
    let x_t = state::<E>(x)?;
    let (z, model_fn) = conditioned_model(
        model,
        &x_t,
        &CondArgs {
            cond: args.cond.as_ref(),
            labels: args.class_labels.as_ref(),
        },
        model_options,
        &GuidanceArgs {
            scale: args.guidance_scale,
            null_class: args.null_class,
        },
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
    let out = sample(
        problem.plan(),
        &model_fn,
        &Input::new(&x_t, z.as_ref(), &noise),
        args.trajectory.is_some(),
    )?;
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

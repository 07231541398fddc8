//! `adeis sample`: run a sampler on a model from x_T.

use std::path::PathBuf;
use std::time::Instant;

use adeis::npy::write_npy;
use adeis::prelude::*;
use adeis::runtime::dfdx::prelude::*;
use adeis::runtime::{from_f64, sample, to_f64, ModelFn, NoiseSource};

use super::model::{parse_model, ModelChoice};
use super::Dtype;

pub struct SampleArgs {
    pub spec: PathBuf,
    pub model: String,
    pub x_t: PathBuf,
    pub out: PathBuf,
    pub seed: u64,
    pub trajectory: Option<PathBuf>,
    pub dtype: Dtype,
}

pub fn run(args: &SampleArgs) -> Result<(), String> {
    let super::Run { plan, schedule, .. } = super::load_run(&args.spec, "sample")?;
    let x = super::read_2d("--x-t", &args.x_t)?;
    let model = parse_model(&args.model)?;
    model.check_dim(x.shape[1])?;
    match args.dtype {
        Dtype::F32 => run_typed::<f32>(
            args, &plan, &schedule, &model, &x.data, x.shape[0], x.shape[1], 4,
        ),
        Dtype::F64 => run_typed::<f64>(
            args, &plan, &schedule, &model, &x.data, x.shape[0], x.shape[1], 8,
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn run_typed<E: adeis::runtime::dfdx::dtypes::Dtype>(
    args: &SampleArgs,
    plan: &adeis::compiler::Plan,
    schedule: &Schedule,
    model: &ModelChoice,
    x: &[f64],
    batch: usize,
    dim: usize,
    word: usize,
) -> Result<(), String>
where
    Cpu: Device<E>,
{
    let dev = Cpu::default();
    let x_t = from_f64::<E, Cpu>(&dev, x, batch, dim);
    let denoiser = model.denoiser::<E>(dim);
    let start = Instant::now();
    let out = sample(
        plan,
        schedule,
        &ModelFn::new(denoiser.as_ref()),
        &x_t,
        None,
        &NoiseSource::Seeded(args.seed),
        args.trajectory.is_some(),
    )
    .map_err(|e| e.to_string())?;
    let secs = start.elapsed().as_secs_f64();
    write_npy(&args.out, &[batch, dim], &to_f64(&out.x), word)?;
    if let (Some(path), Some(traj)) = (&args.trajectory, &out.trajectory) {
        let data: Vec<f64> = traj.iter().flat_map(|(_, s)| to_f64(s)).collect();
        write_npy(path, &[traj.len(), batch, dim], &data, word)?;
    }
    println!(
        "sampled {batch} x {dim} with {}: NFE {}, {secs:.3} s -> {}",
        plan.description,
        out.nfe,
        args.out.display()
    );
    Ok(())
}

//! `adeis sample`: run a sampler on a model from x_T.

use std::path::PathBuf;
use std::time::Instant;

use adeis::npy::write_npy;
use adeis::prelude::*;
use adeis::runtime::dfdx::prelude::*;
use adeis::runtime::{from_f64, to_f64};
use anyhow::Result;

use super::model::{parse_model, with_model};
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

pub fn run(args: &SampleArgs) -> Result<()> {
    let problem = super::load_problem(&args.spec, "sample")?;
    let x = super::read_2d("--x-t", &args.x_t)?;
    let choice = parse_model(&args.model)?;
    choice.check_dim(x.shape[1])?;
    let rows = (x.shape[0], x.shape[1]);
    with_model!(&choice, rows.1, |m| match args.dtype {
        Dtype::F32 => run_typed::<f32, _>(args, &problem, m, &x.data, rows),
        Dtype::F64 => run_typed::<f64, _>(args, &problem, m, &x.data, rows),
    })
}

fn run_typed<E: adeis::runtime::dfdx::dtypes::Dtype, M: Denoiser<E, Cpu>>(
    args: &SampleArgs,
    problem: &Problem,
    model: &M,
    x: &[f64],
    (batch, dim): (usize, usize),
) -> Result<()>
where
    Cpu: Device<E>,
{
    let word = std::mem::size_of::<E>();
    let dev = Cpu::default();
    let x_t = from_f64::<E, Cpu>(&dev, x, batch, dim);
    let start = Instant::now();
    let noise = NoiseSource::Seeded(args.seed);
    let out = sample(
        problem.plan(),
        &ModelFn::new(model),
        &Input::new(&x_t, None, &noise),
        args.trajectory.is_some(),
    )?;
    let secs = start.elapsed().as_secs_f64();
    write_npy(&args.out, &out.x.shape(), &to_f64(&out.x), word)?;
    if let (Some(path), Some(traj)) = (&args.trajectory, &out.trajectory) {
        let data: Vec<f64> = traj.iter().flat_map(|(_, s)| to_f64(s)).collect();
        let mut shape = vec![traj.len()];
        shape.extend(out.x.shape());
        write_npy(path, &shape, &data, word)?;
    }
    println!(
        "sampled {batch} x {dim} with {}: NFE {}, {secs:.3} s -> {}",
        problem.plan().description,
        out.nfe,
        args.out.display()
    );
    Ok(())
}

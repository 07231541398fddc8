//! `adeis grad`: the gradient of a loss on the sample with respect to x_T, the conditioning
//! and the model's parameters, by the spec's `[gradient]` method.

use std::path::{Path, PathBuf};
use std::time::Instant;

use adeis::bench::peak_memory_bytes;
use adeis::npy::{write_npy, NpyArray};
use adeis::prelude::*;
use adeis::runtime::dfdx::prelude::*;
use adeis::runtime::loss::mse;
use adeis::runtime::{from_f64, to_f64};
use adeis::safetensors::write_safetensors;
use anyhow::{bail, Result};

use super::model::{default_cond, parse_model, with_model, NamedGrads};
use super::Dtype;

pub struct GradArgs {
    pub spec: PathBuf,
    pub model: String,
    pub x_t: PathBuf,
    pub cot: Option<PathBuf>,
    pub loss: Option<String>,
    pub target: Option<PathBuf>,
    pub cond: Option<PathBuf>,
    pub out_dir: PathBuf,
    pub seed: u64,
    pub dtype: Dtype,
}

enum LossChoice {
    Cot(Vec<f64>),
    Mse(Vec<f64>),
}

/// What the run reads: the starting noise, the loss, the conditioning.
struct Inputs {
    x: NpyArray,
    loss: LossChoice,
    cond: Option<NpyArray>,
}

fn read_same_shape(flag: &str, path: &Path, x: &NpyArray, what: &str) -> Result<NpyArray> {
    let a = super::read_2d(flag, path)?;
    if a.shape != x.shape {
        bail!(
            "{flag} has shape {:?}; {what} has [{}, {}]",
            a.shape,
            x.shape[0],
            x.shape[1]
        );
    }
    Ok(a)
}

pub fn run(args: &GradArgs) -> Result<()> {
    let problem = super::load_problem(&args.spec, "grad")?;
    let x = super::read_2d("--x-t", &args.x_t)?;
    let choice = parse_model(&args.model)?;
    choice.check_dim(x.shape[1])?;
    let loss = match (&args.cot, &args.loss) {
        (Some(_), Some(_)) => bail!("give --cot or --loss, not both"),
        (None, None) => bail!("give --cot cot.npy (dL/dx_0) or --loss mse --target t.npy"),
        (Some(p), None) => LossChoice::Cot(read_same_shape("--cot", p, &x, "the sample")?.data),
        (None, Some(l)) if l == "mse" => {
            let Some(p) = &args.target else {
                bail!("--loss mse needs --target t.npy");
            };
            LossChoice::Mse(read_same_shape("--target", p, &x, "the sample")?.data)
        }
        (None, Some(l)) => bail!("--loss {l}: the built-in losses here are: mse (with --target)"),
    };
    let cond = match &args.cond {
        Some(p) => Some(super::read_2d("--cond", p)?),
        None => None,
    };
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| anyhow::anyhow!("--out-dir {}: {e}", args.out_dir.display()))?;
    let inputs = Inputs { x, loss, cond };
    let dim = inputs.x.shape[1];
    let z_fill = default_cond(&choice);
    with_model!(&choice, dim, |m| match args.dtype {
        Dtype::F32 => run_typed::<f32, _>(args, &problem, m, &inputs, z_fill),
        Dtype::F64 => run_typed::<f64, _>(args, &problem, m, &inputs, z_fill),
    })
}

fn run_typed<E: adeis::runtime::dfdx::dtypes::Dtype, M: Denoiser<E, Cpu>>(
    args: &GradArgs,
    problem: &Problem,
    model: &M,
    inputs: &Inputs,
    z_fill: Option<f64>,
) -> Result<()>
where
    Cpu: Device<E>,
    M::Grads: NamedGrads,
{
    let word = std::mem::size_of::<E>();
    let dev = Cpu::default();
    let (batch, dim) = (inputs.x.shape[0], inputs.x.shape[1]);
    let x_t = from_f64::<E, Cpu>(&dev, &inputs.x.data, batch, dim);
    let wrt = problem.wrt();
    if wrt.params && !M::Grads::has_params() {
        bail!("gradient.wrt includes \"params\" but this model has no parameters adeis can differentiate");
    }
    // The Gaussian model's conditioning is its mean: without --cond, z = mu everywhere.
    let z = match (&inputs.cond, z_fill) {
        (Some(c), _) => {
            if c.shape[0] != batch || c.shape[1] != model.cond_dim() {
                bail!(
                    "--cond has shape {:?}; the model takes [{batch}, {}]",
                    c.shape,
                    model.cond_dim()
                );
            }
            Some(from_f64::<E, Cpu>(&dev, &c.data, batch, c.shape[1]))
        }
        (None, Some(mu)) => Some(from_f64::<E, Cpu>(&dev, &vec![mu; batch * dim], batch, dim)),
        (None, None) => None,
    };
    if wrt.cond && z.is_none() {
        bail!("gradient.wrt includes \"cond\" but this model has no conditioning");
    }
    let mut loss_value = None;
    let loss_grad = |x0: &State<E, Cpu>| -> Result<State<E, Cpu>, RuntimeError> {
        match &inputs.loss {
            LossChoice::Cot(c) => Ok(from_f64(&dev, c, batch, dim)),
            LossChoice::Mse(t) => {
                let lg = mse(x0, &from_f64(&dev, t, batch, dim))?;
                loss_value = Some(lg.value);
                Ok(lg.grad)
            }
        }
    };
    let start = Instant::now();
    let noise = NoiseSource::Seeded(args.seed);
    let g = gradient(
        problem,
        &ModelFn::new(model),
        &Input::new(&x_t, z.as_ref(), &noise),
        loss_grad,
    )?;
    let secs = start.elapsed().as_secs_f64();
    let mut written = vec![];
    if wrt.x_t {
        let p = args.out_dir.join("dx_t.npy");
        write_npy(&p, &g.dx_t.shape(), &to_f64(&g.dx_t), word)?;
        written.push(p);
    }
    if let Some(dz) = &g.dz {
        let p = args.out_dir.join("dz.npy");
        write_npy(&p, &dz.shape(), &to_f64(dz), word)?;
        written.push(p);
    }
    if let Some(tensors) = g.dtheta.as_ref().and_then(NamedGrads::named) {
        let p = args.out_dir.join("dparams.safetensors");
        write_safetensors(&p, &tensors, word)?;
        written.push(p);
    }
    let adjoint = problem.adjoint();
    let summary = serde_json::json!({
        "method": adjoint.method().name(),
        "order": match adjoint {
            Adjoint::AdjointDeis { order, .. } => Some(order.get()),
            _ => None,
        },
        "sampler": problem.plan().description,
        "nfe": g.nfe,
        "vjps": g.vjps,
        "seconds": secs,
        "peak_memory_bytes": peak_memory_bytes(),
        "loss": loss_value,
        "outputs": written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());
    Ok(())
}

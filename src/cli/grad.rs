//! `adeis grad`: the gradient of a loss on the sample with respect to x_T, the conditioning
//! and the model's parameters.

use std::path::PathBuf;
use std::time::Instant;

use adeis::compiler::{Equation, GradientSpec, WrtKey};
use adeis::npy::{write_npy, NpyArray};
use adeis::prelude::*;
use adeis::runtime::adjoint::compute_gradient;
use adeis::runtime::dfdx::prelude::*;
use adeis::runtime::loss::mse;
use adeis::runtime::{from_f64, to_f64, ModelFn, NoiseSource, ParamGrads, RuntimeError};
use adeis::safetensors::{peak_memory_bytes, write_safetensors, NamedTensor};

use super::model::{parse_model, ModelChoice};
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

pub fn run(args: &GradArgs) -> Result<(), String> {
    let super::Run {
        spec,
        sampler,
        schedule,
        plan,
    } = super::load_run(&args.spec, "grad")?;
    let gradient = spec.gradient.clone().unwrap_or_default();
    gradient.validate().map_err(|e| {
        format!(
            "{}: gradient.{}: {}",
            args.spec.display(),
            e.field,
            e.message
        )
    })?;
    let x = super::read_2d("--x-t", &args.x_t)?;
    let (batch, dim) = (x.shape[0], x.shape[1]);
    let model = parse_model(&args.model)?;
    model.check_dim(dim)?;
    let loss = match (&args.cot, &args.loss) {
        (Some(_), Some(_)) => return Err("give --cot or --loss, not both".into()),
        (None, None) => {
            return Err("give --cot cot.npy (dL/dx_0) or --loss mse --target t.npy".into())
        }
        (Some(p), None) => {
            let c = super::read_2d("--cot", p)?;
            if c.shape != x.shape {
                return Err(format!(
                    "--cot has shape {:?}; the sample has [{batch}, {dim}]",
                    c.shape
                ));
            }
            LossChoice::Cot(c.data)
        }
        (None, Some(l)) if l == "mse" => {
            let p = args
                .target
                .as_ref()
                .ok_or("--loss mse needs --target t.npy")?;
            let t = super::read_2d("--target", p)?;
            if t.shape != x.shape {
                return Err(format!(
                    "--target has shape {:?}; the sample has [{batch}, {dim}]",
                    t.shape
                ));
            }
            LossChoice::Mse(t.data)
        }
        (None, Some(l)) => {
            return Err(format!(
                "--loss {l}: the built-in losses here are: mse (with --target)"
            ))
        }
    };
    let cond = match &args.cond {
        Some(p) => Some(super::read_2d("--cond", p)?),
        None => None,
    };
    let sde = sampler.effective_equation() == Equation::Sde;
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| format!("--out-dir {}: {e}", args.out_dir.display()))?;
    match args.dtype {
        Dtype::F32 => run_typed::<f32>(
            args, &plan, &schedule, &model, &x.data, cond, batch, dim, &gradient, sde, loss, 4,
        ),
        Dtype::F64 => run_typed::<f64>(
            args, &plan, &schedule, &model, &x.data, cond, batch, dim, &gradient, sde, loss, 8,
        ),
    }
}

enum LossChoice {
    Cot(Vec<f64>),
    Mse(Vec<f64>),
}

#[allow(clippy::too_many_arguments)]
fn run_typed<E: adeis::runtime::dfdx::dtypes::Dtype>(
    args: &GradArgs,
    plan: &adeis::compiler::Plan,
    schedule: &Schedule,
    model: &ModelChoice,
    x: &[f64],
    cond: Option<NpyArray>,
    batch: usize,
    dim: usize,
    gradient: &GradientSpec,
    sde: bool,
    loss: LossChoice,
    word: usize,
) -> Result<(), String>
where
    Cpu: Device<E>,
{
    let dev = Cpu::default();
    let x_t = from_f64::<E, Cpu>(&dev, x, batch, dim);
    let denoiser = model.denoiser::<E>(dim);
    // The Gaussian model's conditioning is its mean: without --cond, z = mu everywhere.
    let z = match (&cond, model) {
        (Some(c), _) => {
            if c.shape[0] != batch || c.shape[1] != denoiser.cond_dim() {
                return Err(format!(
                    "--cond has shape {:?}; the model takes [{batch}, {}]",
                    c.shape,
                    denoiser.cond_dim()
                ));
            }
            Some(from_f64::<E, Cpu>(&dev, &c.data, batch, c.shape[1]))
        }
        (None, ModelChoice::Gaussian { mu, .. }) => Some(from_f64::<E, Cpu>(
            &dev,
            &vec![*mu; batch * dim],
            batch,
            dim,
        )),
        (None, _) => None,
    };
    if gradient.wants(WrtKey::Cond) && z.is_none() {
        return Err("gradient.wrt includes \"cond\" but this model has no conditioning".into());
    }
    let mut loss_value = None;
    let loss_grad = |x0: &adeis::runtime::Batch<E, Cpu>| -> Result<adeis::runtime::Batch<E, Cpu>, RuntimeError> {
        match &loss {
            LossChoice::Cot(c) => Ok(from_f64(&dev, c, batch, dim)),
            LossChoice::Mse(t) => {
                let lg = mse(x0, &from_f64(&dev, t, batch, dim))?;
                loss_value = Some(lg.value);
                Ok(lg.grad)
            }
        }
    };
    let start = Instant::now();
    let g = compute_gradient(
        plan,
        schedule,
        &ModelFn::new(denoiser.as_ref()),
        &x_t,
        z.as_ref(),
        &NoiseSource::Seeded(args.seed),
        gradient,
        sde,
        loss_grad,
    )
    .map_err(|e| e.to_string())?;
    let secs = start.elapsed().as_secs_f64();
    let mut written = vec![];
    if gradient.wants(WrtKey::XT) {
        let p = args.out_dir.join("dx_t.npy");
        write_npy(&p, &[batch, dim], &to_f64(&g.dx_t), word)?;
        written.push(p);
    }
    if let Some(dz) = &g.dz {
        let p = args.out_dir.join("dz.npy");
        write_npy(&p, &[dz.shape().0, dz.shape().1], &to_f64(dz), word)?;
        written.push(p);
    }
    if gradient.wants(WrtKey::Params) {
        let tensors = match (&g.dtheta, model) {
            (ParamGrads::Values(v), ModelChoice::Gaussian { .. }) => vec![NamedTensor {
                name: "s2".into(),
                shape: vec![1],
                data: v.clone(),
            }],
            _ => return Err("gradient.wrt includes \"params\" but this model has no parameters adeis can differentiate".into()),
        };
        let p = args.out_dir.join("dparams.safetensors");
        write_safetensors(&p, &tensors, word)?;
        written.push(p);
    }
    let summary = serde_json::json!({
        "method": gradient.method.name(),
        "order": if gradient.method == adeis::compiler::GradMethod::AdjointDeis { Some(gradient.adjoint_order()) } else { None },
        "sampler": plan.description,
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

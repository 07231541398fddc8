//! `adeis grad`: the gradient of a loss on the sample with respect to x_T, the conditioning,
//! the model's parameters, the sampling grid's times and the schedule's parameters, by the
//! spec's `[gradient]` method.

use std::path::PathBuf;
use std::time::Instant;

use adeis::bench::peak_memory_bytes;
use adeis::npy::{write_npy, NpyArray};
use adeis::prelude::*;
use adeis::runtime::dfdx::prelude::*;
use adeis::runtime::loss::mse;
use adeis::runtime::to_f64;
use adeis::safetensors::write_safetensors;
use anyhow::{bail, Result};

use super::inputs::{conditioned_model, read_like, read_x_t, state, CondArgs, GuidanceArgs};
use super::model::{parse_model, with_model, CommandModel};
use super::Dtype;

pub struct GradArgs {
    pub spec: PathBuf,
    pub steps: Option<usize>,
    pub guidance_scale: Option<f64>,
    pub null_class: Option<usize>,
    pub model: String,
    pub x_t: PathBuf,
    pub cot: Option<PathBuf>,
    pub loss: Option<String>,
    pub target: Option<PathBuf>,
    pub cond: Option<PathBuf>,
    pub class_labels: Option<PathBuf>,
    pub out_dir: PathBuf,
    pub seed: u64,
    pub dtype: Dtype,
}

enum LossChoice {
    Cot(NpyArray),
    Mse(NpyArray),
}

pub fn run(args: &GradArgs) -> Result<()> {
    let choice = parse_model(&args.model)?;
    let (problem, options) = super::load_problem(&args.spec, args.steps, "grad", &choice)?;
    let x = read_x_t(&choice, &args.x_t)?;
    let loss = match (&args.cot, &args.loss) {
        (Some(_), Some(_)) => bail!("give --cot or --loss, not both"),
        (None, None) => bail!("give --cot cot.npy (dL/dx_0) or --loss mse --target t.npy"),
        (Some(p), None) => LossChoice::Cot(read_like("--cot", p, &x)?),
        (None, Some(l)) if l == "mse" => {
            let Some(p) = &args.target else {
                bail!("--loss mse needs --target t.npy");
            };
            LossChoice::Mse(read_like("--target", p, &x)?)
        }
        (None, Some(l)) => bail!("--loss {l}: the built-in losses here are: mse (with --target)"),
    };
    let dim = x.shape[1];
    match args.dtype {
        Dtype::F32 => with_model!(&choice, f32, dim, |m| {
            run_typed::<f32, _>(args, &problem, &options, m, (&x, &loss))
        }),
        Dtype::F64 => with_model!(&choice, f64, dim, |m| {
            run_typed::<f64, _>(args, &problem, &options, m, (&x, &loss))
        }),
    }
}

fn run_typed<E: adeis::runtime::dfdx::dtypes::Dtype, M: CommandModel<E>>(
    args: &GradArgs,
    problem: &Problem,
    model_options: &super::inputs::SpecModelOptions,
    model: &M,
    (x, loss): (&NpyArray, &LossChoice),
) -> Result<()>
where
    Cpu: Device<E>,
{
    let word = std::mem::size_of::<E>();
    let x_t = state::<E>(x)?;
    let wrt = problem.wrt();
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
    if wrt.cond && z.is_none() {
        bail!("gradient.wrt includes \"cond\" but this model has no conditioning");
    }
    if wrt.params && model.named_grads(&model.zero_grads()).is_none() {
        bail!("gradient.wrt includes \"params\" but this model has no parameters adeis can differentiate");
    }
    let mut loss_value = None;
    let loss_grad = |x0: &State<E, Cpu>| -> Result<State<E, Cpu>, RuntimeError> {
        match loss {
            LossChoice::Cot(c) => Ok(x0.like(state::<E>(c).expect("checked shape").into_rows())),
            LossChoice::Mse(t) => {
                let lg = mse(x0, &state::<E>(t).expect("checked shape"))?;
                loss_value = Some(lg.value);
                Ok(lg.grad)
            }
        }
    };
    let start = Instant::now();
    let noise = NoiseSource::Seeded(args.seed);
    let g = gradient(
        problem,
        &model_fn,
        &Input::new(&x_t, z.as_ref(), &noise),
        loss_grad,
    )?;
    let secs = start.elapsed().as_secs_f64();
    // The folder is made once the gradient exists: a failed run leaves nothing behind.
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| anyhow::anyhow!("--out-dir {}: {e}", args.out_dir.display()))?;
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
    if let Some(dt) = &g.dtimes {
        // One value per grid time, in the grid's order (noisiest first), in f64: the grid is
        // f64 whatever the tensors are.
        let p = args.out_dir.join("dtimes.npy");
        write_npy(&p, &[dt.len()], dt, 8)?;
        written.push(p);
    }
    if let Some(ds) = &g.dschedule {
        let p = args.out_dir.join("dschedule.json");
        let map: serde_json::Map<String, serde_json::Value> = ds
            .iter()
            .map(|(name, v)| (name.clone(), serde_json::json!(v)))
            .collect();
        adeis_io::write_atomic(&p, serde_json::to_string_pretty(&map).unwrap().as_bytes())?;
        written.push(p);
    }
    if let Some(tensors) = g.dtheta.as_ref().and_then(|d| model.named_grads(d)) {
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
        "grid": wrt.times.then(|| problem.plan().grid.clone()),
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

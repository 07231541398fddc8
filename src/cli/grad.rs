//! `adeis grad`: the gradient of a loss on the sample with respect to x_T, the conditioning,
//! the model's parameters, the sampling grid's times and the schedule's parameters, by the
//! spec's `[gradient]` method.

use std::path::PathBuf;
use std::time::Instant;

use adeis::bench::peak_memory_bytes;
use adeis::diffusers::VaeDir;
use adeis::npy::{npy_bytes, NpyArray};
use adeis::prelude::*;
use adeis::runtime::loss::mse;
use adeis::runtime::nn::{Float, NnDevice};
use adeis::runtime::to_f64;
use adeis::runtime::unet::VaeMap;
use adeis::safetensors::safetensors_bytes;
use adeis::Outputs;
use anyhow::{bail, Result};

use super::inputs::{
    adopt_cond_tokens, check_memory, conditioned_model, pipeline_vae, read_shaped, read_x_t,
    same_file, sample_shape, state, ModelFlags,
};
use super::model::{parse_model, with_model, CommandModel};
use super::Dtype;

/// A reversible gradient whose x_T reconstruction is further off than this (relative) is
/// reported on stderr. The gradient's own error is smaller than the drift (Rex's data form in
/// f32 on ring8: drift 2.5e-3, dL/dx_T 1.7e-4 from the f64 discrete adjoint's), so a percent
/// is where the states stop being the forward's.
const RECONSTRUCTION_WARNING: f64 = 1e-2;

/// The options of `adeis grad` (each flag declared here once).
#[derive(clap::Args)]
pub struct GradArgs {
    /// Spec file with [schedule], [sampler] and (optionally) [gradient] tables, or a
    /// diffusers scheduler_config.json (with --steps; the gradient is then the discrete
    /// adjoint with respect to x_T).
    #[arg(long)]
    pub spec: PathBuf,
    /// The number of sampler steps: a diffusers scheduler config's inference steps, or in
    /// place of an adeis spec's sampler.steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Dynamic shifting of a flow-matching scheduler config.
    #[command(flatten)]
    pub flow_shift: super::FlowShiftFlags,
    /// `gaussian:mu=1.0,s2=0.3`, `gmm:mixture.json` or `diffusers:DIR` (see `adeis sample
    /// --help`).
    #[arg(long)]
    pub model: String,
    /// The starting noise: .npy, [batch, dim] or [batch, channels, height, width].
    #[arg(long = "x-t")]
    pub x_t: PathBuf,
    /// dL/dx_0 for the batch (.npy, x_T's shape; with a pipeline folder's VAE, dL/d(image)
    /// of the decoded images' shape); or use --loss.
    #[arg(long)]
    pub cot: Option<PathBuf>,
    /// A built-in loss instead of --cot: `mse` (mean squared error to --target).
    #[arg(long)]
    pub loss: Option<String>,
    /// The target of --loss mse (.npy, x_T's shape; with a pipeline folder's VAE, the
    /// decoded images' shape).
    #[arg(long)]
    pub target: Option<PathBuf>,
    /// How the model is conditioned and guided.
    #[command(flatten)]
    pub model_flags: ModelFlags,
    /// Where to write dx_t.npy, dz.npy (with conditioning) and dparams.safetensors (when
    /// gradient.wrt includes "params").
    #[arg(long = "out-dir")]
    pub out_dir: PathBuf,
    /// What to differentiate with respect to, in place of the spec's gradient.wrt
    /// (comma-separated: x_t, cond, params, times, schedule); with a diffusers scheduler
    /// config, whose gradient is otherwise with respect to x_T alone.
    #[arg(long)]
    pub wrt: Option<String>,
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    /// Seed of the SDE samplers' noise (replayed by the adjoint).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

enum LossChoice {
    Cot(NpyArray),
    Mse(NpyArray),
}

pub fn run(args: &GradArgs) -> Result<()> {
    // Before the run: an output folder that is a file fails here, not after the gradient.
    if args.out_dir.exists() && !args.out_dir.is_dir() {
        bail!(
            "--out-dir {}: is a file, not a folder; give a folder (it is made if missing)",
            args.out_dir.display()
        );
    }
    let mut choice = parse_model(&args.model)?;
    adopt_cond_tokens(&mut choice, args.model_flags.cond.as_ref())?;
    let (problem, options) = super::load_problem_wrt(
        &args.spec,
        (args.steps, args.wrt.as_deref(), &args.flow_shift),
        "grad",
        &choice,
    )?;
    let x = read_x_t(&choice, &args.x_t)?;
    let word = match args.dtype {
        Dtype::F32 => 4,
        Dtype::F64 => 8,
    };
    super::inputs::check_model_memory(&choice, ("--x-t", &x), word, true)?;
    // The loss is on the sample: x_0, or a pipeline's decoded image of it.
    let shape = sample_shape(&choice, &x.shape);
    let loss = match (&args.cot, &args.loss) {
        (Some(_), Some(_)) => bail!("give --cot or --loss, not both"),
        (None, None) => bail!("give --cot cot.npy (dL/dx_0) or --loss mse --target t.npy"),
        (Some(p), None) => LossChoice::Cot(read_shaped("--cot", p, &shape)?),
        (None, Some(l)) if l == "mse" => {
            let Some(p) = &args.target else {
                bail!("--loss mse needs --target t.npy");
            };
            LossChoice::Mse(read_shaped("--target", p, &shape)?)
        }
        (None, Some(l)) => bail!("--loss {l}: the built-in losses here are: mse (with --target)"),
    };
    let dim = x.shape[1];
    let vae = pipeline_vae(&choice);
    match args.dtype {
        Dtype::F32 => with_model!(&choice, f32, dim, |m| {
            run_typed::<f32, _>(args, &problem, &options, (m, vae), (&x, &loss))
        }),
        Dtype::F64 => with_model!(&choice, f64, dim, |m| {
            run_typed::<f64, _>(args, &problem, &options, (m, vae), (&x, &loss))
        }),
    }
}

/// Every output of the gradient, staged in the output folder (renamed into place together).
fn stage_outputs<E: adeis::runtime::dfdx::dtypes::Dtype, M: CommandModel<E>>(
    args: &GradArgs,
    g: &Gradient<E, Cpu, M::Grads>,
    model: &M,
    (word, with_dx_t): (usize, bool),
) -> Result<Outputs>
where
    Cpu: Device<E>,
{
    let mut out = Outputs::new();
    let dir = &args.out_dir;
    if with_dx_t {
        out.stage_creating_folders(
            &dir.join("dx_t.npy"),
            &npy_bytes(&g.dx_t.shape(), &to_f64(&g.dx_t), word),
        )?;
    }
    if let Some(dz) = &g.dz {
        out.stage_creating_folders(
            &dir.join("dz.npy"),
            &npy_bytes(&dz.shape(), &to_f64(dz), word),
        )?;
    }
    if let Some(dt) = &g.dtimes {
        // One value per grid time, in the grid's order (noisiest first), in f64: the grid is
        // f64 whatever the tensors are.
        out.stage_creating_folders(&dir.join("dtimes.npy"), &npy_bytes(&[dt.len()], dt, 8))?;
    }
    if let Some(ds) = &g.dschedule {
        let map: serde_json::Map<String, serde_json::Value> = ds
            .iter()
            .map(|(name, v)| (name.clone(), serde_json::json!(v)))
            .collect();
        out.stage_creating_folders(
            &dir.join("dschedule.json"),
            serde_json::to_string_pretty(&map).unwrap().as_bytes(),
        )?;
    }
    if let Some(tensors) = g.dtheta.as_ref().and_then(|d| model.named_grads(d)) {
        out.stage_creating_folders(
            &dir.join("dparams.safetensors"),
            &safetensors_bytes(&tensors, word),
        )?;
    }
    Ok(out)
}

fn run_typed<E: Float, M: CommandModel<E>>(
    args: &GradArgs,
    problem: &Problem,
    model_options: &super::inputs::SpecModelOptions,
    (model, vae_dir): (&M, Option<&VaeDir>),
    (x, loss): (&NpyArray, &LossChoice),
) -> Result<()>
where
    Cpu: NnDevice<E>,
{
    let word = std::mem::size_of::<E>();
    let vae = vae_dir
        .map(|d| d.load::<E, _>(&Cpu::default()))
        .transpose()?;
    let x_t = state::<E>(x)?;
    let wrt = problem.wrt();
    let (z, model_fn) = conditioned_model(
        model,
        &x_t,
        &args.model_flags.cond_args(),
        model_options,
        &args.model_flags.guidance_args(),
    )?;
    if wrt.cond && z.is_none() {
        bail!("gradient.wrt includes \"cond\" but this model has no conditioning");
    }
    if wrt.params && model.named_grads(&model.zero_grads()).is_none() {
        bail!("gradient.wrt includes \"params\" but this model has no parameters adeis can differentiate");
    }
    // What the method keeps across the steps, against the free memory, before the run.
    let plan = problem.plan();
    let state_bytes = x.data.len() * word;
    let kept_outputs = if wrt.times || wrt.schedule {
        plan.n_outputs
    } else {
        0
    };
    match problem.adjoint() {
        Adjoint::Discrete {
            states: DiscreteStates::Record,
        } => check_memory(
            "gradient.states = \"record\"",
            plan.n_states + kept_outputs,
            state_bytes,
            "use states = \"checkpoint\" (memory flat in the steps, a few more evaluations)",
        )?,
        Adjoint::AdjointDeis {
            states: ContinuousStates::Record,
            ..
        } => check_memory(
            "gradient.states = \"record\"",
            plan.n_states,
            state_bytes,
            "use states = \"backsolve\" (no recorded trajectory)",
        )?,
        Adjoint::Tape => check_memory(
            "gradient.method = \"tape\" (besides the network's activations)",
            plan.n_states + plan.n_outputs,
            state_bytes,
            "use method = \"discrete\" with states = \"checkpoint\"",
        )?,
        _ => {}
    }
    let mut loss_value = None;
    // dL/d(sample) for the sample (x_0, or a pipeline's decoded image).
    let mut sample_cot = |sample: &State<E, Cpu>| -> Result<State<E, Cpu>, RuntimeError> {
        match loss {
            LossChoice::Cot(c) => {
                Ok(sample.like(state::<E>(c).expect("checked shape").into_rows()))
            }
            LossChoice::Mse(t) => {
                let lg = mse(sample, &state::<E>(t).expect("checked shape"))?;
                loss_value = Some(lg.value);
                Ok(lg.grad)
            }
        }
    };
    // With a VAE the loss's cotangent on the image goes back through the decoder to x_0.
    let loss_grad = |x0: &State<E, Cpu>| -> Result<State<E, Cpu>, RuntimeError> {
        match &vae {
            Some(v) => Ok(v
                .vjp_state_with(VaeMap::DecodeLatents, x0, &mut sample_cot)?
                .dx),
            None => sample_cot(x0),
        }
    };
    // No output over an input (`--x-t g/dx_t.npy --out-dir g`), none over a device or FIFO.
    let dir = &args.out_dir;
    let outputs = [
        ("dx_t.npy", wrt.x_t),
        ("dz.npy", wrt.cond),
        ("dtimes.npy", wrt.times),
        ("dschedule.json", wrt.schedule),
        ("dparams.safetensors", wrt.params),
    ];
    let inputs = [
        Some(&args.spec),
        Some(&args.x_t),
        args.cot.as_ref(),
        args.target.as_ref(),
        args.model_flags.cond.as_ref(),
        args.model_flags.class_labels.as_ref(),
    ];
    for (name, _) in outputs.iter().filter(|(_, written)| *written) {
        let path = dir.join(name);
        adeis::check_output_path(&path).map_err(|e| anyhow::anyhow!("--out-dir: {e}"))?;
        if let Some(input) = inputs.iter().flatten().find(|i| same_file(i, &path)) {
            bail!(
                "--out-dir {}: the gradient's {name} would overwrite the input {}; give another output folder",
                dir.display(),
                input.display()
            );
        }
    }
    let start = Instant::now();
    let noise = NoiseSource::Seeded(args.seed);
    let g = gradient(
        problem,
        &model_fn,
        &Input::new(&x_t, z.as_ref(), &noise),
        loss_grad,
    )?;
    let secs = start.elapsed().as_secs_f64();
    // The folder is made at the commit, and the outputs appear together once all are
    // written: a failed or interrupted run leaves nothing behind.
    let written = stage_outputs(args, &g, model, (word, wrt.x_t))?.commit()?;
    if let Some(drift) = g
        .reconstruction
        .filter(|d| d.is_nan() || *d > RECONSTRUCTION_WARNING)
    {
        eprintln!(
            "warning: the reversible gradient's inverse sweep came back to x_T off by {drift:.1e} (relative): the states it ran the adjoint on, and so the gradient, carry that error (docs/numerics.md: the data form of an eps network, the SDE, BDIA and EDICT at many steps); method = \"discrete\" records or checkpoints the states instead"
        );
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
        // The reversible gradient's drift: where its inverse sweep lands against x_T.
        "reconstruction": g.reconstruction,
        "seconds": secs,
        "peak_memory_bytes": peak_memory_bytes(),
        "loss": loss_value,
        "outputs": written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());
    Ok(())
}

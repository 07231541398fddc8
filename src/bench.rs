//! The fixed benchmark workloads. W1, W2 and tiny: an MLP denoiser
//! `[x (D), z (8), sin(w_k t), cos(w_k t)]` with 16 frequencies, Linear(D+40, H), GeLU (tanh
//! approximation), Linear(H, H), GeLU, Linear(H, D); VP linear, logsnr grid from t = 1 to
//! 1e-3, DDIM, mean squared error to a fixed target, gradients with respect to x_T, z and all
//! parameters, seeded weights. W3: google/ddpm-cifar10-32's UNet (35.7M parameters, seeded
//! weights), batch 1, 3x32x32, DDIM on N evenly spaced train indices of the linear DDPM
//! schedule, mean squared error to a fixed target, the gradient with respect to x_T. W4: Stable
//! Diffusion 1.5's UNet (860M parameters, seeded weights), 4x64x64 latents, 77 x 768
//! embeddings, DDIM on SD's schedule, the gradient with respect to x_T and the embeddings
//! (w4-tiny: the same layout at CI's size).

use std::time::Instant;

use std::num::NonZeroUsize;

use adeis_compiler::{
    Adjoint, AdjointOrder, ContinuousStates, DiscreteStates, FieldError, GradMethod, Method,
    Problem, SamplerSpec, ScheduleDef, ScheduleSpec, Wrt,
};
use adeis_runtime::dfdx::prelude::*;
use adeis_runtime::loss::mse;
use adeis_runtime::mlp::{MlpDenoiser, TimeFeatures};
use adeis_runtime::nn::{Dense, Gelu, NnDevice};
use adeis_runtime::noise::normals;
use adeis_runtime::unet::{
    RandomParams, UNet2D, UNet2DCondition, UNet2DConditionConfig, UNet2DConfig,
};
use adeis_runtime::{from_f64, gradient, sample, Denoiser, Input, ModelFn, NoiseSource, State};
use serde::Serialize;

use crate::error::Error;

pub use adeis_io::peak_memory_bytes;

/// The conditioning width and the number of time frequencies of every workload.
pub const COND: usize = 8;
/// The number of sinusoidal time frequencies of the workloads' networks.
pub const FREQS: usize = 16;

type Mlp<const IN: usize, const H: usize, const D: usize> =
    (Dense<IN, H>, Gelu, Dense<H, H>, Gelu, Dense<H, D>);

/// What one benchmark run measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    /// The workload (w1, w2, w3, w4, w4-tiny, tiny).
    pub workload: String,
    /// The method, as `--method` names it.
    pub method: String,
    /// AdjointDEIS's order, for that method.
    pub order: Option<usize>,
    /// The sampler (order 1): ddim or rex.
    pub sampler: String,
    /// Sampler steps N.
    pub steps: usize,
    /// Timed runs (the median is reported).
    pub repeat: usize,
    /// Median seconds per gradient (or per sample).
    pub seconds: f64,
    /// Forward model evaluations per run.
    pub nfe: usize,
    /// Vector-Jacobian products per run.
    pub vjps: usize,
    /// One forward evaluation, seconds (from the floor's runs: their forwards' time / nfe).
    pub forward_seconds: f64,
    /// One VJP (its forward included), seconds (likewise from the floor's runs).
    pub vjp_seconds: f64,
    /// The median over `repeat` runs of the method's network calls alone, back to back and
    /// alternated with the method's runs: nfe forwards + vjps VJPs (the tape: nfe VJPs, a
    /// forward and a backward each).
    pub floor_seconds: f64,
    /// seconds / floor_seconds: what the method costs beyond its network passes.
    pub ratio: f64,
    /// The process's peak resident memory (None where the system does not say).
    pub peak_memory_bytes: Option<u64>,
    /// The reversible gradient's drift at x_T (max |x_T reconstructed - x_T| / max |x_T|).
    pub reconstruction: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The method argument: sample, discrete, adjoint_deis or tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchMethod {
    /// Sampling alone.
    Sample,
    /// A gradient by this method.
    Gradient(GradMethod),
}

/// What one benchmark run measures.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// w1, w2 or tiny.
    pub workload: String,
    /// cpu or cuda.
    pub device: String,
    /// Sampling or a gradient method.
    pub method: BenchMethod,
    /// AdjointDEIS's order (1 or 2).
    pub order: usize,
    /// Sampler steps N.
    pub steps: usize,
    /// Timed runs after one warm-up.
    pub repeat: usize,
    /// The discrete adjoint with binomial checkpointing (sqrt(N) slots) instead of recording.
    pub checkpoint: bool,
    /// The sampler, at order 1: ddim, or rex (Euler tableau, the reversible coupling, eps
    /// form), which the reversible gradient needs and every other method can run too.
    pub sampler: Method,
}

impl BenchOptions {
    /// The gradient method as a value (None: sampling only).
    fn adjoint(&self) -> Option<Adjoint> {
        let BenchMethod::Gradient(m) = self.method else {
            return None;
        };
        Some(match m {
            GradMethod::Discrete if self.checkpoint => Adjoint::Discrete {
                states: DiscreteStates::Checkpoint {
                    slots: (self.steps as f64).sqrt().ceil() as usize,
                },
            },
            GradMethod::Discrete => Adjoint::Discrete {
                states: DiscreteStates::Record,
            },
            GradMethod::AdjointDeis => Adjoint::AdjointDeis {
                order: if self.order == 2 {
                    AdjointOrder::TwoM
                } else {
                    AdjointOrder::One
                },
                steps: None::<NonZeroUsize>,
                states: ContinuousStates::Record,
            },
            GradMethod::Tape => Adjoint::Tape,
            GradMethod::Reversible => Adjoint::Reversible,
        })
    }
}

/// The workloads' sampler at order 1: Rex in the eps form, the form of their seeded eps
/// networks (the data form's x0 = (x - sigma eps) / alpha of an untrained network is large
/// and its inverse loses every digit in f32: docs/numerics.md).
fn bench_sampler(opts: &BenchOptions) -> SamplerSpec {
    let mut spec = SamplerSpec::new(opts.sampler, 1, opts.steps);
    if opts.sampler == Method::Rex {
        spec.form = Some(adeis_compiler::Pred::Eps);
    }
    spec
}

fn run_workload<Dev: NnDevice<f32>, const IN: usize, const H: usize, const D: usize>(
    dev: Dev,
    (name, batch): (&str, usize),
    opts: &BenchOptions,
) -> Result<BenchResult, Error> {
    let net = <Mlp<IN, H, D> as BuildOnDevice<Dev, f32>>::build_on_device(&dev);
    let model = MlpDenoiser::<_, IN, D>::new(
        net,
        D,
        COND,
        TimeFeatures::new(FREQS, 1000.0),
        adeis_compiler::Prediction::Eps,
    );
    let schedule = ScheduleDef::vp_linear(0.1, 20.0)
        .map_err(adeis_compiler::Error::from)?
        .compile()
        .map_err(adeis_compiler::Error::from)?;
    let problem = Problem::new(schedule, &bench_sampler(opts))
        .map_err(adeis_compiler::Error::from)?
        .with_wrt(Wrt::ALL);
    let x_t = from_f64::<f32, Dev>(&dev, &normals(1, 0, batch * D), batch, D);
    let z = from_f64::<f32, Dev>(&dev, &normals(2, 0, batch * COND), batch, COND);
    let target = from_f64::<f32, Dev>(&dev, &normals(3, 0, batch * D), batch, D);
    let run = Workload {
        name,
        problem,
        x_t,
        z: Some(z),
        target,
    };
    run.measure(&model, opts)
}

/// The config of google/ddpm-cifar10-32 (35.7M parameters), the UNet of workload W3.
pub const DDPM_CIFAR10_CONFIG: &str = r#"{
  "_class_name": "UNet2DModel",
  "act_fn": "silu",
  "attention_head_dim": null,
  "block_out_channels": [128, 256, 256, 256],
  "center_input_sample": false,
  "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
  "downsample_padding": 0,
  "flip_sin_to_cos": false,
  "freq_shift": 1,
  "in_channels": 3,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-06,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 32,
  "time_embedding_type": "positional",
  "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
}"#;

/// N + 1 train indices evenly spaced from 999 down to 0: the explicit grid of N DDIM steps.
pub fn even_train_indices(steps: usize) -> Vec<usize> {
    (0..=steps)
        .map(|k| ((999.0 * (steps - k) as f64) / steps as f64).round() as usize)
        .collect()
}

/// The UNet workloads' problem: the benchmark's sampler on N evenly spaced train indices of a
/// discrete `schedule` (where diffusers' DDIM evaluates the network), differentiating `wrt`.
fn explicit_problem(
    schedule: &ScheduleSpec,
    opts: &BenchOptions,
    wrt: Wrt,
) -> Result<Problem, Error> {
    let schedule = schedule
        .to_def()
        .map_err(Error::Option)?
        .compile()
        .map_err(adeis_compiler::Error::from)?;
    let mut sampler = bench_sampler(opts);
    sampler.grid = adeis_compiler::grid::GridKind::Explicit;
    sampler.train_indices = Some(even_train_indices(opts.steps));
    Ok(Problem::new(schedule, &sampler)
        .map_err(adeis_compiler::Error::from)?
        .with_wrt(wrt))
}

/// W3: the google/ddpm-cifar10-32 UNet with seeded random weights, batch 1, 3x32x32, DDIM on N
/// evenly spaced train indices of the linear DDPM schedule, MSE to a fixed target, gradient
/// with respect to x_T.
fn run_unet_workload<Dev: NnDevice<f32>>(
    dev: Dev,
    opts: &BenchOptions,
) -> Result<BenchResult, Error> {
    let config: UNet2DConfig =
        serde_json::from_str(DDPM_CIFAR10_CONFIG).expect("the W3 config is valid JSON");
    let model = UNet2D::<f32, Dev>::new(
        &dev,
        config,
        adeis_compiler::Prediction::Eps,
        &mut RandomParams::new(0),
    )?;
    let schedule = ScheduleSpec::builtin("discrete").expect("built in");
    let problem = explicit_problem(&schedule, opts, Wrt::X_T)?;
    let n = 3 * 32 * 32;
    let state = |seed: u64| {
        State::from_f64(&dev, &normals(seed, 0, n), &[1, 3, 32, 32]).expect("the W3 shape")
    };
    let run = Workload {
        name: "w3",
        problem,
        x_t: state(1),
        z: None,
        target: state(3),
    };
    run.measure(&model, opts)
}

/// The config of Stable Diffusion 1.5's UNet (`runwayml/stable-diffusion-v1-5`'s unet/config.json,
/// 860M parameters), the UNet of workload W4.
pub const SD15_UNET_CONFIG: &str = r#"{
  "_class_name": "UNet2DConditionModel",
  "act_fn": "silu",
  "attention_head_dim": 8,
  "block_out_channels": [320, 640, 1280, 1280],
  "center_input_sample": false,
  "cross_attention_dim": 768,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-05,
  "norm_num_groups": 32,
  "out_channels": 4,
  "sample_size": 64,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
}"#;

/// W4-tiny: SD 1.5's UNet layout at a size CI runs (channels 32-64, 8 tokens of 32, 16x16
/// latents): the same code paths as W4.
pub const SD_TINY_UNET_CONFIG: &str = r#"{
  "_class_name": "UNet2DConditionModel",
  "attention_head_dim": 4,
  "block_out_channels": [32, 64, 64, 64],
  "cross_attention_dim": 32,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "layers_per_block": 2,
  "norm_num_groups": 8,
  "sample_size": 16,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
}"#;

/// W4: Stable Diffusion 1.5's UNet architecture with seeded random weights (nothing is
/// downloaded), batch 1, 4x64x64 latents, 77 x 768 encoder hidden states, DDIM on N evenly
/// spaced train indices of SD's scaled-linear schedule, MSE to a fixed target, the gradient with
/// respect to x_T and the embeddings; `tiny`: the same layout at CI's size.
fn run_sd_workload<Dev: NnDevice<f32>>(
    dev: Dev,
    opts: &BenchOptions,
    tiny: bool,
) -> Result<BenchResult, Error> {
    let (config, side, tokens) = if tiny {
        (SD_TINY_UNET_CONFIG, 16, 8)
    } else {
        (SD15_UNET_CONFIG, 64, 77)
    };
    let config: UNet2DConditionConfig =
        serde_json::from_str(config).expect("the W4 configs are valid JSON");
    let cross = config.cross_dim();
    let model = UNet2DCondition::<f32, Dev>::new(
        &dev,
        config,
        adeis_compiler::Prediction::Eps,
        &mut RandomParams::new(0),
    )?
    .with_tokens(tokens);
    let mut schedule = ScheduleSpec::of_kind(adeis_compiler::spec::ScheduleKind::Discrete);
    schedule.beta_schedule = Some(adeis_compiler::spec::BetaSchedule::ScaledLinear);
    schedule.beta_start = Some(0.00085);
    schedule.beta_end = Some(0.012);
    let wrt = Wrt {
        cond: true,
        ..Wrt::X_T
    };
    let problem = explicit_problem(&schedule, opts, wrt)?;
    let shape = [1, 4, side, side];
    let state = |seed: u64, shape: &[usize]| {
        let n = shape.iter().product();
        State::from_f64(&dev, &normals(seed, 0, n), shape).expect("the W4 shapes")
    };
    let run = Workload {
        name: if tiny { "w4-tiny" } else { "w4" },
        problem,
        x_t: state(1, &shape),
        z: Some(state(2, &[1, tokens, cross])),
        target: state(3, &shape),
    };
    run.measure(&model, opts)
}

/// A workload's problem and inputs.
struct Workload<'a, Dev: Device<f32>> {
    name: &'a str,
    problem: Problem,
    x_t: State<f32, Dev>,
    z: Option<State<f32, Dev>>,
    target: State<f32, Dev>,
}

impl<Dev: Device<f32>> Workload<'_, Dev> {
    /// The median seconds of `opts.repeat` runs after a warm-up, and the floor: the median of
    /// as many runs of the same network calls alone, alternated with them.
    fn measure<M: Denoiser<f32, Dev>>(
        self,
        model: &M,
        opts: &BenchOptions,
    ) -> Result<BenchResult, Error> {
        let (method, steps, repeat) = (opts.method, opts.steps, opts.repeat);
        let Workload {
            name,
            mut problem,
            x_t,
            z,
            target,
        } = self;
        let adjoint = opts.adjoint();
        if let Some(a) = adjoint {
            problem = problem
                .with_adjoint(a)
                .map_err(adeis_compiler::Error::from)?;
        }
        let f = ModelFn::new(model);
        let noise = NoiseSource::Seeded(0);
        let input = Input::new(&x_t, z.as_ref(), &noise);
        let once = || -> Result<(usize, usize, Option<f64>), Error> {
            match adjoint {
                None => {
                    let out = sample(problem.plan(), &f, &input, false)?;
                    Ok((out.nfe, 0, None))
                }
                Some(_) => {
                    let g = gradient(&problem, &f, &input, |x0| mse(x0, &target).map(|l| l.grad))?;
                    Ok((g.nfe, g.vjps, g.reconstruction))
                }
            }
        };
        // A warm-up run, which also counts the network calls.
        let (nfe, vjps, reconstruction) = once()?;
        // The floor: the same network calls as one run of the method, back to back at a
        // mid-grid evaluation (nfe forwards, then vjps VJPs; the tape: nfe forward+backward
        // passes), timed as a whole and alternated with the method's runs so that both see the
        // same noise and the same statistic (a median of whole runs).
        let plan = problem.plan();
        let time = plan
            .instrs
            .iter()
            .filter_map(|i| match i {
                adeis_compiler::Instr::Eval { time, .. } => Some(*time),
                _ => None,
            })
            .nth(plan.nfe() / 2)
            .expect("a plan evaluates the model");
        let tape = method == BenchMethod::Gradient(GradMethod::Tape);
        let (floor_forwards, floor_vjps) = if tape { (0, nfe) } else { (nfe, vjps) };
        let theta = problem.wrt().params;
        let time_forwards = |k: usize| {
            let t = Instant::now();
            for _ in 0..k {
                std::hint::black_box(model.forward(&x_t, z.as_ref(), &time));
            }
            t.elapsed().as_secs_f64()
        };
        let time_vjps = |k: usize| {
            // The parameters' gradient only where the method makes one, as it does, per run.
            let mut acc = theta.then(|| model.zero_grads());
            let t = Instant::now();
            for _ in 0..k {
                let slot = acc.as_mut().map(|a| (a, 1.0));
                std::hint::black_box(model.vjp(&x_t, z.as_ref(), &time, &target, slot));
            }
            t.elapsed().as_secs_f64()
        };
        let (mut times, mut floors) = (Vec::with_capacity(repeat), Vec::with_capacity(repeat));
        let (mut fwd_each, mut vjp_each) = (Vec::new(), Vec::new());
        for _ in 0..repeat {
            let t = Instant::now();
            once()?;
            times.push(t.elapsed().as_secs_f64());
            let forwards = time_forwards(floor_forwards);
            let vjps_seconds = time_vjps(floor_vjps);
            floors.push(forwards + vjps_seconds);
            fwd_each.push(forwards / floor_forwards.max(1) as f64);
            vjp_each.push(vjps_seconds / floor_vjps.max(1) as f64);
        }
        // The per-call figures from the floor's runs, or where the floor makes no such call (a
        // forward alone in the tape's, a VJP in sampling's), from three calls timed alone.
        let per_call = |each: Vec<f64>, calls: usize, time: &dyn Fn(usize) -> f64| {
            median(match calls {
                0 => (0..3).map(|_| time(1)).collect(),
                _ => each,
            })
        };
        let fwd = per_call(fwd_each, floor_forwards, &time_forwards);
        let vjp = per_call(vjp_each, floor_vjps, &time_vjps);
        let (seconds, floor) = (median(times), median(floors));
        Ok(BenchResult {
            workload: name.into(),
            method: match method {
                BenchMethod::Sample => "sample".into(),
                BenchMethod::Gradient(m) => m.name().into(),
            },
            order: matches!(method, BenchMethod::Gradient(GradMethod::AdjointDeis))
                .then_some(opts.order),
            sampler: opts.sampler.name().into(),
            steps,
            repeat,
            seconds,
            nfe,
            vjps,
            forward_seconds: fwd,
            vjp_seconds: vjp,
            floor_seconds: floor,
            ratio: seconds / floor,
            peak_memory_bytes: peak_memory_bytes(),
            reconstruction,
        })
    }
}

/// Runs a workload by name on a device: `w1` (D 64, H 256, batch 16), `w2` (D 784, H 2048,
/// batch 64), or `tiny` (D 4, H 16, batch 2; for CI); `cpu`, or `cuda` (a build with the
/// `cuda` feature).
pub fn run(opts: &BenchOptions) -> Result<BenchResult, Error> {
    let option = |key: &str, value: &dyn std::fmt::Display, allowed: &str| {
        Err(Error::Option(FieldError::value(key, value, allowed)))
    };
    if opts.steps == 0 {
        return option("steps", &0, "a sampler needs at least 1 step");
    }
    adeis_compiler::grid::check_steps("steps", opts.steps).map_err(Error::Option)?;
    if opts.repeat == 0 {
        return option("repeat", &0, "at least one timed run");
    }
    crate::device::on_device(&opts.device, BenchJob(opts))
}

/// A benchmark run on the device `--device` names.
struct BenchJob<'a>(&'a BenchOptions);

impl crate::device::OnDevice for BenchJob<'_> {
    type Output = BenchResult;
    fn run<D: NnDevice<f32>>(self, dev: D) -> Result<BenchResult, Error> {
        run_on(dev, self.0)
    }
}

fn run_on<Dev: NnDevice<f32>>(dev: Dev, opts: &BenchOptions) -> Result<BenchResult, Error> {
    const W1_IN: usize = 64 + COND + 2 * FREQS;
    const W2_IN: usize = 784 + COND + 2 * FREQS;
    const TINY_IN: usize = 4 + COND + 2 * FREQS;
    match opts.workload.as_str() {
        "w1" => run_workload::<Dev, W1_IN, 256, 64>(dev, ("w1", 16), opts),
        "w2" => run_workload::<Dev, W2_IN, 2048, 784>(dev, ("w2", 64), opts),
        "tiny" => run_workload::<Dev, TINY_IN, 16, 4>(dev, ("tiny", 2), opts),
        "w3" => run_unet_workload(dev, opts),
        "w4" => run_sd_workload(dev, opts, false),
        "w4-tiny" => run_sd_workload(dev, opts, true),
        other => Err(Error::Option(FieldError::value(
            "workload",
            other,
            "the workloads are w1, w2, w3, w4 (Stable Diffusion 1.5's UNet), w4-tiny and tiny",
        ))),
    }
}

impl BenchResult {
    /// One line for the terminal.
    pub fn to_text(&self) -> String {
        format!(
            "{} {}{} ({}) N={}: {:.4} s/{} (median of {}), NFE {}, VJP {}, floor {:.4} s (forward {:.2} ms, VJP {:.2} ms), ratio {:.3}, peak memory {}{}",
            self.workload,
            self.method,
            self.order.map(|o| format!(" order {o}")).unwrap_or_default(),
            self.sampler,
            self.steps,
            self.seconds,
            if self.method == "sample" { "sample" } else { "gradient" },
            self.repeat,
            self.nfe,
            self.vjps,
            self.floor_seconds,
            self.forward_seconds * 1e3,
            self.vjp_seconds * 1e3,
            self.ratio,
            self.peak_memory_bytes.map(|b| format!("{:.1} MiB", b as f64 / 1048576.0)).unwrap_or_else(|| "unknown".into()),
            self.reconstruction.map(|r| format!(", x_T reconstructed to {r:.1e}")).unwrap_or_default()
        )
    }
}

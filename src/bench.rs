//! The fixed benchmark workloads (issue "Benchmarks"): an MLP denoiser
//! `[x (D), z (8), sin(w_k t), cos(w_k t)]` with 16 frequencies, Linear(D+40, H), GeLU (tanh
//! approximation), Linear(H, H), GeLU, Linear(H, D); VP linear, logsnr grid from t = 1 to
//! 1e-3, DDIM, mean squared error to a fixed target, gradients with respect to x_T, z and all
//! parameters, seeded weights.

use std::time::Instant;

use std::num::NonZeroUsize;

use adeis_compiler::{
    Adjoint, AdjointOrder, ContinuousStates, DiscreteStates, FieldError, GradMethod, Method,
    Problem, SamplerSpec, ScheduleDef, Wrt,
};
use adeis_runtime::dfdx::prelude::*;
use adeis_runtime::loss::mse;
use adeis_runtime::mlp::{MlpDenoiser, TimeFeatures};
use adeis_runtime::noise::normals;
use adeis_runtime::{from_f64, gradient, sample, Denoiser, Input, ModelFn, NoiseSource};
use serde::Serialize;

use crate::error::Error;

/// The peak resident memory of this process, in bytes (Linux: VmHWM), if known.
pub fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The conditioning width and the number of time frequencies of every workload.
pub const COND: usize = 8;
pub const FREQS: usize = 16;

type Mlp<const IN: usize, const H: usize, const D: usize> = (
    Linear<IN, H>,
    FastGeLU,
    Linear<H, H>,
    FastGeLU,
    Linear<H, D>,
);

/// What one benchmark run measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub workload: String,
    pub method: String,
    pub order: Option<usize>,
    pub steps: usize,
    pub repeat: usize,
    /// Median seconds per gradient (or per sample).
    pub seconds: f64,
    pub nfe: usize,
    pub vjps: usize,
    /// One forward evaluation and one VJP (forward included), medians, measured in isolation.
    pub forward_seconds: f64,
    pub vjp_seconds: f64,
    /// nfe * forward + vjps * vjp (for the tape: nfe * vjp, a forward and a backward each).
    pub floor_seconds: f64,
    pub ratio: f64,
    pub peak_memory_bytes: Option<u64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The method argument: sample, discrete, adjoint_deis or tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchMethod {
    Sample,
    Gradient(GradMethod),
}

/// What one benchmark run measures.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// w1, w2 or tiny.
    pub workload: String,
    /// cpu or cuda.
    pub device: String,
    pub method: BenchMethod,
    /// AdjointDEIS's order (1 or 2).
    pub order: usize,
    /// Sampler steps N.
    pub steps: usize,
    /// Timed runs after one warm-up.
    pub repeat: usize,
    /// The discrete adjoint with binomial checkpointing (sqrt(N) slots) instead of recording.
    pub checkpoint: bool,
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
        })
    }
}

fn run_workload<Dev: Device<f32>, const IN: usize, const H: usize, const D: usize>(
    dev: Dev,
    (name, batch): (&str, usize),
    opts: &BenchOptions,
) -> Result<BenchResult, Error> {
    let (method, steps, repeat) = (opts.method, opts.steps, opts.repeat);
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
    let mut problem = Problem::new(schedule, &SamplerSpec::new(Method::Ddim, 1, steps))
        .map_err(adeis_compiler::Error::from)?
        .with_wrt(Wrt::ALL);
    let adjoint = opts.adjoint();
    if let Some(a) = adjoint {
        problem = problem
            .with_adjoint(a)
            .map_err(adeis_compiler::Error::from)?;
    }
    let x_t = from_f64::<f32, Dev>(&dev, &normals(1, 0, batch * D), batch, D);
    let z = from_f64::<f32, Dev>(&dev, &normals(2, 0, batch * COND), batch, COND);
    let target = from_f64::<f32, Dev>(&dev, &normals(3, 0, batch * D), batch, D);
    let f = ModelFn::new(&model);
    let noise = NoiseSource::Seeded(0);
    let input = Input::new(&x_t, Some(&z), &noise);
    let once = || -> Result<(usize, usize), Error> {
        match adjoint {
            None => {
                let out = sample(problem.plan(), &f, &input, false)?;
                Ok((out.nfe, 0))
            }
            Some(_) => {
                let g = gradient(&problem, &f, &input, |x0| mse(x0, &target).map(|l| l.grad))?;
                Ok((g.nfe, g.vjps))
            }
        }
    };
    let (nfe, vjps) = once()?; // warm-up
    let mut times = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let t = Instant::now();
        once()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let seconds = median(times);
    // The floor: one forward and one VJP in isolation, at a mid-grid time.
    let time = problem.schedule().time_info(0.5);
    let reps = 7;
    let fwd = median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                let out = Denoiser::<f32, Dev>::forward(&model, &x_t, Some(&z), &time);
                std::hint::black_box(out);
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    let mut acc = Denoiser::<f32, Dev>::zero_grads(&model);
    let vjp = median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                let out = Denoiser::<f32, Dev>::vjp(
                    &model,
                    &x_t,
                    Some(&z),
                    &time,
                    &target,
                    Some((&mut acc, 1.0)),
                );
                std::hint::black_box(out);
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    // The tape's floor: a forward and a backward pass for every evaluation.
    let floor = if method == BenchMethod::Gradient(GradMethod::Tape) {
        nfe as f64 * vjp
    } else {
        nfe as f64 * fwd + vjps as f64 * vjp
    };
    Ok(BenchResult {
        workload: name.into(),
        method: match method {
            BenchMethod::Sample => "sample".into(),
            BenchMethod::Gradient(m) => m.name().into(),
        },
        order: matches!(method, BenchMethod::Gradient(GradMethod::AdjointDeis))
            .then_some(opts.order),
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
    })
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
    if opts.repeat == 0 {
        return option("repeat", &0, "at least one timed run");
    }
    match opts.device.as_str() {
        "cpu" => run_on(Cpu::seed_from_u64(0), opts),
        #[cfg(feature = "cuda")]
        "cuda" => run_on(adeis_runtime::CudaDevice::seed_from_u64(0), opts),
        #[cfg(not(feature = "cuda"))]
        "cuda" => option(
            "device",
            &"cuda",
            "this build has no CUDA support (build with --features cuda)",
        ),
        other => option("device", &other, "cpu or cuda"),
    }
}

fn run_on<Dev: Device<f32>>(dev: Dev, opts: &BenchOptions) -> Result<BenchResult, Error> {
    const W1_IN: usize = 64 + COND + 2 * FREQS;
    const W2_IN: usize = 784 + COND + 2 * FREQS;
    const TINY_IN: usize = 4 + COND + 2 * FREQS;
    match opts.workload.as_str() {
        "w1" => run_workload::<Dev, W1_IN, 256, 64>(dev, ("w1", 16), opts),
        "w2" => run_workload::<Dev, W2_IN, 2048, 784>(dev, ("w2", 64), opts),
        "tiny" => run_workload::<Dev, TINY_IN, 16, 4>(dev, ("tiny", 2), opts),
        other => Err(Error::Option(FieldError::value(
            "workload",
            other,
            "the workloads are w1, w2 and tiny",
        ))),
    }
}

impl BenchResult {
    pub fn to_text(&self) -> String {
        format!(
            "{} {}{} N={}: {:.4} s/{} (median of {}), NFE {}, VJP {}, floor {:.4} s (forward {:.2} ms, VJP {:.2} ms), ratio {:.3}, peak memory {}",
            self.workload,
            self.method,
            self.order.map(|o| format!(" order {o}")).unwrap_or_default(),
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
            self.peak_memory_bytes.map(|b| format!("{:.1} MiB", b as f64 / 1048576.0)).unwrap_or_else(|| "unknown".into())
        )
    }
}

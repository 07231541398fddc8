//! The fixed benchmark workloads (issue "Benchmarks"): an MLP denoiser
//! `[x (D), z (8), sin(w_k t), cos(w_k t)]` with 16 frequencies, Linear(D+40, H), GeLU (tanh
//! approximation), Linear(H, H), GeLU, Linear(H, D); VP linear, logsnr grid from t = 1 to
//! 1e-3, DDIM, mean squared error to a fixed target, gradients with respect to x_T, z and all
//! parameters, seeded weights.

use std::time::Instant;

use adeis_compiler::gradient::States;
use adeis_compiler::{
    build_plan, GradMethod, GradientSpec, Method, SamplerSpec, Schedule, ScheduleDef, WrtKey,
};
use adeis_runtime::adjoint::compute_gradient;
use adeis_runtime::dfdx::prelude::*;
use adeis_runtime::executor::time_info;
use adeis_runtime::loss::mse;
use adeis_runtime::mlp::{MlpDenoiser, TimeFeatures};
use adeis_runtime::noise::normals;
use adeis_runtime::{from_f64, sample, Denoiser, ModelFn, NoiseSource, RuntimeError};
use serde::Serialize;

use crate::safetensors::peak_memory_bytes;

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

#[allow(clippy::too_many_arguments)]
fn run_workload<Dev: Device<f32>, const IN: usize, const H: usize, const D: usize>(
    dev: Dev,
    name: &str,
    batch: usize,
    method: BenchMethod,
    order: usize,
    steps: usize,
    repeat: usize,
    states: States,
) -> Result<BenchResult, String> {
    let net = <Mlp<IN, H, D> as BuildOnDevice<Dev, f32>>::build_on_device(&dev);
    let model = MlpDenoiser::<_, IN, D>::new(
        net,
        D,
        COND,
        TimeFeatures::new(FREQS, 1000.0),
        adeis_compiler::Prediction::Eps,
    );
    let schedule: Schedule = ScheduleDef::vp_linear(0.1, 20.0)
        .map_err(|e| e.to_string())?
        .compile()
        .map_err(|e| e.to_string())?;
    let plan =
        build_plan(&schedule, &SamplerSpec::new(Method::Ddim, 1, steps)).map_err(|e| e.message)?;
    let x_t = from_f64::<f32, Dev>(&dev, &normals(1, 0, batch * D), batch, D);
    let z = from_f64::<f32, Dev>(&dev, &normals(2, 0, batch * COND), batch, COND);
    let target = from_f64::<f32, Dev>(&dev, &normals(3, 0, batch * D), batch, D);
    let f = ModelFn::new(&model);
    let noise = NoiseSource::Seeded(0);
    let spec = match method {
        BenchMethod::Gradient(m) => Some(GradientSpec {
            method: m,
            order: (m == GradMethod::AdjointDeis).then_some(order),
            steps: None,
            states,
            checkpoints: (states == States::Checkpoint)
                .then_some(((steps as f64).sqrt().ceil()) as usize),
            wrt: vec![WrtKey::XT, WrtKey::Cond, WrtKey::Params],
        }),
        BenchMethod::Sample => None,
    };
    let once = || -> Result<(usize, usize), String> {
        match &spec {
            None => {
                let out = sample(&plan, &schedule, &f, &x_t, Some(&z), &noise, false)
                    .map_err(|e| e.to_string())?;
                Ok((out.nfe, 0))
            }
            Some(spec) => {
                let g = compute_gradient(
                    &plan,
                    &schedule,
                    &f,
                    &x_t,
                    Some(&z),
                    &noise,
                    spec,
                    false,
                    |x0| {
                        mse(x0, &target)
                            .map(|l| l.grad)
                            .map_err(|e: RuntimeError| e)
                    },
                )
                .map_err(|e| e.to_string())?;
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
    let time = time_info(&schedule, 0.5);
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
    let mut acc = Denoiser::<f32, Dev>::param_grads(&model);
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
        order: matches!(method, BenchMethod::Gradient(GradMethod::AdjointDeis)).then_some(order),
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
#[allow(clippy::too_many_arguments)]
pub fn run(
    workload: &str,
    device: &str,
    method: BenchMethod,
    order: usize,
    steps: usize,
    repeat: usize,
    states: States,
) -> Result<BenchResult, String> {
    if steps == 0 {
        return Err("--steps 0: a sampler needs at least 1 step".into());
    }
    if repeat == 0 {
        return Err("--repeat 0: at least one timed run".into());
    }
    match device {
        "cpu" => run_on(
            Cpu::seed_from_u64(0),
            workload,
            method,
            order,
            steps,
            repeat,
            states,
        ),
        #[cfg(feature = "cuda")]
        "cuda" => run_on(
            adeis_runtime::CudaDevice::seed_from_u64(0),
            workload,
            method,
            order,
            steps,
            repeat,
            states,
        ),
        #[cfg(not(feature = "cuda"))]
        "cuda" => {
            Err("--device cuda: this build has no CUDA support (build with --features cuda)".into())
        }
        other => Err(format!("--device {other}: cpu or cuda")),
    }
}

#[allow(clippy::too_many_arguments)]
fn run_on<Dev: Device<f32>>(
    dev: Dev,
    workload: &str,
    method: BenchMethod,
    order: usize,
    steps: usize,
    repeat: usize,
    states: States,
) -> Result<BenchResult, String> {
    const W1_IN: usize = 64 + COND + 2 * FREQS;
    const W2_IN: usize = 784 + COND + 2 * FREQS;
    const TINY_IN: usize = 4 + COND + 2 * FREQS;
    match workload {
        "w1" => {
            run_workload::<Dev, W1_IN, 256, 64>(dev, "w1", 16, method, order, steps, repeat, states)
        }
        "w2" => run_workload::<Dev, W2_IN, 2048, 784>(
            dev, "w2", 64, method, order, steps, repeat, states,
        ),
        "tiny" => run_workload::<Dev, TINY_IN, 16, 4>(
            dev, "tiny", 2, method, order, steps, repeat, states,
        ),
        other => Err(format!(
            "--workload {other}: the workloads are w1, w2 and tiny"
        )),
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

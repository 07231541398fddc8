//! Learned time steps (`adeis learn-steps`): an N-step grid optimised against a teacher (the same
//! model on a fine grid) by the exact gradient with respect to the grid times, which the
//! discrete adjoint accumulates in its one backward sweep (one VJP per model evaluation, as for
//! x_T alone).
//!
//! The grid is parameterised so that it stays strictly ordered inside the schedule's range:
//! its end points are t_max and t_min, and its N increments in lambda (half log-SNR) are the
//! softmax of N logits times lambda(t_min) - lambda(t_max). All-zero logits are the logsnr grid,
//! where the optimisation starts.

use std::time::Instant;

use adeis_compiler::grid::{make_grid, GridKind};
use adeis_compiler::{
    build_plan, build_plan_on, DiscreteStates, Equation, Method, Plan, SamplerSpec, Schedule, Wrt,
};
use adeis_runtime::adjoint::discrete::discrete_adjoint;
use adeis_runtime::adjoint::reversible::reversible_gradient;
use adeis_runtime::dfdx::prelude::*;
use adeis_runtime::optim::{Optimizer, OptimizerKind};
use adeis_runtime::{from_f64, sample, to_f64, Denoiser, Input, ModelFn, NoiseSource, State};

use crate::Error;

/// A grid from t_max down to t_min whose lambda increments are softmax(logits) of the range.
#[derive(Clone, Debug, PartialEq)]
pub struct LambdaGrid {
    /// One logit per step: the lambda increments are their softmax times the range.
    pub logits: Vec<f64>,
    lambda_start: f64,
    lambda_end: f64,
    t_start: f64,
    t_end: f64,
}

impl LambdaGrid {
    /// The logsnr grid of `steps` steps over the schedule's range.
    pub fn uniform(schedule: &Schedule, steps: usize) -> LambdaGrid {
        let (t_start, t_end) = (schedule.t_max(), schedule.t_min());
        LambdaGrid {
            logits: vec![0.0; steps],
            lambda_start: schedule.lambda(t_start),
            lambda_end: schedule.lambda(t_end),
            t_start,
            t_end,
        }
    }

    fn probs(&self) -> Vec<f64> {
        let m = self
            .logits
            .iter()
            .cloned()
            .fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = self.logits.iter().map(|w| (w - m).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|x| x / z).collect()
    }

    /// lambda at each grid point.
    pub fn lambdas(&self) -> Vec<f64> {
        let d = self.lambda_end - self.lambda_start;
        let mut acc = 0.0;
        let mut out = vec![self.lambda_start];
        for p in self.probs() {
            acc += p;
            out.push(self.lambda_start + d * acc);
        }
        out
    }

    /// The grid times, noisiest first; the end points are the schedule's exactly.
    pub fn times(&self, schedule: &Schedule) -> Vec<f64> {
        let lam = self.lambdas();
        let n = lam.len() - 1;
        lam.iter()
            .enumerate()
            .map(|(i, l)| match i {
                0 => self.t_start,
                i if i == n => self.t_end,
                _ => schedule.t_of_lambda(*l),
            })
            .collect()
    }

    /// dL/d logits from dL/dt_i: dt_i/d lambda_i = 1 / lambda'(t_i) and, with P_i the sum of
    /// the first i probabilities, d lambda_i / d w_j = D p_j (`[j < i]` - P_i). The end points
    /// do not move.
    pub fn logits_grad(&self, schedule: &Schedule, times: &[f64], dtimes: &[f64]) -> Vec<f64> {
        let p = self.probs();
        let d = self.lambda_end - self.lambda_start;
        let n = p.len();
        let mut g = vec![0.0; n];
        let mut cum = 0.0;
        for i in 1..n {
            cum += p[i - 1];
            let dl = dtimes[i] / schedule.eval(times[i]).dlambda_dt;
            for (j, gj) in g.iter_mut().enumerate() {
                let before = if j < i { 1.0 } else { 0.0 };
                *gj += dl * d * p[j] * (before - cum);
            }
        }
        g
    }
}

/// What `learn_steps` does.
#[derive(Clone, Debug)]
pub struct LearnOptions {
    /// The student's sampler (its `steps` is the grid's N; its grid is replaced).
    pub student: SamplerSpec,
    /// The teacher: the same model with this sampler (a fine grid).
    pub teacher: SamplerSpec,
    /// Optimisation iterations.
    pub iters: usize,
    /// Adam's learning rate on the logits.
    pub lr: f64,
    /// Training and held-out noises.
    pub train: usize,
    /// Held-out noises (the mean squared error is reported on them).
    pub heldout: usize,
    /// The seed of the noises.
    pub seed: u64,
}

/// A grid and its held-out error to the teacher.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GridResult {
    /// The grid's name (`learned`, `logsnr`, ...).
    pub name: String,
    /// Its times, noisiest first.
    pub times: Vec<f64>,
    /// Mean over held-out noises and coordinates of (x0 - teacher x0)^2.
    pub heldout_mse: f64,
    /// The student's held-out samples (rows), for task metrics such as a classifier's.
    #[serde(skip)]
    pub samples: Vec<Vec<f64>>,
}

/// What `learn_steps` returns.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LearnReport {
    /// The grid's steps N.
    pub steps: usize,
    /// The student sampler, described.
    pub student: String,
    /// The teacher sampler, described.
    pub teacher: String,
    /// The learned grid (the iteration with the lowest training loss), then the fixed grids.
    pub grids: Vec<GridResult>,
    /// Training loss (MSE to the teacher on the training noises) before each update.
    pub train_loss: Vec<f64>,
    /// The iteration whose grid is kept (lowest training loss).
    pub best_iteration: usize,
    /// Wall time of the optimisation.
    pub seconds: f64,
    /// Model evaluations and VJPs of one gradient with respect to the grid.
    pub nfe_per_gradient: usize,
    /// VJPs of one gradient with respect to the grid.
    pub vjps_per_gradient: usize,
    /// The teacher's held-out samples (rows).
    #[serde(skip)]
    pub teacher_samples: Vec<Vec<f64>>,
}

impl LearnReport {
    /// The learned grid, the fixed grid with the lowest held-out error, and the learned
    /// grid's gain against it (1 - learned / best fixed: positive where learning helped).
    pub fn against_best_fixed(&self) -> (&GridResult, &GridResult, f64) {
        let learned = &self.grids[0];
        let best_fixed = self.grids[1..]
            .iter()
            .min_by(|x, y| x.heldout_mse.total_cmp(&y.heldout_mse))
            .expect("learn_steps returns the fixed grids after the learned one");
        (
            learned,
            best_fixed,
            1.0 - learned.heldout_mse / best_fixed.heldout_mse,
        )
    }
}

/// The `[schedule]` table of a learned spec file.
pub fn schedule_table(schedule: &adeis_compiler::ScheduleSpec) -> String {
    #[derive(serde::Serialize)]
    struct Table<'a> {
        schedule: &'a adeis_compiler::ScheduleSpec,
    }
    toml::to_string(&Table { schedule }).expect("a schedule spec serialises to TOML")
}

/// The model and what it is conditioned on: one conditioning row per training and per
/// held-out noise, when the model takes one.
pub struct LearnModel<'a, E: Dtype, M: Denoiser<E, Cpu> + ?Sized>
where
    Cpu: Device<E>,
{
    /// The model with its conversions (and guidance, if any).
    pub model: &'a ModelFn<'a, E, Cpu, M>,
    /// The data dimension.
    pub dim: usize,
    /// The conditioning rows of the training noises.
    pub train_cond: Option<State<E, Cpu>>,
    /// The conditioning rows of the held-out noises.
    pub heldout_cond: Option<State<E, Cpu>>,
}

fn mse(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / a.len() as f64
}

/// The sampler learn-steps learns a grid for (or teaches with): `method` at `order` with
/// `steps` steps on the logsnr grid (replaced by the learned one). Errors name the key
/// (`method`, `order`, `steps`), the value and what is allowed.
pub fn logsnr_sampler(
    method: &str,
    order: usize,
    steps: usize,
) -> Result<SamplerSpec, adeis_compiler::FieldError> {
    let m: Method = serde_json::from_value(serde_json::json!(method)).map_err(|_| {
        adeis_compiler::FieldError::value(
            "method",
            method,
            format!(
                "not a sampler; the ODE samplers are {}",
                Method::ALL
                    .iter()
                    .filter(|m| !m.name().starts_with("sde_") && !m.orders().is_empty())
                    .map(|m| m.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    let mut s = SamplerSpec::new(m, order, steps);
    s.grid = GridKind::Logsnr;
    s.validate().map_err(|mut e| {
        if !matches!(e.key.as_str(), "order" | "steps") {
            e.key = "method".into();
            e.value = Some(method.into());
        }
        e
    })?;
    Ok(s)
}

/// The most training or held-out noises learn-steps takes.
pub const MAX_NOISES: usize = 100_000;
/// The most Adam iterations learn-steps takes.
pub const MAX_ITERS: usize = 100_000;

fn check_options(o: &LearnOptions) -> Result<(), Error> {
    let bad = |key: &str, value: String, why: &str| {
        Err(Error::Option(adeis_compiler::FieldError::value(
            key, value, why,
        )))
    };
    if !(3..=10).contains(&o.student.steps) {
        return bad(
            "steps",
            o.student.steps.to_string(),
            "learn-steps learns grids of 3 to 10 steps",
        );
    }
    for (key, s) in [("method", &o.student), ("teacher", &o.teacher)] {
        if s.effective_equation() == Equation::Sde {
            return bad(
                key,
                s.method.name().into(),
                "the grid is learned for an ODE sampler (an SDE sample has no fixed target)",
            );
        }
    }
    if o.iters == 0 {
        return bad("iters", "0".into(), "at least one iteration");
    }
    if !(o.lr > 0.0 && o.lr.is_finite()) {
        return bad("lr", o.lr.to_string(), "a finite learning rate > 0");
    }
    if o.train == 0 || o.heldout == 0 {
        return bad(
            if o.train == 0 { "train" } else { "heldout" },
            "0".into(),
            "at least one noise",
        );
    }
    // Every training noise is sampled by the teacher and run through the student at every
    // iteration, every held-out one by the teacher and five grids: a bound keeps a typo from
    // running for days or filling the memory.
    for (key, n) in [("train", o.train), ("heldout", o.heldout)] {
        if n > MAX_NOISES {
            return bad(
                key,
                n.to_string(),
                &format!("at most {MAX_NOISES} noises (each one is sampled by the teacher and every grid)"),
            );
        }
    }
    if o.iters > MAX_ITERS {
        return bad(
            "iters",
            o.iters.to_string(),
            &format!("at most {MAX_ITERS} iterations"),
        );
    }
    Ok(())
}

/// The student's plan on the learned `times`, checked as an explicit grid is (finite, strictly
/// decreasing, inside the schedule, every coefficient finite): an optimisation that diverges or
/// collapses two grid points stops here, naming the iteration and the learning rate.
fn student_plan(
    schedule: &Schedule,
    student: &SamplerSpec,
    times: &[f64],
    it: usize,
    lr: f64,
) -> Result<Plan, Error> {
    let mut spec = student.clone();
    spec.grid = GridKind::Explicit;
    spec.times = Some(times.to_vec());
    build_plan(schedule, &spec).map_err(|e| {
        Error::Usage(format!(
            "learn-steps: at iteration {it} the learned grid is no longer a grid ({}): the optimisation diverged; try a smaller --lr (this run: {})",
            e.message(),
            short_number(lr)
        ))
    })
}

/// A number as a user would write it: 0.05, 30, 1e6, 1e300.
fn short_number(v: f64) -> String {
    if v != 0.0 && !(1e-3..1e4).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// Runs a sampler on `grid` and returns x_0's values.
fn run_grid<E: Dtype, M: Denoiser<E, Cpu> + ?Sized>(
    schedule: &Schedule,
    spec: &SamplerSpec,
    grid: Vec<f64>,
    model: &ModelFn<E, Cpu, M>,
    x_t: &State<E, Cpu>,
    cond: Option<&State<E, Cpu>>,
) -> Result<Vec<f64>, Error>
where
    Cpu: Device<E>,
{
    let plan = build_plan_on(schedule, spec, grid);
    let noise = NoiseSource::Seeded(0);
    let out = sample(&plan, model, &Input::new(x_t, cond, &noise), false)?;
    Ok(to_f64(&out.x))
}

/// Learns an N-step grid for `lm` against the teacher; `progress(iteration, loss)` is called
/// after every update.
pub fn learn_steps<E: Dtype, M: Denoiser<E, Cpu> + ?Sized>(
    schedule: &Schedule,
    lm: &LearnModel<E, M>,
    o: &LearnOptions,
    mut progress: impl FnMut(usize, f64) -> Result<(), Error>,
) -> Result<LearnReport, Error>
where
    Cpu: Device<E>,
{
    check_options(o)?;
    let start = Instant::now();
    let dev = Cpu::default();
    let n = o.student.steps;
    let noises = |stream: u64, count: usize| -> State<E, Cpu> {
        let v = adeis_runtime::noise::normals(o.seed, stream, count * lm.dim);
        from_f64(&dev, &v, count, lm.dim)
    };
    // Separate streams: the held-out noises are never trained on.
    let (x_train, x_held) = (
        noises(u64::MAX - 1, o.train),
        noises(u64::MAX - 2, o.heldout),
    );
    let teacher_grid = o
        .teacher
        .grid_for(schedule)
        .map_err(|e| Error::Option(e.under("teacher")))?;
    let (tc, hc) = (lm.train_cond.as_ref(), lm.heldout_cond.as_ref());
    let target_train = run_grid(
        schedule,
        &o.teacher,
        teacher_grid.clone(),
        lm.model,
        &x_train,
        tc,
    )?;
    let target_held = run_grid(schedule, &o.teacher, teacher_grid, lm.model, &x_held, hc)?;

    let mut grid = LambdaGrid::uniform(schedule, n);
    let mut adam = Optimizer::new(OptimizerKind::Adam, o.lr, n);
    let wrt = Wrt {
        x_t: false,
        cond: false,
        params: false,
        times: true,
        schedule: false,
    };
    let mut train_loss = Vec::with_capacity(o.iters);
    let (mut best, mut best_iteration) = (grid.clone(), 0);
    let (mut nfe, mut vjps) = (0, 0);
    let scale = 2.0 / target_train.len() as f64;
    for it in 0..o.iters {
        let times = grid.times(schedule);
        let plan = student_plan(schedule, &o.student, &times, it, o.lr)?;
        let noise = NoiseSource::Seeded(0);
        let mut loss = f64::NAN;
        let loss_grad = |x0: &State<E, Cpu>| {
            let v = to_f64(x0);
            loss = mse(&v, &target_train);
            let d: Vec<f64> = v
                .iter()
                .zip(&target_train)
                .map(|(a, b)| scale * (a - b))
                .collect();
            Ok(x0.like(adeis_runtime::rows_from_f64(
                &dev,
                &d,
                x0.batch(),
                x0.width(),
            )))
        };
        let input = Input::new(&x_train, tc, &noise);
        // A reversible student (rex) is differentiated by its inverse sweep: no recorded
        // states; the gradient is the discrete adjoint's.
        let g = if plan.reversal.is_some() {
            reversible_gradient(&plan, lm.model, &input, wrt, loss_grad)?
        } else {
            discrete_adjoint(
                &plan,
                lm.model,
                &input,
                wrt,
                DiscreteStates::Record,
                loss_grad,
            )?
        };
        (nfe, vjps) = (g.nfe, g.vjps);
        if !loss.is_finite() {
            return Err(Error::Usage(format!(
                "learn-steps: the training loss is {loss} at iteration {it}; try a smaller --lr"
            )));
        }
        if it == 0 && loss == 0.0 {
            return Err(Error::Usage(
                "learn-steps: the training loss is 0 at iteration 0: the student's samples equal the teacher's on every training noise (the model's data have no spread at this precision), so there is no grid to learn".into(),
            ));
        }
        if train_loss.iter().all(|l| loss < *l) {
            (best, best_iteration) = (grid.clone(), it);
        }
        train_loss.push(loss);
        let dt = g.dtimes.expect("wrt times");
        let gw = grid.logits_grad(schedule, &times, &dt);
        adam.step(&mut grid.logits, &gw);
        progress(it, loss)?;
    }

    let rows = |v: &[f64]| v.chunks_exact(lm.dim).map(|r| r.to_vec()).collect();
    let mut grids = Vec::new();
    let learned = best.times(schedule);
    let mut candidates: Vec<(String, Vec<f64>)> = vec![("learned".into(), learned)];
    for kind in [
        GridKind::Logsnr,
        GridKind::TimeUniform,
        GridKind::TimeQuadratic,
        GridKind::Karras,
    ] {
        let ts = make_grid(
            schedule,
            &kind,
            n,
            o.student.rho,
            schedule.t_max(),
            schedule.t_min(),
        )
        .map_err(Error::Option)?;
        candidates.push((kind.to_string(), ts));
    }
    for (name, times) in candidates {
        let x0 = run_grid(schedule, &o.student, times.clone(), lm.model, &x_held, hc)?;
        grids.push(GridResult {
            name,
            times,
            heldout_mse: mse(&x0, &target_held),
            samples: rows(&x0),
        });
    }
    Ok(LearnReport {
        steps: n,
        student: format!("{} order {}", o.student.method.name(), o.student.order),
        teacher: format!(
            "{} order {}, {} steps ({} grid)",
            o.teacher.method.name(),
            o.teacher.order,
            o.teacher.steps,
            o.teacher.grid
        ),
        grids,
        train_loss,
        best_iteration,
        seconds: start.elapsed().as_secs_f64(),
        nfe_per_gradient: nfe,
        vjps_per_gradient: vjps,
        teacher_samples: rows(&target_held),
    })
}

/// The learned grid as a spec file `adeis sample` runs as is: the schedule's table (as given),
/// the student's sampler with `grid = "explicit"` and the times at full precision.
pub fn learned_spec_toml(
    schedule_table: &str,
    student: &SamplerSpec,
    times: &[f64],
    comment: &str,
) -> String {
    let mut s = String::new();
    for line in comment.lines() {
        s.push_str(&format!("# {line}\n"));
    }
    s.push_str(schedule_table.trim_end());
    s.push_str("\n\n[sampler]\n");
    s.push_str(&format!("method = \"{}\"\n", student.method.name()));
    s.push_str(&format!("order = {}\n", student.order));
    s.push_str(&format!(
        "lower_order_final = {}\n",
        student.lower_order_final
    ));
    s.push_str("grid = \"explicit\"\n");
    let ts: Vec<String> = times.iter().map(|t| format!("{t:?}")).collect();
    s.push_str(&format!("times = [{}]\n", ts.join(", ")));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_grid_gradient_matches_finite_differences() {
        let s = adeis_compiler::ScheduleDef::vp_linear(0.1, 20.0)
            .unwrap()
            .compile()
            .unwrap();
        let mut g = LambdaGrid::uniform(&s, 5);
        g.logits = vec![0.3, -0.2, 0.5, 0.0, -0.7];
        let times = g.times(&s);
        assert!((times[0] - 1.0).abs() == 0.0 && times[5] == 1e-3);
        assert!(times.windows(2).all(|w| w[0] > w[1]));
        // A loss linear in the times: L = sum c_i t_i.
        let c = [0.0, 1.5, -0.7, 2.0, 0.4, 0.0];
        let loss = |g: &LambdaGrid| -> f64 { g.times(&s).iter().zip(&c).map(|(t, c)| t * c).sum() };
        let grad = g.logits_grad(&s, &times, &c);
        for (j, gj) in grad.iter().enumerate() {
            let h = 1e-6;
            let (mut p, mut m) = (g.clone(), g.clone());
            p.logits[j] += h;
            m.logits[j] -= h;
            let fd = (loss(&p) - loss(&m)) / (2.0 * h);
            assert!((fd - gj).abs() < 1e-8, "logit {j}: {fd} vs {gj}");
        }
    }
}

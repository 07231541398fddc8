//! `adeis finetune`: reward fine-tuning of the UNet's weights through the sampler (DRaFT-style,
//! Clark et al. 2024): sample with DDIM from fresh noise for a batch of classes, take the reward
//! r = log p(class | x_0) of the classifier on the generated images, and step the weights along
//! the exact gradient of the sampler that ran (the discrete adjoint with respect to the
//! parameters: one VJP per step, memory independent of the steps), against the proximal
//! penalty (lambda / 2) |theta - theta_0|^2 that keeps the model near the trained one (the
//! weight-space stand-in for a KL penalty), so the samples stay natural. The reward on fixed
//! held-out seeds is measured before, during and after; the weights with the best held-out
//! reward are kept (early stopping).

use std::path::PathBuf;
use std::time::Instant;

use adeis_app_common::progress::{bar, check_interrupt};
use adeis_app_common::training::one_hot;
use adeis_compiler::{FieldError, GradMethod, Problem, Wrt};
use adeis_runtime::dfdx::prelude::*;
use adeis_runtime::loss::tape_loss;
use adeis_runtime::optim::{Optimizer, OptimizerKind};
use adeis_runtime::unet::UNet2D;
use adeis_runtime::{gradient, sample, Input, ModelFn, NoiseSource, State};
use serde::Serialize;

use crate::classifier::Classifier;
use crate::data::{CLASSES, CLASS_NAMES};
use crate::generate::{grid_canvas, noise};
use crate::params::HostParams;
use crate::{unet, Error, FashionModels};

/// What `adeis finetune` does.
#[derive(Clone, Debug)]
pub struct FinetuneOptions {
    /// Folder with unet/ and classifier.safetensors; None: the committed models.
    pub models: Option<PathBuf>,
    /// The output folder.
    pub out: PathBuf,
    /// Optimisation iterations.
    pub iters: usize,
    /// Images per iteration (classes cycle through 0..9).
    pub batch: usize,
    /// DDIM steps N.
    pub steps: usize,
    /// The learning rate.
    pub lr: f64,
    /// The optimiser of the weights.
    pub optimizer: OptimizerKind,
    /// The proximal penalty's weight lambda.
    pub penalty: f64,
    /// Held-out seeds per class for the evaluation.
    pub eval_per_class: usize,
    /// Evaluate every this many iterations.
    pub eval_every: usize,
    /// The seed of the training noises.
    pub seed: u64,
    /// How the gradient through the sampler is taken.
    pub gradient: GradMethod,
    /// Early stopping: weights whose held-out samples' diversity falls below this fraction of
    /// the trained model's are never kept (the reward can be raised by collapsing each class
    /// onto one image).
    pub min_diversity: f64,
    /// Print progress.
    pub verbose: bool,
}

impl Default for FinetuneOptions {
    fn default() -> Self {
        FinetuneOptions {
            models: None,
            out: PathBuf::from("adeis-out/finetune"),
            iters: 40,
            batch: 10,
            steps: 10,
            lr: 1e-5,
            optimizer: OptimizerKind::Adam,
            penalty: 10.0,
            eval_per_class: 10,
            eval_every: 5,
            seed: 0,
            gradient: GradMethod::Discrete,
            min_diversity: 0.8,
            verbose: true,
        }
    }
}

impl FinetuneOptions {
    /// Checks the options; errors name the option.
    pub fn validate(&self) -> Result<(), FieldError> {
        let range = |key: &str, v: usize, lo: usize, hi: usize| {
            if v < lo || v > hi {
                Err(FieldError::value(key, v, format!("{lo} to {hi}")))
            } else {
                Ok(())
            }
        };
        range("iters", self.iters, 1, 100_000)?;
        range("batch", self.batch, 1, 1024)?;
        range("steps", self.steps, 1, 1000)?;
        range("eval_per_class", self.eval_per_class, 1, 1000)?;
        range("eval_every", self.eval_every, 1, 100_000)?;
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(FieldError::value("lr", self.lr, "a positive learning rate"));
        }
        if !(0.0..=1.0).contains(&self.min_diversity) {
            return Err(FieldError::value(
                "min_diversity",
                self.min_diversity,
                "a fraction in [0, 1]",
            ));
        }
        if !(self.penalty >= 0.0 && self.penalty.is_finite()) {
            return Err(FieldError::value(
                "penalty",
                self.penalty,
                "a weight of 0 or more",
            ));
        }
        Ok(())
    }
}

/// What fine-tuning measured.
#[derive(Clone, Debug, Serialize)]
pub struct FinetuneReport {
    /// Iterations run.
    pub iters: usize,
    /// Images per iteration.
    pub batch: usize,
    /// DDIM steps.
    pub steps: usize,
    /// The learning rate.
    pub lr: f64,
    /// The optimiser.
    pub optimizer: OptimizerKind,
    /// The proximal penalty's weight.
    pub penalty: f64,
    /// The seed.
    pub seed: u64,
    /// The gradient method.
    pub gradient: GradMethod,
    /// The UNet's parameter count.
    pub unet_params: usize,
    /// Mean reward log p(class | x_0) of each iteration's training batch (before its step).
    pub train_reward: Vec<f64>,
    /// (iteration, mean held-out reward, fraction of held-out samples read as their class,
    /// diversity of the held-out samples).
    pub heldout: Vec<(usize, f64, f64, f64)>,
    /// The diversity floor, as a fraction of the trained model's.
    pub min_diversity: f64,
    /// The iteration whose weights were kept (best held-out reward among the evaluations whose
    /// diversity is at least min_diversity of the trained model's; 0: the trained model).
    pub kept_iteration: usize,
    /// The held-out reward of the trained model.
    pub heldout_reward_before: f64,
    /// ... and of the kept weights.
    pub heldout_reward_after: f64,
    /// The held-out samples read as their class, trained model.
    pub heldout_accuracy_before: f64,
    /// ... and kept weights.
    pub heldout_accuracy_after: f64,
    /// The held-out samples' diversity, trained model.
    pub heldout_diversity_before: f64,
    /// ... and kept weights.
    pub heldout_diversity_after: f64,
    /// |theta - theta_0| / |theta_0| of the kept weights.
    pub relative_change: f64,
    /// Seconds in all.
    pub seconds: f64,
    /// Seconds per iteration.
    pub seconds_per_iteration: f64,
    /// The process's peak memory.
    pub peak_memory_mib: Option<f64>,
}

/// Per-image log p(class | x) of the classifier.
fn log_probs(classifier: &Classifier, pixels: &[f32], classes: &[usize]) -> Vec<f64> {
    let dev = Cpu::default();
    let b = classes.len();
    let x = dev.tensor_from_vec(pixels.to_vec(), (b, pixels.len() / b));
    let logits = classifier
        .logits_taped(x.leaky_trace())
        .retaped::<NoneTape>()
        .as_vec();
    logits
        .chunks_exact(CLASSES)
        .zip(classes)
        .map(|(r, &c)| {
            let m = r.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let s: f64 = r.iter().map(|v| (*v as f64 - m).exp()).sum();
            r[c] as f64 - m - s.ln()
        })
        .collect()
}

/// The mean pairwise distance (RMS over pixels) between the samples of the same class,
/// averaged over the classes: how varied the samples are. Reward fine-tuning that collapses
/// each class onto one image drives it towards 0.
fn diversity(pixels: &[f32], classes: &[usize]) -> f64 {
    let width = pixels.len() / classes.len();
    let img = |i: usize| &pixels[i * width..(i + 1) * width];
    let (mut total, mut count) = (0.0, 0usize);
    for c in 0..CLASSES {
        let idx: Vec<usize> = (0..classes.len()).filter(|&i| classes[i] == c).collect();
        for (k, &i) in idx.iter().enumerate() {
            for &j in &idx[k + 1..] {
                let d: f64 = img(i)
                    .iter()
                    .zip(img(j))
                    .map(|(a, b)| ((a - b) as f64).powi(2))
                    .sum::<f64>()
                    / width as f64;
                total += d.sqrt();
                count += 1;
            }
        }
    }
    total / count.max(1) as f64
}

/// The held-out evaluation: `per` samples of each class from fixed seeds, in batches of 50
/// (memory).
struct Heldout {
    classes: Vec<usize>,
    /// (first index, starting noise) of each batch.
    batches: Vec<(usize, State<f32, Cpu>)>,
}

impl Heldout {
    fn new(per: usize, seed: u64) -> Result<Heldout, Error> {
        let classes: Vec<usize> = (0..CLASSES)
            .flat_map(|c| std::iter::repeat_n(c, per))
            .collect();
        // held-out noises: a stream no training iteration uses
        let all = noise(&Cpu::default(), seed ^ 0x4E1D_0000, classes.len())?.to_f64();
        let width = all.len() / classes.len();
        let mut batches = Vec::new();
        for start in (0..classes.len()).step_by(50) {
            let end = (start + 50).min(classes.len());
            let x = State::from_f64(
                &Cpu::default(),
                &all[start * width..end * width],
                &[end - start, 1, 28, 28],
            )?;
            batches.push((start, x));
        }
        Ok(Heldout { classes, batches })
    }

    /// (mean reward, fraction read as asked, diversity, the samples).
    fn eval(
        &self,
        unet: &UNet2D<f32, Cpu>,
        classifier: &Classifier,
        problem: &Problem,
    ) -> Result<(f64, f64, f64, Vec<f32>), Error> {
        let mut pixels = Vec::new();
        let b = self.classes.len();
        for (start, x) in &self.batches {
            let (start, end) = (*start, start + x.batch());
            let z = unet.class_cond(&self.classes[start..end])?;
            let out = sample(
                problem.plan(),
                &ModelFn::new(unet),
                &Input::new(x, Some(&z), &NoiseSource::Seeded(0)),
                false,
            )?;
            pixels.extend(out.x.rows().as_vec());
        }
        let lp = log_probs(classifier, &pixels, &self.classes);
        let read = classifier.classify(&pixels);
        let acc = read
            .iter()
            .zip(&self.classes)
            .filter(|(a, b)| a == b)
            .count() as f64
            / b as f64;
        let div = diversity(&pixels, &self.classes);
        Ok((lp.iter().sum::<f64>() / b as f64, acc, div, pixels))
    }
}

/// Fine-tunes the UNet; writes `out/unet` (the kept weights in diffusers' layout),
/// before.png/after.png (held-out samples, one row per class), reward_curve.png, report.md and
/// report.json.
pub fn run(opts: &FinetuneOptions) -> Result<FinetuneReport, Error> {
    opts.validate()?;
    let models = FashionModels::load_or_committed(opts.models.as_deref())?;
    let dev = models.dev.clone();
    // The reversible gradient needs a reversible sampler: Rex (Euler tableau) on half the
    // steps, at DDIM's NFE.
    let spec = adeis_app_common::sampler(if opts.gradient == GradMethod::Reversible {
        serde_json::json!({"method": "rex", "steps": opts.steps.div_ceil(2)})
    } else {
        serde_json::json!({"method": "ddim", "steps": opts.steps})
    })?;
    let wrt = Wrt {
        x_t: false,
        cond: false,
        params: true,
        times: false,
        schedule: false,
    };
    let sampling = crate::generate::problem_of(&spec)?;
    // Each method with its defaults (the discrete adjoint and AdjointDEIS record their
    // states; the tape holds every step's activations).
    let adjoint = opts.gradient.default_adjoint();
    let problem = sampling
        .clone()
        .with_wrt(wrt)
        .with_adjoint(adjoint)
        .map_err(adeis_compiler::Error::from)?;
    let heldout = Heldout::new(opts.eval_per_class, opts.seed)?;
    check_outputs(opts)?;

    let start = Instant::now();
    let theta0 = HostParams::of_named(models.unet.named_params());
    let theta0_flat = theta0.flat();
    let mut p = theta0.clone();
    let mut flat = theta0_flat.clone();
    let mut opt = Optimizer::new(opts.optimizer, opts.lr, flat.len());
    let mut unet = unet::model(&dev, &p)?;
    let (r0, a0, d0, before) = heldout.eval(&unet, &models.classifier, &sampling)?;
    let mut report = FinetuneReport {
        iters: opts.iters,
        batch: opts.batch,
        steps: opts.steps,
        lr: opts.lr,
        optimizer: opts.optimizer,
        penalty: opts.penalty,
        seed: opts.seed,
        gradient: opts.gradient,
        unet_params: flat.len(),
        train_reward: vec![],
        heldout: vec![(0, r0, a0, d0)],
        min_diversity: opts.min_diversity,
        kept_iteration: 0,
        heldout_reward_before: r0,
        heldout_reward_after: r0,
        heldout_accuracy_before: a0,
        heldout_accuracy_after: a0,
        heldout_diversity_before: d0,
        heldout_diversity_after: d0,
        relative_change: 0.0,
        seconds: 0.0,
        seconds_per_iteration: 0.0,
        peak_memory_mib: None,
    };
    let (mut best, mut best_p, mut after) = (r0, p.clone(), before.clone());
    let pb = bar(opts.iters, "finetune");
    if !opts.verbose {
        pb.set_draw_target(adeis_app_common::progress::hidden());
    }
    for k in 0..opts.iters {
        check_interrupt("fine-tuning")?;
        let classes: Vec<usize> = (0..opts.batch)
            .map(|i| (k * opts.batch + i) % CLASSES)
            .collect();
        let x_t = noise(
            &dev,
            opts.seed.wrapping_mul(1_000_003) + k as u64,
            opts.batch,
        )?;
        let z = unet.class_cond(&classes)?;
        let target = dev.tensor_from_vec(one_hot(&classes, CLASSES), (opts.batch, CLASSES));
        let mut reward = 0.0;
        // L = -mean log p(class | x_0): the cross-entropy of the classifier's logits.
        let g = gradient(
            &problem,
            &ModelFn::new(&unet),
            &Input::new(&x_t, Some(&z), &NoiseSource::Seeded(opts.seed)),
            |x0| {
                let l = tape_loss(x0, |x| {
                    cross_entropy_with_logits_loss(
                        models.classifier.logits_taped(x),
                        target.clone(),
                    )
                })?;
                reward = -l.value;
                Ok(l.grad)
            },
        )
        .map_err(|e| match e {
            adeis_runtime::RuntimeError::NonFinite { .. } if k > 0 => {
                diverged(k, &format!("sampling: {e}"), opts.lr)
            }
            e => adeis_runtime::RuntimeError::Invalid(format!("fine-tuning iteration {k}: {e}"))
                .into(),
        })?;
        report.train_reward.push(reward);
        let dtheta = g.dtheta.expect("wrt params");
        let mut grad: Vec<f64> = dtheta
            .tensors
            .iter()
            .flat_map(|t| t.as_vec())
            .map(|v| v as f64)
            .collect();
        for ((gi, t), t0) in grad.iter_mut().zip(&flat).zip(&theta0_flat) {
            *gi += opts.penalty * (t - t0);
        }
        if grad.iter().any(|v| !v.is_finite()) {
            return Err(diverged(k, "the gradient is not finite", opts.lr));
        }
        opt.step(&mut flat, &grad);
        if flat.iter().any(|v| !v.is_finite()) {
            return Err(diverged(k, "the weights are not finite", opts.lr));
        }
        p.set_flat(&flat);
        unet = unet::model(&dev, &p)?;
        pb.inc(1);
        pb.set_message(format!("reward {reward:.3}"));
        if (k + 1) % opts.eval_every == 0 || k + 1 == opts.iters {
            let (r, a, d, samples) =
                heldout
                    .eval(&unet, &models.classifier, &sampling)
                    .map_err(|e| match e {
                        Error::Runtime(e @ adeis_runtime::RuntimeError::NonFinite { .. }) => {
                            diverged(k + 1, &format!("sampling the held-out seeds: {e}"), opts.lr)
                        }
                        e => e,
                    })?;
            report.heldout.push((k + 1, r, a, d));
            if r > best && d >= opts.min_diversity * d0 {
                best = r;
                best_p = p.clone();
                after = samples;
                report.kept_iteration = k + 1;
                report.heldout_accuracy_after = a;
                report.heldout_diversity_after = d;
            }
        }
    }
    pb.finish_and_clear();
    report.heldout_reward_after = best;
    let kept = best_p.flat();
    let diff: f64 = kept
        .iter()
        .zip(&theta0_flat)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        .sqrt();
    let norm0: f64 = theta0_flat.iter().map(|v| v * v).sum::<f64>().sqrt();
    report.relative_change = diff / norm0;
    report.seconds = start.elapsed().as_secs_f64();
    report.seconds_per_iteration = report.seconds / opts.iters as f64;
    report.peak_memory_mib = adeis_io::peak_memory_bytes().map(|b| b as f64 / 1048576.0);

    // Every output staged, then renamed into place together: a failed or interrupted run
    // leaves nothing, not even the output folder.
    let mut files = adeis_io::Outputs::new();
    let per = opts.eval_per_class;
    for (name, pixels) in [("before.png", &before), ("after.png", &after)] {
        let path = opts.out.join(name);
        let png = grid_canvas(pixels, per)
            .map_err(|e| Error::file(&path, e))?
            .png_bytes()
            .map_err(|e| Error::file(&path, e))?;
        files.stage_creating_folders(&path, &png)?;
    }
    let held_curve: Vec<f64> = {
        // the held-out reward at every evaluated iteration, NaN between (the plot skips NaN)
        let mut v = vec![f64::NAN; opts.iters + 1];
        for (k, r, _, _) in &report.heldout {
            v[*k] = *r;
        }
        v
    };
    let curve_path = opts.out.join("reward_curve.png");
    let series = [
        adeis_app_common::chart::Series {
            name: "training batch".into(),
            values: report.train_reward.clone(),
        },
        adeis_app_common::chart::Series {
            name: "held-out noises".into(),
            values: held_curve,
        },
    ];
    let curve = adeis_app_common::chart::line_chart(&adeis_app_common::chart::LineChart {
        title: "Reward fine-tuning: mean reward by iteration",
        x_label: "iteration",
        y_label: "mean reward",
        series: &series,
        width: 800,
        height: 450,
    })
    .map_err(|e| adeis_app_common::Error::file(&curve_path, e))?
    .png_bytes()
    .map_err(|e| Error::file(&curve_path, e))?;
    files.stage_creating_folders(&curve_path, &curve)?;
    unet::stage(&best_p, &opts.out.join("unet"), &mut files)?;
    files.stage_creating_folders(&opts.out.join("report.md"), markdown(&report).as_bytes())?;
    files.stage_creating_folders(
        &opts.out.join("report.json"),
        serde_json::to_string_pretty(&report).unwrap().as_bytes(),
    )?;
    check_interrupt("fine-tuning")?;
    files.commit()?;
    Ok(report)
}

/// The files `adeis finetune` writes into its output folder.
const OUTPUTS: [&str; 5] = [
    "before.png",
    "after.png",
    "reward_curve.png",
    "report.md",
    "report.json",
];

/// Refuses, before the run, an output folder that is a file, an output that is a folder or
/// not a regular file, and an output folder whose unet/ is the input model's (fine-tuning
/// would replace the weights it started from).
fn check_outputs(opts: &FinetuneOptions) -> Result<(), Error> {
    let out = &opts.out;
    adeis_io::check_output_folder(out)?;
    let unet_dir = out.join("unet");
    if unet_dir.exists() && !unet_dir.is_dir() {
        return Err(Error::file(
            &unet_dir,
            "is a file; the fine-tuned UNet is written as a folder there",
        ));
    }
    for name in OUTPUTS {
        adeis_io::check_output_path(&out.join(name))?;
    }
    for name in unet::FILES {
        adeis_io::check_output_path(&unet_dir.join(name))?;
    }
    if let Some(models) = &opts.models {
        let same = adeis_io::same_file;
        if same(models, out) || same(&models.join("unet"), &unet_dir) {
            return Err(Error::file(
                out,
                format!(
                    "--out would replace the weights of --models {} that fine-tuning starts from; give another output folder",
                    models.display()
                ),
            ));
        }
    }
    Ok(())
}

/// The error of a fine-tuning run whose gradient or weights stopped being finite.
fn diverged(iteration: usize, what: &str, lr: f64) -> Error {
    adeis_runtime::RuntimeError::Invalid(format!(
        "fine-tuning diverged at iteration {iteration} with --lr {lr} ({what}); nothing was written; try a smaller --lr (the default is 1e-5)"
    ))
    .into()
}

/// report.md.
pub fn markdown(r: &FinetuneReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "# Reward fine-tuning report\n");
    let _ = writeln!(
        s,
        "Reward r = log p(class | x_0) of the classifier on DDIM samples ({} steps) of the UNet ({} parameters), {} images per iteration (classes cycling through {}), {} iterations of {:?} (lr {}), proximal penalty lambda = {}, gradient: {:?}.\n",
        r.steps, r.unet_params, r.batch, CLASS_NAMES.join(", "), r.iters, r.optimizer, r.lr, r.penalty, r.gradient
    );
    let _ = writeln!(
        s,
        "| | held-out reward | held-out samples read as their class |"
    );
    let _ = writeln!(s, "|---|---|---|");
    let _ = writeln!(
        s,
        "| before | {:.4} | {:.1}% |",
        r.heldout_reward_before,
        100.0 * r.heldout_accuracy_before
    );
    let _ = writeln!(
        s,
        "| after (weights of iteration {}) | {:.4} | {:.1}% |\n",
        r.kept_iteration,
        r.heldout_reward_after,
        100.0 * r.heldout_accuracy_after
    );
    let _ = writeln!(
        s,
        "Weights moved by |theta - theta_0| / |theta_0| = {:.2e}. {:.1} s in all, {:.2} s per iteration; peak memory {}.\n",
        r.relative_change,
        r.seconds,
        r.seconds_per_iteration,
        r.peak_memory_mib.map_or("unknown".into(), |m| format!("{m:.0} MiB"))
    );
    let _ = writeln!(
        s,
        "Held-out reward (read as their class, diversity) by iteration: {}\n",
        r.heldout
            .iter()
            .map(|(k, v, a, d)| format!("{k}: {v:.4} ({:.0}%, {d:.3})", 100.0 * a))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(s, "Files: `before.png` and `after.png` (held-out seeds, one row per class), `reward_curve.png` (line 1: the training batch's reward per iteration; line 2: the held-out reward), `unet/` (the kept weights, diffusers' layout), `report.json`.");
    s
}

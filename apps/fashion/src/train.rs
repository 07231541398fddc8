//! `adeis train --dataset fashion-mnist`: fits the class-conditional UNet (eps prediction on
//! the linear DDPM schedule, classifier-free dropout of the class to a "no class" row, EMA of
//! the weights) and the classifier, both with Adam under a linear warm-up and a cosine decay and
//! with the gradient clipped to norm 1, deterministically from a seed, with progress bars,
//! checkpoints in diffusers' layout, a training log, a sample grid and a report.
//!
//! Each step builds the network from the host parameters, runs the batch on dfdx's tape through
//! adeis' CPU kernels, and steps the host parameters with the runtime's optimiser: the kernels
//! keep derived copies of their weights (transposed, packed), which a rebuild refreshes, and
//! the rebuild costs a copy of the parameters, small against a batch's forward and backward.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use adeis_compiler::FieldError;
use adeis_runtime::dfdx::prelude::*;
use adeis_runtime::nn::ParamGrads;
use adeis_runtime::noise::{normals, SplitMix};
use adeis_runtime::optim::{Optimizer, OptimizerKind};
use adeis_runtime::unet::TorchInit;
use adeis_runtime::RuntimeError;
use serde::{Deserialize, Serialize};

use adeis_app_common::progress::{bar, check_interrupt};
use adeis_app_common::training::one_hot;

use crate::classifier::{Classifier, CLASSIFIER_FILE, VERIFIER_FILE};
use crate::data::{self, Fashion, Split, CLASSES, PIXELS, SIDE};
use crate::params::HostParams;
use crate::unet::{self, alphas_cumprod, NULL_CLASS};
use crate::{write_atomic, Error};

/// One of the two networks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// The class-conditional UNet.
    Unet,
    /// The classifier.
    Classifier,
    /// The verification embedding (the classifier's network with a CosFace head).
    Verifier,
}

/// What `adeis train --dataset fashion-mnist` does.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// The output folder: `unet/` (diffusers' layout), classifier.safetensors, training.json,
    /// training.log, samples.png.
    pub out: PathBuf,
    /// The folder of the IDX files.
    pub data: PathBuf,
    /// UNet training steps.
    pub unet_steps: usize,
    /// Classifier training steps.
    pub classifier_steps: usize,
    /// Verification-embedding training steps.
    pub verifier_steps: usize,
    /// Examples per step.
    pub batch: usize,
    /// The peak learning rate.
    pub lr: f64,
    /// Linear warm-up of the learning rate over this many steps.
    pub warmup: usize,
    /// The seed of the batches, times, noises and dropout.
    pub seed: u64,
    /// The probability that a training example's class is replaced by "no class".
    pub cfg_dropout: f64,
    /// The EMA's decay per step.
    pub ema_decay: f64,
    /// The optimiser.
    pub optimizer: OptimizerKind,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Write a grid of generated images (samples.png) at the end.
    pub sample_grid: bool,
    /// Use only the first this many training images (None: all 60,000).
    pub train_images: Option<usize>,
    /// Train only this network and load the other from `out`.
    pub only: Option<Network>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            out: PathBuf::from("adeis-out/fashion-mnist"),
            data: PathBuf::from(data::DEFAULT_DIR),
            unet_steps: 2_400,
            classifier_steps: 1_500,
            verifier_steps: 4_000,
            batch: 64,
            lr: 2e-3,
            warmup: 200,
            seed: 0,
            cfg_dropout: 0.1,
            ema_decay: 0.998,
            optimizer: OptimizerKind::Adam,
            checkpoint_every: 200,
            sample_grid: true,
            train_images: None,
            only: None,
        }
    }
}

impl TrainOptions {
    /// Checks the options; errors name the option.
    pub fn validate(&self) -> Result<(), FieldError> {
        // The keys are the flags' (`--denoiser-steps` trains the UNet).
        adeis_app_common::training::check_training_steps(&[
            (
                "denoiser_steps",
                self.unet_steps,
                self.only != Some(Network::Classifier),
            ),
            (
                "classifier_steps",
                self.classifier_steps,
                matches!(self.only, None | Some(Network::Classifier)),
            ),
            (
                "verifier_steps",
                self.verifier_steps,
                matches!(self.only, None | Some(Network::Verifier)),
            ),
        ])?;
        if self.batch == 0 || self.batch > 4096 {
            return Err(FieldError::value("batch", self.batch, "1 to 4096 images"));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(FieldError::value("lr", self.lr, "a positive learning rate"));
        }
        if !(0.0..1.0).contains(&self.cfg_dropout) {
            return Err(FieldError::value(
                "cfg_dropout",
                self.cfg_dropout,
                "a probability in [0, 1)",
            ));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return Err(FieldError::value(
                "ema_decay",
                self.ema_decay,
                "a decay in [0, 1)",
            ));
        }
        let steps = |key: &str, n: usize, trained: bool| {
            if trained && n == 0 {
                Err(FieldError::value(
                    key,
                    0,
                    "at least one step (or --only for the other network)",
                ))
            } else if n > 10_000_000 {
                Err(FieldError::value(key, n, "at most 10,000,000 steps"))
            } else {
                Ok(())
            }
        };
        // named as the command line's flag (--denoiser-steps): the UNet is the denoiser
        steps(
            "denoiser_steps",
            self.unet_steps,
            self.only != Some(Network::Classifier),
        )?;
        steps(
            "classifier_steps",
            self.classifier_steps,
            matches!(self.only, None | Some(Network::Classifier)),
        )?;
        steps(
            "verifier_steps",
            self.verifier_steps,
            matches!(self.only, None | Some(Network::Verifier)),
        )?;
        if self.train_images == Some(0) {
            return Err(FieldError::value(
                "train_images",
                0,
                "at least one image (or leave it out for all)",
            ));
        }
        Ok(())
    }
}

/// What training did (training.json beside the weights).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainReport {
    /// The seed.
    pub seed: u64,
    /// Examples per step.
    pub batch: usize,
    /// The peak learning rate.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// The optimiser.
    pub optimizer: OptimizerKind,
    /// The classifier-free dropout.
    pub cfg_dropout: f64,
    /// The EMA's decay.
    pub ema_decay: f64,
    /// The UNet's parameter count.
    pub unet_params: usize,
    /// UNet steps.
    pub unet_steps: usize,
    /// Its training loss at the end.
    pub unet_final_loss: f64,
    /// Its denoising loss on the held-out images.
    pub unet_heldout_loss: f64,
    /// Its training time.
    pub unet_seconds: f64,
    /// The classifier's parameter count.
    pub classifier_params: usize,
    /// Classifier steps.
    pub classifier_steps: usize,
    /// Its training loss at the end.
    pub classifier_final_loss: f64,
    /// Its accuracy on the held-out images.
    pub classifier_heldout_accuracy: f64,
    /// Its training time.
    pub classifier_seconds: f64,
    /// Training images.
    pub train_images: usize,
    /// Held-out images.
    pub heldout_images: usize,
    /// Threads used.
    pub threads: usize,
    /// Fraction of the sample grid's images the classifier reads as the class asked for.
    pub samples_read_as_asked: Option<f64>,
    /// The verification embedding, when one was trained.
    #[serde(default)]
    pub verifier: Option<VerifierReport>,
}

/// How the verification embedding (CosFace) trained, and how it verifies the held-out images.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VerifierReport {
    /// Its steps.
    pub steps: usize,
    /// Its training loss at the end.
    pub final_loss: f64,
    /// The held-out accuracy of its CosFace head (without the margin).
    pub heldout_accuracy: f64,
    /// Its training time.
    pub seconds: f64,
    /// Its thresholds and genuine accept rates at FMR 0.1%, 1% and 10% on the held-out
    /// images' pairs.
    pub operating_points: Vec<adeis_app_common::morph::verify::OperatingPoint>,
}

/// Linear warm-up to lr over `warmup` steps, then cosine decay to lr/10.
pub fn lr_at(lr: f64, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let u = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * u).cos()))
}

/// Scales `g` to norm at most `max`; returns the norm before.
fn clip(g: &mut [f64], max: f64) -> f64 {
    let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
    if norm > max {
        let s = max / norm;
        g.iter_mut().for_each(|v| *v *= s);
    }
    norm
}

/// A denoising batch: noisy images at random train indices, their noise and their classes.
pub struct NoisyBatch {
    /// The noisy images.
    pub x_t: Vec<f32>,
    /// The noise in each.
    pub eps: Vec<f32>,
    /// Each image's train index.
    pub times: Vec<f64>,
    /// Each image's class (or "no class").
    pub labels: Vec<usize>,
}

/// Batch `idx` of `data` at random train indices (from `rng`), noise from stream
/// (`seed`, `index`), classes dropped to "no class" with probability `cfg_dropout`.
pub fn noisy_batch(
    data: &Fashion,
    idx: &[usize],
    alpha_bar: &[f64],
    rng: &mut SplitMix,
    cfg_dropout: f64,
    (seed, index): (u64, u64),
) -> NoisyBatch {
    let b = idx.len();
    let eps = normals(seed, index, b * PIXELS);
    let mut nb = NoisyBatch {
        x_t: Vec::with_capacity(b * PIXELS),
        eps: eps.iter().map(|v| *v as f32).collect(),
        times: Vec::with_capacity(b),
        labels: Vec::with_capacity(b),
    };
    for (k, &i) in idx.iter().enumerate() {
        let t = rng.below(alpha_bar.len());
        let (a, s) = (alpha_bar[t].sqrt(), (1.0 - alpha_bar[t]).sqrt());
        for (p, x0) in data.image(i).iter().enumerate() {
            nb.x_t
                .push((a * *x0 as f64 + s * eps[k * PIXELS + p]) as f32);
        }
        nb.times.push(t as f64);
        let dropped = rng.uniform() < cfg_dropout;
        nb.labels
            .push(if dropped { NULL_CLASS } else { data.labels[i] });
    }
    nb
}

/// The eps-prediction loss of the UNet with parameters `p` on a batch, and (when `grad`) its
/// gradient with respect to every parameter, flat.
pub fn unet_loss(
    dev: &Cpu,
    p: &HostParams,
    nb: &NoisyBatch,
    grad: bool,
) -> Result<(f64, Option<Vec<f64>>), Error> {
    let model = unet::model(dev, p)?;
    let b = nb.times.len();
    let x = dev.tensor_from_vec(nb.x_t.clone(), (b, 1usize, SIDE, SIDE));
    let eps = dev.tensor_from_vec(nb.eps.clone(), (b, 1usize, SIDE, SIDE));
    if !grad {
        let out = model.forward_train(x, &nb.times, Some(&nb.labels), ParamGrads::Skip)?;
        return Ok((mse_loss(out, eps).array() as f64, None));
    }
    let out = model.forward_train(
        x.trace(Gradients::leaky()),
        &nb.times,
        Some(&nb.labels),
        ParamGrads::Compute,
    )?;
    let loss = mse_loss(out, eps);
    let value = loss.array() as f64;
    let mut grads = loss.backward();
    let g = model
        .host_grads(&mut grads)
        .into_iter()
        .flatten()
        .map(|v| v as f64)
        .collect();
    Ok((value, Some(g)))
}

/// The head a classifier-shaped network trains with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// The classifier's cosine head (NormFace).
    Cosine,
    /// CosFace's margin head: the verification embedding.
    CosFace,
}

/// The cross-entropy of a classifier-shaped network with `head` on images `idx` of `data`
/// (with Gaussian pixel noise of standard deviation `jitter` from stream (`seed`, `index`), so
/// that generated images, which are not pixel-exact, are read like real ones), and its
/// gradient when `grad`.
pub fn network_loss(
    dev: &Cpu,
    p: &HostParams,
    data: &Fashion,
    idx: &[usize],
    jitter: f64,
    (seed, index): (u64, u64),
    (grad, head): (bool, Head),
) -> Result<(f64, Option<Vec<f64>>), Error> {
    let mut source = p.source("classifier parameters");
    let model = Classifier::new(dev, &mut source)?;
    let b = idx.len();
    let z = normals(seed, index, b * PIXELS);
    let mut x = Vec::with_capacity(b * PIXELS);
    for (k, &i) in idx.iter().enumerate() {
        x.extend(
            data.image(i)
                .iter()
                .enumerate()
                .map(|(q, v)| (*v as f64 + jitter * z[k * PIXELS + q]) as f32),
        );
    }
    let classes: Vec<usize> = idx.iter().map(|&i| data.labels[i]).collect();
    let x = dev.tensor_from_vec(x, (b, 1usize, SIDE, SIDE));
    let target = dev.tensor_from_vec(one_hot(&classes, CLASSES), (b, CLASSES));
    if !grad {
        let v = model.features_image(x, ParamGrads::Skip);
        let logits = match head {
            Head::Cosine => model.logits_of(v),
            Head::CosFace => model.cosface_logits(v, target.clone()),
        };
        return Ok((
            cross_entropy_with_logits_loss(logits, target).array() as f64,
            None,
        ));
    }
    let v = model.features_image(x.trace(Gradients::leaky()), ParamGrads::Compute);
    let logits = match head {
        Head::Cosine => model.logits_of(v),
        Head::CosFace => model.cosface_logits(v, target.clone()),
    };
    let loss = cross_entropy_with_logits_loss(logits, target);
    let value = loss.array() as f64;
    let mut grads = loss.backward();
    Ok((value, Some(model.flat_grads(&mut grads))))
}

/// A training run's log file (appended line by line, so a stopped run keeps its log).
struct Log(std::fs::File);

impl Log {
    fn line(&mut self, s: &str) -> Result<(), Error> {
        writeln!(self.0, "{s}").map_err(|e| Error::file(Path::new("training.log"), e))
    }
}

/// What one network's loop needs.
struct Fit<'a> {
    name: &'a str,
    steps: usize,
    opts: &'a TrainOptions,
    log: &'a mut Log,
}

/// The loop both networks share: optimiser steps on the host parameters `p` under warm-up and
/// decay, the gradient clipped to norm 1, a finite-loss check, a progress bar with the smoothed
/// loss, an EMA of the parameters when `ema_decay` is given (what `keep` saves: every
/// `checkpoint_every` steps, on Ctrl-C and at the end), the log every 50 steps. Returns
/// (the kept parameters, the smoothed final loss).
fn fit(
    p: &mut HostParams,
    run: Fit,
    ema_decay: Option<f64>,
    mut step_loss: impl FnMut(&HostParams, usize) -> Result<(f64, Vec<f64>), Error>,
    keep: impl Fn(&HostParams) -> Result<(), Error>,
) -> Result<(HostParams, f64), Error> {
    let Fit {
        name,
        steps,
        opts,
        log,
    } = run;
    let mut flat = p.flat();
    let mut opt = Optimizer::new(opts.optimizer, opts.lr, flat.len());
    let mut ema = ema_decay.map(|_| flat.clone());
    let mut kept = p.clone();
    let pb = bar(steps, name);
    let start = Instant::now();
    let mut smooth = f64::NAN;
    for step in 0..steps {
        let kept_now = |kept: &mut HostParams, ema: &Option<Vec<f64>>, flat: &[f64]| {
            kept.set_flat(ema.as_deref().unwrap_or(flat));
        };
        if adeis_runtime::interrupt::requested() {
            pb.abandon();
            kept_now(&mut kept, &ema, &flat);
            keep(&kept)?;
            check_interrupt(&format!(
                "{name} training (the weights of step {step} are saved in {})",
                opts.out.display()
            ))?;
        }
        let (value, mut g) = step_loss(p, step)?;
        if !value.is_finite() || g.iter().any(|v| !v.is_finite()) {
            return Err(RuntimeError::Invalid(format!(
                "the {name}'s loss or gradient is not finite at step {step} (loss {value}): \
                 stopped; try a smaller --lr"
            ))
            .into());
        }
        let norm = clip(&mut g, 1.0);
        let lr = lr_at(opts.lr, step, steps, opts.warmup);
        opt.set_lr(lr);
        opt.step(&mut flat, &g);
        p.set_flat(&flat);
        if let (Some(e), Some(decay)) = (ema.as_mut(), ema_decay) {
            // warm-up of the decay, so the early average is not the random initialisation
            let d = decay.min((1.0 + step as f64) / (10.0 + step as f64));
            e.iter_mut()
                .zip(&flat)
                .for_each(|(e, p)| *e = d * *e + (1.0 - d) * p);
        }
        smooth = if smooth.is_nan() {
            value
        } else {
            0.98 * smooth + 0.02 * value
        };
        pb.inc(1);
        if step % 50 == 0 || step + 1 == steps {
            pb.set_message(format!("loss {smooth:.4}"));
            log.line(&format!(
                "{name} step {step} loss {value:.5} smoothed {smooth:.5} grad_norm {norm:.4} lr {lr:.3e} seconds {:.1}",
                start.elapsed().as_secs_f64()
            ))?;
        }
        if opts.checkpoint_every > 0 && (step + 1) % opts.checkpoint_every == 0 {
            kept_now(&mut kept, &ema, &flat);
            keep(&kept)?;
        }
    }
    pb.finish();
    kept.set_flat(ema.as_deref().unwrap_or(&flat));
    keep(&kept)?;
    Ok((kept, smooth))
}

/// The training images: the IDX training set, or its first `n`.
fn training_set(opts: &TrainOptions) -> Result<Fashion, Error> {
    let all = data::load(&opts.data, Split::Train)?;
    Ok(match opts.train_images {
        Some(n) if n < all.len() => all.subset(&(0..n).collect::<Vec<_>>()),
        _ => all,
    })
}

/// Trains the UNet; returns (EMA parameters, final loss, held-out loss, seconds).
fn train_unet(
    opts: &TrainOptions,
    dev: &Cpu,
    train: &Fashion,
    held: &Fashion,
    log: &mut Log,
) -> Result<(HostParams, f64, f64, f64), Error> {
    let start = Instant::now();
    let mut p = HostParams::of_named(
        unet::build(dev, &mut TorchInit::new(opts.seed ^ 0x0E7))?.named_params(),
    );
    log.line(&format!(
        "unet: {} parameters, config {}",
        p.len(),
        unet::config_json()
    ))?;
    let alpha_bar = alphas_cumprod();
    let mut rng = SplitMix(opts.seed ^ 0x0E7);
    let dir = opts.out.join("unet");
    let (kept, smooth) = fit(
        &mut p,
        Fit {
            name: "unet",
            steps: opts.unet_steps,
            opts,
            log,
        },
        Some(opts.ema_decay),
        |p, step| {
            let idx: Vec<usize> = (0..opts.batch).map(|_| rng.below(train.len())).collect();
            let nb = noisy_batch(
                train,
                &idx,
                &alpha_bar,
                &mut rng,
                opts.cfg_dropout,
                (opts.seed, step as u64),
            );
            let (v, g) = unet_loss(dev, p, &nb, true)?;
            Ok((v, g.expect("a gradient")))
        },
        |p| unet::save(p, &dir),
    )?;
    // Held-out loss of the EMA weights: every held-out image at 2 noise draws.
    let mut rng = SplitMix(opts.seed ^ 0x4E1D);
    let mut total = 0.0;
    let mut count = 0.0;
    for rep in 0..2u64 {
        for chunk in (0..held.len()).collect::<Vec<_>>().chunks(250) {
            let nb = noisy_batch(
                held,
                chunk,
                &alpha_bar,
                &mut rng,
                0.0,
                (opts.seed ^ 0x4E1D, rep * 10 + chunk[0] as u64),
            );
            total += unet_loss(dev, &kept, &nb, false)?.0 * chunk.len() as f64;
            count += chunk.len() as f64;
        }
    }
    Ok((kept, smooth, total / count, start.elapsed().as_secs_f64()))
}

/// Trains the classifier (`head` Cosine) or the verification embedding (CosFace), from its
/// own seed stream; returns (parameters, final loss, held-out accuracy, seconds).
fn train_classifier(
    opts: &TrainOptions,
    dev: &Cpu,
    (train, held): (&Fashion, &Fashion),
    head: Head,
    log: &mut Log,
) -> Result<(HostParams, f64, f64, f64), Error> {
    let start = Instant::now();
    let (name, file, seed, steps) = match head {
        Head::Cosine => (
            "classifier",
            CLASSIFIER_FILE,
            opts.seed ^ 0xC1A5,
            opts.classifier_steps,
        ),
        Head::CosFace => (
            "verifier",
            VERIFIER_FILE,
            opts.seed ^ 0x7E21,
            opts.verifier_steps,
        ),
    };
    let mut p = Classifier::new(dev, &mut TorchInit::new(seed))?.host_params();
    log.line(&format!("{name}: {} parameters", p.len()))?;
    let mut rng = SplitMix(seed);
    let path = opts.out.join(file);
    let (kept, smooth) = fit(
        &mut p,
        Fit {
            name,
            steps,
            opts,
            log,
        },
        None,
        |p, step| {
            let idx: Vec<usize> = (0..opts.batch).map(|_| rng.below(train.len())).collect();
            let (v, g) = network_loss(dev, p, train, &idx, 0.1, (seed, step as u64), (true, head))?;
            Ok((v, g.expect("a gradient")))
        },
        |p| p.save_safetensors(&path),
    )?;
    let mut source = kept.source("classifier parameters");
    let c = Classifier::new(dev, &mut source)?;
    let read = c.classify(&held.pixels);
    let correct = read
        .iter()
        .zip(&held.labels)
        .filter(|(a, b)| a == b)
        .count();
    Ok((
        kept,
        smooth,
        correct as f64 / held.len().max(1) as f64,
        start.elapsed().as_secs_f64(),
    ))
}

/// `adeis train --dataset fashion-mnist`: both networks (or one, `only`), then samples.png and
/// training.json in `opts.out`.
pub fn run(opts: &TrainOptions) -> Result<TrainReport, Error> {
    opts.validate()?;
    // Everything that can fail on input fails before the output folder exists.
    adeis_io::check_output_folder(&opts.out)?;
    let train = training_set(opts)?;
    let held = data::heldout();
    let dev = Cpu::default();
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::file(&opts.out, e))?;
    let log_path = opts.out.join("training.log");
    let mut log = Log(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Error::file(&log_path, e))?);
    log.line(&format!(
        "adeis train --dataset fashion-mnist: {} training images, {} held out, seed {}, batch {}, lr {}, warm-up {}, {:?}, {} threads",
        train.len(),
        held.len(),
        opts.seed,
        opts.batch,
        opts.lr,
        opts.warmup,
        opts.optimizer,
        rayon_threads(),
    ))?;
    let previous: Option<TrainReport> = std::fs::read(opts.out.join("training.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let prev = |f: fn(&TrainReport) -> f64| previous.as_ref().map_or(f64::NAN, f);
    let (unet_p, u_loss, u_held, u_secs, u_steps) =
        if matches!(opts.only, Some(Network::Classifier | Network::Verifier)) {
            let m = unet::load(&dev, &opts.out.join("unet"))?;
            (
                HostParams::of_named(m.named_params()),
                prev(|p| p.unet_final_loss),
                prev(|p| p.unet_heldout_loss),
                prev(|p| p.unet_seconds),
                previous.as_ref().map_or(0, |p| p.unet_steps),
            )
        } else {
            let (p, l, h, s) = train_unet(opts, &dev, &train, &held, &mut log)?;
            (p, l, h, s, opts.unet_steps)
        };
    let (cls_p, c_loss, c_acc, c_secs, c_steps) =
        if matches!(opts.only, Some(Network::Unet | Network::Verifier)) {
            let c = Classifier::load(&dev, &opts.out.join(CLASSIFIER_FILE))?;
            (
                c.host_params(),
                prev(|p| p.classifier_final_loss),
                prev(|p| p.classifier_heldout_accuracy),
                prev(|p| p.classifier_seconds),
                previous.as_ref().map_or(0, |p| p.classifier_steps),
            )
        } else {
            let (p, l, a, s) =
                train_classifier(opts, &dev, (&train, &held), Head::Cosine, &mut log)?;
            (p, l, a, s, opts.classifier_steps)
        };
    // The verification embedding: trained in a whole run and with --only verifier.
    let verifier = if matches!(opts.only, None | Some(Network::Verifier)) {
        let (p, loss, accuracy, seconds) =
            train_classifier(opts, &dev, (&train, &held), Head::CosFace, &mut log)?;
        let mut source = p.source("verifier parameters");
        let net = Classifier::new(&dev, &mut source)?;
        let features = net.features_image(
            dev.tensor_from_vec(held.pixels.clone(), (held.len(), 1usize, SIDE, SIDE)),
            ParamGrads::Skip,
        );
        let rows: Vec<Vec<f64>> = features
            .as_vec()
            .chunks_exact(crate::classifier::FEATURES)
            .map(|r| r.iter().map(|v| *v as f64).collect())
            .collect();
        let v = adeis_app_common::morph::calibrate(&rows, &held.labels, 1e-3);
        let report = VerifierReport {
            steps: opts.verifier_steps,
            final_loss: loss,
            heldout_accuracy: accuracy,
            seconds,
            operating_points: v.operating_points.clone(),
        };
        log.line(&format!(
            "verifier: {}",
            adeis_app_common::morph::verifier_summary(&v)
        ))?;
        Some(report)
    } else {
        previous.as_ref().and_then(|p| p.verifier.clone())
    };
    let mut report = TrainReport {
        seed: opts.seed,
        batch: opts.batch,
        lr: opts.lr,
        warmup: opts.warmup,
        optimizer: opts.optimizer,
        cfg_dropout: opts.cfg_dropout,
        ema_decay: opts.ema_decay,
        unet_params: unet_p.len(),
        unet_steps: u_steps,
        unet_final_loss: u_loss,
        unet_heldout_loss: u_held,
        unet_seconds: u_secs,
        classifier_params: cls_p.len(),
        classifier_steps: c_steps,
        classifier_final_loss: c_loss,
        classifier_heldout_accuracy: c_acc,
        classifier_seconds: c_secs,
        train_images: train.len(),
        heldout_images: held.len(),
        threads: rayon_threads(),
        // The grid's figure stands while the UNet it sampled is the one kept.
        samples_read_as_asked: if matches!(opts.only, Some(Network::Classifier | Network::Verifier))
        {
            previous.as_ref().and_then(|p| p.samples_read_as_asked)
        } else {
            None
        },
        verifier,
    };
    if opts.sample_grid {
        let unet = unet::model(&dev, &unet_p)?;
        let mut source = cls_p.source("classifier parameters");
        let classifier = Classifier::new(&dev, &mut source)?;
        report.samples_read_as_asked = Some(crate::generate::sample_grid(
            &unet,
            &classifier,
            10,
            1.0,
            opts.seed,
            &opts.out.join("samples.png"),
        )?);
    }
    log.line(&format!(
        "done: unet held-out loss {:.4}, classifier held-out accuracy {:.3}, samples read as asked {:?}",
        report.unet_heldout_loss, report.classifier_heldout_accuracy, report.samples_read_as_asked
    ))?;
    write_atomic(
        &opts.out.join("training.json"),
        serde_json::to_string_pretty(&report).unwrap().as_bytes(),
    )?;
    Ok(report)
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CosFace head's gradient (its normalised weight on the tape beside the network's own
    /// backward operations) matches central differences of the loss, for the head's weight and
    /// for the layers below it.
    #[test]
    fn cosface_gradient_matches_finite_differences() {
        let dev = Cpu::default();
        let mut p = Classifier::new(&dev, &mut TorchInit::new(3))
            .unwrap()
            .host_params();
        let held = data::heldout();
        let idx = [0, 1, 2, 3, 4, 5];
        let loss = |p: &HostParams| {
            network_loss(&dev, p, &held, &idx, 0.0, (0, 0), (false, Head::CosFace))
                .unwrap()
                .0
        };
        let (_, g) =
            network_loss(&dev, &p, &held, &idx, 0.0, (0, 0), (true, Head::CosFace)).unwrap();
        let g = g.unwrap();
        let flat = p.flat();
        let (names, shapes) = (p.names.clone(), p.shapes.clone());
        let offset = |name: &str| {
            let k = names.iter().position(|n| n == name).unwrap();
            let start: usize = shapes[..k]
                .iter()
                .map(|s| s.iter().product::<usize>())
                .sum();
            start..start + shapes[k].iter().product::<usize>()
        };
        for name in ["head.weight", "fc.weight", "conv3.weight"] {
            // The coordinate with the largest gradient: its difference stands above f32's
            // rounding of the loss.
            let r = offset(name);
            let i = r
                .clone()
                .max_by(|a, b| g[*a].abs().total_cmp(&g[*b].abs()))
                .unwrap();
            let h = 1e-2;
            let mut moved = flat.clone();
            moved[i] = flat[i] + h;
            p.set_flat(&moved);
            let up = loss(&p);
            moved[i] = flat[i] - h;
            p.set_flat(&moved);
            let down = loss(&p);
            p.set_flat(&flat);
            let fd = (up - down) / (2.0 * h);
            assert!(g[i].abs() > 1e-3, "{name}: no gradient reached it");
            assert!(
                (fd - g[i]).abs() < 0.03 * g[i].abs(),
                "{name}[{}]: tape {} against central differences {fd}",
                i - r.start,
                g[i]
            );
        }
    }
}

//! `adeis train`: fits the digits denoiser (eps prediction, VP linear schedule, classifier-free
//! dropout of the class) and the classifier with Adam, deterministically from a seed, with
//! progress bars, periodic safetensors checkpoints, a sample grid and a training report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use adeis_compiler::{FieldError, Schedule};
use adeis_runtime::dfdx::optim::{Adam, AdamConfig};
use adeis_runtime::dfdx::prelude::*;
use adeis_runtime::noise::{normals, SplitMix};
use adeis_runtime::RuntimeError;
use serde::Serialize;

use crate::data::{split, Digits, CLASSES, PIXELS};
use crate::nets::*;
use crate::progress::{bar, check_interrupt};
use crate::{write_atomic, Error};

/// What `adeis train` does.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// The output folder.
    pub out: PathBuf,
    /// Denoiser training steps.
    pub denoiser_steps: usize,
    /// Classifier training steps.
    pub classifier_steps: usize,
    /// Examples per step.
    pub batch: usize,
    /// Adam's peak learning rate.
    pub lr: f64,
    /// The seed of the batches, times, noises and dropout.
    pub seed: u64,
    /// Probability that a training example's class is replaced by "no class".
    pub cfg_dropout: f64,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Write a grid of generated digits (samples.png) at the end.
    pub sample_grid: bool,
    /// Train only this network and load the other from `out`.
    pub only: Option<Network>,
}

/// One of the two networks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// The conditional denoiser.
    Denoiser,
    /// The classifier.
    Classifier,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            // Not the committed models' folder: a plain `adeis train` must not overwrite them
            // (`--out models/digits` does, when asked).
            out: PathBuf::from("adeis-out/digits"),
            denoiser_steps: 30_000,
            classifier_steps: 4_000,
            batch: 128,
            lr: 1e-3,
            seed: 0,
            cfg_dropout: 0.1,
            checkpoint_every: 2_000,
            sample_grid: true,
            only: None,
        }
    }
}

pub use adeis_app_common::training::check_training_steps;

impl TrainOptions {
    /// Checks the options; errors name the option (`batch`, `lr`, `cfg_dropout`).
    pub fn validate(&self) -> Result<(), FieldError> {
        check_training_steps(&[
            (
                "denoiser_steps",
                self.denoiser_steps,
                self.only != Some(Network::Classifier),
            ),
            (
                "classifier_steps",
                self.classifier_steps,
                self.only != Some(Network::Denoiser),
            ),
        ])?;
        if self.batch == 0 {
            return Err(FieldError::value(
                "batch",
                0,
                "the batch needs at least one digit",
            ));
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
        Ok(())
    }
}

/// What training did (written as training.json beside the weights).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct TrainReport {
    /// The seed.
    pub seed: u64,
    /// Examples per step.
    pub batch: usize,
    /// The peak learning rate.
    pub lr: f64,
    /// The classifier-free dropout.
    pub cfg_dropout: f64,
    /// Denoiser steps.
    pub denoiser_steps: usize,
    /// Its training loss at the end.
    pub denoiser_final_loss: f64,
    /// Its denoising loss on the held-out digits.
    pub denoiser_heldout_loss: f64,
    /// Its training time.
    pub denoiser_seconds: f64,
    /// Classifier steps.
    pub classifier_steps: usize,
    /// Its training loss at the end.
    pub classifier_final_loss: f64,
    /// Its accuracy on the held-out digits.
    pub classifier_heldout_accuracy: f64,
    /// Its training time.
    pub classifier_seconds: f64,
    /// Training digits.
    pub train_digits: usize,
    /// Held-out digits.
    pub heldout_digits: usize,
    /// Threads used.
    pub threads: usize,
    /// Fraction of the sample grid's digits the classifier reads as the class asked for.
    pub samples_read_as_asked: Option<f64>,
}

/// Cosine decay from lr to lr/10.
fn lr_at(lr: f64, step: usize, total: usize) -> f64 {
    let u = step as f64 / total.max(1) as f64;
    lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * u).cos()))
}

/// One denoising batch: noisy digits at random times, the noise, the (dropped-out) classes and
/// the time features.
struct NoisyBatch {
    x_t: Vec<f32>,
    eps: Vec<f32>,
    one_hot: Vec<f32>,
    feats: Vec<f32>,
}

fn noisy_batch(
    data: &Digits,
    idx: &[usize],
    schedule: &Schedule,
    rng: &mut SplitMix,
    cfg_dropout: f64,
    noise_seed: u64,
    noise_index: u64,
) -> NoisyBatch {
    let b = idx.len();
    let tf = time_features();
    let eps = normals(noise_seed, noise_index, b * PIXELS);
    let (t_min, t_max) = (schedule.t_min(), schedule.t_max());
    let mut nb = NoisyBatch {
        x_t: Vec::with_capacity(b * PIXELS),
        eps: eps.iter().map(|v| *v as f32).collect(),
        one_hot: Vec::new(),
        feats: Vec::with_capacity(b * tf.len()),
    };
    let mut classes = Vec::with_capacity(b);
    for (k, &i) in idx.iter().enumerate() {
        let t = t_min + (t_max - t_min) * rng.uniform();
        let v = schedule.eval(t);
        for (p, x0) in data.images[i].iter().enumerate() {
            nb.x_t
                .push((v.alpha * x0 + v.sigma * eps[k * PIXELS + p]) as f32);
        }
        nb.feats.extend(
            tf.at(schedule.def().model_time(t, v.sigma))
                .into_iter()
                .map(|f| f as f32),
        );
        let dropped = rng.uniform() <= cfg_dropout;
        classes.push(if dropped { NULL_CLASS } else { data.labels[i] });
    }
    nb.one_hot = one_hot(&classes, CLASSES + 1);
    nb
}

/// The denoiser's eps-prediction loss on a batch, on the tape of `grads`.
fn denoiser_loss(
    model: &Built<DenoiserFile>,
    dev: &Cpu,
    nb: NoisyBatch,
    grads: Gradients<f32, Cpu>,
) -> Tensor<Rank0, f32, Cpu, OwnedTape<f32, Cpu>> {
    let b = nb.eps.len() / PIXELS;
    let x_t = dev.tensor_from_vec(nb.x_t, (b, PIXELS));
    let oh = dev.tensor_from_vec(nb.one_hot, (b, Const::<{ CLASSES + 1 }>));
    let feats = dev.tensor_from_vec(nb.feats, (b, 2 * FREQS));
    let eps = dev.tensor_from_vec(nb.eps, (b, Const::<PIXELS>));
    // The embedding's tape moves onto x_t, the left operand of the concatenation (dfdx merges
    // a tape only into its left operand); the concatenation's backward op still writes the
    // embedding's gradient, which the embedding's own backward op then reads.
    let z = model
        .0
        .forward(oh.trace(grads))
        .reshape_like(&(b, COND_DIM));
    let (z, tape) = z.split_tape();
    let xz = (x_t.put_tape(tape), z).concat_along(Axis::<1>);
    let input = (xz, feats)
        .concat_along(Axis::<1>)
        .reshape_like(&(b, Const::<NET_IN>));
    let pred = model.1.forward(input);
    mse_loss(pred, eps)
}

fn save<M: SaveToSafetensors<f32, Cpu>>(m: &M, path: &Path) -> Result<(), Error> {
    // dfdx writes the file itself: write beside it, then rename, so the file is whole or absent.
    let tmp = path.with_extension(format!("partial-{}", std::process::id()));
    let r = m
        .save_safetensors(&tmp)
        .map_err(|e| Error::file(path, adeis_io::safetensors::explain(&e)))
        .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e)));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// What one network's training loop is: its name, its steps, the options and its checkpoint.
struct Fit<'a> {
    name: &'a str,
    steps: usize,
    opts: &'a TrainOptions,
    ckpt: &'a Path,
}

/// The training loop both networks share: Adam with cosine decay, a finite-loss check, a
/// progress bar with the smoothed loss and the ETA, checkpoints (of what `kept` returns: the
/// EMA weights for the denoiser) every `checkpoint_every` steps and on Ctrl-C. `batch_loss`
/// builds step k's loss on the tape of the gradients it is given; `after_step` runs after
/// each update. Returns the smoothed final loss.
fn fit<M>(
    model: &mut M,
    run: Fit,
    mut batch_loss: impl FnMut(
        &M,
        usize,
        Gradients<f32, Cpu>,
    ) -> Tensor<Rank0, f32, Cpu, OwnedTape<f32, Cpu>>,
    mut after_step: impl FnMut(&M, usize),
    kept: impl Fn(&M) -> Result<(), Error>,
) -> Result<f64, Error>
where
    M: TensorCollection<f32, Cpu>,
{
    let Fit {
        name,
        steps,
        opts,
        ckpt,
    } = run;
    let mut opt = Adam::new(
        model,
        AdamConfig {
            lr: opts.lr,
            ..Default::default()
        },
    );
    let mut grads = model.alloc_grads();
    let pb = bar(steps, name);
    let mut smooth = f64::NAN;
    for step in 0..steps {
        if adeis_runtime::interrupt::requested() {
            pb.abandon();
            kept(model)?;
            check_interrupt(&format!(
                "{name} training (the weights of step {step} are in {})",
                ckpt.display()
            ))?;
        }
        let loss = batch_loss(model, step, grads);
        let value = loss.array() as f64;
        if !value.is_finite() {
            return Err(RuntimeError::Invalid(format!(
                "the {name}'s loss is {value} at step {step}: stopped"
            ))
            .into());
        }
        grads = loss.backward();
        opt.cfg.lr = lr_at(opts.lr, step, steps);
        opt.update(model, &grads)
            .map_err(|e| RuntimeError::Invalid(format!("the {name}'s update: {e:?}")))?;
        model.zero_grads(&mut grads);
        after_step(model, step);
        smooth = if smooth.is_nan() {
            value
        } else {
            0.98 * smooth + 0.02 * value
        };
        pb.inc(1);
        if step % 50 == 0 {
            pb.set_message(format!("loss {smooth:.4}"));
        }
        if opts.checkpoint_every > 0 && (step + 1) % opts.checkpoint_every == 0 {
            kept(model)?;
        }
    }
    pb.finish();
    kept(model)?;
    Ok(smooth)
}

/// Trains the denoiser; returns (EMA weights, final training loss, held-out loss, seconds).
pub fn train_denoiser(
    opts: &TrainOptions,
    dev: &Cpu,
    train: &Digits,
    held: &Digits,
    schedule: &Schedule,
) -> Result<(Built<DenoiserFile>, f64, f64, f64), Error> {
    let start = Instant::now();
    // Each network's initial weights come from its own stream, so `--only` reproduces the
    // network a full run trains.
    let mut model = Cpu::seed_from_u64(opts.seed ^ 0xD1A6).build_module::<DenoiserFile, f32>();
    let ema = std::cell::RefCell::new(model.clone());
    let mut rng = SplitMix(opts.seed ^ 0xD1A6);
    let ckpt = opts.out.join(DENOISER_FILE);
    let smooth = fit(
        &mut model,
        Fit {
            name: "denoiser",
            steps: opts.denoiser_steps,
            opts,
            ckpt: &ckpt,
        },
        |model, step, grads| {
            let idx: Vec<usize> = (0..opts.batch).map(|_| rng.below(train.len())).collect();
            let nb = noisy_batch(
                train,
                &idx,
                schedule,
                &mut rng,
                opts.cfg_dropout,
                opts.seed,
                step as u64,
            );
            denoiser_loss(model, dev, nb, grads)
        },
        // EMA with a warm-up so early steps are not dominated by the random initialisation.
        |model, step| {
            let decay = (0.999f64).min((1.0 + step as f64) / (10.0 + step as f64));
            ema.borrow_mut().ema(model, decay);
        },
        |_| save(&*ema.borrow(), &ckpt),
    )?;
    let ema = ema.into_inner();
    // Held-out loss of the EMA weights: every held-out digit at 4 noise draws.
    let mut rng = SplitMix(opts.seed ^ 0x4E1D);
    let mut total = 0.0;
    let idx: Vec<usize> = (0..held.len()).collect();
    for rep in 0..4u64 {
        let nb = noisy_batch(held, &idx, schedule, &mut rng, 0.0, opts.seed ^ 0x4E1D, rep);
        total += denoiser_loss(&ema, dev, nb, ema.alloc_grads()).array() as f64;
    }
    Ok((ema, smooth, total / 4.0, start.elapsed().as_secs_f64()))
}

/// Trains the classifier (inputs with small Gaussian noise, so that generated digits, which are
/// not pixel-exact, are read like real ones); returns (weights, final loss, held-out accuracy,
/// seconds).
pub fn train_classifier(
    opts: &TrainOptions,
    dev: &Cpu,
    train: &Digits,
    held: &Digits,
) -> Result<(Built<ClassifierNet>, f64, f64, f64), Error> {
    let start = Instant::now();
    let mut model = Cpu::seed_from_u64(opts.seed ^ 0xC1A5).build_module::<ClassifierNet, f32>();
    let mut rng = SplitMix(opts.seed ^ 0xC1A5);
    let ckpt = opts.out.join(CLASSIFIER_FILE);
    let smooth = fit(
        &mut model,
        Fit {
            name: "classifier",
            steps: opts.classifier_steps,
            opts,
            ckpt: &ckpt,
        },
        |model, step, grads| {
            let b = opts.batch;
            let idx: Vec<usize> = (0..b).map(|_| rng.below(train.len())).collect();
            let jitter = normals(opts.seed ^ 0xC1A5, step as u64, b * PIXELS);
            let mut x = Vec::with_capacity(b * PIXELS);
            for (k, &i) in idx.iter().enumerate() {
                x.extend(
                    train.images[i]
                        .iter()
                        .enumerate()
                        .map(|(p, v)| (v + 0.1 * jitter[k * PIXELS + p]) as f32),
                );
            }
            let classes: Vec<usize> = idx.iter().map(|&i| train.labels[i]).collect();
            let x = dev.tensor_from_vec(x, (b, Const::<PIXELS>));
            let target = dev.tensor_from_vec(one_hot(&classes, CLASSES), (b, Const::<CLASSES>));
            cross_entropy_with_logits_loss(classifier_logits(model, x.trace(grads)), target)
        },
        |_, _| {},
        |m| save(m, &ckpt),
    )?;
    let b = held.len();
    let flat: Vec<f32> = held.images.iter().flatten().map(|v| *v as f32).collect();
    let logits =
        classifier_logits(&model, dev.tensor_from_vec(flat, (b, Const::<PIXELS>))).as_vec();
    let correct = logits
        .chunks_exact(CLASSES)
        .zip(&held.labels)
        .filter(|(row, &l)| (0..CLASSES).all(|j| row[j] <= row[l]))
        .count();
    Ok((
        model,
        smooth,
        correct as f64 / b.max(1) as f64,
        start.elapsed().as_secs_f64(),
    ))
}

/// `adeis train`: both networks, then samples.png and training.json in `opts.out`.
pub fn run(opts: &TrainOptions) -> Result<TrainReport, Error> {
    opts.validate()?;
    adeis_io::check_output_folder(&opts.out)?;
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::file(&opts.out, e))?;
    let dev = Cpu::default();
    let (train, held) = split();
    let schedule = crate::schedule()?;
    // With --only, the other network comes from the output folder and its figures from the
    // previous training.json there.
    let previous: Option<TrainReport> = std::fs::read(opts.out.join("training.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let prev = |f: fn(&TrainReport) -> f64| previous.as_ref().map_or(f64::NAN, f);
    let (file, d_loss, d_held, d_secs, d_steps) = if opts.only == Some(Network::Classifier) {
        let steps = previous.as_ref().map_or(0, |p| p.denoiser_steps);
        (
            load_denoiser(&dev, &opts.out)?,
            prev(|p| p.denoiser_final_loss),
            prev(|p| p.denoiser_heldout_loss),
            prev(|p| p.denoiser_seconds),
            steps,
        )
    } else {
        let (f, l, h, s) = train_denoiser(opts, &dev, &train, &held, &schedule)?;
        (f, l, h, s, opts.denoiser_steps)
    };
    let (classifier, c_loss, c_acc, c_secs, c_steps) = if opts.only == Some(Network::Denoiser) {
        let steps = previous.as_ref().map_or(0, |p| p.classifier_steps);
        (
            load_classifier(&dev, &opts.out)?,
            prev(|p| p.classifier_final_loss),
            prev(|p| p.classifier_heldout_accuracy),
            prev(|p| p.classifier_seconds),
            steps,
        )
    } else {
        let (c, l, a, s) = train_classifier(opts, &dev, &train, &held)?;
        (c, l, a, s, opts.classifier_steps)
    };
    let report = TrainReport {
        seed: opts.seed,
        batch: opts.batch,
        lr: opts.lr,
        cfg_dropout: opts.cfg_dropout,
        denoiser_steps: d_steps,
        denoiser_final_loss: d_loss,
        denoiser_heldout_loss: d_held,
        denoiser_seconds: d_secs,
        classifier_steps: c_steps,
        classifier_final_loss: c_loss,
        classifier_heldout_accuracy: c_acc,
        classifier_seconds: c_secs,
        train_digits: train.len(),
        heldout_digits: held.len(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        samples_read_as_asked: None,
    };
    let mut report = report;
    if opts.sample_grid {
        let models = DigitsModels::from_parts(file, classifier, dev);
        report.samples_read_as_asked = Some(crate::sample_grid(
            &models,
            opts.seed,
            &opts.out.join("samples.png"),
        )?);
    }
    write_atomic(
        &opts.out.join("training.json"),
        serde_json::to_string_pretty(&report).unwrap().as_bytes(),
    )?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The concatenation moves the embedding's tape onto x_t: the embedding must still get
    /// its gradient, equal to a central finite difference of the loss.
    #[test]
    fn the_class_embedding_gets_its_gradient() {
        let dev = Cpu::seed_from_u64(3);
        let mut model = dev.build_module::<DenoiserFile, f32>();
        let (train, _) = split();
        let schedule = crate::schedule().unwrap();
        let idx: Vec<usize> = (0..8).collect();
        let make = || noisy_batch(&train, &idx, &schedule, &mut SplitMix(5), 0.0, 1, 0);
        let loss = denoiser_loss(&model, &dev, make(), model.alloc_grads());
        let grads = loss.backward();
        let g = grads.get(&model.0.weight).as_vec();
        // entry (row 2, column of class train.labels[0]): a class in the batch
        let col = train.labels[0];
        let k = 2 * (CLASSES + 1) + col;
        assert!(
            g[k].abs() > 1e-6,
            "no gradient reached the embedding: {}",
            g[k]
        );
        let mut w = model.0.weight.as_vec();
        let h = 1e-2f32;
        let at = |model: &Built<DenoiserFile>| {
            denoiser_loss(model, &dev, make(), model.alloc_grads()).array() as f64
        };
        w[k] += h;
        model.0.weight.copy_from(&w);
        let up = at(&model);
        w[k] -= 2.0 * h;
        model.0.weight.copy_from(&w);
        let down = at(&model);
        let fd = (up - down) / (2.0 * h as f64);
        assert!(
            (fd - g[k] as f64).abs() < 1e-3 * (1.0 + fd.abs()) + 2e-5,
            "fd {fd} vs {}",
            g[k]
        );
    }
}

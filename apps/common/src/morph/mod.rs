//! `adeis morph`: the morphing experiment of the AdjointDEIS paper on any dataset's models
//! ([`MorphModels`]: the digits MLPs, the Fashion-MNIST UNet and classifier).
//!
//! For each pair of held-out digits (a, b): encode both by ODE inversion (DDIM run backwards)
//! with their class embeddings z_a, z_b; start from slerp(x_T^a, x_T^b; 1/2) and
//! lerp(z_a, z_b; 1/2); sample; then optimise x_T and z through the sampler against the identity
//! loss d(v, v_a) + d(v, v_b) + |d(v, v_a) - d(v, v_b)| (d: cosine distance between classifier
//! features) with the chosen gradient methods. A morph is accepted as an identity when its
//! feature distance is below the verification threshold set at a false-match rate of 0.1% on
//! held-out genuine/impostor pairs; MMPMR is the fraction of morphs accepted as both.
//!
//! Pairs run as one batch (the loss is a sum over pairs and the rows are independent), so one
//! gradient call serves every pair. Every sampler and gradient goes through one
//! [`Problem`] per method, built once.

pub mod method;
pub mod report;
pub mod verify;

use std::path::PathBuf;
use std::time::Instant;

use adeis_compiler::{Adjoint, FieldError, GradMethod, Problem, SamplerSpec, Wrt};
use adeis_runtime::dfdx::prelude::*;
use adeis_runtime::loss::identity_loss;
use adeis_runtime::optim::{Optimizer, OptimizerKind};
use adeis_runtime::tape::Taped;
use adeis_runtime::{
    from_f64, gradient, sample, to_f64, Denoiser, Gradient, Input, ModelFn, NoiseSource, Rows,
    State,
};
use serde::Serialize;

pub use method::MorphMethod;
pub use report::{describe, table, verifier_summary, MethodResult, MorphReport, PairResult};
pub use verify::{calibrate, choose_pairs, slerp_half, Verifier};

use crate::labelled::Labelled;
use crate::progress::{bar, check_interrupt};
use crate::{sampler, Error};
use verify::{cosine_distance, identity_terms};

/// The size of an optimised x_T or z beyond which a morph has diverged (the noise starts at
/// about 1 and stays within a few units when the optimisation works).
const DIVERGED: f64 = 1e3;

/// Which pairs to morph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum PairKind {
    /// Digits of two different classes (the default: two "identities").
    DifferentClass,
    /// Two different digits of the same class.
    SameClass,
    /// A digit of class a and one of class b, as given.
    Classes(usize, usize),
}

/// What `adeis morph` does.
#[derive(Clone, Debug)]
pub struct MorphOptions {
    /// Folder with denoiser.safetensors and classifier.safetensors; None: the committed models.
    pub models: Option<PathBuf>,
    /// The output folder.
    pub out: PathBuf,
    /// The number of pairs.
    pub pairs: usize,
    /// Which pairs: of different classes or of the same class.
    pub kind: PairKind,
    /// The methods compared.
    pub methods: Vec<MorphMethod>,
    /// Optimisation iterations K.
    pub iters: usize,
    /// Sampler steps N (DDIM for the ODE, SDE-DPM-Solver++1 for the SDE, logsnr grid).
    pub steps: usize,
    /// The optimiser of x_T and z.
    pub optimizer: OptimizerKind,
    /// Its learning rate.
    pub lr: f64,
    /// The seed of the pairs' choice.
    pub seed: u64,
    /// AdjointDEIS on its own grid of this many steps (uniform in lambda, states interpolated);
    /// None: on the sampling grid.
    pub adjoint_steps: Option<usize>,
    /// Write one PNG per pair (at most this many; the evaluation may have hundreds).
    pub max_pair_images: usize,
    /// Print progress and the table.
    pub verbose: bool,
}

impl Default for MorphOptions {
    fn default() -> Self {
        MorphOptions {
            models: None,
            out: PathBuf::from("adeis-out/morph"),
            pairs: 1,
            kind: PairKind::DifferentClass,
            methods: MorphMethod::parse_list(MorphMethod::DEFAULT).unwrap(),
            iters: 50,
            steps: 20,
            optimizer: OptimizerKind::Adam,
            lr: 0.05,
            seed: 0,
            adjoint_steps: None,
            max_pair_images: 16,
            verbose: true,
        }
    }
}

impl MorphOptions {
    /// Checks the options; errors name the option (`pairs`, `steps`, `lr`, ...).
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.pairs == 0 {
            return Err(FieldError::value("pairs", 0, "at least one pair"));
        }
        if self.steps == 0 {
            return Err(FieldError::value(
                "steps",
                0,
                "the sampler needs at least one step",
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(FieldError::value("lr", self.lr, "a positive learning rate"));
        }
        if self.adjoint_steps == Some(0) {
            return Err(FieldError::value("adjoint_steps", 0, "at least one step"));
        }
        adeis_compiler::grid::check_steps("steps", self.steps)?;
        if let Some(n) = self.adjoint_steps {
            adeis_compiler::grid::check_steps("adjoint_steps", n)?;
        }
        // Pairs run as one batch through every step: a mistyped count is an error, not hours.
        const MAX_PAIRS: usize = 10_000;
        if self.pairs > MAX_PAIRS {
            return Err(FieldError::value(
                "pairs",
                self.pairs,
                format!("at most {MAX_PAIRS} pairs"),
            ));
        }
        if let PairKind::Classes(a, b) = self.kind {
            if a > 9 || b > 9 {
                return Err(FieldError::value(
                    "digits",
                    format!("{a},{b}"),
                    "digits are 0 to 9",
                ));
            }
        }
        Ok(())
    }
}

/// What the experiment needs of a dataset's models: the conditional denoiser, its class
/// conditioning, the classifier's identity features (plain and on the tape), the image shape
/// and the schedule the denoiser was trained on.
pub trait MorphModels {
    /// The denoiser's type.
    type Net: Denoiser<f32, Cpu>;
    /// The denoiser.
    fn denoiser(&self) -> &Self::Net;
    /// The device everything runs on.
    fn device(&self) -> &Cpu;
    /// The item shape of an image state (`[64]` for the digits, `[1, 28, 28]` for Fashion-MNIST).
    fn item(&self) -> Vec<usize>;
    /// Side of a (square) image, for the pictures.
    fn side(&self) -> usize;
    /// Width of the identity features.
    fn features_dim(&self) -> usize;
    /// The conditioning z of each class, one row each.
    fn cond(&self, classes: &[usize]) -> Result<State<f32, Cpu>, Error>;
    /// The classifier's identity features of images `x`, one row each.
    fn features(&self, x: &State<f32, Cpu>) -> Rows<f32, Cpu>;
    /// The same on the tape (for the identity loss's gradient).
    fn features_taped(&self, x: Taped<f32, Cpu>) -> Taped<f32, Cpu>;
    /// The features that verify identities, one row each: a separate verification embedding
    /// where the models have one (the attack optimises against the identity features and is
    /// judged by another network, as the paper judges ArcFace-optimised morphs), else the
    /// identity features.
    fn verification_features(&self, x: &State<f32, Cpu>) -> Rows<f32, Cpu> {
        self.features(x)
    }
    /// What verifies identities, in words, for the report.
    fn verifier_name(&self) -> &'static str {
        "the classifier's identity features"
    }
    /// The sampling problem of `sampler` on the denoiser's schedule.
    fn problem(&self, sampler: &SamplerSpec) -> Result<Problem, Error>;
    /// What the images are, in reports ("digits", "Fashion-MNIST images").
    fn noun(&self) -> &'static str;
}

/// Everything the methods share: the models, the two sampling problems, the targets' features,
/// the starting point and the verifier.
struct Experiment<'a, M: MorphModels> {
    models: &'a M,
    /// DDIM (ODE) and SDE-DPM-Solver++1 (SDE), with respect to x_T and z.
    ode: Problem,
    sde: Problem,
    /// Rex (Euler tableau) on half the steps, at DDIM's NFE: the reversible gradient's sampler.
    rex: Problem,
    v_a: Rows<f32, Cpu>,
    v_b: Rows<f32, Cpu>,
    /// v_a and v_b on the host, for the per-pair scores.
    v_host: (Vec<f64>, Vec<f64>),
    /// The verification features of images a and b, on the host.
    w_host: (Vec<f64>, Vec<f64>),
    x_init: Vec<f64>,
    z_init: Vec<f64>,
    verifier: Verifier,
    batch: usize,
    seed: u64,
}

type MorphGradient<M> = Gradient<f32, Cpu, <<M as MorphModels>::Net as Denoiser<f32, Cpu>>::Grads>;

impl<M: MorphModels> Experiment<'_, M> {
    fn features(&self, x0: &State<f32, Cpu>) -> Vec<Vec<f64>> {
        to_f64(&self.models.features(x0))
            .chunks_exact(self.models.features_dim())
            .map(|r| r.to_vec())
            .collect()
    }

    /// Per-pair (loss, d_a, d_b) of a batch of morphs.
    fn score(&self, x0: &State<f32, Cpu>) -> Vec<(f64, f64, f64)> {
        let (va, vb) = &self.v_host;
        self.features(x0)
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let f = self.models.features_dim();
                let r = i * f..(i + 1) * f;
                identity_terms(v, &va[r.clone()], &vb[r])
            })
            .collect()
    }

    /// Per-pair verification distances (to a, to b) of a batch of morphs.
    fn verify(&self, x0: &State<f32, Cpu>) -> Vec<(f64, f64)> {
        let (wa, wb) = &self.w_host;
        let w = to_f64(&self.models.verification_features(x0));
        let f = wa.len() / self.batch;
        w.chunks_exact(f)
            .enumerate()
            .map(|(i, v)| {
                let r = i * f..(i + 1) * f;
                (
                    cosine_distance(v, &wa[r.clone()]),
                    cosine_distance(v, &wb[r]),
                )
            })
            .collect()
    }

    /// The sampler a method runs: Rex for the reversible gradient, otherwise DDIM or the SDE
    /// sampler.
    fn problem(&self, method: MorphMethod) -> &Problem {
        match method {
            MorphMethod::Gradient {
                method: GradMethod::Reversible,
                ..
            } => &self.rex,
            m if m.sde() => &self.sde,
            _ => &self.ode,
        }
    }

    fn states(&self, x: &[f64], z: &[f64]) -> (State<f32, Cpu>, State<f32, Cpu>) {
        let dev = self.models.device();
        let mut shape = vec![self.batch];
        shape.extend(self.models.item());
        (
            State::from_f64(dev, x, &shape).expect("the image shape"),
            from_f64(dev, z, self.batch, z.len() / self.batch),
        )
    }

    fn sample(
        &self,
        x: &[f64],
        z: &[f64],
        method: MorphMethod,
    ) -> Result<(State<f32, Cpu>, usize), Error> {
        let (xt, zt) = self.states(x, z);
        let noise = NoiseSource::Seeded(self.seed);
        let out = sample(
            self.problem(method).plan(),
            &ModelFn::new(self.models.denoiser()),
            &Input::new(&xt, Some(&zt), &noise),
            false,
        )?;
        Ok((out.x, out.nfe))
    }

    /// The identity loss's gradient by `problem`'s method at (x_T, z).
    fn gradient(
        &self,
        problem: &Problem,
        xt: &State<f32, Cpu>,
        zt: &State<f32, Cpu>,
    ) -> Result<MorphGradient<M>, Error> {
        let noise = NoiseSource::Seeded(self.seed);
        Ok(gradient(
            problem,
            &ModelFn::new(self.models.denoiser()),
            &Input::new(xt, Some(zt), &noise),
            |x0| {
                identity_loss(x0, |v| self.models.features_taped(v), &self.v_a, &self.v_b)
                    .map(|l| l.grad)
            },
        )?)
    }

    fn run(
        &self,
        method: MorphMethod,
        opts: &MorphOptions,
        pb: &indicatif::ProgressBar,
    ) -> Result<MethodResult, Error> {
        let start = Instant::now();
        let (mut x, mut z) = (self.x_init.clone(), self.z_init.clone());
        let (x0, nfe0) = self.sample(&x, &z, method)?;
        let initial = self.score(&x0);
        let mean = |s: &[(f64, f64, f64)]| s.iter().map(|r| r.0).sum::<f64>() / s.len() as f64;
        let mut curve = vec![mean(&initial)];
        let (mut nfe, mut vjps) = (nfe0, 0);
        let (mut grad_cosine, mut grad_norm_ratio) = (None, None);
        if let Some(adjoint) = method.adjoint(opts.adjoint_steps) {
            let problem = self.problem(method).clone().with_adjoint(adjoint)?;
            let (mut step_x, mut step_z) = (
                Optimizer::new(opts.optimizer, opts.lr, x.len()),
                Optimizer::new(opts.optimizer, opts.lr, z.len()),
            );
            for k in 0..opts.iters {
                check_interrupt(&format!("the {} morphs", method.name()))?;
                let (xt, zt) = self.states(&x, &z);
                let g = self.gradient(&problem, &xt, &zt).map_err(|e| {
                    adeis_runtime::RuntimeError::Invalid(format!(
                        "{} at iteration {k}: {e}",
                        method.name()
                    ))
                })?;
                let flat = |g: &MorphGradient<M>| {
                    let mut v = to_f64(&g.dx_t);
                    v.extend(to_f64(g.dz.as_ref().expect("wrt cond")));
                    v
                };
                if k == 0 {
                    // The discrete adjoint is the reference itself: no second gradient for it.
                    let a = flat(&g);
                    let discrete = method.adjoint(None) == Some(Adjoint::default());
                    let b = if discrete {
                        a.clone()
                    } else {
                        let exact = self
                            .problem(method)
                            .clone()
                            .with_adjoint(Adjoint::default())?;
                        flat(&self.gradient(&exact, &xt, &zt)?)
                    };
                    grad_cosine = Some(1.0 - cosine_distance(&a, &b));
                    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
                    grad_norm_ratio = Some(norm(&a) / norm(&b));
                }
                if k > 0 {
                    // the loss at the iterate the gradient was taken at
                    curve.push(mean(&self.score(&g.x0)));
                }
                nfe += g.nfe;
                vjps += g.vjps;
                step_x.step(&mut x, &to_f64(&g.dx_t));
                step_z.step(&mut z, &to_f64(g.dz.as_ref().expect("wrt cond")));
                // Divergence: the starting noise is of size ~1 and the conditioning a blend of
                // embeddings; an iterate far beyond that (or not finite) is a step too large.
                let size = x.iter().chain(&z).fold(0.0f64, |m, v| {
                    if v.is_finite() {
                        m.max(v.abs())
                    } else {
                        f64::INFINITY
                    }
                });
                if size > DIVERGED {
                    return Err(adeis_runtime::RuntimeError::Invalid(format!(
                        "{} diverged at iteration {k}: the optimised x_T and z reached {size:.3e} (they start near 1); the learning rate {} is too large for {:?}, try a smaller --lr",
                        method.name(),
                        opts.lr,
                        opts.optimizer
                    ))
                    .into());
                }
                pb.inc(1);
                pb.set_message(format!(
                    "{} loss {:.4}",
                    method.name(),
                    curve.last().unwrap()
                ));
            }
        }
        let (x0, n) = if method == MorphMethod::None {
            (x0, 0)
        } else {
            self.sample(&x, &z, method)?
        };
        nfe += n;
        let fin = self.score(&x0);
        let checked = self.verify(&x0);
        if method != MorphMethod::None {
            curve.push(mean(&fin));
        }
        let pixels: usize = self.models.item().iter().product();
        let morphs: Vec<Vec<f64>> = to_f64(&x0)
            .chunks_exact(pixels)
            .map(|r| r.to_vec())
            .collect();
        let pairs: Vec<PairResult> = (0..self.batch)
            .map(|i| PairResult {
                loss_initial: initial[i].0,
                loss_final: fin[i].0,
                d_a: fin[i].1,
                d_b: fin[i].2,
                verify_a: checked[i].0,
                verify_b: checked[i].1,
                accepted: checked[i].0 < self.verifier.threshold
                    && checked[i].1 < self.verifier.threshold,
                accepted_at: self.verifier.accepts(checked[i].0, checked[i].1),
                morph: morphs[i].clone(),
            })
            .collect();
        let secs = start.elapsed().as_secs_f64();
        Ok(MethodResult {
            method: method.name().into(),
            label: method.label().into(),
            mmpmr: pairs.iter().filter(|p| p.accepted).count() as f64 / pairs.len() as f64,
            mmpmr_at: (0..self.verifier.operating_points.len())
                .map(|k| {
                    pairs.iter().filter(|p| p.accepted_at[k]).count() as f64 / pairs.len() as f64
                })
                .collect(),
            pairs_worse: pairs
                .iter()
                .filter(|p| p.loss_final > p.loss_initial)
                .count(),
            mean_loss_initial: mean(&initial),
            mean_loss_final: mean(&fin),
            // the gradient calls count per batch; every pair's row costs the same
            nfe_per_morph: nfe,
            vjps_per_morph: vjps,
            seconds: secs,
            seconds_per_morph: secs / self.batch as f64,
            loss_curve: curve,
            grad_cosine,
            grad_norm_ratio,
            pairs,
        })
    }
}

/// The sampling problem of `keys` on the models' schedule, with respect to x_T and z.
fn morph_problem<M: MorphModels>(models: &M, keys: serde_json::Value) -> Result<Problem, Error> {
    let wrt = Wrt {
        x_t: true,
        cond: true,
        params: false,
        times: false,
        schedule: false,
    };
    Ok(models.problem(&sampler(keys)?)?.with_wrt(wrt))
}

/// The images `held` as a state of `models`' item shape.
fn image_state<M: MorphModels>(models: &M, flat: &[f64], batch: usize) -> State<f32, Cpu> {
    let mut shape = vec![batch];
    shape.extend(models.item());
    State::from_f64(models.device(), flat, &shape).expect("the image shape")
}

/// Runs the experiment with `models` on the held-out images `held` (pairs and verification
/// threshold from them) and writes its outputs into `opts.out`.
pub fn run_with<M: MorphModels>(
    models: &M,
    held: &Labelled,
    opts: &MorphOptions,
) -> Result<MorphReport, Error> {
    opts.validate()?;
    let pixels: usize = models.item().iter().product();
    let ode = morph_problem(
        models,
        serde_json::json!({"method": "ddim", "steps": opts.steps}),
    )?;
    let sde = morph_problem(
        models,
        serde_json::json!({"method": "sde_dpm_solver_pp", "order": 1, "steps": opts.steps}),
    )?;
    let rex = morph_problem(
        models,
        serde_json::json!({"method": "rex", "order": 1, "steps": opts.steps.div_ceil(2)}),
    )?;
    // The output folder is made only once there is something to write (a run that fails
    // leaves none behind); a path that cannot become a folder fails now, before the run.
    adeis_io::check_output_folder(&opts.out)?;

    // Verification threshold on the held-out images (in batches, for memory).
    let mut feats: Vec<Vec<f64>> = Vec::with_capacity(held.len());
    for chunk in held.images.chunks(250) {
        let flat: Vec<f64> = chunk.iter().flatten().copied().collect();
        let f = to_f64(&models.verification_features(&image_state(models, &flat, chunk.len())));
        let width = f.len() / chunk.len();
        feats.extend(f.chunks_exact(width).map(|r| r.to_vec()));
    }
    let verifier = calibrate(&feats, &held.labels, 1e-3);

    // Pairs, their features and their encodings.
    let pairs = choose_pairs(held, opts.pairs, opts.kind, opts.seed);
    let b = pairs.len();
    let gather = |which: fn(&(usize, usize)) -> usize| -> (Vec<f64>, Vec<usize>) {
        let idx: Vec<usize> = pairs.iter().map(which).collect();
        (
            idx.iter().flat_map(|&i| held.images[i].clone()).collect(),
            idx.iter().map(|&i| held.labels[i]).collect(),
        )
    };
    let (img_a, cls_a) = gather(|p| p.0);
    let (img_b, cls_b) = gather(|p| p.1);
    let (za, zb) = (models.cond(&cls_a)?, models.cond(&cls_b)?);
    let inverse = ode.inversion();
    let encode = |img: &[f64], z: &State<f32, Cpu>| {
        let x = image_state(models, img, b);
        let noise = NoiseSource::Seeded(0);
        sample(
            &inverse,
            &ModelFn::new(models.denoiser()),
            &Input::new(&x, Some(z), &noise),
            false,
        )
        .map_err(|e| adeis_runtime::RuntimeError::Invalid(format!("encoding: {e}")))
    };
    let (enc_a, enc_b) = (encode(&img_a, &za)?, encode(&img_b, &zb)?);
    let (xa, xb) = (to_f64(&enc_a.x), to_f64(&enc_b.x));
    let (v_a, v_b) = (
        models.features(&image_state(models, &img_a, b)),
        models.features(&image_state(models, &img_b, b)),
    );
    let experiment = Experiment {
        models,
        ode,
        sde,
        rex,
        v_host: (to_f64(&v_a), to_f64(&v_b)),
        w_host: (
            to_f64(&models.verification_features(&image_state(models, &img_a, b))),
            to_f64(&models.verification_features(&image_state(models, &img_b, b))),
        ),
        v_a,
        v_b,
        x_init: slerp_half(&xa, &xb, pixels),
        z_init: to_f64(&za)
            .iter()
            .zip(to_f64(&zb))
            .map(|(p, q)| 0.5 * (p + q))
            .collect(),
        verifier: verifier.clone(),
        batch: b,
        seed: opts.seed,
    };
    // How faithful the encoding is: decode x_T^a with z_a.
    let (dec_a, _) = experiment.sample(&xa, &to_f64(&za), MorphMethod::None)?;
    let reconstruction_error = to_f64(&dec_a)
        .iter()
        .zip(&img_a)
        .map(|(p, q)| (p - q).abs())
        .sum::<f64>()
        / img_a.len() as f64;
    let encode_nfe = enc_a.nfe + enc_b.nfe;
    let (initial, _) =
        experiment.sample(&experiment.x_init, &experiment.z_init, MorphMethod::None)?;

    let optimised = opts
        .methods
        .iter()
        .filter(|m| **m != MorphMethod::None)
        .count();
    let pb = bar(optimised * opts.iters, "morph");
    if !opts.verbose {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut methods = Vec::new();
    for m in &opts.methods {
        let mut r = experiment.run(*m, opts, &pb)?;
        r.nfe_per_morph += encode_nfe;
        methods.push(r);
    }
    pb.finish_and_clear();

    let mut report = MorphReport {
        pairs: pairs.clone(),
        classes: cls_a.iter().copied().zip(cls_b.iter().copied()).collect(),
        iters: opts.iters,
        steps: opts.steps,
        optimizer: opts.optimizer,
        lr: opts.lr,
        seed: opts.seed,
        adjoint_steps: opts.adjoint_steps,
        verifier,
        reconstruction_error,
        encode_nfe_per_morph: encode_nfe,
        initial_morphs: to_f64(&initial)
            .chunks_exact(pixels)
            .map(|r| r.to_vec())
            .collect(),
        methods,
        outputs: vec![],
        image_side: models.side(),
        subject: models.noun().into(),
        verified_by: models.verifier_name().into(),
    };
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::file(&opts.out, e))?;
    report::write_outputs(&mut report, &img_a, &img_b, opts)?;
    Ok(report)
}

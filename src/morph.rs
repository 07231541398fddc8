//! `adeis morph`: the morphing experiment of the AdjointDEIS paper on the digits models.
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
//! gradient call serves every pair.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use adeis_compiler::gradient::States;
use adeis_compiler::sampler::build_plan_on;
use adeis_compiler::{build_plan, GradMethod, GradientSpec, Plan, SamplerSpec, Schedule, WrtKey};
use adeis_runtime::adjoint::compute_gradient;
use adeis_runtime::dfdx::prelude::*;
use adeis_runtime::loss::identity_loss;
use adeis_runtime::noise::SplitMix;
use adeis_runtime::{from_f64, sample, to_f64, Batch, ModelFn, NoiseSource};
use serde::Serialize;

use crate::digits::data::{split, Digits, PIXELS, SIDE};
use crate::digits::nets::{DigitsModels, COND_DIM, FEATURES};
use crate::digits::{rows, sampler};
use crate::image::{digit_grid, line_plot, PALETTE};
use crate::npy::write_atomic;
use crate::progress::{bar, check_interrupt, install_ctrlc};

/// A way to produce the morph: no optimisation, or a gradient method with its equation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum MorphMethod {
    /// The initial morph (ODE sample from the blended start), not optimised.
    None,
    AdjointDeis {
        order: usize,
        sde: bool,
    },
    Discrete {
        sde: bool,
    },
    Tape {
        sde: bool,
    },
}

impl MorphMethod {
    /// Every method with its `--methods` name and the name the tables use.
    pub const ALL: [(MorphMethod, &'static str, &'static str); 9] = {
        use MorphMethod::*;
        [
            (None, "none", "no optimisation"),
            (
                AdjointDeis {
                    order: 1,
                    sde: false,
                },
                "adjoint_deis_1",
                "AdjointDEIS-1 (ODE)",
            ),
            (
                AdjointDeis {
                    order: 1,
                    sde: true,
                },
                "adjoint_deis_1_sde",
                "AdjointDEIS-1 (SDE)",
            ),
            (
                AdjointDeis {
                    order: 2,
                    sde: false,
                },
                "adjoint_deis_2m",
                "AdjointDEIS-2M (ODE)",
            ),
            (
                AdjointDeis {
                    order: 2,
                    sde: true,
                },
                "adjoint_deis_2m_sde",
                "AdjointDEIS-2M (SDE)",
            ),
            (
                Discrete { sde: false },
                "discrete",
                "discrete adjoint (ODE)",
            ),
            (
                Discrete { sde: true },
                "discrete_sde",
                "discrete adjoint (SDE)",
            ),
            (Tape { sde: false }, "tape", "full tape (ODE)"),
            (Tape { sde: true }, "tape_sde", "full tape (SDE)"),
        ]
    };

    fn names() -> String {
        Self::ALL.map(|m| m.1).join(", ")
    }

    /// The evaluation's default: the paper's comparison.
    pub const DEFAULT: &'static str =
        "none,adjoint_deis_1,adjoint_deis_1_sde,adjoint_deis_2m,discrete";

    pub fn parse(name: &str) -> Result<MorphMethod, String> {
        Self::ALL
            .iter()
            .find(|m| m.1 == name.trim())
            .map(|m| m.0)
            .ok_or_else(|| {
                format!(
                    "--methods: `{}` is not a method; the methods are: {}",
                    name.trim(),
                    Self::names()
                )
            })
    }

    pub fn parse_list(list: &str) -> Result<Vec<MorphMethod>, String> {
        let mut out: Vec<MorphMethod> = Vec::new();
        for name in list.split(',').filter(|s| !s.trim().is_empty()) {
            let m = Self::parse(name)?;
            if out.contains(&m) {
                return Err(format!("--methods: `{}` is listed twice", name.trim()));
            }
            out.push(m);
        }
        if out.is_empty() {
            return Err(format!(
                "--methods is empty; the methods are: {}",
                Self::names()
            ));
        }
        Ok(out)
    }

    fn entry(self) -> &'static (MorphMethod, &'static str, &'static str) {
        Self::ALL
            .iter()
            .find(|m| m.0 == self)
            .expect("every method is in ALL")
    }

    pub fn name(self) -> &'static str {
        self.entry().1
    }

    /// How the tables name it.
    pub fn label(self) -> &'static str {
        self.entry().2
    }

    fn sde(self) -> bool {
        match self {
            MorphMethod::None => false,
            MorphMethod::AdjointDeis { sde, .. }
            | MorphMethod::Discrete { sde }
            | MorphMethod::Tape { sde } => sde,
        }
    }

    fn gradient_spec(self, adjoint_steps: Option<usize>) -> Option<GradientSpec> {
        let (method, order) = match self {
            MorphMethod::None => return None,
            MorphMethod::AdjointDeis { order, .. } => (GradMethod::AdjointDeis, Some(order)),
            MorphMethod::Discrete { .. } => (GradMethod::Discrete, None),
            MorphMethod::Tape { .. } => (GradMethod::Tape, None),
        };
        Some(GradientSpec {
            method,
            order,
            steps: if method == GradMethod::AdjointDeis {
                adjoint_steps
            } else {
                None
            },
            states: States::Record,
            checkpoints: None,
            wrt: vec![WrtKey::XT, WrtKey::Cond],
        })
    }
}

/// The optimiser of x_T and z.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Optimizer {
    Sgd,
    Adam,
}

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
    pub models: PathBuf,
    pub out: PathBuf,
    pub pairs: usize,
    pub kind: PairKind,
    pub methods: Vec<MorphMethod>,
    /// Optimisation iterations K.
    pub iters: usize,
    /// Sampler steps N (DDIM for the ODE, SDE-DPM-Solver++1 for the SDE, logsnr grid).
    pub steps: usize,
    pub optimizer: Optimizer,
    pub lr: f64,
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
            models: crate::digits::nets::default_models_dir(),
            out: PathBuf::from("adeis-out/morph"),
            pairs: 1,
            kind: PairKind::DifferentClass,
            methods: MorphMethod::parse_list(MorphMethod::DEFAULT).unwrap(),
            iters: 50,
            steps: 20,
            optimizer: Optimizer::Adam,
            lr: 0.05,
            seed: 0,
            adjoint_steps: None,
            max_pair_images: 16,
            verbose: true,
        }
    }
}

impl MorphOptions {
    pub fn validate(&self) -> Result<(), String> {
        if self.pairs == 0 {
            return Err("--pairs 0: at least one pair".into());
        }
        if self.steps == 0 {
            return Err("--steps 0: the sampler needs at least one step".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("--lr {}: a positive learning rate", self.lr));
        }
        if self.adjoint_steps == Some(0) {
            return Err("--adjoint-steps 0: at least one step".into());
        }
        if let PairKind::Classes(a, b) = self.kind {
            if a > 9 || b > 9 {
                return Err(format!("--digits {a},{b}: digits are 0 to 9"));
            }
        }
        Ok(())
    }
}

/// The verification threshold: accept when the feature distance is below `threshold`.
#[derive(Clone, Debug, Serialize)]
pub struct Verifier {
    pub threshold: f64,
    /// False-match rate on the impostor pairs at this threshold (target 0.1%).
    pub fmr: f64,
    /// False non-match rate on the genuine pairs.
    pub fnmr: f64,
    pub genuine_pairs: usize,
    pub impostor_pairs: usize,
}

fn cosine_distance(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    1.0 - dot / ((na + 1e-12) * (nb + 1e-12))
}

/// Sets the threshold at a false-match rate of at most `fmr` on all impostor pairs (different
/// class) of the held-out digits; genuine pairs are the same-class pairs.
pub fn calibrate(features: &[Vec<f64>], labels: &[usize], fmr: f64) -> Verifier {
    let (mut genuine, mut impostor) = (Vec::new(), Vec::new());
    for i in 0..features.len() {
        for j in i + 1..features.len() {
            let d = cosine_distance(&features[i], &features[j]);
            if labels[i] == labels[j] {
                genuine.push(d);
            } else {
                impostor.push(d);
            }
        }
    }
    impostor.sort_by(f64::total_cmp);
    // The k-th smallest impostor distance: strictly fewer than k impostors lie below it.
    let k = (fmr * impostor.len() as f64).floor() as usize;
    let threshold = impostor[k.min(impostor.len() - 1)];
    let below = |v: &[f64]| v.iter().filter(|d| **d < threshold).count() as f64;
    Verifier {
        threshold,
        fmr: below(&impostor) / impostor.len() as f64,
        fnmr: 1.0 - below(&genuine) / genuine.len().max(1) as f64,
        genuine_pairs: genuine.len(),
        impostor_pairs: impostor.len(),
    }
}

/// The chosen pairs (indices into the held-out digits).
pub fn choose_pairs(held: &Digits, n: usize, kind: PairKind, seed: u64) -> Vec<(usize, usize)> {
    let mut rng = SplitMix(seed ^ 0x9A12);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let (i, j) = match kind {
            PairKind::Classes(a, b) => {
                let (ca, cb) = (held.of_class(a), held.of_class(b));
                (ca[rng.below(ca.len())], cb[rng.below(cb.len())])
            }
            _ => (rng.below(held.len()), rng.below(held.len())),
        };
        let same = held.labels[i] == held.labels[j];
        let ok = i != j
            && match kind {
                PairKind::DifferentClass => !same,
                PairKind::SameClass => same,
                PairKind::Classes(..) => true,
            };
        if ok {
            out.push((i, j));
        }
    }
    out
}

/// Spherical interpolation of each row pair at 1/2 (the blend of two Gaussian noises that
/// keeps their norm statistics).
pub fn slerp_half(a: &[f64], b: &[f64], dim: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(a.len());
    for (ra, rb) in a.chunks_exact(dim).zip(b.chunks_exact(dim)) {
        let cos = (1.0 - cosine_distance(ra, rb)).clamp(-1.0, 1.0);
        let th = cos.acos();
        if th.abs() < 1e-8 {
            out.extend(ra.iter().zip(rb).map(|(x, y)| 0.5 * (x + y)));
        } else {
            let w = (0.5 * th).sin() / th.sin();
            out.extend(ra.iter().zip(rb).map(|(x, y)| w * (x + y)));
        }
    }
    out
}

/// Adam (or plain SGD) on a flat parameter vector (x_T or z, host-side: they are small).
pub struct Step {
    kind: Optimizer,
    lr: f64,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Step {
    pub fn new(kind: Optimizer, lr: f64, n: usize) -> Step {
        Step {
            kind,
            lr,
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }

    /// One step of `p` along the gradient `g`.
    pub fn apply(&mut self, p: &mut [f64], g: &[f64]) {
        match self.kind {
            Optimizer::Sgd => p.iter_mut().zip(g).for_each(|(p, g)| *p -= self.lr * g),
            Optimizer::Adam => {
                let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
                self.t += 1;
                let (c1, c2) = (1.0 - b1.powi(self.t), 1.0 - b2.powi(self.t));
                for i in 0..p.len() {
                    self.m[i] = b1 * self.m[i] + (1.0 - b1) * g[i];
                    self.v[i] = b2 * self.v[i] + (1.0 - b2) * g[i] * g[i];
                    p[i] -= self.lr * (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + eps);
                }
            }
        }
    }
}

/// One pair's outcome under one method.
#[derive(Clone, Debug, Serialize)]
pub struct PairResult {
    pub loss_initial: f64,
    pub loss_final: f64,
    pub d_a: f64,
    pub d_b: f64,
    pub accepted: bool,
    pub morph: Vec<f64>,
}

/// One method over all pairs.
#[derive(Clone, Debug, Serialize)]
pub struct MethodResult {
    pub method: String,
    pub label: String,
    pub mmpmr: f64,
    pub mean_loss_initial: f64,
    pub mean_loss_final: f64,
    /// Forward model evaluations per morph (encoding included), and VJPs.
    pub nfe_per_morph: usize,
    pub vjps_per_morph: usize,
    /// Wall time of the method over all pairs (one batch) and per morph.
    pub seconds: f64,
    pub seconds_per_morph: f64,
    /// Mean identity loss over the pairs after each iteration (index 0: the start).
    pub loss_curve: Vec<f64>,
    /// Cosine similarity of the method's first gradient (x_T and z together) with the exact
    /// gradient of the sampler that ran (the discrete adjoint) at the same point: how well the
    /// method's gradient points where the loss goes down.
    pub grad_cosine: Option<f64>,
    /// |gradient| / |exact gradient| at the same point.
    pub grad_norm_ratio: Option<f64>,
    pub pairs: Vec<PairResult>,
}

/// Everything `adeis morph` measured.
#[derive(Clone, Debug, Serialize)]
pub struct MorphReport {
    pub pairs: Vec<(usize, usize)>,
    pub classes: Vec<(usize, usize)>,
    pub iters: usize,
    pub steps: usize,
    pub optimizer: Optimizer,
    pub lr: f64,
    pub seed: u64,
    pub adjoint_steps: Option<usize>,
    pub verifier: Verifier,
    /// Mean absolute pixel error of decoding the encoded originals (DDIM inversion round trip).
    pub reconstruction_error: f64,
    pub encode_nfe_per_morph: usize,
    /// The unoptimised morph of each pair (ODE sample from the blended start).
    pub initial_morphs: Vec<Vec<f64>>,
    pub methods: Vec<MethodResult>,
    pub outputs: Vec<String>,
}

/// The identity loss per pair and the two distances, from features.
fn identity_terms(v: &[f64], va: &[f64], vb: &[f64]) -> (f64, f64, f64) {
    let (da, db) = (cosine_distance(v, va), cosine_distance(v, vb));
    (da + db + (da - db).abs(), da, db)
}

struct Problem<'a> {
    models: &'a DigitsModels,
    schedule: Schedule,
    ode: Plan,
    sde: Plan,
    v_a: Batch<f32, Cpu>,
    v_b: Batch<f32, Cpu>,
    /// v_a and v_b on the host, for the per-pair scores.
    v_host: (Vec<f64>, Vec<f64>),
    x_init: Vec<f64>,
    z_init: Vec<f64>,
    verifier: Verifier,
    batch: usize,
    seed: u64,
}

impl Problem<'_> {
    fn features(&self, x0: &Batch<f32, Cpu>) -> Vec<Vec<f64>> {
        to_f64(&self.models.features(x0))
            .chunks_exact(FEATURES)
            .map(|r| r.to_vec())
            .collect()
    }

    /// Per-pair (loss, d_a, d_b) of a batch of morphs.
    fn score(&self, x0: &Batch<f32, Cpu>) -> Vec<(f64, f64, f64)> {
        let (va, vb) = &self.v_host;
        self.features(x0)
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let r = i * FEATURES..(i + 1) * FEATURES;
                identity_terms(v, &va[r.clone()], &vb[r])
            })
            .collect()
    }

    fn plan(&self, sde: bool) -> &Plan {
        if sde {
            &self.sde
        } else {
            &self.ode
        }
    }

    fn sample(&self, x: &[f64], z: &[f64], sde: bool) -> Result<(Batch<f32, Cpu>, usize), String> {
        let dev = &self.models.dev;
        let (xt, zt) = (
            from_f64(dev, x, self.batch, PIXELS),
            from_f64(dev, z, self.batch, COND_DIM),
        );
        let out = sample(
            self.plan(sde),
            &self.schedule,
            &ModelFn::new(&self.models.denoiser),
            &xt,
            Some(&zt),
            &NoiseSource::Seeded(self.seed),
            false,
        )
        .map_err(|e| e.to_string())?;
        Ok((out.x, out.nfe))
    }

    fn run(
        &self,
        method: MorphMethod,
        opts: &MorphOptions,
        pb: &indicatif::ProgressBar,
    ) -> Result<MethodResult, String> {
        let start = Instant::now();
        let sde = method.sde();
        let (mut x, mut z) = (self.x_init.clone(), self.z_init.clone());
        let (x0, nfe0) = self.sample(&x, &z, sde)?;
        let initial = self.score(&x0);
        let mean = |s: &[(f64, f64, f64)]| s.iter().map(|r| r.0).sum::<f64>() / s.len() as f64;
        let mut curve = vec![mean(&initial)];
        let (mut nfe, mut vjps) = (nfe0, 0);
        let (mut grad_cosine, mut grad_norm_ratio) = (None, None);
        if let Some(spec) = method.gradient_spec(opts.adjoint_steps) {
            let dev = &self.models.dev;
            let (mut step_x, mut step_z) = (
                Step::new(opts.optimizer, opts.lr, x.len()),
                Step::new(opts.optimizer, opts.lr, z.len()),
            );
            for k in 0..opts.iters {
                check_interrupt(&format!("the {} morphs", method.name()))?;
                let (xt, zt) = (
                    from_f64::<f32, Cpu>(dev, &x, self.batch, PIXELS),
                    from_f64::<f32, Cpu>(dev, &z, self.batch, COND_DIM),
                );
                let g = self
                    .gradient(&spec, sde, &xt, &zt)
                    .map_err(|e| format!("{} at iteration {k}: {e}", method.name()))?;
                let flat = |g: &adeis_runtime::adjoint::Gradient<f32, Cpu>| {
                    let mut v = to_f64(&g.dx_t);
                    v.extend(to_f64(g.dz.as_ref().expect("wrt cond")));
                    v
                };
                if k == 0 {
                    // The discrete adjoint is the reference itself: no second gradient for it.
                    let a = flat(&g);
                    let b = if method == (MorphMethod::Discrete { sde }) {
                        a.clone()
                    } else {
                        let exact = MorphMethod::Discrete { sde }.gradient_spec(None).unwrap();
                        flat(&self.gradient(&exact, sde, &xt, &zt)?)
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
                step_x.apply(&mut x, &to_f64(&g.dx_t));
                step_z.apply(&mut z, &to_f64(g.dz.as_ref().expect("wrt cond")));
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
            self.sample(&x, &z, sde)?
        };
        nfe += n;
        let fin = self.score(&x0);
        if method != MorphMethod::None {
            curve.push(mean(&fin));
        }
        let morphs = rows(&x0);
        let pairs: Vec<PairResult> = (0..self.batch)
            .map(|i| PairResult {
                loss_initial: initial[i].0,
                loss_final: fin[i].0,
                d_a: fin[i].1,
                d_b: fin[i].2,
                accepted: fin[i].1 < self.verifier.threshold && fin[i].2 < self.verifier.threshold,
                morph: morphs[i].clone(),
            })
            .collect();
        let secs = start.elapsed().as_secs_f64();
        Ok(MethodResult {
            method: method.name().into(),
            label: method.label().into(),
            mmpmr: pairs.iter().filter(|p| p.accepted).count() as f64 / pairs.len() as f64,
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

    fn gradient(
        &self,
        spec: &GradientSpec,
        sde: bool,
        xt: &Batch<f32, Cpu>,
        zt: &Batch<f32, Cpu>,
    ) -> Result<adeis_runtime::adjoint::Gradient<f32, Cpu>, String> {
        compute_gradient(
            self.plan(sde),
            &self.schedule,
            &ModelFn::new(&self.models.denoiser),
            xt,
            Some(zt),
            &NoiseSource::Seeded(self.seed),
            spec,
            sde,
            |x0| {
                identity_loss(x0, |v| self.models.features_taped(v), &self.v_a, &self.v_b)
                    .map(|l| l.grad)
            },
        )
        .map_err(|e| e.to_string())
    }
}

/// Runs the experiment and writes its outputs into `opts.out`.
pub fn run(opts: &MorphOptions) -> Result<MorphReport, String> {
    opts.validate()?;
    install_ctrlc();
    let models = DigitsModels::load(&opts.models)?;
    std::fs::create_dir_all(&opts.out).map_err(|e| format!("--out {}: {e}", opts.out.display()))?;
    let dev = models.dev.clone();
    let (_, held) = split();
    let schedule = crate::digits::schedule()?;
    let ode_spec = sampler(serde_json::json!({"method": "ddim", "steps": opts.steps}))?;
    let sde_spec = sampler(
        serde_json::json!({"method": "sde_dpm_solver_pp", "order": 1, "steps": opts.steps}),
    )?;
    let plan = |s: &SamplerSpec| {
        build_plan(&schedule, s).map_err(|e| format!("sampler.{}: {}", e.field, e.message))
    };
    let (ode, sde) = (plan(&ode_spec)?, plan(&sde_spec)?);

    // Verification threshold on the held-out digits.
    let flat: Vec<f64> = held.images.iter().flatten().copied().collect();
    let feats = to_f64(&models.features(&from_f64(&dev, &flat, held.len(), PIXELS)));
    let feats: Vec<Vec<f64>> = feats.chunks_exact(FEATURES).map(|r| r.to_vec()).collect();
    let verifier = calibrate(&feats, &held.labels, 1e-3);

    // Pairs, their features and their encodings.
    let pairs = choose_pairs(&held, opts.pairs, opts.kind, opts.seed);
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
    let (za, zb) = (models.cond(&cls_a), models.cond(&cls_b));
    let mut reversed = ode.grid.clone();
    reversed.reverse();
    let inverse = build_plan_on(&schedule, &ode_spec, reversed);
    let encode = |img: &[f64], z: &Batch<f32, Cpu>| {
        sample(
            &inverse,
            &schedule,
            &ModelFn::new(&models.denoiser),
            &from_f64(&dev, img, b, PIXELS),
            Some(z),
            &NoiseSource::Seeded(0),
            false,
        )
        .map_err(|e| format!("encoding: {e}"))
    };
    let (enc_a, enc_b) = (encode(&img_a, &za)?, encode(&img_b, &zb)?);
    let (xa, xb) = (to_f64(&enc_a.x), to_f64(&enc_b.x));
    let (v_a, v_b) = (
        models.features(&from_f64(&dev, &img_a, b, PIXELS)),
        models.features(&from_f64(&dev, &img_b, b, PIXELS)),
    );
    let problem = Problem {
        models: &models,
        schedule: schedule.clone(),
        ode,
        sde,
        v_host: (to_f64(&v_a), to_f64(&v_b)),
        v_a,
        v_b,
        x_init: slerp_half(&xa, &xb, PIXELS),
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
    let (dec_a, _) = problem.sample(&xa, &to_f64(&za), false)?;
    let reconstruction_error = to_f64(&dec_a)
        .iter()
        .zip(&img_a)
        .map(|(p, q)| (p - q).abs())
        .sum::<f64>()
        / img_a.len() as f64;
    let encode_nfe = enc_a.nfe + enc_b.nfe;
    let (initial, _) = problem.sample(&problem.x_init, &problem.z_init, false)?;

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
        let mut r = problem.run(*m, opts, &pb)?;
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
        initial_morphs: rows(&initial),
        methods,
        outputs: vec![],
    };
    write_outputs(&mut report, &img_a, &img_b, opts)?;
    Ok(report)
}

fn write_outputs(
    report: &mut MorphReport,
    img_a: &[f64],
    img_b: &[f64],
    opts: &MorphOptions,
) -> Result<(), String> {
    let out = |name: &str| opts.out.join(name);
    let mut written: Vec<PathBuf> = Vec::new();
    // One grid per pair: a, b, the initial morph, then each optimising method's morph; and all
    // of them as the rows of pairs.png.
    let mut all_rows = Vec::new();
    for (i, (ca, cb)) in report.classes.iter().enumerate().take(opts.max_pair_images) {
        let mut row = vec![
            img_a[i * PIXELS..(i + 1) * PIXELS].to_vec(),
            img_b[i * PIXELS..(i + 1) * PIXELS].to_vec(),
            report.initial_morphs[i].clone(),
        ];
        row.extend(
            report
                .methods
                .iter()
                .filter(|m| m.method != "none")
                .map(|m| m.pairs[i].morph.clone()),
        );
        let p = out(&format!("pair_{i:03}_{ca}_{cb}.png"));
        digit_grid(std::slice::from_ref(&row), SIDE, 12, 6).save_png(&p)?;
        written.push(p);
        all_rows.push(row);
    }
    let p = out("pairs.png");
    digit_grid(&all_rows, SIDE, 8, 4).save_png(&p)?;
    written.push(p);
    let curves: Vec<Vec<f64>> = report
        .methods
        .iter()
        .map(|m| m.loss_curve.clone())
        .collect();
    let p = out("loss_curve.png");
    line_plot(&curves, None, 640, 360).save_png(&p)?;
    written.push(p);
    let p = out("report.md");
    written.push(p.clone());
    let p_json = out("report.json");
    written.push(p_json.clone());
    report.outputs = written.iter().map(|p| p.display().to_string()).collect();
    write_atomic(&p, markdown(report).as_bytes())?;
    write_atomic(
        &p_json,
        serde_json::to_string_pretty(report).unwrap().as_bytes(),
    )?;
    Ok(())
}

/// The evaluation table (markdown).
pub fn table(r: &MorphReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| method | MMPMR | identity loss (start -> end) | gradient cosine | NFE / morph | VJPs / morph | seconds (batch of {}) | seconds / morph |",
        r.pairs.len()
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for m in &r.methods {
        let _ = writeln!(
            s,
            "| {} | {:.1}% | {:.3} -> {:.3} | {} | {} | {} | {:.1} | {:.3} |",
            m.label,
            100.0 * m.mmpmr,
            m.mean_loss_initial,
            m.mean_loss_final,
            m.grad_cosine.map_or("-".to_string(), |c| format!("{c:.3}")),
            m.nfe_per_morph,
            m.vjps_per_morph,
            m.seconds,
            m.seconds_per_morph
        );
    }
    s
}

fn markdown(r: &MorphReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Morphing report\n");
    let _ = writeln!(
        s,
        "{} pairs of held-out digits; {} iterations of {:?} (lr {}), {} sampler steps (DDIM for the ODE, SDE-DPM-Solver++1 for the SDE), AdjointDEIS on {}, seed {}.\n",
        r.pairs.len(), r.iters, r.optimizer, r.lr, r.steps,
        r.adjoint_steps.map_or("the sampling grid".to_string(), |m| format!("its own grid of {m} steps")),
        r.seed
    );
    let v = &r.verifier;
    let _ = writeln!(
        s,
        "Verification threshold: cosine distance < {:.4} on the classifier's features, set at FMR {:.3}% on {} impostor pairs of held-out digits (FNMR {:.2}% on {} genuine pairs). MMPMR: the fraction of morphs accepted as both digits of their pair.\n",
        v.threshold, 100.0 * v.fmr, v.impostor_pairs, 100.0 * v.fnmr, v.genuine_pairs
    );
    s.push_str(&table(r));
    let _ = writeln!(
        s,
        "\nNFE per morph includes the {} evaluations of the two DDIM inversions; the pairs run as one batch, so seconds per morph is the batch's time divided by the pairs. Encoding round trip (decode x_T^a): mean absolute pixel error {:.4} (pixels in [-1, 1]).\n",
        r.encode_nfe_per_morph, r.reconstruction_error
    );
    let _ = writeln!(s, "## Pairs\n");
    let mut head = "| pair | digits |".to_string();
    for m in &r.methods {
        let _ = write!(head, " {} d_a / d_b |", m.method);
    }
    let _ = writeln!(s, "{head}");
    let _ = writeln!(s, "|---|---|{}", "---|".repeat(r.methods.len()));
    for (i, (ca, cb)) in r.classes.iter().enumerate() {
        let _ = write!(s, "| {i} | {ca}, {cb} |");
        for m in &r.methods {
            let p = &m.pairs[i];
            let _ = write!(
                s,
                " {:.3} / {:.3}{} |",
                p.d_a,
                p.d_b,
                if p.accepted { " (accepted)" } else { "" }
            );
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "\n## Files\n");
    let _ = writeln!(
        s,
        "- `pair_NNN_a_b.png`: digit a, digit b, the initial (unoptimised) morph, then the optimised morph of each method in the table's order; `pairs.png`: all of them, one pair per row\n- `loss_curve.png`: mean identity loss against the iteration, one line per method, numbered in the table's order (colours: {})\n- `report.json`: everything here, with every morph's pixels",
        r.methods.iter().enumerate().map(|(k, m)| format!("{} {}", m.method, colour_name(k))).collect::<Vec<_>>().join(", ")
    );
    s
}

fn colour_name(k: usize) -> &'static str {
    const NAMES: [&str; 8] = [
        "blue",
        "vermillion",
        "green",
        "pink",
        "orange",
        "sky blue",
        "yellow",
        "gray",
    ];
    debug_assert_eq!(NAMES.len(), PALETTE.len());
    NAMES[k % NAMES.len()]
}

/// The output folder's main files (for messages).
pub fn describe(out: &Path) -> String {
    format!(
        "{}/report.md (the table), pair_*.png (a, b, the initial morph, then each method's optimised morph), loss_curve.png",
        out.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_keeps_the_false_match_rate_at_most_the_target() {
        // two tight classes far apart, plus one impostor pair that is close
        let mut feats = vec![];
        let mut labels = vec![];
        for i in 0..40 {
            let e = 0.01 * i as f64;
            feats.push(vec![1.0, e, 0.0]);
            labels.push(0);
            feats.push(vec![0.0, e, 1.0]);
            labels.push(1);
        }
        feats.push(vec![1.0, 0.0, 0.05]);
        labels.push(1);
        let v = calibrate(&feats, &labels, 1e-3);
        assert!(v.fmr <= 1e-3, "{v:?}");
        assert_eq!(v.impostor_pairs, 40 * 40 + 40);
        // the close impostor lies below ~0.002: the threshold sits at or below it
        assert!(v.threshold < 0.01, "{v:?}");
        let loose = calibrate(&feats, &labels, 0.5);
        assert!(loose.fmr <= 0.5 && loose.fnmr < v.fnmr + 1e-12);
    }

    #[test]
    fn slerp_of_orthogonal_unit_vectors_stays_on_the_sphere() {
        let m = slerp_half(&[1.0, 0.0, 2.0, 0.0], &[0.0, 1.0, 2.0, 0.0], 2);
        let s = 0.5f64.sqrt();
        assert!((m[0] - s).abs() < 1e-12 && (m[1] - s).abs() < 1e-12);
        // identical rows come back unchanged (up to the norm guard)
        assert!((m[2] - 2.0).abs() < 1e-9 && m[3] == 0.0, "{m:?}");
    }

    #[test]
    fn method_names_round_trip() {
        for (_, n, _) in MorphMethod::ALL {
            assert_eq!(MorphMethod::parse(n).unwrap().name(), n);
        }
        let e = MorphMethod::parse("adjoint").unwrap_err();
        assert!(e.contains("adjoint_deis_1"), "{e}");
    }

    #[test]
    fn adam_and_sgd_descend_a_quadratic() {
        for kind in [Optimizer::Sgd, Optimizer::Adam] {
            let mut p = vec![3.0, -2.0];
            let mut s = Step::new(kind, 0.1, 2);
            for _ in 0..200 {
                let g: Vec<f64> = p.iter().map(|x| 2.0 * x).collect();
                s.apply(&mut p, &g);
            }
            assert!(p.iter().all(|x| x.abs() < 0.05), "{kind:?}: {p:?}");
        }
    }
}

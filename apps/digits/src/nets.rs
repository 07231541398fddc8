//! The digits networks: a conditional MLP denoiser (eps prediction on the VP linear schedule,
//! sinusoidal time features, a learned 16-dim embedding per class plus a "no class" row for
//! classifier-free guidance) and a classifier MLP whose penultimate activations are the
//! "identity" features of the morphing experiment. f32 on the CPU, weights in safetensors.

use std::path::Path;

use adeis_compiler::Prediction;
use adeis_runtime::dfdx::nn::tensor_collection::{RecursiveWalker, TensorCollection};
use adeis_runtime::dfdx::prelude::*;
use adeis_runtime::mlp::{MlpDenoiser, TimeFeatures};
use adeis_runtime::nn::{Dense, Gelu};
use adeis_runtime::tape::Taped;
use adeis_runtime::{from_f64, Rows, State};

use crate::data::{CLASSES, PIXELS};
use crate::Error;

/// Width of the conditioning z (one learned embedding per class).
pub const COND_DIM: usize = 16;
/// The embedding row that means "no class" (classifier-free guidance, unconditional sampling).
pub const NULL_CLASS: usize = CLASSES;
/// Sinusoidal time frequencies exp(linspace(0, ln MAX_FREQ, FREQS)).
pub const FREQS: usize = 16;
/// The largest time frequency.
pub const MAX_FREQ: f64 = 500.0;
/// The hidden layers' width.
pub const HIDDEN: usize = 256;
/// The denoiser's input: [x (64), z (16), sin/cos time features (32)].
pub const NET_IN: usize = PIXELS + COND_DIM + 2 * FREQS;
/// Width of the identity features (the classifier's penultimate layer).
pub const FEATURES: usize = 64;

/// One-hot class (10 digits + "no class") to its embedding z.
pub type EmbeddingNet = Linear<{ CLASSES + 1 }, COND_DIM>;
/// The denoiser and the classifier use adeis' `Dense` and `Gelu` (dfdx's `Linear` and
/// `FastGeLU` with CPU kernels: the same tensors, names and function); the embedding, applied
/// to one-hot rows once per batch, keeps dfdx's `Linear`.
pub type DenoiserNet = (
    Dense<NET_IN, HIDDEN>,
    Gelu,
    Residual<(Dense<HIDDEN, HIDDEN>, Gelu)>,
    Residual<(Dense<HIDDEN, HIDDEN>, Gelu)>,
    Dense<HIDDEN, PIXELS>,
);
/// What training optimises and the denoiser file stores: the embedding and the network.
pub type DenoiserFile = (EmbeddingNet, DenoiserNet);
/// The identity features are the penultimate layer's output: signed, like a face-recognition
/// embedding. The head is a cosine classifier (NormFace): logits = s W (v / |v|) + b, so that
/// training separates the classes by angle and the cosine distance the verifier and the
/// identity loss use is the quantity the classifier was trained on.
pub type FeatureNet = (
    Dense<PIXELS, 128>,
    Gelu,
    Dense<128, 128>,
    Gelu,
    Dense<128, FEATURES>,
);
/// The classifier: the feature network and its cosine head.
pub type ClassifierNet = (FeatureNet, Dense<FEATURES, CLASSES>);
/// The scale s of the cosine classifier.
pub const COSINE_SCALE: f32 = 16.0;

/// Class logits of the cosine classifier, on any tape.
pub fn classifier_logits<T: Tape<f32, Cpu> + Merge<T> + Default>(
    net: &Built<ClassifierNet>,
    x: Tensor<(usize, Const<PIXELS>), f32, Cpu, T>,
) -> Tensor<(usize, Const<CLASSES>), f32, Cpu, T> {
    let v = net.0.forward(x);
    let shape = *v.shape();
    let norm = (v.retaped::<T>().square().sum::<(usize,), Axis<1>>() + 1e-12).sqrt();
    let unit = v / norm.broadcast_like(&shape);
    net.1.forward(unit * COSINE_SCALE)
}

/// A network built on the CPU in f32.
pub type Built<M> = <M as BuildOnDevice<Cpu, f32>>::Built;
/// The digits denoiser: the network on [x, z, time features] rows.
pub type DigitsDenoiser = MlpDenoiser<Built<DenoiserNet>, NET_IN, PIXELS>;

/// The denoiser's file name (with the class embedding).
pub const DENOISER_FILE: &str = "denoiser.safetensors";
/// The classifier's file name.
pub const CLASSIFIER_FILE: &str = "classifier.safetensors";

/// The committed weights (trained by `adeis train`, see models/digits/README.md), compiled
/// into the program so that it finds them wherever it runs.
static COMMITTED_DENOISER: &[u8] = include_bytes!("../../../models/digits/denoiser.safetensors");
static COMMITTED_CLASSIFIER: &[u8] =
    include_bytes!("../../../models/digits/classifier.safetensors");

/// The denoiser's time features.
pub fn time_features() -> TimeFeatures {
    TimeFeatures::new(FREQS, MAX_FREQ)
}

pub use adeis_app_common::training::one_hot;

/// The trained models: denoiser (with its class embedding) and classifier.
pub struct DigitsModels {
    /// The denoiser.
    pub denoiser: DigitsDenoiser,
    /// The class embedding (one-hot class to z).
    pub embedding: Built<EmbeddingNet>,
    /// The classifier.
    pub classifier: Built<ClassifierNet>,
    /// The CPU device.
    pub dev: Cpu,
}

/// Loads safetensors bytes into a module; `what` names them in errors.
fn load_bytes<M: TensorCollection<f32, Cpu>>(
    m: &mut M,
    bytes: &[u8],
    what: &Path,
) -> Result<(), Error> {
    let mut tensors = ::safetensors::tensor::SafeTensors::deserialize(bytes).map_err(|e| {
        Error::file(
            what,
            format!(
                "cannot read the weights: {}",
                adeis_io::safetensors::explain(&e)
            ),
        )
    })?;
    M::iter_tensors(&mut RecursiveWalker {
        m: (m, String::new()),
        f: &mut tensors,
    })
    .map(|_| ())
    .map_err(|e| Error::file(what, format!("cannot load the weights: {}", load_error(&e))))
}

/// dfdx's loading error in words.
fn load_error(e: &adeis_runtime::dfdx::tensor::safetensors::Error) -> String {
    use adeis_runtime::dfdx::tensor::safetensors::Error as E;
    match e {
        E::SafeTensorError(s) => adeis_io::safetensors::explain(s),
        E::MismatchedDimension((want, got)) => format!(
            "a tensor has shape {got:?} where this network has {want:?} (weights of another architecture)"
        ),
        E::IoError(io) => io.to_string(),
    }
}

fn load_into<M: TensorCollection<f32, Cpu>>(m: &mut M, path: &Path) -> Result<(), Error> {
    if !path.exists() {
        return Err(Error::file(
            path,
            format!(
                "no such weights file (run `adeis train --out {}` to make it)",
                path.parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
    load_bytes(m, &bytes, path)
}

/// The denoiser file (embedding and network) in `dir`.
pub fn load_denoiser(dev: &Cpu, dir: &Path) -> Result<Built<DenoiserFile>, Error> {
    let mut file = dev.build_module::<DenoiserFile, f32>();
    load_into(&mut file, &dir.join(DENOISER_FILE))?;
    Ok(file)
}

/// The classifier in `dir`.
pub fn load_classifier(dev: &Cpu, dir: &Path) -> Result<Built<ClassifierNet>, Error> {
    let mut classifier = dev.build_module::<ClassifierNet, f32>();
    load_into(&mut classifier, &dir.join(CLASSIFIER_FILE))?;
    Ok(classifier)
}

impl DigitsModels {
    /// The models from a trained denoiser file (embedding and network) and classifier.
    pub fn from_parts(
        file: Built<DenoiserFile>,
        classifier: Built<ClassifierNet>,
        dev: Cpu,
    ) -> Self {
        let (embedding, net) = file;
        DigitsModels {
            denoiser: MlpDenoiser::new(net, PIXELS, COND_DIM, time_features(), Prediction::Eps),
            embedding,
            classifier,
            dev,
        }
    }

    /// The committed models, from the copy compiled into the program.
    pub fn committed() -> Result<Self, Error> {
        let dev = Cpu::default();
        let mut file = dev.build_module::<DenoiserFile, f32>();
        load_bytes(
            &mut file,
            COMMITTED_DENOISER,
            Path::new("the committed denoiser.safetensors"),
        )?;
        let mut classifier = dev.build_module::<ClassifierNet, f32>();
        load_bytes(
            &mut classifier,
            COMMITTED_CLASSIFIER,
            Path::new("the committed classifier.safetensors"),
        )?;
        Ok(Self::from_parts(file, classifier, dev))
    }

    /// The models in `dir`, or the committed ones.
    pub fn load_or_committed(dir: Option<&Path>) -> Result<Self, Error> {
        match dir {
            Some(d) => Self::load(d),
            None => Self::committed(),
        }
    }

    /// Loads `denoiser.safetensors` and `classifier.safetensors` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let dev = Cpu::default();
        Ok(Self::from_parts(
            load_denoiser(&dev, dir)?,
            load_classifier(&dev, dir)?,
            dev,
        ))
    }

    /// The conditioning z of each class (NULL_CLASS: no class), one row each.
    pub fn cond(&self, classes: &[usize]) -> State<f32, Cpu> {
        let w = CLASSES + 1;
        let oh = self.dev.tensor_from_vec(
            one_hot(classes, w),
            (classes.len(), Const::<{ CLASSES + 1 }>),
        );
        let z = self.embedding.forward(oh);
        State::from_rows(z.reshape_like(&(classes.len(), COND_DIM)))
    }

    /// Identity features of images on the tape (for losses).
    pub fn features_taped(&self, x: Taped<f32, Cpu>) -> Taped<f32, Cpu> {
        let b = x.shape().0;
        let x = x.reshape_like(&(b, Const::<PIXELS>));
        self.classifier.0.forward(x).reshape_like(&(b, FEATURES))
    }

    /// Identity features of images.
    pub fn features(&self, x: &State<f32, Cpu>) -> Rows<f32, Cpu> {
        let b = x.batch();
        let x = x.rows().clone().reshape_like(&(b, Const::<PIXELS>));
        self.classifier.0.forward(x).reshape_like(&(b, FEATURES))
    }

    /// Class logits of images on the tape.
    pub fn logits_taped(&self, x: Taped<f32, Cpu>) -> Taped<f32, Cpu> {
        let b = x.shape().0;
        let x = x.reshape_like(&(b, Const::<PIXELS>));
        classifier_logits(&self.classifier, x).reshape_like(&(b, CLASSES))
    }

    /// Predicted class of each image.
    pub fn classify(&self, images: &[Vec<f64>]) -> Vec<usize> {
        let b = images.len();
        let flat: Vec<f64> = images.iter().flatten().copied().collect();
        let x: State<f32, Cpu> = from_f64(&self.dev, &flat, b, PIXELS);
        let x = x.into_rows().reshape_like(&(b, Const::<PIXELS>));
        let logits = classifier_logits(&self.classifier, x).as_vec();
        logits
            .chunks_exact(CLASSES)
            .map(|row| {
                (0..CLASSES)
                    .max_by(|&i, &j| row[i].total_cmp(&row[j]))
                    .unwrap()
            })
            .collect()
    }
}

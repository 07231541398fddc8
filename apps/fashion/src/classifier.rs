//! The Fashion-MNIST classifier: four 3x3 convolutions (32, 64 at stride 2, 64 at stride 2,
//! 128 channels; each followed by GroupNorm and SiLU), global average pooling, a linear layer to
//! the 64 identity features, and a cosine head (NormFace, as the digits classifier): logits =
//! W (s v / |v|) + b, so that the cosine distance the verifier and the identity loss use is the
//! quantity training separated the classes by. The convolutions are adeis' CPU kernels on
//! dfdx's tape, so the features are differentiable with respect to the image.

use std::path::Path;

use adeis_runtime::dfdx::prelude::*;
use adeis_runtime::nn::{Activation, Conv2d, GroupNorm, Image, Linear, NnDevice, ParamGrads};
use adeis_runtime::tape::Taped;
use adeis_runtime::unet::ParamSource;

use crate::data::{CLASSES, SIDE};
use crate::params::{bytes_source, file_source, HostParams};
use crate::Error;

/// Width of the identity features.
pub const FEATURES: usize = 64;
/// The scale s of the cosine head.
pub const COSINE_SCALE: f32 = 16.0;
/// The classifier's file name.
pub const CLASSIFIER_FILE: &str = "classifier.safetensors";
/// The verification embedding's file name: the classifier's network trained with a CosFace
/// head (see [`Classifier::cosface_logits`]), whose features verify identities in the
/// morphing evaluation.
pub const VERIFIER_FILE: &str = "verifier.safetensors";
/// CosFace's scale s and additive cosine margin m (Wang et al. 2018's values for faces).
pub const COSFACE_SCALE: f32 = 30.0;
/// See [`COSFACE_SCALE`].
pub const COSFACE_MARGIN: f32 = 0.35;
/// (input channels, output channels, stride) of the convolutions.
const CONVS: [(usize, usize, usize); 4] = [(1, 32, 1), (32, 64, 2), (64, 64, 2), (64, 128, 1)];
const GROUPS: usize = 8;
const POOLED: usize = 128;

enum ParamRef {
    Vector(Tensor<(usize,), f32, Cpu>),
    Matrix(Tensor<(usize, usize), f32, Cpu>),
}

/// The classifier's layers and its parameters by name.
pub struct Classifier {
    convs: Vec<(Conv2d<f32, Cpu>, GroupNorm<f32, Cpu>)>,
    fc: Linear<f32, Cpu>,
    head: Linear<f32, Cpu>,
    params: Vec<(String, Vec<usize>, ParamRef)>,
    dev: Cpu,
}

impl Classifier {
    /// The classifier with parameters from `source` (names `conv{k}.weight`, `norm{k}.bias`,
    /// `fc.weight`, `head.weight`, ...).
    pub fn new(dev: &Cpu, source: &mut dyn ParamSource) -> Result<Classifier, Error> {
        let mut params = Vec::new();
        let mut take = |name: String, shape: Vec<usize>| -> Result<Vec<f32>, Error> {
            Ok(source
                .take(&name, &shape)?
                .into_iter()
                .map(|v| v as f32)
                .collect())
        };
        let mut matrix = |name: String, shape: Vec<usize>, rows: usize, cols: usize| {
            let t = dev.tensor_from_vec(take(name.clone(), shape.clone())?, (rows, cols));
            params.push((name, shape, ParamRef::Matrix(t.clone())));
            Ok::<_, Error>(t)
        };
        let mut weights = Vec::new();
        for (k, &(ci, co, _)) in CONVS.iter().enumerate() {
            weights.push(matrix(
                format!("conv{k}.weight"),
                vec![co, ci, 3, 3],
                co,
                ci * 9,
            )?);
        }
        let fc_w = matrix("fc.weight".into(), vec![FEATURES, POOLED], FEATURES, POOLED)?;
        let head_w = matrix(
            "head.weight".into(),
            vec![CLASSES, FEATURES],
            CLASSES,
            FEATURES,
        )?;
        let mut vector = |name: String, n: usize| {
            let t = dev.tensor_from_vec(take(name.clone(), vec![n])?, (n,));
            params.push((name, vec![n], ParamRef::Vector(t.clone())));
            Ok::<_, Error>(t)
        };
        let mut convs = Vec::new();
        for (k, (&(_, co, stride), w)) in CONVS.iter().zip(weights).enumerate() {
            let bias = vector(format!("conv{k}.bias"), co)?;
            let norm = GroupNorm {
                weight: vector(format!("norm{k}.weight"), co)?,
                bias: vector(format!("norm{k}.bias"), co)?,
                groups: GROUPS,
                eps: 1e-5,
            };
            convs.push((Conv2d::new(w, Some(bias), (3, 3), stride, [1; 4]), norm));
        }
        let fc = Linear::new(fc_w, Some(vector("fc.bias".into(), FEATURES)?));
        let head = Linear::new(head_w, Some(vector("head.bias".into(), CLASSES)?));
        Ok(Classifier {
            convs,
            fc,
            head,
            params,
            dev: dev.clone(),
        })
    }

    /// The classifier saved in `path` (safetensors).
    pub fn load(dev: &Cpu, path: &Path) -> Result<Classifier, Error> {
        let mut source = file_source(path)?;
        let c = Classifier::new(dev, &mut source)?;
        source.finish()?;
        Ok(c)
    }

    /// The classifier from safetensors bytes (compiled into the program) named `path`.
    pub fn from_bytes(dev: &Cpu, bytes: &[u8], path: &Path) -> Result<Classifier, Error> {
        let mut source = bytes_source(bytes, path)?;
        let c = Classifier::new(dev, &mut source)?;
        source.finish()?;
        Ok(c)
    }

    /// Every parameter on the host, in order.
    pub fn host_params(&self) -> HostParams {
        HostParams::of_named(
            self.params
                .iter()
                .map(|(n, s, t)| {
                    let v = match t {
                        ParamRef::Vector(t) => t.as_vec(),
                        ParamRef::Matrix(t) => t.as_vec(),
                    };
                    (n.clone(), s.clone(), v)
                })
                .collect(),
        )
    }

    /// The gradient of every parameter in `grads`, flat, in the order of [`Self::host_params`].
    pub fn flat_grads(&self, grads: &mut Gradients<f32, Cpu>) -> Vec<f64> {
        let mut out = Vec::new();
        for (_, _, t) in &self.params {
            let g = match t {
                ParamRef::Vector(t) => {
                    grads.try_alloc_for(t).expect("gradient allocation");
                    grads.get(t).as_vec()
                }
                ParamRef::Matrix(t) => {
                    grads.try_alloc_for(t).expect("gradient allocation");
                    grads.get(t).as_vec()
                }
            };
            out.extend(g.into_iter().map(|v| v as f64));
        }
        out
    }

    /// The identity features [batch, FEATURES] of images [batch, 1, 28, 28], on x's tape.
    pub fn features_image<T: Tape<f32, Cpu>>(
        &self,
        x: Image<f32, Cpu, T>,
        params: ParamGrads,
    ) -> Tensor<(usize, usize), f32, Cpu, T> {
        let mut h = x;
        for (conv, norm) in &self.convs {
            h = <Cpu as NnDevice<f32>>::conv2d(conv, h, params);
            h = <Cpu as NnDevice<f32>>::group_norm(norm, h, None, Activation::Silu, params);
        }
        let (b, c, hh, ww) = *h.shape();
        let pooled = h
            .reshape_like(&(b, c, hh * ww))
            .sum::<(usize, usize), Axis<2>>()
            / (hh * ww) as f32;
        self.fc.forward(pooled)
    }

    /// Class logits of the cosine head from features `v`.
    pub fn logits_of<T: Tape<f32, Cpu>>(
        &self,
        v: Tensor<(usize, usize), f32, Cpu, T>,
    ) -> Tensor<(usize, usize), f32, Cpu, T> {
        let shape = *v.shape();
        let norm = (v.retaped::<T>().square().sum::<(usize,), Axis<1>>() + 1e-12).sqrt();
        let unit = v / norm.broadcast_like::<_, Axis<1>>(&shape);
        self.head.forward(unit * COSINE_SCALE)
    }

    /// CosFace logits (Wang et al. 2018) of features `v` for training the verification
    /// embedding: s (cos theta_c - m [c = class]), theta_c the angle between the features and
    /// the head's row c, both normalised (the head's bias unused), so that training pulls
    /// each class within an angular margin of its own row and the cosine distance between
    /// features separates identities, not just classes' logits. `one_hot`: the classes.
    pub fn cosface_logits<T: Tape<f32, Cpu>>(
        &self,
        v: Tensor<(usize, usize), f32, Cpu, T>,
        one_hot: Tensor<(usize, usize), f32, Cpu>,
    ) -> Tensor<(usize, usize), f32, Cpu, T> {
        let shape = *v.shape();
        let norm = (v.retaped::<T>().square().sum::<(usize,), Axis<1>>() + 1e-12).sqrt();
        let unit = v / norm.broadcast_like::<_, Axis<1>>(&shape);
        // The head's weight on the same tape (its gradient lands under its id, where
        // flat_grads reads it).
        let w = self.head.weight().clone().retaped::<T>();
        let wshape = *w.shape();
        let wnorm = (w.retaped::<T>().square().sum::<(usize,), Axis<1>>() + 1e-12).sqrt();
        let rows = w / wnorm.broadcast_like::<_, Axis<1>>(&wshape);
        let cos = unit.matmul(rows.permute::<_, Axes2<1, 0>>());
        (cos - one_hot * COSFACE_MARGIN) * COSFACE_SCALE
    }

    fn image_of<T: Tape<f32, Cpu>>(
        &self,
        rows: Tensor<(usize, usize), f32, Cpu, T>,
    ) -> Image<f32, Cpu, T> {
        let b = rows.shape().0;
        rows.reshape_like(&(b, 1, SIDE, SIDE))
    }

    /// Identity features of image rows [batch, 784] on the tape (for the identity loss).
    pub fn features_taped(&self, x: Taped<f32, Cpu>) -> Taped<f32, Cpu> {
        self.features_image(self.image_of(x), ParamGrads::Skip)
    }

    /// Logits of image rows [batch, 784] on the tape (for guidance and rewards).
    pub fn logits_taped(&self, x: Taped<f32, Cpu>) -> Taped<f32, Cpu> {
        self.logits_of(self.features_taped(x))
    }

    /// The predicted class of each image (flat, 784 per image), in batches of 250 (memory).
    pub fn classify(&self, pixels: &[f32]) -> Vec<usize> {
        let mut out = Vec::new();
        for chunk in pixels.chunks(250 * SIDE * SIDE) {
            let b = chunk.len() / (SIDE * SIDE);
            let x = self
                .dev
                .tensor_from_vec(chunk.to_vec(), (b, 1usize, SIDE, SIDE));
            let logits = self
                .logits_of(self.features_image(x, ParamGrads::Skip))
                .as_vec();
            out.extend(logits.chunks_exact(CLASSES).map(|row| {
                (0..CLASSES)
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .expect("ten classes")
            }));
        }
        out
    }
}

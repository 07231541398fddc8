//! The trained Fashion-MNIST models together: the UNet (denoiser, its class conditioning) and
//! the classifier (identity features), from a folder that `adeis train --dataset fashion-mnist`
//! wrote or from the committed copy compiled into the program.

use std::path::Path;

use adeis_app_common::morph::MorphModels;
use adeis_compiler::{Problem, SamplerSpec};
use adeis_runtime::dfdx::prelude::*;
use adeis_runtime::tape::Taped;
use adeis_runtime::unet::UNet2D;
use adeis_runtime::{Rows, State};

use crate::classifier::{Classifier, CLASSIFIER_FILE, FEATURES, VERIFIER_FILE};
use crate::data::{PIXELS, SIDE};
use crate::{unet, Error};

/// The UNet and the classifier.
pub struct FashionModels {
    /// The class-conditional UNet.
    pub unet: UNet2D<f32, Cpu>,
    /// The convolutional classifier.
    pub classifier: Classifier,
    /// The verification embedding (the classifier's network trained with a CosFace head):
    /// the morphing evaluation verifies identities with it; None for a folder trained before
    /// it existed (the classifier's features verify then).
    pub verifier: Option<Classifier>,
    /// The CPU device.
    pub dev: Cpu,
}

impl FashionModels {
    /// `dir/unet` (diffusers' layout) and `dir/classifier.safetensors`.
    pub fn load(dir: &Path) -> Result<FashionModels, Error> {
        let dev = Cpu::default();
        Ok(FashionModels {
            unet: unet::load(&dev, &dir.join("unet"))?,
            classifier: Classifier::load(&dev, &dir.join(CLASSIFIER_FILE))?,
            verifier: match dir.join(VERIFIER_FILE) {
                path if path.exists() => Some(Classifier::load(&dev, &path)?),
                _ => None,
            },
            dev,
        })
    }

    /// The models in `dir`, or the committed ones.
    pub fn load_or_committed(dir: Option<&Path>) -> Result<FashionModels, Error> {
        match dir {
            Some(d) => Self::load(d),
            None => Self::committed(),
        }
    }

    /// The committed models (models/fashion-mnist, trained by `adeis train --dataset
    /// fashion-mnist`), compiled into the program so that it finds them wherever it runs.
    pub fn committed() -> Result<FashionModels, Error> {
        let dev = Cpu::default();
        Ok(FashionModels {
            unet: unet::from_bytes(
                &dev,
                crate::COMMITTED_UNET,
                Path::new("the committed models/fashion-mnist/unet"),
            )?,
            classifier: Classifier::from_bytes(
                &dev,
                crate::COMMITTED_CLASSIFIER,
                Path::new("the committed models/fashion-mnist/classifier.safetensors"),
            )?,
            verifier: Some(Classifier::from_bytes(
                &dev,
                crate::COMMITTED_VERIFIER,
                Path::new("the committed models/fashion-mnist/verifier.safetensors"),
            )?),
            dev,
        })
    }
}

impl MorphModels for FashionModels {
    type Net = UNet2D<f32, Cpu>;
    fn denoiser(&self) -> &Self::Net {
        &self.unet
    }
    fn device(&self) -> &Cpu {
        &self.dev
    }
    fn item(&self) -> Vec<usize> {
        vec![1, SIDE, SIDE]
    }
    fn side(&self) -> usize {
        SIDE
    }
    fn features_dim(&self) -> usize {
        FEATURES
    }
    fn cond(&self, classes: &[usize]) -> Result<State<f32, Cpu>, Error> {
        Ok(self.unet.class_cond(classes)?)
    }
    fn features(&self, x: &State<f32, Cpu>) -> Rows<f32, Cpu> {
        let rows = x.rows().clone();
        debug_assert_eq!(rows.shape().1, PIXELS);
        let b = rows.shape().0;
        self.classifier.features_image(
            rows.reshape_like(&(b, 1usize, SIDE, SIDE)),
            adeis_runtime::nn::ParamGrads::Skip,
        )
    }
    fn features_taped(&self, x: Taped<f32, Cpu>) -> Taped<f32, Cpu> {
        self.classifier.features_taped(x)
    }
    fn verification_features(&self, x: &State<f32, Cpu>) -> Rows<f32, Cpu> {
        let Some(verifier) = &self.verifier else {
            return self.features(x);
        };
        let rows = x.rows().clone();
        let b = rows.shape().0;
        verifier.features_image(
            rows.reshape_like(&(b, 1usize, SIDE, SIDE)),
            adeis_runtime::nn::ParamGrads::Skip,
        )
    }
    fn verifier_name(&self) -> &'static str {
        if self.verifier.is_some() {
            "the verification embedding's features (the classifier's network trained with a CosFace margin, verifier.safetensors; the identity loss uses the classifier's)"
        } else {
            "the classifier's identity features (this models folder has no verifier.safetensors)"
        }
    }
    fn problem(&self, sampler: &SamplerSpec) -> Result<Problem, Error> {
        crate::generate::problem_of(sampler)
    }
    fn noun(&self) -> &'static str {
        "Fashion-MNIST images"
    }
}

/// The held-out images in the digits application's form (rows of f64), for the morphing
/// experiment's pairs and verification threshold.
pub fn heldout_rows() -> adeis_app_common::labelled::Labelled {
    let h = crate::data::heldout();
    adeis_app_common::labelled::Labelled {
        images: h
            .pixels
            .chunks_exact(PIXELS)
            .map(|r| r.iter().map(|v| *v as f64).collect())
            .collect(),
        labels: h.labels,
    }
}

/// `adeis morph --dataset fashion-mnist`: the morphing experiment on the UNet and the
/// classifier (`opts.models`: a folder with unet/ and classifier.safetensors; None: the
/// committed models).
pub fn morph(
    opts: &adeis_app_common::morph::MorphOptions,
) -> Result<adeis_app_common::morph::MorphReport, Error> {
    opts.validate()?;
    let models = FashionModels::load_or_committed(opts.models.as_deref())?;
    adeis_app_common::morph::run_with(&models, &heldout_rows(), opts)
}

//! `adeis morph` on the digits models: the experiment itself is generic
//! ([`adeis_app_common::morph`]); here are the digits models as [`MorphModels`] and the run on
//! the held-out digits.

pub use adeis_app_common::morph::*;

use adeis_compiler::{Problem, SamplerSpec};
use adeis_runtime::dfdx::prelude::*;
use adeis_runtime::taped::Taped;
use adeis_runtime::{Rows, State};

use crate::data::{split, PIXELS, SIDE};
use crate::nets::{DigitsModels, FEATURES};
use crate::Error;

impl MorphModels for DigitsModels {
    type Net = crate::nets::DigitsDenoiser;
    fn denoiser(&self) -> &Self::Net {
        &self.denoiser
    }
    fn device(&self) -> &Cpu {
        &self.dev
    }
    fn item(&self) -> Vec<usize> {
        vec![PIXELS]
    }
    fn side(&self) -> usize {
        SIDE
    }
    fn features_dim(&self) -> usize {
        FEATURES
    }
    fn cond(&self, classes: &[usize]) -> Result<State<f32, Cpu>, Error> {
        Ok(DigitsModels::cond(self, classes))
    }
    fn features(&self, x: &State<f32, Cpu>) -> Rows<f32, Cpu> {
        DigitsModels::features(self, x)
    }
    fn features_taped(&self, x: Taped<f32, Cpu>) -> Taped<f32, Cpu> {
        DigitsModels::features_taped(self, x)
    }
    fn problem(&self, sampler: &SamplerSpec) -> Result<Problem, Error> {
        crate::generate::problem(sampler)
    }
    fn noun(&self) -> &'static str {
        "digits"
    }
}

/// Runs the experiment on the digits models and writes its outputs into `opts.out`.
pub fn run(opts: &MorphOptions) -> Result<MorphReport, Error> {
    opts.validate()?;
    let models = DigitsModels::load_or_committed(opts.models.as_deref())?;
    let (_, held) = split();
    run_with(&models, &held, opts)
}

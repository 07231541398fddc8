//! The diffusers UNet classes adeis loads, as one model ([`DiffusersUNet`]): what a command
//! runs whatever class a folder holds. A new class is a variant here and its own file.

use adeis_compiler::{Prediction, TimeInfo};
use dfdx::prelude::*;

use super::{UNet2D, UNet2DCondition, UNetGrads};
use crate::denoiser::{Cotangents, Denoiser};
use crate::error::RuntimeError;
use crate::nn::{Float, NnDevice};
use crate::state::State;
use crate::taped::TapedDenoiser;

/// A diffusers UNet of any class adeis loads.
#[derive(Clone, Debug)]
pub enum DiffusersUNet<E: Dtype, D: Storage<E>> {
    /// `UNet2DModel`.
    Plain(UNet2D<E, D>),
    /// `UNet2DConditionModel`.
    Conditional(UNet2DCondition<E, D>),
}

/// `$body` with `$m` bound to the model of whichever class `$unet` holds.
macro_rules! each {
    ($unet:expr, |$m:ident| $body:expr) => {
        match $unet {
            DiffusersUNet::Plain($m) => $body,
            DiffusersUNet::Conditional($m) => $body,
        }
    };
}

impl<E: Float, D: NnDevice<E>> DiffusersUNet<E, D> {
    /// The blocks and their resolutions, for `adeis check`.
    pub fn describe(&self) -> String {
        each!(self, |m| m.describe())
    }

    /// The number of scalar parameters.
    pub fn num_params(&self) -> usize {
        each!(self, |m| m.num_params())
    }

    /// Parameter gradients by diffusers name: (name, shape, values).
    pub fn named_grads(&self, grads: &UNetGrads<E, D>) -> Vec<(String, Vec<usize>, Vec<f64>)> {
        each!(self, |m| m.named_grads(grads))
    }
}

impl<E: Float, D: NnDevice<E>> Denoiser<E, D> for DiffusersUNet<E, D> {
    type Grads = UNetGrads<E, D>;

    fn prediction(&self) -> Prediction {
        each!(self, |m| m.prediction())
    }

    fn check_input(&self, item: &[usize]) -> Result<(), RuntimeError> {
        each!(self, |m| m.check_input(item))
    }

    fn cond_dim(&self) -> usize {
        each!(self, |m| m.cond_dim())
    }

    fn cond_shape(&self) -> Vec<usize> {
        each!(self, |m| m.cond_shape())
    }

    fn forward(&self, x: &State<E, D>, z: Option<&State<E, D>>, time: &TimeInfo) -> State<E, D> {
        each!(self, |m| m.forward(x, z, time))
    }

    fn zero_grads(&self) -> UNetGrads<E, D> {
        each!(self, |m| m.zero_grads())
    }

    fn vjp(
        &self,
        x: &State<E, D>,
        z: Option<&State<E, D>>,
        time: &TimeInfo,
        cot: &State<E, D>,
        theta: Option<(&mut UNetGrads<E, D>, f64)>,
    ) -> Cotangents<E, D> {
        each!(self, |m| m.vjp(x, z, time, cot, theta))
    }

    fn as_taped(&self) -> Option<&dyn TapedDenoiser<E, D, Grads = UNetGrads<E, D>>> {
        each!(self, |m| m.as_taped())
    }
}

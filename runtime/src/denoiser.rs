//! The denoiser interface: a network or closed-form model evaluated at (x, z, t) in its own
//! parameterisation, with its vector-Jacobian product.

use adeis_compiler::{Prediction, TimeInfo};
use dfdx::prelude::*;

use crate::error::RuntimeError;
use crate::state::State;

/// The cotangents a VJP returns: cot^T d out/dx, cot^T d out/dz (with conditioning) and
/// the cotangents of the evaluation's time quantities (for models that differentiate their
/// dependence on time; what the gradient with respect to the grid times needs).
#[derive(Clone, Debug)]
pub struct Cotangents<E: Dtype, D: Device<E>> {
    /// cot^T d out/dx.
    pub x: State<E, D>,
    /// cot^T d out/dz, for a model with conditioning.
    pub cond: Option<State<E, D>>,
    /// The time quantities' cotangents, where the model differentiates them.
    pub time: Option<TimeCot>,
}

/// cot^T d out/d(model time), cot^T d out/d alpha and cot^T d out/d sigma, summed over the
/// batch (the time is shared by every item). A network depends on its time input only; a
/// closed-form model on alpha and sigma only.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TimeCot {
    /// cot^T d out/d(the network's time input).
    pub model_t: f64,
    /// cot^T d out/d alpha.
    pub alpha: f64,
    /// cot^T d out/d sigma.
    pub sigma: f64,
}

impl std::ops::Add for TimeCot {
    type Output = TimeCot;
    fn add(self, o: TimeCot) -> TimeCot {
        TimeCot {
            model_t: self.model_t + o.model_t,
            alpha: self.alpha + o.alpha,
            sigma: self.sigma + o.sigma,
        }
    }
}

/// The gradient accumulator of a model without parameters to differentiate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoParams;

/// A network (or closed-form model) evaluated at (x, z, t) in its own parameterisation.
///
/// x is a batch of items of the shape the model takes (checked once per run by
/// [`Denoiser::check_input`]); the conditioning z, when the model has one, is a batch of items
/// of the shape [`Denoiser::cond_shape`]: `[D]` for a vector (the MLPs' z, a class embedding),
/// `[tokens, dim]` for encoder hidden states (cross-attention).
pub trait Denoiser<E: Dtype, D: Device<E>> {
    /// Where the VJP accumulates w cot^T d out/d theta: the model's own layout.
    type Grads;

    /// What the output is: eps, x0 or v.
    fn prediction(&self) -> Prediction;

    /// Checks the item shape of x; the error says what the model takes.
    fn check_input(&self, item: &[usize]) -> Result<(), RuntimeError>;

    /// The number of elements of one item of the conditioning z (0 without conditioning):
    /// its width for a vector.
    fn cond_dim(&self) -> usize {
        0
    }

    /// The shape of one item of the conditioning z (empty without conditioning). By default a
    /// vector of [`Denoiser::cond_dim`] elements; a model conditioned on a sequence (encoder
    /// hidden states `[tokens, dim]`) says so here, its `cond_dim` being the product.
    fn cond_shape(&self) -> Vec<usize> {
        match self.cond_dim() {
            0 => Vec::new(),
            d => vec![d],
        }
    }

    /// The output at (x, z, t), of x's shape.
    fn forward(&self, x: &State<E, D>, z: Option<&State<E, D>>, time: &TimeInfo) -> State<E, D>;

    /// A zero accumulator for this model's parameter gradients.
    fn zero_grads(&self) -> Self::Grads;

    /// The vector-Jacobian product at (x, z, t) with cotangent `cot` on the output; with
    /// `theta = (acc, w)` also adds w cot^T d out/d theta to `acc`. Memory: one evaluation's
    /// activations, freed on return.
    fn vjp(
        &self,
        x: &State<E, D>,
        z: Option<&State<E, D>>,
        time: &TimeInfo,
        cot: &State<E, D>,
        theta: Option<(&mut Self::Grads, f64)>,
    ) -> Cotangents<E, D>;

    /// This model on dfdx's tape, where it can run there (the full-tape reference).
    fn as_taped(&self) -> Option<&dyn crate::taped::TapedDenoiser<E, D, Grads = Self::Grads>> {
        None
    }
}

/// Checks that a vector model gets vectors of its dimension.
pub fn check_vector_input(item: &[usize], dim: usize, what: &str) -> Result<(), RuntimeError> {
    if item != [dim] {
        return Err(RuntimeError::Shape(format!(
            "x_t has items of shape {item:?} but {what} takes vectors of dimension {dim}"
        )));
    }
    Ok(())
}

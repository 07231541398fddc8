//! The model side of the full-tape reference: a [`Denoiser`] that also runs on dfdx's tape
//! ([`TapedDenoiser`]), with its time quantities as leaves where the gradient with respect to
//! the grid and the schedule needs them ([`TimeLeaves`]). The gradient method that uses it is
//! `adjoint/tape.rs`.

use adeis_compiler::TimeInfo;
use dfdx::prelude::*;

use crate::denoiser::Denoiser;
use crate::e;
use crate::nn::ParamGrads;

/// A batch of rows on the tape.
pub type Taped<E, D> = Tensor<(usize, usize), E, D, OwnedTape<E, D>>;

/// The scalar a loss on the tape returns: a loss of the DSL (`loss: name` in `diffusion!`) is
/// a `fn<E: Dtype, D: Device<E>>(Taped<E, D>) -> TapedLoss<E, D>`, generic over the dtype
/// and the device, and [`crate::loss::tape_loss`] takes one as a closure.
pub type TapedLoss<E, D> = Tensor<Rank0, E, D, OwnedTape<E, D>>;

/// A model that can run on dfdx's tape.
pub trait TapedDenoiser<E: Dtype, D: Device<E>>: Denoiser<E, D> {
    /// The output rows at (x, z, t), on the tape; `item` is the shape of one item of x.
    /// `params` says whether the parameters' gradients are wanted (a model may skip the work
    /// of those it would not be asked for).
    fn forward_taped(
        &self,
        x: Taped<E, D>,
        item: &[usize],
        z: Option<Taped<E, D>>,
        time: &TimeInfo,
        params: ParamGrads,
    ) -> Taped<E, D>;

    /// The parameter gradients in the model's layout, read from the tape's gradients (None:
    /// this model's parameters are not on the tape). The tape's gradients are not used after
    /// this: a model may take them.
    fn grads_from_tape(&self, grads: &mut Gradients<E, D>) -> Option<Self::Grads>;

    /// The gradients the taped loop starts from. dfdx keeps, after the backward pass, the
    /// gradients of the leaves these name and drops the others; by default none are named and
    /// every gradient is kept (the reference reads what it needs besides the parameters'
    /// before that, see [`crate::adjoint::tape::tape_gradient`]).
    fn tape_gradients(&self, _params: ParamGrads) -> Gradients<E, D> {
        Gradients::leaky()
    }

    /// [`TapedDenoiser::forward_taped`] with its dependence on time on the tape too: the
    /// evaluation's model time, alpha and sigma are the scalars of `leaves` (the tape
    /// reference of the gradient with respect to the grid and the schedule). None: this model
    /// does not put its time on the tape.
    fn forward_taped_in_time(
        &self,
        _x: Taped<E, D>,
        _item: &[usize],
        _z: Option<Taped<E, D>>,
        _leaves: &TimeLeaves<E, D>,
        _params: ParamGrads,
    ) -> Option<Taped<E, D>> {
        None
    }
}

/// One evaluation's time quantities as leaves of the tape: untaped scalars each use traces
/// afresh (`leaf.clone().leaky_trace()`), so that their gradients accumulate under their ids.
#[derive(Clone, Debug)]
pub struct TimeLeaves<E: Dtype, D: Device<E>> {
    /// The network's time input.
    pub model_t: Tensor<Rank0, E, D>,
    /// alpha(t).
    pub alpha: Tensor<Rank0, E, D>,
    /// sigma(t).
    pub sigma: Tensor<Rank0, E, D>,
}

impl<E: Dtype, D: Device<E>> TimeLeaves<E, D> {
    pub(crate) fn at(dev: &D, time: &TimeInfo) -> TimeLeaves<E, D> {
        TimeLeaves {
            model_t: dev.tensor(e::<E>(time.model_t)),
            alpha: dev.tensor(e::<E>(time.alpha)),
            sigma: dev.tensor(e::<E>(time.sigma)),
        }
    }

    /// A leaf traced and broadcast to a batch of rows.
    pub fn rows(leaf: &Tensor<Rank0, E, D>, shape: (usize, usize)) -> Taped<E, D> {
        leaf.clone().leaky_trace().broadcast_like(&shape)
    }
}

//! Gradients of a loss on the sample with respect to x_T, the conditioning z, the model's
//! parameters, the grid's times and the schedule's parameters (docs/math.md section 3), by the
//! method the [`Problem`] carries. One entry point, [`gradient`]; each method is one file
//! implementing [`GradientMethod`]: the exact discrete adjoint of the plan ([`discrete`]),
//! AdjointDEIS-1 / -2M ([`deis`]), the full tape ([`tape`]) and the reversible samplers'
//! inverse sweep ([`reversible`]). What they share (time
//! sensitivities, sparse sums, the checked loss gradient) is in `shared.rs`.
//!
//! Adding a gradient method: its file here with a type implementing [`GradientMethod`], its
//! variant of the compiler's [`Adjoint`] (the `[gradient] method` value), and its arm in
//! [`gradient`].

pub mod deis;
pub mod discrete;
pub mod reversible;
mod shared;
pub mod tape;

use adeis_compiler::{Adjoint, Problem};
use dfdx::prelude::*;

use crate::denoiser::Denoiser;
use crate::error::RuntimeError;
use crate::executor::Input;
use crate::model_fn::ModelFn;
use crate::state::State;

/// A gradient and what it cost.
#[derive(Debug)]
pub struct Gradient<E: Dtype, D: Device<E>, G> {
    /// The sample x_0 the loss was taken on.
    pub x0: State<E, D>,
    /// dL/dx_T (the cotangent the recursion carries to the start).
    pub dx_t: State<E, D>,
    /// dL/dz, when the gradient is taken with respect to the conditioning.
    pub dz: Option<State<E, D>>,
    /// dL/dtheta in the model's own layout, when taken with respect to the parameters.
    pub dtheta: Option<G>,
    /// dL/dt_i for every time of the sampling grid (in the grid's order), when the gradient
    /// is taken with respect to the times.
    pub dtimes: Option<Vec<f64>>,
    /// dL/d(parameter) for every continuous parameter of the schedule (name, value), the
    /// grid moving with them where it is defined through the schedule.
    pub dschedule: Option<Vec<(String, f64)>>,
    /// Forward model evaluations (recomputation included).
    pub nfe: usize,
    /// Vector-Jacobian products of the model.
    pub vjps: usize,
    /// The reversible gradient's drift: max |x_T reconstructed - x_T| / max |x_T|, where the
    /// backward sweep's reconstruction of x_T lands against the x_T that ran (None for the
    /// methods that record or recompute their states).
    pub reconstruction: Option<f64>,
}

/// A gradient method: what it refuses before any model evaluation, and the gradient itself.
pub trait GradientMethod {
    /// Refuses, before any model evaluation, a problem or a model this method cannot
    /// differentiate (the error says what it needs).
    fn check<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
        &self,
        _problem: &Problem,
        _model: &ModelFn<E, D, M>,
    ) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// The gradient of the loss whose gradient at the sample `loss_grad` gives, with respect
    /// to what the problem's `wrt` says.
    fn gradient<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
        &self,
        problem: &Problem,
        model: &ModelFn<E, D, M>,
        input: &Input<E, D>,
        loss_grad: impl FnOnce(&State<E, D>) -> Result<State<E, D>, RuntimeError>,
    ) -> Result<Gradient<E, D, M::Grads>, RuntimeError>;
}

/// The gradient of the loss whose gradient at the sample `loss_grad` gives, by the problem's
/// method, with respect to what the problem says.
pub fn gradient<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
    problem: &Problem,
    model: &ModelFn<E, D, M>,
    input: &Input<E, D>,
    loss_grad: impl FnOnce(&State<E, D>) -> Result<State<E, D>, RuntimeError>,
) -> Result<Gradient<E, D, M::Grads>, RuntimeError> {
    if problem.wrt().cond && input.cond.is_none() {
        return Err(RuntimeError::Invalid(
            "wrt includes \"cond\" but the model has no conditioning".into(),
        ));
    }
    match *problem.adjoint() {
        Adjoint::Discrete { states } => by(
            &discrete::Discrete { states },
            problem,
            model,
            input,
            loss_grad,
        ),
        Adjoint::AdjointDeis { states, .. } => by(
            &deis::AdjointDeis { states },
            problem,
            model,
            input,
            loss_grad,
        ),
        Adjoint::Tape => by(&tape::FullTape, problem, model, input, loss_grad),
        Adjoint::Reversible => by(&reversible::Reversible, problem, model, input, loss_grad),
    }
}

/// The gradient by `method`, checked first.
fn by<G: GradientMethod, E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
    method: &G,
    problem: &Problem,
    model: &ModelFn<E, D, M>,
    input: &Input<E, D>,
    loss_grad: impl FnOnce(&State<E, D>) -> Result<State<E, D>, RuntimeError>,
) -> Result<Gradient<E, D, M::Grads>, RuntimeError> {
    method.check(problem, model)?;
    method.gradient(problem, model, input, loss_grad)
}

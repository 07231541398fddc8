//! What a problem declared with `adeis::diffusion!` runs on: [`Declared`] holds the compiled
//! problem (schedule, sampler plan, gradient method, wrt) and samples, differentiates and
//! optimises with the declared loss ([`DeclaredLoss`]) or with a closure. The generated
//! type's functions (`Name::sample`, `Name::gradient`, ...) call these on the declaration's
//! problem; `Name::problem_with(...)` returns one for other schedule parameter values.

use std::marker::PhantomData;
use std::sync::Arc;

use adeis_compiler::Problem;
use dfdx::prelude::*;

use crate::adjoint::{gradient, Gradient};
use crate::denoiser::Denoiser;
use crate::error::RuntimeError;
use crate::executor::{sample, Input};
use crate::loss::tape_loss;
use crate::model_fn::ModelFn;
use crate::noise::NoiseSource;
use crate::state::State;
use crate::taped::{Taped, TapedLoss};

/// The loss a `diffusion!` declaration names (`loss: name`): a function of x_0's rows on
/// dfdx's tape, generic over the dtype and the device. The macro implements it for the
/// declared type.
pub trait DeclaredLoss {
    /// The loss at x_0 (its rows `[batch, item size]`, on the tape).
    fn loss<E: Dtype, D: Device<E>>(x0: Taped<E, D>) -> TapedLoss<E, D>;
}

/// Every declaration has this loss type parameter; one without `loss:` uses `NoLoss` and has
/// only the `_with` functions that take a closure.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoLoss;

/// A declared problem, compiled: samples, gradients and gradient descent with the
/// declaration's sampler, gradient method and wrt. `L` is the declared loss (the generated
/// type itself, or [`NoLoss`]).
pub struct Declared<L> {
    problem: Arc<Problem>,
    loss: PhantomData<fn() -> L>,
}

impl<L> Clone for Declared<L> {
    fn clone(&self) -> Self {
        Declared {
            problem: Arc::clone(&self.problem),
            loss: PhantomData,
        }
    }
}

impl<L> std::fmt::Debug for Declared<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Declared")
            .field("plan", &self.problem.plan().description)
            .finish()
    }
}

/// The loss value and the gradient a loss gives: `(L, gradient)`.
pub type LossAndGradient<E, D, G> = (f64, Gradient<E, D, G>);

/// What gradient descent returns: the optimised x_T, the optimised conditioning (when it was
/// given) and the loss before each step.
pub type Optimized<E, D> = (State<E, D>, Option<State<E, D>>, Vec<f64>);

impl<L> Declared<L> {
    /// A compiled problem run as a declaration with loss `L`.
    pub fn new(problem: Arc<Problem>) -> Self {
        Declared {
            problem,
            loss: PhantomData,
        }
    }

    /// The compiled problem: its schedule (`.schedule()`), sampler plan (`.plan()`), gradient
    /// method (`.adjoint()`) and wrt (`.wrt()`).
    pub fn problem(&self) -> &Problem {
        &self.problem
    }

    /// x_0 sampled from x_T (conditioning `z` for a model that takes one; the SDE samplers'
    /// noise from `seed`).
    pub fn sample<E, D, M>(
        &self,
        model: &M,
        x_t: &State<E, D>,
        z: Option<&State<E, D>>,
        seed: u64,
    ) -> Result<State<E, D>, RuntimeError>
    where
        E: Dtype,
        D: Device<E>,
        M: Denoiser<E, D>,
    {
        let noise = NoiseSource::Seeded(seed);
        let input = Input::new(x_t, z, &noise);
        Ok(sample(self.problem.plan(), &ModelFn::new(model), &input, false)?.x)
    }

    /// The loss `loss` of the sample (a closure on x_0's rows on the tape; it may capture a
    /// target: `|x0| (x0 - &target).square().sum()`) and its gradient by the declared method,
    /// with respect to the declared wrt: `(L, gradient)`, the gradient's `dx_t`, `dz`,
    /// `dtheta`, `dtimes`, `dschedule` filled as wrt asks, `x0` the sample.
    pub fn gradient_with<E, D, M>(
        &self,
        model: &M,
        x_t: &State<E, D>,
        z: Option<&State<E, D>>,
        seed: u64,
        loss: impl FnOnce(Taped<E, D>) -> TapedLoss<E, D>,
    ) -> Result<LossAndGradient<E, D, M::Grads>, RuntimeError>
    where
        E: Dtype,
        D: Device<E>,
        M: Denoiser<E, D>,
    {
        let noise = NoiseSource::Seeded(seed);
        let input = Input::new(x_t, z, &noise);
        let mut value = f64::NAN;
        let g = gradient(&self.problem, &ModelFn::new(model), &input, |x0| {
            let lg = tape_loss(x0, loss)?;
            value = lg.value;
            Ok(lg.grad)
        })?;
        Ok((value, g))
    }

    /// Gradient descent on x_T (and on `z`, when wrt includes cond) for `iters` steps of size
    /// `lr` on the loss `loss` (called once per step): the optimised x_T, z and the loss before
    /// each step.
    // The generated `Name::optimize_with` passes these through one by one, as the DSL's
    // other functions take them; a struct of options would be one more type to learn.
    #[allow(clippy::too_many_arguments)]
    pub fn optimize_with<E, D, M>(
        &self,
        model: &M,
        x_t: &State<E, D>,
        z: Option<&State<E, D>>,
        seed: u64,
        iters: usize,
        lr: f64,
        mut loss: impl FnMut(Taped<E, D>) -> TapedLoss<E, D>,
    ) -> Result<Optimized<E, D>, RuntimeError>
    where
        E: Dtype,
        D: Device<E>,
        M: Denoiser<E, D>,
    {
        let mut x = x_t.clone();
        let mut zc = z.cloned();
        let mut losses = Vec::with_capacity(iters);
        for _ in 0..iters {
            let (value, g) = self.gradient_with(model, &x, zc.as_ref(), seed, &mut loss)?;
            losses.push(value);
            x = x + g.dx_t * (-lr);
            if let Some(dz) = g.dz {
                zc = zc.map(|zv| zv + dz * (-lr));
            }
        }
        Ok((x, zc, losses))
    }
}

impl<L: DeclaredLoss> Declared<L> {
    /// The declared loss of the sample and its gradient: [`Declared::gradient_with`] with
    /// `loss: name`.
    pub fn gradient<E, D, M>(
        &self,
        model: &M,
        x_t: &State<E, D>,
        z: Option<&State<E, D>>,
        seed: u64,
    ) -> Result<LossAndGradient<E, D, M::Grads>, RuntimeError>
    where
        E: Dtype,
        D: Device<E>,
        M: Denoiser<E, D>,
    {
        self.gradient_with(model, x_t, z, seed, L::loss)
    }

    /// Gradient descent on the declared loss: [`Declared::optimize_with`] with `loss: name`.
    pub fn optimize<E, D, M>(
        &self,
        model: &M,
        x_t: &State<E, D>,
        z: Option<&State<E, D>>,
        seed: u64,
        iters: usize,
        lr: f64,
    ) -> Result<Optimized<E, D>, RuntimeError>
    where
        E: Dtype,
        D: Device<E>,
        M: Denoiser<E, D>,
    {
        self.optimize_with(model, x_t, z, seed, iters, lr, L::loss)
    }
}

//! The runtime's errors.

use adeis_compiler::FieldError;

/// A failure while running a plan or its adjoint.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RuntimeError {
    /// A state, model output or cotangent stopped being finite.
    #[error("the solver produced NaN or Inf in {what} at step {step} (t = {t})")]
    NonFinite {
        /// What stopped being finite (the state, a model output, a cotangent).
        what: String,
        /// The plan's step at which it did.
        step: usize,
        /// The time there.
        t: f64,
    },
    /// Tensors whose shapes do not fit together.
    #[error("{0}")]
    Shape(String),
    /// The SDE noise source cannot give what the plan asks for.
    #[error("{0}")]
    Noise(String),
    /// A request that does not hold together (a method the model cannot run, a bad value).
    #[error("{0}")]
    Invalid(String),
    /// A declaration that the compiler rejected.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// The schedule or the problem could not be built.
    #[error(transparent)]
    Compile(#[from] adeis_compiler::Error),
    /// The user asked the run to stop (Ctrl-C); `during` names the work that stopped.
    #[error(
        "interrupted during {during}; files already written are complete, nothing is half-written"
    )]
    Interrupted {
        /// The work that stopped ("step 1234 of the sampler").
        during: String,
    },
}

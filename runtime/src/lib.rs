#![warn(missing_docs)]
//! adeis-runtime: the tensor side of adeis, on dfdx.
//!
//! It runs the problems the compiler builds ([`adeis_compiler::Problem`]: a compiled schedule,
//! a sampler plan and a gradient method) on dfdx tensors, on the CPU or, with the `cuda`
//! feature, on an NVIDIA GPU: [`sample`] runs a plan, [`gradient`] its gradient by the
//! problem's method. States are batches of items of any shape ([`State`]); models implement
//! [`Denoiser`]. The runtime never parses text or evaluates a schedule formula: every time
//! quantity and coefficient comes from the compiler's plans.

pub mod adjoint;
pub mod analytic;
pub mod conditioning;
pub mod declared;
pub mod denoiser;
pub mod error;
pub mod executor;
mod host;
pub mod interrupt;
pub mod inversion;
pub mod loss;
pub mod mlp;
pub mod model_fn;
pub mod nn;
pub mod noise;
pub mod optim;
pub mod state;
pub mod taped;
pub mod unet;

/// The full-tape reference under its earlier path: the model trait ([`taped`]) and the
/// gradient method ([`adjoint::tape`]).
pub mod tape {
    pub use crate::adjoint::tape::tape_gradient;
    pub use crate::taped::{Taped, TapedDenoiser, TapedLoss, TimeLeaves};
}

pub use dfdx;

pub use adeis_compiler::TimeInfo;
pub use adjoint::{gradient, Gradient, GradientMethod};
pub use declared::{Declared, DeclaredLoss, NoLoss};
pub use denoiser::{Cotangents, Denoiser, NoParams, TimeCot};
pub use error::RuntimeError;
pub use executor::{sample, Input, SampleOutput};
pub use inversion::{invert, sample_from_pair, Inverted};
pub use model_fn::{Guidance, ModelFn, Threshold};
pub use noise::NoiseSource;
pub use state::{e, from_f64, rows_from_f64, to_f64, HostValues, Rows, State};

/// The dfdx device adeis runs on by default.
pub type DefaultDevice = dfdx::tensor::Cpu;

/// The CUDA device (with the `cuda` feature).
#[cfg(feature = "cuda")]
pub type CudaDevice = dfdx::tensor::Cuda;

#![warn(missing_docs)]
//! adeis: gradients through diffusion samplers.
//!
//! Declare a noise schedule (built in, or formulas in t), and adeis derives every time-only
//! quantity symbolically and compiles it to native code. This facade re-exports the compiler
//! and the runtime, loads spec files, and hosts the `adeis` command-line program.
//!
//! ```
//! use adeis::prelude::*;
//!
//! let schedule = ScheduleDef::vp_linear(0.1, 20.0)?.compile()?;
//! let v = schedule.eval(0.5);
//! // For VP schedules g^2(t) = beta(t).
//! assert!((v.g2 - (0.1 + 19.9 * 0.5)).abs() < 1e-12);
//! assert!((schedule.t_of_lambda(v.lambda) - 0.5).abs() < 1e-12);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod allocator;
// The benchmark workloads are the command's (`adeis bench`), not the library's API.
#[cfg(feature = "cli")]
pub mod bench;
pub mod diffusers;
pub mod error;
pub mod learn;
pub mod report;
pub mod spec_file;
pub mod threads;

/// diffusers scheduler configs as specs, under their earlier path ([`diffusers::scheduler`]).
pub use diffusers::scheduler as scheduler_config;

#[doc(inline)]
pub use adeis_compiler as compiler;
#[doc(inline)]
pub use adeis_io::{check_output_folder, check_output_path, npy, safetensors, same_file, Outputs};
#[doc(inline)]
pub use adeis_runtime as runtime;
pub use error::Error;

/// Declares a noise schedule as formulas in t, checked when it compiles (errors point at the
/// offending token) and JIT-compiled on first use.
///
/// ```
/// adeis::schedule! {
///     /// The linear VP schedule, declared rather than built in.
///     pub LinearVp(beta_min = 0.1, beta_max = 20.0) {
///         log_alpha(t) = -(beta_max - beta_min) / 4.0 * t^2 - beta_min / 2.0 * t;
///         sigma(t) = sqrt(1.0 - exp(2.0 * log_alpha(t)));
///         t in [1e-3, 1.0];
///     }
/// }
///
/// let s = LinearVp::new().beta_max(12.0).compile().unwrap();
/// assert!((s.eval(0.5).g2 - (0.1 + 11.9 * 0.5)).abs() < 1e-10);
/// ```
#[macro_export]
macro_rules! schedule {
    ($($tt:tt)*) => {
        $crate::__private::schedule_impl! { $crate; $($tt)* }
    };
}

/// Declares a whole problem (schedule, equation, prediction, sampler, gradient method, wrt,
/// loss), checked when it compiles, as a type with `sample`, `gradient` and `optimize`.
///
/// ```
/// use adeis::prelude::*;
///
/// /// Pull the sample towards 1: L = sum((x0 - 1)^2). A loss is a function on dfdx's tape,
/// /// generic over the dtype and the device like the generated methods.
/// fn to_one<E: Dtype, D: Device<E>>(x0: Taped<E, D>) -> TapedLoss<E, D> {
///     (x0 - E::from_f64(1.0).unwrap()).square().sum()
/// }
///
/// adeis::diffusion! {
///     pub Steer {
///         schedule: vp_linear,
///         equation: ode,
///         prediction: eps,
///         sampler: dpm_solver_pp(order = 2, steps = 20),
///         gradient: discrete,               // exact for these 20 steps; or adjoint_deis(order = 2, steps = 500)
///         wrt: [x_t, cond],
///         loss: to_one,
///     }
/// }
///
/// let model = GaussianModel { mu: 0.0, s2: 0.5, dim: 2 };
/// let dev = Cpu::default();
/// let x_t = from_f64::<f64, Cpu>(&dev, &[0.3, -0.4], 1, 2);
/// let z = from_f64::<f64, Cpu>(&dev, &[0.0, 0.0], 1, 2);
/// let (_, _, losses) = Steer::optimize(&model, &x_t, Some(&z), 0, 10, 0.3).unwrap();
/// assert!(losses[9] < 1e-3 * losses[0], "{losses:?}");
/// ```
#[macro_export]
macro_rules! diffusion {
    ($($tt:tt)*) => {
        $crate::__private::diffusion_impl! { $crate; $($tt)* }
    };
}

#[doc(hidden)]
pub mod __private {
    pub use adeis_macros::{diffusion_impl, schedule_impl};
}

/// The README's Rust examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The Rust examples of the library's reference page, compiled and run as doctests.
#[doc = include_str!("../docs/rust.md")]
#[cfg(doctest)]
pub struct RustPageDoctests;

/// What a user program usually needs: schedules and specs, the problem and its gradient
/// methods, the samplers, the runtime's solve functions, states, losses, guidance and the
/// closed-form models, the tape's types for a loss ([`Taped`](prelude::Taped) in,
/// [`TapedLoss`](prelude::TapedLoss) out), and dfdx's prelude (devices, tensors, dtypes and
/// the tensor operations a loss is written with). The examples start with `use
/// adeis::prelude::*` and need nothing else.
pub mod prelude {
    pub use crate::error::SpecFileError;
    pub use crate::spec_file::{load_spec, parse_spec};
    pub use adeis_compiler::schedule::{AlphaFormula, DiscreteBetas, SigmaFormula};
    pub use adeis_compiler::{
        Adjoint, AdjointOrder, ContinuousStates, DiscreteStates, Equation, Expr, FieldError,
        Method, Pred, Prediction, Problem, Program, Quantity, SamplerSpec, Schedule, ScheduleDef,
        ScheduleError, ScheduleSpec, ScheduleValues, Spec, Wrt,
    };
    pub use adeis_compiler::{GuidanceSpec, ThresholdingSpec};
    pub use adeis_runtime::analytic::{GaussianModel, GmmModel};
    pub use adeis_runtime::dfdx::prelude::*;
    pub use adeis_runtime::loss::{mse, tape_loss};
    pub use adeis_runtime::taped::{Taped, TapedLoss};
    pub use adeis_runtime::{
        from_f64, gradient, sample, to_f64, Denoiser, Gradient, Guidance, Input, ModelFn,
        NoiseSource, RuntimeError, State, Threshold,
    };
}

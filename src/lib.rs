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
pub mod device;
pub mod diffusers;
pub mod error;
pub mod learn;
pub mod model_arg;
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
/// The generated type (every item documented in `cargo doc` of your crate):
/// `Name::new()` (the defaults), a setter per parameter (`.beta_max(12.0)`), `.params()` (the
/// values, in the order of `Name::PARAMS`), `Name::def()` (the symbolic schedule: its
/// formulas and derivatives as expressions) and `.compile()` (a [`compiler::Schedule`]:
/// `alpha(t)`, `sigma(t)`, `lambda(t)`, `eval(t)` with every quantity, `t_of_lambda`,
/// `t_min()`, `t_max()`; JIT-compiled once per parameter values).
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
/// assert_eq!(LinearVp::PARAMS, ["beta_min", "beta_max"]);
/// let narrower = LinearVp::new().beta_max(12.0);
/// assert_eq!(narrower.params(), &[0.1, 12.0]);
/// assert_eq!(LinearVp::default(), LinearVp::new());
/// // The symbolic schedule: f(t) = d log alpha / dt, derived.
/// let f = LinearVp::def().expression(adeis::compiler::Quantity::F);
/// assert!(f.to_string().contains("beta_max"), "{f}");
/// let s = narrower.compile().unwrap();
/// assert!((s.eval(0.5).g2 - (0.1 + 11.9 * 0.5)).abs() < 1e-10); // g^2 = beta(t)
/// let t = 0.3;
/// assert!((s.lambda(t) - (s.alpha(t) / s.sigma(t)).ln()).abs() < 1e-12);
/// assert!((s.t_of_lambda(s.lambda(t)) - t).abs() < 1e-10);
/// assert_eq!((s.t_min(), s.t_max()), (1e-3, 1.0));
/// // A value outside the schedule's domain is an error naming the parameter.
/// let e = LinearVp::new().beta_max(-4.0).compile().unwrap_err();
/// assert!(e.to_string().starts_with("parameter `beta_max` = -4 is outside this schedule's domain"), "{e}");
/// ```
#[macro_export]
macro_rules! schedule {
    ($($tt:tt)*) => {
        $crate::__private::schedule_impl! { $crate; $($tt)* }
    };
}

/// Declares a whole problem (schedule with its parameter values, equation, prediction,
/// sampler, gradient method, wrt, loss), checked when it compiles, as a type whose functions
/// sample, differentiate and optimise.
///
/// The generated type's functions (every one documented in `cargo doc` of your crate; all
/// return `Result<_, RuntimeError>` where they can fail):
///
/// | function | what it returns |
/// |---|---|
/// | `sample(&model, &x_t, z, seed)` | x_0, a [`runtime::State`] |
/// | `gradient(&model, &x_t, z, seed)` (with `loss:`) | `(L, gradient)`: a [`runtime::Gradient`] with `x0`, `dx_t`, `dz`, `dtheta`, `dtimes`, `dschedule` (as `wrt` asks), `nfe`, `vjps` |
/// | `gradient_with(&model, &x_t, z, seed, \|x0\| ...)` | the same for a closure loss, which may capture a target (`x0 - &target`) |
/// | `optimize(&model, &x_t, z, seed, iters, lr)`, `optimize_with(..., loss)` | `(x_T, z, losses)` after `iters` steps of gradient descent |
/// | `problem()` | the compiled [`compiler::Problem`], built once |
/// | `declared()` | the declaration as a [`runtime::Declared`] value (the functions above as methods) |
/// | `problem_with(Name::new().p(x))` (a built-in: `problem_with(&[("beta_max", x)])`) | a [`runtime::Declared`] for other schedule parameter values, cached per values |
/// | `declared_schedule()` (a `schedule!` type) / `declared_params()`, `schedule_def()` (a built-in) | the schedule with the declaration's values |
/// | `schedule()` | the compiled [`compiler::Schedule`]: `alpha(t)`, `sigma(t)`, `lambda(t)`, `t_min()`, ... |
/// | `build_problem(schedule)`, `sampler()`, `gradient_spec()` | the declared sampler and method on any schedule; the declarations as values |
///
/// Checked when the program compiles: every field and option (an unknown name lists the
/// allowed ones), the parameter names in `schedule: Name(p = 2.0)` and, for a built-in, their
/// literal values against the schedule's domain. A `schedule!` type's values are checked
/// when the problem is first built, with an error naming the parameter.
///
/// ```
/// use adeis::prelude::*;
///
/// adeis::schedule! {
///     /// log alpha a power of t.
///     pub PowerVp(c = 5.0, p = 2.0) {
///         log_alpha(t) = -c * t^p;
///         sigma(t) = sqrt(-expm1(2.0 * log_alpha(t)));
///         t in [1e-3, 1.0];
///     }
/// }
///
/// /// Pull the sample towards 1: L = sum((x0 - 1)^2). A declared loss is a function on dfdx's
/// /// tape, generic over the dtype and the device like the generated functions.
/// fn to_one<E: Dtype, D: Device<E>>(x0: Taped<E, D>) -> TapedLoss<E, D> {
///     (x0 - E::from_f64(1.0).unwrap()).square().sum()
/// }
///
/// adeis::diffusion! {
///     pub Steer {
///         schedule: PowerVp(p = 1.5),       // c keeps its default
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
/// let z = x_t.with_values(&[0.0, 0.0])?;
///
/// // The declarations, as values.
/// assert_eq!(Steer::sampler().steps, 20);
/// assert_eq!(Steer::gradient_spec().method.name(), "discrete");
/// assert_eq!(Steer::declared_schedule().params(), &[5.0, 1.5]);
/// let schedule = Steer::schedule()?;
/// assert!((schedule.alpha(0.5) - (-5.0 * 0.5f64.powf(1.5)).exp()).abs() < 1e-12);
/// assert_eq!(Steer::problem()?.plan().nfe(), 20);
///
/// let x0 = Steer::sample(&model, &x_t, Some(&z), 0)?;
/// let (loss, g) = Steer::gradient(&model, &x_t, Some(&z), 0)?;
/// assert_eq!(g.x0.to_f64(), x0.to_f64());
/// assert!((loss - x0.to_f64().iter().map(|v| (v - 1.0) * (v - 1.0)).sum::<f64>()).abs() < 1e-12);
/// assert!(g.dz.is_some() && g.dtheta.is_none());
/// assert_eq!((g.nfe, g.vjps), (20, 20));
///
/// // The same loss as a closure that captures its target: the same gradient.
/// let ones = x_t.with_values(&[1.0, 1.0])?;
/// let (loss_c, g_c) = Steer::gradient_with(&model, &x_t, Some(&z), 0, |x0| (x0 - &ones).square().sum())?;
/// assert_eq!((loss_c, g_c.dx_t.to_f64()), (loss, g.dx_t.to_f64()));
///
/// let (_, _, losses) = Steer::optimize(&model, &x_t, Some(&z), 0, 10, 0.3)?;
/// assert!(losses[9] < 1e-3 * losses[0], "{losses:?}");
/// let (_, _, closure_losses) =
///     Steer::optimize_with(&model, &x_t, Some(&z), 0, 10, 0.3, |x0| (x0 - &ones).square().sum())?;
/// assert_eq!(closure_losses, losses);
///
/// // Other parameter values: the declared sampler, method and wrt on PowerVp(p = 2.5),
/// // compiled once and cached; the declaration's own problem through declared().
/// let sharper = Steer::problem_with(Steer::declared_schedule().p(2.5))?;
/// assert!((sharper.problem().schedule().alpha(0.5) - (-5.0 * 0.5f64.powf(2.5)).exp()).abs() < 1e-12);
/// let (l25, _) = sharper.gradient(&model, &x_t, Some(&z), 0)?;
/// let (l15, _) = Steer::declared()?.gradient(&model, &x_t, Some(&z), 0)?;
/// assert_ne!(l25, l15);
/// let rebuilt = Steer::build_problem(PowerVp::new().p(2.5).compile()?)?;
/// assert_eq!(rebuilt.plan().nfe(), 20);
/// let refused = Steer::problem_with(PowerVp::new().p(-1.0)).unwrap_err();
/// assert!(refused.to_string().contains("parameter `p` = -1 is outside this schedule's domain"), "{refused}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A built-in schedule takes its parameters the same way; without `loss:` the `_with`
/// functions take the loss:
///
/// ```
/// use adeis::prelude::*;
///
/// adeis::diffusion! {
///     pub Narrow {
///         schedule: vp_linear(beta_max = 12.0),   // checked when it compiles: the name and the value
///         sampler: ddim(steps = 10),
///     }
/// }
///
/// assert_eq!(Narrow::declared_params(), vec![("beta_max", 12.0)]);
/// assert_eq!(Narrow::schedule_def()?.param_names(), ["beta_min", "beta_max"]);
/// let s = Narrow::schedule()?;
/// assert!((s.eval(0.5).g2 - (0.1 + 11.9 * 0.5)).abs() < 1e-10);
/// let wide = Narrow::problem_with(&[("beta_max", 20.0)])?;
/// assert!((wide.problem().schedule().eval(0.5).g2 - (0.1 + 19.9 * 0.5)).abs() < 1e-10);
/// assert!(Narrow::problem_with(&[("beta_mx", 20.0)]).is_err());
///
/// let model = GaussianModel { mu: 0.0, s2: 0.5, dim: 2 };
/// let x_t = from_f64::<f32, Cpu>(&Cpu::default(), &[0.3, -0.4], 1, 2);
/// let (loss, g) = Narrow::gradient_with(&model, &x_t, None, 0, |x0| x0.sum())?;
/// assert_eq!(loss as f32, Narrow::sample(&model, &x_t, None, 0)?.to_f64().iter().sum::<f64>() as f32);
/// assert!(g.dz.is_none());
/// # Ok::<(), Box<dyn std::error::Error>>(())
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

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

pub mod bench;
pub mod npy;
pub mod report;
pub mod safetensors;
pub mod spec_file;

pub use adeis_compiler as compiler;
pub use adeis_runtime as runtime;

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

#[doc(hidden)]
pub mod __private {
    pub use adeis_macros::schedule_impl;
}

/// What a user program usually needs.
pub mod prelude {
    pub use crate::spec_file::{load_spec, parse_spec, SpecFileError};
    pub use adeis_compiler::schedule::{AlphaFormula, DiscreteBetas, SigmaFormula};
    pub use adeis_compiler::{
        Expr, Program, Quantity, Schedule, ScheduleDef, ScheduleError, ScheduleSpec,
        ScheduleValues, Spec, SpecError,
    };
}

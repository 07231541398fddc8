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

/// What a user program usually needs.
pub mod prelude {
    pub use crate::spec_file::{load_spec, parse_spec, SpecFileError};
    pub use adeis_compiler::schedule::{AlphaFormula, DiscreteBetas, SigmaFormula};
    pub use adeis_compiler::{
        Expr, Program, Quantity, Schedule, ScheduleDef, ScheduleError, ScheduleSpec,
        ScheduleValues, Spec, SpecError,
    };
}

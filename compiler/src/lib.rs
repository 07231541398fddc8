//! adeis-compiler: everything in adeis that depends on time only.
//!
//! Formulas (text, macro tokens or built-in constructors) become [`expr::Expr`] trees in a
//! [`program::Program`]; the compiler differentiates them symbolically, derives the schedule
//! quantities and the inverse of lambda ([`schedule`]), and lowers them to native code with
//! cranelift ([`jit`]). It never touches tensors.

pub mod expr;
pub mod jit;
pub mod program;
pub mod schedule;
pub mod spec;

pub use expr::{Expr, Func, Name, Table};
pub use program::{Program, ProgramError};
pub use schedule::{Quantity, Schedule, ScheduleDef, ScheduleError, ScheduleValues};
pub use spec::{ScheduleSpec, Spec, SpecError};

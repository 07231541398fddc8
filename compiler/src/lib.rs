//! adeis-compiler: everything in adeis that depends on time only.
//!
//! Formulas (text, macro tokens or built-in constructors) become [`expr::Expr`] trees in a
//! [`program::Program`]; the compiler differentiates them symbolically, derives the schedule
//! quantities and the inverse of lambda ([`schedule`]), and lowers them to native code with
//! cranelift ([`jit`]). It never touches tensors.

pub mod dsl;
pub mod expr;
pub mod gradient;
pub mod grid;
pub mod jit;
pub mod plan;
pub mod program;
pub mod sampler;
pub mod schedule;
pub mod spec;

pub use expr::{Expr, Func, Name, Table};
pub use gradient::{GradMethod, GradientSpec, WrtKey};
pub use plan::{Instr, Operand, Plan, Pred};
pub use program::{Program, ProgramError};
pub use sampler::{build_plan, Equation, Method, Prediction, SamplerSpec};
pub use schedule::{Quantity, Schedule, ScheduleDef, ScheduleError, ScheduleValues};
pub use spec::{ScheduleSpec, Spec, SpecError};

#![warn(missing_docs)]
//! adeis-compiler: everything in adeis that depends on time only.
//!
//! Formulas (text, macro tokens or built-in constructors) become [`expr::Expr`] trees in a
//! [`program::Program`]; the compiler differentiates them symbolically, derives the schedule
//! quantities and the inverse of lambda ([`schedule`]), and lowers them to native code with
//! cranelift ([`jit`]). It never touches tensors.

pub mod adjoint_deis;
pub mod dsl;
pub mod error;
pub mod expr;
pub mod gradient;
pub mod grid;
pub mod jit;
pub mod plan;
pub mod problem;
pub mod program;
pub mod sampler;
pub mod schedule;
pub mod spec;

pub use adjoint_deis::AdjointDeisPlan;
pub use error::{Error, FieldError};
pub use expr::{Expr, Func, Name, Table};
pub use gradient::{
    Adjoint, AdjointOrder, ContinuousStates, DiscreteStates, GradMethod, GradientSpec, Wrt, WrtKey,
};
pub use plan::{
    FinalDenoise, GridSens, Instr, Operand, Plan, Pred, Reversal, ReverseStep, TimeDerivs, TimeInfo,
};
pub use problem::Problem;
pub use program::{Program, ProgramError};
pub use sampler::{build_plan, build_plan_on, Equation, Method, Prediction, SamplerSpec};
pub use schedule::{Quantity, Schedule, ScheduleDef, ScheduleError, ScheduleValues};
pub use spec::{GuidanceSpec, ScheduleSpec, Spec, ThresholdingSpec};

//! The sampler catalogue (docs/math.md section 2): from a `[sampler]` declaration and a compiled
//! schedule to a filled [`Plan`](crate::plan::Plan).
//!
//! - [`registry`]: the one table of methods (name, family, model-output form,
//!   orders, SDE orders, the options that apply).
//! - [`SamplerSpec`] (`spec.rs`): the `[sampler]` table, each default declared once, and the
//!   checks that concern every method; the option enums are in `options.rs`.
//! - `family.rs`: the `Family` trait each family implements (its own options'
//!   rules, its words in the description, its steps) and the plan under construction.
//! - The families: `multistep.rs` (DDIM, DPM-Solver, DPM-Solver++ and their SDE forms, with the
//!   singlestep forms `singlestep.rs` and `grid_stages.rs`), `deis.rs`, `unipc.rs`, `rex.rs`
//!   (reversible: it emits each step's inverse too) with its Butcher tableaus (`tableau.rs`),
//!   `bdia.rs` (reversible given its last two states), `edict.rs` (two coupled DDIM
//!   sequences), `plms.rs` (Adams-Bashforth with the heavy ball and the generalised heavy
//!   ball).
//! - `sens.rs`: the coefficients' sensitivities to the grid and the schedule's parameters;
//!   `build.rs`: the plan builder.
//!
//! A new sampler is its family module (or a method of an existing family) plus one row in the
//! registry. The affine coefficients are formulas in the step's alpha, sigma and lambda values
//! ([`formulas`]), compiled once by the JIT; DEIS integrates its Lagrange basis by quadrature
//! and UniPC solves its small order conditions, both on JIT-evaluated schedule values. Tables
//! are filled once per (schedule, sampler, grid).

mod bdia;
mod build;
mod deis;
mod dual;
mod edict;
mod family;
pub mod formulas;
mod grid_stages;
mod multistep;
mod options;
mod plms;
pub mod registry;
mod rex;
mod sens;
mod singlestep;
mod spec;
pub mod tableau;
mod unipc;

pub use build::{build_plan, build_plan_on};
pub use grid_stages::grid_orders;
pub use options::{
    DeisBasis, Equation, Momentum, Prediction, SolverType, Stages, ThirdOrder, UnipcVariant,
};
pub use registry::Method;
pub use spec::SamplerSpec;
pub use tableau::{Tableau, TableauSpec};

//! diffusers interop in one folder: model directories (`model.rs`: `config.json`, the weights
//! by diffusers' tensor names, the scheduler config beside them; a pipeline's VAE in
//! `vae.rs`) and scheduler configs read as
//! adeis specs ([`scheduler`], one reader per diffusers class).

pub mod json;
mod model;
pub mod reference;
pub mod scheduler;
mod vae;

pub use model::*;
pub use vae::VaeDir;

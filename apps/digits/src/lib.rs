#![warn(missing_docs)]
//! adeis-digits: the digits application of adeis, on the library's problem-and-solve API.
//!
//! The 8x8 handwritten digits ([`data`]), a conditional MLP denoiser and a classifier whose
//! penultimate features are the identity embedding ([`nets`]), their training ([`train`]),
//! generation ([`generate`](mod@generate)), and the AdjointDEIS morphing experiment with its evaluation
//! ([`morph`]), written as PNG pictures ([`image`]) and reports. The committed weights are
//! compiled into the library, so a copied binary needs no source tree.

pub mod data;
pub mod generate;
pub mod morph;
pub mod nets;
pub mod train;

pub use adeis_app_common::{chart, html, image, progress, write_atomic, Error};
pub use generate::{generate, noise, rows, sample_grid, sampler, schedule};

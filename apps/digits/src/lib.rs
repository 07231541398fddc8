//! adeis-digits: the digits application of adeis, on the library's problem-and-solve API.
//!
//! The 8x8 handwritten digits ([`data`]), a conditional MLP denoiser and a classifier whose
//! penultimate features are the identity embedding ([`nets`]), their training ([`train`]),
//! generation ([`generate`]), and the AdjointDEIS morphing experiment with its evaluation
//! ([`morph`]), written as PNG pictures ([`image`]) and reports. The committed weights are
//! compiled into the library, so a copied binary needs no source tree.

pub mod chart;
pub mod data;
pub mod generate;
pub mod html;
pub mod image;
pub mod morph;
pub mod nets;
pub mod progress;
pub mod train;

use std::path::{Path, PathBuf};

use adeis_compiler::FieldError;
use adeis_runtime::RuntimeError;

pub use generate::{generate, noise, rows, sample_grid, sampler, schedule};

/// What the digits application reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option with a value that is not allowed (`key` is the option's name).
    #[error(transparent)]
    Option(FieldError),
    /// Sampling or a gradient failed, or the run was interrupted.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A schedule or sampler could not be built.
    #[error(transparent)]
    Compile(#[from] adeis_compiler::Error),
    /// A file that could not be read or written.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
}

impl From<adeis_io::IoError> for Error {
    fn from(e: adeis_io::IoError) -> Error {
        Error::File {
            path: e.path,
            message: e.message,
        }
    }
}

impl From<FieldError> for Error {
    fn from(e: FieldError) -> Error {
        Error::Option(e)
    }
}

impl Error {
    /// An error about `path`.
    pub fn file(path: &Path, message: impl std::fmt::Display) -> Error {
        Error::File {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}

pub use adeis_io::write_atomic;

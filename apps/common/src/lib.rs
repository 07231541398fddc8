#![warn(missing_docs)]
//! adeis-app-common: what the applications of adeis share, so that each application is its
//! data, its models and its experiment: the error type ([`Error`]) and atomic writes, PNG
//! canvases and image grids ([`image`]), line charts with their fonts compiled in ([`chart`]),
//! progress bars that honour Ctrl-C ([`progress`]) and HTML reports ([`html`]).

pub mod chart;
pub mod html;
pub mod image;
pub mod labelled;
pub mod morph;
pub mod progress;
pub mod training;

use std::path::{Path, PathBuf};

use adeis_compiler::FieldError;
use adeis_runtime::RuntimeError;

/// What an application reports.
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
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
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

/// A sampler from its spec-file keys (validated like a `[sampler]` table).
pub fn sampler(keys: serde_json::Value) -> Result<adeis_compiler::SamplerSpec, Error> {
    let s: adeis_compiler::SamplerSpec = serde_json::from_value(keys.clone()).map_err(|e| {
        adeis_compiler::Error::from(adeis_compiler::FieldError::new(
            "sampler",
            format!("{keys}: {e}"),
        ))
    })?;
    s.validate()
        .map_err(|e| adeis_compiler::Error::from(e.under("sampler")))?;
    Ok(s)
}

//! What the facade reports: spec files that cannot be read, parsed or validated, files, and
//! the compiler's and the runtime's errors.

use std::path::PathBuf;

use adeis_compiler::FieldError;

/// Every error of the `adeis` facade.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A spec file that cannot be read.
    #[error("{}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        error: std::io::Error,
    },
    /// Spec text that does not parse (the key path and, for TOML, the line).
    #[error("{0}")]
    Syntax(String),
    /// A spec file that does not parse.
    #[error("{}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What does not parse, with the key path.
        message: String,
    },
    /// A spec file whose declarations do not hold together.
    #[error("{}: {error}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, its value and what is allowed.
        error: FieldError,
    },
    /// A data file (.npy, safetensors) that cannot be read or written.
    #[error(transparent)]
    Io(#[from] adeis_io::IoError),
    #[error(transparent)]
    /// The compiler's error (a schedule, a plan).
    Compile(#[from] adeis_compiler::Error),
    #[error(transparent)]
    /// The runtime's error (a shape, a non-finite value, an interrupt).
    Runtime(#[from] adeis_runtime::RuntimeError),
    /// An option with a value that is not allowed (`key` is the option's name).
    #[error(transparent)]
    Option(FieldError),
    /// A request that does not hold together (a model directory, an input file).
    #[error("{0}")]
    Usage(String),
}

/// The spec-file errors are the facade's errors (the name the prelude has always exported).
pub type SpecFileError = Error;

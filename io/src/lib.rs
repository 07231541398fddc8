//! adeis-io: reading and writing the files adeis exchanges with other tools (.npy arrays,
//! safetensors files), every output written atomically: a temporary file beside the target,
//! renamed into place, so an interrupted run leaves no half-written file.

pub mod npy;
pub mod safetensors;

use std::io::Write;
use std::path::{Path, PathBuf};

/// A file that could not be read, parsed or written.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct IoError {
    pub path: PathBuf,
    pub message: String,
}

impl IoError {
    pub fn new(path: &Path, message: impl std::fmt::Display) -> IoError {
        IoError {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}

/// Writes `bytes` to `path` whole or not at all.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    if path.file_name().is_none() {
        return Err(IoError::new(path, "not a file path"));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".adeis-partial-")
        .tempfile_in(dir)
        .map_err(|e| IoError::new(path, e))?;
    tmp.write_all(bytes).map_err(|e| IoError::new(path, e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| IoError::new(path, e))?;
    tmp.persist(path).map_err(|e| IoError::new(path, e.error))?;
    Ok(())
}

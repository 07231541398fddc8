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

/// The peak resident memory of this process, in bytes (Linux: VmHWM from /proc/self/status),
/// if known.
pub fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
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
    let mut builder = tempfile::Builder::new();
    builder.prefix(".adeis-partial-");
    // A temporary file is private (0600); the output is an ordinary file, so it gets the mode
    // std::fs::write would give it (0666 less the umask).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder
        .tempfile_in(dir)
        .map_err(|e| IoError::new(path, e))?;
    tmp.write_all(bytes).map_err(|e| IoError::new(path, e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| IoError::new(path, e))?;
    tmp.persist(path).map_err(|e| IoError::new(path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The output is whole, and an ordinary file: the mode std::fs::write gives (not the
    /// temporary file's private 0600).
    #[test]
    fn write_atomic_writes_an_ordinary_file() {
        let dir = tempfile::tempdir().unwrap();
        let (atomic, plain) = (dir.path().join("a.bin"), dir.path().join("b.bin"));
        write_atomic(&atomic, b"adeis").unwrap();
        std::fs::write(&plain, b"adeis").unwrap();
        assert_eq!(std::fs::read(&atomic).unwrap(), b"adeis");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&atomic), mode(&plain));
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("partial"))
            .collect();
        assert!(leftovers.is_empty());
    }
}

#![warn(missing_docs)]
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
    /// The file.
    pub path: PathBuf,
    /// What went wrong, for a person to read.
    pub message: String,
}

impl IoError {
    /// An error about `path`.
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

/// The memory this machine can give a new allocation without swapping, in bytes (Linux:
/// MemAvailable from /proc/meminfo), if known.
pub fn available_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses an output path that an output file cannot take: no file name, a folder, or
/// something other than a regular file (a device, a FIFO, a socket: an output is written
/// beside it and renamed over it, so it would be replaced, not written through). A missing
/// file is fine.
pub fn check_output_path(path: &Path) -> Result<(), IoError> {
    if path.file_name().is_none() {
        return Err(IoError::new(path, "not a file path"));
    }
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    if meta.is_dir() {
        return Err(IoError::new(
            path,
            "is a folder; an output file cannot replace it",
        ));
    }
    if !meta.is_file() {
        return Err(IoError::new(
            path,
            "is not a regular file (a device, a FIFO or a socket); adeis writes each output as a whole file, renamed into place, so give the path of a file",
        ));
    }
    Ok(())
}

/// Whether two paths name the same file however they are spelled (`x.npy`, `./x.npy`, a
/// symbolic link): their folders resolved, then the names compared; a path whose folder does
/// not exist only equals itself.
pub fn same_file(a: &Path, b: &Path) -> bool {
    let resolve = |p: &Path| -> Option<PathBuf> {
        if let Ok(c) = p.canonicalize() {
            return Some(c);
        }
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.canonicalize().ok()?,
            _ => std::env::current_dir().ok()?,
        };
        Some(dir.join(p.file_name()?))
    };
    a == b || matches!((resolve(a), resolve(b)), (Some(x), Some(y)) if x == y)
}

/// Refuses, before a run, an output folder that cannot become one: the path, or a folder
/// above it, is a file. A folder that does not exist yet is fine (it is made when the outputs
/// are written).
pub fn check_output_folder(dir: &Path) -> Result<(), IoError> {
    let mut p = dir;
    loop {
        if p.exists() {
            if !p.is_dir() {
                return Err(IoError::new(
                    dir,
                    if p == dir {
                        "is a file, not a folder; give a folder (it is made if missing)".to_string()
                    } else {
                        format!("{} is a file, not a folder", p.display())
                    },
                ));
            }
            return Ok(());
        }
        match p.parent() {
            Some(q) if !q.as_os_str().is_empty() => p = q,
            _ => return Ok(()),
        }
    }
}

/// Writes `bytes` to `path` whole or not at all.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    let mut one = Outputs::new();
    one.stage(path, bytes)?;
    one.commit().map(|_| ())
}

/// A command's outputs written all or nothing: each is staged as a temporary file beside its
/// target (written and synced), and [`Outputs::commit`] renames them into place one after
/// another once all exist. Dropped before the commit (an error, an interrupt), the staged files
/// are removed and no output appears.
#[derive(Debug, Default)]
pub struct Outputs {
    staged: Vec<(tempfile::NamedTempFile, PathBuf)>,
}

impl Outputs {
    /// No output staged yet.
    pub fn new() -> Outputs {
        Outputs::default()
    }

    /// Stages `bytes` for `path`; a path staged twice is an error (one output over another),
    /// and so is a path whose folder does not exist.
    pub fn stage(&mut self, path: &Path, bytes: &[u8]) -> Result<(), IoError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        self.stage_in(path, dir, bytes)
    }

    /// Stages `bytes` for `path` whose folders may not exist yet: they are made at the
    /// commit, so that a command that fails leaves no empty output folder behind (the
    /// temporary file waits in the nearest folder that exists, on the same file system).
    pub fn stage_creating_folders(&mut self, path: &Path, bytes: &[u8]) -> Result<(), IoError> {
        let mut dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        while !dir.is_dir() {
            if dir.exists() {
                return Err(IoError::new(
                    path,
                    format!("{} is a file, not a folder", dir.display()),
                ));
            }
            dir = match dir.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
        }
        self.stage_in(path, dir, bytes)
    }

    fn stage_in(&mut self, path: &Path, dir: &Path, bytes: &[u8]) -> Result<(), IoError> {
        check_output_path(path)?;
        if self.staged.iter().any(|(_, p)| p == path) {
            return Err(IoError::new(
                path,
                "given for two outputs of this command; give each its own path",
            ));
        }
        let mut builder = tempfile::Builder::new();
        builder.prefix(".adeis-partial-");
        // A temporary file is private (0600); the output is an ordinary file, so it gets the
        // mode std::fs::write would give it (0666 less the umask).
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
        self.staged.push((tmp, path.to_path_buf()));
        Ok(())
    }

    /// Renames every staged file into place; returns the paths, in staging order.
    pub fn commit(self) -> Result<Vec<PathBuf>, IoError> {
        let mut done = Vec::with_capacity(self.staged.len());
        for (tmp, path) in self.staged {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| IoError::new(dir, e))?;
            }
            tmp.persist(&path)
                .map_err(|e| IoError::new(&path, e.error))?;
            done.push(path);
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outputs appear together at the commit; a failure on one, or no commit, leaves none of
    /// them and no temporary file.
    #[test]
    fn outputs_are_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.npy"), dir.path().join("b.json"));
        let listing = || std::fs::read_dir(dir.path()).unwrap().count();
        let mut out = Outputs::new();
        out.stage(&a, b"first").unwrap();
        let e = out
            .stage(&dir.path().join("no-such-folder/b.json"), b"second")
            .unwrap_err();
        assert!(e.path.ends_with("no-such-folder/b.json"), "{e}");
        drop(out);
        assert_eq!(listing(), 0, "a failed command left files");
        let mut out = Outputs::new();
        out.stage(&a, b"first").unwrap();
        assert!(out
            .stage(&a, b"again")
            .unwrap_err()
            .message
            .contains("two outputs"));
        let folder = out.stage(dir.path(), b"x").unwrap_err();
        assert!(folder.message.contains("is a folder"), "{folder}");
        out.stage(&b, b"second").unwrap();
        assert!(!a.exists() && !b.exists());
        assert_eq!(out.commit().unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(std::fs::read(&a).unwrap(), b"first");
        assert_eq!(std::fs::read(&b).unwrap(), b"second");
        assert_eq!(listing(), 2);
    }

    /// Folders an output needs are made at the commit only: dropped before it, nothing is
    /// left, not even the folder.
    #[test]
    fn output_folders_appear_at_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("out/unet/weights.bin");
        let mut out = Outputs::new();
        out.stage_creating_folders(&deep, b"w").unwrap();
        drop(out);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut out = Outputs::new();
        out.stage_creating_folders(&deep, b"w").unwrap();
        out.commit().unwrap();
        assert_eq!(std::fs::read(&deep).unwrap(), b"w");
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let e = Outputs::new()
            .stage_creating_folders(&file.join("a/b.png"), b"p")
            .unwrap_err();
        assert!(e.message.contains("is a file, not a folder"), "{e}");
    }

    /// A device is not replaced by a regular file.
    #[cfg(unix)]
    #[test]
    fn a_device_is_not_an_output() {
        let e = Outputs::new()
            .stage(Path::new("/dev/null"), b"x")
            .unwrap_err();
        assert!(e.message.contains("not a regular file"), "{e}");
    }

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

//! Fashion-MNIST (Zalando Research, MIT licence): the IDX files of Debian's
//! `dataset-fashion-mnist` package for training, and 1000 held-out test images compiled into
//! the program from `data/fashion-mnist/heldout-1000.u8` (see `data/fashion-mnist/README.md`).
//! Pixels are scaled to [-1, 1] (1 = full ink).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::Error;

/// Side of an image.
pub const SIDE: usize = 28;
/// Pixels per image (28 x 28, row-major).
pub const PIXELS: usize = SIDE * SIDE;
/// Classes 0..9.
pub const CLASSES: usize = 10;
/// The class names, by label.
pub const CLASS_NAMES: [&str; CLASSES] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];
/// Where Debian's package puts the IDX files.
pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

static HELDOUT: &[u8] = include_bytes!("../../../data/fashion-mnist/heldout-1000.u8");

/// Images (flat, `len() * PIXELS` values in [-1, 1]) and their labels.
#[derive(Clone, Debug, Default)]
pub struct Fashion {
    /// The pixels, `len() * PIXELS` values.
    pub pixels: Vec<f32>,
    /// The classes.
    pub labels: Vec<usize>,
}

impl Fashion {
    /// The number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Image `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        &self.pixels[i * PIXELS..(i + 1) * PIXELS]
    }

    /// Indices of the images of class `c`.
    pub fn of_class(&self, c: usize) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.labels[i] == c).collect()
    }

    /// The images `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> Fashion {
        let mut s = Fashion::default();
        for &i in idx {
            s.pixels.extend_from_slice(self.image(i));
            s.labels.push(self.labels[i]);
        }
        s
    }
}

fn scale(p: u8) -> f32 {
    p as f32 / 127.5 - 1.0
}

/// The 1000 held-out test images compiled into the program.
pub fn heldout() -> Fashion {
    let mut d = Fashion::default();
    for rec in HELDOUT.chunks_exact(PIXELS + 1) {
        d.pixels.extend(rec[..PIXELS].iter().map(|&p| scale(p)));
        d.labels.push(rec[PIXELS] as usize);
    }
    d
}

/// Reads an IDX file, gzipped (`.gz`) or not: (dimensions, bytes). An error names the file and
/// what is wrong.
fn read_idx(path: &Path, want_dims: usize) -> Result<(Vec<usize>, Vec<u8>), Error> {
    let raw = std::fs::read(path).map_err(|e| {
        Error::file(
            path,
            format!(
                "{e} (Fashion-MNIST comes from Debian's dataset-fashion-mnist package: \
                 run scripts/install-fashion-mnist.sh, or pass --data DIR)"
            ),
        )
    })?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::file(path, format!("not a readable gzip file: {e}")))?;
        out
    } else {
        raw
    };
    let bad = |m: String| Error::file(path, m);
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("not an IDX file (no 0x0000 magic)".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "IDX element type 0x{:02x}; Fashion-MNIST files hold unsigned bytes (0x08)",
            bytes[2]
        )));
    }
    let dims = bytes[3] as usize;
    if dims != want_dims {
        return Err(bad(format!(
            "an IDX file of {dims} dimensions; expected {want_dims}"
        )));
    }
    let head = 4 + 4 * dims;
    if bytes.len() < head {
        return Err(bad("the IDX header is cut short".into()));
    }
    let shape: Vec<usize> = (0..dims)
        .map(|k| u32::from_be_bytes(bytes[4 + 4 * k..8 + 4 * k].try_into().unwrap()) as usize)
        .collect();
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("IDX shape {shape:?} overflows")))?;
    if bytes.len() - head != count {
        return Err(bad(format!(
            "IDX shape {shape:?} needs {count} bytes of data; the file has {}",
            bytes.len() - head
        )));
    }
    Ok((shape, bytes[head..].to_vec()))
}

/// Which part of the dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The 60,000 training images.
    Train,
    /// The 10,000 test images.
    Test,
}

/// The IDX file pair of `split` in `dir`.
pub fn files(dir: &Path, split: Split) -> (PathBuf, PathBuf) {
    let stem = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    (
        dir.join(format!("{stem}-images-idx3-ubyte.gz")),
        dir.join(format!("{stem}-labels-idx1-ubyte.gz")),
    )
}

/// Reads `split` from the IDX files in `dir`.
pub fn load(dir: &Path, split: Split) -> Result<Fashion, Error> {
    let (images, labels) = files(dir, split);
    let (ishape, ibytes) = read_idx(&images, 3)?;
    if ishape[1..] != [SIDE, SIDE] {
        return Err(Error::file(
            &images,
            format!("images of {:?}; Fashion-MNIST's are 28 x 28", &ishape[1..]),
        ));
    }
    let (lshape, lbytes) = read_idx(&labels, 1)?;
    if lshape[0] != ishape[0] {
        return Err(Error::file(
            &labels,
            format!("{} labels for {} images", lshape[0], ishape[0]),
        ));
    }
    if let Some(l) = lbytes.iter().find(|&&l| l as usize >= CLASSES) {
        return Err(Error::file(
            &labels,
            format!("label {l}; Fashion-MNIST's labels are 0..9"),
        ));
    }
    Ok(Fashion {
        pixels: ibytes.into_iter().map(scale).collect(),
        labels: lbytes.into_iter().map(|l| l as usize).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heldout_images_are_whole_and_balanced() {
        let h = heldout();
        assert_eq!(h.len(), 1000);
        assert_eq!(h.pixels.len(), 1000 * PIXELS);
        assert!(h.pixels.iter().all(|p| (-1.0..=1.0).contains(p)));
        for c in 0..CLASSES {
            let n = h.of_class(c).len();
            assert!((70..=130).contains(&n), "class {c}: {n} images");
        }
    }

    #[test]
    fn idx_errors_name_the_file_and_the_fault() {
        let dir = std::env::temp_dir().join(format!("adeis-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.idx");
        std::fs::write(&p, [0u8, 0, 8, 1, 0, 0, 0, 5, 1, 2]).unwrap();
        let e = read_idx(&p, 1).unwrap_err().to_string();
        assert!(e.contains("bad.idx") && e.contains("needs 5 bytes"), "{e}");
        std::fs::write(&p, [0u8, 0, 8, 1, 0xff, 0xff, 0xff, 0xff]).unwrap();
        let e = read_idx(&p, 3).unwrap_err().to_string();
        assert!(e.contains("1 dimensions; expected 3"), "{e}");
        let e = load(&dir, Split::Train).unwrap_err().to_string();
        assert!(e.contains("install-fashion-mnist.sh"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_package_files_read_when_installed() {
        let dir = Path::new(DEFAULT_DIR);
        if !dir.join("t10k-images-idx3-ubyte.gz").exists() {
            eprintln!("skipped: Fashion-MNIST is not installed in {DEFAULT_DIR}");
            return;
        }
        let test = load(dir, Split::Test).unwrap();
        assert_eq!(test.len(), 10_000);
        // the committed subset is the first 1000 test images
        let h = heldout();
        assert_eq!(&test.pixels[..1000 * PIXELS], &h.pixels[..]);
        assert_eq!(&test.labels[..1000], &h.labels[..]);
    }
}

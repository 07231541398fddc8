//! Reading and writing .npy arrays (f32 or f64, little-endian, C order), written atomically
//! (a temporary file renamed into place, so an interrupted run leaves no half-written file).

use std::fs;
use std::path::Path;

use crate::{write_atomic, IoError};

/// An array read from or written to .npy, values held as f64.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
    /// The element size in the file in bytes (4 for f32, 8 for f64).
    pub word: usize,
    /// Whether the file holds integers (labels).
    pub integer: bool,
}

fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let i = header.find(&format!("'{key}'"))?;
    let rest = header[i + key.len() + 2..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    Some(rest)
}

/// Reads a .npy file of f32 or f64 values.
pub fn read_npy(path: &Path) -> Result<NpyArray, IoError> {
    let bytes = fs::read(path).map_err(|e| IoError::new(path, e))?;
    let bad = |why: &str| IoError::new(path, format!("not a supported .npy file: {why}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("missing the \\x93NUMPY magic"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad("truncated header"));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(bad(&format!("format version {v}"))),
    };
    let header = std::str::from_utf8(
        bytes
            .get(start..start + hlen)
            .ok_or_else(|| bad("truncated header"))?,
    )
    .map_err(|_| bad("header is not text"))?;
    let descr = header_value(header, "descr").ok_or_else(|| bad("no descr"))?;
    // (descr, bytes per element, integer): little-endian floats and integers.
    const DTYPES: [(&str, usize, bool); 11] = [
        ("'<f8'", 8, false),
        ("'float64'", 8, false),
        ("'<f4'", 4, false),
        ("'<i8'", 8, true),
        ("'<i4'", 4, true),
        ("'<i2'", 2, true),
        ("'|i1'", 1, true),
        ("'<u8'", 8, true),
        ("'<u4'", 4, true),
        ("'<u2'", 2, true),
        ("'|u1'", 1, true),
    ];
    let Some(&(code, word, integer)) = DTYPES.iter().find(|(d, _, _)| descr.starts_with(d)) else {
        return Err(bad(&format!(
            "dtype {} (adeis reads little-endian f32 '<f4', f64 '<f8' and integers '<i8', '<i4', '<i2', '|i1', '<u8', '<u4', '<u2', '|u1')",
            descr.split(',').next().unwrap_or(descr)
        )));
    };
    if header_value(header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err(bad("Fortran order (save the array in C order)"));
    }
    let shape_text = header_value(header, "shape").ok_or_else(|| bad("no shape"))?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("malformed shape"))?;
    let shape: Vec<usize> = inner
        .split(',')
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad("malformed shape")))
        .collect::<Result<_, _>>()?;
    // Checked: a header whose shape product wraps around must not pass the size check.
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|n| n.checked_mul(word).map(|_| n))
        .ok_or_else(|| {
            bad(&format!(
                "shape {shape:?} has more elements than any file can hold"
            ))
        })?;
    let body = &bytes[start + hlen..];
    if body.len() != n * word {
        return Err(bad(&format!(
            "shape {shape:?} needs {} bytes of data, found {}",
            n * word,
            body.len()
        )));
    }
    let data: Vec<f64> = body
        .chunks_exact(word)
        .map(|c| match code {
            "'<f8'" | "'float64'" => f64::from_le_bytes(c.try_into().unwrap()),
            "'<f4'" => f32::from_le_bytes(c.try_into().unwrap()) as f64,
            "'<i8'" => i64::from_le_bytes(c.try_into().unwrap()) as f64,
            "'<i4'" => i32::from_le_bytes(c.try_into().unwrap()) as f64,
            "'<i2'" => i16::from_le_bytes(c.try_into().unwrap()) as f64,
            "'|i1'" => c[0] as i8 as f64,
            "'<u8'" => u64::from_le_bytes(c.try_into().unwrap()) as f64,
            "'<u4'" => u32::from_le_bytes(c.try_into().unwrap()) as f64,
            "'<u2'" => u16::from_le_bytes(c.try_into().unwrap()) as f64,
            _ => c[0] as f64,
        })
        .collect();
    Ok(NpyArray {
        shape,
        data,
        word,
        integer,
    })
}

/// The .npy header for `descr` and `shape`, padded so that the data starts on a 64-byte
/// boundary.
fn header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape_text = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // The header ends with a newline.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes
}

/// Writes `data` with `shape` as f32 (word 4) or f64 (word 8), atomically.
pub fn write_npy(path: &Path, shape: &[usize], data: &[f64], word: usize) -> Result<(), IoError> {
    assert_eq!(shape.iter().product::<usize>(), data.len(), "npy shape");
    let mut bytes = header(if word == 4 { "<f4" } else { "<f8" }, shape);
    for v in data {
        if word == 4 {
            bytes.extend_from_slice(&(*v as f32).to_le_bytes());
        } else {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    write_atomic(path, &bytes)
}

/// Writes integers (class labels) as int64, atomically.
pub fn write_npy_i64(path: &Path, shape: &[usize], data: &[i64]) -> Result<(), IoError> {
    assert_eq!(shape.iter().product::<usize>(), data.len(), "npy shape");
    let mut bytes = header("<i8", shape);
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_whose_size_overflows_is_an_error() {
        let dir = std::env::temp_dir().join(format!("adeis-npy-overflow-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("wrap.npy");
        // 2^62 * 8 elements of 8 bytes wraps a 64-bit byte count to 0, which an empty body
        // would match.
        let bytes = header("<f8", &[1 << 62, 8]);
        fs::write(&p, &bytes).unwrap();
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(e.contains("more elements than any file can hold"), "{e}");
    }

    #[test]
    fn round_trips_f32_and_f64() {
        let dir = std::env::temp_dir().join(format!("adeis-npy-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for word in [4, 8] {
            let p = dir.join(format!("a{word}.npy"));
            let data: Vec<f64> = (0..6).map(|i| i as f64 * 0.5 - 1.0).collect();
            write_npy(&p, &[2, 3], &data, word).unwrap();
            let a = read_npy(&p).unwrap();
            assert_eq!(
                a,
                NpyArray {
                    shape: vec![2, 3],
                    data,
                    word,
                    integer: false,
                }
            );
            let bytes = fs::read(&p).unwrap();
            let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            assert_eq!((10 + hlen) % 64, 0);
        }
        fs::write(dir.join("bad.npy"), b"hello").unwrap();
        assert!(read_npy(&dir.join("bad.npy"))
            .unwrap_err()
            .to_string()
            .contains("magic"));
        fs::remove_dir_all(&dir).unwrap();
    }
}

//! Reading .npy arrays through the `npyz` crate (every float, integer and boolean dtype, either
//! byte order, C or Fortran order) and writing them (f32, f64 or i64, little-endian, C order),
//! atomically (a temporary file renamed into place, so an interrupted run leaves no
//! half-written file).

use std::fs;
use std::path::Path;

use crate::{write_atomic, IoError};

/// An array read from or written to .npy, values held as f64.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// The array's shape, C order.
    pub shape: Vec<usize>,
    /// Its values, C order.
    pub data: Vec<f64>,
    /// The element size in the file in bytes (2 for f16, 4 for f32, 8 for f64 and i64).
    pub word: usize,
    /// Whether the file holds integers (labels).
    pub integer: bool,
}

/// Where the data of a .npy file starts (after the magic, the version, the header length and
/// the header), so that a shape can be checked against the data before anything is read.
fn data_offset(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return None;
    }
    match bytes[6] {
        1 => Some(10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize),
        2 | 3 if bytes.len() >= 12 => {
            Some(12 + u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize)
        }
        _ => None,
    }
}

/// What adeis reads, for the error on anything else.
const SUPPORTED: &str = "adeis reads floats (f2, f4, f8), integers (i1-i8, u1-u8) and booleans, either byte order, C or Fortran order";

/// Values in C order from values stored in Fortran (column-major) order.
fn c_order(fortran: Vec<f64>, shape: &[usize]) -> Vec<f64> {
    if shape.len() < 2 {
        return fortran;
    }
    let mut out = Vec::with_capacity(fortran.len());
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..fortran.len() {
        // Offset of idx in column-major storage: the first axis varies fastest.
        let mut off = 0;
        for k in (0..shape.len()).rev() {
            off = off * shape[k] + idx[k];
        }
        out.push(fortran[off]);
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

/// Reads a .npy file (any float, integer or boolean dtype, either byte order, C or Fortran
/// order) through the `npyz` crate; values are returned as f64 in C order.
pub fn read_npy(path: &Path) -> Result<NpyArray, IoError> {
    let bytes = fs::read(path).map_err(|e| IoError::new(path, e))?;
    let bad = |why: &str| IoError::new(path, format!("not a supported .npy file: {why}"));
    let offset = data_offset(&bytes)
        .ok_or_else(|| bad("missing the \\x93NUMPY magic, or a format version other than 1-3"))?;
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| bad(&e.to_string()))?;
    let shape: Vec<usize> = npy
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad("a dimension too large for this machine")))
        .collect::<Result<_, _>>()?;
    let npyz::DType::Plain(ts) = npy.dtype() else {
        return Err(bad(&format!("a structured dtype ({SUPPORTED})")));
    };
    use npyz::TypeChar::{Bool, Float, Int, Uint};
    let word = ts.num_bytes().unwrap_or(0);
    let (kind, integer) = match (ts.type_char(), word) {
        (Float, 2 | 4 | 8) => ("float", false),
        (Int | Uint, 1 | 2 | 4 | 8) | (Bool, 1) => ("integer", true),
        _ => return Err(bad(&format!("dtype {ts} ({SUPPORTED})"))),
    };
    // Checked: a header whose shape product wraps around, or claims more than the file
    // holds, must fail here, before anything is allocated for it.
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|n| n.checked_mul(word).map(|_| n))
        .ok_or_else(|| {
            bad(&format!(
                "shape {shape:?} has more elements than any file can hold"
            ))
        })?;
    let body = bytes.len().saturating_sub(offset);
    if body != n * word {
        return Err(bad(&format!(
            "shape {shape:?} needs {} bytes of data, found {body}",
            n * word
        )));
    }
    let fortran = npy.order() == npyz::Order::Fortran;
    let read = |e: std::io::Error| bad(&format!("{kind} data: {e}"));
    let data: Vec<f64> = match (ts.type_char(), word) {
        (Float, 2) => npy
            .into_vec::<half::f16>()
            .map_err(read)?
            .into_iter()
            .map(f64::from)
            .collect(),
        (Float, 4) => npy
            .into_vec::<f32>()
            .map_err(read)?
            .into_iter()
            .map(f64::from)
            .collect(),
        (Float, _) => npy.into_vec::<f64>().map_err(read)?,
        (Int, 1) => npy
            .into_vec::<i8>()
            .map_err(read)?
            .into_iter()
            .map(f64::from)
            .collect(),
        (Int, 2) => npy
            .into_vec::<i16>()
            .map_err(read)?
            .into_iter()
            .map(f64::from)
            .collect(),
        (Int, 4) => npy
            .into_vec::<i32>()
            .map_err(read)?
            .into_iter()
            .map(f64::from)
            .collect(),
        (Int, _) => npy
            .into_vec::<i64>()
            .map_err(read)?
            .into_iter()
            .map(|v| v as f64)
            .collect(),
        (Uint, 1) => npy
            .into_vec::<u8>()
            .map_err(read)?
            .into_iter()
            .map(f64::from)
            .collect(),
        (Uint, 2) => npy
            .into_vec::<u16>()
            .map_err(read)?
            .into_iter()
            .map(f64::from)
            .collect(),
        (Uint, 4) => npy
            .into_vec::<u32>()
            .map_err(read)?
            .into_iter()
            .map(f64::from)
            .collect(),
        (Uint, _) => npy
            .into_vec::<u64>()
            .map_err(read)?
            .into_iter()
            .map(|v| v as f64)
            .collect(),
        _ => npy
            .into_vec::<bool>()
            .map_err(read)?
            .into_iter()
            .map(|b| f64::from(u8::from(b)))
            .collect(),
    };
    let data = if fortran { c_order(data, &shape) } else { data };
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
    write_atomic(path, &npy_bytes(shape, data, word))
}

/// The .npy file of `data` with `shape` as f32 (word 4) or f64 (word 8).
pub fn npy_bytes(shape: &[usize], data: &[f64], word: usize) -> Vec<u8> {
    assert_eq!(shape.iter().product::<usize>(), data.len(), "npy shape");
    let mut bytes = header(if word == 4 { "<f4" } else { "<f8" }, shape);
    for v in data {
        if word == 4 {
            bytes.extend_from_slice(&(*v as f32).to_le_bytes());
        } else {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    bytes
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

    /// Arrays numpy saved (scripts/make-npy-fixtures.py) read as numpy reads them.
    #[test]
    fn reads_what_numpy_writes_in_every_dtype_and_order() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/npy");
        let expected: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
        assert!(expected.len() >= 12);
        for (name, want) in &expected {
            let a = read_npy(&dir.join(format!("{name}.npy")))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let shape: Vec<usize> = serde_json::from_value(want["shape"].clone()).unwrap();
            let data: Vec<f64> = serde_json::from_value(want["data"].clone()).unwrap();
            assert_eq!(a.shape, shape, "{name}");
            assert_eq!(a.data, data, "{name}");
            assert_eq!(a.integer, want["integer"].as_bool().unwrap(), "{name}");
        }
    }

    #[test]
    fn unsupported_dtypes_are_named() {
        let dir = std::env::temp_dir().join(format!("adeis-npy-dtype-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.npy");
        let mut bytes = header("<c16", &[1]);
        bytes.extend_from_slice(&[0u8; 16]);
        fs::write(&p, &bytes).unwrap();
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(
            e.contains("dtype <c16") && e.contains("adeis reads floats"),
            "{e}"
        );
        let mut bytes = header("<f8", &[3]);
        bytes.extend_from_slice(&[0u8; 16]);
        fs::write(&p, &bytes).unwrap();
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(e.contains("needs 24 bytes of data, found 16"), "{e}");
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

//! Writing (and reading back) safetensors files: a JSON header of tensor names, dtypes, shapes
//! and byte offsets, then the little-endian data.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors};

use crate::{write_atomic, IoError};

/// A named tensor: shape and values (written as f32 or f64).
pub struct NamedTensor {
    /// The tensor's name in the file (diffusers' parameter names, `dx_t`, ...).
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, C order.
    pub data: Vec<f64>,
}

/// Writes tensors to a safetensors file, atomically. `word` is 4 (F32) or 8 (F64).
pub fn write_safetensors(path: &Path, tensors: &[NamedTensor], word: usize) -> Result<(), IoError> {
    write_atomic(path, &safetensors_bytes(tensors, word))
}

/// The safetensors file of `tensors`. `word` is 4 (F32) or 8 (F64).
pub fn safetensors_bytes(tensors: &[NamedTensor], word: usize) -> Vec<u8> {
    let dtype = if word == 4 { "F32" } else { "F64" };
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    let mut body = Vec::new();
    for t in tensors {
        assert_eq!(
            t.shape.iter().product::<usize>(),
            t.data.len(),
            "tensor {} shape",
            t.name
        );
        let len = t.data.len() * word;
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.shape, "data_offsets": [offset, offset + len]}),
        );
        for v in &t.data {
            if word == 4 {
                body.extend_from_slice(&(*v as f32).to_le_bytes());
            } else {
                body.extend_from_slice(&v.to_le_bytes());
            }
        }
        offset += len;
    }
    let mut text = serde_json::to_string(&serde_json::Value::Object(header)).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut bytes = Vec::with_capacity(8 + text.len() + body.len());
    bytes.extend_from_slice(&(text.len() as u64).to_le_bytes());
    bytes.extend_from_slice(text.as_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

/// What is wrong with a safetensors file, in words (the crate's errors are variant names such
/// as `InvalidHeaderLength`).
pub fn explain(e: &::safetensors::SafeTensorError) -> String {
    use ::safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => "shorter than the 8 bytes of a safetensors header length (truncated, or not a safetensors file)".into(),
        E::InvalidHeaderLength => "its header length runs past the end of the file (truncated, or not a safetensors file)".into(),
        E::HeaderTooLarge => "its header is larger than 100 MB (not a safetensors file)".into(),
        E::InvalidHeader => "its header is not UTF-8 text (not a safetensors file)".into(),
        E::InvalidHeaderStart => "its header does not start with `{` (not a safetensors file)".into(),
        E::InvalidHeaderDeserialization => "its header is not the JSON a safetensors file has".into(),
        E::JsonError(j) => format!("its header is not valid JSON: {j}"),
        E::TensorNotFound(name) => format!("it has no tensor `{name}`"),
        E::TensorInvalidInfo => "a tensor's shape and dtype do not match its byte range".into(),
        E::InvalidOffset(name) => format!("tensor `{name}`'s byte range is outside the data or overlaps another's"),
        E::InvalidTensorView(dtype, shape, len) => format!("a {dtype:?} tensor of shape {shape:?} cannot hold {len} bytes"),
        E::MetadataIncompleteBuffer => "its tensors do not cover the data exactly (truncated, or extra bytes at the end)".into(),
        E::ValidationOverflow => "a tensor's shape overflows when multiplied out".into(),
        E::IoError(io) => io.to_string(),
    }
}

/// Tensors by name: (shape, values).
pub type TensorMap = BTreeMap<String, (Vec<usize>, Vec<f64>)>;

/// A tensor as the file stores it: its dtype's name (`F32`, `BF16`, ...), shape and values.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTensor {
    /// The dtype's name as the file spells it.
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, converted to f64.
    pub values: Vec<f64>,
}

/// Reads a safetensors file (header validated by the `safetensors` crate: offsets, sizes,
/// dtypes), every tensor's values as f64: F64, F32, F16 and BF16 are converted exactly, as are
/// the integer dtypes (labels).
pub fn read_safetensors(path: &Path) -> Result<TensorMap, IoError> {
    Ok(read_stored(path)?
        .into_iter()
        .map(|(k, t)| (k, (t.shape, t.values)))
        .collect())
}

/// [`read_safetensors`] with each tensor's dtype.
pub fn read_stored(path: &Path) -> Result<BTreeMap<String, StoredTensor>, IoError> {
    let bytes = std::fs::read(path).map_err(|e| IoError::new(path, e))?;
    read_stored_bytes(&bytes, path)
}

/// [`read_stored`] of a file's bytes (weights compiled into a program); `path` names them in
/// errors.
pub fn read_stored_bytes(
    bytes: &[u8],
    path: &Path,
) -> Result<BTreeMap<String, StoredTensor>, IoError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        IoError::new(
            path,
            format!("not a valid safetensors file: {}", explain(&e)),
        )
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<f64> = match view.dtype() {
            Dtype::F64 => words(data, f64::from_le_bytes),
            Dtype::F32 => words(data, |b: [u8; 4]| f32::from_le_bytes(b) as f64),
            Dtype::F16 => words(data, |b: [u8; 2]| half::f16::from_le_bytes(b).to_f64()),
            Dtype::BF16 => words(data, |b: [u8; 2]| half::bf16::from_le_bytes(b).to_f64()),
            Dtype::I64 => words(data, |b: [u8; 8]| i64::from_le_bytes(b) as f64),
            Dtype::I32 => words(data, |b: [u8; 4]| i32::from_le_bytes(b) as f64),
            Dtype::U8 => data.iter().map(|v| *v as f64).collect(),
            other => {
                return Err(IoError::new(
                    path,
                    format!(
                        "tensor `{name}` has dtype {other:?}; adeis reads F64, F32, F16, BF16, I64, I32 and U8"
                    ),
                ))
            }
        };
        out.insert(
            name,
            StoredTensor {
                dtype: format!("{:?}", view.dtype()),
                shape: view.shape().to_vec(),
                values,
            },
        );
    }
    Ok(out)
}

/// Little-endian words of N bytes.
fn words<const N: usize>(data: &[u8], f: impl Fn([u8; N]) -> f64) -> Vec<f64> {
    data.chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks of N bytes")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broken file's error says what is wrong in words, not the crate's variant names.
    #[test]
    fn broken_files_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let whole = safetensors_bytes(
            &[NamedTensor {
                name: "w".into(),
                shape: vec![2, 3],
                data: vec![1.0; 6],
            }],
            4,
        );
        for (bytes, want) in [
            (&b"garbage"[..], "shorter than the 8 bytes"),
            (&whole[..20], "header length runs past the end"),
            (&whole[..whole.len() - 4], "do not cover the data exactly"),
        ] {
            std::fs::write(&path, bytes).unwrap();
            let e = read_safetensors(&path).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
            assert!(!e.contains("Invalid") && !e.contains("Header"), "{e}");
        }
        std::fs::write(&path, &whole).unwrap();
        assert_eq!(read_safetensors(&path).unwrap()["w"].0, vec![2, 3]);
    }
}

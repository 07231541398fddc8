//! Writing (and reading back) safetensors files: a JSON header of tensor names, dtypes, shapes
//! and byte offsets, then the little-endian data.

use std::collections::BTreeMap;
use std::path::Path;

use crate::{write_atomic, IoError};

/// A named tensor: shape and values (written as f32 or f64).
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

/// Writes tensors to a safetensors file, atomically. `word` is 4 (F32) or 8 (F64).
pub fn write_safetensors(path: &Path, tensors: &[NamedTensor], word: usize) -> Result<(), IoError> {
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
    write_atomic(path, &bytes)
}

/// Reads a safetensors file of F32 or F64 tensors (values as f64), by name.
/// Tensors by name: (shape, values).
pub type TensorMap = BTreeMap<String, (Vec<usize>, Vec<f64>)>;

pub fn read_safetensors(path: &Path) -> Result<TensorMap, IoError> {
    let bytes = std::fs::read(path).map_err(|e| IoError::new(path, e))?;
    let bad = |why: &str| IoError::new(path, format!("not a safetensors file: {why}"));
    if bytes.len() < 8 {
        return Err(bad("too short"));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value =
        serde_json::from_slice(bytes.get(8..8 + n).ok_or_else(|| bad("truncated header"))?)
            .map_err(|e| bad(&e.to_string()))?;
    let data = &bytes[8 + n..];
    let mut out = BTreeMap::new();
    for (name, info) in header
        .as_object()
        .ok_or_else(|| bad("header is not an object"))?
    {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info["dtype"].as_str().unwrap_or("");
        let word = match dtype {
            "F32" => 4,
            "F64" => 8,
            other => {
                return Err(bad(&format!(
                    "tensor {name} has dtype {other} (F32 or F64 only)"
                )))
            }
        };
        let shape: Vec<usize> = info["shape"]
            .as_array()
            .ok_or_else(|| bad("shape"))?
            .iter()
            .map(|v| v.as_u64().unwrap_or(0) as usize)
            .collect();
        let off = info["data_offsets"]
            .as_array()
            .ok_or_else(|| bad("data_offsets"))?;
        let (a, b) = (
            off[0].as_u64().unwrap_or(0) as usize,
            off[1].as_u64().unwrap_or(0) as usize,
        );
        let raw = data.get(a..b).ok_or_else(|| bad("data out of range"))?;
        let vals: Vec<f64> = if word == 4 {
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect()
        } else {
            raw.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        if vals.len() != shape.iter().product::<usize>() {
            return Err(bad(&format!("tensor {name}: shape and data disagree")));
        }
        out.insert(name.clone(), (shape, vals));
    }
    Ok(out)
}

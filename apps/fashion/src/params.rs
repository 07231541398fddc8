//! A network's parameters on the host, by name, in the network's order: what the training
//! loops optimise (one flat vector for the optimiser), average (EMA) and save.

use std::collections::BTreeMap;
use std::path::Path;

use adeis_io::safetensors::{read_stored, read_stored_bytes, NamedTensor};
use adeis_runtime::unet::TensorMapSource;

use crate::Error;

/// Named parameter tensors: names, shapes (C order) and values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostParams {
    /// The parameters' names (diffusers' for the UNet).
    pub names: Vec<String>,
    /// Their shapes, C order.
    pub shapes: Vec<Vec<usize>>,
    /// Their values.
    pub values: Vec<Vec<f64>>,
}

impl HostParams {
    /// From (name, shape, values) triples, in the network's order.
    pub fn of_named<E: Into<f64> + Copy>(named: Vec<(String, Vec<usize>, Vec<E>)>) -> HostParams {
        let mut p = HostParams::default();
        for (name, shape, v) in named {
            p.names.push(name);
            p.shapes.push(shape);
            p.values.push(v.into_iter().map(|x| x.into()).collect());
        }
        p
    }

    /// The number of scalars.
    pub fn len(&self) -> usize {
        self.values.iter().map(|v| v.len()).sum()
    }

    /// Whether there are no scalars.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every value in one vector (the network's order).
    pub fn flat(&self) -> Vec<f64> {
        self.values.iter().flatten().copied().collect()
    }

    /// Sets every value from one vector (the network's order).
    pub fn set_flat(&mut self, flat: &[f64]) {
        assert_eq!(flat.len(), self.len(), "one value per parameter");
        let mut k = 0;
        for v in &mut self.values {
            let n = v.len();
            v.copy_from_slice(&flat[k..k + n]);
            k += n;
        }
    }

    /// The parameters as a source to build a network from (an error names `origin`).
    pub fn source(&self, origin: &str) -> TensorMapSource {
        TensorMapSource {
            tensors: self
                .names
                .iter()
                .zip(&self.shapes)
                .zip(&self.values)
                .map(|((n, s), v)| (n.clone(), (s.clone(), v.clone())))
                .collect(),
            origin: origin.into(),
        }
    }

    /// Writes the tensors as F32 safetensors, atomically.
    pub fn save_safetensors(&self, path: &Path) -> Result<(), Error> {
        Ok(adeis_io::write_atomic(path, &self.safetensors_bytes())?)
    }

    /// The parameters as the bytes of a safetensors file (f32).
    pub fn safetensors_bytes(&self) -> Vec<u8> {
        let tensors: Vec<NamedTensor> = self
            .names
            .iter()
            .zip(&self.shapes)
            .zip(&self.values)
            .map(|((n, s), v)| NamedTensor {
                name: n.clone(),
                shape: s.clone(),
                data: v.clone(),
            })
            .collect();
        adeis_io::safetensors::safetensors_bytes(&tensors, 4)
    }
}

/// A safetensors file as a source (an error names the file).
pub fn file_source(path: &Path) -> Result<TensorMapSource, Error> {
    Ok(source_of(read_stored(path)?, path))
}

/// Safetensors bytes (weights compiled into the program) as a source named `path`.
pub fn bytes_source(bytes: &[u8], path: &Path) -> Result<TensorMapSource, Error> {
    Ok(source_of(read_stored_bytes(bytes, path)?, path))
}

fn source_of(
    stored: BTreeMap<String, adeis_io::safetensors::StoredTensor>,
    path: &Path,
) -> TensorMapSource {
    TensorMapSource {
        tensors: stored
            .into_iter()
            .map(|(k, t)| (k, (t.shape, t.values)))
            .collect(),
        origin: path.display().to_string(),
    }
}

//! Standard normal noise for the SDE samplers: seeded and replayable (noise i of seed s is the
//! same in every run and every dtype), or given.

use dfdx::prelude::*;

use crate::error::RuntimeError;
use crate::rows_from_f64;
use crate::state::State;

/// Where an SDE sampler's noises come from.
#[derive(Clone, Debug)]
pub enum NoiseSource<E: Dtype, D: Device<E>> {
    /// Normals drawn from a seed, one stream per noise index (replayable: the adjoint draws the same ones).
    Seeded(u64),
    /// The noises themselves, one per noise the plan draws, in order.
    Given(Vec<State<E, D>>),
}

/// SplitMix64: a small, well-mixed generator; one stream per (seed, noise index). Also the
/// generator of the digits training (batches, times, dropout), so runs replay from a seed.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (n > 0; the modulo bias is below 2^-40 for the n used here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// `n` standard normals from stream (seed, index) by Box-Muller, in f64.
///
/// Long streams are made in chunks on rayon's threads (a Stable Diffusion UNet's seeded
/// weights are 860M of them): SplitMix's state after k draws is its start plus k times its
/// increment, so each chunk starts where the one before it ends, and the values are the same
/// as one thread's.
pub fn normals(seed: u64, index: u64, n: usize) -> Vec<f64> {
    use rayon::prelude::*;
    /// Pairs of normals per task.
    const PAIRS_PER_TASK: usize = 1 << 15;
    let start = seed ^ index.wrapping_mul(0xD1B54A32D192ED03);
    let mut out = vec![0.0; 2 * n.div_ceil(2)];
    let fill = |(task, chunk): (usize, &mut [f64])| {
        let draws = (2 * task * PAIRS_PER_TASK) as u64;
        let mut rng = SplitMix(start.wrapping_add(draws.wrapping_mul(0x9E3779B97F4A7C15)));
        for pair in chunk.chunks_exact_mut(2) {
            let (u1, u2) = (rng.uniform(), rng.uniform());
            let r = (-2.0 * u1.ln()).sqrt();
            let th = 2.0 * std::f64::consts::PI * u2;
            pair[0] = r * th.cos();
            pair[1] = r * th.sin();
        }
    };
    if out.len() <= 2 * PAIRS_PER_TASK {
        fill((0, &mut out));
    } else {
        out.par_chunks_mut(2 * PAIRS_PER_TASK)
            .enumerate()
            .for_each(fill);
    }
    out.truncate(n);
    out
}

impl<E: Dtype, D: Device<E>> NoiseSource<E, D> {
    /// Noise `i`, of the shape of `like` (the state it is added to).
    pub fn get(&self, i: usize, like: &State<E, D>) -> Result<State<E, D>, RuntimeError> {
        match self {
            NoiseSource::Seeded(seed) => {
                let n = like.batch() * like.width();
                Ok(like.like(rows_from_f64(
                    &like.device(),
                    &normals(*seed, i as u64, n),
                    like.batch(),
                    like.width(),
                )))
            }
            NoiseSource::Given(list) => {
                let n = list.get(i).ok_or_else(|| {
                    RuntimeError::Noise(format!(
                        "the sampler needs noise {i} but only {} noises were given",
                        list.len()
                    ))
                })?;
                if !n.same_shape(like) {
                    return Err(RuntimeError::Noise(format!(
                        "noise {i} has shape {:?}, the state has {:?}",
                        n.shape(),
                        like.shape()
                    )));
                }
                Ok(n.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks made on several threads continue one another: the stream equals one thread's
    /// draw by draw, across chunk boundaries and for odd lengths.
    #[test]
    fn normals_made_in_chunks_equal_one_serial_stream() {
        let (seed, index, n) = (7u64, 3u64, 3 * (1 << 16) + 5);
        let mut rng = SplitMix(seed ^ index.wrapping_mul(0xD1B54A32D192ED03));
        let mut serial = Vec::with_capacity(n + 1);
        while serial.len() < n {
            let (u1, u2) = (rng.uniform(), rng.uniform());
            let r = (-2.0 * u1.ln()).sqrt();
            let th = 2.0 * std::f64::consts::PI * u2;
            serial.push(r * th.cos());
            serial.push(r * th.sin());
        }
        serial.truncate(n);
        let chunked = normals(seed, index, n);
        assert_eq!(chunked.len(), n);
        assert!(chunked
            .iter()
            .zip(&serial)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        assert_eq!(normals(seed, index, 5), serial[..5]);
    }
}

//! `adeis noise`: standard normal noise of a shape, from a seed, as .npy.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};

use super::Dtype;

/// The options of `adeis noise`.
#[derive(clap::Args)]
pub struct NoiseArgs {
    /// The array's shape, comma-separated: `1,3,32,32` for one 3x32x32 image.
    #[arg(long, value_delimiter = ',', required = true)]
    pub shape: Vec<usize>,
    /// Seed of the normals (the same seed gives the same array).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write it (.npy).
    #[arg(long)]
    pub out: PathBuf,
    /// Precision of the file.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
}

/// `adeis noise`: standard normals of `shape` from `seed`.
pub fn noise(a: &NoiseArgs) -> Result<()> {
    let (shape, seed, out, dtype) = (&a.shape, a.seed, a.out.as_path(), a.dtype);
    if shape.is_empty() || shape.contains(&0) {
        bail!("--shape {shape:?}: one or more sizes, each at least 1 (e.g. --shape 1,3,32,32)");
    }
    let n = shape
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(*d))
        .filter(|n| *n <= 1 << 31)
        .ok_or_else(|| anyhow!("--shape {shape:?}: at most 2^31 elements"))?;
    let word = match dtype {
        Dtype::F32 => 4,
        Dtype::F64 => 8,
    };
    adeis::npy::write_npy(
        out,
        shape,
        &adeis::runtime::noise::normals(seed, 0, n),
        word,
    )?;
    println!(
        "wrote {} normals {shape:?} (seed {seed}) -> {}",
        n,
        out.display()
    );
    Ok(())
}

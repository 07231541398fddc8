//! adeis-runtime: the tensor side of adeis, on dfdx.
//!
//! It runs the plans the compiler derives (sampling, adjoints) on dfdx tensors, on the CPU or,
//! with the `cuda` feature, on an NVIDIA GPU. It never parses text or evaluates a schedule
//! formula itself: time-only coefficients come from the compiler's JIT-filled tables.

pub mod adjoint;
pub mod analytic;
pub mod conditioning;
pub mod denoiser;
pub mod executor;
pub mod loss;
pub mod mlp;
pub mod noise;
pub mod tape;

pub use dfdx;

pub use denoiser::{Batch, Denoiser, Guidance, ModelFn, ParamGrads, Threshold, TimeInfo};
pub use executor::{sample, RuntimeError, SampleOutput};
pub use noise::NoiseSource;

/// The dfdx device adeis runs on by default.
pub type DefaultDevice = dfdx::tensor::Cpu;

/// The CUDA device (with the `cuda` feature).
#[cfg(feature = "cuda")]
pub type CudaDevice = dfdx::tensor::Cuda;

/// f64 to the tensor dtype.
#[inline]
pub fn e<E: dfdx::dtypes::Dtype>(v: f64) -> E {
    E::from_f64(v).expect("f64 converts to every float dtype")
}

/// A tensor's values as f64 (host copy).
pub fn to_f64<E: dfdx::dtypes::Dtype, D: dfdx::tensor_ops::Device<E>>(t: &Batch<E, D>) -> Vec<f64> {
    t.as_vec()
        .into_iter()
        .map(|v| v.to_f64().unwrap())
        .collect()
}

/// A (batch, dim) tensor from f64 values.
pub fn from_f64<E: dfdx::dtypes::Dtype, D: dfdx::tensor_ops::Device<E>>(
    dev: &D,
    values: &[f64],
    batch: usize,
    dim: usize,
) -> Batch<E, D> {
    assert_eq!(values.len(), batch * dim, "tensor size");
    dev.tensor_from_vec(values.iter().map(|v| e::<E>(*v)).collect(), (batch, dim))
}

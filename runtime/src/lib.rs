//! adeis-runtime: the tensor side of adeis, on dfdx.
//!
//! It runs the plans the compiler derives (sampling, adjoints) on dfdx tensors, on the CPU or,
//! with the `cuda` feature, on an NVIDIA GPU. It never parses text or evaluates a schedule
//! formula itself: time-only coefficients come from the compiler's JIT-filled tables.

pub use dfdx;

/// The dfdx device adeis runs on by default.
pub type DefaultDevice = dfdx::tensor::Cpu;

/// The CUDA device (with the `cuda` feature).
#[cfg(feature = "cuda")]
pub type CudaDevice = dfdx::tensor::Cuda;

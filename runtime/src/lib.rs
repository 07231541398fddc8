//! adeis-runtime: the tensor side of adeis, on dfdx.
//!
//! It runs the problems the compiler builds ([`adeis_compiler::Problem`]: a compiled schedule,
//! a sampler plan and a gradient method) on dfdx tensors, on the CPU or, with the `cuda`
//! feature, on an NVIDIA GPU: [`sample`] runs a plan, [`gradient`] its gradient by the
//! problem's method. States are batches of items of any shape ([`State`]); models implement
//! [`Denoiser`]. The runtime never parses text or evaluates a schedule formula: every time
//! quantity and coefficient comes from the compiler's plans.

pub mod adjoint;
pub mod analytic;
pub mod conditioning;
pub mod denoiser;
pub mod error;
pub mod executor;
mod host;
pub mod interrupt;
pub mod loss;
pub mod mlp;
pub mod model_fn;
pub mod nn;
pub mod noise;
pub mod optim;
pub mod state;
pub mod taped;
pub mod unet;

/// The full-tape reference under its earlier path: the model trait ([`taped`]) and the
/// gradient method ([`adjoint::tape`]).
pub mod tape {
    pub use crate::adjoint::tape::tape_gradient;
    pub use crate::taped::{Taped, TapedDenoiser, TimeLeaves};
}

pub use dfdx;

pub use adeis_compiler::TimeInfo;
pub use adjoint::{gradient, Gradient, GradientMethod};
pub use denoiser::{Cotangents, Denoiser, NoParams, TimeCot};
pub use error::RuntimeError;
pub use executor::{sample, Input, SampleOutput};
pub use model_fn::{Guidance, ModelFn, Threshold};
pub use noise::NoiseSource;
pub use state::{e, Rows, State};

/// The dfdx device adeis runs on by default.
pub type DefaultDevice = dfdx::tensor::Cpu;

/// The CUDA device (with the `cuda` feature).
#[cfg(feature = "cuda")]
pub type CudaDevice = dfdx::tensor::Cuda;

/// Something whose values can be read back to the host as f64.
pub trait HostValues {
    fn host_f64(&self) -> Vec<f64>;
}

impl<S: dfdx::shapes::Shape, E: dfdx::dtypes::Dtype, D: dfdx::tensor_ops::Device<E>> HostValues
    for dfdx::tensor::Tensor<S, E, D>
{
    fn host_f64(&self) -> Vec<f64> {
        self.as_vec()
            .into_iter()
            .map(|v| v.to_f64().unwrap())
            .collect()
    }
}

impl<E: dfdx::dtypes::Dtype, D: dfdx::tensor_ops::Device<E>> HostValues for State<E, D> {
    fn host_f64(&self) -> Vec<f64> {
        self.rows().host_f64()
    }
}

/// A tensor's or a state's values as f64 (host copy, C order).
pub fn to_f64<T: HostValues + ?Sized>(t: &T) -> Vec<f64> {
    t.host_f64()
}

/// A batch of vectors (batch, dim) from f64 values.
pub fn from_f64<E: dfdx::dtypes::Dtype, D: dfdx::tensor_ops::Device<E>>(
    dev: &D,
    values: &[f64],
    batch: usize,
    dim: usize,
) -> State<E, D> {
    State::from_rows(rows_from_f64(dev, values, batch, dim))
}

/// Rows (batch, width) from f64 values.
pub fn rows_from_f64<E: dfdx::dtypes::Dtype, D: dfdx::tensor_ops::Device<E>>(
    dev: &D,
    values: &[f64],
    batch: usize,
    width: usize,
) -> Rows<E, D> {
    assert_eq!(values.len(), batch * width, "tensor size");
    dev.tensor_from_vec(values.iter().map(|v| e::<E>(*v)).collect(), (batch, width))
}

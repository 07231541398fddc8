//! Layers of convolutional denoisers on dfdx tensors with runtime shapes: 2-D convolution,
//! GroupNorm, SiLU, linear maps, nearest upsampling, self-attention, and the sinusoidal
//! timestep embedding. Each runs on any dfdx tape, so one forward pass serves sampling
//! (no tape), one VJP (a tape for one evaluation) and the full-tape reference (one tape for the
//! whole loop); every gradient is exact. The convolution is a custom operation on the CPU
//! (im2col and a GEMM, with its own backward on dfdx's tape); other devices run it through
//! dfdx's own operations ([`conv::conv2d_generic`]).

pub mod conv;
pub mod layers;

use dfdx::prelude::*;

pub use conv::Conv2d;
pub use layers::{timestep_embedding, Attention, GroupNorm, Linear};

/// A batch of images: [batch, channels, height, width].
pub type Image<E, D, T = NoneTape> = Tensor<(usize, usize, usize, usize), E, D, T>;

/// The float types the layers compute in.
pub trait Float: Dtype + num_traits::Float + Send + Sync {}
impl Float for f32 {}
impl Float for f64 {}

/// A device the layers run on: dfdx's operations, and a convolution.
pub trait NnDevice<E: Float>: Device<E> {
    /// `conv` applied to `x`, on `x`'s tape.
    fn conv2d<T: Tape<E, Self>>(conv: &Conv2d<E, Self>, x: Image<E, Self, T>) -> Image<E, Self, T>;
}

impl NnDevice<f32> for Cpu {
    fn conv2d<T: Tape<f32, Cpu>>(
        conv: &Conv2d<f32, Cpu>,
        x: Image<f32, Cpu, T>,
    ) -> Image<f32, Cpu, T> {
        conv::cpu::conv2d(conv, x)
    }
}

impl NnDevice<f64> for Cpu {
    fn conv2d<T: Tape<f64, Cpu>>(
        conv: &Conv2d<f64, Cpu>,
        x: Image<f64, Cpu, T>,
    ) -> Image<f64, Cpu, T> {
        conv::cpu::conv2d(conv, x)
    }
}

#[cfg(feature = "cuda")]
impl NnDevice<f32> for Cuda {
    fn conv2d<T: Tape<f32, Cuda>>(
        conv: &Conv2d<f32, Cuda>,
        x: Image<f32, Cuda, T>,
    ) -> Image<f32, Cuda, T> {
        conv::conv2d_generic(conv, x)
    }
}

#[cfg(feature = "cuda")]
impl NnDevice<f64> for Cuda {
    fn conv2d<T: Tape<f64, Cuda>>(
        conv: &Conv2d<f64, Cuda>,
        x: Image<f64, Cuda, T>,
    ) -> Image<f64, Cuda, T> {
        conv::conv2d_generic(conv, x)
    }
}

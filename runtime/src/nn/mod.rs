//! Layers of convolutional denoisers on dfdx tensors with runtime shapes: 2-D convolution,
//! GroupNorm, SiLU, linear maps, nearest upsampling, self-attention, and the sinusoidal
//! timestep embedding. Each runs on any dfdx tape, so one forward pass serves sampling
//! (no tape), one VJP (a tape for one evaluation) and the full-tape reference (one tape for the
//! whole loop); every gradient is exact. On the CPU the convolution, GroupNorm (with the shift
//! before it and the SiLU after it), the linear maps, the attention core and GeLU are custom
//! operations with their own backward on dfdx's tape, multiplying through [`gemm`]; other
//! devices run them through dfdx's own operations ([`conv::conv2d_generic`],
//! [`GroupNorm::forward_generic`], [`Linear::forward_generic`],
//! [`attention::attention_core_generic`], dfdx's `fast_gelu`). Measured on W1-W3
//! (`adeis bench`, `cargo bench --bench unet_layers`, `--bench mlp_layers`): dfdx's CPU
//! kernels index every element through its strides and multiply with `gemm` 0.15 without
//! AVX-512, and the composed layers cost several times the kernels.
//!
//! The element-wise loops of those kernels (GeLU, GroupNorm's sums and its affine map with the
//! SiLU, the attention's softmax) carry `#[multiversion(targets = "simd")]`: each is compiled
//! also for x86-64-v4 (AVX-512), v3 (AVX2 + FMA) and v2, and the version the CPU can run is
//! chosen when it is called. The build's baseline is x86-64's SSE2, four f32 lanes where Zen 4
//! has sixteen: GeLU's forward took 154 us on 64 x 2048 and takes 78 (`cargo bench --bench
//! mlp_layers -- gelu`). Rust does not contract `a * b + c` into a fused multiply-add nor
//! reorder a sum, so every version rounds as the baseline does (a test in `activation.rs`
//! compares them bit for bit).

pub mod activation;
pub mod attention;
pub mod conv;
pub mod copies;
pub mod dense;
pub mod gemm;
pub mod layers;
pub mod norm;
pub mod transformer;
pub mod transpose;

use dfdx::prelude::*;

pub use activation::Gelu;
pub use conv::Conv2d;
pub use dense::{Dense, DenseLinear};
pub use layers::{
    timestep_embedding, timestep_embedding_f64, timestep_embedding_slope, timestep_frequencies,
    Attention, Linear,
};
pub use norm::{Activation, ChannelShift, GroupNorm};
use transformer::Tokens;

/// Elements below which a parallel loop's task is not worth a thread's wake-up.
const MIN_TASK_ELEMENTS: usize = 32 * 1024;

/// The fewest items of `item_len` elements a parallel task should take.
pub(crate) fn min_items_per_task(item_len: usize) -> usize {
    (MIN_TASK_ELEMENTS / item_len.max(1)).max(1)
}

/// The gradient of a CPU operation's output (`grads.get_or_alloc_mut(out)`), moved out for its
/// backward pass. dfdx runs the backward passes in the reverse order of the operations, so
/// every consumer of the output has added into it before, and the operation that made it is
/// its last reader: it is taken rather than copied (what stays under the output's id is
/// empty).
pub(crate) fn take_output_grad<E>(grad: &mut Vec<E>) -> Vec<E> {
    std::mem::take(grad)
}

/// A batch of images: [batch, channels, height, width].
pub type Image<E, D, T = NoneTape> = Tensor<(usize, usize, usize, usize), E, D, T>;

/// The float types the layers compute in.
pub trait Float: Dtype + num_traits::Float + Send + Sync {
    /// An exponent whose exp, and whose 1 / (1 + exp), are normal numbers of the type.
    const EXP_CAP: f64;

    /// exp(self): in f32 a polynomial the compiler vectorises (within 2 ulp,
    /// `activation::expf_poly`); in f64 `exp` itself.
    fn exp_fast(self) -> Self;

    /// The error function (libm's, as dfdx's `accurate_gelu` evaluates it).
    fn erf(self) -> Self;
}

impl Float for f32 {
    const EXP_CAP: f64 = 40.0;

    #[inline(always)]
    fn exp_fast(self) -> f32 {
        activation::expf_poly(self)
    }

    #[inline(always)]
    fn erf(self) -> f32 {
        libm::erff(self)
    }
}

impl Float for f64 {
    const EXP_CAP: f64 = 700.0;

    #[inline(always)]
    fn exp_fast(self) -> f64 {
        self.exp()
    }

    #[inline(always)]
    fn erf(self) -> f64 {
        libm::erf(self)
    }
}

/// Whether a traced pass differentiates the parameters too. A VJP with respect to the input
/// and the conditioning alone skips the convolutions' weight gradients, a third of their
/// backward work (the parameters then get no gradient, or zeros where one is read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamGrads {
    /// The backward pass computes the parameters' gradients.
    Compute,
    /// The backward pass leaves the parameters out.
    Skip,
}

impl ParamGrads {
    /// `Compute` when the parameters' gradients are wanted.
    pub fn when(wanted: bool) -> Self {
        if wanted {
            ParamGrads::Compute
        } else {
            ParamGrads::Skip
        }
    }
}

/// A device the layers run on: dfdx's operations, and a convolution.
pub trait NnDevice<E: Float>: Device<E> {
    /// `conv` applied to `x`, on `x`'s tape; `params` says whether its backward pass computes
    /// the weight's and the bias's gradients (a device may compute them always).
    fn conv2d<T: Tape<E, Self>>(
        conv: &Conv2d<E, Self>,
        x: Image<E, Self, T>,
        params: ParamGrads,
    ) -> Image<E, Self, T>;

    /// act(GroupNorm(x + shift)) on the tapes of x and shift; `params` as for
    /// [`NnDevice::conv2d`]. By default dfdx's operations.
    fn group_norm<T: Tape<E, Self>>(
        norm: &GroupNorm<E, Self>,
        x: Image<E, Self, T>,
        shift: Option<ChannelShift<E, Self, T>>,
        act: Activation,
        _params: ParamGrads,
    ) -> Image<E, Self, T> {
        norm.forward_generic(x, shift, act)
    }

    /// The fully connected `layer` on rows `x`, on x's tape. By default dfdx's matmul.
    fn dense<const I: usize, const O: usize, T: Tape<E, Self>>(
        layer: &DenseLinear<I, O, E, Self>,
        x: Tensor<(usize, Const<I>), E, Self, T>,
    ) -> Tensor<(usize, Const<O>), E, Self, T> {
        layer.forward_generic(x)
    }

    /// The runtime-shaped `layer` on rows `x`, on x's tape; `params` as for
    /// [`NnDevice::conv2d`]. By default dfdx's matmul.
    fn linear<T: Tape<E, Self>>(
        layer: &Linear<E, Self>,
        x: Tensor<(usize, usize), E, Self, T>,
        _params: ParamGrads,
    ) -> Tensor<(usize, usize), E, Self, T> {
        layer.forward_generic(x)
    }

    /// softmax(scale q k^T) v per (image, head) on the tapes of q, k and v. By default dfdx's
    /// operations.
    fn attention_core<T: Tape<E, Self>>(
        q: Image<E, Self, T>,
        k: Image<E, Self, T>,
        v: Image<E, Self, T>,
        scale: E,
    ) -> Image<E, Self, T> {
        attention::attention_core_generic(q, k, v, scale)
    }

    /// GeLU (tanh approximation) on x's tape. By default dfdx's `fast_gelu`.
    fn gelu<S: Shape, T: Tape<E, Self>>(x: Tensor<S, E, Self, T>) -> Tensor<S, E, Self, T> {
        x.fast_gelu()
    }

    /// GEGLU on tokens h [batch, tokens, 2 inner]: the first half times GELU (erf) of the
    /// second, on h's tape. By default dfdx's operations ([`transformer::geglu_generic`]).
    fn geglu<T: Tape<E, Self>>(h: Tokens<E, Self, T>) -> Tokens<E, Self, T> {
        transformer::geglu_generic(h)
    }

    /// [a, m, n, r] -> [a, n, m, r], contiguous, on x's tape. By default dfdx's `permute`.
    fn swap_middle_axes<T: Tape<E, Self>>(x: Image<E, Self, T>) -> Image<E, Self, T> {
        transpose::swap_middle_axes_generic(x)
    }

    /// [b, c1, h, w] and [b, c2, h, w] -> [b, c1 + c2, h, w] on both tapes. By default dfdx's
    /// `concat_along`.
    fn concat_channels<T: Tape<E, Self>>(
        a: Image<E, Self, T>,
        b: Image<E, Self, T>,
    ) -> Image<E, Self, T> {
        copies::concat_channels_generic(a, b)
    }

    /// Nearest-neighbour upsampling by 2 on x's tape. By default dfdx's broadcast and reshape.
    fn upsample2x<T: Tape<E, Self>>(x: Image<E, Self, T>) -> Image<E, Self, T> {
        copies::upsample2x_generic(x)
    }
}

/// The CPU runs the convolution, GroupNorm, the linear layers, attention and GeLU as its own
/// kernels.
macro_rules! cpu_nn_device {
    ($e:ty) => {
        impl NnDevice<$e> for Cpu {
            fn conv2d<T: Tape<$e, Cpu>>(
                conv: &Conv2d<$e, Cpu>,
                x: Image<$e, Cpu, T>,
                params: ParamGrads,
            ) -> Image<$e, Cpu, T> {
                conv::cpu::conv2d(conv, x, params)
            }

            fn group_norm<T: Tape<$e, Cpu>>(
                norm: &GroupNorm<$e, Cpu>,
                x: Image<$e, Cpu, T>,
                shift: Option<ChannelShift<$e, Cpu, T>>,
                act: Activation,
                params: ParamGrads,
            ) -> Image<$e, Cpu, T> {
                norm::cpu::group_norm(norm, x, shift, act, params)
            }

            fn dense<const I: usize, const O: usize, T: Tape<$e, Cpu>>(
                layer: &DenseLinear<I, O, $e, Cpu>,
                x: Tensor<(usize, Const<I>), $e, Cpu, T>,
            ) -> Tensor<(usize, Const<O>), $e, Cpu, T> {
                dense::cpu::dense(layer, x)
            }

            fn linear<T: Tape<$e, Cpu>>(
                layer: &Linear<$e, Cpu>,
                x: Tensor<(usize, usize), $e, Cpu, T>,
                params: ParamGrads,
            ) -> Tensor<(usize, usize), $e, Cpu, T> {
                dense::cpu::linear_rows(layer, x, params)
            }

            fn attention_core<T: Tape<$e, Cpu>>(
                q: Image<$e, Cpu, T>,
                k: Image<$e, Cpu, T>,
                v: Image<$e, Cpu, T>,
                scale: $e,
            ) -> Image<$e, Cpu, T> {
                attention::cpu::attention_core(q, k, v, scale)
            }

            fn gelu<S: Shape, T: Tape<$e, Cpu>>(
                x: Tensor<S, $e, Cpu, T>,
            ) -> Tensor<S, $e, Cpu, T> {
                activation::cpu::gelu(x)
            }

            fn geglu<T: Tape<$e, Cpu>>(h: Tokens<$e, Cpu, T>) -> Tokens<$e, Cpu, T> {
                activation::cpu::geglu(h)
            }

            fn swap_middle_axes<T: Tape<$e, Cpu>>(x: Image<$e, Cpu, T>) -> Image<$e, Cpu, T> {
                transpose::cpu::swap_middle_axes(x)
            }

            fn concat_channels<T: Tape<$e, Cpu>>(
                a: Image<$e, Cpu, T>,
                b: Image<$e, Cpu, T>,
            ) -> Image<$e, Cpu, T> {
                copies::cpu::concat_channels(a, b)
            }

            fn upsample2x<T: Tape<$e, Cpu>>(x: Image<$e, Cpu, T>) -> Image<$e, Cpu, T> {
                copies::cpu::upsample2x(x)
            }
        }
    };
}
cpu_nn_device!(f32);
cpu_nn_device!(f64);

/// Other devices run both through dfdx's operations.
#[cfg(feature = "cuda")]
macro_rules! generic_nn_device {
    ($e:ty, $d:ty) => {
        impl NnDevice<$e> for $d {
            fn conv2d<T: Tape<$e, $d>>(
                conv: &Conv2d<$e, $d>,
                x: Image<$e, $d, T>,
                _params: ParamGrads,
            ) -> Image<$e, $d, T> {
                conv::conv2d_generic(conv, x)
            }
        }
    };
}
#[cfg(feature = "cuda")]
generic_nn_device!(f32, Cuda);
#[cfg(feature = "cuda")]
generic_nn_device!(f64, Cuda);

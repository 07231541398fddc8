//! The layers around the convolution, written with dfdx's operations on any tape: linear maps,
//! SiLU, nearest 2x upsampling, the self-attention block of diffusers' `UNet2DModel`
//! and the sinusoidal timestep embedding.
//!
//! Parameters are tensors without a tape; each use puts an empty tape on them
//! (`retaped`), so that the views an operation takes (a transpose, a broadcast) record their
//! backward and the gradient reaches the parameter itself.

use std::sync::{Arc, OnceLock};

use dfdx::prelude::*;

use super::dense::HostWeights;
use super::transformer::TokenAttention;
use super::{Activation, Float, GroupNorm, Image, NnDevice, ParamGrads};

/// y = x W^T + b on rows [n, in] (W: [out, in], as torch stores it). On the CPU a kernel
/// (`dense::cpu::linear_rows`) on host copies of the parameters, made once: they
/// are private, so that the copies cannot go stale.
#[derive(Clone, Debug)]
pub struct Linear<E: Dtype, D: Storage<E>> {
    weight: Tensor<(usize, usize), E, D>,
    bias: Option<Tensor<(usize,), E, D>>,
    host: OnceLock<Arc<HostWeights<E>>>,
}

impl<E: Float, D: Device<E>> Linear<E, D> {
    /// A linear map y = W x + b with weight `[out, in]` and an optional bias `[out]`.
    pub fn new(weight: Tensor<(usize, usize), E, D>, bias: Option<Tensor<(usize,), E, D>>) -> Self {
        if let Some(b) = &bias {
            assert_eq!(b.shape().0, weight.shape().0, "one bias per output");
        }
        Linear {
            weight,
            bias,
            host: OnceLock::new(),
        }
    }

    /// The weight [out, in].
    pub fn weight(&self) -> &Tensor<(usize, usize), E, D> {
        &self.weight
    }

    /// The bias `[out]`, if there is one.
    pub fn bias(&self) -> Option<&Tensor<(usize,), E, D>> {
        self.bias.as_ref()
    }

    /// The number of outputs.
    pub fn out_features(&self) -> usize {
        self.weight.shape().0
    }

    /// The number of inputs.
    pub fn in_features(&self) -> usize {
        self.weight.shape().1
    }

    pub(crate) fn host(&self) -> Arc<HostWeights<E>> {
        Arc::clone(self.host.get_or_init(|| {
            HostWeights::copy_of(&self.weight, self.bias.as_ref(), *self.weight.shape())
        }))
    }

    /// On rows [n, in], through dfdx's operations.
    pub fn forward_generic<T: Tape<E, D>>(
        &self,
        x: Tensor<(usize, usize), E, D, T>,
    ) -> Tensor<(usize, usize), E, D, T> {
        let n = x.shape().0;
        let w = self
            .weight
            .clone()
            .retaped::<T>()
            .permute::<_, Axes2<1, 0>>();
        let y = x.matmul(w);
        match &self.bias {
            Some(b) => {
                y + b
                    .clone()
                    .retaped::<T>()
                    .broadcast_like::<_, Axis<0>>(&(n, self.out_features()))
            }
            None => y,
        }
    }
}

impl<E: Float, D: NnDevice<E>> Linear<E, D> {
    /// On rows [n, in].
    pub fn forward<T: Tape<E, D>>(
        &self,
        x: Tensor<(usize, usize), E, D, T>,
    ) -> Tensor<(usize, usize), E, D, T> {
        D::linear(self, x, ParamGrads::Compute)
    }

    /// On rows [n, in]; `params` says whether the backward pass computes the weight's and the
    /// bias's gradients.
    pub fn forward_with<T: Tape<E, D>>(
        &self,
        x: Tensor<(usize, usize), E, D, T>,
        params: ParamGrads,
    ) -> Tensor<(usize, usize), E, D, T> {
        D::linear(self, x, params)
    }

    /// On a batch of sequences [b, s, in]; `params` as for [`Linear::forward_with`].
    pub fn forward3<T: Tape<E, D>>(
        &self,
        x: Tensor<(usize, usize, usize), E, D, T>,
        params: ParamGrads,
    ) -> Tensor<(usize, usize, usize), E, D, T> {
        let (b, s, i) = *x.shape();
        let rows = x.contiguous().reshape_like(&(b * s, i));
        self.forward_with(rows, params)
            .reshape_like(&(b, s, self.out_features()))
    }
}

/// SiLU, x sigmoid(x), on any shape.
pub fn silu<S: Shape, E: Float, D: Device<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
) -> Tensor<S, E, D, T> {
    x.with_empty_tape() * x.sigmoid()
}

/// The self-attention block of `UNet2DModel` (diffusers' `Attention` built from the deprecated
/// attention block): GroupNorm, the image's positions as tokens through a self-attention (the
/// transformers' [`TokenAttention`]: q/k/v projections, softmax(q k^T / sqrt(d)) v per head,
/// the output projection), the residual connection, and division by `rescale_output_factor`.
#[derive(Clone, Debug)]
pub struct Attention<E: Dtype, D: Storage<E>> {
    /// The GroupNorm before the projections.
    pub group_norm: GroupNorm<E, D>,
    /// The projections and the heads.
    pub attention: TokenAttention<E, D>,
    /// The residual sum is divided by it.
    pub rescale_output_factor: f64,
}

impl<E: Float, D: NnDevice<E>> Attention<E, D> {
    /// The block on images `x` [batch, channels, height, width], on x's tape.
    pub fn forward<T: Tape<E, D>>(&self, x: Image<E, D, T>, params: ParamGrads) -> Image<E, D, T> {
        let shape = *x.shape();
        let (b, c, h, w) = shape;
        let s = h * w;
        let residual = x.with_empty_tape();
        // [b, c, h w] -> [b, s, c]
        let tokens = D::swap_middle_axes(
            D::group_norm(&self.group_norm, x, None, Activation::Identity, params)
                .reshape_like(&(b, c, s, 1)),
        )
        .reshape_like(&(b, s, c));
        let out = self.attention.forward(tokens, None, params);
        // [b, s, c] -> [b, c, h, w]
        let out = D::swap_middle_axes(out.reshape_like(&(b, s, c, 1))).reshape_like(&shape);
        (out + residual) * E::from_f64(1.0 / self.rescale_output_factor).unwrap()
    }
}

/// diffusers' `get_timestep_embedding` for one time t, computed as diffusers does, in f32
/// whatever the model's dtype (torch's `arange(..., dtype=float32)` and `timesteps.float()`),
/// then converted: `freq_k = exp(-ln(max_period) k / (half - shift))`, the vector
/// `[sin(t freq), cos(t freq)]` (cos first with `flip_sin_to_cos`), zero-padded to an odd
/// `dim`.
/// The frequencies of [`timestep_embedding`], as diffusers computes them (in f32).
pub fn timestep_frequencies(dim: usize, freq_shift: f64) -> Vec<f64> {
    const MAX_PERIOD: f64 = 10000.0;
    let half = dim / 2;
    (0..half)
        .map(|k| {
            let exponent = (-MAX_PERIOD.ln()) as f32 * k as f32 / (half as f64 - freq_shift) as f32;
            exponent.exp() as f64
        })
        .collect()
}

/// [sin(w t), cos(w t)] (or flipped) with the frequencies w, padded to `dim`.
fn sinusoids(
    ws: &[f64],
    dim: usize,
    flip_sin_to_cos: bool,
    f: impl Fn(f64) -> (f64, f64),
) -> Vec<f64> {
    let (a, b): (Vec<f64>, Vec<f64>) = ws.iter().map(|w| f(*w)).unzip();
    let mut out = if flip_sin_to_cos {
        [b, a].concat()
    } else {
        [a, b].concat()
    };
    out.resize(dim, 0.0);
    out
}

/// [`timestep_embedding`] in f64 arithmetic (the same frequencies): smooth in t.
pub fn timestep_embedding_f64(
    t: f64,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> Vec<f64> {
    let ws = timestep_frequencies(dim, freq_shift);
    sinusoids(&ws, dim, flip_sin_to_cos, |w| {
        ((w * t).sin(), (w * t).cos())
    })
}

/// d/dt of the timestep embedding (in f64, with the same frequencies): w cos(w t) for a
/// sine, -w sin(w t) for a cosine.
pub fn timestep_embedding_slope(
    t: f64,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> Vec<f64> {
    let ws = timestep_frequencies(dim, freq_shift);
    sinusoids(&ws, dim, flip_sin_to_cos, |w| {
        (w * (w * t).cos(), -w * (w * t).sin())
    })
}

/// diffusers' sinusoidal timestep embedding (`get_timestep_embedding`) of the model time `t`,
/// `dim` wide, computed in f32 as diffusers computes it (then converted to `E`).
pub fn timestep_embedding<E: Float>(
    t: f64,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> Vec<E> {
    const MAX_PERIOD: f64 = 10000.0;
    let half = dim / 2;
    let (sin, cos): (Vec<E>, Vec<E>) = (0..half)
        .map(|k| {
            let exponent = (-MAX_PERIOD.ln()) as f32 * k as f32 / (half as f64 - freq_shift) as f32;
            let arg = t as f32 * exponent.exp();
            (
                E::from_f32(arg.sin()).unwrap(),
                E::from_f32(arg.cos()).unwrap(),
            )
        })
        .unzip();
    let mut out = if flip_sin_to_cos {
        [cos, sin].concat()
    } else {
        [sin, cos].concat()
    };
    out.resize(dim, E::zero());
    out
}

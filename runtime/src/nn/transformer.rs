//! diffusers' `Transformer2DModel` as Stable Diffusion's UNet uses it: the image's positions
//! as a sequence of tokens, each [`BasicTransformerBlock`] a self-attention, a cross-attention
//! to the encoder hidden states (the prompt's embeddings) and a GEGLU feed-forward, each after
//! a LayerNorm and with a residual connection; on any dfdx tape.

use dfdx::prelude::*;

use super::{Activation, Conv2d, Float, GroupNorm, Image, Linear, NnDevice, ParamGrads};

/// A batch of token sequences [batch, tokens, channels].
pub type Tokens<E, D, T = NoneTape> = Tensor<(usize, usize, usize), E, D, T>;

/// `torch.nn.LayerNorm` over the channels of tokens (biased variance, as torch).
#[derive(Clone, Debug)]
pub struct LayerNorm<E: Dtype, D: Storage<E>> {
    /// The scale, one per channel.
    pub weight: Tensor<(usize,), E, D>,
    /// The shift, one per channel.
    pub bias: Tensor<(usize,), E, D>,
    /// Added to the variance.
    pub eps: f64,
}

impl<E: Float, D: NnDevice<E>> LayerNorm<E, D> {
    /// The norm of tokens `x`, on x's tape; `params` as for [`NnDevice::conv2d`].
    ///
    /// It is GroupNorm with one group of each token's channels: tokens [b, s, c] are images
    /// [b s, c, 1, 1], and the device's GroupNorm (on the CPU one fused operation, not the
    /// five dfdx records for `normalize`, scale and shift) serves both.
    pub fn forward<T: Tape<E, D>>(
        &self,
        x: Tokens<E, D, T>,
        params: ParamGrads,
    ) -> Tokens<E, D, T> {
        let (b, s, c) = *x.shape();
        let as_group_norm = GroupNorm {
            weight: self.weight.clone(),
            bias: self.bias.clone(),
            groups: 1,
            eps: self.eps,
        };
        let images = x.contiguous().reshape_like(&(b * s, c, 1, 1));
        D::group_norm(&as_group_norm, images, None, Activation::Identity, params)
            .reshape_like(&(b, s, c))
    }
}

/// diffusers' `Attention` on tokens: queries from the tokens, keys and values from the tokens
/// (self-attention) or from a context (cross-attention), softmax(q k^T / sqrt(d)) v per head,
/// and the output projection (no residual: the block adds it).
#[derive(Clone, Debug)]
pub struct TokenAttention<E: Dtype, D: Storage<E>> {
    /// The query projection.
    pub to_q: Linear<E, D>,
    /// The key projection (from the context's width in cross-attention).
    pub to_k: Linear<E, D>,
    /// The value projection.
    pub to_v: Linear<E, D>,
    /// The output projection `to_out.0`.
    pub to_out: Linear<E, D>,
    /// The number of heads.
    pub heads: usize,
}

impl<E: Float, D: NnDevice<E>> TokenAttention<E, D> {
    /// Attention of tokens `x` to `context` (None: to themselves), on x's tape (the context,
    /// untaped, joins it); `params` as for [`NnDevice::conv2d`].
    pub fn forward<T: Tape<E, D>>(
        &self,
        x: Tokens<E, D, T>,
        context: Option<&Tokens<E, D>>,
        params: ParamGrads,
    ) -> Tokens<E, D, T> {
        let (b, s, _) = *x.shape();
        let heads = self.heads;
        let d = self.to_q.out_features() / heads;
        // [b, n, heads d] -> [b, heads, n, d]
        let split = |t: Tokens<E, D, T>| {
            let n = t.shape().1;
            D::swap_middle_axes(t.reshape_like(&(b, n, heads, d)))
        };
        let (q, k, v) = match context {
            None => (
                self.to_q.forward3(x.with_empty_tape(), params),
                self.to_k.forward3(x.with_empty_tape(), params),
                self.to_v.forward3(x, params),
            ),
            Some(c) => (
                self.to_q.forward3(x, params),
                self.to_k.forward3(c.clone().retaped::<T>(), params),
                self.to_v.forward3(c.clone().retaped::<T>(), params),
            ),
        };
        let scale = E::from_f64(1.0 / (d as f64).sqrt()).unwrap();
        let out = D::attention_core(split(q), split(k), split(v), scale);
        // [b, heads, s, d] -> [b, s, heads d]
        let out = D::swap_middle_axes(out).reshape_like(&(b, s, heads * d));
        self.to_out.forward3(out, params)
    }
}

/// diffusers' `FeedForward` with GEGLU: `proj` to twice the inner width, the first half times
/// GELU (exact, erf) of the second, then `net.2` back to the channels.
#[derive(Clone, Debug)]
pub struct GegluFeedForward<E: Dtype, D: Storage<E>> {
    /// `net.0.proj`: channels -> 2 inner.
    pub proj: Linear<E, D>,
    /// `net.2`: inner -> channels.
    pub out: Linear<E, D>,
}

impl<E: Float, D: NnDevice<E>> GegluFeedForward<E, D> {
    /// On tokens `x`, on x's tape; `params` as for [`NnDevice::conv2d`].
    pub fn forward<T: Tape<E, D>>(
        &self,
        x: Tokens<E, D, T>,
        params: ParamGrads,
    ) -> Tokens<E, D, T> {
        let h = D::geglu(self.proj.forward3(x, params));
        self.out.forward3(h, params)
    }
}

/// GEGLU through dfdx's operations: h [batch, tokens, 2 inner] -> the first half times
/// GELU (erf) of the second.
pub fn geglu_generic<E: Float, D: Device<E>, T: Tape<E, D>>(h: Tokens<E, D, T>) -> Tokens<E, D, T> {
    let (b, s, two) = *h.shape();
    let inner = two / 2;
    let hidden = h.with_empty_tape().slice((0..b, 0..s, 0..inner));
    let gate = h.slice((0..b, 0..s, inner..two));
    gelu_exact(gate) * hidden
}

/// GELU with erf (torch's default `F.gelu`), on any device, with the right slope.
///
/// dfdx 0.13's `accurate_gelu` computes the value right but its derivative omits the 1/sqrt(2)
/// of d erf(x/sqrt(2))/dx: it gives Phi(x) + sqrt(2) x phi(x) for Phi(x) + x phi(x) (phi the
/// standard normal density). The term (sqrt(2) - 1) (phi(x) - [phi(x)]), whose bracket is the
/// same values without a tape, is exactly zero in value and has the slope
/// -(sqrt(2) - 1) x phi(x) that cancels the excess.
pub fn gelu_exact<S: Shape, E: Float, D: Device<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
) -> Tensor<S, E, D, T> {
    let inv_sqrt_2pi = E::from_f64(0.398_942_280_401_432_7).unwrap();
    let phi = (x.with_empty_tape().square() * E::from_f64(-0.5).unwrap()).exp() * inv_sqrt_2pi;
    let (value, tape) = phi.split_tape();
    // The same values as another tensor (x 1 is exact): a tensor minus itself is not an
    // operation dfdx records.
    let constant = value.clone() * E::one();
    let zero_with_slope =
        (value.put_tape(tape) - constant) * E::from_f64(std::f64::consts::SQRT_2 - 1.0).unwrap();
    x.accurate_gelu() + zero_with_slope
}

/// diffusers' `BasicTransformerBlock` (LayerNorm, `activation_fn = "geglu"`): self-attention,
/// cross-attention to the context, feed-forward, each on the norm of the running tokens and
/// added to them.
#[derive(Clone, Debug)]
pub struct BasicTransformerBlock<E: Dtype, D: Storage<E>> {
    /// Before the self-attention.
    pub norm1: LayerNorm<E, D>,
    /// The self-attention.
    pub attn1: TokenAttention<E, D>,
    /// Before the cross-attention.
    pub norm2: LayerNorm<E, D>,
    /// The cross-attention to the encoder hidden states.
    pub attn2: TokenAttention<E, D>,
    /// Before the feed-forward.
    pub norm3: LayerNorm<E, D>,
    /// The feed-forward.
    pub ff: GegluFeedForward<E, D>,
}

impl<E: Float, D: NnDevice<E>> BasicTransformerBlock<E, D> {
    /// On tokens `x` with the encoder hidden states `context`, on x's tape; `params` as for
    /// [`NnDevice::conv2d`].
    pub fn forward<T: Tape<E, D>>(
        &self,
        x: Tokens<E, D, T>,
        context: &Tokens<E, D>,
        params: ParamGrads,
    ) -> Tokens<E, D, T> {
        let normed = self.norm1.forward(x.with_empty_tape(), params);
        let h = self.attn1.forward(normed, None, params) + x;
        let normed = self.norm2.forward(h.with_empty_tape(), params);
        let h = self.attn2.forward(normed, Some(context), params) + h;
        let normed = self.norm3.forward(h.with_empty_tape(), params);
        self.ff.forward(normed, params) + h
    }
}

/// How a [`Transformer2D`] moves between the image and its tokens (`use_linear_projection`).
#[derive(Clone, Debug)]
pub enum Projection<E: Dtype, D: Storage<E>> {
    /// 1x1 convolutions on the image (`use_linear_projection = false`, SD 1.x).
    Conv {
        /// `proj_in`.
        proj_in: Conv2d<E, D>,
        /// `proj_out`.
        proj_out: Conv2d<E, D>,
    },
    /// Linear maps on the tokens (`use_linear_projection = true`, SD 2.x, SDXL).
    Linear {
        /// `proj_in`.
        proj_in: Linear<E, D>,
        /// `proj_out`.
        proj_out: Linear<E, D>,
    },
}

/// diffusers' `Transformer2DModel` on continuous inputs: GroupNorm, `proj_in`, the transformer
/// blocks on the positions as tokens, `proj_out`, and the residual connection.
#[derive(Clone, Debug)]
pub struct Transformer2D<E: Dtype, D: Storage<E>> {
    /// The GroupNorm before `proj_in`.
    pub norm: GroupNorm<E, D>,
    /// `proj_in` and `proj_out`.
    pub projection: Projection<E, D>,
    /// The blocks (`transformer_layers_per_block` of them).
    pub blocks: Vec<BasicTransformerBlock<E, D>>,
}

impl<E: Float, D: NnDevice<E>> Transformer2D<E, D> {
    /// On images `x` [batch, channels, height, width] with the encoder hidden states
    /// `context` [batch, tokens, cross_attention_dim], on x's tape.
    pub fn forward<T: Tape<E, D>>(
        &self,
        x: Image<E, D, T>,
        context: &Tokens<E, D>,
        params: ParamGrads,
    ) -> Image<E, D, T> {
        let shape = *x.shape();
        let (b, c, h, w) = shape;
        let s = h * w;
        let residual = x.with_empty_tape();
        let normed = D::group_norm(&self.norm, x, None, Activation::Identity, params);
        // [b, ch, h, w] -> [b, h w, ch]
        let to_tokens = |img: Image<E, D, T>| {
            let ch = img.shape().1;
            D::swap_middle_axes(img.reshape_like(&(b, ch, s, 1))).reshape_like(&(b, s, ch))
        };
        let from_tokens = |t: Tokens<E, D, T>| {
            let ch = t.shape().2;
            D::swap_middle_axes(t.reshape_like(&(b, s, ch, 1))).reshape_like(&(b, ch, h, w))
        };
        let mut tokens = match &self.projection {
            Projection::Conv { proj_in, .. } => to_tokens(D::conv2d(proj_in, normed, params)),
            Projection::Linear { proj_in, .. } => proj_in.forward3(to_tokens(normed), params),
        };
        for block in &self.blocks {
            tokens = block.forward(tokens, context, params);
        }
        let out = match &self.projection {
            Projection::Conv { proj_out, .. } => D::conv2d(proj_out, from_tokens(tokens), params),
            Projection::Linear { proj_out, .. } => from_tokens(proj_out.forward3(tokens, params)),
        };
        debug_assert_eq!(*out.shape(), (b, c, h, w));
        out + residual
    }
}

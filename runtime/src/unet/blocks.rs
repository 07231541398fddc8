//! The UNet's blocks as parts that any diffusers UNet built here assembles (as candle's
//! `unet_2d_blocks.rs` does): `ResnetBlock2D` ([`Resnet`]), the down, mid and up blocks with
//! what follows each resnet ([`AfterResnet`]), and the context every block reads
//! ([`BlockContext`]). The forward passes run on any dfdx tape; the model's VJP is the tape's.
//!
//! `UNet2DConditionModel`'s cross-attention blocks are the variant of [`AfterResnet`] whose
//! transformers read the encoder hidden states, which [`BlockContext`] carries.

use dfdx::prelude::*;

use crate::nn::layers;
use crate::nn::transformer::{Tokens, Transformer2D};
use crate::nn::ParamGrads;
use crate::nn::{Activation, Attention, Conv2d, Float, GroupNorm, Image, Linear, NnDevice};

/// What every block reads besides its input: the time (and class) embedding, untaped (every
/// block shares it; its operations are on the input's tape), and whether the backward pass
/// computes the parameters' gradients.
pub(crate) struct BlockContext<'a, E: Dtype, D: Storage<E>> {
    /// The time embedding (None in the VAE, whose resnets have none).
    pub temb: Option<&'a Tensor<(usize, usize), E, D>>,
    /// The encoder hidden states the cross-attention blocks read (UNet2DConditionModel's;
    /// untaped: every block's use of them joins the input's tape).
    pub encoder: Option<&'a Tokens<E, D>>,
    pub params: ParamGrads,
}

/// `ResnetBlock2D` (time scale shift "default"); without a time embedding (the VAE's,
/// `temb_channels = None`) it has no `time_emb_proj`.
#[derive(Clone, Debug)]
pub(crate) struct Resnet<E: Dtype, D: Storage<E>> {
    pub norm1: GroupNorm<E, D>,
    pub conv1: Conv2d<E, D>,
    pub time_emb_proj: Option<Linear<E, D>>,
    pub norm2: GroupNorm<E, D>,
    pub conv2: Conv2d<E, D>,
    pub conv_shortcut: Option<Conv2d<E, D>>,
    pub output_scale_factor: f64,
}

/// What a block puts after each of its resnets.
#[derive(Clone, Debug)]
pub(crate) enum AfterResnet<E: Dtype, D: Storage<E>> {
    /// Nothing (`DownBlock2D`, `UpBlock2D`).
    Nothing,
    /// A self-attention over the image's positions, one per resnet (`AttnDownBlock2D`,
    /// `AttnUpBlock2D`).
    SelfAttention(Vec<Attention<E, D>>),
    /// A transformer with cross-attention to the encoder hidden states, one per resnet
    /// (`CrossAttnDownBlock2D`, `CrossAttnUpBlock2D`, `UNetMidBlock2DCrossAttn`).
    CrossAttention(Vec<Transformer2D<E, D>>),
}

/// A down block: resnets, each followed by what [`AfterResnet`] says, then the stride-2
/// convolution except in the last block. Every output is a skip of the up path.
#[derive(Clone, Debug)]
pub(crate) struct DownBlock<E: Dtype, D: Storage<E>> {
    pub resnets: Vec<Resnet<E, D>>,
    pub after: AfterResnet<E, D>,
    pub downsample: Option<Conv2d<E, D>>,
}

/// An up block: resnets on the skip connections, each followed by what [`AfterResnet`]
/// says, then nearest 2x upsampling and a convolution except in the last block.
#[derive(Clone, Debug)]
pub(crate) struct UpBlock<E: Dtype, D: Storage<E>> {
    pub resnets: Vec<Resnet<E, D>>,
    pub after: AfterResnet<E, D>,
    pub upsample: Option<Conv2d<E, D>>,
}

/// `UNetMidBlock2D`: resnet, attention (unless `add_attention` is false), resnet;
/// `UNetMidBlock2DCrossAttn`: the attention is a cross-attention transformer.
#[derive(Clone, Debug)]
pub(crate) struct MidBlock<E: Dtype, D: Storage<E>> {
    pub first: Resnet<E, D>,
    pub attention: AfterResnet<E, D>,
    pub second: Resnet<E, D>,
}

impl<E: Float, D: NnDevice<E>> Resnet<E, D> {
    pub fn forward<T: Tape<E, D>>(
        &self,
        x: Image<E, D, T>,
        cx: &BlockContext<'_, E, D>,
    ) -> Image<E, D, T> {
        let (silu, params) = (Activation::Silu, cx.params);
        let h = D::group_norm(&self.norm1, x.with_empty_tape(), None, silu, params);
        let h = D::conv2d(&self.conv1, h, params);
        let t = match (&self.time_emb_proj, cx.temb) {
            (Some(proj), Some(temb)) => {
                Some(proj.forward(layers::silu(temb.clone().retaped::<T>())))
            }
            _ => None,
        };
        let h = D::group_norm(&self.norm2, h, t, silu, params);
        let h = D::conv2d(&self.conv2, h, params);
        let skip = match &self.conv_shortcut {
            Some(c) => D::conv2d(c, x, params),
            None => x,
        };
        let out = skip + h;
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out * E::from_f64(1.0 / self.output_scale_factor).unwrap()
        }
    }
}

impl<E: Float, D: NnDevice<E>> AfterResnet<E, D> {
    /// What follows resnet `k` of the block.
    pub fn forward<T: Tape<E, D>>(
        &self,
        k: usize,
        h: Image<E, D, T>,
        cx: &BlockContext<'_, E, D>,
    ) -> Image<E, D, T> {
        match self {
            AfterResnet::Nothing => h,
            AfterResnet::SelfAttention(a) => a[k].forward(h, cx.params),
            AfterResnet::CrossAttention(t) => t[k].forward(
                h,
                cx.encoder
                    .expect("a cross-attention block is given the encoder hidden states"),
                cx.params,
            ),
        }
    }
}

impl<E: Float, D: NnDevice<E>> DownBlock<E, D> {
    /// The block on `h`, pushing each of its outputs onto `skips`.
    pub fn forward<T: Tape<E, D>>(
        &self,
        mut h: Image<E, D, T>,
        cx: &BlockContext<'_, E, D>,
        skips: &mut Vec<Image<E, D, T>>,
    ) -> Image<E, D, T> {
        for (k, resnet) in self.resnets.iter().enumerate() {
            h = self.after.forward(k, resnet.forward(h, cx), cx);
            skips.push(h.with_empty_tape());
        }
        if let Some(down) = &self.downsample {
            h = D::conv2d(down, h, cx.params);
            skips.push(h.with_empty_tape());
        }
        h
    }
}

impl<E: Float, D: NnDevice<E>> MidBlock<E, D> {
    pub fn forward<T: Tape<E, D>>(
        &self,
        h: Image<E, D, T>,
        cx: &BlockContext<'_, E, D>,
    ) -> Image<E, D, T> {
        let h = self.first.forward(h, cx);
        let h = self.attention.forward(0, h, cx);
        self.second.forward(h, cx)
    }
}

impl<E: Float, D: NnDevice<E>> UpBlock<E, D> {
    /// The block on `h`, each resnet taking the newest of `skips` (concatenated along the
    /// channels).
    pub fn forward<T: Tape<E, D>>(
        &self,
        mut h: Image<E, D, T>,
        cx: &BlockContext<'_, E, D>,
        skips: &mut Vec<Image<E, D, T>>,
    ) -> Image<E, D, T> {
        for (k, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().expect("one skip per up resnet");
            h = resnet.forward(D::concat_channels(h, skip), cx);
            h = self.after.forward(k, h, cx);
        }
        if let Some(up) = &self.upsample {
            h = D::conv2d(up, D::upsample2x(h), cx.params);
        }
        h
    }
}

impl<E: Float, D: NnDevice<E>> UpBlock<E, D> {
    /// The block without skip connections (the VAE decoder's `UpDecoderBlock2D`): its
    /// resnets in turn, then the upsampling.
    pub fn forward_without_skips<T: Tape<E, D>>(
        &self,
        mut h: Image<E, D, T>,
        cx: &BlockContext<'_, E, D>,
    ) -> Image<E, D, T> {
        for (k, resnet) in self.resnets.iter().enumerate() {
            h = self.after.forward(k, resnet.forward(h, cx), cx);
        }
        if let Some(up) = &self.upsample {
            h = D::conv2d(up, D::upsample2x(h), cx.params);
        }
        h
    }
}

/// The time embedding of the UNets (diffusers' `TimestepEmbedding`): two linear maps with SiLU
/// between, on the sinusoidal projection of the model time.
#[derive(Clone, Debug)]
pub(crate) struct TimeEmbedding<E: Dtype, D: Storage<E>> {
    pub linear_1: Linear<E, D>,
    pub linear_2: Linear<E, D>,
}

impl<E: Float, D: NnDevice<E>> TimeEmbedding<E, D> {
    /// The embedding of a projection, on its tape.
    pub fn forward<T: Tape<E, D>>(
        &self,
        proj: Tensor<(usize, usize), E, D, T>,
    ) -> Tensor<(usize, usize), E, D, T> {
        self.linear_2
            .forward(layers::silu(self.linear_1.forward(proj)))
    }
}

/// What every diffusers UNet runs between its time embedding and its output: the input
/// convolution, the down blocks (their outputs the skips), the mid block (or none), the up
/// blocks on the skips, GroupNorm + SiLU and the output convolution.
#[derive(Clone, Debug)]
pub(crate) struct UNetBody<E: Dtype, D: Storage<E>> {
    pub conv_in: Conv2d<E, D>,
    pub down: Vec<DownBlock<E, D>>,
    pub mid: Option<MidBlock<E, D>>,
    pub up: Vec<UpBlock<E, D>>,
    pub norm_out: GroupNorm<E, D>,
    pub conv_out: Conv2d<E, D>,
    /// Maps the input from [0, 1] to [-1, 1] first (`center_input_sample`).
    pub center_input: bool,
}

impl<E: Float, D: NnDevice<E>> UNetBody<E, D> {
    /// The network on `x` with the time (and class) embedding `emb` and, for the
    /// cross-attention blocks, the encoder hidden states, on x's tape.
    pub fn forward<T: Tape<E, D>>(
        &self,
        x: Image<E, D, T>,
        emb: Tensor<(usize, usize), E, D, T>,
        encoder: Option<&Tokens<E, D>>,
        params: ParamGrads,
    ) -> Image<E, D, T> {
        // The time embedding's operations join x's tape; every block reads it untaped (same
        // tensor), and dfdx runs the tape's operations in the order they were made.
        let (emb, emb_tape) = emb.split_tape();
        let (x, x_tape) = x.split_tape();
        let mut h = x.put_tape(x_tape.merge(emb_tape));
        if self.center_input {
            h = h * E::from_f64(2.0).unwrap() - E::from_f64(1.0).unwrap();
        }
        h = D::conv2d(&self.conv_in, h, params);
        let cx = BlockContext {
            temb: Some(&emb),
            encoder,
            params,
        };
        let mut skips = vec![h.with_empty_tape()];
        for block in &self.down {
            h = block.forward(h, &cx, &mut skips);
        }
        if let Some(mid) = &self.mid {
            h = mid.forward(h, &cx);
        } else {
            // Without a mid block the first up resnet concatenates the last down output with
            // itself; dfdx's binary operations need two tensors, so the path goes on with a
            // copy (the product with 1 records its backward).
            h = h * E::one();
        }
        for block in &self.up {
            h = block.forward(h, &cx, &mut skips);
        }
        let h = D::group_norm(&self.norm_out, h, None, Activation::Silu, params);
        D::conv2d(&self.conv_out, h, params)
    }
}

//! diffusers' `AutoencoderKL`, the VAE of latent diffusion (Stable Diffusion 1.x/2.x, SDXL,
//! SD3, FLUX): its decoder (latents -> image) and its encoder's latent mean (image -> latents,
//! for inversion and for losses on images), on any dfdx tape, built from the blocks the UNets
//! use (`blocks.rs`) with diffusers' tensor names, and their VJPs with respect to the
//! input and every parameter.
//!
//! A latent diffusion pipeline samples *scaled* latents: [`VaeMap::DecodeLatents`] undoes the
//! scaling as the pipelines do before decoding (`latents / scaling_factor + shift_factor`, or
//! per channel `latents * latents_std / scaling_factor + latents_mean` where the config gives
//! those), and [`VaeMap::EncodeLatents`] applies it to the encoder's mean.

use adeis_compiler::FieldError;
use dfdx::prelude::*;
use serde::Deserialize;

use super::blocks::{AfterResnet, BlockContext, DownBlock, MidBlock, UpBlock};
use super::build::{Builder, ParamSource, PathSpec};
use super::config::{d_32_groups, d_channels, d_one_usize, d_silu, d_true, SampleSize};
use super::{named_grads, named_params, num_params, param_grads, zero_grads, Param, UNetGrads};
use crate::error::RuntimeError;
use crate::nn::{Activation, Conv2d, Float, GroupNorm, Image, NnDevice, ParamGrads};
use crate::state::State;

fn d_down() -> Vec<String> {
    vec!["DownEncoderBlock2D".into()]
}
fn d_up() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}
fn d_block_out() -> Vec<usize> {
    vec![64]
}
fn d_latent() -> usize {
    4
}
fn d_scaling() -> f64 {
    0.18215
}

/// GroupNorm's epsilon everywhere in diffusers' `Encoder` and `Decoder` (not a config key).
pub const VAE_NORM_EPS: f64 = 1e-6;

/// An `AutoencoderKL` config.json (the keys adeis uses, with diffusers' defaults; others,
/// such as `_diffusers_version`, are read and ignored).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct AutoencoderKLConfig {
    /// `_class_name`: "AutoencoderKL" (another class is refused by name).
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    /// Channels of the image the encoder takes.
    #[serde(default = "d_channels")]
    pub in_channels: usize,
    /// Channels of the image the decoder makes.
    #[serde(default = "d_channels")]
    pub out_channels: usize,
    /// The encoder's blocks, finest first: each "DownEncoderBlock2D".
    #[serde(default = "d_down")]
    pub down_block_types: Vec<String>,
    /// The decoder's blocks, coarsest first: each "UpDecoderBlock2D".
    #[serde(default = "d_up")]
    pub up_block_types: Vec<String>,
    /// Each level's channels, finest first.
    #[serde(default = "d_block_out")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block (the decoder's blocks have one more).
    #[serde(default = "d_one_usize")]
    pub layers_per_block: usize,
    /// The activation: "silu" or "swish" (the same; others are refused).
    #[serde(default = "d_silu")]
    pub act_fn: String,
    /// Channels of the latents.
    #[serde(default = "d_latent")]
    pub latent_channels: usize,
    /// GroupNorm's groups.
    #[serde(default = "d_32_groups")]
    pub norm_num_groups: usize,
    /// The image size the model was trained at (read and range-checked; a convolutional VAE
    /// runs at any size divisible by 2^(levels - 1)).
    #[serde(default)]
    pub sample_size: Option<SampleSize>,
    /// The latents' scale: a pipeline samples latents * scaling_factor.
    #[serde(default = "d_scaling")]
    pub scaling_factor: f64,
    /// The latents' shift (SD3, FLUX): a pipeline samples (latents - shift) * scaling.
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Per-channel latent means (with `latents_std`, in place of `shift_factor`).
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    /// Per-channel latent standard deviations (with `latents_mean`).
    #[serde(default)]
    pub latents_std: Option<Vec<f64>>,
    /// diffusers runs such a VAE in f32 under an f16 pipeline: adeis computes in f32 or f64
    /// anyway, so it is read and has no effect.
    #[serde(default = "d_true")]
    pub force_upcast: bool,
    /// A 1x1 convolution after the encoder.
    #[serde(default = "d_true")]
    pub use_quant_conv: bool,
    /// A 1x1 convolution before the decoder.
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
    /// Whether the encoder's and the decoder's mid blocks have their attention.
    #[serde(default = "d_true")]
    pub mid_block_add_attention: bool,
}

fn unsupported(key: &str, value: &str, supported: &str) -> FieldError {
    FieldError::value(key, format!("{value:?}"), format!("supported: {supported}"))
}

impl AutoencoderKLConfig {
    /// The number of resolution levels (the latents are 2^(levels - 1) times smaller than the
    /// image).
    pub fn levels(&self) -> usize {
        self.block_out_channels.len()
    }

    /// How many times smaller than the image the latents are, per side.
    pub fn downscale(&self) -> usize {
        1 << (self.levels() - 1)
    }

    /// Checks that adeis can run this VAE; errors name the key, the value and what is
    /// supported.
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(c) = &self.class_name {
            if c != "AutoencoderKL" {
                return Err(unsupported(
                    "_class_name",
                    c,
                    "AutoencoderKL (other autoencoders, such as VQModel, AutoencoderTiny and AutoencoderDC, are not supported)",
                ));
            }
        }
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(FieldError::new(
                "block_out_channels",
                "block_out_channels is empty: give the channels of each level",
            ));
        }
        if n > 8 {
            return Err(FieldError::value(
                "block_out_channels",
                format!("{n} levels"),
                "at most 8 levels",
            ));
        }
        for (key, types, want) in [
            (
                "down_block_types",
                &self.down_block_types,
                "DownEncoderBlock2D",
            ),
            ("up_block_types", &self.up_block_types, "UpDecoderBlock2D"),
        ] {
            if types.len() != n {
                return Err(FieldError::new(
                    key,
                    format!(
                        "{key} has {} entries; block_out_channels has {n}",
                        types.len()
                    ),
                ));
            }
            if let Some((i, t)) = types.iter().enumerate().find(|(_, t)| *t != want) {
                return Err(unsupported(&format!("{key}[{i}]"), t, want));
            }
        }
        if !["silu", "swish"].contains(&self.act_fn.as_str()) {
            return Err(unsupported("act_fn", &self.act_fn, "silu, swish"));
        }
        let groups = self.norm_num_groups;
        if groups == 0 {
            return Err(FieldError::value("norm_num_groups", 0, "at least 1 group"));
        }
        for (i, c) in self.block_out_channels.iter().enumerate() {
            if *c == 0 || c % groups != 0 {
                return Err(FieldError::value(
                    format!("block_out_channels[{i}]"),
                    c,
                    format!("a positive multiple of norm_num_groups = {groups}"),
                ));
            }
        }
        for (key, v) in [
            ("layers_per_block", self.layers_per_block),
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
        ] {
            if v == 0 {
                return Err(FieldError::value(key, 0, "at least 1"));
            }
        }
        if !self.scaling_factor.is_finite() || self.scaling_factor == 0.0 {
            return Err(FieldError::value(
                "scaling_factor",
                self.scaling_factor,
                "a finite number other than 0",
            ));
        }
        if let Some(s) = self.shift_factor.filter(|s| !s.is_finite()) {
            return Err(FieldError::value(
                "shift_factor",
                s,
                "a finite number, or null",
            ));
        }
        match (&self.latents_mean, &self.latents_std) {
            (None, None) => {}
            (Some(mean), Some(std)) => {
                for (key, v) in [("latents_mean", mean), ("latents_std", std)] {
                    if v.len() != self.latent_channels {
                        return Err(FieldError::new(
                            key,
                            format!(
                                "{key} has {} entries; latent_channels is {}",
                                v.len(),
                                self.latent_channels
                            ),
                        ));
                    }
                    let bad = |x: &f64| !x.is_finite() || (key == "latents_std" && *x == 0.0);
                    if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| bad(x)) {
                        return Err(FieldError::value(
                            format!("{key}[{i}]"),
                            x,
                            if key == "latents_std" {
                                "a finite number other than 0"
                            } else {
                                "a finite number"
                            },
                        ));
                    }
                }
            }
            (Some(_), None) | (None, Some(_)) => {
                let (given, missing) = if self.latents_mean.is_some() {
                    ("latents_mean", "latents_std")
                } else {
                    ("latents_std", "latents_mean")
                };
                return Err(FieldError::new(
                    missing,
                    format!("{given} is given without {missing}: give both, or neither"),
                ));
            }
        }
        if let Some(size) = self.sample_size {
            size.check()?;
        }
        Ok(())
    }

    /// Per channel (scale, shift) that maps a pipeline's latents to the decoder's:
    /// decoder latent = scale * latent + shift.
    pub fn unscaling(&self) -> Vec<(f64, f64)> {
        let s = self.scaling_factor;
        match (&self.latents_mean, &self.latents_std) {
            (Some(mean), Some(std)) => std.iter().zip(mean).map(|(d, m)| (d / s, *m)).collect(),
            _ => vec![(1.0 / s, self.shift_factor.unwrap_or(0.0)); self.latent_channels],
        }
    }
}

/// How a reference file of diffusers' numbers for a VAE (scripts/make-vae-fixtures.py) names
/// one map's tensors; each output and gradient key has a dtype suffix (`.f32`, `.f64`).
#[derive(Clone, Copy, Debug)]
pub struct VaeReferenceKeys {
    /// The map.
    pub map: VaeMap,
    /// Its input.
    pub input: &'static str,
    /// The cotangent on its output.
    pub cot: &'static str,
    /// Its output.
    pub output: &'static str,
    /// The gradient with respect to its input.
    pub input_grad: &'static str,
    /// `<prefix>.dparam.<name>`: the parameter gradients, for the maps the file holds them of.
    pub param_prefix: Option<&'static str>,
}

/// The maps a VAE reference file holds: the decoder, the encoder's mean, a pipeline's decode.
pub const VAE_REFERENCE_KEYS: [VaeReferenceKeys; 3] = [
    VaeReferenceKeys {
        map: VaeMap::Decode,
        input: "z",
        cot: "cot_image",
        output: "decode.out",
        input_grad: "decode.dz",
        param_prefix: Some("decode"),
    },
    VaeReferenceKeys {
        map: VaeMap::EncodeMean,
        input: "x",
        cot: "cot_latent",
        output: "encode.mean",
        input_grad: "encode.dx",
        param_prefix: Some("encode"),
    },
    VaeReferenceKeys {
        map: VaeMap::DecodeLatents,
        input: "z",
        cot: "cot_image",
        output: "latents.out",
        input_grad: "latents.dlatents",
        param_prefix: None,
    },
];

/// What a VAE computes (each on any tape, with [`AutoencoderKL::apply`], and its VJP with
/// [`AutoencoderKL::vjp`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VaeMap {
    /// Decoder latents (as `vae.decode` takes them) -> image.
    Decode,
    /// A pipeline's scaled latents -> image, as the pipelines decode them.
    DecodeLatents,
    /// Image -> the mean of the encoder's latent distribution (`latent_dist.mean`).
    EncodeMean,
    /// Image -> the scaled latents a pipeline samples (the mean, scaled).
    EncodeLatents,
}

/// The encoder: convolution, down blocks, mid block, norm, convolution to the moments.
#[derive(Clone, Debug)]
struct Encoder<E: Dtype, D: Storage<E>> {
    conv_in: Conv2d<E, D>,
    down: Vec<DownBlock<E, D>>,
    mid: MidBlock<E, D>,
    norm_out: GroupNorm<E, D>,
    conv_out: Conv2d<E, D>,
}

/// The decoder: convolution, mid block, up blocks without skips, norm, convolution.
#[derive(Clone, Debug)]
struct Decoder<E: Dtype, D: Storage<E>> {
    conv_in: Conv2d<E, D>,
    mid: MidBlock<E, D>,
    up: Vec<UpBlock<E, D>>,
    norm_out: GroupNorm<E, D>,
    conv_out: Conv2d<E, D>,
}

/// diffusers' `AutoencoderKL`.
#[derive(Clone, Debug)]
pub struct AutoencoderKL<E: Dtype, D: Storage<E>> {
    config: AutoencoderKLConfig,
    encoder: Encoder<E, D>,
    decoder: Decoder<E, D>,
    quant_conv: Option<Conv2d<E, D>>,
    post_quant_conv: Option<Conv2d<E, D>>,
    params: Vec<Param<E, D>>,
}

/// A VAE map's value and its VJP with respect to the input ([`AutoencoderKL::vjp`] on
/// images, [`AutoencoderKL::vjp_state_with`] on states).
#[derive(Clone, Debug)]
pub struct VaeVjp<T> {
    /// The map's output.
    pub value: T,
    /// cot^T d(output)/d(input).
    pub dx: T,
}

/// Gradients with respect to every parameter of an [`AutoencoderKL`], in its parameter order.
pub type VaeGrads<E, D> = UNetGrads<E, D>;

impl<E: Float, D: NnDevice<E>> Builder<'_, E, D> {
    /// `UNetMidBlock2D` without a time embedding: resnet, one-head attention (unless
    /// `attention` is false), resnet.
    fn vae_mid(
        &mut self,
        prefix: &str,
        ch: usize,
        attention: bool,
    ) -> Result<MidBlock<E, D>, RuntimeError> {
        Ok(MidBlock {
            first: self.resnet(&format!("{prefix}.resnets.0"), (ch, ch, 0), 1.0)?,
            attention: if attention {
                AfterResnet::SelfAttention(vec![self.attention(
                    &format!("{prefix}.attentions.0"),
                    ch,
                    None,
                    1.0,
                )?])
            } else {
                AfterResnet::Nothing
            },
            second: self.resnet(&format!("{prefix}.resnets.1"), (ch, ch, 0), 1.0)?,
        })
    }
}

impl<E: Float, D: NnDevice<E>> AutoencoderKL<E, D> {
    /// The VAE of `config` (validated here) with parameters from `source` by their diffusers
    /// names.
    pub fn new(
        dev: &D,
        config: AutoencoderKLConfig,
        source: &mut dyn ParamSource,
    ) -> Result<AutoencoderKL<E, D>, RuntimeError> {
        config.validate()?;
        let c = &config;
        let chans = &c.block_out_channels;
        let n = chans.len();
        let mut b = Builder::new(dev, source, VAE_NORM_EPS, c.norm_num_groups);
        // Encoder (diffusers' parameter order: encoder, decoder, quant_conv, post_quant_conv).
        let conv_in = b.conv3("encoder.conv_in", c.in_channels, chans[0])?;
        let nothing = |_: &mut Builder<'_, E, D>, _: (&str, usize, usize)| Ok(None);
        // diffusers' Downsample2D with padding 0 pads right and bottom by one.
        let path = PathSpec {
            down_prefix: "encoder.down_blocks",
            up_prefix: "decoder.up_blocks",
            layers: c.layers_per_block,
            temb: 0,
            down_pad: [0, 0, 1, 1],
            skips: false,
            attend: &nothing,
        };
        let down = b.down_path(chans, &path)?;
        let top = chans[n - 1];
        let mid = b.vae_mid("encoder.mid_block", top, c.mid_block_add_attention)?;
        let norm_out = b.norm("encoder.conv_norm_out", top)?;
        let moments = 2 * c.latent_channels;
        let conv_out = b.conv3("encoder.conv_out", top, moments)?;
        let encoder = Encoder {
            conv_in,
            down,
            mid,
            norm_out,
            conv_out,
        };
        // Decoder.
        let conv_in = b.conv3("decoder.conv_in", c.latent_channels, top)?;
        let mid = b.vae_mid("decoder.mid_block", top, c.mid_block_add_attention)?;
        let up = b.up_path(chans, &path)?;
        let norm_out = b.norm("decoder.conv_norm_out", chans[0])?;
        let conv_out = b.conv3("decoder.conv_out", chans[0], c.out_channels)?;
        let decoder = Decoder {
            conv_in,
            mid,
            up,
            norm_out,
            conv_out,
        };
        let quant_conv = if c.use_quant_conv {
            Some(b.conv("quant_conv", (moments, moments, 1), 1, [0; 4])?)
        } else {
            None
        };
        let post_quant_conv = if c.use_post_quant_conv {
            let l = c.latent_channels;
            Some(b.conv("post_quant_conv", (l, l, 1), 1, [0; 4])?)
        } else {
            None
        };
        let params = b.params;
        Ok(AutoencoderKL {
            config,
            encoder,
            decoder,
            quant_conv,
            post_quant_conv,
            params,
        })
    }

    /// The VAE's config.
    pub fn config(&self) -> &AutoencoderKLConfig {
        &self.config
    }

    /// The number of scalar parameters.
    pub fn num_params(&self) -> usize {
        num_params(&self.params)
    }

    /// The blocks, for `adeis check`.
    pub fn describe(&self) -> String {
        let c = &self.config;
        let (scale, shift) = match (&c.latents_mean, &c.latents_std) {
            (Some(_), Some(_)) => (
                format!("scaling_factor {}", c.scaling_factor),
                ", per-channel latents_mean and latents_std".to_string(),
            ),
            _ => (
                format!("scaling_factor {}", c.scaling_factor),
                c.shift_factor
                    .map_or(String::new(), |s| format!(", shift_factor {s}")),
            ),
        };
        format!(
            "AutoencoderKL: {} parameters, image {} channels -> latents {} channels at 1/{} the side -> image {} channels; {scale}{shift}; levels {:?} with {} resnets per encoder block{}\n",
            self.num_params(),
            c.in_channels,
            c.latent_channels,
            c.downscale(),
            c.out_channels,
            c.block_out_channels,
            c.layers_per_block,
            if c.mid_block_add_attention {
                ", mid-block attention"
            } else {
                ""
            }
        )
    }

    /// Checks that `shape` ([batch, channels, height, width]) is an input of `map`.
    pub fn check_input(&self, map: VaeMap, shape: &[usize]) -> Result<(), RuntimeError> {
        let c = &self.config;
        let (what, channels, factor) = match map {
            VaeMap::Decode | VaeMap::DecodeLatents => ("latents", c.latent_channels, 1),
            VaeMap::EncodeMean | VaeMap::EncodeLatents => {
                ("an image", c.in_channels, c.downscale())
            }
        };
        match shape {
            [_, ch, ..] if shape.len() == 4 && *ch != channels => Err(RuntimeError::Shape(
                format!("the VAE takes {what} of {channels} channels; this one has {ch}"),
            )),
            [_, _, h, w] if h % factor != 0 || w % factor != 0 || *h == 0 || *w == 0 => {
                Err(RuntimeError::Shape(format!(
                    "an image of {h} x {w}: the VAE's height and width must be positive multiples of 2^(levels - 1) = {factor}"
                )))
            }
            [_, _, _, _] => Ok(()),
            _ => Err(RuntimeError::Shape(format!(
                "the VAE takes {what} [batch, channels, height, width]; this has shape {shape:?}"
            ))),
        }
    }

    fn context(params: ParamGrads) -> BlockContext<'static, E, D> {
        BlockContext {
            temb: None,
            encoder: None,
            params,
        }
    }

    /// The decoder on latents as `vae.decode` takes them (after `post_quant_conv`).
    pub fn decode<T: Tape<E, D>>(&self, z: Image<E, D, T>, params: ParamGrads) -> Image<E, D, T> {
        let cx = Self::context(params);
        let mut h = match &self.post_quant_conv {
            Some(c) => D::conv2d(c, z, params),
            None => z,
        };
        let d = &self.decoder;
        h = D::conv2d(&d.conv_in, h, params);
        h = d.mid.forward(h, &cx);
        for block in &d.up {
            h = block.forward_without_skips(h, &cx);
        }
        let h = D::group_norm(&d.norm_out, h, None, Activation::Silu, params);
        D::conv2d(&d.conv_out, h, params)
    }

    /// The mean of the encoder's latent distribution (`vae.encode(x).latent_dist.mean`).
    pub fn encode_mean<T: Tape<E, D>>(
        &self,
        x: Image<E, D, T>,
        params: ParamGrads,
    ) -> Image<E, D, T> {
        let cx = Self::context(params);
        let e = &self.encoder;
        let mut h = D::conv2d(&e.conv_in, x, params);
        // The encoder's blocks keep no skips; the list the down blocks fill is dropped.
        let mut unused = Vec::new();
        for block in &e.down {
            h = block.forward(h, &cx, &mut unused);
        }
        drop(unused);
        h = e.mid.forward(h, &cx);
        let h = D::group_norm(&e.norm_out, h, None, Activation::Silu, params);
        let mut moments = D::conv2d(&e.conv_out, h, params);
        if let Some(q) = &self.quant_conv {
            moments = D::conv2d(q, moments, params);
        }
        let (b, _, hh, ww) = *moments.shape();
        let l = self.config.latent_channels;
        moments.slice((0..b, 0..l, 0..hh, 0..ww))
    }

    /// Latents times a per-channel scale, plus a per-channel shift.
    fn affine<T: Tape<E, D>>(
        &self,
        x: Image<E, D, T>,
        scale_shift: &[(f64, f64)],
    ) -> Image<E, D, T> {
        let dev = x.device().clone();
        let shape = *x.shape();
        let col = |f: &dyn Fn(&(f64, f64)) -> f64| {
            dev.tensor_from_vec(
                scale_shift
                    .iter()
                    .map(|v| E::from_f64(f(v)).unwrap())
                    .collect(),
                (shape.1,),
            )
            .broadcast_like::<_, Axes3<0, 2, 3>>(&shape)
        };
        x * col(&|v| v.0) + col(&|v| v.1)
    }

    /// `map` on `x`, on x's tape; `params` says whether the tape's backward pass computes the
    /// parameters' gradients.
    pub fn apply<T: Tape<E, D>>(
        &self,
        map: VaeMap,
        x: Image<E, D, T>,
        params: ParamGrads,
    ) -> Image<E, D, T> {
        match map {
            VaeMap::Decode => self.decode(x, params),
            VaeMap::DecodeLatents => {
                let z = self.affine(x, &self.config.unscaling());
                self.decode(z, params)
            }
            VaeMap::EncodeMean => self.encode_mean(x, params),
            VaeMap::EncodeLatents => {
                // The inverse of the unscaling: latent = (mean - shift) / scale.
                let inverse: Vec<(f64, f64)> = self
                    .config
                    .unscaling()
                    .iter()
                    .map(|(s, b)| (1.0 / s, -b / s))
                    .collect();
                let mean = self.encode_mean(x, params);
                self.affine(mean, &inverse)
            }
        }
    }

    /// `map` on `x` and its VJP with `cot` (the output's cotangent); with `grads`,
    /// cot^T d out/d(parameters) is added to it.
    pub fn vjp(
        &self,
        map: VaeMap,
        x: &Image<E, D>,
        cot: &Image<E, D>,
        grads: Option<&mut VaeGrads<E, D>>,
    ) -> Result<VaeVjp<Image<E, D>>, RuntimeError> {
        self.vjp_with(map, x, grads, |_| Ok(cot.clone()))
    }

    /// [`Self::vjp`] with the cotangent made from the output (a loss's gradient on it): one
    /// forward pass for both.
    pub fn vjp_with(
        &self,
        map: VaeMap,
        x: &Image<E, D>,
        grads: Option<&mut VaeGrads<E, D>>,
        cot_of: impl FnOnce(&Image<E, D>) -> Result<Image<E, D>, RuntimeError>,
    ) -> Result<VaeVjp<Image<E, D>>, RuntimeError> {
        let params = ParamGrads::when(grads.is_some());
        let out = self.apply(map, x.clone().leaky_trace(), params);
        let value = out.retaped::<NoneTape>();
        let cot = cot_of(&value)?;
        if out.shape() != cot.shape() {
            return Err(RuntimeError::Shape(format!(
                "the cotangent has shape {:?}; the VAE's output has {:?}",
                cot.shape(),
                out.shape()
            )));
        }
        let mut g = (out * cot).sum().backward();
        g.try_alloc_for(x).expect("gradient allocation");
        let dx = g.get(x);
        if let Some(acc) = grads {
            for (a, d) in acc
                .tensors
                .iter_mut()
                .zip(param_grads(&self.params, &mut g))
            {
                *a = a.clone() + d;
            }
        }
        Ok(VaeVjp { value, dx })
    }

    /// The item shape [channels, height, width] of `map`'s output for input items `item`.
    pub fn output_item(&self, map: VaeMap, item: &[usize]) -> Vec<usize> {
        let c = &self.config;
        let f = c.downscale();
        match (map, item) {
            (VaeMap::Decode | VaeMap::DecodeLatents, [_, h, w]) => {
                vec![c.out_channels, h * f, w * f]
            }
            (VaeMap::EncodeMean | VaeMap::EncodeLatents, [_, h, w]) => {
                vec![c.latent_channels, h / f, w / f]
            }
            _ => item.to_vec(),
        }
    }

    fn image_of(&self, map: VaeMap, x: &State<E, D>) -> Result<Image<E, D>, RuntimeError> {
        let mut shape = vec![x.batch()];
        shape.extend_from_slice(x.item());
        self.check_input(map, &shape)?;
        Ok(x.rows()
            .clone()
            .reshape_like(&(shape[0], shape[1], shape[2], shape[3])))
    }

    fn state_of(image: Image<E, D>) -> State<E, D> {
        let (b, c, h, w) = *image.shape();
        State::with_item(image.reshape_like(&(b, c * h * w)), &[c, h, w]).expect("item fills rows")
    }

    /// `map` on a state of images or latents (items [channels, height, width]).
    pub fn apply_state(&self, map: VaeMap, x: &State<E, D>) -> Result<State<E, D>, RuntimeError> {
        let image = self.image_of(map, x)?;
        Ok(Self::state_of(self.apply(map, image, ParamGrads::Skip)))
    }

    /// [`Self::vjp_with`] on states: `map`'s output and cot^T d out/dx, where `cot_of` makes
    /// the cotangent, of the output's shape, from the output. A loss on decoded images becomes
    /// a cotangent on the latents this way.
    pub fn vjp_state_with(
        &self,
        map: VaeMap,
        x: &State<E, D>,
        cot_of: impl FnOnce(&State<E, D>) -> Result<State<E, D>, RuntimeError>,
    ) -> Result<VaeVjp<State<E, D>>, RuntimeError> {
        let image = self.image_of(map, x)?;
        let want = self.output_item(map, x.item());
        let (b, c, h, w) = (x.batch(), want[0], want[1], want[2]);
        let mut value_state = None;
        let VaeVjp { dx, .. } = self.vjp_with(map, &image, None, |value| {
            let v = Self::state_of(value.clone());
            let cot = cot_of(&v)?;
            value_state = Some(v);
            if cot.item() != want.as_slice() || cot.batch() != b {
                return Err(RuntimeError::Shape(format!(
                    "the cotangent has shape {:?}; the VAE's output has [{b}, {c}, {h}, {w}]",
                    cot.shape(),
                )));
            }
            Ok(cot.rows().clone().reshape_like(&(b, c, h, w)))
        })?;
        Ok(VaeVjp {
            value: value_state.expect("made by the cotangent"),
            dx: x.like(dx.reshape_like(&(b, x.width()))),
        })
    }

    /// Zero gradients for every parameter.
    pub fn zero_grads(&self) -> VaeGrads<E, D> {
        zero_grads(&self.params)
    }

    /// The gradients of every parameter in `grads` (of a tape that ran [`Self::apply`]),
    /// flat, in the VAE's parameter order.
    pub fn grads_from_tape(&self, grads: &mut Gradients<E, D>) -> VaeGrads<E, D> {
        UNetGrads {
            tensors: param_grads(&self.params, grads),
        }
    }

    /// Parameter gradients by diffusers name: (name, shape, values).
    pub fn named_grads(&self, grads: &VaeGrads<E, D>) -> Vec<(String, Vec<usize>, Vec<f64>)> {
        named_grads(&self.params, grads)
    }

    /// Every parameter by diffusers name: (name, shape, values in C order).
    pub fn named_params(&self) -> Vec<(String, Vec<usize>, Vec<E>)> {
        named_params(&self.params)
    }
}

//! diffusers' `UNet2DConditionModel`, the UNet of Stable Diffusion 1.x and 2.x: the blocks of
//! [`super::UNet2D`] with cross-attention transformers ([`Transformer2D`]) that read the
//! encoder hidden states (a prompt's embeddings, `[tokens, cross_attention_dim]` per sample),
//! which are the conditioning z: a gradient method differentiates them as it does any z.
//!
//! The config keys of SD 1.x/2.x are read (`attention_head_dim` as an int or one per block,
//! which diffusers reads as the number of heads; `num_attention_heads`;
//! `transformer_layers_per_block`; `use_linear_projection`; `upcast_attention`, which adeis's
//! f32/f64 attention makes moot); every other architecture key is refused by name where it is
//! not diffusers' default (SDXL's `addition_embed_type`, class embeddings, dual
//! cross-attention, ...).

use adeis_compiler::{FieldError, Prediction, TimeInfo};
use dfdx::prelude::*;
use serde::Deserialize;

use super::blocks::{AfterResnet, MidBlock, TimeEmbedding, UNetBody};
use super::build::{Attending, Builder, ParamSource, PathSpec};
use super::config::{
    d_32_groups, d_default, d_eps, d_one, d_one_usize, d_positional, d_silu, d_true,
    estimate_memory, LevelLoad, MemoryEstimate, SampleSize,
};
use super::{
    check_unet_input, model_time_cotangent, named_grads, num_params, param_grads, time_projection,
    zero_grads, Param, UNetGrads,
};
use crate::denoiser::{Cotangents, Denoiser, TimeCot};
use crate::error::RuntimeError;
use crate::nn::transformer::{
    BasicTransformerBlock, GegluFeedForward, LayerNorm, Projection, TokenAttention, Tokens,
    Transformer2D,
};
use crate::nn::{Conv2d, Float, Image, Linear, NnDevice, ParamGrads};
use crate::state::State;

/// An int, or one per block (diffusers writes both).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    /// The same for every block.
    One(usize),
    /// One per down block, finest first.
    Each(Vec<usize>),
}

impl PerBlock {
    fn at(&self, i: usize) -> usize {
        match self {
            PerBlock::One(v) => *v,
            PerBlock::Each(v) => v[i],
        }
    }

    fn check(&self, key: &str, n: usize) -> Result<(), FieldError> {
        match self {
            PerBlock::One(0) => Err(FieldError::value(key, 0, "at least 1")),
            PerBlock::Each(v) if v.len() != n => Err(FieldError::new(
                key,
                format!("{key} has {} entries; block_out_channels has {n}", v.len()),
            )),
            PerBlock::Each(v) if v.contains(&0) => Err(FieldError::value(
                key,
                format!("{v:?}"),
                "entries of at least 1",
            )),
            _ => Ok(()),
        }
    }
}

fn d_four() -> usize {
    4
}
fn d_down() -> Vec<String> {
    [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_up() -> Vec<String> {
    [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn d_block_out() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn d_two() -> PerBlock {
    PerBlock::One(2)
}
fn d_one_per_block() -> PerBlock {
    PerBlock::One(1)
}
fn d_eight() -> PerBlock {
    PerBlock::One(8)
}
fn d_cross() -> PerBlock {
    PerBlock::One(1280)
}
fn d_three() -> usize {
    3
}

/// A `UNet2DConditionModel` config.json (the keys adeis reads, with diffusers' defaults).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct UNet2DConditionConfig {
    /// `_class_name`: "UNet2DConditionModel".
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    /// The latent image size the model was trained at (range-checked).
    #[serde(default)]
    pub sample_size: Option<SampleSize>,
    /// Channels of the input latents.
    #[serde(default = "d_four")]
    pub in_channels: usize,
    /// Channels of the output.
    #[serde(default = "d_four")]
    pub out_channels: usize,
    /// Maps the input from [0, 1] to [-1, 1] first.
    #[serde(default)]
    pub center_input_sample: bool,
    /// Cosines before sines in the time projection.
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    /// The sinusoids' frequency shift.
    #[serde(default)]
    pub freq_shift: f64,
    /// `CrossAttnDownBlock2D` or `DownBlock2D` per level, finest first.
    #[serde(default = "d_down")]
    pub down_block_types: Vec<String>,
    /// `UNetMidBlock2DCrossAttn`.
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<String>,
    /// `UpBlock2D` or `CrossAttnUpBlock2D` per level, coarsest first.
    #[serde(default = "d_up")]
    pub up_block_types: Vec<String>,
    /// Each level's channels.
    #[serde(default = "d_block_out")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (an int).
    #[serde(default = "d_two")]
    pub layers_per_block: PerBlock,
    /// The downsampling convolution's padding.
    #[serde(default = "d_one_usize")]
    pub downsample_padding: usize,
    /// The mid block's residual scale.
    #[serde(default = "d_one")]
    pub mid_block_scale_factor: f64,
    /// Training dropout: read, not applied.
    #[serde(default)]
    pub dropout: f64,
    /// "silu" or "swish".
    #[serde(default = "d_silu")]
    pub act_fn: String,
    /// GroupNorm's groups.
    #[serde(default = "d_32_groups")]
    pub norm_num_groups: usize,
    /// GroupNorm's epsilon (the resnets' and the output's; the transformers' is 1e-6).
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    /// The width of the encoder hidden states (an int).
    #[serde(default = "d_cross")]
    pub cross_attention_dim: PerBlock,
    /// Transformer blocks per cross-attention block: an int or one per level.
    #[serde(default = "d_one_per_block")]
    pub transformer_layers_per_block: PerBlock,
    /// The number of heads, an int or one per level (diffusers' name for it; see
    /// `num_attention_heads`).
    #[serde(default = "d_eight")]
    pub attention_head_dim: PerBlock,
    /// The number of heads; when null diffusers takes `attention_head_dim`.
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    /// Linear maps instead of 1x1 convolutions into and out of the transformers.
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Attention scores in f32 under f16: adeis computes in f32 or f64; read, no effect.
    #[serde(default)]
    pub upcast_attention: bool,
    /// "default" only.
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    /// "positional" only.
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    /// The time embedding's width (default 4 x the first level's channels).
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    /// 3 only.
    #[serde(default = "d_three")]
    pub conv_in_kernel: usize,
    /// 3 only.
    #[serde(default = "d_three")]
    pub conv_out_kernel: usize,
    /// Keys whose only supported value is diffusers' default (null or false), read so that
    /// a config that sets one is refused by name.
    #[serde(flatten)]
    pub others: serde_json::Map<String, serde_json::Value>,
}

/// Keys adeis refuses unless null or false: (key, what setting it means).
const UNSUPPORTED: [(&str, &str); 14] = [
    ("addition_embed_type", "SDXL's added text-time embedding"),
    ("addition_time_embed_dim", "SDXL's added time embedding"),
    (
        "projection_class_embeddings_input_dim",
        "SDXL's added embedding",
    ),
    ("class_embed_type", "a class embedding"),
    ("num_class_embeds", "a class embedding"),
    (
        "encoder_hid_dim",
        "a projection of the encoder hidden states",
    ),
    (
        "encoder_hid_dim_type",
        "a projection of the encoder hidden states",
    ),
    ("time_cond_proj_dim", "a guidance-scale embedding (LCM)"),
    (
        "timestep_post_act",
        "an activation after the time embedding",
    ),
    (
        "time_embedding_act_fn",
        "an activation of the time embedding",
    ),
    ("dual_cross_attention", "dual cross-attention"),
    (
        "only_cross_attention",
        "transformers without self-attention",
    ),
    (
        "resnet_skip_time_act",
        "resnets without the time activation",
    ),
    ("class_embeddings_concat", "a concatenated class embedding"),
];

/// Keys adeis reads only at diffusers' default value (a JSON value, null counting as it):
/// (key, the default, what another value means).
const DEFAULT_ONLY: [(&str, &str, &str); 5] = [
    ("attention_type", "\"default\"", "gated attention (GLIGEN)"),
    (
        "cross_attention_norm",
        "null",
        "a norm of the encoder hidden states",
    ),
    ("resnet_out_scale_factor", "1.0", "a resnet output scale"),
    (
        "reverse_transformer_layers_per_block",
        "null",
        "per-layer transformer depths of the up blocks",
    ),
    (
        "mid_block_only_cross_attention",
        "null",
        "a mid block without self-attention",
    ),
];

fn unsupported(key: &str, value: &str, supported: &str) -> FieldError {
    FieldError::value(key, format!("{value:?}"), format!("supported: {supported}"))
}

/// A block's kind: with cross-attention or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cross {
    No,
    Yes,
}

impl UNet2DConditionConfig {
    /// The number of resolution levels.
    pub fn levels(&self) -> usize {
        self.block_out_channels.len()
    }

    /// The time embedding's width.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(4 * self.block_out_channels[0])
    }

    /// The heads of level `i` (diffusers: `num_attention_heads or attention_head_dim`).
    pub fn heads(&self, i: usize) -> usize {
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .at(i)
    }

    /// The width of the encoder hidden states.
    pub fn cross_dim(&self) -> usize {
        self.cross_attention_dim.at(0)
    }

    fn down_cross(&self) -> Vec<Cross> {
        self.down_block_types
            .iter()
            .map(|t| {
                if t.starts_with("CrossAttn") {
                    Cross::Yes
                } else {
                    Cross::No
                }
            })
            .collect()
    }

    fn up_cross(&self) -> Vec<Cross> {
        self.up_block_types
            .iter()
            .map(|t| {
                if t.starts_with("CrossAttn") {
                    Cross::Yes
                } else {
                    Cross::No
                }
            })
            .collect()
    }

    /// Checks that adeis can run this model; errors name the key, the value and what is
    /// supported.
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(c) = &self.class_name {
            if c != "UNet2DConditionModel" {
                return Err(unsupported("_class_name", c, "UNet2DConditionModel"));
            }
        }
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(FieldError::new(
                "block_out_channels",
                "block_out_channels is empty: give the channels of each level",
            ));
        }
        for (key, types, ok) in [
            (
                "down_block_types",
                &self.down_block_types,
                ["CrossAttnDownBlock2D", "DownBlock2D"],
            ),
            (
                "up_block_types",
                &self.up_block_types,
                ["CrossAttnUpBlock2D", "UpBlock2D"],
            ),
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
            if let Some((i, t)) = types
                .iter()
                .enumerate()
                .find(|(_, t)| !ok.contains(&t.as_str()))
            {
                return Err(unsupported(&format!("{key}[{i}]"), t, &ok.join(", ")));
            }
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") => {}
            other => {
                return Err(unsupported(
                    "mid_block_type",
                    other.unwrap_or("null"),
                    "UNetMidBlock2DCrossAttn",
                ))
            }
        }
        for (key, value, ok) in [
            ("act_fn", &self.act_fn, &["silu", "swish"][..]),
            (
                "resnet_time_scale_shift",
                &self.resnet_time_scale_shift,
                &["default"][..],
            ),
            (
                "time_embedding_type",
                &self.time_embedding_type,
                &["positional"][..],
            ),
        ] {
            if !ok.contains(&value.as_str()) {
                return Err(unsupported(key, value, &ok.join(", ")));
            }
        }
        for (key, k) in [
            ("conv_in_kernel", self.conv_in_kernel),
            ("conv_out_kernel", self.conv_out_kernel),
        ] {
            if k != 3 {
                return Err(FieldError::value(key, k, "3"));
            }
        }
        for (key, what) in UNSUPPORTED {
            match self.others.get(key) {
                None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => {}
                Some(v) => {
                    return Err(FieldError::value(
                        key,
                        v.to_string(),
                        format!("null or false: {what} is not supported yet"),
                    ))
                }
            }
        }
        for (key, default, what) in DEFAULT_ONLY {
            let want: serde_json::Value = serde_json::from_str(default).expect("a JSON literal");
            match self.others.get(key) {
                None | Some(serde_json::Value::Null) => {}
                Some(v) if v == &want || v.as_f64().is_some_and(|x| Some(x) == want.as_f64()) => {}
                Some(v) => {
                    return Err(FieldError::value(
                        key,
                        v.to_string(),
                        format!("{default} (diffusers' default): {what} is not supported yet"),
                    ))
                }
            }
        }
        if let PerBlock::Each(_) = self.layers_per_block {
            return Err(FieldError::new(
                "layers_per_block",
                "layers_per_block per block is not supported: give one int",
            ));
        }
        if let PerBlock::Each(v) = &self.cross_attention_dim {
            if v.iter().any(|d| *d != v[0]) {
                return Err(FieldError::value(
                    "cross_attention_dim",
                    format!("{v:?}"),
                    "one width for every block",
                ));
            }
        }
        self.layers_per_block.check("layers_per_block", n)?;
        self.cross_attention_dim.check("cross_attention_dim", n)?;
        self.transformer_layers_per_block
            .check("transformer_layers_per_block", n)?;
        self.attention_head_dim.check("attention_head_dim", n)?;
        if let Some(h) = &self.num_attention_heads {
            h.check("num_attention_heads", n)?;
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
            if c % self.heads(i) != 0 {
                let key = if self.num_attention_heads.is_some() {
                    "num_attention_heads"
                } else {
                    "attention_head_dim"
                };
                return Err(FieldError::value(
                    key,
                    self.heads(i),
                    format!(
                        "a divisor of block {i}'s {c} channels (diffusers reads it as the number of heads)"
                    ),
                ));
            }
        }
        for (key, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
        ] {
            if v == 0 {
                return Err(FieldError::value(key, 0, "at least 1 channel"));
            }
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return Err(FieldError::value(
                "norm_eps",
                self.norm_eps,
                "a finite number > 0",
            ));
        }
        if self.mid_block_scale_factor == 0.0 || !self.mid_block_scale_factor.is_finite() {
            return Err(FieldError::value(
                "mid_block_scale_factor",
                self.mid_block_scale_factor,
                "a finite number other than 0",
            ));
        }
        if let Some(size) = self.sample_size {
            size.check()?;
        }
        Ok(())
    }
}

impl UNet2DConditionConfig {
    /// The memory of one evaluation on `batch` latents of `height` x `width` with encoder hidden
    /// states of `tokens` tokens, estimated from the config alone as
    /// [`super::UNet2DConfig::memory_estimate`] does; each transformer block keeps about thirty
    /// level-sized activations on the tape (norms, projections, q, k, v, the GEGLU's 8x and 4x
    /// widths) and its self- and cross-attention scores.
    pub fn memory_estimate(
        &self,
        batch: usize,
        (height, width): (usize, usize),
        word: usize,
        (taped, tokens): (bool, usize),
    ) -> MemoryEstimate {
        let n = self.levels();
        let layers = self.layers_per_block.at(0) as u128;
        let depth = |i: usize| self.transformer_layers_per_block.at(i) as u128;
        let mut blocks = vec![0u128; n];
        for (i, c) in self.down_cross().into_iter().enumerate() {
            if c == Cross::Yes {
                blocks[i] += layers * depth(i);
            }
        }
        for (j, c) in self.up_cross().into_iter().enumerate() {
            if c == Cross::Yes {
                blocks[n - 1 - j] += (layers + 1) * depth(n - 1 - j);
            }
        }
        blocks[n - 1] += depth(n - 1);
        let loads: Vec<LevelLoad> = (0..n)
            .map(|i| LevelLoad {
                channels: self.block_out_channels[i],
                attention_blocks: blocks[i],
                heads: self.heads(i),
                attention_acts: 30,
                cross_scores: tokens as u128,
            })
            .collect();
        estimate_memory(&loads, layers as usize, (batch, height, width), word, taped)
    }
}

/// The epsilon of the transformers' GroupNorm (diffusers' `Transformer2DModel` in the UNet).
const TRANSFORMER_GROUP_NORM_EPS: f64 = 1e-6;
/// The epsilon of the transformer blocks' LayerNorms.
const LAYER_NORM_EPS: f64 = 1e-5;

/// diffusers' `UNet2DConditionModel`.
#[derive(Clone, Debug)]
pub struct UNet2DCondition<E: Dtype, D: Storage<E>> {
    config: UNet2DConditionConfig,
    prediction: Prediction,
    time_embedding: TimeEmbedding<E, D>,
    body: UNetBody<E, D>,
    params: Vec<Param<E, D>>,
    /// The number of tokens of the encoder hidden states (77 for CLIP's prompts).
    tokens: usize,
}

impl<E: Float, D: NnDevice<E>> Builder<'_, E, D> {
    fn linear_no_bias(
        &mut self,
        prefix: &str,
        i: usize,
        o: usize,
    ) -> Result<Linear<E, D>, RuntimeError> {
        let weight = self.matrix(&format!("{prefix}.weight"), (o, i), &[o, i])?;
        Ok(Linear::new(weight, None))
    }

    fn layer_norm(&mut self, prefix: &str, c: usize) -> Result<LayerNorm<E, D>, RuntimeError> {
        Ok(LayerNorm {
            weight: self.vector(&format!("{prefix}.weight"), c)?,
            bias: self.vector(&format!("{prefix}.bias"), c)?,
            eps: LAYER_NORM_EPS,
        })
    }

    fn token_attention(
        &mut self,
        prefix: &str,
        (c, context, heads): (usize, usize, usize),
    ) -> Result<TokenAttention<E, D>, RuntimeError> {
        Ok(TokenAttention {
            to_q: self.linear_no_bias(&format!("{prefix}.to_q"), c, c)?,
            to_k: self.linear_no_bias(&format!("{prefix}.to_k"), context, c)?,
            to_v: self.linear_no_bias(&format!("{prefix}.to_v"), context, c)?,
            to_out: self.linear(&format!("{prefix}.to_out.0"), c, c)?,
            heads,
        })
    }

    /// A `Transformer2DModel` of `c` channels at level `i` of `config`.
    fn transformer(
        &mut self,
        prefix: &str,
        c: usize,
        heads: usize,
        (layers, config): (usize, &UNet2DConditionConfig),
    ) -> Result<Transformer2D<E, D>, RuntimeError> {
        let eps = self.eps;
        self.eps = TRANSFORMER_GROUP_NORM_EPS;
        let norm = self.norm(&format!("{prefix}.norm"), c);
        self.eps = eps;
        let norm = norm?;
        let projection = if config.use_linear_projection {
            Projection::Linear {
                proj_in: self.linear(&format!("{prefix}.proj_in"), c, c)?,
                proj_out: Linear::new(
                    self.matrix(&format!("{prefix}.proj_out.weight"), (c, c), &[c, c])?,
                    Some(self.vector(&format!("{prefix}.proj_out.bias"), c)?),
                ),
            }
        } else {
            Projection::Conv {
                proj_in: self.conv(&format!("{prefix}.proj_in"), (c, c, 1), 1, [0; 4])?,
                proj_out: Conv2d::new(
                    self.matrix(&format!("{prefix}.proj_out.weight"), (c, c), &[c, c, 1, 1])?,
                    Some(self.vector(&format!("{prefix}.proj_out.bias"), c)?),
                    (1, 1),
                    1,
                    [0; 4],
                ),
            }
        };
        // proj_out is read after the blocks in diffusers' order; the names are what matter.
        let mut blocks = Vec::with_capacity(layers);
        let cross = config.cross_dim();
        for k in 0..layers {
            let p = format!("{prefix}.transformer_blocks.{k}");
            blocks.push(BasicTransformerBlock {
                norm1: self.layer_norm(&format!("{p}.norm1"), c)?,
                attn1: self.token_attention(&format!("{p}.attn1"), (c, c, heads))?,
                norm2: self.layer_norm(&format!("{p}.norm2"), c)?,
                attn2: self.token_attention(&format!("{p}.attn2"), (c, cross, heads))?,
                norm3: self.layer_norm(&format!("{p}.norm3"), c)?,
                ff: GegluFeedForward {
                    proj: self.linear(&format!("{p}.ff.net.0.proj"), c, 8 * c)?,
                    out: self.linear(&format!("{p}.ff.net.2"), 4 * c, c)?,
                },
            });
        }
        Ok(Transformer2D {
            norm,
            projection,
            blocks,
        })
    }
}

impl<E: Float, D: NnDevice<E>> UNet2DCondition<E, D> {
    /// The model of `config` (validated here) with parameters from `source` by their diffusers
    /// names; `prediction` is what it predicts (from the scheduler config).
    pub fn new(
        dev: &D,
        config: UNet2DConditionConfig,
        prediction: Prediction,
        source: &mut dyn ParamSource,
    ) -> Result<UNet2DCondition<E, D>, RuntimeError> {
        config.validate()?;
        let c = &config;
        let chans = &c.block_out_channels;
        let n = chans.len();
        let temb = c.time_embed_dim();
        let layers = c.layers_per_block.at(0);
        let mut b = Builder::new(dev, source, c.norm_eps, c.norm_num_groups);
        let conv_in = b.conv3("conv_in", c.in_channels, chans[0])?;
        let time_embedding = b.time_embedding(chans[0], temb)?;
        let pad = c.downsample_padding;
        let down_pad = if pad == 0 { [0, 0, 1, 1] } else { [pad; 4] };
        let (down_cross, up_cross) = (c.down_cross(), c.up_cross());
        let transformer = |b: &mut Builder<'_, E, D>, (prefix, ch, level): (&str, usize, usize)| {
            let depth = c.transformer_layers_per_block.at(level);
            Ok(Some(Attending::Cross(b.transformer(
                prefix,
                ch,
                c.heads(level),
                (depth, c),
            )?)))
        };
        let attend_down = |b: &mut Builder<'_, E, D>, (prefix, ch, i): (&str, usize, usize)| {
            match down_cross[i] {
                Cross::Yes => transformer(b, (prefix, ch, i)),
                Cross::No => Ok(None),
            }
        };
        let mut path = PathSpec {
            down_prefix: "down_blocks",
            up_prefix: "up_blocks",
            layers,
            temb,
            down_pad,
            skips: true,
            attend: &attend_down,
        };
        let down = b.down_path(chans, &path)?;
        let top = chans[n - 1];
        let scale = c.mid_block_scale_factor;
        let mid = MidBlock {
            first: b.resnet("mid_block.resnets.0", (top, top, temb), scale)?,
            attention: AfterResnet::CrossAttention(vec![b.transformer(
                "mid_block.attentions.0",
                top,
                c.heads(n - 1),
                (c.transformer_layers_per_block.at(n - 1), c),
            )?]),
            second: b.resnet("mid_block.resnets.1", (top, top, temb), scale)?,
        };
        // The up blocks' heads and transformer depths are the down blocks' reversed.
        let attend_up =
            |b: &mut Builder<'_, E, D>, (prefix, ch, i): (&str, usize, usize)| match up_cross[i] {
                Cross::Yes => transformer(b, (prefix, ch, n - 1 - i)),
                Cross::No => Ok(None),
            };
        path.attend = &attend_up;
        let up = b.up_path(chans, &path)?;
        let norm_out = b.norm("conv_norm_out", chans[0])?;
        let conv_out = b.conv3("conv_out", chans[0], c.out_channels)?;
        let params = b.params;
        let body = UNetBody {
            conv_in,
            down,
            mid: Some(mid),
            up,
            norm_out,
            conv_out,
            center_input: c.center_input_sample,
        };
        Ok(UNet2DCondition {
            config,
            prediction,
            time_embedding,
            body,
            params,
            tokens: 77,
        })
    }

    /// The model's config.
    pub fn config(&self) -> &UNet2DConditionConfig {
        &self.config
    }

    /// The number of scalar parameters.
    pub fn num_params(&self) -> usize {
        num_params(&self.params)
    }

    /// The number of tokens the encoder hidden states have (77, CLIP's, unless set).
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Takes encoder hidden states of `tokens` tokens.
    pub fn with_tokens(mut self, tokens: usize) -> Self {
        self.tokens = tokens;
        self
    }

    /// The blocks, for `adeis check`.
    pub fn describe(&self) -> String {
        let c = &self.config;
        let mut s = format!(
            "UNet2DConditionModel: {} parameters, {} -> {} channels, time embedding {}, encoder hidden states [tokens, {}]{}\n",
            self.num_params(),
            c.in_channels,
            c.out_channels,
            c.time_embed_dim(),
            c.cross_dim(),
            if c.use_linear_projection { ", linear projections" } else { "" }
        );
        for (i, t) in c.down_block_types.iter().enumerate() {
            s.push_str(&format!(
                "  down {i}: {t}, {} channels, {} heads, at 1/{} resolution\n",
                c.block_out_channels[i],
                c.heads(i),
                1 << i
            ));
        }
        s.push_str(&format!(
            "  mid: UNetMidBlock2DCrossAttn, {} channels\n",
            c.block_out_channels[c.levels() - 1]
        ));
        for (i, t) in c.up_block_types.iter().enumerate() {
            s.push_str(&format!(
                "  up {i}: {t}, {} channels\n",
                c.block_out_channels[c.levels() - 1 - i]
            ));
        }
        s
    }

    /// The sinusoidal projection of the model times, one row each (in f32, as diffusers).
    fn time_projection(&self, dev: &D, times: &[f64]) -> Tensor<(usize, usize), E, D> {
        let c = &self.config;
        time_projection(
            dev,
            times,
            (c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift),
            false,
        )
    }

    /// The network on latents `x` with the time embedding `emb` and the encoder hidden states
    /// `encoder` [batch, tokens, cross_attention_dim] (their gradient on x's tape when they
    /// are a traced leaf), on x's tape.
    fn forward_embedded<T: Tape<E, D>>(
        &self,
        x: Image<E, D, T>,
        emb: Tensor<(usize, usize), E, D, T>,
        encoder: &Tokens<E, D>,
        params: ParamGrads,
    ) -> Image<E, D, T> {
        self.body.forward(x, emb, Some(encoder), params)
    }

    /// The network on latents `x` at model time `t` with encoder hidden states `encoder`, on
    /// x's tape (the encoder states' gradient is recorded when they are a traced leaf).
    pub fn forward_image<T: Tape<E, D>>(
        &self,
        x: Image<E, D, T>,
        encoder: &Tokens<E, D>,
        t: f64,
        params: ParamGrads,
    ) -> Image<E, D, T> {
        let dev = x.device().clone();
        let batch = x.shape().0;
        let emb = self
            .time_embedding
            .forward(self.time_projection(&dev, &vec![t; batch]).retaped::<T>());
        self.forward_embedded(x, emb, encoder, params)
    }

    fn image_of(&self, x: &State<E, D>) -> Image<E, D> {
        let item = x.item();
        x.rows()
            .clone()
            .reshape_like(&(x.batch(), item[0], item[1], item[2]))
    }

    fn tokens_of(&self, z: &State<E, D>) -> Tokens<E, D> {
        z.rows()
            .clone()
            .reshape_like(&(z.batch(), self.tokens, self.config.cross_dim()))
    }

    /// Parameter gradients by diffusers name: (name, shape, values).
    pub fn named_grads(&self, grads: &UNetGrads<E, D>) -> Vec<(String, Vec<usize>, Vec<f64>)> {
        named_grads(&self.params, grads)
    }
}

impl<E: Float, D: NnDevice<E>> Denoiser<E, D> for UNet2DCondition<E, D> {
    type Grads = UNetGrads<E, D>;

    fn prediction(&self) -> Prediction {
        self.prediction
    }

    fn check_input(&self, item: &[usize]) -> Result<(), RuntimeError> {
        check_unet_input(
            item,
            self.config.in_channels,
            self.config.levels(),
            "latents",
        )
    }

    fn cond_dim(&self) -> usize {
        self.tokens * self.config.cross_dim()
    }

    fn cond_shape(&self) -> Vec<usize> {
        vec![self.tokens, self.config.cross_dim()]
    }

    fn forward(&self, x: &State<E, D>, z: Option<&State<E, D>>, time: &TimeInfo) -> State<E, D> {
        let z = z.expect("UNet2DConditionModel is given the encoder hidden states");
        let out = self.forward_image(
            self.image_of(x),
            &self.tokens_of(z),
            time.model_t,
            ParamGrads::Skip,
        );
        x.like(out.reshape_like(&(x.batch(), x.width())))
    }

    fn zero_grads(&self) -> UNetGrads<E, D> {
        zero_grads(&self.params)
    }

    fn vjp(
        &self,
        x: &State<E, D>,
        z: Option<&State<E, D>>,
        time: &TimeInfo,
        cot: &State<E, D>,
        theta: Option<(&mut UNetGrads<E, D>, f64)>,
    ) -> Cotangents<E, D> {
        let z = z.expect("UNet2DConditionModel is given the encoder hidden states");
        let image = self.image_of(x);
        let probe = image.clone();
        let traced = image.trace(Gradients::leaky());
        let encoder = self.tokens_of(z);
        let params = ParamGrads::when(theta.as_ref().is_some_and(|(_, w)| *w != 0.0));
        let batch = x.batch();
        let proj = self.time_projection(&x.device(), &vec![time.model_t; batch]);
        let emb = self
            .time_embedding
            .forward(proj.clone().retaped::<OwnedTape<E, D>>());
        let out = self.forward_embedded(traced, emb, &encoder, params);
        let c = cot.rows().clone().reshape_like(out.shape());
        let mut grads = (out * c).sum().backward();
        let dx = grads.get(&probe).reshape_like(&(batch, x.width()));
        grads.try_alloc_for(&encoder).expect("gradient allocation");
        let dz = z.like(grads.get(&encoder).reshape_like(&(batch, z.width())));
        let cfg = &self.config;
        let model_t = model_time_cotangent(
            &mut grads,
            &proj,
            time.model_t,
            (
                cfg.block_out_channels[0],
                cfg.flip_sin_to_cos,
                cfg.freq_shift,
            ),
        );
        if let Some((acc, w)) = theta {
            if w != 0.0 {
                let w = E::from_f64(w).unwrap();
                for (a, g) in acc
                    .tensors
                    .iter_mut()
                    .zip(param_grads(&self.params, &mut grads))
                {
                    *a = a.clone() + g * w;
                }
            }
        }
        Cotangents {
            x: x.like(dx),
            cond: Some(dz),
            time: Some(TimeCot {
                model_t,
                ..TimeCot::default()
            }),
        }
    }
}

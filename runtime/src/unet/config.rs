//! The keys of diffusers' `UNet2DModel` config.json that adeis reads, with diffusers' defaults,
//! and the check that a config describes a model adeis can run (errors name the key, the value
//! and what is supported).

use adeis_compiler::FieldError;
use serde::Deserialize;

pub(super) fn d_channels() -> usize {
    3
}
pub(super) fn d_true() -> bool {
    true
}
pub(super) fn d_positional() -> String {
    "positional".into()
}
fn d_down() -> Vec<String> {
    [
        "DownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_up() -> Vec<String> {
    [
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "UpBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_mid() -> Option<String> {
    Some("UNetMidBlock2D".into())
}
fn d_block_out() -> Vec<usize> {
    vec![224, 448, 672, 896]
}
fn d_layers() -> usize {
    2
}
pub(super) fn d_one() -> f64 {
    1.0
}
fn d_conv() -> String {
    "conv".into()
}
pub(super) fn d_silu() -> String {
    "silu".into()
}
fn d_head_dim() -> Option<usize> {
    Some(8)
}
fn d_groups() -> Option<usize> {
    Some(32)
}
pub(super) fn d_eps() -> f64 {
    1e-5
}
/// GroupNorm's groups where diffusers' default is 32 (the VAE, UNet2DConditionModel).
pub(super) fn d_32_groups() -> usize {
    32
}
pub(super) fn d_default() -> String {
    "default".into()
}

/// `sample_size`: the image side the model was trained at, one number or [height, width]
/// (signed, so that a negative one is named rather than a parse error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    /// A square image's side.
    Side(i64),
    /// [height, width].
    HeightWidth([i64; 2]),
}

impl SampleSize {
    /// Checks each side is from 1 to [`MAX_SAMPLE_SIDE`] (the error names `sample_size`).
    pub fn check(self) -> Result<(), FieldError> {
        let (h, w) = self.height_width();
        if h < 1 || w < 1 || h > MAX_SAMPLE_SIDE || w > MAX_SAMPLE_SIDE {
            return Err(FieldError::value(
                "sample_size",
                match self {
                    SampleSize::Side(s) => s.to_string(),
                    SampleSize::HeightWidth([h, w]) => format!("[{h}, {w}]"),
                },
                format!("an image side from 1 to {MAX_SAMPLE_SIDE}, or [height, width]"),
            ));
        }
        Ok(())
    }

    /// (height, width).
    pub fn height_width(self) -> (i64, i64) {
        match self {
            SampleSize::Side(s) => (s, s),
            SampleSize::HeightWidth([h, w]) => (h, w),
        }
    }
}

/// A `UNet2DModel` config (the keys adeis uses; others, such as `_diffusers_version`, are
/// read and ignored).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct UNet2DConfig {
    /// `_class_name`: "UNet2DModel" (another class is refused by name).
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    /// Channels of the input image.
    #[serde(default = "d_channels")]
    pub in_channels: usize,
    /// Channels of the output.
    #[serde(default = "d_channels")]
    pub out_channels: usize,
    /// Maps the input from [0, 1] to [-1, 1] first.
    #[serde(default)]
    pub center_input_sample: bool,
    /// "positional" (sinusoidal); "fourier" is refused.
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    /// The time embedding's width (default: 4 x the first block's channels).
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    /// The sinusoids' frequency shift (diffusers' `freq_shift`).
    #[serde(default)]
    pub freq_shift: f64,
    /// Cosines before sines in the sinusoidal projection.
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    /// The down blocks' types, finest first.
    #[serde(default = "d_down")]
    pub down_block_types: Vec<String>,
    /// The mid block's type, or none.
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<String>,
    /// The up blocks' types, coarsest first.
    #[serde(default = "d_up")]
    pub up_block_types: Vec<String>,
    /// Each level's channels, finest first.
    #[serde(default = "d_block_out")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (the up blocks have one more).
    #[serde(default = "d_layers")]
    pub layers_per_block: usize,
    /// The mid block's residual scale.
    #[serde(default = "d_one")]
    pub mid_block_scale_factor: f64,
    /// The downsampling convolution's padding (0 pads right and bottom by one).
    #[serde(default = "d_one_usize")]
    pub downsample_padding: usize,
    /// "conv" (a strided convolution); others are refused.
    #[serde(default = "d_conv")]
    pub downsample_type: String,
    /// "conv" (nearest upsampling and a convolution); others are refused.
    #[serde(default = "d_conv")]
    pub upsample_type: String,
    /// diffusers' training dropout: read and not applied (adeis samples and differentiates the
    /// model in evaluation mode).
    #[serde(default)]
    pub dropout: f64,
    /// The activation: "silu" or "swish" (the same; others are refused).
    #[serde(default = "d_silu")]
    pub act_fn: String,
    /// Channels per attention head (none: one head).
    #[serde(default = "d_head_dim")]
    pub attention_head_dim: Option<usize>,
    /// GroupNorm's groups in the resnets and the output.
    #[serde(default = "d_groups")]
    pub norm_num_groups: Option<usize>,
    /// GroupNorm's groups in the attention blocks: null or `norm_num_groups`.
    #[serde(default)]
    pub attn_norm_num_groups: Option<usize>,
    /// GroupNorm's epsilon.
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    /// "default" (the time embedding added); "scale_shift" is refused.
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    /// Whether the mid block has its attention.
    #[serde(default = "d_true")]
    pub add_attention: bool,
    /// Must be null: the class embedding is `num_class_embeds`' table.
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// The number of classes of a class-conditional model (its embedding table's rows).
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    /// The image size the model was trained at (a convolutional UNet runs at others; adeis
    /// names it when an input's size is far from it).
    #[serde(default)]
    pub sample_size: Option<SampleSize>,
}

/// The largest `sample_size` side a config may give (SDXL's latents are 128, its images
/// 1024; 16384 leaves room for any image a UNet is trained on).
pub const MAX_SAMPLE_SIDE: i64 = 16384;

pub(super) fn d_one_usize() -> usize {
    1
}

/// A down block type adeis builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownKind {
    /// `DownBlock2D`: resnets.
    Down,
    /// `AttnDownBlock2D`: resnets, each followed by a self-attention.
    AttnDown,
}

/// An up block type adeis builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpKind {
    /// `UpBlock2D`: resnets.
    Up,
    /// `AttnUpBlock2D`: resnets, each followed by a self-attention.
    AttnUp,
}

fn unsupported(key: &str, value: &str, supported: &str) -> FieldError {
    FieldError::value(key, format!("{value:?}"), format!("supported: {supported}"))
}

impl UNet2DConfig {
    /// The width of the time embedding (and of the class embedding).
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(4 * self.block_out_channels[0])
    }

    /// The number of resolution levels (downsamplings + 1).
    pub fn levels(&self) -> usize {
        self.block_out_channels.len()
    }

    /// GroupNorm's groups (checked to be present by [`UNet2DConfig::validate`]).
    pub fn groups(&self) -> usize {
        self.norm_num_groups.unwrap_or(32)
    }

    /// The down block kinds (after validation).
    pub fn down_kinds(&self) -> Vec<DownKind> {
        self.down_block_types
            .iter()
            .map(|t| {
                if t == "AttnDownBlock2D" {
                    DownKind::AttnDown
                } else {
                    DownKind::Down
                }
            })
            .collect()
    }

    /// The up block kinds (after validation).
    pub fn up_kinds(&self) -> Vec<UpKind> {
        self.up_block_types
            .iter()
            .map(|t| {
                if t == "AttnUpBlock2D" {
                    UpKind::AttnUp
                } else {
                    UpKind::Up
                }
            })
            .collect()
    }

    /// Checks that adeis can run this model: the supported block types, activation, time
    /// embedding, time scale shift, up/downsampling, and consistent channel counts.
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(c) = &self.class_name {
            if c != "UNet2DModel" {
                return Err(unsupported(
                    "_class_name",
                    c,
                    "UNet2DModel (UNet2DConditionModel and other models with cross-attention are not supported yet)",
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
        for (key, len) in [
            ("down_block_types", self.down_block_types.len()),
            ("up_block_types", self.up_block_types.len()),
        ] {
            if len != n {
                return Err(FieldError::new(
                    key,
                    format!("{key} has {len} entries; block_out_channels has {n}"),
                ));
            }
        }
        for (i, t) in self.down_block_types.iter().enumerate() {
            if t != "DownBlock2D" && t != "AttnDownBlock2D" {
                return Err(unsupported(
                    &format!("down_block_types[{i}]"),
                    t,
                    "DownBlock2D, AttnDownBlock2D (cross-attention and other block types are not supported yet)",
                ));
            }
        }
        for (i, t) in self.up_block_types.iter().enumerate() {
            if t != "UpBlock2D" && t != "AttnUpBlock2D" {
                return Err(unsupported(
                    &format!("up_block_types[{i}]"),
                    t,
                    "UpBlock2D, AttnUpBlock2D (cross-attention and other block types are not supported yet)",
                ));
            }
        }
        if let Some(m) = &self.mid_block_type {
            if m != "UNetMidBlock2D" {
                return Err(unsupported(
                    "mid_block_type",
                    m,
                    "UNetMidBlock2D, or null (no mid block)",
                ));
            }
        }
        let checks = [
            ("act_fn", &self.act_fn, &["silu", "swish"][..]),
            (
                "time_embedding_type",
                &self.time_embedding_type,
                &["positional"][..],
            ),
            (
                "resnet_time_scale_shift",
                &self.resnet_time_scale_shift,
                &["default"][..],
            ),
            ("downsample_type", &self.downsample_type, &["conv"][..]),
            ("upsample_type", &self.upsample_type, &["conv"][..]),
        ];
        for (key, value, ok) in checks {
            if !ok.contains(&value.as_str()) {
                return Err(unsupported(key, value, &ok.join(", ")));
            }
        }
        if let Some(c) = &self.class_embed_type {
            return Err(unsupported(
                "class_embed_type",
                c,
                "null (class labels through num_class_embeds)",
            ));
        }
        let Some(groups) = self.norm_num_groups else {
            return Err(FieldError::new(
                "norm_num_groups",
                "norm_num_groups is null: adeis needs the GroupNorm groups",
            ));
        };
        if groups == 0 {
            return Err(FieldError::value("norm_num_groups", 0, "at least 1 group"));
        }
        if self.attn_norm_num_groups.is_some_and(|g| g != groups) {
            return Err(FieldError::value(
                "attn_norm_num_groups",
                self.attn_norm_num_groups.unwrap(),
                format!("null or norm_num_groups ({groups})"),
            ));
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
        if let Some(d) = self.attention_head_dim {
            for (i, c) in self.block_out_channels.iter().enumerate() {
                let attends = self.down_block_types[i] == "AttnDownBlock2D"
                    || self.up_block_types[n - 1 - i] == "AttnUpBlock2D"
                    || (i == n - 1 && self.mid_block_type.is_some() && self.add_attention);
                if attends && (d == 0 || c % d != 0) {
                    return Err(FieldError::value(
                        "attention_head_dim",
                        d,
                        format!("a divisor of the attending blocks' channels ({c} in block {i})"),
                    ));
                }
            }
        }
        if self.layers_per_block == 0 {
            return Err(FieldError::value("layers_per_block", 0, "at least 1"));
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
        if self.num_class_embeds == Some(0) {
            return Err(FieldError::value(
                "num_class_embeds",
                0,
                "at least 1, or null",
            ));
        }
        Ok(())
    }
}

/// What a run of a [`UNet2DConfig`]'s model on images of one size needs in memory, estimated
/// from the config alone (before the weights are read): the activations and the attention's
/// score matrices, which grow with the square of the positions an attention block sees.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryEstimate {
    /// The bytes of the run's peak, estimated.
    pub bytes: u128,
    /// The bytes of one attention block's score matrix at the finest level that attends
    /// (0 without attention).
    pub attention_bytes: u128,
    /// The positions (height x width) that block attends over.
    pub attention_positions: usize,
    /// The resolution level of that block (0: the input's).
    pub attention_level: usize,
}

impl UNet2DConfig {
    /// The memory of one model evaluation on `batch` images of `height` x `width` in a
    /// `word`-byte float: a plain evaluation keeps the skip connections and a few of the
    /// largest level's activations, and one attention block's scores at a time; an
    /// evaluation on the tape (a VJP) keeps every activation and every attention block's
    /// softmax, and the backward pass one more score matrix. An estimate within a small factor,
    /// for refusing what cannot fit before it is tried.
    pub fn memory_estimate(
        &self,
        batch: usize,
        (height, width): (usize, usize),
        word: usize,
        taped: bool,
    ) -> MemoryEstimate {
        let n = self.levels();
        let layers = self.layers_per_block as u128;
        // Attention blocks per level.
        let mut attention = vec![0u128; n];
        for (i, t) in self.down_block_types.iter().enumerate() {
            if t == "AttnDownBlock2D" {
                attention[i] += layers;
            }
        }
        for (j, t) in self.up_block_types.iter().enumerate() {
            if t == "AttnUpBlock2D" {
                attention[n - 1 - j] += layers + 1;
            }
        }
        if self.mid_block_type.is_some() && self.add_attention {
            attention[n - 1] += 1;
        }
        let loads: Vec<LevelLoad> = (0..n)
            .map(|i| {
                let c = self.block_out_channels[i];
                LevelLoad {
                    channels: c,
                    attention_blocks: attention[i],
                    heads: (c / self.attention_head_dim.unwrap_or(c).max(1)).max(1),
                    // Each attention block keeps its q, k, v, output and two more of the level.
                    attention_acts: 6,
                    cross_scores: 0,
                }
            })
            .collect();
        estimate_memory(
            &loads,
            self.layers_per_block,
            (batch, height, width),
            word,
            taped,
        )
    }
}

/// What one resolution level of a UNet holds, for [`estimate_memory`].
#[derive(Clone, Debug)]
pub(crate) struct LevelLoad {
    /// Its channels.
    pub channels: usize,
    /// The attention blocks (self-attentions, or transformer blocks) at this level.
    pub attention_blocks: u128,
    /// Each one's heads.
    pub heads: usize,
    /// The level-sized activations each one keeps on the tape.
    pub attention_acts: u128,
    /// Per head and position, the cross-attention's scores (the context's tokens; 0 without).
    pub cross_scores: u128,
}

/// The memory of one UNet evaluation on `batch` images of `height` x `width` in a `word`-byte
/// float, from its levels: a plain evaluation keeps the skip connections, a few of the largest
/// level's activations and one attention block's scores at a time; an evaluation on the tape
/// keeps every activation and every attention block's softmax, and the backward pass one more
/// score matrix. An estimate within a small factor, for refusing what cannot fit.
pub(crate) fn estimate_memory(
    levels: &[LevelLoad],
    layers_per_block: usize,
    (batch, height, width): (usize, usize, usize),
    word: usize,
    taped: bool,
) -> MemoryEstimate {
    let n = levels.len();
    let layers = layers_per_block as u128;
    let positions = |i: usize| (height >> i).max(1) * (width >> i).max(1);
    let act = |i: usize| levels[i].channels as u128 * positions(i) as u128;
    let scores = |i: usize| {
        let p = positions(i) as u128;
        levels[i].heads as u128 * (p * p + p * levels[i].cross_scores)
    };
    let skips: u128 = (0..n).map(|i| (layers + 1) * act(i)).sum();
    let largest = (0..n).map(act).max().unwrap_or(0);
    let finest = (0..n).find(|i| levels[*i].attention_blocks > 0);
    let one_scores = finest.map_or(0, scores);
    let elements = if taped {
        // Every resnet keeps about ten tensors of its level.
        let resnets: u128 = (0..n).map(|i| (2 * layers + 1) * 10 * act(i)).sum();
        let attn: u128 = (0..n)
            .map(|i| levels[i].attention_blocks * (levels[i].attention_acts * act(i) + scores(i)))
            .sum();
        resnets + attn + 2 * one_scores
    } else {
        skips + 6 * largest + one_scores
    };
    let w = word as u128 * batch as u128;
    MemoryEstimate {
        bytes: elements * w,
        attention_bytes: one_scores * w,
        attention_positions: finest.map_or(0, positions),
        attention_level: finest.unwrap_or(0),
    }
}

//! Building a [`UNet2D`] from its config and its parameters by diffusers' tensor names.

use std::collections::BTreeMap;

use adeis_compiler::{FieldError, Prediction};
use dfdx::prelude::*;

use super::blocks::{AfterResnet, DownBlock, MidBlock, Resnet, TimeEmbedding, UNetBody, UpBlock};
use super::config::{DownKind, UNet2DConfig, UpKind};
use super::{Param, ParamTensor, UNet2D};
use crate::error::RuntimeError;
use crate::nn::transformer::{TokenAttention, Transformer2D};
use crate::nn::{Attention, Conv2d, Float, GroupNorm, Linear, NnDevice};
use crate::noise::{normals, SplitMix};

/// Where a model's parameters come from, by diffusers name and shape.
pub trait ParamSource {
    /// The values of tensor `name` (C order) with `shape`; an error names the tensor.
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f64>, RuntimeError>;
}

/// Tensors read from a weights file: name -> (shape, values). The legacy attention names
/// (`query`, `key`, `value`, `proj_attn`) answer for `to_q`, `to_k`, `to_v`, `to_out.0`.
#[derive(Clone, Debug, Default)]
pub struct TensorMapSource {
    /// The tensors by name: (shape, values).
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f64>)>,
    /// Named in errors (the file).
    pub origin: String,
}

const LEGACY: [(&str, &str); 4] = [
    (".to_q.", ".query."),
    (".to_k.", ".key."),
    (".to_v.", ".value."),
    (".to_out.0.", ".proj_attn."),
];

impl TensorMapSource {
    /// The tensors nobody took (an error names them all).
    pub fn finish(self) -> Result<(), RuntimeError> {
        if self.tensors.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = self.tensors.keys().map(|k| k.as_str()).collect();
        Err(RuntimeError::Field(FieldError::new(
            "weights",
            format!(
                "{}: {} tensors that this config has no place for: {}",
                self.origin,
                names.len(),
                names.join(", ")
            ),
        )))
    }
}

impl ParamSource for TensorMapSource {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f64>, RuntimeError> {
        let legacy = LEGACY
            .iter()
            .find(|(new, _)| name.contains(new))
            .map(|(new, old)| name.replace(new, old));
        let key = if self.tensors.contains_key(name) {
            name.to_string()
        } else if let Some(l) = legacy.filter(|l| self.tensors.contains_key(l)) {
            l
        } else {
            return Err(RuntimeError::Field(FieldError::new(
                "weights",
                format!(
                    "{}: tensor `{name}` (shape {shape:?}) is missing",
                    self.origin
                ),
            )));
        };
        let (have, values) = self.tensors.remove(&key).expect("present");
        if have != shape {
            return Err(RuntimeError::Field(FieldError::new(
                "weights",
                format!(
                    "{}: tensor `{key}` has shape {have:?}; this config needs {shape:?}",
                    self.origin
                ),
            )));
        }
        Ok(values)
    }
}

/// Seeded random parameters (for benchmarks and tests): weights normal with variance
/// 1 / fan-in, GroupNorm scales 1, biases and shifts small.
#[derive(Clone, Debug)]
pub struct RandomParams {
    /// The seed of the values.
    pub seed: u64,
    count: u64,
}

impl RandomParams {
    /// Values from `seed`.
    pub fn new(seed: u64) -> RandomParams {
        RandomParams { seed, count: 0 }
    }
}

impl ParamSource for RandomParams {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f64>, RuntimeError> {
        self.count += 1;
        let n: usize = shape.iter().product();
        let z = normals(self.seed, self.count, n);
        let norm = name.contains("norm");
        Ok(if name.ends_with(".bias") {
            z.iter().map(|v| 0.02 * v).collect()
        } else if norm {
            z.iter().map(|v| 1.0 + 0.02 * v).collect()
        } else {
            let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
            let s = 1.0 / (fan_in as f64).sqrt();
            z.iter().map(|v| s * v).collect()
        })
    }
}

/// The initialisation PyTorch gives a freshly made diffusers model, for training from scratch:
/// convolution and linear weights and biases uniform in +-1/sqrt(fan-in) (PyTorch's default,
/// Kaiming-uniform with a = sqrt(5)), GroupNorm scales 1 and shifts 0, embedding tables
/// standard normal. Deterministic for a seed.
#[derive(Clone, Debug)]
pub struct TorchInit {
    rng: SplitMix,
    /// The fan-in of the last weight, for the bias that follows it.
    fan_in: usize,
}

impl TorchInit {
    /// Values from `seed`.
    pub fn new(seed: u64) -> TorchInit {
        TorchInit {
            rng: SplitMix(seed ^ 0x7041_1417),
            fan_in: 1,
        }
    }
}

impl ParamSource for TorchInit {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f64>, RuntimeError> {
        let n: usize = shape.iter().product();
        let norm = name.contains("norm");
        if norm {
            let v = if name.ends_with(".weight") { 1.0 } else { 0.0 };
            return Ok(vec![v; n]);
        }
        if name.contains("embedding.weight") && !name.contains("linear") {
            let seed = self.rng.next_u64();
            return Ok(normals(seed, 0, n));
        }
        if name.ends_with(".weight") {
            self.fan_in = shape[1..].iter().product::<usize>().max(1);
        }
        let bound = 1.0 / (self.fan_in as f64).sqrt();
        Ok((0..n)
            .map(|_| bound * (2.0 * self.rng.uniform() - 1.0))
            .collect())
    }
}

/// Makes tensors from a source, recording every parameter by name (the UNets' and the
/// VAE's).
pub(super) struct Builder<'a, E: Dtype, D: Storage<E>> {
    dev: D,
    source: &'a mut dyn ParamSource,
    pub(super) params: Vec<Param<E, D>>,
    pub(super) eps: f64,
    groups: usize,
}

impl<'a, E: Float, D: NnDevice<E>> Builder<'a, E, D> {
    /// A builder whose GroupNorms have `groups` groups and epsilon `eps`.
    pub(super) fn new(
        dev: &D,
        source: &'a mut dyn ParamSource,
        eps: f64,
        groups: usize,
    ) -> Builder<'a, E, D> {
        Builder {
            dev: dev.clone(),
            source,
            params: Vec::new(),
            eps,
            groups,
        }
    }

    fn values(&mut self, name: &str, shape: &[usize]) -> Result<Vec<E>, RuntimeError> {
        Ok(self
            .source
            .take(name, shape)?
            .into_iter()
            .map(|v| E::from_f64(v).unwrap())
            .collect())
    }

    pub(super) fn vector(
        &mut self,
        name: &str,
        n: usize,
    ) -> Result<Tensor<(usize,), E, D>, RuntimeError> {
        let values = self.values(name, &[n])?;
        let t = self.dev.tensor_from_vec(values, (n,));
        self.params.push(Param {
            name: name.into(),
            shape: vec![n],
            tensor: ParamTensor::Vector(t.clone()),
        });
        Ok(t)
    }

    /// A matrix [rows, cols] stored under `shape` (a conv weight [out, in, kh, kw] is the
    /// matrix [out, in kh kw]).
    pub(super) fn matrix(
        &mut self,
        name: &str,
        (rows, cols): (usize, usize),
        shape: &[usize],
    ) -> Result<Tensor<(usize, usize), E, D>, RuntimeError> {
        let values = self.values(name, shape)?;
        let t = self.dev.tensor_from_vec(values, (rows, cols));
        self.params.push(Param {
            name: name.into(),
            shape: shape.to_vec(),
            tensor: ParamTensor::Matrix(t.clone()),
        });
        Ok(t)
    }

    pub(super) fn conv(
        &mut self,
        prefix: &str,
        (ci, co, k): (usize, usize, usize),
        stride: usize,
        padding: [usize; 4],
    ) -> Result<Conv2d<E, D>, RuntimeError> {
        let weight = self.matrix(
            &format!("{prefix}.weight"),
            (co, ci * k * k),
            &[co, ci, k, k],
        )?;
        let bias = self.vector(&format!("{prefix}.bias"), co)?;
        Ok(Conv2d::new(weight, Some(bias), (k, k), stride, padding))
    }

    pub(super) fn conv3(
        &mut self,
        prefix: &str,
        ci: usize,
        co: usize,
    ) -> Result<Conv2d<E, D>, RuntimeError> {
        self.conv(prefix, (ci, co, 3), 1, [1; 4])
    }

    pub(super) fn linear(
        &mut self,
        prefix: &str,
        i: usize,
        o: usize,
    ) -> Result<Linear<E, D>, RuntimeError> {
        let weight = self.matrix(&format!("{prefix}.weight"), (o, i), &[o, i])?;
        let bias = self.vector(&format!("{prefix}.bias"), o)?;
        Ok(Linear::new(weight, Some(bias)))
    }

    pub(super) fn norm(&mut self, prefix: &str, c: usize) -> Result<GroupNorm<E, D>, RuntimeError> {
        Ok(GroupNorm {
            weight: self.vector(&format!("{prefix}.weight"), c)?,
            bias: self.vector(&format!("{prefix}.bias"), c)?,
            groups: self.groups,
            eps: self.eps,
        })
    }

    /// A resnet; `temb` 0: without a time embedding.
    pub(super) fn resnet(
        &mut self,
        prefix: &str,
        (ci, co, temb): (usize, usize, usize),
        output_scale_factor: f64,
    ) -> Result<Resnet<E, D>, RuntimeError> {
        Ok(Resnet {
            norm1: self.norm(&format!("{prefix}.norm1"), ci)?,
            conv1: self.conv3(&format!("{prefix}.conv1"), ci, co)?,
            time_emb_proj: match temb {
                0 => None,
                temb => Some(self.linear(&format!("{prefix}.time_emb_proj"), temb, co)?),
            },
            norm2: self.norm(&format!("{prefix}.norm2"), co)?,
            conv2: self.conv3(&format!("{prefix}.conv2"), co, co)?,
            conv_shortcut: if ci != co {
                Some(self.conv(&format!("{prefix}.conv_shortcut"), (ci, co, 1), 1, [0; 4])?)
            } else {
                None
            },
            output_scale_factor,
        })
    }

    pub(super) fn attention(
        &mut self,
        prefix: &str,
        c: usize,
        head_dim: Option<usize>,
        rescale_output_factor: f64,
    ) -> Result<Attention<E, D>, RuntimeError> {
        Ok(Attention {
            group_norm: self.norm(&format!("{prefix}.group_norm"), c)?,
            attention: TokenAttention {
                to_q: self.linear(&format!("{prefix}.to_q"), c, c)?,
                to_k: self.linear(&format!("{prefix}.to_k"), c, c)?,
                to_v: self.linear(&format!("{prefix}.to_v"), c, c)?,
                to_out: self.linear(&format!("{prefix}.to_out.0"), c, c)?,
                heads: c / head_dim.unwrap_or(c),
            },
            rescale_output_factor,
        })
    }
}

/// What follows one resnet of a block: a self-attention or a cross-attention transformer.
pub(super) enum Attending<E: Dtype, D: Storage<E>> {
    SelfAttention(Attention<E, D>),
    Cross(Transformer2D<E, D>),
}

/// The [`AfterResnet`] of a block's attention layers, one per resnet (none: nothing).
fn after_resnets<E: Dtype, D: Storage<E>>(items: Vec<Attending<E, D>>) -> AfterResnet<E, D> {
    if items.is_empty() {
        return AfterResnet::Nothing;
    }
    let (mut selfs, mut crosses) = (Vec::new(), Vec::new());
    for item in items {
        match item {
            Attending::SelfAttention(a) => selfs.push(a),
            Attending::Cross(t) => crosses.push(t),
        }
    }
    if crosses.is_empty() {
        AfterResnet::SelfAttention(selfs)
    } else {
        AfterResnet::CrossAttention(crosses)
    }
}

/// What the UNets' and the VAE's down and up paths are made of, besides their channels:
/// `prefix` of the blocks' names ("down_blocks" or "encoder.down_blocks", ...), resnets per
/// down block, the time embedding's width (0: none), the downsampling's padding, whether the
/// up blocks concatenate skips, and what follows each resnet of block `i` (given the
/// builder, the layer's name prefix and its channels).
pub(super) struct PathSpec<'p, E: Dtype, D: Storage<E>> {
    pub down_prefix: &'p str,
    pub up_prefix: &'p str,
    pub layers: usize,
    pub temb: usize,
    pub down_pad: [usize; 4],
    pub skips: bool,
    #[allow(clippy::type_complexity)]
    pub attend: &'p dyn Fn(
        &mut Builder<'_, E, D>,
        (&str, usize, usize),
    ) -> Result<Option<Attending<E, D>>, RuntimeError>,
}

impl<E: Float, D: NnDevice<E>> Builder<'_, E, D> {
    /// `time_embedding.linear_1` and `linear_2`: the projection's `width` -> `temb` -> `temb`.
    pub(super) fn time_embedding(
        &mut self,
        width: usize,
        temb: usize,
    ) -> Result<TimeEmbedding<E, D>, RuntimeError> {
        Ok(TimeEmbedding {
            linear_1: self.linear("time_embedding.linear_1", width, temb)?,
            linear_2: self.linear("time_embedding.linear_2", temb, temb)?,
        })
    }

    /// The down path over `chans` (finest first): resnets, what `spec.attend` puts after each,
    /// and a stride-2 convolution except at the last level; `attend` gets (name prefix,
    /// channels, block index).
    pub(super) fn down_path(
        &mut self,
        chans: &[usize],
        spec: &PathSpec<'_, E, D>,
    ) -> Result<Vec<DownBlock<E, D>>, RuntimeError> {
        let n = chans.len();
        let mut down = Vec::with_capacity(n);
        for i in 0..n {
            let (ci, co) = (if i == 0 { chans[0] } else { chans[i - 1] }, chans[i]);
            let (mut resnets, mut after) = (Vec::new(), Vec::new());
            let prefix = format!("{}.{i}", spec.down_prefix);
            for l in 0..spec.layers {
                resnets.push(self.resnet(
                    &format!("{prefix}.resnets.{l}"),
                    (if l == 0 { ci } else { co }, co, spec.temb),
                    1.0,
                )?);
                after.extend((spec.attend)(
                    self,
                    (&format!("{prefix}.attentions.{l}"), co, i),
                )?);
            }
            let downsample = if i + 1 < n {
                Some(self.conv(
                    &format!("{prefix}.downsamplers.0.conv"),
                    (co, co, 3),
                    2,
                    spec.down_pad,
                )?)
            } else {
                None
            };
            down.push(DownBlock {
                resnets,
                after: after_resnets(after),
                downsample,
            });
        }
        Ok(down)
    }

    /// The up path over `chans` reversed: layers + 1 resnets per block (on the skips of the
    /// down path when `spec.skips`), what `spec.attend` puts after each, and nearest
    /// upsampling with a convolution except at the last block; `attend` gets (name prefix,
    /// channels, block index).
    pub(super) fn up_path(
        &mut self,
        chans: &[usize],
        spec: &PathSpec<'_, E, D>,
    ) -> Result<Vec<UpBlock<E, D>>, RuntimeError> {
        let n = chans.len();
        let reversed: Vec<usize> = chans.iter().rev().copied().collect();
        let mut up = Vec::with_capacity(n);
        let mut out_ch = reversed[0];
        for (i, &ch) in reversed.iter().enumerate() {
            let prev = out_ch;
            out_ch = ch;
            let input = reversed[(i + 1).min(n - 1)];
            let (mut resnets, mut after) = (Vec::new(), Vec::new());
            let prefix = format!("{}.{i}", spec.up_prefix);
            for l in 0..=spec.layers {
                let res_in = if l == 0 { prev } else { out_ch };
                let skip = match (spec.skips, l == spec.layers) {
                    (false, _) => 0,
                    (true, true) => input,
                    (true, false) => out_ch,
                };
                resnets.push(self.resnet(
                    &format!("{prefix}.resnets.{l}"),
                    (res_in + skip, out_ch, spec.temb),
                    1.0,
                )?);
                after.extend((spec.attend)(
                    self,
                    (&format!("{prefix}.attentions.{l}"), out_ch, i),
                )?);
            }
            let upsample = if i + 1 < n {
                Some(self.conv3(&format!("{prefix}.upsamplers.0.conv"), out_ch, out_ch)?)
            } else {
                None
            };
            up.push(UpBlock {
                resnets,
                after: after_resnets(after),
                upsample,
            });
        }
        Ok(up)
    }
}

impl<E: Float, D: NnDevice<E>> UNet2D<E, D> {
    /// The model of `config` (validated here) with parameters from `source` by their diffusers
    /// names; `prediction` is what it predicts (from the scheduler config).
    pub fn new(
        dev: &D,
        config: UNet2DConfig,
        prediction: Prediction,
        source: &mut dyn ParamSource,
    ) -> Result<UNet2D<E, D>, RuntimeError> {
        config.validate()?;
        let c = &config;
        let chans = &c.block_out_channels;
        let n = chans.len();
        let temb = c.time_embed_dim();
        let mut b = Builder::new(dev, source, c.norm_eps, c.groups());
        let conv_in = b.conv3("conv_in", c.in_channels, chans[0])?;
        let time_embedding = b.time_embedding(chans[0], temb)?;
        let class_embedding = match c.num_class_embeds {
            Some(k) => Some(b.matrix("class_embedding.weight", (k, temb), &[k, temb])?),
            None => None,
        };
        let pad = c.downsample_padding;
        // downsample_padding = 0 pads right and bottom by one (diffusers' Downsample2D).
        let down_pad = if pad == 0 { [0, 0, 1, 1] } else { [pad; 4] };
        let (down_kinds, up_kinds) = (c.down_kinds(), c.up_kinds());
        let self_attention = |b: &mut Builder<'_, E, D>, (prefix, ch): (&str, usize)| {
            Ok(Some(Attending::SelfAttention(b.attention(
                prefix,
                ch,
                c.attention_head_dim,
                1.0,
            )?)))
        };
        let attend_down = |b: &mut Builder<'_, E, D>, (prefix, ch, i): (&str, usize, usize)| {
            match down_kinds[i] {
                DownKind::AttnDown => self_attention(b, (prefix, ch)),
                DownKind::Down => Ok(None),
            }
        };
        let mut path = PathSpec {
            down_prefix: "down_blocks",
            up_prefix: "up_blocks",
            layers: c.layers_per_block,
            temb,
            down_pad,
            skips: true,
            attend: &attend_down,
        };
        let down = b.down_path(chans, &path)?;
        let mid = match c.mid_block_type {
            Some(_) => {
                let ch = chans[n - 1];
                let scale = c.mid_block_scale_factor;
                Some(MidBlock {
                    first: b.resnet("mid_block.resnets.0", (ch, ch, temb), scale)?,
                    attention: if c.add_attention {
                        AfterResnet::SelfAttention(vec![b.attention(
                            "mid_block.attentions.0",
                            ch,
                            c.attention_head_dim,
                            scale,
                        )?])
                    } else {
                        AfterResnet::Nothing
                    },
                    second: b.resnet("mid_block.resnets.1", (ch, ch, temb), scale)?,
                })
            }
            None => None,
        };
        let attend_up =
            |b: &mut Builder<'_, E, D>, (prefix, ch, i): (&str, usize, usize)| match up_kinds[i] {
                UpKind::AttnUp => self_attention(b, (prefix, ch)),
                UpKind::Up => Ok(None),
            };
        path.attend = &attend_up;
        let up = b.up_path(chans, &path)?;
        let norm_out = b.norm("conv_norm_out", chans[0])?;
        let conv_out = b.conv3("conv_out", chans[0], c.out_channels)?;
        let params = b.params;
        let body = UNetBody {
            conv_in,
            down,
            mid,
            up,
            norm_out,
            conv_out,
            center_input: c.center_input_sample,
        };
        Ok(UNet2D {
            config,
            prediction,
            time_embedding,
            class_embedding,
            body,
            params,
            time_projection_in_f64: false,
        })
    }
}

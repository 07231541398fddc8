//! diffusers' `UNet2DModel` as a [`Denoiser`]: the blocks built from a [`UNet2DConfig`] and
//! parameters by diffusers' own tensor names, the forward pass on any dfdx tape, and its VJP
//! with respect to the input, the class-embedding vector (the conditioning z) and every
//! parameter.
//!
//! The model's input is a state of items [C, H, W]; its time input is the schedule's model time
//! (the train index of a discrete schedule), embedded as diffusers does
//! ([`crate::nn::timestep_embedding`]). With `num_class_embeds`, the conditioning z is the
//! class-embedding vector added to the time embedding (the embedding table's row of the class),
//! so a gradient method can interpolate and optimise it.

pub mod any;
mod blocks;
mod build;
pub mod condition;
pub mod config;
pub mod vae;

use adeis_compiler::{Prediction, TimeInfo};
use dfdx::prelude::*;

use blocks::{TimeEmbedding, UNetBody};

use crate::denoiser::{Cotangents, Denoiser, TimeCot};
use crate::error::RuntimeError;
use crate::nn::{
    timestep_embedding, timestep_embedding_f64, timestep_embedding_slope, timestep_frequencies,
    Float, Image, NnDevice, ParamGrads,
};
use crate::state::State;
use crate::taped::{Taped, TapedDenoiser, TimeLeaves};

pub use any::DiffusersUNet;
pub use build::{ParamSource, RandomParams, TensorMapSource, TorchInit};
pub use condition::{UNet2DCondition, UNet2DConditionConfig};
pub use config::UNet2DConfig;
pub use vae::{
    AutoencoderKL, AutoencoderKLConfig, VaeGrads, VaeMap, VaeReferenceKeys, VaeVjp,
    VAE_REFERENCE_KEYS,
};

/// A parameter tensor by its diffusers name, with its shape there.
#[derive(Clone, Debug)]
pub enum ParamTensor<E: Dtype, D: Storage<E>> {
    /// A vector parameter (biases, norm scales).
    Vector(Tensor<(usize,), E, D>),
    /// A matrix parameter: linear weights, and convolution weights [out, in kh kw].
    Matrix(Tensor<(usize, usize), E, D>),
}

#[derive(Clone, Debug)]
struct Param<E: Dtype, D: Storage<E>> {
    name: String,
    shape: Vec<usize>,
    tensor: ParamTensor<E, D>,
}

/// diffusers' `UNet2DModel`.
#[derive(Clone, Debug)]
pub struct UNet2D<E: Dtype, D: Storage<E>> {
    config: UNet2DConfig,
    prediction: Prediction,
    time_embedding: TimeEmbedding<E, D>,
    class_embedding: Option<Tensor<(usize, usize), E, D>>,
    body: UNetBody<E, D>,
    params: Vec<Param<E, D>>,
    /// The timestep sinusoids in f64 rather than in f32 as diffusers computes them: the model
    /// is then smooth in its time at f64's resolution (for gradients with respect to the
    /// grid checked in f64), and differs from diffusers by f32 round-off in the features.
    pub time_projection_in_f64: bool,
}

/// Gradients with respect to every parameter of a [`UNet2D`], in the model's parameter order
/// (flat, one tensor per parameter).
#[derive(Clone, Debug)]
pub struct UNetGrads<E: Dtype, D: Storage<E>> {
    /// One flat gradient per parameter.
    pub tensors: Vec<Tensor<(usize,), E, D>>,
}

/// The gradient of every parameter of `params` in `grads` (zeros where it has none), flat.
fn param_grads<E: Float, D: NnDevice<E>>(
    params: &[Param<E, D>],
    grads: &mut Gradients<E, D>,
) -> Vec<Tensor<(usize,), E, D>> {
    params
        .iter()
        .map(|p| {
            let numel = p.shape.iter().product::<usize>();
            match &p.tensor {
                ParamTensor::Vector(t) => {
                    grads.try_alloc_for(t).expect("gradient allocation");
                    grads.get(t)
                }
                ParamTensor::Matrix(t) => {
                    grads.try_alloc_for(t).expect("gradient allocation");
                    grads.get(t).reshape_like(&(numel,))
                }
            }
        })
        .collect()
}

/// The sinusoidal projection of model times `times`, one row each (diffusers' `Timesteps` of
/// (width, flip, frequency shift)), in f32 as diffusers computes it or, with `in_f64`, in f64.
/// A time equal to the row before is copied, not recomputed.
fn time_projection<E: Float, D: NnDevice<E>>(
    dev: &D,
    times: &[f64],
    (width, flip, shift): (usize, bool, f64),
    in_f64: bool,
) -> Tensor<(usize, usize), E, D> {
    let mut rows: Vec<E> = Vec::with_capacity(times.len() * width);
    for (i, &t) in times.iter().enumerate() {
        if i > 0 && t == times[i - 1] {
            rows.extend_from_within((i - 1) * width..i * width);
        } else if in_f64 {
            rows.extend(
                timestep_embedding_f64(t, width, flip, shift)
                    .into_iter()
                    .map(|v| E::from_f64(v).unwrap()),
            );
        } else {
            rows.extend(timestep_embedding::<E>(t, width, flip, shift));
        }
    }
    dev.tensor_from_vec(rows, (times.len(), width))
}

/// cot^T d out/d(model time) after a backward pass: the time projection's gradient in `grads`,
/// summed over the batch, against the sinusoids' slope at `t` (projection width, flip,
/// frequency shift).
fn model_time_cotangent<E: Float, D: NnDevice<E>>(
    grads: &mut Gradients<E, D>,
    proj: &Tensor<(usize, usize), E, D>,
    t: f64,
    (width, flip, shift): (usize, bool, f64),
) -> f64 {
    grads.try_alloc_for(proj).expect("gradient allocation");
    let dproj = grads.get(proj).sum::<(usize,), Axis<0>>();
    let slope = timestep_embedding_slope(t, width, flip, shift);
    crate::to_f64(&dproj)
        .iter()
        .zip(&slope)
        .map(|(g, s)| g * s)
        .sum()
}

/// Checks a UNet's input items: [in_channels, height, width] with height and width divisible
/// by 2^(levels - 1); `what` the UNet takes ("images", "latents") is named in the error.
fn check_unet_input(
    item: &[usize],
    in_channels: usize,
    levels: usize,
    what: &str,
) -> Result<(), RuntimeError> {
    let factor = 1usize << (levels - 1);
    match item {
        [ch, h, w] if *ch == in_channels && h % factor == 0 && w % factor == 0 => Ok(()),
        [ch, _, _] if *ch != in_channels => Err(RuntimeError::Shape(format!(
            "x_t has {ch} channels but the UNet's in_channels is {in_channels}"
        ))),
        [_, h, w] => Err(RuntimeError::Shape(format!(
            "x_t is {h} x {w}: height and width must be divisible by 2^(levels - 1) = {factor} for this UNet's {levels} levels"
        ))),
        _ => Err(RuntimeError::Shape(format!(
            "x_t has items of shape {item:?}; the UNet takes {what} [channels, height, width]"
        ))),
    }
}

/// Zero gradients for every parameter of `params`.
fn zero_grads<E: Float, D: NnDevice<E>>(params: &[Param<E, D>]) -> UNetGrads<E, D> {
    let tensors = params
        .iter()
        .map(|p| {
            let n = p.shape.iter().product::<usize>();
            match &p.tensor {
                ParamTensor::Vector(t) => t.device().zeros_like(&(n,)),
                ParamTensor::Matrix(t) => t.device().zeros_like(&(n,)),
            }
        })
        .collect();
    UNetGrads { tensors }
}

/// Gradients by diffusers name: (name, shape, values).
fn named_grads<E: Float, D: NnDevice<E>>(
    params: &[Param<E, D>],
    grads: &UNetGrads<E, D>,
) -> Vec<(String, Vec<usize>, Vec<f64>)> {
    params
        .iter()
        .zip(&grads.tensors)
        .map(|(p, g)| (p.name.clone(), p.shape.clone(), crate::to_f64(g)))
        .collect()
}

/// Parameters by diffusers name: (name, shape, values in C order).
fn named_params<E: Float, D: NnDevice<E>>(
    params: &[Param<E, D>],
) -> Vec<(String, Vec<usize>, Vec<E>)> {
    params
        .iter()
        .map(|p| {
            let values = match &p.tensor {
                ParamTensor::Vector(t) => t.as_vec(),
                ParamTensor::Matrix(t) => t.as_vec(),
            };
            (p.name.clone(), p.shape.clone(), values)
        })
        .collect()
}

fn num_params<E: Dtype, D: Storage<E>>(params: &[Param<E, D>]) -> usize {
    params
        .iter()
        .map(|p| p.shape.iter().product::<usize>())
        .sum()
}

impl<E: Float, D: NnDevice<E>> UNet2D<E, D> {
    /// The model's config.
    pub fn config(&self) -> &UNet2DConfig {
        &self.config
    }

    /// The number of scalar parameters.
    pub fn num_params(&self) -> usize {
        num_params(&self.params)
    }

    /// The class-embedding vectors of `labels` (one row each): the conditioning z of a
    /// class-conditional model.
    pub fn class_cond(&self, labels: &[usize]) -> Result<State<E, D>, RuntimeError> {
        let table = self.class_embedding.as_ref().ok_or_else(|| {
            RuntimeError::Invalid(
                "class labels were given, but this model has no class embedding (num_class_embeds is null)".into(),
            )
        })?;
        let (classes, width) = *table.shape();
        if let Some(l) = labels.iter().find(|l| **l >= classes) {
            return Err(RuntimeError::Invalid(format!(
                "class label {l} is out of range: the model has num_class_embeds = {classes} (labels 0..{})",
                classes - 1
            )));
        }
        let rows = table.as_vec();
        let mut z = Vec::with_capacity(labels.len() * width);
        for l in labels {
            z.extend_from_slice(&rows[l * width..(l + 1) * width]);
        }
        Ok(State::from_rows(
            table.device().tensor_from_vec(z, (labels.len(), width)),
        ))
    }

    /// The blocks and their resolutions, for `adeis check`.
    pub fn describe(&self) -> String {
        let c = &self.config;
        let mut s = format!(
            "UNet2DModel: {} parameters, {} -> {} channels, time embedding {}{}\n",
            self.num_params(),
            c.in_channels,
            c.out_channels,
            c.time_embed_dim(),
            c.num_class_embeds
                .map_or(String::new(), |n| format!(", {n} class embeddings"))
        );
        for (i, (t, ch)) in c
            .down_block_types
            .iter()
            .zip(&c.block_out_channels)
            .enumerate()
        {
            s.push_str(&format!(
                "  down {i}: {t}, {ch} channels, {} resnets{}, at 1/{} resolution\n",
                c.layers_per_block,
                if i + 1 < c.levels() {
                    ", downsample"
                } else {
                    ""
                },
                1 << i
            ));
        }
        if let Some(m) = &c.mid_block_type {
            s.push_str(&format!(
                "  mid: {m}, {} channels{}\n",
                c.block_out_channels[c.levels() - 1],
                if c.add_attention { ", attention" } else { "" }
            ));
        }
        for (i, t) in c.up_block_types.iter().enumerate() {
            s.push_str(&format!(
                "  up {i}: {t}, {} channels, {} resnets{}\n",
                c.block_out_channels[c.levels() - 1 - i],
                c.layers_per_block + 1,
                if i + 1 < c.levels() { ", upsample" } else { "" }
            ));
        }
        s
    }

    /// The time embedding at model times `times` (one per row; no tape: it depends on the
    /// times only), on an empty tape of type `T`.
    fn embed_times<T: Tape<E, D>>(
        &self,
        dev: &D,
        times: &[f64],
    ) -> Tensor<(usize, usize), E, D, T> {
        self.embed_projection(self.time_projection(dev, times).retaped::<T>())
    }

    /// The sinusoidal projection of the model times, one row each (diffusers' `Timesteps`).
    fn time_projection(&self, dev: &D, times: &[f64]) -> Tensor<(usize, usize), E, D> {
        let c = &self.config;
        time_projection(
            dev,
            times,
            (c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift),
            self.time_projection_in_f64,
        )
    }

    /// The time embedding of a projection (diffusers' `TimestepEmbedding`), on its tape.
    fn embed_projection<T: Tape<E, D>>(
        &self,
        proj: Tensor<(usize, usize), E, D, T>,
    ) -> Tensor<(usize, usize), E, D, T> {
        self.time_embedding.forward(proj)
    }

    /// The network on images `x` at model time `t`, with the conditioning `z` (the
    /// class-embedding vector) when the model takes one, on x's tape; `params` says whether
    /// the tape's backward pass computes the parameters' gradients.
    pub fn forward_image<T: Tape<E, D>>(
        &self,
        x: Image<E, D, T>,
        z: Option<Tensor<(usize, usize), E, D, T>>,
        t: f64,
        params: ParamGrads,
    ) -> Image<E, D, T> {
        let dev = x.device().clone();
        let batch = x.shape().0;
        let mut emb = self.embed_times::<T>(&dev, &vec![t; batch]);
        if let Some(z) = z {
            emb = emb + z;
        }
        self.forward_embedded(x, emb, params)
    }

    /// The network for training: image `i` of `x` at model time `times[i]`, with class
    /// `labels[i]` (a row of the class-embedding table, which the tape's backward pass
    /// differentiates like every other parameter) when the model is class-conditional.
    pub fn forward_train<T: Tape<E, D>>(
        &self,
        x: Image<E, D, T>,
        times: &[f64],
        labels: Option<&[usize]>,
        params: ParamGrads,
    ) -> Result<Image<E, D, T>, RuntimeError> {
        let dev = x.device().clone();
        let batch = x.shape().0;
        if times.len() != batch {
            return Err(RuntimeError::Shape(format!(
                "{} model times for a batch of {batch}",
                times.len()
            )));
        }
        let mut emb = self.embed_times::<T>(&dev, times);
        match (labels, &self.class_embedding) {
            (None, _) => {}
            (Some(labels), Some(table)) => {
                let classes = table.shape().0;
                if labels.len() != batch {
                    return Err(RuntimeError::Shape(format!(
                        "{} class labels for a batch of {batch}",
                        labels.len()
                    )));
                }
                let mut one_hot = vec![E::zero(); batch * classes];
                for (i, &l) in labels.iter().enumerate() {
                    if l >= classes {
                        return Err(RuntimeError::Invalid(format!(
                            "class label {l} is out of range: the model has num_class_embeds = {classes}"
                        )));
                    }
                    one_hot[i * classes + l] = E::one();
                }
                // The product with the table (not a copy of its rows) puts the table's
                // gradient on the tape.
                let one_hot = dev
                    .tensor_from_vec(one_hot, (batch, classes))
                    .retaped::<T>();
                emb = emb + one_hot.matmul(table.clone());
            }
            (Some(_), None) => {
                return Err(RuntimeError::Invalid(
                    "class labels were given, but this model has no class embedding (num_class_embeds is null)".into(),
                ))
            }
        }
        Ok(self.forward_embedded(x, emb, params))
    }

    /// The network on `x` with the time (and class) embedding `emb`, on x's tape.
    fn forward_embedded<T: Tape<E, D>>(
        &self,
        x: Image<E, D, T>,
        emb: Tensor<(usize, usize), E, D, T>,
        params: ParamGrads,
    ) -> Image<E, D, T> {
        self.body.forward(x, emb, None, params)
    }

    fn image_of(&self, x: &State<E, D>) -> Tensor<(usize, usize, usize, usize), E, D> {
        let item = x.item();
        x.rows()
            .clone()
            .reshape_like(&(x.batch(), item[0], item[1], item[2]))
    }

    /// The gradient of every parameter in `grads` (zeros where it has none), flat.
    fn param_grads(&self, grads: &mut Gradients<E, D>) -> Vec<Tensor<(usize,), E, D>> {
        param_grads(&self.params, grads)
    }

    /// Parameter gradients by diffusers name: (name, shape, values), for writing them out.
    pub fn named_grads(&self, grads: &UNetGrads<E, D>) -> Vec<(String, Vec<usize>, Vec<f64>)> {
        named_grads(&self.params, grads)
    }

    /// Every parameter by diffusers name: (name, shape, values in C order), in the model's
    /// parameter order (the order of [`UNetGrads::tensors`]).
    pub fn named_params(&self) -> Vec<(String, Vec<usize>, Vec<E>)> {
        named_params(&self.params)
    }

    /// The gradients of every parameter in `grads` (the gradients of a tape that ran
    /// [`Self::forward_train`] or [`Self::forward_image`]), in the model's parameter order,
    /// on the host.
    pub fn host_grads(&self, grads: &mut Gradients<E, D>) -> Vec<Vec<E>> {
        self.param_grads(grads).iter().map(|g| g.as_vec()).collect()
    }

    /// The index of the parameter `name` in [`UNetGrads::tensors`].
    pub fn param_index(&self, name: &str) -> Option<usize> {
        self.params.iter().position(|p| p.name == name)
    }
}

impl<E: Float, D: NnDevice<E>> Denoiser<E, D> for UNet2D<E, D> {
    type Grads = UNetGrads<E, D>;

    fn prediction(&self) -> Prediction {
        self.prediction
    }

    fn check_input(&self, item: &[usize]) -> Result<(), RuntimeError> {
        check_unet_input(
            item,
            self.config.in_channels,
            self.config.levels(),
            "images",
        )
    }

    fn cond_dim(&self) -> usize {
        if self.class_embedding.is_some() {
            self.config.time_embed_dim()
        } else {
            0
        }
    }

    fn forward(&self, x: &State<E, D>, z: Option<&State<E, D>>, time: &TimeInfo) -> State<E, D> {
        let out = self.forward_image(
            self.image_of(x),
            z.map(|z| z.rows().clone()),
            time.model_t,
            ParamGrads::Skip,
        );
        let b = x.batch();
        x.like(out.reshape_like(&(b, x.width())))
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
        let image = self.image_of(x);
        let probe = image.clone();
        // Leaky: every gradient stays until the end of this call, so the input's, the
        // conditioning's and the time projection's can be read; they are freed with `grads`
        // on return.
        let traced = image.trace(Gradients::leaky());
        let zt = z.map(|z| z.rows().clone().retaped::<OwnedTape<E, D>>());
        let params = ParamGrads::when(theta.as_ref().is_some_and(|(_, w)| *w != 0.0));
        let batch = x.batch();
        let proj = self.time_projection(&x.device(), &vec![time.model_t; batch]);
        let mut emb = self.embed_projection(proj.clone().retaped::<OwnedTape<E, D>>());
        if let Some(z) = zt {
            emb = emb + z;
        }
        let out = self.forward_embedded(traced, emb, params);
        let c = cot.rows().clone().reshape_like(out.shape());
        let mut grads = (out * c).sum().backward();
        let dx = grads.get(&probe).reshape_like(&(x.batch(), x.width()));
        let dz = z.map(|z| {
            grads.try_alloc_for(z.rows()).expect("gradient allocation");
            z.like(grads.get(z.rows()))
        });
        let c = &self.config;
        let model_t = model_time_cotangent(
            &mut grads,
            &proj,
            time.model_t,
            (c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift),
        );
        if let Some((acc, w)) = theta {
            if w != 0.0 {
                let w = E::from_f64(w).unwrap();
                for (a, g) in acc.tensors.iter_mut().zip(self.param_grads(&mut grads)) {
                    *a = a.clone() + g * w;
                }
            }
        }
        Cotangents {
            x: x.like(dx),
            cond: dz,
            time: Some(TimeCot {
                model_t,
                ..TimeCot::default()
            }),
        }
    }

    fn as_taped(&self) -> Option<&dyn TapedDenoiser<E, D, Grads = UNetGrads<E, D>>> {
        Some(self)
    }
}

impl<E: Float, D: NnDevice<E>> TapedDenoiser<E, D> for UNet2D<E, D> {
    fn forward_taped(
        &self,
        x: Taped<E, D>,
        item: &[usize],
        z: Option<Taped<E, D>>,
        time: &TimeInfo,
        params: ParamGrads,
    ) -> Taped<E, D> {
        let (b, width) = *x.shape();
        let image = x.reshape_like(&(b, item[0], item[1], item[2]));
        self.forward_image(image, z, time.model_t, params)
            .reshape_like(&(b, width))
    }

    fn grads_from_tape(&self, grads: &mut Gradients<E, D>) -> Option<UNetGrads<E, D>> {
        Some(UNetGrads {
            tensors: self.param_grads(grads),
        })
    }

    /// The timestep sinusoids computed on the tape from the model-time leaf (in E's
    /// arithmetic: equal to the executor's with `time_projection_in_f64` in f64).
    fn forward_taped_in_time(
        &self,
        x: Taped<E, D>,
        item: &[usize],
        z: Option<Taped<E, D>>,
        leaves: &TimeLeaves<E, D>,
        params: ParamGrads,
    ) -> Option<Taped<E, D>> {
        let (b, width) = *x.shape();
        let dev = x.device().clone();
        let image = x.reshape_like(&(b, item[0], item[1], item[2]));
        let c0 = self.config.block_out_channels[0];
        let ws = timestep_frequencies(c0, self.config.freq_shift);
        let half = ws.len();
        let w = dev.tensor_from_vec(
            ws.iter().map(|v| E::from_f64(*v).unwrap()).collect(),
            (half,),
        );
        let t: Tensor<(usize,), E, D, OwnedTape<E, D>> = leaves
            .model_t
            .clone()
            .leaky_trace()
            .broadcast_like(&(half,));
        let arg = t * w;
        let (sin, cos) = (arg.with_empty_tape().sin(), arg.cos());
        let mut row = if self.config.flip_sin_to_cos {
            (cos, sin).concat_along(Axis::<0>)
        } else {
            (sin, cos).concat_along(Axis::<0>)
        };
        if 2 * half < c0 {
            let pad = dev
                .zeros_like(&(c0 - 2 * half,))
                .retaped::<OwnedTape<E, D>>();
            row = (row, pad).concat_along(Axis::<0>);
        }
        let proj = row.broadcast_like::<_, Axis<0>>(&(b, c0));
        let mut emb = self.embed_projection(proj);
        if let Some(z) = z {
            emb = emb + z;
        }
        Some(
            self.forward_embedded(image, emb, params)
                .reshape_like(&(b, width)),
        )
    }
}

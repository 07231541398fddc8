//! GroupNorm with a per-channel affine map, optionally preceded by a per-(image, channel)
//! shift (a resnet adds its time embedding there) and followed by SiLU, with its exact VJP.
//!
//! [`GroupNorm::forward_generic`] composes it from dfdx's operations (any device). On the CPU
//! it is one custom operation on dfdx's tape (`cpu::group_norm`): dfdx's elementwise kernels
//! index every element through the tensor's strides, and the composed version records nine of
//! them, so that GroupNorm and SiLU cost more than the convolutions they sit between. The fused
//! kernel keeps the shifted input and two statistics per group for its backward pass.

use dfdx::prelude::*;

use super::{Float, Image};

/// GroupNorm over (channels / groups, height, width) with a per-channel affine map.
#[derive(Clone, Debug)]
pub struct GroupNorm<E: Dtype, D: Storage<E>> {
    pub weight: Tensor<(usize,), E, D>,
    pub bias: Tensor<(usize,), E, D>,
    pub groups: usize,
    pub eps: f64,
}

/// The activation applied after a normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Silu,
}

/// A per-(image, channel) shift [batch, channels], broadcast over height and width.
pub type ChannelShift<E, D, T> = Tensor<(usize, usize), E, D, T>;

impl<E: Float, D: Device<E>> GroupNorm<E, D> {
    /// act(GroupNorm(x + shift)) through dfdx's operations.
    pub fn forward_generic<T: Tape<E, D>>(
        &self,
        x: Image<E, D, T>,
        shift: Option<ChannelShift<E, D, T>>,
        act: Activation,
    ) -> Image<E, D, T> {
        let shape = *x.shape();
        let (b, c, h, w) = shape;
        let g = self.groups;
        let x = match shift {
            Some(s) => x + s.broadcast_like::<_, Axes2<2, 3>>(&shape),
            None => x,
        };
        let normed = x
            .contiguous()
            .reshape_like(&(b, g, (c / g) * h * w))
            .normalize::<Axis<2>>(self.eps)
            .reshape_like(&shape);
        let scale = self
            .weight
            .clone()
            .retaped::<T>()
            .broadcast_like::<_, Axes3<0, 2, 3>>(&shape);
        let offset = self
            .bias
            .clone()
            .retaped::<T>()
            .broadcast_like::<_, Axes3<0, 2, 3>>(&shape);
        let y = normed * scale + offset;
        match act {
            Activation::Identity => y,
            Activation::Silu => super::layers::silu(y),
        }
    }

    /// GroupNorm(x) through dfdx's operations.
    pub fn forward<T: Tape<E, D>>(&self, x: Image<E, D, T>) -> Image<E, D, T> {
        self.forward_generic(x, None, Activation::Identity)
    }
}

/// The CPU kernel: one pass for the statistics, one for the output, and a backward pass
/// registered on dfdx's tape.
pub(crate) mod cpu {
    use dfdx::prelude::*;
    use rayon::prelude::*;

    use super::{Activation, ChannelShift, GroupNorm};
    use crate::nn::{min_items_per_task, Float, Image, ParamGrads};

    #[derive(Clone, Copy, Debug)]
    struct Geometry {
        batch: usize,
        channels: usize,
        groups: usize,
        plane: usize,
    }

    impl Geometry {
        fn per_group(&self) -> usize {
            self.channels / self.groups
        }
        /// The elements of one group: its channels' planes, contiguous.
        fn group_len(&self) -> usize {
            self.per_group() * self.plane
        }
    }

    /// The vectorised exponential, capped as GeLU's is so that nothing goes subnormal.
    fn sigmoid<E: Float>(y: E) -> E {
        E::one() / (E::one() + (-y).min(E::from_f64(E::EXP_CAP).unwrap()).exp_fast())
    }

    /// The mean and 1/sqrt(var + eps) of each (image, group), accumulated in f64.
    fn statistics<E: Float>(g: &Geometry, v: &[E], eps: f64) -> Vec<(E, E)> {
        v.par_chunks(g.group_len())
            .with_min_len(min_items_per_task(g.group_len()))
            .map(|group| {
                let n = group.len() as f64;
                let mean = group.iter().map(|x| x.to_f64().unwrap()).sum::<f64>() / n;
                let var = group
                    .iter()
                    .map(|x| (x.to_f64().unwrap() - mean).powi(2))
                    .sum::<f64>()
                    / n;
                (
                    E::from_f64(mean).unwrap(),
                    E::from_f64(1.0 / (var + eps).sqrt()).unwrap(),
                )
            })
            .collect()
    }

    /// The group of the chunk `i` of [`Geometry::group_len`] elements, and its first channel.
    fn channel0(g: &Geometry, i: usize) -> usize {
        (i % g.groups) * g.per_group()
    }

    /// act(GroupNorm(x + shift)) on the CPU, on the tapes of x and shift.
    pub fn group_norm<E: Float, T: Tape<E, Cpu>>(
        norm: &GroupNorm<E, Cpu>,
        x: Image<E, Cpu, T>,
        shift: Option<ChannelShift<E, Cpu, T>>,
        act: Activation,
        params: ParamGrads,
    ) -> Image<E, Cpu, T>
    where
        Cpu: Device<E>,
        <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
    {
        let shape = *x.shape();
        let (batch, channels, h, w) = shape;
        let g = Geometry {
            batch,
            channels,
            groups: norm.groups,
            plane: h * w,
        };
        assert_eq!(channels % g.groups, 0, "GroupNorm's channels are in groups");
        let (x, x_tape) = x.contiguous().split_tape();
        let (shift, mut tape) = match shift {
            Some(s) => {
                let (s, s_tape) = s.contiguous().split_tape();
                (Some(s), x_tape.merge(s_tape))
            }
            None => (None, x_tape),
        };
        let dev = x.device().clone();
        let mut v = vec![E::zero(); batch * channels * g.plane];
        x.copy_into(&mut v);
        if let Some(s) = &shift {
            let mut values = vec![E::zero(); batch * channels];
            s.copy_into(&mut values);
            for (plane, sv) in v.chunks_exact_mut(g.plane).zip(&values) {
                plane.iter_mut().for_each(|x| *x += *sv);
            }
        }
        let (mut gamma, mut beta) = (vec![E::zero(); channels], vec![E::zero(); channels]);
        norm.weight.copy_into(&mut gamma);
        norm.bias.copy_into(&mut beta);
        let stats = statistics(&g, &v, norm.eps);
        let mut out = vec![E::zero(); v.len()];
        out.par_chunks_mut(g.group_len())
            .zip(v.par_chunks(g.group_len()))
            .enumerate()
            .with_min_len(min_items_per_task(g.group_len()))
            .for_each(|(i, (o, vg))| {
                let (mean, rstd) = stats[i];
                let c0 = channel0(&g, i);
                for (k, (op, vp)) in o
                    .chunks_exact_mut(g.plane)
                    .zip(vg.chunks_exact(g.plane))
                    .enumerate()
                {
                    let (scale, offset) = (gamma[c0 + k] * rstd, beta[c0 + k]);
                    for (y, x) in op.iter_mut().zip(vp) {
                        // Centred first: x s - mean s would cancel where |mean| >> std.
                        let n = (*x - mean) * scale + offset;
                        *y = match act {
                            Activation::Identity => n,
                            Activation::Silu => n * sigmoid(n),
                        };
                    }
                }
            });
        let out = dev.tensor_from_vec(out, shape);
        if T::OWNS_TAPE {
            let (x_ghost, out_ghost) = (x.ghost(), out.ghost());
            let shift_ghost = shift.map(|s| s.ghost());
            let (weight, bias) = (norm.weight.ghost(), norm.bias.ghost());
            tape.add_backward_op(move |grads| {
                let go: Vec<E> = grads.get_or_alloc_mut(&out_ghost)?.to_vec();
                let (dv, dgamma, dbeta) = backward(&g, (&v, &go), &stats, (&gamma, &beta), act);
                for (d, s) in grads.get_or_alloc_mut(&x_ghost)?.iter_mut().zip(&dv) {
                    *d += *s;
                }
                if let Some(sg) = &shift_ghost {
                    let ds = grads.get_or_alloc_mut(sg)?;
                    for (d, plane) in ds.iter_mut().zip(dv.chunks_exact(g.plane)) {
                        *d += plane.iter().fold(E::zero(), |a, b| a + *b);
                    }
                }
                if params == ParamGrads::Compute {
                    for (d, s) in grads.get_or_alloc_mut(&weight)?.iter_mut().zip(&dgamma) {
                        *d += *s;
                    }
                    for (d, s) in grads.get_or_alloc_mut(&bias)?.iter_mut().zip(&dbeta) {
                        *d += *s;
                    }
                }
                Ok(())
            });
        }
        out.put_tape(tape)
    }

    /// The gradients of the shifted input, the scale and the offset for the output's `go`.
    /// With x̂ = (v - mean) rstd and dx̂ = dy gamma, per group of n elements:
    /// dv = rstd (dx̂ - mean(dx̂) - x̂ mean(dx̂ x̂)).
    fn backward<E: Float>(
        g: &Geometry,
        (v, go): (&[E], &[E]),
        stats: &[(E, E)],
        (gamma, beta): (&[E], &[E]),
        act: Activation,
    ) -> (Vec<E>, Vec<E>, Vec<E>) {
        let mut dv = vec![E::zero(); v.len()];
        // Per (image, channel): the sums of dy and of dy x̂ (the affine map's gradients).
        let mut sums = vec![(E::zero(), E::zero()); g.batch * g.channels];
        dv.par_chunks_mut(g.group_len())
            .zip(sums.par_chunks_mut(g.per_group()))
            .enumerate()
            .with_min_len(min_items_per_task(g.group_len()))
            .for_each(|(i, (dvg, sums))| {
                let (mean, rstd) = stats[i];
                let c0 = channel0(g, i);
                let vg = &v[i * g.group_len()..(i + 1) * g.group_len()];
                let gog = &go[i * g.group_len()..(i + 1) * g.group_len()];
                // First pass: dx̂ into dvg, and the group's sums of dx̂ and dx̂ x̂.
                let (mut s1, mut s2) = (0.0f64, 0.0f64);
                for k in 0..g.per_group() {
                    let (gm, bt) = (gamma[c0 + k], beta[c0 + k]);
                    let range = k * g.plane..(k + 1) * g.plane;
                    let (mut sdy, mut sdyx) = (E::zero(), E::zero());
                    for ((d, x), o) in dvg[range.clone()]
                        .iter_mut()
                        .zip(&vg[range.clone()])
                        .zip(&gog[range])
                    {
                        let xh = (*x - mean) * rstd;
                        let dy = match act {
                            Activation::Identity => *o,
                            Activation::Silu => {
                                let y = xh * gm + bt;
                                let s = sigmoid(y);
                                *o * s * (E::one() + y * (E::one() - s))
                            }
                        };
                        sdy += dy;
                        sdyx += dy * xh;
                        let dxh = dy * gm;
                        s1 += dxh.to_f64().unwrap();
                        s2 += (dxh * xh).to_f64().unwrap();
                        *d = dxh;
                    }
                    sums[k] = (sdy, sdyx);
                }
                let n = g.group_len() as f64;
                let (m1, m2) = (E::from_f64(s1 / n).unwrap(), E::from_f64(s2 / n).unwrap());
                for (d, x) in dvg.iter_mut().zip(vg) {
                    let xh = (*x - mean) * rstd;
                    *d = rstd * (*d - m1 - xh * m2);
                }
            });
        let (mut dgamma, mut dbeta) = (vec![E::zero(); g.channels], vec![E::zero(); g.channels]);
        for per_image in sums.chunks_exact(g.channels) {
            for (c, (sdy, sdyx)) in per_image.iter().enumerate() {
                dbeta[c] += *sdy;
                dgamma[c] += *sdyx;
            }
        }
        (dv, dgamma, dbeta)
    }
}

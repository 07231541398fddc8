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
    /// The per-channel scale.
    pub weight: Tensor<(usize,), E, D>,
    /// The per-channel shift.
    pub bias: Tensor<(usize,), E, D>,
    /// The number of groups the channels are split into.
    pub groups: usize,
    /// The epsilon added to the variance.
    pub eps: f64,
}

/// The activation applied after a normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// None.
    Identity,
    /// SiLU, x sigmoid(x).
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
    use multiversion::multiversion;
    use rayon::prelude::*;

    use super::{Activation, ChannelShift, GroupNorm};
    use crate::nn::{min_items_per_task, take_output_grad, Float, Image, ParamGrads};

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
    #[inline(always)]
    fn sigmoid<E: Float>(y: E) -> E {
        E::one() / (E::one() + (-y).min(E::from_f64(E::EXP_CAP).unwrap()).exp_fast())
    }

    /// Partial sums kept side by side, so that the compiler keeps them in one vector register
    /// instead of adding every element to one scalar (a chain of dependent additions, which
    /// made this backward pass cost a third of a convolution's).
    const LANES: usize = 16;
    /// Elements summed in the float type before the sum goes on in f64: at most
    /// `BLOCK / LANES` additions per partial sum.
    const BLOCK: usize = 256;

    /// The two sums of f(x, y) over the pairs of `xs` and `ys` (of one length), in blocks of
    /// [`BLOCK`] elements added up in f64.
    #[inline(always)]
    fn sums2<E: Float>(xs: &[E], ys: &[E], f: impl Fn(E, E) -> (E, E)) -> (f64, f64) {
        assert_eq!(xs.len(), ys.len(), "pairs");
        let (mut t1, mut t2) = (0.0f64, 0.0f64);
        for (bx, by) in xs.chunks(BLOCK).zip(ys.chunks(BLOCK)) {
            let (mut a1, mut a2) = ([E::zero(); LANES], [E::zero(); LANES]);
            let (mut lx, mut ly) = (bx.chunks_exact(LANES), by.chunks_exact(LANES));
            for (cx, cy) in (&mut lx).zip(&mut ly) {
                for l in 0..LANES {
                    let (u, v) = f(cx[l], cy[l]);
                    a1[l] += u;
                    a2[l] += v;
                }
            }
            for (x, y) in lx.remainder().iter().zip(ly.remainder()) {
                let (u, v) = f(*x, *y);
                a1[0] += u;
                a2[0] += v;
            }
            t1 += a1.iter().map(|a| a.to_f64().unwrap()).sum::<f64>();
            t2 += a2.iter().map(|a| a.to_f64().unwrap()).sum::<f64>();
        }
        (t1, t2)
    }

    /// The mean and 1/sqrt(var + eps) of each (image, group).
    fn statistics<E: Float>(g: &Geometry, v: &[E], eps: f64) -> Vec<(E, E)> {
        v.par_chunks(g.group_len())
            .with_min_len(min_items_per_task(g.group_len()))
            .map(|group| group_statistics(group, eps))
            .collect()
    }

    /// One group's mean and 1/sqrt(var + eps): the mean first, then the centred squares
    /// (no cancellation where |mean| >> std).
    #[multiversion(targets = "simd")]
    fn group_statistics<E: Float>(group: &[E], eps: f64) -> (E, E) {
        let n = group.len() as f64;
        let mean = sums2(group, group, |x, _| (x, E::zero())).0 / n;
        let m = E::from_f64(mean).unwrap();
        let var = sums2(group, group, |x, _| ((x - m) * (x - m), E::zero())).0 / n;
        (m, E::from_f64(1.0 / (var + eps).sqrt()).unwrap())
    }

    /// The group of the chunk `i` of [`Geometry::group_len`] elements, and its first channel.
    fn channel0(g: &Geometry, i: usize) -> usize {
        (i % g.groups) * g.per_group()
    }

    /// The activation and its derivative, chosen once per call so that the loops over the
    /// elements carry no branch.
    trait Act<E>: Copy + Send + Sync {
        fn value(self, y: E) -> E;
        fn slope(self, y: E) -> E;
    }

    #[derive(Clone, Copy)]
    struct IdentityAct;
    #[derive(Clone, Copy)]
    struct SiluAct;

    impl<E: Float> Act<E> for IdentityAct {
        #[inline(always)]
        fn value(self, y: E) -> E {
            y
        }
        #[inline(always)]
        fn slope(self, _: E) -> E {
            E::one()
        }
    }

    impl<E: Float> Act<E> for SiluAct {
        #[inline(always)]
        fn value(self, y: E) -> E {
            y * sigmoid(y)
        }
        #[inline(always)]
        fn slope(self, y: E) -> E {
            let s = sigmoid(y);
            s * (E::one() + y * (E::one() - s))
        }
    }

    /// act(GroupNorm(v)) into `out`.
    fn normalise<E: Float, A: Act<E>>(
        g: &Geometry,
        (v, out): (&[E], &mut [E]),
        stats: &[(E, E)],
        (gamma, beta): (&[E], &[E]),
        act: A,
    ) {
        out.par_chunks_mut(g.group_len())
            .zip(v.par_chunks(g.group_len()))
            .enumerate()
            .with_min_len(min_items_per_task(g.group_len()))
            .for_each(|(i, (o, vg))| {
                let c0 = channel0(g, i);
                let channels = c0..c0 + g.per_group();
                let affine = (&gamma[channels.clone()], &beta[channels]);
                normalise_group((o, vg), g.plane, stats[i], affine, act)
            });
    }

    /// act(GroupNorm(v)) of one group, its channels' planes of `plane` elements in turn.
    #[multiversion(targets = "simd")]
    fn normalise_group<E: Float, A: Act<E>>(
        (o, vg): (&mut [E], &[E]),
        plane: usize,
        (mean, rstd): (E, E),
        (gamma, beta): (&[E], &[E]),
        act: A,
    ) {
        for (k, (op, vp)) in o
            .chunks_exact_mut(plane)
            .zip(vg.chunks_exact(plane))
            .enumerate()
        {
            let (scale, offset) = (gamma[k] * rstd, beta[k]);
            for (y, x) in op.iter_mut().zip(vp) {
                // Centred first: x s - mean s would cancel where |mean| >> std.
                *y = act.value((*x - mean) * scale + offset);
            }
        }
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
        match act {
            Activation::Identity => {
                normalise(&g, (&v, &mut out), &stats, (&gamma, &beta), IdentityAct)
            }
            Activation::Silu => normalise(&g, (&v, &mut out), &stats, (&gamma, &beta), SiluAct),
        }
        let out = dev.tensor_from_vec(out, shape);
        if T::OWNS_TAPE {
            let (x_ghost, out_ghost) = (x.ghost(), out.ghost());
            let shift_ghost = shift.map(|s| s.ghost());
            let (weight, bias) = (norm.weight.ghost(), norm.bias.ghost());
            tape.add_backward_op(move |grads| {
                let go = take_output_grad(grads.get_or_alloc_mut(&out_ghost)?);
                let (dv, dgamma, dbeta) = match act {
                    Activation::Identity => {
                        backward(&g, (&v, &go), &stats, (&gamma, &beta), IdentityAct)
                    }
                    Activation::Silu => backward(&g, (&v, &go), &stats, (&gamma, &beta), SiluAct),
                };
                for (d, s) in grads.get_or_alloc_mut(&x_ghost)?.iter_mut().zip(dv.iter()) {
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
    /// dv = rstd (dx̂ - mean(dx̂) - x̂ mean(dx̂ x̂)); per channel, sum(dx̂) = gamma sum(dy) and
    /// sum(dx̂ x̂) = gamma sum(dy x̂), the affine map's gradients.
    fn backward<E: Float, A: Act<E>>(
        g: &Geometry,
        (v, go): (&[E], &[E]),
        stats: &[(E, E)],
        (gamma, beta): (&[E], &[E]),
        act: A,
    ) -> (Vec<E>, Vec<E>, Vec<E>) {
        let mut dv = vec![E::zero(); v.len()];
        // Per (image, channel): the sums of dy and of dy x̂.
        let mut sums = vec![(E::zero(), E::zero()); g.batch * g.channels];
        dv.par_chunks_mut(g.group_len())
            .zip(sums.par_chunks_mut(g.per_group()))
            .enumerate()
            .with_min_len(min_items_per_task(g.group_len()))
            .for_each(|(i, (dvg, sums))| {
                let group = i * g.group_len()..(i + 1) * g.group_len();
                let c0 = channel0(g, i);
                let channels = c0..c0 + g.per_group();
                let affine = (&gamma[channels.clone()], &beta[channels]);
                let inputs = (&v[group.clone()], &go[group]);
                backward_group((dvg, sums), inputs, g.plane, stats[i], affine, act)
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

    /// One group's input gradient into `dvg`, and its channels' sums of dy and dy x̂.
    #[multiversion(targets = "simd")]
    fn backward_group<E: Float, A: Act<E>>(
        (dvg, sums): (&mut [E], &mut [(E, E)]),
        (vg, gog): (&[E], &[E]),
        plane: usize,
        (mean, rstd): (E, E),
        (gamma, beta): (&[E], &[E]),
        act: A,
    ) {
        // First pass: dy into dvg, and each channel's sums of dy and dy x̂.
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for (k, sum) in sums.iter_mut().enumerate() {
            let (gm, bt) = (gamma[k], beta[k]);
            let range = k * plane..(k + 1) * plane;
            let dvp = &mut dvg[range.clone()];
            for ((d, x), o) in dvp
                .iter_mut()
                .zip(&vg[range.clone()])
                .zip(&gog[range.clone()])
            {
                *d = *o * act.slope((*x - mean) * rstd * gm + bt);
            }
            let vp = &vg[range];
            let (sdy, sdyx) = sums2(dvp, vp, |dy, x| (dy, dy * (x - mean) * rstd));
            *sum = (E::from_f64(sdy).unwrap(), E::from_f64(sdyx).unwrap());
            s1 += gm.to_f64().unwrap() * sdy;
            s2 += gm.to_f64().unwrap() * sdyx;
        }
        let n = vg.len() as f64;
        let (m1, m2) = (E::from_f64(s1 / n).unwrap(), E::from_f64(s2 / n).unwrap());
        for (k, (dp, vp)) in dvg
            .chunks_exact_mut(plane)
            .zip(vg.chunks_exact(plane))
            .enumerate()
        {
            let gm = gamma[k];
            for (d, x) in dp.iter_mut().zip(vp) {
                let xh = (*x - mean) * rstd;
                *d = rstd * (*d * gm - m1 - xh * m2);
            }
        }
    }
}

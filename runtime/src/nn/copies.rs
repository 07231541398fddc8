//! Operations that only move values, with their VJPs: the up blocks' concatenation of an image
//! with its skip connection along the channels, and the nearest-neighbour upsampling by 2.
//! [`concat_channels_generic`] and [`upsample2x_generic`] are dfdx's `concat_along` and a
//! broadcast + `contiguous` + reshape, which copy element by element through index arithmetic
//! (together about 3% of a W3 gradient's samples, on one thread); on the CPU they are block
//! copies.

use dfdx::prelude::*;

use super::{Float, Image};

/// [b, c1, h, w] and [b, c2, h, w] -> [b, c1 + c2, h, w] through dfdx's operations.
pub fn concat_channels_generic<E: Float, D: Device<E>, T: Tape<E, D>>(
    a: Image<E, D, T>,
    b: Image<E, D, T>,
) -> Image<E, D, T> {
    (a, b).concat_along(Axis::<1>)
}

/// Nearest-neighbour upsampling by 2 in height and width (torch's `interpolate(scale_factor=2,
/// mode="nearest")`: each pixel becomes a 2x2 block) through dfdx's operations.
pub fn upsample2x_generic<E: Float, D: Device<E>, T: Tape<E, D>>(
    x: Image<E, D, T>,
) -> Image<E, D, T> {
    let (b, c, h, w) = *x.shape();
    x.broadcast_like::<_, Axes2<3, 5>>(&(b, c, h, 2, w, 2))
        .contiguous()
        .reshape_like(&(b, c, 2 * h, 2 * w))
}

pub(crate) mod cpu {
    use dfdx::prelude::*;

    use crate::host::{values, values_into};
    use crate::nn::{take_output_grad, Float, Image};

    /// [b, c1, h, w] and [b, c2, h, w] -> [b, c1 + c2, h, w] on the CPU, on both tapes.
    pub fn concat_channels<E: Float, T: Tape<E, Cpu>>(
        a: Image<E, Cpu, T>,
        b: Image<E, Cpu, T>,
    ) -> Image<E, Cpu, T>
    where
        Cpu: Device<E>,
        <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
    {
        let (n, c1, h, w) = *a.shape();
        let (nb, c2, hb, wb) = *b.shape();
        assert_eq!((nb, hb, wb), (n, h, w), "images of one batch and size");
        let (a, a_tape) = a.contiguous().split_tape();
        let (b, b_tape) = b.contiguous().split_tape();
        let mut tape = a_tape.merge(b_tape);
        let (la, lb) = (c1 * h * w, c2 * h * w);
        // dfdx lends no slice of a tensor's buffer: one image copies straight into its halves
        // of the output, a batch through a copy of each input.
        let out = if n == 1 {
            let mut out = vec![E::default(); la + lb];
            let (oa, ob) = out.split_at_mut(la);
            values_into(&a, oa);
            values_into(&b, ob);
            out
        } else {
            let (va, vb) = (values(&a), values(&b));
            let mut out = Vec::with_capacity(n * (la + lb));
            for (ia, ib) in va.chunks_exact(la).zip(vb.chunks_exact(lb)) {
                out.extend_from_slice(ia);
                out.extend_from_slice(ib);
            }
            out
        };
        let out = a.device().tensor_from_vec(out, (n, c1 + c2, h, w));
        if T::OWNS_TAPE {
            let (a_ghost, b_ghost, out_ghost) = (a.ghost(), b.ghost(), out.ghost());
            tape.add_backward_op(move |grads| {
                let go = take_output_grad(grads.get_or_alloc_mut(&out_ghost)?);
                let halves = || go.chunks_exact(la + lb).map(|image| image.split_at(la));
                let da = grads.get_or_alloc_mut(&a_ghost)?;
                for (d, (g, _)) in da.chunks_exact_mut(la).zip(halves()) {
                    d.iter_mut().zip(g).for_each(|(d, g)| *d += *g);
                }
                let db = grads.get_or_alloc_mut(&b_ghost)?;
                for (d, (_, g)) in db.chunks_exact_mut(lb).zip(halves()) {
                    d.iter_mut().zip(g).for_each(|(d, g)| *d += *g);
                }
                Ok(())
            });
        }
        out.put_tape(tape)
    }

    /// Nearest-neighbour upsampling by 2 on the CPU, on x's tape: each row written twice with
    /// each value twice; the VJP sums each 2 x 2 block.
    pub fn upsample2x<E: Float, T: Tape<E, Cpu>>(x: Image<E, Cpu, T>) -> Image<E, Cpu, T>
    where
        Cpu: Device<E>,
        <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
    {
        let (n, c, h, w) = *x.shape();
        let (x, mut tape) = x.contiguous().split_tape();
        let xs = values(&x);
        let mut out = Vec::with_capacity(4 * xs.len());
        for row in xs.chunks_exact(w) {
            let start = out.len();
            out.extend(row.iter().flat_map(|v| [*v, *v]));
            out.extend_from_within(start..);
        }
        let out = x.device().tensor_from_vec(out, (n, c, 2 * h, 2 * w));
        if T::OWNS_TAPE {
            let (x_ghost, out_ghost) = (x.ghost(), out.ghost());
            tape.add_backward_op(move |grads| {
                let go = take_output_grad(grads.get_or_alloc_mut(&out_ghost)?);
                let dx = grads.get_or_alloc_mut(&x_ghost)?;
                for (d, rows) in dx.chunks_exact_mut(w).zip(go.chunks_exact(4 * w)) {
                    let (upper, lower) = rows.split_at(2 * w);
                    // In the order dfdx's broadcast adds them (the output's), so that the two
                    // agree to the last bit.
                    for (k, d) in d.iter_mut().enumerate() {
                        for v in [
                            upper[2 * k],
                            upper[2 * k + 1],
                            lower[2 * k],
                            lower[2 * k + 1],
                        ] {
                            *d += v;
                        }
                    }
                }
                Ok(())
            });
        }
        out.put_tape(tape)
    }
}

//! The exchange of the two middle axes of a 4-D tensor, [a, m, n, r] -> [a, n, m, r], with its
//! VJP (the same exchange back, added): the attention block's changes of layout between
//! [b, c, h w] images, [b, s, c] sequences and [b, heads, s, d] heads.
//! [`swap_middle_axes_generic`] is dfdx's `permute` + `contiguous`, which copies element by
//! element through the strides; on the CPU a custom operation copies rows of r elements in
//! blocks (for r = 1, a blocked transpose that stays within the cache): on W3's 256 x 256
//! sequence, `cargo bench --bench unet_layers -- swap`.

use dfdx::prelude::*;

use super::{Float, Image};

/// [a, m, n, r] -> [a, n, m, r] through dfdx's operations.
pub fn swap_middle_axes_generic<E: Float, D: Device<E>, T: Tape<E, D>>(
    x: Image<E, D, T>,
) -> Image<E, D, T> {
    x.permute::<_, Axes4<0, 2, 1, 3>>().contiguous()
}

pub(crate) mod cpu {
    use dfdx::prelude::*;

    use crate::nn::{Float, Image};

    /// Rows and columns per block of the transpose: 16 x 16 f32 rows of r elements.
    const BLOCK: usize = 16;

    /// put(dst[ai, j, i, k], src[ai, i, j, k]) for src [a, m, n, r] and dst [a, n, m, r]:
    /// `put` writes (into an uninitialised buffer) or adds one element.
    #[inline(always)]
    fn swap_into<E: Copy, D, F: Fn(&mut D, E)>(
        src: &[E],
        (a, m, n, r): (usize, usize, usize, usize),
        dst: &mut [D],
        put: F,
    ) {
        let image = m * n * r;
        for (s, d) in src
            .chunks_exact(image)
            .zip(dst.chunks_exact_mut(image))
            .take(a)
        {
            for i0 in (0..m).step_by(BLOCK) {
                let i1 = (i0 + BLOCK).min(m);
                for j0 in (0..n).step_by(BLOCK) {
                    let j1 = (j0 + BLOCK).min(n);
                    for i in i0..i1 {
                        let row = &s[(i * n + j0) * r..(i * n + j1) * r];
                        if r == 1 {
                            for (j, v) in (j0..j1).zip(row) {
                                put(&mut d[j * m + i], *v);
                            }
                        } else {
                            for (j, from) in (j0..j1).zip(row.chunks_exact(r)) {
                                let to = &mut d[(j * m + i) * r..][..r];
                                to.iter_mut().zip(from).for_each(|(t, v)| put(t, *v));
                            }
                        }
                    }
                }
            }
        }
    }

    /// [a, m, n, r] -> [a, n, m, r] on the CPU, on x's tape.
    pub fn swap_middle_axes<E: Float, T: Tape<E, Cpu>>(x: Image<E, Cpu, T>) -> Image<E, Cpu, T>
    where
        Cpu: Device<E>,
        <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
    {
        let dims = *x.shape();
        let (a, m, n, r) = dims;
        let (x, mut tape) = x.contiguous().split_tape();
        let mut xs = vec![E::zero(); x.shape().num_elements()];
        x.copy_into(&mut xs);
        let mut out = Vec::with_capacity(xs.len());
        let len = xs.len();
        swap_into(&xs, dims, &mut out.spare_capacity_mut()[..len], |d, s| {
            d.write(s);
        });
        // SAFETY: the exchange wrote every element (each (ai, j, i) once).
        unsafe { out.set_len(len) };
        let out = x.device().tensor_from_vec(out, (a, n, m, r));
        if T::OWNS_TAPE {
            let (x_ghost, out_ghost) = (x.ghost(), out.ghost());
            tape.add_backward_op(move |grads| {
                let go: Vec<E> = grads.get_or_alloc_mut(&out_ghost)?.to_vec();
                let dx = grads.get_or_alloc_mut(&x_ghost)?;
                swap_into(&go, (a, n, m, r), dx, |d, s| *d += s);
                Ok(())
            });
        }
        out.put_tape(tape)
    }
}

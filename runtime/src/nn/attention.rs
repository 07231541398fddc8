//! The core of scaled dot-product attention, softmax(scale q k^T) v per (image, head), with
//! its exact VJP. Keys and values may be a sequence of another length than the queries'
//! (cross-attention to encoder hidden states: sq image positions attending to sk tokens). [`attention_core_generic`] composes it from dfdx's operations (any device);
//! on the CPU it is one custom operation (`cpu::attention_core`) whose products go through
//! `gemm` 0.19; it keeps each row's max and sum, not the softmax, and its backward pass makes
//! the softmax again from the scores (five products per head instead of four, and one head's
//! scores in memory at a time instead of every head's for the whole tape):
//! with P = softmax(S) [sq x sk], S = scale q k^T, O = P v:
//!   dv = P^T dO,  dP = dO v^T,  dS = P (dP - rowsum(dP P)),  dq = scale dS k,  dk = scale dS^T q.

use dfdx::prelude::*;

use super::{Float, Image};

/// Queries, keys or values: [batch, heads, sequence, head width].
pub type Heads<E, D, T> = Image<E, D, T>;

/// softmax(scale q k^T) v through dfdx's operations: q [b, h, sq, d], k and v [b, h, sk, d].
pub fn attention_core_generic<E: Float, D: Device<E>, T: Tape<E, D>>(
    q: Heads<E, D, T>,
    k: Heads<E, D, T>,
    v: Heads<E, D, T>,
    scale: E,
) -> Heads<E, D, T> {
    let scores = q.matmul(k.permute::<_, Axes4<0, 1, 3, 2>>()) * scale;
    scores.softmax::<Axis<3>>().matmul(v)
}

pub(crate) mod cpu {
    use std::sync::Arc;

    use dfdx::prelude::*;
    use multiversion::multiversion;

    use super::Heads;
    use rayon::prelude::*;

    use crate::nn::gemm::matmul;
    use crate::nn::{min_items_per_task, take_output_grad, Float};

    /// Lanes of the row reductions: independent accumulators the compiler keeps in one vector
    /// register (a single running max or sum is a chain it must not reorder, which kept the
    /// softmax scalar: a tenth of a W4 gradient's samples, on one core).
    const LANES: usize = 16;

    /// `f` folded over `row` in [`LANES`] independent lanes from `init`, then over the lanes.
    #[inline(always)]
    fn row_fold<E: Float>(row: &[E], init: E, f: impl Fn(E, E) -> E) -> E {
        let mut lanes = [init; LANES];
        let chunks = row.chunks_exact(LANES);
        let rest = chunks.remainder();
        for chunk in chunks {
            for (a, &v) in lanes.iter_mut().zip(chunk) {
                *a = f(*a, v);
            }
        }
        for (a, &v) in lanes.iter_mut().zip(rest) {
            *a = f(*a, v);
        }
        lanes.into_iter().fold(init, f)
    }

    /// The largest element of `row` (NaN where the row holds one, as a sum through it would be).
    #[inline(always)]
    fn row_max<E: Float>(row: &[E]) -> E {
        // A select, not `max`, so that a NaN is kept (and so that it vectorises).
        row_fold(row, E::neg_infinity(), |m, v| {
            if v > m || v.is_nan() {
                v
            } else {
                m
            }
        })
    }

    /// The sum of a row.
    #[inline(always)]
    fn row_sum<E: Float>(row: &[E]) -> E {
        row_fold(row, E::zero(), |a, v| a + v)
    }

    /// The sum of x y over two rows of one length.
    #[inline(always)]
    fn row_dot<E: Float>(x: &[E], y: &[E]) -> E {
        let mut lanes = [E::zero(); LANES];
        let (xc, yc) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
        let (xr, yr) = (xc.remainder(), yc.remainder());
        for (a, b) in xc.zip(yc) {
            for ((s, &a), &b) in lanes.iter_mut().zip(a).zip(b) {
                *s += a * b;
            }
        }
        for ((s, &a), &b) in lanes.iter_mut().zip(xr).zip(yr) {
            *s += a * b;
        }
        lanes.into_iter().fold(E::zero(), |a, b| a + b)
    }

    /// softmax(scale s) of each row of `rows` [.. x width], in place (scale > 0), and each
    /// row's (max, 1 / sum of the exponentials) into `stats`.
    #[multiversion(targets = "simd")]
    fn softmax_rows_block<E: Float>(rows: &mut [E], width: usize, scale: E, stats: &mut [(E, E)]) {
        for (row, st) in rows.chunks_exact_mut(width).zip(stats.iter_mut()) {
            let max = row_max(row);
            for v in row.iter_mut() {
                *v = ((*v - max) * scale).exp_fast();
            }
            let inv = E::one() / row_sum(row);
            row.iter_mut().for_each(|v| *v *= inv);
            *st = (max, inv);
        }
    }

    /// The same softmax again from the same scores and the rows' `stats`: the same operations
    /// in the same order, so the same values to the bit.
    #[multiversion(targets = "simd")]
    fn softmax_rows_again_block<E: Float>(
        rows: &mut [E],
        width: usize,
        scale: E,
        stats: &[(E, E)],
    ) {
        for (row, &(max, inv)) in rows.chunks_exact_mut(width).zip(stats) {
            for v in row.iter_mut() {
                *v = ((*v - max) * scale).exp_fast() * inv;
            }
        }
    }

    /// softmax(scale s) of each row of `rows` [.. x width], in place, rows split over threads;
    /// `stats` as for [`softmax_rows_block`].
    fn softmax_rows<E: Float>(rows: &mut [E], width: usize, scale: E, stats: &mut [(E, E)]) {
        let per_task = min_items_per_task(width);
        rows.par_chunks_mut(width * per_task)
            .zip(stats.par_chunks_mut(per_task))
            .for_each(|(block, st)| softmax_rows_block(block, width, scale, st));
    }

    /// [`softmax_rows_again_block`] split over threads.
    fn softmax_rows_again<E: Float>(rows: &mut [E], width: usize, scale: E, stats: &[(E, E)]) {
        let per_task = min_items_per_task(width);
        rows.par_chunks_mut(width * per_task)
            .zip(stats.par_chunks(per_task))
            .for_each(|(block, st)| softmax_rows_again_block(block, width, scale, st));
    }

    /// The softmax's VJP in place: each row of `ds` [.. x width], dP on entry, becomes
    /// scale P (dP - rowsum(dP P)), with P the same rows of `p`.
    #[multiversion(targets = "simd")]
    fn softmax_vjp_rows_block<E: Float>(ds: &mut [E], p: &[E], width: usize, scale: E) {
        for (drow, prow) in ds.chunks_exact_mut(width).zip(p.chunks_exact(width)) {
            let dot = row_dot(drow, prow);
            for (x, y) in drow.iter_mut().zip(prow) {
                *x = *y * (*x - dot) * scale;
            }
        }
    }

    fn softmax_vjp_rows<E: Float>(ds: &mut [E], p: &[E], width: usize, scale: E) {
        let block = width * min_items_per_task(width);
        ds.par_chunks_mut(block)
            .zip(p.par_chunks(block))
            .for_each(|(d, p)| softmax_vjp_rows_block(d, p, width, scale));
    }
    fn host<E: Float>(t: &Tensor<(usize, usize, usize, usize), E, Cpu>) -> Vec<E>
    where
        Cpu: Device<E>,
    {
        let mut v = vec![E::zero(); t.shape().num_elements()];
        t.copy_into(&mut v);
        v
    }

    pub fn attention_core<E: Float, T: Tape<E, Cpu>>(
        q: Heads<E, Cpu, T>,
        k: Heads<E, Cpu, T>,
        v: Heads<E, Cpu, T>,
        scale: E,
    ) -> Heads<E, Cpu, T>
    where
        Cpu: Device<E>,
        <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
    {
        let shape = *q.shape();
        let (b, h, sq, d) = shape;
        let sk = k.shape().2;
        assert_eq!(
            *k.shape(),
            (b, h, sk, d),
            "keys: the queries' batch, heads and width"
        );
        assert_eq!(*v.shape(), (b, h, sk, d), "values of the keys' shape");
        let (q, tq) = q.contiguous().split_tape();
        let (k, tk) = k.contiguous().split_tape();
        let (v, tv) = v.contiguous().split_tape();
        let mut tape = tq.merge(tk).merge(tv);
        let (qs, ks, vs) = (host(&q), host(&k), host(&v));
        // Per head: the queries' and the keys' block sizes, and the scores'.
        let (heads, qd, kd, ss) = (b * h, sq * d, sk * d, sq * sk);
        // One head's scores at a time; each row's max and sum are kept for the backward
        // pass, which makes the probabilities again (one more product per head) instead of
        // keeping them: at 64x64 latents they are 512 MiB per attention, the largest part of
        // an SD UNet's tape.
        let mut p = vec![E::zero(); ss];
        let mut stats = vec![(E::zero(), E::zero()); heads * sq];
        let mut out = vec![E::zero(); heads * qd];
        for i in 0..heads {
            let (qi, ki, vi) = (&qs[i * qd..], &ks[i * kd..], &vs[i * kd..]);
            // SAFETY: p [sq x sk] = qi [sq x d] ki^T [d x sk]; then out_i [sq x d] = p vi.
            unsafe {
                matmul(
                    (sq, sk, d),
                    (p.as_mut_ptr(), sk, false),
                    (qi.as_ptr(), d, 1),
                    (ki.as_ptr(), 1, d),
                );
            }
            softmax_rows(&mut p, sk, scale, &mut stats[i * sq..(i + 1) * sq]);
            unsafe {
                matmul(
                    (sq, d, sk),
                    (out[i * qd..].as_mut_ptr(), d, false),
                    (p.as_ptr(), sk, 1),
                    (vi.as_ptr(), d, 1),
                );
            }
        }
        drop(p);
        let out = q.device().tensor_from_vec(out, shape);
        if T::OWNS_TAPE {
            let ghosts = (q.ghost(), k.ghost(), v.ghost(), out.ghost());
            let saved = Arc::new((qs, ks, vs, stats));
            tape.add_backward_op(move |grads| {
                let (qg, kg, vg, og) = &ghosts;
                let (qs, ks, vs, stats) = &*saved;
                let go = take_output_grad(grads.get_or_alloc_mut(og)?);
                let mut dq = vec![E::zero(); heads * qd];
                let mut dk = vec![E::zero(); heads * kd];
                let mut dv = vec![E::zero(); heads * kd];
                let mut p = vec![E::zero(); ss];
                let mut ds = vec![E::zero(); ss];
                for i in 0..heads {
                    let (rq, rk) = (i * qd..(i + 1) * qd, i * kd..(i + 1) * kd);
                    let (qi, ki, vi, goi) = (&qs[rq.clone()], &ks[rk.clone()], &vs[rk], &go[rq]);
                    // SAFETY (all six): the slices cover the shapes given; the destinations are
                    // distinct buffers.
                    unsafe {
                        // The forward pass's scores again: p [sq x sk] = qi ki^T.
                        matmul(
                            (sq, sk, d),
                            (p.as_mut_ptr(), sk, false),
                            (qi.as_ptr(), d, 1),
                            (ki.as_ptr(), 1, d),
                        );
                    }
                    softmax_rows_again(&mut p, sk, scale, &stats[i * sq..(i + 1) * sq]);
                    unsafe {
                        // dv_i [sk x d] = p^T [sk x sq] goi [sq x d]
                        matmul(
                            (sk, d, sq),
                            (dv[i * kd..].as_mut_ptr(), d, false),
                            (p.as_ptr(), 1, sk),
                            (goi.as_ptr(), d, 1),
                        );
                        // dP [sq x sk] = goi [sq x d] vi^T [d x sk]
                        matmul(
                            (sq, sk, d),
                            (ds.as_mut_ptr(), sk, false),
                            (goi.as_ptr(), d, 1),
                            (vi.as_ptr(), 1, d),
                        );
                    }
                    // dS = P (dP - rowsum(dP P)), times the scale.
                    softmax_vjp_rows(&mut ds, &p, sk, scale);
                    unsafe {
                        // dq_i [sq x d] = dS ki; dk_i [sk x d] = dS^T qi
                        matmul(
                            (sq, d, sk),
                            (dq[i * qd..].as_mut_ptr(), d, false),
                            (ds.as_ptr(), sk, 1),
                            (ki.as_ptr(), d, 1),
                        );
                        matmul(
                            (sk, d, sq),
                            (dk[i * kd..].as_mut_ptr(), d, false),
                            (ds.as_ptr(), 1, sk),
                            (qi.as_ptr(), d, 1),
                        );
                    }
                }
                for (ghost, g) in [(qg, &dq), (kg, &dk), (vg, &dv)] {
                    for (a, x) in grads.get_or_alloc_mut(ghost)?.iter_mut().zip(g.iter()) {
                        *a += *x;
                    }
                }
                Ok(())
            });
        }
        out.put_tape(tape)
    }
}

//! The core of scaled dot-product attention, softmax(scale q k^T) v per (image, head), with
//! its exact VJP. Keys and values may be a sequence of another length than the queries'
//! (cross-attention to encoder hidden states: sq image positions attending to sk tokens). [`attention_core_generic`] composes it from dfdx's operations (any device);
//! on the CPU it is one custom operation (`cpu::attention_core`) whose five products per head
//! go through `gemm` 0.19 and which keeps the softmax for the backward pass:
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
    use crate::nn::gemm::matmul;
    use crate::nn::{take_output_grad, Float};

    /// The softmax of each row of `rows` [.. x width], in place.
    #[multiversion(targets = "simd")]
    fn softmax_rows<E: Float>(rows: &mut [E], width: usize) {
        for row in rows.chunks_exact_mut(width) {
            let max = row.iter().fold(E::neg_infinity(), |m, v| m.max(*v));
            let mut sum = E::zero();
            for v in row.iter_mut() {
                *v = (*v - max).exp_fast();
                sum += *v;
            }
            let inv = E::one() / sum;
            row.iter_mut().for_each(|v| *v *= inv);
        }
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
        let mut p = vec![E::zero(); heads * ss];
        let mut out = vec![E::zero(); heads * qd];
        for i in 0..heads {
            let (qi, ki, vi) = (&qs[i * qd..], &ks[i * kd..], &vs[i * kd..]);
            let pi = &mut p[i * ss..(i + 1) * ss];
            // SAFETY: pi [sq x sk] = qi [sq x d] ki^T [d x sk]; then out_i [sq x d] = pi vi.
            unsafe {
                matmul(
                    (sq, sk, d),
                    (pi.as_mut_ptr(), sk, false),
                    (qi.as_ptr(), d, 1),
                    (ki.as_ptr(), 1, d),
                );
            }
            pi.iter_mut().for_each(|x| *x *= scale);
            softmax_rows(pi, sk);
            unsafe {
                matmul(
                    (sq, d, sk),
                    (out[i * qd..].as_mut_ptr(), d, false),
                    (pi.as_ptr(), sk, 1),
                    (vi.as_ptr(), d, 1),
                );
            }
        }
        let out = q.device().tensor_from_vec(out, shape);
        if T::OWNS_TAPE {
            let ghosts = (q.ghost(), k.ghost(), v.ghost(), out.ghost());
            let saved = Arc::new((qs, ks, vs, p));
            tape.add_backward_op(move |grads| {
                let (qg, kg, vg, og) = &ghosts;
                let (qs, ks, vs, p) = &*saved;
                let go = take_output_grad(grads.get_or_alloc_mut(og)?);
                let mut dq = vec![E::zero(); heads * qd];
                let mut dk = vec![E::zero(); heads * kd];
                let mut dv = vec![E::zero(); heads * kd];
                let mut ds = vec![E::zero(); ss];
                for i in 0..heads {
                    let (rq, rk) = (i * qd..(i + 1) * qd, i * kd..(i + 1) * kd);
                    let (qi, ki, vi, goi) = (&qs[rq.clone()], &ks[rk.clone()], &vs[rk], &go[rq]);
                    let pi = &p[i * ss..(i + 1) * ss];
                    // SAFETY (all five): the slices cover the shapes given; the destinations are
                    // distinct buffers.
                    unsafe {
                        // dv_i [sk x d] = pi^T [sk x sq] goi [sq x d]
                        matmul(
                            (sk, d, sq),
                            (dv[i * kd..].as_mut_ptr(), d, false),
                            (pi.as_ptr(), 1, sk),
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
                    for (drow, prow) in ds.chunks_exact_mut(sk).zip(pi.chunks_exact(sk)) {
                        let dot = drow
                            .iter()
                            .zip(prow)
                            .fold(E::zero(), |a, (x, y)| a + *x * *y);
                        for (x, y) in drow.iter_mut().zip(prow) {
                            *x = *y * (*x - dot) * scale;
                        }
                    }
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

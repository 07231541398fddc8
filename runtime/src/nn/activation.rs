//! GeLU with the tanh approximation (dfdx's `FastGeLU`, torch's `GELU(approximate="tanh")`) as
//! a dfdx module, with a CPU kernel.
//!
//! 0.5 x (1 + tanh(v)) = x sigmoid(2 v), v = sqrt(2/pi) (x + 0.044715 x^3): one exponential
//! and no cancellation near v = 0. dfdx evaluates `tanhf` and `expm1f` element by element in
//! libm (a fifth of W2's time); the kernel's f32 exponential is a polynomial the compiler
//! vectorises (Cephes' `expf`, within 2 ulp, [`Float::exp_fast`]), the backward pass reuses
//! the same formula, and long rows are split over threads. f64 uses `exp` itself.

use dfdx::nn::{Module, NonMutableModule, ZeroSizedModule};
use dfdx::prelude::*;

use super::{Float, NnDevice};

/// sqrt(2 / pi) and the cubic coefficient of the tanh approximation.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const CUBIC: f64 = 0.044_715;

/// GeLU, tanh approximation: a drop-in for dfdx's `FastGeLU` in a module type.
#[derive(Default, Debug, Clone, Copy)]
pub struct Gelu;

impl ZeroSizedModule for Gelu {}
impl NonMutableModule for Gelu {}

impl<S: Shape, E: Float, D: NnDevice<E>, T: Tape<E, D>> Module<Tensor<S, E, D, T>> for Gelu {
    type Output = Tensor<S, E, D, T>;
    type Error = D::Err;

    fn try_forward(&self, x: Tensor<S, E, D, T>) -> Result<Self::Output, D::Err> {
        Ok(D::gelu(x))
    }
}

/// (GeLU(x), its derivative at x).
#[inline(always)]
pub(crate) fn gelu_and_slope<E: Float>(x: E) -> (E, E) {
    let (c, a) = (
        E::from_f64(SQRT_2_OVER_PI).unwrap(),
        E::from_f64(CUBIC).unwrap(),
    );
    let two = E::one() + E::one();
    let x2 = x * x;
    let v = c * x * (E::one() + a * x2);
    // The exponent is capped (E::EXP_CAP) so that s = 1 / (1 + e) stays a normal number:
    // subnormal arithmetic is tens of times slower, and for W1's pre-activations it was most
    // of the sampling time. Below the cap GeLU(x) is under |x| e^-cap, zero at the type's
    // resolution of anything it is added to.
    let e = (-two * v).min(E::from_f64(E::EXP_CAP).unwrap()).exp_fast();
    let s = E::one() / (E::one() + e);
    let dv = c * (E::one() + (two + E::one()) * a * x2);
    // 1 - s as e s: written as a difference it loses its digits where s is near 1, and the
    // slope multiplies it by x v', which grows like x^3.
    (x * s, s + x * s * (e * s) * two * dv)
}

/// Cephes' single-precision exponential: x = n ln 2 + r, |r| <= ln 2 / 2, a degree-6
/// polynomial in r, times 2^n built from its bits. Arguments are clamped to [-87, 88], where
/// the result stays a normal number.
#[inline(always)]
pub(crate) fn expf_poly(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round x log2(e) to the nearest integer by adding and removing 1.5 * 2^23.
    // The sum's low mantissa bits are that integer, read without a float-to-int conversion
    // (Rust's `as` saturates lane by lane, which keeps the loop from vectorising).
    const ROUND: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    // ln 2 in two parts, so that n ln 2 is exact in the first.
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5)
        * r
        * r
        + r
        + 1.0;
    p * f32::from_bits(n_int.wrapping_add(127) << 23)
}

/// (GELU(x) with erf, its derivative): x Phi(x) and Phi(x) + x phi(x), Phi and phi the
/// standard normal distribution and density.
#[inline(always)]
pub(crate) fn gelu_erf_and_slope<E: Float>(x: E) -> (E, E) {
    let half = E::from_f64(0.5).unwrap();
    let cdf = half * (E::one() + (x * E::from_f64(std::f64::consts::FRAC_1_SQRT_2).unwrap()).erf());
    // exp_fast clamps its argument where f32's exponential would leave the normal numbers.
    let density = (-half * x * x).exp_fast() * E::from_f64(0.398_942_280_401_432_7).unwrap();
    (x * cdf, cdf + x * density)
}

/// The CPU kernels: one pass forward, one backward, over chunks on rayon's threads.
pub(crate) mod cpu {
    use dfdx::prelude::*;
    use multiversion::multiversion;
    use rayon::prelude::*;

    use super::{gelu_and_slope, gelu_erf_and_slope};
    use crate::nn::transformer::Tokens;
    use crate::nn::{min_items_per_task, take_output_grad, Float};

    /// Elements per task: rows shorter than two of these stay on one thread.
    const CHUNK: usize = 16 * 1024;

    /// out = GeLU(x).
    #[multiversion(targets = "simd")]
    pub(super) fn gelu_rows<E: Float>(out: &mut [E], x: &[E]) {
        for (o, x) in out.iter_mut().zip(x) {
            *o = gelu_and_slope(*x).0;
        }
    }

    /// dx += g GeLU'(x).
    #[multiversion(targets = "simd")]
    pub(super) fn gelu_slope_rows<E: Float>(dx: &mut [E], g: &[E], x: &[E]) {
        for ((d, g), x) in dx.iter_mut().zip(g).zip(x) {
            *d += *g * gelu_and_slope(*x).1;
        }
    }

    pub fn gelu<S: Shape, E: Float, T: Tape<E, Cpu>>(
        x: Tensor<S, E, Cpu, T>,
    ) -> Tensor<S, E, Cpu, T>
    where
        Cpu: Device<E>,
        <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
    {
        let shape = *x.shape();
        let (x, mut tape) = x.contiguous().split_tape();
        let mut xs = vec![E::zero(); shape.num_elements()];
        x.copy_into(&mut xs);
        let mut out = vec![E::zero(); xs.len()];
        let forward = |(o, x): (&mut [E], &[E])| gelu_rows(o, x);
        if xs.len() < 2 * CHUNK {
            forward((&mut out, &xs));
        } else {
            out.par_chunks_mut(CHUNK)
                .zip(xs.par_chunks(CHUNK))
                .for_each(forward);
        }
        let out = x.device().tensor_from_vec(out, shape);
        if T::OWNS_TAPE {
            let (x_ghost, out_ghost) = (x.ghost(), out.ghost());
            tape.add_backward_op(move |grads| {
                let go = take_output_grad(grads.get_or_alloc_mut(&out_ghost)?);
                let dx = grads.get_or_alloc_mut(&x_ghost)?;
                let backward = |((d, g), x): ((&mut [E], &[E]), &[E])| gelu_slope_rows(d, g, x);
                if xs.len() < 2 * CHUNK {
                    backward(((dx, &go), &xs));
                } else {
                    dx.par_chunks_mut(CHUNK)
                        .zip(go.par_chunks(CHUNK))
                        .zip(xs.par_chunks(CHUNK))
                        .for_each(backward);
                }
                Ok(())
            });
        }
        out.put_tape(tape)
    }

    /// GEGLU of rows h [.. x 2 inner] into out [.. x inner]: hidden GELU(gate).
    #[multiversion(targets = "simd")]
    fn geglu_rows<E: Float>(out: &mut [E], h: &[E], inner: usize) {
        for (o, h) in out.chunks_exact_mut(inner).zip(h.chunks_exact(2 * inner)) {
            let (hidden, gate) = h.split_at(inner);
            for ((o, x), g) in o.iter_mut().zip(hidden).zip(gate) {
                *o = *x * gelu_erf_and_slope(*g).0;
            }
        }
    }

    /// dh += GEGLU's VJP of go [.. x inner] at rows h [.. x 2 inner].
    #[multiversion(targets = "simd")]
    fn geglu_vjp_rows<E: Float>(dh: &mut [E], go: &[E], h: &[E], inner: usize) {
        let rows = dh.chunks_exact_mut(2 * inner).zip(go.chunks_exact(inner));
        for ((d, go), h) in rows.zip(h.chunks_exact(2 * inner)) {
            let (d_hidden, d_gate) = d.split_at_mut(inner);
            let (hidden, gate) = h.split_at(inner);
            for ((((dx, dg), o), x), g) in d_hidden
                .iter_mut()
                .zip(d_gate.iter_mut())
                .zip(go)
                .zip(hidden)
                .zip(gate)
            {
                let (value, slope) = gelu_erf_and_slope(*g);
                *dx += *o * value;
                *dg += *o * *x * slope;
            }
        }
    }

    /// GEGLU as one operation on the tape: dfdx's composition (two slices, GELU with its slope
    /// corrected, a product) records six operations on the feed-forward's widest tensor, each
    /// a new buffer and a gradient kept to the end of the backward pass.
    pub fn geglu<E: Float, T: Tape<E, Cpu>>(h: Tokens<E, Cpu, T>) -> Tokens<E, Cpu, T>
    where
        Cpu: Device<E>,
        <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
    {
        let (b, s, two) = *h.shape();
        assert_eq!(
            two % 2,
            0,
            "GEGLU's input is the hidden values and the gates"
        );
        let inner = two / 2;
        let (h, mut tape) = h.contiguous().split_tape();
        let mut hs = vec![E::zero(); b * s * two];
        h.copy_into(&mut hs);
        let rows = min_items_per_task(two);
        let mut out = vec![E::zero(); b * s * inner];
        out.par_chunks_mut(rows * inner)
            .zip(hs.par_chunks(rows * two))
            .for_each(|(o, h)| geglu_rows(o, h, inner));
        let out = h.device().tensor_from_vec(out, (b, s, inner));
        if T::OWNS_TAPE {
            let (h_ghost, out_ghost) = (h.ghost(), out.ghost());
            tape.add_backward_op(move |grads| {
                let go = take_output_grad(grads.get_or_alloc_mut(&out_ghost)?);
                grads
                    .get_or_alloc_mut(&h_ghost)?
                    .par_chunks_mut(rows * two)
                    .zip(go.par_chunks(rows * inner))
                    .zip(hs.par_chunks(rows * two))
                    .for_each(|((d, go), h)| geglu_vjp_rows(d, go, h, inner));
                Ok(())
            });
        }
        out.put_tape(tape)
    }
}

#[cfg(test)]
mod tests {
    use super::cpu::{gelu_rows, gelu_slope_rows};
    use super::gelu_and_slope;

    /// The kernels run the version for the widest vectors the CPU has (AVX-512 here); each
    /// element must round exactly as the formula does one at a time in the baseline build
    /// (so that no version fuses a multiply-add or reorders a sum).
    #[test]
    fn every_simd_version_rounds_as_the_scalar_formula() {
        let xs: Vec<f32> = (0..10_007)
            .map(|i| {
                let u = (i as f32 * 0.618_034).fract();
                // Mostly [-12, 12], some far out (saturated, capped exponent) and zeros.
                match i % 97 {
                    0 => 0.0,
                    1 => -300.0 * u,
                    2 => 300.0 * u,
                    _ => 24.0 * u - 12.0,
                }
            })
            .collect();
        let g: Vec<f32> = xs.iter().map(|x| 0.5 - x.sin()).collect();
        let mut out = vec![0.0f32; xs.len()];
        gelu_rows(&mut out, &xs);
        let mut dx = vec![0.25f32; xs.len()];
        gelu_slope_rows(&mut dx, &g, &xs);
        for (i, x) in xs.iter().enumerate() {
            let (value, slope) = gelu_and_slope(std::hint::black_box(*x));
            assert_eq!(out[i].to_bits(), value.to_bits(), "GeLU({x})");
            let d = 0.25 + g[i] * slope;
            assert_eq!(dx[i].to_bits(), d.to_bits(), "GeLU'({x})");
        }
    }
}

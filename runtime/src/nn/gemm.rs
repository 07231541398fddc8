//! The one matrix product the CPU kernels call: `gemm` 0.19, whose AVX-512 kernels it picks
//! at run time where the CPU has them (the `x86-v4` feature; dfdx's own `gemm` 0.15 has them
//! only on nightly), on the calling thread below a size where threads cost more than they save.

use super::Float;

/// Products below this many multiply-adds stay on the calling thread.
const PARALLEL_FROM: usize = 1 << 21;

/// A matrix operand: (pointer, row stride, column stride), strides in elements.
pub(crate) type Operand<E> = (*const E, usize, usize);

/// dst[m x n] = (dst if `acc`) + a[m x k] b[k x n]; dst is (pointer, row stride, accumulate)
/// with unit column stride.
///
/// # Safety
/// The pointers must cover the matrices their strides describe; dst must not alias a or b.
pub(crate) unsafe fn matmul<E: Float>(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs, acc): (*mut E, usize, bool),
    (a, a_rs, a_cs): Operand<E>,
    (b, b_rs, b_cs): Operand<E>,
) {
    let parallelism = if m * n * k < PARALLEL_FROM {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    };
    // SAFETY: as the caller promises; gemm takes (column stride, row stride) pairs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            acc,
            a,
            a_cs as isize,
            a_rs as isize,
            b,
            b_cs as isize,
            b_rs as isize,
            if acc { E::one() } else { E::zero() },
            E::one(),
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// c = a b for row-major a [m x k] and b [k x n], through the kernels' GEMM: what the
/// benchmarks time as this machine's GEMM peak.
pub fn matmul_rows<E: Float>(a: &[E], b: &[E], (m, n, k): (usize, usize, usize)) -> Vec<E> {
    assert_eq!(a.len(), m * k, "a is m x k");
    assert_eq!(b.len(), k * n, "b is k x n");
    let mut c = vec![E::zero(); m * n];
    // SAFETY: the slices are the sizes the shapes describe, and c is a new buffer.
    unsafe {
        matmul(
            (m, n, k),
            (c.as_mut_ptr(), n, false),
            (a.as_ptr(), k, 1),
            (b.as_ptr(), n, 1),
        );
    }
    c
}

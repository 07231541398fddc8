//! States of any shape: a batch of items whose shape is known at run time (`[D]` for vectors,
//! `[C, H, W]` for images), stored as the rows `[batch, item size]` of one dfdx tensor. The
//! plan executor only forms affine combinations of states and never looks at the item shape;
//! models see the shape they expect.

use std::ops::{Add, Mul, Sub};
use std::sync::Arc;

use dfdx::prelude::*;

use crate::error::RuntimeError;

/// A 2-D tensor of rows: [batch, width].
pub type Rows<E, D> = Tensor<(usize, usize), E, D>;

/// A batch of items of one shape.
#[derive(Clone, Debug)]
pub struct State<E: Dtype, D: Device<E>> {
    rows: Rows<E, D>,
    item: Arc<[usize]>,
}

/// f64 to the tensor dtype.
#[inline]
pub fn e<E: Dtype>(v: f64) -> E {
    E::from_f64(v).expect("f64 converts to every float dtype")
}

/// The number of elements of a shape, or None when it overflows.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, d| n.checked_mul(*d))
}

impl<E: Dtype, D: Device<E>> State<E, D> {
    /// Rows `[batch, width]` as a batch of vectors (item shape `[width]`).
    pub fn from_rows(rows: Rows<E, D>) -> State<E, D> {
        let width = rows.shape().1;
        State {
            rows,
            item: Arc::from([width]),
        }
    }

    /// Rows `[batch, prod(item)]` as a batch of items of shape `item`.
    pub fn with_item(rows: Rows<E, D>, item: &[usize]) -> Result<State<E, D>, RuntimeError> {
        if checked_numel(item) != Some(rows.shape().1) {
            return Err(RuntimeError::Shape(format!(
                "rows of width {} cannot hold items of shape {item:?}",
                rows.shape().1
            )));
        }
        Ok(State {
            rows,
            item: Arc::from(item),
        })
    }

    /// A state of shape `[batch, item...]` from f64 values in C order.
    pub fn from_f64(dev: &D, values: &[f64], shape: &[usize]) -> Result<State<E, D>, RuntimeError> {
        let (batch, item) = shape.split_first().ok_or_else(|| {
            RuntimeError::Shape("a state needs a batch dimension: shape [batch, ...]".into())
        })?;
        let width = checked_numel(item)
            .ok_or_else(|| RuntimeError::Shape(format!("shape {shape:?} is too large")))?;
        if batch.checked_mul(width) != Some(values.len()) {
            return Err(RuntimeError::Shape(format!(
                "{} values do not fill shape {shape:?}",
                values.len()
            )));
        }
        let rows =
            dev.tensor_from_vec(values.iter().map(|v| e::<E>(*v)).collect(), (*batch, width));
        State::with_item(rows, item)
    }

    /// The same item shape for new rows of the same width.
    pub fn like(&self, rows: Rows<E, D>) -> State<E, D> {
        debug_assert_eq!(rows.shape().1, self.rows.shape().1, "row width");
        State {
            rows,
            item: self.item.clone(),
        }
    }

    /// The rows [batch, item size].
    pub fn rows(&self) -> &Rows<E, D> {
        &self.rows
    }

    /// The rows [batch, item size], taken.
    pub fn into_rows(self) -> Rows<E, D> {
        self.rows
    }

    /// The shape of one item.
    pub fn item(&self) -> &[usize] {
        &self.item
    }

    /// The number of items.
    pub fn batch(&self) -> usize {
        self.rows.shape().0
    }

    /// The number of elements of one item.
    pub fn width(&self) -> usize {
        self.rows.shape().1
    }

    /// The full shape `[batch, item...]`.
    pub fn shape(&self) -> Vec<usize> {
        let mut s = vec![self.batch()];
        s.extend_from_slice(&self.item);
        s
    }

    /// The device the state lives on.
    pub fn device(&self) -> D {
        self.rows.device().clone()
    }

    /// The values as f64, in C order (a host copy).
    pub fn to_f64(&self) -> Vec<f64> {
        HostValues::host_f64(&self.rows)
    }

    /// A state of this one's shape, on its device, holding `values` (f64, in C order): a
    /// target like x_0 for a loss, `let target = x_t.with_values(&[1.0, 0.5])?`.
    pub fn with_values(&self, values: &[f64]) -> Result<State<E, D>, RuntimeError> {
        State::from_f64(&self.device(), values, &self.shape())
    }

    /// Zeros of the same shape.
    pub fn zeros_like(&self) -> State<E, D> {
        self.like(self.rows.device().zeros_like(self.rows.shape()))
    }

    /// Whether every element is finite: on the CPU one pass over the values, elsewhere one
    /// reduction (whose sum can also overflow to infinity on finite values that large).
    pub fn is_finite(&self) -> bool {
        host::all_finite(&self.rows).unwrap_or_else(|| {
            self.rows.clone().sum::<Rank0, _>().as_vec()[0]
                .to_f64()
                .is_some_and(|v| v.is_finite())
        })
    }

    /// The affine combination `v_1 c_1 + v_2 c_2 + ...` of `terms` (at least one, all of one
    /// shape), summed left to right in `E`, and whether every element of it is finite. The
    /// plan's steps are such combinations: on the CPU this is one pass over the rows where
    /// dfdx takes an operation (an allocation and a strided loop) per product and per sum,
    /// plus a reduction for the check, and rounds the same (a test compares them bit for bit).
    pub fn combination(terms: &[(&State<E, D>, f64)]) -> (State<E, D>, bool) {
        let (first, rest) = terms
            .split_first()
            .expect("a combination has at least one term");
        debug_assert!(rest.iter().all(|(v, _)| v.same_shape(first.0)), "shapes");
        if let Some((rows, finite)) = host::combination(terms) {
            return (first.0.like(rows), finite);
        }
        let sum = Self::combination_generic(terms);
        let finite = sum.is_finite();
        (sum, finite)
    }

    /// [`State::combination`] in dfdx's operations, without the check.
    fn combination_generic(terms: &[(&State<E, D>, f64)]) -> State<E, D> {
        let mut acc: Option<State<E, D>> = None;
        for (v, c) in terms {
            let term = (*v).clone() * *c;
            acc = Some(match acc {
                None => term,
                Some(a) => a + term,
            });
        }
        acc.expect("a combination has at least one term")
    }

    /// Whether two states have the same shape.
    pub fn same_shape(&self, other: &State<E, D>) -> bool {
        self.rows.shape() == other.rows.shape() && self.item == other.item
    }
}

impl<E: Dtype, D: Device<E>> Add for State<E, D> {
    type Output = State<E, D>;
    fn add(self, rhs: State<E, D>) -> State<E, D> {
        debug_assert!(
            self.same_shape(&rhs),
            "{:?} + {:?}",
            self.shape(),
            rhs.shape()
        );
        State {
            rows: self.rows + rhs.rows,
            item: self.item,
        }
    }
}

impl<E: Dtype, D: Device<E>> Sub for State<E, D> {
    type Output = State<E, D>;
    fn sub(self, rhs: State<E, D>) -> State<E, D> {
        debug_assert!(
            self.same_shape(&rhs),
            "{:?} - {:?}",
            self.shape(),
            rhs.shape()
        );
        State {
            rows: self.rows - rhs.rows,
            item: self.item,
        }
    }
}

impl<E: Dtype, D: Device<E>> Mul<f64> for State<E, D> {
    type Output = State<E, D>;
    fn mul(self, c: f64) -> State<E, D> {
        // x 1 = x exactly: no operation (the conversions and VJPs of a model that predicts
        // what the solver asks for scale by one at every step).
        if c == 1.0 {
            return self;
        }
        State {
            rows: self.rows * e::<E>(c),
            item: self.item,
        }
    }
}

/// The CPU's one-pass versions of the plan's arithmetic ([`crate::host`]).
mod host {
    use dfdx::prelude::*;
    use multiversion::multiversion;

    use super::Rows;
    use crate::host::{as_cpu, from_cpu, values, values_into};
    use crate::nn::Float;

    pub(super) fn all_finite<E: Dtype, D: Device<E>>(rows: &Rows<E, D>) -> Option<bool> {
        fn on<F: Float, E: Dtype, D: Device<E>>(rows: &Rows<E, D>) -> Option<bool> {
            as_cpu::<F, _, E, D>(rows).map(|r| finite(&values(r)))
        }
        on::<f32, E, D>(rows).or_else(|| on::<f64, E, D>(rows))
    }

    pub(super) fn combination<E: Dtype, D: Device<E>>(
        terms: &[(&super::State<E, D>, f64)],
    ) -> Option<(Rows<E, D>, bool)> {
        fn on<F: Float, E: Dtype, D: Device<E>>(
            terms: &[(&super::State<E, D>, f64)],
        ) -> Option<(Rows<E, D>, bool)> {
            let first = as_cpu::<F, _, E, D>(terms[0].0.rows())?;
            let coef = |c: f64| F::from_f64(c).expect("f64 converts to every float dtype");
            let mut out = values(first);
            if terms[0].1 != 1.0 {
                scale(&mut out, coef(terms[0].1));
            }
            // One buffer for every further term's values.
            let mut term = vec![F::zero(); if terms.len() > 1 { out.len() } else { 0 }];
            for (v, c) in &terms[1..] {
                let v = as_cpu::<F, _, E, D>(v.rows()).expect("the terms share one type");
                values_into(v, &mut term);
                add_scaled(&mut out, &term, coef(*c));
            }
            let ok = finite(&out);
            let rows = first.device().tensor_from_vec(out, *first.shape());
            Some((from_cpu::<F, _, E, D>(rows), ok))
        }
        on::<f32, E, D>(terms).or_else(|| on::<f64, E, D>(terms))
    }

    /// out = out c.
    #[multiversion(targets = "simd")]
    fn scale<F: Float>(out: &mut [F], c: F) {
        for o in out.iter_mut() {
            *o *= c;
        }
    }

    /// out = out + v c, the product rounded first as dfdx's `a + v * c` does.
    #[multiversion(targets = "simd")]
    fn add_scaled<F: Float>(out: &mut [F], v: &[F], c: F) {
        for (o, v) in out.iter_mut().zip(v) {
            *o += *v * c;
        }
    }

    /// Whether every value is finite: x 0 is 0 for those, NaN for infinities and NaN, so
    /// lane-wise sums of it stay 0 exactly when all are (no early exit, so it vectorises).
    #[multiversion(targets = "simd")]
    fn finite<F: Float>(v: &[F]) -> bool {
        const LANES: usize = 16;
        let mut acc = [F::zero(); LANES];
        let chunks = v.chunks_exact(LANES);
        let tail = chunks.remainder();
        for chunk in chunks {
            for (a, x) in acc.iter_mut().zip(chunk) {
                *a += *x * F::zero();
            }
        }
        for (a, x) in acc.iter_mut().zip(tail) {
            *a += *x * F::zero();
        }
        acc.iter().all(|a| *a == F::zero())
    }
}

/// Something whose values can be read back to the host as f64.
pub trait HostValues {
    /// The values, C order, as f64.
    fn host_f64(&self) -> Vec<f64>;
}

impl<S: Shape, E: Dtype, D: Device<E>> HostValues for Tensor<S, E, D> {
    fn host_f64(&self) -> Vec<f64> {
        self.as_vec()
            .into_iter()
            .map(|v| v.to_f64().unwrap())
            .collect()
    }
}

impl<E: Dtype, D: Device<E>> HostValues for State<E, D> {
    fn host_f64(&self) -> Vec<f64> {
        self.rows().host_f64()
    }
}

/// A tensor's or a state's values as f64 (host copy, C order).
pub fn to_f64<T: HostValues + ?Sized>(t: &T) -> Vec<f64> {
    t.host_f64()
}

/// A batch of vectors (batch, dim) from f64 values.
pub fn from_f64<E: Dtype, D: Device<E>>(
    dev: &D,
    values: &[f64],
    batch: usize,
    dim: usize,
) -> State<E, D> {
    State::from_rows(rows_from_f64(dev, values, batch, dim))
}

/// Rows (batch, width) from f64 values.
pub fn rows_from_f64<E: Dtype, D: Device<E>>(
    dev: &D,
    values: &[f64],
    batch: usize,
    width: usize,
) -> Rows<E, D> {
    assert_eq!(values.len(), batch * width, "tensor size");
    dev.tensor_from_vec(values.iter().map(|v| e::<E>(*v)).collect(), (batch, width))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::normals;

    /// Rows (batch, width) from f64 values, and the same values read through a transposed
    /// (non-contiguous) view.
    fn rows_pair<E: Dtype>(dev: &Cpu, seed: u64, batch: usize, width: usize) -> [Rows<E, Cpu>; 2]
    where
        Cpu: Device<E>,
    {
        let v = normals(seed, 0, batch * width);
        let plain = dev.tensor_from_vec(v.iter().map(|x| e::<E>(*x)).collect(), (batch, width));
        let mut t = vec![E::default(); batch * width];
        for (i, x) in v.iter().enumerate() {
            t[(i % width) * batch + i / width] = e::<E>(*x);
        }
        let transposed = dev
            .tensor_from_vec(t, (width, batch))
            .permute::<_, Axes2<1, 0>>();
        [plain, transposed]
    }

    fn bits<E: Dtype>(s: &State<E, Cpu>) -> Vec<u64>
    where
        Cpu: Device<E>,
    {
        s.rows()
            .as_vec()
            .iter()
            .map(|v| v.to_f64().unwrap().to_bits())
            .collect()
    }

    fn one_pass_rounds_as_dfdx<E: Dtype>()
    where
        Cpu: Device<E>,
    {
        let dev = Cpu::default();
        // 16 x 67: whole 16-lane chunks and a tail.
        let (batch, width) = (16, 67);
        for which in 0..2 {
            let a = State::from_rows(rows_pair::<E>(&dev, 1, batch, width)[which].clone());
            let b = State::from_rows(rows_pair::<E>(&dev, 2, batch, width)[1 - which].clone());
            let c = State::from_rows(rows_pair::<E>(&dev, 3, batch, width)[which].clone());
            for terms in [
                vec![(&a, 0.3)],
                vec![(&a, 1.0)],
                vec![(&a, 0.9), (&b, -0.1)],
                vec![(&a, 1.0), (&b, 0.7), (&c, -1.3e-3)],
            ] {
                let (fused, finite) = State::combination(&terms);
                assert!(finite);
                let generic = State::combination_generic(&terms);
                assert_eq!(bits(&fused), bits(&generic), "{} terms", terms.len());
                assert_eq!(fused.item(), a.item());
            }
        }
    }

    #[test]
    fn the_one_pass_combination_rounds_as_dfdx_operations() {
        one_pass_rounds_as_dfdx::<f32>();
        one_pass_rounds_as_dfdx::<f64>();
    }

    #[test]
    fn every_non_finite_value_is_found() {
        let dev = Cpu::default();
        let n = 16 * 67;
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            // In the 16-lane chunks and in the tail.
            for at in [0, 17, n - 1] {
                let mut v = vec![0.5f32; n];
                v[at] = bad;
                let s = State::from_rows(dev.tensor_from_vec(v, (16, 67)));
                assert!(!s.is_finite(), "{bad} at {at}");
                let ok = State::from_rows(dev.tensor_from_vec(vec![0.5f32; n], (16, 67)));
                assert!(!State::combination(&[(&ok, 1.0), (&s, 0.5)]).1);
            }
        }
        // A product that overflows is caught where it is formed.
        let big = State::from_rows(dev.tensor_from_vec(vec![3e38f32; n], (16, 67)));
        assert!(big.is_finite());
        assert!(!State::combination(&[(&big, 1.0), (&big, 1.0)]).1);
    }
}

/// `x0 - &target`, `x0 + &offset`, `x0 * &weights` in a loss: a state's values as a constant
/// on the tape's rows (element by element; the state must have x_0's shape).
macro_rules! taped_op_with_state {
    ($trait:ident, $method:ident, $what:literal) => {
        impl<'a, E: Dtype, D: Device<E>> $trait<&'a State<E, D>>
            for Tensor<(usize, usize), E, D, OwnedTape<E, D>>
        {
            fn $method(self, rhs: &'a State<E, D>) -> Result<Self, Self::Err> {
                // A shape mismatch is a bug in the loss, reported as such rather than as
                // dfdx's bare assertion.
                assert_eq!(
                    *self.shape(),
                    *rhs.rows().shape(),
                    concat!(
                        "a loss ",
                        $what,
                        " a state of rows (batch, width) {:?} and x_0's rows {:?}: give a state of x_0's shape"
                    ),
                    rhs.rows().shape(),
                    self.shape()
                );
                self.$method(rhs.rows().clone())
            }
        }
    };
}
taped_op_with_state!(TrySub, try_sub, "subtracts");
taped_op_with_state!(TryAdd, try_add, "adds");
taped_op_with_state!(TryMul, try_mul, "multiplies by");

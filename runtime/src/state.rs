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

    pub fn rows(&self) -> &Rows<E, D> {
        &self.rows
    }

    pub fn into_rows(self) -> Rows<E, D> {
        self.rows
    }

    /// The shape of one item.
    pub fn item(&self) -> &[usize] {
        &self.item
    }

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

    pub fn device(&self) -> D {
        self.rows.device().clone()
    }

    /// The values as f64, in C order (a host copy).
    pub fn to_f64(&self) -> Vec<f64> {
        crate::HostValues::host_f64(&self.rows)
    }

    /// Zeros of the same shape.
    pub fn zeros_like(&self) -> State<E, D> {
        self.like(self.rows.device().zeros_like(self.rows.shape()))
    }

    /// Whether every element is finite (one reduction).
    pub fn is_finite(&self) -> bool {
        self.rows.clone().sum::<Rank0, _>().as_vec()[0]
            .to_f64()
            .is_some_and(|v| v.is_finite())
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
        State {
            rows: self.rows * e::<E>(c),
            item: self.item,
        }
    }
}

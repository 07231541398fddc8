//! Tensors on the CPU seen as host memory. The runtime is generic over dfdx's devices; where a
//! tensor is on the CPU (recognised by its type at run time, `Any`), a loop over its values
//! can replace a chain of dfdx operations (each an allocation and a loop that indexes every
//! element through its strides). Every other device keeps dfdx's operations, so the CUDA path
//! builds and runs as before.

use std::any::Any;

use dfdx::prelude::*;

/// `t` as a CPU tensor of element type `T`, when that is what it is.
pub(crate) fn as_cpu<T: Unit, S: Shape, E: Dtype, D: Device<E>>(
    t: &Tensor<S, E, D>,
) -> Option<&Tensor<S, T, Cpu>> {
    (t as &dyn Any).downcast_ref()
}

/// A CPU tensor of `T` as the tensor of `E` on `D` it is (`as_cpu` found one so).
pub(crate) fn from_cpu<T: Unit, S: Shape, E: Dtype, D: Device<E>>(
    t: Tensor<S, T, Cpu>,
) -> Tensor<S, E, D> {
    let mut slot = Some(t);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<Tensor<S, E, D>>>()
        .and_then(Option::take)
        .expect("E and D are T and Cpu")
}

/// A copy of the values in C order (dfdx copies a contiguous buffer as one block).
pub(crate) fn values<S: Shape, T: Dtype>(t: &Tensor<S, T, Cpu>) -> Vec<T> {
    let mut out = vec![T::default(); t.shape().num_elements()];
    values_into(t, &mut out);
    out
}

/// [`values`] into `out`, which has the tensor's number of elements.
pub(crate) fn values_into<S: Shape, T: Dtype>(t: &Tensor<S, T, Cpu>, out: &mut [T]) {
    t.clone().contiguous().copy_into(out);
}

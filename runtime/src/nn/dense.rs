//! A fully connected layer, y = x W^T + b, as a dfdx module: a drop-in for dfdx's `Linear`
//! (the same tensors under the same names, `weight` `[O, I]` and `bias` `[O]`, the same
//! initialisation, so modules built from it load the same safetensors files and train with
//! dfdx's optimisers), whose CPU forward and backward multiply with `gemm` 0.19 (AVX-512 where
//! the CPU has it) and stay on one thread for small products, where dfdx's `gemm` 0.15 spends
//! more time scheduling threads than multiplying. Other devices run dfdx's matmul.

use std::sync::{Arc, OnceLock};

use dfdx::nn::{
    BuildModule, BuildOnDevice, Module, ModuleVisitor, NonMutableModule, TensorCollection,
    TensorOptions,
};
use dfdx::prelude::*;
use rand_distr::Uniform;

use super::{Float, NnDevice};

/// The builder: `Dense<I, O>` in a module type, as dfdx's `Linear<I, O>`.
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
pub struct Dense<const I: usize, const O: usize>;

impl<
        const I: usize,
        const O: usize,
        E: Float + rand_distr::uniform::SampleUniform,
        D: NnDevice<E>,
    > BuildOnDevice<D, E> for Dense<I, O>
where
    DenseLinear<I, O, E, D>: BuildModule<D, E>,
{
    type Built = DenseLinear<I, O, E, D>;
    fn try_build_on_device(device: &D) -> Result<Self::Built, D::Err> {
        Self::Built::try_build(device)
    }
}

/// The built layer. Its tensors change only through dfdx's module visitors (optimisers,
/// loading, resetting), which also drop the host copy the CPU kernel reads.
#[derive(Debug, Clone)]
pub struct DenseLinear<const I: usize, const O: usize, E: Dtype, D: Storage<E>> {
    weight: Tensor<Rank2<O, I>, E, D>,
    bias: Tensor<Rank1<O>, E, D>,
    host: OnceLock<Arc<HostWeights<E>>>,
}

/// The host copies the kernel multiplies with. The forward pass reads the weight transposed,
/// [I, O] row-major: `gemm` packs W^T from that layout several times faster than from W's own
/// (measured on W2's shapes, 64 x 2048 x 2048: 2.0 ms against 8.7 ms); the input's gradient
/// reads W itself.
#[derive(Debug)]
pub(crate) struct HostWeights<E> {
    /// [out, in]
    pub weight: Vec<E>,
    /// [in, out]
    pub weight_t: Vec<E>,
    pub bias: Vec<E>,
    /// (out, in)
    pub dims: (usize, usize),
}

impl<E: Dtype> HostWeights<E> {
    /// Copies `weight` [o, i] and `bias` [o] (zeros without one) to the host.
    pub fn copy_of<S: Shape, B: Shape, D: Device<E>>(
        weight: &Tensor<S, E, D>,
        bias: Option<&Tensor<B, E, D>>,
        (o, i): (usize, usize),
    ) -> Arc<Self> {
        let mut w = vec![E::default(); o * i];
        weight.copy_into(&mut w);
        let mut b = vec![E::default(); o];
        if let Some(bias) = bias {
            bias.copy_into(&mut b);
        }
        Arc::new(HostWeights::new(w, b, (o, i)))
    }

    fn new(weight: Vec<E>, bias: Vec<E>, (o, i): (usize, usize)) -> Self {
        let mut weight_t = vec![E::default(); o * i];
        for (r, row) in weight.chunks_exact(i).enumerate() {
            for (c, w) in row.iter().enumerate() {
                weight_t[c * o + r] = *w;
            }
        }
        HostWeights {
            weight,
            weight_t,
            bias,
            dims: (o, i),
        }
    }
}

impl<const I: usize, const O: usize, E: Dtype, D: Device<E>> DenseLinear<I, O, E, D> {
    /// The weight [O, I].
    pub fn weight(&self) -> &Tensor<Rank2<O, I>, E, D> {
        &self.weight
    }

    /// The bias `[O]`.
    pub fn bias(&self) -> &Tensor<Rank1<O>, E, D> {
        &self.bias
    }

    /// The weight and bias as host vectors (made once until the tensors change).
    pub(crate) fn host(&self) -> Arc<HostWeights<E>> {
        Arc::clone(
            self.host
                .get_or_init(|| HostWeights::copy_of(&self.weight, Some(&self.bias), (O, I))),
        )
    }

    /// Mutable access to the weight (the host copy is made again on the next call).
    fn weight_mut(&mut self) -> &mut Tensor<Rank2<O, I>, E, D> {
        self.host = OnceLock::new();
        &mut self.weight
    }

    fn bias_mut(&mut self) -> &mut Tensor<Rank1<O>, E, D> {
        self.host = OnceLock::new();
        &mut self.bias
    }
}

impl<const I: usize, const O: usize, E: Dtype, D: Storage<E>> NonMutableModule
    for DenseLinear<I, O, E, D>
{
}

impl<const I: usize, const O: usize, E, D> TensorCollection<E, D> for DenseLinear<I, O, E, D>
where
    E: Dtype + num_traits::Float + rand_distr::uniform::SampleUniform,
    D: Device<E>,
{
    type To<E2: Dtype, D2: Device<E2>> = DenseLinear<I, O, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::tensor(
                    "weight",
                    |s| &s.weight,
                    |s| s.weight_mut(),
                    uniform::<I, _, E, D>(),
                ),
                Self::tensor(
                    "bias",
                    |s| &s.bias,
                    |s| s.bias_mut(),
                    uniform::<I, _, E, D>(),
                ),
            ),
            |(weight, bias)| DenseLinear {
                weight,
                bias,
                host: OnceLock::new(),
            },
        )
    }
}

/// dfdx's `Linear` initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
fn uniform<const FAN_IN: usize, S: ConstShape, E, D>() -> TensorOptions<S, E, D>
where
    E: Dtype + num_traits::Float + rand_distr::uniform::SampleUniform,
    D: Device<E>,
{
    TensorOptions::reset_with(|t| {
        let b: E = E::one() / E::from(FAN_IN).unwrap().sqrt();
        t.try_fill_with_distr(Uniform::new(-b, b))
    })
}

impl<const I: usize, const O: usize, E: Float, D: NnDevice<E>, T: Tape<E, D>>
    Module<Tensor<(usize, Const<I>), E, D, T>> for DenseLinear<I, O, E, D>
{
    type Output = Tensor<(usize, Const<O>), E, D, T>;
    type Error = D::Err;

    fn try_forward(&self, x: Tensor<(usize, Const<I>), E, D, T>) -> Result<Self::Output, D::Err> {
        Ok(D::dense(self, x))
    }
}

impl<const I: usize, const O: usize, E: Float, D: Device<E>> DenseLinear<I, O, E, D> {
    /// The layer through dfdx's matmul (the path of devices without the kernel).
    pub fn forward_generic<T: Tape<E, D>>(
        &self,
        x: Tensor<(usize, Const<I>), E, D, T>,
    ) -> Tensor<(usize, Const<O>), E, D, T> {
        let n = x.shape().0;
        let y = x.matmul(self.weight.retaped::<T>().permute());
        y + self.bias.retaped::<T>().broadcast_like(&(n, Const::<O>))
    }
}

/// The CPU kernel and its backward pass on dfdx's tape, for [`DenseLinear`] and for the
/// runtime-shaped [`crate::nn::Linear`] of the UNet alike.
pub(crate) mod cpu {
    use std::sync::Arc;

    use dfdx::prelude::*;

    use super::{DenseLinear, HostWeights};
    use crate::nn::gemm::matmul;
    use crate::nn::transpose::transpose_into;
    use crate::nn::{take_output_grad, Float, Linear, ParamGrads};

    pub fn dense<const I: usize, const O: usize, E: Float, T: Tape<E, Cpu>>(
        layer: &DenseLinear<I, O, E, Cpu>,
        x: Tensor<(usize, Const<I>), E, Cpu, T>,
    ) -> Tensor<(usize, Const<O>), E, Cpu, T>
    where
        Cpu: Device<E>,
        <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
    {
        let n = x.shape().0;
        rows(
            x,
            (n, Const::<O>),
            layer.host(),
            (layer.weight(), Some(layer.bias())),
            ParamGrads::Compute,
        )
    }

    pub fn linear_rows<E: Float, T: Tape<E, Cpu>>(
        layer: &Linear<E, Cpu>,
        x: Tensor<(usize, usize), E, Cpu, T>,
        params: ParamGrads,
    ) -> Tensor<(usize, usize), E, Cpu, T>
    where
        Cpu: Device<E>,
        <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
    {
        let (n, i) = *x.shape();
        assert_eq!(i, layer.in_features(), "the linear map's input width");
        let out = (n, layer.out_features());
        rows(x, out, layer.host(), (layer.weight(), layer.bias()), params)
    }

    /// A layer's weight and bias tensors (their gradients' keys).
    type Params<'a, W, B, E> = (&'a Tensor<W, E, Cpu>, Option<&'a Tensor<B, E, Cpu>>);

    /// Whether a product whose output has `n` rows of `width` columns, with a weight of
    /// `weight_len` elements, runs faster transposed: outᵀ [width x n] = W xᵀ, the rows of the
    /// batch as the product's columns. `gemm` reaches its peak when the small dimension is the
    /// output's column count; with the batch as rows a weight past the caches runs at 60-70% of
    /// it. Measured on this machine's Zen 4 (batch 64: 2048 x 824 0.68 -> 0.61 ms, 2048 x 2048
    /// 2.0 -> 1.5 ms, transposes included; 784 x 2048 and 1024 x 1024 no faster, and below
    /// that the transposes cost more than they save). One row is its own transpose.
    fn runs_transposed(n: usize, width: usize, weight_len: usize) -> bool {
        n == 1 || (width >= 16 * n && weight_len >= 3 << 19)
    }

    /// The rows [n x p] of x Mᵀ + bias, for x [n x q] and M [p x q] row-major, computed as
    /// M xᵀ between two transposes (the layout where `gemm` is fastest, [`runs_transposed`]).
    fn times_transposed<E: Float>(
        x: &[E],
        (n, q): (usize, usize),
        m: &[E],
        p: usize,
        bias: Option<&[E]>,
    ) -> Vec<E> {
        let mut xt = vec![E::zero(); n * q];
        transpose_into(x, (n, q), &mut xt);
        let mut out_t = vec![E::zero(); n * p];
        if let Some(bias) = bias {
            for (row, b) in out_t.chunks_exact_mut(n).zip(bias) {
                row.fill(*b);
            }
        }
        // SAFETY: out_t [p x n] (+)= M [p x q] xt [q x n], all row-major and of those sizes.
        unsafe {
            matmul(
                (p, n, q),
                (out_t.as_mut_ptr(), n, bias.is_some()),
                (m.as_ptr(), q, 1),
                (xt.as_ptr(), n, 1),
            );
        }
        let mut out = vec![E::zero(); n * p];
        transpose_into(&out_t, (p, n), &mut out);
        out
    }

    /// out = x W^T + b on n rows, and the backward pass: dx += go W, and with
    /// `ParamGrads::Compute` dW += go^T x and db += the column sums of go (otherwise the input
    /// is not kept: only dW reads it).
    fn rows<S: Shape, S2: Shape, W: Shape, B: Shape, E: Float, T: Tape<E, Cpu>>(
        x: Tensor<S, E, Cpu, T>,
        out_shape: S2,
        host: Arc<HostWeights<E>>,
        (weight, bias): Params<'_, W, B, E>,
        params: ParamGrads,
    ) -> Tensor<S2, E, Cpu, T>
    where
        Cpu: Device<E>,
        <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
    {
        let (o, i) = host.dims;
        let (x, mut tape) = x.contiguous().split_tape();
        let mut xs = vec![E::zero(); x.shape().num_elements()];
        x.copy_into(&mut xs);
        let n = xs.len() / i;
        let out = if runs_transposed(n, o, o * i) {
            times_transposed(&xs, (n, i), &host.weight, o, Some(&host.bias))
        } else {
            let mut out = Vec::with_capacity(n * o);
            for _ in 0..n {
                out.extend_from_slice(&host.bias);
            }
            // SAFETY: out [n x o] += xs [n x i] W^T [i x o], W^T row-major.
            unsafe {
                matmul(
                    (n, o, i),
                    (out.as_mut_ptr(), o, true),
                    (xs.as_ptr(), i, 1),
                    (host.weight_t.as_ptr(), o, 1),
                );
            }
            out
        };
        let out = x.device().tensor_from_vec(out, out_shape);
        let xs = (params == ParamGrads::Compute).then_some(xs);
        if T::OWNS_TAPE {
            let (x_ghost, out_ghost) = (x.ghost(), out.ghost());
            let (w_ghost, b_ghost) = (weight.ghost(), bias.map(|b| b.ghost()));
            tape.add_backward_op(move |grads| {
                let go = take_output_grad(grads.get_or_alloc_mut(&out_ghost)?);
                let dx = grads.get_or_alloc_mut(&x_ghost)?;
                if runs_transposed(n, i, o * i) {
                    // dx += go W = go (Wᵀ)ᵀ.
                    let dx_rows = times_transposed(&go, (n, o), &host.weight_t, i, None);
                    for (d, v) in dx.iter_mut().zip(&dx_rows) {
                        *d += *v;
                    }
                } else {
                    // SAFETY: dx [n x i] += go [n x o] W [o x i].
                    unsafe {
                        matmul(
                            (n, i, o),
                            (dx.as_mut_ptr(), i, true),
                            (go.as_ptr(), o, 1),
                            (host.weight.as_ptr(), i, 1),
                        );
                    }
                }
                let Some(xs) = &xs else {
                    return Ok(());
                };
                let dw = grads.get_or_alloc_mut(&w_ghost)?;
                // SAFETY: dW [o x i] += go^T [o x n] xs [n x i].
                unsafe {
                    matmul(
                        (o, i, n),
                        (dw.as_mut_ptr(), i, true),
                        (go.as_ptr(), 1, o),
                        (xs.as_ptr(), i, 1),
                    );
                }
                if let Some(b) = &b_ghost {
                    let db = grads.get_or_alloc_mut(b)?;
                    for row in go.chunks_exact(o) {
                        for (d, g) in db.iter_mut().zip(row) {
                            *d += *g;
                        }
                    }
                }
                Ok(())
            });
        }
        out.put_tape(tape)
    }
}

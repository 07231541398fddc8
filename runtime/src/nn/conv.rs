//! 2-D convolution with stride, asymmetric zero padding and an optional bias, with its exact
//! VJP with respect to the input, the weight and the bias.
//!
//! On the CPU it is a custom operation on dfdx's tape: the input is unfolded (im2col) into a
//! [C kh kw, Ho Wo] matrix per image and multiplied by the weight with `gemm` (the crate dfdx
//! multiplies with); the backward pass recomputes the unfolding rather than keeping it (one
//! more pass over the input instead of kh kw copies of it per layer), and folds the input's
//! gradient back (col2im). With a stride of 1 the forward pass unfolds by rows instead
//! (`im2row`: kw copies of the image, kh products), and the input's gradient is a convolution
//! of the output's gradient by rows with the flipped kernel, without col2im: on W3's 3x3
//! 128 -> 128 at 32x32, forward + backward w.r.t. x took 6.5 ms with im2col, 4.8 with the
//! forward by rows and 3.8 with the gradient by rows too, in runs minutes apart on a noisy
//! machine (`cargo bench --bench unet_layers -- conv3x3`). A 1x1 convolution with stride 1 and no padding is a plain
//! GEMM on the input. [`conv2d_generic`] is the same convolution through dfdx's operations (an
//! im2col by `gather`, a batched matmul): the path of devices without the custom kernel, and
//! the reference the custom one is tested against.

use std::sync::{Arc, OnceLock};

use dfdx::prelude::*;

use super::{Float, Image};

/// A 2-D convolution's parameters and geometry.
#[derive(Clone, Debug)]
pub struct Conv2d<E: Dtype, D: Storage<E>> {
    /// [out, in kh kw]: diffusers' [out, in, kh, kw] in the same memory order.
    weight: Tensor<(usize, usize), E, D>,
    bias: Option<Tensor<(usize,), E, D>>,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// (kh, kw)
    pub kernel: (usize, usize),
    /// The stride, the same along both axes.
    pub stride: usize,
    /// Zero padding (top, left, bottom, right).
    pub padding: [usize; 4],
    /// The weight and bias as host vectors, made on the CPU kernel's first call: dfdx gives a
    /// tensor's values only as a copy, and copying 36M weights per network call would cost
    /// a tenth of it. The parameters are private so that the copy cannot go stale.
    host: OnceLock<Arc<HostParams<E>>>,
}

#[derive(Debug)]
struct HostParams<E> {
    /// The weight as [out, in kh kw], kept where a product reads it in that layout (a
    /// convolution that does not unfold by rows, or whose input's gradient is not by rows).
    weight: Option<Vec<E>>,
    /// For a convolution the forward pass unfolds by rows (`Conv2d::unfolds_by_rows`), the
    /// weight as [kh, out, in kw]: one [out, in kw] matrix per tap row.
    weight_by_tap_row: Option<Vec<E>>,
    /// Whether the input's gradient is a convolution by rows (`Conv2d::input_grad_by_rows`).
    input_grad_by_rows: bool,
    /// That convolution's weight (the kernel flipped, in and out exchanged) as [kh, in, out kw],
    /// made on the first backward pass: sampling keeps one host copy of the weights.
    input_grad_weight_by_tap_row: OnceLock<Vec<E>>,
    bias: Option<Vec<E>>,
}

impl<E: Copy> HostParams<E> {
    /// The input gradient's weight by tap row for a convolution of (out, in, kh, kw), where
    /// the input's gradient is by rows.
    fn input_grad_weight(&self, (co, ci, kh, kw): (usize, usize, usize, usize)) -> Option<&[E]> {
        let rows = self
            .weight_by_tap_row
            .as_deref()
            .filter(|_| self.input_grad_by_rows)?;
        Some(self.input_grad_weight_by_tap_row.get_or_init(|| {
            let mut flipped = Vec::with_capacity(rows.len());
            for dy in 0..kh {
                for c in 0..ci {
                    for o in 0..co {
                        // Tap row kh - 1 - dy of output o, input c's columns, reversed.
                        let at = ((kh - 1 - dy) * co + o) * ci * kw + c * kw;
                        flipped.extend(rows[at..at + kw].iter().rev());
                    }
                }
            }
            flipped
        }))
    }
}

impl<E: Dtype, D: Storage<E>> Conv2d<E, D> {
    /// A convolution with `weight` `[out, in kh kw]` and `bias` `[out]`.
    pub fn new(
        weight: Tensor<(usize, usize), E, D>,
        bias: Option<Tensor<(usize,), E, D>>,
        kernel: (usize, usize),
        stride: usize,
        padding: [usize; 4],
    ) -> Self {
        let (out_channels, k) = *weight.shape();
        assert_eq!(
            k % (kernel.0 * kernel.1),
            0,
            "the weight's columns are in kh kw"
        );
        if let Some(b) = &bias {
            assert_eq!(b.shape().0, out_channels, "one bias per output channel");
        }
        Conv2d {
            weight,
            bias,
            in_channels: k / (kernel.0 * kernel.1),
            out_channels,
            kernel,
            stride,
            padding,
            host: OnceLock::new(),
        }
    }

    /// The weight, [out, in kh kw].
    pub fn weight(&self) -> &Tensor<(usize, usize), E, D> {
        &self.weight
    }

    /// The bias `[out]`, if the convolution has one.
    pub fn bias(&self) -> Option<&Tensor<(usize,), E, D>> {
        self.bias.as_ref()
    }

    /// The same convolution with another weight of the same shape.
    pub fn with_weight(&self, weight: Tensor<(usize, usize), E, D>) -> Self {
        assert_eq!(weight.shape(), self.weight.shape(), "the weight's shape");
        Conv2d::new(
            weight,
            self.bias.clone(),
            self.kernel,
            self.stride,
            self.padding,
        )
    }

    fn host(&self) -> Arc<HostParams<E>> {
        Arc::clone(self.host.get_or_init(|| {
            let weight = self.weight.as_vec();
            let (kh, kw) = self.kernel;
            let weight_by_tap_row = self.unfolds_by_rows().then(|| {
                let (co, ci) = (self.out_channels, self.in_channels);
                let mut rows = Vec::with_capacity(weight.len());
                for dy in 0..kh {
                    for o in 0..co {
                        for c in 0..ci {
                            let at = ((o * ci + c) * kh + dy) * kw;
                            rows.extend_from_slice(&weight[at..at + kw]);
                        }
                    }
                }
                rows
            });
            let input_grad_by_rows = self.input_grad_by_rows();
            Arc::new(HostParams {
                weight: (!input_grad_by_rows).then_some(weight),
                weight_by_tap_row,
                input_grad_by_rows,
                input_grad_weight_by_tap_row: OnceLock::new(),
                bias: self.bias.as_ref().map(|b| b.as_vec()),
            })
        }))
    }

    /// Whether the CPU forward pass unfolds the input by rows: for a stride of 1 and a kernel
    /// more than one row high, the unfolding for tap row dy is that of tap row 0 shifted by dy
    /// output rows, so one unfolding with a column per tap column (kw copies of the image
    /// instead of kh kw) serves as kh matrix operands, one per tap row.
    fn unfolds_by_rows(&self) -> bool {
        self.stride == 1 && self.kernel.0 > 1
    }

    /// Whether the CPU backward pass computes the input's gradient as a convolution by rows:
    /// with a stride of 1, dx = go convolved with the flipped kernel (in and out exchanged)
    /// under padding kh - 1 - pt, ..., which is a padding where each side's is below the
    /// kernel's size. Then no [in kh kw, positions] gradient is formed and folded back.
    fn input_grad_by_rows(&self) -> bool {
        let (kh, kw) = self.kernel;
        let [pt, pl, pb, pr] = self.padding;
        self.unfolds_by_rows() && pt < kh && pb < kh && pl < kw && pr < kw
    }

    /// The output's (height, width) for an input of (h, w).
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let [pt, pl, pb, pr] = self.padding;
        let (kh, kw) = self.kernel;
        (
            (h + pt + pb - kh) / self.stride + 1,
            (w + pl + pr - kw) / self.stride + 1,
        )
    }

    /// Whether the convolution is a plain matrix product on the input (1x1, stride 1, no pad).
    fn is_pointwise(&self) -> bool {
        self.kernel == (1, 1) && self.stride == 1 && self.padding == [0; 4]
    }

    /// For each tap (dy, dx) and output position (oy, ox), the index into an image of (h, w),
    /// or `h * w` where the tap falls on the padding.
    fn tap_indices(&self, h: usize, w: usize) -> Vec<usize> {
        let (ho, wo) = self.out_size(h, w);
        let (kh, kw) = self.kernel;
        let [pt, pl, _, _] = self.padding;
        let mut idx = Vec::with_capacity(kh * kw * ho * wo);
        for dy in 0..kh {
            for dx in 0..kw {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let (iy, ix) = (oy * self.stride + dy, ox * self.stride + dx);
                        let inside = iy >= pt && iy < h + pt && ix >= pl && ix < w + pl;
                        idx.push(if inside {
                            (iy - pt) * w + (ix - pl)
                        } else {
                            h * w
                        });
                    }
                }
            }
        }
        idx
    }
}

/// The convolution through dfdx's operations: each image row of every channel gets a zero
/// appended (the padding), `gather` unfolds it, and a batched matmul applies the weight.
pub fn conv2d_generic<E: Float, D: Device<E>, T: Tape<E, D>>(
    conv: &Conv2d<E, D>,
    x: Image<E, D, T>,
) -> Image<E, D, T> {
    let (b, ci, h, w) = *x.shape();
    assert_eq!(ci, conv.in_channels, "the convolution's input channels");
    let (ho, wo) = conv.out_size(h, w);
    let (kh, kw) = conv.kernel;
    let (co, k, n) = (conv.out_channels, ci * kh * kw, ho * wo);
    let dev = x.device().clone();
    let rows = x.contiguous().reshape_like(&(b * ci, h * w));
    let ext = (rows, dev.zeros_like(&(b * ci, 1))).concat_along(Axis::<1>);
    let pattern = conv.tap_indices(h, w);
    let mut idx = Vec::with_capacity(b * ci * pattern.len());
    for _ in 0..b * ci {
        idx.extend_from_slice(&pattern);
    }
    let idx = dev.tensor_from_vec(idx, (b * ci, kh * kw * n));
    let cols: Tensor<(usize, usize), E, D, T> = ext.gather(idx);
    let cols = cols.reshape_like(&(b, k, n));
    let weight = conv
        .weight
        .clone()
        .retaped::<T>()
        .broadcast_like::<_, Axis<0>>(&(b, co, k));
    let mut out = weight.matmul(cols);
    if let Some(bias) = &conv.bias {
        out = out
            + bias
                .clone()
                .retaped::<T>()
                .broadcast_like::<_, Axes2<0, 2>>(&(b, co, n));
    }
    out.reshape_like(&(b, co, ho, wo))
}

/// The CPU kernel: im2col, `gemm`, and a backward pass registered on dfdx's tape.
pub(crate) mod cpu {
    use std::mem::MaybeUninit;

    use dfdx::prelude::*;
    use rayon::prelude::*;

    use super::{Conv2d, HostParams};
    use crate::nn::gemm::matmul;
    use crate::nn::{min_items_per_task, take_output_grad, Float, Image, ParamGrads};

    /// The sizes of one convolution call.
    #[derive(Clone, Copy, Debug)]
    struct Geometry {
        batch: usize,
        ci: usize,
        co: usize,
        h: usize,
        w: usize,
        ho: usize,
        wo: usize,
        kh: usize,
        kw: usize,
        stride: usize,
        pt: usize,
        pl: usize,
        pointwise: bool,
    }

    impl Geometry {
        fn k(&self) -> usize {
            self.ci * self.kh * self.kw
        }
        fn n(&self) -> usize {
            self.ho * self.wo
        }
        fn image(&self) -> usize {
            self.ci * self.h * self.w
        }

        /// The geometry of the input's gradient as a convolution of the output's gradient
        /// (stride 1, `Conv2d::input_grad_by_rows`): channels and sizes exchanged, padding
        /// kh - 1 - pt on top and kw - 1 - pl on the left (the other sides follow from the
        /// sizes).
        fn input_grad(&self) -> Geometry {
            Geometry {
                ci: self.co,
                co: self.ci,
                h: self.ho,
                w: self.wo,
                ho: self.h,
                wo: self.w,
                pt: self.kh - 1 - self.pt,
                pl: self.kw - 1 - self.pl,
                ..*self
            }
        }

        /// The input row of output row `oy` under tap row `dy`, None on the padding.
        fn input_row(&self, oy: usize, dy: usize) -> Option<usize> {
            let iy = oy * self.stride + dy;
            (iy >= self.pt && iy < self.h + self.pt).then(|| iy - self.pt)
        }

        /// The output columns lo..hi whose tap column `dx` falls inside the image: those
        /// with pl <= ox s + dx < w + pl. Input column of ox: ox s + dx - pl.
        fn inside_columns(&self, dx: usize) -> (usize, usize) {
            let s = self.stride;
            let hi = (self.w + self.pl)
                .checked_sub(dx)
                .map_or(0, |end| end.div_ceil(s).min(self.wo));
            let lo = self.pl.saturating_sub(dx).div_ceil(s).min(hi);
            (lo, hi)
        }
    }

    /// The unfolded image: cols[(c kh + dy) kw + dx, oy wo + ox] = x[c, oy s + dy - pt, ...].
    /// It writes every element of `cols` (the padding's as zeros), so `cols` may start
    /// uninitialised: zero-filling a buffer this size first cost 2% of a W3 gradient.
    fn im2col<E: Float>(g: &Geometry, x: &[E], cols: &mut [MaybeUninit<E>]) {
        let taps = g.kh * g.kw;
        cols.par_chunks_mut(taps * g.n())
            .enumerate()
            .with_min_len(min_items_per_task(taps * g.n()))
            .for_each(|(c, block)| {
                let xc = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
                for dy in 0..g.kh {
                    for dx in 0..g.kw {
                        let row = &mut block[(dy * g.kw + dx) * g.n()..][..g.n()];
                        let (lo, hi) = g.inside_columns(dx);
                        for oy in 0..g.ho {
                            let dst = &mut row[oy * g.wo..(oy + 1) * g.wo];
                            let zero = MaybeUninit::new(E::zero());
                            let Some(iy) = g.input_row(oy, dy) else {
                                dst.fill(zero);
                                continue;
                            };
                            let src = &xc[iy * g.w..(iy + 1) * g.w];
                            dst[..lo].fill(zero);
                            dst[hi..].fill(zero);
                            if g.stride == 1 {
                                let first = lo + dx - g.pl;
                                dst[lo..hi].write_copy_of_slice(&src[first..first + hi - lo]);
                            } else {
                                for (ox, d) in dst[lo..hi].iter_mut().enumerate() {
                                    d.write(src[(lo + ox) * g.stride + dx - g.pl]);
                                }
                            }
                        }
                    }
                }
            });
    }

    /// The unfolding by rows (stride 1): rows[c kw + dx, yp wo + ox] = x[c, yp - pt, ox + dx - pl]
    /// (zero on the padding) for yp over the padded image's ho + kh - 1 rows. Its columns from
    /// dy wo on, ho wo of them, are tap row dy's rows of the unfolding [`im2col`] makes. It
    /// writes every element, so `rows` may start uninitialised.
    fn im2row<E: Float>(g: &Geometry, x: &[E], rows: &mut [MaybeUninit<E>]) {
        let padded = g.ho + g.kh - 1;
        let plane = padded * g.wo;
        rows.par_chunks_mut(g.kw * plane)
            .enumerate()
            .with_min_len(min_items_per_task(g.kw * plane))
            .for_each(|(c, block)| {
                let xc = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
                let zero = MaybeUninit::new(E::zero());
                for dx in 0..g.kw {
                    let (lo, hi) = g.inside_columns(dx);
                    for yp in 0..padded {
                        let dst = &mut block[dx * plane + yp * g.wo..][..g.wo];
                        let Some(iy) = yp.checked_sub(g.pt).filter(|iy| *iy < g.h) else {
                            dst.fill(zero);
                            continue;
                        };
                        let src = &xc[iy * g.w..(iy + 1) * g.w];
                        let first = lo + dx - g.pl;
                        dst[..lo].fill(zero);
                        dst[hi..].fill(zero);
                        dst[lo..hi].write_copy_of_slice(&src[first..first + hi - lo]);
                    }
                }
            });
    }

    /// The adjoint of [`im2col`]: dx += fold(dcols).
    fn col2im<E: Float>(g: &Geometry, dcols: &[E], dx: &mut [E]) {
        let taps = g.kh * g.kw;
        dx.par_chunks_mut(g.h * g.w)
            .enumerate()
            .with_min_len(min_items_per_task(taps * g.n()))
            .for_each(|(c, dxc)| {
                let block = &dcols[c * taps * g.n()..(c + 1) * taps * g.n()];
                for dy in 0..g.kh {
                    for dx_ in 0..g.kw {
                        let row = &block[(dy * g.kw + dx_) * g.n()..][..g.n()];
                        let (lo, hi) = g.inside_columns(dx_);
                        for oy in 0..g.ho {
                            let Some(iy) = g.input_row(oy, dy) else {
                                continue;
                            };
                            let dst = &mut dxc[iy * g.w..(iy + 1) * g.w];
                            let src = &row[oy * g.wo + lo..oy * g.wo + hi];
                            if g.stride == 1 {
                                let first = lo + dx_ - g.pl;
                                for (d, v) in dst[first..first + hi - lo].iter_mut().zip(src) {
                                    *d += *v;
                                }
                            } else {
                                for (ox, v) in src.iter().enumerate() {
                                    dst[(lo + ox) * g.stride + dx_ - g.pl] += *v;
                                }
                            }
                        }
                    }
                }
            });
    }

    /// The GEMM's right operand for image `bi`: the image itself for a pointwise convolution,
    /// else its unfolding in `cols` (a buffer of the unfolding's capacity).
    fn unfolded<'a, E: Float>(
        g: &Geometry,
        x: &'a [E],
        bi: usize,
        cols: &'a mut Vec<E>,
    ) -> &'a [E] {
        let xb = &x[bi * g.image()..(bi + 1) * g.image()];
        if g.pointwise {
            xb
        } else {
            cols.clear();
            im2col(g, xb, &mut cols.spare_capacity_mut()[..g.k() * g.n()]);
            // SAFETY: im2col wrote all k n elements.
            unsafe { cols.set_len(g.k() * g.n()) };
            cols
        }
    }

    /// A buffer for one image's unfolding, or none for a pointwise convolution.
    fn scratch<E: Float>(g: &Geometry) -> Vec<E> {
        Vec::with_capacity(if g.pointwise { 0 } else { g.k() * g.n() })
    }

    /// A buffer for one image's unfolding by rows.
    fn row_scratch<E: Float>(g: &Geometry) -> Vec<E> {
        Vec::with_capacity(g.ci * g.kw * (g.ho + g.kh - 1) * g.wo)
    }

    /// dst [co x n] (+)= the convolution of one image `xb` by rows (stride 1): `xb` unfolded
    /// by [`im2row`] into `cols` (a [`row_scratch`] buffer), then kh products, tap row dy's
    /// weight [co x ci kw] (from `weight_rows`, [kh, co, ci kw]) times the unfolding's
    /// columns from dy wo on. `acc`: whether the first product adds to dst.
    ///
    /// # Safety
    /// dst must cover [co x n]; with `acc` it must be initialised.
    unsafe fn product_by_rows<E: Float>(
        g: &Geometry,
        xb: &[E],
        weight_rows: &[E],
        (dst, acc): (*mut E, bool),
        cols: &mut Vec<E>,
    ) {
        let len = cols.capacity();
        cols.clear();
        im2row(g, xb, &mut cols.spare_capacity_mut()[..len]);
        // SAFETY: im2row wrote every element.
        unsafe { cols.set_len(len) };
        let (n, kr, plane) = (g.n(), g.ci * g.kw, (g.ho + g.kh - 1) * g.wo);
        for dy in 0..g.kh {
            // SAFETY: dst [co x n] (+)= [co x ci kw] times [ci kw x n] with row stride
            // `plane`, inside cols; the first product reads dst only with `acc`.
            unsafe {
                matmul(
                    (g.co, n, kr),
                    (dst, n, dy > 0 || acc),
                    (weight_rows[dy * g.co * kr..].as_ptr(), kr, 1),
                    (cols[dy * g.wo..].as_ptr(), plane, 1),
                );
            }
        }
    }

    fn forward<E: Float>(g: &Geometry, x: &[E], params: &HostParams<E>) -> Vec<E> {
        let (k, n) = (g.k(), g.n());
        let bias = params.bias.as_deref();
        // Not zero-filled: each image's block is written whole, by the bias rows and the
        // products added to them, or by the first product.
        let mut out: Vec<E> = Vec::with_capacity(g.batch * g.co * n);
        // The weight by tap row is there exactly where the convolution unfolds by rows.
        let by_rows = params.weight_by_tap_row.as_deref();
        let mut cols = match by_rows {
            Some(_) => row_scratch(g),
            None => scratch(g),
        };
        for bi in 0..g.batch {
            let ob = &mut out.spare_capacity_mut()[bi * g.co * n..(bi + 1) * g.co * n];
            if let Some(bias) = bias {
                for (row, bv) in ob.chunks_exact_mut(n).zip(bias) {
                    row.fill(MaybeUninit::new(*bv));
                }
            }
            let ob = ob.as_mut_ptr().cast::<E>();
            match by_rows {
                Some(weight_rows) => {
                    let xb = &x[bi * g.image()..(bi + 1) * g.image()];
                    // SAFETY: ob is [co x n], read only where the bias rows initialised it.
                    unsafe { product_by_rows(g, xb, weight_rows, (ob, bias.is_some()), &mut cols) };
                }
                None => {
                    let weight = params.weight.as_deref().expect("kept where it is read");
                    let colsb = unfolded(g, x, bi, &mut cols);
                    // SAFETY: ob is [co x n], weight [co x k], colsb [k x n], all row-major;
                    // the product reads ob only where the bias rows initialised it.
                    unsafe {
                        matmul(
                            (g.co, n, k),
                            (ob, n, bias.is_some()),
                            (weight.as_ptr(), k, 1),
                            (colsb.as_ptr(), n, 1),
                        );
                    }
                }
            }
        }
        // SAFETY: every image's block was written above.
        unsafe { out.set_len(g.batch * g.co * n) };
        out
    }

    /// dweight += go colsᵀ for the output's gradient `go`.
    fn weight_backward<E: Float>(g: &Geometry, (x, go): (&[E], &[E]), dweight: &mut [E]) {
        let (k, n) = (g.k(), g.n());
        let mut cols = scratch(g);
        for bi in 0..g.batch {
            let colsb = unfolded(g, x, bi, &mut cols);
            let gob = &go[bi * g.co * n..(bi + 1) * g.co * n];
            // SAFETY: dweight [co x k] += gob [co x n] colsb^T [n x k].
            unsafe {
                matmul(
                    (g.co, k, n),
                    (dweight.as_mut_ptr(), k, true),
                    (gob.as_ptr(), n, 1),
                    (colsb.as_ptr(), 1, n),
                );
            }
        }
    }

    /// dbias += the sums of go's rows (over the batch and the positions).
    fn bias_backward<E: Float>(g: &Geometry, go: &[E], dbias: &mut [E]) {
        for gob in go.chunks_exact(g.co * g.n()) {
            for (d, row) in dbias.iter_mut().zip(gob.chunks_exact(g.n())) {
                *d += row.iter().fold(E::zero(), |s, v| s + *v);
            }
        }
    }

    /// dx += the input's gradient for the output's gradient `go`: weightᵀ go, folded back, or
    /// by rows as a convolution of go (`Conv2d::input_grad_by_rows`).
    fn input_backward<E: Float>(g: &Geometry, (params, go): (&HostParams<E>, &[E]), dx: &mut [E]) {
        let (k, n) = (g.k(), g.n());
        if let Some(weight_rows) = params.input_grad_weight((g.co, g.ci, g.kh, g.kw)) {
            let t = g.input_grad();
            let mut cols = row_scratch(&t);
            for bi in 0..g.batch {
                let gob = &go[bi * g.co * n..(bi + 1) * g.co * n];
                let dxb = &mut dx[bi * g.image()..(bi + 1) * g.image()];
                // SAFETY: dxb is the image's gradient [ci x h w], initialised.
                unsafe {
                    product_by_rows(&t, gob, weight_rows, (dxb.as_mut_ptr(), true), &mut cols)
                };
            }
            return;
        }
        let weight = params.weight.as_deref().expect("kept where it is read");
        let mut dcols = scratch(g);
        for bi in 0..g.batch {
            let gob = &go[bi * g.co * n..(bi + 1) * g.co * n];
            let dxb = &mut dx[bi * g.image()..(bi + 1) * g.image()];
            let (dst, acc) = if g.pointwise {
                (dxb.as_mut_ptr(), true)
            } else {
                (dcols.as_mut_ptr(), false)
            };
            // SAFETY: dst [k x n] (+)= weight^T [k x co] gob [co x n]; dst is dxb or dcols
            // (its capacity, written whole and not read: acc is false).
            unsafe {
                matmul(
                    (k, n, g.co),
                    (dst, n, acc),
                    (weight.as_ptr(), 1, k),
                    (gob.as_ptr(), n, 1),
                );
            }
            if !g.pointwise {
                // SAFETY: the product wrote all k n elements.
                unsafe { dcols.set_len(k * n) };
                col2im(g, &dcols, dxb);
            }
        }
    }

    /// The convolution on the CPU, on `x`'s tape; with [`ParamGrads::Skip`] its backward pass
    /// leaves the weight and the bias without gradients.
    pub fn conv2d<E: Float, T: Tape<E, Cpu>>(
        conv: &Conv2d<E, Cpu>,
        x: Image<E, Cpu, T>,
        params: ParamGrads,
    ) -> Image<E, Cpu, T>
    where
        Cpu: Device<E>,
        // The CPU's buffers are vectors: the backward pass reads and writes them as slices.
        <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
    {
        let (batch, ci, h, w) = *x.shape();
        assert_eq!(ci, conv.in_channels, "the convolution's input channels");
        let (ho, wo) = conv.out_size(h, w);
        let g = Geometry {
            batch,
            ci,
            co: conv.out_channels,
            h,
            w,
            ho,
            wo,
            kh: conv.kernel.0,
            kw: conv.kernel.1,
            stride: conv.stride,
            pt: conv.padding[0],
            pl: conv.padding[1],
            pointwise: conv.is_pointwise(),
        };
        // Contiguous, so that the input's gradient buffer has the layout of its values.
        let (x, mut tape) = x.contiguous().split_tape();
        let dev = x.device().clone();
        let mut xs = vec![E::zero(); g.batch * g.image()];
        x.copy_into(&mut xs);
        let host = conv.host();
        let out = dev.tensor_from_vec(forward(&g, &xs, &host), (batch, g.co, ho, wo));
        if T::OWNS_TAPE {
            let (x_ghost, out_ghost) = (x.ghost(), out.ghost());
            let weight = conv.weight.ghost();
            let bias = conv.bias.as_ref().map(|b| b.ghost());
            tape.add_backward_op(move |grads| {
                let go = take_output_grad(grads.get_or_alloc_mut(&out_ghost)?);
                if params == ParamGrads::Compute {
                    weight_backward(&g, (&xs, &go), grads.get_or_alloc_mut(&weight)?);
                    if let Some(b) = &bias {
                        bias_backward(&g, &go, grads.get_or_alloc_mut(b)?);
                    }
                }
                input_backward(&g, (&host, &go), grads.get_or_alloc_mut(&x_ghost)?);
                Ok(())
            });
        }
        out.put_tape(tape)
    }
}

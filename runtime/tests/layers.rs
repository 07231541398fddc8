//! The layers' CPU kernels (convolution, fused GroupNorm) against the same layers composed
//! from dfdx's operations, and their gradients against central finite differences (f64).

use adeis_runtime::nn::conv::conv2d_generic;
use adeis_runtime::nn::{Activation, Conv2d, GroupNorm, NnDevice, ParamGrads};
use dfdx::prelude::*;

mod common;
use common::{central, max_rel_err};

type Image = Tensor<(usize, usize, usize, usize), f64, Cpu>;
/// A per-(image, channel) shift.
type Shift = Tensor<(usize, usize), f64, Cpu>;

#[test]
fn the_cpu_convolution_equals_the_generic_one_and_its_finite_differences() {
    let dev = Cpu::seed_from_u64(7);
    // 3x3 stride 1 pad 1, stride 2 with diffusers' right/bottom padding, 1x1, and no bias;
    // stride 1 with uneven padding (the row unfolding's zero rows and columns on each side).
    for (k, stride, padding, bias) in [
        (3, 1, [1; 4], true),
        (3, 1, [0, 2, 1, 0], false),
        (3, 2, [0, 0, 1, 1], true),
        (1, 1, [0; 4], true),
        (3, 2, [1; 4], false),
    ] {
        let (ci, co) = (3, 5);
        let conv = Conv2d::<f64, Cpu>::new(
            dev.sample_normal_like(&(co, ci * k * k)),
            bias.then(|| dev.sample_normal_like(&(co,))),
            (k, k),
            stride,
            padding,
        );
        let x: Tensor<(usize, usize, usize, usize), f64, Cpu> =
            dev.sample_normal_like(&(2, ci, 6, 7));
        let run = |custom: bool| {
            let traced = x.clone().trace(Gradients::leaky());
            let out = if custom {
                <Cpu as NnDevice<f64>>::conv2d(&conv, traced, ParamGrads::Compute)
            } else {
                conv2d_generic(&conv, traced)
            };
            let shape = *out.shape();
            let cot: Tensor<(usize, usize, usize, usize), f64, Cpu> =
                Cpu::seed_from_u64(3).sample_normal_like(&shape);
            let values = out.retaped::<NoneTape>().as_vec();
            let mut g = (out * cot).sum().backward();
            let gw = g.get(conv.weight()).as_vec();
            let gb = conv.bias().map(|b| {
                g.try_alloc_for(b).unwrap();
                g.get(b).as_vec()
            });
            (values, g.get(&x).as_vec(), gw, gb, shape)
        };
        let (a, b) = (run(true), run(false));
        assert_eq!(a.4, b.4, "output shape");
        assert!(max_rel_err(&a.0, &b.0) < 1e-13, "forward k {k} s {stride}");
        assert!(
            max_rel_err(&a.1, &b.1) < 1e-13,
            "input gradient k {k} s {stride}"
        );
        assert!(
            max_rel_err(&a.2, &b.2) < 1e-13,
            "weight gradient k {k} s {stride}"
        );
        if let (Some(p), Some(q)) = (&a.3, &b.3) {
            assert!(max_rel_err(p, q) < 1e-13, "bias gradient k {k} s {stride}");
        }
        // The weight's gradient against central differences of the loss.
        let cot: Tensor<(usize, usize, usize, usize), f64, Cpu> =
            Cpu::seed_from_u64(3).sample_normal_like(&a.4);
        let loss = |w: &[f64]| {
            let c = conv.with_weight(dev.tensor_from_vec(w.to_vec(), (co, ci * k * k)));
            let out = <Cpu as NnDevice<f64>>::conv2d(&c, x.clone(), ParamGrads::Skip);
            let l: f64 = (out * cot.clone()).sum::<Rank0, _>().array();
            l
        };
        let w0 = conv.weight().as_vec();
        for i in [0, 7, w0.len() - 1] {
            let fd = central(loss, &w0, i, 1e-6);
            assert!(
                (fd - a.2[i]).abs() < 1e-7 * fd.abs().max(1.0),
                "dW[{i}]: {fd} vs {}",
                a.2[i]
            );
        }
    }
}

#[test]
fn the_cpu_convolution_skips_only_the_parameter_gradients() {
    let dev = Cpu::seed_from_u64(9);
    let conv = Conv2d::<f64, Cpu>::new(
        dev.sample_normal_like(&(4, 3 * 9)),
        Some(dev.sample_normal_like(&(4,))),
        (3, 3),
        1,
        [1; 4],
    );
    let x: Image = dev.sample_normal_like(&(2, 3, 5, 4));
    let run = |params| {
        let out =
            <Cpu as NnDevice<f64>>::conv2d(&conv, x.clone().trace(Gradients::leaky()), params);
        let mut g = out.sum().backward();
        g.try_alloc_for(conv.weight()).unwrap();
        (g.get(&x).as_vec(), g.get(conv.weight()).as_vec())
    };
    let (all, skip) = (run(ParamGrads::Compute), run(ParamGrads::Skip));
    assert_eq!(all.0, skip.0, "the input's gradient");
    assert!(
        all.1.iter().any(|v| *v != 0.0),
        "a weight gradient when computed"
    );
    assert!(
        skip.1.iter().all(|v| *v == 0.0),
        "no weight gradient when skipped"
    );
}

/// One GroupNorm call's output and gradients (x, shift, weight, bias) for cotangent `cot`.
struct NormRun {
    out: Vec<f64>,
    dx: Vec<f64>,
    dshift: Option<Vec<f64>>,
    dweight: Vec<f64>,
    dbias: Vec<f64>,
}

fn run_norm(
    norm: &GroupNorm<f64, Cpu>,
    (x, shift): (&Image, Option<&Shift>),
    act: Activation,
    cot: &Image,
    fused: bool,
) -> NormRun {
    let traced = x.clone().trace(Gradients::leaky());
    let s = shift.map(|s| s.clone().retaped::<OwnedTape<f64, Cpu>>());
    let out = if fused {
        <Cpu as NnDevice<f64>>::group_norm(norm, traced, s, act, ParamGrads::Compute)
    } else {
        norm.forward_generic(traced, s, act)
    };
    let values = out.retaped::<NoneTape>().as_vec();
    let g = (out * cot.clone()).sum().backward();
    NormRun {
        out: values,
        dx: g.get(x).as_vec(),
        dshift: shift.map(|s| g.get(s).as_vec()),
        dweight: g.get(&norm.weight).as_vec(),
        dbias: g.get(&norm.bias).as_vec(),
    }
}

#[test]
fn the_fused_group_norm_equals_dfdx_composition_and_its_finite_differences() {
    // Planes of 15 elements (a remainder after the kernel's 16 lanes), and groups of 264 (more
    // than one block of its partial sums).
    for (b, c, h, w, groups) in [(2, 6, 5, 3, 3), (1, 4, 12, 11, 2)] {
        check_group_norm((b, c, h, w), groups);
    }
}

fn check_group_norm((b, c, h, w): (usize, usize, usize, usize), groups: usize) {
    let dev = Cpu::seed_from_u64(11);
    let norm = GroupNorm::<f64, Cpu> {
        weight: dev.sample_normal_like(&(c,)),
        bias: dev.sample_normal_like(&(c,)),
        groups,
        eps: 1e-6,
    };
    // A mean far from zero relative to the spread (as a time embedding's shift makes it).
    let x: Image = dev.sample_normal_like(&(b, c, h, w)) + 30.0;
    let shift: Shift = dev.sample_normal_like(&(b, c));
    let cot: Image = dev.sample_normal_like(&(b, c, h, w));
    for act in [Activation::Identity, Activation::Silu] {
        for with_shift in [false, true] {
            let s = with_shift.then_some(&shift);
            let fused = run_norm(&norm, (&x, s), act, &cot, true);
            let generic = run_norm(&norm, (&x, s), act, &cot, false);
            let what = format!("{act:?}, shift {with_shift}");
            assert!(
                max_rel_err(&fused.out, &generic.out) < 1e-12,
                "forward, {what}"
            );
            assert!(max_rel_err(&fused.dx, &generic.dx) < 1e-10, "dx, {what}");
            assert!(
                max_rel_err(&fused.dweight, &generic.dweight) < 1e-10,
                "dweight, {what}"
            );
            assert!(
                max_rel_err(&fused.dbias, &generic.dbias) < 1e-10,
                "dbias, {what}"
            );
            if let (Some(p), Some(q)) = (&fused.dshift, &generic.dshift) {
                assert!(max_rel_err(p, q) < 1e-10, "dshift, {what}");
            }
            // Finite differences of sum(cot * out) in x, the shift and the weight.
            let loss = |x: &Image, s: Option<&Shift>, n: &GroupNorm<f64, Cpu>| {
                let out = <Cpu as NnDevice<f64>>::group_norm(
                    n,
                    x.clone(),
                    s.cloned(),
                    act,
                    ParamGrads::Skip,
                );
                (out * cot.clone()).sum::<Rank0, _>().array()
            };
            let x0 = x.as_vec();
            for i in [0, 17, x0.len() - 1] {
                let fd = central(
                    |v| loss(&dev.tensor_from_vec(v.to_vec(), (b, c, h, w)), s, &norm),
                    &x0,
                    i,
                    1e-6,
                );
                assert!(
                    (fd - fused.dx[i]).abs() < 1e-6 * fd.abs().max(1.0),
                    "dx[{i}] {what}"
                );
            }
            if let Some(ds) = &fused.dshift {
                let s0 = shift.as_vec();
                for i in [0, b * c - 1] {
                    let fd = central(
                        |v| loss(&x, Some(&dev.tensor_from_vec(v.to_vec(), (b, c))), &norm),
                        &s0,
                        i,
                        1e-6,
                    );
                    assert!(
                        (fd - ds[i]).abs() < 1e-6 * fd.abs().max(1.0),
                        "dshift[{i}] {what}"
                    );
                }
            }
            let w0 = norm.weight.as_vec();
            for i in [0, c - 1] {
                let fd = central(
                    |v| {
                        let mut n = norm.clone();
                        n.weight = dev.tensor_from_vec(v.to_vec(), (c,));
                        loss(&x, s, &n)
                    },
                    &w0,
                    i,
                    1e-6,
                );
                assert!(
                    (fd - fused.dweight[i]).abs() < 1e-6 * fd.abs().max(1.0),
                    "dweight[{i}] {what}"
                );
            }
        }
    }
}

mod dense {
    use super::*;
    use adeis_runtime::nn::{Dense, DenseLinear};
    use dfdx::nn::builders::Linear;
    use dfdx::optim::{Optimizer, Sgd, SgdConfig};

    type Rows<const N: usize> = Tensor<(usize, Const<N>), f64, Cpu>;

    /// The dense layer equals dfdx's `Linear` with the same tensors: forward and every
    /// gradient, at a batch small enough for one thread and one large enough for several, in
    /// both of the kernel's layouts (one row, and a small batch on a large weight, run
    /// transposed).
    #[test]
    fn the_dense_layer_equals_dfdx_linear() {
        check_against_linear::<300, 200>(&[1, 3, 64]);
        check_against_linear::<768, 2048>(&[1, 2, 64]);
    }

    fn check_against_linear<const I: usize, const O: usize>(batches: &[usize]) {
        let dev = Cpu::seed_from_u64(5);
        let reference = dev.build_module::<Linear<I, O>, f64>();
        let path = std::env::temp_dir().join(format!(
            "adeis-dense-{I}x{O}-{}.safetensors",
            std::process::id()
        ));
        reference.save_safetensors(&path).unwrap();
        let mut dense = dev.build_module::<Dense<I, O>, f64>();
        dense.load_safetensors(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            dense.weight().as_vec(),
            reference.weight.as_vec(),
            "loaded by name"
        );
        for &batch in batches {
            let x: Rows<I> = dev.sample_normal_like(&(batch, Const));
            let cot: Rows<O> = dev.sample_normal_like(&(batch, Const));
            let a = dense.forward(x.clone().trace(Gradients::leaky()));
            let b = reference.forward(x.clone().trace(Gradients::leaky()));
            assert!(
                max_rel_err(&a.as_vec(), &b.as_vec()) < 1e-14,
                "forward, {I} -> {O}, batch {batch}"
            );
            let ga = (a * cot.clone()).sum().backward();
            let gb = (b * cot).sum().backward();
            for (what, p, q) in [
                ("x", ga.get(&x).as_vec(), gb.get(&x).as_vec()),
                (
                    "weight",
                    ga.get(dense.weight()).as_vec(),
                    gb.get(&reference.weight).as_vec(),
                ),
                (
                    "bias",
                    ga.get(dense.bias()).as_vec(),
                    gb.get(&reference.bias).as_vec(),
                ),
            ] {
                assert!(
                    max_rel_err(&p, &q) < 1e-13,
                    "d{what}, {I} -> {O}, batch {batch}"
                );
            }
        }
    }

    /// An optimiser's update reaches the kernel (its host copy of the weights is made again).
    #[test]
    fn the_dense_layer_sees_optimiser_updates() {
        let dev = Cpu::seed_from_u64(6);
        let mut dense: DenseLinear<4, 3, f64, Cpu> = dev.build_module::<Dense<4, 3>, f64>();
        let x: Rows<4> = dev.sample_normal_like(&(2, Const));
        let before = dense.forward(x.clone()).as_vec();
        let mut opt = Sgd::new(
            &dense,
            SgdConfig {
                lr: 0.5,
                ..Default::default()
            },
        );
        let g = dense
            .forward(x.clone().trace(Gradients::leaky()))
            .sum()
            .backward();
        opt.update(&mut dense, &g).unwrap();
        let after = dense.forward(x.clone()).as_vec();
        assert_ne!(before, after);
        assert!(max_rel_err(&after, &dense.forward_generic(x).as_vec()) < 1e-14);
    }
}

mod gelu {
    use super::*;
    use adeis_runtime::nn::{Float, Gelu};

    /// The f32 exponential the GeLU kernel uses is within 2 ulp of the exact one.
    #[test]
    fn the_fast_f32_exponential_is_within_two_ulp() {
        let mut worst = 0.0f64;
        for k in 0..=200_000 {
            let x = -87.0 + 175.0 * k as f64 / 200_000.0;
            let got = (x as f32).exp_fast() as f64;
            let want = (x as f32 as f64).exp();
            // One ulp of an f32 near `want`: 2^(exponent - 23).
            let ulp = 2f64.powi(want.log2().floor() as i32 - 23);
            worst = worst.max((got - want).abs() / ulp);
        }
        assert!(worst <= 2.0, "max error {worst} ulp");
    }

    /// The kernel equals dfdx's `FastGeLU` and its gradient in f64 to round-off; in f32 it is as
    /// close to the exact values as dfdx's.
    #[test]
    fn gelu_equals_dfdx_fast_gelu() {
        let dev = Cpu::seed_from_u64(8);
        // Beyond +-10 both saturate; the sample covers the curved part and the tails.
        let x64: Tensor<(usize, Const<4>), f64, Cpu> =
            dev.sample_normal_like(&(20_000, Const)) * 3.0;
        let cot64: Tensor<(usize, Const<4>), f64, Cpu> = dev.sample_normal_like(&(20_000, Const));
        let (a, b) = (
            Gelu.forward(x64.clone().trace(Gradients::leaky())),
            x64.clone().trace(Gradients::leaky()).fast_gelu(),
        );
        assert!(max_rel_err(&a.as_vec(), &b.as_vec()) < 1e-14, "f64 forward");
        let (ga, gb64) = (
            (a * cot64.clone()).sum().backward(),
            (b * cot64.clone()).sum().backward(),
        );
        assert!(
            max_rel_err(&ga.get(&x64).as_vec(), &gb64.get(&x64).as_vec()) < 1e-13,
            "f64 gradient"
        );
        let x32 = x64.clone().to_dtype::<f32>();
        let cot32 = cot64.to_dtype::<f32>();
        let (a, b) = (
            Gelu.forward(x32.clone().trace(Gradients::leaky())),
            x32.clone().trace(Gradients::leaky()).fast_gelu(),
        );
        let as64 = |t: Vec<f32>| t.into_iter().map(f64::from).collect::<Vec<_>>();
        assert!(
            max_rel_err(&as64(a.as_vec()), &as64(b.as_vec())) < 1e-6,
            "f32 forward"
        );
        let (ga, gb) = (
            (a * cot32.clone()).sum().backward(),
            (b * cot32).sum().backward(),
        );
        // Against the f64 gradient: the kernel's f32 error is no larger than dfdx's.
        let exact = gb64.get(&x64).as_vec();
        let (ours, dfdx) = (
            max_rel_err(&as64(ga.get(&x32).as_vec()), &exact),
            max_rel_err(&as64(gb.get(&x32).as_vec()), &exact),
        );
        assert!(
            ours < 1e-6 && ours <= 2.0 * dfdx,
            "f32 gradient: {ours:.2e} ({dfdx:.2e})"
        );
    }
}

/// The attention kernel equals dfdx's composition, forward and the gradients of q, k and v,
/// with several heads and a sequence long enough for the threaded products; as
/// self-attention (keys as long as the queries) and as cross-attention (40 queries attending
/// to 7 and to 77 keys).
#[test]
fn the_attention_kernel_equals_dfdx_composition() {
    for keys in [40, 7, 77] {
        attention_kernel_equals_dfdx_composition(keys);
    }
}

fn attention_kernel_equals_dfdx_composition(keys: usize) {
    use adeis_runtime::nn::attention::attention_core_generic;
    let dev = Cpu::seed_from_u64(12);
    let shape = (2, 3, 40, 16);
    let kv_shape = (2, 3, keys, 16);
    let (q, k, v): (Image, Image, Image) = (
        dev.sample_normal_like(&shape),
        dev.sample_normal_like(&kv_shape),
        dev.sample_normal_like(&kv_shape),
    );
    let cot: Image = dev.sample_normal_like(&shape);
    let run = |kernel: bool| {
        let t = |x: &Image| x.clone().trace(Gradients::leaky());
        let out = if kernel {
            <Cpu as NnDevice<f64>>::attention_core(t(&q), t(&k), t(&v), 0.25)
        } else {
            attention_core_generic(t(&q), t(&k), t(&v), 0.25)
        };
        let values = out.retaped::<NoneTape>().as_vec();
        let g = (out * cot.clone()).sum().backward();
        (
            values,
            g.get(&q).as_vec(),
            g.get(&k).as_vec(),
            g.get(&v).as_vec(),
        )
    };
    let (a, b) = (run(true), run(false));
    assert!(max_rel_err(&a.0, &b.0) < 1e-13, "forward, {keys} keys");
    assert!(max_rel_err(&a.1, &b.1) < 1e-12, "dq, {keys} keys");
    assert!(max_rel_err(&a.2, &b.2) < 1e-12, "dk, {keys} keys");
    assert!(max_rel_err(&a.3, &b.3) < 1e-12, "dv, {keys} keys");
}

/// The CPU's exchange of the middle axes equals dfdx's permute bit for bit, forward and
/// backward, for rows of one and of several elements and sides that are not multiples of its
/// block; its gradient adds to one the input already has (x is read twice).
#[test]
fn the_axis_exchange_equals_dfdx_permute() {
    use adeis_runtime::nn::transpose::swap_middle_axes_generic;
    let dev = Cpu::seed_from_u64(13);
    for shape in [(2, 37, 21, 1), (1, 5, 3, 7), (3, 16, 32, 2)] {
        let x: Image = dev.sample_normal_like(&shape);
        let (a, m, n, r) = shape;
        let cot: Image = dev.sample_normal_like(&(a, n, m, r));
        let run = |kernel: bool| {
            let traced = x.clone().trace(Gradients::leaky());
            let out = if kernel {
                <Cpu as NnDevice<f64>>::swap_middle_axes(traced.with_empty_tape())
            } else {
                swap_middle_axes_generic(traced.with_empty_tape())
            };
            assert_eq!(*out.shape(), (a, n, m, r));
            let values = out.retaped::<NoneTape>().as_vec();
            let g = ((out * cot.clone()).sum() + traced.sum()).backward();
            (values, g.get(&x).as_vec())
        };
        let (kernel, dfdx) = (run(true), run(false));
        assert_eq!(kernel.0, dfdx.0, "forward {shape:?}");
        assert_eq!(kernel.1, dfdx.1, "gradient {shape:?}");
    }
}

#[test]
fn the_channel_concatenation_and_the_upsampling_equal_dfdx_operations() {
    use adeis_runtime::nn::copies::{concat_channels_generic, upsample2x_generic};
    let dev = Cpu::seed_from_u64(17);
    for (n, c1, c2, h, w) in [(2, 3, 6, 4, 5), (1, 1, 2, 1, 1), (3, 4, 1, 7, 2)] {
        let a: Image = dev.sample_normal_like(&(n, c1, h, w));
        let b: Image = dev.sample_normal_like(&(n, c2, h, w));
        let cot: Image = dev.sample_normal_like(&(n, c1 + c2, h, w));
        let concat = |kernel: bool| {
            let ta = a.clone().trace(Gradients::leaky());
            let tb = b.clone().trace(Gradients::leaky());
            let out = if kernel {
                <Cpu as NnDevice<f64>>::concat_channels(ta.with_empty_tape(), tb.with_empty_tape())
            } else {
                concat_channels_generic(ta.with_empty_tape(), tb.with_empty_tape())
            };
            assert_eq!(*out.shape(), (n, c1 + c2, h, w));
            let values = out.retaped::<NoneTape>().as_vec();
            // A gradient each input already has, which the VJP adds to.
            let g = ((out * cot.clone()).sum() + ta.sum() + tb.sum()).backward();
            (values, g.get(&a).as_vec(), g.get(&b).as_vec())
        };
        assert_eq!(
            concat(true),
            concat(false),
            "concatenation {:?}",
            (n, c1, c2, h, w)
        );

        let cot: Image = dev.sample_normal_like(&(n, c1, 2 * h, 2 * w));
        let upsample = |kernel: bool| {
            let traced = a.clone().trace(Gradients::leaky());
            let out = if kernel {
                <Cpu as NnDevice<f64>>::upsample2x(traced.with_empty_tape())
            } else {
                upsample2x_generic(traced.with_empty_tape())
            };
            assert_eq!(*out.shape(), (n, c1, 2 * h, 2 * w));
            let values = out.retaped::<NoneTape>().as_vec();
            let g = ((out * cot.clone()).sum() + traced.sum()).backward();
            (values, g.get(&a).as_vec())
        };
        assert_eq!(
            upsample(true),
            upsample(false),
            "upsampling {:?}",
            (n, c1, h, w)
        );
    }
}

/// The exact GELU's slope against a central difference (dfdx 0.13's own `accurate_gelu` is off
/// by x phi(x) (sqrt(2) - 1): adeis corrects it), and its value against erf.
#[test]
fn exact_gelu_value_and_slope() {
    use adeis_runtime::nn::transformer::gelu_exact;
    let dev = Cpu::default();
    let xs = [-3.0, -1.2, -0.3, 0.0, 0.4, 1.0, 2.5];
    let x: Tensor<(usize,), f64, Cpu> = dev.tensor_from_vec(xs.to_vec(), (xs.len(),));
    let y = gelu_exact(x.leaky_trace());
    let values = y.as_vec();
    let g = y.sum().backward();
    let slopes = g.get(&x).as_vec();
    let gelu = |v: f64| 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2));
    for (i, v) in xs.iter().enumerate() {
        assert!((values[i] - gelu(*v)).abs() < 1e-15, "value at {v}");
        let h = 1e-5;
        let fd = (gelu(v + h) - gelu(v - h)) / (2.0 * h);
        assert!(
            (slopes[i] - fd).abs() < 1e-9,
            "slope at {v}: {} vs {fd}",
            slopes[i]
        );
    }
}

/// The CPU's fused GEGLU equals dfdx's composition (slices, GELU with erf, a product), forward
/// and backward, on rows wider than a task and a batch of several sequences; its gradient adds
/// to one the input already has (dfdx 0.13's slice does not: its backward pass assigns, so
/// the composition is compared on an input read once).
#[test]
fn the_fused_geglu_equals_dfdx_composition() {
    use adeis_runtime::nn::transformer::{geglu_generic, Tokens};
    let dev = Cpu::seed_from_u64(5);
    let shape = (2, 300, 2 * 70);
    let h: Tokens<f64, Cpu> = dev.sample_normal_like(&shape) * 2.0;
    let cot: Tokens<f64, Cpu> = dev.sample_normal_like(&(2, 300, 70));
    let run = |kernel: bool, read_twice: bool| {
        let traced = h.clone().trace(Gradients::leaky());
        let twice = traced.with_empty_tape();
        let out = if kernel {
            <Cpu as NnDevice<f64>>::geglu(traced)
        } else {
            geglu_generic(traced)
        };
        let values = out.retaped::<NoneTape>().as_vec();
        let mut loss = (out * cot.clone()).sum();
        if read_twice {
            loss = loss + twice.sum();
        }
        (values, loss.backward().get(&h).as_vec())
    };
    let (a, b) = (run(true, false), run(false, false));
    assert!(max_rel_err(&a.0, &b.0) < 1e-14, "forward");
    let dh = max_rel_err(&a.1, &b.1);
    assert!(dh < 1e-13, "dh: {dh:e}");
    let added = run(true, true).1;
    assert!(added.iter().zip(&a.1).all(|(x, y)| *x == *y + 1.0));
}

//! The UNet's CPU kernels against the dfdx compositions they replace, on W3's busiest shapes
//! (f32, batch 1): a 3x3 convolution 128 -> 128 at 32x32 (adeis' im2col + gemm 0.19 against
//! dfdx's `gather` im2col + batched matmul) and GroupNorm(32 groups) + SiLU on 256 channels
//! at 16x16 with the resnet's time shift (the fused kernel against dfdx's nine operations);
//! each forward alone and forward + backward w.r.t. the input.
//!
//! Run: `cargo bench --bench unet_layers`. Compare ratios from one run.

use std::hint::black_box;

use adeis::runtime::dfdx::prelude::*;
use adeis::runtime::nn::conv::conv2d_generic;
use adeis::runtime::nn::{Activation, Conv2d, GroupNorm, NnDevice, ParamGrads};
use criterion::{criterion_group, criterion_main, Criterion};

type Image = Tensor<(usize, usize, usize, usize), f32, Cpu>;

fn bench(c: &mut Criterion) {
    let dev = Cpu::seed_from_u64(0);
    let conv = Conv2d::<f32, Cpu>::new(
        dev.sample_normal_like(&(128, 128 * 9)),
        Some(dev.sample_normal_like(&(128,))),
        (3, 3),
        1,
        [1; 4],
    );
    let x: Image = dev.sample_normal_like(&(1, 128, 32, 32));
    let mut g = c.benchmark_group("conv3x3_128_32x32");
    g.bench_function("adeis_cpu_forward", |b| {
        b.iter(|| {
            black_box(<Cpu as NnDevice<f32>>::conv2d(
                &conv,
                x.clone(),
                ParamGrads::Skip,
            ))
        })
    });
    g.bench_function("dfdx_gather_matmul_forward", |b| {
        b.iter(|| black_box(conv2d_generic(&conv, x.clone())))
    });
    g.bench_function("adeis_cpu_forward_backward_x", |b| {
        b.iter(|| {
            let out = <Cpu as NnDevice<f32>>::conv2d(
                &conv,
                x.clone().trace(Gradients::leaky()),
                ParamGrads::Skip,
            );
            black_box(out.sum().backward())
        })
    });
    g.bench_function("dfdx_gather_matmul_forward_backward_x", |b| {
        b.iter(|| {
            let out = conv2d_generic(&conv, x.clone().trace(Gradients::leaky()));
            black_box(out.sum().backward())
        })
    });
    g.finish();

    let norm = GroupNorm::<f32, Cpu> {
        weight: dev.sample_normal_like(&(256,)),
        bias: dev.sample_normal_like(&(256,)),
        groups: 32,
        eps: 1e-6,
    };
    let h: Image = dev.sample_normal_like(&(1, 256, 16, 16));
    let shift: Tensor<(usize, usize), f32, Cpu> = dev.sample_normal_like(&(1, 256));
    let mut g = c.benchmark_group("group_norm_silu_256_16x16");
    g.bench_function("adeis_fused_forward", |b| {
        b.iter(|| {
            black_box(<Cpu as NnDevice<f32>>::group_norm(
                &norm,
                h.clone(),
                Some(shift.clone()),
                Activation::Silu,
                ParamGrads::Skip,
            ))
        })
    });
    g.bench_function("dfdx_composed_forward", |b| {
        b.iter(|| black_box(norm.forward_generic(h.clone(), Some(shift.clone()), Activation::Silu)))
    });
    g.bench_function("adeis_fused_forward_backward_x", |b| {
        b.iter(|| {
            let t = h.clone().trace(Gradients::leaky());
            let s = shift.clone().retaped::<OwnedTape<f32, Cpu>>();
            let out = <Cpu as NnDevice<f32>>::group_norm(
                &norm,
                t,
                Some(s),
                Activation::Silu,
                ParamGrads::Skip,
            );
            black_box(out.sum().backward())
        })
    });
    g.bench_function("dfdx_composed_forward_backward_x", |b| {
        b.iter(|| {
            let t = h.clone().trace(Gradients::leaky());
            let s = shift.clone().retaped::<OwnedTape<f32, Cpu>>();
            let out = norm.forward_generic(t, Some(s), Activation::Silu);
            black_box(out.sum().backward())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

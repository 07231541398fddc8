//! The UNet's CPU kernels against the dfdx compositions they replace, on W3's busiest shapes
//! (f32, batch 1): a 3x3 convolution 128 -> 128 at 32x32 (adeis' im2col + gemm 0.19 against
//! dfdx's `gather` im2col + batched matmul) and GroupNorm(32 groups) + SiLU on 256 channels
//! at 16x16 with the resnet's time shift (the fused kernel against dfdx's nine operations);
//! each forward alone and forward + backward w.r.t. the input; the convolution's product alone
//! on an unfolding of the same size; the attention block's change of layout; and the up blocks'
//! concatenation with their skip and upsampling (block copies against dfdx's `concat_along`
//! and broadcast).
//!
//! Run: `cargo bench --bench unet_layers`. Compare ratios from one run.

use std::hint::black_box;

use adeis::runtime::dfdx::prelude::*;
use adeis::runtime::nn::conv::conv2d_generic;
use adeis::runtime::nn::copies::{concat_channels_generic, upsample2x_generic};
use adeis::runtime::nn::gemm::matmul_rows;
use adeis::runtime::nn::transpose::swap_middle_axes_generic;
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
    // The forward's product alone, on an unfolding of the same size: what im2col and the
    // buffers cost on top of it.
    let weight = conv.weight().as_vec();
    let cols = dev.sample_normal_like(&(128 * 9, 32 * 32)).as_vec();
    g.bench_function("gemm_alone_128x1152x1024", |b| {
        b.iter(|| black_box(matmul_rows(&weight, &cols, (128, 32 * 32, 128 * 9))))
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

/// The attention block's change of layout on W3's 16x16 level: [1, 256 channels, 256
/// positions] to [1, 256, 256] sequence-major, the CPU's blocked exchange against dfdx's
/// permute + contiguous, forward and forward + backward.
fn bench_swap(c: &mut Criterion) {
    let dev = Cpu::seed_from_u64(0);
    let x: Image = dev.sample_normal_like(&(1, 256, 256, 1));
    let mut g = c.benchmark_group("swap_middle_axes_256x256");
    g.bench_function("adeis_cpu_forward", |b| {
        b.iter(|| black_box(<Cpu as NnDevice<f32>>::swap_middle_axes(x.clone())))
    });
    g.bench_function("dfdx_permute_forward", |b| {
        b.iter(|| black_box(swap_middle_axes_generic(x.clone())))
    });
    g.bench_function("adeis_cpu_forward_backward", |b| {
        b.iter(|| {
            let out = <Cpu as NnDevice<f32>>::swap_middle_axes(x.clone().trace(Gradients::leaky()));
            black_box(out.sum().backward())
        })
    });
    g.bench_function("dfdx_permute_forward_backward", |b| {
        b.iter(|| {
            let out = swap_middle_axes_generic(x.clone().trace(Gradients::leaky()));
            black_box(out.sum().backward())
        })
    });
    g.finish();
}

/// The up blocks' copies on W3's 32x32 level: the last up block's first concatenation, [1, 256,
/// 32, 32] with its [1, 128, 32, 32] skip, and the upsampling of [1, 256, 16, 16] to 32x32,
/// the CPU's block copies against dfdx's operations, forward and forward + backward.
fn bench_copies(c: &mut Criterion) {
    let dev = Cpu::seed_from_u64(0);
    let h: Image = dev.sample_normal_like(&(1, 256, 32, 32));
    let skip: Image = dev.sample_normal_like(&(1, 128, 32, 32));
    let small: Image = dev.sample_normal_like(&(1, 256, 16, 16));
    let mut g = c.benchmark_group("concat_256_128_32x32");
    g.bench_function("adeis_cpu_forward", |b| {
        b.iter(|| {
            black_box(<Cpu as NnDevice<f32>>::concat_channels(
                h.clone(),
                skip.clone(),
            ))
        })
    });
    g.bench_function("dfdx_concat_along_forward", |b| {
        b.iter(|| black_box(concat_channels_generic(h.clone(), skip.clone())))
    });
    g.bench_function("adeis_cpu_forward_backward", |b| {
        b.iter(|| {
            let h = h.clone().trace(Gradients::leaky());
            let out =
                <Cpu as NnDevice<f32>>::concat_channels(h, skip.clone().trace(Gradients::leaky()));
            black_box(out.sum().backward())
        })
    });
    g.bench_function("dfdx_concat_along_forward_backward", |b| {
        b.iter(|| {
            let h = h.clone().trace(Gradients::leaky());
            let out = concat_channels_generic(h, skip.clone().trace(Gradients::leaky()));
            black_box(out.sum().backward())
        })
    });
    g.finish();
    let mut g = c.benchmark_group("upsample2x_256_16x16");
    g.bench_function("adeis_cpu_forward", |b| {
        b.iter(|| black_box(<Cpu as NnDevice<f32>>::upsample2x(small.clone())))
    });
    g.bench_function("dfdx_broadcast_forward", |b| {
        b.iter(|| black_box(upsample2x_generic(small.clone())))
    });
    g.bench_function("adeis_cpu_forward_backward", |b| {
        b.iter(|| {
            let out = <Cpu as NnDevice<f32>>::upsample2x(small.clone().trace(Gradients::leaky()));
            black_box(out.sum().backward())
        })
    });
    g.bench_function("dfdx_broadcast_forward_backward", |b| {
        b.iter(|| {
            let out = upsample2x_generic(small.clone().trace(Gradients::leaky()));
            black_box(out.sum().backward())
        })
    });
    g.finish();
}

criterion_group!(benches, bench, bench_swap, bench_copies);
criterion_main!(benches);

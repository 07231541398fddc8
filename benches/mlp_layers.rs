//! The MLP kernels against the dfdx operations they replace (f32): `Dense` against dfdx's
//! `Linear` on W2's hidden layer (2048 -> 2048, batch 64) and W1's (256 -> 256, batch 16), and
//! `Gelu` against dfdx's `FastGeLU` on a W2 activation (64 x 2048); each forward alone and
//! forward + backward; and the GEMM itself on 2048^3, the machine's peak for these kernels
//! (criterion's throughput line reads as GFLOP/s).
//!
//! Run: `cargo bench --bench mlp_layers`. Compare ratios from one run.

use std::hint::black_box;

use adeis::runtime::dfdx::nn::builders::Linear;
use adeis::runtime::dfdx::prelude::*;
use adeis::runtime::nn::{Dense, Gelu};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn dense_against_linear<const W: usize>(c: &mut Criterion, batch: usize) {
    let dev = Cpu::seed_from_u64(0);
    let dense = dev.build_module::<Dense<W, W>, f32>();
    let linear = dev.build_module::<Linear<W, W>, f32>();
    let x: Tensor<(usize, Const<W>), f32, Cpu> = dev.sample_normal_like(&(batch, Const));
    let mut g = c.benchmark_group(format!("linear_{W}x{W}_batch{batch}"));
    g.bench_function("adeis_dense_forward", |b| {
        b.iter(|| black_box(dense.forward(x.clone())))
    });
    g.bench_function("dfdx_linear_forward", |b| {
        b.iter(|| black_box(linear.forward(x.clone())))
    });
    g.bench_function("adeis_dense_forward_backward", |b| {
        b.iter(|| {
            black_box(
                dense
                    .forward(x.clone().trace(Gradients::leaky()))
                    .sum()
                    .backward(),
            )
        })
    });
    g.bench_function("dfdx_linear_forward_backward", |b| {
        b.iter(|| {
            black_box(
                linear
                    .forward(x.clone().trace(Gradients::leaky()))
                    .sum()
                    .backward(),
            )
        })
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    let n = 2048;
    let a: Vec<f32> = (0..n * n).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
    let mut g = c.benchmark_group("gemm_f32_2048");
    g.throughput(Throughput::Elements(2 * (n * n * n) as u64));
    g.sample_size(10);
    g.bench_function("gemm_0_19", |b| {
        b.iter(|| black_box(adeis::runtime::nn::gemm::matmul_rows(&a, &a, (n, n, n))))
    });
    g.finish();
    dense_against_linear::<2048>(c, 64);
    dense_against_linear::<256>(c, 16);
    let dev = Cpu::seed_from_u64(0);
    let x: Tensor<(usize, Const<2048>), f32, Cpu> = dev.sample_normal_like(&(64, Const));
    let mut g = c.benchmark_group("gelu_64x2048");
    g.bench_function("adeis_gelu_forward", |b| {
        b.iter(|| black_box(Gelu.forward(x.clone())))
    });
    g.bench_function("dfdx_fast_gelu_forward", |b| {
        b.iter(|| black_box(x.clone().fast_gelu()))
    });
    g.bench_function("adeis_gelu_forward_backward", |b| {
        b.iter(|| {
            black_box(
                Gelu.forward(x.clone().trace(Gradients::leaky()))
                    .sum()
                    .backward(),
            )
        })
    });
    g.bench_function("dfdx_fast_gelu_forward_backward", |b| {
        b.iter(|| {
            black_box(
                x.clone()
                    .trace(Gradients::leaky())
                    .fast_gelu()
                    .sum()
                    .backward(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! One evaluation of the VP linear schedule (all ten quantities, and lambda alone): the
//! JIT-compiled program, the interpreter, and hand-written Rust.
//!
//! Run: `cargo bench --bench schedule_eval`. Figures are machine-dependent; compare ratios
//! from one run.

use std::hint::black_box;

use adeis::compiler::jit::compile;
use adeis::prelude::*;
use criterion::{criterion_group, criterion_main, Criterion};

const B0: f64 = 0.1;
const B1: f64 = 20.0;

/// The ten quantities of VP linear, written by hand in the same order as the compiled ones.
#[inline(never)]
fn hand_written(t: f64, out: &mut [f64; 10]) {
    let log_alpha = -(B1 - B0) / 4.0 * t * t - B0 / 2.0 * t;
    let sigma2 = -(2.0 * log_alpha).exp_m1();
    let log_sigma = 0.5 * sigma2.ln();
    let f = -0.5 * (B0 + (B1 - B0) * t);
    let dlambda_dt = f / sigma2;
    let (alpha, sigma) = (log_alpha.exp(), sigma2.sqrt());
    *out = [
        alpha,
        sigma,
        log_alpha - log_sigma,
        log_alpha,
        log_sigma,
        f,
        -2.0 * sigma2 * dlambda_dt,
        dlambda_dt,
        f * alpha,
        (f - dlambda_dt) * sigma,
    ];
}

#[inline(never)]
fn hand_written_lambda(t: f64) -> f64 {
    let log_alpha = -(B1 - B0) / 4.0 * t * t - B0 / 2.0 * t;
    log_alpha - 0.5 * (-(2.0 * log_alpha).exp_m1()).ln()
}

fn bench(c: &mut Criterion) {
    let def = ScheduleDef::vp_linear(B0, B1).unwrap();
    let schedule = def.compile().unwrap();
    let params = def.default_params();
    let jit_all = schedule.forward_fn();
    let jit_lambda = compile(def.program(), &["lambda"]).unwrap();

    // Same numbers from all three before timing anything.
    let mut hand = [0.0; 10];
    hand_written(0.37, &mut hand);
    let mut jit = [0.0; 10];
    jit_all.call(0.37, &params, &mut jit);
    for (a, b) in hand.iter().zip(&jit) {
        assert!((a - b).abs() <= 1e-12 * b.abs(), "{a} vs {b}");
    }

    let mut g = c.benchmark_group("vp_linear_all_quantities");
    g.bench_function("jit", |b| {
        let mut out = [0.0; 10];
        b.iter(|| {
            jit_all.call(black_box(0.37), &params, &mut out);
            black_box(out[0])
        })
    });
    g.bench_function("interpreter", |b| {
        b.iter(|| black_box(def.eval_interp(black_box(0.37), &params)))
    });
    g.bench_function("hand_written", |b| {
        let mut out = [0.0; 10];
        b.iter(|| {
            hand_written(black_box(0.37), &mut out);
            black_box(out[0])
        })
    });
    g.finish();

    let mut g = c.benchmark_group("vp_linear_lambda");
    g.bench_function("jit", |b| {
        b.iter(|| jit_lambda.call1(black_box(0.37), &params))
    });
    g.bench_function("interpreter", |b| {
        b.iter(|| {
            def.program()
                .eval(&["lambda"], black_box(0.37), &params)
                .unwrap()[0]
        })
    });
    g.bench_function("hand_written", |b| {
        b.iter(|| hand_written_lambda(black_box(0.37)))
    });
    g.finish();

    c.bench_function("fill_table_1000_times_jit", |b| {
        let ts: Vec<f64> = (0..1000).map(|i| 1e-3 + 0.999 * i as f64 / 999.0).collect();
        b.iter(|| black_box(schedule.fill(&ts)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

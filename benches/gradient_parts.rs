//! The parts of a gradient on workload W1 (D 64, H 256, batch 16, f32): one forward
//! evaluation, one VJP, one sampler step, one adjoint step, and filling coefficient tables.
//!
//! Run: `cargo bench --bench gradient_parts`. Compare ratios from one run.

use std::hint::black_box;

use adeis::compiler::{build_plan, Method, SamplerSpec, ScheduleDef, Wrt};
use adeis::prelude::Problem;
use adeis::runtime::dfdx::prelude::*;
use adeis::runtime::mlp::{MlpDenoiser, TimeFeatures};
use adeis::runtime::nn::{Dense, Gelu};
use adeis::runtime::noise::normals;
use adeis::runtime::{from_f64, gradient, sample, Denoiser, Input, ModelFn, NoiseSource, State};
use criterion::{criterion_group, criterion_main, Criterion};

const D: usize = 64;
const IN: usize = D + 8 + 32;
type W1 = (Dense<IN, 256>, Gelu, Dense<256, 256>, Gelu, Dense<256, D>);

fn bench(c: &mut Criterion) {
    let dev = Cpu::seed_from_u64(0);
    let model = MlpDenoiser::<_, IN, D>::new(
        dev.build_module::<W1, f32>(),
        D,
        8,
        TimeFeatures::new(16, 1000.0),
        adeis::compiler::Prediction::Eps,
    );
    let schedule = ScheduleDef::vp_linear(0.1, 20.0)
        .unwrap()
        .compile()
        .unwrap();
    let x = from_f64::<f32, Cpu>(&dev, &normals(1, 0, 16 * D), 16, D);
    let z = from_f64::<f32, Cpu>(&dev, &normals(2, 0, 16 * 8), 16, 8);
    let cot = from_f64::<f32, Cpu>(&dev, &normals(3, 0, 16 * D), 16, D);
    let time = schedule.time_info(0.5);
    let f = ModelFn::new(&model);

    c.bench_function("w1_forward", |b| {
        b.iter(|| black_box(Denoiser::<f32, Cpu>::forward(&model, &x, Some(&z), &time)))
    });
    // The network's input rows [x, z, time features], assembled before every evaluation.
    c.bench_function("w1_input_rows", |b| {
        b.iter(|| black_box(model.input(&x, Some(&z), black_box(0.5))))
    });
    let mut acc = Denoiser::<f32, Cpu>::zero_grads(&model);
    c.bench_function("w1_vjp_x_z_params", |b| {
        b.iter(|| {
            black_box(Denoiser::<f32, Cpu>::vjp(
                &model,
                &x,
                Some(&z),
                &time,
                &cot,
                Some((&mut acc, 1.0)),
            ))
        })
    });
    // The tensor work of a step outside the model: a two-term combination and the NaN check,
    // in dfdx's element-wise operations (a reduction for the check) and in one pass.
    c.bench_function("w1_combine_two_terms", |b| {
        b.iter(|| black_box(x.clone() * 0.9 + cot.clone() * -0.1))
    });
    c.bench_function("w1_finite_check_by_reduction", |b| {
        b.iter(|| black_box(x.rows().clone().sum::<Rank0, _>().array().is_finite()))
    });
    c.bench_function("w1_combine_two_terms_and_check_one_pass", |b| {
        b.iter(|| black_box(State::combination(&[(&x, 0.9), (&cot, -0.1)])))
    });
    c.bench_function("w1_finite_check", |b| b.iter(|| black_box(x.is_finite())));
    c.bench_function("w1_time_info", |b| {
        b.iter(|| black_box(schedule.time_info(black_box(0.5))))
    });
    let one_step = Problem::new(schedule.clone(), &SamplerSpec::new(Method::Ddim, 1, 1))
        .unwrap()
        .with_wrt(Wrt::ALL);
    let noise = NoiseSource::Seeded(0);
    let input = Input::new(&x, Some(&z), &noise);
    c.bench_function("w1_ddim_sampler_step", |b| {
        b.iter(|| black_box(sample(one_step.plan(), &f, &input, false).unwrap()))
    });
    c.bench_function("w1_discrete_adjoint_step_with_its_forward", |b| {
        b.iter(|| black_box(gradient(&one_step, &f, &input, |_| Ok(cot.clone())).unwrap()))
    });
    for (name, method, order) in [
        ("dpm_solver_pp_3m", Method::DpmSolverPp, 3),
        ("deis_3", Method::Deis, 3),
        ("unipc_2", Method::Unipc, 2),
    ] {
        let spec = SamplerSpec::new(method, order, 1000);
        c.bench_function(&format!("fill_coefficient_tables_{name}_1000_steps"), |b| {
            b.iter(|| black_box(build_plan(&schedule, &spec).unwrap()))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

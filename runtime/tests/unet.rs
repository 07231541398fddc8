//! diffusers' `UNet2DModel` against diffusers itself: the fixtures of tests/fixtures/unet (made
//! by scripts/make-unet-fixtures.py) hold small random models in diffusers' layout and what
//! torch computes for them. The forward pass and the VJPs (input, class-embedding vector,
//! parameters) must agree in f64 and f32; the convolution's CPU kernel must agree with the same
//! convolution through dfdx's operations.

use std::path::{Path, PathBuf};

use adeis_compiler::{Prediction, TimeInfo};
use adeis_io::safetensors::{read_safetensors, TensorMap};
use adeis_runtime::nn::{Float, NnDevice};
use adeis_runtime::unet::{TensorMapSource, UNet2D, UNet2DConfig};
use adeis_runtime::{to_f64, Denoiser, State};
use dfdx::prelude::*;

mod common;
use common::{central, central4, max_rel_err, named_grad_errors};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/unet")
}

const CASES: [&str; 6] = [
    "attn_down_up",
    "class_cond_cifar_style",
    "f16_weights",
    "bf16_weights_legacy_names",
    "odd_channels_no_mid_nonsquare",
    "mid_scale_factor",
];

/// The model of fixture `name` in dtype E, and its reference tensors.
fn load<E: Float>(name: &str) -> (UNet2D<E, Cpu>, TensorMap)
where
    Cpu: NnDevice<E>,
{
    let dir = fixtures().join(name);
    let config: UNet2DConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let mut source = TensorMapSource {
        tensors: read_safetensors(&dir.join("diffusion_pytorch_model.safetensors")).unwrap(),
        origin: name.into(),
    };
    let model = UNet2D::new(&Cpu::default(), config, Prediction::Eps, &mut source).unwrap();
    source.finish().unwrap();
    (
        model,
        read_safetensors(&dir.join("reference.safetensors")).unwrap(),
    )
}

fn state<E: Float>(values: &[f64], shape: &[usize]) -> State<E, Cpu>
where
    Cpu: Device<E>,
{
    State::from_f64(&Cpu::default(), values, shape).unwrap()
}

fn time(t: f64) -> TimeInfo {
    TimeInfo {
        t,
        model_t: t,
        alpha: 1.0,
        sigma: 1.0,
    }
}

/// Forward and VJPs of every fixture in dtype E, against the reference computed in `tag`.
fn check_against_diffusers<E: Float>(tag: &str, forward_tol: f64, vjp_tol: f64)
where
    Cpu: NnDevice<E>,
{
    for name in CASES {
        let (model, r) = load::<E>(name);
        let (xs, xv) = &r["x"];
        let x = state::<E>(xv, xs);
        let z = r.get("z").map(|(s, v)| state::<E>(v, s));
        let t = time(r["timestep"].1[0]);
        let out = model.forward(&x, z.as_ref(), &t);
        let e = max_rel_err(&to_f64(&out), &r[&format!("out.{tag}")].1);
        eprintln!("{name} ({tag}): forward {e:.2e}");
        assert!(e < forward_tol, "{name} ({tag}): forward error {e:.2e}");

        let (cs, cv) = &r["cot"];
        let cot = state::<E>(cv, cs);
        let mut acc = model.zero_grads();
        let c = model.vjp(&x, z.as_ref(), &t, &cot, Some((&mut acc, 1.0)));
        let mut errs = vec![(
            "x".to_string(),
            max_rel_err(&to_f64(&c.x), &r[&format!("dx.{tag}")].1),
        )];
        if let Some(dz) = &c.cond {
            errs.push((
                "z".into(),
                max_rel_err(&to_f64(dz), &r[&format!("dz.{tag}")].1),
            ));
        }
        let param_errs = named_grad_errors(&model.named_grads(&acc), &r, "dparam.", tag);
        let params = param_errs.len();
        errs.extend(param_errs);
        assert!(
            params >= 3,
            "{name}: the fixture checks {params} parameters"
        );
        for (what, e) in &errs {
            eprintln!("{name} ({tag}): VJP {what} {e:.2e}");
            assert!(
                *e < vjp_tol,
                "{name} ({tag}): VJP w.r.t. {what}: error {e:.2e}"
            );
        }
    }
}

/// In f64 the agreement is limited by the time embedding, which diffusers computes in f32
/// whatever the model's dtype (as adeis does): torch's and Rust's f32 sin and cos may differ in
/// the last bit, 6e-8 of the embedding. A model whose embedding rounds alike agrees to 1e-14.
#[test]
fn unet_forward_and_vjps_equal_diffusers_in_f64() {
    check_against_diffusers::<f64>("f64", 1e-7, 1e-7);
}

#[test]
fn unet_forward_and_vjps_equal_diffusers_in_f32() {
    check_against_diffusers::<f32>("f32", 1e-5, 1e-4);
}

mod through_the_sampler {
    use super::*;
    use adeis_compiler::{
        build_plan, DiscreteStates, Method, SamplerSpec, Schedule, ScheduleSpec, Wrt,
    };
    use adeis_runtime::adjoint::discrete::discrete_adjoint;
    use adeis_runtime::tape::tape_gradient;
    use adeis_runtime::{sample, Input, ModelFn, NoiseSource, RuntimeError};

    /// The linear DDPM schedule of 1000 train steps (diffusers' default).
    fn ddpm() -> Schedule {
        ScheduleSpec::builtin("discrete")
            .unwrap()
            .to_def()
            .unwrap()
            .compile()
            .unwrap()
    }

    fn ddim(indices: &[usize]) -> SamplerSpec {
        let mut s = SamplerSpec::new(Method::Ddim, 1, 0);
        s.train_indices = Some(indices.to_vec());
        s
    }

    const ALL: Wrt = Wrt {
        x_t: true,
        cond: true,
        params: true,
        times: false,
        schedule: false,
    };

    /// The discrete adjoint through 5 DDIM steps equals the full tape for x_T, the
    /// class-embedding vector and every parameter tensor of the UNet.
    fn adjoint_equals_tape<E: Float>(tol: f64)
    where
        Cpu: NnDevice<E>,
    {
        let (model, r) = load::<E>("class_cond_cifar_style");
        let plan = build_plan(&ddpm(), &ddim(&[999, 800, 600, 400, 200, 0])).unwrap();
        let x = state::<E>(&r["x"].1, &r["x"].0);
        let z = state::<E>(&r["z"].1, &r["z"].0);
        let a0 = state::<E>(&r["cot"].1, &r["cot"].0);
        let noise = NoiseSource::Seeded(0);
        let input = Input::new(&x, Some(&z), &noise);
        let loss = |a: &State<E, Cpu>| {
            let a = a.clone();
            move |_: &State<E, Cpu>| -> Result<State<E, Cpu>, RuntimeError> { Ok(a) }
        };
        let disc = discrete_adjoint(
            &plan,
            &ModelFn::new(&model),
            &input,
            ALL,
            DiscreteStates::Record,
            loss(&a0),
        )
        .unwrap();
        let tape = tape_gradient(&plan, &model, &input, ALL, loss(&a0)).unwrap();
        assert_eq!((disc.nfe, disc.vjps), (5, 5));
        let mut worst = vec![
            (
                "x_T".to_string(),
                max_rel_err(&to_f64(&disc.dx_t), &to_f64(&tape.dx_t)),
            ),
            (
                "z".to_string(),
                max_rel_err(
                    &to_f64(disc.dz.as_ref().unwrap()),
                    &to_f64(tape.dz.as_ref().unwrap()),
                ),
            ),
        ];
        let (pd, pt) = (
            model.named_grads(disc.dtheta.as_ref().unwrap()),
            model.named_grads(tape.dtheta.as_ref().unwrap()),
        );
        // The gradient with respect to theta as one vector (the key projections' biases have a
        // zero gradient, softmax being blind to them: only round-off, judged on theta's scale).
        let flat = |g: &[(String, Vec<usize>, Vec<f64>)]| -> Vec<f64> {
            g.iter()
                .filter(|(n, _, _)| n != "class_embedding.weight") // unused: z is given
                .flat_map(|(_, _, v)| v.iter().copied())
                .collect()
        };
        let params = ("theta".to_string(), max_rel_err(&flat(&pd), &flat(&pt)));
        worst.push(params);
        for (what, e) in &worst {
            eprintln!("UNet, 5 DDIM steps: discrete adjoint vs tape, {what}: {e:.2e}");
            assert!(*e < tol, "{what}: {e:.2e}");
        }
    }

    #[test]
    fn unet_discrete_adjoint_equals_the_full_tape_f64() {
        adjoint_equals_tape::<f64>(1e-10);
    }

    #[test]
    fn unet_discrete_adjoint_equals_the_full_tape_f32() {
        adjoint_equals_tape::<f32>(1e-4);
    }

    /// dL/dt_i through 5 DDIM steps (the UNet's time through its timestep embedding): the
    /// discrete adjoint equals the full tape, the sinusoids on the tape from the time leaf
    /// (in f64 both ways, `time_projection_in_f64`).
    #[test]
    fn unet_time_gradients_equal_the_full_tape() {
        let (mut model, r) = load::<f64>("class_cond_cifar_style");
        model.time_projection_in_f64 = true;
        let plan = build_plan(&ddpm(), &ddim(&[999, 700, 400, 100, 30, 0])).unwrap();
        let x = state::<f64>(&r["x"].1, &r["x"].0);
        let z = state::<f64>(&r["z"].1, &r["z"].0);
        let a0 = state::<f64>(&r["cot"].1, &r["cot"].0);
        let noise = NoiseSource::Seeded(0);
        let input = Input::new(&x, Some(&z), &noise);
        let wrt = Wrt {
            times: true,
            ..Wrt::X_T
        };
        let (a1, a2) = (a0.clone(), a0.clone());
        let disc = discrete_adjoint(
            &plan,
            &ModelFn::new(&model),
            &input,
            wrt,
            DiscreteStates::Record,
            move |_| Ok(a1),
        )
        .unwrap();
        let tape = tape_gradient(&plan, &model, &input, wrt, move |_| Ok(a2)).unwrap();
        let (d, t) = (disc.dtimes.unwrap(), tape.dtimes.unwrap());
        let e = max_rel_err(&d, &t);
        eprintln!("UNet, 5 DDIM steps: dL/dt_i, discrete adjoint vs tape {e:.2e}: {d:?}");
        assert!(e < 1e-10, "{d:?} vs {t:?}");
    }

    /// The same gradient against central finite differences of the sampled output (f64).
    #[test]
    fn unet_discrete_adjoint_matches_finite_differences() {
        let (model, r) = load::<f64>("class_cond_cifar_style");
        let plan = build_plan(&ddpm(), &ddim(&[999, 700, 400, 100, 30, 0])).unwrap();
        let (xs, xv) = (&r["x"].0, r["x"].1.clone());
        let (zs, zv) = (&r["z"].0, r["z"].1.clone());
        let a0 = r["cot"].1.clone();
        let loss = |x: &[f64], z: &[f64]| -> f64 {
            let (x, z) = (state::<f64>(x, xs), state::<f64>(z, zs));
            let noise = NoiseSource::Seeded(0);
            let out = sample(
                &plan,
                &ModelFn::new(&model),
                &Input::new(&x, Some(&z), &noise),
                false,
            )
            .unwrap();
            to_f64(&out.x).iter().zip(&a0).map(|(a, b)| a * b).sum()
        };
        let (x, z) = (state::<f64>(&xv, xs), state::<f64>(&zv, zs));
        let noise = NoiseSource::Seeded(0);
        let cot = state::<f64>(&a0, &r["cot"].0);
        let g = discrete_adjoint(
            &plan,
            &ModelFn::new(&model),
            &Input::new(&x, Some(&z), &noise),
            ALL,
            DiscreteStates::Record,
            |_| Ok(cot.clone()),
        )
        .unwrap();
        let (dx, dz) = (to_f64(&g.dx_t), to_f64(g.dz.as_ref().unwrap()));
        // The loss is about 3880 and its derivatives about 1: a second-order difference at
        // h = 1e-5 carries about 1e-7 of the loss's rounding, as much as the check allowed (it
        // failed on a change of rounding alone); the fourth-order one at h = 1e-3 agrees to
        // 1e-9.
        let h = 1e-3;
        for i in [0, 37, xv.len() - 1] {
            let fd = central4(|x| loss(x, &zv), &xv, i, h);
            assert!(
                (fd - dx[i]).abs() < 1e-8 * fd.abs().max(1.0),
                "dx[{i}]: {fd} vs {}",
                dx[i]
            );
        }
        for i in [1, 40] {
            let fd = central4(|z| loss(&xv, z), &zv, i, h);
            assert!(
                (fd - dz[i]).abs() < 1e-8 * fd.abs().max(1.0),
                "dz[{i}]: {fd} vs {}",
                dz[i]
            );
        }
    }

    /// 3 DDIM steps at train indices 999, 500, 0 and their gradient, as diffusers and torch
    /// autograd compute them (the fixture's `ddim.*`).
    fn ddim_equals_diffusers<E: Float>(tag: &str, tol: f64)
    where
        Cpu: NnDevice<E>,
    {
        let (model, r) = load::<E>("class_cond_cifar_style");
        let plan = build_plan(&ddpm(), &ddim(&[999, 500, 0])).unwrap();
        let x = state::<E>(&r["x"].1, &r["x"].0);
        let z = state::<E>(&r["z"].1, &r["z"].0);
        let cot = state::<E>(&r["cot"].1, &r["cot"].0);
        let noise = NoiseSource::Seeded(0);
        let g = discrete_adjoint(
            &plan,
            &ModelFn::new(&model),
            &Input::new(&x, Some(&z), &noise),
            ALL,
            DiscreteStates::Record,
            |_| Ok(cot.clone()),
        )
        .unwrap();
        for (what, got) in [
            ("x0", to_f64(&g.x0)),
            ("dx_t", to_f64(&g.dx_t)),
            ("dz", to_f64(g.dz.as_ref().unwrap())),
        ] {
            let e = max_rel_err(&got, &r[&format!("ddim.{what}.{tag}")].1);
            eprintln!("3 DDIM steps ({tag}): {what} {e:.2e}");
            assert!(e < tol, "{what} ({tag}): {e:.2e}");
        }
    }

    #[test]
    fn unet_ddim_sample_and_gradient_equal_diffusers() {
        // f64: limited by the f32 time embedding (see above); f32: the forward's 1e-6 over
        // three evaluations and their VJPs.
        ddim_equals_diffusers::<f64>("f64", 1e-6);
        ddim_equals_diffusers::<f32>("f32", 1e-4);
    }
}

/// Training runs a batch at one model time per image: each row must equal the model run at that
/// row's time alone, with its class-embedding row as z.
#[test]
fn forward_train_runs_each_image_at_its_own_time_and_class() {
    let (model, r) = load::<f64>("class_cond_cifar_style");
    let (xs, xv) = &r["x"];
    let x = state::<f64>(xv, xs);
    let b = xs[0];
    let times: Vec<f64> = (0..b).map(|i| 100.0 + 333.0 * i as f64).collect();
    let labels: Vec<usize> = (0..b).map(|i| (3 * i + 1) % 4).collect();
    let image = x.rows().clone().reshape_like(&(b, xs[1], xs[2], xs[3]));
    let out = to_f64(
        &model
            .forward_train(
                image,
                &times,
                Some(&labels),
                adeis_runtime::nn::ParamGrads::Skip,
            )
            .unwrap(),
    );
    let width = x.width();
    for i in 0..b {
        let xi = state::<f64>(&xv[i * width..(i + 1) * width], &[1, xs[1], xs[2], xs[3]]);
        let zi = model.class_cond(&labels[i..i + 1]).unwrap();
        let want = to_f64(&model.forward(&xi, Some(&zi), &time(times[i])));
        let e = max_rel_err(&out[i * width..(i + 1) * width], &want);
        assert!(e < 1e-12, "row {i}: {e}");
    }
    assert!(model
        .forward_train(
            x.rows().clone().reshape_like(&(b, xs[1], xs[2], xs[3])),
            &times[..1],
            None,
            adeis_runtime::nn::ParamGrads::Skip
        )
        .is_err());
}

/// The class-embedding table gets its gradient on the training tape (through the product of
/// the one-hot rows with the table), equal to central differences of the loss.
#[test]
fn forward_train_differentiates_the_class_table() {
    let (model, r) = load::<f64>("class_cond_cifar_style");
    let (xs, xv) = &r["x"];
    let b = xs[0];
    let dims = (b, xs[1], xs[2], xs[3]);
    let times: Vec<f64> = (0..b).map(|i| 200.0 + 100.0 * i as f64).collect();
    let labels: Vec<usize> = (0..b).map(|i| i % 2).collect();
    let dev = Cpu::default();
    let loss_of = |m: &UNet2D<f64, Cpu>| -> f64 {
        let x = dev.tensor_from_vec(xv.clone(), dims);
        let out = m
            .forward_train(
                x,
                &times,
                Some(&labels),
                adeis_runtime::nn::ParamGrads::Skip,
            )
            .unwrap();
        out.square().sum::<Rank0, _>().array()
    };
    let x = dev.tensor_from_vec(xv.clone(), dims);
    let out = model
        .forward_train(
            x.trace(Gradients::leaky()),
            &times,
            Some(&labels),
            adeis_runtime::nn::ParamGrads::Compute,
        )
        .unwrap();
    let mut grads = out.square().sum::<Rank0, _>().backward();
    let host = model.host_grads(&mut grads);
    let k = model.param_index("class_embedding.weight").unwrap();
    let named = model.named_params();
    let (_, shape, table) = &named[k];
    let width = shape[1];
    let config = model.config().clone();
    let rebuilt = |values: &[f64]| {
        let mut tensors: std::collections::BTreeMap<String, (Vec<usize>, Vec<f64>)> = named
            .iter()
            .map(|(n, s, v)| (n.clone(), (s.clone(), v.clone())))
            .collect();
        tensors.get_mut("class_embedding.weight").unwrap().1 = values.to_vec();
        let mut source = TensorMapSource {
            tensors,
            origin: "perturbed".into(),
        };
        UNet2D::<f64, Cpu>::new(&dev, config.clone(), Prediction::Eps, &mut source).unwrap()
    };
    // entries of a used class (0, 1) and of an unused one (its gradient is zero)
    for entry in [3, width + 5, 3 * width + 2] {
        let fd = central(|v| loss_of(&rebuilt(v)), table, entry, 1e-5);
        let g = host[k][entry];
        assert!(
            (fd - g).abs() < 1e-6 * (1.0 + fd.abs()),
            "entry {entry}: tape {g} vs central difference {fd} (table value {})",
            table[entry]
        );
    }
    assert_eq!(host[k][3 * width + 2], 0.0, "class 3 is not in the batch");
}

/// cot^T d out / d(model time) of the UNet's VJP (through its timestep embedding) against
/// fourth-order central differences in f64, with the sinusoids in f64 (diffusers computes them
/// in f32, which makes the model a step function of t at f32's resolution); and with them in
/// f32 the VJP's time cotangent is the same to f32's round-off in the features.
#[test]
fn unet_time_cotangent_matches_finite_differences() {
    for name in ["class_cond_cifar_style", "attn_down_up"] {
        let (mut model, r) = load::<f64>(name);
        let x = state::<f64>(&r["x"].1, &r["x"].0);
        let z = r.get("z").map(|z| state::<f64>(&z.1, &z.0));
        let cot = state::<f64>(&r["cot"].1, &r["cot"].0);
        let c = to_f64(&cot);
        let time_cot = |m: &UNet2D<f64, Cpu>, t: f64| {
            m.vjp(&x, z.as_ref(), &time(t), &cot, None)
                .time
                .expect("the UNet differentiates its time")
                .model_t
        };
        for t in [37.0, 500.25] {
            let as_diffusers = time_cot(&model, t);
            model.time_projection_in_f64 = true;
            let got = time_cot(&model, t);
            let loss = |tv: &[f64]| -> f64 {
                let out = model.forward(&x, z.as_ref(), &time(tv[0]));
                to_f64(&out).iter().zip(&c).map(|(o, c)| o * c).sum()
            };
            let h = 1e-3;
            let fd = (4.0 * central(loss, &[t], 0, h) - central(loss, &[t], 0, 2.0 * h)) / 3.0;
            let err = (got - fd).abs() / fd.abs();
            let f32_diff = (as_diffusers - got).abs() / got.abs();
            eprintln!("{name} t = {t}: time cotangent {got:.8e}, differences {fd:.8e}: rel err {err:.2e}; f32 sinusoids {f32_diff:.2e} apart");
            assert!(err < 1e-7, "{name} t = {t}: {got} vs {fd}");
            assert!(
                f32_diff < 1e-4,
                "{name} t = {t}: f32 sinusoids {as_diffusers} vs {got}"
            );
            model.time_projection_in_f64 = false;
        }
    }
}

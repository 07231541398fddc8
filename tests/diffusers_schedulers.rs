//! diffusers scheduler configs as specs, against diffusers' own numbers: for every fixture of
//! tests/fixtures/schedulers (made by scripts/make-scheduler-fixtures.py: the config diffusers
//! saved, and the timesteps and final sample of diffusers' own loop on the ring-of-eight
//! mixture), the translated spec evaluates the model at the same timesteps and reaches the same
//! sample.

use std::path::{Path, PathBuf};

use adeis::prelude::*;
use adeis::runtime::analytic::GmmModel;
use adeis::runtime::to_f64;
use adeis::scheduler_config::translate;
use serde::Deserialize;

fn one() -> f64 {
    1.0
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

#[derive(Deserialize)]
struct Reference {
    class_name: String,
    steps: usize,
    /// Whole train timesteps, but EulerDiscreteScheduler's "linspace" ones are fractional
    /// (float32 in diffusers).
    timesteps: Vec<f64>,
    x_t: Vec<Vec<f64>>,
    /// What diffusers' loop starts from, as a multiple of x_t in adeis's (unscaled) terms:
    /// EulerDiscreteScheduler multiplies x_t by init_noise_sigma = sigma_max for "linspace" and
    /// "trailing", which is x_t times sqrt(1 - alphas_cumprod[T - 1]) unscaled.
    #[serde(default = "one")]
    start_scale: f64,
    /// What diffusers returns, as a multiple of the final state in adeis's terms:
    /// EulerDiscreteScheduler returns its scaled sample x / alpha, which is x itself only when
    /// the last sigma is 0.
    #[serde(default = "one")]
    end_scale: f64,
    x_0: Vec<Vec<f64>>,
    x_0_float64: Vec<Vec<f64>>,
    #[serde(default)]
    noise: Vec<Vec<Vec<f64>>>,
    /// The states' shape (the UNet's [batch, channels, height, width]); rows of x_t otherwise.
    #[serde(default)]
    shape: Vec<usize>,
}

/// The fixtures' names: on the mixture, and on the UNet fixture attn_down_up.
#[derive(Deserialize)]
struct Index {
    mixture: Vec<String>,
    unet: Vec<String>,
}

fn index() -> Index {
    let path = root().join("tests/fixtures/schedulers/index.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The mixture every mixture fixture samples (examples/models/ring8.json).
fn ring8() -> GmmModel {
    let path = root().join("examples/models/ring8.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A fixture case's reference.json.
fn reference(case: &Path) -> Reference {
    serde_json::from_str(&std::fs::read_to_string(case.join("reference.json")).unwrap()).unwrap()
}

fn flat(rows: &[Vec<f64>]) -> Vec<f64> {
    rows.iter().flatten().copied().collect()
}

/// Samples the spec from the fixture's x_T (and its noise, for the SDE samplers).
fn run(spec: &Spec, r: &Reference, model: &GmmModel) -> Vec<f64> {
    let problem = Problem::from_spec(spec).unwrap();
    let dev = Cpu::default();
    let (b, d) = (r.x_t.len(), r.x_t[0].len());
    let start: Vec<f64> = flat(&r.x_t).iter().map(|v| v * r.start_scale).collect();
    let x_t = State::<f64, Cpu>::from_f64(&dev, &start, &[b, d]).unwrap();
    let noise = if r.noise.is_empty() {
        NoiseSource::Seeded(0)
    } else {
        NoiseSource::Given(
            r.noise
                .iter()
                .take(problem.plan().n_noises)
                .map(|n| State::<f64, Cpu>::from_f64(&dev, &flat(n), &[b, d]).unwrap())
                .collect(),
        )
    };
    let mut model_fn = ModelFn::new(model);
    model_fn.threshold = spec.thresholding.as_ref().map(|t| Threshold {
        quantile: t.quantile,
        max: t.max,
    });
    let out = sample(
        problem.plan(),
        &model_fn,
        &Input::new(&x_t, None, &noise),
        false,
    )
    .unwrap();
    to_f64(&out.x).iter().map(|v| v * r.end_scale).collect()
}

fn max_abs(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn every_fixture_config_reproduces_diffusers_sample() {
    let dir = root().join("tests/fixtures/schedulers");
    let names = index().mixture;
    let model = ring8();
    assert!(names.len() >= 20, "{names:?}");
    let mut worst = 0.0f64;
    let mut failures = Vec::new();
    for name in &names {
        let case = dir.join(name);
        let text = std::fs::read_to_string(case.join("scheduler_config.json")).unwrap();
        let r: Reference = reference(&case);
        let t = translate(&text, r.steps).unwrap_or_else(|e| panic!("{name}: {e}"));
        // The same timesteps: whole ones exactly; fractional ones (Euler's "linspace", which
        // diffusers computes in float32) to float32's rounding.
        assert_eq!(t.timesteps.len(), r.timesteps.len(), "{name}: timesteps");
        for (a, b) in t.timesteps.iter().zip(&r.timesteps) {
            let tolerance = if b.fract() == 0.0 {
                0.0
            } else {
                f32::EPSILON as f64 * b.abs()
            };
            assert!(
                (a - b).abs() <= tolerance,
                "{name}: timesteps {:?} and {:?}",
                t.timesteps,
                r.timesteps
            );
        }
        let x = run(&t.spec, &r, &model);
        let (shipped, exact) = (flat(&r.x_0), flat(&r.x_0_float64));
        // diffusers computes its betas, their products and its sigmas in float32, and each
        // update from a float32 copy of the sample; x_0_float64 is its own scheduler source
        // with those float32s made float64. adeis (float64 throughout) must agree with that to
        // round-off; as shipped, diffusers differs from it by its float32 rounding alone.
        let drift = max_abs(&shipped, &exact);
        let (err, err_shipped) = (max_abs(&x, &exact), max_abs(&x, &shipped));
        worst = worst.max(err);
        if err > 1e-10 || drift > 1e-4 {
            failures.push(format!(
                "{name} ({}): max |adeis - diffusers in float64| = {err:.2e} (as shipped: {err_shipped:.2e}, its float32 drift {drift:.2e})",
                r.class_name
            ));
        }
        println!(
            "{name:26} {:28} {:3} steps: {err:.1e} (diffusers in float64), {err_shipped:.1e} (as shipped)",
            r.class_name, r.steps
        );
    }
    println!("worst against diffusers in float64: {worst:.2e}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What each part of the translation is for: with adeis's own choice in its place, the sample
/// moves far beyond the round-off the test above allows.
#[test]
fn each_diffusers_choice_matters() {
    let dir = root().join("tests/fixtures/schedulers");
    let model = ring8();
    type Change = fn(&mut Spec);
    fn sampler(spec: &mut Spec) -> &mut SamplerSpec {
        spec.sampler.as_mut().unwrap()
    }
    let cases: [(&str, &str, Change); 8] = [
        ("dpmpp_3m", "third_order = taylor", |s| {
            sampler(s).third_order = adeis::compiler::sampler::ThirdOrder::Taylor
        }),
        ("deis_2", "deis_basis = t", |s| {
            sampler(s).deis_basis = adeis::compiler::sampler::DeisBasis::T
        }),
        ("dpmpp_2m", "count_final_step = false", |s| {
            sampler(s).count_final_step = false
        }),
        ("dpmpp_2m_sigma_min_euler", "euler_at_final = false", |s| {
            sampler(s).euler_at_final = false
        }),
        ("dpmpp_2s", "stages = lambda", |s| {
            sampler(s).stages = adeis::compiler::sampler::Stages::Lambda
        }),
        ("dpmpp_3s", "stages = lambda", |s| {
            sampler(s).stages = adeis::compiler::sampler::Stages::Lambda
        }),
        ("dpmpp_2m_thresholding", "no [thresholding]", |s| {
            s.thresholding = None
        }),
        ("unipc_disable_corrector", "disable_corrector = []", |s| {
            sampler(s).disable_corrector.clear()
        }),
    ];
    for (name, what, change) in cases {
        let case = dir.join(name);
        let text = std::fs::read_to_string(case.join("scheduler_config.json")).unwrap();
        let r: Reference = reference(&case);
        let mut spec = translate(&text, r.steps).unwrap().spec;
        change(&mut spec);
        let err = max_abs(&run(&spec, &r, &model), &flat(&r.x_0_float64));
        println!("{name} with {what}: {err:.2e} from diffusers");
        assert!(err > 1e-5, "{name} with {what}: {err:.2e}");
    }
}

mod support;
use support::adeis;

fn fixture_config(name: &str) -> String {
    format!("tests/fixtures/schedulers/{name}/scheduler_config.json")
}

#[test]
fn the_command_line_runs_a_scheduler_config() {
    let dir = tempfile::tempdir().unwrap();
    let r = reference(&root().join("tests/fixtures/schedulers/unipc_bh2"));
    let x = dir.path().join("x.npy");
    adeis::npy::write_npy(&x, &[r.x_t.len(), 2], &flat(&r.x_t), 8).unwrap();
    let out = dir.path().join("out.npy");
    let config = fixture_config("unipc_bh2");
    let (x_s, out_s) = (x.to_str().unwrap(), out.to_str().unwrap());
    let model = "gmm:examples/models/ring8.json";
    let (ok, stdout, err) = adeis(&[
        "sample", "--spec", &config, "--steps", "10", "--model", model, "--x-t", x_s, "--out",
        out_s, "--dtype", "f64",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("NFE 10"), "{stdout}");
    let got = adeis::npy::read_npy(&out).unwrap().data;
    assert!(max_abs(&got, &flat(&r.x_0_float64)) < 1e-12);

    // Without --steps: the error says what to give.
    let (ok, _, err) = adeis(&[
        "sample", "--spec", &config, "--model", model, "--x-t", x_s, "--out", out_s,
    ]);
    assert!(!ok && err.contains("scheduler_config.json: steps: a diffusers scheduler config leaves the number of inference steps to the caller: give --steps N"), "{err}");

    // grad: the discrete adjoint with respect to x_T.
    let g = dir.path().join("g");
    let (ok, stdout, err) = adeis(&[
        "grad",
        "--spec",
        &config,
        "--steps",
        "10",
        "--model",
        model,
        "--x-t",
        x_s,
        "--cot",
        x_s,
        "--out-dir",
        g.to_str().unwrap(),
        "--dtype",
        "f64",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("\"method\": \"discrete\""), "{stdout}");
    assert!(g.join("dx_t.npy").exists());

    // A prediction the model does not make.
    let v = dir.path().join("v.json");
    let text = std::fs::read_to_string(root().join(&config)).unwrap();
    std::fs::write(&v, text.replace("\"epsilon\"", "\"v_prediction\"")).unwrap();
    let (ok, _, err) = adeis(&[
        "sample",
        "--spec",
        v.to_str().unwrap(),
        "--steps",
        "10",
        "--model",
        model,
        "--x-t",
        x_s,
        "--out",
        out_s,
    ]);
    assert!(
        !ok && err.contains("prediction_type says the model predicts v_prediction, but the mixture predicts epsilon"),
        "{err}"
    );
    // A key adeis does not know, by its name and the file.
    std::fs::write(&v, text.replace("\"flow_shift\"", "\"flow_shif\"")).unwrap();
    let (ok, _, err) = adeis(&["check", v.to_str().unwrap(), "--steps", "10"]);
    assert!(
        !ok && err.contains("v.json: flow_shif: not a key adeis knows for UniPCMultistepScheduler"),
        "{err}"
    );
}

#[test]
fn check_says_how_the_config_maps() {
    let (ok, out, err) = adeis(&[
        "check",
        "--spec",
        &fixture_config("dpmpp_3m"),
        "--steps",
        "10",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("a diffusers scheduler config, run as this adeis spec"),
        "{out}"
    );
    assert!(
        out.contains("evaluated at train timesteps [999, 899, 799"),
        "{out}"
    );
    assert!(
        out.contains("third_order = \"taylor\" in an adeis spec"),
        "{out}"
    );
    assert!(out.contains("count_final_step = true"), "{out}");
    // The 10 steps asked for are said as such, the final step to sigma = 0 explained.
    assert!(
        out.contains("9 steps and the final step to sigma = 0 (denoise_to_zero: the data prediction of the last evaluation), 10 steps as diffusers counts them, NFE 10"),
        "{out}"
    );
    assert!(
        out.contains(
            "steps = 9  # + the final step to sigma = 0 (denoise_to_zero) = the 10 steps asked for"
        ),
        "{out}"
    );
    // --steps in place of an adeis spec's sampler.steps.
    let (ok, out, err) = adeis(&["check", "examples/specs/sample_dpmpp.toml", "--steps", "7"]);
    assert!(ok, "{err}");
    assert!(out.contains("7 steps, NFE 7"), "{out}");
}

/// A real network: diffusers' scheduler configs on the UNet fixture attn_down_up, through
/// `adeis sample --model diffusers:DIR --spec scheduler_config.json --steps N`.
#[test]
fn scheduler_configs_sample_a_diffusers_unet_as_diffusers_does() {
    let dir = tempfile::tempdir().unwrap();
    let names = index().unet;
    assert!(!names.is_empty());
    for name in names {
        let case = root().join("tests/fixtures/schedulers").join(&name);
        let r: Reference = reference(&case);
        let x = dir.path().join("x.npy");
        adeis::npy::write_npy(&x, &r.shape, &flat(&r.x_t), 8).unwrap();
        let out = dir.path().join("out.npy");
        let config = fixture_config(&name);
        let steps = r.steps.to_string();
        // `adeis sample` on the UNet fixture, from x, with `spec` and then `extra` flags.
        let sample_unet = |spec: &str, extra: &[&str]| {
            let mut a = vec![
                "sample",
                "--spec",
                spec,
                "--model",
                "diffusers:tests/fixtures/unet/attn_down_up",
                "--x-t",
                x.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--dtype",
                "f64",
            ];
            a.extend_from_slice(extra);
            let (ok, _, err) = adeis(&a);
            assert!(ok, "{name}: {err}");
            adeis::npy::read_npy(&out).unwrap()
        };
        let got = sample_unet(&config, &["--steps", &steps]);
        assert_eq!(got.shape, r.shape);
        let want = flat(&r.x_0_float64);
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = max_abs(&got.data, &want) / scale;
        let shipped = max_abs(&got.data, &flat(&r.x_0)) / scale;
        println!("{name}: relative {err:.1e} from diffusers in float64, {shipped:.1e} as shipped");
        // The UNet's timestep embedding is float32 in diffusers whatever the model's dtype (and
        // so in adeis): torch's and Rust's float32 sin and cos may differ in the last bit, which
        // agrees the float64 forward passes to 1e-7 (runtime/tests/unet.rs); six steps carry it.
        assert!(err < 1e-7, "{name}: {err:.2e}");

        // With Karras sigmas the network is told diffusers' rounded timesteps (model_times);
        // told adeis's own times there instead, it computes something else.
        let text = std::fs::read_to_string(root().join(&config)).unwrap();
        let mut spec = translate(&text, r.steps).unwrap().spec;
        if spec.sampler.as_ref().unwrap().model_times.is_some() {
            spec.sampler.as_mut().unwrap().model_times = None;
            let own = dir.path().join("own.toml");
            std::fs::write(&own, toml::to_string(&spec).unwrap()).unwrap();
            let moved = max_abs(&sample_unet(own.to_str().unwrap(), &[]).data, &want) / scale;
            println!("{name} without model_times: relative {moved:.1e}");
            assert!(
                moved > 1e-4,
                "{name}: model_times changed nothing ({moved:.1e})"
            );
        }
    }
}

/// diffusers' words in an adeis spec: `timestep_spacing` (then train index 0, diffusers'
/// `final_sigmas_type = "sigma_min"`) and `prediction = "epsilon"` run diffusers' grid.
#[test]
fn timestep_spacing_in_an_adeis_spec_runs_diffusers_grid() {
    let dir = root().join("tests/fixtures/schedulers");
    let model = ring8();
    let cases = [
        (
            "dpmpp_2m_sigma_min",
            "method = \"dpm_solver_pp\"\norder = 2\nsteps = 10",
        ),
        (
            "deis_2",
            "method = \"deis\"\norder = 2\nsteps = 10\ndeis_basis = \"log_rho\"",
        ),
        (
            "unipc_bh1_3",
            "method = \"unipc\"\norder = 3\nsteps = 10\nvariant = \"bh1\"",
        ),
    ];
    for (name, sampler) in cases {
        let text = format!(
            "[schedule]\nkind = \"discrete\"\n\n[sampler]\n{sampler}\ntimestep_spacing = \"linspace\"\nprediction = \"epsilon\"\n"
        );
        let spec = adeis::spec_file::parse_spec(&text, adeis::spec_file::SpecFormat::Toml)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let r = reference(&dir.join(name));
        let err = max_abs(&run(&spec, &r, &model), &flat(&r.x_0_float64));
        println!("{name} as an adeis spec: {err:.1e}");
        assert!(err < 1e-10, "{name}: {err:.2e}");
    }
    // steps_offset goes with "leading"; timestep_spacing needs a discrete schedule.
    let bad = |text: &str| {
        let spec = adeis::spec_file::parse_spec(text, adeis::spec_file::SpecFormat::Toml).unwrap();
        Problem::from_spec(&spec).unwrap_err().to_string()
    };
    let e = bad("[schedule]\nkind = \"discrete\"\n[sampler]\nmethod = \"ddim\"\ntimestep_spacing = \"linspace\"\nsteps_offset = 1\n");
    assert!(e.contains("sampler.steps_offset"), "{e}");
    let e = bad("[schedule]\nkind = \"vp_linear\"\n[sampler]\nmethod = \"ddim\"\ntimestep_spacing = \"trailing\"\n");
    assert!(
        e.contains("sampler.timestep_spacing") && e.contains("discrete"),
        "{e}"
    );
    let e = bad("[schedule]\nkind = \"discrete\"\n[sampler]\nmethod = \"ddim\"\nsteps = 1000\ntimestep_spacing = \"linspace\"\n");
    assert!(e.contains("repeats train timestep"), "{e}");
}

/// dL/dt_i through a plan whose network times are fixed (model_times): the discrete adjoint
/// against central differences of the whole sample, on the diffusers UNet fixture, where the
/// network reads only its (fixed) time input and the conversions move with alpha and sigma.
#[test]
fn time_gradients_hold_with_fixed_model_times() {
    use adeis::compiler::{GradMethod, GradientSpec, WrtKey};
    let case = root().join("tests/fixtures/schedulers/unet_dpmpp_2m_karras");
    let text = std::fs::read_to_string(case.join("scheduler_config.json")).unwrap();
    let r: Reference = reference(&case);
    let mut spec = translate(&text, r.steps).unwrap().spec;
    assert!(spec.sampler.as_ref().unwrap().model_times.is_some());
    spec.gradient = Some(GradientSpec {
        method: GradMethod::Discrete,
        wrt: vec![WrtKey::XT, WrtKey::Times],
        ..GradientSpec::default()
    });
    let dev = Cpu::default();
    let unet =
        adeis::diffusers::DiffusersDir::open(&root().join("tests/fixtures/unet/attn_down_up"))
            .unwrap()
            .load::<f64, _>(&dev)
            .unwrap();
    let x_t = State::<f64, Cpu>::from_f64(&dev, &flat(&r.x_t), &r.shape).unwrap();
    let cot: Vec<f64> = (0..flat(&r.x_t).len())
        .map(|i| ((i * 7 % 11) as f64 - 5.0) / 5.0)
        .collect();
    let loss = |spec: &Spec| -> f64 {
        let p = Problem::from_spec(spec).unwrap();
        let out = sample(
            p.plan(),
            &ModelFn::new(&unet),
            &Input::new(&x_t, None, &NoiseSource::Seeded(0)),
            false,
        )
        .unwrap();
        to_f64(&out.x).iter().zip(&cot).map(|(a, b)| a * b).sum()
    };
    let problem = Problem::from_spec(&spec).unwrap();
    let cot_state = State::<f64, Cpu>::from_f64(&dev, &cot, &r.shape).unwrap();
    let g = gradient(
        &problem,
        &ModelFn::new(&unet),
        &Input::new(&x_t, None, &NoiseSource::Seeded(0)),
        |_| Ok(cot_state.clone()),
    )
    .unwrap();
    let dtimes = g.dtimes.unwrap();
    let times = spec.sampler.as_ref().unwrap().times.clone().unwrap();
    for i in [1, times.len() / 2, times.len() - 2] {
        let h = 1e-6 * times[i];
        let at = |d: f64| {
            let mut s = spec.clone();
            s.sampler.as_mut().unwrap().times.as_mut().unwrap()[i] += d;
            loss(&s)
        };
        let fd = (at(h) - at(-h)) / (2.0 * h);
        let err = (fd - dtimes[i]).abs() / fd.abs().max(1.0);
        println!(
            "dL/dt_{i}: adjoint {:.6e}, differences {fd:.6e}, rel {err:.1e}",
            dtimes[i]
        );
        assert!(err < 1e-5, "dL/dt_{i}: {} vs {fd}", dtimes[i]);
    }
}

/// The command line applies a config's thresholding and runs the singlestep scheduler.
#[test]
fn the_command_line_thresholds_and_runs_singlestep_configs() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["dpmpp_2m_thresholding", "dpmpp_3s", "dpmpp_2s_thresholding"] {
        let r = reference(&root().join("tests/fixtures/schedulers").join(name));
        let x = dir.path().join(format!("{name}_x.npy"));
        adeis::npy::write_npy(&x, &[r.x_t.len(), 2], &flat(&r.x_t), 8).unwrap();
        let out = dir.path().join(format!("{name}_out.npy"));
        let steps = r.steps.to_string();
        let (ok, _, err) = adeis(&[
            "sample",
            "--spec",
            &fixture_config(name),
            "--steps",
            &steps,
            "--model",
            "gmm:examples/models/ring8.json",
            "--x-t",
            x.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--dtype",
            "f64",
        ]);
        assert!(ok, "{name}: {err}");
        let got = adeis::npy::read_npy(&out).unwrap().data;
        let e = max_abs(&got, &flat(&r.x_0_float64));
        assert!(e < 1e-12, "{name}: {e:.2e}");
    }
}

//! diffusers' flow-matching scheduler configs as specs, against diffusers' own numbers: for
//! every fixture of tests/fixtures/flow_schedulers (made by
//! scripts/make-flow-scheduler-fixtures.py: the config diffusers saved, its sigmas, and the
//! final sample of diffusers' own loop on Gaussian data whose flow velocity both sides compute
//! in closed form), the translated spec runs on diffusers' sigmas, tells the network diffusers'
//! timesteps and reaches diffusers' float64 sample to 1e-12: FlowMatchEulerDiscreteScheduler
//! (static and dynamic shifts, shift_terminal, Karras and exponential sigmas), and
//! DPMSolverMultistepScheduler and DEISMultistepScheduler with use_flow_sigmas and
//! flow_prediction.

use std::path::{Path, PathBuf};

use adeis::compiler::Instr;
use adeis::prelude::*;
use adeis::scheduler_config::{translate_with, FlowShiftInputs};
use serde::Deserialize;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

#[derive(Deserialize)]
struct GaussianData {
    mu: f64,
    s2: f64,
}

#[derive(Deserialize)]
struct Reference {
    steps: usize,
    model: GaussianData,
    /// The float64 twin's sigmas, the final 0 included.
    sigmas_float64: Vec<f64>,
    timesteps_float64: Vec<f64>,
    x_t: Vec<Vec<f64>>,
    x_0: Vec<Vec<f64>>,
    x_0_float64: Vec<Vec<f64>>,
    mu: Option<f64>,
    image_seq_len: Option<usize>,
    /// The SDE schedulers' noise, one draw per step.
    #[serde(default)]
    noise: Vec<Vec<Vec<f64>>>,
}

fn cases() -> Vec<(String, PathBuf)> {
    let dir = root().join("tests/fixtures/flow_schedulers");
    let names: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    names
        .into_iter()
        .map(|n| (n.clone(), dir.join(n)))
        .collect()
}

fn flat(rows: &[Vec<f64>]) -> Vec<f64> {
    rows.iter().flatten().copied().collect()
}

fn max_abs(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn every_flow_fixture_reproduces_diffusers_float64_sample() {
    let dev = Cpu::default();
    for (name, case) in cases() {
        let r: Reference =
            serde_json::from_str(&std::fs::read_to_string(case.join("reference.json")).unwrap())
                .unwrap();
        let text = std::fs::read_to_string(case.join("scheduler_config.json")).unwrap();
        let inputs = FlowShiftInputs {
            mu: r.mu,
            image_seq_len: r.image_seq_len,
        };
        let t = translate_with(&text, r.steps, &inputs).unwrap_or_else(|e| panic!("{name}: {e}"));
        let problem = Problem::from_spec(&t.spec).unwrap();
        let plan = problem.plan();
        // The grid is diffusers' sigmas (t = s), and the network is told its timesteps.
        let sigmas = &r.sigmas_float64[..r.steps];
        assert!(
            max_abs(&plan.grid, sigmas) < 1e-15,
            "{name}: grid {:?} vs diffusers' sigmas {:?}",
            plan.grid,
            sigmas
        );
        let told: Vec<f64> = plan
            .instrs
            .iter()
            .filter_map(|i| match i {
                Instr::Eval { time, .. } => Some(time.model_t),
                _ => None,
            })
            .collect();
        // One evaluation a step; where the last sigma repeats (DEIS), diffusers' last
        // evaluation feeds a zero-length step, which adeis leaves out.
        let repeated = r.sigmas_float64[r.steps] == r.sigmas_float64[r.steps - 1];
        assert_eq!(
            told.len(),
            r.steps - usize::from(repeated),
            "{name}: evaluations"
        );
        assert!(
            max_abs(&told, &r.timesteps_float64[..told.len()]) < 1e-12,
            "{name}: timesteps {told:?} vs {:?}",
            r.timesteps_float64
        );
        let model = GaussianModel {
            mu: r.model.mu,
            s2: r.model.s2,
            dim: r.x_t[0].len(),
        }
        .predicting(Prediction::Flow);
        let (b, d) = (r.x_t.len(), r.x_t[0].len());
        let x_t = State::<f64, Cpu>::from_f64(&dev, &flat(&r.x_t), &[b, d]).unwrap();
        let noise = if r.noise.is_empty() {
            NoiseSource::Seeded(0)
        } else {
            NoiseSource::Given(
                r.noise
                    .iter()
                    .take(plan.n_noises)
                    .map(|n| State::<f64, Cpu>::from_f64(&dev, &flat(n), &[b, d]).unwrap())
                    .collect(),
            )
        };
        let out = sample(
            plan,
            &ModelFn::new(&model),
            &Input::new(&x_t, None, &noise),
            false,
        )
        .unwrap();
        let got = to_f64(&out.x);
        let err64 = max_abs(&got, &flat(&r.x_0_float64));
        assert!(
            err64 < 1e-12,
            "{name}: {err64:e} from diffusers' float64 twin"
        );
        // As shipped, diffusers differs from its float64 twin by its float32 sigmas and
        // float32 copy of the sample alone.
        let drift = max_abs(&flat(&r.x_0), &flat(&r.x_0_float64));
        assert!(drift < 1e-4, "{name}: diffusers' float32 drift {drift:e}");
        println!(
            "{name:28} {:3} steps: {err64:.1e} (diffusers in float64), {:.1e} (as shipped)",
            r.steps,
            max_abs(&got, &flat(&r.x_0))
        );
    }
}

#[test]
fn dynamic_shifting_needs_mu_and_other_classes_refuse_it() {
    let case = root().join("tests/fixtures/flow_schedulers/flow_euler_dynamic_mu");
    let text = std::fs::read_to_string(case.join("scheduler_config.json")).unwrap();
    let e = translate_with(&text, 10, &FlowShiftInputs::default()).unwrap_err();
    assert_eq!(e.key, "use_dynamic_shifting");
    assert!(e.to_string().contains("--mu"), "{e}");
    let both = FlowShiftInputs {
        mu: Some(1.0),
        image_seq_len: Some(4096),
    };
    assert_eq!(translate_with(&text, 10, &both).unwrap_err().key, "mu");
    let ddim = std::fs::read_to_string(
        root().join("tests/fixtures/schedulers/ddim_trailing/scheduler_config.json"),
    )
    .unwrap();
    let mu = FlowShiftInputs {
        mu: Some(1.0),
        image_seq_len: None,
    };
    assert_eq!(translate_with(&ddim, 10, &mu).unwrap_err().key, "mu");
}

#[test]
fn flow_options_adeis_does_not_run_are_refused_by_name() {
    let base = std::fs::read_to_string(
        root().join("tests/fixtures/flow_schedulers/flow_euler_sd3/scheduler_config.json"),
    )
    .unwrap();
    for (key, value) in [
        ("invert_sigmas", "true"),
        ("stochastic_sampling", "true"),
        ("use_beta_sigmas", "true"),
        ("time_shift_type", "\"cubic\""),
        ("shift", "0"),
        ("shift_terminal", "1.5"),
    ] {
        let mut v: serde_json::Value = serde_json::from_str(&base).unwrap();
        v[key] = serde_json::from_str(value).unwrap();
        let e = translate_with(&v.to_string(), 10, &FlowShiftInputs::default()).unwrap_err();
        assert_eq!(e.key, key, "{key} = {value}: {e}");
    }
    let mut v: serde_json::Value = serde_json::from_str(&base).unwrap();
    v["no_such_key"] = serde_json::Value::Bool(true);
    let e = translate_with(&v.to_string(), 10, &FlowShiftInputs::default()).unwrap_err();
    assert_eq!(e.key, "no_such_key");
    let e = translate_with(&base, 1, &FlowShiftInputs::default()).unwrap_err();
    assert_eq!(e.key, "steps");
}

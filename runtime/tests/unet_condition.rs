//! diffusers' `UNet2DConditionModel` (Stable Diffusion's UNet) against diffusers itself: the
//! fixtures of tests/fixtures/unet_condition (made by scripts/make-sd-unet-fixtures.py) hold
//! small random models in diffusers' layout and what torch computes for them. The forward pass
//! and the VJPs with respect to the latents, the encoder hidden states and parameters must
//! agree in f64 and f32; the time cotangent matches a finite difference.

use std::path::{Path, PathBuf};

use adeis_compiler::{Prediction, TimeInfo};
use adeis_io::safetensors::{read_safetensors, TensorMap};
use adeis_runtime::nn::{Float, NnDevice};
use adeis_runtime::unet::{TensorMapSource, UNet2DCondition, UNet2DConditionConfig};
use adeis_runtime::{to_f64, Denoiser, State};
use dfdx::prelude::*;

mod common;
use common::{max_rel_err, named_grad_errors};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/unet_condition")
}

const CASES: [&str; 2] = ["sd1_style", "sd2_style_linear_bf16"];

fn load<E: Float>(name: &str) -> (UNet2DCondition<E, Cpu>, TensorMap)
where
    Cpu: NnDevice<E>,
{
    let dir = fixtures().join(name);
    let config: UNet2DConditionConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let mut source = TensorMapSource {
        tensors: read_safetensors(&dir.join("diffusion_pytorch_model.safetensors")).unwrap(),
        origin: name.into(),
    };
    let r = read_safetensors(&dir.join("reference.safetensors")).unwrap();
    let tokens = r["z"].0[1];
    let model = UNet2DCondition::new(&Cpu::default(), config, Prediction::Eps, &mut source)
        .unwrap()
        .with_tokens(tokens);
    source.finish().unwrap();
    (model, r)
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

fn check_against_diffusers<E: Float>(tag: &str, forward_tol: f64, vjp_tol: f64)
where
    Cpu: NnDevice<E>,
{
    for name in CASES {
        let (model, r) = load::<E>(name);
        let x = state::<E>(&r["x"].1, &r["x"].0);
        let z = state::<E>(&r["z"].1, &r["z"].0);
        let t = time(r["timestep"].1[0]);
        let out = model.forward(&x, Some(&z), &t);
        let e = max_rel_err(&to_f64(&out), &r[&format!("out.{tag}")].1);
        eprintln!("{name} ({tag}): forward {e:.2e}");
        assert!(e < forward_tol, "{name} ({tag}): forward error {e:.2e}");

        let cot = state::<E>(&r["cot"].1, &r["cot"].0);
        let mut acc = model.zero_grads();
        let c = model.vjp(&x, Some(&z), &t, &cot, Some((&mut acc, 1.0)));
        let mut errs = vec![
            (
                "x".to_string(),
                max_rel_err(&to_f64(&c.x), &r[&format!("dx.{tag}")].1),
            ),
            (
                "encoder hidden states".to_string(),
                max_rel_err(
                    &to_f64(c.cond.as_ref().unwrap()),
                    &r[&format!("dz.{tag}")].1,
                ),
            ),
        ];
        let param_errs = named_grad_errors(&model.named_grads(&acc), &r, "dparam.", tag);
        assert!(
            param_errs.len() >= 12,
            "{name}: the fixture checks {} parameters",
            param_errs.len()
        );
        errs.extend(param_errs);
        for (what, e) in &errs {
            eprintln!("{name} ({tag}): VJP {what} {e:.2e}");
            assert!(
                *e < vjp_tol,
                "{name} ({tag}): VJP w.r.t. {what}: error {e:.2e}"
            );
        }
    }
}

/// In f64 to round-off: the fixtures' timesteps are ones whose f32 time sinusoids (diffusers
/// computes them in f32 whatever the model's dtype, as adeis does) torch and Rust round alike.
#[test]
fn unet_condition_forward_and_vjps_equal_diffusers_in_f64() {
    check_against_diffusers::<f64>("f64", 1e-10, 1e-10);
}

#[test]
fn unet_condition_forward_and_vjps_equal_diffusers_in_f32() {
    check_against_diffusers::<f32>("f32", 1e-5, 1e-4);
}

/// The VJP with respect to the encoder hidden states against a fourth-order central difference
/// of cot^T out along a random direction, in f64.
#[test]
fn unet_condition_encoder_vjp_matches_finite_differences() {
    for name in CASES {
        let (model, r) = load::<f64>(name);
        let x = state::<f64>(&r["x"].1, &r["x"].0);
        let z = state::<f64>(&r["z"].1, &r["z"].0);
        let cot = r["cot"].1.clone();
        let t = time(r["timestep"].1[0]);
        let c = model.vjp(&x, Some(&z), &t, &state::<f64>(&cot, &r["cot"].0), None);
        let v: Vec<f64> = adeis_runtime::noise::normals(3, 0, z.to_f64().len());
        let f = |h: f64| -> f64 {
            let zh: Vec<f64> = z.to_f64().iter().zip(&v).map(|(a, b)| a + h * b).collect();
            let out = model.forward(&x, Some(&state::<f64>(&zh, &r["z"].0)), &t);
            out.to_f64().iter().zip(&cot).map(|(a, b)| a * b).sum()
        };
        let h = 1e-3;
        let fd = (f(-2.0 * h) - 8.0 * f(-h) + 8.0 * f(h) - f(2.0 * h)) / (12.0 * h);
        let an: f64 = c
            .cond
            .unwrap()
            .to_f64()
            .iter()
            .zip(&v)
            .map(|(a, b)| a * b)
            .sum();
        let e = (fd - an).abs() / an.abs();
        eprintln!("{name}: directional derivative {an:.10e}, finite difference {fd:.10e}, {e:.2e}");
        assert!(e < 1e-8, "{name}: {an} vs {fd}");
    }
}

#[test]
fn unet_condition_config_errors_name_the_key() {
    let cases = [
        (
            r#"{"addition_embed_type": "text_time"}"#,
            "addition_embed_type",
        ),
        (r#"{"class_embed_type": "timestep"}"#, "class_embed_type"),
        (
            r#"{"down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"]}"#,
            "down_block_types[3]",
        ),
        (
            r#"{"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}"#,
            "mid_block_type",
        ),
        (
            r#"{"attention_head_dim": [8, 8]}"#,
            "attention_head_dim has 2 entries",
        ),
        (r#"{"attention_head_dim": 7}"#, "number of heads"),
        (r#"{"dual_cross_attention": true}"#, "dual_cross_attention"),
        (r#"{"time_cond_proj_dim": 256}"#, "time_cond_proj_dim"),
        (r#"{"layers_per_block": [2, 2, 2, 2]}"#, "layers_per_block"),
        (r#"{"attention_type": "gated"}"#, "attention_type"),
        (
            r#"{"cross_attention_norm": "group_norm"}"#,
            "cross_attention_norm",
        ),
        (
            r#"{"resnet_out_scale_factor": 2.0}"#,
            "resnet_out_scale_factor",
        ),
    ];
    for (json, want) in cases {
        let c: UNet2DConditionConfig = serde_json::from_str(json).unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains(want), "{json}: {err}");
    }
    // Stable Diffusion 1.5's own config (architecture keys) validates.
    let sd15 = r#"{"_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false,
        "cross_attention_dim": 768, "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
        "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}"#;
    let c: UNet2DConditionConfig = serde_json::from_str(sd15).unwrap();
    c.validate().unwrap();
}

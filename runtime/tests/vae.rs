//! diffusers' `AutoencoderKL` against diffusers itself: the fixtures of tests/fixtures/vae
//! (made by scripts/make-vae-fixtures.py) hold small random VAEs in diffusers' layout and what
//! torch computes for them: the decoder on latents, the encoder's latent mean, a pipeline's
//! decode of scaled latents, and the VJPs of each with respect to the input and parameters, in
//! f64 and f32. Finite differences check the decoder's VJP along a direction in f64.

use std::path::{Path, PathBuf};

use adeis_io::safetensors::{read_safetensors, TensorMap};
use adeis_runtime::nn::{Float, NnDevice, ParamGrads};
use adeis_runtime::to_f64;
use adeis_runtime::unet::{
    AutoencoderKL, AutoencoderKLConfig, TensorMapSource, VaeMap, VaeReferenceKeys,
    VAE_REFERENCE_KEYS,
};
use dfdx::prelude::*;

mod common;
use common::{max_rel_err, named_grad_errors};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/vae")
}

const CASES: [&str; 3] = [
    "sd_style",
    "three_levels_no_quant_shift_bf16",
    "one_level_no_mid_attention_f16",
];

type Image<E> = Tensor<(usize, usize, usize, usize), E, Cpu>;

/// The VAE of fixture `name` in dtype E, and its reference tensors.
fn load<E: Float>(name: &str) -> (AutoencoderKL<E, Cpu>, TensorMap)
where
    Cpu: NnDevice<E>,
{
    let dir = fixtures().join(name);
    let config: AutoencoderKLConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let mut source = TensorMapSource {
        tensors: read_safetensors(&dir.join("diffusion_pytorch_model.safetensors")).unwrap(),
        origin: name.into(),
    };
    let vae = AutoencoderKL::new(&Cpu::default(), config, &mut source).unwrap();
    source.finish().unwrap();
    (
        vae,
        read_safetensors(&dir.join("reference.safetensors")).unwrap(),
    )
}

fn image<E: Float>(r: &TensorMap, key: &str) -> Image<E>
where
    Cpu: Device<E>,
{
    let (s, v) = &r[key];
    assert_eq!(s.len(), 4, "{key}");
    Cpu::default().tensor_from_vec(
        v.iter().map(|x| E::from_f64(*x).unwrap()).collect(),
        (s[0], s[1], s[2], s[3]),
    )
}

/// Every map of every fixture in dtype E against the reference computed in `tag`.
fn check_against_diffusers<E: Float>(tag: &str, forward_tol: f64, vjp_tol: f64)
where
    Cpu: NnDevice<E>,
{
    for name in CASES {
        let (vae, r) = load::<E>(name);
        for VaeReferenceKeys {
            map,
            input,
            cot,
            output: out_key,
            input_grad: d_key,
            param_prefix: prefix,
        } in VAE_REFERENCE_KEYS
        {
            let x = image::<E>(&r, input);
            vae.check_input(map, x.shape().concrete().as_ref()).unwrap();
            let out = vae.apply(map, x.clone(), ParamGrads::Skip);
            let e = max_rel_err(&to_f64(&out), &r[&format!("{out_key}.{tag}")].1);
            eprintln!("{name} ({tag}): {map:?} forward {e:.2e}");
            assert!(
                e < forward_tol,
                "{name} ({tag}): {map:?} forward error {e:.2e}"
            );

            let mut acc = prefix.map(|_| vae.zero_grads());
            let adeis_runtime::unet::VaeVjp { value, dx } = vae
                .vjp(map, &x, &image::<E>(&r, cot), acc.as_mut())
                .unwrap();
            assert_eq!(
                to_f64(&value),
                to_f64(&out),
                "{name}: the VJP's value is the forward's"
            );
            let mut errs = vec![(
                input.to_string(),
                max_rel_err(&to_f64(&dx), &r[&format!("{d_key}.{tag}")].1),
            )];
            if let (Some(prefix), Some(acc)) = (prefix, &acc) {
                let param_errs =
                    named_grad_errors(&vae.named_grads(acc), &r, &format!("{prefix}.dparam."), tag);
                let params = param_errs.len();
                errs.extend(param_errs);
                assert!(
                    params >= 4,
                    "{name}: the fixture checks {params} parameters of {prefix}"
                );
            }
            for (what, e) in &errs {
                eprintln!("{name} ({tag}): {map:?} VJP {what} {e:.2e}");
                assert!(
                    *e < vjp_tol,
                    "{name} ({tag}): {map:?} VJP w.r.t. {what}: error {e:.2e}"
                );
            }
        }
    }
}

#[test]
fn vae_decode_encode_and_vjps_equal_diffusers_in_f64() {
    check_against_diffusers::<f64>("f64", 1e-10, 1e-10);
}

#[test]
fn vae_decode_encode_and_vjps_equal_diffusers_in_f32() {
    check_against_diffusers::<f32>("f32", 1e-5, 1e-4);
}

/// The scaled maps invert each other's scaling: EncodeLatents is (mean - shift) * scale per
/// channel, DecodeLatents decodes latents / scale + shift; checked through the identity
/// decode(unscale(scale(mean))) = decode(mean).
#[test]
fn vae_latent_scaling_round_trips() {
    for name in CASES {
        let (vae, r) = load::<f64>(name);
        let x = image::<f64>(&r, "x");
        let mean = vae.apply(VaeMap::EncodeMean, x.clone(), ParamGrads::Skip);
        let latents = vae.apply(VaeMap::EncodeLatents, x, ParamGrads::Skip);
        let a = vae.apply(VaeMap::Decode, mean, ParamGrads::Skip);
        let b = vae.apply(VaeMap::DecodeLatents, latents, ParamGrads::Skip);
        let e = max_rel_err(&to_f64(&b), &to_f64(&a));
        assert!(e < 1e-12, "{name}: round trip error {e:.2e}");
    }
}

/// cot^T J v by the VJP equals the fourth-order central difference of cot^T decode(z + h v) in f64.
#[test]
fn vae_decode_vjp_matches_finite_differences() {
    for name in CASES {
        let (vae, r) = load::<f64>(name);
        let z = image::<f64>(&r, "z");
        let cot = image::<f64>(&r, "cot_image");
        let dev = Cpu::default();
        let dz = vae.vjp(VaeMap::DecodeLatents, &z, &cot, None).unwrap().dx;
        let v: Image<f64> = dev.sample_normal_like(z.shape());
        let f = |h: f64| -> f64 {
            let zh = z.clone() + v.clone() * h;
            let out = vae.apply(VaeMap::DecodeLatents, zh, ParamGrads::Skip);
            (out * cot.clone()).sum::<(), _>().array()
        };
        // Fourth-order central difference: its O(h^4) error allows a step whose rounding is
        // negligible.
        let h = 1e-3;
        let fd: f64 = (f(-2.0 * h) - 8.0 * f(-h) + 8.0 * f(h) - f(2.0 * h)) / (12.0 * h);
        let an: f64 = (dz * v).sum::<(), _>().array();
        let e = (fd - an).abs() / an.abs().max(1e-12);
        eprintln!("{name}: directional derivative {an:.10e}, finite difference {fd:.10e}, {e:.2e}");
        assert!(e < 1e-8, "{name}: VJP {an} vs finite difference {fd}");
    }
}

#[test]
fn vae_refuses_inputs_of_the_wrong_shape() {
    let (vae, _) = load::<f32>("sd_style");
    let err = vae
        .check_input(VaeMap::Decode, &[1, 3, 8, 8])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("latents of 4 channels; this one has 3"),
        "{err}"
    );
    let err = vae
        .check_input(VaeMap::EncodeMean, &[1, 3, 15, 16])
        .unwrap_err()
        .to_string();
    assert!(err.contains("multiples of 2^(levels - 1) = 2"), "{err}");
    let err = vae
        .check_input(VaeMap::EncodeMean, &[3, 16, 16])
        .unwrap_err()
        .to_string();
    assert!(err.contains("[batch, channels, height, width]"), "{err}");
}

#[test]
fn vae_config_errors_name_the_key() {
    let cases = [
        (r#"{"_class_name": "VQModel"}"#, "_class_name"),
        (
            r#"{"down_block_types": ["DownBlock2D"]}"#,
            "down_block_types[0]",
        ),
        (
            r#"{"block_out_channels": [64, 96], "down_block_types": ["DownEncoderBlock2D"]}"#,
            "down_block_types has 1 entries",
        ),
        (
            r#"{"latents_mean": [0, 0, 0, 0]}"#,
            "latents_mean is given without latents_std",
        ),
        (
            r#"{"latents_mean": [0, 0, 0], "latents_std": [1, 1, 1]}"#,
            "latents_mean has 3 entries; latent_channels is 4",
        ),
        (
            r#"{"latents_mean": [0, 0, 0, 0], "latents_std": [1, 0, 1, 1]}"#,
            "latents_std[1]",
        ),
        (r#"{"scaling_factor": 0}"#, "scaling_factor"),
        (
            r#"{"block_out_channels": [48]}"#,
            "multiple of norm_num_groups = 32",
        ),
        (r#"{"act_fn": "gelu"}"#, "act_fn"),
    ];
    for (json, want) in cases {
        let c: AutoencoderKLConfig = serde_json::from_str(json).unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains(want), "{json}: {err}");
    }
}

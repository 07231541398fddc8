//! A Stable-Diffusion-style pipeline folder end to end (tests/fixtures/unet_condition/
//! sd_pipeline_ddim, made by scripts/make-sd-unet-fixtures.py: a UNet2DConditionModel, an
//! AutoencoderKL and SD's DDIM scheduler config): `adeis sample` with the prompt's embeddings
//! (--cond) and classifier-free guidance (--guidance-scale, --uncond) makes the image
//! StableDiffusionPipeline's loop makes, and `adeis grad` gives torch autograd's gradients with
//! respect to x_T and the embeddings through the loop and the decoder.

use std::path::{Path, PathBuf};

use adeis::npy::read_npy;
use adeis::safetensors::{read_safetensors, TensorMap};

mod support;
use support::{adeis_pipeline, pipeline_tolerance, reference_npy as npy, rel_err};

fn pipeline() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet_condition/sd_pipeline_ddim")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn reference() -> TensorMap {
    read_safetensors(&pipeline().join("pipeline_reference.safetensors")).unwrap()
}

/// `adeis CMD --spec SCHEDULER --steps 3 --model diffusers:PIPELINE EXTRA...`.
fn run(cmd: &str, extra: &[&str]) -> (bool, String, String) {
    let spec = pipeline().join("scheduler/scheduler_config.json");
    let model = format!("diffusers:{}", pipeline().display());
    adeis_pipeline(cmd, (&spec, &model), extra)
}

#[test]
fn sd_pipeline_with_guidance_samples_and_differentiates_as_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let r = reference();
    let (x_t, cond, uncond, cot) = (
        npy(dir.path(), &r, "x_t"),
        npy(dir.path(), &r, "cond"),
        npy(dir.path(), &r, "uncond"),
        npy(dir.path(), &r, "cot_image"),
    );
    for dtype in ["f64", "f32"] {
        let image = dir.path().join(format!("image_{dtype}.npy"));
        let guided = [
            "--x-t",
            s(&x_t),
            "--cond",
            s(&cond),
            "--guidance-scale",
            "7.5",
            "--uncond",
            s(&uncond),
            "--dtype",
            dtype,
        ];
        let (ok, stdout, stderr) = run("sample", &[&guided[..], &["--out", s(&image)]].concat());
        assert!(ok, "{stderr}");
        assert!(stdout.contains("decoded by the VAE"), "{stdout}");
        let got = read_npy(&image).unwrap();
        assert_eq!(got.shape, vec![2, 3, 16, 16]);
        let e = rel_err(&got.data, &r[&format!("image.{dtype}")].1);
        eprintln!("SD pipeline sample ({dtype}): image {e:.2e}");
        assert!(e < pipeline_tolerance(dtype), "image ({dtype}): {e:.2e}");

        let out = dir.path().join(format!("g_{dtype}"));
        let (ok, _, stderr) = run(
            "grad",
            &[
                &guided[..],
                &["--cot", s(&cot), "--wrt", "x_t,cond", "--out-dir", s(&out)],
            ]
            .concat(),
        );
        assert!(ok, "{stderr}");
        let dx = read_npy(&out.join("dx_t.npy")).unwrap();
        let dz = read_npy(&out.join("dz.npy")).unwrap();
        assert_eq!(dz.shape, vec![2, 5, 12]);
        let (ex, ez) = (
            rel_err(&dx.data, &r[&format!("dx_t.{dtype}")].1),
            rel_err(&dz.data, &r[&format!("dz.{dtype}")].1),
        );
        eprintln!("SD pipeline grad ({dtype}): dL/dx_T {ex:.2e}, dL/d(embeddings) {ez:.2e}");
        assert!(ex < pipeline_tolerance(dtype), "dx_t ({dtype}): {ex:.2e}");
        assert!(ez < pipeline_tolerance(dtype), "dz ({dtype}): {ez:.2e}");
    }
}

#[test]
fn sd_pipeline_misuse_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let r = reference();
    let x_t = npy(dir.path(), &r, "x_t");
    let out = dir.path().join("o.npy");
    // No prompt embeddings.
    let (ok, _, stderr) = run("sample", &["--x-t", s(&x_t), "--out", s(&out)]);
    assert!(!ok);
    assert!(
        stderr.contains("conditioned on encoder hidden states")
            && stderr.contains("--cond E.npy, [2, tokens, 12]"),
        "{stderr}"
    );
    // Guidance without the empty prompt's embeddings.
    let cond = npy(dir.path(), &r, "cond");
    let (ok, _, stderr) = run(
        "sample",
        &[
            "--x-t",
            s(&x_t),
            "--cond",
            s(&cond),
            "--guidance-scale",
            "7.5",
            "--out",
            s(&out),
        ],
    );
    assert!(!ok);
    assert!(stderr.contains("give --uncond E0.npy"), "{stderr}");
    // Embeddings of the wrong width.
    let bad = dir.path().join("bad.npy");
    adeis::npy::write_npy(&bad, &[2, 5, 7], &[0.0; 70], 8).unwrap();
    let (ok, _, stderr) = run(
        "sample",
        &["--x-t", s(&x_t), "--cond", s(&bad), "--out", s(&out)],
    );
    assert!(!ok);
    assert!(stderr.contains("--cond has shape [2, 5, 7]"), "{stderr}");
    // --uncond of another shape than --cond.
    let (ok, _, stderr) = run(
        "sample",
        &[
            "--x-t",
            s(&x_t),
            "--cond",
            s(&cond),
            "--guidance-scale",
            "2",
            "--uncond",
            s(&x_t),
            "--out",
            s(&out),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("--uncond has shape [2, 4, 8, 8]"),
        "{stderr}"
    );
    // A gradient target that is not one.
    let (ok, _, stderr) = run(
        "grad",
        &[
            "--x-t",
            s(&x_t),
            "--cond",
            s(&cond),
            "--cot",
            s(&x_t),
            "--wrt",
            "x_t,prompt",
            "--out-dir",
            s(&dir.path().join("g")),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("--wrt: `prompt` is not a gradient target; the targets are x_t, cond"),
        "{stderr}"
    );
}

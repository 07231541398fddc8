//! A diffusers pipeline folder with a VAE end to end (tests/fixtures/vae/pipeline_ddim, made by
//! scripts/make-vae-fixtures.py): `adeis sample` decodes the sampled latents into the image
//! diffusers' DDIMScheduler loop and `vae.decode(latents / scaling_factor)` give, `adeis grad`
//! takes the cotangent on that image and returns what torch autograd gives for dL/dx_T through
//! the loop and the decoder, `adeis invert` encodes images first; misuse gets clear errors.

use std::path::{Path, PathBuf};

use adeis::npy::{read_npy, write_npy};
use adeis::safetensors::{read_safetensors, TensorMap};

mod support;
use support::{adeis, adeis_pipeline, pipeline_tolerance, reference_npy as npy, rel_err};

fn pipeline() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vae/pipeline_ddim")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn reference() -> TensorMap {
    read_safetensors(&pipeline().join("pipeline_reference.safetensors")).unwrap()
}

fn scheduler() -> PathBuf {
    pipeline().join("scheduler/scheduler_config.json")
}

fn model() -> String {
    format!("diffusers:{}", pipeline().display())
}

/// `adeis CMD --spec SCHEDULER --steps 3 --model MODEL EXTRA...`.
fn run(cmd: &str, model: &str, extra: &[&str]) -> (bool, String, String) {
    adeis_pipeline(cmd, (&scheduler(), model), extra)
}

#[test]
fn pipeline_sample_decodes_the_latents_as_diffusers_does() {
    let dir = tempfile::tempdir().unwrap();
    let r = reference();
    let x_t = npy(dir.path(), &r, "x_t");
    for dtype in ["f64", "f32"] {
        let (out, latents, png) = (
            dir.path().join(format!("image_{dtype}.npy")),
            dir.path().join(format!("latents_{dtype}.npy")),
            dir.path().join(format!("image_{dtype}.png")),
        );
        let (ok, stdout, stderr) = run(
            "sample",
            &model(),
            &[
                "--x-t",
                s(&x_t),
                "--out",
                s(&out),
                "--latents-out",
                s(&latents),
                "--png",
                s(&png),
                "--dtype",
                dtype,
            ],
        );
        assert!(ok, "{stderr}");
        assert!(
            stdout.contains("sampled 2 x 4 x 8 x 8") && stdout.contains("decoded by the VAE of"),
            "{stdout}"
        );
        let image = read_npy(&out).unwrap();
        assert_eq!(image.shape, vec![2, 3, 16, 16]);
        let lat = read_npy(&latents).unwrap();
        assert_eq!(lat.shape, vec![2, 4, 8, 8]);
        let e_lat = rel_err(&lat.data, &r[&format!("latents.{dtype}")].1);
        let e_img = rel_err(&image.data, &r[&format!("image.{dtype}")].1);
        eprintln!("pipeline sample ({dtype}): latents {e_lat:.2e}, image {e_img:.2e}");
        assert!(
            e_lat < pipeline_tolerance(dtype),
            "latents ({dtype}): {e_lat:.2e}"
        );
        assert!(
            e_img < pipeline_tolerance(dtype),
            "image ({dtype}): {e_img:.2e}"
        );
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "a PNG file");
    }
}

#[test]
fn pipeline_grad_goes_through_the_decoder_as_torch_autograd_does() {
    let dir = tempfile::tempdir().unwrap();
    let r = reference();
    let x_t = npy(dir.path(), &r, "x_t");
    let cot = npy(dir.path(), &r, "cot_image");
    for dtype in ["f64", "f32"] {
        let out_dir = dir.path().join(format!("g_{dtype}"));
        let (ok, _, stderr) = run(
            "grad",
            &model(),
            &[
                "--x-t",
                s(&x_t),
                "--cot",
                s(&cot),
                "--out-dir",
                s(&out_dir),
                "--dtype",
                dtype,
            ],
        );
        assert!(ok, "{stderr}");
        let dx = read_npy(&out_dir.join("dx_t.npy")).unwrap();
        assert_eq!(dx.shape, vec![2, 4, 8, 8]);
        let e = rel_err(&dx.data, &r[&format!("dx_t.{dtype}")].1);
        eprintln!("pipeline grad ({dtype}): dL/dx_T {e:.2e}");
        assert!(e < pipeline_tolerance(dtype), "dx_t ({dtype}): {e:.2e}");
    }
}

/// --loss mse on the image: the target is an image, and the gradient equals --cot with the
/// MSE's gradient 2 (image - target) / n, made from the image `sample` writes.
#[test]
fn pipeline_mse_loss_is_on_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let r = reference();
    let x_t = npy(dir.path(), &r, "x_t");
    let target = npy(dir.path(), &r, "cot_image");
    let (image_path, cot_path) = (dir.path().join("image.npy"), dir.path().join("mse_cot.npy"));
    let (mse_dir, cot_dir) = (dir.path().join("mse"), dir.path().join("cot"));
    let f64_run = |cmd: &str, extra: &[&str]| {
        let mut args = vec!["--x-t", s(&x_t), "--dtype", "f64"];
        args.extend_from_slice(extra);
        run(cmd, &model(), &args)
    };
    let (ok, _, stderr) = f64_run("sample", &["--out", s(&image_path)]);
    assert!(ok, "{stderr}");
    // The MSE's gradient 2 (image - target) / n, made from the image `sample` writes.
    let image = read_npy(&image_path).unwrap();
    let n = image.data.len() as f64;
    let cot: Vec<f64> = image
        .data
        .iter()
        .zip(&r["cot_image"].1)
        .map(|(x, y)| 2.0 * (x - y) / n)
        .collect();
    write_npy(&cot_path, &image.shape, &cot, 8).unwrap();
    let mse = ["--loss", "mse", "--target", s(&target)];
    let (ok, stdout, stderr) = f64_run("grad", &[&mse[..], &["--out-dir", s(&mse_dir)]].concat());
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"loss\""), "{stdout}");
    let (ok, _, stderr) = f64_run("grad", &["--cot", s(&cot_path), "--out-dir", s(&cot_dir)]);
    assert!(ok, "{stderr}");
    let by_mse = read_npy(&mse_dir.join("dx_t.npy")).unwrap();
    let by_cot = read_npy(&cot_dir.join("dx_t.npy")).unwrap();
    let e = rel_err(&by_mse.data, &by_cot.data);
    assert!(e < 1e-12, "mse {e:.2e}");

    // A target of the latents' shape is not the image's.
    let bad = dir.path().join("bad");
    let (ok, _, stderr) = f64_run(
        "grad",
        &["--loss", "mse", "--target", s(&x_t), "--out-dir", s(&bad)],
    );
    assert!(!ok);
    assert!(
        stderr.contains("--target has shape [2, 4, 8, 8]; the sample has [2, 3, 16, 16]"),
        "{stderr}"
    );
}

#[test]
fn pipeline_invert_encodes_the_image_first() {
    let dir = tempfile::tempdir().unwrap();
    let r = reference();
    let image = npy(dir.path(), &r, "image.f64");
    let out = dir.path().join("x_t.npy");
    let (ok, stdout, stderr) = run("invert", &model(), &["--x-0", s(&image), "--out", s(&out)]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ODE-inverted 2 samples"), "{stdout}");
    let x_t = read_npy(&out).unwrap();
    assert_eq!(x_t.shape, vec![2, 4, 8, 8]);
    assert!(x_t.data.iter().all(|v| v.is_finite()));

    let (ok, _, stderr) = run(
        "invert",
        &model(),
        &[
            "--x-0",
            s(&image),
            "--companion-0",
            s(&image),
            "--out",
            s(&dir.path().join("other.npy")),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("--companion-0 is a reversible sampler's second state in latent space"),
        "{stderr}"
    );
}

#[test]
fn pipeline_misuse_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let r = reference();
    let x_t = npy(dir.path(), &r, "x_t");
    // --latents-out without a VAE: the UNet's own folder.
    let unet = format!("diffusers:{}", pipeline().join("unet").display());
    let (ok, _, stderr) = run(
        "sample",
        &unet,
        &[
            "--x-t",
            s(&x_t),
            "--out",
            s(&dir.path().join("o.npy")),
            "--latents-out",
            s(&dir.path().join("l.npy")),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("--latents-out writes a pipeline's latents"),
        "{stderr}"
    );

    // A VAE whose latents are not the UNet's.
    let bad = dir.path().join("pipe");
    for sub in ["unet", "vae", "scheduler"] {
        std::fs::create_dir_all(bad.join(sub)).unwrap();
        for f in std::fs::read_dir(pipeline().join(sub)).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, bad.join(sub).join(f.file_name().unwrap())).unwrap();
        }
    }
    let cfg = bad.join("vae/config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("\"latent_channels\": 4", "\"latent_channels\": 3"),
    )
    .unwrap();
    let (ok, _, stderr) = run(
        "sample",
        &format!("diffusers:{}", bad.display()),
        &["--x-t", s(&x_t), "--out", s(&dir.path().join("o.npy"))],
    );
    assert!(!ok);
    assert!(
        stderr.contains("the VAE's latent_channels is 3 but the UNet's in_channels is 4"),
        "{stderr}"
    );

    // A VAE class adeis does not run is named.
    std::fs::write(
        &cfg,
        text.replace("\"AutoencoderKL\"", "\"AutoencoderTiny\""),
    )
    .unwrap();
    let (ok, _, stderr) = adeis(&[
        "check",
        "--spec",
        s(&scheduler()),
        "--steps",
        "3",
        "--model",
        &format!("diffusers:{}", bad.display()),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("_class_name") && stderr.contains("AutoencoderTiny"),
        "{stderr}"
    );
}

//! The main job at real size on tiny settings: `adeis train --dataset fashion-mnist` (on a
//! few IDX images the test writes, so no package is needed), its output in diffusers' layout
//! opened by `--model diffusers:DIR`, `adeis morph --dataset fashion-mnist` and `adeis finetune`
//! on the committed models, and the committed UNet against diffusers' own forward pass.

use std::path::Path;

mod support;
use support::adeis;

fn is_png(p: &Path) -> bool {
    std::fs::read(p).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n") && b.len() > 100)
}

/// Writes train-{images,labels} IDX files (uncompressed; the reader takes both) of the first
/// `n` committed held-out images.
fn write_idx(dir: &Path, n: usize) {
    let raw = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist/heldout-1000.u8"),
    )
    .unwrap();
    let mut images = vec![0u8, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        images.extend(d.to_be_bytes());
    }
    let mut labels = vec![0u8, 0, 8, 1];
    labels.extend((n as u32).to_be_bytes());
    for rec in raw.chunks_exact(785).take(n) {
        images.extend(&rec[..784]);
        labels.push(rec[784]);
    }
    std::fs::write(dir.join("train-images-idx3-ubyte.gz"), images).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte.gz"), labels).unwrap();
}

fn train(data: &Path, out: &Path) -> (bool, String, String) {
    adeis(&[
        "train",
        "--dataset",
        "fashion-mnist",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--denoiser-steps",
        "3",
        "--classifier-steps",
        "3",
        "--verifier-steps",
        "3",
        "--batch",
        "4",
        "--warmup",
        "2",
        "--no-sample-grid",
    ])
}

#[test]
fn train_writes_diffusers_layout_deterministically_and_sample_opens_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("idx");
    std::fs::create_dir_all(&data).unwrap();
    write_idx(&data, 40);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for out in [&a, &b] {
        let (ok, stdout, err) = train(&data, out);
        assert!(ok, "{err}");
        assert!(
            stdout.contains("unet (1063905 parameters): 3 steps"),
            "{stdout}"
        );
    }
    for f in [
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/scheduler_config.json",
        "classifier.safetensors",
        "verifier.safetensors",
        "training.json",
        "training.log",
    ] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    // deterministic for a seed: the same weights, byte for byte
    for f in [
        "unet/diffusion_pytorch_model.safetensors",
        "classifier.safetensors",
        "verifier.safetensors",
    ] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs between two runs of seed 0"
        );
    }
    let log = std::fs::read_to_string(a.join("training.log")).unwrap();
    assert!(log.contains("unet step 2 loss"), "{log}");
    // diffusers' layout opens as a diffusers model
    let x_t = dir.path().join("x_t.npy");
    let x0 = dir.path().join("x0.npy");
    let (ok, _, err) = adeis(&[
        "noise",
        "--shape",
        "2,1,28,28",
        "--out",
        x_t.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let model = format!("diffusers:{}", a.join("unet").display());
    let (ok, stdout, err) = adeis(&[
        "sample",
        "--spec",
        "examples/specs/diffusers_ddim.toml",
        "--model",
        &model,
        "--x-t",
        x_t.to_str().unwrap(),
        "--class-labels",
        "3,10",
        "--out",
        x0.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(x0.exists(), "{stdout}");
}

#[test]
fn train_rejects_missing_data_before_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (ok, _, err) = train(&dir.path().join("nowhere"), &out);
    assert!(!ok);
    assert!(
        err.contains("train-images-idx3-ubyte.gz") && err.contains("install-fashion-mnist.sh"),
        "{err}"
    );
    assert!(!out.exists(), "an output folder was left behind");
    let (ok, _, err) = adeis(&[
        "train",
        "--dataset",
        "fashion-mnist",
        "--denoiser-steps",
        "0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("--denoiser-steps 0"), "{err}");
}

#[test]
fn morph_on_fashion_lowers_the_identity_loss() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let (ok, stdout, err) = adeis(&[
        "morph",
        "--dataset",
        "fashion-mnist",
        "--pairs",
        "2",
        "--iters",
        "3",
        "--steps",
        "4",
        "--methods",
        "none,adjoint_deis_1,discrete",
        "--out",
        out,
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("| discrete adjoint (ODE) |"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(report["image_side"], 28);
    let methods = report["methods"].as_array().unwrap();
    let discrete = methods.iter().find(|m| m["method"] == "discrete").unwrap();
    let (start, end) = (
        discrete["mean_loss_initial"].as_f64().unwrap(),
        discrete["mean_loss_final"].as_f64().unwrap(),
    );
    assert!(end < start, "the identity loss went {start} -> {end}");
    assert!(is_png(&dir.path().join("pairs.png")));
}

/// The discrete adjoint and the tape give the same fine-tuning run (same rewards, same
/// held-out figures), and the kept weights open in diffusers' layout.
#[test]
fn finetune_discrete_matches_the_tape() {
    let dir = tempfile::tempdir().unwrap();
    let mut rewards = Vec::new();
    for g in ["discrete", "tape"] {
        let out = dir.path().join(g);
        let (ok, stdout, err) = adeis(&[
            "finetune",
            "--iters",
            "2",
            "--steps",
            "3",
            "--batch",
            "2",
            "--eval-per-class",
            "1",
            "--eval-every",
            "1",
            "--lr",
            "1e-3",
            "--gradient",
            g,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        assert!(stdout.contains("held-out reward"), "{stdout}");
        for f in ["report.md", "before.png", "after.png", "reward_curve.png"] {
            assert!(out.join(f).exists(), "{f} missing");
        }
        assert!(out
            .join("unet/diffusion_pytorch_model.safetensors")
            .exists());
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
        let train: Vec<f64> = r["train_reward"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        rewards.push(train);
    }
    for (a, b) in rewards[0].iter().zip(&rewards[1]) {
        assert!((a - b).abs() < 1e-4 * (1.0 + a.abs()), "{rewards:?}");
    }
}

/// The committed UNet opened by diffusers' own `UNet2DModel.from_pretrained` and by adeis give
/// the same eps predictions (the fixture is made by scripts/make-fashion-fixture.py): six
/// held-out images noised to six train indices, five classes and "no class", in one batch.
#[test]
fn fashion_unet_matches_diffusers() {
    use adeis::runtime::dfdx::prelude::*;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let r = adeis_io::safetensors::read_safetensors(
        &root.join("tests/fixtures/fashion/diffusers_forward.safetensors"),
    )
    .unwrap();
    let models = adeis_fashion::FashionModels::committed().unwrap();
    let (shape, x) = &r["x_t"];
    let times = &r["timesteps"].1;
    let labels: Vec<usize> = r["class_labels"].1.iter().map(|v| *v as usize).collect();
    let dev = Cpu::default();
    let x = dev.tensor_from_vec(
        x.iter().map(|v| *v as f32).collect(),
        (shape[0], shape[1], shape[2], shape[3]),
    );
    let out = models
        .unet
        .forward_train(
            x,
            times,
            Some(&labels),
            adeis::runtime::nn::ParamGrads::Skip,
        )
        .unwrap()
        .as_vec();
    let want = &r["eps_pred"].1;
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = out
        .iter()
        .zip(want)
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
    eprintln!("max |adeis - diffusers| = {err:.3e}, max |diffusers| = {scale:.3}");
    assert!(
        err / scale < 1e-5,
        "max |adeis - diffusers| = {err:.3e} (max |diffusers| {scale:.3})"
    );
}

/// The committed verification embedding is the one its training run reported: its features
/// of the committed held-out images give the thresholds and genuine accept rates at FMR 0.1%,
/// 1% and 10% that models/fashion-mnist/training.json records (and docs quote), and it
/// verifies better than the classifier's features at the strict operating points.
#[test]
fn committed_verifier_reproduces_its_recorded_operating_points() {
    use adeis::runtime::dfdx::prelude::*;
    use adeis_fashion::data::{heldout, SIDE};
    let models = adeis_fashion::FashionModels::committed().unwrap();
    let held = heldout();
    let rows_of = |net: &adeis_fashion::classifier::Classifier| -> Vec<Vec<f64>> {
        let x = models
            .dev
            .tensor_from_vec(held.pixels.clone(), (held.len(), 1usize, SIDE, SIDE));
        net.features_image(x, adeis::runtime::nn::ParamGrads::Skip)
            .as_vec()
            .chunks_exact(adeis_fashion::classifier::FEATURES)
            .map(|r| r.iter().map(|v| *v as f64).collect())
            .collect()
    };
    let verifier = models.verifier.as_ref().expect("the committed verifier");
    let v = adeis_digits::morph::calibrate(&rows_of(verifier), &held.labels, 1e-3);
    let recorded: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("models/fashion-mnist/training.json").unwrap(),
    )
    .unwrap();
    let points = recorded["verifier"]["operating_points"].as_array().unwrap();
    assert_eq!(points.len(), v.operating_points.len());
    for (p, q) in v.operating_points.iter().zip(points) {
        assert!(
            (p.threshold - q["threshold"].as_f64().unwrap()).abs() < 1e-6,
            "{p:?} vs {q}"
        );
        assert!(
            (p.gar - q["gar"].as_f64().unwrap()).abs() < 1e-9,
            "{p:?} vs {q}"
        );
    }
    let c = adeis_digits::morph::calibrate(&rows_of(&models.classifier), &held.labels, 1e-3);
    for k in 0..2 {
        assert!(
            v.operating_points[k].gar > c.operating_points[k].gar + 0.1,
            "the verifier ({:?}) is no better than the classifier ({:?})",
            v.operating_points[k],
            c.operating_points[k]
        );
    }
}

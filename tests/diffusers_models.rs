//! `--model diffusers:DIR` end to end: `adeis sample` and `adeis grad` on a fixture made by
//! diffusers (tests/fixtures/unet, scripts/make-unet-fixtures.py) reproduce what diffusers and
//! torch autograd computed for it, with the schedule and prediction of the directory's
//! scheduler_config.json; bad model directories, inputs and labels get clear errors.

use std::path::{Path, PathBuf};

use adeis::npy::{read_npy, write_npy, write_npy_i64};
use adeis::safetensors::{read_safetensors, TensorMap};

mod support;
use support::{adeis, reference_npy as npy, rel_err};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/unet")
        .join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn reference(name: &str) -> TensorMap {
    read_safetensors(&fixture(name).join("reference.safetensors")).unwrap()
}

/// `adeis sample --spec SPEC --model MODEL --x-t X --out OUT`, then `extra`.
fn sample_cmd(
    spec: &Path,
    model: &str,
    x: &Path,
    out: &Path,
    extra: &[&str],
) -> (bool, String, String) {
    let mut a = vec![
        "sample",
        "--spec",
        s(spec),
        "--model",
        model,
        "--x-t",
        s(x),
        "--out",
        s(out),
    ];
    a.extend_from_slice(extra);
    adeis(&a)
}

/// A spec with only a [sampler] (and [gradient]): the schedule comes from the model.
fn spec(dir: &Path) -> PathBuf {
    let p = dir.join("spec.toml");
    std::fs::write(
        &p,
        "[sampler]\nmethod = \"ddim\"\ngrid = \"explicit\"\ntrain_indices = [999, 500, 0]\n\n[gradient]\nwrt = [\"x_t\", \"cond\", \"params\"]\n",
    )
    .unwrap();
    p
}

#[test]
fn sample_and_grad_reproduce_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let r = reference("class_cond_cifar_style");
    let model = format!("diffusers:{}", s(&fixture("class_cond_cifar_style")));
    let (x, z, cot) = (npy(dir, &r, "x"), npy(dir, &r, "z"), npy(dir, &r, "cot"));
    let sp = spec(dir);
    let out = dir.join("x0.npy");
    let (ok, stdout, err) = sample_cmd(&sp, &model, &x, &out, &["--cond", s(&z), "--dtype", "f64"]);
    assert!(ok, "{err}");
    assert!(stdout.contains("sampled 2 x 3 x 8 x 8"), "{stdout}");
    let x0 = read_npy(&out).unwrap();
    assert_eq!(x0.shape, vec![2, 3, 8, 8]);
    // f64 to the f32 time embedding's round-off (see runtime/tests/unet.rs).
    let e = rel_err(&x0.data, &r["ddim.x0.f64"].1);
    assert!(e < 1e-6, "sample: {e:.2e}");

    let grads = dir.join("grads");
    let (ok, stdout, err) = adeis(&[
        "grad",
        "--spec",
        s(&sp),
        "--model",
        &model,
        "--x-t",
        s(&x),
        "--cond",
        s(&z),
        "--cot",
        s(&cot),
        "--out-dir",
        s(&grads),
        "--dtype",
        "f64",
    ]);
    assert!(ok, "{err}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["vjps"], 2, "{summary}");
    let dx = read_npy(&grads.join("dx_t.npy")).unwrap();
    assert_eq!(dx.shape, vec![2, 3, 8, 8]);
    let dz = read_npy(&grads.join("dz.npy")).unwrap();
    assert_eq!(dz.shape, vec![2, 32]);
    for (what, got, want) in [
        ("dx_t", &dx.data, &r["ddim.dx_t.f64"].1),
        ("dz", &dz.data, &r["ddim.dz.f64"].1),
    ] {
        let e = rel_err(got, want);
        assert!(e < 1e-6, "{what}: {e:.2e}");
    }
    // The parameter gradients under diffusers' names and shapes.
    let p = read_safetensors(&grads.join("dparams.safetensors")).unwrap();
    assert_eq!(p["conv_in.weight"].0, vec![8, 3, 3, 3]);
    assert_eq!(p["down_blocks.0.attentions.0.to_q.weight"].0, vec![8, 8]);
    assert!(p["conv_out.bias"].1.iter().any(|v| *v != 0.0));

    // f32, the production default: the same numbers to f32's round-off.
    let (ok, _, err) = sample_cmd(&sp, &model, &x, &out, &["--cond", s(&z)]);
    assert!(ok, "{err}");
    let e = rel_err(&read_npy(&out).unwrap().data, &r["ddim.x0.f32"].1);
    assert!(e < 1e-4, "f32 sample: {e:.2e}");
}

#[test]
fn class_labels_select_the_class_embedding() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let name = "class_cond_cifar_style";
    let r = reference(name);
    let model = format!("diffusers:{}", s(&fixture(name)));
    let x = npy(dir, &r, "x");
    let sp = spec(dir);
    let labels = dir.join("labels.npy");
    write_npy_i64(&labels, &[2], &[3, 0]).unwrap();
    // z = the embedding table's rows of the labels, given explicitly.
    let w = read_safetensors(&fixture(name).join("diffusion_pytorch_model.safetensors")).unwrap();
    let (shape, table) = &w["class_embedding.weight"];
    let width = shape[1];
    let rows: Vec<f64> = [3usize, 0]
        .iter()
        .flat_map(|&l| table[l * width..(l + 1) * width].to_vec())
        .collect();
    let z = dir.join("z.npy");
    write_npy(&z, &[2, width], &rows, 8).unwrap();
    let run = |cond: &[&str], out: &Path| {
        let (ok, _, err) = sample_cmd(&sp, &model, &x, out, &[cond, &["--dtype", "f64"]].concat());
        assert!(ok, "{err}");
        read_npy(out).unwrap().data
    };
    let by_label = run(&["--class-labels", s(&labels)], &dir.join("a.npy"));
    let by_vector = run(&["--cond", s(&z)], &dir.join("b.npy"));
    assert_eq!(by_label, by_vector);
    // The same labels inline.
    let inline = run(&["--class-labels", "3,0"], &dir.join("c.npy"));
    assert_eq!(inline, by_vector);
    let (ok, _, err) = sample_cmd(
        &sp,
        &model,
        &x,
        &dir.join("d.npy"),
        &["--class-labels", "3"],
    );
    assert!(!ok && err.contains("1 labels for a batch of 2"), "{err}");
}

/// A pipeline's folder (model_index.json, unet/, scheduler/) runs as its UNet with its
/// scheduler: the same sample as the UNet's own directory.
#[test]
fn a_pipeline_folder_opens_its_unet_and_scheduler() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let name = "class_cond_cifar_style";
    let pipe = dir.join("pipeline");
    for sub in ["unet", "scheduler"] {
        std::fs::create_dir_all(pipe.join(sub)).unwrap();
    }
    std::fs::write(pipe.join("model_index.json"), "{}").unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(fixture(name).join(f), pipe.join("unet").join(f)).unwrap();
    }
    std::fs::copy(
        fixture(name).join("scheduler_config.json"),
        pipe.join("scheduler/scheduler_config.json"),
    )
    .unwrap();
    let r = reference(name);
    let (x, z, sp) = (npy(dir, &r, "x"), npy(dir, &r, "z"), spec(dir));
    let run = |model: &Path, out: &str| {
        let out = dir.join(out);
        let m = format!("diffusers:{}", s(model));
        let (ok, _, err) = sample_cmd(&sp, &m, &x, &out, &["--cond", s(&z), "--dtype", "f64"]);
        assert!(ok, "{err}");
        read_npy(&out).unwrap().data
    };
    assert_eq!(run(&pipe, "a.npy"), run(&fixture(name), "b.npy"));
    let (ok, out, err) = adeis(&["check", "--model", &format!("diffusers:{}", s(&pipe))]);
    assert!(ok, "{err}");
    assert!(
        out.contains("scheduler_config.json: 1000 train steps"),
        "{out}"
    );
}

/// `adeis noise` writes a seeded standard normal array that the model commands read.
#[test]
fn noise_writes_seeded_normals_of_the_shape_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, seed: &str| {
        let p = tmp.path().join(name);
        let (ok, _, err) = adeis(&[
            "noise",
            "--shape",
            "2,3,8,8",
            "--seed",
            seed,
            "--out",
            s(&p),
        ]);
        assert!(ok, "{err}");
        read_npy(&p).unwrap()
    };
    let (a, b, c) = (
        write("a.npy", "1"),
        write("b.npy", "1"),
        write("c.npy", "2"),
    );
    assert_eq!(a.shape, vec![2, 3, 8, 8]);
    assert_eq!(a.data, b.data, "the same seed, the same array");
    assert_ne!(a.data, c.data);
    let n = a.data.len() as f64;
    let mean = a.data.iter().sum::<f64>() / n;
    let var = a.data.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    // 384 normals: mean within 4 standard errors of 0, variance within 25% of 1.
    assert!(
        mean.abs() < 4.0 / n.sqrt() && (var - 1.0).abs() < 0.25,
        "{mean} {var}"
    );
    let bad = tmp.path().join("bad.npy");
    let (ok, _, err) = adeis(&["noise", "--shape", "2,0", "--out", s(&bad)]);
    assert!(!ok && err.contains("--shape [2, 0]"), "{err}");
    assert!(!bad.exists());
}

/// W3's UNet is google/ddpm-cifar10-32's architecture: diffusers counts 35,746,307 parameters.
#[test]
fn the_w3_unet_has_ddpm_cifar10s_parameters() {
    use adeis::runtime::dfdx::prelude::Cpu;
    use adeis::runtime::unet::{RandomParams, UNet2D, UNet2DConfig};
    let config: UNet2DConfig = serde_json::from_str(adeis::bench::DDPM_CIFAR10_CONFIG).unwrap();
    let model = UNet2D::<f32, Cpu>::new(
        &Cpu::default(),
        config,
        adeis::compiler::Prediction::Eps,
        &mut RandomParams::new(0),
    )
    .unwrap();
    assert_eq!(model.num_params(), 35_746_307);
    let d = model.describe();
    assert!(d.contains("down 1: AttnDownBlock2D, 256 channels"), "{d}");
}

#[test]
fn bad_models_and_inputs_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // With its own [schedule]: not every fixture has a scheduler_config.json.
    let sp = dir.join("spec.toml");
    std::fs::write(
        &sp,
        "[schedule]\nkind = \"discrete\"\n\n[sampler]\nmethod = \"ddim\"\ngrid = \"explicit\"\ntrain_indices = [999, 500, 0]\n",
    )
    .unwrap();
    let cond = fixture("class_cond_cifar_style");
    let uncond = fixture("attn_down_up");
    let arr = |name: &str, shape: &[usize]| {
        let p = dir.join(name);
        let n: usize = shape.iter().product();
        write_npy(&p, shape, &vec![0.1; n], 8).unwrap();
        p
    };
    let x = arr("x.npy", &[2, 3, 8, 8]);
    let run = |model: &str, x: &Path, extra: &[&str]| {
        let mut a = vec![
            "sample".to_string(),
            "--spec".into(),
            s(&sp).into(),
            "--model".into(),
            model.into(),
            "--x-t".into(),
            s(x).into(),
            "--out".into(),
            s(&dir.join("o.npy")).into(),
        ];
        a.extend(extra.iter().map(|e| e.to_string()));
        let refs: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
        let (ok, _, err) = adeis(&refs);
        assert!(!ok, "{refs:?} succeeded");
        err
    };
    let m = |p: &Path| format!("diffusers:{}", s(p));
    let labels = dir.join("labels.npy");
    write_npy_i64(&labels, &[2], &[1, 9]).unwrap();
    let cases: Vec<(String, &str)> = vec![
        (run(&m(&dir.join("nowhere")), &x, &[]), "not a directory"),
        (run(&m(dir), &x, &[]), "no config.json"),
        (
            run(&m(&cond), &x, &[]),
            "this model is class-conditional: give --class-labels",
        ),
        (
            run(&m(&cond), &x, &["--class-labels", s(&labels)]),
            "class label 9 is out of range",
        ),
        (
            run(&m(&uncond), &x, &["--class-labels", s(&labels)]),
            "this model has no class embedding",
        ),
        (
            run(&m(&uncond), &arr("x5.npy", &[2, 5, 8, 8]), &[]),
            "x_t has 5 channels but the UNet's in_channels is 3",
        ),
        (
            run(&m(&uncond), &arr("x7.npy", &[2, 3, 7, 8]), &[]),
            "must be divisible by 2^(levels - 1) = 2",
        ),
        (
            run(&m(&uncond), &arr("x2.npy", &[2, 192]), &[]),
            "this model takes images [batch, channels, height, width]",
        ),
    ];
    for (err, want) in &cases {
        assert!(err.contains(want), "wanted `{want}`: {err}");
    }
    // A config with a block type adeis does not run, and weights that do not fit the config.
    let broken = |edit: &dyn Fn(&Path)| {
        let d = tempfile::tempdir().unwrap();
        for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
            std::fs::copy(uncond.join(f), d.path().join(f)).unwrap();
        }
        edit(d.path());
        let err = run(&m(d.path()), &x, &[]);
        drop(d);
        err
    };
    let err = broken(&|d| {
        let c = std::fs::read_to_string(d.join("config.json")).unwrap();
        std::fs::write(
            d.join("config.json"),
            c.replace("\"AttnDownBlock2D\"", "\"CrossAttnDownBlock2D\""),
        )
        .unwrap();
    });
    assert!(
        err.contains("down_block_types[1] = \"CrossAttnDownBlock2D\": supported: DownBlock2D, AttnDownBlock2D"),
        "{err}"
    );
    let err = broken(&|d| {
        let c = std::fs::read_to_string(d.join("config.json")).unwrap();
        std::fs::write(
            d.join("config.json"),
            c.replace(
                "\"resnet_time_scale_shift\": \"default\"",
                "\"resnet_time_scale_shift\": \"scale_shift\"",
            ),
        )
        .unwrap();
    });
    assert!(
        err.contains("resnet_time_scale_shift = \"scale_shift\": supported: default"),
        "{err}"
    );
    let err = broken(&|d| {
        let w = d.join("diffusion_pytorch_model.safetensors");
        let mut t = read_safetensors(&w).unwrap();
        t.remove("conv_out.bias");
        let v = t.remove("conv_in.weight").unwrap();
        t.insert("conv_in.extra".into(), v);
        let named: Vec<adeis::safetensors::NamedTensor> = t
            .into_iter()
            .map(|(name, (shape, data))| adeis::safetensors::NamedTensor { name, shape, data })
            .collect();
        adeis::safetensors::write_safetensors(&w, &named, 4).unwrap();
    });
    assert!(
        err.contains("tensor `conv_in.weight` (shape [8, 3, 3, 3]) is missing"),
        "{err}"
    );
    let err = broken(&|d| {
        let w = d.join("diffusion_pytorch_model.safetensors");
        let t = read_safetensors(&w).unwrap();
        let named: Vec<adeis::safetensors::NamedTensor> = t
            .into_iter()
            .map(|(name, (shape, data))| adeis::safetensors::NamedTensor { name, shape, data })
            .collect();
        adeis::safetensors::write_safetensors(&w, &named, 8).unwrap();
    });
    assert!(
        err.contains("is F64; model weights are read as F32, F16 or BF16"),
        "{err}"
    );
}

#[test]
fn check_describes_the_architecture() {
    let (ok, out, err) = adeis(&[
        "check",
        "--model",
        &format!("diffusers:{}", s(&fixture("class_cond_cifar_style"))),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("UNet2DModel: 64091 parameters"), "{out}");
    assert!(
        out.contains("down 0: AttnDownBlock2D, 8 channels, 2 resnets, downsample"),
        "{out}"
    );
    assert!(
        out.contains("scheduler_config.json: 1000 train steps, predicts Eps"),
        "{out}"
    );
}

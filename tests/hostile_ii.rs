//! The second hostile-input corpus (issue 36): what a new user and a hostile one type at the
//! commands added since the first (learn-steps, finetune, diffusers model folders and scheduler
//! configs, outputs), one family per test. Each case must end in a clear error (the field,
//! the value, what is allowed) or a correct result: no panic, no hang, no silent wrong
//! result, no file left behind. tests/cli.rs and tests/learn_steps.rs hold the cases fixed
//! before this file existed.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::adeis;

/// A fresh folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("adeis-hostile2-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A failed run: its error holds `want`, and it did not panic.
fn fails_with(args: &[&str], want: &str) -> String {
    let (ok, out, err) = adeis(args);
    assert!(!ok, "{args:?} succeeded: {out}");
    assert!(err.contains(want), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    err
}

/// `adeis COMMAND` on the committed DPM-Solver++ spec and a Gaussian model, then `rest`.
fn on_gaussian<'a>(command: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        command,
        "--spec",
        "examples/specs/sample_dpmpp.toml",
        "--model",
        "gaussian:mu=0,s2=1",
    ];
    args.extend_from_slice(rest);
    args
}

/// A copy of a diffusers fixture folder, to break.
fn fixture_copy(dir: &Path, name: &str) -> PathBuf {
    let from =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet/class_cond_cifar_style");
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for f in [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "scheduler_config.json",
    ] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
    to
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let mut v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

/// Fine-tuning writes nothing unless it finishes: a divergence names --lr, an output that is a
/// folder is refused before the run, an output folder over the input models is refused, and
/// Ctrl-C leaves no folder.
#[test]
fn finetune_writes_all_or_nothing_and_never_over_its_models() {
    let dir = scratch("finetune");
    let out = dir.join("ft");
    let small = [
        "--iters",
        "3",
        "--batch",
        "2",
        "--steps",
        "2",
        "--eval-per-class",
        "1",
        "--eval-every",
        "1",
    ];
    let mut args = vec!["finetune", "--out", s(&out), "--lr", "1e6"];
    args.extend(small);
    let err = fails_with(
        &args,
        "fine-tuning diverged at iteration 1 with --lr 1000000",
    );
    assert!(
        err.contains("nothing was written; try a smaller --lr"),
        "{err}"
    );
    assert!(!out.exists(), "a diverged finetune left {}", out.display());

    std::fs::create_dir_all(out.join("report.md")).unwrap();
    let mut args = vec!["finetune", "--out", s(&out)];
    args.extend(small);
    fails_with(
        &args,
        "report.md: is a folder; an output file cannot replace it",
    );
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["report.md"], "files left behind");

    // --models M --out M: M/unet would be replaced by the fine-tuned weights.
    let models = dir.join("models");
    std::fs::create_dir_all(models.join("unet")).unwrap();
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fashion-mnist");
    for f in [
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/scheduler_config.json",
        "classifier.safetensors",
    ] {
        std::fs::copy(committed.join(f), models.join(f)).unwrap();
    }
    let before = std::fs::read(models.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let mut args = vec!["finetune", "--models", s(&models), "--out", s(&models)];
    args.extend(small);
    fails_with(&args, "--out would replace the weights of --models");
    let after = std::fs::read(models.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    assert!(before == after, "the input weights changed");

    // A finished run writes every file.
    let good = dir.join("good");
    let mut args = vec!["finetune", "--out", s(&good)];
    args.extend(small);
    let (ok, _, err) = adeis(&args);
    assert!(ok, "{err}");
    for f in [
        "before.png",
        "after.png",
        "reward_curve.png",
        "report.md",
        "report.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/scheduler_config.json",
    ] {
        assert!(good.join(f).is_file(), "{f} missing");
    }

    #[cfg(unix)]
    {
        let stopped = dir.join("stopped");
        let (o, _) = support::interrupted(
            &[
                "finetune",
                "--out",
                s(&stopped),
                "--iters",
                "100000",
                "--batch",
                "2",
                "--steps",
                "2",
            ],
            Duration::from_millis(1500),
        );
        assert!(!o.status.success());
        assert!(!stopped.exists(), "Ctrl-C left {}", stopped.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// No command writes over one of its inputs, and an output that is a device or a FIFO is
/// refused rather than replaced by a regular file.
#[test]
fn outputs_never_replace_inputs_devices_or_fifos() {
    let dir = scratch("outputs");
    let g = dir.join("g");
    std::fs::create_dir_all(&g).unwrap();
    let x = g.join("dx_t.npy");
    adeis::npy::write_npy(&x, &[2, 2], &[0.1, -0.2, 0.3, 0.4], 8).unwrap();
    let before = std::fs::read(&x).unwrap();
    let err = fails_with(
        &on_gaussian(
            "grad",
            &["--x-t", s(&x), "--cot", s(&x), "--out-dir", s(&g)],
        ),
        "the gradient's dx_t.npy would overwrite the input",
    );
    assert!(err.contains("give another output folder"), "{err}");
    assert_eq!(std::fs::read(&x).unwrap(), before);

    let sample = |out: &str| {
        fails_with(
            &on_gaussian("sample", &["--x-t", s(&x), "--out", out]),
            "is not a regular file (a device, a FIFO or a socket)",
        )
    };
    sample("/dev/null");
    #[cfg(unix)]
    {
        let fifo = dir.join("fifo");
        assert!(Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        sample(s(&fifo));
        // Still a FIFO: nothing was written over it.
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        fails_with(
            &on_gaussian("invert", &["--x-0", s(&x), "--out", s(&fifo)]),
            "is not a regular file",
        );
        let gf = dir.join("gf");
        std::fs::create_dir_all(&gf).unwrap();
        assert!(Command::new("mkfifo")
            .arg(gf.join("dx_t.npy"))
            .status()
            .unwrap()
            .success());
        fails_with(
            &on_gaussian(
                "grad",
                &["--x-t", s(&x), "--cot", s(&x), "--out-dir", s(&gf)],
            ),
            "is not a regular file",
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `check --model` describes every model it validated, and says which defaults it filled.
#[test]
fn check_describes_the_model() {
    let (ok, out, err) = adeis(&["check", "--model", "gaussian:mu=1"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("gaussian: data N(mu, s2 I) with mu = 1, s2 = 1"),
        "{out}"
    );
    assert!(out.contains("not given, so the defaults: s2 = 1"), "{out}");
    let (ok, out, _) = adeis(&["check", "--model", "gaussian:mu=1,s2=0.5"]);
    assert!(ok && !out.contains("defaults"), "{out}");
    let (ok, out, err) = adeis(&["check", "--model", "digits"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("takes x_t [batch, 64] (8x8 images as rows); class-conditional"),
        "{out}"
    );
    let (ok, out, err) = adeis(&["check", "--model", "gmm:examples/models/ring8.json"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("a mixture of 8 Gaussians in dimension 2"),
        "{out}"
    );
}

/// A diffusers model folder is checked whole: its config's type, keys and ranges, its weights'
/// finiteness (named at check and at sample time), its scheduler config read as --spec reads
/// one.
#[test]
fn diffusers_folders_are_checked_whole() {
    let dir = scratch("folders");
    let model = |d: &Path| format!("diffusers:{}", d.display());

    let nan = fixture_copy(&dir, "nan");
    let weights = nan.join("diffusion_pytorch_model.safetensors");
    let stored = adeis::safetensors::read_stored(&weights).unwrap();
    let tensors: Vec<adeis::safetensors::NamedTensor> = stored
        .into_iter()
        .map(|(name, t)| {
            let mut data = t.values;
            if name == "conv_out.bias" {
                data[1] = f64::NAN;
            }
            adeis::safetensors::NamedTensor {
                name,
                shape: t.shape,
                data,
            }
        })
        .collect();
    adeis::safetensors::write_safetensors(&weights, &tensors, 4).unwrap();
    fails_with(
        &["check", "--model", &model(&nan)],
        "tensor `conv_out.bias` [3] holds NaN at flat index 1",
    );
    let x = dir.join("x.npy");
    adeis::npy::write_npy(&x, &[1, 3, 8, 8], &[0.5; 192], 8).unwrap();
    let out = dir.join("o.npy");
    fails_with(
        &[
            "sample",
            "--spec",
            "examples/specs/diffusers_ddim.toml",
            "--model",
            &model(&nan),
            "--x-t",
            s(&x),
            "--class-labels",
            "1",
            "--out",
            s(&out),
        ],
        "tensor `conv_out.bias` [3] holds NaN",
    );
    assert!(!out.exists());

    // Broken config.json files, each named for what is wrong with the config itself.
    type Break = fn(&Path);
    let cases: [(&str, Break, &str); 5] = [
        (
            "size",
            |c| edit_json(c, |c| drop(c.insert("sample_size".into(), serde_json::json!(-1)))),
            "sample_size = -1: an image side from 1 to 16384",
        ),
        (
            "array",
            |c| std::fs::write(c, "[]").unwrap(),
            "config.json: the file holds a JSON array, not an object",
        ),
        (
            "deep",
            |c| std::fs::write(c, format!("{}{}", "[".repeat(100_000), "]".repeat(100_000))).unwrap(),
            "the JSON nests more than 128 levels deep",
        ),
        (
            "missing",
            |c| edit_json(c, |c| drop(c.remove("block_out_channels"))),
            "config.json does not give `block_out_channels`, so diffusers' defaults apply: block_out_channels = [224, 448, 672, 896]",
        ),
        (
            "unnamed",
            |c| edit_json(c, |c| drop(c.remove("_class_name"))),
            "no `_class_name`: not a diffusers model config",
        ),
    ];
    for (name, breaks, want) in cases {
        let folder = fixture_copy(&dir, name);
        breaks(&folder.join("config.json"));
        fails_with(&["check", "--model", &model(&folder)], want);
    }

    // diffusers' own default `lambda_min_clipped: -Infinity` reads under --model as under --spec.
    let inf = fixture_copy(&dir, "inf");
    let text = std::fs::read_to_string(inf.join("scheduler_config.json")).unwrap();
    std::fs::write(
        inf.join("scheduler_config.json"),
        text.replacen('{', "{\n  \"lambda_min_clipped\": -Infinity,", 1),
    )
    .unwrap();
    let (ok, said, err) = adeis(&["check", "--model", &model(&inf)]);
    assert!(ok && said.contains(": valid"), "{err}");

    // A 512 x 512 image on an 8 x 8 model: the attention's memory is refused with the figure.
    let big = dir.join("big.npy");
    adeis(&[
        "noise",
        "--shape",
        "1,3,512,512",
        "--seed",
        "1",
        "--out",
        s(&big),
    ]);
    let err = fails_with(
        &[
            "sample",
            "--spec",
            "examples/specs/diffusers_ddim.toml",
            "--model",
            "diffusers:tests/fixtures/unet/class_cond_cifar_style",
            "--x-t",
            s(&big),
            "--class-labels",
            "1",
            "--out",
            s(&out),
        ],
        "a 262144 x 262144 score matrix per head",
    );
    assert!(
        err.contains("the model was made for 8 x 8 images (sample_size), not 512 x 512"),
        "{err}"
    );
    fails_with(
        &[
            "grad",
            "--spec",
            "examples/specs/diffusers_ddim.toml",
            "--model",
            "diffusers:tests/fixtures/unet/class_cond_cifar_style",
            "--x-t",
            s(&big),
            "--cot",
            s(&big),
            "--class-labels",
            "1",
            "--out-dir",
            s(&dir.join("g")),
        ],
        "one evaluation of this UNet and its VJP needs about",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Scheduler configs and JSON specs: a missing class, a cut-off file, a nesting bomb, keys set
/// to null, and a 5 MB value each get an error about the file itself, one line long.
#[test]
fn broken_configs_name_their_cause() {
    let dir = scratch("configs");
    let file = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let cases = [
        (file("nocls.json", r#"{"_diffusers_version": "0.30.0", "num_train_timesteps": 1000}"#.into()), "a diffusers scheduler config (it has `_diffusers_version`, `num_train_timesteps`) without `_class_name`"),
        (file("cut.json", "{\"_class_name\": \"DDIMScheduler\", \"num_train_t".into()), "before it is complete (a truncated file?)"),
        (file("cut-newline.json", "{\"_class_name\": \"DDIMScheduler\",\n  \"beta_start\": 0.0001,\n".into()), "before it is complete (a truncated file?)"),
        (file("deep.json", format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000))), "the JSON nests more than 128 levels deep"),
        (file("array.json", "[1, 2]".into()), "the file holds a JSON array, not an object"),
        (file("nulls.json", r#"{"_class_name": "DDIMScheduler", "num_train_timesteps": null, "beta_start": null, "beta_end": null, "beta_schedule": null, "prediction_type": null}"#.into()), "= null: a value, or no `"),
        (file("long.json", format!(r#"{{"_class_name": "DDIMScheduler", "beta_schedule": "{}"}}"#, "z".repeat(5_000_000))), "beta_schedule = \"zzzz"),
        (file("long.toml", format!("[schedule]\nkind = \"{}\"\n", "x".repeat(5_000_000))), "unknown variant `xxxx"),
    ];
    for (path, want) in &cases {
        let err = fails_with(&["check", path, "--steps", "10"], want);
        assert!(err.len() < 2000, "{path}: a {}-byte error", err.len());
    }
    // diffusers' nulls where its default is None are values.
    let ok = file(
        "none.json",
        r#"{"_class_name": "DDIMScheduler", "trained_betas": null, "clip_sample": false}"#.into(),
    );
    let (ok, _, err) = adeis(&["check", &ok, "--steps", "10"]);
    assert!(ok, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// learn-steps' default model is compiled in: the command runs from any folder.
#[test]
fn learn_steps_runs_from_any_folder() {
    let dir = scratch("anywhere");
    let out = Command::new(env!("CARGO_BIN_EXE_adeis"))
        .args([
            "learn-steps",
            "--iters",
            "2",
            "--train",
            "8",
            "--heldout",
            "8",
            "--out",
            "ls",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("ls/learned.toml").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

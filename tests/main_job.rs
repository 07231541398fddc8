//! The main job: training, morphing with every gradient method, the outputs a user looks at,
//! and Ctrl-C leaving no half-written files. Runs on the committed models at a tiny setting.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod support;
use support::adeis;

fn is_png(p: &Path) -> bool {
    std::fs::read(p).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n") && b.len() > 100)
}

fn partial_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("partial"))
                .collect()
        })
        .unwrap_or_default()
}

/// The demo path (`adeis morph`) on a tiny setting: every output exists, the optimised morphs
/// have a lower identity loss than the initial ones, and the exact gradient of the sampler
/// points the way the loss goes down.
#[test]
fn morph_writes_pictures_and_a_report_and_lowers_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let (ok, stdout, err) = adeis(&[
        "morph",
        "--pairs",
        "2",
        "--iters",
        "4",
        "--steps",
        "8",
        "--methods",
        "none,adjoint_deis_1,discrete,tape",
        "--out",
        out,
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("| discrete adjoint (ODE) |"), "{stdout}");
    for f in ["report.md", "report.json", "loss_curve.png", "report.html"] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }
    assert!(is_png(&dir.path().join("loss_curve.png")));
    // The HTML report shows the table and every picture it names.
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.contains("<td>discrete adjoint (ODE)</td>"), "{html}");
    for img in html.split("<img src=\"").skip(1) {
        let file = img.split('"').next().unwrap();
        assert!(
            is_png(&dir.path().join(file)),
            "report.html shows {file}, which is not there"
        );
    }
    assert!(html.contains("src=\"loss_curve.png\"") && html.contains("src=\"pairs.png\""));
    let pictures: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("pair_"))
        .collect();
    assert_eq!(pictures.len(), 2);
    assert!(pictures.iter().all(|e| is_png(&e.path())));
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    let methods = r["methods"].as_array().unwrap();
    assert_eq!(methods.len(), 4);
    let by_name = |n: &str| methods.iter().find(|m| m["method"] == n).unwrap();
    for name in ["discrete", "tape"] {
        let m = by_name(name);
        let (start, end) = (
            m["mean_loss_initial"].as_f64().unwrap(),
            m["mean_loss_final"].as_f64().unwrap(),
        );
        assert!(end < start, "{name}: the loss went from {start} to {end}");
        // the discrete adjoint is the exact gradient of the sampler, as is the tape
        assert!(
            m["grad_cosine"].as_f64().unwrap() > 0.9999,
            "{name}: {}",
            m["grad_cosine"]
        );
    }
    // the initial morph is the unoptimised one: its loss does not change
    let none = by_name("none");
    assert_eq!(none["mean_loss_initial"], none["mean_loss_final"]);
    assert_eq!(none["vjps_per_morph"], 0);
    // NFE per morph: 2 inversions of 8 steps + (sample 8) for none
    assert_eq!(none["nfe_per_morph"], 24);
    assert!(partial_files(dir.path()).is_empty());
    let t = r["verifier"]["fmr"].as_f64().unwrap();
    assert!(t <= 1e-3, "the threshold's false-match rate is {t}");
}

/// `adeis` without arguments (the README's first command) runs the demo into ./adeis-out/demo
/// wherever it is started.
#[test]
fn the_default_run_is_the_demo() {
    let cwd = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_adeis"))
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("adeis-out/demo/report.md"), "{stdout}");
    let demo = cwd.path().join("adeis-out/demo");
    for f in ["report.md", "report.json", "loss_curve.png", "samples.png"] {
        assert!(demo.join(f).exists(), "{f} missing");
    }
    assert!(is_png(&demo.join("samples.png")));
    let report = std::fs::read_to_string(demo.join("report.md")).unwrap();
    assert!(report.contains("| AdjointDEIS-1 (ODE) |"), "{report}");
    // the UNet part at 28x28
    let fashion = demo.join("fashion-mnist");
    for f in ["report.md", "pairs.png", "samples.png"] {
        assert!(fashion.join(f).exists(), "fashion-mnist/{f} missing");
    }
    let report = std::fs::read_to_string(fashion.join("report.md")).unwrap();
    assert!(
        report.contains("Fashion-MNIST images") && report.contains("| discrete adjoint (ODE) |"),
        "{report}"
    );
}

/// `adeis train` runs end to end on a few steps and its weights load into `adeis morph`.
#[test]
fn train_writes_weights_that_morph_loads() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let (ok, stdout, err) = adeis(&[
        "train",
        "--out",
        out,
        "--denoiser-steps",
        "30",
        "--classifier-steps",
        "30",
        "--batch",
        "16",
        "--checkpoint-every",
        "10",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("held-out accuracy"), "{stdout}");
    for f in [
        "denoiser.safetensors",
        "classifier.safetensors",
        "training.json",
    ] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }
    assert!(is_png(&dir.path().join("samples.png")));
    let t: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("training.json")).unwrap()).unwrap();
    assert_eq!(t["denoiser_steps"], 30);
    assert!(t["denoiser_final_loss"].as_f64().unwrap().is_finite());
    // the same seed gives the same weights
    let again = tempfile::tempdir().unwrap();
    let (ok, _, err) = adeis(&[
        "train",
        "--out",
        again.path().to_str().unwrap(),
        "--denoiser-steps",
        "30",
        "--classifier-steps",
        "30",
        "--batch",
        "16",
        "--no-sample-grid",
    ]);
    assert!(ok, "{err}");
    for f in ["denoiser.safetensors", "classifier.safetensors"] {
        assert_eq!(
            std::fs::read(dir.path().join(f)).unwrap(),
            std::fs::read(again.path().join(f)).unwrap(),
            "{f} differs between two runs with the same seed"
        );
    }
    let morph_dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = adeis(&[
        "morph",
        "--models",
        out,
        "--pairs",
        "1",
        "--iters",
        "1",
        "--steps",
        "3",
        "--methods",
        "discrete",
        "--out",
        morph_dir.path().to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
}

#[test]
fn bad_morph_and_train_options_are_named() {
    let diverging = std::env::temp_dir().join(format!("adeis-diverge-{}", std::process::id()));
    let diverging_out = diverging.to_str().unwrap().to_string();
    let cases: [(&[&str], &str); 8] = [
        (
            &["morph", "--methods", "adjoint_deis_3"],
            "`adjoint_deis_3` is not a method",
        ),
        // A step far too large stops with the iteration and a hint, not pixels at 1e9.
        (
            &[
                "morph",
                "--pairs",
                "2",
                "--iters",
                "3",
                "--methods",
                "discrete",
                "--lr",
                "1e6",
                "--out",
                &diverging_out,
            ],
            "discrete diverged at iteration 0: the optimised x_T and z reached 1.000e6",
        ),
        (&["morph", "--lr", "-1"], "--lr -1"),
        (&["morph", "--methods", "discrete,discrete"], "listed twice"),
        (&["morph", "--pairs", "0"], "--pairs 0"),
        (&["morph", "--digits", "3,12"], "digits are 0 to 9"),
        (&["morph", "--models", "/nonexistent"], "run `adeis train"),
        (&["train", "--lr=-1", "--out", "/tmp/x"], "--lr -1"),
    ];
    for (args, want) in cases {
        let (ok, _, err) = adeis(args);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert!(
        !diverging.exists(),
        "a diverged morph left {}",
        diverging.display()
    );
}

/// Ctrl-C stops a long morph: the process exits with an error and the output folder holds no
/// partial file and no report.
#[cfg(unix)]
#[test]
fn ctrl_c_leaves_no_half_written_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().to_str().unwrap();
    let (out, _) = support::interrupted(
        &[
            "morph",
            "--pairs",
            "64",
            "--iters",
            "100000",
            "--steps",
            "20",
            "--methods",
            "discrete",
            "--out",
            out_dir,
        ],
        Duration::from_millis(2500),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("interrupted"), "{err}");
    assert!(!dir.path().join("report.md").exists());
    assert!(partial_files(dir.path()).is_empty());
}

//! Running the `adeis` program from integration tests.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `adeis ARGS` in the repository root: (success, stdout, stderr).
pub fn adeis(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_adeis"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `adeis ARGS` in the repository root, sends it SIGINT (Ctrl-C) `after` its start and
/// waits for it: its output, and how long it took to stop after the signal.
#[cfg(unix)]
#[allow(dead_code)] // not every test binary that includes this module interrupts a run
pub fn interrupted(args: &[&str], after: Duration) -> (Output, Duration) {
    let child = Command::new(env!("CARGO_BIN_EXE_adeis"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    let signalled = Instant::now();
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    (out, signalled.elapsed())
}

/// max |a - b| / max |b|: the error relative to the reference's scale.
#[allow(dead_code)] // not every test binary compares arrays
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
        / scale
}

/// Writes tensor `key` of a reference file's tensors as a .npy array (f64) in `dir`.
#[allow(dead_code)]
pub fn reference_npy(
    dir: &std::path::Path,
    r: &adeis::safetensors::TensorMap,
    key: &str,
) -> std::path::PathBuf {
    let p = dir.join(format!("{key}.npy"));
    let (shape, data) = &r[key];
    adeis::npy::write_npy(&p, shape, data, 8).unwrap();
    p
}

/// `adeis CMD --spec SPEC --steps 3 --model MODEL EXTRA...`: 3 steps of a pipeline's own
/// scheduler config, as the pipeline fixtures' references run them.
#[allow(dead_code)]
pub fn adeis_pipeline(
    cmd: &str,
    (spec, model): (&std::path::Path, &str),
    extra: &[&str],
) -> (bool, String, String) {
    let mut args = vec![
        cmd,
        "--spec",
        spec.to_str().unwrap(),
        "--steps",
        "3",
        "--model",
        model,
    ];
    args.extend_from_slice(extra);
    adeis(&args)
}

/// The pipeline fixtures' tolerance: f64 against diffusers' loop in f64 (its scheduler's
/// float64 twin), f32 against the loop as shipped in f32.
#[allow(dead_code)]
pub fn pipeline_tolerance(dtype: &str) -> f64 {
    if dtype == "f64" {
        1e-10
    } else {
        1e-4
    }
}

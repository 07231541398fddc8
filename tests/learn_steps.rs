//! `adeis learn-steps`: a 5-step grid learned against the 200-step teacher beats every fixed
//! grid on held-out noises by at least 30% (the mixture and the digits model, default options),
//! deterministically; its spec file runs in `adeis sample` as is; bad options are refused
//! before anything is written.

mod support;
use support::adeis;

use std::path::PathBuf;

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("adeis-learn-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn report(dir: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("report.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The held-out MSE of each grid, by name.
fn mses(r: &serde_json::Value) -> Vec<(String, f64)> {
    r["report"]["grids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap().to_string(),
                g["heldout_mse"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn assert_beats_fixed_grids(r: &serde_json::Value, by: f64) {
    let m = mses(r);
    assert_eq!(m[0].0, "learned");
    let names: Vec<&str> = m[1..].iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["logsnr", "time_uniform", "time_quadratic", "karras"]
    );
    let best = m[1..].iter().map(|(_, v)| *v).fold(f64::INFINITY, f64::min);
    assert!(
        m[0].1 < (1.0 - by) * best,
        "learned {:.3e} against the best fixed grid {best:.3e}: {m:?}",
        m[0].1
    );
}

#[test]
fn a_learned_grid_beats_the_fixed_grids_on_the_mixture_and_runs_as_a_spec() {
    let dir = out_dir("gmm");
    let d = dir.to_str().unwrap();
    let (ok, out, err) = adeis(&["learn-steps", "--out", d]);
    assert!(ok, "{err}");
    assert!(out.contains("| learned |"), "{out}");
    for f in [
        "learned.toml",
        "report.md",
        "report.json",
        "grids.svg",
        "loss.svg",
    ] {
        assert!(
            dir.join(f).metadata().map(|m| m.len() > 0).unwrap_or(false),
            "{f}"
        );
    }
    let svg = std::fs::read_to_string(dir.join("grids.svg")).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("learned (MSE"),
        "grids.svg"
    );
    let r = report(&dir);
    assert_beats_fixed_grids(&r, 0.3);
    assert_eq!(r["report"]["vjps_per_gradient"].as_u64(), Some(5));
    let times: Vec<f64> = r["report"]["grids"][0]["times"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_f64().unwrap())
        .collect();
    assert_eq!(times.len(), 6);
    assert!(times.windows(2).all(|w| w[0] > w[1]), "{times:?}");
    assert_eq!((times[0], times[5]), (1.0, 1e-3));

    // The same seed, the same grid.
    let again = out_dir("gmm-again");
    let (ok, _, err) = adeis(&["learn-steps", "--out", again.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(
        r["report"]["grids"],
        report(&again)["report"]["grids"],
        "learn-steps is not deterministic"
    );

    // The spec file runs as is, on the learned times.
    let spec = dir.join("learned.toml");
    let (ok, out, err) = adeis(&["check", spec.to_str().unwrap()]);
    assert!(ok && out.contains("valid"), "{err}");
    let x = dir.join("x.npy");
    let y = dir.join("y.npy");
    let (ok, _, err) = adeis(&[
        "noise",
        "--shape",
        "4,2",
        "--seed",
        "1",
        "--out",
        x.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = adeis(&[
        "sample",
        "--spec",
        spec.to_str().unwrap(),
        "--model",
        "gmm:examples/models/ring8.json",
        "--x-t",
        x.to_str().unwrap(),
        "--out",
        y.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("explicit grid") && out.contains("NFE 5"),
        "{out}"
    );
    let text = std::fs::read_to_string(&spec).unwrap();
    let parsed: toml::Value = toml::from_str(&text).unwrap();
    let spec_times: Vec<f64> = parsed["sampler"]["times"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_float().unwrap())
        .collect();
    assert_eq!(
        spec_times, times,
        "the spec's times are the report's, to the bit"
    );
}

#[test]
fn a_learned_grid_beats_the_fixed_grids_on_the_digits_model() {
    let dir = out_dir("digits");
    let (ok, _, err) = adeis(&[
        "learn-steps",
        "--model",
        "digits",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let r = report(&dir);
    assert_beats_fixed_grids(&r, 0.3);
    let acc = &r["accuracy"];
    for name in ["learned", "logsnr", "teacher"] {
        let a = acc[name].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&a), "{name}: {a}");
    }
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("read as the class asked for"), "{md}");
    // The digits model runs in `adeis sample` with the learned spec and class labels.
    let x = dir.join("x.npy");
    let y = dir.join("y.npy");
    let (ok, _, err) = adeis(&[
        "noise",
        "--shape",
        "3,64",
        "--seed",
        "2",
        "--out",
        x.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = adeis(&[
        "sample",
        "--spec",
        dir.join("learned.toml").to_str().unwrap(),
        "--model",
        "digits",
        "--x-t",
        x.to_str().unwrap(),
        "--class-labels",
        "3,1,4",
        "--out",
        y.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
}

#[test]
fn bad_learn_steps_options_are_refused_before_any_output() {
    for (args, want) in [
        (
            vec!["--steps", "2"],
            "--steps 2: learn-steps learns grids of 3 to 10 steps",
        ),
        (
            vec!["--steps", "11"],
            "--steps 11: learn-steps learns grids of 3 to 10 steps",
        ),
        (
            vec!["--steps", "0"],
            "--steps 0: a sampler needs at least 1 step",
        ),
        (
            vec!["--teacher-steps", "1000000000"],
            "--teacher-steps 1000000000: at most 100000 steps",
        ),
        (vec!["--lr", "-1"], "--lr -1: a finite learning rate > 0"),
        (vec!["--iters", "0"], "--iters 0: at least one iteration"),
        (
            vec!["--iters", "100001"],
            "--iters 100001: at most 100000 iterations",
        ),
        (
            vec!["--train", "100000000"],
            "--train 100000000: at most 100000 noises",
        ),
        (
            vec!["--heldout", "100000000"],
            "--heldout 100000000: at most 100000 noises",
        ),
        (
            vec!["--model", "digits", "--dtype", "f64"],
            "--dtype f64: the digits models' weights are f32",
        ),
        (
            vec!["--method", "sde_dpm_solver_pp"],
            "--method sde_dpm_solver_pp: the grid is learned for an ODE sampler",
        ),
        (
            vec!["--method", "ddim", "--order", "2"],
            "--order 2: method `ddim` has orders [1]",
        ),
        (
            vec!["--method", "dpm_slover"],
            "--method dpm_slover: not a sampler",
        ),
        (
            vec!["--model", "digits", "--schedule", "vp_cosine"],
            "--schedule: the digits model runs on the schedule it was trained on",
        ),
        (
            vec!["--schedule", "no/such.toml"],
            "--schedule no/such.toml: neither a built-in schedule",
        ),
    ] {
        let dir = out_dir("bad");
        let mut a = vec!["learn-steps", "--out", dir.to_str().unwrap()];
        a.extend(args.iter());
        let (ok, _, err) = adeis(&a);
        assert!(!ok && err.contains(want), "{args:?}: {err}");
        assert!(!dir.exists(), "{args:?} left {}", dir.display());
    }
}

/// A learning rate that makes the optimisation diverge or collapse two grid points stops with
/// the iteration and the learning rate named (it was a panic in the plan builder), and writes
/// nothing (issue 36's crash family: --lr 1e300, 1e6, 100, 30, 5).
#[test]
fn a_diverging_learning_rate_stops_with_the_iteration_named() {
    for (lr, shown) in [
        ("1e300", "1e300"),
        ("1e6", "1e6"),
        ("100", "100"),
        ("30", "30"),
    ] {
        let dir = out_dir("diverging");
        let (ok, _, err) = adeis(&[
            "learn-steps",
            "--model",
            "gmm:examples/models/ring8.json",
            "--lr",
            lr,
            "--iters",
            "20",
            "--out",
            dir.to_str().unwrap(),
        ]);
        assert!(!ok, "--lr {lr} ran");
        assert!(
            err.contains("learn-steps: at iteration")
                && err.contains("the learned grid is no longer a grid")
                && err.contains(&format!("try a smaller --lr (this run: {shown})")),
            "--lr {lr}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(!dir.exists(), "--lr {lr} left {}", dir.display());
    }
}

/// Data without spread at f32 (every sample the same number) leave no grid to learn: an error
/// before anything is written (it wrote four files and then looped forever drawing loss.svg).
#[test]
fn a_degenerate_loss_is_an_error_before_any_output() {
    let dir = out_dir("degenerate");
    let (ok, _, err) = adeis(&[
        "learn-steps",
        "--model",
        "gaussian:mu=1e30,s2=1e-30",
        "--iters",
        "3",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("the training loss is 0 at iteration 0") && err.contains("no grid to learn"),
        "{err}"
    );
    assert!(!dir.exists(), "left {}", dir.display());
}

//! The `adeis` command line.

use std::process::Command;

fn adeis(args: &[&str]) -> (bool, String, String) {
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

#[test]
fn schedule_json_has_one_array_per_quantity() {
    let (ok, out, err) = adeis(&["schedule", "vp_linear", "--at", "0.001,0.5,1", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for key in ["t", "alpha", "sigma", "lambda", "f", "g2", "t_of_lambda"] {
        assert_eq!(v[key].as_array().map(|a| a.len()), Some(3), "{key}");
    }
    let g2 = v["g2"][1].as_f64().unwrap();
    assert!((g2 - (0.1 + 19.9 * 0.5)).abs() < 1e-12);
    let back = v["t_of_lambda"][1].as_f64().unwrap();
    assert!((back - 0.5).abs() < 1e-13);
    assert!(v["expressions"]["f"].as_str().unwrap().contains("beta_max"));
}

#[test]
fn schedule_from_spec_file_and_every_builtin() {
    let (ok, out, err) = adeis(&["schedule", "examples/specs/vp_linear_custom.toml"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("schedule custom (beta_max = 20, beta_min = 0.1)"),
        "{out}"
    );
    assert_eq!(
        out.lines()
            .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
            .count(),
        11
    );
    for name in adeis::compiler::ScheduleDef::BUILTIN_NAMES {
        let (ok, _, err) = adeis(&["schedule", name, "--json"]);
        assert!(ok, "{name}: {err}");
    }
}

#[test]
fn the_default_run_prints_the_report() {
    let (ok, out, err) = adeis(&[]);
    assert!(ok, "{err}");
    assert!(out.contains("schedule vp_linear"), "{out}");
}

#[test]
fn bad_input_gets_a_clear_error() {
    let (ok, _, err) = adeis(&["schedule", "vp_linaer"]);
    assert!(!ok);
    assert!(
        err.contains("`vp_linaer` is neither a built-in schedule (vp_linear, "),
        "{err}"
    );
    let (ok, _, err) = adeis(&["schedule", "vp_linear", "--at", "2.0"]);
    assert!(!ok);
    assert!(
        err.contains("--at: t = 2 is outside the schedule's t range [0.001, 1]"),
        "{err}"
    );
    let (ok, _, err) = adeis(&["schedule", "no/such/file.toml"]);
    assert!(!ok);
    assert!(err.contains("no/such/file.toml"), "{err}");
}

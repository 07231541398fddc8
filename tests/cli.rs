//! The `adeis` command line.

mod support;
use support::adeis;

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

#[test]
fn hostile_sizes_and_formulas_get_clear_errors_and_no_crash() {
    let dir = std::env::temp_dir().join(format!("adeis-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let custom = |log_alpha: String| {
        format!("[schedule]\nkind = \"custom\"\nlog_alpha = \"{log_alpha}\"\nsigma = \"sqrt(1 - exp(2 * log_alpha(t)))\"\nt_range = [0.001, 1.0]\n")
    };
    let cases = [
        (spec("nested.toml", custom(format!("{}t{}", "(".repeat(8000), ")".repeat(8000)))), "schedule.log_alpha: at column 257: the formula opens more than 256 nested sub-expressions"),
        (spec("chain.toml", custom(vec!["t"; 20_000].join("+"))), "the formula is more than 256 levels deep here"),
        (spec("powers.toml", custom(format!("-t{}", "^1".repeat(5000)))), "more than 256"),
        (spec("steps.toml", "[schedule]\nkind = \"vp_linear\"\n[sampler]\nmethod = \"ddim\"\nsteps = 1000000000\n".into()), "sampler.steps: steps = 1000000000: at most 100000 steps"),
        (spec("steps-max.toml", "[schedule]\nkind = \"vp_linear\"\n[sampler]\nmethod = \"ddim\"\nsteps = 9223372036854775807\n".into()), "at most 100000 steps"),
        (spec("train.toml", "[schedule]\nkind = \"discrete\"\nnum_train_timesteps = 1000000000\n[sampler]\nmethod = \"ddim\"\nsteps = 10\n".into()), "num_train_timesteps` = 1000000000 is not allowed: an integer from 2 to 100000"),
        (spec("adjoint.toml", "[schedule]\nkind = \"vp_linear\"\n[sampler]\nmethod = \"ddim\"\nsteps = 10\n[gradient]\nmethod = \"adjoint_deis\"\nsteps = 1000000000\n".into()), "gradient.steps: steps = 1000000000: at most 100000 steps"),
        // A schedule NaN on an interval too narrow for the check grid, where the sampler runs;
        // a user's inverse that is not the inverse.
        (spec("narrow.toml", "[schedule]\nkind = \"custom\"\nlog_alpha = \"-t^2 - 0.1*t\"\nsigma = \"sqrt(1 - exp(2*log_alpha(t))) * (1 + 0 * sqrt(abs(t - 0.5) - 1e-6))\"\nt_range = [0.01, 1.0]\n[sampler]\nmethod = \"dpm_solver_pp\"\norder = 2\ntimes = [1.0, 0.5, 0.01]\n".into()), "sampler.times: the schedule's sigma is NaN at grid point [1], t = 0.5: the schedule is not finite on the grid that runs"),
        (spec("inverse.toml", "[schedule]\nkind = \"custom\"\nlog_alpha = \"-t^2\"\nsigma = \"sqrt(1 - exp(-2*t^2))\"\nt_range = [0.01, 1.0]\ninverse = \"lambda * 0 + 0.5\"\n".into()), "schedule.inverse: the inverse is not t(lambda): at t = 0.01"),
        // Arrays of the wrong length, in TOML as in JSON.
        (spec("range3.toml", "[schedule]\nkind = \"vp_linear\"\nt_range = [0.1, 0.5, 1.0]\n".into()), "invalid length 3, expected two numbers [t_min, t_max]"),
        (spec("range1.json", "{\"schedule\": {\"kind\": \"vp_linear\", \"t_range\": [0.1]}}".into()), "invalid length 1, expected two numbers [t_min, t_max]"),
        // Options that do not apply to the method or the grid.
        (spec("corrector.toml", "[schedule]\nkind = \"vp_linear\"\n[sampler]\nmethod = \"ddim\"\ncorrector = false\n".into()), "sampler.corrector: `corrector` is UniPC's; method `ddim` has none"),
        (spec("third.toml", "[schedule]\nkind = \"vp_linear\"\n[sampler]\nmethod = \"dpm_solver_pp\"\norder = 1\nthird_order = \"reference\"\n".into()), "sampler.third_order: `third_order` chooses the third-order"),
        (spec("rho.toml", "[schedule]\nkind = \"vp_linear\"\n[sampler]\nmethod = \"ddim\"\nrho = 5.0\n".into()), "sampler.rho: `rho` shapes the karras grid"),
        (spec("steps-times.toml", "[schedule]\nkind = \"vp_linear\"\n[sampler]\nmethod = \"ddim\"\nsteps = 50\ntimes = [1.0, 0.5, 0.01]\n".into()), "sampler.steps: the grid is given as `times`"),
        (spec("slots.toml", "[schedule]\nkind = \"vp_linear\"\n[sampler]\nmethod = \"ddim\"\n[gradient]\nmethod = \"discrete\"\nstates = \"checkpoint\"\ncheckpoints = 0\n".into()), "gradient.checkpoints: checkpoints = 0: at least 1 slot"),
        (spec("indices.toml", "[schedule]\nkind = \"discrete\"\nbeta_schedule = \"linear\"\n[sampler]\nmethod = \"ddim\"\ntrain_indices = [0, 999, 500]\n".into()), "sampler.train_indices: train indices must decrease strictly (noisiest first): [0] = 0 then [1] = 999"),
        (spec("stages.toml", "[schedule]\nkind = \"vp_linear\"\n[sampler]\nmethod = \"deis\"\norder = 2\nstages = \"grid\"\n".into()), "sampler.stages: \"grid\" is singlestep DPM-Solver's"),
        (spec("stages-odd.toml", "[schedule]\nkind = \"vp_linear\"\n[sampler]\nmethod = \"dpm_solver_pp\"\norder = 2\nsteps = 7\nstages = \"grid\"\nlower_order_final = false\n".into()), "sampler.lower_order_final: false with stages = \"grid\": the 7 steps do not split into groups of order 2"),
        (spec("skip.toml", "[schedule]\nkind = \"vp_linear\"\n[sampler]\nmethod = \"deis\"\ndisable_corrector = [1]\n".into()), "sampler.disable_corrector: skips UniPC's corrector"),
        (spec("skip-far.toml", "[schedule]\nkind = \"vp_linear\"\n[sampler]\nmethod = \"unipc\"\norder = 2\nsteps = 5\ndisable_corrector = [7]\n".into()), "sampler.disable_corrector: disable_corrector = 7: steps of this grid: 0 to 4"),
        (spec("quantile.toml", "[schedule]\nkind = \"vp_linear\"\n[sampler]\nmethod = \"ddim\"\n[thresholding]\nquantile = 2.0\n".into()), "thresholding.quantile: quantile = 2: a number from 0 to 1"),
    ];
    // A non-finite input is refused before the run, naming the file and the element (it was
    // reported as the solver's NaN at step 0).
    let nan = dir.join("nan_x.npy");
    adeis::npy::write_npy(&nan, &[2, 2], &[0.5, 1.0, f64::INFINITY, f64::NAN], 8).unwrap();
    let out = dir.join("never.npy");
    let (ok, _, err) = adeis(&[
        "sample",
        "--spec",
        "examples/specs/sample_dpmpp.toml",
        "--model",
        "gaussian:mu=0,s2=1",
        "--x-t",
        nan.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains(
            "nan_x.npy holds inf at [1, 0] (2 non-finite values in all); inputs must be finite"
        ),
        "{err}"
    );
    assert!(!out.exists());
    for (path, want) in &cases {
        let (ok, out, err) = adeis(&["check", path]);
        assert!(!ok && err.contains(want), "{path}: {err}");
        assert!(!out.contains(": valid"), "{path} was called valid: {out}");
        assert!(
            err.lines().all(|l| l.len() < 400),
            "{path}: the error prints the whole formula"
        );
    }
    for (args, want) in [
        (
            vec!["bench", "--workload", "tiny", "--steps", "1000000000"],
            "--steps 1000000000: at most 100000 steps",
        ),
        (
            vec!["morph", "--adjoint-steps", "1000000000"],
            "--adjoint-steps 1000000000: at most 100000 steps",
        ),
        (
            vec!["morph", "--pairs", "18446744073709551615"],
            "--pairs 18446744073709551615: at most 10000 pairs",
        ),
        // A negative number is a value the flag refuses, not an unknown flag.
        (
            vec!["noise", "--shape", "2,2", "--seed", "-1", "--out", "x.npy"],
            "invalid value '-1' for '--seed <SEED>'",
        ),
    ] {
        let (ok, _, err) = adeis(&args);
        assert!(!ok && err.contains(want), "{args:?}: {err}");
    }
    // Outputs checked before the run; nothing written or made for a run that fails.
    let xt = dir.join("xt.npy");
    adeis::npy::write_npy(&xt, &[2, 2], &[0.3, -1.2, 0.8, 0.1], 8).unwrap();
    let empty = dir.join("empty.npy");
    adeis::npy::write_npy(&empty, &[0, 3], &[], 8).unwrap();
    let sp = "examples/specs/sample_dpmpp.toml";
    let (x, e, out) = (
        xt.to_str().unwrap(),
        empty.to_str().unwrap(),
        dir.join("y.npy"),
    );
    let y = out.to_str().unwrap();
    let missing = dir.join("no-such-folder/t.npy");
    let gdir = dir.join("grads-of-a-failed-run");
    let g = gdir.to_str().unwrap();
    let m = missing.to_str().unwrap();
    /// `adeis sample --spec SP --model MODEL --x-t X --out OUT EXTRA...`.
    fn sample_args<'a>(
        sp: &'a str,
        model: &'a str,
        x: &'a str,
        out: &'a str,
        extra: &[&'a str],
    ) -> Vec<&'a str> {
        let mut a = vec![
            "sample", "--spec", sp, "--model", model, "--x-t", x, "--out", out,
        ];
        a.extend(extra);
        a
    }
    let sample = |model, x, out, extra| sample_args(sp, model, x, out, extra);
    for (args, want) in [
        (
            sample("gaussian:mu=1,mu=5", x, y, &[]),
            "`mu` is given twice",
        ),
        (
            sample("gaussian:mu=1", x, y, &["--trajectory", y]),
            "--trajectory",
        ),
        (
            sample("gaussian:mu=1", x, y, &["--trajectory", m]),
            "does not exist",
        ),
        (sample("gaussian:mu=1", x, x, &[]), "is one of the inputs"),
        (
            sample("gaussian:mu=1", e, y, &[]),
            "has shape [0, 3]: an empty array",
        ),
        (
            vec![
                "grad",
                "--spec",
                sp,
                "--model",
                "gaussian:mu=1",
                "--x-t",
                x,
                "--cot",
                e,
                "--out-dir",
                g,
            ],
            "--cot has shape [0, 3]",
        ),
        (
            vec!["train", "--denoiser-steps", "0", "--out", g],
            "--denoiser-steps 0: at least one training step",
        ),
    ] {
        let (ok, _, err) = adeis(&args);
        assert!(!ok && err.contains(want), "{args:?}: {err}");
        assert!(
            !out.exists() && !gdir.exists(),
            "{args:?} left an output behind"
        );
    }
    // A closed pipe ends the output quietly (no panic message), as Unix tools do.
    #[cfg(unix)]
    {
        use std::io::Read;
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_adeis"))
            .args([
                "schedule",
                "vp_linear",
                "--at",
                &vec!["0.5"; 20_000].join(","),
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        child.wait().unwrap();
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

mod sample {
    use super::adeis;
    use adeis::npy::{read_npy, write_npy};
    use std::path::{Path, PathBuf};

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("adeis-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn write_spec(name: &str, sampler: &str) -> PathBuf {
        let p = tmp(name);
        std::fs::write(
            &p,
            format!("[schedule]\nkind = \"vp_linear\"\n\n[sampler]\n{sampler}\n"),
        )
        .unwrap();
        p
    }

    fn x_t(name: &str, shape: &[usize]) -> PathBuf {
        let p = tmp(name);
        let n: usize = shape.iter().product();
        let data: Vec<f64> = (0..n).map(|i| ((i * 37 % 11) as f64 - 5.0) / 3.0).collect();
        write_npy(&p, shape, &data, 8).unwrap();
        p
    }

    fn s(p: &Path) -> &str {
        p.to_str().unwrap()
    }

    #[test]
    fn samples_gaussian_data_to_the_closed_form() {
        let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/specs/sample_dpmpp.toml");
        let xt = x_t("xt.npy", &[4, 3]);
        let out = tmp("out.npy");
        let traj = tmp("traj.npy");
        let (ok, stdout, err) = adeis(&[
            "sample",
            "--spec",
            s(&spec),
            "--model",
            "gaussian:mu=1.0,s2=0.3",
            "--x-t",
            s(&xt),
            "--out",
            s(&out),
            "--trajectory",
            s(&traj),
            "--dtype",
            "f64",
        ]);
        assert!(ok, "{err}");
        assert!(stdout.contains("NFE 25"), "{stdout}");
        let x = read_npy(&xt).unwrap();
        let y = read_npy(&out).unwrap();
        assert_eq!((y.shape.clone(), y.word), (vec![4, 3], 8));
        // Closed-form flow map of VP linear (beta 0.1..20) on [1e-3, 1].
        let la = |t: f64| -(19.9) * t * t / 4.0 - 0.1 * t / 2.0;
        let (a0, a1) = (la(1e-3).exp(), la(1.0).exp());
        let v = |a: f64| a * a * 0.3 + (1.0 - a * a);
        let k = (v(a0) / v(a1)).sqrt();
        for (xi, yi) in x.data.iter().zip(&y.data) {
            let exact = a0 * 1.0 + k * (xi - a1 * 1.0);
            // 25 steps of DPM-Solver++(3M): the orders test measures 2e-3 at 20 steps.
            assert!((yi - exact).abs() < 3e-3, "{yi} vs {exact}");
        }
        let tr = read_npy(&traj).unwrap();
        assert_eq!(tr.shape, vec![26, 4, 3]);
        // f32 by default, written as f32.
        let (ok, _, err) = adeis(&[
            "sample",
            "--spec",
            s(&spec),
            "--model",
            "gaussian:mu=1.0,s2=0.3",
            "--x-t",
            s(&xt),
            "--out",
            s(&out),
        ]);
        assert!(ok, "{err}");
        let y32 = read_npy(&out).unwrap();
        assert_eq!(y32.word, 4);
        for (a, b) in y32.data.iter().zip(&y.data) {
            assert!((a - b).abs() < 1e-4);
        }
    }

    #[test]
    fn sde_sampling_is_seeded() {
        let spec = write_spec(
            "sde.toml",
            "method = \"sde_dpm_solver_pp\"\norder = 2\nsteps = 30",
        );
        let xt = x_t("xt2.npy", &[2, 2]);
        let run = |seed: &str, out: &Path| {
            let (ok, _, err) = adeis(&[
                "sample",
                "--spec",
                s(&spec),
                "--model",
                "gaussian:mu=0.0,s2=1.0",
                "--x-t",
                s(&xt),
                "--out",
                s(out),
                "--seed",
                seed,
                "--dtype",
                "f64",
            ]);
            assert!(ok, "{err}");
            read_npy(out).unwrap().data
        };
        let a = run("5", &tmp("a.npy"));
        assert_eq!(a, run("5", &tmp("b.npy")));
        assert_ne!(a, run("6", &tmp("c.npy")));
    }

    #[test]
    fn bad_sampler_specs_and_arrays_are_reported() {
        let xt = x_t("xt3.npy", &[2, 3]);
        let out = tmp("o.npy");
        let cases = [
            (
                "method = \"dpm_solver_plus\"",
                "unknown variant `dpm_solver_plus`, expected one of `ddim`",
            ),
            (
                "method = \"ddim\"\norder = 2",
                "sampler.order: order = 2: method `ddim` has orders [1]",
            ),
            ("method = \"deis\"\nsteps = 0", "sampler.steps: steps = 0"),
            (
                "method = \"ddim\"\ntimes = [1.0, 0.5, 0.0]",
                "grid time [2] = 0 is outside the schedule's t range [0.001, 1]",
            ),
            (
                "method = \"unipc\"\norder = 2\nequation = \"sde\"",
                "method `unipc` has no SDE form",
            ),
            ("method = \"ddim\"\nstep = 3", "unknown field `step`"),
        ];
        for (i, (sampler, want)) in cases.iter().enumerate() {
            let spec = write_spec(&format!("bad{i}.toml"), sampler);
            let (ok, _, err) = adeis(&[
                "sample",
                "--spec",
                s(&spec),
                "--model",
                "gaussian:mu=0,s2=1",
                "--x-t",
                s(&xt),
                "--out",
                s(&out),
            ]);
            assert!(!ok);
            assert!(err.contains(want), "{sampler}: {err}");
        }
        let spec = write_spec("good.toml", "method = \"ddim\"\nsteps = 5");
        let x3 = x_t("xt4.npy", &[2, 3, 1]);
        let (ok, _, err) = adeis(&[
            "sample",
            "--spec",
            s(&spec),
            "--model",
            "gaussian:mu=0,s2=1",
            "--x-t",
            s(&x3),
            "--out",
            s(&out),
        ]);
        assert!(
            !ok && err.contains("has shape [2, 3, 1]; expected [batch, dim]"),
            "{err}"
        );
        let gmm = tmp("gmm.json");
        std::fs::write(
            &gmm,
            r#"{"weights": [1.0], "means": [[0.0, 1.0]], "variances": [0.5]}"#,
        )
        .unwrap();
        let (ok, _, err) = adeis(&[
            "sample",
            "--spec",
            s(&spec),
            "--model",
            &format!("gmm:{}", s(&gmm)),
            "--x-t",
            s(&xt),
            "--out",
            s(&out),
        ]);
        assert!(
            !ok && err.contains("--x-t has dimension 3 but the mixture's means have dimension 2"),
            "{err}"
        );
        let (ok, _, err) = adeis(&[
            "sample",
            "--spec",
            s(&spec),
            "--model",
            "gaussian:mu=0,s2=-1",
            "--x-t",
            s(&xt),
            "--out",
            s(&out),
        ]);
        assert!(!ok && err.contains("s2 > 0"), "{err}");
    }
}

mod grad {
    use super::adeis;
    use adeis::npy::{read_npy, write_npy};
    use std::path::{Path, PathBuf};

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("adeis-grad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn s(p: &Path) -> &str {
        p.to_str().unwrap()
    }

    fn spec(name: &str, gradient: &str) -> PathBuf {
        let p = tmp(name);
        std::fs::write(
            &p,
            format!("[schedule]\nkind = \"vp_linear\"\n\n[sampler]\nmethod = \"dpm_solver_pp\"\norder = 2\nsteps = 200\n\n[gradient]\n{gradient}\n"),
        )
        .unwrap();
        p
    }

    fn arr(name: &str, data: &[f64], shape: &[usize]) -> PathBuf {
        let p = tmp(name);
        write_npy(&p, shape, data, 8).unwrap();
        p
    }

    /// `adeis grad --spec SP --model MODEL --x-t XT --cot COT --out-dir OUT EXTRA...`.
    fn grad(
        sp: &Path,
        model: &str,
        xt: &Path,
        cot: &Path,
        out: &Path,
        extra: &[&str],
    ) -> (bool, String, String) {
        let mut a = vec![
            "grad",
            "--spec",
            s(sp),
            "--model",
            model,
            "--x-t",
            s(xt),
            "--cot",
            s(cot),
            "--out-dir",
            s(out),
        ];
        a.extend(extra);
        adeis(&a)
    }

    #[test]
    fn gradients_match_the_closed_form() {
        let xt = arr("xt.npy", &[0.3, -1.2, 0.8, 0.1], &[2, 2]);
        let cot = arr("cot.npy", &[1.0, -0.5, 0.25, 2.0], &[2, 2]);
        // VP linear (0.1, 20) on [1e-3, 1], Gaussian data mu = 0.5, s2 = 0.3.
        let la = |t: f64| -(19.9) * t * t / 4.0 - 0.1 * t / 2.0;
        let (a0, a1) = (la(1e-3).exp(), la(1.0).exp());
        let v = |a: f64| a * a * 0.3 + (1.0 - a * a);
        let k = (v(a0) / v(a1)).sqrt();
        for (i, g) in [
            "method = \"discrete\"\nwrt = [\"x_t\", \"cond\", \"params\"]",
            "method = \"adjoint_deis\"\norder = 2\nwrt = [\"x_t\", \"cond\", \"params\"]",
            "method = \"discrete\"\nstates = \"checkpoint\"\ncheckpoints = 4\nwrt = [\"x_t\", \"cond\", \"params\"]",
            "method = \"tape\"\nwrt = [\"x_t\", \"cond\"]",
        ]
        .iter()
        .enumerate()
        {
            let out = tmp(&format!("out{i}"));
            let sp = spec(&format!("g{i}.toml"), g);
            let (ok, stdout, err) = grad(&sp, "gaussian:mu=0.5,s2=0.3", &xt, &cot, &out, &["--dtype", "f64"]);
            assert!(ok, "{g}: {err}");
            let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            assert!(summary["peak_memory_bytes"].as_u64().unwrap() > 0);
            if !g.contains("tape") {
                assert_eq!(summary["vjps"].as_u64(), Some(200), "{g}");
            }
            let dx = read_npy(&out.join("dx_t.npy")).unwrap().data;
            let dz = read_npy(&out.join("dz.npy")).unwrap().data;
            // The discrete gradients are exact for the 200-step sampler, which is within 1e-3
            // of the flow; AdjointDEIS-2M at M = 200 is still 1.6% off (its error falls as
            // M^-2 only from M ~ 300 on: see the runtime's gradient tests).
            let tol = if g.contains("adjoint_deis") { 3e-2 } else { 1e-3 };
            for (j, c) in [1.0, -0.5, 0.25, 2.0].iter().enumerate() {
                assert!((dx[j] - k * c).abs() < tol * (k * c).abs().max(0.1), "{g}: dx[{j}] = {} vs {}", dx[j], k * c);
                assert!((dz[j] - (a0 - a1 * k) * c).abs() < tol * ((a0 - a1 * k) * c).abs().max(0.1), "{g}: dz[{j}]");
            }
            if g.contains("params") {
                let p = adeis::safetensors::read_safetensors(&out.join("dparams.safetensors")).unwrap();
                let dk = 0.5 * k * (a0 * a0 / v(a0) - a1 * a1 / v(a1));
                let x = [0.3, -1.2, 0.8, 0.1];
                let exact: f64 = [1.0, -0.5, 0.25, 2.0].iter().zip(x).map(|(c, x)| c * (x - a1 * 0.5) * dk).sum();
                assert!((p["s2"].1[0] - exact).abs() < tol * exact.abs().max(1.0), "{g}: {} vs {exact}", p["s2"].1[0]);
            }
        }
    }

    #[test]
    fn time_gradients_converge_to_the_flows_at_the_ends() {
        // On Gaussian data the flow from t_max to t_min is x0 = a0 mu + k (x - a1 mu) with
        // k = sqrt(v(a0) / v(a1)), v(a) = a^2 s2 + 1 - a^2: its derivatives in t_max and
        // t_min are closed forms. The sampler's sensitivity to t_min is its last step's
        // velocity: with DPM-Solver++(2M)'s coefficients moving with h, the data prediction
        // it implies at the end point is the linear extrapolation D_s + h D', second order.
        let (xv, cv, mu) = ([0.3, -1.2, 0.8, 0.1], [1.0, -0.5, 0.25, 2.0], 0.5);
        let xt = arr("xt-times.npy", &xv, &[2, 2]);
        let cot = arr("cot-times.npy", &cv, &[2, 2]);
        let la = |t: f64| -(19.9) * t * t / 4.0 - 0.1 * t / 2.0;
        let dla = |t: f64| -(19.9) * t / 2.0 - 0.05;
        let (t0, t1) = (1e-3, 1.0);
        let (a0, a1) = (la(t0).exp(), la(t1).exp());
        let v = |a: f64| a * a * 0.3 + (1.0 - a * a);
        let dv = |a: f64, t: f64| -1.4 * a * a * dla(t);
        let k = (v(a0) / v(a1)).sqrt();
        let dk_dt1 = -0.5 * k * dv(a1, t1) / v(a1);
        let dk_dt0 = 0.5 * k * dv(a0, t0) / v(a0);
        let d_tmax: f64 = cv
            .iter()
            .zip(xv)
            .map(|(c, x)| c * (dk_dt1 * (x - a1 * mu) - k * mu * a1 * dla(t1)))
            .sum();
        let d_tmin: f64 = cv
            .iter()
            .zip(xv)
            .map(|(c, x)| c * (mu * a0 * dla(t0) + dk_dt0 * (x - a1 * mu)))
            .sum();
        let model = format!("gaussian:mu={mu},s2=0.3");
        let ends = |steps: usize| {
            let sp = tmp(&format!("times{steps}.toml"));
            std::fs::write(&sp, format!("[schedule]\nkind = \"vp_linear\"\n\n[sampler]\nmethod = \"dpm_solver_pp\"\norder = 2\nsteps = {steps}\n\n[gradient]\nwrt = [\"x_t\", \"times\"]\n")).unwrap();
            let out = tmp(&format!("out-times{steps}"));
            let (ok, stdout, err) = grad(&sp, &model, &xt, &cot, &out, &["--dtype", "f64"]);
            assert!(ok, "{err}");
            let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            assert_eq!(summary["vjps"].as_u64(), Some(steps as u64));
            assert_eq!(summary["grid"].as_array().map(|g| g.len()), Some(steps + 1));
            let dt = read_npy(&out.join("dtimes.npy")).unwrap();
            assert_eq!((dt.shape.clone(), dt.word), (vec![steps + 1], 8));
            (
                (dt.data[0] - d_tmax).abs() / d_tmax.abs(),
                (dt.data[steps] - d_tmin).abs() / d_tmin.abs(),
            )
        };
        let (max200, min200) = ends(200);
        let (max400, min400) = ends(400);
        assert!(
            max200 < 1e-3 && max400 < max200,
            "dL/dt_max: rel err {max200:.2e} (200 steps), {max400:.2e} (400)"
        );
        let ratio = min400 / min200;
        assert!(
            min400 < 0.01 && (0.18..0.32).contains(&ratio),
            "dL/dt_min: rel err {min200:.2e} (200 steps), {min400:.2e} (400): not second order"
        );
        // The schedule's parameters: the flow's derivative through a0 = alpha(t_min) and
        // a1 = alpha(t_max), d log alpha / d beta_min = -t/2 + t^2/4, d / d beta_max = -t^2/4.
        // The logsnr grid moves with them, its last point in lambda with it: second order,
        // like dL/dt_min.
        type DLogAlpha = fn(f64) -> f64;
        let dlogs: [(&str, DLogAlpha); 2] = [
            ("beta_min", |t| -t / 2.0 + t * t / 4.0),
            ("beta_max", |t| -t * t / 4.0),
        ];
        let schedule_errs = |steps: usize| -> Vec<f64> {
            let sp = tmp(&format!("schedule{steps}.toml"));
            std::fs::write(&sp, format!("[schedule]\nkind = \"vp_linear\"\n\n[sampler]\nmethod = \"dpm_solver_pp\"\norder = 2\nsteps = {steps}\n\n[gradient]\nwrt = [\"schedule\"]\n")).unwrap();
            let out = tmp(&format!("out-schedule{steps}"));
            let (ok, _, err) = grad(&sp, &model, &xt, &cot, &out, &["--dtype", "f64"]);
            assert!(ok, "{err}");
            let text = std::fs::read_to_string(out.join("dschedule.json")).unwrap();
            let ds: serde_json::Value = serde_json::from_str(&text).unwrap();
            dlogs
                .iter()
                .map(|(name, dlog)| {
                    let (da0, da1) = (a0 * dlog(t0), a1 * dlog(t1));
                    let dk = 0.5 * k * (-1.4 * a0 * da0 / v(a0) + 1.4 * a1 * da1 / v(a1));
                    let exact: f64 = cv
                        .iter()
                        .zip(xv)
                        .map(|(c, x)| c * (mu * da0 + dk * (x - a1 * mu) - k * mu * da1))
                        .sum();
                    (ds[name].as_f64().unwrap() - exact).abs() / exact.abs()
                })
                .collect()
        };
        let (e400, e800) = (schedule_errs(400), schedule_errs(800));
        eprintln!(
            "dL/d(beta_min, beta_max) against the flow: {e400:?} (400 steps), {e800:?} (800)"
        );
        for (k, (name, _)) in dlogs.iter().enumerate() {
            let ratio = e800[k] / e400[k];
            assert!(
                e800[k] < 5e-3 && (0.18..0.32).contains(&ratio),
                "dL/d{name}: rel err {:.2e} (400 steps), {:.2e} (800): not second order",
                e400[k],
                e800[k]
            );
        }
        // Not for the methods that do not differentiate the grid.
        let sp = spec(
            "times-deis.toml",
            "method = \"adjoint_deis\"\nwrt = [\"times\"]",
        );
        let out = tmp("out-times-deis");
        let (ok, _, err) = grad(&sp, &model, &xt, &cot, &out, &[]);
        assert!(
            !ok && err.contains("wrt \"times\" is computed by the discrete adjoint (method = \"discrete\"), the exact gradient of the sampler that ran, or the tape"),
            "{err}"
        );
    }

    #[test]
    fn grad_errors_are_clear() {
        let xt = arr("xt2.npy", &[0.3, -1.2, 0.8, 0.1], &[2, 2]);
        let out = tmp("out-err");
        let run = |sp: &Path, extra: &[&str]| {
            let mut a = vec![
                "grad",
                "--spec",
                s(sp),
                "--model",
                "gaussian:mu=0,s2=1",
                "--x-t",
                s(&xt),
                "--out-dir",
                s(&out),
            ];
            a.extend_from_slice(extra);
            adeis(&a)
        };
        let good = spec("good.toml", "method = \"discrete\"");
        let bad_cot = arr("badcot.npy", &[1.0, 2.0, 3.0], &[1, 3]);
        let (ok, _, err) = run(&good, &["--cot", s(&bad_cot)]);
        assert!(
            !ok && err.contains("--cot has shape [1, 3]; the sample has [2, 2]"),
            "{err}"
        );
        let (ok, _, err) = run(
            &spec("o3.toml", "method = \"adjoint_deis\"\norder = 3"),
            &["--cot", s(&bad_cot)],
        );
        assert!(
            !ok && err.contains("gradient.order: order = 3: adjoint_deis has orders 1 and 2"),
            "{err}"
        );
        let nan_target = arr("nan.npy", &[f64::NAN, 0.0, 0.0, 0.0], &[2, 2]);
        let (ok, _, err) = run(&good, &["--loss", "mse", "--target", s(&nan_target)]);
        // Refused as an input, before the run, naming the file and the element.
        assert!(
            !ok && err.contains("--target: ")
                && err.contains("nan.npy holds NaN at [0, 0] (1 non-finite value in all)"),
            "{err}"
        );
        let (ok, _, err) = run(&good, &[]);
        assert!(!ok && err.contains("give --cot"), "{err}");
        let (ok, _, err) = run(
            &spec("bs.toml", "method = \"discrete\"\nstates = \"backsolve\""),
            &["--cot", s(&bad_cot)],
        );
        assert!(!ok && err.contains("gradient.states"), "{err}");
        let (ok, _, err) = run(
            &spec("w.toml", "wrt = [\"x_t\", \"x_t\"]"),
            &["--cot", s(&bad_cot)],
        );
        assert!(!ok && err.contains("gradient.wrt"), "{err}");
        // mse works end to end.
        let target = arr("target.npy", &[0.0; 4], &[2, 2]);
        let (ok, stdout, err) = run(&good, &["--loss", "mse", "--target", s(&target)]);
        assert!(ok, "{err}");
        assert!(stdout.contains("\"loss\""));
    }
}

#[test]
fn check_prints_the_derived_plans() {
    let (ok, out, err) = adeis(&["check", "examples/specs/sample_dpmpp.toml", "--rows", "2"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("examples/specs/sample_dpmpp.toml: valid"),
        "{out}"
    );
    assert!(
        out.contains("t(lambda): 2 * softplus(-2 * lambda)"),
        "{out}"
    );
    assert!(out.contains("25 steps, NFE 25"), "{out}");
    assert!(out.contains("[  1] x2 = "), "{out}");
    assert!(!out.contains("[  2] x3 = "), "{out}");
    assert!(
        out.contains("gradient: discrete (the default), wrt [x_t] (the default; wrt = [\"x_t\", \"cond\", \"params\", \"times\", \"schedule\"] chooses among all): forward NFE 25, VJPs 25"),
        "{out}"
    );
    // equation = "sde" says what it does to the sampler.
    let dir = tempfile::tempdir().unwrap();
    let sde = dir.path().join("sde.toml");
    std::fs::write(
        &sde,
        "[schedule]\nkind = \"vp_linear\"\n[sampler]\nmethod = \"dpm_solver_pp\"\norder = 2\nsteps = 10\nequation = \"sde\"\n",
    )
    .unwrap();
    let (ok, out, err) = adeis(&["check", sde.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains(
            "equation = \"sde\": the SDE form of dpm_solver_pp (a fresh noise xi per step"
        ),
        "{out}"
    );
    let (ok, _, err) = adeis(&["check", "examples/specs/does_not_exist.toml"]);
    assert!(!ok && err.contains("does_not_exist.toml"), "{err}");
}

/// Writes standard normal noise of `shape` ("B,D") to `dir/name` with the command itself; its path.
fn noise_file(dir: &std::path::Path, name: &str, shape: &str, seed: &str) -> String {
    let path = dir.join(name).to_str().unwrap().to_string();
    let (ok, _, err) = adeis(&["noise", "--shape", shape, "--seed", seed, "--out", &path]);
    assert!(ok, "{err}");
    path
}

/// Ctrl-C is honoured within one step at any number of steps: a sample of 100000 steps on a
/// large batch (about 20 minutes of work) stops within a step of the signal, says where, and
/// writes no output.
#[cfg(unix)]
#[test]
fn ctrl_c_stops_a_long_sample_within_a_step() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    noise_file(dir.path(), "x.npy", "20000,2", "3");
    std::fs::write(
        path("long.toml"),
        "[schedule]\nkind = \"vp_linear\"\n[sampler]\nmethod = \"dpm_solver_pp\"\norder = 2\nsteps = 100000\n",
    )
    .unwrap();
    let (out, waited) = support::interrupted(
        &[
            "sample",
            "--spec",
            &path("long.toml"),
            "--model",
            "gmm:examples/models/ring8.json",
            "--x-t",
            &path("x.npy"),
            "--out",
            &path("out.npy"),
        ],
        Duration::from_millis(1500),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("interrupted during step"), "{err}");
    // One step of this run takes about 10 ms here, the whole run about 20 minutes.
    assert!(
        waited < Duration::from_secs(5),
        "stopped {waited:?} after the signal"
    );
    assert!(!dir.path().join("out.npy").exists());
}

/// A run whose recorded states would not fit in memory is refused before anything is
/// allocated, saying how much and what to use instead (it was killed by the kernel).
#[test]
fn runs_that_would_not_fit_in_memory_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    noise_file(dir.path(), "x.npy", "20000,20", "3");
    // 100001 states of 1.5 MiB: about 150 GiB, far beyond this machine (and CI's).
    std::fs::write(
        path("long.toml"),
        "[schedule]\nkind = \"vp_linear\"\n[sampler]\nmethod = \"ddim\"\nsteps = 100000\n",
    )
    .unwrap();
    let (ok, _, err) = adeis(&[
        "grad",
        "--spec",
        &path("long.toml"),
        "--model",
        "gaussian:mu=1",
        "--x-t",
        &path("x.npy"),
        "--cot",
        &path("x.npy"),
        "--out-dir",
        &path("g"),
    ]);
    assert!(!ok);
    assert!(
        err.contains("gradient.states = \"record\" keeps 100001 states of 1.53 MiB each")
            && err.contains("use states = \"checkpoint\""),
        "{err}"
    );
    assert!(!dir.path().join("g").exists());
    let (ok, _, err) = adeis(&[
        "sample",
        "--spec",
        &path("long.toml"),
        "--model",
        "gaussian:mu=1",
        "--x-t",
        &path("x.npy"),
        "--out",
        &path("o.npy"),
        "--trajectory",
        &path("t.npy"),
    ]);
    assert!(!ok);
    assert!(err.contains("--trajectory keeps 100001 states"), "{err}");
    assert!(!dir.path().join("o.npy").exists());
}

/// A command's outputs appear together or not at all: grad's second output cannot be written
/// (a folder has its name), so its first is not left behind either.
#[test]
fn outputs_are_written_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    noise_file(dir.path(), "x.npy", "4,3", "3");
    noise_file(dir.path(), "z.npy", "4,3", "4");
    std::fs::write(
        path("cond.toml"),
        "[schedule]\nkind = \"vp_linear\"\n[sampler]\nmethod = \"ddim\"\nsteps = 10\n[gradient]\nwrt = [\"x_t\", \"cond\"]\n",
    )
    .unwrap();
    // `adeis grad` with respect to x_T and z (two outputs) into `out_dir`.
    let grad_into = |out_dir: &str| {
        adeis(&[
            "grad",
            "--spec",
            &path("cond.toml"),
            "--model",
            "gaussian:mu=1",
            "--x-t",
            &path("x.npy"),
            "--cond",
            &path("z.npy"),
            "--cot",
            &path("x.npy"),
            "--out-dir",
            &path(out_dir),
        ])
    };
    std::fs::create_dir_all(dir.path().join("g/dz.npy")).unwrap();
    let (ok, _, err) = grad_into("g");
    assert!(!ok);
    assert!(
        err.contains("dz.npy: is a folder; an output file cannot replace it"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path().join("g")).unwrap().collect();
    assert_eq!(left.len(), 1, "only the folder in the way: {left:?}");
    // The same run into a fresh folder writes both.
    let (ok, _, err) = grad_into("h");
    assert!(ok, "{err}");
    assert!(dir.path().join("h/dx_t.npy").exists() && dir.path().join("h/dz.npy").exists());
}

/// `adeis invert` on a real image (the first held-out Fashion-MNIST image, the committed
/// UNet): Rex's, EDICT's and BDIA's exact inverses and `adeis sample --companion` give the image back to
/// round-off; DDIM's ODE inversion, beside it, does not.
#[test]
fn invert_then_sample_returns_a_real_image_exactly() {
    use adeis::npy::{read_npy, write_npy};
    let dir = std::env::temp_dir().join(format!("adeis-invert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let raw = std::fs::read("data/fashion-mnist/heldout-1000.u8").unwrap();
    let (pixels, label) = (&raw[..784], raw[784]);
    let image: Vec<f64> = pixels.iter().map(|b| *b as f64 / 127.5 - 1.0).collect();
    write_npy(
        std::path::Path::new(&p("x0.npy")),
        &[1, 1, 28, 28],
        &image,
        8,
    )
    .unwrap();
    let model = "diffusers:models/fashion-mnist/unet";
    let label = label.to_string();
    let round_trip = |spec: &str, tag: &str, dtype: &str| -> f64 {
        let xt = p(&format!("xt_{tag}_{dtype}.npy"));
        let (ok, out, err) = adeis(&[
            "invert",
            "--spec",
            spec,
            "--model",
            model,
            "--x-0",
            &p("x0.npy"),
            "--class-labels",
            &label,
            "--out",
            &xt,
            "--dtype",
            dtype,
        ]);
        assert!(ok, "{err}");
        let companion = p(&format!("xt_{tag}_{dtype}_companion.npy"));
        let exact = out.contains("inverted exactly");
        assert_eq!(exact, std::path::Path::new(&companion).exists(), "{out}");
        let again = p(&format!("again_{tag}_{dtype}.npy"));
        let mut args = vec![
            "sample",
            "--spec",
            spec,
            "--model",
            model,
            "--x-t",
            &xt,
            "--class-labels",
            &label,
            "--out",
            &again,
            "--dtype",
            dtype,
        ];
        if exact {
            args.extend(["--companion", &companion]);
        }
        let (ok, _, err) = adeis(&args);
        assert!(ok, "{err}");
        let back = read_npy(std::path::Path::new(&again)).unwrap().data;
        let scale = image.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        back.iter()
            .zip(&image)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
            / scale
    };
    let rex = round_trip("examples/specs/rex_invert.toml", "rex", "f64");
    let rex32 = round_trip("examples/specs/rex_invert.toml", "rex", "f32");
    let edict = round_trip("examples/specs/edict_invert.toml", "edict", "f64");
    let bdia = round_trip("examples/specs/bdia_invert.toml", "bdia", "f64");
    let ddim = round_trip("examples/specs/diffusers_ddim.toml", "ddim", "f64");
    eprintln!("round trip of a held-out image, 10 steps: Rex f64 {rex:.1e}, f32 {rex32:.1e}; EDICT f64 {edict:.1e}; BDIA f64 {bdia:.1e}; DDIM inversion f64 {ddim:.1e}");
    assert!(rex < 1e-10, "{rex:.2e}");
    assert!(edict < 1e-10, "{edict:.2e}");
    assert!(bdia < 1e-10, "{bdia:.2e}");
    // f32 keeps less: 2e-2 at 10 steps, 1e-3 at 200 (docs/numerics.md).
    assert!(rex32 < 5e-2, "{rex32:.2e}");
    assert!(ddim > 1e-3, "{ddim:.2e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Rex's SDE through the commands: a sample's final pair (--companion-out) and its seed give
/// its x_T back from `adeis invert`; another seed does not; a sampler without a second state
/// refuses --companion-out.
#[test]
fn a_rex_sde_sample_inverts_to_its_noise_given_its_seed() {
    use adeis::npy::read_npy;
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let x_t = noise_file(dir.path(), "x_t.npy", "16,2", "5");
    let spec = "examples/specs/rex_sde.toml";
    let model = "gmm:examples/models/ring8.json";
    let (ok, out, err) = adeis(&[
        "sample",
        "--spec",
        spec,
        "--model",
        model,
        "--x-t",
        &x_t,
        "--seed",
        "3",
        "--dtype",
        "f64",
        "--out",
        &path("x0.npy"),
        "--companion-out",
        &path("x0_c.npy"),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("(SDE), tableau shark"), "{out}");
    let recovered = |seed: &str, name: &str| -> f64 {
        let (ok, out, err) = adeis(&[
            "invert",
            "--spec",
            spec,
            "--model",
            model,
            "--x-0",
            &path("x0.npy"),
            "--companion-0",
            &path("x0_c.npy"),
            "--seed",
            seed,
            "--dtype",
            "f64",
            "--out",
            &path(name),
        ]);
        assert!(ok, "{err}");
        assert!(
            out.contains("inverted exactly") && out.contains("--seed"),
            "{out}"
        );
        let a = read_npy(std::path::Path::new(&path(name))).unwrap().data;
        let b = read_npy(std::path::Path::new(&x_t)).unwrap().data;
        let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        a.iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max)
            / scale
    };
    let same = recovered("3", "back.npy");
    let other = recovered("4", "other.npy");
    eprintln!("x_T from the SDE sample: {same:.1e} with its seed, {other:.1e} with another");
    // The reverse SDE pulls every sample into ring8's narrow modes, so x_T's trace in x_0 is
    // faint and the inverse magnifies round-off by as much: 2e-6 in f64 here, as the
    // reversible gradient's own reconstruction on this model (whose gradient still equals the
    // discrete adjoint's to 7e-10: docs/numerics.md). Another path is off by 1e5.
    assert!(same < 1e-5, "{same:.2e}");
    assert!(other > 1e-2, "{other:.2e}");
    let (ok, _, err) = adeis(&[
        "sample",
        "--spec",
        "examples/specs/sample_dpmpp.toml",
        "--model",
        model,
        "--x-t",
        &x_t,
        "--out",
        &path("b.npy"),
        "--companion-out",
        &path("b_c.npy"),
    ]);
    assert!(
        !ok && err.contains("--companion-out writes a reversible sampler's second state"),
        "{err}"
    );
    assert!(!dir.path().join("b.npy").exists());
}

/// A reversible gradient whose inverse sweep has drifted far from x_T says so on stderr
/// (BDIA's inverse divides by gamma each step: at 40 steps in f32 it is off by 1e5), and one
/// that came back says nothing.
#[test]
fn a_drifted_reversible_gradient_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let x_t = noise_file(dir.path(), "x_t.npy", "16,2", "5");
    let target = noise_file(dir.path(), "t.npy", "16,2", "6");
    let grad = |sampler: &str| -> (String, String) {
        let spec = path("s.toml");
        std::fs::write(
            &spec,
            format!("[schedule]\nkind = \"vp_linear\"\n[sampler]\n{sampler}\n[gradient]\nmethod = \"reversible\"\n"),
        )
        .unwrap();
        let (ok, out, err) = adeis(&[
            "grad",
            "--spec",
            &spec,
            "--model",
            "gmm:examples/models/ring8.json",
            "--x-t",
            &x_t,
            "--loss",
            "mse",
            "--target",
            &target,
            "--out-dir",
            &path("g"),
        ]);
        assert!(ok, "{err}");
        (out, err)
    };
    let (out, err) = grad("method = \"bdia\"\nsteps = 40");
    assert!(
        err.contains("warning: the reversible gradient's inverse sweep came back to x_T off by"),
        "{out}\n{err}"
    );
    let (_, err) = grad("method = \"rex\"\nsteps = 10");
    assert!(!err.contains("warning"), "{err}");
}

/// `adeis schedule --at` on a custom schedule that is invalid at one of the times (sigma 0 at
/// t = 0.4, which its check grid misses) says where instead of printing inf and NaN rows.
#[test]
fn schedule_at_an_invalid_time_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("zero.toml");
    std::fs::write(
        &spec,
        "[schedule]\nkind = \"custom\"\nlog_alpha = \"-0.25 * t^2 * (20 - 0.1) - 0.5 * t * 0.1\"\nsigma = \"sqrt(1 - exp(2 * log_alpha(t))) * min(1, abs(t - 0.4) * 1e7)\"\nt_range = [1e-3, 1.0]\n",
    )
    .unwrap();
    let (ok, out, err) = adeis(&["schedule", spec.to_str().unwrap(), "--at", "0.3,0.4,0.5"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("the schedule is not valid at t = 0.4: lambda is inf there")
            && err.contains("sigma = 0"),
        "{err}"
    );
    let (ok, _, err) = adeis(&["schedule", spec.to_str().unwrap(), "--at", "0.3,0.5"]);
    assert!(ok, "{err}");
}

/// `grad --out-dir` naming a file is refused before the run, saying so (it was "File exists
/// (os error 17)" after the gradient).
#[test]
fn grad_out_dir_that_is_a_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let x_t = noise_file(dir.path(), "x_t.npy", "4,2", "5");
    let target = noise_file(dir.path(), "t.npy", "4,2", "6");
    let file = dir.path().join("g");
    std::fs::write(&file, b"not a folder").unwrap();
    let (ok, _, err) = adeis(&[
        "grad",
        "--spec",
        "examples/specs/rex.toml",
        "--model",
        "gmm:examples/models/ring8.json",
        "--x-t",
        &x_t,
        "--loss",
        "mse",
        "--target",
        &target,
        "--out-dir",
        file.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("is a file, not a folder"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"not a folder");
}

/// An output that names an input by another spelling (through a link to its folder, or
/// `./x.npy` for `x.npy`) is refused before the run, and the input is left as it was.
#[cfg(unix)]
#[test]
fn an_output_that_is_an_input_by_another_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let x_t = noise_file(dir.path(), "x.npy", "2,2", "1");
    let before = std::fs::read(&x_t).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    let other = link.join("x.npy");
    let (ok, _, err) = adeis(&[
        "sample",
        "--spec",
        "examples/specs/sample_dpmpp.toml",
        "--model",
        "gaussian:mu=1.0,s2=0.3",
        "--x-t",
        &x_t,
        "--out",
        other.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("is one of the inputs"), "{err}");
    assert_eq!(std::fs::read(&x_t).unwrap(), before);
}

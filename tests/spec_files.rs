//! Spec files: a custom schedule written as text equals the built-in one; errors name the key
//! path and, for formulas, the position.

use std::path::Path;

use adeis::prelude::*;
use adeis::spec_file::{parse_spec, SpecFormat};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn custom_spec_gives_the_builtin_numbers() {
    let builtin = ScheduleDef::vp_linear(0.1, 20.0)
        .unwrap()
        .compile()
        .unwrap();
    for file in ["vp_linear_custom.toml", "vp_linear_custom.json"] {
        let spec = load_spec(&root().join("examples/specs").join(file)).unwrap();
        let custom = spec.schedule_def().unwrap().compile().unwrap();
        for k in 0..=200 {
            let t = 1e-3 + (1.0 - 1e-3) * k as f64 / 200.0;
            let (c, b) = (custom.eval(t), builtin.eval(t));
            for q in Quantity::ALL {
                // The hand-written sigma = sqrt(1 - exp(2 la)) cancels near t = 0 (the built-in
                // uses expm1): round-off of relative size eps / sigma^2, nothing more.
                let tol = (1e-14 / (b.sigma * b.sigma)).max(1e-14);
                let err = (c.get(q) - b.get(q)).abs() / b.get(q).abs().max(1.0);
                assert!(
                    err < tol,
                    "{file} {q:?} at {t}: {} vs {}",
                    c.get(q),
                    b.get(q)
                );
            }
            assert!(
                (custom.t_of_lambda(c.lambda) - t).abs() < 1e-12 * t,
                "{file}: inverse at {t}"
            );
        }
    }
}

fn toml_err(text: &str) -> String {
    match parse_spec(text, SpecFormat::Toml) {
        Err(e) => e.to_string(),
        Ok(spec) => spec.schedule_def().unwrap_err().to_string(),
    }
}

#[test]
fn spec_errors_are_clear() {
    // Malformed TOML: the line and column.
    let e = toml_err("[schedule\nkind = \"vp_linear\"\n");
    assert!(e.contains("line 1"), "{e}");
    // Unknown key: rejected with the allowed ones.
    let e = toml_err("[schedule]\nkind = \"ve\"\nsigma_mn = 0.1\n");
    assert!(
        e.contains("at `schedule.sigma_mn`")
            && e.contains("line 3")
            && e.contains("unknown field `sigma_mn`, expected one of `kind`, `beta_min`"),
        "{e}"
    );
    // A key of another family: the keys of this one.
    let e = toml_err("[schedule]\nkind = \"ve\"\nbeta_min = 0.1\n");
    assert_eq!(e, "schedule.beta_min: `beta_min` is not a key of kind `ve`; its keys are: kind, sigma_min, sigma_max, t_range");
    // Wrong type: the key path.
    let e = toml_err("[schedule]\nkind = \"vp_linear\"\nbeta_max = \"twenty\"\n");
    assert!(
        e.contains("at `schedule.beta_max`")
            && e.contains("line 3")
            && e.contains("invalid type: string \"twenty\", expected f64"),
        "{e}"
    );
    // Out-of-range value.
    let e = toml_err("[schedule]\nkind = \"ve\"\nsigma_min = -1.0\n");
    assert_eq!(
        e,
        "schedule.sigma_min: parameter `sigma_min` = -1 is not allowed: a finite number > 0"
    );
    // Bad formula text: the key and the column inside the formula.
    let e = toml_err("[schedule]\nkind = \"custom\"\nlog_alpha = \"-t^2 * bta\"\nsigma = \"1\"\nparams = { beta = 2.0 }\nt_range = [0.1, 1.0]\n");
    assert!(
        e.starts_with("schedule.log_alpha: at column 8: unknown name `bta`; did you mean `beta`?"),
        "{e}"
    );
    // JSON too.
    let e = parse_spec(
        "{\"schedule\": {\"kind\": \"edm\", \"sigma_max\": [1]}}",
        SpecFormat::Json,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("at `schedule.sigma_max`"), "{e}");
}

#[test]
fn a_rex_sampler_takes_a_tableau_as_arrays_and_the_reversible_gradient() {
    let text = |tableau: &str, order: usize, extra: &str| {
        format!(
            "[schedule]\nkind = \"vp_linear\"\n\n[sampler]\nmethod = \"rex\"\norder = {order}\nsteps = 5\ntableau = {tableau}\n{extra}\n[gradient]\nmethod = \"reversible\"\nwrt = [\"x_t\", \"times\"]\n"
        )
    };
    let problem = |t: String| -> Result<adeis::compiler::Problem, String> {
        let spec = parse_spec(&t, SpecFormat::Toml).map_err(|e| e.to_string())?;
        adeis::compiler::Problem::from_spec(&spec).map_err(|e| e.to_string())
    };
    // Heun's tableau as arrays is the named one: the same plan.
    let given = problem(text(
        "{ c = [0.0, 1.0], a = [[0.0, 0.0], [1.0, 0.0]], b = [0.5, 0.5] }",
        2,
        "coupling = 0.95",
    ))
    .unwrap();
    let named = problem(text("\"heun\"", 2, "coupling = 0.95")).unwrap();
    assert_eq!(given.plan().instrs, named.plan().instrs);
    assert!(given.plan().reversal.is_some());
    assert!(
        given.plan().description.contains("tableau given"),
        "{}",
        given.plan().description
    );
    // Errors name the key and say what is allowed.
    let e = problem(text("\"rk5\"", 2, "")).unwrap_err();
    assert!(e.starts_with("sampler.tableau: tableau = \"rk5\": a named tableau (euler, midpoint, heun, ralston3, heun3, rk4)"), "{e}");
    let e = problem(text("\"rk4\"", 2, "")).unwrap_err();
    assert!(
        e.contains("sampler.order") && e.contains("tableau `rk4` has order 4"),
        "{e}"
    );
    let e = problem(text("\"euler\"", 1, "coupling = 1.5")).unwrap_err();
    assert!(
        e.starts_with("sampler.coupling: coupling = 1.5: the coupling zeta is in (0, 1]"),
        "{e}"
    );
    let e = problem(text(
        "{ c = [0.0, 0.5], a = [[0.0, 0.0], [1.0, 0.0]], b = [0.5, 0.5] }",
        2,
        "",
    ))
    .unwrap_err();
    assert!(e.contains("c[1] = 0.5 but row 1 of a sums to 1"), "{e}");
    // An option of rex on another method, and the reversible gradient on a sampler without an
    // inverse, say why.
    let e = problem(
        "[schedule]\nkind = \"vp_linear\"\n[sampler]\nmethod = \"ddim\"\ncoupling = 0.9\n".into(),
    )
    .unwrap_err();
    assert!(e.contains("sampler.coupling") && e.contains("rex"), "{e}");
    let e = problem(
        "[schedule]\nkind = \"vp_linear\"\n[sampler]\nmethod = \"ddim\"\n[gradient]\nmethod = \"reversible\"\n".into(),
    )
    .unwrap_err();
    assert!(e.starts_with("gradient.method") && e.contains("rex"), "{e}");
}

#[test]
fn momentum_is_checked_against_the_method_and_its_beta() {
    let err = |sampler: &str| -> String {
        let text = format!("[schedule]\nkind = \"vp_linear\"\n\n[sampler]\n{sampler}\n");
        let spec = parse_spec(&text, SpecFormat::Toml).unwrap();
        match adeis::compiler::Problem::from_spec(&spec) {
            Ok(p) => format!("ok: {}", p.plan().description),
            Err(e) => e.to_string(),
        }
    };
    let ok = err("method = \"dpm_solver_pp\"\norder = 2\nmomentum = \"hb\"\nmomentum_beta = 0.8");
    assert!(ok.contains("heavy-ball momentum beta 0.8"), "{ok}");
    let e = err("method = \"dpm_solver_pp\"\norder = 2\nmomentum = \"hb\"");
    assert!(
        e.starts_with("sampler.momentum_beta: momentum = \"hb\" needs momentum_beta in (0, 1]"),
        "{e}"
    );
    let e = err("method = \"dpm_solver_pp\"\nmomentum = \"hb\"\nmomentum_beta = 1.5");
    assert!(
        e.starts_with("sampler.momentum_beta: momentum_beta = 1.5"),
        "{e}"
    );
    let e = err("method = \"unipc\"\nmomentum = \"hb\"\nmomentum_beta = 0.8");
    assert!(
        e.contains("sampler.momentum") && e.contains("ddim, dpm_solver, dpm_solver_pp"),
        "{e}"
    );
    let e = err("method = \"dpm_solver_pp\"\nmomentum_beta = 0.8");
    assert!(e.starts_with("sampler.momentum_beta: goes with"), "{e}");
    let e = err(
        "method = \"dpm_solver_pp\"\nequation = \"sde\"\nmomentum = \"hb\"\nmomentum_beta = 0.8",
    );
    assert!(e.contains("the SDE samplers have none"), "{e}");
    let e = err("method = \"dpm_solver_pp\"\nmomentum = \"ghvb\"\nmomentum_beta = 0.8");
    assert!(e.contains("use method = \"plms\""), "{e}");
    let ok = err("method = \"plms\"\norder = 3\nmomentum = \"ghvb\"\nmomentum_beta = 0.8");
    assert!(
        ok.contains("plms order 3, generalised heavy-ball momentum beta 0.8"),
        "{ok}"
    );
    let e = err("method = \"plms\"\nmomentum = \"ghvb\"");
    assert!(
        e.starts_with("sampler.momentum_beta: momentum = \"ghvb\" needs momentum_beta"),
        "{e}"
    );
}

#[test]
fn edict_takes_its_mixing_weight_and_no_other_method_does() {
    let run = |sampler: &str| -> String {
        let text = format!("[schedule]\nkind = \"vp_linear\"\n\n[sampler]\n{sampler}\n");
        let spec = parse_spec(&text, SpecFormat::Toml).unwrap();
        match adeis::compiler::Problem::from_spec(&spec) {
            Ok(p) => format!("ok: {}", p.plan().description),
            Err(e) => e.to_string(),
        }
    };
    let ok = run("method = \"edict\"\nsteps = 4");
    assert!(ok.contains("edict") && ok.contains("mixing 0.93"), "{ok}");
    let ok = run("method = \"edict\"\nmixing = 0.8\n[gradient]\nmethod = \"reversible\"");
    assert!(ok.contains("mixing 0.8"), "{ok}");
    let e = run("method = \"edict\"\nmixing = 0.0");
    assert!(
        e.starts_with("sampler.mixing: mixing = 0: EDICT's mixing weight p is in (0, 1]"),
        "{e}"
    );
    let e = run("method = \"ddim\"\nmixing = 0.9");
    assert!(e.starts_with("sampler.mixing: `mixing` is EDICT's"), "{e}");
}

/// A custom schedule that is NaN exactly at a grid time (its check grid misses it) is refused
/// before any step is built, naming the quantity and the point (it panicked in the builder).
#[test]
fn a_schedule_that_is_nan_at_a_grid_time_is_named() {
    let text = r#"
[schedule]
kind = "custom"
log_alpha = "-0.25 * t^2 * (20 - 0.1) - 0.5 * t * 0.1"
sigma = "sqrt(1 - exp(2 * log_alpha(t))) * (1 + 0 * sqrt(abs(t - 0.5) - 1e-6))"
t_range = [1e-3, 1.0]

[sampler]
method = "ddim"
grid = "explicit"
times = [1.0, 0.5, 0.001]
"#;
    let spec = parse_spec(text, SpecFormat::Toml).unwrap();
    let e = match adeis::compiler::Problem::from_spec(&spec) {
        Ok(p) => panic!("built {}", p.plan().description),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("sampler.times: the schedule's sigma is NaN at grid point [1], t = 0.5"),
        "{e}"
    );
}

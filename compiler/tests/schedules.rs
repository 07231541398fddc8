//! Schedules against the closed forms of docs/math.md section 1, the inverse round trip, and the
//! JIT against the interpreter.

use adeis_compiler::schedule::{AlphaFormula, DiscreteBetas, Inverse, SigmaFormula};
use adeis_compiler::{Quantity, ScheduleDef, ScheduleError, ScheduleSpec};

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

/// Deterministic pseudo-random times in [a, b] (including the ends).
fn times(a: f64, b: f64, n: usize) -> Vec<f64> {
    let mut state = 0x9E3779B97F4A7C15u64;
    let mut out = vec![a, b];
    for _ in 0..n {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let u = (state >> 11) as f64 / (1u64 << 53) as f64;
        out.push(a + (b - a) * u);
    }
    out
}

fn all_builtins() -> Vec<ScheduleDef> {
    ScheduleDef::BUILTIN_NAMES
        .iter()
        .map(|n| ScheduleSpec::builtin(n).unwrap().to_def().unwrap())
        .collect()
}

/// A custom schedule with no closed-form inverse (t(lambda) by Newton).
fn custom_newton() -> ScheduleDef {
    ScheduleDef::from_formulas(
        "custom",
        &[("a", 3.0), ("c", 0.4)],
        vec![],
        AlphaFormula::Alpha("exp(-a * t^3 - c * t - 0.05 * sin(3 * t)^2)".into()),
        SigmaFormula::Sigma("sqrt(1 - alpha(t)^2)".into()),
        [1e-3, 1.0],
        None,
    )
    .unwrap()
}

#[test]
fn vp_linear_matches_closed_forms() {
    let (b0, b1) = (0.1, 20.0);
    let s = ScheduleDef::vp_linear(b0, b1).unwrap().compile().unwrap();
    for t in times(1e-3, 1.0, 200) {
        let v = s.eval(t);
        let la = -(b1 - b0) * t * t / 4.0 - b0 * t / 2.0;
        let alpha = la.exp();
        let sigma = (1.0 - alpha * alpha).sqrt();
        assert!(rel(v.alpha, alpha) < 1e-14, "alpha at {t}");
        assert!(rel(v.sigma, sigma) < 1e-11, "sigma at {t}");
        assert!(
            rel(v.lambda, alpha.ln() - sigma.ln()) < 1e-11,
            "lambda at {t}"
        );
        assert!(rel(v.f, -0.5 * (b0 + (b1 - b0) * t)) < 1e-14, "f at {t}");
        // g^2 = beta(t) for VP.
        assert!(rel(v.g2, b0 + (b1 - b0) * t) < 1e-12, "g2 at {t}: {}", v.g2);
    }
}

#[test]
fn vp_cosine_matches_closed_forms() {
    let s_ = 0.008;
    let s = ScheduleDef::vp_cosine(s_).unwrap().compile().unwrap();
    let half_pi = std::f64::consts::FRAC_PI_2;
    for t in times(1e-3, 0.9946, 200) {
        let v = s.eval(t);
        let theta = (t + s_) / (1.0 + s_) * half_pi;
        let alpha = theta.cos() / (s_ / (1.0 + s_) * half_pi).cos();
        let f = -theta.tan() * half_pi / (1.0 + s_);
        assert!(rel(v.alpha, alpha) < 1e-13, "alpha at {t}");
        assert!(
            rel(v.sigma, (1.0 - alpha * alpha).sqrt()) < 1e-10,
            "sigma at {t}"
        );
        assert!(rel(v.f, f) < 1e-13, "f at {t}");
        assert!(rel(v.g2, -2.0 * f) < 1e-12, "g2 at {t}");
    }
}

#[test]
fn ve_and_edm_match_closed_forms() {
    let (smin, smax) = (0.01, 50.0);
    let ve = ScheduleDef::ve(smin, smax).unwrap().compile().unwrap();
    for t in times(0.0, 1.0, 100) {
        let v = ve.eval(t);
        let sigma = smin * (smax / smin).powf(t);
        assert_eq!(v.alpha, 1.0);
        assert_eq!(v.f, 0.0);
        assert!(rel(v.sigma, sigma) < 1e-13);
        assert!(rel(v.g2, 2.0 * sigma * sigma * (smax / smin).ln()) < 1e-13);
    }
    let edm = ScheduleDef::edm(0.002, 80.0).unwrap().compile().unwrap();
    for t in times(0.002, 80.0, 100) {
        let v = edm.eval(t);
        assert!(rel(v.sigma, t) < 1e-15);
        assert!(rel(v.lambda, -t.ln()) < 1e-15);
        assert!(rel(v.g2, 2.0 * t) < 1e-14);
    }
}

#[test]
fn discrete_tables_match_ddpm() {
    let n = 1000;
    let linear: Vec<f64> = (0..n)
        .map(|i| 1e-4 + (0.02 - 1e-4) * i as f64 / (n - 1) as f64)
        .collect();
    let s = ScheduleSpec::builtin("discrete")
        .unwrap()
        .to_def()
        .unwrap()
        .compile()
        .unwrap();
    let mut prod = 1.0;
    for (i, b) in linear.iter().enumerate() {
        prod *= 1.0 - b;
        let t = (i + 1) as f64 / n as f64;
        let v = s.eval(t);
        assert!(rel(v.alpha * v.alpha, prod) < 1e-12, "alphas_cumprod[{i}]");
    }
    // f is the slope of log alpha on each segment.
    let t = 0.5004;
    let k = 500; // t in [t_499, t_500] = [0.5, 0.501]
    assert!(rel(s.eval(t).f, 0.5 * (1.0 - linear[k]).ln() * n as f64) < 1e-9);

    // squaredcos_cap_v2 with real division (not integer division).
    let abar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
            .cos()
            .powi(2)
    };
    let cos = ScheduleSpec::builtin("discrete_squaredcos_cap_v2")
        .unwrap()
        .to_def()
        .unwrap();
    let la = DiscreteBetas::SquaredCosCapV2 { n }
        .log_alphas("x")
        .unwrap();
    let beta0 = 1.0 - abar(1.0 / n as f64) / abar(0.0);
    assert!(rel(la[0], 0.5 * (1.0 - beta0).ln()) < 1e-12);
    assert!(beta0 > 0.0 && beta0 < 1e-4, "beta0 = {beta0}");
    let c = cos.compile().unwrap();
    assert!(rel(c.eval(1.0 / n as f64).alpha.powi(2), 1.0 - beta0) < 1e-12);

    let sl = DiscreteBetas::ScaledLinear {
        start: 0.00085,
        end: 0.012,
        n,
    }
    .log_alphas("x")
    .unwrap();
    assert!(rel(sl[0], 0.5 * (1.0f64 - 0.00085).ln()) < 1e-12);
    assert!(rel(sl[n - 1] - sl[n - 2], 0.5 * (1.0f64 - 0.012).ln()) < 1e-9);

    // The same schedule from alphas_cumprod.
    let mut ac = Vec::new();
    let mut p = 1.0;
    for b in &linear {
        p *= 1.0 - b;
        ac.push(p);
    }
    let from_ac = ScheduleDef::discrete(&DiscreteBetas::AlphasCumprod(ac), None)
        .unwrap()
        .compile()
        .unwrap();
    for t in times(1e-3, 1.0, 50) {
        assert!(rel(from_ac.eval(t).lambda, s.eval(t).lambda) < 1e-10);
    }
}

#[test]
fn inverse_lambda_round_trips_for_every_schedule() {
    let mut defs = all_builtins();
    defs.push(custom_newton());
    assert!(matches!(defs.last().unwrap().inverse(), Inverse::Newton));
    for def in defs {
        let (a, b) = (def.t_min(), def.t_max());
        let s = def.compile().unwrap();
        let params = def.default_params();
        let mut worst: f64 = 0.0;
        for t in times(a, b, 400) {
            let l = s.lambda(t);
            let back = s.t_of_lambda(l);
            // Relative in t, with t floored at 1e-3 of the range: near t = 0 (VE) t is only
            // determined to |lambda| eps / |d lambda/dt| in absolute terms.
            let err = (back - t).abs() / t.abs().max(1e-3 * b);
            worst = worst.max(err);
            assert!(
                err < 1e-12,
                "{}: t = {t}, t(lambda(t)) = {back}",
                def.name()
            );
            let back_interp = def.t_of_lambda_interp(def.eval_interp(t, &params).lambda, &params);
            assert!(
                (back_interp - t).abs() / t.abs().max(1e-3 * b) < 1e-12,
                "{} (interpreter)",
                def.name()
            );
        }
        eprintln!(
            "{}: worst relative round-trip error {worst:.2e}",
            def.name()
        );
    }
}

#[test]
fn jit_agrees_with_interpreter_on_every_quantity() {
    let mut defs = all_builtins();
    defs.push(custom_newton());
    for def in defs {
        let s = def.compile().unwrap();
        let params = def.default_params();
        let ts = times(def.t_min(), def.t_max(), 300);
        let table = s.fill(&ts);
        for (t, row) in ts.iter().zip(&table) {
            let jit = s.eval(*t);
            assert_eq!(&jit, row, "fill and eval differ");
            let interp = def.eval_interp(*t, &params);
            for q in Quantity::ALL {
                let (x, y) = (jit.get(q), interp.get(q));
                assert!(
                    (x - y).abs() <= 1e-14 * y.abs() || x == y,
                    "{} {:?} at t = {t}: jit {x} vs interpreter {y}",
                    def.name(),
                    q
                );
            }
            if let Inverse::Closed(_) = def.inverse() {
                let l = interp.lambda;
                let (x, y) = (s.t_of_lambda(l), def.t_of_lambda_interp(l, &params));
                assert!(
                    (x - y).abs() <= 1e-14 * y.abs() || x == y,
                    "{} inverse",
                    def.name()
                );
            }
        }
    }
}

#[test]
fn custom_vp_linear_text_equals_builtin() {
    let custom = ScheduleDef::from_formulas(
        "custom",
        &[("beta_min", 0.1), ("beta_max", 20.0)],
        vec![],
        AlphaFormula::LogAlpha("-(beta_max - beta_min) / 4 * t^2 - beta_min / 2 * t".into()),
        SigmaFormula::Sigma("sqrt(1 - exp(2 * log_alpha(t)))".into()),
        [1e-3, 1.0],
        None,
    )
    .unwrap()
    .compile()
    .unwrap();
    let builtin = ScheduleDef::vp_linear(0.1, 20.0)
        .unwrap()
        .compile()
        .unwrap();
    for t in times(1e-3, 1.0, 200) {
        let (c, b) = (custom.eval(t), builtin.eval(t));
        for q in Quantity::ALL {
            // sqrt(1 - exp(2 la)) cancels near t = 0 (relative error ~ eps / sigma^2); the
            // built-in uses expm1. Round-off of that size is all that may differ (absolute
            // for quantities near 0, such as log sigma near t = 1).
            let tol = 1e-15 / (b.sigma * b.sigma) * 10.0;
            let err = (c.get(q) - b.get(q)).abs() / b.get(q).abs().max(1.0);
            assert!(
                err < tol.max(1e-14),
                "{q:?} at {t}: {} vs {}",
                c.get(q),
                b.get(q)
            );
        }
        assert!(rel(custom.t_of_lambda(c.lambda), t) < 1e-12);
    }
}

#[test]
fn parameters_override_at_run_time() {
    let def = ScheduleDef::vp_linear(0.1, 20.0).unwrap();
    let s = def.compile_with(&[("beta_max", 12.0)]).unwrap();
    assert!(rel(s.eval(0.5).g2, 0.1 + (12.0 - 0.1) * 0.5) < 1e-12);
    assert!(rel(s.t_of_lambda(s.lambda(0.3)), 0.3) < 1e-13);
    let e = def.compile_with(&[("beta_mx", 1.0)]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown parameter `beta_mx`; this schedule has: beta_min, beta_max"
    );
    let e = def.compile_with(&[("beta_max", f64::NAN)]).unwrap_err();
    assert!(matches!(e, ScheduleError::Param { .. }), "{e}");
}

#[test]
fn validation_names_the_problem() {
    let mk = |a: &str, s: &str, range: [f64; 2]| {
        ScheduleDef::from_formulas(
            "custom",
            &[],
            vec![],
            AlphaFormula::Alpha(a.into()),
            SigmaFormula::Sigma(s.into()),
            range,
            None,
        )
    };
    let e = mk("1", "t", [1.0, 0.5]).unwrap_err();
    assert_eq!(e.field().as_deref(), Some("t_range"));
    assert!(e.to_string().contains("reversed"), "{e}");
    assert!(mk("1", "t", [0.5, 0.5])
        .unwrap_err()
        .to_string()
        .contains("empty"));
    assert!(mk("1", "t", [0.5, f64::NAN])
        .unwrap_err()
        .to_string()
        .contains("not finite"));

    // lambda increases: sigma decreasing in t.
    let e = mk("1", "2 - t", [0.1, 1.0]).unwrap_err();
    assert!(
        matches!(e, ScheduleError::LambdaNotDecreasing { .. }),
        "{e}"
    );
    assert!(
        e.to_string().starts_with(
            "lambda(t) = log alpha - log sigma must decrease strictly in t, but on [0.1, 0.10043"
        ),
        "{e}"
    );

    // lambda stops decreasing half-way: reported where.
    let e = mk("1", "1.5 - (t - 0.5)^2", [0.0, 1.0]).unwrap_err();
    match e {
        ScheduleError::LambdaNotDecreasing { t0, .. } => assert!((t0 - 0.5).abs() < 1e-3, "{t0}"),
        e => panic!("{e:?}"),
    }

    let e = mk("0.5 - t", "1", [0.0, 1.0]).unwrap_err();
    assert!(
        matches!(
            e,
            ScheduleError::NotPositive {
                quantity: "alpha",
                ..
            }
        ),
        "{e}"
    );
    let e = mk("1", "sqrt(t - 0.5)", [0.0, 1.0]).unwrap_err();
    assert!(
        matches!(
            e,
            ScheduleError::NotFinite {
                quantity: "sigma",
                ..
            }
        ),
        "{e}"
    );

    let e = ScheduleDef::from_formulas(
        "custom",
        &[],
        vec![],
        AlphaFormula::LogAlpha("-log_sigma(t)".into()),
        SigmaFormula::LogSigma("log_alpha(t) - t".into()),
        [0.0, 1.0],
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("cycle: "), "{e}");

    let e = mk("exp(-t", "1", [0.0, 1.0]).unwrap_err();
    assert_eq!(e.field().as_deref(), Some("alpha"));
    assert!(
        e.to_string().contains("at column 7: expected `,` or `)`"),
        "{e}"
    );

    assert!(ScheduleDef::ve(0.0, 50.0)
        .unwrap_err()
        .to_string()
        .contains("sigma_min"));
    assert!(
        ScheduleDef::discrete(&DiscreteBetas::Betas(vec![0.1, 1.5]), None)
            .unwrap_err()
            .to_string()
            .contains("beta[1] = 1.5 is outside (0, 1)")
    );
}

/// A parameter value outside the schedule's domain is named with its value and its default
/// (issue 38: `p = -1` was reported as `alpha(0.001) = NaN is not finite`, naming nothing).
#[test]
fn parameter_values_out_of_the_domain_are_named() {
    let def = ScheduleDef::from_formulas(
        "custom",
        &[("p", 1.0), ("q", 1.0), ("unused", 0.0)],
        vec![],
        AlphaFormula::LogAlpha("-sqrt(p + q) * t^2 - unused * 0".into()),
        SigmaFormula::Sigma("sqrt(1 - exp(2 * log_alpha(t)))".into()),
        [1e-3, 1.0],
        None,
    )
    .unwrap();
    // p alone puts sqrt's argument below 0: p is named, q and unused (changed, harmless) not.
    let e = def
        .compile_with(&[("p", -3.0), ("unused", 5.0)])
        .unwrap_err();
    assert_eq!(e.field().as_deref(), Some("params.p"));
    assert_eq!(
        e.to_string(),
        "parameter `p` = -3 is outside this schedule's domain: alpha(0.001) = NaN is not finite \
         (the default p = 1 gives a valid schedule)"
    );
    // Neither alone fails; together they do: both named.
    let e = def.compile_with(&[("p", -0.5), ("q", -0.75)]).unwrap_err();
    assert!(
        e.to_string().starts_with(
            "parameters `p` = -0.5, `q` = -0.75 are together outside this schedule's domain: "
        ),
        "{e}"
    );
    assert!(def.compile_with(&[("p", -0.5)]).is_ok());

    // Declared values that fail: every parameter is named beside the failure (the formulas
    // may be at fault as much as the values).
    let e = ScheduleDef::from_formulas(
        "custom",
        &[("p", -1.0)],
        vec![],
        AlphaFormula::LogAlpha("-sqrt(p) * t^2".into()),
        SigmaFormula::Sigma("sqrt(1 - exp(2 * log_alpha(t)))".into()),
        [1e-3, 1.0],
        None,
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "alpha(0.001) = NaN is not finite (with the parameters `p` = -1)"
    );
}

#[test]
fn derived_expressions_are_the_hand_derived_ones() {
    let def = ScheduleDef::vp_linear(0.1, 20.0).unwrap();
    // f = d log alpha / dt, derived symbolically and simplified.
    let f = def.expression(Quantity::F);
    assert_eq!(
        f.to_string(),
        "(beta_min - beta_max) / 4 * (2 * t) - beta_min / 2"
    );
    let edm = ScheduleDef::edm(0.002, 80.0).unwrap();
    assert_eq!(edm.expression(Quantity::F).to_string(), "0");
    assert_eq!(edm.expression(Quantity::G2).to_string(), "2 * t");
    let ve = ScheduleDef::ve(0.01, 50.0).unwrap();
    assert_eq!(
        ve.expression(Quantity::DLambdaDt).to_string(),
        "-ln(sigma_max / sigma_min)"
    );
}

//! The DSL: compile-fail cases with their rendered errors (trybuild, snapshots committed), and
//! one schedule written three ways (macro, TOML, built-in) giving the same samples and
//! gradients.

use adeis::prelude::*;
use adeis::runtime::adjoint::{discrete_adjoint, StateStorage, Wrt};
use adeis::runtime::analytic::GaussianModel;
use adeis::runtime::dfdx::prelude::*;
use adeis::runtime::noise::normals;
use adeis::runtime::{from_f64, sample, to_f64, ModelFn, NoiseSource};

#[test]
fn compile_errors_point_at_the_offending_token() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/compile_fail/*.rs");
}

adeis::schedule! {
    /// VP linear with the built-in's formulas, declared by hand.
    pub DeclaredVp(beta_min = 0.1, beta_max = 20.0) {
        log_alpha(t) = -(beta_max - beta_min) / 4.0 * t^2 - beta_min / 2.0 * t;
        log_sigma(t) = 0.5 * ln(-expm1(2.0 * log_alpha(t)));
        t in [1e-3, 1.0];
    }
}

const TOML: &str = r#"
[schedule]
kind = "custom"
log_alpha = "-(beta_max - beta_min) / 4.0 * t^2 - beta_min / 2.0 * t"
log_sigma = "0.5 * ln(-expm1(2.0 * log_alpha(t)))"
params = { beta_min = 0.1, beta_max = 20.0 }
t_range = [1e-3, 1.0]

[sampler]
method = "sde_dpm_solver_pp"
order = 2
steps = 30
"#;

#[test]
fn macro_toml_and_builtin_give_the_same_samples_and_gradients() {
    let spec = adeis::spec_file::parse_spec(TOML, adeis::spec_file::SpecFormat::Toml).unwrap();
    let from_toml = spec.schedule.to_def().unwrap().compile().unwrap();
    let from_macro = DeclaredVp::new().compile().unwrap();
    let builtin = ScheduleDef::vp_linear(0.1, 20.0)
        .unwrap()
        .compile()
        .unwrap();
    let sampler = spec.sampler.unwrap();
    let dev = Cpu::default();
    let x_t = from_f64::<f64, Cpu>(&dev, &normals(1, 0, 8), 2, 4);
    let a0 = from_f64::<f64, Cpu>(&dev, &normals(2, 0, 8), 2, 4);
    let model = GaussianModel {
        mu: 0.3,
        s2: 0.4,
        dim: 4,
    };
    let run = |s: &adeis::compiler::Schedule| {
        let plan = adeis::compiler::build_plan(s, &sampler).unwrap();
        let f = ModelFn::new(&model);
        let x0 = sample(&plan, s, &f, &x_t, None, &NoiseSource::Seeded(7), false)
            .unwrap()
            .x;
        let g = discrete_adjoint(
            &plan,
            s,
            &f,
            &x_t,
            None,
            &NoiseSource::Seeded(7),
            Wrt {
                cond: false,
                params: true,
            },
            StateStorage::Record,
            |_| Ok(a0.clone()),
        )
        .unwrap();
        (to_f64(&x0), to_f64(&g.dx_t))
    };
    let (m, t, b) = (run(&from_macro), run(&from_toml), run(&builtin));
    // The macro and the TOML file are the same program: the same numbers to the bit.
    assert_eq!(m, t);
    // The built-in inverts lambda in closed form, the declared ones by Newton: the grids, and
    // so the samples, agree to round-off.
    for (x, y) in m.0.iter().zip(&b.0).chain(m.1.iter().zip(&b.1)) {
        assert!((x - y).abs() < 1e-12 * y.abs().max(1.0), "{x} vs {y}");
    }
    // Parameters override at run time, and compiled schedules are cached per parameters.
    let a = DeclaredVp::new().beta_max(12.0).compile().unwrap();
    assert!((a.eval(0.5).g2 - (0.1 + 11.9 * 0.5)).abs() < 1e-10);
    assert_eq!(DeclaredVp::PARAMS, ["beta_min", "beta_max"]);
}

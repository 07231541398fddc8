//! Fuzzing with bounded case counts (fixed seeds, so CI is deterministic and fast): arbitrary
//! text and bytes, and structured mutations of valid inputs, thrown at every reader a user's
//! input reaches. Each must return a value or an error that says something; none may panic
//! (proptest reports a panic as a failure), hang or abort.

use std::path::{Path, PathBuf};

use adeis::compiler::spec::ScheduleKind;
use adeis::compiler::{Problem, ScheduleSpec};
use adeis::spec_file::{parse_spec, SpecFormat};
use proptest::prelude::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed_ade1),
        ..ProptestConfig::default()
    }
}

/// Formula-like text: the formula alphabet, names and numbers, with the odd stray byte.
fn formula_text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("t".to_string()),
        Just("lambda".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just("+".to_string()),
        Just("-".to_string()),
        Just("*".to_string()),
        Just("/".to_string()),
        Just("^".to_string()),
        Just("**".to_string()),
        Just(",".to_string()),
        Just("exp(".to_string()),
        Just("ln(".to_string()),
        Just("sqrt(".to_string()),
        Just("log_alpha(t)".to_string()),
        Just("sigma(".to_string()),
        Just("min(".to_string()),
        Just("b".to_string()),
        Just("pi".to_string()),
        Just("1e308".to_string()),
        Just("1e-320".to_string()),
        Just("0".to_string()),
        "[0-9]{1,4}(\\.[0-9]{1,3})?",
        "[a-z_]{1,6}",
        any::<char>().prop_map(|c| c.to_string()),
    ];
    prop::collection::vec(token, 0..40).prop_map(|v| v.join(""))
}

/// A valid spec, TOML and JSON, to mutate.
const SPEC_TOML: &str = r#"[schedule]
kind = "custom"
log_alpha = "-(beta_max - beta_min) / 4 * t^2 - beta_min / 2 * t"
sigma = "sqrt(1 - exp(2 * log_alpha(t)))"
params = { beta_min = 0.1, beta_max = 20.0 }
t_range = [1e-3, 1.0]

[sampler]
method = "dpm_solver_pp"
order = 2
steps = 12
grid = "karras"
rho = 5.0

[gradient]
method = "discrete"
wrt = ["x_t", "times"]
"#;

/// Edits that hostile input is made of: cut a piece, insert a troublesome token, duplicate.
#[derive(Clone, Debug)]
enum Edit {
    Cut(usize, usize),
    Insert(usize, String),
    Repeat(usize, usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let token = prop_oneof![
        Just("-".to_string()),
        Just("1e400".to_string()),
        Just("-1".to_string()),
        Just("99999999999999999999".to_string()),
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("\"".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("{".to_string()),
        Just("=".to_string()),
        Just(",".to_string()),
        Just("\n".to_string()),
        Just("0".to_string()),
        Just("[]".to_string()),
        Just("\"times\"".to_string()),
        Just("steps = 0\n".to_string()),
        Just("times = [1.0, 1.0]\n".to_string()),
        "[ -~]{1,8}",
    ];
    let edit = prop_oneof![
        (any::<usize>(), 1usize..20).prop_map(|(a, n)| Edit::Cut(a, n)),
        (any::<usize>(), token).prop_map(|(a, t)| Edit::Insert(a, t)),
        (any::<usize>(), 1usize..30).prop_map(|(a, n)| Edit::Repeat(a, n)),
    ];
    prop::collection::vec(edit, 1..6)
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut s: Vec<char> = text.chars().collect();
    for e in edits {
        let at = |a: usize, len: usize| if len == 0 { 0 } else { a % (len + 1) };
        match e {
            Edit::Cut(a, n) => {
                let i = at(*a, s.len());
                let j = (i + n).min(s.len());
                s.drain(i..j);
            }
            Edit::Insert(a, t) => {
                let i = at(*a, s.len());
                s.splice(i..i, t.chars());
            }
            Edit::Repeat(a, n) => {
                let i = at(*a, s.len());
                let j = (i + n).min(s.len());
                let piece: Vec<char> = s[i..j].to_vec();
                s.splice(j..j, piece);
            }
        }
    }
    s.into_iter().collect()
}

/// Loads spec text as `adeis check` does, returning the error text (or the empty string).
fn load(text: &str, format: SpecFormat) -> String {
    match parse_spec(text, format) {
        Err(e) => e.to_string(),
        Ok(spec) => match Problem::from_spec(&spec) {
            Err(e) => e.to_string(),
            Ok(p) => {
                assert!(p.plan().nfe() >= 1);
                String::new()
            }
        },
    }
}

/// A `schedule!` declaration, as tests/dsl.rs writes one.
const DSL_SCHEDULE: &str = "pub DeclaredVp(beta_min = 0.1, beta_max = 20.0) {
    log_alpha(t) = -(beta_max - beta_min) / 4.0 * t^2 - beta_min / 2.0 * t;
    log_sigma(t) = 0.5 * ln(-expm1(2.0 * log_alpha(t)));
    t in [1e-3, 1.0];
}";

/// A `diffusion!` declaration with every section.
const DSL_DIFFUSION: &str = "pub OnDeclared {
    schedule: vp_linear,
    equation: ode,
    prediction: eps,
    sampler: dpm_solver_pp(order = 2, steps = 15, grid = logsnr, stages = lambda),
    gradient: discrete(states = checkpoint, checkpoints = 3),
    wrt: [x_t, cond],
    loss: squared_norm,
}";

proptest! {
    #![proptest_config(config(1500))]

    /// The formula parser, printer, simplifier, differentiator and compiler on arbitrary
    /// formula-like text: an error names the formula's key.
    #[test]
    fn formulas_never_panic(log_alpha in formula_text(), sigma in formula_text()) {
        let mut s = ScheduleSpec::of_kind(ScheduleKind::Custom);
        s.log_alpha = Some(log_alpha);
        s.sigma = Some(sigma);
        s.params = Some([("b".to_string(), 0.5)].into_iter().collect());
        s.t_range = Some([0.01, 1.0]);
        match s.to_def() {
            Err(e) => prop_assert!(e.to_string().starts_with("schedule"), "{e}"),
            Ok(def) => { let _ = def.compile(); }
        }
    }

    /// Mutations of a valid spec, as TOML and as JSON: an error that says what is wrong.
    #[test]
    fn mutated_specs_never_panic(e in edits()) {
        let text = apply(SPEC_TOML, &e);
        let err = load(&text, SpecFormat::Toml);
        prop_assert!(err.is_empty() || err.len() > 10, "{err}");
        let json = serde_json::to_string(&toml::from_str::<toml::Value>(SPEC_TOML).unwrap()).unwrap();
        let err = load(&apply(&json, &e), SpecFormat::Json);
        prop_assert!(err.is_empty() || err.len() > 10, "{err}");
    }

    /// Mutations of the DSL's declarations (what `schedule!` and `diffusion!` receive): the
    /// expansion is code or a compile error at a span, never a panic in the macro.
    #[test]
    fn mutated_dsl_declarations_never_panic(e in edits(), which in 0usize..2) {
        let (decl, expand): (&str, fn(proc_macro2::TokenStream) -> proc_macro2::TokenStream) = [
            (DSL_SCHEDULE, adeis::compiler::dsl::expand_schedule as fn(_) -> _),
            (DSL_DIFFUSION, adeis::compiler::dsl::diffusion::expand_diffusion as fn(_) -> _),
        ][which];
        let text = format!("::adeis; {}", apply(decl, &e));
        if let Ok(tokens) = text.parse::<proc_macro2::TokenStream>() {
            let out = expand(tokens).to_string();
            prop_assert!(!out.is_empty());
        }
    }

    /// Mutations of diffusers' own scheduler configs.
    #[test]
    fn mutated_scheduler_configs_never_panic(e in edits(), which in 0usize..4, steps in 0usize..60) {
        let name = ["dpmpp_2m", "ddim_trailing", "unipc_bh1_3", "deis_3"][which];
        let text = std::fs::read_to_string(
            root().join("tests/fixtures/schedulers").join(name).join("scheduler_config.json"),
        ).unwrap();
        if let Err(err) = adeis::scheduler_config::translate(&apply(&text, &e), steps) {
            prop_assert!(err.to_string().len() > 10, "{err}");
        }
    }

    /// Arbitrary bytes, and mutated valid files, as .npy and as safetensors.
    #[test]
    fn mutated_array_files_never_panic(e in edits(), bytes in prop::collection::vec(any::<u8>(), 0..200), which in 0usize..3) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        let valid = [
            root().join("tests/fixtures/npy/f8_be.npy"),
            root().join("tests/fixtures/npy/fortran_f8.npy"),
            root().join("tests/fixtures/unet/attn_down_up/diffusion_pytorch_model.safetensors"),
        ];
        let good = std::fs::read(&valid[which]).unwrap();
        // Byte-level edits: the same edit list, on the file's bytes as Latin-1 text.
        let latin: String = good.iter().map(|&b| b as char).collect();
        let mutated: Vec<u8> = apply(&latin, &e).chars().map(|c| c as u32 as u8).collect();
        for data in [&bytes, &mutated] {
            std::fs::write(&p, data).unwrap();
            let path = p.display().to_string();
            if let Err(err) = adeis::npy::read_npy(&p) {
                prop_assert!(err.to_string().starts_with(&path), "{err}");
            }
            if let Err(err) = adeis::safetensors::read_safetensors(&p) {
                prop_assert!(err.to_string().starts_with(&path), "{err}");
            }
        }
    }
}

/// The fuzzed declarations expand as they are (so the mutations start from valid input).
#[test]
fn the_dsl_seeds_expand() {
    for (decl, expand) in [
        (
            DSL_SCHEDULE,
            adeis::compiler::dsl::expand_schedule as fn(_) -> proc_macro2::TokenStream,
        ),
        (
            DSL_DIFFUSION,
            adeis::compiler::dsl::diffusion::expand_diffusion as fn(_) -> _,
        ),
    ] {
        let out = expand(format!("::adeis; {decl}").parse().unwrap()).to_string();
        assert!(!out.contains("compile_error"), "{out}");
    }
}

//! Classifier-free guidance from the command line and from a spec's `[guidance]` table:
//! scale 1 is the conditional model and 0 the unconditional one, exactly; a model without a
//! null conditioning, or a flag without its partner, is a clear error.

use std::path::Path;

mod support;
use support::adeis;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn max_abs(a: &Path, b: &Path) -> f64 {
    let (a, b) = (
        adeis::npy::read_npy(a).unwrap().data,
        adeis::npy::read_npy(b).unwrap().data,
    );
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

const SPEC: &str = "examples/specs/sample_dpmpp.toml";

#[test]
fn guidance_scales_mix_the_conditional_and_unconditional_digits_model() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x.npy");
    let (ok, _, err) = adeis(&["noise", "--shape", "2,64", "--seed", "3", "--out", s(&x)]);
    assert!(ok, "{err}");
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(format!("{name}.npy"));
        let mut a = vec![
            "sample",
            "--spec",
            SPEC,
            "--model",
            "digits",
            "--x-t",
            s(&x),
            "--out",
            s(&out),
            "--dtype",
            "f64",
        ];
        a.extend_from_slice(extra);
        let (ok, _, err) = adeis(&a);
        assert!(ok, "{name}: {err}");
        out
    };
    let labels = ["--class-labels", "3,5"];
    let cond = run("cond", &labels);
    let uncond = run("uncond", &[]);
    let one = run("one", &[&labels[..], &["--guidance-scale", "1"]].concat());
    let zero = run("zero", &[&labels[..], &["--guidance-scale", "0"]].concat());
    let three = run("three", &[&labels[..], &["--guidance-scale", "3"]].concat());
    assert_eq!(max_abs(&one, &cond), 0.0);
    assert_eq!(max_abs(&zero, &uncond), 0.0);
    assert!(max_abs(&three, &cond) > 0.1);

    // The same from a [guidance] table; the flag wins over it.
    let spec = dir.path().join("guided.toml");
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(SPEC)).unwrap();
    std::fs::write(&spec, format!("{text}\n[guidance]\nscale = 3.0\n")).unwrap();
    let from_spec = dir.path().join("from_spec.npy");
    let (ok, _, err) = adeis(&[
        "sample",
        "--spec",
        s(&spec),
        "--model",
        "digits",
        "--x-t",
        s(&x),
        "--class-labels",
        "3,5",
        "--out",
        s(&from_spec),
        "--dtype",
        "f64",
    ]);
    assert!(ok, "{err}");
    assert_eq!(max_abs(&from_spec, &three), 0.0);

    // grad: the guided gradient at scale 1 is the conditional one.
    let grads = |name: &str, extra: &[&str]| {
        let g = dir.path().join(name);
        let mut a = vec![
            "grad",
            "--spec",
            SPEC,
            "--model",
            "digits",
            "--x-t",
            s(&x),
            "--cot",
            s(&x),
            "--class-labels",
            "3,5",
            "--out-dir",
            s(&g),
            "--dtype",
            "f64",
        ];
        a.extend_from_slice(extra);
        let (ok, _, err) = adeis(&a);
        assert!(ok, "{name}: {err}");
        g.join("dx_t.npy")
    };
    let plain = grads("g_plain", &[]);
    let guided1 = grads("g_one", &["--guidance-scale", "1"]);
    let guided3 = grads("g_three", &["--guidance-scale", "3"]);
    assert!(max_abs(&plain, &guided1) < 1e-12);
    assert!(max_abs(&plain, &guided3) > 1e-3);
}

#[test]
fn guidance_errors_say_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x.npy");
    adeis(&["noise", "--shape", "2,2", "--seed", "1", "--out", s(&x)]);
    let out = dir.path().join("o.npy");
    let base = ["sample", "--spec", SPEC, "--x-t", s(&x), "--out", s(&out)];
    let (ok, _, err) = adeis(
        &[
            &base[..],
            &[
                "--model",
                "gmm:examples/models/ring8.json",
                "--guidance-scale",
                "2",
            ],
        ]
        .concat(),
    );
    assert!(
        !ok && err.contains("give the condition (--class-labels or --cond)"),
        "{err}"
    );
    let (ok, _, err) = adeis(
        &[
            &base[..],
            &["--model", "gaussian:mu=1,s2=0.5", "--guidance-scale", "2"],
        ]
        .concat(),
    );
    assert!(!ok && err.contains("no null conditioning"), "{err}");
    let (ok, _, err) = adeis(
        &[
            &base[..],
            &["--model", "gaussian:mu=1,s2=0.5", "--null-class", "3"],
        ]
        .concat(),
    );
    assert!(!ok && err.contains("give --guidance-scale S too"), "{err}");
    assert!(!out.exists());

    // A class-conditional diffusers UNet has no fixed null class: --null-class names it.
    let m = "diffusers:tests/fixtures/unet/class_cond_cifar_style";
    let xi = dir.path().join("xi.npy");
    adeis(&[
        "noise",
        "--shape",
        "2,3,8,8",
        "--seed",
        "1",
        "--out",
        s(&xi),
    ]);
    let spec = "examples/specs/diffusers_ddim.toml";
    let unet = [
        "sample",
        "--spec",
        spec,
        "--model",
        m,
        "--x-t",
        s(&xi),
        "--out",
        s(&out),
        "--class-labels",
        "3,1",
    ];
    let (ok, _, err) = adeis(&[&unet[..], &["--guidance-scale", "2"]].concat());
    assert!(!ok && err.contains("give --null-class K"), "{err}");
    let (ok, _, err) =
        adeis(&[&unet[..], &["--guidance-scale", "2", "--null-class", "0"]].concat());
    assert!(ok, "{err}");
    let (ok, _, err) =
        adeis(&[&unet[..], &["--guidance-scale", "nan", "--null-class", "0"]].concat());
    assert!(
        !ok && err.contains("--guidance-scale NaN: a finite number"),
        "{err}"
    );
}

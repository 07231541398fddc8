//! A Stable-Diffusion-style pipeline folder end to end (tests/fixtures/unet_condition/
//! sd_pipeline_ddim, made by scripts/make-sd-unet-fixtures.py: a UNet2DConditionModel, an
//! AutoencoderKL and SD's DDIM scheduler config): `adeis sample` with the prompt's embeddings
//! (--cond) and classifier-free guidance (--guidance-scale, --uncond) makes the image
//! StableDiffusionPipeline's loop makes, and `adeis grad` gives torch autograd's gradients with
//! respect to x_T and the embeddings through the loop and the decoder.

use std::path::{Path, PathBuf};

use adeis::npy::read_npy;
use adeis::safetensors::{read_safetensors, TensorMap};

mod support;
use support::{adeis_pipeline, pipeline_tolerance, reference_npy as npy, rel_err};

fn pipeline() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet_condition/sd_pipeline_ddim")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn reference() -> TensorMap {
    read_safetensors(&pipeline().join("pipeline_reference.safetensors")).unwrap()
}

/// `adeis CMD --spec SCHEDULER --steps 3 --model diffusers:PIPELINE EXTRA...`.
fn run(cmd: &str, extra: &[&str]) -> (bool, String, String) {
    let spec = pipeline().join("scheduler/scheduler_config.json");
    let model = format!("diffusers:{}", pipeline().display());
    adeis_pipeline(cmd, (&spec, &model), extra)
}

#[test]
fn sd_pipeline_with_guidance_samples_and_differentiates_as_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let r = reference();
    let (x_t, cond, uncond, cot) = (
        npy(dir.path(), &r, "x_t"),
        npy(dir.path(), &r, "cond"),
        npy(dir.path(), &r, "uncond"),
        npy(dir.path(), &r, "cot_image"),
    );
    for dtype in ["f64", "f32"] {
        let image = dir.path().join(format!("image_{dtype}.npy"));
        let guided = [
            "--x-t",
            s(&x_t),
            "--cond",
            s(&cond),
            "--guidance-scale",
            "7.5",
            "--uncond",
            s(&uncond),
            "--dtype",
            dtype,
        ];
        let (ok, stdout, stderr) = run("sample", &[&guided[..], &["--out", s(&image)]].concat());
        assert!(ok, "{stderr}");
        assert!(stdout.contains("decoded by the VAE"), "{stdout}");
        let got = read_npy(&image).unwrap();
        assert_eq!(got.shape, vec![2, 3, 16, 16]);
        let e = rel_err(&got.data, &r[&format!("image.{dtype}")].1);
        eprintln!("SD pipeline sample ({dtype}): image {e:.2e}");
        assert!(e < pipeline_tolerance(dtype), "image ({dtype}): {e:.2e}");

        let out = dir.path().join(format!("g_{dtype}"));
        let (ok, _, stderr) = run(
            "grad",
            &[
                &guided[..],
                &["--cot", s(&cot), "--wrt", "x_t,cond", "--out-dir", s(&out)],
            ]
            .concat(),
        );
        assert!(ok, "{stderr}");
        let dx = read_npy(&out.join("dx_t.npy")).unwrap();
        let dz = read_npy(&out.join("dz.npy")).unwrap();
        assert_eq!(dz.shape, vec![2, 5, 12]);
        let (ex, ez) = (
            rel_err(&dx.data, &r[&format!("dx_t.{dtype}")].1),
            rel_err(&dz.data, &r[&format!("dz.{dtype}")].1),
        );
        eprintln!("SD pipeline grad ({dtype}): dL/dx_T {ex:.2e}, dL/d(embeddings) {ez:.2e}");
        assert!(ex < pipeline_tolerance(dtype), "dx_t ({dtype}): {ex:.2e}");
        assert!(ez < pipeline_tolerance(dtype), "dz ({dtype}): {ez:.2e}");
    }
}

#[test]
fn sd_pipeline_misuse_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let r = reference();
    let x_t = npy(dir.path(), &r, "x_t");
    let out = dir.path().join("o.npy");
    // No prompt embeddings.
    let (ok, _, stderr) = run("sample", &["--x-t", s(&x_t), "--out", s(&out)]);
    assert!(!ok);
    assert!(
        stderr.contains("conditioned on encoder hidden states")
            && stderr.contains("--cond E.npy, [2, tokens, 12]"),
        "{stderr}"
    );
    // Guidance without the empty prompt's embeddings.
    let cond = npy(dir.path(), &r, "cond");
    let (ok, _, stderr) = run(
        "sample",
        &[
            "--x-t",
            s(&x_t),
            "--cond",
            s(&cond),
            "--guidance-scale",
            "7.5",
            "--out",
            s(&out),
        ],
    );
    assert!(!ok);
    assert!(stderr.contains("give --uncond E0.npy"), "{stderr}");
    // Embeddings of the wrong width.
    let bad = dir.path().join("bad.npy");
    adeis::npy::write_npy(&bad, &[2, 5, 7], &[0.0; 70], 8).unwrap();
    let (ok, _, stderr) = run(
        "sample",
        &["--x-t", s(&x_t), "--cond", s(&bad), "--out", s(&out)],
    );
    assert!(!ok);
    assert!(stderr.contains("--cond has shape [2, 5, 7]"), "{stderr}");
    // --uncond of another shape than --cond.
    let (ok, _, stderr) = run(
        "sample",
        &[
            "--x-t",
            s(&x_t),
            "--cond",
            s(&cond),
            "--guidance-scale",
            "2",
            "--uncond",
            s(&x_t),
            "--out",
            s(&out),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("--uncond has shape [2, 4, 8, 8]"),
        "{stderr}"
    );
    // Latents far beyond what the machine holds: refused before the weights are read, with
    // the attention's share named.
    let big = dir.path().join("big.npy");
    adeis::npy::write_npy(&big, &[1, 4, 512, 512], &vec![0.0; 4 * 512 * 512], 4).unwrap();
    let one_cond = dir.path().join("one_cond.npy");
    adeis::npy::write_npy(&one_cond, &[1, 5, 12], &[0.0; 60], 4).unwrap();
    let (ok, _, stderr) = run(
        "sample",
        &["--x-t", s(&big), "--cond", s(&one_cond), "--out", s(&out)],
    );
    assert!(!ok);
    assert!(
        stderr.contains("a 262144 x 262144 score matrix per head")
            && stderr.contains("made for 8 x 8 images (sample_size), not 512 x 512"),
        "{stderr}"
    );
    // A gradient target that is not one.
    let (ok, _, stderr) = run(
        "grad",
        &[
            "--x-t",
            s(&x_t),
            "--cond",
            s(&cond),
            "--cot",
            s(&x_t),
            "--wrt",
            "x_t,prompt",
            "--out-dir",
            s(&dir.path().join("g")),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("--wrt: `prompt` is not a gradient target; the targets are x_t, cond"),
        "{stderr}"
    );
}

/// Copies the fixture pipeline to `to`, with its UNet's weights written by `write_unet` into
/// the UNet folder instead of the single file.
fn copy_pipeline(to: &Path, write_unet: impl Fn(&Path, &TensorMap)) {
    for sub in ["unet", "vae", "scheduler"] {
        std::fs::create_dir_all(to.join(sub)).unwrap();
        for f in std::fs::read_dir(pipeline().join(sub)).unwrap() {
            let f = f.unwrap().path();
            if sub == "unet" && f.extension().is_some_and(|e| e == "safetensors") {
                continue;
            }
            std::fs::copy(&f, to.join(sub).join(f.file_name().unwrap())).unwrap();
        }
    }
    let weights =
        read_safetensors(&pipeline().join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    write_unet(&to.join("unet"), &weights);
}

/// A stored tensor of a reference map: (name, (shape, values)).
type Entry<'a> = (&'a String, &'a (Vec<usize>, Vec<f64>));

fn write_tensors(path: &Path, tensors: &[Entry<'_>]) {
    let named: Vec<adeis::safetensors::NamedTensor> = tensors
        .iter()
        .map(|(name, (shape, data))| adeis::safetensors::NamedTensor {
            name: name.to_string(),
            shape: shape.clone(),
            data: data.clone(),
        })
        .collect();
    std::fs::write(path, adeis::safetensors::safetensors_bytes(&named, 4)).unwrap();
}

/// Sharded weights (`diffusion_pytorch_model.safetensors.index.json` and its shards, diffusers'
/// layout for large models) and the fp16 variant's file name load as the single file does: the
/// sample is the same to the bit; an index naming a file outside the folder is refused.
#[test]
fn sharded_and_variant_weights_load_as_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let r = reference();
    let (x_t, cond) = (npy(dir.path(), &r, "x_t"), npy(dir.path(), &r, "cond"));
    let sample = |model: &Path, out: &Path| {
        let spec = pipeline().join("scheduler/scheduler_config.json");
        let model = format!("diffusers:{}", model.display());
        let args = ["--x-t", s(&x_t), "--cond", s(&cond), "--out", s(out)];
        adeis_pipeline("sample", (&spec, &model), &args)
    };
    let reference_out = dir.path().join("one.npy");
    let (ok, _, stderr) = sample(&pipeline(), &reference_out);
    assert!(ok, "{stderr}");
    let want = read_npy(&reference_out).unwrap().data;

    let sharded = dir.path().join("sharded");
    copy_pipeline(&sharded, |unet, weights| {
        let all: Vec<_> = weights.iter().collect();
        let (a, b) = all.split_at(all.len() / 2);
        let names = [
            "diffusion_pytorch_model-00001-of-00002.safetensors",
            "diffusion_pytorch_model-00002-of-00002.safetensors",
        ];
        write_tensors(&unet.join(names[0]), a);
        write_tensors(&unet.join(names[1]), b);
        let map: serde_json::Map<String, serde_json::Value> = a
            .iter()
            .map(|(k, _)| (k.to_string(), serde_json::json!(names[0])))
            .chain(
                b.iter()
                    .map(|(k, _)| (k.to_string(), serde_json::json!(names[1]))),
            )
            .collect();
        let index = serde_json::json!({"metadata": {}, "weight_map": map});
        std::fs::write(
            unet.join("diffusion_pytorch_model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();
    });
    let out = dir.path().join("sharded.npy");
    let (ok, _, stderr) = sample(&sharded, &out);
    assert!(ok, "{stderr}");
    assert_eq!(read_npy(&out).unwrap().data, want, "sharded weights");

    let variant = dir.path().join("variant");
    copy_pipeline(&variant, |unet, weights| {
        let all: Vec<_> = weights.iter().collect();
        write_tensors(&unet.join("diffusion_pytorch_model.fp16.safetensors"), &all);
    });
    let out = dir.path().join("variant.npy");
    let (ok, _, stderr) = sample(&variant, &out);
    assert!(ok, "{stderr}");
    assert_eq!(read_npy(&out).unwrap().data, want, "fp16 variant file name");

    // An index that names a file outside the folder.
    std::fs::write(
        sharded.join("unet/diffusion_pytorch_model.safetensors.index.json"),
        r#"{"weight_map": {"conv_in.weight": "../../one.npy"}}"#,
    )
    .unwrap();
    let (ok, _, stderr) = sample(&sharded, &dir.path().join("bad.npy"));
    assert!(!ok);
    assert!(
        stderr.contains("weight_map names the shard \"../../one.npy\", which is not a file in"),
        "{stderr}"
    );
}

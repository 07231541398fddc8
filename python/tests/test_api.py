"""The Python API against the `adeis` command and the built-in closed-form model."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import adeis
from conftest import REPO, NumpyGaussian

SPECS = REPO / "examples" / "specs"


def noise(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_sample_and_grad_equal_the_command_to_the_last_bit(tmp_path, run_cli, dtype):
    spec = SPECS / "grad_times.toml"
    model = "gaussian:mu=0.5,s2=0.3"
    x_t, target = noise((3, 4), 1), noise((3, 4), 2)
    np.save(tmp_path / "x_t.npy", x_t)
    np.save(tmp_path / "target.npy", target)
    run_cli("sample", "--spec", spec, "--model", model, "--x-t", tmp_path / "x_t.npy",
            "--dtype", dtype, "--out", tmp_path / "x0.npy")
    run_cli("grad", "--spec", spec, "--model", model, "--x-t", tmp_path / "x_t.npy", "--loss", "mse",
            "--target", tmp_path / "target.npy", "--dtype", dtype, "--out-dir", tmp_path / "g")

    p = adeis.Problem.from_spec(spec)
    x0 = p.sample(model, x_t, dtype=dtype)
    g = p.grad(model, x_t, loss="mse", target=target, dtype=dtype)
    want_dtype = np.float32 if dtype == "f32" else np.float64
    assert x0.dtype == want_dtype and g["x_t"].dtype == want_dtype
    np.testing.assert_array_equal(x0, np.load(tmp_path / "x0.npy"))
    np.testing.assert_array_equal(g["x0"], x0)
    np.testing.assert_array_equal(g["x_t"], np.load(tmp_path / "g" / "dx_t.npy"))
    np.testing.assert_array_equal(g["times"], np.load(tmp_path / "g" / "dtimes.npy"))
    assert g["schedule"] == json.loads((tmp_path / "g" / "dschedule.json").read_text())
    assert "cond" not in g and "params" not in g


def test_the_readmes_python_example_runs(monkeypatch, capsys):
    text = (REPO / "README.md").read_text()
    section = text[text.index("## From Python"):]
    block = section[section.index("```python\n") + len("```python\n"):]
    block = block[: block.index("```")]
    monkeypatch.chdir(REPO)
    exec(compile(block, "README.md", "exec"), {})
    keys, difference = capsys.readouterr().out.splitlines()
    assert keys.startswith("['loss', 'nfe', 'schedule', 'times', 'vjps', 'x0', 'x_t']"), keys
    assert float(difference) < 1e-12


def test_a_dict_is_the_same_spec_as_its_file(tmp_path):
    spec = {"schedule": json.loads((SPECS / "vp_linear_custom.json").read_text())["schedule"],
            "sampler": {"method": "dpm_solver_pp", "order": 2, "steps": 7}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    by_file = adeis.Problem.from_spec(tmp_path / "spec.json")
    by_dict = adeis.Problem.from_spec(spec)
    x_t = noise((2, 3), 3)
    np.testing.assert_array_equal(
        by_file.sample("gaussian:mu=1,s2=0.5", x_t, dtype="f64"),
        by_dict.sample("gaussian:mu=1,s2=0.5", x_t, dtype="f64"),
    )
    assert by_file.times == by_dict.times
    assert "<spec dict>" in by_dict.describe()


def test_a_diffusers_scheduler_config_takes_steps(run_cli, tmp_path):
    config = REPO / "tests" / "fixtures" / "schedulers" / "dpm_2m" / "scheduler_config.json"
    with pytest.raises(adeis.SpecError, match="steps"):
        adeis.Problem.from_spec(config)
    p = adeis.Problem.from_spec(config, steps=12)
    assert len(p.times) >= 12
    x_t = noise((4, 2), 4)
    np.save(tmp_path / "x_t.npy", x_t)
    model = "gmm:examples/models/ring8.json"
    run_cli("sample", "--spec", config, "--steps", 12, "--model", model, "--x-t",
            tmp_path / "x_t.npy", "--out", tmp_path / "x0.npy")
    np.testing.assert_array_equal(p.sample(model, x_t), np.load(tmp_path / "x0.npy"))


SAMPLERS = [
    {"method": "ddim", "steps": 8},
    {"method": "dpm_solver_pp", "order": 2, "steps": 8},
    {"method": "dpm_solver_pp", "order": 3, "steps": 8},
    {"method": "unipc", "order": 2, "steps": 8},
]
GRADIENTS = [
    {"method": "discrete", "wrt": ["x_t", "cond", "times", "schedule"]},
    {"method": "discrete", "states": "checkpoint", "checkpoints": 3, "wrt": ["x_t", "cond"]},
    {"method": "adjoint_deis", "order": 2, "wrt": ["x_t", "cond"]},
]


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: f"{s['method']}{s.get('order', 1)}")
@pytest.mark.parametrize("gradient", GRADIENTS, ids=lambda g: g["method"] + g.get("states", ""))
def test_a_numpy_gaussian_pymodel_gives_the_built_in_gaussians_gradients(sampler, gradient):
    spec = {"schedule": {"kind": "vp_linear"}, "sampler": sampler, "gradient": gradient}
    p = adeis.Problem.from_spec(spec)
    mu, s2 = 0.7, 0.4
    x_t, target = noise((5, 3), 5), noise((5, 3), 6)
    built_in = p.grad(f"gaussian:mu={mu},s2={s2}", x_t, loss="mse", target=target, dtype="f64")
    model = NumpyGaussian(s2)
    py = p.grad(adeis.PyModel(model.eps, model.vjp), x_t, loss="mse", target=target,
                cond=np.full_like(x_t, mu), dtype="f64")
    assert model.calls == built_in["nfe"]
    for key in ["x0", "x_t", "cond", "times"]:
        if key in built_in:
            # 1e-12 relative to the largest value: numpy and adeis sum in different orders.
            scale = max(1.0, np.abs(built_in[key]).max())
            np.testing.assert_allclose(py[key], built_in[key], rtol=0, atol=1e-12 * scale,
                                       err_msg=key)
    for name, value in built_in.get("schedule", {}).items():
        assert abs(py["schedule"][name] - value) <= 1e-12 * max(1.0, abs(value)), name
    assert py["loss"] == pytest.approx(built_in["loss"], abs=1e-12)


def test_params_of_a_built_in_model_and_their_refusal_for_a_pymodel():
    spec = {"schedule": {"kind": "vp_linear"}, "sampler": {"method": "ddim", "steps": 6},
            "gradient": {"method": "discrete", "wrt": ["params"]}}
    p = adeis.Problem.from_spec(spec)
    x_t = noise((2, 2), 7)
    g = p.grad("gaussian:mu=0,s2=0.5", x_t, cot=np.ones_like(x_t), dtype="f64")
    assert set(g["params"]) == {"s2"} and np.isfinite(g["params"]["s2"]).all()
    model = NumpyGaussian(0.5)
    with pytest.raises(adeis.ModelError, match="no parameters adeis can differentiate"):
        p.grad(adeis.PyModel(model.eps, model.vjp), x_t, cot=x_t, cond=np.zeros_like(x_t))


def test_a_stable_diffusion_pipeline_folder_equals_the_command(run_cli, tmp_path):
    """A pipeline folder (UNet2DConditionModel, VAE, scheduler): the schedule from its
    scheduler_config.json, cond the encoder hidden states, the sample the decoded image and
    the loss on it, all as `adeis sample|grad` give them."""
    folder = REPO / "tests" / "fixtures" / "unet_condition" / "sd_pipeline_ddim"
    model = f"diffusers:{folder}"
    spec = SPECS / "diffusers_ddim.toml"
    p = adeis.Problem.from_spec(spec)
    assert p.times is None and "the model's" in p.describe()
    unet = json.loads((folder / "unet" / "config.json").read_text())
    x_t = noise((1, unet["in_channels"], unet["sample_size"], unet["sample_size"]), 8)
    cond = noise((1, 5, unet["cross_attention_dim"]), 9)
    image = p.sample(model, x_t, cond=cond)
    assert image.shape[1] == 3 and image.shape[2] > x_t.shape[2], image.shape
    target = noise(image.shape, 10)
    for name, a in [("x_t", x_t), ("cond", cond), ("target", target)]:
        np.save(tmp_path / f"{name}.npy", a)
    run_cli("sample", "--spec", spec, "--model", model, "--x-t", tmp_path / "x_t.npy",
            "--cond", tmp_path / "cond.npy", "--out", tmp_path / "image.npy")
    run_cli("grad", "--spec", spec, "--model", model, "--x-t", tmp_path / "x_t.npy",
            "--cond", tmp_path / "cond.npy", "--loss", "mse", "--target", tmp_path / "target.npy",
            "--out-dir", tmp_path / "g")
    np.testing.assert_array_equal(image, np.load(tmp_path / "image.npy"))
    g = p.grad(model, x_t, cond=cond, loss="mse", target=target)
    np.testing.assert_array_equal(g["x0"], image)
    np.testing.assert_array_equal(g["x_t"], np.load(tmp_path / "g" / "dx_t.npy"))
    np.testing.assert_array_equal(g["cond"], np.load(tmp_path / "g" / "dz.npy"))
    # Classifier-free guidance as StableDiffusionPipeline computes it, as the command does.
    uncond = noise(cond.shape, 12)
    np.save(tmp_path / "uncond.npy", uncond)
    run_cli("grad", "--spec", spec, "--model", model, "--x-t", tmp_path / "x_t.npy",
            "--cond", tmp_path / "cond.npy", "--guidance-scale", 4.5, "--uncond",
            tmp_path / "uncond.npy", "--loss", "mse", "--target", tmp_path / "target.npy",
            "--out-dir", tmp_path / "guided")
    guided = p.grad(model, x_t, cond=cond, guidance_scale=4.5, uncond=uncond, loss="mse",
                    target=target)
    np.testing.assert_array_equal(guided["x_t"], np.load(tmp_path / "guided" / "dx_t.npy"))
    np.testing.assert_array_equal(guided["cond"], np.load(tmp_path / "guided" / "dz.npy"))
    assert np.abs(guided["x_t"] - g["x_t"]).max() > 0
    with pytest.raises(adeis.InputError, match="give guidance_scale too"):
        p.sample(model, x_t, cond=cond, uncond=uncond)
    with pytest.raises(adeis.InputError, match="give uncond"):
        p.sample(model, x_t, cond=cond, guidance_scale=3.0)
    with pytest.raises(adeis.InputError, match="uncond has shape"):
        p.sample(model, x_t, cond=cond, guidance_scale=3.0, uncond=uncond[:, :2])
    with pytest.raises(adeis.InputError, match="target has shape"):
        p.grad(model, x_t, cond=cond, loss="mse", target=x_t)
    with pytest.raises(adeis.SpecError, match="no \\[schedule\\] table"):
        p.sample("gaussian:mu=0,s2=1", noise((2, 2), 1))


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_invert_equals_the_command_and_a_reversible_pair_samples_x0_back(run_cli, tmp_path, dtype):
    spec = {"schedule": {"kind": "vp_linear"},
            "sampler": {"method": "rex", "tableau": "euler", "form": "data", "steps": 10}}
    (tmp_path / "rex.json").write_text(json.dumps(spec))
    model = "gaussian:mu=0.5,s2=0.3"
    x_0 = noise((3, 4), 11)
    np.save(tmp_path / "x0.npy", x_0)
    run_cli("invert", "--spec", tmp_path / "rex.json", "--model", model, "--x-0",
            tmp_path / "x0.npy", "--dtype", dtype, "--out", tmp_path / "xT.npy")
    inv = adeis.invert(tmp_path / "rex.json", model, x_0, dtype=dtype)
    assert inv["exact"] and inv["nfe"] > 0
    np.testing.assert_array_equal(inv["x_t"], np.load(tmp_path / "xT.npy"))
    np.testing.assert_array_equal(inv["companion"], np.load(tmp_path / "xT_companion.npy"))
    p = adeis.Problem.from_spec(spec)
    back = p.sample(model, inv["x_t"], companion=inv["companion"], dtype=dtype)
    scale = 1e-12 if dtype == "f64" else 1e-5
    np.testing.assert_allclose(back, x_0, rtol=0, atol=scale * np.abs(x_0).max())
    # An ODE sampler is inverted by its ODE, not exactly.
    ddim = adeis.Problem.from_spec({"schedule": {"kind": "vp_linear"},
                                    "sampler": {"method": "ddim", "steps": 10}})
    assert not ddim.invert(model, x_0)["exact"]
    with pytest.raises(adeis.SolverError, match="companion"):
        ddim.invert(model, x_0, companion=x_0)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_learn_steps_equals_the_command(run_cli, tmp_path, dtype):
    options = {"steps": 4, "iters": 8, "train": 32, "heldout": 64, "seed": 3}
    flags = [f for k, v in options.items() for f in (f"--{k}", v)]
    run_cli("learn-steps", *flags, "--dtype", dtype, "--out", tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())["report"]
    seen = []
    got = adeis.learn_steps(dtype=dtype, progress=lambda it, loss: seen.append((it, loss)),
                            **options)
    assert got["train_loss"] == report["train_loss"]
    assert [g["times"] for g in got["grids"]] == [g["times"] for g in report["grids"]]
    assert got["times"] == report["grids"][0]["times"] and len(got["times"]) == 5
    assert got["best_iteration"] == report["best_iteration"]
    assert [loss for _, loss in seen] == got["train_loss"]
    # The learned spec runs as it is.
    (tmp_path / "learned.toml").write_text(got["spec"])
    assert adeis.Problem.from_spec(tmp_path / "learned.toml").times == got["times"]


def test_learn_steps_with_a_pymodel_and_its_errors():
    s2 = 0.5
    model = NumpyGaussian(s2)

    # The Gaussian of mean 0 without conditioning (the built-in one's rows are its mean, 0).
    def eps(x, t, alpha, sigma, cond):
        return model.eps(x, t, alpha, sigma, np.zeros_like(x))

    def vjp(x, t, alpha, sigma, cond, cot):
        dx, _, times = model.vjp(x, t, alpha, sigma, np.zeros_like(x), cot)
        return dx, None, times

    by_python = adeis.learn_steps(adeis.PyModel(eps, vjp), dim=2, steps=3, iters=4, train=16,
                                  heldout=16, dtype="f64")
    built_in = adeis.learn_steps(f"gaussian:mu=0,s2={s2}", steps=3, iters=4, train=16,
                                 heldout=16, dtype="f64")
    np.testing.assert_allclose(by_python["train_loss"], built_in["train_loss"], rtol=1e-10)
    np.testing.assert_allclose(by_python["times"], built_in["times"], rtol=1e-10)
    with pytest.raises(adeis.InputError, match="dim"):
        adeis.learn_steps(adeis.PyModel(lambda x, *a: x))
    with pytest.raises(adeis.InputError, match="steps"):
        adeis.learn_steps(steps=40)
    with pytest.raises(adeis.InputError, match="not a sampler"):
        adeis.learn_steps(method="heun")

    def stop(it, loss):
        raise RuntimeError("enough")

    with pytest.raises(RuntimeError, match="enough"):
        adeis.learn_steps(iters=5, train=8, heldout=8, progress=stop)


def test_class_labels_of_a_class_conditional_unet_equal_the_command(run_cli, tmp_path):
    """The README's diffusers example: a class-conditional UNet2DModel with --class-labels,
    and guidance against --null-class."""
    folder = REPO / "tests" / "fixtures" / "unet" / "class_cond_cifar_style"
    model = f"diffusers:{folder}"
    spec = SPECS / "diffusers_ddim.toml"
    config = json.loads((folder / "config.json").read_text())
    x_t = noise((2, config["in_channels"], 8, 8), 13)
    target = noise(x_t.shape, 14)
    np.save(tmp_path / "x_t.npy", x_t)
    np.save(tmp_path / "target.npy", target)
    common = ["--spec", spec, "--model", model, "--x-t", tmp_path / "x_t.npy",
              "--class-labels", "3,1"]
    run_cli("sample", *common, "--out", tmp_path / "x0.npy")
    run_cli("grad", *common, "--loss", "mse", "--target", tmp_path / "target.npy",
            "--out-dir", tmp_path / "g")
    run_cli("grad", *common, "--guidance-scale", 2.0, "--null-class", 0, "--loss", "mse",
            "--target", tmp_path / "target.npy", "--out-dir", tmp_path / "guided")
    p = adeis.Problem.from_spec(spec)
    np.testing.assert_array_equal(p.sample(model, x_t, class_labels=[3, 1]),
                                  np.load(tmp_path / "x0.npy"))
    g = p.grad(model, x_t, class_labels=[3, 1], loss="mse", target=target)
    np.testing.assert_array_equal(g["x_t"], np.load(tmp_path / "g" / "dx_t.npy"))
    np.testing.assert_array_equal(g["cond"], np.load(tmp_path / "g" / "dz.npy"))
    guided = p.grad(model, x_t, class_labels=[3, 1], guidance_scale=2.0, null_class=0,
                    loss="mse", target=target)
    np.testing.assert_array_equal(guided["x_t"], np.load(tmp_path / "guided" / "dx_t.npy"))
    with pytest.raises(adeis.InputError, match="this model is conditioned"):
        p.sample(model, x_t)
    with pytest.raises(adeis.InputError, match="class label 99 is out of range"):
        p.sample(model, x_t, class_labels=[99, 1])
    with pytest.raises(adeis.InputError, match="2 labels"):
        p.sample(model, x_t[:1], class_labels=[3, 1])
    vp = adeis.Problem.from_spec({"schedule": {"kind": "vp_linear"},
                                  "sampler": {"method": "ddim", "steps": 4}})
    with pytest.raises(adeis.ModelError, match="class-conditional UNet2DModel"):
        vp.sample("gaussian:mu=0", noise((2, 2), 1), class_labels=[3, 1])


def test_errors_name_the_field_the_value_and_what_is_allowed(tmp_path):
    with pytest.raises(adeis.SpecError, match="sampler"):
        adeis.Problem.from_spec({"schedule": {"kind": "vp_linear"}})
    with pytest.raises(adeis.SpecError, match="steps"):
        adeis.Problem.from_spec({"schedule": {"kind": "vp_linear"},
                                 "sampler": {"method": "ddim", "steps": "ten"}})
    with pytest.raises(adeis.SpecError, match="nowhere.toml"):
        adeis.Problem.from_spec(tmp_path / "nowhere.toml")
    with pytest.raises(adeis.SpecError, match="neither a path"):
        adeis.Problem.from_spec(42)
    p = adeis.Problem.from_spec({"schedule": {"kind": "vp_linear"},
                                 "sampler": {"method": "ddim", "steps": 4}})
    x_t = noise((2, 3), 1)
    with pytest.raises(adeis.ModelError, match="s2 = `x` is not a number"):
        p.sample("gaussian:s2=x", x_t)
    with pytest.raises(adeis.ModelError, match="is not a model"):
        p.sample("resnet", x_t)
    with pytest.raises(adeis.ModelError, match="not callable"):
        adeis.PyModel(3)
    with pytest.raises(adeis.ModelError, match="allowed"):
        adeis.PyModel(lambda *a: a[0], prediction="score")
    with pytest.raises(adeis.InputError, match="dtype"):
        p.sample("gaussian:mu=0", x_t, dtype="f16")
    with pytest.raises(adeis.InputError, match="element 1 is NaN"):
        p.sample("gaussian:mu=0", np.array([[0.0, np.nan]]))
    with pytest.raises(adeis.InputError, match="target has shape"):
        p.grad("gaussian:mu=0", x_t, loss="mse", target=np.zeros((2, 2)))
    with pytest.raises(adeis.InputError, match="give cot"):
        p.grad("gaussian:mu=0", x_t)
    with pytest.raises(adeis.InputError, match="not a gradient target"):
        p.grad("gaussian:mu=0", x_t, cot=x_t, wrt=["x_t", "weights"])
    with pytest.raises(adeis.InputError, match="conditioning has shape"):
        p.sample(adeis.PyModel(lambda x, *a: x), x_t, cond=np.zeros((3, 3)))
    with pytest.raises(adeis.ModelError, match=r"shape \[2, 2\]; expected \[2, 3\]"):
        p.sample(adeis.PyModel(lambda x, *a: x[:, :2]), x_t)
    with pytest.raises(adeis.ModelError, match="must be finite"):
        p.sample(adeis.PyModel(lambda x, *a: x * np.inf), x_t)
    with pytest.raises(adeis.ModelError, match="no vjp"):
        p.grad(adeis.PyModel(lambda x, *a: x), x_t, cot=x_t)
    with pytest.raises(adeis.ModelError, match="expected a tuple"):
        p.grad(adeis.PyModel(lambda x, *a: x, lambda x, *a: x), x_t, cot=x_t)
    assert issubclass(adeis.SpecError, adeis.AdeisError)


def test_an_exception_in_the_model_is_raised_and_the_next_run_goes_on():
    p = adeis.Problem.from_spec({"schedule": {"kind": "vp_linear"},
                                 "sampler": {"method": "ddim", "steps": 20}})
    calls = []

    def failing(x, t, alpha, sigma, cond):
        calls.append(t)
        if len(calls) == 3:
            raise ValueError("the model's own error")
        return x

    x_t = noise((2, 2), 1)
    with pytest.raises(ValueError, match="the model's own error"):
        p.sample(adeis.PyModel(failing), x_t)
    assert len(calls) == 3, "the run stops at the failing step"
    assert np.isfinite(p.sample(adeis.PyModel(lambda x, *a: x), x_t)).all()


def test_ctrl_c_stops_a_run_within_a_step_and_the_next_run_goes_on():
    script = textwrap.dedent(
        """
        import os, signal, threading, time
        import numpy as np
        import adeis
        p = adeis.Problem.from_spec({"schedule": {"kind": "vp_linear"},
                                     "sampler": {"method": "ddim", "steps": 1000}})
        def slow(x, t, alpha, sigma, cond):
            time.sleep(0.01)
            return x
        threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        start = time.time()
        try:
            p.sample(adeis.PyModel(slow), np.ones((1, 2)))
            print("not interrupted")
        except KeyboardInterrupt:
            print(f"interrupted after {time.time() - start:.2f} s")
        print("next run", p.sample("gaussian:mu=0", np.ones((1, 2))).shape)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("interrupted after"), done.stdout
    # 1000 steps of 10 ms would take 10 s; the stop comes within a step or two of the signal.
    assert float(lines[0].split()[2]) < 2.0, done.stdout
    assert lines[1] == "next run (1, 2)"


def test_ctrl_c_stops_a_built_in_models_run_within_a_step():
    """A UNet run with no Python in its loop: the waiting thread sees the signal."""
    script = textwrap.dedent(
        f"""
        import os, signal, threading, time
        import numpy as np
        import adeis
        p = adeis.Problem.from_spec({{"schedule": {{"kind": "vp_linear"}},
                                     "sampler": {{"method": "ddim", "steps": 1000}}}})
        unet = "diffusers:{REPO / 'tests' / 'fixtures' / 'unet' / 'attn_down_up'}"
        x_t = np.ones((16, 3, 32, 32))
        threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        start = time.time()
        try:
            p.sample(unet, x_t)
            print("not interrupted")
        except KeyboardInterrupt as e:
            print(f"interrupted after {{time.time() - start:.2f}} s: {{e}}")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    # 1000 steps take about 50 s here; the stop comes at the step after the signal.
    assert line.startswith("interrupted after"), line
    assert float(line.split()[2]) < 5.0, line


def test_no_memory_grows_over_a_thousand_calls():
    p = adeis.Problem.from_spec({"schedule": {"kind": "vp_linear"},
                                 "sampler": {"method": "dpm_solver_pp", "order": 2, "steps": 5},
                                 "gradient": {"method": "discrete", "wrt": ["x_t", "cond"]}})
    model = NumpyGaussian(0.5)
    py_model = adeis.PyModel(model.eps, model.vjp)
    x_t = noise((8, 16), 1)
    cond = np.zeros_like(x_t)

    def resident_kib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4

    def calls(n):
        for _ in range(n):
            p.grad(py_model, x_t, cot=x_t, cond=cond, dtype="f64")
            p.sample("gaussian:mu=0,s2=0.5", x_t)

    calls(100)
    before = resident_kib()
    calls(1000)
    grown = resident_kib() - before
    # One call's arrays are about 10 KiB: a leak of even one of them per call is 10 MiB.
    assert grown < 4096, f"resident memory grew by {grown} KiB over 1000 calls"

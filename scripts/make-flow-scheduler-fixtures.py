#!/usr/bin/env python3
"""Writes the flow-matching scheduler fixtures of tests/fixtures/flow_schedulers: for each case,
the scheduler_config.json that diffusers itself saves (`scheduler.save_config`), and
reference.json with what diffusers' own sampling loop computes from it: the sigmas, the
timesteps, the starting noise x_T and the final sample.

The model is Gaussian data N(mu, s2 I), whose exact flow velocity u = eps - x0 at
x = (1 - s) x0 + s eps both sides compute in closed form (adeis's `gaussian:...,pred=flow`), so
that the fixtures test the schedulers and nothing else; it is finite at s = 1, where the
sampling starts. diffusers computes its sigmas in float32 and steps a float32 copy of the
sample, so reference.json also has x_0_float64: the same loop of diffusers' own scheduler
source with every float32 in it made float64, which is what adeis's float64 run must equal.
mu for dynamic shifting comes from diffusers' own `calculate_shift` (the FLUX pipeline's)
where a case gives the image's sequence length.

Run it from anywhere: without torch and diffusers it installs the pinned versions from the
Python package registry into a throwaway virtual environment (about 6 GB) and runs there.
    python3 scripts/make-flow-scheduler-fixtures.py
"""

import json
import os
import shutil
import zlib

from torch_env import ensure_torch  # scripts/ is on the path

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "flow_schedulers")

ensure_torch(__file__)

import torch  # noqa: E402
from diffusers import (  # noqa: E402
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from fixture_tools import float64_twin  # noqa: E402


def diffusers_calculate_shift():
    """diffusers' own `calculate_shift` (the FLUX pipeline's), taken from its source: importing
    the pipeline module would need transformers."""
    import ast

    import diffusers

    path = os.path.join(os.path.dirname(diffusers.__file__), "pipelines", "flux", "pipeline_flux.py")
    with open(path) as f:
        tree = ast.parse(f.read())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "calculate_shift")
    scope = {}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), path, "exec"), scope)
    return scope["calculate_shift"]


calculate_shift = diffusers_calculate_shift()

MU, S2, DIM, BATCH = 0.5, 0.3, 3, 4

CLASSES = {
    c.__name__: c for c in [FlowMatchEulerDiscreteScheduler, DPMSolverMultistepScheduler, DEISMultistepScheduler]
}
FLOW = dict(use_flow_sigmas=True, prediction_type="flow_prediction")

# name, config keys (the rest at diffusers' defaults), inference steps, set_timesteps extras
# (mu, or image_seq_len from which calculate_shift gives mu); the class is
# FlowMatchEulerDiscreteScheduler unless the keys name another (`_class`).
CASES = [
    ("flow_euler", dict(), 8, {}),
    ("flow_euler_sd3", dict(shift=3.0), 10, {}),
    ("flow_euler_sd3_28", dict(shift=3.0), 28, {}),
    ("flow_euler_dynamic_mu", dict(use_dynamic_shifting=True), 12, dict(mu=0.8)),
    (
        "flow_euler_dynamic_seq_len",
        dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096),
        10,
        dict(image_seq_len=1024),
    ),
    ("flow_euler_dynamic_linear", dict(use_dynamic_shifting=True, time_shift_type="linear"), 10, dict(mu=2.0)),
    ("flow_euler_terminal", dict(shift=3.0, shift_terminal=0.1), 10, {}),
    ("flow_euler_karras", dict(shift=3.0, use_karras_sigmas=True), 10, {}),
    ("flow_euler_exponential", dict(shift=3.0, use_exponential_sigmas=True), 10, {}),
    ("flow_dpmpp_2m", dict(FLOW, _class="DPMSolverMultistepScheduler", flow_shift=3.0), 10, {}),
    ("flow_dpmpp_2m_20", dict(FLOW, _class="DPMSolverMultistepScheduler", flow_shift=3.0), 20, {}),
    ("flow_dpmpp_3m", dict(FLOW, _class="DPMSolverMultistepScheduler", flow_shift=5.0, solver_order=3), 12, {}),
    ("flow_dpmpp_2m_heun", dict(FLOW, _class="DPMSolverMultistepScheduler", solver_type="heun"), 10, {}),
    (
        "flow_dpmpp_2m_dynamic",
        dict(FLOW, _class="DPMSolverMultistepScheduler", use_dynamic_shifting=True),
        10,
        dict(mu=1.1),
    ),
    ("flow_sde_dpmpp_2m", dict(FLOW, _class="DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++", flow_shift=3.0), 10, {}),
    ("flow_deis_2", dict(FLOW, _class="DEISMultistepScheduler", flow_shift=3.0), 10, {}),
]


def velocity(x, s):
    """The Gaussian's exact eps - x0 at x = (1 - s) x0 + s eps."""
    a = 1 - s
    v = a * a * S2 + s * s
    r = x - a * MU
    eps = s * r / v
    x0 = MU + a * S2 * r / v
    return eps - x0


def sample(sched, x_t, noises):
    """diffusers' loop from x_t; the SDE schedulers take the given noise (drawn if None) and
    return what they drew."""
    x = x_t.clone()
    drawn = []
    sde = "sde" in str(getattr(sched.config, "algorithm_type", ""))
    for i, t in enumerate(sched.timesteps):
        s = sched.sigmas[i].to(torch.float64)
        extra = {}
        if sde:
            n = noises[i] if noises else torch.randn(*x.shape, generator=GEN, dtype=torch.float64)
            drawn.append(n)
            extra["variance_noise"] = n
        x = sched.step(velocity(x, s), t, x, **extra).prev_sample.to(torch.float64)
    return x, drawn


GEN = torch.Generator().manual_seed(7)


def run(name, kwargs, steps, extra):
    kwargs = dict(kwargs)
    cls_name = kwargs.pop("_class", "FlowMatchEulerDiscreteScheduler")
    cls = CLASSES[cls_name]
    case_dir = os.path.join(OUT, name)
    os.makedirs(case_dir, exist_ok=True)
    mu = extra.get("mu")
    if "image_seq_len" in extra:
        c = cls(**kwargs).config
        mu = calculate_shift(
            extra["image_seq_len"], c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift
        )
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    x_t = torch.randn(BATCH, DIM, generator=gen, dtype=torch.float64)
    out = {}
    noises = None
    for tag, c in [("shipped", cls), ("float64", float64_twin(cls))]:
        sched = c(**kwargs)
        if tag == "shipped":
            sched.save_config(case_dir)
        sched.set_timesteps(steps, mu=mu)
        x, noises = sample(sched, x_t, noises)
        out[tag] = (x, sched)
    exact = out["float64"][1]
    ref = dict(
        class_name=cls_name,
        steps=steps,
        model=dict(mu=MU, s2=S2),
        sigmas_float64=[float(s) for s in exact.sigmas],
        timesteps_float64=[float(t) for t in exact.timesteps],
        x_t=x_t.tolist(),
        x_0=out["shipped"][0].tolist(),
        x_0_float64=out["float64"][0].tolist(),
    )
    ref.update(extra)
    if noises:
        ref["noise"] = [n.tolist() for n in noises]
    if mu is not None:
        ref["mu_computed"] = mu
    with open(os.path.join(case_dir, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
    print(f"{name}: {steps} steps, sigmas {ref['sigmas_float64'][:3]}...")


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    for case in CASES:
        run(*case)
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump([c[0] for c in CASES], f, indent=1)


if __name__ == "__main__":
    main()

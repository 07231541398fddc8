#!/usr/bin/env python3
"""Writes the scheduler fixtures of tests/fixtures/schedulers: for each case, the
scheduler_config.json that diffusers itself saves (`scheduler.save_config`), and reference.json
with what diffusers' own sampling loop computes from it: the timesteps, the starting noise
x_T, the per-step noise of the SDE samplers, and the final sample.

The model is the mixture of examples/models/ring8.json (eight Gaussians on a circle), whose
exact noise prediction both sides compute in closed form, so that the fixtures test the
schedulers and nothing else: at timestep k the model sees alpha = sqrt(alphas_cumprod[k]),
sigma = sqrt(1 - alphas_cumprod[k]), as adeis's discrete schedule gives it at train index k.
The loop runs in float64, but diffusers computes its betas, their cumulative products and its
sigmas in float32 (and its updates from a float32 copy of the sample), so reference.json also
has x_0_float64: the same loop of diffusers' own scheduler source with every float32 in it made
float64, which tells what diffusers' formulas give apart from its float32 rounding.

Run it from anywhere: without torch and diffusers it installs the pinned versions from the
Python package registry into a throwaway virtual environment (about 6 GB) and runs there.
    python3 scripts/make-scheduler-fixtures.py
"""

import json
import os
import shutil
import zlib

from torch_env import ensure_torch  # scripts/ is on the path

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "schedulers")

ensure_torch(__file__)

import torch  # noqa: E402
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from fixture_tools import float64_twin  # noqa: E402

CLASSES = {
    c.__name__: c
    for c in [
        DDIMScheduler,
        DEISMultistepScheduler,
        DPMSolverMultistepScheduler,
        DPMSolverSinglestepScheduler,
        EulerDiscreteScheduler,
        UniPCMultistepScheduler,
    ]
}

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
# The ring's radius is 2: with a cap of 1.8 and the 0.7 quantile of the two |x0| components
# the threshold is interpolated between them, clamped at 1 and at the cap in turn.
THRESHOLD = dict(thresholding=True, dynamic_thresholding_ratio=0.7, sample_max_value=1.8)

# name, class, config keys (the rest at diffusers' defaults), inference steps
CASES = [
    ("ddim_leading_sd", "DDIMScheduler", dict(SD, clip_sample=False, set_alpha_to_one=False, steps_offset=1), 10),
    ("ddim_trailing", "DDIMScheduler", dict(clip_sample=False, timestep_spacing="trailing"), 20),
    ("dpmpp_2m", "DPMSolverMultistepScheduler", dict(), 10),
    ("dpmpp_2m_20", "DPMSolverMultistepScheduler", dict(), 20),
    ("dpmpp_2m_sd_leading", "DPMSolverMultistepScheduler", dict(SD, timestep_spacing="leading", steps_offset=1), 12),
    ("dpmpp_2m_heun", "DPMSolverMultistepScheduler", dict(solver_type="heun"), 10),
    ("dpmpp_3m", "DPMSolverMultistepScheduler", dict(solver_order=3), 10),
    ("dpmpp_3m_25", "DPMSolverMultistepScheduler", dict(solver_order=3), 25),
    ("dpm_2m", "DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min"), 10),
    ("dpm_3m", "DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver", solver_order=3, final_sigmas_type="sigma_min"), 12),
    ("dpmpp_1", "DPMSolverMultistepScheduler", dict(solver_order=1), 10),
    ("dpmpp_2m_no_lof", "DPMSolverMultistepScheduler", dict(lower_order_final=False), 10),
    (
        "dpmpp_2m_sigma_min_euler",
        "DPMSolverMultistepScheduler",
        dict(final_sigmas_type="sigma_min", euler_at_final=True),
        20,
    ),
    ("dpmpp_2m_sigma_min", "DPMSolverMultistepScheduler", dict(final_sigmas_type="sigma_min"), 10),
    ("dpmpp_2m_trailing", "DPMSolverMultistepScheduler", dict(timestep_spacing="trailing"), 10),
    ("dpmpp_2m_cosine", "DPMSolverMultistepScheduler", dict(beta_schedule="squaredcos_cap_v2"), 10),
    ("sde_dpmpp_2m", "DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++"), 10),
    ("sde_dpmpp_1", "DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++", solver_order=1), 10),
    ("dpmpp_2m_karras", "DPMSolverMultistepScheduler", dict(use_karras_sigmas=True), 10),
    ("dpmpp_2m_karras_sd", "DPMSolverMultistepScheduler", dict(SD, use_karras_sigmas=True), 20),
    (
        "dpmpp_2m_karras_sigma_min",
        "DPMSolverMultistepScheduler",
        dict(use_karras_sigmas=True, final_sigmas_type="sigma_min"),
        10,
    ),
    ("sde_dpmpp_2m_karras", "DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++", use_karras_sigmas=True), 10),
    ("dpmpp_2m_lu", "DPMSolverMultistepScheduler", dict(use_lu_lambdas=True), 10),
    ("dpmpp_2m_exponential", "DPMSolverMultistepScheduler", dict(use_exponential_sigmas=True), 10),
    ("unipc_karras", "UniPCMultistepScheduler", dict(use_karras_sigmas=True), 10),
    ("deis_karras", "DEISMultistepScheduler", dict(use_karras_sigmas=True), 10),
    ("unipc_bh2", "UniPCMultistepScheduler", dict(), 10),
    ("unipc_bh1_3", "UniPCMultistepScheduler", dict(solver_type="bh1", solver_order=3, final_sigmas_type="sigma_min"), 10),
    ("unipc_bh2_20", "UniPCMultistepScheduler", dict(), 20),
    ("deis_2", "DEISMultistepScheduler", dict(), 10),
    ("deis_3", "DEISMultistepScheduler", dict(solver_order=3), 12),
    ("dpmpp_2s", "DPMSolverSinglestepScheduler", dict(), 10),
    ("dpmpp_3s", "DPMSolverSinglestepScheduler", dict(solver_order=3), 12),
    ("dpmpp_3s_heun", "DPMSolverSinglestepScheduler", dict(solver_order=3, solver_type="heun"), 10),
    (
        "dpmpp_2s_heun_sigma_min",
        "DPMSolverSinglestepScheduler",
        dict(solver_type="heun", final_sigmas_type="sigma_min"),
        10,
    ),
    (
        "dpm_3s_sigma_min",
        "DPMSolverSinglestepScheduler",
        dict(algorithm_type="dpmsolver", solver_order=3, final_sigmas_type="sigma_min"),
        11,
    ),
    (
        "dpm_3s_heun_lof",
        "DPMSolverSinglestepScheduler",
        dict(algorithm_type="dpmsolver", solver_order=3, solver_type="heun", final_sigmas_type="sigma_min", lower_order_final=True),
        9,
    ),
    ("dpm_2s_heun", "DPMSolverSinglestepScheduler", dict(algorithm_type="dpmsolver", solver_type="heun", final_sigmas_type="sigma_min"), 8),
    ("sde_dpmpp_2s", "DPMSolverSinglestepScheduler", dict(algorithm_type="sde-dpmsolver++"), 10),
    ("dpmpp_2s_karras", "DPMSolverSinglestepScheduler", dict(use_karras_sigmas=True), 10),
    (
        "dpmpp_3s_karras_sigma_min",
        "DPMSolverSinglestepScheduler",
        dict(solver_order=3, use_karras_sigmas=True, final_sigmas_type="sigma_min"),
        10,
    ),
    ("dpmpp_2s_exponential", "DPMSolverSinglestepScheduler", dict(use_exponential_sigmas=True), 10),
    ("dpmpp_2m_thresholding", "DPMSolverMultistepScheduler", dict(THRESHOLD), 10),
    ("dpm_2m_thresholding", "DPMSolverMultistepScheduler", dict(THRESHOLD, algorithm_type="dpmsolver", final_sigmas_type="sigma_min"), 10),
    ("dpmpp_2s_thresholding", "DPMSolverSinglestepScheduler", dict(THRESHOLD), 10),
    ("unipc_thresholding", "UniPCMultistepScheduler", dict(THRESHOLD), 10),
    ("deis_thresholding", "DEISMultistepScheduler", dict(THRESHOLD), 10),
    ("unipc_disable_corrector", "UniPCMultistepScheduler", dict(disable_corrector=[0, 3, 4]), 10),
    # Euler: fractional "linspace" timesteps (20 steps), SD's leading, trailing, sigma_min, v.
    ("euler_linspace", "EulerDiscreteScheduler", dict(), 20),
    ("euler_leading_sd", "EulerDiscreteScheduler", dict(SD, timestep_spacing="leading", steps_offset=1), 12),
    ("euler_trailing", "EulerDiscreteScheduler", dict(timestep_spacing="trailing"), 10),
    ("euler_sigma_min", "EulerDiscreteScheduler", dict(final_sigmas_type="sigma_min"), 15),
    ("euler_v", "EulerDiscreteScheduler", dict(prediction_type="v_prediction"), 10),
]

BATCH = 6


def gmm_eps(x, alpha, sigma, mix):
    """The mixture's exact noise prediction at x = alpha x0 + sigma eps."""
    w = torch.tensor(mix["weights"], dtype=torch.float64)
    mu = torch.tensor(mix["means"], dtype=torch.float64)  # (K, D)
    v = torch.tensor(mix["variances"], dtype=torch.float64)  # (K,)
    d = x.shape[1]
    var = alpha**2 * v + sigma**2  # (K,)
    diff = x[:, None, :] - alpha * mu[None]  # (B, K, D)
    logp = torch.log(w) - 0.5 * (diff**2).sum(-1) / var - 0.5 * d * torch.log(var)
    r = torch.softmax(logp, dim=1)  # (B, K)
    x0k = mu[None] + (alpha * v / var)[None, :, None] * diff
    x0 = (r[:, :, None] * x0k).sum(1)
    return (x - alpha * x0) / sigma


def model_output(eps, sched, alpha, sigma, x_vp):
    """The mixture's prediction in the form the scheduler's config says the network gives."""
    kind = sched.config.prediction_type
    if kind == "epsilon":
        return eps
    x0 = (x_vp - sigma * eps) / alpha
    if kind == "sample":
        return x0
    return alpha * eps - sigma * x0  # v_prediction


def euler(sched):
    return type(sched).__name__ == "EulerDiscreteScheduler"


def sample(name, sched, x_t, mix, noises=None):
    """diffusers' sampling loop from x_t; returns the sample and the SDE noise it drew."""
    ac = sched.alphas_cumprod.to(torch.float64)
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()) + 1)
    x = x_t * sched.init_noise_sigma
    sde = "sde" in str(getattr(sched.config, "algorithm_type", ""))
    drawn = []
    sigma_spacing = any(
        getattr(sched.config, key, False) for key in ["use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas"]
    )
    for i, t in enumerate(sched.timesteps):
        k = int(t)
        alpha, sigma = ac[k].sqrt(), (1 - ac[k]).sqrt()
        if euler(sched):
            # Euler works on x / alpha; the mixture sees x at the scheduler's own sigma (its
            # fractional timesteps' sigmas are interpolated), as a pipeline's network does
            # after scale_model_input.
            s = sched.sigmas[i].to(torch.float64)
            alpha = 1 / (1 + s**2).sqrt()
            eps = model_output(gmm_eps(sched.scale_model_input(x, t).to(torch.float64), alpha, s * alpha, mix), sched, alpha, s * alpha, x * alpha)
            x = sched.step(eps, t, x).prev_sample.to(torch.float64)
            continue
        if sigma_spacing:
            # Between train timesteps the mixture is told its true noise level (diffusers'
            # sigma s = sigma / alpha); the network of the UNet cases gets the rounded timestep.
            s = sched.sigmas[i].to(torch.float64)
            alpha = 1 / (1 + s**2).sqrt()
            sigma = s * alpha
        eps = gmm_eps(x, alpha, sigma, mix)
        extra = {}
        if isinstance(sched, DDIMScheduler):
            extra["eta"] = 0.0
        if sde:
            n = noises[i] if noises else torch.randn(*x.shape, generator=gen, dtype=torch.float64)
            drawn.append(n)
            if isinstance(sched, DPMSolverSinglestepScheduler) or type(sched).__name__ == "DPMSolverSinglestepScheduler":
                # Its step draws the noise itself (no variance_noise argument): hand it this one.
                type(sched).step.__globals__["randn_tensor"] = lambda *a, _n=n, **k: _n
            else:
                extra["variance_noise"] = n
        if getattr(sched.config, "thresholding", False):
            # diffusers' _threshold_sample reshapes to (batch, channels * prod(the rest)),
            # which needs a trailing axis after the mixture's (batch, dim).
            shape = x.shape
            x = sched.step(eps[..., None], t, x[..., None], **extra).prev_sample.reshape(shape)
        else:
            x = sched.step(eps, t, x, **extra).prev_sample
        x = x.to(torch.float64)
    return x, drawn


def run(name, cls_name, kwargs, steps, mix):
    sched = CLASSES[cls_name](**kwargs)
    case_dir = os.path.join(OUT, name)
    os.makedirs(case_dir, exist_ok=True)
    sched.save_config(case_dir)
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    d = len(mix["means"][0])
    x_t = torch.randn(BATCH, d, generator=gen, dtype=torch.float64)
    x, noises = sample(name, sched, x_t, mix)
    exact = float64_twin(CLASSES[cls_name])(**kwargs)
    exact.set_timesteps(steps)
    if euler(sched):
        # Its "linspace" timesteps are fractional: float32 in diffusers, float64 in the twin.
        assert torch.allclose(exact.timesteps.to(torch.float64), sched.timesteps.to(torch.float64), rtol=1e-6)
    else:
        assert exact.timesteps.tolist() == sched.timesteps.tolist()
    x64, _ = sample(name, exact, x_t, mix, noises)
    ref = dict(
        class_name=cls_name,
        steps=steps,
        timesteps=[float(t) for t in sched.timesteps] if euler(sched) else [int(t) for t in sched.timesteps],
        x_t=x_t.tolist(),
        x_0=x.tolist(),
        x_0_float64=x64.tolist(),
    )
    if euler(sched):
        # The state diffusers starts from is x_t * init_noise_sigma in its scaled space, that is
        # x_t * init_noise_sigma * alpha_max in adeis's (the twin's float64 sigmas).
        s_max = exact.sigmas.max().to(torch.float64)
        ref["start_scale"] = float(exact.init_noise_sigma / (1 + s_max**2).sqrt())
        # ... and it returns its scaled sample x / alpha at the last sigma (1 at sigma = 0).
        ref["end_scale"] = float((1 + exact.sigmas[-1].to(torch.float64) ** 2).sqrt())
    if noises:
        ref["noise"] = [n.tolist() for n in noises]
    with open(os.path.join(case_dir, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
    print(f"{name}: {cls_name} {steps} steps, timesteps {ref['timesteps'][:4]}...")


# name, class, config keys, inference steps: run on the UNet fixture attn_down_up
UNET_CASES = [
    ("unet_dpmpp_2m", "DPMSolverMultistepScheduler", dict(), 6),
    ("unet_unipc_bh2", "UniPCMultistepScheduler", dict(), 6),
    ("unet_dpmpp_2m_karras", "DPMSolverMultistepScheduler", dict(use_karras_sigmas=True), 6),
]


def run_unet(name, cls_name, kwargs, steps):
    """A real network: the UNet2DModel of tests/fixtures/unet/attn_down_up (random weights,
    made by make-unet-fixtures.py) in float64, sampled by diffusers' scheduler and by its
    float64 twin."""
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(os.path.join(ROOT, "tests", "fixtures", "unet", "attn_down_up"))
    unet = unet.to(torch.float64).eval()
    case_dir = os.path.join(OUT, name)
    os.makedirs(case_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    x_t = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    out = {}
    for tag, cls in [("shipped", CLASSES[cls_name]), ("float64", float64_twin(CLASSES[cls_name]))]:
        sched = cls(**kwargs)
        if tag == "shipped":
            sched.save_config(case_dir)
        sched.set_timesteps(steps)
        x = x_t.clone()
        with torch.no_grad():
            for t in sched.timesteps:
                eps = unet(x, t).sample
                x = sched.step(eps, t, x).prev_sample.to(torch.float64)
        out[tag] = x
        timesteps = [int(t) for t in sched.timesteps]
    ref = dict(
        class_name=cls_name,
        steps=steps,
        timesteps=timesteps,
        shape=list(x_t.shape),
        x_t=x_t.reshape(2, -1).tolist(),
        x_0=out["shipped"].reshape(2, -1).tolist(),
        x_0_float64=out["float64"].reshape(2, -1).tolist(),
    )
    with open(os.path.join(case_dir, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
    print(f"{name}: {cls_name} {steps} steps on the attn_down_up UNet")


def main():
    with open(os.path.join(ROOT, "examples", "models", "ring8.json")) as f:
        mix = json.load(f)
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    for case in CASES:
        run(*case, mix)
    for case in UNET_CASES:
        run_unet(*case)
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump(dict(mixture=[c[0] for c in CASES], unet=[c[0] for c in UNET_CASES]), f, indent=1)


if __name__ == "__main__":
    main()

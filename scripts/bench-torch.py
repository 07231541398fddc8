#!/usr/bin/env python3
"""The PyTorch side of adeis's benchmarks: the same gradient `adeis bench` computes, written in
PyTorch + diffusers, one JSON line per run (seconds per gradient, the median of --repeat runs
after one warm-up, and the process's peak memory), so that scripts/bench-report.sh can put the
two side by side.

Workloads W1 and W2 (as `adeis bench --workload w1|w2`): an MLP [x, z, sin/cos time features]
-> H -> H -> D with tanh-approximated GeLU (W1: D 64, H 256, batch 16; W2: D 784, H 2048,
batch 64; z of width 8, 16 frequencies exp(linspace(0, ln 1000, 16))), DDIM on N steps of a
grid uniform in log-SNR of the VP linear schedule (beta 0.1..20, t from 1 to 1e-3), mean
squared error to a fixed target, the gradient with respect to x_T, z and every parameter.

Workload W3 (as `adeis bench --workload w3`): google/ddpm-cifar10-32's UNet2DModel (35.7M
parameters, seeded random weights), batch 1, 3x32x32, DDIM on N + 1 evenly spaced train
indices round(999 (N - k) / N) (halves up) of the linear DDPM schedule (1000 steps, betas 1e-4..0.02), mean
squared error to a fixed target, the gradient with respect to x_T. Methods:
  sample    the N steps under no_grad
  discrete  the states recorded under no_grad, then one forward + VJP of the network per step
            from the last step back (what adeis's discrete adjoint does)
  tape      the whole loop on autograd's tape and one backward pass

    python3 scripts/bench-torch.py --workload w3 --method discrete --steps 10 --repeat 3

Workload W4 (as `adeis bench --workload w4`): Stable Diffusion 1.5's UNet2DConditionModel (860M
parameters, seeded random weights), batch 1, 4x64x64 latents, 77 x 768 encoder hidden states,
DDIM on the same evenly spaced train indices of SD's scaled-linear schedule (0.00085..0.012),
the gradient with respect to x_T and the encoder hidden states.

Workload gemm: one f32 product of two STEPS x STEPS matrices (the machine's GEMM peak through
PyTorch's BLAS): --workload gemm --method matmul --steps 2048.

--device cuda runs any workload on the GPU (the same seeded data, made on the CPU and moved),
synchronising before each clock reading; the JSON then also has the device's peak allocation
(torch.cuda.max_memory_allocated).

Without torch and diffusers it installs them into a throwaway environment (as
make-unet-fixtures.py does) and runs there.
"""

import argparse
import json
import math
import os
import resource
import time

from torch_env import ensure_torch  # scripts/ is on the path

ensure_torch(__file__)

import torch  # noqa: E402
from diffusers import UNet2DConditionModel, UNet2DModel  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402

CIFAR10 = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 256, 256),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    norm_eps=1e-6,
    norm_num_groups=32,
    attention_head_dim=None,
)


# The device the workloads run on (--device).
DEVICE = torch.device("cpu")


def unet_workload(model, betas, shape, steps, cond=None):
    """DDIM on N + 1 evenly spaced train indices of `betas` with `model` (its encoder hidden
    states `cond`, a leaf whose gradient the methods also compute, when given), MSE to a fixed
    target; the gradient with respect to x_T (and cond)."""
    model.to(DEVICE)
    if cond is not None:
        cond = cond.to(DEVICE)
    for p in model.parameters():
        p.requires_grad_(False)
    abar = torch.cumprod(1 - betas, 0)
    # Halves round away from zero, as Rust's f64::round in `adeis bench` (Python's round goes
    # to even: 166.5 -> 166 at N = 6).
    idx = [math.floor(999 * (steps - k) / steps + 0.5) for k in range(steps + 1)]
    coefs = []
    for i, j in zip(idx[:-1], idx[1:]):
        a_i, a_j = abar[i].sqrt().item(), abar[j].sqrt().item()
        s_i, s_j = (1 - abar[i]).sqrt().item(), (1 - abar[j]).sqrt().item()
        # x_j = a_j x0 + s_j eps with x0 = (x_i - s_i eps) / a_i
        coefs.append((i, a_j / a_i, s_j - a_j * s_i / a_i))
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(shape, generator=g).to(DEVICE)
    target = torch.randn(shape, generator=g).to(DEVICE)
    kwargs = {}

    def step(x, k):
        i, cx, ce = coefs[k]
        eps = model(x, torch.tensor(float(i), device=DEVICE), **kwargs).sample
        return cx * x + ce * eps

    def with_cond():
        if cond is not None:
            kwargs["encoder_hidden_states"] = cond.detach().requires_grad_(True)

    def sample():
        with_cond()
        with torch.no_grad():
            x = x_t
            for k in range(steps):
                x = step(x, k)
        return x

    def loss_grad(x0):
        x0 = x0.detach().requires_grad_(True)
        loss = ((x0 - target) ** 2).mean()
        loss.backward()
        return x0.grad

    def discrete():
        with_cond()
        with torch.no_grad():
            states = [x_t]
            for k in range(steps):
                states.append(step(states[-1], k))
        g = loss_grad(states[-1])
        for k in reversed(range(steps)):
            x = states[k].detach().requires_grad_(True)
            y = step(x, k)
            y.backward(g)
            g = x.grad
        return g

    def tape():
        with_cond()
        x0 = x_t.clone().requires_grad_(True)
        x = x0
        for k in range(steps):
            x = step(x, k)
        loss = ((x - target) ** 2).mean()
        loss.backward()
        return x0.grad

    return {"sample": sample, "discrete": discrete, "tape": tape}


def w3(steps):
    torch.manual_seed(0)
    model = UNet2DModel(**CIFAR10).eval()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    return unet_workload(model, betas, (1, 3, 32, 32), steps)


# Stable Diffusion 1.5's unet/config.json (860M parameters).
SD15 = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
)


def w4(steps):
    torch.manual_seed(0)
    model = UNet2DConditionModel(**SD15).eval()
    # SD's scaled-linear betas: linspace in sqrt(beta), squared.
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    cond = torch.randn((1, 77, 768), generator=torch.Generator().manual_seed(2))
    return unet_workload(model, betas, (1, 4, 64, 64), steps, cond)


def mlp(steps, dim, hidden, batch):
    cond, freqs, t_min = 8, 16, 1e-3
    torch.manual_seed(0)
    inp = dim + cond + 2 * freqs
    net = torch.nn.Sequential(
        torch.nn.Linear(inp, hidden),
        torch.nn.GELU(approximate="tanh"),
        torch.nn.Linear(hidden, hidden),
        torch.nn.GELU(approximate="tanh"),
        torch.nn.Linear(hidden, dim),
    )
    w = torch.exp(torch.linspace(0.0, math.log(1000.0), freqs))
    b0, b1 = 0.1, 20.0

    def log_alpha(t):
        return -0.25 * t * t * (b1 - b0) - 0.5 * t * b0

    def lam(t):
        la = log_alpha(t)
        return la - 0.5 * math.log(-math.expm1(2 * la))

    def t_of(lmb):
        c = math.log1p(math.exp(-2 * lmb))  # -log alpha^2
        d = b1 - b0
        return (-b0 + math.sqrt(b0 * b0 + 2 * d * c)) / d

    l0, l1 = lam(1.0), lam(t_min)
    ts = [1.0] + [t_of(l0 + (l1 - l0) * k / steps) for k in range(1, steps)] + [t_min]
    coefs = []
    for t, u in zip(ts[:-1], ts[1:]):
        a_t, a_u = math.exp(log_alpha(t)), math.exp(log_alpha(u))
        s_t, s_u = math.sqrt(1 - a_t * a_t), math.sqrt(1 - a_u * a_u)
        coefs.append((t, a_u / a_t, s_u - a_u * s_t / a_t))
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn((batch, dim), generator=g).to(DEVICE)
    z0 = torch.randn((batch, cond), generator=g).to(DEVICE)
    target = torch.randn((batch, dim), generator=g).to(DEVICE)
    net.to(DEVICE)
    w = w.to(DEVICE)

    def step(x, z, k):
        t, cx, ce = coefs[k]
        feats = torch.cat([torch.sin(w * t), torch.cos(w * t)]).expand(x.shape[0], -1)
        eps = net(torch.cat([x, z, feats], dim=1))
        return cx * x + ce * eps

    def zero():
        for p in net.parameters():
            p.grad = None

    def sample():
        with torch.no_grad():
            x = x_t
            for k in range(steps):
                x = step(x, z0, k)
        return x

    def discrete():
        zero()
        with torch.no_grad():
            states = [x_t]
            for k in range(steps):
                states.append(step(states[-1], z0, k))
        x0 = states[-1].detach().requires_grad_(True)
        ((x0 - target) ** 2).mean().backward()
        g = x0.grad
        z = z0.clone().requires_grad_(True)
        for k in reversed(range(steps)):
            x = states[k].detach().requires_grad_(True)
            step(x, z, k).backward(g)
            g = x.grad
        return g, z.grad

    def tape():
        zero()
        x0 = x_t.clone().requires_grad_(True)
        z = z0.clone().requires_grad_(True)
        x = x0
        for k in range(steps):
            x = step(x, z, k)
        ((x - target) ** 2).mean().backward()
        return x0.grad, z.grad

    return {"sample": sample, "discrete": discrete, "tape": tape}


def gemm(size):
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    return {"matmul": lambda: torch.mm(a, b)}


WORKLOADS = {
    "gemm": lambda n: gemm(n),
    "w1": lambda n: mlp(n, 64, 256, 16),
    "w2": lambda n: mlp(n, 784, 2048, 64),
    "w3": lambda n: w3(n),
    "w4": lambda n: w4(n),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", default="w3", choices=sorted(WORKLOADS))
    ap.add_argument("--method", default="discrete", choices=["sample", "discrete", "tape", "matmul"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(a.device)
    cuda = DEVICE.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("bench-torch: --device cuda, but torch sees no CUDA GPU")

    def synchronize():
        if cuda:
            torch.cuda.synchronize()

    diffusers_logging.set_verbosity_error()
    torch.set_num_threads(a.threads)
    run = WORKLOADS[a.workload](a.steps)[a.method]
    run()  # warm-up
    synchronize()
    times = []
    for _ in range(a.repeat):
        t = time.perf_counter()
        run()
        synchronize()
        times.append(time.perf_counter() - t)
    times.sort()
    print(
        json.dumps(
            {
                "workload": a.workload,
                "method": a.method,
                "steps": a.steps,
                "repeat": a.repeat,
                "seconds": times[len(times) // 2],
                "threads": a.threads,
                "torch": torch.__version__,
                "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "device": a.device,
                "device_peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
            }
        )
    )


if __name__ == "__main__":
    main()

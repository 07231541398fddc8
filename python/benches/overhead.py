"""What calling adeis from Python costs, on one CPU (python/README and the repository's README
quote the table this prints).

1. The round trip of a PyModel call: a sample on W1's shape (batch 16, dimension 64, DDIM,
   N steps) with a numpy model that returns its input, against the built-in Gaussian model
   (closed form, no Python): the difference per network call is the overhead of crossing into
   Python and back.
2. A PyTorch MLP of W1's size (64 -> 256 -> 256 -> 64, SiLU, time features) and one gradient
   dL/dx_T of an MSE loss through N DDIM steps:
   - adeis's discrete adjoint with the MLP as a PyModel (`adeis.torch.from_module`);
   - PyTorch's autograd through the sampler (the tape: every step's activations kept);
   - the same discrete adjoint written in PyTorch (states recorded without the tape, then
     one `torch.func.vjp` per step), what adeis does, without adeis.

Rounds alternate between the ways (this machine is shared and noisy); the medians are
reported.

    python python/benches/overhead.py [--steps 20] [--rounds 15]
"""

import argparse
import math
import statistics
import time

import numpy as np

import adeis

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--rounds", type=int, default=15)
args = parser.parse_args()
N, BATCH, DIM, HIDDEN = args.steps, 16, 64, 256

problem = adeis.Problem.from_spec({
    "schedule": {"kind": "vp_linear"},
    "sampler": {"method": "ddim", "steps": N},
    "gradient": {"method": "discrete"},
})
rng = np.random.default_rng(0)
x_t = rng.standard_normal((BATCH, DIM)).astype(np.float32)
target = rng.standard_normal((BATCH, DIM)).astype(np.float32)


def alternate(ways):
    """Median seconds of each way, the rounds alternating between them (after a warm-up)."""
    for f in ways.values():
        f()
    times = {name: [] for name in ways}
    for r in range(args.rounds):
        names = list(ways)
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            ways[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


identity = adeis.PyModel(lambda x, t, alpha, sigma, cond: x)
crossing = alternate({
    "built-in model": lambda: problem.sample("gaussian:mu=0,s2=1", x_t),
    "PyModel (numpy)": lambda: problem.sample(identity, x_t),
})
per_call = (crossing["PyModel (numpy)"] - crossing["built-in model"]) / N
print(f"## PyModel round trip (batch {BATCH}, dimension {DIM}, DDIM N = {N})\n")
print("| model | seconds per sample | per network call |")
print("|---|---|---|")
for name, secs in crossing.items():
    print(f"| {name} | {secs:.6f} | {secs / N * 1e6:.1f} us |")
print(f"\nthe crossing into Python and back: {per_call * 1e6:.1f} us per call\n")

try:
    import torch
    from torch import nn
    from torch.func import vjp

    import adeis.torch
except ImportError:
    print("(torch is not installed: the PyTorch comparison is skipped)")
    raise SystemExit(0)

torch.manual_seed(0)
torch.set_num_threads(max(1, torch.get_num_threads()))


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(DIM + 16, HIDDEN), nn.SiLU(), nn.Linear(HIDDEN, HIDDEN),
                                 nn.SiLU(), nn.Linear(HIDDEN, DIM))

    def forward(self, x, t):
        freqs = torch.exp(-math.log(1000.0) * torch.arange(8, dtype=x.dtype) / 8)
        angles = 1000.0 * t[:, None] * freqs[None, :]
        return self.net(torch.cat([x, angles.sin(), angles.cos()], dim=1))


mlp = Mlp()
for p in mlp.parameters():
    p.requires_grad_(False)
model = adeis.torch.from_module(mlp)
times = problem.times


def coefficients(t, beta_min=0.1, beta_max=20.0):
    log_alpha = -(beta_max - beta_min) / 4 * t * t - beta_min / 2 * t
    return math.exp(log_alpha), math.sqrt(-math.expm1(2 * log_alpha))


def step(x, t, t_next):
    (a, s), (a_next, s_next) = coefficients(t), coefficients(t_next)
    eps = mlp(x, torch.full((x.shape[0],), t))
    return a_next * (x - s * eps) / a + s_next * eps


xt_torch, target_torch = torch.tensor(x_t), torch.tensor(target)


def torch_tape():
    x = xt_torch.clone().requires_grad_(True)
    y = x
    for t, t_next in zip(times[:-1], times[1:]):
        y = step(y, t, t_next)
    ((y - target_torch) ** 2).mean().backward()
    return x.grad


def torch_recorded():
    states = [xt_torch]
    with torch.no_grad():
        for t, t_next in zip(times[:-1], times[1:]):
            states.append(step(states[-1], t, t_next))
    cot = 2 * (states[-1] - target_torch) / states[-1].numel()
    for i in reversed(range(N)):
        _, pullback = vjp(lambda x: step(x, times[i], times[i + 1]), states[i])
        (cot,) = pullback(cot)
    return cot


def through_adeis():
    return problem.grad(model, x_t, loss="mse", target=target)["x_t"]


reference = torch_tape().numpy()
for name, f in [("recorded", torch_recorded), ("adeis", through_adeis)]:
    got = np.asarray(f())
    rel = np.abs(got - reference).max() / np.abs(reference).max()
    assert rel < 1e-4, f"{name}: {rel}"
gradient = alternate({
    "adeis, discrete adjoint, PyModel(torch MLP)": through_adeis,
    "PyTorch autograd through the sampler (tape)": torch_tape,
    "PyTorch, recorded states + torch.func.vjp per step": torch_recorded,
})
print(f"## One gradient dL/dx_T through DDIM N = {N}: a torch MLP of W1's size "
      f"({DIM}-{HIDDEN}-{HIDDEN}-{DIM}, batch {BATCH}, f32), {torch.get_num_threads()} torch threads\n")
print("| way | seconds | against the tape |")
print("|---|---|---|")
tape = gradient["PyTorch autograd through the sampler (tape)"]
for name, secs in gradient.items():
    print(f"| {name} | {secs:.4f} | {secs / tape:.2f} |")

"""Guided generation through a sampler, with a PyTorch UNet as adeis's model.

A small convolutional UNet (seeded random weights: the point is the plumbing, not the
pictures) is given to adeis with `adeis.torch.from_module`; adeis runs DDIM and its exact
discrete adjoint, calling the network for each step's output and `torch.func.vjp` for each
step's VJP. The gradient dL/dx_T is checked against PyTorch's own autograd through the same
DDIM steps written in torch, then used to optimise x_T towards a target image.

    pip install ./python torch
    python python/examples/torch_unet.py
"""

import copy
import math
import time

import numpy as np
import torch
from torch import nn

import adeis
import adeis.torch


class TinyUNet(nn.Module):
    """16x16 images of one channel: a down and an up level with a skip, the time as a
    sinusoidal embedding added to every level."""

    def __init__(self, width=32):
        super().__init__()
        self.time = nn.Sequential(nn.Linear(16, width), nn.SiLU(), nn.Linear(width, width))
        self.inp = nn.Conv2d(1, width, 3, padding=1)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.up = nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1)
        self.out = nn.Conv2d(2 * width, 1, 3, padding=1)
        self.time_down = nn.Linear(width, 2 * width)

    def forward(self, x, t):
        freqs = torch.exp(-math.log(1000.0) * torch.arange(8, dtype=x.dtype) / 8)
        angles = 1000.0 * t[:, None] * freqs[None, :]
        emb = self.time(torch.cat([angles.sin(), angles.cos()], dim=1))
        h0 = torch.nn.functional.silu(self.inp(x) + emb[:, :, None, None])
        h1 = torch.nn.functional.silu(self.down(h0) + self.time_down(emb)[:, :, None, None])
        h1 = torch.nn.functional.silu(self.mid(h1))
        u = torch.nn.functional.silu(self.up(h1))
        # Untrained, eps ~ x (what a denoiser predicts at high noise) plus the network's part.
        return x + 0.1 * self.out(torch.cat([u, h0], dim=1))


def vp_linear(t, beta_min=0.1, beta_max=20.0):
    log_alpha = -(beta_max - beta_min) / 4 * t * t - beta_min / 2 * t
    return math.exp(log_alpha), math.sqrt(-math.expm1(2 * log_alpha))


def ddim_in_torch(net, x, times):
    """The same DDIM steps, in torch, for its autograd to differentiate."""
    for t, t_next in zip(times[:-1], times[1:]):
        (a, s), (a_next, s_next) = vp_linear(t), vp_linear(t_next)
        eps = net(x, torch.full((x.shape[0],), t, dtype=x.dtype))
        x0 = (x - s * eps) / a
        x = a_next * x0 + s_next * eps
    return x


LEARNING_RATE = 100.0
torch.manual_seed(0)
net = TinyUNet().double()
problem = adeis.Problem.from_spec({
    "schedule": {"kind": "vp_linear"},
    "sampler": {"method": "ddim", "steps": 10},
    "gradient": {"method": "discrete"},
})
print(problem.describe())
model = adeis.torch.from_module(net)

rng = np.random.default_rng(0)
x_t = rng.standard_normal((2, 1, 16, 16))
target = np.zeros((2, 1, 16, 16))
target[:, :, 4:12, 4:12] = 1.0  # a bright square

# adeis's exact adjoint against PyTorch's autograd through the same steps (f64).
g = problem.grad(model, x_t, loss="mse", target=target, dtype="f64")
x = torch.tensor(x_t, requires_grad=True)
sample = ddim_in_torch(net, x, problem.times)
loss = ((sample - torch.tensor(target)) ** 2).mean()
loss.backward()
rel = np.abs(g["x_t"] - x.grad.numpy()).max() / np.abs(x.grad.numpy()).max()
print(f"loss {g['loss']:.6f} (torch {loss.item():.6f}); dL/dx_T against torch autograd: "
      f"max relative difference {rel:.1e} over {g['nfe']} network calls and {g['vjps']} VJPs")

# Guided generation: gradient descent on x_T (f32, as in production: a float32 copy of the
# network, which adeis calls with float32 arrays).
model = adeis.torch.from_module(copy.deepcopy(net).float())
x_t = x_t.astype(np.float32)
start = time.time()
for step in range(31):
    g = problem.grad(model, x_t, loss="mse", target=target)
    if step % 10 == 0:
        print(f"step {step:2d}: loss {g['loss']:.4f}")
    x_t = x_t - LEARNING_RATE * g["x_t"]
print(f"31 gradients in {time.time() - start:.1f} s")

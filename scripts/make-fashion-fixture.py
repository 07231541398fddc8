#!/usr/bin/env python3
"""Writes tests/fixtures/fashion/diffusers_forward.safetensors: what diffusers computes with the
committed Fashion-MNIST UNet (models/fashion-mnist/unet, trained by `adeis train --dataset
fashion-mnist`), opened with diffusers' own `UNet2DModel.from_pretrained`: the eps prediction
for 6 held-out images (data/fashion-mnist/heldout-1000.u8) noised to 6 different train indices,
with class labels (one of them "no class", 10), in float32. The test fashion_unet_matches_diffusers
loads the same folder in adeis and compares.

Run it from anywhere (it installs torch and diffusers into a throwaway environment when they
are missing; see scripts/torch_env.py):
    python3 scripts/make-fashion-fixture.py
"""

import os

from torch_env import ensure_torch  # scripts/ is on the path

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODEL = os.path.join(ROOT, "models", "fashion-mnist", "unet")
OUT = os.path.join(ROOT, "tests", "fixtures", "fashion")

ensure_torch(__file__)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import DDPMScheduler, UNet2DModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402


def main():
    torch.manual_seed(0)
    raw = np.fromfile(os.path.join(ROOT, "data", "fashion-mnist", "heldout-1000.u8"), dtype=np.uint8)
    raw = raw.reshape(1000, 785)
    idx = [0, 1, 2, 3, 4, 5]
    x0 = torch.tensor(raw[idx, :784].astype(np.float32) / 127.5 - 1.0).reshape(6, 1, 28, 28)
    labels = torch.tensor([int(raw[i, 784]) for i in idx[:5]] + [10])
    t = torch.tensor([999, 750, 500, 250, 50, 300])
    sched = DDPMScheduler.from_pretrained(MODEL)
    eps = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    x_t = sched.add_noise(x0, eps, t)
    model = UNet2DModel.from_pretrained(MODEL).eval()
    with torch.no_grad():
        out = model(x_t, t, class_labels=labels).sample
    os.makedirs(OUT, exist_ok=True)
    save_file(
        {
            "x_t": x_t.contiguous(),
            "timesteps": t.to(torch.float32),
            "class_labels": labels.to(torch.float32),
            "eps_pred": out.contiguous(),
        },
        os.path.join(OUT, "diffusers_forward.safetensors"),
    )
    print(f"torch {torch.__version__}; eps_pred norm {out.norm():.4f}; wrote {OUT}/diffusers_forward.safetensors")


if __name__ == "__main__":
    main()

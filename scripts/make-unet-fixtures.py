#!/usr/bin/env python3
"""Writes the UNet fixtures of tests/fixtures/unet: small random-initialised diffusers
`UNet2DModel`s in diffusers' own layout (config.json + diffusion_pytorch_model.safetensors),
and beside each one reference.safetensors with what diffusers computes for it: the forward
output and the torch-autograd VJPs with respect to the input, the class-embedding vector and a
few parameter tensors, in float32 and float64; for one model also a 3-step DDIM sample and
its gradient through the whole loop.

Every block type adeis supports appears (DownBlock2D, AttnDownBlock2D, UpBlock2D,
AttnUpBlock2D, UNetMidBlock2D and no mid block), class-conditional and not, f32, f16 and bf16
weight files, the legacy attention names (query/key/value/proj_attn), odd channel counts,
downsample_padding 0, a non-square input.

Run it from anywhere: without torch and diffusers it installs the pinned versions from the
Python package registry into a throwaway virtual environment (about 6 GB) and runs there.
    python3 scripts/make-unet-fixtures.py
"""

import json
import os

from torch_env import ensure_torch  # scripts/ is on the path

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "unet")

ensure_torch(__file__)

import torch  # noqa: E402
from diffusers import DDPMScheduler, UNet2DModel  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from fixture_tools import randomise  # noqa: E402

CASES = [
    # name, config, input shape (B, C, H, W), timestep, weight dtype, legacy attention names
    (
        "attn_down_up",
        dict(
            sample_size=8,
            in_channels=3,
            out_channels=3,
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=4,
            attention_head_dim=4,
        ),
        (2, 3, 8, 8),
        417.0,
        "f32",
        False,
    ),
    (
        "class_cond_cifar_style",
        dict(
            sample_size=8,
            in_channels=3,
            out_channels=3,
            block_out_channels=(8, 12, 12),
            layers_per_block=2,
            down_block_types=("AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D"),
            norm_num_groups=4,
            attention_head_dim=None,
            downsample_padding=0,
            flip_sin_to_cos=False,
            freq_shift=1,
            norm_eps=1e-6,
            num_class_embeds=5,
        ),
        (2, 3, 8, 8),
        999.0,
        "f32",
        False,
    ),
    (
        "f16_weights",
        dict(
            sample_size=8,
            in_channels=2,
            out_channels=2,
            block_out_channels=(8, 8),
            layers_per_block=1,
            down_block_types=("AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D"),
            norm_num_groups=2,
            attention_head_dim=2,
            num_class_embeds=3,
        ),
        (1, 2, 8, 8),
        3.0,
        "f16",
        False,
    ),
    (
        "bf16_weights_legacy_names",
        dict(
            sample_size=8,
            in_channels=3,
            out_channels=3,
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=4,
            attention_head_dim=8,
        ),
        (1, 3, 8, 8),
        251.0,
        "bf16",
        True,
    ),
    (
        "odd_channels_no_mid_nonsquare",
        dict(
            sample_size=(8, 16),
            in_channels=1,
            out_channels=1,
            block_out_channels=(6, 10, 14),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=2,
            attention_head_dim=5,
            mid_block_type=None,
            center_input_sample=True,
            mid_block_scale_factor=2.0,
            norm_eps=1e-4,
        ),
        (2, 1, 8, 16),
        57.5,
        "f32",
        False,
    ),
    (
        "mid_scale_factor",
        dict(
            sample_size=8,
            in_channels=2,
            out_channels=2,
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=4,
            attention_head_dim=8,
            mid_block_scale_factor=1.5,
            freq_shift=1,
        ),
        (2, 2, 8, 8),
        640.0,
        "f32",
        False,
    ),
]

# Parameter tensors whose gradients the fixtures record (those a model has). Not the key
# projection's bias: it shifts every score of a query alike, softmax ignores it, and its
# gradient is zero up to round-off.
PARAM_GRADS = [
    "conv_in.weight",
    "time_embedding.linear_1.weight",
    "down_blocks.0.resnets.0.norm1.weight",
    "down_blocks.0.resnets.0.time_emb_proj.bias",
    "down_blocks.1.attentions.0.to_q.weight",
    "down_blocks.0.attentions.0.to_out.0.weight",
    "mid_block.attentions.0.to_k.weight",
    "mid_block.attentions.0.to_v.bias",
    "up_blocks.0.resnets.0.conv_shortcut.weight",
    "conv_out.bias",
]

LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def run(model, x, t, z, cot, dtype):
    """Forward output and VJPs in `dtype` (the class-embedding vector z is a leaf)."""
    m = model.to(dtype)
    x = x.to(dtype).clone().requires_grad_(True)
    hook = None
    zl = None
    labels = None
    if z is not None:
        zl = z.to(dtype).clone().requires_grad_(True)
        hook = m.class_embedding.register_forward_hook(lambda mod, inp, out: zl)
        labels = torch.zeros(x.shape[0], dtype=torch.long)
    out = m(x, torch.tensor(t, dtype=dtype), class_labels=labels).sample
    loss = (out * cot.to(dtype)).sum()
    m.zero_grad()
    loss.backward()
    if hook is not None:
        hook.remove()
    res = {"out": out.detach(), "dx": x.grad.detach()}
    if zl is not None:
        res["dz"] = zl.grad.detach()
    params = dict(m.named_parameters())
    for name in PARAM_GRADS:
        if name in params and params[name].grad is not None:
            res["dparam." + name] = params[name].grad.detach()
    return res


def ddim_reference(model, x_t, z, cot, dtype):
    """3 DDIM steps on the linear DDPM betas at train indices 999, 500, 0, as adeis's explicit
    grid runs them (x_j = (a_j / a_i) x_i - s_j (e^h - 1) eps, which is DDIM's update), and the
    gradient of sum(cot * x_0) through the loop."""
    m = model.to(dtype)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    idx = [999, 500, 0]
    x = x_t.to(dtype).clone().requires_grad_(True)
    zl = z.to(dtype).clone().requires_grad_(True)
    hook = m.class_embedding.register_forward_hook(lambda mod, inp, out: zl)
    labels = torch.zeros(x.shape[0], dtype=torch.long)
    h = x
    for i, j in zip(idx[:-1], idx[1:]):
        a_i, a_j = abar[i].sqrt().item(), abar[j].sqrt().item()
        s_i, s_j = (1 - abar[i]).sqrt().item(), (1 - abar[j]).sqrt().item()
        eps = m(h, torch.tensor(float(i), dtype=dtype), class_labels=labels).sample
        x0 = (h - s_i * eps) / a_i
        h = a_j * x0 + s_j * eps
    loss = (h * cot.to(dtype)).sum()
    loss.backward()
    hook.remove()
    return {"x0": h.detach(), "dx_t": x.grad.detach(), "dz": zl.grad.detach()}


def main():
    diffusers_logging.set_verbosity_error()
    os.makedirs(OUT, exist_ok=True)
    index = []
    for k, (name, config, shape, t, wdtype, legacy) in enumerate(CASES):
        torch.manual_seed(100 + k)
        model = UNet2DModel(**config)
        randomise(model, 200 + k)
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        model.eval()
        # The weights as stored, then read back: the reference computes with exactly them.
        store = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[wdtype]
        model = model.to(store)
        model.save_pretrained(d, safe_serialization=True)
        weights = os.path.join(d, "diffusion_pytorch_model.safetensors")
        if legacy:
            sd = load_file(weights)
            renamed = {}
            for key, v in sd.items():
                for new, old in LEGACY.items():
                    key = key.replace(f".{new}.", f".{old}.")
                renamed[key] = v
            save_file(renamed, weights, metadata={"format": "pt"})
        model = model.to(torch.float64)
        g = torch.Generator().manual_seed(300 + k)
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        cot = torch.randn((shape[0], config["out_channels"], shape[2], shape[3]), generator=g, dtype=torch.float64)
        z = None
        if config.get("num_class_embeds"):
            temb = config["block_out_channels"][0] * 4
            z = torch.randn((shape[0], temb), generator=g, dtype=torch.float64)
        ref = {"x": x, "cot": cot, "timestep": torch.tensor([t], dtype=torch.float64)}
        if z is not None:
            ref["z"] = z
        for dt, tag in [(torch.float64, "f64"), (torch.float32, "f32")]:
            for key, v in run(model, x, t, z, cot, dt).items():
                ref[f"{key}.{tag}"] = v.to(torch.float64)
        if name == "class_cond_cifar_style":
            # The scheduler beside the model: the schedule and prediction a spec without
            # [schedule] takes (diffusers' DDPM defaults: linear betas 1e-4..0.02, epsilon).
            DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(d)
            for dt, tag in [(torch.float64, "f64"), (torch.float32, "f32")]:
                for key, v in ddim_reference(model, x, z, cot, dt).items():
                    ref[f"ddim.{key}.{tag}"] = v.to(torch.float64)
        save_file({key: v.contiguous() for key, v in ref.items()}, os.path.join(d, "reference.safetensors"))
        index.append({"name": name, "weights": wdtype, "legacy_attention_names": legacy, "input": list(shape), "timestep": t})
        print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters")
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump(
            {
                "made_by": "scripts/make-unet-fixtures.py",
                "torch": torch.__version__,
                "diffusers": __import__("diffusers").__version__,
                "cases": index,
            },
            f,
            indent=2,
        )
        f.write("\n")


if __name__ == "__main__":
    main()

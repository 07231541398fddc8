#!/usr/bin/env python3
"""Writes the fixtures of tests/fixtures/unet_condition: small random-initialised diffusers
`UNet2DConditionModel`s (the UNet of Stable Diffusion 1.x/2.x) in diffusers' own layout
(config.json + diffusion_pytorch_model.safetensors), and beside each one
reference.safetensors with what diffusers computes for it in float32 and float64: the forward
output and the torch-autograd VJPs of sum(cot * out) with respect to the latents, the encoder
hidden states and a few parameter tensors.

The timesteps are ones whose f32 sinusoids torch and Rust round alike (at others the last bit
of a sin or cos may differ, and the f64 runs agree to 1e-7 only: tests/unet.rs), so that the
f64 comparison is to round-off.

The configurations: SD 1.x's layout (1x1-convolution projections, one head count for every
block) at two levels; SD 2.x's (linear projections, a head count per block, upcast_attention)
at three levels with two resnets per block, two transformer blocks where asked, a non-square
input, freq_shift 1 and bf16 weights.

A Stable-Diffusion-style pipeline folder, `sd_pipeline_ddim/` (model_index.json, unet/ the
sd1_style UNet, vae/ the sd_style VAE of tests/fixtures/vae, scheduler/ Stable Diffusion's
DDIMScheduler config), with pipeline_reference.safetensors: StableDiffusionPipeline's loop
written out (3 steps of DDIMScheduler.step on the classifier-free-guided noise
uncond + 7.5 (cond - uncond) from the batch [uncond, cond], then
vae.decode(latents / scaling_factor)), and the gradients of sum(cot_image * image) with
respect to x_T and the prompt's embeddings by torch autograd (float64 with the scheduler's
float64 twin; float32 as shipped). Run make-vae-fixtures.py first.

Run it from anywhere (scripts/torch_env.py installs torch and diffusers when missing):
    python3 scripts/make-sd-unet-fixtures.py
"""

import json
import os

from torch_env import ensure_torch  # scripts/ is on the path

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "unet_condition")

ensure_torch(__file__)

import torch  # noqa: E402
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from fixture_tools import SD_DDIM_SCHEDULER, float64_twin, randomise  # noqa: E402

CASES = [
    # name, config, latents (B, C, H, W), encoder hidden states (tokens), timestep, weight dtype
    (
        "sd1_style",
        dict(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            cross_attention_dim=12,
            attention_head_dim=2,
        ),
        (2, 4, 8, 8),
        5,
        417.0,
        "f32",
    ),
    (
        "sd2_style_linear_bf16",
        dict(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(8, 16, 16),
            layers_per_block=2,
            norm_num_groups=4,
            cross_attention_dim=10,
            attention_head_dim=(2, 4, 4),
            transformer_layers_per_block=(1, 2, 2),
            use_linear_projection=True,
            upcast_attention=True,
            flip_sin_to_cos=False,
            freq_shift=1,
        ),
        (1, 4, 8, 16),
        3,
        41.0,
        "bf16",
    ),
]

PARAM_GRADS = [
    "conv_in.weight",
    "time_embedding.linear_1.weight",
    "down_blocks.0.resnets.0.time_emb_proj.bias",
    "down_blocks.0.attentions.0.norm.weight",
    "down_blocks.0.attentions.0.proj_in.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.norm1.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0.bias",
    "down_blocks.0.attentions.0.transformer_blocks.0.norm3.bias",
    "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2.weight",
    "down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_v.weight",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_v.weight",
    "mid_block.attentions.0.proj_out.weight",
    "mid_block.resnets.1.conv2.weight",
    "up_blocks.0.resnets.0.conv_shortcut.weight",
    "up_blocks.1.attentions.0.proj_out.bias",
    "conv_out.bias",
]


def run(model, x, t, enc, cot, dtype):
    m = model.to(dtype)
    x = x.to(dtype).clone().requires_grad_(True)
    e = enc.to(dtype).clone().requires_grad_(True)
    out = m(x, torch.tensor(t, dtype=dtype), encoder_hidden_states=e).sample
    m.zero_grad()
    (out * cot.to(dtype)).sum().backward()
    res = {"out": out.detach(), "dx": x.grad.detach(), "dz": e.grad.detach()}
    params = dict(m.named_parameters())
    for name in PARAM_GRADS:
        if name in params and params[name].grad is not None:
            res["dparam." + name] = params[name].grad.detach()
    return res


SCHEDULER = SD_DDIM_SCHEDULER
GUIDANCE = 7.5


def pipeline():
    d = os.path.join(OUT, "sd_pipeline_ddim")
    unet = UNet2DConditionModel.from_pretrained(os.path.join(OUT, "sd1_style")).eval()
    unet.save_pretrained(os.path.join(d, "unet"), safe_serialization=True)
    vae = AutoencoderKL.from_pretrained(os.path.join(ROOT, "tests", "fixtures", "vae", "sd_style")).eval()
    vae.save_pretrained(os.path.join(d, "vae"), safe_serialization=True)
    DDIMScheduler(**SCHEDULER).save_pretrained(os.path.join(d, "scheduler"))
    with open(os.path.join(d, "model_index.json"), "w") as f:
        json.dump(
            {
                "_class_name": "StableDiffusionPipeline",
                "_diffusers_version": __import__("diffusers").__version__,
                "scheduler": ["diffusers", "DDIMScheduler"],
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "text_encoder": [None, None],
                "tokenizer": [None, None],
                "safety_checker": [None, None],
                "feature_extractor": [None, None],
            },
            f,
            indent=2,
        )
        f.write("\n")
    g = torch.Generator().manual_seed(1100)
    x_t = torch.randn((2, 4, 8, 8), generator=g, dtype=torch.float64)
    cond = torch.randn((2, 5, 12), generator=g, dtype=torch.float64)
    uncond = torch.randn((2, 5, 12), generator=g, dtype=torch.float64)
    cot = torch.randn((2, 3, 16, 16), generator=g, dtype=torch.float64)
    ref = {"x_t": x_t, "cond": cond, "uncond": uncond, "cot_image": cot}
    for dtype, tag, cls in [
        (torch.float64, "f64", float64_twin(DDIMScheduler)),
        (torch.float32, "f32", DDIMScheduler),
    ]:
        sched = cls(**SCHEDULER)
        sched.set_timesteps(3)
        u, v = unet.to(dtype), vae.to(dtype)
        x = x_t.to(dtype).clone().requires_grad_(True)
        c = cond.to(dtype).clone().requires_grad_(True)
        embeds = torch.cat([uncond.to(dtype), c])
        latents = x * sched.init_noise_sigma
        for t in sched.timesteps:
            noise = u(torch.cat([latents] * 2), t, encoder_hidden_states=embeds).sample
            n_u, n_c = noise.chunk(2)
            latents = sched.step(n_u + GUIDANCE * (n_c - n_u), t, latents).prev_sample
        image = v.decode(latents / v.config.scaling_factor).sample
        (image * cot.to(dtype)).sum().backward()
        ref[f"image.{tag}"] = image.detach().to(torch.float64)
        ref[f"dx_t.{tag}"] = x.grad.detach().to(torch.float64)
        ref[f"dz.{tag}"] = c.grad.detach().to(torch.float64)
    save_file({k: t.contiguous() for k, t in ref.items()}, os.path.join(d, "pipeline_reference.safetensors"))
    print("sd_pipeline_ddim: 3 DDIM steps, guidance 7.5, latents (2, 4, 8, 8) -> image (2, 3, 16, 16)")


def main():
    diffusers_logging.set_verbosity_error()
    os.makedirs(OUT, exist_ok=True)
    index = []
    for k, (name, config, shape, tokens, t, wdtype) in enumerate(CASES):
        torch.manual_seed(800 + k)
        model = UNet2DConditionModel(**config)
        randomise(model, 900 + k)
        model.eval()
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        store = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[wdtype]
        model = model.to(store)
        model.save_pretrained(d, safe_serialization=True)
        model = model.to(torch.float64)
        g = torch.Generator().manual_seed(1000 + k)
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        enc = torch.randn((shape[0], tokens, config["cross_attention_dim"]), generator=g, dtype=torch.float64)
        cot = torch.randn(shape, generator=g, dtype=torch.float64)
        ref = {"x": x, "z": enc, "cot": cot, "timestep": torch.tensor([t], dtype=torch.float64)}
        for dt, tag in [(torch.float64, "f64"), (torch.float32, "f32")]:
            for key, v in run(model, x, t, enc, cot, dt).items():
                ref[f"{key}.{tag}"] = v.to(torch.float64)
        save_file({key: v.contiguous() for key, v in ref.items()}, os.path.join(d, "reference.safetensors"))
        index.append({"name": name, "weights": wdtype, "input": list(shape), "tokens": tokens, "timestep": t})
        print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters")
    pipeline()
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump(
            {
                "made_by": "scripts/make-sd-unet-fixtures.py",
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

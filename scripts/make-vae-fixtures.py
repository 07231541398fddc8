#!/usr/bin/env python3
"""Writes the VAE fixtures of tests/fixtures/vae: small random-initialised diffusers
`AutoencoderKL`s in diffusers' own layout (config.json + diffusion_pytorch_model.safetensors),
and beside each one reference.safetensors with what diffusers computes for it, in float32 and
float64:

- `decode.*`: `vae.decode(z).sample` of unscaled latents z, and the torch-autograd VJPs of
  sum(cot_image * decode(z)) with respect to z and a few parameter tensors;
- `encode.*`: `vae.encode(x).latent_dist.mean` of images x, and the VJPs of
  sum(cot_latent * mean) with respect to x and a few parameter tensors;
- `latents.*`: the pipeline's scaling, `decode(latents / scaling_factor + shift_factor)` (or,
  with latents_mean and latents_std, `latents * std / scaling_factor + mean` per channel), as
  StableDiffusionPipeline, StableDiffusion3Pipeline and StableDiffusionXLPipeline compute it,
  and its VJP with respect to the latents.

A pipeline folder, `pipeline_ddim/` (model_index.json, unet/ a UNet2DModel on 4-channel latents,
vae/ the sd_style VAE, scheduler/ Stable Diffusion's DDIMScheduler config), with
pipeline_reference.safetensors: 3 steps of diffusers' DDIMScheduler.step from latents x_T,
the pipeline's decode of the result, and the gradient of sum(cot_image * image) with respect to
x_T by torch autograd through the loop and the decoder (float64: the scheduler's float64 twin,
its source with every float32 made float64, as make-scheduler-fixtures.py does; float32: the
scheduler as shipped).

The configurations: Stable Diffusion's layout (quant convolutions, mid-block attention) at two
levels; three levels with two resnets per block, no quant convolutions, SD3's shift_factor,
bf16 weights and a non-square image; one level without mid-block attention, latents_mean and
latents_std as SDXL-style configs give them, f16 weights.

Run it from anywhere: without torch and diffusers it installs the pinned versions into a
throwaway virtual environment (scripts/torch_env.py) and runs there.
    python3 scripts/make-vae-fixtures.py
"""

import json
import os

from torch_env import ensure_torch  # scripts/ is on the path

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "vae")

ensure_torch(__file__)

import torch  # noqa: E402
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DModel  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from fixture_tools import SD_DDIM_SCHEDULER, float64_twin, randomise  # noqa: E402

CASES = [
    # name, config, image shape (B, C, H, W), weight dtype
    (
        "sd_style",
        dict(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=16,
            scaling_factor=0.18215,
        ),
        (2, 3, 16, 16),
        "f32",
    ),
    (
        "three_levels_no_quant_shift_bf16",
        dict(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(8, 12, 12),
            layers_per_block=2,
            latent_channels=3,
            norm_num_groups=4,
            sample_size=16,
            scaling_factor=1.5305,
            shift_factor=0.0609,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ),
        (1, 3, 16, 24),
        "bf16",
    ),
    (
        "one_level_no_mid_attention_f16",
        dict(
            in_channels=2,
            out_channels=1,
            down_block_types=("DownEncoderBlock2D",),
            up_block_types=("UpDecoderBlock2D",),
            block_out_channels=(6,),
            layers_per_block=1,
            latent_channels=2,
            norm_num_groups=2,
            sample_size=8,
            scaling_factor=0.13025,
            latents_mean=(0.1, -0.2),
            latents_std=(1.5, 0.7),
            mid_block_add_attention=False,
        ),
        (2, 2, 8, 8),
        "f16",
    ),
]

# Parameter tensors whose gradients the fixtures record (those a model has).
DECODE_PARAMS = [
    "post_quant_conv.weight",
    "decoder.conv_in.weight",
    "decoder.mid_block.resnets.0.norm1.weight",
    "decoder.mid_block.attentions.0.to_q.weight",
    "decoder.mid_block.attentions.0.to_v.bias",
    "decoder.mid_block.attentions.0.group_norm.bias",
    "decoder.up_blocks.0.resnets.0.conv2.weight",
    "decoder.up_blocks.0.upsamplers.0.conv.weight",
    "decoder.up_blocks.1.resnets.0.conv_shortcut.weight",
    "decoder.conv_norm_out.bias",
    "decoder.conv_out.weight",
]
ENCODE_PARAMS = [
    "encoder.conv_in.weight",
    "encoder.down_blocks.0.resnets.0.norm1.weight",
    "encoder.down_blocks.0.downsamplers.0.conv.weight",
    "encoder.down_blocks.1.resnets.0.conv_shortcut.bias",
    "encoder.mid_block.attentions.0.to_k.weight",
    "encoder.mid_block.attentions.0.to_out.0.weight",
    "encoder.mid_block.resnets.1.conv1.weight",
    "encoder.conv_out.weight",
    "quant_conv.weight",
    "quant_conv.bias",
]


def grads(m, names, prefix):
    params = dict(m.named_parameters())
    return {
        f"{prefix}.dparam.{n}": params[n].grad.detach()
        for n in names
        if n in params and params[n].grad is not None
    }


def unscale(m, latents):
    """The latents a pipeline hands to vae.decode."""
    c = m.config
    if c.latents_mean is not None and c.latents_std is not None:
        mean = torch.tensor(c.latents_mean, dtype=latents.dtype).view(1, -1, 1, 1)
        std = torch.tensor(c.latents_std, dtype=latents.dtype).view(1, -1, 1, 1)
        return latents * std / c.scaling_factor + mean
    shift = c.shift_factor if c.shift_factor is not None else 0.0
    return latents / c.scaling_factor + shift


def run(model, x, z, cot_image, cot_latent, dtype):
    m = model.to(dtype)
    res = {}
    # Decode of unscaled latents.
    zl = z.to(dtype).clone().requires_grad_(True)
    out = m.decode(zl).sample
    m.zero_grad()
    (out * cot_image.to(dtype)).sum().backward()
    res["decode.out"] = out.detach()
    res["decode.dz"] = zl.grad.detach()
    res.update(grads(m, DECODE_PARAMS, "decode"))
    # Encode: the latent distribution's mean.
    xl = x.to(dtype).clone().requires_grad_(True)
    mean = m.encode(xl).latent_dist.mean
    m.zero_grad()
    (mean * cot_latent.to(dtype)).sum().backward()
    res["encode.mean"] = mean.detach()
    res["encode.dx"] = xl.grad.detach()
    res.update(grads(m, ENCODE_PARAMS, "encode"))
    # The pipeline's decode of scaled latents.
    ll = z.to(dtype).clone().requires_grad_(True)
    out = m.decode(unscale(m, ll)).sample
    (out * cot_image.to(dtype)).sum().backward()
    res["latents.out"] = out.detach()
    res["latents.dlatents"] = ll.grad.detach()
    return res


PIPELINE_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(8, 16),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
    attention_head_dim=4,
)
PIPELINE_SCHEDULER = SD_DDIM_SCHEDULER
PIPELINE_STEPS = 3


def pipeline():
    d = os.path.join(OUT, "pipeline_ddim")
    torch.manual_seed(700)
    unet = UNet2DModel(**PIPELINE_UNET)
    randomise(unet, 701)
    unet.eval().save_pretrained(os.path.join(d, "unet"), safe_serialization=True)
    vae = AutoencoderKL.from_pretrained(os.path.join(OUT, "sd_style")).eval()
    vae.save_pretrained(os.path.join(d, "vae"), safe_serialization=True)
    DDIMScheduler(**PIPELINE_SCHEDULER).save_pretrained(os.path.join(d, "scheduler"))
    with open(os.path.join(d, "model_index.json"), "w") as f:
        json.dump(
            {
                "_class_name": "DiffusionPipeline",
                "_diffusers_version": __import__("diffusers").__version__,
                "scheduler": ["diffusers", "DDIMScheduler"],
                "unet": ["diffusers", "UNet2DModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            },
            f,
            indent=2,
        )
        f.write("\n")
    g = torch.Generator().manual_seed(702)
    x_t = torch.randn((2, 4, 8, 8), generator=g, dtype=torch.float64)
    cot = torch.randn((2, 3, 16, 16), generator=g, dtype=torch.float64)
    ref = {"x_t": x_t, "cot_image": cot}
    for dtype, tag, cls in [
        (torch.float64, "f64", float64_twin(DDIMScheduler)),
        (torch.float32, "f32", DDIMScheduler),
    ]:
        sched = cls(**PIPELINE_SCHEDULER)
        sched.set_timesteps(PIPELINE_STEPS)
        u, v = unet.to(dtype), vae.to(dtype)
        x = x_t.to(dtype).clone().requires_grad_(True)
        latents = x * sched.init_noise_sigma
        for t in sched.timesteps:
            eps = u(latents, t).sample
            latents = sched.step(eps, t, latents).prev_sample
        image = v.decode(latents / v.config.scaling_factor).sample
        (image * cot.to(dtype)).sum().backward()
        ref[f"latents.{tag}"] = latents.detach().to(torch.float64)
        ref[f"image.{tag}"] = image.detach().to(torch.float64)
        ref[f"dx_t.{tag}"] = x.grad.detach().to(torch.float64)
        timesteps = [int(t) for t in sched.timesteps]
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(d, "pipeline_reference.safetensors"))
    print(f"pipeline_ddim: DDIM timesteps {timesteps}, latents {tuple(x_t.shape)} -> image {tuple(cot.shape)}")


def main():
    diffusers_logging.set_verbosity_error()
    os.makedirs(OUT, exist_ok=True)
    index = []
    for k, (name, config, shape, wdtype) in enumerate(CASES):
        torch.manual_seed(400 + k)
        model = AutoencoderKL(**config)
        randomise(model, 500 + k)
        model.eval()
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        store = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[wdtype]
        # The weights as stored, then widened: the reference computes with exactly them.
        model = model.to(store)
        model.save_pretrained(d, safe_serialization=True)
        model = model.to(torch.float64)
        g = torch.Generator().manual_seed(600 + k)
        b, _, h, w = shape
        f = 2 ** (len(config["block_out_channels"]) - 1)
        lat = (b, config["latent_channels"], h // f, w // f)
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        z = torch.randn(lat, generator=g, dtype=torch.float64)
        cot_image = torch.randn((b, config["out_channels"], h, w), generator=g, dtype=torch.float64)
        cot_latent = torch.randn(lat, generator=g, dtype=torch.float64)
        ref = {"x": x, "z": z, "cot_image": cot_image, "cot_latent": cot_latent}
        for dt, tag in [(torch.float64, "f64"), (torch.float32, "f32")]:
            for key, v in run(model, x, z, cot_image, cot_latent, dt).items():
                ref[f"{key}.{tag}"] = v.to(torch.float64)
        save_file({key: v.contiguous() for key, v in ref.items()}, os.path.join(d, "reference.safetensors"))
        index.append({"name": name, "weights": wdtype, "image": list(shape), "latents": list(lat)})
        print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, image {shape}, latents {lat}")
    pipeline()
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump(
            {
                "made_by": "scripts/make-vae-fixtures.py",
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

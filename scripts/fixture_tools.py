"""What the fixture scripts that run diffusers share (imported after torch_env.ensure_torch):
random weights that are not diffusers' tidy defaults, and a scheduler class computed in float64
throughout."""

import sys
import types

import torch

# Stable Diffusion 1.x's scheduler_config.json (a DDIMScheduler), for the pipeline fixtures.
SD_DDIM_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="leading",
)


def randomise(model, seed):
    """Default initialisation plus noise, so that norms and biases are not 1 and 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def float64_twin(cls):
    """The same diffusers scheduler class with every float32 of its source made float64: its
    betas, their products, its sigmas and its upcast copy of the sample. What diffusers'
    formulas give without float32 rounding, to compare float64 runs with to round-off."""
    module = sys.modules[cls.__module__]
    with open(module.__file__) as f:
        src = f.read().replace("torch.float32", "torch.float64").replace("np.float32", "np.float64")
    twin = types.ModuleType(module.__name__ + "_float64")
    twin.__package__ = module.__package__
    exec(compile(src, module.__file__ + " (float64)", "exec"), twin.__dict__)
    return getattr(twin, cls.__name__)

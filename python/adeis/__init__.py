"""adeis: gradients through diffusion samplers, from Python.

A problem is declared once (a spec: a TOML/JSON file, a diffusers scheduler config with
``steps=``, or a dict of the same tables) and compiled: its schedule's quantities and every
sampler's and adjoint's coefficients. It then samples and differentiates on numpy arrays with a
model that is either a string as on the command line (``"gaussian:mu=1,s2=0.3"``,
``"gmm:FILE.json"``, ``"diffusers:DIR"``) or an :class:`PyModel` of your own Python callables
(a PyTorch network: :func:`adeis.torch.from_module`).

>>> import adeis, numpy as np
>>> p = adeis.Problem.from_spec({"schedule": {"kind": "vp_linear"},
...                              "sampler": {"method": "ddim", "steps": 10}})
>>> x_t = np.random.default_rng(0).standard_normal((4, 2))
>>> g = p.grad("gaussian:mu=1.0,s2=0.3", x_t, loss="mse", target=np.zeros((4, 2)), dtype="f64")
>>> sorted(k for k in g if k in ("x_t", "x0"))
['x0', 'x_t']
"""

from ._adeis import (
    AdeisError,
    InputError,
    ModelError,
    Problem,
    PyModel,
    SolverError,
    SpecError,
    learn_steps,
    version,
)

__all__ = [
    "AdeisError",
    "InputError",
    "ModelError",
    "Problem",
    "PyModel",
    "SolverError",
    "SpecError",
    "invert",
    "learn_steps",
    "version",
]
__version__ = version()


def invert(spec, model, x_0, cond=None, steps=None, seed=0, dtype="f32", companion=None,
           guidance_scale=None, uncond=None, class_labels=None, null_class=None):
    """``adeis invert``: the noise x_T that the spec's sampler maps to ``x_0``.

    The exact inverse for a reversible sampler (rex, edict, bdia), the ODE inversion
    otherwise; ``Problem.from_spec(spec, steps=steps).invert(...)``. Returns a dict: "x_t",
    "companion" (a reversible sampler's second state: ``problem.sample(model, x_t,
    companion=...)`` gives x_0 back exactly), "exact", "nfe".
    """
    problem = Problem.from_spec(spec, steps=steps)
    return problem.invert(model, x_0, cond=cond, seed=seed, dtype=dtype, companion=companion,
                          guidance_scale=guidance_scale, uncond=uncond,
                          class_labels=class_labels, null_class=null_class)

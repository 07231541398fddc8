"""A PyTorch module as an adeis model: its output by a forward pass, its VJP by
``torch.func.vjp``. torch is imported here only, so that ``import adeis`` does not need it."""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from . import PyModel


def from_module(
    module: Any,
    prediction: str = "eps",
    device: Any = None,
    call: Optional[Callable[..., Any]] = None,
    time_gradient: bool = False,
) -> PyModel:
    """An :class:`adeis.PyModel` that runs ``module`` (a ``torch.nn.Module``).

    ``call(module, x, t, cond)`` gives the output (default: ``module(x, t)`` without
    conditioning, ``module(x, t, cond)`` with); ``t`` is a tensor of the batch's size holding
    the network's time input. The arrays adeis passes become tensors on ``device`` (default:
    the module's first parameter's) of their dtype; the results come back as numpy arrays.
    ``time_gradient=True`` also returns the time input's cotangent (the module must be
    differentiable in ``t``), which makes adeis's gradients with respect to the grid's times
    exact for it.
    """
    import torch
    from torch.func import vjp as torch_vjp

    if device is None:
        first = next(iter(module.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    if call is None:

        def call(m, x, t, cond):
            return m(x, t) if cond is None else m(x, t, cond)

    def tensor(a: np.ndarray) -> "torch.Tensor":
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    def times(x: "torch.Tensor", t: float) -> "torch.Tensor":
        return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)

    def array(v: "torch.Tensor") -> np.ndarray:
        return v.detach().to("cpu").numpy()

    def eps(x, t, alpha, sigma, cond):
        with torch.no_grad():
            xt = tensor(x)
            c = None if cond is None else tensor(cond)
            return array(call(module, xt, times(xt, t), c))

    def vjp(x, t, alpha, sigma, cond, cot):
        xt = tensor(x)
        tt = times(xt, t)
        if cond is None:
            out, pullback = torch_vjp(lambda a, s: call(module, a, s, None), xt, tt)
            dx, dt = pullback(tensor(cot))
            dcond = None
        else:
            out, pullback = torch_vjp(lambda a, s, c: call(module, a, s, c), xt, tt, tensor(cond))
            dx, dt, dc = pullback(tensor(cot))
            dcond = array(dc)
        if time_gradient:
            return array(dx), dcond, (float(dt.sum()), 0.0, 0.0)
        return array(dx), dcond

    return PyModel(eps, vjp, prediction=prediction)

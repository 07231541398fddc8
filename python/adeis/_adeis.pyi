"""Type stubs of adeis's extension module (the package re-exports every name)."""

from os import PathLike
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.floating[Any]]
ArrayLike = npt.ArrayLike
Dtype = Literal["f32", "f64"]
Prediction = Literal["eps", "x0", "v", "flow"]
WrtKey = Literal["x_t", "cond", "params", "times", "schedule"]

class AdeisError(Exception):
    """Every error adeis raises (its message names the field, the value and what is allowed)."""

class SpecError(AdeisError):
    """A spec (file, dict or diffusers scheduler config) that cannot be read, parsed or validated."""

class ModelError(AdeisError):
    """A model that cannot be opened, or a PyModel whose output is not what adeis asked for."""

class InputError(AdeisError):
    """An array or argument that does not fit: a shape, a dtype, a non-finite value, an option."""

class SolverError(AdeisError):
    """A run that could not finish: a state or cotangent stopped being finite, a method the model cannot run."""

EpsFn = Callable[[Array, float, float, float, Optional[Array]], ArrayLike]
VjpFn = Callable[
    [Array, float, float, float, Optional[Array], Array],
    Union[
        Tuple[ArrayLike, Optional[ArrayLike]],
        Tuple[ArrayLike, Optional[ArrayLike], Tuple[float, float, float]],
    ],
]

class PyModel:
    """A model written as Python callables.

    ``eps(x, t, alpha, sigma, cond)`` returns the model's output (x's shape; ``t`` is the
    network's time input, the train index for a discrete schedule). ``vjp(x, t, alpha, sigma,
    cond, cot)`` returns ``(dx, dcond)`` or ``(dx, dcond, (dt, dalpha, dsigma))``, the time
    quantities' cotangents summed over the batch (for gradients in the grid's times and the
    schedule's parameters). Arrays come as float32 for dtype="f32" runs, float64 for "f64".
    """

    def __init__(self, eps: EpsFn, vjp: Optional[VjpFn] = None, prediction: Prediction = "eps") -> None: ...
    @property
    def prediction(self) -> Prediction: ...

Model = Union[str, PyModel]

class Problem:
    """A declared schedule, sampler and gradient method, compiled once."""

    @staticmethod
    def from_spec(
        spec: Union[str, PathLike[str], Mapping[str, Any]],
        steps: Optional[int] = None,
        mu: Optional[float] = None,
        image_seq_len: Optional[int] = None,
    ) -> Problem:
        """A TOML/JSON spec file, a diffusers scheduler_config.json (with ``steps``), or a
        dict of the same tables."""
    def describe(self) -> str: ...
    @property
    def times(self) -> Optional[List[float]]:
        """The sampling grid, noisiest first (None where the model's folder gives the schedule)."""
    def sample(
        self,
        model: Model,
        x_t: ArrayLike,
        cond: Optional[ArrayLike] = None,
        seed: int = 0,
        dtype: Dtype = "f32",
        companion: Optional[ArrayLike] = None,
        guidance_scale: Optional[float] = None,
        uncond: Optional[ArrayLike] = None,
        class_labels: Optional[List[int]] = None,
        null_class: Optional[int] = None,
    ) -> Array:
        """x_0 from x_t by the spec's sampler (a pipeline folder's: the decoded image);
        ``companion``: a reversible sampler's second state beside x_T."""
    def invert(
        self,
        model: Model,
        x_0: ArrayLike,
        cond: Optional[ArrayLike] = None,
        seed: int = 0,
        dtype: Dtype = "f32",
        companion: Optional[ArrayLike] = None,
        guidance_scale: Optional[float] = None,
        uncond: Optional[ArrayLike] = None,
        class_labels: Optional[List[int]] = None,
        null_class: Optional[int] = None,
    ) -> Dict[str, Any]:
        """x_T that the sampler maps to x_0: "x_t", "companion" (reversible samplers),
        "exact", "nfe"."""
    def grad(
        self,
        model: Model,
        x_t: ArrayLike,
        cot: Optional[ArrayLike] = None,
        loss: Optional[Literal["mse"]] = None,
        target: Optional[ArrayLike] = None,
        cond: Optional[ArrayLike] = None,
        seed: int = 0,
        dtype: Dtype = "f32",
        wrt: Optional[List[WrtKey]] = None,
        guidance_scale: Optional[float] = None,
        uncond: Optional[ArrayLike] = None,
        class_labels: Optional[List[int]] = None,
        null_class: Optional[int] = None,
    ) -> Dict[str, Any]:
        """The gradient by the spec's [gradient] method: keys "x_t", "cond", "times",
        "schedule" (name -> float), "params" (name -> array) as wrt asks, and "x0", "loss"
        (loss="mse"), "nfe", "vjps"."""

def learn_steps(
    model: Optional[Model] = None,
    schedule: str = "vp_linear",
    steps: int = 5,
    method: str = "dpm_solver_pp",
    order: int = 2,
    teacher_steps: int = 200,
    iters: int = 200,
    lr: float = 0.05,
    train: int = 256,
    heldout: int = 512,
    seed: int = 0,
    dtype: Dtype = "f32",
    dim: Optional[int] = None,
    progress: Optional[Callable[[int, float], Any]] = None,
) -> Dict[str, Any]:
    """``adeis learn-steps``: an N-step grid learned against a fine-grid teacher (model:
    ``gmm:`` or ``gaussian:`` strings, or a PyModel of vectors with ``dim``; the default is the
    ring8 mixture). Returns "times", "spec" (TOML), "grids", "train_loss", "best_iteration",
    "gain_against_best_fixed", "seconds", "nfe_per_gradient", "vjps_per_gradient", "student",
    "teacher"."""

def version() -> str: ...

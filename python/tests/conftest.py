"""What the tests share: the repository's root, the `adeis` command built beside the package
(its numbers are what the Python API must reproduce), and a numpy Gaussian model."""

import os
import pathlib
import subprocess

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def adeis_bin():
    """The `adeis` command: $ADEIS_BIN, else the repository's release build (CI builds it
    with the README's test command before the Python tests)."""
    path = pathlib.Path(os.environ.get("ADEIS_BIN", REPO / "target" / "release" / "adeis"))
    if not path.exists():
        pytest.fail(f"{path} is missing: build it with `cargo build --release` (or set ADEIS_BIN)")
    return path


@pytest.fixture
def run_cli(adeis_bin):
    def run(*args):
        done = subprocess.run([str(adeis_bin), *map(str, args)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    return run


class NumpyGaussian:
    """Data N(mu, s2 I) in closed form in numpy: eps(x) = (sigma x - alpha sigma z) / v with
    v = alpha^2 s2 + sigma^2 and z the mean (the conditioning), and its exact VJP, the time
    quantities' cotangents included (what the gradients in the grid's times need)."""

    def __init__(self, s2):
        self.s2 = s2
        self.calls = 0

    def eps(self, x, t, alpha, sigma, cond):
        self.calls += 1
        v = alpha * alpha * self.s2 + sigma * sigma
        return (sigma * x - alpha * sigma * cond) / v

    def vjp(self, x, t, alpha, sigma, cond, cot):
        v = alpha * alpha * self.s2 + sigma * sigma
        e = sigma * x - alpha * sigma * cond
        d_alpha = np.sum(cot * (-sigma * cond / v - e * 2 * alpha * self.s2 / v**2))
        d_sigma = np.sum(cot * ((x - alpha * cond) / v - e * 2 * sigma / v**2))
        return cot * sigma / v, -cot * alpha * sigma / v, (0.0, float(d_alpha), float(d_sigma))

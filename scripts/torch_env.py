"""The throwaway Python environment of the scripts that run PyTorch and diffusers
(make-unet-fixtures.py, bench-torch.py): with torch and diffusers importable the script runs
as it is; without, the pinned versions are installed from the Python package registry into a
virtual environment (ADEIS_TORCH_VENV, default $TMPDIR/adeis-torch-venv; about 6 GB) and the
script starts again there. Never needed by the tests or CI.
"""

import os
import subprocess
import sys
import tempfile

PINNED = ["torch==2.15.0", "diffusers==0.42.1", "safetensors==0.8.0", "numpy"]


def ensure_torch(script):
    """Returns when torch, diffusers and safetensors import; else re-runs `script` in the
    environment with the pinned versions."""
    try:
        import diffusers  # noqa: F401
        import safetensors  # noqa: F401
        import torch  # noqa: F401
        return
    except ImportError:
        pass
    env = os.environ.get("ADEIS_TORCH_VENV") or os.path.join(tempfile.gettempdir(), "adeis-torch-venv")
    python = os.path.join(env, "bin", "python")
    if not os.path.exists(python):
        subprocess.check_call([sys.executable, "-m", "venv", env])
    subprocess.check_call([python, "-m", "pip", "install", "--quiet", *PINNED])
    os.execv(python, [python, os.path.abspath(script), *sys.argv[1:]])

"""PEP 517 backend: maturin's, with LIBTORCH set to the torch package of the Python environment
that metaloop is being installed into (torch-sys compiles and links against it).

pip builds in an isolated environment, where that torch package is not importable; the
interpreter is the target's, so a child process without pip's isolation finds it.
"""
import os
import subprocess
import sys

import maturin
from maturin import *  # noqa: F401,F403  (the PEP 517 hooks this backend does not change)

TORCH_VERSION = "2.11.0"
# maturin's hooks run the `maturin` program: the one installed beside this interpreter when pip
# builds without isolation (an isolated build puts its own on PATH). torch-sys asks `python` (in a
# virtual env) for Python's headers: this interpreter's.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
_FIND_TORCH = "import os, torch; print(torch.__version__); print(os.path.dirname(torch.__file__))"


def _target_torch():
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")}
    out = subprocess.run([sys.executable, "-c", _FIND_TORCH], env=env,
                         capture_output=True, text=True)
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) != 2:
        raise RuntimeError(f"metaloop: {sys.executable} has no torch: "
                           f"install torch=={TORCH_VERSION} first, then metaloop")
    version, path = lines
    if version.split("+")[0] != TORCH_VERSION:
        raise RuntimeError(f"metaloop: needs torch {TORCH_VERSION}, but {sys.executable} has "
                           f"torch {version}: install torch=={TORCH_VERSION} first")
    return path


def _prepare_env():
    os.environ["LIBTORCH"] = _target_torch()
    os.environ["VIRTUAL_ENV"] = sys.prefix


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _prepare_env()
    return maturin.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _prepare_env()
    return maturin.build_editable(wheel_directory, config_settings, metadata_directory)

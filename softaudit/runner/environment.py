"""Where an audit runs: the device it may use, and the versions and machine facts recorded with
every result (a GPU's name, driver, CUDA and Triton versions when one is used)."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from pathlib import Path

import numpy as np

import softaudit
from softaudit.errors import BadInput
from softaudit.options import check_device_name


class DeviceError(BadInput):
    """The requested device is not usable here (one line); options.check_device_name checks its syntax."""


def check_device(device: str) -> str:
    """``device`` as given when it is usable here; OptionError when it is not a device, DeviceError
    when it is not usable here. "cuda" needs torch with a CUDA device (checked now: a run must not
    find out after loading every target)."""
    check_device_name(device)
    if device.startswith("cuda"):
        from softaudit.candidates.detection import cuda_available

        if not cuda_available():
            raise DeviceError(f"device {device!r}: no CUDA device is available here "
                              "(torch is not installed, is a CPU build, or sees no GPU)")
        import torch

        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def environment(seed: int, device: str = "auto") -> dict:
    """Versions and machine facts recorded with every result: with a GPU in use, its name, the
    driver, CUDA and Triton versions."""
    import ml_dtypes
    import mpmath

    env = {
        "softaudit": softaudit.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "numpy": np.__version__,
        "mpmath": mpmath.__version__,
        "mpmath_backend": mpmath.libmp.BACKEND,
        "ml_dtypes": ml_dtypes.__version__,
        "device": "cpu",
        "seed": seed,
    }
    env["torch"] = _torch_version()
    env["triton"] = _version_of("triton")
    env["jax"] = _version_of("jax")
    env.update(gpu_environment(device))
    return env


def gpu_environment(device: str) -> dict:
    """{"device": "cuda:0", "gpu": name, "gpu_driver": ..., "cuda": ...} when the audit used a GPU
    (device cuda, or auto with one available), else {}."""
    import shutil

    if device == "cpu" or not (Path("/proc/driver/nvidia").exists() or shutil.which("nvidia-smi")):
        return {}  # no NVIDIA driver: not worth importing torch to ask
    from softaudit.candidates.detection import cuda_available

    if not cuda_available():
        return {}
    import torch

    index = int(device[5:]) if device.startswith("cuda:") else 0
    facts = {"device": f"cuda:{index}", "gpu": torch.cuda.get_device_name(index), "cuda": torch.version.cuda,
             "gpu_driver": _nvidia_driver()}
    capability = torch.cuda.get_device_capability(index)
    facts["gpu_capability"] = f"{capability[0]}.{capability[1]}"
    return facts


def _nvidia_driver() -> str | None:
    """The NVIDIA driver version from nvidia-smi, when it is on PATH."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def _version_of(package: str) -> str | None:
    """An installed package's version, without importing it."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch_version() -> str | None:
    """torch's version without importing it (seconds that a numpy-only audit need not pay)."""
    if "torch" in sys.modules:
        return sys.modules["torch"].__version__
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None

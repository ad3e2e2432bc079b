"""Device choice for every LGUN entry point (training, evaluation, geosr's model loading).

One resolver, so that ``auto``, ``cpu``, ``cuda`` and ``cuda:N`` mean the same thing, and fail
with the same message, wherever a user can type them.
"""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class DeviceError(ValueError):
    """An unknown device name, or CUDA asked for on a machine without it."""


def check_device_name(name: str) -> None:
    """Refuse a name that is not ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (no torch import,
    so options can be validated before anything heavy is loaded).

    Raises:
        DeviceError: any other name.
    """
    if name not in ("auto", "cpu", "cuda") and not (name.startswith("cuda:")
                                                     and name[5:].isdigit()):
        raise DeviceError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N`` (or a ``torch.device``) into a device.

    Raises:
        DeviceError: unknown device, or CUDA asked for but not available.
    """
    import torch

    name = str(device)
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def describe_hardware(device: torch.device) -> str:
    """One line naming the accelerator or CPU, for logs and weight metadata."""
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    name = platform.processor() or platform.machine()
    try:  # Linux: the marketing name is more useful than the architecture
        with open("/proc/cpuinfo") as f:
            name = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"CPU {name} ({os.cpu_count()} cores), {torch.get_num_threads()} torch threads "
            f"(torch {torch.__version__})")

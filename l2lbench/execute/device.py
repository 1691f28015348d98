"""The device a command runs on, checked against what this machine has."""

from __future__ import annotations

import torch

from l2lbench.errors import UsageError


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``, checked against what this machine has."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"invalid device {name!r} (expected cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"invalid device {name!r} (expected cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} is not available here (no CUDA device; expected cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"device {name!r} does not exist (this machine has {torch.cuda.device_count()} CUDA devices)")
    return device


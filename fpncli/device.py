"""Choosing the compute device from a ``--device`` value."""

from __future__ import annotations

import torch

from fpncli.errors import FpnError


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA GPU when there is one, else the CPU; ``cpu``; ``cuda[:N]``.

    Asking for CUDA where there is none is an :class:`FpnError`.
    """
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise FpnError(f"bad device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FpnError(f"device {spec!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise FpnError(f"device {spec!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
    elif device.type != "cpu":
        raise FpnError(f"unsupported device {spec!r}; use auto, cpu, cuda or cuda:N")
    return device

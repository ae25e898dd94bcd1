"""The machine a measurement ran on, for the report: every figure names it."""

from __future__ import annotations

import os
import platform
from typing import Any

from fpncli.runtime.cpu import cpu_info


def machine_info(device: str) -> dict[str, Any]:
    """CPU model, flags and cores, the GPU (for a CUDA device), torch / torchvision / Python
    versions and torch's thread count."""
    import torch
    import torchvision

    cpu = cpu_info()
    gpu = None
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        gpu = torch.cuda.get_device_name(index)
    return {
        "cpu": cpu["model"],
        "cpu_id": cpu["id"],
        "cpu_flags": cpu["flags"],
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "gpu": gpu,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def machine_sentence(env: dict[str, Any]) -> str:
    """``CPU AMD EPYC (family 26 model 2 stepping 1; avx2, avx512f), 2 cores, 2 torch
    thread(s); torch 2.x, torchvision 0.x, Python 3.x``."""
    details = [d for d in (env.get("cpu_id"), ", ".join(env.get("cpu_flags") or [])) if d]
    cpu = f"{env['cpu']}" + (f" ({'; '.join(details)})" if details else "")
    where = f"GPU {env['gpu']}; CPU {cpu}" if env.get("gpu") else f"CPU {cpu}"
    return (
        f"{where}, {env['cpu_count']} cores, {env['threads']} torch thread(s); torch {env['torch']}, "
        f"torchvision {env['torchvision']}, Python {env['python']}"
    )

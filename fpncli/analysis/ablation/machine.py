"""The machine a measurement ran on, for the report: every figure names it."""

from __future__ import annotations

import os
import platform
from typing import Any

# The instruction sets that decide CPU speed for torch's kernels (oneDNN picks by them).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "neon", "asimd")


def cpu_model(cpuinfo: str | None = None) -> tuple[str, list[str]]:
    """``(model name, flags of CPU_FLAGS it has)`` from ``/proc/cpuinfo`` (Linux), else
    ``platform.processor()`` without flags."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    model, flags = "", set[str]()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        name = name.strip()
        if name in ("model name", "Model", "Hardware") and not model:
            model = value.strip()
        elif name in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model or platform.processor() or "unknown CPU", [f for f in CPU_FLAGS if f in flags]


def machine_info(device: str) -> dict[str, Any]:
    """CPU model, flags and cores, the GPU (for a CUDA device), torch / torchvision / Python
    versions and torch's thread count."""
    import torch
    import torchvision

    model, flags = cpu_model()
    gpu = None
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        gpu = torch.cuda.get_device_name(index)
    return {
        "cpu": model,
        "cpu_flags": flags,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "gpu": gpu,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def machine_sentence(env: dict[str, Any]) -> str:
    """``AMD EPYC (avx2, avx512f), 2 cores, 2 threads; torch 2.x, torchvision 0.x``."""
    cpu = f"{env['cpu']}" + (f" ({', '.join(env['cpu_flags'])})" if env.get("cpu_flags") else "")
    where = f"GPU {env['gpu']}; CPU {cpu}" if env.get("gpu") else f"CPU {cpu}"
    return (
        f"{where}, {env['cpu_count']} cores, {env['threads']} torch thread(s); torch {env['torch']}, "
        f"torchvision {env['torchvision']}, Python {env['python']}"
    )

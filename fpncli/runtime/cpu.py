"""Which CPU this is: its name, its microarchitecture and the instruction sets that decide
which kernels run. Every speed figure names them, and ``--backend auto``'s probe cache is
keyed by them. Torch-free.

The name alone does not tell CPUs apart: two machines here both call themselves "AMD EPYC",
with the same AVX-512 flags, yet one is CPU family 26 (Zen 5), where OpenVINO's float32
kernels were the fastest exact path, and the other one where NNPACK's Winograd was. The
family and model numbers (x86) or the implementer and part numbers (Arm) do tell them apart.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# The flags that decide which kernels PyTorch, oneDNN, ONNX Runtime and OpenVINO pick.
CPU_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "neon",
    "asimd",
)
# /proc/cpuinfo fields that name the microarchitecture: x86, then Arm.
_IDENTITY_FIELDS = (
    ("cpu family", "family"),
    ("model", "model"),
    ("stepping", "stepping"),
    ("CPU implementer", "implementer"),
    ("CPU part", "part"),
    ("CPU variant", "variant"),
)


def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
    """``{"model": name, "id": microarchitecture, "flags": [those of CPU_FLAGS present],
    "cores": usable}`` from ``cpuinfo`` (the text of ``/proc/cpuinfo``; read when None).

    ``id`` is ``"family 26 model 2 stepping 1"`` on x86, ``"implementer 0x41 part 0xd0c
    variant 0x1"`` on Arm, ``""`` where the system does not say. The first processor's
    entries are used (on a hybrid CPU the cores' names differ; the flags are shared)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    model, flags = "", set[str]()
    ids: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key.lower() in ("model name", "hardware") and value and not model:
            model = value
        elif key.lower() in ("flags", "features") and not flags:
            flags = set(value.split())
        for field, short in _IDENTITY_FIELDS:
            if key == field and value and short not in ids:
                ids[short] = value
    identity = " ".join(f"{short} {ids[short]}" for _, short in _IDENTITY_FIELDS if short in ids)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {
        "model": model or platform.processor() or platform.machine() or "unknown CPU",
        "id": identity,
        "flags": [f for f in CPU_FLAGS if f in flags],
        "cores": cores,
    }


def describe_cpu(info: dict[str, Any]) -> str:
    """``AMD EPYC (family 26 model 2 stepping 1)``: the name, and the microarchitecture when known."""
    return info["model"] + (f" ({info['id']})" if info.get("id") else "")
